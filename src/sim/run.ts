/**
 * Running programs on fresh engines: one run, an exploration of many schedules, a replay.
 *
 * A program is a function that, given a new Engine, spawns the tasks of one run (and may
 * attach trace listeners). It is called once per run, so it must build all of its state
 * afresh each time: runs share nothing.
 */
import { type Schedule, parseSchedule } from './decision-log.js';
import { Engine, type EngineOptions, type RunResult } from './engine.js';
import { EINVAL, KernelError } from './errors.js';
import { type StrategySpec, makeStrategy, parseStrategy } from './strategy.js';

/** Spawns the tasks of one run on `engine`. */
export type Program = (engine: Engine) => void;

/** Options of a run, as EngineOptions but the strategy is always a spec string. */
export interface RunOptions {
  /** Seed in [0, 2^32). Default 0. */
  readonly seed?: number;
  /** `fifo` (default), `random`, `pct:D` or `pct:D:k=K`. */
  readonly strategy?: string;
  /** See EngineOptions.maxSteps. */
  readonly maxSteps?: number;
  /** See EngineOptions.lockdep. */
  readonly lockdep?: boolean;
  /** See EngineOptions.warnFatal. */
  readonly warnFatal?: boolean;
}

function engineOptions(opts: RunOptions): EngineOptions {
  return {
    ...(opts.maxSteps !== undefined ? { maxSteps: opts.maxSteps } : {}),
    ...(opts.lockdep !== undefined ? { lockdep: opts.lockdep } : {}),
    ...(opts.warnFatal !== undefined ? { warnFatal: opts.warnFatal } : {}),
  };
}

async function runWith(program: Program, options: EngineOptions): Promise<RunResult> {
  const engine = new Engine(options);
  program(engine);
  return engine.run();
}

/** Estimates PCT's step count K with one fifo run (the spec then records it). */
async function withSteps(program: Program, spec: StrategySpec, opts: RunOptions): Promise<StrategySpec> {
  if (spec.kind !== 'pct' || spec.steps !== undefined) return spec;
  const probe = await runWith(program, { ...engineOptions(opts), seed: opts.seed ?? 0, strategy: 'fifo' });
  return { ...spec, steps: Math.max(1, probe.steps) };
}

/** One run of `program` under a seed and a strategy. */
export async function runProgram(program: Program, opts: RunOptions = {}): Promise<RunResult> {
  const seed = opts.seed ?? 0;
  const spec = await withSteps(program, parseStrategy(opts.strategy ?? 'fifo'), opts);
  return runWith(program, { ...engineOptions(opts), seed, strategy: makeStrategy(spec, seed) });
}

/** Options of an exploration. */
export interface ExploreOptions extends RunOptions {
  /** How many schedules to run. */
  readonly runs: number;
  /** Stop at the first failing run. Default true. */
  readonly stopOnFailure?: boolean;
  /** Called after each run. */
  readonly onRun?: (result: RunResult, index: number) => void;
}

export interface ExploreResult {
  /** Runs made. */
  readonly runs: number;
  /** Failing runs (only the first with stopOnFailure). */
  readonly failures: readonly RunResult[];
  /** The first failing run, or null. */
  readonly firstFailure: RunResult | null;
  /** 1-based index of the first failing run, or null. */
  readonly firstFailureAt: number | null;
}

/**
 * Runs `program` under `runs` schedules: run i uses seed `seed + i` (mod 2^32). Under PCT the
 * step estimate K starts from one fifo run and grows to the longest run seen, as in Shuttle;
 * each result's strategy spec records the K it used, so every run replays from its own
 * `{ seed, strategy }` or schedule string.
 */
export async function explore(program: Program, opts: ExploreOptions): Promise<ExploreResult> {
  if (!Number.isInteger(opts.runs) || opts.runs < 1) throw new KernelError(EINVAL, `explore: runs must be a positive integer: ${opts.runs}`);
  const base = opts.seed ?? 0;
  let spec = await withSteps(program, parseStrategy(opts.strategy ?? 'random'), opts);
  const failures: RunResult[] = [];
  let firstFailureAt: number | null = null;
  let i = 0;
  while (i < opts.runs) {
    const seed = (base + i) >>> 0;
    const result = await runWith(program, { ...engineOptions(opts), seed, strategy: makeStrategy(spec, seed) });
    i++;
    opts.onRun?.(result, i);
    if (spec.kind === 'pct' && result.steps > (spec.steps ?? 0)) spec = { ...spec, steps: result.steps };
    if (!result.ok) {
      failures.push(result);
      firstFailureAt ??= i;
      if (opts.stopOnFailure ?? true) break;
    }
  }
  return { runs: i, failures, firstFailure: failures[0] ?? null, firstFailureAt };
}

/** Options of a replay. */
export interface ReplayOptions {
  /** Strict (default): divergence from the log is a ReplayDivergedError. Lenient: fall back to defaults. */
  readonly strict?: boolean;
  readonly maxSteps?: number;
  readonly lockdep?: boolean;
  readonly warnFatal?: boolean;
}

/** Replays a schedule (object or string) exactly: same decisions, same outcome. */
export async function replay(program: Program, schedule: Schedule | string, opts: ReplayOptions = {}): Promise<RunResult> {
  const s = typeof schedule === 'string' ? parseSchedule(schedule) : schedule;
  return runWith(program, {
    ...engineOptions(opts),
    seed: s.seed,
    strategy: s.strategy,
    replay: { decisions: s.decisions, strict: opts.strict ?? true },
  });
}
