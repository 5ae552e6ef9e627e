/**
 * Bug 5: blocks in its invalidate callback on a non-blockable range.
 *
 * dmirrorIntervalInvalidate without its non-blockable branch: every range takes the mutex with
 * mutex_lock and waits for the TLB fence. The OOM reaper (oomReapTaskMm) invalidates where it
 * may not sleep (mmu_notifier_invalidate_range_start_nonblock); the reference trylocks and
 * refuses (the reaper backs off and retries), this one sleeps in atomic context.
 *
 * Seen in the real world: before "mm, oom: distinguish blockable mode for mmu notifiers"
 * (Michal Hocko, 4.19) the GPU and RDMA notifiers (amdgpu, radeon, i915 userptr, umem_odp,
 * ...) slept in invalidate_range_start, so the OOM reaper skipped every mm with a notifier
 * ("mm, oom_reaper: skip mm structs with mmu notifiers"); the patch made them trylock and
 * return -EAGAIN when they cannot make progress.
 */
import { type MmuIntervalNotifier, type MmuNotifierRange, mmuIntervalSetSeq, mmuNotifierRangeBlockable } from 'hmm-emu';
import { type Dmirror, dmirrorDoUpdate } from '../dmirror/index.js';
import { DmirrorVariant } from './dmirror-variant.js';

export class SleepNonblockableDmirror extends DmirrorVariant {
  protected override invalidate(dmirror: Dmirror, mni: MmuIntervalNotifier, range: MmuNotifierRange, curSeq: number): boolean | Promise<boolean> {
    if (mmuNotifierRangeBlockable(range)) return super.invalidate(dmirror, mni, range, curSeq);
    // BUG: a non-blockable range is handled like a blockable one (the reference: trylock, and
    // refuse when entries would need a shootdown).
    return invalidateSleeping(dmirror, mni, range, curSeq);
  }
}

/** dmirrorInvalidateBlocking: mutex_lock, set_seq, erase, wait for the TLB fence. */
async function invalidateSleeping(dmirror: Dmirror, mni: MmuIntervalNotifier, range: MmuNotifierRange, curSeq: number): Promise<boolean> {
  await dmirror.mutex.lock();
  try {
    mmuIntervalSetSeq(mni, curSeq);
    dmirror.lastNonOwnSeq = curSeq;
    await dmirrorDoUpdate(dmirror, range.start, range.end);
  } finally {
    dmirror.mutex.unlock();
  }
  return true;
}
