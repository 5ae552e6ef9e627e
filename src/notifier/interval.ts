/**
 * Interval notifiers (5.5+) and their collision-retry sequence protocol.
 *
 * Models: mm/mmu_notifier.c: mn_itree_is_invalidating, mn_itree_inv_start_range,
 * mn_itree_inv_next, mn_itree_inv_end, mn_itree_invalidate, mn_itree_release,
 * mmu_interval_read_begin, __mmu_interval_notifier_insert, mmu_interval_notifier_insert,
 * mmu_interval_notifier_insert_locked, mmu_interval_seq_released,
 * mmu_interval_notifier_remove; include/linux/mmu_notifier.h: mmu_interval_set_seq,
 * mmu_interval_read_retry, mmu_interval_check_retry. (Not modelled: the two-pass
 * invalidate_start/invalidate_finish ops and the BLOCK_THP flag of recent kernels.)
 *
 * Locking: subscriptions.lock protects invalidateSeq, activeInvalidateRanges, the itree, the
 * deferred list and each notifier's tree/deferred membership. A notifier's own invalidateSeq
 * is written by mmuIntervalSetSeq under the driver's "user lock", and read by
 * mmuIntervalReadRetry under that same lock (the lock is what orders them).
 *
 * The sequence (a seqcount that several writers may hold at once), subscriptions.invalidateSeq:
 *   even            no invalidation overlaps any interval notifier; the itree may change
 *   seq |= 1        an invalidation found an overlapping notifier: "fully excluded", the itree
 *                   is frozen (inserts and removes go to deferredList)
 *   seq++ (even)    the last active invalidation ended (activeInvalidateRanges back to 0):
 *                   apply the deferred inserts/removes, wake_up_all(wq)
 * With activeInvalidateRanges != 0 and seq even ("partially excluded"), invalidations run but
 * none overlaps a notifier, and the itree may still change. Overlapping invalidations keep seq
 * odd until the last of them ends. A notifier's invalidateSeq is always odd: set_seq stores the
 * odd cur_seq, and insert starts it at seq - 1 or at an odd seq, so that read_begin can tell
 * "an invalidation of me is in progress" (notifier seq == subscriptions seq) from "idle".
 *
 * The read side (mmu_interval_read_begin / mmu_interval_read_retry), in our words: the
 * driver samples the notifier's seq, builds its mapping without locks (faulting pages,
 * sleeping), then takes its user lock and checks that no invalidation set a new seq meanwhile.
 * The interleaving that must make read_retry return true:
 *
 *   invalidation                               driver (read side)
 *   ------------                               ------------------
 *                                              seq = mmu_interval_read_begin(sub)
 *                                                spin_lock
 *                                                 seq = sub->invalidate_seq   (pairs with set_seq)
 *                                                 seq == subs->invalidate_seq? no: not waiting
 *                                                spin_unlock
 *   mn_itree_inv_start_range:
 *    spin_lock
 *     subs->invalidate_seq |= 1  -> cur_seq
 *    spin_unlock
 *   ops->invalidate(sub, range, cur_seq):
 *    user_lock
 *     mmu_interval_set_seq(sub, cur_seq)
 *    user_unlock
 *                                              (reads the CPU page table: may see old PTEs)
 *   mn_itree_inv_end:
 *    spin_lock
 *     subs->invalidate_seq++   (even again)
 *    spin_unlock; wake_up_all
 *                                              user_lock
 *                                               mmu_interval_read_retry(sub, seq):
 *                                                sub->invalidate_seq != seq -> true: retry
 *                                              user_unlock
 *
 * No barrier is needed: every race is closed by the read_retry under the user lock, which
 * set_seq also takes. read_begin may return a seq that is already stale; it does not loop, so
 * the caller keeps a global time bound. test/notifier/interval.test.ts runs this diagram.
 *
 * Deferred updates: while the itree is invalidating (seq odd), insert puts the notifier on
 * deferredList (and gives it the current odd seq, so its first read_begin waits for the end),
 * and remove puts an in-tree notifier there and sleeps until seq changes: mn_itree_inv_end
 * applies the list before waking anyone, so after remove returns, no callback of the notifier
 * runs or will run. Remove sleeps: calling it from a callback, or while holding a lock a
 * callback takes, deadlocks (the lockdep map catches the latter).
 */
