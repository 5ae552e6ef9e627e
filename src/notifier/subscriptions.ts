/**
 * The per-mm notifier state: struct mmu_notifier_subscriptions (+ the 2015 range list).
 *
 * Models: mm/mmu_notifier.c (+ the 2015 patch "mmu_notifier: keep track of active
 * invalidation ranges" v3/v4, which added `ranges`, `nranges` and `wait_queue` to the then
 * struct mmu_notifier_mm).
 *
 * Created lazily by the first registration (__mmu_notifier_register, classic or itree), stored
 * in mm.notifierSubscriptions, and never freed while the mm lives (as in the kernel: it goes in
 * __mmu_notifier_subscriptions_destroy at mmdrop).
 *
 * Locking:
 * - `lock` (spinlock) protects invalidateSeq, activeInvalidateRanges, itree, deferredList,
 *   the classic list (its modifications: readers walk it under SRCU), hasItree after
 *   creation, ranges and nranges. It is a SpinLock: nothing may sleep or yield under it, and
 *   no callback ever runs under it.
 * - Lock order: mmap_lock -> (the invalidate_range_start lockdep map) -> driver locks taken
 *   in callbacks -> subscriptions.lock. Callbacks run without subscriptions.lock.
 * - The classic list is walked under SRCU (srcu.ts); the interval tree is walked without the
 *   lock while invalidate_seq is odd, which forbids tree changes (they go to deferredList).
 */
import { type Engine, type RwSemaphore, SpinLock, WaitQueue } from '../sim/index.js';
import type { MmuNotifier } from './classic.js';
import type { MmuIntervalNotifier } from './interval.js';
import { IntervalTree } from './itree.js';
import type { MmuNotifierRange } from './range.js';

/** What the notifier layer needs of an mm (MmStruct implements it). */
export interface NotifierMm {
  readonly engine: Engine;
  /** For traces. */
  readonly id: number;
  /** mmap_lock. */
  readonly mmapLock: RwSemaphore;
  /** mm->notifier_subscriptions; null until the first registration (created lazily, as __mmu_notifier_register does). */
  notifierSubscriptions: MmuNotifierSubscriptions | null;
  /**
   * mm_take_all_locks(): optional. The kernel's registration takes every rmap lock of the mm
   * (with mmap_lock held for write) so that no invalidate_range_start/end can be in flight
   * while the classic list or has_itree changes. An mm whose invalidations all run under
   * mmap_lock needs no hook. Returns 0 or a negative errno (-EINTR).
   */
  mmTakeAllLocks?(): Promise<number>;
  /** mm_drop_all_locks(): pairs with mmTakeAllLocks. */
  mmDropAllLocks?(): void;
}

declare module '../sim/trace.js' {
  interface TraceEventMap {
    /** An invalidation began (after the 2015 range was published, before any callback). */
    'notifier.invalidate_start': { mm: number; range: number; start: number; end: number; event: number; blockable: boolean; owner: string | null };
    /** A callback returned (emitted right after it returned). `range` is 0 for a ->release from mmu_notifier_unregister (no range). */
    'notifier.callback': {
      mm: number;
      range: number;
      sub: string;
      kind: 'interval' | 'classic';
      phase: 'start' | 'end' | 'release';
      result: number | boolean | null;
    };
    /** An invalidation ended (after every end callback and the 2015 range removal), or a non-blockable start failed with -EAGAIN. */
    'notifier.invalidate_end': { mm: number; range: number };
    /** subscriptions.invalidateSeq changed. */
    'notifier.seq': { mm: number; seq: number };
    'notifier.register': { mm: number; sub: string; kind: 'interval' | 'classic' };
    'notifier.unregister': { mm: number; sub: string; kind: 'interval' | 'classic' };
  }
}

/** struct mmu_notifier_subscriptions. Fields are public for inspection; only this layer writes them. */
export class MmuNotifierSubscriptions {
  /** Protects everything below (see the header). */
  readonly lock: SpinLock;
  /** Head of the classic hlist (newest first, as hlist_add_head); walk with `.next`. */
  first: MmuNotifier | null = null;
  /** An interval notifier was ever inserted: invalidations go through the itree. */
  hasItree = false;
  /** Even: no writer; odd: some invalidation overlaps an interval notifier. Starts at 2. */
  invalidateSeq = 2;
  activeInvalidateRanges = 0;
  /** Interval notifiers by [start, last] (inclusive), keyed by the notifier object. */
  readonly itree = new IntervalTree<MmuIntervalNotifier>();
  /** wake_up_all when invalidateSeq goes even (read_begin, remove wait here). */
  readonly wq: WaitQueue;
  /** Inserts and removes deferred while the itree is invalidating (newest first, as hlist_add_head). */
  readonly deferredList: MmuIntervalNotifier[] = [];
  /** 2015: the active invalidations, oldest first (list_add_tail). */
  readonly ranges: MmuNotifierRange[] = [];
  /** 2015: ranges.length, kept as the patch's counter: waiters wait for it to change. */
  nranges = 0;
  /** 2015: mmu_notifier_mm->wait_queue, woken (wake_up) when a range leaves `ranges`. */
  readonly rangesWq: WaitQueue;
  /** For default notifier names: deterministic per mm. */
  private named = 0;

  constructor(readonly mm: NotifierMm) {
    this.lock = new SpinLock(mm.engine, 'mmu_notifier_subscriptions.lock');
    this.wq = new WaitQueue(mm.engine, 'mmu_notifier_subscriptions.wq');
    this.rangesWq = new WaitQueue(mm.engine, 'mmu_notifier_mm.wait_queue');
  }

  /** @internal a deterministic default name for an unnamed notifier. */
  defaultName(kind: string): string {
    return `${kind}#${++this.named}@mm${this.mm.id}`;
  }
}

/** mm_has_notifiers: any notifier was ever registered on the mm. */
export function mmHasNotifiers(mm: NotifierMm): boolean {
  return mm.notifierSubscriptions !== null;
}

/** @internal Sets subscriptions.invalidateSeq (caller holds the lock) and traces it. */
export function setInvalidateSeq(subs: MmuNotifierSubscriptions, seq: number): void {
  if (subs.invalidateSeq === seq) return;
  subs.invalidateSeq = seq;
  const t = subs.mm.engine.trace;
  if (t.active && t.wants('notifier.seq')) t.emit('notifier.seq', { mm: subs.mm.id, seq });
}

/** @internal Emits 'notifier.callback' if anyone listens. */
export function traceCallback(
  mm: NotifierMm,
  range: number,
  sub: string,
  kind: 'interval' | 'classic',
  phase: 'start' | 'end' | 'release',
  result: number | boolean | null,
): void {
  const t = mm.engine.trace;
  if (t.active && t.wants('notifier.callback')) t.emit('notifier.callback', { mm: mm.id, range, sub, kind, phase, result });
}
