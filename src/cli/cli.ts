/**
 * The hmm-emu command as a function: `runCli(argv, io)` parses `argv` (without node and the
 * script), prints through `io` and returns the exit code: 0 success, 1 a violation or a failed
 * expectation, 2 bad usage or bad input. Argument parsing and printing only: the work is the
 * programmatic API of src/scenario and the catalogue loaded at run time (load.ts).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import Table from 'cli-table3';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { parseStrategy } from '../sim/index.js';
import {
  type Scenario,
  type ScenarioDriver,
  type ScenarioResult,
  type ScenarioComparison,
  checkScenario,
  compareScenario,
  describeSelector,
  renderResult,
  renderTimeline,
  replayScenario,
  runScenario,
  scenarioRejects,
  scenarioResultToJSON,
} from '../scenario/index.js';
import { runDemo } from './demo.js';
import { type Bundled, type ModuleImporter, UsageError, defaultImporter, isScenarioFile, loadBundledFromPackage, loadDriverFile, loadScenarioFile } from './load.js';

/** Where the command reads and writes. Every field is optional; the defaults are the process's. */
export interface CliIo {
  readonly stdout?: (s: string) => void;
  readonly stderr?: (s: string) => void;
  /** The directory relative paths (scenario files, replay files) resolve against. */
  readonly cwd?: string;
  /** Loads the bundled scenarios and driver registry (default: from the package root at run time). */
  readonly loadBundled?: () => Promise<Bundled>;
  /** Imports a user scenario file by absolute path (default: tsx for .ts, import() otherwise). */
  readonly importModule?: ModuleImporter;
}

/** The default number of schedules per strategy of `check`: 500 random + 500 pct:3 per pair, about 55 s for the whole catalogue on the 2-core reference machine (`npm start`). */
export const DEFAULT_CHECK_SCHEDULES = 500;

/** A replay file: what `run` writes on a failure and `replay` reads. */
export interface ReplayFile {
  readonly scenario: string;
  /** The scenario file the scenario came from, when not a bundled one. */
  readonly scenarioFile?: string;
  readonly driver: string;
  /** The driver file the driver came from, when not a registered one. */
  readonly driverFile?: string;
  readonly schedule: string;
}

/** A `check` line. */
export interface CheckRow {
  readonly scenario: string;
  readonly driver: string;
  readonly expect: 'coherent' | 'caught';
  readonly verdict: 'coherent' | 'caught' | 'missed' | 'false-positive' | 'error';
  readonly schedules: number;
  readonly replay?: string;
  readonly message?: string;
}

class Exit extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}

function nonNegInt(what: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(n)) throw new InvalidArgumentError(`bad ${what}: expected a non-negative integer, got ${JSON.stringify(v)}`);
    return n;
  };
}

function positiveInt(v: string): number {
  const n = nonNegInt('count')(v);
  if (n < 1) throw new InvalidArgumentError(`expected a positive integer, got ${JSON.stringify(v)}`);
  return n;
}

function strategyArg(v: string): string {
  try {
    parseStrategy(v);
  } catch (e) {
    throw new InvalidArgumentError(`bad strategy: ${e instanceof Error ? e.message : String(e)}`);
  }
  return v;
}

/** Tables without colour codes: output goes to files, pipes and CI logs as often as to a terminal. */
const PLAIN = { head: [], border: [] };
/** The same, without lines between rows (one-line rows). */
const COMPACT = { ...PLAIN, compact: true };

function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

