/**
 * The engine: virtual time, tasks and the scheduler.
 *
 * Everything runs in one JS thread. A task is an async function; exactly one task runs at a
 * time, and control changes only at scheduling points: `yield()`, `sleep(ns)`, blocking on a
 * primitive (`block`, used by Mutex, RwSemaphore, WaitQueue, Completion, join) and task exit.
 * At a scheduling point the task parks itself (runnable, sleeping or blocked), the strategy
 * picks the next runnable task, and the engine resumes it by resolving the promise that task
 * is awaiting: a direct handoff, one promise per switch, with no central loop.
 *
 * When no task is runnable, time jumps to the earliest timer. When no timer is pending
 * either, the run ends: cleanly if every task is done, else with a DeadlockError naming each
 * blocked task and what it waits on.
 *
 * Determinism: the only inputs are the seed and the strategy. Every choice among more than
 * one option (a pick among runnable tasks, a `choose(n)`) is appended to the decision log;
 * replaying the log (strategy `ReplayStrategy`) reproduces the run exactly.
 *
 * Contract for model code: await every engine call at once. A task that awaits anything the
 * engine does not control is caught by the host watchdog (host.ts) and fails the run with an
 * UncontrolledAwaitError naming it, instead of hanging.
 *
 * A bug (SimError) fails the run at once: `run()` resolves with it, every other task stays
 * parked forever (and is collected), and later engine calls from those tasks never resume.
 */
import { formatSchedule } from './decision-log.js';
import {
  AtomicSleepError,
  DeadlockError,
  EDEADLK,
  EINVAL,
  KernelBug,
  KernelError,
  KernelWarning,
  RunawayError,
  SimError,
  TaskCrashedError,
  UncontrolledAwaitError,
} from './errors.js';
import { afterHostTurn } from './host.js';
import { type HeldLock, Lockdep, type LockdepTask, describeHeld } from './lockdep.js';
import { ReplayStrategy, type SchedTask, type Strategy, makeStrategy, parseStrategy } from './strategy.js';
import { TraceBus } from './trace.js';

export type TaskState = 'runnable' | 'running' | 'sleeping' | 'blocked' | 'done';

/** Something a task can block on; says what, for deadlock reports. */
export interface Waitable {
  describeWait(task: Task): string;
  /** Called when a blocked task's timeout fires: remove it from the wait list. */
  cancelWait?(task: Task): void;
}

/** A simulated thread of control: a CPU thread, a device engine, a driver worker, a kthread. */
export class Task<T = unknown> implements SchedTask, LockdepTask {
  /** Locks held, in acquisition order (lockdep's held stack). */
  readonly held: HeldLock[] = [];
  /** PCT priority (strategy-owned). */
  priority = 0;
  state: TaskState = 'runnable';
  /** The value `fn` returned, once done. */
  result: T | undefined = undefined;
  /** @internal resumes the task: resolves the promise it awaits, or starts it. */
  resume: (() => void) | null = null;
  /** @internal atomic / non-blocking nesting depth and why. */
  atomic = 0;
  /** @internal */
  readonly atomicWhy: string[] = [];
  /** @internal what the task is blocked on. */
  waitsOn: Waitable | null = null;
  /** @internal bumped at every block and wake; a timer whose token is stale is ignored. */
  wakeToken = 0;
  /** @internal set when the last block ended by timeout. */
  timedOut = false;
  /** @internal */
  joined = false;
  /** @internal */
  readonly joiners: Task[] = [];

  constructor(
    readonly engine: Engine,
    readonly id: number,
    readonly name: string,
    readonly parent: Task | null,
  ) {}

  /** Waits (a scheduling point if not yet done) for the task to finish; returns its result. Once per task. */
  join(): Promise<T> {
    return this.engine.join(this);
  }

  toString(): string {
    return `task #${this.id} ${this.name}`;
  }
}

/** Options of an Engine. */
export interface EngineOptions {
  /** Seed of the strategy's PRNG; an integer in [0, 2^32). Default 0. */
  readonly seed?: number;
  /** A strategy spec (`fifo`, `random`, `pct:D:k=K`) or a Strategy. Default `fifo`. */
  readonly strategy?: string | Strategy;
  /** Replay this decision log instead of deciding (strict by default). */
  readonly replay?: { readonly decisions: readonly number[]; readonly strict?: boolean };
  /** Run-away guard: the run fails with RunawayError after this many scheduling steps. Default 10,000,000. */
  readonly maxSteps?: number;
  /** Lock-order validation. Default true. */
  readonly lockdep?: boolean;
  /** Make WARN_ON fatal (KernelWarning). Default false. */
  readonly warnFatal?: boolean;
}

