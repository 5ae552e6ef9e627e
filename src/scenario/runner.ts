/**
 * The scenario runner: one scenario on one driver under a seed and a strategy (runScenario), or
 * from a schedule string (replayScenario), with a verdict, statistics and the violation report.
 *
 * One run is a sim Program (called afresh per run, so nothing is shared between runs):
 *
 *   program(engine)        build the world (oracle attached first, then PhysMem and the mms),
 *                          the per-run state and the context; spawn the task "scenario":
 *   scenario task          bind one device per world device (each watched by the oracle as soon
 *                          as its driver returns it) -> setup -> spawn every task (definition
 *                          order) -> join them -> check -> teardown: wait for the warps launched
 *                          through the context, unbind the devices (reverse order), exit the
 *                          live mms (fork children first) -> oracle.finish()
 *
 * finish() runs at the very end of the last task, so a teardown violation (a device mapping
 * left, a leaked frame, a blocked task) also fails the run and its schedule replays it.
 *
 * Verdicts:
 *   coherent   the run ended cleanly and the oracle found nothing
 *   violation  the oracle reported (rules 1-6; the engine's lock errors are classified into
 *              rule-5 reports): `report` is set
 *   failed     a scenario expectation failed (ctx.expect, a non-killable device task killed)
 *   error      anything else: a crash in driver or scenario code, a KernelBug, a run-away, a
 *              replay that diverged
 *
 * Reports name mms by the process-wide mm id, which differs between two runs in one process;
 * `reportText` is the rendered report with mm ids renumbered in creation order within the run,
 * so a replay's reportText equals the original's.
 */
import { CoherencyViolation, type OracleOptions, type OracleStats, type ViolationReport } from '../check/index.js';
import { FAULT_LATENCY_BUCKETS_NS } from '../device/index.js';
import { type MmStruct, exitMm } from '../mm/index.js';
import { EINVAL, type Engine, KernelError, type Program, type RunResult, type Schedule, TaskCrashedError, replay, runProgram } from '../sim/index.js';
import { type LogEntry, RunContext, ScenarioExpectationError } from './context.js';
import { type Timeline, type TimelineOptions, TimelineRecorder } from './timeline.js';
import { SCENARIO_TASK, type Scenario, isScenario } from './define.js';
import { type DriverRegistry, type ScenarioDriver, checkScenarioDriver, selectorRejects } from './driver.js';
import { type ScenarioWorld, type WorldDevice, bindDevice, bindDevices, buildWorld } from './world.js';

/** The outcome class of a run (see the header). */
export type Verdict = 'coherent' | 'violation' | 'failed' | 'error';
export const VERDICTS: readonly Verdict[] = ['coherent', 'violation', 'failed', 'error'];

/** Options shared by every way of running a scenario. */
export interface ScenarioRunOptions {
  /** The driver under test, or its name in `registry`. */
  readonly driver: ScenarioDriver | string;
  /** Where a driver name is looked up. */
  readonly registry?: DriverRegistry;
  /** Attach the oracle (default true), with these options, or not (false: benchmarks; verdicts then come from failures only). */
  readonly oracle?: boolean | Omit<OracleOptions, 'phys'>;
  /** Run-away guard in scheduling steps. Default: the scenario's maxSteps. */
  readonly maxSteps?: number;
  /** Lock-order validation. Default true. */
  readonly lockdep?: boolean;
  /** Make WARN_ON fatal. Default false. */
  readonly warnFatal?: boolean;
  /** Record the compact event timeline (result.timeline): true, or which events. Default false. */
  readonly timeline?: boolean | TimelineOptions;
}

/** Options of runScenario. */
export interface RunScenarioOptions extends ScenarioRunOptions {
  /** Seed in [0, 2^32). Default 0. */
  readonly seed?: number;
  /** `fifo`, `random` (the default), `pct:D` or `pct:D:k=K`. */
  readonly strategy?: string;
}

/** Options of replayScenario. */
export interface ReplayScenarioOptions extends Omit<ScenarioRunOptions, 'driver'> {
  /** Strict (default): a divergence from the log is a ReplayDivergedError (verdict 'error'). */
  readonly strict?: boolean;
}

