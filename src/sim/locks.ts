/**
 * Kernel-style locks: SpinLock, Mutex, RwSemaphore.
 *
 * Every lock has a lockdep class (its name, unless given) and is validated at acquisition.
 * Sleeping locks hand ownership directly to the first waiter in FIFO order on release (the
 * woken task already owns the lock when it runs), so waiters are served fairly and writers
 * of an RwSemaphore are not starved: a reader arriving while a writer waits queues behind it.
 * Taking a sleeping lock is a scheduling point before the acquisition (might_sleep, where the
 * kernel could be preempted), and blocks when the lock is taken.
 *
 * A SpinLock is atomic context: no scheduling point may occur while one is held (that is an
 * AtomicSleepError), so it can never be observed held by another task. Its lock() is
 * synchronous; contention cannot happen in a correct model, and a self-deadlock (taking it
 * twice) is reported by lockdep as recursive locking.
 */
import type { Engine, Task, Waitable } from './engine.js';
import { EINVAL, KernelBug, KernelError, LockdepError } from './errors.js';
import type { LockClass, Lockable } from './lockdep.js';

/** Options shared by the locks. */
export interface LockOptions {
  /** Lockdep class name. Default: the lock's name, so same-named locks share a class. */
  readonly lockClass?: string;
}

function checkName(kind: string, name: string): void {
  if (typeof name !== 'string' || name.length === 0) throw new KernelError(EINVAL, `${kind}: name must be a non-empty string: ${JSON.stringify(name)}`);
}

function ownerName(t: Task | null): string {
  return t === null ? 'nobody' : t.name;
}

/** spinlock_t: atomic context while held. */
export class SpinLock implements Lockable {
  readonly lockClass: LockClass;
  private owner: Task | null = null;
  private readonly atomicWhy: string;

  constructor(
    readonly engine: Engine,
    readonly name: string,
    opts: LockOptions = {},
  ) {
    checkName('SpinLock', name);
    this.lockClass = engine.lockdep.classFor(opts.lockClass ?? name);
    this.atomicWhy = `spinlock ${name}`;
  }

  /** spin_lock. Synchronous; enters atomic context. */
  lock(subclass = 0): void {
    const e = this.engine;
    const cur = e.current ?? e.requireTask(`spin_lock(${this.name})`);
    const cls = subclass === 0 ? this.lockClass : e.lockdep.classFor(this.lockClass.name, subclass);
    try {
      e.lockdep.acquire(cur, this, cls, 'exclusive', false);
    } catch (err) {
      e.bug(err as LockdepError);
    }
    if (this.owner !== null) {
      e.lockdep.abandon(cur, this);
      e.bug(new KernelBug(`BUG: spinlock "${this.name}" ${this.owner === cur ? 'recursion' : `held by ${this.owner.name} across a scheduling point`} (task ${cur.name})`));
    }
    this.owner = cur;
    e.enterAtomic(this.atomicWhy);
    if (e.trace.active) e.trace.emit('lock.acquire', { task: cur.id, lock: this.name, mode: 'exclusive', trylock: false });
  }

  /** spin_trylock. */
  trylock(): boolean {
    const e = this.engine;
    const cur = e.current ?? e.requireTask(`spin_trylock(${this.name})`);
    if (this.owner !== null) return false;
    e.lockdep.acquire(cur, this, this.lockClass, 'exclusive', true);
    this.owner = cur;
    e.enterAtomic(this.atomicWhy);
    if (e.trace.active) e.trace.emit('lock.acquire', { task: cur.id, lock: this.name, mode: 'exclusive', trylock: true });
    return true;
  }

  /** spin_unlock. */
  unlock(): void {
    const e = this.engine;
    const cur = e.current ?? e.requireTask(`spin_unlock(${this.name})`);
    if (this.owner !== cur) e.bug(new LockdepError(`bad unlock balance: task ${cur.name} unlocks spinlock "${this.name}" held by ${ownerName(this.owner)}`));
    e.lockdep.release(cur, this);
    this.owner = null;
    e.exitAtomic();
    if (e.trace.active) e.trace.emit('lock.release', { task: cur.id, lock: this.name });
  }

  /** spin_is_locked. */
  isLocked(): boolean {
    return this.owner !== null;
  }

  /** lockdep_assert_held. */
  assertHeld(): void {
    const e = this.engine;
    if (this.owner === null || this.owner !== e.current) e.bug(new KernelBug(`lockdep_assert_held: spinlock "${this.name}" not held by ${ownerName(e.current)} (holder: ${ownerName(this.owner)})`));
  }

  get holder(): Task | null {
    return this.owner;
  }
}

/** struct mutex. */
export class Mutex implements Lockable, Waitable {
  readonly lockClass: LockClass;
  private owner: Task | null = null;
  private readonly waiters: Task[] = [];

  constructor(
    readonly engine: Engine,
    readonly name: string,
    opts: LockOptions = {},
  ) {
    checkName('Mutex', name);
    this.lockClass = engine.lockdep.classFor(opts.lockClass ?? name);
  }

