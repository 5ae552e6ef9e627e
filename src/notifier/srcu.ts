/**
 * The notifier layer's SRCU domain and the invalidate_range_start lockdep map.
 *
 * Models: the `DEFINE_STATIC_SRCU(srcu)` of mm/mmu_notifier.c ("global SRCU for all MMs"):
 * srcu_read_lock / srcu_read_unlock around every walk of a classic list, and
 * synchronize_srcu in mmu_notifier_unregister and mn_hlist_release. One domain per engine
 * (a run is one simulated kernel).
 *
 * Readers may sleep. synchronize() waits for every reader that began before it (a grace
 * period), not for readers that begin later: readers are counted per epoch, synchronize()
 * closes the current epoch and waits until no reader of a closed epoch remains. A
 * synchronize() from inside a read-side section of the same domain waits for itself: the
 * kernel deadlocks there too (mmu_notifier_unregister from a callback), and the engine's
 * deadlock detector reports it.
 *
 * Also here: `__mmu_notifier_invalidate_range_start_map`, the kernel's lockdep map that
 * invalidate_range_start/end "hold" around the callbacks and that mmu_interval_read_begin and
 * mmu_interval_notifier_remove acquire and release at once: a driver that calls them while
 * holding a lock its callback takes gets a lockdep report (LockdepError), even in a run that
 * did not deadlock.
 */
import { type Engine, type LockdepError, type Lockable, WaitQueue } from '../sim/index.js';

/** An SRCU domain. */
export class Srcu {
  private epoch = 0;
  /** epoch -> readers still inside. */
  private readonly readers = new Map<number, number>();
  private readonly wq: WaitQueue;

  constructor(readonly engine: Engine) {
    this.wq = new WaitQueue(engine, 'synchronize_srcu(mmu_notifier srcu)');
  }

  /** srcu_read_lock: returns the index to pass to readUnlock. */
  readLock(): number {
    const ep = this.epoch;
    this.readers.set(ep, (this.readers.get(ep) ?? 0) + 1);
    return ep;
  }

  /** srcu_read_unlock. */
  readUnlock(idx: number): void {
    const n = this.readers.get(idx);
    if (n === undefined) this.engine.bugOn(true, `srcu_read_unlock(${idx}) without srcu_read_lock`);
    else if (n > 1) this.readers.set(idx, n - 1);
    else {
      this.readers.delete(idx);
      this.wq.wakeUpAll();
    }
  }

  /** synchronize_srcu: sleeps until every reader that began before the call has left. */
  async synchronize(): Promise<void> {
    const closed = this.epoch++;
    await this.wq.waitEvent(() => !this.hasReadersUpTo(closed));
  }

  private hasReadersUpTo(epoch: number): boolean {
    for (const ep of this.readers.keys()) if (ep <= epoch) return true;
    return false;
  }
}

const domains = new WeakMap<Engine, Srcu>();

/** The engine's mmu-notifier SRCU domain. */
export function notifierSrcu(e: Engine): Srcu {
  let s = domains.get(e);
  if (s === undefined) {
    s = new Srcu(e);
    domains.set(e, s);
  }
  return s;
}

const maps = new WeakMap<Engine, Lockable>();

function rangeStartMap(e: Engine): Lockable {
  let m = maps.get(e);
  if (m === undefined) {
    m = { name: 'mmu_notifier_invalidate_range_start', lockClass: e.lockdep.classFor('mmu_notifier_invalidate_range_start') };
    maps.set(e, m);
  }
  return m;
}

/** lock_map_acquire(&__mmu_notifier_invalidate_range_start_map). */
export function rangeStartMapAcquire(e: Engine): void {
  const cur = e.requireTask('lock_map_acquire(mmu_notifier_invalidate_range_start)');
  const m = rangeStartMap(e);
  try {
    e.lockdep.acquire(cur, m, m.lockClass, 'exclusive', false);
  } catch (err) {
    e.bug(err as LockdepError);
  }
}

/** lock_map_release(&__mmu_notifier_invalidate_range_start_map). */
export function rangeStartMapRelease(e: Engine): void {
  const cur = e.current;
  if (cur === null) return;
  const m = rangeStartMap(e);
  if (cur.held.some((h) => h.lock === m)) e.lockdep.release(cur, m);
}

/** lock_map_acquire + lock_map_release at once: "this may wait for an invalidation's callbacks". */
export function rangeStartMapMightLock(e: Engine): void {
  rangeStartMapAcquire(e);
  rangeStartMapRelease(e);
}