/** Statistics of one run (or totals of many). */
export interface ScenarioStats {
  /** Virtual time at the end, ns. */
  readonly time: number;
  readonly steps: number;
  /** Decisions in the schedule. */
  readonly decisions: number;
  /** CPU page faults (every mm of the run made through the world or ctx.fork). */
  readonly cpuFaults: number;
  /** mmu-notifier invalidations the mms issued. */
  readonly invalidations: number;
  /** Device fault records written. */
  readonly deviceFaults: number;
  /** The drivers' fault-loop retries (their `retries` counter). */
  readonly retries: number;
  /** Device accesses that touched memory. */
  readonly deviceAccesses: number;
  readonly tlbHits: number;
  readonly tlbMisses: number;
  /** tlbHits / (tlbHits + tlbMisses), or null with no translation. */
  readonly tlbHitRate: number | null;
  /** Device TLB shootdowns (range and whole-space invalidations). */
  readonly shootdowns: number;
  /** Device jobs killed by a cancel. */
  readonly cancels: number;
  /** Device fault latency over every device: stall to successful retry, virtual ns. */
  readonly faultLatency: FaultLatencyStats;
  /** The drivers' own counters, summed over the devices. */
  readonly driver: Readonly<Record<string, number>>;
  /** What the oracle checked, or null without the oracle. */
  readonly oracle: Readonly<OracleStats> | null;
}

/** A fault-latency distribution summed over devices (or runs). */
export interface FaultLatencyStats {
  /** Faults serviced (accesses that stalled and then completed). */
  readonly count: number;
  /** 0 with no fault. */
  readonly meanNs: number;
  readonly maxNs: number;
  /** Counts per FAULT_LATENCY_BUCKETS_NS bucket (the last takes the rest). */
  readonly histogram: readonly number[];
}

/** Sums fault-latency distributions. */
export function mergeFaultLatency(parts: readonly FaultLatencyStats[]): FaultLatencyStats {
  let count = 0;
  let sum = 0;
  let maxNs = 0;
  const histogram = new Array<number>(FAULT_LATENCY_BUCKETS_NS.length + 1).fill(0);
  for (const p of parts) {
    count += p.count;
    sum += p.meanNs * p.count;
    if (p.maxNs > maxNs) maxNs = p.maxNs;
    p.histogram.forEach((n, i) => (histogram[i]! += n));
  }
  return { count, meanNs: count === 0 ? 0 : sum / count, maxNs, histogram };
}

/** The outcome of one run. */
export interface ScenarioResult {
  readonly scenario: string;
  readonly driver: string;
  readonly verdict: Verdict;
  /** The engine's result (seed, strategy, decisions, failure). */
  readonly run: RunResult;
  /** The violation's report (verdict 'violation'), else null. */
  readonly report: ViolationReport | null;
  /** report.render() with run-local mm ids (stable across replays), or null. */
  readonly reportText: string | null;
  /** The error that failed the run (null when coherent). */
  readonly failure: Error | null;
  /** One line: the verdict and why. */
  readonly summary: string;
  /** The schedule string that replays the run. */
  readonly schedule: string;
  readonly stats: ScenarioStats;
  /** ctx.log lines. */
  readonly log: readonly LogEntry[];
  /** The event timeline, when the run was asked for one (options.timeline), else null. */
  readonly timeline: Timeline | null;
}

/** @internal the state of one run, captured by the program for the result. */
export interface RunState {
  readonly world: ScenarioWorld;
  readonly ctx: RunContext<unknown>;
  readonly devices: WorldDevice[];
  /** Process-wide mm id -> its creation order in this run (1-based). */
  readonly mmIds: Map<number, number>;
  /** The timeline recorder, when asked for. */
  readonly timeline: TimelineRecorder | null;
}

/** Null if `scenario` applies to `driver`, else why not (one line). */
export function scenarioRejects(scenario: Scenario, driver: ScenarioDriver): string | null {
  const why = selectorRejects(scenario.drivers, driver);
  return why === null ? null : `scenario ${scenario.name} does not apply to driver ${driver.name}: ${why}`;
}

/** @internal resolves and checks the scenario and the driver of a run. */
export function resolveTarget(scenario: unknown, driver: unknown, registry: DriverRegistry | undefined, who: string): { scenario: Scenario; driver: ScenarioDriver } {
  if (!isScenario(scenario)) throw new KernelError(EINVAL, `${who}: scenario must be a value returned by defineScenario: ${String(scenario)}`);
  let d: ScenarioDriver;
  if (typeof driver === 'string') {
    if (registry === undefined) throw new KernelError(EINVAL, `${who}: driver ${JSON.stringify(driver)} given by name, but no registry: pass { registry } or the driver object`);
    d = registry.get(driver);
  } else {
    d = checkScenarioDriver(driver, `${who}: driver`);
  }
  const why = scenarioRejects(scenario, d);
  if (why !== null) throw new KernelError(EINVAL, `${who}: ${why}`);
  return { scenario, driver: d };
}

