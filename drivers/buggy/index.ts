/**
 * drivers/buggy: the broken-driver catalogue (see README.md). One driver per bug class, each a
 * small change of a reference driver (drivers/dmirror through DmirrorVariant, or
 * drivers/hmm2015), marked `// BUG:` where it departs.
 */
export { DmirrorVariant } from './dmirror-variant.js';
export type { DmirrorVariantOptions } from './dmirror-variant.js';
export { NoReadRetryDmirror } from './no-read-retry.js';
export { RetryOutsideLockDmirror } from './retry-outside-lock.js';
export { SeqAfterWalkDmirror } from './seq-after-walk.js';
export { NoTlbFlushDmirror } from './no-tlb-flush.js';
export { SleepNonblockableDmirror } from './sleep-nonblockable.js';
export { OwnMigrateNoZapDmirror } from './own-migrate-no-zap.js';
export { LockAcrossFaultDmirror } from './lock-across-fault.js';
export { WritableAcrossForkDmirror } from './writable-across-fork.js';
export { NoFaultStartDriver, PREFETCH_BLOCK_PAGES } from './no-fault-start-2015.js';

/** One entry of the catalogue. */
export interface BuggyDriverInfo {
  /** 1-based number in the catalogue. */
  readonly id: number;
  /** The class's export name. */
  readonly name: string;
  /** The reference driver it changes. */
  readonly reference: 'dmirror' | 'hmm2015';
  /** The bug, in one line. */
  readonly bug: string;
  /** The bug class of linux-hmm.md section 8. */
  readonly bugClass: number;
  /** Where it was seen in the real world (or the contract it breaks). */
  readonly seen: string;
}

export const BUGGY_DRIVERS: readonly BuggyDriverInfo[] = [
  {
    id: 1,
    name: 'NoReadRetryDmirror',
    reference: 'dmirror',
    bug: 'commits without mmu_interval_read_retry',
    bugClass: 1,
    seen: 'amdgpu userptr ("drm/amdgpu: Use mmu_interval_notifier instead of hmm_mirror", 2019)',
  },
  {
    id: 2,
    name: 'RetryOutsideLockDmirror',
    reference: 'dmirror',
    bug: 'calls mmu_interval_read_retry outside the driver lock',
    bugClass: 1,
    seen: 'amdgpu/amdkfd userptr (Kuehling: "a per-process MMU notifier lock ... to properly synchronize page table updates")',
  },
  {
    id: 3,
    name: 'SeqAfterWalkDmirror',
    reference: 'dmirror',
    bug: 'reads the sequence after the walk instead of before',
    bugClass: 1,
    seen: 'hmm_mirror range valid flag ("mm/hmm: allow hmm_range to be used with a mmu_interval_notifier or hmm_mirror", 2019)',
  },
  {
    id: 4,
    name: 'NoTlbFlushDmirror',
    reference: 'dmirror',
    bug: 'zaps the device page table but not the TLB',
    bugClass: 5,
    seen: 'contract of mmu_notifier.h and hmm.rst; hmm2015 NoShootdownDriver',
  },
  {
    id: 5,
    name: 'SleepNonblockableDmirror',
    reference: 'dmirror',
    bug: 'blocks in its invalidate callback on a non-blockable range',
    bugClass: 3,
    seen: 'amdgpu, radeon, i915, RDMA notifiers before "mm, oom: distinguish blockable mode for mmu notifiers" (4.19)',
  },
  {
    id: 6,
    name: 'OwnMigrateNoZapDmirror',
    reference: 'dmirror',
    bug: 'skips its own MIGRATE events but does not zap its own entries',
    bugClass: 4,
    seen: '"mm/notifier: add migration invalidation type" (2020; nouveau locking fix in v3 of its series); test_hmm\'s skip',
  },
  {
    id: 7,
    name: 'LockAcrossFaultDmirror',
    reference: 'dmirror',
    bug: 'holds the driver lock across hmmRangeFault',
    bugClass: 2,
    seen: 'RDMA ODP umem_rwsem across a nested invalidation ("RDMA/odp: Use mmu_interval_notifier_insert()", 2019)',
  },
  {
    id: 8,
    name: 'WritableAcrossForkDmirror',
    reference: 'dmirror',
    bug: 'keeps device mappings writable across fork',
    bugClass: 8,
    seen: 'hmm-tests anon_write_child; DMA pins: "mm: Do early cow for pinned pages during fork() for ptes" (5.9)',
  },
  {
    id: 9,
    name: 'NoFaultStartDriver',
    reference: 'hmm2015',
    bug: 'maps device pages without hmmDeviceFaultStart',
    bugClass: 1,
    seen: 'the 2015 review (Hubbard / Glisse, Jun 2015: the "2 sided synchronization")',
  },
];
