/**
 * The scenario catalogue: every scenario file of scenarios/, for the runner, the CLI and the
 * tests. RACE_SCENARIOS are the races each broken driver of the catalogue is caught on.
 */
import type { Scenario } from 'hmm-emu';
import { deviceFaultVsMunmap } from './device-fault-vs-munmap.js';
import { deviceMigrationVsCpuFault } from './device-migration-vs-cpu-fault.js';
import { deviceWriteVsMprotect } from './device-write-vs-mprotect.js';
import { forkWhileMirrored } from './fork-while-mirrored.js';
import { hmm2015FaultVsMunmap } from './hmm2015-fault-vs-munmap.js';
import { invalidationOnNonBlockableRange } from './invalidation-on-non-blockable-range.js';
import { deviceFaultWokenMunmap } from './device-fault-woken-munmap.js';
import { twoTableFaultVsMadvise } from './two-table-fault-vs-madvise.js';
import { oomReaperVsDeviceFault } from './oom-reaper-vs-device-fault.js';
import { api2015VsModern } from './api-2015-vs-modern.js';

export {
  deviceFaultVsMunmap,
  deviceMigrationVsCpuFault,
  deviceWriteVsMprotect,
  forkWhileMirrored,
  hmm2015FaultVsMunmap,
  invalidationOnNonBlockableRange,
  deviceFaultWokenMunmap,
  twoTableFaultVsMadvise,
  oomReaperVsDeviceFault,
  api2015VsModern,
};

/**
 * Targeted races: each aims one CPU operation at the inside of a fault's service (or at a busy
 * device, for the OOM reaper), where the broken drivers of drivers/buggy that the race
 * scenarios cannot reach are caught.
 */
export const TARGETED_SCENARIOS: readonly Scenario[] = [deviceFaultWokenMunmap, twoTableFaultVsMadvise, oomReaperVsDeviceFault];

/** The race scenarios. */
export const RACE_SCENARIOS: readonly Scenario[] = [
  deviceFaultVsMunmap,
  deviceWriteVsMprotect,
  forkWhileMirrored,
  deviceMigrationVsCpuFault,
  invalidationOnNonBlockableRange,
  hmm2015FaultVsMunmap,
];

/** Workloads meant for `hmm-emu run <name> --compare`: the same work on several drivers. */
export const COMPARISON_SCENARIOS: readonly Scenario[] = [api2015VsModern];

/** Every scenario, in listing order. */
export const SCENARIOS: readonly Scenario[] = [...RACE_SCENARIOS, ...TARGETED_SCENARIOS, ...COMPARISON_SCENARIOS];

/** The scenario named `name`, or undefined. */
export function findScenario(name: string): Scenario | undefined {
  return SCENARIOS.find((s) => s.name === name);
}
