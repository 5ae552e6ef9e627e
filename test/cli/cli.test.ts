import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { type CliIo, runCli } from '../../src/cli/cli.js';
import { bundledFrom } from '../../src/cli/load.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const fixture = (f: string): string => path.join(here, 'fixtures', f);

/** runCli with the catalogue loaded from the source files and captured output. */
async function cli(argv: string[], cwd = mkdtempSync(path.join(tmpdir(), 'hmm-emu-cli-'))): Promise<{ code: number; out: string; err: string; cwd: string }> {
  let out = '';
  let err = '';
  const io: CliIo = {
    stdout: (s) => (out += s),
    stderr: (s) => (err += s),
    cwd,
    loadBundled: async () => bundledFrom(await import('../../scenarios/index.js'), await import('../../drivers/index.js')),
    importModule: (p) => import(p) as Promise<Record<string, unknown>>,
  };
  const code = await runCli(argv, io);
  return { code, out, err, cwd };
}

describe('hmm-emu list', () => {
  it('lists scenarios with the drivers they apply to, and drivers with API and kind', async () => {
    const r = await cli(['list', '--json']);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out) as { scenarios: { name: string; tags: string[]; description: string; drivers: string[] }[]; drivers: { name: string; api: string; kind: string }[] };
    expect(j.scenarios.map((s) => s.name)).toContain('device-fault-vs-munmap');
    // The 2015 scenario applies to the 2015 reference driver and its buggy variant, never to dmirror.
    expect(j.scenarios.find((s) => s.name === 'hmm2015-fault-vs-munmap')!.drivers).toEqual(['hmm2015', 'hmm2015-no-fault-start']);
    expect(j.drivers.find((d) => d.name === 'dmirror')).toMatchObject({ api: 'modern', kind: 'reference' });
    // The broken drivers a scenario must catch (what `check` expects of them).
    expect((j.scenarios.find((s) => s.name === 'device-fault-vs-munmap') as unknown as { catches: string[] }).catches).toEqual(['dmirror-no-tlb-flush']);
    expect((j.scenarios.find((s) => s.name === 'anon-read') as unknown as { catches: string[] }).catches).toEqual([]);
    expect(j.drivers.find((d) => d.name === 'hmm2015-no-fault-start')).toMatchObject({ api: '2015', kind: 'buggy' });
    const text = await cli(['list']);
    expect(text.code).toBe(0);
    expect(text.out).toContain('device-write-vs-mprotect');
  });
});

