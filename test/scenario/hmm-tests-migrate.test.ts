/**
 * The scenario ports of hmm-tests.c's migration, snapshot and exclusive-access tests
 * (scenarios/migrate*.ts, double-map.ts, snapshot.ts, exclusive*.ts): each stays coherent on
 * every reference driver it applies to over 100 random and 100 pct:3 schedules, and each one's
 * checks fail on a broken driver: one of drivers/buggy, or a test-local breakage of dmirror
 * (a command that does nothing, or a catalogue bug given dmirror's other commands) for the
 * scenarios whose features the catalogue's drivers lack.
 */
import { describe, expect, it } from 'vitest';
import type { ScenarioDriver } from 'hmm-emu';
import { type Scenario, expectCaught, expectCoherent, renderResult, selectorRejects } from 'hmm-emu/testing';
import { REFERENCE_DRIVERS, boundFromDmirror, boundFromDmirrorVariant, dmirrorDriver, drivers } from '../../drivers/index.js';
import { type DmirrorVariant, NoTlbFlushDmirror, WritableAcrossForkDmirror } from '../../drivers/buggy/index.js';
import { doubleMap } from '../../scenarios/double-map.js';
import { exclusiveCow } from '../../scenarios/exclusive-cow.js';
import { exclusive } from '../../scenarios/exclusive.js';
import { migrateFault } from '../../scenarios/migrate-fault.js';
import { migrateMultiple } from '../../scenarios/migrate-multiple.js';
import { migrateRelease } from '../../scenarios/migrate-release.js';
import { migrateShared } from '../../scenarios/migrate-shared.js';
import { migrate } from '../../scenarios/migrate.js';
import { snapshot } from '../../scenarios/snapshot.js';
import { raceSuite } from './race-suite.js';

const SCENARIOS: readonly Scenario[] = [migrate, migrateFault, migrateMultiple, migrateRelease, migrateShared, doubleMap, snapshot, exclusive, exclusiveCow];
/** Schedules per strategy (random, then pct:3) in the coherence tests. */
const RUNS = 100;
/** Schedules (pct:3, from seed 0) within which each broken driver must be caught. */
const CATCH_RUNS = 200;

/** dmirror with one command replaced (`bug` says how). */
function dmirrorWith(name: string, bug: string, commands: Partial<ReturnType<typeof boundFromDmirror>['commands']>): ScenarioDriver {
  return {
    ...dmirrorDriver,
    name,
    description: `dmirror that ${bug}`,
    kind: 'buggy',
    base: 'dmirror',
    bug,
    async bind(req) {
      const b = await dmirrorDriver.bind(req);
      return { ...b, commands: { ...b.commands, ...commands } };
    },
  };
}

/** A catalogue bug (a DmirrorVariant of drivers/buggy) with all of dmirror's commands, for the scenarios that need them. */
function variantWithCommands(cls: typeof DmirrorVariant, name: string, bug: string): ScenarioDriver {
  return {
    name,
    description: `drivers/buggy ${cls.name} with dmirror's commands: dmirror that ${bug}`,
    api: 'modern',
    kind: 'buggy',
    base: 'dmirror',
    bug,
    features: dmirrorDriver.features,
    async bind(req) {
      const v = await cls.bind(req.engine, req.phys, req.mm, { name: req.name, deviceFrames: req.memoryFrames });
      return { ...boundFromDmirrorVariant(v), commands: boundFromDmirror(v.mdevice, v.mirror).commands };
    },
  };
}

const noopMigrate = dmirrorWith('dmirror-noop-migrate', 'reports success for a migration to the device and moves nothing', { migrateToDevice: () => Promise.resolve(0) });
const noopRelease = dmirrorWith('dmirror-noop-release', 'reports success for a release and evicts nothing', { releaseDeviceMemory: () => Promise.resolve(0) });
const noopExclusive = dmirrorWith('dmirror-noop-exclusive', 'reports success for make_device_exclusive and makes nothing exclusive', { makeExclusive: () => Promise.resolve(0) });
const noTlbFlush = variantWithCommands(NoTlbFlushDmirror, 'dmirror-no-tlb-flush.commands', 'zaps the device page table but not the TLB');
const writableAcrossFork = variantWithCommands(WritableAcrossForkDmirror, 'dmirror-writable-across-fork.commands', 'keeps device mappings writable (and atomic) across fork');

