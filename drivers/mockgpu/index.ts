/**
 * mockgpu: a production-shaped HMM driver for the mock GPU (nouveau's SVM + NVIDIA UVM's
 * fault servicing): batched fault handling on a p-queue worker pool whose jobs are engine
 * tasks, first-touch migration to device memory, eviction under oversubscription, a whole-mm
 * classic notifier plus per-window interval notifiers. See README.md.
 */
export { MockGpu, HMM_RANGE_DEFAULT_TIMEOUT_NS } from './mockgpu.js';
export type { MockGpuOptions, ResolvedMockGpuOptions, MockGpuStats } from './mockgpu.js';
export { MockGpuSvmm } from './svmm.js';
export { MockGpuMemory } from './devmem.js';
export { EnginePool } from './pool.js';
export type { EnginePoolStats } from './pool.js';
export {
  ACCESS_PREFETCH,
  ACCESS_READ,
  ACCESS_WRITE,
  ACCESS_ATOMIC,
  ACCESS_PRIORITY,
  compareFaults,
  sortFaults,
  coalesceFaults,
  groupByWindow,
  prepareBatch,
} from './batch.js';
export type { CoalescedFault, FaultWindow, PreparedBatch } from './batch.js';
