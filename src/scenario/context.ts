/**
 * The context every scenario function gets: the world (engine, memory, mms), the bound devices
 * with the driver's commands, the per-run state, expectations and a logger.
 *
 * Expectations throw ScenarioExpectationError: the task fails, the run fails with it (the
 * engine wraps it in TaskCrashedError), and the runner's verdict is 'failed' with the message.
 * The log is kept per run (virtual time, task, message) and returned with the result.
 *
 * No locks: the context's own state (the log, the killed set, the launched-warp count, the fork
 * children) changes synchronously; `idle` is the WaitQueue teardown uses to wait for the warps
 * launched through the context.
 */
import { type Device, type DeviceAddressSpace, DeviceFaultError, type DeviceJob, type DeviceKernel, type LaunchOptions, type WarpContext } from '../device/index.js';
import type { Oracle } from '../check/index.js';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MAP_SHARED, type MmStruct, PAGE_SIZE, PROT_READ, PROT_WRITE, type PhysMem, fork, mmap } from '../mm/index.js';
import { EINVAL, EOPNOTSUPP, type Engine, KernelError, WaitQueue, errnoName } from '../sim/index.js';
import type { DriverApi, DriverCommands, DriverFeature, DriverKind } from './driver.js';
import type { WorldDevice } from './world.js';
import './timeline.js'; // the 'scenario.log' trace event

/** A scenario expectation that did not hold. */
export class ScenarioExpectationError extends Error {
  override readonly name = 'ScenarioExpectationError';
  readonly code = 'SCENARIO_EXPECTATION' as const;
}

/** One log line of a run. */
export interface LogEntry {
  /** Virtual time, ns. */
  readonly time: number;
  /** The task that logged it. */
  readonly task: string;
  readonly message: string;
}

/** What a scenario knows of the driver under test (never its code). */
export interface DriverInfo {
  readonly name: string;
  readonly api: DriverApi;
  readonly kind: DriverKind;
  readonly features: readonly DriverFeature[];
}

/** A bound device, as scenario code uses it. */
export interface ScenarioDevice {
  readonly name: string;
  readonly device: Device;
  readonly as: DeviceAddressSpace;
  /** The mm it mirrors. */
  readonly mm: MmStruct;
  /** The driver's raw commands (present per feature). */
  readonly commands: DriverCommands;
  /** Launches `kernel` through the driver (not a scheduling point). Join the job yourself, or teardown waits for it. */
  launch<T>(kernel: DeviceKernel<T>, opts?: LaunchOptions): DeviceJob<T>;
  /** Launches and joins: the warps' results (DeviceFaultError if the job was killed). */
  run<T>(kernel: DeviceKernel<T>, opts?: LaunchOptions): Promise<T[]>;
  /** The 'device-migration' command; KernelError(EOPNOTSUPP) if the driver lacks it. */
  migrateToDevice(addr: number, npages: number): Promise<number>;
  /** The 'migrate-to-system' command; KernelError(EOPNOTSUPP) if the driver lacks it. */
  migrateToSystem(addr: number, npages: number): Promise<number>;
  /**
   * The 'snapshot' command: one SNAPSHOT code per page of [addr, addr + npages pages), read
   * without faulting. KernelError with the errno if the driver fails it, EOPNOTSUPP if it lacks it.
   */
  snapshot(addr: number, npages: number): Promise<Uint8Array>;
  /** The 'exclusive' command make_device_exclusive: 0 or -errno; KernelError(EOPNOTSUPP) if the driver lacks it. */
  makeExclusive(addr: number, npages: number): Promise<number>;
  /** The 'exclusive' check: 0 if no page of the range is held exclusive any more, else -EPERM. */
  checkExclusive(addr: number, npages: number): Promise<number>;
  /** The 'release' command: evict all of this device's memory to RAM. 0 or -errno. */
  releaseDeviceMemory(): Promise<number>;
  /** The driver's counters for this device now. */
  stats(): Readonly<Record<string, number>>;
}