/**
 * @internal the sim Program of `scenario` on `driver`; each call reports its run state to
 * `sink` before the run starts (the last call is the run whose result comes next).
 */
export function scenarioProgram(scenario: Scenario, driver: ScenarioDriver, opts: Pick<ScenarioRunOptions, 'oracle' | 'timeline'>, sink: (s: RunState) => void): Program {
  const tl = opts.timeline ?? false;
  if (typeof tl !== 'boolean' && (tl === null || typeof tl !== 'object')) throw new KernelError(EINVAL, `timeline must be a boolean or timeline options: ${String(tl)}`);
  return (engine: Engine) => {
    const timeline = tl === false ? null : new TimelineRecorder(engine, tl === true ? {} : tl);
    const mmIds = new Map<number, number>();
    if (opts.oracle !== false) engine.trace.on('mm.create', (ev) => void mmIds.set(ev.mm, mmIds.size + 1));
    const world = buildWorld(engine, scenario.world, opts.oracle === undefined ? {} : { oracle: opts.oracle });
    const info = { name: driver.name, api: driver.api, kind: driver.kind, features: driver.features };
    const ctx = new RunContext<unknown>(engine, world.phys, world.mms, info, scenario.state(), world.oracle);
    const run: RunState = { world, ctx, devices: [], mmIds, timeline };
    ctx.binder = async (name, mm) => {
      const spec = world.spec.devices.find((d) => d.name === name);
      if (spec === undefined || !spec.deferred) {
        throw new KernelError(EINVAL, `ctx.bindDevice: ${JSON.stringify(name)} is not a deferred device of the world (deferred: ${world.spec.devices.filter((d) => d.deferred).map((d) => d.name).join(', ') || 'none'})`);
      }
      const d = await bindDevice(world, driver, name, mm);
      run.devices.push(d);
      return d;
    };
    sink(run);
    engine.spawn(SCENARIO_TASK, async () => {
      await bindDevices(world, driver, (d) => {
        run.devices.push(d);
        ctx.addDevice(d);
      });
      if (scenario.setup !== null) await scenario.setup(ctx);
      const tasks = scenario.tasks.map(({ name, spec }) =>
        engine.spawn(name, async () => {
          await (typeof spec === 'function' ? spec(ctx) : ctx.runDeviceTask(name, spec));
          ctx.taskEnded(name);
        }),
      );
      for (const t of tasks) await t.join();
      if (scenario.check !== null) await scenario.check(ctx);
      await teardown(run);
      world.oracle?.finish();
    });
  };
}

/** Waits for the warps launched through the context, unbinds every device, exits the live mms. */
async function teardown(run: RunState): Promise<void> {
  const ctx = run.ctx;
  await ctx.idle.waitEvent(() => ctx.liveWarps === 0);
  for (const d of [...run.devices].reverse()) await d.bound.unbind();
  const mms: MmStruct[] = [...[...ctx.children].reverse(), ...run.world.mms.values()];
  for (const mm of mms) if (mm.state === 'live') await exitMm(mm);
}

function sumInto(into: Record<string, number>, from: Readonly<Record<string, number>>): void {
  for (const [k, v] of Object.entries(from)) if (typeof v === 'number' && Number.isFinite(v)) into[k] = (into[k] ?? 0) + v;
}

