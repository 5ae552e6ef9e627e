/**
 * Lockdep: the kernel's lock validator, reduced to what a model needs.
 *
 * Locks belong to classes (by name, plus a nesting subclass, as `mutex_lock_nested`). At each
 * blocking acquisition, every class the task already holds gains an edge to the acquired
 * class; an edge that closes a cycle in the class graph is a `LockdepError` that names both
 * chains, even when this run did not deadlock: some other interleaving would. Acquiring a
 * class the task already holds is "possible recursive locking". A trylock cannot deadlock,
 * so it adds no edge to the lock it takes, but later acquisitions order after it.
 *
 * The held stack is kept even with the graph off: deadlock reports and the exit check use it.
 * The graph is per engine (per run); edges are checked once, when first seen, so a repeated
 * order costs one map lookup.
 */
import { KernelBug, LockdepError } from './errors.js';

export class LockClass {
  constructor(
    readonly id: number,
    readonly name: string,
  ) {}
}

/** Anything lockdep tracks: mutexes, spinlocks, rw-semaphores. */
export interface Lockable {
  readonly name: string;
  readonly lockClass: LockClass;
}

export interface HeldLock {
  readonly lock: Lockable;
  readonly cls: LockClass;
  readonly mode: 'exclusive' | 'shared';
  readonly trylock: boolean;
}

/** What lockdep needs of a task. */
export interface LockdepTask {
  readonly name: string;
  readonly held: HeldLock[];
}

export class Lockdep {
  private readonly classes = new Map<string, LockClass>();
  private readonly byId: LockClass[] = [];
  /** from class id -> (to class id -> the chain that first created the edge). */
  private readonly edges = new Map<number, Map<number, string>>();

  constructor(readonly enabled: boolean) {}

  /** The class for `name` at nesting level `subclass` (0 unless nested on purpose). */
  classFor(name: string, subclass = 0): LockClass {
    const key = subclass === 0 ? name : `${name}/${subclass}`;
    let cls = this.classes.get(key);
    if (cls === undefined) {
      cls = new LockClass(this.byId.length, key);
      this.classes.set(key, cls);
      this.byId.push(cls);
    }
    return cls;
  }

  /**
   * Validates and records an acquisition by `task`. Call before blocking for the lock (the
   * kernel's lock_acquire runs before the wait), with `trylock` for trylocks that succeeded.
   */
  acquire(task: LockdepTask, lock: Lockable, cls: LockClass, mode: 'exclusive' | 'shared', trylock: boolean): void {
    if (this.enabled && !trylock) this.check(task, lock, cls);
    task.held.push({ lock, cls, mode, trylock });
  }

  /** Removes `lock` from the held stack (any position: locks need not be released in order). */
  release(task: LockdepTask, lock: Lockable): void {
    const held = task.held;
    const top = held.length - 1;
    if (top >= 0 && held[top]!.lock === lock) {
      held.pop(); // the common, nested case
      return;
    }
    for (let i = top - 1; i >= 0; i--) {
      if (held[i]!.lock === lock) {
        held.splice(i, 1);
        return;
      }
    }
    throw new LockdepError(`bad unlock balance: task ${task.name} releases "${lock.name}", which it does not hold`);
  }

  /** Forgets an acquisition that never completed (a failed trylock path does not call this). */
  abandon(task: LockdepTask, lock: Lockable): void {
    const held = task.held;
    for (let i = held.length - 1; i >= 0; i--) {
      if (held[i]!.lock === lock) {
        held.splice(i, 1);
        return;
      }
    }
    throw new KernelBug(`lockdep: abandon of "${lock.name}" not in ${task.name}'s held stack`);
  }

  private check(task: LockdepTask, lock: Lockable, cls: LockClass): void {
    const held = task.held;
    for (let i = 0; i < held.length; i++) {
      const h = held[i]!;
      if (h.cls === cls) {
        throw new LockdepError(
          `possible recursive locking: task ${task.name} acquires "${lock.name}" (class ${cls.name}) while holding "${h.lock.name}" of the same class` +
            ` (held: ${describeHeld(held)}); use a nesting subclass if this is intended`,
        );
      }
    }
    for (let i = 0; i < held.length; i++) {
      const h = held[i]!;
      let out = this.edges.get(h.cls.id);
      if (out === undefined) {
        out = new Map();
        this.edges.set(h.cls.id, out);
      }
      if (out.has(cls.id)) continue;
      const path = this.findPath(cls.id, h.cls.id);
      const chain = `${task.name}: acquires "${cls.name}" while holding ${describeHeld(held)}`;
      if (path !== null) {
        const existing = path.map((e) => `  ${this.byId[e.from]!.name} -> ${this.byId[e.to]!.name}, first seen as ${e.chain}`).join('\n');
        throw new LockdepError(
          `possible circular locking dependency: ${h.cls.name} -> ${cls.name} closes a cycle\n` +
            `new chain:\n  ${chain}\n` +
            `existing chain (${cls.name} ... ${h.cls.name}):\n${existing}`,
        );
      }
      out.set(cls.id, chain);
    }
  }

  /** Breadth-first path of edges from class `from` to class `to`, or null. */
  private findPath(from: number, to: number): Array<{ from: number; to: number; chain: string }> | null {
    const parent = new Map<number, { from: number; chain: string }>();
    const queue = [from];
    const seen = new Set([from]);
    while (queue.length > 0) {
      const c = queue.shift()!;
      if (c === to) {
        const path: Array<{ from: number; to: number; chain: string }> = [];
        for (let x = c; x !== from; ) {
          const p = parent.get(x)!;
          path.unshift({ from: p.from, to: x, chain: p.chain });
          x = p.from;
        }
        return path;
      }
      const out = this.edges.get(c);
      if (out === undefined) continue;
      for (const [n, chain] of out) {
        if (seen.has(n)) continue;
        seen.add(n);
        parent.set(n, { from: c, chain });
        queue.push(n);
      }
    }
    return null;
  }
}

export function describeHeld(held: readonly HeldLock[]): string {
  return `[${held.map((h) => `"${h.lock.name}"${h.mode === 'shared' ? '(read)' : ''}`).join(', ')}]`;
}
