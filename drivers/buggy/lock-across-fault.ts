/**
 * Bug 7: holds the driver lock across hmm_range_fault.
 *
 * The canonical loop of dmirrorRangeFault with mutex_lock moved before the walk, so that the
 * commit needs no second lock round trip. hmm_range_fault can fault pages, and a fault can
 * invalidate: a write fault on a page shared copy-on-write after fork breaks the COW under a
 * CLEAR invalidation, whose callback takes the same mutex: the fault waits for itself
 * (lockdep sees the order mutex -> invalidate_range_start -> mutex first).
 *
 * Seen in the real world: the same shape in RDMA ODP, where umem_rwsem was held across
 * invalidate_range_start/end and a nested invalidation (a THP split inside the zap) took it
 * again ("RDMA/odp: Use mmu_interval_notifier_insert()", 2019, fixes the deadlock); hmm.rst and
 * mm/hmm.c forbid holding the update lock across hmm_range_fault for this reason.
 */
import { EBUSY, type HmmRange, hmmRangeFault, mmuIntervalReadBegin, mmuIntervalReadRetry } from 'hmm-emu';
import { type Dmirror, HMM_RANGE_DEFAULT_TIMEOUT_NS, dmirrorDoFault } from '../dmirror/index.js';
import { DmirrorVariant } from './dmirror-variant.js';

export class LockAcrossFaultDmirror extends DmirrorVariant {
  /** dmirrorRangeFault with the mutex taken before hmm_range_fault. */
  protected override async rangeFault(dmirror: Dmirror, range: HmmRange): Promise<number> {
    const mm = dmirror.mm;
    const e = mm.engine;
    const timeout = e.now + HMM_RANGE_DEFAULT_TIMEOUT_NS;
    for (;;) {
      if (e.now > timeout) return -EBUSY;
      range.notifierSeq = await mmuIntervalReadBegin(range.notifier);
      await mm.mmapLock.downRead();
      // BUG: taken before the walk and held across it; a fault inside that invalidates calls
      // our own callback, which takes this mutex.
      await dmirror.mutex.lock();
      let ret: number;
      try {
        ret = await hmmRangeFault(range);
      } finally {
        mm.mmapLock.upRead();
      }
      if (ret !== 0 || mmuIntervalReadRetry(range.notifier, range.notifierSeq)) {
        dmirror.mutex.unlock();
        if (ret === 0 || ret === -EBUSY) continue;
        return ret;
      }
      try {
        return await dmirrorDoFault(dmirror, range);
      } finally {
        dmirror.mutex.unlock();
      }
    }
  }
}
