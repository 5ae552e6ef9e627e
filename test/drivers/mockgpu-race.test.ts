/**
 * mockgpu in the driver race harness (test/drivers/harness.ts): every case, including device
 * migration, under 250 random and 250 PCT schedules each, with the default policy (first-touch
 * migration to device memory). mockgpu-race-off.test.ts runs the same with migration off.
 */
import { describe, expect, it } from 'vitest';
import { mockgpuUnderTest } from './mockgpu-adapter.js';
import { RACE_CASES, caseApplies, exploreCase, raceFailureMessage } from './harness.js';

const driver = mockgpuUnderTest();

describe('mockgpu race cases (first-touch migration)', () => {
  for (const kase of RACE_CASES) {
    it.runIf(caseApplies(driver, kase))(`${kase}: device and CPU stay coherent across 500 schedules`, async () => {
      const r = await exploreCase(driver, kase);
      expect(r.firstFailure === null ? null : raceFailureMessage(driver.name, kase, r.firstFailure)).toBeNull();
      expect(r.runs).toBe(500);
    });
  }
});
