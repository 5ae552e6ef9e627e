/**
 * The races of CPU page migration, many CPU threads on one device page, oversubscription and
 * exit: each scenario stays coherent on every reference driver it applies to (100 random +
 * 100 pct:3 schedules), and its checks can fail: a broken driver is caught on it, or a mutated
 * copy of it (another world, a job that may not be killed) fails as it should.
 */
import { describe, expect, it } from 'vitest';
import {
  Device,
  type DeviceTask,
  EINVAL,
  KernelError,
  MMU_NOTIFY_CLEAR,
  type MmuNotifierRange,
  PAGE_SIZE,
  type Scenario,
  type ScenarioDefinition,
  type ScenarioDriver,
  type TaskSpec,
  type WorldSpec,
  defineScenario,
} from 'hmm-emu';
import { expectCaught, expectCoherent, expectVerdict, runScenario, selectorRejects } from 'hmm-emu/testing';
import { REFERENCE_DRIVERS, boundFromMockGpu, drivers, mockgpuDriver } from '../../drivers/index.js';
import { MockGpu, type MockGpuOptions, MockGpuSvmm } from '../../drivers/mockgpu/index.js';
import { cpuMigrationWhileMirrored } from '../../scenarios/cpu-migration-while-mirrored.js';
import { evictionStorm } from '../../scenarios/eviction-storm.js';
import { exitWithFaultsInFlight } from '../../scenarios/exit-with-faults-in-flight.js';
import { manyCpuThreadsOneDevicePage } from '../../scenarios/many-cpu-threads-one-device-page.js';

const RUNS = 100;
const SCENARIOS: readonly Scenario[] = [cpuMigrationWhileMirrored, manyCpuThreadsOneDevicePage, evictionStorm, exitWithFaultsInFlight];

/** A copy of `s` under another name, with its world or some tasks replaced. */
function mutate(s: Scenario, name: string, patch: { world?: WorldSpec; tasks?: Record<string, TaskSpec<unknown>> }): Scenario {
  const tasks: Record<string, TaskSpec<unknown>> = {};
  for (const t of s.tasks) tasks[t.name] = t.spec;
  const def: ScenarioDefinition<unknown> = {
    name,
    description: s.description,
    origin: s.origin,
    tags: s.tags,
    world: patch.world ?? s.world,
    drivers: s.drivers,
    state: s.state,
    tasks: { ...tasks, ...patch.tasks },
    maxSteps: s.maxSteps,
    ...(s.setup !== null ? { setup: s.setup } : {}),
    ...(s.check !== null ? { check: s.check } : {}),
  };
  return defineScenario(def);
}

/**
 * mockgpu bound with every MockGpuOptions field of the world's driverOptions (the registry's
 * adapter forwards only some of them), its svmm handed to `patch` before use.
 */
function mockgpuWith(name: string, kind: 'reference' | 'buggy', patch: (svmm: MockGpuSvmm, dev: Device) => void = () => {}): ScenarioDriver {
  return {
    ...mockgpuDriver,
    name,
    kind,
    async bind(req) {
      const dev = new Device(req.engine, req.phys, { ...req.hardware, name: req.name, memory: { frames: req.memoryFrames } });
      const gpu = new MockGpu(dev, req.options as MockGpuOptions);
      gpu.start();
      const svmm = await gpu.bind(req.mm);
      if (!(svmm instanceof MockGpuSvmm)) throw new KernelError(EINVAL, `bind failed: ${String(svmm)}`);
      patch(svmm, dev);
      return boundFromMockGpu(gpu, svmm);
    },
  };
}

/**
 * A test-only broken mockgpu: its classic notifier skips ownerless CLEAR invalidations of
 * ranges whose device entries all point into its own device memory, as if only its own
 * migrations could move those pages (bug class 4's "skip what you think is yours, without
 * zapping"). Eviction (migrate_device_range) unmaps exactly such pages with such events.
 */
