/** The runner: verdicts, statistics, determinism, replay, teardown and bad input. */
import { describe, expect, it } from 'vitest';
import { EINVAL, KernelError, cpuRead64, cpuWrite64 } from 'hmm-emu';
import { DriverRegistry, defineScenario, deviceTask, exploreScenario, normalizeMmIds, replayScenario, runScenario } from 'hmm-emu/testing';
import { drivers } from '../../drivers/index.js';
import { deviceFaultVsMunmap, forkWhileMirrored } from '../../scenarios/index.js';
import { miniDriver } from './mini-driver.js';

const dmirror = drivers.get('dmirror');
const BUF = 0x10_0000_0000;

/** A tiny scenario around `body` (one CPU task) on any driver. */
function tiny(name: string, body: Parameters<typeof defineScenario>[0]['tasks'][string]) {
  return defineScenario({ name, description: 'a test scenario', drivers: 'any', world: { frames: 64, devices: [{ name: 'gpu0', memoryFrames: 0 }] }, tasks: { body } });
}

describe('verdicts', () => {
  it('a reference driver on a race scenario is coherent, with statistics of the run', async () => {
    const r = await runScenario(deviceFaultVsMunmap, { driver: dmirror, seed: 7, strategy: 'random' });
    expect(r.verdict, r.summary).toBe('coherent');
    expect(r.report).toBeNull();
    expect(r.failure).toBeNull();
    expect(r.stats.deviceAccesses).toBeGreaterThan(0);
    expect(r.stats.deviceFaults).toBeGreaterThan(0);
    expect(r.stats.cpuFaults).toBeGreaterThan(0);
    expect(r.stats.invalidations).toBeGreaterThan(0);
    expect(r.stats.tlbHitRate).not.toBeNull();
    expect(r.stats.time).toBe(r.run.time);
    expect(r.stats.oracle!.deviceAccesses).toBe(r.stats.deviceAccesses);
    expect(r.stats.driver['invalidations']).toBeGreaterThan(0);
    expect(r.schedule).toMatch(/^hmm1;random;7;/);
  });

  it('a driver whose invalidate skips the zap gets verdict violation with the oracle report', async () => {
    const r = await runScenario(deviceFaultVsMunmap, { driver: miniDriver('skip-zap'), seed: 1, strategy: 'random' });
    expect(r.verdict).toBe('violation');
    expect(r.report!.code).toBe('invalidation/entry-after-callback');
    expect(r.reportText).toContain('coherency violation: invalidation discipline');
    expect(r.reportText).toContain(`schedule ${r.schedule}`);
    expect(r.summary).toMatch(/^violation: /);
  });

  it('a failed expectation gets verdict failed with its message', async () => {
    const s = tiny('expects', async (ctx) => {
      const a = await ctx.mmap(1);
      await cpuWrite64(ctx.mm, a, 5n);
      ctx.expectEqual(await cpuRead64(ctx.mm, a), 6n, 'the word');
    });
    const r = await runScenario(s, { driver: dmirror });
    expect(r.verdict).toBe('failed');
    expect(r.summary).toContain('the word: expected 0x6, got 0x5');
    expect(r.report).toBeNull();
  });

  it('a crash in scenario code gets verdict error', async () => {
    const r = await runScenario(
      tiny('crashes', async () => {
        throw new Error('boom');
      }),
      { driver: dmirror },
    );
    expect(r.verdict).toBe('error');
    expect(r.summary).toContain('boom');
  });

  it('a device task killed by a fault fails the scenario unless it is killable', async () => {
    const mk = (killable: boolean) =>
      defineScenario({
        name: `kill-${killable}`,
        description: 'the device touches unmapped memory',
        drivers: 'any',
        tasks: { gpu: deviceTask({ killable, kernel: async (_ctx, w) => void (await w.load(BUF, 8)) }) },
      });
    const hard = await runScenario(mk(false), { driver: dmirror });
    expect(hard.verdict).toBe('failed');
    expect(hard.summary).toContain('device task gpu was killed');
    const soft = await runScenario(mk(true), { driver: dmirror });
    expect(soft.verdict).toBe('coherent');
    expect(soft.log.some((l) => l.task === 'gpu' && l.message.startsWith('device task gpu killed'))).toBe(true);
  });

  it('a driver whose unbind leaves its worker blocked is caught by the teardown audit', async () => {
    const base = miniDriver('correct');
    const leaky = {
      ...base,
      name: 'mini-leaky',
      async bind(req: Parameters<typeof base.bind>[0]) {
        const b = await base.bind(req);
        return { ...b, unbind: async () => {} };
      },
    };
    const r = await runScenario(tiny('idle', async () => {}), { driver: leaky });
    expect(r.verdict).toBe('violation');
    expect(r.report!.rule).toBe('teardown');
  });

  it('runs without the oracle when asked (benchmarks): no oracle statistics, same verdict', async () => {
    const r = await runScenario(deviceFaultVsMunmap, { driver: dmirror, seed: 7, oracle: false });
    expect(r.verdict).toBe('coherent');
    expect(r.stats.oracle).toBeNull();
  });
});