import { EAGAIN, EEXIST, EINVAL, EOVERFLOW, KernelError } from '../sim/index.js';
import { __mmuNotifierRegister, mmuNotifierRegister } from './classic.js';
import { type MmuNotifierRange, ULONG_MAX_ADDR, mmuNotifierRangeBlockable } from './range.js';
import { rangeStartMapMightLock } from './srcu.js';
import { type MmuNotifierSubscriptions, type NotifierMm, setInvalidateSeq, traceCallback } from './subscriptions.js';

/** struct mmu_interval_notifier_ops. */
export interface MmuIntervalNotifierOps {
  /**
   * Upon return the caller must stop using any SPTE in the range. It must call
   * mmuIntervalSetSeq(sub, curSeq) under the driver lock that guards mmuIntervalReadRetry. It
   * may sleep if the range is blockable. Return false only if it had to sleep and the range
   * is not blockable (then the invalidation fails with -EAGAIN).
   */
  invalidate(sub: MmuIntervalNotifier, range: MmuNotifierRange, curSeq: number): Promise<boolean> | boolean;
}

/** struct mmu_interval_notifier. */
export class MmuIntervalNotifier {
  ops: MmuIntervalNotifierOps | null = null;
  /** The mm it is inserted in, or null. */
  mm: NotifierMm | null = null;
  /** interval_tree.start. */
  start = 0;
  /** interval_tree.last: the last address covered (inclusive). */
  last = 0;
  /** Written by set_seq (odd) and insert; read by read_begin/read_retry. */
  invalidateSeq = 0;
  /** @internal in the itree (!RB_EMPTY_NODE). */
  inTree = false;
  /** @internal a remove is in progress. */
  removing = false;
  private givenName: string | undefined;

  constructor(name?: string) {
    if (name !== undefined && (typeof name !== 'string' || name.length === 0)) {
      throw new KernelError(EINVAL, `MmuIntervalNotifier: name must be a non-empty string: ${JSON.stringify(name)}`);
    }
    this.givenName = name;
  }

  /** For traces: the given name, else one assigned at insert (`interval#1@mm1`). */
  get name(): string {
    return this.givenName ?? 'mmu_interval_notifier';
  }

  toString(): string {
    return `mmu_interval_notifier ${this.name} [0x${this.start.toString(16)}, 0x${this.last.toString(16)}]`;
  }

  /** @internal */
  nameIfUnnamed(name: string): void {
    this.givenName ??= name;
  }
}

/** mn_itree_is_invalidating: caller holds subs.lock. */
function mnItreeIsInvalidating(subs: MmuNotifierSubscriptions): boolean {
  return (subs.invalidateSeq & 1) === 1;
}

/**
 * mn_itree_invalidate (and, with `release`, mn_itree_release): active++, seq |= 1 if any
 * notifier overlaps, then each overlapping notifier's invalidate(cur_seq), in interval order.
 * A false return: WARN on a blockable range (and go on); on a non-blockable one, stop and
 * return -EAGAIN after calling mn_itree_inv_end (the non-blocking caller may not call
 * invalidate_range_end). The release pass WARNs on false and always ends.
 * For a non-blockable range the caller runs this in non-blocking context; for a blockable one
 * each callback is preceded by a scheduling point.
 */
export async function mnItreeInvalidate(subs: MmuNotifierSubscriptions, range: MmuNotifierRange, release = false): Promise<number> {
  const mm = subs.mm;
  const e = mm.engine;
  const blockable = mmuNotifierRangeBlockable(range);

  // mn_itree_inv_start_range
  subs.lock.lock();
  subs.activeInvalidateRanges++;
  const hits = subs.itree.search(range.start, range.end - 1);
  if (hits.length > 0) setInvalidateSeq(subs, subs.invalidateSeq | 1);
  const curSeq = subs.invalidateSeq;
  subs.lock.unlock();

  // The itree cannot change while seq is odd, so the list found above is what
  // interval_tree_iter_next would walk.
  let err = 0;
  for (let i = 0; i < hits.length; i++) {
    const sub = hits[i]!;
    const ops = sub.ops!;
    if (blockable) await e.yield();
    const ret = await ops.invalidate(sub, range, curSeq);
    traceCallback(mm, range.id, sub.name, 'interval', 'start', ret);
    if (release) {
      e.warnOn(!ret, `${sub}: invalidate returned false on the release range`);
    } else if (!ret) {
      if (e.warnOn(blockable, `${sub}: invalidate returned false on a blockable range`)) continue;
      err = -EAGAIN;
      break;
    }
  }
  if (err !== 0 || release) mnItreeInvEnd(subs);
  return err;
}