describe('hmm-emu run and replay', () => {
  it('a failing run writes a replay file; replay reproduces the same failure exactly', async () => {
    const r = await cli(['run', fixture('lost-update.ts'), '--driver', 'dmirror', '--seed', '0', '--json']);
    expect(r.code).toBe(1);
    const j = JSON.parse(r.out) as { verdict: string; summary: string; schedule: string; replay: string; replayCommand: string; steps: number };
    expect(j.verdict).toBe('failed');
    expect(j.replayCommand).toMatch(/^hmm-emu replay /);
    const file = JSON.parse(readFileSync(j.replay, 'utf8')) as { scenario: string; driver: string; schedule: string };
    expect(file).toMatchObject({ scenario: 'lost-update', driver: 'dmirror', schedule: j.schedule });
    expect(readdirSync(r.cwd)).toEqual([path.basename(j.replay)]);
    const again = await cli(['replay', path.basename(j.replay), '--json'], r.cwd);
    expect(again.code).toBe(1);
    const k = JSON.parse(again.out) as typeof j;
    expect([k.verdict, k.summary, k.schedule, k.steps]).toEqual([j.verdict, j.summary, j.schedule, j.steps]);
    const text = await cli(['replay', j.replay]);
    expect(text.out).toContain('counter after two increments: expected 2, got 1');
  });

  it('a coherent run exits 0 and writes nothing', async () => {
    const r = await cli(['run', 'device-write-vs-mprotect', '--driver', 'dmirror', '--seed', '3', '--strategy', 'pct:2']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('device-write-vs-mprotect on dmirror: coherent');
    expect(r.out).toContain('stats:');
    expect(readdirSync(r.cwd)).toEqual([]);
  });

  it('bad input exits 2 naming what was wrong', async () => {
    const cases: [string[], RegExp][] = [
      [['run', 'no-such-scenario'], /unknown scenario "no-such-scenario"/],
      [['run', 'device-write-vs-mprotect', '--driver', 'nope'], /unknown driver "nope"/],
      [['run', 'device-write-vs-mprotect', '--seed', '-1'], /bad seed/],
      [['run', 'device-write-vs-mprotect', '--seed', 'x'], /bad seed/],
      [['run', 'device-write-vs-mprotect', '--strategy', 'lifo'], /bad strategy/],
      [['run', 'hmm2015-fault-vs-munmap', '--driver', 'dmirror'], /does not apply to driver dmirror/],
      [['run', fixture('malformed.ts')], /malformed\.ts failed to load/],
      [['run', fixture('no-scenario.ts')], /no-scenario\.ts is malformed: it exports no scenario/],
      [['run', fixture('missing.ts')], /missing\.ts does not exist/],
      [['replay', 'missing.json'], /cannot read replay file .*missing\.json/],
      [['check', '--driver', 'nope'], /unknown driver "nope"/],
      [['nonsense'], /unknown command/],
    ];
    for (const [argv, msg] of cases) {
      const r = await cli(argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err, argv.join(' ')).toMatch(msg);
    }
    const dir = mkdtempSync(path.join(tmpdir(), 'hmm-emu-cli-'));
    writeFileSync(path.join(dir, 'bad.json'), '{"scenario": 1}');
    writeFileSync(path.join(dir, 'notjson.json'), 'not json');
    writeFileSync(path.join(dir, 'badsched.json'), JSON.stringify({ scenario: 'device-write-vs-mprotect', driver: 'dmirror', schedule: 'garbage' }));
    expect(await cli(['replay', 'bad.json'], dir)).toMatchObject({ code: 2, err: expect.stringMatching(/malformed replay file .*bad\.json/) });
    expect(await cli(['replay', 'notjson.json'], dir)).toMatchObject({ code: 2, err: expect.stringMatching(/cannot read replay file .*notjson\.json/) });
    expect(await cli(['replay', 'badsched.json'], dir)).toMatchObject({ code: 2, err: expect.stringMatching(/badsched\.json: bad schedule/) });
  });
});

describe('hmm-emu run --timeline, --compare and hmm-tests names', () => {
  it('--timeline prints the event timeline before the verdict; replay --timeline prints the same timeline', async () => {
    const r = await cli(['run', fixture('lost-update.ts'), '--driver', 'dmirror', '--timeline']);
    expect(r.code).toBe(1);
    const [timeline, rest] = r.out.split('\n\n', 2) as [string, string];
    expect(timeline).toMatch(/^\s+0ns {2}-\s+task\.spawn\s+name=scenario$/m);
    expect(timeline).toMatch(/notifier\.register\s+mm=1 sub=gpu0\.dmirror0 kind=interval/);
    expect(rest).toContain('lost-update on dmirror: failed');
    const file = readdirSync(r.cwd)[0]!;
    const again = await cli(['replay', file, '--timeline'], r.cwd);
    expect(again.code).toBe(1);
    expect(again.out.split('\n\n', 1)[0]).toBe(timeline);
    const j = await cli(['run', 'device-write-vs-mprotect', '--driver', 'dmirror', '--timeline', '--json']);
    const tl = (JSON.parse(j.out) as { timeline: { entries: { type: string }[]; dropped: number } }).timeline;
    expect(tl.dropped).toBe(0);
    expect(tl.entries.map((e) => e.type)).toContain('mm.syscall');
  });

  it('--compare runs every applicable reference driver (or each --driver) on the same seeds and tabulates retries and fault latency', async () => {
    const r = await cli(['run', 'device-write-vs-mprotect', '--compare', '--runs', '3', '--json']);
    expect(r.code, r.err).toBe(0);
    const c = JSON.parse(r.out) as { scenario: string; runs: number; rows: { driver: string; runs: number; verdicts: { coherent: number }; totals: { retries: number; faultLatency: { count: number } }; firstFailure: string | null }[] };
    // Every reference driver: the scenario applies to any driver.
    expect(c.rows.map((x) => [x.driver, x.runs, x.verdicts.coherent, x.firstFailure])).toEqual([
      ['dmirror', 3, 3, null],
      ['hmm2015', 3, 3, null],
      ['mockgpu', 3, 3, null],
    ]);
    for (const x of c.rows) expect(x.totals.faultLatency.count).toBeGreaterThan(0);
    const t = await cli(['run', 'device-write-vs-mprotect', '--compare', '--driver', 'mockgpu', '--driver', 'dmirror']);
    expect(t.code).toBe(0);
    expect(t.out).toMatch(/device-write-vs-mprotect: seed 0, strategy random/);
    expect(t.out).toMatch(/│ mockgpu │ modern │ 1\/1 +│/);
    expect(t.out).toContain('fault latency mean');
    expect(t.out.indexOf('mockgpu')).toBeLessThan(t.out.indexOf('dmirror'));
    // A failing driver: exit 1, a replay file per failing driver.
    const f = await cli(['run', fixture('lost-update.ts'), '--compare', '--driver', 'dmirror']);
    expect(f.code).toBe(1);
    expect(f.out).toMatch(/dmirror: not coherent; reproduce with: hmm-emu replay /);
    expect(readdirSync(f.cwd)).toHaveLength(1);
  });

  it('refuses two drivers without --compare, and --timeline with --compare', async () => {
    expect(await cli(['run', 'device-write-vs-mprotect', '--driver', 'dmirror', '--driver', 'mockgpu'])).toMatchObject({ code: 2, err: expect.stringMatching(/run takes one --driver \(got dmirror, mockgpu\); use --compare/) });
    expect(await cli(['run', 'device-write-vs-mprotect', '--compare', '--timeline'])).toMatchObject({ code: 2, err: expect.stringMatching(/--timeline shows one run/) });
    expect(await cli(['run', 'device-write-vs-mprotect', '--compare', '--runs', '0'])).toMatchObject({ code: 2 });
  });

  it('accepts the hmm-tests spelling of a scenario name (underscores), and list shows each scenario\'s origin', async () => {
    const r = await cli(['run', 'device_write_vs_mprotect', '--driver', 'dmirror']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('device-write-vs-mprotect on dmirror: coherent');
    const l = JSON.parse((await cli(['list', '--json'])).out) as { scenarios: { name: string; origin: string }[] };
    expect(l.scenarios.every((s) => typeof s.origin === 'string')).toBe(true);
  });
});

describe('driver files', () => {
  it('run, check and replay take a driver file (path#name) the way they take a scenario file', async () => {
    const ok = await cli(['check', 'device-fault-vs-munmap', '--driver', `${fixture('mini-drivers.ts')}#mini-correct`, `${fixture('mini-drivers.ts')}#mini-skip-zap`, '--schedules', '20', '--json']);
    expect(ok.code, ok.err).toBe(0);
    expect((JSON.parse(ok.out) as { driver: string; expect: string; verdict: string }[]).map((r) => [r.driver, r.expect, r.verdict])).toEqual([
      ['mini-correct', 'coherent', 'coherent'],
      ['mini-skip-zap', 'caught', 'caught'],
    ]);
    const r = await cli(['run', 'device-fault-vs-munmap', '--driver', `${fixture('mini-drivers.ts')}#mini-skip-zap`, '--seed', '0', '--strategy', 'pct:3', '--json']);
    expect(r.code).toBe(1);
    const j = JSON.parse(r.out) as { verdict: string; reportText: string; replay: string };
    expect(j.verdict).toBe('violation');
    const file = JSON.parse(readFileSync(j.replay, 'utf8')) as { driver: string; driverFile: string };
    expect(file).toMatchObject({ driver: 'mini-skip-zap', driverFile: fixture('mini-drivers.ts') });
    const again = await cli(['replay', j.replay, '--json'], r.cwd);
    expect(again.code).toBe(1);
    expect((JSON.parse(again.out) as { reportText: string }).reportText).toBe(j.reportText);
  });

  it('a driver file that is missing, exports several drivers unpicked, or a malformed one is bad input (exit 2)', async () => {
    expect(await cli(['run', 'device-fault-vs-munmap', '--driver', fixture('missing-driver.ts')])).toMatchObject({ code: 2, err: expect.stringMatching(/driver file .*missing-driver\.ts does not exist/) });
    expect(await cli(['run', 'device-fault-vs-munmap', '--driver', fixture('mini-drivers.ts')])).toMatchObject({ code: 2, err: expect.stringMatching(/exports 2 drivers \(mini-correct, mini-skip-zap\): pick one/) });
    expect(await cli(['run', 'device-fault-vs-munmap', '--driver', fixture('bad-driver.ts')])).toMatchObject({ code: 2, err: expect.stringMatching(/bad-driver\.ts is malformed: .*api must be '2015' or 'modern': "2030"/) });
    expect(await cli(['run', 'device-fault-vs-munmap', '--driver', fixture('lost-update.ts')])).toMatchObject({ code: 2, err: expect.stringMatching(/lost-update\.ts is malformed: it exports no driver/) });
  });
});

describe('hmm-emu check', () => {
  it('reports each pair with its expectation; a violating scenario fails the check with a replay file', async () => {
    const r = await cli(['check', 'device-write-vs-mprotect', fixture('lost-update.ts'), '--driver', 'dmirror', '--schedules', '3', '--json']);
    expect(r.code).toBe(1);
    const rows = JSON.parse(r.out) as { scenario: string; driver: string; expect: string; verdict: string; schedules: number; replay?: string }[];
    expect(rows.map((x) => [x.scenario, x.driver, x.expect, x.verdict])).toEqual([
      ['device-write-vs-mprotect', 'dmirror', 'coherent', 'coherent'],
      ['lost-update', 'dmirror', 'coherent', 'false-positive'],
    ]);
    expect(rows[0]!.schedules).toBe(6);
    expect(rows[0]!.replay).toBeUndefined();
    const again = await cli(['replay', rows[1]!.replay!], r.cwd);
    expect(again.code).toBe(1);
    expect(again.out).toContain('lost-update on dmirror: failed');
  });

  it('exits 0 when every pair meets its expectation, and prints a table', async () => {
    const r = await cli(['check', 'device-write-vs-mprotect', '--schedules', '2']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/device-write-vs-mprotect .* dmirror .* coherent/);
    expect(r.out).toContain('as expected');
  });
});

describe('the built binary', () => {
  // dist/ is built by `prepare` (npm install / npm ci); build here only if it is missing.
  it('list --json loads the catalogue from dist at run time', () => {
    if (!existsSync(path.join(root, 'dist/scenarios/index.js'))) execFileSync('npm', ['run', 'build'], { cwd: root, stdio: 'pipe' });
    const out = execFileSync(process.execPath, [path.join(root, 'dist/src/cli/main.js'), 'list', '--json'], { encoding: 'utf8' });
    const j = JSON.parse(out) as { scenarios: { name: string }[]; drivers: { name: string }[] };
    expect(j.scenarios.length).toBeGreaterThan(0);
    expect(j.drivers.map((d) => d.name)).toContain('dmirror');
  });

  it('exit codes, JSON shapes, bad input and an exact replay, through the binary itself', () => {
    const bin = path.join(root, 'dist/src/cli/main.js');
    const dir = mkdtempSync(path.join(tmpdir(), 'hmm-emu-bin-'));
    const run = (...args: string[]) => {
      const r = spawnSync(process.execPath, [bin, ...args], { cwd: dir, encoding: 'utf8' });
      return { code: r.status, out: r.stdout, err: r.stderr };
    };
    // Bad input: exit 2 and a message naming what was wrong.
    expect(run('run', 'no-such-scenario')).toMatchObject({ code: 2, err: expect.stringMatching(/unknown scenario "no-such-scenario"/) });
    expect(run('run', 'anon-read', '--driver', 'nope')).toMatchObject({ code: 2, err: expect.stringMatching(/unknown driver "nope"/) });
    expect(run('run', 'anon-read', '--seed', '-3')).toMatchObject({ code: 2, err: expect.stringMatching(/bad seed/) });
    expect(run('run', fixture('malformed.ts'))).toMatchObject({ code: 2, err: expect.stringMatching(/malformed\.ts failed to load/) });
    // A coherent run: exit 0, the JSON result's shape.
    const ok = run('run', 'anon_read', '--driver', 'hmm2015', '--seed', '2', '--json');
    expect(ok.code).toBe(0);
    const j = JSON.parse(ok.out) as Record<string, unknown>;
    expect(j).toMatchObject({ scenario: 'anon-read', driver: 'hmm2015', verdict: 'coherent', seed: 2, strategy: 'random', report: null });
    expect(Object.keys(j.stats as object)).toEqual(expect.arrayContaining(['cpuFaults', 'deviceFaults', 'retries', 'invalidations', 'tlbHitRate', 'faultLatency', 'time']));
    // A violation: exit 1, a replay file; the replay gives the same report, exit 1.
    const bad = run('run', 'device-fault-vs-munmap', '--driver', 'dmirror-no-tlb-flush', '--json');
    expect(bad.code).toBe(1);
    const b = JSON.parse(bad.out) as { verdict: string; reportText: string; replay: string; replayCommand: string };
    expect(b.verdict).toBe('violation');
    expect(b.replayCommand).toMatch(/^hmm-emu replay /);
    const again = run('replay', path.basename(b.replay), '--json');
    expect(again.code).toBe(1);
    expect((JSON.parse(again.out) as { reportText: string }).reportText).toBe(b.reportText);
    // check --json: the row shape of the issue.
    const c = run('check', 'anon-read', '--driver', 'dmirror', '--schedules', '2', '--json');
    expect(c.code).toBe(0);
    expect(JSON.parse(c.out)).toEqual([{ scenario: 'anon-read', driver: 'dmirror', expect: 'coherent', verdict: 'coherent', schedules: 4 }]);
  });

  it('runs a .ts scenario file through tsx and exits 1 on its failure', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'hmm-emu-cli-'));
    let code = 0;
    try {
      execFileSync(process.execPath, [path.join(root, 'dist/src/cli/main.js'), 'run', fixture('lost-update.ts'), '--seed', '0'], { cwd: dir, encoding: 'utf8', stdio: 'pipe' });
    } catch (e) {
      code = (e as { status: number }).status;
    }
    expect(code).toBe(1);
    expect(readdirSync(dir)).toHaveLength(1);
  });
});
