/** The driver registry and the scenario catalogue, as the CLI will list them. */
import { describe, expect, it } from 'vitest';
import { DriverRegistry, describeSelector, selectorRejects } from 'hmm-emu/testing';
import { ALL_DRIVERS, REFERENCE_DRIVERS, drivers, registerDriver } from '../../drivers/index.js';
import { RACE_SCENARIOS, SCENARIOS, findScenario } from '../../scenarios/index.js';
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
  it('has the six race scenarios, uniquely named, each applying to some reference driver', () => {
    expect(RACE_SCENARIOS.map((s) => s.name)).toEqual([
      'device-fault-vs-munmap',
      'device-write-vs-mprotect',
      'fork-while-mirrored',
      'device-migration-vs-cpu-fault',
      'invalidation-on-non-blockable-range',
      'hmm2015-fault-vs-munmap',
    ]);
    expect(new Set(SCENARIOS.map((s) => s.name)).size).toBe(SCENARIOS.length);
    for (const s of SCENARIOS) {
      expect(drivers.select(s.drivers, 'reference').length, s.name).toBeGreaterThan(0);
      expect(s.description.length, s.name).toBeGreaterThan(20);
      expect(s.tags, s.name).toContain('race');
    }
    expect(findScenario('fork-while-mirrored')?.name).toBe('fork-while-mirrored');
    expect(findScenario('nope')).toBeUndefined();
  });
});
