/** The driver registry and the scenario catalogue, as the CLI will list them. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { DriverRegistry, describeSelector, selectorRejects } from 'hmm-emu/testing';
import { ALL_DRIVERS, REFERENCE_DRIVERS, drivers, registerDriver } from '../../drivers/index.js';
import { COMPARISON_SCENARIOS, HMM_TESTS_SCENARIOS, RACE_SCENARIOS, SCENARIOS, TARGETED_SCENARIOS, findScenario } from '../../scenarios/index.js';
import { miniDriver } from './mini-driver.js';

describe('the driver registry', () => {
  it('lists the reference drivers with their API generation and features', () => {
    expect(drivers.list('reference').map((d) => [d.name, d.api, d.features.join(',')])).toEqual([
      ['dmirror', 'modern', 'device-migration,migrate-to-system,snapshot,exclusive,release'],
      ['hmm2015', '2015', ''],
      ['mockgpu', 'modern', 'device-migration,oversubscription'],
    ]);
    expect(REFERENCE_DRIVERS.every((d) => d.kind === 'reference')).toBe(true);
    expect(drivers.size).toBeGreaterThanOrEqual(ALL_DRIVERS.length);
  });

  it('takes new drivers by registration and refuses a taken name', () => {
    const reg = new DriverRegistry(REFERENCE_DRIVERS);
    reg.add(miniDriver('skip-zap'));
    expect(reg.get('mini-skip-zap').kind).toBe('buggy');
    expect(reg.list('buggy').map((d) => d.name)).toEqual(['mini-skip-zap']);
    expect(() => reg.add(miniDriver('skip-zap'))).toThrow(/already registered/);
    expect(() => registerDriver(drivers.get('dmirror'))).toThrow(/already registered/);
    expect(() => reg.get('nope')).toThrow(/no driver named "nope" \(known: dmirror, hmm2015, mockgpu, mini-skip-zap\)/);
  });

  it('selects drivers by name (a variant matches through its base), API and features', () => {
    const reg = new DriverRegistry([...REFERENCE_DRIVERS, { ...miniDriver('skip-zap'), base: 'dmirror' }]);
    expect(reg.select(['dmirror']).map((d) => d.name)).toEqual(['dmirror', 'mini-skip-zap']);
    expect(reg.select({ api: '2015' }).map((d) => d.name)).toEqual(['hmm2015']);
    expect(reg.select({ features: ['migrate-to-system'] }, 'reference').map((d) => d.name)).toEqual(['dmirror']);
    expect(selectorRejects({ api: 'modern' }, drivers.get('hmm2015'))).toBe('it needs the modern API, hmm2015 is 2015');
    expect(describeSelector({ api: 'modern', features: ['device-migration'] })).toBe('modern API, features device-migration');
  });
});

describe('the scenario catalogue', () => {
  it('groups the hmm-tests ports, the races, the targeted races and the comparison, uniquely named', () => {
    expect(HMM_TESTS_SCENARIOS.map((s) => s.name)).toEqual([
      'anon-read',
      'anon-read-prot',
      'anon-write',
      'anon-write-prot',
      'anon-write-child',
      'anon-write-child-shared',
      'migrate',
      'migrate-fault',
      'migrate-release',
      'migrate-shared',
      'migrate-multiple',
      'anon-teardown',
      'snapshot',
      'double-map',
      'exclusive',
      'exclusive-cow',
    ]);
    expect(RACE_SCENARIOS.map((s) => s.name)).toEqual([
      'device-fault-vs-munmap',
      'device-write-vs-mprotect',
      'fork-while-mirrored',
      'device-migration-vs-cpu-fault',
      'invalidation-on-non-blockable-range',
      'hmm2015-fault-vs-munmap',
      'cpu-migration-while-mirrored',
      'many-cpu-threads-one-device-page',
      'eviction-storm',
      'exit-with-faults-in-flight',
    ]);
    expect(SCENARIOS).toHaveLength(HMM_TESTS_SCENARIOS.length + RACE_SCENARIOS.length + TARGETED_SCENARIOS.length + COMPARISON_SCENARIOS.length);
    expect(new Set(SCENARIOS.map((s) => s.name)).size).toBe(SCENARIOS.length);
  });

  it('every scenario applies to some reference driver, describes itself and names the kernel test or bug it comes from', () => {
    for (const s of SCENARIOS) {
      expect(drivers.select(s.drivers, 'reference').length, s.name).toBeGreaterThan(0);
      expect(s.description.length, s.name).toBeGreaterThan(20);
      expect(s.origin.length, s.name).toBeGreaterThan(10);
    }
    for (const s of HMM_TESTS_SCENARIOS) expect(s.origin, s.name).toMatch(/^tools\/testing\/selftests\/mm\/hmm-tests\.c: (hmm2\.)?[a-z_]+$/);
    for (const s of [...RACE_SCENARIOS, ...TARGETED_SCENARIOS]) expect(s.tags, s.name).toContain('race');
  });

  it('docs/scenarios.md lists every bundled scenario with its origin', () => {
    const doc = readFileSync(new URL('../../docs/scenarios.md', import.meta.url), 'utf8');
    for (const s of SCENARIOS) expect(doc, s.name).toContain(`| \`${s.name}\` | ${s.origin.replace(/\|/g, '\\|')} |`);
  });

  it('finds a scenario by name, or by its hmm-tests spelling', () => {
    expect(findScenario('fork-while-mirrored')?.name).toBe('fork-while-mirrored');
    expect(findScenario('anon_write_child_shared')?.name).toBe('anon-write-child-shared');
    expect(findScenario('nope')).toBeUndefined();
  });
});
