/**
 * Exploring a scenario over many schedules (exploreScenario), and checking it against an
 * expectation over several strategies (checkScenario: 'coherent' for a reference driver,
 * 'caught' for a broken one).
 *
 * Run i of an exploration uses seed `seed + i` (mod 2^32) under the strategy; under PCT the
 * step estimate K starts from one fifo run and grows to the longest run seen (sim's explore),
 * and each result's strategy spec records the K it used, so every run replays from its own
 * schedule string. Results are not kept, except failures (statistics are summed as runs end),
 * so an exploration of a hundred thousand schedules costs no memory per run.
 */
import { EINVAL, KernelError, explore } from '../sim/index.js';
import type { Scenario } from './define.js';
import { type RunState, type ScenarioResult, type ScenarioRunOptions, type ScenarioStats, VERDICTS, type Verdict, mergeFaultLatency, renderResult, resolveTarget, scenarioProgram, toResult } from './runner.js';

/** Options of exploreScenario. */
export interface ExploreScenarioOptions extends ScenarioRunOptions {
  /** Schedules to run. */
  readonly runs: number;
  /** `random` (the default), `pct:D`, `pct:D:k=K` or `fifo` (one schedule). */
  readonly strategy?: string;
  /** First seed. Default 0. */
  readonly seed?: number;
  /** Stop at the first run that is not coherent. Default true. */
  readonly stopOnFailure?: boolean;
  /** Failing results kept when not stopping. Default 10. */
  readonly keepFailures?: number;
  /** Called after each run with its result (1-based index). */
  readonly onRun?: (result: ScenarioResult, index: number) => void;
}

/** The outcome of an exploration. */
export interface ScenarioExploreResult {
  readonly scenario: string;
  readonly driver: string;
  /** The strategy as given. */
  readonly strategy: string;
  readonly seed: number;
  /** Schedules run. */
  readonly runs: number;
  /** Runs per verdict. */
  readonly verdicts: Readonly<Record<Verdict, number>>;
  /** The first run that was not coherent, or null. */
  readonly firstFailure: ScenarioResult | null;
  /** Its 1-based index, or null. */
  readonly firstFailureAt: number | null;
  /** Failing runs kept (the first one always). */
  readonly failures: readonly ScenarioResult[];
  /** Statistics summed over the runs (tlbHitRate over all translations). */
  readonly totals: ScenarioStats;
  /** The longest run, in scheduling steps. */
  readonly longestRun: number;
}

function emptyTotals(): { -readonly [K in keyof ScenarioStats]: ScenarioStats[K] } {
  return {
    time: 0,
    steps: 0,
    decisions: 0,
    cpuFaults: 0,
    invalidations: 0,
    deviceFaults: 0,
    retries: 0,
    deviceAccesses: 0,
    tlbHits: 0,
    tlbMisses: 0,
    tlbHitRate: null,
    shootdowns: 0,
    cancels: 0,
    faultLatency: mergeFaultLatency([]),
    driver: {},
    oracle: null,
  };
}

function addStats(t: ReturnType<typeof emptyTotals>, s: ScenarioStats): void {
  t.time += s.time;
  t.steps += s.steps;
  t.decisions += s.decisions;
  t.cpuFaults += s.cpuFaults;
  t.invalidations += s.invalidations;
  t.deviceFaults += s.deviceFaults;
  t.retries += s.retries;
  t.deviceAccesses += s.deviceAccesses;
  t.tlbHits += s.tlbHits;
  t.tlbMisses += s.tlbMisses;
  t.tlbHitRate = t.tlbHits + t.tlbMisses === 0 ? null : t.tlbHits / (t.tlbHits + t.tlbMisses);
  t.shootdowns += s.shootdowns;
  t.cancels += s.cancels;
  t.faultLatency = mergeFaultLatency([t.faultLatency, s.faultLatency]);
  const d = t.driver as Record<string, number>;
  for (const [k, v] of Object.entries(s.driver)) d[k] = (d[k] ?? 0) + v;
  if (s.oracle !== null) {
    const o = t.oracle === null ? { deviceAccesses: 0, cpuAccesses: 0, callbacks: 0, installs: 0, frees: 0 } : { ...t.oracle };
    o.deviceAccesses += s.oracle.deviceAccesses;
    o.cpuAccesses += s.oracle.cpuAccesses;
    o.callbacks += s.oracle.callbacks;
    o.installs += s.oracle.installs;
    o.frees += s.oracle.frees;
    t.oracle = o;
  }
}