  /** mutex_lock: a scheduling point, then acquire or block. `subclass` as mutex_lock_nested. */
  async lock(subclass = 0): Promise<void> {
    const e = this.engine;
    if (e.mightSleep('mutex_lock', this.name) === null) return new Promise<never>(() => {});
    await e.yield();
    const cur = e.current ?? e.requireTask(`mutex_lock(${this.name})`);
    const cls = subclass === 0 ? this.lockClass : e.lockdep.classFor(this.lockClass.name, subclass);
    try {
      e.lockdep.acquire(cur, this, cls, 'exclusive', false);
    } catch (err) {
      e.bug(err as LockdepError);
    }
    if (this.owner === null) {
      this.owner = cur;
    } else {
      if (e.trace.active) e.trace.emit('lock.contend', { task: cur.id, lock: this.name, holder: this.owner.name });
      this.waiters.push(cur);
      await e.block(this);
      // Handed off by unlock(): we own it now.
    }
    if (e.trace.active) e.trace.emit('lock.acquire', { task: cur.id, lock: this.name, mode: 'exclusive', trylock: false });
  }

  /** mutex_trylock: not a scheduling point. */
  trylock(): boolean {
    const e = this.engine;
    const cur = e.current ?? e.requireTask(`mutex_trylock(${this.name})`);
    if (this.owner !== null) return false;
    e.lockdep.acquire(cur, this, this.lockClass, 'exclusive', true);
    this.owner = cur;
    if (e.trace.active) e.trace.emit('lock.acquire', { task: cur.id, lock: this.name, mode: 'exclusive', trylock: true });
    return true;
  }

  /** mutex_unlock: hands the mutex to the first waiter. Not a scheduling point. */
  unlock(): void {
    const e = this.engine;
    const cur = e.current ?? e.requireTask(`mutex_unlock(${this.name})`);
    if (this.owner !== cur) e.bug(new LockdepError(`bad unlock balance: task ${cur.name} unlocks mutex "${this.name}" held by ${ownerName(this.owner)}`));
    e.lockdep.release(cur, this);
    if (e.trace.active) e.trace.emit('lock.release', { task: cur.id, lock: this.name });
    const next = this.waiters.shift();
    this.owner = next ?? null;
    if (next !== undefined) e.wake(next);
  }

  isLocked(): boolean {
    return this.owner !== null;
  }

  /** lockdep_assert_held. */
  assertHeld(): void {
    const e = this.engine;
    if (this.owner === null || this.owner !== e.current) e.bug(new KernelBug(`lockdep_assert_held: mutex "${this.name}" not held by ${ownerName(e.current)} (holder: ${ownerName(this.owner)})`));
  }

  get holder(): Task | null {
    return this.owner;
  }

  describeWait(): string {
    return `mutex "${this.name}" held by ${ownerName(this.owner)}`;
  }
}

interface RwWaiter {
  readonly task: Task;
  readonly write: boolean;
}

/** struct rw_semaphore (mmap_lock): shared readers or one writer, FIFO, writers not starved. */
export class RwSemaphore implements Lockable, Waitable {
  readonly lockClass: LockClass;
  private writer: Task | null = null;
  private readonly readers: Task[] = [];
  private readonly waiters: RwWaiter[] = [];

  constructor(
    readonly engine: Engine,
    readonly name: string,
    opts: LockOptions = {},
  ) {
    checkName('RwSemaphore', name);
    this.lockClass = engine.lockdep.classFor(opts.lockClass ?? name);
  }

  /** down_read. */
  downRead(): Promise<void> {
    return this.acquire(false);
  }

  /** down_write. */
  downWrite(): Promise<void> {
    return this.acquire(true);
  }

  private async acquire(write: boolean): Promise<void> {
    const e = this.engine;
    if (e.mightSleep(write ? 'down_write' : 'down_read', this.name) === null) return new Promise<never>(() => {});
    await e.yield();
    const cur = e.current ?? e.requireTask(`${write ? 'down_write' : 'down_read'}(${this.name})`);
    try {
      e.lockdep.acquire(cur, this, this.lockClass, write ? 'exclusive' : 'shared', false);
    } catch (err) {
      e.bug(err as LockdepError);
    }
    const free = write ? this.writer === null && this.readers.length === 0 && this.waiters.length === 0 : this.writer === null && this.waiters.length === 0;
    if (free) {
      if (write) this.writer = cur;
      else this.readers.push(cur);
    } else {
      if (e.trace.active) e.trace.emit('lock.contend', { task: cur.id, lock: this.name, holder: this.describeHolders() });
      this.waiters.push({ task: cur, write });
      await e.block(this);
      // Granted by grant(): we hold it now.
    }
    if (e.trace.active) e.trace.emit('lock.acquire', { task: cur.id, lock: this.name, mode: write ? 'exclusive' : 'shared', trylock: false });
  }

