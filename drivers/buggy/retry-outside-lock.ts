/**
 * Bug 2: calls mmu_interval_read_retry outside the driver lock.
 *
 * The canonical loop of dmirrorRangeFault with read_retry moved before mutex_lock. The check
 * is only meaningful under the lock the invalidate callback takes to set the sequence: between
 * a retry check that said "still valid" and the commit, an munmap's callback can take the
 * (free) mutex, set the sequence, and let the CPU free the pages the commit then maps.
 *
 * Seen in the real world: amdgpu/amdkfd userptrs, whose validity check and GPU page-table
 * update did not run under the lock the notifier took until a patch by Felix Kuehling added
 * "a per-process MMU notifier lock ... to properly synchronize page table updates with MMU
 * notifiers". hmm.rst and mmu_notifier.h require read_retry under the same lock as
 * mmu_interval_set_seq.
 */
import { EBUSY, type HmmRange, hmmRangeFault, mmuIntervalReadBegin, mmuIntervalReadRetry } from 'hmm-emu';
import { type Dmirror, HMM_RANGE_DEFAULT_TIMEOUT_NS, dmirrorDoFault } from '../dmirror/index.js';
import { DmirrorVariant } from './dmirror-variant.js';

export class RetryOutsideLockDmirror extends DmirrorVariant {
  /** dmirrorRangeFault with read_retry before the mutex instead of under it. */
  protected override async rangeFault(dmirror: Dmirror, range: HmmRange): Promise<number> {
    const mm = dmirror.mm;
    const e = mm.engine;
    const timeout = e.now + HMM_RANGE_DEFAULT_TIMEOUT_NS;
    for (;;) {
      if (e.now > timeout) return -EBUSY;
      range.notifierSeq = await mmuIntervalReadBegin(range.notifier);
      await mm.mmapLock.downRead();
      let ret: number;
      try {
        ret = await hmmRangeFault(range);
      } finally {
        mm.mmapLock.upRead();
      }
      if (ret === -EBUSY) continue;
      if (ret !== 0) return ret;
      // BUG: checked before taking the mutex the callback takes: the answer can be stale by the
      // time the commit below runs.
      if (mmuIntervalReadRetry(range.notifier, range.notifierSeq)) continue;
      await dmirror.mutex.lock();
      try {
        return await dmirrorDoFault(dmirror, range);
      } finally {
        dmirror.mutex.unlock();
      }
    }
  }
}