/**
 * mn_itree_inv_end: --active; the last one out with seq odd makes it even, applies the
 * deferred inserts and removes, and wakes every waiter (read_begin, remove).
 */
export function mnItreeInvEnd(subs: MmuNotifierSubscriptions): void {
  subs.lock.lock();
  subs.mm.engine.bugOn(subs.activeInvalidateRanges <= 0, `mn_itree_inv_end: active_invalidate_ranges underflow on mm #${subs.mm.id}`);
  if (--subs.activeInvalidateRanges !== 0 || !mnItreeIsInvalidating(subs)) {
    subs.lock.unlock();
    return;
  }
  // Make invalidate_seq even.
  setInvalidateSeq(subs, subs.invalidateSeq + 1);
  // Deferred like rtnl_unlock(): tree updates queued during the invalidation happen now, so
  // invalidate_range_start never needs a blocking lock.
  const dl = subs.deferredList;
  for (let i = 0; i < dl.length; i++) {
    const sub = dl[i]!;
    if (!sub.inTree) {
      subs.itree.insert(sub.start, sub.last, sub);
      sub.inTree = true;
    } else {
      subs.itree.remove(sub.start, sub.last, sub);
      sub.inTree = false;
    }
  }
  dl.length = 0;
  subs.lock.unlock();
  subs.wq.wakeUpAll();
}

function checkInsertArgs(what: string, sub: MmuIntervalNotifier, mm: NotifierMm, start: number, length: number, ops: MmuIntervalNotifierOps): void {
  if (!(sub instanceof MmuIntervalNotifier)) throw new KernelError(EINVAL, `${what}: not an MmuIntervalNotifier: ${String(sub)}`);
  if (sub.mm !== null) throw new KernelError(EEXIST, `${what}: ${sub} is already inserted in mm #${sub.mm.id}`);
  if (typeof ops !== 'object' || ops === null || typeof ops.invalidate !== 'function') throw new KernelError(EINVAL, `${what}: ops must have an invalidate function`);
  if (typeof mm !== 'object' || mm === null) throw new KernelError(EINVAL, `${what}: no mm`);
  if (!Number.isSafeInteger(start) || start < 0) throw new KernelError(EINVAL, `${what}: start must be an integer >= 0: ${start}`);
  if (!Number.isSafeInteger(length) || length < 0) throw new KernelError(EINVAL, `${what}: length must be an integer >= 0: ${length}`);
}

/** length == 0 || check_add_overflow(start, length - 1, &last) (ULONG_MAX_ADDR stands for ULONG_MAX). */
function overflows(start: number, length: number): boolean {
  return length === 0 || start > ULONG_MAX_ADDR - (length - 1);
}