/** The outcome of a run: the verdict and everything needed to replay it. */
export interface RunResult {
  readonly ok: boolean;
  readonly failure: Error | null;
  readonly seed: number;
  readonly strategy: string;
  readonly decisions: readonly number[];
  /** Scheduling steps taken. */
  readonly steps: number;
  /** Virtual time at the end, in ns. */
  readonly time: number;
  /** WARN_ONs that fired. */
  readonly warnings: number;
  /** The schedule as one printable string (see `formatSchedule`); encoded on first read. */
  readonly schedule: string;
}

/** A JSON-safe view of a run result. */
export function runResultToJSON(r: RunResult): Record<string, unknown> {
  return {
    ok: r.ok,
    failure: r.failure === null ? null : { name: r.failure.name, code: (r.failure as { code?: unknown }).code ?? null, message: r.failure.message },
    seed: r.seed,
    strategy: r.strategy,
    steps: r.steps,
    time: r.time,
    warnings: r.warnings,
    schedule: r.schedule,
    decisions: r.decisions,
  };
}

interface Timer {
  readonly time: number;
  readonly seq: number;
  readonly task: Task;
  readonly token: number;
}

/**
 * A promise that never settles, for a task that reaches a scheduling point after the run
 * stopped: it stays suspended and is collected with the engine. A fresh one each time: a
 * shared module-level promise would keep every such continuation (and through it the whole
 * world of every run) reachable for the life of the process.
 */
function never<T>(): Promise<T> {
  return new Promise<T>(() => {});
}

function validSeed(seed: number): number {
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new KernelError(EINVAL, `seed must be an integer in [0, 2^32): ${seed}`);
  }
  return seed;
}

export class Engine {
  readonly seed: number;
  readonly trace: TraceBus;
  readonly lockdep: Lockdep;
  readonly strategy: Strategy;
  private readonly maxSteps: number;
  private readonly warnFatal: boolean;

  private clock = 0;
  private stepCount = 0;
  private cur: Task | null = null;
  private readonly runq: Task[] = [];
  private readonly tasks: Task[] = [];
  private live = 0;
  private readonly log: number[] = [];
  private timers: Timer[] = [];
  private timerSeq = 0;
  private warnCount = 0;
  private started = false;
  private stopped = false;
  private failure: Error | null = null;
  private onDone: ((r: RunResult) => void) | null = null;
  /** Disarms the host watchdog of the current run (see host.ts). */
  private disarmWatchdog: (() => void) | null = null;
  private result: RunResult | null = null;

  constructor(options: EngineOptions = {}) {
    this.seed = validSeed(options.seed ?? 0);
    const maxSteps = options.maxSteps ?? 10_000_000;
    if (!Number.isInteger(maxSteps) || maxSteps < 1) throw new KernelError(EINVAL, `maxSteps must be a positive integer: ${maxSteps}`);
    this.maxSteps = maxSteps;
    this.warnFatal = options.warnFatal ?? false;
    this.lockdep = new Lockdep(options.lockdep ?? true);
    this.trace = new TraceBus(
      () => this.clock,
      (err, event) => this.fail(err instanceof SimError ? err : new TaskCrashedError(`trace listener for ${event.type} threw: ${err instanceof Error ? err.message : String(err)}`, this.cur?.name ?? '(none)', err)),
    );
    const s = options.strategy ?? 'fifo';
    if (typeof s === 'string' && options.replay === undefined) parseStrategy(s);
    if (options.replay !== undefined) {
      const spec = typeof s === 'string' ? s : s.spec;
      this.strategy = new ReplayStrategy(spec, options.replay.decisions, options.replay.strict ?? true);
    } else {
      this.strategy = typeof s === 'string' ? makeStrategy(parseStrategy(s), this.seed) : s;
    }
  }

  /** Virtual time in ns. */
  get now(): number {
    return this.clock;
  }

  /** Scheduling steps taken so far. */
  get steps(): number {
    return this.stepCount;
  }

  /** The running task, or null before the run starts. */
  get current(): Task | null {
    return this.cur;
  }