/** Runs `scenario` on `opts.driver` under `opts.runs` schedules. */
export async function exploreScenario(scenario: Scenario, opts: ExploreScenarioOptions): Promise<ScenarioExploreResult> {
  if (opts === null || typeof opts !== 'object') throw new KernelError(EINVAL, `exploreScenario: options must be an object with driver and runs: ${String(opts)}`);
  const t = resolveTarget(scenario, opts.driver, opts.registry, 'exploreScenario');
  if (!Number.isInteger(opts.runs) || opts.runs < 1) throw new KernelError(EINVAL, `exploreScenario: runs must be a positive integer: ${String(opts.runs)}`);
  const keep = opts.keepFailures ?? 10;
  if (!Number.isInteger(keep) || keep < 1) throw new KernelError(EINVAL, `exploreScenario: keepFailures must be a positive integer: ${String(keep)}`);
  const strategy = opts.strategy ?? 'random';
  const seed = opts.seed ?? 0;
  let last: RunState | null = null;
  const program = scenarioProgram(t.scenario, t.driver, opts, (s) => (last = s));
  const verdicts: Record<Verdict, number> = { coherent: 0, violation: 0, failed: 0, error: 0 };
  const totals = emptyTotals();
  const failures: ScenarioResult[] = [];
  let firstFailureAt: number | null = null;
  let longestRun = 0;
  const res = await explore(program, {
    runs: opts.runs,
    strategy,
    seed,
    maxSteps: opts.maxSteps ?? t.scenario.maxSteps,
    ...(opts.lockdep !== undefined ? { lockdep: opts.lockdep } : {}),
    ...(opts.warnFatal !== undefined ? { warnFatal: opts.warnFatal } : {}),
    stopOnFailure: opts.stopOnFailure ?? true,
    onRun: (r, i) => {
      const result = toResult(t.scenario, t.driver, r, last!);
      verdicts[result.verdict]++;
      addStats(totals, result.stats);
      if (r.steps > longestRun) longestRun = r.steps;
      if (result.verdict !== 'coherent') {
        firstFailureAt ??= i;
        if (failures.length < keep) failures.push(result);
      }
      opts.onRun?.(result, i);
    },
  });
  return {
    scenario: t.scenario.name,
    driver: t.driver.name,
    strategy,
    seed,
    runs: res.runs,
    verdicts,
    firstFailure: failures[0] ?? null,
    firstFailureAt,
    failures,
    totals,
    longestRun,
  };
}

/** What checkScenario expects: every schedule coherent, or some schedule caught (violation or failed). */
export type Expectation = 'coherent' | 'caught';

/** Options of checkScenario. */
export interface CheckScenarioOptions extends ScenarioRunOptions {
  /** Schedules per strategy. */
  readonly runs: number;
  /** The strategies, explored in order. Default ['random', 'pct:3']. */
  readonly strategies?: readonly string[];
  /** First seed of each strategy. Default 0. */
  readonly seed?: number;
  /** Default: 'caught' for a buggy driver, 'coherent' for a reference one. */
  readonly expect?: Expectation;
  /** Verdicts that count as caught. Default ['violation', 'failed']. */
  readonly caughtBy?: readonly Verdict[];
}

/** The outcome of a check. */
export interface ScenarioCheckResult {
  readonly scenario: string;
  readonly driver: string;
  readonly expected: Expectation;
  /** The expectation held. */
  readonly ok: boolean;
  /** Schedules run in all. */
  readonly runs: number;
  /** One exploration per strategy run (a 'caught' check stops at the first catch). */
  readonly explorations: readonly ScenarioExploreResult[];
  /** The first run that was not coherent, or null. */
  readonly firstFailure: ScenarioResult | null;
  /** What happened: the rendered failure (report included) or a one-line success. */
  readonly message: string;
}

/**
 * Explores `scenario` on `opts.driver` under each strategy (stopping at the first run that is
 * not coherent) and compares with the expectation.
 */
