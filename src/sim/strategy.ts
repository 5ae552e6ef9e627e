/**
 * Scheduling strategies: who runs at a scheduling point where more than one task is
 * runnable, and what `engine.choose(n)` returns.
 *
 * - `fifo`: the run queue in order (round robin at yields); choose -> 0. Deterministic.
 * - `random`: uniform among the runnable tasks; choose uniform. Seeded.
 * - `pct:d[:k=K]`: probabilistic concurrency testing (Burckhardt et al., as in Shuttle and
 *   Coyote). Every task gets a distinct random priority >= d; d-1 change points are drawn
 *   uniformly in [1, K], where K estimates the run's steps; the highest-priority runnable
 *   task runs; when the step counter reaches the i-th change point, the task that reached
 *   that scheduling point drops to priority d-i, below every initial priority. A bug of depth
 *   d is found with probability >= 1/(n K^(d-1)). Without `k=`, the runner estimates K with
 *   one fifo run first and records it in the spec, so the spec alone reproduces the run.
 * - `replay`: from a decision log (see decision-log.ts).
 */
import { EINVAL, KernelError, ReplayDivergedError } from './errors.js';
import { Rng } from './rng.js';

/** What a strategy sees of a task. */
export interface SchedTask {
  readonly id: number;
  readonly name: string;
  /** PCT priority; other strategies ignore it. */
  priority: number;
}

export interface Strategy {
  /** The spec that reproduces this strategy with the same seed, e.g. `pct:2:k=140`. */
  readonly spec: string;
  /** Index into `runnable` (at least 2 tasks, in run-queue order) of the task to run next. */
  pick(runnable: readonly SchedTask[], step: number): number;
  /** A value in [0, n), n >= 2. */
  choose(n: number, label: string): number;
  /** Called for every new task, before it is runnable. */
  onSpawn(task: SchedTask): void;
  /** Called at every scheduling point with the task that reached it (PCT's change points). */
  onStep?(step: number, current: SchedTask | null): void;
}

export class FifoStrategy implements Strategy {
  readonly spec = 'fifo';
  pick(): number {
    return 0;
  }
  choose(): number {
    return 0;
  }
  onSpawn(): void {}
}

export class RandomStrategy implements Strategy {
  readonly spec = 'random';
  private readonly rng: Rng;
  constructor(seed: number) {
    this.rng = new Rng(seed);
  }
  pick(runnable: readonly SchedTask[]): number {
    return this.rng.int(runnable.length);
  }
  choose(n: number): number {
    return this.rng.int(n);
  }
  onSpawn(): void {}
}

/** Initial priorities live in [depth, depth + PRIORITY_SPAN); ties broken by task id. */
const PRIORITY_SPAN = 1 << 20;

export class PctStrategy implements Strategy {
  readonly spec: string;
  private readonly rng: Rng;
  /** Change points, ascending; `next` indexes the first one not yet reached. */
  private readonly changePoints: number[];
  private next = 0;

  constructor(
    seed: number,
    readonly depth: number,
    readonly steps: number,
  ) {
    if (!Number.isInteger(depth) || depth < 1 || depth > 64) throw new KernelError(EINVAL, `pct depth must be an integer in [1, 64]: ${depth}`);
    if (!Number.isInteger(steps) || steps < 1) throw new KernelError(EINVAL, `pct step estimate k must be a positive integer: ${steps}`);
    this.spec = `pct:${depth}:k=${steps}`;
    this.rng = new Rng(seed);
    this.changePoints = [];
    for (let i = 0; i < depth - 1; i++) this.changePoints.push(1 + this.rng.int(steps));
    this.changePoints.sort((a, b) => a - b);
  }

  onSpawn(task: SchedTask): void {
    // Distinct: a random integer part, the task id as the fraction.
    task.priority = this.depth + this.rng.int(PRIORITY_SPAN) + (task.id % PRIORITY_SPAN) / PRIORITY_SPAN;
  }

  onStep(step: number, current: SchedTask | null): void {
    while (this.next < this.changePoints.length && this.changePoints[this.next]! <= step) {
      this.next++;
      if (current !== null) current.priority = this.depth - this.next;
    }
  }

