/**
 * The broken drivers of drivers/buggy, registered in drivers/index.ts (kind 'buggy'), on the
 * scenarios of their `caughtBy`: each is caught within RUNS pct:3 schedules (seeds 0..RUNS-1,
 * stopping at the first catch), and its base (the reference driver it breaks) stays coherent
 * over the same RUNS schedules of the same scenario, so each catch is the bug's. The number of
 * schedules each catch took is printed, and drivers/buggy/README.md records it.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { expectCaught, expectCoherent } from 'hmm-emu/testing';
import { BUGGY_SCENARIO_DRIVERS, drivers } from '../../drivers/index.js';
import { findScenario } from '../../scenarios/index.js';

const RUNS = 1000;
const STRATEGY = 'pct:3';
const SEED = 0;

const rows: string[] = [];

describe(`drivers/buggy on their scenarios: caught within ${RUNS} ${STRATEGY} schedules, base coherent over the same`, () => {
  it('registers all nine, each with a base, a bug and the scenarios that catch it', () => {
    expect(drivers.list('buggy').map((d) => d.name)).toEqual(BUGGY_SCENARIO_DRIVERS.map((d) => d.name));
    expect(BUGGY_SCENARIO_DRIVERS).toHaveLength(9);
    for (const d of BUGGY_SCENARIO_DRIVERS) {
      expect(d.kind).toBe('buggy');
      expect(drivers.get(d.base!).kind, d.name).toBe('reference');
      expect(d.bug!.length, d.name).toBeGreaterThan(10);
      expect(d.caughtBy!.length, d.name).toBeGreaterThan(0);
      for (const s of d.caughtBy!) expect(findScenario(s), `${d.name}: scenario ${s}`).toBeDefined();
    }
  });

  for (const driver of BUGGY_SCENARIO_DRIVERS) {
    for (const name of driver.caughtBy ?? []) {
      it(`${driver.name} (${driver.bug}) is caught on ${name}; ${driver.base} is coherent there`, async () => {
        const scenario = findScenario(name)!;
        const caught = await expectCaught(scenario, { driver, strategies: [STRATEGY], seed: SEED, runs: RUNS });
        const schedules = caught.run.seed - SEED + 1;
        expect(schedules).toBeGreaterThanOrEqual(1);
        expect(schedules).toBeLessThanOrEqual(RUNS);
        await expectCoherent(scenario, { driver: drivers.get(driver.base!), strategies: [STRATEGY], seed: SEED, runs: RUNS });
        const as = caught.report?.code ?? caught.verdict;
        rows.push(`| ${driver.name} | ${name} | ${as} | ${schedules} |`);
        console.info(`buggy ${driver.name}: caught on ${name} at schedule ${schedules} of ${RUNS} (${STRATEGY}) as ${as}`);
      }, 300_000);
    }
  }

  afterAll(() => {
    if (rows.length > 0) console.info(['| driver | scenario | caught as | schedules to catch |', '|---|---|---|---|', ...rows.sort()].join('\n'));
  });
});
