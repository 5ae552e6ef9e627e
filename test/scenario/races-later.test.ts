/** Reference drivers under the later races: CPU page migration, many CPU threads on one device page, eviction under oversubscription, exit with faults in flight. */
import { cpuMigrationWhileMirrored, evictionStorm, exitWithFaultsInFlight, manyCpuThreadsOneDevicePage } from '../../scenarios/index.js';
import { raceSuite } from './race-suite.js';

raceSuite([cpuMigrationWhileMirrored, manyCpuThreadsOneDevicePage, evictionStorm, exitWithFaultsInFlight]);
