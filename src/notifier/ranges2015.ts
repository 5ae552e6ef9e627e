/**
 * The 2015 active-range tracking: the project's seed. Never merged upstream (the interval
 * notifier replaced it in 5.5); reproduced faithfully, including its known weaknesses.
 *
 * Models: "mmu_notifier: keep track of active invalidation ranges" v3 (HMM v8, May 2015) and
 * v4 (HMM v9, Jul 2015), as used by "HMM: add device page fault support v4".
 *
 * State, on MmuNotifierSubscriptions and under subscriptions.lock: `ranges` (the active
 * invalidations, list_add_tail order) and `nranges` (their count); `rangesWq` is the patch's
 * wait_queue.
 * - invalidate_range_start publishes the range (append, nranges++) BEFORE any start callback
 *   (interval or classic) runs, and wakes nobody: waiters only wait for invalidations to end.
 * - invalidate_range_end removes it (nranges--) AFTER every end callback, then wake_up(), so
 *   that the callbacks finish their work before any waiter resumes.
 * - A non-blockable start that fails with -EAGAIN is not followed by an end, so the dispatch
 *   removes the range (and wakes) itself (our addition: the patch predates non-blockable
 *   ranges).
 * - An mm without subscriptions (no notifier ever registered: mm_has_notifiers false) tracks
 *   nothing, and every range is valid there.
 *
 * Helpers:
 * - mmuNotifierRangeIsValidLocked(mm, start, end): caller holds subscriptions.lock; false if
 *   an active range overlaps [start, end) (half-open: r.end > start && r.start < end).
 * - mmuNotifierRangeIsValid: the same, taking the lock.
 * - mmuNotifierRangeWaitValid: while not valid, snapshot nranges, drop the lock, wait until
 *   nranges != snapshot, relock and recheck. It wakes on ANY change of the count (a
 *   non-overlapping range ending wakes it too), hence != and not <; it then re-waits if the
 *   range is still invalid.
 *
 * Review points, reproduced as they were:
 * - Hubbard (Jun 2015): the commit message says users must block new invalidations from
 *   their invalidate_range_start callback, yet nothing in the core (nor in hmm.c) blocks new
 *   invalidations; only nranges-- wakes. Here too: nothing blocks a new invalidation; a range
 *   that is valid when wait_valid returns may be invalid an instant later. Glisse's answer:
 *   the sync is two-sided (hmm_device_fault_start waits for conflicting invalidations;
 *   hmm_wait_device_fault, from the start callback, makes conflicting faults back off and
 *   waits for them), so the invalidation always wins.
 * - Hairgrove (Sep 2015): the documented sequence
 *       again: wait_valid(); lock_block_new_invalidation(); if (!is_valid()) goto again; unlock
 *   can deadlock, because a new range is on the list before its start callback runs:
 *
 *       thread A                              thread B
 *       --------                              --------
 *       mmu_notifier_range_wait_valid()
 *         // returns: valid
 *                                             __mmu_notifier_invalidate_range_start
 *                                               list_add_tail(range)   // now invalid
 *       lock_block_new_invalidation()
 *                                               ->invalidate_range_start
 *                                                 blocks on A's lock
 *       mmu_notifier_range_is_valid()  // false
 *       goto again
 *       mmu_notifier_range_wait_valid() // waits for B's range to end: forever
 *
 *   HMM avoided it by dropping the lock on failure (-EAGAIN and retry), trading the deadlock
 *   for possible starvation of the fault. test/notifier/ranges2015.test.ts runs this diagram
 *   and gets the engine's DeadlockError.
 */
import { EINVAL, KernelError } from '../sim/index.js';
import type { MmuNotifierRange } from './range.js';
import type { MmuNotifierSubscriptions, NotifierMm } from './subscriptions.js';

/** @internal invalidate_range_start: publish `range` (no wake-up). */
export function rangesPublish(subs: MmuNotifierSubscriptions, range: MmuNotifierRange): void {
  subs.lock.lock();
  subs.ranges.push(range);
  subs.nranges++;
  range.published = true;
  subs.lock.unlock();
}

/** @internal invalidate_range_end (after the end callbacks): remove `range`, then wake_up. */
export function rangesUnpublish(subs: MmuNotifierSubscriptions, range: MmuNotifierRange): void {
  subs.lock.lock();
  const rs = subs.ranges;
  // Usually the oldest or the newest range: scan from the end, then splice.
  let i = rs.length - 1;
  while (i >= 0 && rs[i] !== range) i--;
  subs.mm.engine.bugOn(i < 0, `invalidate_range_end: ${range} is not an active range of mm #${subs.mm.id}`);
  rs.splice(i, 1);
  subs.nranges--;
  range.published = false;
  subs.lock.unlock();
  // After the callbacks, so they do their job before any waiter resumes.
  subs.rangesWq.wakeUp();
}

function checkSpan(what: string, start: number, end: number): void {
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || start >= end) {
    throw new KernelError(EINVAL, `${what}: need integers 0 <= start < end: [${start}, ${end})`);
  }
}

function isValidLocked(subs: MmuNotifierSubscriptions, start: number, end: number): boolean {
  const rs = subs.ranges;
  for (let i = 0; i < rs.length; i++) {
    const r = rs[i]!;
    if (r.end > start && r.start < end) return false;
  }
  return true;
}

/**
 * mmu_notifier_range_is_valid_locked: no active invalidation overlaps [start, end). The
 * caller holds mm.notifierSubscriptions.lock. True on an mm without subscriptions.
 */
export function mmuNotifierRangeIsValidLocked(mm: NotifierMm, start: number, end: number): boolean {
  checkSpan('mmu_notifier_range_is_valid_locked', start, end);
  const subs = mm.notifierSubscriptions;
  if (subs === null) return true;
  subs.lock.assertHeld();
  return isValidLocked(subs, start, end);
}

/** mmu_notifier_range_is_valid: as the _locked variant, taking subscriptions.lock. */
export function mmuNotifierRangeIsValid(mm: NotifierMm, start: number, end: number): boolean {
  checkSpan('mmu_notifier_range_is_valid', start, end);
  const subs = mm.notifierSubscriptions;
  if (subs === null) return true;
  subs.lock.lock();
  const valid = isValidLocked(subs, start, end);
  subs.lock.unlock();
  return valid;
}

/**
 * mmu_notifier_range_wait_valid: sleeps until no active invalidation overlaps [start, end).
 * By the time it returns a new overlapping invalidation may have begun: nothing blocks new
 * ones (see the header). Wakes on any change of nranges and rechecks.
 */
export async function mmuNotifierRangeWaitValid(mm: NotifierMm, start: number, end: number): Promise<void> {
  checkSpan('mmu_notifier_range_wait_valid', start, end);
  mm.engine.mightSleep('mmu_notifier_range_wait_valid');
  const subs = mm.notifierSubscriptions;
  if (subs === null) return;
  subs.lock.lock();
  while (!isValidLocked(subs, start, end)) {
    const nranges = subs.nranges;
    subs.lock.unlock();
    await subs.rangesWq.waitEvent(() => subs.nranges !== nranges);
    subs.lock.lock();
  }
  subs.lock.unlock();
}