/** __mmu_interval_notifier_insert, after the checks. */
function mmuIntervalNotifierInsertChecked(sub: MmuIntervalNotifier, mm: NotifierMm, subs: MmuNotifierSubscriptions, start: number, length: number, ops: MmuIntervalNotifierOps): number {
  sub.mm = mm; // pairs with the mmdrop in mmu_interval_notifier_remove
  sub.ops = ops;
  sub.start = start;
  sub.last = start + length - 1;
  sub.inTree = false;
  sub.removing = false;
  sub.nameIfUnnamed(subs.defaultName('interval'));

  // An invalidate_range_start/end in flight may cover any VA, so assume it covers this one.
  // A frozen itree (seq odd) may not change: defer the add to mn_itree_inv_end rather than
  // retry (which could live-lock). Either way the notifier's seq is the current odd seq, so
  // its first read_begin waits for the invalidations to end.
  subs.lock.lock();
  if (subs.activeInvalidateRanges !== 0) {
    if (mnItreeIsInvalidating(subs)) {
      subs.deferredList.unshift(sub);
    } else {
      setInvalidateSeq(subs, subs.invalidateSeq | 1);
      subs.itree.insert(sub.start, sub.last, sub);
      sub.inTree = true;
    }
    sub.invalidateSeq = subs.invalidateSeq;
  } else {
    mm.engine.warnOn(mnItreeIsInvalidating(subs), `mmu_interval_notifier_insert: seq odd with no active invalidation on mm #${mm.id}`);
    // Odd, not equal to the current seq, and far from being wrapped to.
    sub.invalidateSeq = subs.invalidateSeq - 1;
    subs.itree.insert(sub.start, sub.last, sub);
    sub.inTree = true;
  }
  subs.lock.unlock();
  const t = mm.engine.trace;
  if (t.active && t.wants('notifier.register')) t.emit('notifier.register', { mm: mm.id, sub: sub.name, kind: 'interval' });
  return 0;
}

/**
 * mmu_interval_notifier_insert: subscribes `sub` to invalidations of [start, start + length).
 * May take mmap_lock for write (to register the mm for interval notifiers the first time), so
 * the caller must not hold it. Returns 0 or -EOVERFLOW (length 0, or the range wraps past
 * ULONG_MAX_ADDR); bad argument types and a double insert throw KernelError. On return the
 * notifier may not be in the tree yet (deferred): use read_begin/read_retry to build SPTEs.
 */
export async function mmuIntervalNotifierInsert(sub: MmuIntervalNotifier, mm: NotifierMm, start: number, length: number, ops: MmuIntervalNotifierOps): Promise<number> {
  checkInsertArgs('mmu_interval_notifier_insert', sub, mm, start, length, ops);
  if (overflows(start, length)) return -EOVERFLOW;
  mm.engine.mightSleep('mmu_interval_notifier_insert'); // might_lock(&mm->mmap_lock)
  let subs = mm.notifierSubscriptions;
  if (subs === null || !subs.hasItree) {
    const ret = await mmuNotifierRegister(null, mm);
    if (ret !== 0) return ret;
    subs = mm.notifierSubscriptions!;
  }
  if (sub.mm !== null) throw new KernelError(EEXIST, `mmu_interval_notifier_insert: ${sub} was inserted concurrently`);
  return mmuIntervalNotifierInsertChecked(sub, mm, subs, start, length, ops);
}

/** mmu_interval_notifier_insert_locked: as mmuIntervalNotifierInsert, with mmap_lock held for write. */
export async function mmuIntervalNotifierInsertLocked(sub: MmuIntervalNotifier, mm: NotifierMm, start: number, length: number, ops: MmuIntervalNotifierOps): Promise<number> {
  checkInsertArgs('mmu_interval_notifier_insert_locked', sub, mm, start, length, ops);
  mm.mmapLock.assertWriteLocked();
  if (overflows(start, length)) return -EOVERFLOW;
  let subs = mm.notifierSubscriptions;
  if (subs === null || !subs.hasItree) {
    const ret = await __mmuNotifierRegister(null, mm);
    if (ret !== 0) return ret;
    subs = mm.notifierSubscriptions!;
  }
  return mmuIntervalNotifierInsertChecked(sub, mm, subs, start, length, ops);
}

/** mmu_interval_seq_released. */
function mmuIntervalSeqReleased(subs: MmuNotifierSubscriptions, seq: number): boolean {
  subs.lock.lock();
  const ret = subs.invalidateSeq !== seq;
  subs.lock.unlock();
  return ret;
}

/**
 * mmu_interval_notifier_remove: pairs with insert. If the itree is invalidating, the removal
 * is deferred and this sleeps until the invalidation ends. Once it returns, no callback of
 * `sub` runs on any task or will run. It may not be called from a callback, nor with a lock a
 * callback takes. Throws KernelError(EINVAL) if `sub` is not inserted.
 */
