/**
 * hmm-emu/testing: what a test needs to check a driver with scenarios. Build a world, run a
 * scenario under a seed and a strategy, explore N schedules, replay one; and assertions that
 * throw ScenarioAssertionError whose message is the rendered result (the violation report, the
 * failed expectation or the error, with the schedule that replays it), so that any test runner
 * (vitest, node:test) prints it as the failure.
 *
 *     import { expectCoherent, expectCaught } from 'hmm-emu/testing';
 *     import { drivers } from '../../drivers/index.js';
 *     import { deviceFaultVsMunmap } from '../../scenarios/device-fault-vs-munmap.js';
 *
 *     it('dmirror survives device faults racing munmap', async () => {
 *       await expectCoherent(deviceFaultVsMunmap, { driver: drivers.get('dmirror'), runs: 200 });
 *     });
 */
import { type CheckScenarioOptions, type ScenarioCheckResult, checkScenario } from './explore.js';
import type { Scenario } from './define.js';
import { type ScenarioResult, type Verdict, renderResult } from './runner.js';

// Everything of the scenario API, so a test needs one import.
export * from './index.js';

/** A failed scenario assertion: the message is the rendered result. */
export class ScenarioAssertionError extends Error {
  override readonly name = 'ScenarioAssertionError';
  constructor(
    message: string,
    /** The run that failed the assertion (null if none ran, e.g. nothing was caught). */
    readonly result: ScenarioResult | null,
    /** The check behind it, if any. */
    readonly check: ScenarioCheckResult | null = null,
  ) {
    super(message);
  }
}

/**
 * Asserts that every schedule is coherent: `opts.runs` schedules per strategy (default random
 * then pct:3). Throws ScenarioAssertionError with the rendered violation report otherwise.
 */
export async function expectCoherent(scenario: Scenario, opts: Omit<CheckScenarioOptions, 'expect'>): Promise<ScenarioCheckResult> {
  const c = await checkScenario(scenario, { ...opts, expect: 'coherent' });
  if (!c.ok) throw new ScenarioAssertionError(c.message, c.firstFailure, c);
  return c;
}

/**
 * Asserts that some schedule catches the driver (verdict 'violation' or 'failed', or those in
 * `opts.caughtBy`); returns the catching run. Throws ScenarioAssertionError otherwise.
 */
export async function expectCaught(scenario: Scenario, opts: Omit<CheckScenarioOptions, 'expect'>): Promise<ScenarioResult> {
  const c = await checkScenario(scenario, { ...opts, expect: 'caught' });
  if (!c.ok) throw new ScenarioAssertionError(c.message, c.firstFailure, c);
  return c.firstFailure!;
}

/**
 * Asserts a run's verdict (and, for a violation, its report code `rule/check` when given).
 * Throws ScenarioAssertionError with the rendered result otherwise.
 */
export function expectVerdict(result: ScenarioResult, verdict: Verdict, code?: string): void {
  if (result.verdict !== verdict) throw new ScenarioAssertionError(`expected verdict ${verdict}, got ${result.verdict}:\n${renderResult(result)}`, result);
  if (code !== undefined && result.report?.code !== code) throw new ScenarioAssertionError(`expected a ${code} report, got ${result.report?.code ?? 'none'}:\n${renderResult(result)}`, result);
}
