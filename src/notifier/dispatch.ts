/**
 * The entry points the mm layer calls: invalidate_range_start/_nonblock/end, release, the
 * young-bit queries, arch_invalidate_secondary_tlbs, subscriptions teardown.
 *
 * Models: include/linux/mmu_notifier.h (the inline wrappers) and mm/mmu_notifier.c
 * (__mmu_notifier_invalidate_range_start/end, __mmu_notifier_release, ...) + the 2015 patch.
 *
 * Order of one invalidation (the kernel's, plus the 2015 list around it):
 *   start: publish the range on `ranges` (2015) -> interval notifiers (mn_itree_invalidate:
 *          active++, seq |= 1 on overlap, each overlapping invalidate()) -> classic
 *          invalidate_range_start()s (newest registered first)
 *   end:   mn_itree_inv_end (active--, the last one makes seq even, applies deferred tree
 *          updates, wake_up_all) -> classic invalidate_range_end()s -> remove the range from
 *          `ranges` (2015), wake_up
 * (nouveau relies on the interval side coming first.)
 *
 * Contexts. A blockable range (mmuNotifierInvalidateRangeStart, the release pass) may sleep:
 * there is a scheduling point before every callback, and callbacks may take mutexes. A
 * non-blockable range (mmuNotifierInvalidateRangeStartNonblock, the OOM reaper's) runs its
 * whole dispatch in non-blocking context, so any scheduling point in a callback is an
 * AtomicSleepError (the kernel checks this with non_block_start() for classic callbacks only;
 * we check interval callbacks too). Callbacks never run under subscriptions.lock.
 * The callbacks of start and end "hold" the invalidate_range_start lockdep map (srcu.ts), as in
 * the kernel; we take it only when the mm has subscriptions.
 *
 * Fast path: an mm without subscriptions (mm.notifierSubscriptions null) does nothing at all
 * on start and end beyond might_sleep: no scheduling point, no allocation, no trace.
 * Cost per range: one spinlock section to publish, an O(log n + k) itree search, a walk of the
 * classic list, one spinlock section to unpublish. No per-page work.
 *
 * Contract checks (KernelBug): starting a range that is in progress; ending a range that was
 * not started on this mm's subscriptions, which also catches a registration that raced with
 * an invalidation in flight (the kernel's mm_take_all_locks excludes that: an mm whose
 * invalidations do not all run under mmap_lock must provide mmTakeAllLocks).
 *
 * Fidelity note, -EAGAIN with both kinds of notifier: when the interval side succeeded and a
 * classic start fails, the kernel's __mmu_notifier_invalidate_range_start returns -EAGAIN and
 * its caller does not call invalidate_range_end, so active_invalidate_ranges stays raised for
 * good (seq can then never go even again after an overlapping invalidation). We reproduce it.
 */
import { MMU_NOTIFIER_RANGE_BLOCKABLE, MMU_NOTIFY_RELEASE, MmuNotifierRange, ULONG_MAX_ADDR, mmuNotifierRangeBlockable } from './range.js';
import {
  mnHlistArchInvalidateSecondaryTlbs,
  mnHlistClearFlushYoung,
  mnHlistClearYoung,
  mnHlistInvalidateEnd,
  mnHlistInvalidateRangeStart,
  mnHlistRelease,
  mnHlistTestYoung,
} from './classic.js';
import { mnItreeInvEnd, mnItreeInvalidate } from './interval.js';
import { rangesPublish, rangesUnpublish } from './ranges2015.js';
import { rangeStartMapAcquire, rangeStartMapRelease } from './srcu.js';
import type { MmuNotifierSubscriptions, NotifierMm } from './subscriptions.js';

function traceStart(subs: MmuNotifierSubscriptions, range: MmuNotifierRange): void {
  const t = subs.mm.engine.trace;
  if (t.active && t.wants('notifier.invalidate_start')) {
    t.emit('notifier.invalidate_start', {
      mm: subs.mm.id,
      range: range.id,
      start: range.start,
      end: range.end,
      event: range.event,
      blockable: mmuNotifierRangeBlockable(range),
      owner: range.owner === null || range.owner === undefined ? null : String(range.owner),
    });
  }
}

