/**
 * mockgpu in the driver race harness with migration off: the device maps system memory and
 * takes make_device_exclusive for atomics, 250 random and 250 PCT schedules per case.
 */
import { describe, expect, it } from 'vitest';
import { Engine } from 'hmm-emu';
import { Engine as SourceEngine } from '../../src/index.js';
import { mockgpuUnderTest } from './mockgpu-adapter.js';
import { RACE_CASES, caseApplies, exploreCase, raceFailureMessage } from './harness.js';

const driver = mockgpuUnderTest({ migration: 'off' }, 64, 'mockgpu-off');

/**
 * madvise needs commit 95ce17b's fix of src/mm/fault.ts (restoring a device-exclusive entry
 * holds a page reference; without it a madvise that zaps the page during the restore frees a
 * locked page). Under a vitest config whose `resolve.conditions` does not reach the SSR
 * environment, 'hmm-emu' resolves to the built dist/, which may predate the fix: the case runs
 * only when 'hmm-emu' is the source.
 */
const againstSource = Engine === SourceEngine;

describe('mockgpu race cases (migration off: exclusive atomics on system memory)', () => {
  for (const kase of RACE_CASES) {
    const runnable = caseApplies(driver, kase) && (kase !== 'madvise' || againstSource);
    it.runIf(runnable)(`${kase}: device and CPU stay coherent across 500 schedules`, async () => {
      const r = await exploreCase(driver, kase);
      expect(r.firstFailure === null ? null : raceFailureMessage(driver.name, kase, r.firstFailure)).toBeNull();
      expect(r.runs).toBe(500);
    });
  }
});