/** Options of ScenarioContext.mmap. */
export interface MapOptions {
  /** The mm. Default ctx.mm. */
  readonly mm?: MmStruct;
  /** A fixed address (MAP_FIXED). Default: the kernel picks. */
  readonly addr?: number;
  /** PROT_* bits. Default PROT_READ | PROT_WRITE. */
  readonly prot?: number;
  /** Extra MAP_* flags (MAP_PRIVATE | MAP_ANONYMOUS are implied unless MAP_SHARED is given). */
  readonly flags?: number;
}

/** Options of ScenarioContext.racePoint. */
export interface RacePointOptions {
  /** The progress counter the other side bumps. */
  readonly counter: string;
  /** Its value when the other side is done (the moment is chosen in [0, max]). */
  readonly max: number;
  /** Tasks whose end also releases the wait (the other side may be killed early). At least one. */
  readonly until: readonly string[];
  /** Jitter quantum in virtual ns. Default 100. */
  readonly jitterNs?: number;
  /** Jitter choices. Default 16. */
  readonly jitterSteps?: number;
  /** Label of the choices in the decision trace. Default the counter's name. */
  readonly label?: string;
}

/** The context of scenario functions. `S` is the scenario's per-run state. */
export interface ScenarioContext<S = unknown> {
  readonly engine: Engine;
  readonly phys: PhysMem;
  /** The first mm of the world. */
  readonly mm: MmStruct;
  /** The world's mms by name. */
  readonly mms: ReadonlyMap<string, MmStruct>;
  /** The bound devices, in world order. */
  readonly devices: readonly ScenarioDevice[];
  readonly driver: DriverInfo;
  /** The per-run state (the scenario's `state()`). */
  readonly state: S;
  /** The oracle, or null when the run has none. */
  readonly oracle: Oracle | null;
  /** Device tasks whose job was killed (killable ones only: others fail the run). */
  readonly killed: ReadonlySet<string>;
  /** The device named `name` (default: the first). */
  device(name?: string): ScenarioDevice;
  /** The world mm named `name`. */
  mmNamed(name: string): MmStruct;
  /** mmap of anonymous memory: the address; KernelError with the errno if it fails. */
  mmap(pages: number, opts?: MapOptions): Promise<number>;
  /** fork() of `mm` (default ctx.mm): the oracle watches the child, teardown exits it. */
  fork(mm?: MmStruct, name?: string): Promise<MmStruct>;
  /**
   * Binds the world's deferred device `name` (WorldSpec `deferred: true`) to `mm` with the
   * driver under test, e.g. a fork child opening its own mirror; the oracle watches it and
   * teardown unbinds it (before the mms exit). KernelError(EINVAL) if there is no such deferred
   * device or it is already bound.
   */
  bindDevice(name: string, mm: MmStruct): Promise<ScenarioDevice>;
  /** A nondeterministic choice in [0, n), decided by the strategy and logged. */
  choose(n: number, label?: string): number;
  /** Sleeps `ns` of virtual time (a scheduling point). */
  sleep(ns: number): Promise<void>;
  /** A scheduling point. */
  yield(): Promise<void>;
  /** Appends a line to the run's log. */
  log(message: string): void;
  /**
   * Adds `by` (default 1) to the named progress counter and wakes every waitFor. Not a
   * scheduling point: device kernels call it after an access to publish how far they got.
   */
  bump(counter: string, by?: number): number;
  /** The named progress counter (0 before the first bump). */
  count(counter: string): number;
  /** True once the scenario task `task` has ended (normally, or killed for a device task). */
  finished(task: string): boolean;
  /**
   * Blocks until `cond` holds, rechecked at every bump and every task's end. Give the condition
   * a way out (`|| ctx.finished('gpu')`): a kernel may be killed before it gets as far as
   * waited for, and a wait that never ends is a deadlock, which fails the run.
   */
  waitFor(cond: () => boolean): Promise<void>;
  /**
   * Waits for a chosen moment of another task's progress, then a chosen jitter: the strategy
   * picks k in [0, max] and the task waits until `counter` reaches k (or every task in `until`
   * has finished), then sleeps a chosen multiple in [0, jitterSteps) of jitterNs. So a racing
   * operation lands anywhere in the other side's work, between accesses and during a fault's
   * service alike, whatever the driver's speed. Both choices are logged: a schedule replays them.
   */
  racePoint(opts: RacePointOptions): Promise<void>;
  /** Fails the scenario unless `cond` holds. */
  expect(cond: boolean, message: string | (() => string)): void;
  /** Fails the scenario unless `actual === expected` (bigints and numbers compared by value). */
  expectEqual<T extends bigint | number | string | boolean | null>(actual: T, expected: T, what: string): void;
  /** Fails the scenario. */
  fail(message: string): never;
}

