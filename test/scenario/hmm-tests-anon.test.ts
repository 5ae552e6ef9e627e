/**
 * The scenario ports of hmm-tests' anonymous-memory tests (scenarios/anon-*.ts): each stays
 * coherent on every reference driver it applies to over 100 random and 100 pct:3 schedules, and
 * each one's checks fail on a driver broken the way the kernel test is there to catch.
 *
 * The broken drivers of drivers/buggy are caught where the ports meet their bug: a TLB entry
 * kept past an invalidation (the munmap of anon-teardown, the child's exit in the two child
 * ports), write permission kept across fork (anon-write-child, when the parent's pages sit in
 * its device memory at fork), the driver lock held across hmm_range_fault (anon-write-prot).
 * What the sequential ports are there for (fault requests and permissions: pte-none pages, the
 * zero page, PROT_NONE, read-only and copy-on-write pages) no drivers/buggy entry gets wrong,
 * so the drivers that do come from test/scenario/mini-driver.ts, a small interval-notifier
 * driver (the hmm_range_fault loop of docs/driver-guide.md) with one fault path changed per
 * mode:
 *
 *   'correct'         the control: faults with a write request for writes, maps what it got
 *   'no-fault'        snapshots only (no HMM_PFN_REQ_FAULT): a pte-none page cannot be mapped
 *   'read-only-fault' never asks for write access, and maps every page writable anyway
 *   'cpu-pte'         maps straight from a present CPU pte (a fast path before hmm_range_fault)
 *                     and takes a PROT_NONE entry (present, protnone) for a readable one
 *   'no-retry'        commits its snapshot without mmu_interval_read_retry (bug class 1)
 *
 * The mini driver takes 300 ns of virtual time to program the device between its walk and its
 * commit (so an invalidation can fall in between), and its unbind stops the fault worker before
 * it removes the notifier (a killed job's faults may still be in service).
 *
 * anon-write-child-shared's own check (the parent sees the child's device write) is shown to
 * fail on a mutated program: the same steps on MAP_PRIVATE memory.
 */
import { describe, expect, it } from 'vitest';
import { MAP_SHARED, type ScenarioDriver } from 'hmm-emu';
import { type CpuTask, type Scenario, type ScenarioContext, type ScenarioResult, defineScenario, expectCaught, expectCoherent, exploreScenario, selectorRejects } from 'hmm-emu/testing';
import { REFERENCE_DRIVERS, drivers } from '../../drivers/index.js';
import { miniDriver } from './mini-driver.js';
import { raceSuite } from './race-suite.js';
import { anonRead } from '../../scenarios/anon-read.js';
import { anonReadProt } from '../../scenarios/anon-read-prot.js';
import { anonWrite } from '../../scenarios/anon-write.js';
import { anonWriteProt } from '../../scenarios/anon-write-prot.js';
import { anonWriteChild } from '../../scenarios/anon-write-child.js';
import { anonWriteChildShared } from '../../scenarios/anon-write-child-shared.js';
import { anonTeardown } from '../../scenarios/anon-teardown.js';

const SCENARIOS: readonly Scenario[] = [anonRead, anonReadProt, anonWrite, anonWriteProt, anonWriteChild, anonWriteChildShared, anonTeardown];
const RUNS = 100;

/** The log lines of `runs` schedules of `scenario` on `driver` under `strategy` that match `re`, counted. */
async function logCounts(scenario: Scenario, driver: ScenarioDriver, re: RegExp, strategy: string, runs: number): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  const e = await exploreScenario(scenario, {
    driver,
    runs,
    strategy,
    onRun: (r: ScenarioResult) => {
      for (const l of r.log) {
        const m = re.exec(l.message);
        if (m !== null) counts.set(m[0], (counts.get(m[0]) ?? 0) + 1);
      }
    },
  });
  expect(e.firstFailure).toBeNull();
  return counts;
}

describe('hmm-tests anon ports: coherent on the reference drivers', () => {
  raceSuite(SCENARIOS, { runs: RUNS, timeoutMs: 120_000 });

  it('every port applies to every reference driver (hmm2015 included)', () => {
    for (const scenario of SCENARIOS) for (const driver of REFERENCE_DRIVERS) expect(selectorRejects(scenario.drivers, driver), `${scenario.name} on ${driver.name}`).toBeNull();
  });

  it('the mini control driver is coherent on every port, so each catch below is its mode\'s bug', async () => {
    for (const scenario of SCENARIOS) await expectCoherent(scenario, { driver: miniDriver('correct'), runs: 50 });
  }, 120_000);
});

describe('hmm-tests anon ports: what each one explores', () => {
  it('anon-teardown sees both outcomes of the race on every reference driver: the read completes, or the munmap kills the job', async () => {
    for (const driver of REFERENCE_DRIVERS) {
      const counts = await logCounts(anonTeardown, driver, /^round \d: device read (completed|killed)/, 'pct:3', 60);
      for (let c = 0; c < 3; c++) {
        expect(counts.get(`round ${c}: device read completed`) ?? 0, `${driver.name} round ${c} completed`).toBeGreaterThan(0);
        expect(counts.get(`round ${c}: device read killed`) ?? 0, `${driver.name} round ${c} killed`).toBeGreaterThan(0);
      }
    }
  }, 120_000);

  it('anon-write-child forks both with and without a migration to device memory on the drivers that migrate, and without on hmm2015', async () => {
    for (const driver of REFERENCE_DRIVERS) {
      const counts = await logCounts(anonWriteChild, driver, /^migrate \d$/, 'pct:3', 40);
      expect(counts.get('migrate 0') ?? 0, driver.name).toBeGreaterThan(0);
      if (driver.features.includes('device-migration')) expect(counts.get('migrate 1') ?? 0, driver.name).toBeGreaterThan(0);
      else expect(counts.get('migrate 1'), driver.name).toBeUndefined();
    }
  }, 120_000);
});

