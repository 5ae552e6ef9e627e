/** drivers/dmirror: lib/test_hmm.c's mirror driver on the mock GPU (see README.md). */
export { Dmirror, dmirrorIntervalInvalidate, dmirrorDoUpdate, dmirrorDoFault, dmirrorRangeFault, dmirrorFault } from './mirror.js';
export { HMM_RANGE_DEFAULT_TIMEOUT_NS, DMIRROR_FAULT_CHUNK, DPT_XA_TAG_READ, DPT_XA_TAG_ATOMIC, DPT_XA_TAG_WRITE } from './mirror.js';
export type { DmirrorStats } from './mirror.js';
export { DmirrorDevice } from './device.js';
export {
  dmirrorIoctl,
  dmirrorRead,
  dmirrorWrite,
  dmirrorSnapshot,
  dmirrorExclusive,
  dmirrorMakeExclusive,
  dmirrorCheckAtomic,
  dmirrorMkentry,
  dmirrorBounceInit,
} from './commands.js';
export type { DmirrorBounce } from './commands.js';
export {
  dmirrorMigrateToDevice,
  dmirrorMigrateToSystem,
  dmirrorDevmemFault,
  dmirrorDeviceEvict,
  dmirrorSuccessfulMigratedPages,
} from './migrate.js';
export { dmirrorFaultWorker, dmirrorServiceFaults, dmirrorServiceFault } from './worker.js';
export type { DmirrorWorkerStats } from './worker.js';
export * from './uapi.js';
export * from './selftest.js';