const mockgpuSkipsOwnMemoryClear: ScenarioDriver = {
  ...mockgpuWith('mockgpu-skips-own-memory-clear', 'buggy', (svmm, dev) => {
    const pgmap = dev.memory!;
    const patched = svmm as unknown as { invalidateRangeStart(range: MmuNotifierRange): Promise<number> };
    const orig = patched.invalidateRangeStart.bind(svmm);
    patched.invalidateRangeStart = (range) => {
      if (range.event === MMU_NOTIFY_CLEAR && range.owner === null) {
        let mapped = 0;
        let ours = 0;
        svmm.as.pageTable.forEach(
          (_vpn, pfn) => {
            mapped++;
            if (pfn >= pgmap.firstPfn && pfn < pgmap.firstPfn + pgmap.nframes) ours++;
          },
          Math.floor(range.start / PAGE_SIZE),
          Math.ceil(range.end / PAGE_SIZE),
        );
        if (mapped > 0 && ours === mapped) return Promise.resolve(0); // BUG: "only we move our memory"
      }
      return orig(range);
    };
  }),
  description: 'mockgpu whose classic notifier ignores CLEAR invalidations of ranges it maps only to its own device memory',
  base: 'mockgpu',
  bug: 'skips ownerless CLEAR invalidations of its device-memory mappings (eviction) without zapping',
};

describe('reference drivers stay coherent', () => {
  for (const scenario of SCENARIOS) {
    for (const driver of REFERENCE_DRIVERS) {
      if (selectorRejects(scenario.drivers, driver) !== null) continue;
      it(`${scenario.name}: ${driver.name} is coherent over ${RUNS} random and ${RUNS} pct:3 schedules`, async () => {
        await expectCoherent(scenario, { driver, runs: RUNS });
      }, 120_000);
    }
  }

  it('each scenario applies to the drivers it names: cpu-migration and exit to all three, many-threads to dmirror and mockgpu, eviction to mockgpu', () => {
    const applies = (s: Scenario): string[] => REFERENCE_DRIVERS.filter((d) => selectorRejects(s.drivers, d) === null).map((d) => d.name);
    expect(applies(cpuMigrationWhileMirrored)).toEqual(['dmirror', 'hmm2015', 'mockgpu']);
    expect(applies(exitWithFaultsInFlight)).toEqual(['dmirror', 'hmm2015', 'mockgpu']);
    expect(applies(manyCpuThreadsOneDevicePage)).toEqual(['dmirror', 'mockgpu']);
    expect(applies(evictionStorm)).toEqual(['mockgpu']);
    for (const s of SCENARIOS) {
      expect(s.tags).toContain('race');
      expect(s.origin.length).toBeGreaterThan(20);
    }
  });
});