/** A comparison as a table: per driver, per-run means of the statistics that tell the APIs apart. */
export function renderComparison(c: ScenarioComparison): string {
  const t = new Table({ style: COMPACT, head: ['driver', 'API', 'coherent', 'device faults', 'retries', 'backoffs', 'fault latency mean', 'max', 'invalidations', 'shootdowns', 'virtual time'] });
  const per = (n: number, runs: number): string => (runs === 1 ? String(n) : (n / runs).toFixed(1));
  for (const r of c.rows) {
    const s = r.totals;
    const lat = s.faultLatency;
    t.push([
      r.driver,
      r.api,
      `${r.verdicts.coherent}/${r.runs}`,
      per(s.deviceFaults, r.runs),
      per(s.retries, r.runs),
      s.driver['backoffs'] === undefined ? '-' : per(s.driver['backoffs'], r.runs),
      lat.count === 0 ? '-' : `${Math.round(lat.meanNs)} ns`,
      lat.count === 0 ? '-' : `${lat.maxNs} ns`,
      per(s.invalidations, r.runs),
      per(s.shootdowns, r.runs),
      `${per(s.time, r.runs)} ns`,
    ]);
  }
  const head = `${c.scenario}: ${c.runs === 1 ? `seed ${c.seed}` : `${c.runs} runs per driver (seeds ${c.seed}..${c.seed + c.runs - 1}), per-run means`}, strategy ${c.strategy}`;
  return `${head}\n${t.toString()}`;
}