  /** down_read_trylock: fails if a writer holds it or anyone waits (as the kernel's). */
  tryDownRead(): boolean {
    const e = this.engine;
    const cur = e.current ?? e.requireTask(`down_read_trylock(${this.name})`);
    if (this.writer !== null || this.waiters.length > 0) return false;
    e.lockdep.acquire(cur, this, this.lockClass, 'shared', true);
    this.readers.push(cur);
    if (e.trace.active) e.trace.emit('lock.acquire', { task: cur.id, lock: this.name, mode: 'shared', trylock: true });
    return true;
  }

  /** down_write_trylock. */
  tryDownWrite(): boolean {
    const e = this.engine;
    const cur = e.current ?? e.requireTask(`down_write_trylock(${this.name})`);
    if (this.writer !== null || this.readers.length > 0 || this.waiters.length > 0) return false;
    e.lockdep.acquire(cur, this, this.lockClass, 'exclusive', true);
    this.writer = cur;
    if (e.trace.active) e.trace.emit('lock.acquire', { task: cur.id, lock: this.name, mode: 'exclusive', trylock: true });
    return true;
  }

  /** up_read. */
  upRead(): void {
    const e = this.engine;
    const cur = e.current ?? e.requireTask(`up_read(${this.name})`);
    const rs = this.readers;
    const i = rs.length > 0 && rs[rs.length - 1] === cur ? rs.length - 1 : rs.indexOf(cur);
    if (i < 0) e.bug(new LockdepError(`bad unlock balance: task ${cur.name} up_read("${this.name}") without holding it for read (holders: ${this.describeHolders()})`));
    e.lockdep.release(cur, this);
    if (i === rs.length - 1) rs.pop();
    else rs.splice(i, 1);
    if (e.trace.active) e.trace.emit('lock.release', { task: cur.id, lock: this.name });
    this.grant();
  }

  /** up_write. */
  upWrite(): void {
    const e = this.engine;
    const cur = e.current ?? e.requireTask(`up_write(${this.name})`);
    if (this.writer !== cur) e.bug(new LockdepError(`bad unlock balance: task ${cur.name} up_write("${this.name}") without holding it for write (holders: ${this.describeHolders()})`));
    e.lockdep.release(cur, this);
    this.writer = null;
    if (e.trace.active) e.trace.emit('lock.release', { task: cur.id, lock: this.name });
    this.grant();
  }

  /** downgrade_write: the writer becomes a reader; queued readers at the head join it. */
  downgradeWrite(): void {
    const e = this.engine;
    const cur = e.current ?? e.requireTask(`downgrade_write(${this.name})`);
    if (this.writer !== cur) e.bug(new KernelBug(`downgrade_write("${this.name}") by ${cur.name}, which does not hold it for write`));
    e.lockdep.release(cur, this);
    e.lockdep.acquire(cur, this, this.lockClass, 'shared', true);
    this.writer = null;
    this.readers.push(cur);
    this.grant();
  }

  /** Hands the lock to the head of the queue: one writer, or every reader up to the first writer. */
  private grant(): void {
    const e = this.engine;
    const q = this.waiters;
    if (this.writer !== null || q.length === 0) return;
    if (q[0]!.write) {
      if (this.readers.length > 0) return;
      const w = q.shift()!;
      this.writer = w.task;
      e.wake(w.task);
      return;
    }
    while (q.length > 0 && !q[0]!.write) {
      const r = q.shift()!;
      this.readers.push(r.task);
      e.wake(r.task);
    }
  }

  /** True if held in any mode. */
  isLocked(): boolean {
    return this.writer !== null || this.readers.length > 0;
  }

  isWriteLocked(): boolean {
    return this.writer !== null;
  }

  /** True if the current task holds it (in any mode). */
  heldByCurrent(): boolean {
    const cur = this.engine.current;
    return cur !== null && (this.writer === cur || this.readers.includes(cur));
  }

  /** lockdep_assert_held: the current task holds it for read or write. */
  assertHeld(): void {
    if (!this.heldByCurrent()) this.engine.bug(new KernelBug(`lockdep_assert_held: rwsem "${this.name}" not held by ${ownerName(this.engine.current)} (holders: ${this.describeHolders()})`));
  }

  /** lockdep_assert_held_write (mmap_assert_write_locked). */
  assertWriteLocked(): void {
    const e = this.engine;
    if (this.writer === null || this.writer !== e.current) e.bug(new KernelBug(`lockdep_assert_held_write: rwsem "${this.name}" not write-held by ${ownerName(e.current)} (holders: ${this.describeHolders()})`));
  }

  private describeHolders(): string {
    if (this.writer !== null) return `writer ${this.writer.name}`;
    if (this.readers.length > 0) return `readers ${this.readers.map((t) => t.name).join(', ')}`;
    return 'nobody';
  }

  describeWait(task: Task): string {
    const w = this.waiters.find((x) => x.task === task);
    return `rwsem "${this.name}" for ${w?.write ? 'write' : 'read'}, held by ${this.describeHolders()}`;
  }
}
