/**
 * The race campaign for reference drivers (races-cpu-ops, races-special, races-later): each scenario with each reference driver it applies
 * to, over `RUNS` random and `RUNS` pct:3 schedules, must stay coherent. A known failure is
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

/** Registers one test per (scenario, applicable reference driver). */
export function raceSuite(scenarios: readonly Scenario[]): void {
  for (const scenario of scenarios) {
    describe(scenario.name, () => {
      for (const driver of REFERENCE_DRIVERS) {
        if (selectorRejects(scenario.drivers, driver) !== null) continue;
        const known = KNOWN_ISSUES[`${scenario.name}/${driver.name}`];
        const name = `${driver.name} stays coherent over ${RUNS} random and ${RUNS} pct:3 schedules`;
        const body = async (): Promise<void> => {
          await expectCoherent(scenario, { driver, runs: RUNS });
        };
        if (known === undefined) it(name, body, 300_000);
        else it.fails(`${name} (known issue: ${known})`, body, 300_000);
      }
    });
  }
}