const hexish = (v: unknown): string => (typeof v === 'bigint' ? `0x${v.toString(16)}` : typeof v === 'string' ? JSON.stringify(v) : String(v));

/** @internal the context of one run. */
export class RunContext<S> implements ScenarioContext<S> {
  readonly log_: LogEntry[] = [];
  readonly killedSet = new Set<string>();
  /** Fork children made through the context, in order (teardown exits them). */
  readonly children: MmStruct[] = [];
  readonly devices: ScenarioDevice[] = [];
  /** Warps launched through the context and not finished. */
  liveWarps = 0;
  readonly idle: WaitQueue;
  private readonly counters = new Map<string, number>();
  private readonly ended = new Set<string>();
  private readonly progress: WaitQueue;
  private readonly byName = new Map<string, ScenarioDevice>();
  /** @internal binds a world device (set by the runner). */
  binder: ((name: string, mm: MmStruct) => Promise<WorldDevice>) | null = null;

  constructor(
    readonly engine: Engine,
    readonly phys: PhysMem,
    readonly mms: ReadonlyMap<string, MmStruct>,
    readonly driver: DriverInfo,
    readonly state: S,
    readonly oracle: Oracle | null,
  ) {
    this.idle = new WaitQueue(engine, 'scenario.idle');
    this.progress = new WaitQueue(engine, 'scenario.progress');
  }

  get mm(): MmStruct {
    return this.mms.values().next().value!;
  }

  get killed(): ReadonlySet<string> {
    return this.killedSet;
  }

  /** @internal adds a bound device. */
  addDevice(d: WorldDevice): void {
    const bound = d.bound;
    const unsupported = (what: string): never => {
      throw new KernelError(EOPNOTSUPP, `${d.name}: driver ${this.driver.name} has no ${what} command`);
    };
    const launch = <T>(kernel: DeviceKernel<T>, opts: LaunchOptions = {}): DeviceJob<T> => {
      if (typeof kernel !== 'function') throw new KernelError(EINVAL, `${d.name} launch: kernel must be an async function: ${String(kernel)}`);
      const warps = opts.warps ?? 1;
      const job = bound.launch(opts, async (w) => {
        try {
          return await kernel(w);
        } finally {
          if (--this.liveWarps === 0) this.idle.wakeUpAll();
        }
      });
      this.liveWarps += warps; // launch validated `warps`; the warps start after it returned
      return job;
    };
    const dev: ScenarioDevice = {
      name: d.name,
      device: bound.device,
      as: bound.as,
      mm: d.mm,
      commands: bound.commands,
      launch,
      run: (kernel, opts = {}) => launch(kernel, opts).join(),
      migrateToDevice: (addr, npages) => (bound.commands.migrateToDevice ?? unsupported('migrateToDevice'))(addr, npages),
      migrateToSystem: (addr, npages) => (bound.commands.migrateToSystem ?? unsupported('migrateToSystem'))(addr, npages),
      async snapshot(addr, npages) {
        if (!Number.isInteger(npages) || npages < 0 || npages > 1 << 20) throw new KernelError(EINVAL, `${d.name} snapshot: npages must be an integer in [0, 2^20]: ${String(npages)}`);
        const out = new Uint8Array(npages);
        const ret = await (bound.commands.snapshot ?? unsupported('snapshot'))(addr, npages, out);
        if (ret < 0) throw new KernelError(-ret, `${d.name} snapshot of ${npages} pages at 0x${addr.toString(16)} failed: ${errnoName(-ret)}`);
        return out;
      },
      makeExclusive: (addr, npages) => (bound.commands.makeExclusive ?? unsupported('makeExclusive'))(addr, npages),
      checkExclusive: (addr, npages) => (bound.commands.checkExclusive ?? unsupported('checkExclusive'))(addr, npages),
      releaseDeviceMemory: () => (bound.commands.releaseDeviceMemory ?? unsupported('releaseDeviceMemory'))(),
      stats: () => bound.stats(),
    };
    this.devices.push(dev);
    this.byName.set(d.name, dev);
  }