describe('hmm-tests anon ports: their checks catch broken drivers', () => {
  it('anon-read fails a driver that does not fault pages in (the never-touched page kills the read)', async () => {
    const r = await expectCaught(anonRead, { driver: miniDriver('no-fault'), runs: 20 });
    expect(r.verdict).toBe('failed');
    expect(r.failure?.message).toMatch(/device task gpu was killed/);
  });

  it('anon-read-prot catches a driver that mirrors a PROT_NONE page from the CPU page table', async () => {
    const r = await expectCaught(anonReadProt, { driver: miniDriver('cpu-pte'), runs: 20 });
    expect(r.verdict).toBe('violation');
    expect(r.report?.code).toMatch(/^translation\//);
  });

  it('anon-write catches a driver that faults for read and maps writable (the device writes the zero page)', async () => {
    const r = await expectCaught(anonWrite, { driver: miniDriver('read-only-fault'), runs: 20, caughtBy: ['violation', 'failed', 'error'] });
    expect(renderedOf(r)).toMatch(/zero page|translation/);
  });

  it('anon-write fails a driver that does not fault pages in', async () => {
    const r = await expectCaught(anonWrite, { driver: miniDriver('no-fault'), runs: 20 });
    expect(r.verdict).toBe('failed');
  });

  it('anon-write-prot catches a driver that maps a read-only mapping writable', async () => {
    const r = await expectCaught(anonWriteProt, { driver: miniDriver('read-only-fault'), runs: 20, caughtBy: ['violation', 'failed', 'error'] });
    expect(renderedOf(r)).toMatch(/zero page|translation/);
  });

  it('anon-write-prot catches dmirror-lock-across-fault (the driver lock held across hmm_range_fault)', async () => {
    const r = await expectCaught(anonWriteProt, { driver: drivers.get('dmirror-lock-across-fault'), runs: 20 });
    expect(r.report?.code).toBe('lock/lockdep');
  });

  it('anon-write-child catches dmirror-writable-across-fork when the parent\'s pages are in its device memory at fork', async () => {
    const r = await expectCaught(anonWriteChild, { driver: drivers.get('dmirror-writable-across-fork'), strategies: ['pct:3'], runs: 40 });
    expect(r.report?.code).toBe('invalidation/entry-after-callback');
    expect(r.log.map((l) => l.message)).toContain('migrate 1');
  });

  it("anon-write-child and anon-write-child-shared catch dmirror-no-tlb-flush at the child's exit (its mirror's TLB outlives the release)", async () => {
    for (const scenario of [anonWriteChild, anonWriteChildShared]) {
      const r = await expectCaught(scenario, { driver: drivers.get('dmirror-no-tlb-flush'), runs: 20 });
      expect(r.report?.code, scenario.name).toBe('invalidation/entry-after-callback');
      expect(r.reportText, scenario.name).toMatch(/MMU_NOTIFY_RELEASE/);
    }
  });

  it("anon-write-child catches a driver whose child device write lands in the parent's copy-on-write frame", async () => {
    const r = await expectCaught(anonWriteChild, { driver: miniDriver('read-only-fault'), runs: 20 });
    expect(r.verdict).toBe('violation');
    expect(r.report?.code).toMatch(/^translation\//);
  });

  it("anon-write-child-shared fails when the child's device write does not reach the parent (its program run on MAP_PRIVATE memory)", async () => {
    const mutated = onPrivateMemory(anonWriteChildShared);
    for (const driver of REFERENCE_DRIVERS) {
      const r = await expectCaught(mutated, { driver, runs: 5 });
      expect(r.verdict, driver.name).toBe('failed');
      expect(r.failure?.message, driver.name).toMatch(/parent read of page 0 offset 0 after the child's device write/);
    }
  });

  it('anon-teardown catches dmirror-no-tlb-flush (a stale TLB entry survives the munmap)', async () => {
    const r = await expectCaught(anonTeardown, { driver: drivers.get('dmirror-no-tlb-flush'), runs: RUNS });
    expect(r.verdict).toBe('violation');
    expect(r.report?.code).toBe('invalidation/entry-after-callback');
  });

  it('anon-teardown catches a driver that commits a fault without mmu_interval_read_retry (it maps a frame the munmap freed)', async () => {
    const r = await expectCaught(anonTeardown, { driver: miniDriver('no-retry'), runs: RUNS });
    expect(r.verdict).toBe('violation');
    expect(r.report?.code).toMatch(/^use-after-free\//);
  });
});

/** `s` with every ctx.mmap of its CPU tasks made private (MAP_SHARED dropped): a mutated program. */
function onPrivateMemory(s: Scenario): Scenario {
  const tasks: Record<string, CpuTask> = {};
  for (const { name, spec } of s.tasks) {
    if (typeof spec !== 'function') throw new Error(`${s.name}: task ${name} is not a CPU task`);
    tasks[name] = (ctx) => {
      const mmap: ScenarioContext['mmap'] = (pages, opts = {}) => ctx.mmap(pages, { ...opts, flags: (opts.flags ?? 0) & ~MAP_SHARED });
      return spec(Object.assign(Object.create(ctx) as ScenarioContext, { mmap }));
    };
  }
  return defineScenario<unknown>({ name: `${s.name}-private`, description: `${s.name} on MAP_PRIVATE memory`, world: s.world, drivers: s.drivers, state: s.state, tasks });
}

/** What a caught run says: the report or the failure. */
function renderedOf(r: ScenarioResult): string {
  return `${r.reportText ?? ''} ${r.failure?.message ?? ''}`;
}
