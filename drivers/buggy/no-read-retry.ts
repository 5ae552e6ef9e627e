/**
 * Bug 1: commits without mmu_interval_read_retry.
 *
 * The canonical loop of dmirrorRangeFault with the check under the mutex left out: the
 * snapshot hmm_range_fault returned is committed whatever happened since. An munmap that ran
 * between the walk and the commit (its callback took the mutex, erased nothing yet mapped,
 * and the CPU freed the pages) leaves the device mapping a freed frame.
 *
 * Seen in the real world: amdgpu's userptr path, which Jason Gunthorpe's conversion to
 * mmu_interval_notifier ("drm/amdgpu: Use mmu_interval_notifier instead of hmm_mirror", 2019)
 * describes as not using "the collision retry lock that hmm provides correctly".
 */
import { EBUSY, type HmmRange, hmmRangeFault, mmuIntervalReadBegin } from 'hmm-emu';
import { type Dmirror, HMM_RANGE_DEFAULT_TIMEOUT_NS, dmirrorDoFault } from '../dmirror/index.js';
import { DmirrorVariant } from './dmirror-variant.js';

export class NoReadRetryDmirror extends DmirrorVariant {
  /** dmirrorRangeFault without mmu_interval_read_retry. */
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
      await dmirror.mutex.lock();
      // BUG: no `if (mmuIntervalReadRetry(range.notifier, range.notifierSeq)) { unlock; continue; }`
      // here: an invalidation since read_begin goes unnoticed and its freed pages get mapped.
      try {
        return await dmirrorDoFault(dmirror, range);
      } finally {
        dmirror.mutex.unlock();
      }
    }
  }
}