describe('determinism and replay', () => {
  it('the same seed and strategy give the same schedule and statistics', async () => {
    for (const strategy of ['random', 'pct:3']) {
      const a = await runScenario(forkWhileMirrored, { driver: dmirror, seed: 11, strategy });
      const b = await runScenario(forkWhileMirrored, { driver: dmirror, seed: 11, strategy });
      expect(b.schedule).toBe(a.schedule);
      expect(b.stats).toEqual(a.stats);
    }
  });

  it('replayScenario reproduces the identical report from the schedule string', async () => {
    const found = await exploreScenario(deviceFaultVsMunmap, { driver: miniDriver('no-retry'), runs: 500, strategy: 'random' });
    const r = found.firstFailure!;
    expect(r.verdict).toBe('violation');
    const again = await replayScenario(deviceFaultVsMunmap, miniDriver('no-retry'), r.schedule);
    expect(again.verdict).toBe('violation');
    expect(again.reportText).toBe(r.reportText);
    // The raw rendering names mms by process-wide ids, which differ between the two runs.
    expect(again.report!.mm).not.toBe(r.report!.mm);
    expect(again.report!.toJSON()['schedule']).toBe(r.schedule);
    expect(again.stats).toEqual(r.stats);
  });

  it('normalizeMmIds renumbers mm ids in creation order and leaves other numbers alone', () => {
    const ids = new Map([
      [41, 1],
      [43, 2],
    ]);
    const text = ['  mm: proc (#41)', '    #3 t=5 mm.fork parent=41 child=43', '    #4 t=6 mm.pte mm=43 addr=0x1000 pfn=41'].join('\n');
    expect(normalizeMmIds(text, ids)).toBe(['  mm: proc (#1)', '    #3 t=5 mm.fork parent=1 child=2', '    #4 t=6 mm.pte mm=2 addr=0x1000 pfn=41'].join('\n'));
  });
});

describe('bad input', () => {
  it('a scenario that does not apply to the driver is refused with the reason', async () => {
    const p = runScenario(deviceFaultVsMunmap, { driver: drivers.get('hmm2015') });
    await expect(p).rejects.toThrow(KernelError);
    await expect(p).rejects.toThrow(/does not apply to driver hmm2015: it needs the modern API/);
  });

  it('a driver named without a registry is refused; with one it is looked up', async () => {
    await expect(runScenario(deviceFaultVsMunmap, { driver: 'dmirror' })).rejects.toThrow(/no registry/);
    await expect(runScenario(deviceFaultVsMunmap, { driver: 'nope', registry: drivers })).rejects.toThrow(/no driver named "nope"/);
    const r = await runScenario(deviceFaultVsMunmap, { driver: 'dmirror', registry: drivers, seed: 2 });
    expect(r.driver).toBe('dmirror');
  });

  it('a malformed driver adapter is refused naming the field', async () => {
    const bad = { ...dmirror, api: 'future' } as unknown as typeof dmirror;
    const err = await runScenario(deviceFaultVsMunmap, { driver: bad }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KernelError);
    expect((err as KernelError).errno).toBe(EINVAL);
    expect((err as KernelError).message).toContain("api must be '2015' or 'modern'");
    expect(() => new DriverRegistry([dmirror, dmirror])).toThrow(/already registered/);
  });

  it('a bind that returns a device of the wrong name fails the run with a message naming it', async () => {
    const wrong = { ...dmirror, name: 'renamed', bind: (req: Parameters<typeof dmirror.bind>[0]) => dmirror.bind({ ...req, name: 'other' }) };
    const r = await runScenario(tiny('bind', async () => {}), { driver: wrong });
    expect(r.verdict).toBe('error');
    expect(r.summary).toContain('a device named "other"; the world asked for "gpu0"');
  });

  it('racePoint refuses an empty until list (it would never wait) and a bad max', async () => {
    const r1 = await runScenario(tiny('race-empty', async (ctx) => ctx.racePoint({ counter: 'x', max: 3, until: [] })), { driver: dmirror });
    expect(r1.summary).toContain('ctx.racePoint: until must be a non-empty array of the task names whose end releases the wait: []');
    const r2 = await runScenario(tiny('race-max', async (ctx) => ctx.racePoint({ counter: 'x', max: -1, until: ['body'] })), { driver: dmirror });
    expect(r2.summary).toContain('ctx.racePoint: max must be an integer >= 0: -1');
  });

  it('the context refuses unknown devices and commands the driver lacks', async () => {
    const r1 = await runScenario(tiny('nodev', async (ctx) => void ctx.device('gpu9')), { driver: dmirror });
    expect(r1.summary).toContain('no device named "gpu9"');
    const r2 = await runScenario(tiny('nocmd', async (ctx) => void (await ctx.device().migrateToDevice(BUF, 1))), { driver: drivers.get('hmm2015') });
    expect(r2.summary).toContain('has no migrateToDevice command');
  });
});
