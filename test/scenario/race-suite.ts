/**
 * The coherence campaign for reference drivers (races-cpu-ops, races-special, races-later, and
 * with fewer schedules the hmm-tests ports): each scenario with each reference driver it applies
 * to, over `runs` random and `runs` pct:3 schedules, must stay coherent. A known failure is
 * listed in KNOWN_ISSUES with its reason: its test asserts that it still fails (it.fails), so
 * a fix flips it and the entry must go.
 */
import { describe, it } from 'vitest';
import { type Scenario, expectCoherent, selectorRejects } from 'hmm-emu/testing';
import { REFERENCE_DRIVERS } from '../../drivers/index.js';

/** Schedules per strategy: RUNS random + RUNS pct:3 = 2,000 per (scenario, reference driver). */
export const RUNS = 1000;

/**
 * `scenario/driver` -> why it fails today (none now). mockgpu on
 * invalidation-on-non-blockable-range was listed here until its window interval notifiers
 * learned to refuse non-blockable ranges (drivers/mockgpu/svmm.ts header): the kernel trap of
 * an interval side accepted and a classic start refused no longer arises.
 */
export const KNOWN_ISSUES: Readonly<Record<string, string>> = {};

/** Registers one test per (scenario, applicable reference driver): `runs` schedules per strategy (default RUNS), within `timeoutMs` (default 300 s). */
export function raceSuite(scenarios: readonly Scenario[], { runs = RUNS, timeoutMs = 300_000 }: { runs?: number; timeoutMs?: number } = {}): void {
  for (const scenario of scenarios) {
    describe(scenario.name, () => {
      for (const driver of REFERENCE_DRIVERS) {
        if (selectorRejects(scenario.drivers, driver) !== null) continue;
        const known = KNOWN_ISSUES[`${scenario.name}/${driver.name}`];
        const name = `${driver.name} stays coherent over ${runs} random and ${runs} pct:3 schedules`;
        const body = async (): Promise<void> => {
          await expectCoherent(scenario, { driver, runs });
        };
        if (known === undefined) it(name, body, timeoutMs);
        else it.fails(`${name} (known issue: ${known})`, body, timeoutMs);
      }
    });
  }
}