function traceEnd(subs: MmuNotifierSubscriptions, range: MmuNotifierRange): void {
  const t = subs.mm.engine.trace;
  if (t.active && t.wants('notifier.invalidate_end')) t.emit('notifier.invalidate_end', { mm: subs.mm.id, range: range.id });
}

/** __mmu_notifier_invalidate_range_start (+ the 2015 publish). */
async function invalidateRangeStart(subs: MmuNotifierSubscriptions, range: MmuNotifierRange): Promise<number> {
  const e = subs.mm.engine;
  e.bugOn(range.published, `mmu_notifier_invalidate_range_start: ${range} is already in progress`);
  rangesPublish(subs, range);
  traceStart(subs, range);
  range.itreeActive = false;
  if (subs.hasItree) {
    const ret = await mnItreeInvalidate(subs, range);
    if (ret !== 0) return ret;
    range.itreeActive = true;
  }
  if (subs.first !== null) return mnHlistInvalidateRangeStart(subs, range);
  return 0;
}

/** __mmu_notifier_invalidate_range_end, without the 2015 removal. */
async function invalidateRangeEnd(subs: MmuNotifierSubscriptions, range: MmuNotifierRange): Promise<void> {
  if (subs.hasItree) {
    subs.mm.engine.bugOn(!range.itreeActive, `mmu_notifier_invalidate_range_end: ${range} did not start on the itree (a notifier registration raced with it?)`);
    range.itreeActive = false;
    mnItreeInvEnd(subs);
  }
  if (subs.first !== null) await mnHlistInvalidateEnd(subs, range);
}

/**
 * mmu_notifier_invalidate_range_start: marks the range blockable and runs every start
 * callback; may sleep. No new secondary mapping of the range may be created until the
 * matching mmuNotifierInvalidateRangeEnd.
 */
export async function mmuNotifierInvalidateRangeStart(range: MmuNotifierRange): Promise<void> {
  const mm = range.mm;
  const e = mm.engine;
  e.mightSleep('mmu_notifier_invalidate_range_start');
  const subs = mm.notifierSubscriptions;
  if (subs === null) return;
  range.flags |= MMU_NOTIFIER_RANGE_BLOCKABLE;
  rangeStartMapAcquire(e);
  try {
    // A failure here was WARNed by the dispatch; the blockable caller goes on (and calls end).
    await invalidateRangeStart(subs, range);
  } finally {
    rangeStartMapRelease(e);
  }
}

/**
 * mmu_notifier_invalidate_range_start_nonblock: marks the range non-blockable; no callback
 * may sleep. Returns 0, or -EAGAIN if a notifier could not proceed without sleeping: then the
 * caller must not touch the PTEs of the range and must not call invalidate_range_end.
 */
export async function mmuNotifierInvalidateRangeStartNonblock(range: MmuNotifierRange): Promise<number> {
  const mm = range.mm;
  const e = mm.engine;
  const subs = mm.notifierSubscriptions;
  if (subs === null) return 0;
  range.flags &= ~MMU_NOTIFIER_RANGE_BLOCKABLE;
  rangeStartMapAcquire(e);
  let ret: number;
  try {
    ret = await e.nonBlocking('invalidate_range_start (non-blockable)', () => invalidateRangeStart(subs, range));
  } finally {
    rangeStartMapRelease(e);
  }
  if (ret !== 0) {
    // No end will come: take the range off the 2015 list here.
    rangesUnpublish(subs, range);
    traceEnd(subs, range);
  }
  return ret;
}

/** mmu_notifier_invalidate_range_end: runs every end callback; may sleep if the range is blockable. */
export async function mmuNotifierInvalidateRangeEnd(range: MmuNotifierRange): Promise<void> {
  const mm = range.mm;
  const e = mm.engine;
  const blockable = mmuNotifierRangeBlockable(range);
  if (blockable) e.mightSleep('mmu_notifier_invalidate_range_end');
  const subs = mm.notifierSubscriptions;
  if (subs === null) return;
  e.bugOn(!range.published, `mmu_notifier_invalidate_range_end: ${range} was not started on mm #${mm.id} (end without start, a double end, or a notifier registration that raced with it)`);
  rangeStartMapAcquire(e);
  try {
    if (blockable) await invalidateRangeEnd(subs, range);
    else await e.nonBlocking('invalidate_range_end (non-blockable)', () => invalidateRangeEnd(subs, range));
  } finally {
    rangeStartMapRelease(e);
  }
  rangesUnpublish(subs, range);
  traceEnd(subs, range);
}

