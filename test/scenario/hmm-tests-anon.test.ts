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
 * so the drivers that do are built here: `probe`, a small interval-notifier driver (the
 * hmm_range_fault loop of docs/driver-guide.md, as test/scenario/mini-driver.ts) with one
 * fault path changed per mode:
 *
 *   'correct'         the control: faults with a write request for writes, maps what it got
 *   'no-fault'        snapshots only (no HMM_PFN_REQ_FAULT): a pte-none page cannot be mapped
 *   'read-only-fault' never asks for write access, and maps every page writable anyway
 *   'cpu-pte'         maps straight from a present CPU pte (a fast path before hmm_range_fault)
 *                     and takes a PROT_NONE entry (present, protnone) for a readable one
 *   'no-retry'        commits its snapshot without mmu_interval_read_retry (bug class 1)
 *
 * The probe takes 300 ns of virtual time to program the device between its walk and its commit
 * (so an invalidation can fall in between), and its unbind stops the fault worker before it
 * removes the notifier (a killed job's faults may still be in service).
 *
 * anon-write-child-shared's own check (the parent sees the child's device write) is shown to
 * fail on a mutated program: the same steps on MAP_PRIVATE memory.
 */
import { describe, expect, it } from 'vitest';
import {
  type BoundDevice,
  DEV_PTE_ATOMIC,
  DEV_PTE_WRITE,
  Device,
  EBUSY,
  EFAULT,
  HMM_PFN_REQ_FAULT,
  HMM_PFN_REQ_WRITE,
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  HmmRange,
  MAP_SHARED,
  MmuIntervalNotifier,
  Mutex,
  PAGE_SIZE,
  PTE_PRESENT,
  PTE_WRITE,
  type ScenarioDriver,
  ULONG_MAX_ADDR,
  hmmPfnToPfn,
  hmmRangeFault,
  mmuIntervalNotifierInsert,
  mmuIntervalNotifierRemove,
  mmuIntervalReadBegin,
  mmuIntervalReadRetry,
  mmuIntervalSetSeq,
  mmuNotifierRangeBlockable,
} from 'hmm-emu';
import { type CpuTask, type Scenario, type ScenarioContext, type ScenarioResult, defineScenario, expectCaught, expectCoherent, exploreScenario, selectorRejects } from 'hmm-emu/testing';
import { REFERENCE_DRIVERS, drivers } from '../../drivers/index.js';
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

type ProbeMode = 'correct' | 'no-fault' | 'read-only-fault' | 'cpu-pte' | 'no-retry';

const VA_END = 2 ** 48;