export async function checkScenario(scenario: Scenario, opts: CheckScenarioOptions): Promise<ScenarioCheckResult> {
  if (opts === null || typeof opts !== 'object') throw new KernelError(EINVAL, `checkScenario: options must be an object with driver and runs: ${String(opts)}`);
  const t = resolveTarget(scenario, opts.driver, opts.registry, 'checkScenario');
  const strategies = opts.strategies ?? ['random', 'pct:3'];
  if (!Array.isArray(strategies) || strategies.length === 0 || strategies.some((s) => typeof s !== 'string')) throw new KernelError(EINVAL, `checkScenario: strategies must be a non-empty array of strategy specs: ${String(strategies)}`);
  const expected: Expectation = opts.expect ?? (t.driver.kind === 'buggy' ? 'caught' : 'coherent');
  if (expected !== 'coherent' && expected !== 'caught') throw new KernelError(EINVAL, `checkScenario: expect must be 'coherent' or 'caught': ${String(expected)}`);
  const caughtBy = opts.caughtBy ?? ['violation', 'failed'];
  if (!Array.isArray(caughtBy) || caughtBy.some((v) => !VERDICTS.includes(v))) throw new KernelError(EINVAL, `checkScenario: caughtBy must be an array of verdicts: ${String(caughtBy)}`);
  const explorations: ScenarioExploreResult[] = [];
  let firstFailure: ScenarioResult | null = null;
  for (const strategy of strategies) {
    const e = await exploreScenario(t.scenario, { ...opts, driver: t.driver, strategy, seed: opts.seed ?? 0, runs: opts.runs, stopOnFailure: true });
    explorations.push(e);
    if (e.firstFailure !== null) {
      firstFailure = e.firstFailure;
      break;
    }
  }
  const runs = explorations.reduce((n, e) => n + e.runs, 0);
  const where = `${t.scenario.name} on ${t.driver.name}`;
  const tried = explorations.map((e) => `${e.runs} ${e.strategy}`).join(' + ');
  let ok: boolean;
  let message: string;
  if (expected === 'coherent') {
    ok = firstFailure === null;
    message = ok ? `${where}: coherent over ${runs} schedules (${tried})` : `${where}: expected coherent, but the run with seed ${firstFailure!.run.seed} under ${firstFailure!.run.strategy} was not:\n${renderResult(firstFailure!)}`;
  } else {
    ok = firstFailure !== null && caughtBy.includes(firstFailure.verdict);
    if (ok) message = `${where}: caught (${firstFailure!.summary})\n${renderResult(firstFailure!)}`;
    else if (firstFailure === null) message = `${where}: expected the driver to be caught, but all ${runs} schedules (${tried}) were coherent`;
    else message = `${where}: expected a catch (${caughtBy.join(' or ')}), but the first failing run ended with ${firstFailure.verdict}:\n${renderResult(firstFailure)}`;
  }
  return { scenario: t.scenario.name, driver: t.driver.name, expected, ok, runs, explorations, firstFailure, message };
}

/** Options of compareScenario. */
export interface CompareScenarioOptions extends Omit<ScenarioRunOptions, 'driver'> {
  /** The drivers to compare (objects, or names in `registry`). At least one. */
  readonly drivers: readonly (ScenarioRunOptions['driver'])[];
  /** Schedules per driver: seeds seed, seed + 1, ... Default 1. */
  readonly runs?: number;
  readonly seed?: number;
  /** Default 'random'. */
  readonly strategy?: string;
}

/** One driver's line of a comparison. */
export interface ComparisonRow {
  readonly driver: string;
  readonly api: string;
  readonly runs: number;
  readonly verdicts: Readonly<Record<Verdict, number>>;
  /** Statistics summed over the runs (divide by `runs` for per-run figures). */
  readonly totals: ScenarioStats;
  /** The first run that was not coherent, or null. */
  readonly firstFailure: ScenarioResult | null;
}

/** The outcome of a comparison: the same workload, seeds and strategy on each driver. */
export interface ScenarioComparison {
  readonly scenario: string;
  readonly strategy: string;
  readonly seed: number;
  readonly runs: number;
  readonly rows: readonly ComparisonRow[];
}

/**
 * Runs `scenario` on each driver under the same seeds and strategy (every run, not stopping at
 * a failure) and returns each driver's verdicts and summed statistics: how the 2015 API and
 * the modern one (or two drivers of one API) fare on one workload, in retries, faults, fault
 * latency, invalidations and virtual time. Every driver must accept the scenario.
 */
export async function compareScenario(scenario: Scenario, opts: CompareScenarioOptions): Promise<ScenarioComparison> {
  if (opts === null || typeof opts !== 'object') throw new KernelError(EINVAL, `compareScenario: options must be an object with drivers: ${String(opts)}`);
  if (!Array.isArray(opts.drivers) || opts.drivers.length === 0) throw new KernelError(EINVAL, `compareScenario: drivers must be a non-empty array: ${String(opts.drivers)}`);
  const runs = opts.runs ?? 1;
  if (!Number.isInteger(runs) || runs < 1) throw new KernelError(EINVAL, `compareScenario: runs must be a positive integer: ${String(runs)}`);
  const strategy = opts.strategy ?? 'random';
  const seed = opts.seed ?? 0;
  // Resolve every driver first: a bad one fails the call before anything runs.
  const targets = opts.drivers.map((d) => resolveTarget(scenario, d, opts.registry, 'compareScenario'));
  const rows: ComparisonRow[] = [];
  for (const t of targets) {
    const e = await exploreScenario(t.scenario, { ...opts, driver: t.driver, runs, seed, strategy, stopOnFailure: false, keepFailures: 1 });
    rows.push({ driver: t.driver.name, api: t.driver.api, runs: e.runs, verdicts: e.verdicts, totals: e.totals, firstFailure: e.firstFailure });
  }
  return { scenario: targets[0]!.scenario.name, strategy, seed, runs, rows };
}