describe('cpu-migration-while-mirrored catches drivers that outlive the old frame', () => {
  it('a dmirror that zaps its page table but not its TLB is caught at the CLEAR callback of the migration', async () => {
    const r = await expectCaught(cpuMigrationWhileMirrored, { driver: drivers.get('dmirror-no-tlb-flush'), strategies: ['pct:3'], runs: 20 });
    expectVerdict(r, 'violation', 'invalidation/entry-after-callback');
    expect(r.reportText).toContain('MMU_NOTIFY_CLEAR');
  });

  it('a dmirror that commits without mmu_interval_read_retry maps a frame the migration freed', async () => {
    const r = await expectCaught(cpuMigrationWhileMirrored, { driver: drivers.get('dmirror-no-read-retry'), strategies: ['random'], runs: 200 });
    expect(r.verdict).toBe('violation');
    expect(r.report!.code).toMatch(/^use-after-free\//);
  });

  it('a 2015-API driver that maps without hmmDeviceFaultStart is caught', async () => {
    const r = await expectCaught(cpuMigrationWhileMirrored, { driver: drivers.get('hmm2015-no-fault-start'), strategies: ['pct:3'], runs: 50 });
    expect(r.verdict).toBe('violation');
  });

  it('the migrations land inside the device work: without them dmirror takes fewer device faults, and the check fails', async () => {
    const noMigrations = mutate(cpuMigrationWhileMirrored, 'cpu-migration-without-migrations', { tasks: { migrator: async () => {} } });
    const faults = async (s: Scenario, verdict: 'coherent' | 'failed'): Promise<number> => {
      let n = 0;
      for (let seed = 0; seed < 10; seed++) {
        for (const strategy of ['random', 'pct:3']) {
          const r = await runScenario(s, { driver: drivers.get('dmirror'), seed, strategy });
          expectVerdict(r, verdict);
          if (verdict === 'failed') expect(r.failure!.message).toContain('no page moved');
          n += r.stats.deviceFaults;
        }
      }
      return n;
    };
    const without = await faults(noMigrations, 'failed');
    const withMigrations = await faults(cpuMigrationWhileMirrored, 'coherent');
    // Every migration the device overlaps zaps its mappings: the next accesses refault.
    expect(withMigrations).toBeGreaterThan(without + 20);
  });
});

describe('many-cpu-threads-one-device-page catches migrations that leave the device behind', () => {
  it('a dmirror that skips its own MIGRATE events without zapping is caught at once', async () => {
    const r = await expectCaught(manyCpuThreadsOneDevicePage, { driver: drivers.get('dmirror-own-migrate-no-zap'), strategies: ['pct:3'], runs: 10 });
    expect(r.verdict).toBe('violation');
    expect(r.report!.code).toBe('translation/no-cpu-mapping');
  });

  it('a dmirror that commits without mmu_interval_read_retry is caught', async () => {
    const r = await expectCaught(manyCpuThreadsOneDevicePage, { driver: drivers.get('dmirror-no-read-retry'), strategies: ['random'], runs: 200 });
    expect(r.verdict).toBe('violation');
  });
});

describe('eviction-storm really evicts, and catches a driver that keeps mappings of evicted frames', () => {
  it('mockgpu evicts in every run (the check asserts it), many times over 20 schedules', async () => {
    let evictions = 0;
    for (let seed = 0; seed < 20; seed++) {
      const r = await runScenario(evictionStorm, { driver: drivers.get('mockgpu'), seed, strategy: seed % 2 === 0 ? 'random' : 'pct:3' });
      expectVerdict(r, 'coherent');
      evictions += r.stats.driver['evictions'] ?? 0;
    }
    expect(evictions).toBeGreaterThanOrEqual(20 * 3);
  });

  it('with device memory for the whole working set there is no eviction, and the check fails', async () => {
    const dev = evictionStorm.world.devices[0]!;
    const roomy = mutate(evictionStorm, 'eviction-storm-roomy', { world: { ...evictionStorm.world, devices: [{ ...dev, memoryFrames: 64 }] } });
    const r = await runScenario(roomy, { driver: drivers.get('mockgpu'), seed: 0 });
    expectVerdict(r, 'failed');
    expect(r.failure!.message).toContain('reports no eviction');
  });

  it('mockgpu stays coherent when it evicts one window at a time with a 2 us grace (options the registry adapter does not forward)', async () => {
    const dev = evictionStorm.world.devices[0]!;
    const harsh = mutate(evictionStorm, 'eviction-storm-harsh', {
      world: { ...evictionStorm.world, devices: [{ ...dev, driverOptions: { ...dev.driverOptions, evictPages: 2, minResidencyNs: 2_000 } }] },
    });
    const driver = mockgpuWith('mockgpu-all-options', 'reference');
    const r = await runScenario(harsh, { driver, seed: 0 });
    expectVerdict(r, 'coherent');
    expect(r.stats.driver['evictions']).toBeGreaterThan(10);
    await expectCoherent(harsh, { driver, runs: 50 });
  }, 120_000);

  it('a mockgpu that ignores the CLEAR invalidations of eviction is caught (use after free)', async () => {
    const r = await expectCaught(evictionStorm, { driver: mockgpuSkipsOwnMemoryClear, runs: 20 });
    expect(r.verdict).toBe('violation');
    expect(r.report!.code).toMatch(/^(use-after-free|translation|invalidation)\//);
  });
});

describe('exit-with-faults-in-flight catches drivers that survive the exit', () => {
  it('a dmirror that skips the TLB is caught at the RELEASE invalidation', async () => {
    const r = await expectCaught(exitWithFaultsInFlight, { driver: drivers.get('dmirror-no-tlb-flush'), strategies: ['pct:3'], runs: 20 });
    expectVerdict(r, 'violation', 'invalidation/entry-after-callback');
    expect(r.reportText).toContain('MMU_NOTIFY_RELEASE');
  });

  it('a dmirror that commits without mmu_interval_read_retry maps a frame the exit freed', async () => {
    const r = await expectCaught(exitWithFaultsInFlight, { driver: drivers.get('dmirror-no-read-retry'), strategies: ['random'], runs: 200 });
    expectVerdict(r, 'violation', 'use-after-free/at-map');
  });

  for (const driver of REFERENCE_DRIVERS) {
    it(`the exit lands inside the device's work on ${driver.name}: with a job that may not be killed, some schedules fail`, async () => {
      const gpu = exitWithFaultsInFlight.tasks.find((t) => t.name === 'gpu')!.spec as DeviceTask<unknown>;
      const unkillable = mutate(exitWithFaultsInFlight, 'exit-with-unkillable-job', { tasks: { gpu: { ...gpu, killable: false } } });
      const r = await expectCaught(unkillable, { driver, strategies: ['random'], runs: 50 });
      expectVerdict(r, 'failed');
      expect(r.failure!.message).toContain('is not killable');
    });
  }
});