  device(name?: string): ScenarioDevice {
    const d = name === undefined ? this.devices[0] : this.byName.get(name);
    if (d === undefined) throw new KernelError(EINVAL, `ctx.device: no device named ${JSON.stringify(name)} (devices: ${[...this.byName.keys()].join(', ') || 'none bound yet'})`);
    return d;
  }

  mmNamed(name: string): MmStruct {
    const mm = this.mms.get(name);
    if (mm === undefined) throw new KernelError(EINVAL, `ctx.mmNamed: no mm named ${JSON.stringify(name)} (mms: ${[...this.mms.keys()].join(', ')})`);
    return mm;
  }

  async mmap(pages: number, opts: MapOptions = {}): Promise<number> {
    if (!Number.isInteger(pages) || pages < 1) throw new KernelError(EINVAL, `ctx.mmap: pages must be a positive integer: ${String(pages)}`);
    const mm = opts.mm ?? this.mm;
    const extra = opts.flags ?? 0;
    const flags = (extra & MAP_SHARED ? extra : extra | MAP_PRIVATE) | MAP_ANONYMOUS | (opts.addr !== undefined ? MAP_FIXED : 0);
    const ret = await mmap(mm, opts.addr ?? 0, pages * PAGE_SIZE, opts.prot ?? PROT_READ | PROT_WRITE, flags);
    if (ret < 0) throw new KernelError(-ret, `ctx.mmap(${pages} pages) on ${mm.name} failed: ${errnoName(-ret)}`);
    return ret;
  }

  async fork(mm: MmStruct = this.mm, name?: string): Promise<MmStruct> {
    const child = await fork(mm, { name: name ?? `${mm.name}.child${this.children.length}` });
    this.children.push(child);
    this.oracle?.watchMm(child);
    return child;
  }

  async bindDevice(name: string, mm: MmStruct): Promise<ScenarioDevice> {
    if (this.byName.has(name)) throw new KernelError(EINVAL, `ctx.bindDevice: device ${JSON.stringify(name)} is already bound`);
    if (this.binder === null) throw new KernelError(EINVAL, 'ctx.bindDevice: no binder (the context is not a runner\'s)');
    this.addDevice(await this.binder(name, mm));
    return this.byName.get(name)!;
  }

  choose(n: number, label = ''): number {
    return this.engine.choose(n, label);
  }

  sleep(ns: number): Promise<void> {
    return this.engine.sleep(ns);
  }

  yield(): Promise<void> {
    return this.engine.yield();
  }

  log(message: string): void {
    const m = String(message);
    this.log_.push({ time: this.engine.now, task: this.engine.current?.name ?? '-', message: m });
    const t = this.engine.trace;
    if (t.active && t.wants('scenario.log')) t.emit('scenario.log', { message: m });
  }