  /** The decision log so far. */
  get decisions(): readonly number[] {
    return this.log;
  }

  /** True once the run has ended (cleanly or not). */
  get finished(): boolean {
    return this.stopped;
  }

  /** The task list, in spawn order. */
  get allTasks(): readonly Task[] {
    return this.tasks;
  }

  /**
   * Creates a task that runs `fn` when first scheduled. Not a scheduling point. Allowed before
   * `run()` and from a running task.
   */
  spawn<T>(name: string, fn: (task: Task<T>) => Promise<T>): Task<T> {
    if (typeof name !== 'string' || name.length === 0) throw new KernelError(EINVAL, `task name must be a non-empty string: ${JSON.stringify(name)}`);
    if (typeof fn !== 'function') throw new KernelError(EINVAL, `task ${name}: fn must be an async function`);
    if (this.stopped) throw new KernelError(EINVAL, `spawn(${name}): the run has ended`);
    const task = new Task<T>(this, this.tasks.length + 1, name, this.cur);
    task.resume = () => queueMicrotask(() => this.start(task, fn));
    this.tasks.push(task);
    this.live++;
    this.strategy.onSpawn(task);
    this.runq.push(task);
    if (this.trace.active) this.trace.emit('task.spawn', { task: task.id, name, parent: this.cur?.id ?? null });
    return task;
  }

  /** Runs until every task is done or the run fails. Once per engine. */
  run(): Promise<RunResult> {
    if (this.started) return Promise.reject(new KernelError(EINVAL, 'engine.run(): an engine runs once; create a new Engine'));
    this.started = true;
    return new Promise<RunResult>((resolve) => {
      if (this.result !== null) {
        resolve(this.result); // failed before it started (a bug in setup code)
        return;
      }
      this.onDone = resolve;
      this.disarmWatchdog = afterHostTurn(() => this.watchdog());
      this.next();
    });
  }

  /** A scheduling point: the strategy may run another task. */
  yield(): Promise<void> {
    const cur = this.mightSleep('yield');
    if (cur === null) return never();
    cur.state = 'runnable';
    this.runq.push(cur);
    const p = new Promise<void>((r) => {
      cur.resume = r;
    });
    this.next();
    return p;
  }

  /** Sleeps `ns` of virtual time (a scheduling point). `sleep(0)` is a yield. */
  sleep(ns: number): Promise<void> {
    if (typeof ns !== 'number' || !Number.isFinite(ns) || ns < 0) throw new KernelError(EINVAL, `sleep: ns must be a finite number >= 0: ${ns}`);
    if (ns === 0) return this.yield();
    const cur = this.mightSleep('sleep');
    if (cur === null) return never();
    cur.state = 'sleeping';
    cur.waitsOn = SLEEP;
    this.addTimer(cur, this.clock + ns);
    const p = new Promise<void>((r) => {
      cur.resume = r;
    });
    this.next();
    return p;
  }

  /**
   * Blocks the current task on `on` until `wake(task)` (or `timeoutNs` of virtual time).
   * For primitives: the caller must already have put the task on its wait list, with no
   * scheduling point between its condition check and this call (so no wake-up is lost).
   * Resolves true when woken, false on timeout (after `on.cancelWait(task)`).
   */
  block(on: Waitable, timeoutNs?: number): Promise<boolean> {
    const cur = this.mightSleep('block');
    if (cur === null) return never();
    cur.state = 'blocked';
    cur.waitsOn = on;
    cur.timedOut = false;
    if (this.trace.active) this.trace.emit('wait.block', { task: cur.id, on: on.describeWait(cur) });
    if (timeoutNs !== undefined) {
      if (!Number.isFinite(timeoutNs) || timeoutNs < 0) throw new KernelError(EINVAL, `block: timeout must be a finite number >= 0: ${timeoutNs}`);
      this.addTimer(cur, this.clock + timeoutNs);
    } else {
      cur.wakeToken++;
    }
    const p = new Promise<boolean>((r) => {
      cur.resume = () => r(!cur.timedOut);
    });
    this.next();
    return p;
  }

  /** Makes a blocked task runnable. Not a scheduling point: the waker goes on. */
  wake(task: Task): void {
    if (task.state !== 'blocked') return;
    task.state = 'runnable';
    task.waitsOn = null;
    task.wakeToken++;
    this.runq.push(task);
    if (this.trace.active) this.trace.emit('wait.wake', { task: task.id, by: this.cur?.id ?? null });
  }

