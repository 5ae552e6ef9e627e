/** api-2015-vs-modern: one workload, every reference driver coherent, and the comparison tells the API generations apart. */
import { describe, expect, it } from 'vitest';
import { compareScenario, expectCoherent } from 'hmm-emu/testing';
import { REFERENCE_DRIVERS, drivers } from '../../drivers/index.js';
import { api2015VsModern } from '../../scenarios/index.js';

describe('api-2015-vs-modern', () => {
  for (const driver of REFERENCE_DRIVERS) {
    it(`${driver.name} loses no increment over 100 random and 100 pct:3 schedules`, async () => {
      await expectCoherent(api2015VsModern, { driver, runs: 100 });
    });
  }

  it('the 2015 driver backs off where the modern ones retry, and every driver reports its fault latency', async () => {
    const c = await compareScenario(api2015VsModern, { drivers: ['hmm2015', 'dmirror', 'mockgpu'], registry: drivers, runs: 100, strategy: 'pct:3' });
    const row = (n: string) => c.rows.find((r) => r.driver === n)!;
    for (const r of c.rows) {
      expect(r.verdicts.coherent, r.driver).toBe(100);
      expect(r.totals.faultLatency.count, r.driver).toBeGreaterThan(0);
    }
    // The 2015 protocol's own mechanism shows up in its counters: faults that overlapped a
    // madvise(DONTNEED) invalidation backed off; the modern drivers have no such counter.
    expect(row('hmm2015').totals.driver['backoffs']).toBeGreaterThan(0);
    expect(row('dmirror').totals.driver['backoffs']).toBeUndefined();
    expect(row('hmm2015').totals.retries).toBeGreaterThan(0);
    expect(row('dmirror').totals.retries).toBeGreaterThan(0);
  });
});