  pick(runnable: readonly SchedTask[]): number {
    let best = 0;
    let bestPrio = runnable[0]!.priority;
    for (let i = 1; i < runnable.length; i++) {
      const p = runnable[i]!.priority;
      if (p > bestPrio || (p === bestPrio && runnable[i]!.id < runnable[best]!.id)) {
        best = i;
        bestPrio = p;
      }
    }
    return best;
  }

  choose(n: number): number {
    return this.rng.int(n);
  }
}

/**
 * Replays a decision log. Strict (the default): a recorded task that is not runnable, a
 * value out of range, or running out of decisions is a `ReplayDivergedError`. Lenient (for
 * shrinking): such a decision falls back to the default (first runnable task, value 0).
 */
export class ReplayStrategy implements Strategy {
  private pos = 0;
  constructor(
    readonly spec: string,
    private readonly decisions: readonly number[],
    private readonly strict: boolean,
  ) {}

  /** Decisions consumed so far. */
  get consumed(): number {
    return this.pos;
  }

  private take(what: string): number | undefined {
    if (this.pos >= this.decisions.length) {
      if (this.strict) throw new ReplayDivergedError(`replay ran out of decisions at decision ${this.pos} (${what})`);
      return undefined;
    }
    return this.decisions[this.pos++];
  }

  pick(runnable: readonly SchedTask[]): number {
    const id = this.take(`pick among ${runnable.map((t) => t.name).join(', ')}`);
    if (id === undefined) return 0;
    for (let i = 0; i < runnable.length; i++) if (runnable[i]!.id === id) return i;
    if (this.strict) {
      throw new ReplayDivergedError(
        `replay diverged at decision ${this.pos - 1}: recorded task #${id} is not runnable (runnable: ${runnable.map((t) => `#${t.id} ${t.name}`).join(', ')})`,
      );
    }
    return 0;
  }

  choose(n: number, label: string): number {
    const v = this.take(`choose(${n}) ${label}`);
    if (v === undefined) return 0;
    if (v < n) return v;
    if (this.strict) throw new ReplayDivergedError(`replay diverged at decision ${this.pos - 1}: recorded value ${v} out of range for choose(${n}) ${label}`);
    return 0;
  }

  onSpawn(): void {}
}

/** A parsed strategy spec. `steps` is undefined for `pct:d` without `k=`. */
export type StrategySpec =
  | { readonly kind: 'fifo' }
  | { readonly kind: 'random' }
  | { readonly kind: 'pct'; readonly depth: number; readonly steps: number | undefined };

/** Parses `fifo`, `random`, `pct`, `pct:D`, `pct:D:k=K`. Throws `KernelError(EINVAL)` naming the bad spec. */
export function parseStrategy(spec: string): StrategySpec {
  if (spec === 'fifo') return { kind: 'fifo' };
  if (spec === 'random') return { kind: 'random' };
  const m = /^pct(?::(\d+))?(?::k=(\d+))?$/.exec(spec);
  if (m !== null) {
    const depth = m[1] === undefined ? 3 : Number(m[1]);
    const steps = m[2] === undefined ? undefined : Number(m[2]);
    if (depth < 1 || depth > 64) throw new KernelError(EINVAL, `pct depth must be in [1, 64]: ${JSON.stringify(spec)}`);
    if (steps !== undefined && steps < 1) throw new KernelError(EINVAL, `pct k must be >= 1: ${JSON.stringify(spec)}`);
    return { kind: 'pct', depth, steps };
  }
  throw new KernelError(EINVAL, `unknown strategy ${JSON.stringify(spec)} (expected fifo, random, pct:D or pct:D:k=K)`);
}

/** Builds a strategy from a spec whose PCT step estimate is known. */
export function makeStrategy(spec: StrategySpec, seed: number): Strategy {
  switch (spec.kind) {
    case 'fifo':
      return new FifoStrategy();
    case 'random':
      return new RandomStrategy(seed);
    case 'pct':
      if (spec.steps === undefined) throw new KernelError(EINVAL, 'pct needs a step estimate k here: use runProgram/explore, which estimate it');
      return new PctStrategy(seed, spec.depth, spec.steps);
  }
}