  /**
   * A nondeterministic choice in [0, n), decided by the strategy and logged (n = 1 returns 0
   * and logs nothing). Models use it for which page to evict, whether an injected fault fires.
   */
  choose(n: number, label = ''): number {
    if (!Number.isInteger(n) || n < 1) throw new KernelError(EINVAL, `choose: n must be a positive integer: ${n}`);
    if (this.stopped) return 0;
    if (n === 1) return 0;
    let v: number;
    try {
      v = this.strategy.choose(n, label);
    } catch (e) {
      this.fail(e);
      throw e;
    }
    this.log.push(v);
    if (this.trace.active) this.trace.emit('engine.choose', { n, value: v, label });
    return v;
  }

  /**
   * True with probability num/den under random strategies; under fifo (choice 0) never, unless
   * num = den. Logged like `choose`.
   */
  chance(num: number, den: number, label = ''): boolean {
    if (!Number.isInteger(num) || !Number.isInteger(den) || den < 1 || num < 0 || num > den) {
      throw new KernelError(EINVAL, `chance: need integers 0 <= num <= den, den >= 1: ${num}/${den}`);
    }
    if (num === 0) return false;
    if (num === den) return true;
    return this.choose(den, label) >= den - num;
  }

  /** WARN_ON: counts and traces `message` when `cond` holds; fatal with `warnFatal`. Returns `cond`. */
  warnOn(cond: boolean, message: string): boolean {
    if (!cond) return false;
    this.warnCount++;
    if (this.trace.active) this.trace.emit('warn', { message, count: this.warnCount });
    if (this.warnFatal) this.bug(new KernelWarning(`WARN_ON: ${message}${this.cur ? ` (task ${this.cur.name})` : ''}`));
    return true;
  }

  /** WARN_ONs so far. */
  get warnings(): number {
    return this.warnCount;
  }

  /** Fails the run with `err` and throws it (BUG_ON and the other bug classes). */
  bug(err: SimError): never {
    this.fail(err);
    throw err;
  }

  /** BUG_ON(cond). */
  bugOn(cond: boolean, message: string): void {
    if (cond) this.bug(new KernelBug(`BUG: ${message}${this.cur ? ` (task ${this.cur.name})` : ''}`));
  }

  /** The running task; a KernelBug if called outside one. */
  requireTask(what: string): Task {
    const cur = this.cur;
    if (cur === null || !this.started) this.bug(new KernelBug(`${what} called outside a task`));
    return cur;
  }

  /**
   * might_sleep(): the current task is about to reach a scheduling point. Fails the run if it
   * is in atomic or non-blocking context. `what(arg)` names the call in the report (`arg` is
   * separate so that hot paths build no string). Returns null after the run has ended (the caller
   * then parks forever).
   */
  mightSleep(what: string, arg?: string): Task | null {
    if (this.stopped) return null;
    const cur = this.cur ?? this.requireTask(arg === undefined ? what : `${what}(${arg})`);
    if (cur.atomic > 0) {
      const call = arg === undefined ? what : `${what}(${arg})`;
      this.bug(new AtomicSleepError(`BUG: sleeping function called from invalid context: ${call} in task ${cur.name} inside ${cur.atomicWhy.join(' > ')}`));
    }
    return cur;
  }

  /** Enters atomic / non-blocking context (spinlock held, non-blockable notifier callback). Nests. */
  enterAtomic(why: string): void {
    const cur = this.requireTask('enterAtomic');
    cur.atomic++;
    cur.atomicWhy.push(why);
  }

  exitAtomic(): void {
    const cur = this.requireTask('exitAtomic');
    if (cur.atomic === 0) this.bug(new KernelBug(`exitAtomic without enterAtomic in task ${cur.name}`));
    cur.atomic--;
    cur.atomicWhy.pop();
  }

  /** True when the current task may not sleep. */
  inAtomic(): boolean {
    return this.cur !== null && this.cur.atomic > 0;
  }

  /** Runs `fn` in non-blocking context: any scheduling point inside it is an AtomicSleepError. */
  async nonBlocking<R>(why: string, fn: () => Promise<R> | R): Promise<R> {
    this.enterAtomic(why);
    try {
      return await fn();
    } finally {
      if (!this.stopped) this.exitAtomic();
    }
  }

