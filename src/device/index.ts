/** src/device: the hardware model of a mirroring device (a mock GPU). */
export { Device } from './device.js';
export type { DeviceOptions, DeviceMemoryOptions, DeviceMemoryOps } from './device.js';
export { DeviceAddressSpace, DEVICE_VA_LIMIT } from './address-space.js';
export { DevicePageTable, DEV_PTE_VALID, DEV_PTE_WRITE, DEV_PTE_ATOMIC, DEV_PTE_MAP_FLAGS } from './pagetable.js';
export type { DevicePageTableView } from './pagetable.js';
export { Tlb } from './tlb.js';
export type { TlbOptions, TlbView } from './tlb.js';
export { FaultBuffer, FAULT_ACCESS } from './fault-buffer.js';
export type { FaultAccess, FaultRecord } from './fault-buffer.js';
export { DeviceJob, WarpContext } from './engines.js';
export type { DeviceKernel, LaunchOptions } from './engines.js';
export { TlbFence } from './shootdown.js';
export { CopyEngine } from './copy-engine.js';
export { DeviceCost } from './cost.js';
export type { DeviceCostOptions } from './cost.js';
export { DeviceStats, FAULT_LATENCY_BUCKETS_NS } from './stats.js';
export type { DeviceStatsSnapshot, FaultLatencySnapshot } from './stats.js';
export { DeviceFaultError } from './errors.js';