  bump(counter: string, by = 1): number {
    if (typeof by !== 'number' || !Number.isFinite(by)) throw new KernelError(EINVAL, `ctx.bump(${counter}): by must be a finite number: ${String(by)}`);
    const v = (this.counters.get(counter) ?? 0) + by;
    this.counters.set(counter, v);
    this.progress.wakeUpAll();
    return v;
  }

  count(counter: string): number {
    return this.counters.get(counter) ?? 0;
  }

  finished(task: string): boolean {
    return this.ended.has(task);
  }

  waitFor(cond: () => boolean): Promise<void> {
    if (typeof cond !== 'function') throw new KernelError(EINVAL, `ctx.waitFor: cond must be a function: ${String(cond)}`);
    return this.progress.waitEvent(cond);
  }

  async racePoint(o: RacePointOptions): Promise<void> {
    if (o === null || typeof o !== 'object') throw new KernelError(EINVAL, `ctx.racePoint: options must be an object: ${String(o)}`);
    if (!Number.isInteger(o.max) || o.max < 0) throw new KernelError(EINVAL, `ctx.racePoint: max must be an integer >= 0: ${String(o.max)}`);
    // An empty list would release the wait at once (every one of no tasks has finished): a race that never waits.
    if (!Array.isArray(o.until) || o.until.length === 0) throw new KernelError(EINVAL, `ctx.racePoint: until must be a non-empty array of the task names whose end releases the wait: ${JSON.stringify(o.until)}`);
    const jitterNs = o.jitterNs ?? 100;
    const jitterSteps = o.jitterSteps ?? 16;
    if (typeof jitterNs !== 'number' || !Number.isFinite(jitterNs) || jitterNs < 0) throw new KernelError(EINVAL, `ctx.racePoint: jitterNs must be a finite number >= 0: ${String(jitterNs)}`);
    if (!Number.isInteger(jitterSteps) || jitterSteps < 1) throw new KernelError(EINVAL, `ctx.racePoint: jitterSteps must be a positive integer: ${String(jitterSteps)}`);
    const label = o.label ?? o.counter;
    const k = this.choose(o.max + 1, `${label} point`);
    await this.waitFor(() => this.count(o.counter) >= k || o.until.every((t) => this.ended.has(t)));
    const j = this.choose(jitterSteps, `${label} jitter`);
    if (j > 0 && jitterNs > 0) await this.sleep(j * jitterNs);
  }

  /** @internal a scenario task ended. */
  taskEnded(task: string): void {
    this.ended.add(task);
    this.progress.wakeUpAll();
  }

  expect(cond: boolean, message: string | (() => string)): void {
    if (!cond) this.fail(typeof message === 'function' ? message() : message);
  }

  expectEqual<T extends bigint | number | string | boolean | null>(actual: T, expected: T, what: string): void {
    if (actual !== expected) this.fail(`${what}: expected ${hexish(expected)}, got ${hexish(actual)}`);
  }

  fail(message: string): never {
    throw new ScenarioExpectationError(`expectation failed in task ${this.engine.current?.name ?? '-'} at t=${this.engine.now}ns: ${message}`);
  }

  /** @internal runs a device task: launch, join; a kill ends it quietly if killable, else fails it. */
  async runDeviceTask(task: string, spec: { device?: string; warps?: number; killable?: boolean; kernel: (ctx: ScenarioContext<S>, w: WarpContext) => Promise<void> }): Promise<void> {
    const dev = this.device(spec.device);
    const job = dev.launch((w) => spec.kernel(this, w), { warps: spec.warps ?? 1, name: task });
    try {
      await job.join();
    } catch (err) {
      if (!(err instanceof DeviceFaultError)) throw err;
      if (spec.killable !== true) this.fail(`device task ${task} was killed, and it is not killable: ${err.message}`);
      this.killedSet.add(task);
      this.log(`device task ${task} killed: ${err.message}`);
    }
  }
}
