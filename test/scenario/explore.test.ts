/** exploreScenario and checkScenario: counting, stopping, totals and expectations. */
import { describe, expect, it } from 'vitest';
import { checkScenario, exploreScenario } from 'hmm-emu/testing';
import { drivers } from '../../drivers/index.js';
import { deviceFaultVsMunmap, deviceWriteVsMprotect } from '../../scenarios/index.js';
import { miniDriver } from './mini-driver.js';

describe('exploreScenario', () => {
  it('runs the schedules asked for, one seed each, and sums their statistics', async () => {
    const seen: number[] = [];
    const e = await exploreScenario(deviceWriteVsMprotect, { driver: drivers.get('hmm2015'), runs: 20, seed: 5, onRun: (r) => seen.push(r.run.seed) });
    expect(e.runs).toBe(20);
    expect(e.verdicts).toEqual({ coherent: 20, violation: 0, failed: 0, error: 0 });
    expect(e.firstFailure).toBeNull();
    expect(seen).toEqual(Array.from({ length: 20 }, (_, i) => 5 + i));
    expect(e.totals.deviceAccesses).toBeGreaterThan(20);
    expect(e.totals.oracle!.deviceAccesses).toBe(e.totals.deviceAccesses);
    expect(e.longestRun).toBeGreaterThan(0);
  });

  it('stops at the first failing schedule, which replays from its own seed', async () => {
    const e = await exploreScenario(deviceFaultVsMunmap, { driver: miniDriver('no-retry'), runs: 300, strategy: 'random', seed: 1 });
    expect(e.firstFailure?.verdict).toBe('violation');
    expect(e.runs).toBe(e.firstFailureAt);
    expect(e.firstFailure!.run.seed).toBe(e.firstFailureAt!);
  });

  it('goes on past failures when asked, keeping at most keepFailures of them', async () => {
    const e = await exploreScenario(deviceFaultVsMunmap, { driver: miniDriver('skip-zap'), runs: 12, stopOnFailure: false, keepFailures: 3 });
    expect(e.runs).toBe(12);
    expect(e.verdicts.violation).toBeGreaterThan(3);
    expect(e.failures).toHaveLength(3);
    expect(e.firstFailureAt).toBe(1);
  });

  it('refuses a bad run count', async () => {
    await expect(exploreScenario(deviceFaultVsMunmap, { driver: drivers.get('dmirror'), runs: 0 })).rejects.toThrow(/runs must be a positive integer: 0/);
  });
});

describe('checkScenario', () => {
  it('expects a reference driver coherent and a buggy one caught by default', async () => {
    const good = await checkScenario(deviceFaultVsMunmap, { driver: miniDriver('correct'), runs: 30 });
    expect(good.expected).toBe('coherent');
    expect(good.ok).toBe(true);
    expect(good.runs).toBe(60);
    expect(good.explorations.map((x) => x.strategy)).toEqual(['random', 'pct:3']);
    const bad = await checkScenario(deviceFaultVsMunmap, { driver: miniDriver('no-tlb'), runs: 30 });
    expect(bad.expected).toBe('caught');
    expect(bad.ok).toBe(true);
    expect(bad.explorations).toHaveLength(1);
    expect(bad.message).toContain('caught (violation: ');
  });

  it('fails a coherent expectation with the rendered report as its message', async () => {
    const c = await checkScenario(deviceFaultVsMunmap, { driver: miniDriver('skip-zap'), runs: 10, expect: 'coherent' });
    expect(c.ok).toBe(false);
    expect(c.message).toContain('expected coherent');
    expect(c.message).toContain('coherency violation: invalidation discipline (invalidation/entry-after-callback)');
    expect(c.message).toContain(`schedule ${c.firstFailure!.schedule}`);
  });

  it('fails a caught expectation when every schedule is coherent', async () => {
    const c = await checkScenario(deviceFaultVsMunmap, { driver: miniDriver('correct'), runs: 5, expect: 'caught' });
    expect(c.ok).toBe(false);
    expect(c.message).toContain('all 10 schedules (5 random + 5 pct:3) were coherent');
  });
});
