/**
 * Bug 3: reads the notifier sequence after the walk instead of before it.
 *
 * The canonical loop of dmirrorRangeFault with mmu_interval_read_begin moved from the top of
 * the loop to after hmm_range_fault (hmm_range_fault checks the sequence it is given only at
 * its start and at internal restarts, so the first call of each fault returns -EBUSY and the
 * next one runs on the sequence read after the previous walk). read_retry then compares with
 * a sequence taken after the snapshot: an invalidation that ran while the walk was between two
 * page tables (madvise(DONTNEED), migration, a COW: anything under mmap_lock for read) is
 * invisible to it, and the page it zapped and freed is committed.
 *
 * Why munmap does not show it here: munmap takes mmap_lock for write, which excludes the walk,
 * and a one-page walk has no scheduling point after its sequence check; the target is a walk
 * across two page tables raced by madvise(DONTNEED).
 *
 * Seen in the real world: the hmm_mirror range API before 5.5, whose `valid` flag was reset by
 * invalidate_range_end, so a driver checking it after the walk missed an invalidation that
 * began and ended during it ("mm/hmm: allow hmm_range to be used with a mmu_interval_notifier
 * or hmm_mirror", Jason Gunthorpe, 2019, draws exactly this race).
 */
import { EBUSY, type HmmRange, hmmRangeFault, mmuIntervalReadBegin, mmuIntervalReadRetry } from 'hmm-emu';
import { type Dmirror, HMM_RANGE_DEFAULT_TIMEOUT_NS, dmirrorDoFault } from '../dmirror/index.js';
import { DmirrorVariant } from './dmirror-variant.js';

export class SeqAfterWalkDmirror extends DmirrorVariant {
  /** dmirrorRangeFault with read_begin after the walk. */
  protected override async rangeFault(dmirror: Dmirror, range: HmmRange): Promise<number> {
    const mm = dmirror.mm;
    const e = mm.engine;
    const timeout = e.now + HMM_RANGE_DEFAULT_TIMEOUT_NS;
    for (;;) {
      if (e.now > timeout) return -EBUSY;
      await mm.mmapLock.downRead();
      let ret: number;
      try {
        ret = await hmmRangeFault(range);
      } finally {
        mm.mmapLock.upRead();
      }
      // BUG: read here, after the walk; the reference reads it at the top of the loop.
      range.notifierSeq = await mmuIntervalReadBegin(range.notifier);
      if (ret === -EBUSY) continue;
      if (ret !== 0) return ret;
      await dmirror.mutex.lock();
      if (mmuIntervalReadRetry(range.notifier, range.notifierSeq)) {
        dmirror.mutex.unlock();
        continue;
      }
      try {
        return await dmirrorDoFault(dmirror, range);
      } finally {
        dmirror.mutex.unlock();
      }
    }
  }
}
