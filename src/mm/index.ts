/** src/mm: physical memory, page tables, VMAs, the mm system calls, faults and migration. */
export * from './constants.js';
export { PhysMem } from './phys.js';
export type { PhysMemOptions, PagemapFrames } from './phys.js';
export { PageTable, PteTable, pteNone, ptePresent, pteWrite, pteKind, isSwapEntry, VPN_LIMIT } from './pagetable.js';
export type { LeafFn } from './pagetable.js';
export { MmStruct, createMm, zapRange, withInvalidation, vpnOf } from './mm.js';
export type { MmOptions, MmStats } from './mm.js';
export { Vma, VmaList } from './vma.js';
export { ShmemObject } from './shmem.js';
export { mmap, munmap, mprotect, madvise, mremap } from './syscalls.js';
export { fork, exitMm, oomReapTaskMm } from './fork.js';
export { handleMmFault, cpuRead, cpuWrite, cpuRead64, cpuWrite64, SegvError, FAULT_FLAG_WRITE, FAULT_FLAG_REMOTE } from './fault.js';
export { migratePages } from './migrate.js';
export { isDevPagemap } from './pagemap.js';
export type { VmFault, DevPagemapOps } from './pagemap.js';
export { deviceRmapAdd, deviceRmapRemove, deviceRmapMappings, deviceRmapMapsPfn } from './rmap.js';
export type { DeviceMapping } from './rmap.js';