export async function mmuIntervalNotifierRemove(sub: MmuIntervalNotifier): Promise<void> {
  if (!(sub instanceof MmuIntervalNotifier) || sub.mm === null || sub.removing) {
    throw new KernelError(EINVAL, `mmu_interval_notifier_remove: ${String(sub)} is not inserted${sub instanceof MmuIntervalNotifier && sub.removing ? ' (a remove is in progress)' : ''}`);
  }
  const mm = sub.mm;
  const e = mm.engine;
  const subs = mm.notifierSubscriptions!;
  e.mightSleep('mmu_interval_notifier_remove');
  sub.removing = true;
  let seq = 0;
  subs.lock.lock();
  if (mnItreeIsInvalidating(subs)) {
    if (!sub.inTree) {
      // Removed after insert deferred it, before the deferred list was processed.
      const i = subs.deferredList.indexOf(sub);
      if (i >= 0) subs.deferredList.splice(i, 1);
    } else {
      subs.deferredList.unshift(sub);
      seq = subs.invalidateSeq;
    }
  } else {
    e.warnOn(!sub.inTree, `mmu_interval_notifier_remove: ${sub} is not in the itree`);
    subs.itree.remove(sub.start, sub.last, sub);
    sub.inTree = false;
  }
  subs.lock.unlock();

  // The possible sleep requires the caller not to hold any lock a callback takes.
  rangeStartMapMightLock(e);
  if (seq !== 0) await subs.wq.waitEvent(() => mmuIntervalSeqReleased(subs, seq));

  sub.mm = null; // pairs with the mmgrab in insert
  sub.removing = false;
  const t = e.trace;
  if (t.active && t.wants('notifier.unregister')) t.emit('notifier.unregister', { mm: mm.id, sub: sub.name, kind: 'interval' });
}

/**
 * mmu_interval_read_begin: begins a read-side critical section (see the diagram above). If an
 * invalidation of `sub` is in progress, sleeps until it ends. Returns the seq to pass to
 * mmuIntervalReadRetry; it may already be stale (read_retry may be true at once).
 */
export async function mmuIntervalReadBegin(sub: MmuIntervalNotifier): Promise<number> {
  const mm = sub.mm;
  if (mm === null) throw new KernelError(EINVAL, `mmu_interval_read_begin: ${String(sub)} is not inserted`);
  const e = mm.engine;
  e.mightSleep('mmu_interval_read_begin');
  const subs = mm.notifierSubscriptions!;
  // A different seq under the user lock than the one we start with: collided. The same seq
  // as subscriptions' now: we are between invalidate_start and end: colliding.
  subs.lock.lock();
  const seq = sub.invalidateSeq; // pairs with the write in mmuIntervalSetSeq
  const isInvalidating = seq === subs.invalidateSeq;
  subs.lock.unlock();

  // sub's seq is always odd (set_seq stores the odd cur_seq), and subscriptions' seq is even
  // when idle, so the sleep below always ends.
  rangeStartMapMightLock(e);
  if (isInvalidating) await subs.wq.waitEvent(() => subs.invalidateSeq !== seq);
  // No loop: read_retry may already be true here; the caller bounds its retries.
  return seq;
}

/**
 * mmu_interval_read_retry: true if an invalidation collided with the critical section begun
 * by read_begin (the caller must retry). Must be called under the user lock that the
 * invalidate callback holds around mmuIntervalSetSeq (pairs with it).
 */
export function mmuIntervalReadRetry(sub: MmuIntervalNotifier, seq: number): boolean {
  return sub.invalidateSeq !== seq;
}

/**
 * mmu_interval_check_retry: a lockless hint inside the critical section. True is reliable (a
 * later read_retry will be true); false is not. Pairs with mmuIntervalSetSeq.
 */
export function mmuIntervalCheckRetry(sub: MmuIntervalNotifier, seq: number): boolean {
  return sub.invalidateSeq !== seq;
}

/**
 * mmu_interval_set_seq: from the invalidate callback, unconditionally, under the user lock
 * that guards read_retry (pairs with mmuIntervalReadBegin / mmuIntervalReadRetry). `curSeq`
 * is the odd cur_seq the callback got.
 */
export function mmuIntervalSetSeq(sub: MmuIntervalNotifier, curSeq: number): void {
  sub.invalidateSeq = curSeq;
}