const errText = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/** Runs the hmm-emu command; returns its exit code. */
export async function runCli(argv: readonly string[], io: CliIo = {}): Promise<number> {
  const out = io.stdout ?? ((s: string) => void process.stdout.write(s));
  const err = io.stderr ?? ((s: string) => void process.stderr.write(s));
  const cwd = io.cwd ?? process.cwd();
  const importer = io.importModule ?? defaultImporter;
  let bundled: Bundled | null = null;
  const catalogue = async (): Promise<Bundled> => {
    if (bundled === null) {
      try {
        bundled = await (io.loadBundled ?? (() => loadBundledFromPackage(importer)))();
      } catch (e) {
        throw new UsageError(`cannot load the bundled scenarios and drivers: ${errText(e)}`);
      }
    }
    return bundled;
  };
  const println = (s = ''): void => out(s + '\n');
  const json = (v: unknown): void => println(JSON.stringify(v, null, 2));

  /** Driver files loaded so far, by the driver's name (for replay files). */
  const driverFiles = new Map<string, string>();
  /** A registered driver by name, or a driver file (path, or path#name). */
  const getDriver = async (name: string): Promise<ScenarioDriver> => {
    if (isScenarioFile(name)) {
      const { file, driver } = await loadDriverFile(name, cwd, importer);
      driverFiles.set(driver.name, file);
      return driver;
    }
    const { registry } = await catalogue();
    if (!registry.has(name)) throw new UsageError(`unknown driver ${JSON.stringify(name)} (known: ${registry.list().map((d) => d.name).join(', ')})`);
    return registry.get(name);
  };
  /** A bundled scenario by name, or a scenario file (path, or path#name). */
  const getScenario = async (spec: string): Promise<{ scenario: Scenario; file?: string }> => {
    if (isScenarioFile(spec)) return loadScenarioFile(spec, cwd, importer);
    const { scenarios, findScenario } = await catalogue();
    const s = findScenario(spec);
    if (s === undefined) throw new UsageError(`unknown scenario ${JSON.stringify(spec)} (known: ${scenarios.map((x) => x.name).join(', ')}; or give a scenario file path)`);
    return { scenario: s };
  };
  const applicable = (s: Scenario, ds: readonly ScenarioDriver[]): ScenarioDriver[] => ds.filter((d) => scenarioRejects(s, d) === null);
  const writeReplay = (dir: string, r: ScenarioResult, file: string | undefined): string => {
    const driverFile = driverFiles.get(r.driver);
    const data: ReplayFile = { scenario: r.scenario, ...(file !== undefined ? { scenarioFile: file } : {}), driver: r.driver, ...(driverFile !== undefined ? { driverFile } : {}), schedule: r.schedule };
    const d = path.resolve(cwd, dir);
    mkdirSync(d, { recursive: true });
    const p = path.join(d, `hmm-emu-replay-${r.scenario}-${r.driver}-${r.run.strategy.replace(/[^a-z0-9]+/gi, '_')}-seed${r.run.seed}.json`);
    writeFileSync(p, JSON.stringify(data, null, 2) + '\n');
    return p;
  };
  const replayCommand = (p: string): string => `hmm-emu replay ${JSON.stringify(path.relative(cwd, p) || p)}`;

  const program = new Command();
  program.name('hmm-emu').description('Deterministic emulation of Linux HMM, mmu notifiers and mirroring devices').version('0.1.0');
  program.exitOverride();
  program.configureOutput({ writeOut: out, writeErr: err });
  program.showHelpAfterError(false);

  program
    .command('demo')
    .description('engine demo: an ABBA lock-order bug found by PCT, replayed, and caught by lockdep')
    .option('--schedules <n>', 'PCT schedules to explore at most', positiveInt, 1000)
    .action(async (opts: { schedules: number }) => {
      const report = await runDemo(opts.schedules);
      println(report.lines.join('\n'));
      throw new Exit(report.ok ? 0 : 1);
    });

  program
    .command('list')
    .description('list the bundled scenarios and the drivers')
    .option('--json', 'machine-readable output')
    .action(async (opts: { json?: boolean }) => {
      const { scenarios, registry } = await catalogue();
      const all = registry.list();
      const drivers = all.map((d) => ({ name: d.name, api: d.api, kind: d.kind, description: d.description, ...(d.base !== undefined ? { base: d.base } : {}), ...(d.caughtBy !== undefined ? { caughtBy: d.caughtBy } : {}) }));
      const scen = scenarios.map((s) => ({
        name: s.name,
        tags: s.tags,
        description: s.description,
        origin: s.origin,
        appliesTo: describeSelector(s.drivers),
        drivers: applicable(s, all).map((d) => d.name),
        // The broken drivers expected to be caught on it (those `check` runs it on).
        catches: all.filter((d) => d.kind === 'buggy' && (d.caughtBy ?? []).includes(s.name)).map((d) => d.name),
      }));
      if (opts.json === true) {
        json({ scenarios: scen, drivers });
        return;
      }
      const st = new Table({ style: PLAIN, head: ['scenario', 'reference drivers (catches)', 'description', 'origin'], colWidths: [30, 30, 54, 44], wordWrap: true });
      const refs = new Set(all.filter((d) => d.kind === 'reference').map((d) => d.name));
      for (const s of scen) st.push([s.name, [...s.drivers.filter((d) => refs.has(d)), ...s.catches.map((d) => `(${d})`)].join(', '), s.description, s.origin]);
      println('Scenarios');
      println(st.toString());
      const dt = new Table({ style: PLAIN, head: ['driver', 'API', 'kind', 'description'], colWidths: [26, 8, 11, 80], wordWrap: true });
      for (const d of drivers) dt.push([d.name, d.api, d.kind, d.description]);
      println('Drivers');
      println(dt.toString());
    });

  program
    .command('run')
    .description('run one scenario once on one driver (or, with --compare, on several, side by side)')
    .argument('<scenario>', 'a bundled scenario name (hmm-tests names such as anon_read work too), or a scenario file (path[#name])')
    .option('--driver <name>', 'a registered driver or a driver file (path[#name]); default: the first reference driver the scenario applies to; repeat it with --compare', collect, [])
    .option('--seed <n>', 'the seed', nonNegInt('seed'), 0)
    .option('--strategy <spec>', 'fifo, random or pct:D', strategyArg, 'random')
    .option('--timeline', 'print the compact event timeline of the run')
    .option('--compare', 'run on every reference driver it applies to (or each --driver) and compare faults, retries, fault latency, invalidations and time')
    .option('--runs <n>', 'with --compare: schedules per driver (seeds seed, seed+1, ...)', positiveInt, 1)
    .option('--out <dir>', 'where to write the replay file on a failure (default: the current directory)')
    .option('--json', 'machine-readable output')
    .action(async (spec: string, opts: { driver: string[]; seed: number; strategy: string; timeline?: boolean; compare?: boolean; runs: number; out?: string; json?: boolean }) => {
      const { scenario, file } = await getScenario(spec);
      const { registry } = await catalogue();
      const named = await Promise.all(opts.driver.map(getDriver));
      for (const d of named) {
        const why = scenarioRejects(scenario, d);
        if (why !== null) throw new UsageError(why);
      }
      if (opts.compare === true) {
        if (opts.timeline === true) throw new UsageError('--timeline shows one run: it does not go with --compare');
        const ds = named.length > 0 ? named : applicable(scenario, registry.list('reference'));
        if (ds.length === 0) throw new UsageError(`no reference driver applies to scenario ${scenario.name}; pass --driver`);
        const c = await compareScenario(scenario, { drivers: ds, runs: opts.runs, seed: opts.seed, strategy: opts.strategy });
        const replays = new Map<string, string>();
        for (const row of c.rows) if (row.firstFailure !== null) replays.set(row.driver, writeReplay(opts.out ?? '.', row.firstFailure, file));
        if (opts.json === true) json({ ...c, rows: c.rows.map(({ firstFailure, ...row }) => ({ ...row, firstFailure: firstFailure === null ? null : firstFailure.summary, ...(replays.has(row.driver) ? { replay: replays.get(row.driver) } : {}) })) });
        else {
          println(renderComparison(c));
          for (const [driver, p] of replays) println(`${driver}: not coherent; reproduce with: ${replayCommand(p)}`);
        }
        throw new Exit(c.rows.every((r) => r.verdicts.coherent === r.runs) ? 0 : 1);
      }
      if (named.length > 1) throw new UsageError(`run takes one --driver (got ${named.map((d) => d.name).join(', ')}); use --compare to run several`);
      let driver: ScenarioDriver;
      if (named.length === 1) driver = named[0]!;
      else {
        const d = applicable(scenario, registry.list('reference'))[0];
        if (d === undefined) throw new UsageError(`no reference driver applies to scenario ${scenario.name}; pass --driver`);
        driver = d;
      }
      const r = await runScenario(scenario, { driver, seed: opts.seed, strategy: opts.strategy, timeline: opts.timeline === true });
      const replayPath = r.verdict === 'coherent' ? undefined : writeReplay(opts.out ?? '.', r, file);
      if (opts.json === true) json({ ...scenarioResultToJSON(r), ...(replayPath !== undefined ? { replay: replayPath, replayCommand: replayCommand(replayPath) } : {}) });
      else {
        if (r.timeline !== null) println(renderTimeline(r.timeline) + '\n');
        println(renderResult(r));
        if (replayPath !== undefined) {
          println(`replay file: ${replayPath}`);
          println(`reproduce with: ${replayCommand(replayPath)}`);
        }
      }
      throw new Exit(r.verdict === 'coherent' ? 0 : 1);
    });

  program
    .command('replay')
    .description('reproduce a run exactly from a replay file')
    .argument('<file>', 'a replay file written by run or check')
    .option('--timeline', 'print the compact event timeline of the run')
    .option('--json', 'machine-readable output')
    .action(async (fileArg: string, opts: { timeline?: boolean; json?: boolean }) => {
      const p = path.resolve(cwd, fileArg);
      let data: unknown;
      try {
        data = JSON.parse(readFileSync(p, 'utf8'));
      } catch (e) {
        throw new UsageError(`cannot read replay file ${p}: ${errText(e)}`);
      }
      const o = data as Partial<Record<keyof ReplayFile, unknown>>;
      if (
        data === null ||
        typeof data !== 'object' ||
        typeof o.scenario !== 'string' ||
        typeof o.driver !== 'string' ||
        typeof o.schedule !== 'string' ||
        (o.scenarioFile !== undefined && typeof o.scenarioFile !== 'string') ||
        (o.driverFile !== undefined && typeof o.driverFile !== 'string')
      ) {
        throw new UsageError(`malformed replay file ${p}: expected a JSON object with string fields scenario, driver and schedule (and optionally scenarioFile, driverFile)`);
      }
      const { scenario } = await getScenario(typeof o.scenarioFile === 'string' ? `${o.scenarioFile}#${o.scenario}` : o.scenario);
      const driver = await getDriver(typeof o.driverFile === 'string' ? `${o.driverFile}#${o.driver}` : o.driver);
      const why = scenarioRejects(scenario, driver);
      if (why !== null) throw new UsageError(`replay file ${p}: ${why}`);
      let r: ScenarioResult;
      try {
        r = await replayScenario(scenario, driver, o.schedule, { timeline: opts.timeline === true });
      } catch (e) {
        throw new UsageError(`replay file ${p}: bad schedule: ${errText(e)}`);
      }
      if (opts.json === true) json(scenarioResultToJSON(r));
      else {
        if (r.timeline !== null) println(renderTimeline(r.timeline) + '\n');
        println(renderResult(r));
      }
      throw new Exit(r.verdict === 'coherent' ? 0 : 1);
    });

  program
    .command('check')
    .description('every scenario on every reference driver it applies to (expect coherent), every buggy driver on the scenarios it declares (expect caught)')
    .argument('[scenarios...]', 'scenario names or files (default: every bundled scenario)')
    .option('--driver <names...>', 'only these drivers (registered names or driver files)')
    .option('--schedules <n>', 'schedules per strategy (random, then pct:3)', positiveInt, DEFAULT_CHECK_SCHEDULES)
    .option('--out <dir>', 'where to write replay files of unexpected failures (default: the current directory)')
    .option('--json', 'machine-readable output')
    .action(async (specs: string[], opts: { driver?: string[]; schedules: number; out?: string; json?: boolean }) => {
      const { scenarios: bundledScenarios, registry } = await catalogue();
      const targets: { scenario: Scenario; file?: string }[] = specs.length === 0 ? bundledScenarios.map((scenario) => ({ scenario })) : await Promise.all(specs.map(getScenario));
      const drivers = opts.driver === undefined ? registry.list() : await Promise.all(opts.driver.map(getDriver));
      const rows: CheckRow[] = [];
      for (const t of targets) {
        for (const d of drivers) {
          if (scenarioRejects(t.scenario, d) !== null) continue;
          let expect: CheckRow['expect'];
          if (d.kind === 'reference') expect = 'coherent';
          else if ((d.caughtBy ?? []).includes(t.scenario.name)) expect = 'caught';
          else continue;
          let row: CheckRow;
          try {
            const c = await checkScenario(t.scenario, { driver: d, runs: opts.schedules, expect });
            const f = c.firstFailure;
            let verdict: CheckRow['verdict'];
            if (f?.verdict === 'error') verdict = 'error';
            else if (expect === 'coherent') verdict = c.ok ? 'coherent' : 'false-positive';
            else verdict = c.ok ? 'caught' : 'missed';
            const bad = verdict !== (expect === 'coherent' ? 'coherent' : 'caught');
            const replay = f !== null && bad ? writeReplay(opts.out ?? '.', f, t.file) : undefined;
            row = { scenario: c.scenario, driver: c.driver, expect, verdict, schedules: c.runs, ...(replay !== undefined ? { replay } : {}), ...(bad ? { message: c.message } : {}) };
          } catch (e) {
            row = { scenario: t.scenario.name, driver: d.name, expect, verdict: 'error', schedules: 0, message: errText(e) };
          }
          rows.push(row);
        }
      }
      const okRow = (r: CheckRow): boolean => r.verdict === (r.expect === 'coherent' ? 'coherent' : 'caught');
      const ok = rows.every(okRow);
      if (opts.json === true) json(rows);
      else {
        const table = new Table({ style: COMPACT, head: ['scenario', 'driver', 'expect', 'verdict', 'schedules'] });
        for (const r of rows) table.push([r.scenario, r.driver, r.expect, okRow(r) ? r.verdict : `${r.verdict} (FAIL)`, String(r.schedules)]);
        println(table.toString());
        for (const r of rows.filter((x) => !okRow(x))) {
          println();
          println(r.message ?? `${r.scenario} on ${r.driver}: ${r.verdict}`);
          if (r.replay !== undefined) println(`reproduce with: ${replayCommand(r.replay)}`);
        }
        println(`${rows.filter(okRow).length}/${rows.length} as expected`);
      }
      throw new Exit(ok ? 0 : 1);
    });

  try {
    await program.parseAsync([...argv], { from: 'user' });
    return 0;
  } catch (e) {
    if (e instanceof Exit) return e.code;
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    if (e instanceof UsageError) {
      err(`hmm-emu: ${e.message}\n`);
      return 2;
    }
    err(`hmm-emu: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    return 2;
  }
}
