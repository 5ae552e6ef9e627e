/**
 * The scenario catalogue: every scenario file of scenarios/, for the runner, the CLI and the
 * tests, in four groups:
 *
 *   HMM_TESTS_SCENARIOS   ports of tools/testing/selftests/mm/hmm-tests.c (anon_*, migrate*,
 *                         double_map, snapshot, exclusive*), driver-generic where the test is
 *   RACE_SCENARIOS        the races each broken driver of drivers/buggy is caught on, and the
 *                         races of bug classes the kernel has fixed (CPU migration, many CPU
 *                         threads on one device page, eviction under oversubscription, exit)
 *   TARGETED_SCENARIOS    one CPU operation aimed inside a fault's service
 *   COMPARISON_SCENARIOS  one workload for `hmm-emu run <name> --compare`
 */
import type { Scenario } from 'hmm-emu';
import { anonRead } from './anon-read.js';
import { anonReadProt } from './anon-read-prot.js';
import { anonTeardown } from './anon-teardown.js';
import { anonWrite } from './anon-write.js';
import { anonWriteChild } from './anon-write-child.js';
import { anonWriteChildShared } from './anon-write-child-shared.js';
import { anonWriteProt } from './anon-write-prot.js';
import { api2015VsModern } from './api-2015-vs-modern.js';
import { cpuMigrationWhileMirrored } from './cpu-migration-while-mirrored.js';
import { deviceFaultVsMunmap } from './device-fault-vs-munmap.js';
import { deviceFaultWokenMunmap } from './device-fault-woken-munmap.js';
import { deviceMigrationVsCpuFault } from './device-migration-vs-cpu-fault.js';
import { deviceWriteVsMprotect } from './device-write-vs-mprotect.js';
import { doubleMap } from './double-map.js';
import { evictionStorm } from './eviction-storm.js';
import { exclusive } from './exclusive.js';
import { exclusiveCow } from './exclusive-cow.js';
import { exitWithFaultsInFlight } from './exit-with-faults-in-flight.js';
import { forkWhileMirrored } from './fork-while-mirrored.js';
import { hmm2015FaultVsMunmap } from './hmm2015-fault-vs-munmap.js';
import { invalidationOnNonBlockableRange } from './invalidation-on-non-blockable-range.js';
import { manyCpuThreadsOneDevicePage } from './many-cpu-threads-one-device-page.js';
import { migrate } from './migrate.js';
import { migrateFault } from './migrate-fault.js';
import { migrateMultiple } from './migrate-multiple.js';
import { migrateRelease } from './migrate-release.js';
import { migrateShared } from './migrate-shared.js';
import { oomReaperVsDeviceFault } from './oom-reaper-vs-device-fault.js';
import { snapshot } from './snapshot.js';
import { twoTableFaultVsMadvise } from './two-table-fault-vs-madvise.js';

export {
  anonRead,
  anonReadProt,
  anonTeardown,
  anonWrite,
  anonWriteChild,
  anonWriteChildShared,
  anonWriteProt,
  api2015VsModern,
  cpuMigrationWhileMirrored,
  deviceFaultVsMunmap,
  deviceFaultWokenMunmap,
  deviceMigrationVsCpuFault,
  deviceWriteVsMprotect,
  doubleMap,
  evictionStorm,
  exclusive,
  exclusiveCow,
  exitWithFaultsInFlight,
  forkWhileMirrored,
  hmm2015FaultVsMunmap,
  invalidationOnNonBlockableRange,
  manyCpuThreadsOneDevicePage,
  migrate,
  migrateFault,
  migrateMultiple,
  migrateRelease,
  migrateShared,
  oomReaperVsDeviceFault,
  snapshot,
  twoTableFaultVsMadvise,
};

/** The hmm-tests.c ports, in the kernel file's order. */
export const HMM_TESTS_SCENARIOS: readonly Scenario[] = [
  anonRead,
  anonReadProt,
  anonWrite,
  anonWriteProt,
  anonWriteChild,
  anonWriteChildShared,
  migrate,
  migrateFault,
  migrateRelease,
  migrateShared,
  migrateMultiple,
  anonTeardown,
  snapshot,
  doubleMap,
  exclusive,
  exclusiveCow,
];

/** The race scenarios the broken drivers are caught on (the first six), then the later races. */
export const RACE_SCENARIOS: readonly Scenario[] = [
  deviceFaultVsMunmap,
  deviceWriteVsMprotect,
  forkWhileMirrored,
  deviceMigrationVsCpuFault,
  invalidationOnNonBlockableRange,
  hmm2015FaultVsMunmap,
  cpuMigrationWhileMirrored,
  manyCpuThreadsOneDevicePage,
  evictionStorm,
  exitWithFaultsInFlight,
];

/**
 * Targeted races: each aims one CPU operation at the inside of a fault's service (or at a busy
 * device, for the OOM reaper), where the broken drivers of drivers/buggy that the race
 * scenarios cannot reach are caught.
 */
export const TARGETED_SCENARIOS: readonly Scenario[] = [deviceFaultWokenMunmap, twoTableFaultVsMadvise, oomReaperVsDeviceFault];

/** Workloads meant for `hmm-emu run <name> --compare`: the same work on several drivers. */
export const COMPARISON_SCENARIOS: readonly Scenario[] = [api2015VsModern];

/** Every scenario, in listing order. */
export const SCENARIOS: readonly Scenario[] = [...HMM_TESTS_SCENARIOS, ...RACE_SCENARIOS, ...TARGETED_SCENARIOS, ...COMPARISON_SCENARIOS];

/** The scenario named `name` (hmm-tests spellings with underscores work too), or undefined. */
export function findScenario(name: string): Scenario | undefined {
  return SCENARIOS.find((s) => s.name === name) ?? SCENARIOS.find((s) => s.name === name.replace(/_/g, '-'));
}