  /** @internal join: see Task.join. */
  join<T>(task: Task<T>): Promise<T> {
    if (task.engine !== this) throw new KernelError(EINVAL, `join: ${task} belongs to another engine`);
    const cur = this.requireTask('join');
    if (task === cur) throw new KernelError(EDEADLK, `join: ${task} joins itself`);
    if (task.joined) throw new KernelError(EINVAL, `join: ${task} was already joined`);
    task.joined = true;
    if (task.state === 'done') return Promise.resolve(task.result as T);
    task.joiners.push(cur);
    return this.block(joinWaitable(task)).then(() => task.result as T);
  }

  // ---- scheduler internals ----

  private start<T>(task: Task<T>, fn: (task: Task<T>) => Promise<T>): void {
    if (this.stopped) return;
    let p: Promise<T>;
    try {
      p = fn(task);
    } catch (e) {
      this.crashed(task, e);
      return;
    }
    Promise.resolve(p).then(
      (v) => this.exit(task, v),
      (e: unknown) => this.crashed(task, e),
    );
  }

  private exit<T>(task: Task<T>, value: T): void {
    if (this.stopped) return;
    if (this.cur !== task) {
      this.fail(new KernelBug(`${task} finished while ${this.cur ?? 'no task'} was running: an engine call was not awaited`));
      return;
    }
    if (task.held.length > 0) {
      this.fail(new KernelBug(`BUG: ${task} exited with locks held: ${describeHeld(task.held)}`));
      return;
    }
    if (task.atomic > 0) {
      this.fail(new KernelBug(`BUG: ${task} exited in atomic context (${task.atomicWhy.join(' > ')})`));
      return;
    }
    task.state = 'done';
    task.result = value;
    this.live--;
    for (const j of task.joiners) this.wake(j);
    task.joiners.length = 0;
    if (this.trace.active) this.trace.emit('task.exit', { task: task.id, name: task.name });
    this.next();
  }

  private crashed(task: Task, e: unknown): void {
    if (this.stopped) return;
    if (e instanceof SimError) {
      this.fail(e);
      return;
    }
    const msg = e instanceof KernelError ? `${e.message}` : e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    this.fail(new TaskCrashedError(`task ${task.name} crashed: ${msg}`, task.name, e));
  }

  /** Ends the run with `err` (the first failure wins). */
  fail(err: unknown): void {
    if (this.stopped) return;
    this.failure = err instanceof Error ? err : new KernelBug(String(err));
    this.finish();
  }

  private finish(): void {
    this.stopped = true;
    this.disarmWatchdog?.();
    this.disarmWatchdog = null;
    const failure = this.failure;
    let schedule: string | undefined;
    const result: RunResult = {
      ok: failure === null,
      failure,
      seed: this.seed,
      strategy: this.strategy.spec,
      decisions: this.log,
      steps: this.stepCount,
      time: this.clock,
      warnings: this.warnCount,
      // Encoded on demand: a long run's log costs nothing unless someone prints it.
      get schedule(): string {
        return (schedule ??= formatSchedule({ seed: this.seed, strategy: this.strategy, decisions: this.decisions }));
      },
    };
    this.result = result;
    const done = this.onDone;
    this.onDone = null;
    done?.(result);
    if (this.trace.active) {
      this.trace.emit('run.end', { ok: result.ok, steps: this.stepCount, code: failure === null ? null : String((failure as { code?: unknown }).code ?? failure.name) });
    }
  }

  private watchdog(): void {
    if (this.stopped) return;
    const t = this.cur;
    const name = t?.name ?? '(none)';
    this.fail(
      new UncontrolledAwaitError(
        `task ${name} awaited something the engine does not control (a raw promise, a host timer or I/O): ` +
          'use engine primitives (yield, sleep, Mutex, WaitQueue, Completion, join) to wait',
        name,
      ),
    );
  }

