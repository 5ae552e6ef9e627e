/**
 * The race campaign for reference drivers: each scenario with each reference driver it applies
 * to, over `RUNS` random and `RUNS` pct:3 schedules, must stay coherent. A known failure is
 * listed in KNOWN_ISSUES with its reason: its test asserts that it still fails (it.fails), so
 * a fix flips it and the entry must go.
 */
import { describe, it } from 'vitest';
import { type Scenario, expectCoherent, selectorRejects } from 'hmm-emu/testing';
import { REFERENCE_DRIVERS } from '../../drivers/index.js';

/** Schedules per strategy (the full campaign of >= 2000 is sized from these timings). */
export const RUNS = 200;

/**
 * `scenario/driver` -> why it fails today.
 * mockgpu's classic notifier refuses non-blockable ranges (-EAGAIN) after its window interval
 * notifiers accepted them; mmu_notifier_invalidate_range_start_nonblock then returns -EAGAIN
 * without ending the interval-tree invalidation (src/notifier/dispatch.ts invalidateRangeStart,
 * as mm/mmu_notifier.c's __mmu_notifier_invalidate_range_start), so invalidate_seq stays odd
 * and mockgpu's unbind waits forever in mmu_interval_notifier_remove: a deadlock report.
 */
export const KNOWN_ISSUES: Readonly<Record<string, string>> = {
  'invalidation-on-non-blockable-range/mockgpu': 'interval-tree invalidation left active by a refused non-blockable start (deadlock at unbind)',
};

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
        if (known === undefined) it(name, body, 120_000);
        else it.fails(`${name} (known issue: ${known})`, body, 120_000);
      }
    });
  }
}