describe('hmm-tests migration, snapshot and exclusive ports on the reference drivers', () => {
  it('each port applies to exactly the reference drivers that have its features', () => {
    const applies = Object.fromEntries(SCENARIOS.map((s) => [s.name, REFERENCE_DRIVERS.filter((d) => selectorRejects(s.drivers, d) === null).map((d) => d.name)]));
    expect(applies).toEqual({
      migrate: ['dmirror', 'mockgpu'],
      'migrate-fault': ['dmirror', 'mockgpu'],
      'migrate-multiple': ['dmirror', 'mockgpu'],
      'migrate-release': ['dmirror'],
      'migrate-shared': ['dmirror', 'mockgpu'],
      'double-map': ['dmirror', 'hmm2015', 'mockgpu'],
      snapshot: ['dmirror'],
      exclusive: ['dmirror'],
      'exclusive-cow': ['dmirror'],
    });
    for (const s of SCENARIOS) expect(s.origin, s.name).toMatch(/^tools\/testing\/selftests\/mm\/hmm-tests\.c: (hmm2\.)?[a-z_]+$/);
  });

  raceSuite(SCENARIOS, { runs: RUNS });
});

describe('the ports catch broken drivers', () => {
  /** Asserts `driver` is caught on `scenario` within CATCH_RUNS pct:3 schedules, as `verdict` (and report `code`, for a violation). */
  async function caught(scenario: Scenario, driver: ScenarioDriver, verdict: 'violation' | 'failed', code?: string): Promise<string> {
    const r = await expectCaught(scenario, { driver, strategies: ['pct:3'], seed: 0, runs: CATCH_RUNS });
    expect(r.verdict).toBe(verdict);
    if (code !== undefined) expect(r.report?.code).toBe(code);
    return renderResult(r);
  }

  const ownMigrateNoZap = drivers.get('dmirror-own-migrate-no-zap');

  it('migrate: a driver that does not zap its own migrations reaches a device page migrate_to_ram freed', async () => {
    await caught(migrate, ownMigrateNoZap, 'violation', 'use-after-free/at-free');
  });

  it('migrate: a migration that moves nothing fails the "in device memory" expectation', async () => {
    expect(await caught(migrate, noopMigrate, 'failed')).toMatch(/page 0 is not in device memory after the migration/);
  });

  it('migrate-fault: a driver that does not zap its own migrations is caught', async () => {
    await caught(migrateFault, ownMigrateNoZap, 'violation', 'use-after-free/at-free');
  });

  it('migrate-multiple: a driver that does not zap its own migrations is caught', async () => {
    await caught(migrateMultiple, ownMigrateNoZap, 'violation', 'use-after-free/at-free');
  });

  it('migrate-release: a release that evicts nothing fails the "left device memory" expectation', async () => {
    expect(await caught(migrateRelease, noopRelease, 'failed')).toMatch(/still in device memory after the release/);
  });

  it('migrate-release: a driver that skips the TLB shootdown keeps its translation of a device page the release evicts', async () => {
    await caught(migrateRelease, noTlbFlush, 'violation', 'invalidation/entry-after-callback');
  });

  it('migrate-shared: a driver that does not zap its own migrations reaches a shared page under a migration entry', async () => {
    await caught(migrateShared, ownMigrateNoZap, 'violation', 'translation/no-cpu-mapping');
  });

  it('migrate-shared: a migration that moves nothing is legal for shared memory (no false alarm)', async () => {
    await expectCoherent(migrateShared, { driver: noopMigrate, runs: 20 });
  });

  it("double-map: a driver that skips the TLB shootdown keeps device 0's translation after device 1 migrated the pages", async () => {
    await caught(doubleMap, drivers.get('dmirror-no-tlb-flush'), 'violation', 'invalidation/entry-after-callback');
  });

  it('double-map: a driver that does not zap its own migration keeps device 1 mapping the freed system pages', async () => {
    await caught(doubleMap, ownMigrateNoZap, 'violation', 'use-after-free/at-free');
  });

  it('snapshot: a migration that moves nothing shows as NONE, not DEV_PRIVATE_LOCAL|WRITE', async () => {
    expect(await caught(snapshot, noopMigrate, 'failed')).toMatch(/snapshot of page 5 \(device 0's memory\): expected 34, got 0/);
  });

  it('exclusive: a make_device_exclusive that makes nothing exclusive fails the CHECK_EXCLUSIVE expectation', async () => {
    expect(await caught(exclusive, noopExclusive, 'failed')).toMatch(/checkExclusive before any CPU access: expected -1, got 0/);
  });

  it('exclusive: a driver that skips the TLB shootdown keeps its atomic translation after the CPU revokes the exclusivity', async () => {
    await caught(exclusive, noTlbFlush, 'violation', 'invalidation/entry-after-callback');
  });

  it("exclusive-cow: a driver that keeps device mappings writable across fork is caught at fork's write-protect", async () => {
    expect(await caught(exclusiveCow, writableAcrossFork, 'violation', 'invalidation/entry-after-callback')).toMatch(/MMU_NOTIFY_PROTECTION_PAGE/);
  });
});
