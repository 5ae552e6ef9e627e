/** src/hmm: the 2015 mirror API, hmm_range_fault, device memory, migration and exclusive access. */
export { DevPagemap, MEMORY_DEVICE_PRIVATE, MEMORY_DEVICE_COHERENT } from './devmem.js';
export type { DevPagemapOptions, MemoryType } from './devmem.js';
export {
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  HMM_PFN_ERROR,
  HMM_PFN_DMA_MAPPED,
  HMM_PFN_P2PDMA,
  HMM_PFN_P2PDMA_BUS,
  HMM_PFN_ORDER_SHIFT,
  HMM_PFN_REQ_FAULT,
  HMM_PFN_REQ_WRITE,
  HMM_PFN_FLAGS,
  HMM_PFN_INOUT_FLAGS,
  hmmPfnToPfn,
  hmmPfnToMapOrder,
  hmmPfnFromPfn,
} from './hmm-pfn.js';
export { HmmRange, hmmRangeFault } from './range-fault.js';
export type { HmmRangeOptions } from './range-fault.js';
export {
  HMM_NONE,
  HMM_FORK,
  HMM_MIGRATE,
  HMM_MUNMAP,
  HMM_DEVICE_RFAULT,
  HMM_DEVICE_WFAULT,
  HMM_WRITE_PROTECT,
  HMM_VM_END,
  HMM_PTE_VALID,
  HMM_PTE_WRITE,
  HMM_PTE_DIRTY,
  HMM_PTE_ALL,
  HmmEvent,
  hmmEtypeName,
  hmmEventOverlap,
  hmmEtypeFromMmu,
} from './hmm2015-event.js';
export type { HmmEtype } from './hmm2015-event.js';
export { HmmMirrorTable } from './hmm2015-pt.js';
export type { HmmPte } from './hmm2015-pt.js';
export {
  Hmm,
  HmmDevice,
  HmmMirror,
  hmmFromMm,
  hmmDeviceFaultStart,
  hmmDeviceFaultEnd,
  hmmWaitDeviceFault,
  hmmMirrorRegister,
  hmmMirrorUnregister,
  hmmMirrorFault,
} from './hmm2015.js';
export type { HmmDeviceOps, HmmMirrorStats, HmmMirrorState } from './hmm2015.js';
export {
  MIGRATE_PFN_VALID,
  MIGRATE_PFN_MIGRATE,
  MIGRATE_PFN_WRITE,
  MIGRATE_PFN_COMPOUND,
  MIGRATE_PFN_SHIFT,
  MIGRATE_VMA_SELECT_SYSTEM,
  MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
  MIGRATE_VMA_SELECT_DEVICE_COHERENT,
  MIGRATE_VMA_SELECT_COMPOUND,
  migratePfn,
  migratePfnToPfn,
  MigrateVma,
  migrateVmaSetup,
  migrateVmaPages,
  migrateVmaFinalize,
  migrateDeviceRange,
  migrateDevicePages,
  migrateDeviceFinalize,
} from './migrate.js';
export type { MigrateVmaOptions } from './migrate.js';
export { makeDeviceExclusive } from './exclusive.js';