  private next(): void {
    if (this.stopped) return;
    const step = ++this.stepCount;
    if (step > this.maxSteps) {
      this.fail(new RunawayError(`run-away guard: more than ${this.maxSteps} scheduling steps (livelock?); last task ${this.cur?.name ?? '(none)'}`));
      return;
    }
    const strategy = this.strategy;
    if (strategy.onStep !== undefined) strategy.onStep(step, this.cur);
    const rq = this.runq;
    if (this.timers.length > 0 && this.timers[0]!.time <= this.clock) this.fireTimers();
    if (rq.length === 0 && !this.advanceTime()) {
      this.endOrDeadlock();
      return;
    }
    if (this.stopped) return; // a trace listener failed the run
    let idx = 0;
    const n = rq.length;
    if (n > 1) {
      try {
        idx = strategy.pick(rq, step);
      } catch (e) {
        this.fail(e);
        return;
      }
      this.log.push(rq[idx]!.id);
      if (this.trace.active) this.trace.emit('sched.decision', { step, choices: n, chosen: rq[idx]!.id });
    }
    const t = idx === 0 ? rq.shift()! : rq.splice(idx, 1)[0]!;
    const prev = this.cur;
    this.cur = t;
    t.state = 'running';
    t.waitsOn = null;
    if (this.trace.active) this.trace.emit('sched.switch', { from: prev?.id ?? null, to: t.id, name: t.name, step });
    const resume = t.resume!;
    t.resume = null;
    resume();
  }

  private endOrDeadlock(): void {
    if (this.live === 0) {
      this.finish();
      return;
    }
    const blocked = this.tasks
      .filter((t) => t.state === 'blocked' || t.state === 'sleeping')
      .map((t) => ({ task: t.name, waitsOn: t.waitsOn?.describeWait(t) ?? '(unknown)' }));
    const lines = blocked.map((b) => `  ${b.task}: ${b.waitsOn}`).join('\n');
    this.fail(new DeadlockError(`deadlock: no task can run and no timer is pending; blocked tasks:\n${lines}`, blocked));
  }

  private addTimer(task: Task, time: number): void {
    const token = ++task.wakeToken;
    heapPush(this.timers, { time, seq: this.timerSeq++, task, token });
  }

  private timerLive(t: Timer): boolean {
    return t.task.wakeToken === t.token && (t.task.state === 'sleeping' || t.task.state === 'blocked');
  }

  /** Drops stale timers at the top of the heap. */
  private pruneTimers(): void {
    const h = this.timers;
    while (h.length > 0 && !this.timerLive(h[0]!)) heapPop(h);
  }

  /** Makes every live timer due at or before now fire, in (time, seq) order. */
  private fireTimers(): void {
    const h = this.timers;
    while (h.length > 0 && h[0]!.time <= this.clock) {
      const t = heapPop(h)!;
      if (!this.timerLive(t)) continue;
      const task = t.task;
      if (task.state === 'blocked') {
        task.timedOut = true;
        task.waitsOn?.cancelWait?.(task);
      }
      task.state = 'runnable';
      task.waitsOn = null;
      task.wakeToken++;
      this.runq.push(task);
    }
  }

  /** Jumps to the earliest live timer. False if there is none. */
  private advanceTime(): boolean {
    this.pruneTimers();
    const h = this.timers;
    if (h.length === 0) return false;
    const to = h[0]!.time;
    if (this.trace.active) this.trace.emit('time.advance', { from: this.clock, to });
    this.clock = to;
    this.fireTimers();
    return this.runq.length > 0;
  }
}

const SLEEP: Waitable = { describeWait: () => 'sleep' };

function joinWaitable(task: Task): Waitable {
  return {
    describeWait: () => `join(${task.name}), which is ${task.state}${task.waitsOn ? ` on ${task.waitsOn.describeWait(task)}` : ''}`,
  };
}

function timerLess(a: Timer, b: Timer): boolean {
  return a.time < b.time || (a.time === b.time && a.seq < b.seq);
}

function heapPush(h: Timer[], t: Timer): void {
  h.push(t);
  let i = h.length - 1;
  while (i > 0) {
    const p = (i - 1) >> 1;
    if (!timerLess(h[i]!, h[p]!)) break;
    [h[i], h[p]] = [h[p]!, h[i]!];
    i = p;
  }
}

function heapPop(h: Timer[]): Timer | undefined {
  const top = h[0];
  const last = h.pop();
  if (h.length > 0 && last !== undefined) {
    h[0] = last;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && timerLess(h[l]!, h[m]!)) m = l;
      if (r < h.length && timerLess(h[r]!, h[m]!)) m = r;
      if (m === i) break;
      [h[i], h[m]] = [h[m]!, h[i]!];
      i = m;
    }
  }
  return top;
}