/**
 * mmu_notifier_release (__mmu_notifier_release), from exit_mmap: interval notifiers get a
 * blockable MMU_NOTIFY_RELEASE invalidation of [0, ULONG_MAX_ADDR) (they stay in the tree);
 * classic notifiers get ->release and leave the list (their owners still call unregister,
 * which then only waits). Returns after every ->release has returned (synchronize_srcu).
 */
export async function mmuNotifierRelease(mm: NotifierMm): Promise<void> {
  const subs = mm.notifierSubscriptions;
  if (subs === null) return;
  mm.engine.mightSleep('mmu_notifier_release');
  // mn_itree_release's on-stack range: never on the 2015 list (the patch's release had none).
  const range = new MmuNotifierRange(mm, 0, ULONG_MAX_ADDR, MMU_NOTIFY_RELEASE, MMU_NOTIFIER_RANGE_BLOCKABLE, null);
  traceStart(subs, range);
  if (subs.hasItree) await mnItreeInvalidate(subs, range, true);
  if (subs.first !== null) await mnHlistRelease(subs, mm, range.id);
  traceEnd(subs, range);
}

/** mmu_notifier_clear_flush_young: OR of the classic notifiers' clearFlushYoung. Cannot sleep. */
export function mmuNotifierClearFlushYoung(mm: NotifierMm, start: number, end: number): boolean {
  const subs = mm.notifierSubscriptions;
  return subs !== null && mnHlistClearFlushYoung(subs, start, end);
}

/** mmu_notifier_clear_young: OR of the classic notifiers' clearYoung. Cannot sleep. */
export function mmuNotifierClearYoung(mm: NotifierMm, start: number, end: number): boolean {
  const subs = mm.notifierSubscriptions;
  return subs !== null && mnHlistClearYoung(subs, start, end);
}

/** mmu_notifier_test_young: true at the first classic notifier whose testYoung says young. Cannot sleep. */
export function mmuNotifierTestYoung(mm: NotifierMm, address: number): boolean {
  const subs = mm.notifierSubscriptions;
  return subs !== null && mnHlistTestYoung(subs, address);
}

/** mmu_notifier_arch_invalidate_secondary_tlbs: from TLB flushes, under the PTL. Cannot sleep. */
export function mmuNotifierArchInvalidateSecondaryTlbs(mm: NotifierMm, start: number, end: number): void {
  const subs = mm.notifierSubscriptions;
  if (subs !== null) mnHlistArchInvalidateSecondaryTlbs(subs, start, end);
}

/**
 * mmu_notifier_subscriptions_destroy, from mmdrop when the mm is freed: every classic notifier
 * must be unregistered (BUG_ON, as the kernel) and, since we do not model the mm_count pin an
 * interval notifier holds, every interval notifier removed (BUG_ON, our stand-in for the pin).
 */
export function mmuNotifierSubscriptionsDestroy(mm: NotifierMm): void {
  const subs = mm.notifierSubscriptions;
  if (subs === null) return;
  const e = mm.engine;
  e.bugOn(subs.first !== null, `mmu_notifier_subscriptions_destroy: mm #${mm.id} still has classic notifiers (${subs.first?.name ?? ''}...)`);
  e.bugOn(subs.itree.size > 0 || subs.deferredList.length > 0, `mmu_notifier_subscriptions_destroy: mm #${mm.id} still has ${subs.itree.size + subs.deferredList.length} interval notifier(s)`);
  e.bugOn(subs.nranges !== 0, `mmu_notifier_subscriptions_destroy: mm #${mm.id} has invalidations in progress`);
  mm.notifierSubscriptions = null;
}