/** @internal the statistics of a finished run. */
export function collectStats(r: RunResult, run: RunState): ScenarioStats {
  let cpuFaults = 0;
  let invalidations = 0;
  for (const mm of [...run.world.mms.values(), ...run.ctx.children]) {
    cpuFaults += mm.stats.faults;
    invalidations += mm.stats.invalidations;
  }
  let deviceFaults = 0;
  let deviceAccesses = 0;
  let tlbHits = 0;
  let tlbMisses = 0;
  let shootdowns = 0;
  let cancels = 0;
  const latency: FaultLatencyStats[] = [];
  const driver: Record<string, number> = {};
  for (const d of run.devices) {
    const s = d.bound.device.stats;
    deviceFaults += s.faults;
    deviceAccesses += s.accesses;
    tlbHits += s.tlbHits;
    tlbMisses += s.tlbMisses;
    shootdowns += s.invalidations + s.invalidationsAll;
    cancels += s.cancels;
    latency.push(s.faultLatency());
    sumInto(driver, d.bound.stats());
  }
  return {
    time: r.time,
    steps: r.steps,
    decisions: r.decisions.length,
    cpuFaults,
    invalidations,
    deviceFaults,
    retries: driver['retries'] ?? 0,
    deviceAccesses,
    tlbHits,
    tlbMisses,
    tlbHitRate: tlbHits + tlbMisses === 0 ? null : tlbHits / (tlbHits + tlbMisses),
    shootdowns,
    cancels,
    faultLatency: mergeFaultLatency(latency),
    driver,
    oracle: run.world.oracle === null ? null : { ...run.world.oracle.stats },
  };
}

/**
 * Renumbers mm ids in a rendered report: the `mm: name (#id)` line and `mm=`, and the
 * `parent=` / `child=` fields of mm.create and mm.fork events, become run-local.
 */