/** The probe driver in `mode`, named `probe-<mode>` (see the header). */
function probeDriver(mode: ProbeMode): ScenarioDriver {
  return {
    name: `probe-${mode}`,
    description: `a minimal interval-notifier driver (${mode})`,
    api: 'modern',
    kind: mode === 'correct' ? 'reference' : 'buggy',
    features: [],
    ...(mode === 'correct' ? {} : { base: 'probe-correct', bug: mode }),
    async bind(req): Promise<BoundDevice> {
      const e = req.engine;
      const mm = req.mm;
      const dev = new Device(e, req.phys, { ...req.hardware, name: req.name, memory: { frames: 0 } });
      const as = dev.createAddressSpace();
      const lock = new Mutex(e, `${req.name}.update`, { lockClass: 'probe.update' });
      const sub = new MmuIntervalNotifier(`${req.name}.probe`);
      await mmuIntervalNotifierInsert(sub, mm, 0, ULONG_MAX_ADDR, {
        async invalidate(s, range, curSeq) {
          const blockable = mmuNotifierRangeBlockable(range);
          if (blockable) await lock.lock();
          else if (!lock.trylock()) return false;
          const end = Math.min(range.end, VA_END);
          let held = false;
          as.pageTable.forEach(() => (held = true), Math.floor(range.start / PAGE_SIZE), Math.ceil(end / PAGE_SIZE));
          if (held && !blockable) {
            lock.unlock();
            return false;
          }
          mmuIntervalSetSeq(s, curSeq);
          if (held) {
            as.unmap(range.start, end);
            await dev.tlbInvalidate(as, range.start, end).wait();
          }
          lock.unlock();
          return true;
        },
      });
      const perm = (write: boolean): number => (write ? DEV_PTE_WRITE | DEV_PTE_ATOMIC : 0);
      const fault = async (addr: number, write: boolean): Promise<number> => {
        const req0 = mode === 'no-fault' ? 0n : mode === 'read-only-fault' || !write ? HMM_PFN_REQ_FAULT : HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE;
        const range = new HmmRange({ notifier: sub, start: addr, end: addr + PAGE_SIZE, defaultFlags: req0 });
        const vpn = addr / PAGE_SIZE;
        for (;;) {
          if (mm.state !== 'live') return -EFAULT;
          range.notifierSeq = await mmuIntervalReadBegin(sub);
          await mm.mmapLock.downRead();
          if (mm.state !== 'live') {
            mm.mmapLock.upRead();
            return -EFAULT;
          }
          // BUG ('cpu-pte'): a present CPU entry is taken as it stands, PROT_NONE or not.
          const bits = mm.pgtable.bitsAt(vpn);
          const fast = mode === 'cpu-pte' && (bits & PTE_PRESENT) !== 0 && (!write || (bits & PTE_WRITE) !== 0);
          const fastPfn = fast ? mm.pgtable.pfnAt(vpn) : -1;
          const ret = fast ? 0 : await hmmRangeFault(range);
          mm.mmapLock.upRead();
          if (ret === -EBUSY) continue;
          if (ret < 0) return ret;
          const p = range.hmmPfns[0]!;
          // BUG ('no-fault'): a snapshot without fault requests leaves pte-none pages invalid.
          if (!fast && (p & HMM_PFN_VALID) === 0n) return -EFAULT;
          if (!fast && write && mode !== 'read-only-fault' && (p & HMM_PFN_WRITE) === 0n) return -EFAULT;
          await e.sleep(300);
          await lock.lock();
          // BUG ('no-retry'): the snapshot is committed even if an invalidation ran since the walk.
          if (mode !== 'no-retry' && mmuIntervalReadRetry(sub, range.notifierSeq)) {
            lock.unlock();
            continue;
          }
          if (fast) as.map(addr, fastPfn, perm(write));
          // BUG ('read-only-fault'): mapped writable though only read access was faulted in.
          else as.map(addr, hmmPfnToPfn(p), perm(mode === 'read-only-fault' || (p & HMM_PFN_WRITE) !== 0n));
          lock.unlock();
          return 0;
        }
      };
      const worker = e.spawn(`${req.name}.probe_worker`, async () => {
        while (await dev.waitForInterrupt()) {
          const fb = dev.faultBuffer;
          if (fb.overflow) fb.clearOverflow();
          for (const rec of fb.drain()) {
            const addr = rec.address - (rec.address % PAGE_SIZE);
            if ((await fault(addr, rec.access === 'write' || rec.access === 'atomic')) < 0) dev.cancelFault(rec);
          }
          dev.replay(as.asid);
        }
      });
      return {
        device: dev,
        as,
        notifierSubs: [sub],
        launch: (opts, kernel) => dev.launch(as, opts, kernel),
        commands: {},
        stats: () => ({}),
        async unbind() {
          // The worker first: a fault of a killed job may still be in service.
          dev.stop();
          await worker.join();
          await mmuIntervalNotifierRemove(sub);
          await lock.lock();
          as.unmap(0, VA_END);
          lock.unlock();
          await dev.tlbInvalidateAll(as).wait();
          dev.destroyAddressSpace(as);
        },
      };
    },
  };
}

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

  it('the probe control driver is coherent on every port, so each catch below is its mode\'s bug', async () => {
    for (const scenario of SCENARIOS) await expectCoherent(scenario, { driver: probeDriver('correct'), runs: 50 });
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
    const r = await expectCaught(anonRead, { driver: probeDriver('no-fault'), runs: 20 });
    expect(r.verdict).toBe('failed');
    expect(r.failure?.message).toMatch(/device task gpu was killed/);
  });

  it('anon-read-prot catches a driver that mirrors a PROT_NONE page from the CPU page table', async () => {
    const r = await expectCaught(anonReadProt, { driver: probeDriver('cpu-pte'), runs: 20 });
    expect(r.verdict).toBe('violation');
    expect(r.report?.code).toMatch(/^translation\//);
  });

  it('anon-write catches a driver that faults for read and maps writable (the device writes the zero page)', async () => {
    const r = await expectCaught(anonWrite, { driver: probeDriver('read-only-fault'), runs: 20, caughtBy: ['violation', 'failed', 'error'] });
    expect(renderedOf(r)).toMatch(/zero page|translation/);
  });

  it('anon-write fails a driver that does not fault pages in', async () => {
    const r = await expectCaught(anonWrite, { driver: probeDriver('no-fault'), runs: 20 });
    expect(r.verdict).toBe('failed');
  });

  it('anon-write-prot catches a driver that maps a read-only mapping writable', async () => {
    const r = await expectCaught(anonWriteProt, { driver: probeDriver('read-only-fault'), runs: 20, caughtBy: ['violation', 'failed', 'error'] });
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
    const r = await expectCaught(anonWriteChild, { driver: probeDriver('read-only-fault'), runs: 20 });
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
    const r = await expectCaught(anonTeardown, { driver: probeDriver('no-retry'), runs: RUNS });
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
