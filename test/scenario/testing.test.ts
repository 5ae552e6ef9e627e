/** hmm-emu/testing's assertions: their failure message is the rendered violation report. */
import { describe, expect, it } from 'vitest';
import { ScenarioAssertionError, expectCaught, expectCoherent, expectVerdict, runScenario } from 'hmm-emu/testing';
import { drivers } from '../../drivers/index.js';
import { deviceFaultVsMunmap } from '../../scenarios/index.js';
import { miniDriver } from './mini-driver.js';

describe('assertions', () => {
  it('expectCoherent passes for a reference driver and returns the check', async () => {
    const c = await expectCoherent(deviceFaultVsMunmap, { driver: drivers.get('dmirror'), runs: 20 });
    expect(c.runs).toBe(40);
  });

  it('expectCoherent throws ScenarioAssertionError whose message is the violation report', async () => {
    const err = await expectCoherent(deviceFaultVsMunmap, { driver: miniDriver('skip-zap'), runs: 10 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ScenarioAssertionError);
    const e = err as ScenarioAssertionError;
    expect(e.message).toContain(e.result!.reportText!);
    expect(e.message).toContain('last events touching the page:');
    expect(e.check!.ok).toBe(false);
  });

  it('expectCaught returns the catching run, and throws when nothing is caught', async () => {
    const r = await expectCaught(deviceFaultVsMunmap, { driver: miniDriver('no-retry'), runs: 200 });
    expect(r.verdict).toBe('violation');
    await expect(expectCaught(deviceFaultVsMunmap, { driver: miniDriver('correct'), runs: 3 })).rejects.toThrow(ScenarioAssertionError);
  });

  it('expectVerdict checks the verdict and the report code', async () => {
    const r = await runScenario(deviceFaultVsMunmap, { driver: miniDriver('skip-zap'), seed: 1 });
    expectVerdict(r, 'violation', 'invalidation/entry-after-callback');
    expect(() => expectVerdict(r, 'coherent')).toThrow(/expected verdict coherent, got violation:\n.*\ncoherency violation/);
    expect(() => expectVerdict(r, 'violation', 'translation/frame-mismatch')).toThrow(/expected a translation\/frame-mismatch report, got invalidation\/entry-after-callback/);
  });
});