export function normalizeMmIds(text: string, ids: ReadonlyMap<number, number>): string {
  return text
    .split('\n')
    .map((line) => {
      const l = line.replace(/^(\s*mm: .* \(#)(\d+)(\))$/, (_m, a: string, id: string, b: string) => `${a}${localMmId(id, ids)}${b}`);
      return localizeMmFields(l, ids, /\smm\.(fork|create)\s/.test(l));
    })
    .join('\n');
}

function localMmId(id: string, ids: ReadonlyMap<number, number>): string {
  return String(ids.get(Number(id)) ?? `?${id}`);
}

/** Renumbers `mm=` fields (and `parent=` / `child=`, for an mm.fork or mm.create event) in `key=value` text. */
function localizeMmFields(text: string, ids: ReadonlyMap<number, number>, forkOrCreate: boolean): string {
  let l = text.replace(/(^|\s)mm=(\d+)\b/g, (_m, sp: string, id: string) => `${sp}mm=${localMmId(id, ids)}`);
  if (forkOrCreate) l = l.replace(/(^|\s)(parent|child)=(\d+)\b/g, (_m, sp: string, k: string, id: string) => `${sp}${k}=${localMmId(id, ids)}`);
  return l;
}

/** The timeline with run-local mm ids (as reports have them), so that a replay prints the same lines. */
function normalizeTimeline(t: Timeline, ids: ReadonlyMap<number, number>): Timeline {
  return {
    dropped: t.dropped,
    entries: t.entries.map((e) => {
      const fc = e.type === 'mm.fork' || e.type === 'mm.create';
      return { ...e, text: localizeMmFields(e.text, ids, fc), lastText: e.lastText === null ? null : localizeMmFields(e.lastText, ids, fc) };
    }),
  };
}

/** @internal the result of a finished run. */
export function toResult(scenario: Scenario, driver: ScenarioDriver, r: RunResult, run: RunState): ScenarioResult {
  const oracle = run.world.oracle;
  let verdict: Verdict = 'coherent';
  let report: ViolationReport | null = null;
  const f = r.failure;
  if (f !== null) {
    if (f instanceof CoherencyViolation) {
      verdict = 'violation';
      report = f.report;
    } else {
      const lock = oracle?.classify(f) ?? null;
      if (lock !== null) {
        verdict = 'violation';
        report = lock;
      } else if (f instanceof TaskCrashedError && f.cause instanceof ScenarioExpectationError) {
        verdict = 'failed';
      } else {
        verdict = 'error';
      }
    }
  } else if (oracle !== null && oracle.violations.length > 0) {
    verdict = 'violation';
    report = oracle.violations[0]!;
  }
  let summary: string;
  switch (verdict) {
    case 'coherent':
      summary = 'coherent';
      break;
    case 'violation':
      summary = `violation: ${report!.summary()}`;
      break;
    case 'failed':
      summary = `failed: ${((f as TaskCrashedError).cause as Error).message}`;
      break;
    case 'error':
      summary = `error: ${f?.message ?? 'teardown'}`;
      break;
  }
  return {
    scenario: scenario.name,
    driver: driver.name,
    verdict,
    run: r,
    report,
    reportText: report === null ? null : normalizeMmIds(report.render(), run.mmIds),
    failure: f,
    summary,
    get schedule(): string {
      return r.schedule;
    },
    stats: collectStats(r, run),
    log: run.ctx.log_,
    timeline: run.timeline === null ? null : normalizeTimeline(run.timeline.timeline(), run.mmIds),
  };
}

function runOptions(scenario: Scenario, o: ScenarioRunOptions): { maxSteps: number; lockdep?: boolean; warnFatal?: boolean } {
  return {
    maxSteps: o.maxSteps ?? scenario.maxSteps,
    ...(o.lockdep !== undefined ? { lockdep: o.lockdep } : {}),
    ...(o.warnFatal !== undefined ? { warnFatal: o.warnFatal } : {}),
  };
}

/** Runs `scenario` once on `opts.driver` under `opts.seed` and `opts.strategy`. */
export async function runScenario(scenario: Scenario, opts: RunScenarioOptions): Promise<ScenarioResult> {
  if (opts === null || typeof opts !== 'object') throw new KernelError(EINVAL, `runScenario: options must be an object with a driver: ${String(opts)}`);
  const t = resolveTarget(scenario, opts.driver, opts.registry, 'runScenario');
  let last: RunState | null = null;
  const program = scenarioProgram(t.scenario, t.driver, opts, (s) => (last = s));
  const r = await runProgram(program, { ...runOptions(t.scenario, opts), seed: opts.seed ?? 0, strategy: opts.strategy ?? 'random' });
  return toResult(t.scenario, t.driver, r, last!);
}

/** Replays one run of `scenario` on `driver` from its schedule (string or object): same decisions, same verdict, same report. */
export async function replayScenario(scenario: Scenario, driver: ScenarioDriver | string, schedule: Schedule | string, opts: ReplayScenarioOptions = {}): Promise<ScenarioResult> {
  const t = resolveTarget(scenario, driver, opts.registry, 'replayScenario');
  let last: RunState | null = null;
  const program = scenarioProgram(t.scenario, t.driver, opts, (s) => (last = s));
  const r = await replay(program, schedule, { ...runOptions(t.scenario, { ...opts, driver: t.driver }), strict: opts.strict ?? true });
  return toResult(t.scenario, t.driver, r, last!);
}

/** The full text of a result: the verdict line, the report (or the failure), the replay schedule and the statistics. */
export function renderResult(r: ScenarioResult): string {
  const lines = [`${r.scenario} on ${r.driver}: ${r.verdict} (seed ${r.run.seed}, strategy ${r.run.strategy}, ${r.run.steps} steps, t=${r.run.time}ns)`];
  if (r.reportText !== null) lines.push(r.reportText);
  else if (r.failure !== null) {
    lines.push(`  ${r.summary}`);
    lines.push(`  replay: schedule ${r.schedule}`);
  }
  lines.push(`  stats: ${formatStats(r.stats)}`);
  return lines.join('\n');
}

/** Statistics on one line. */
export function formatStats(s: ScenarioStats): string {
  const rate = s.tlbHitRate === null ? '-' : `${(100 * s.tlbHitRate).toFixed(1)}%`;
  const lat = s.faultLatency.count === 0 ? '-' : `mean ${Math.round(s.faultLatency.meanNs)}ns max ${s.faultLatency.maxNs}ns`;
  return `cpu faults ${s.cpuFaults}, device faults ${s.deviceFaults}, retries ${s.retries}, fault latency ${lat}, invalidations ${s.invalidations}, shootdowns ${s.shootdowns}, TLB hit rate ${rate}, device accesses ${s.deviceAccesses}, cancels ${s.cancels}, virtual time ${s.time}ns, steps ${s.steps}`;
}

/** A JSON-safe view of a result. */
export function scenarioResultToJSON(r: ScenarioResult): Record<string, unknown> {
  return {
    scenario: r.scenario,
    driver: r.driver,
    verdict: r.verdict,
    summary: r.summary,
    seed: r.run.seed,
    strategy: r.run.strategy,
    schedule: r.schedule,
    steps: r.run.steps,
    time: r.run.time,
    failure: r.failure === null ? null : { name: r.failure.name, code: (r.failure as { code?: unknown }).code ?? null, message: r.failure.message },
    report: r.report === null ? null : r.report.toJSON(),
    reportText: r.reportText,
    stats: r.stats,
    log: r.log,
    ...(r.timeline !== null ? { timeline: r.timeline } : {}),
  };
}
