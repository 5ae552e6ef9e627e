/** Reference drivers under the migration, non-blockable and 2015-API races. */
import { deviceMigrationVsCpuFault, hmm2015FaultVsMunmap, invalidationOnNonBlockableRange } from '../../scenarios/index.js';
import { raceSuite } from './race-suite.js';

raceSuite([deviceMigrationVsCpuFault, invalidationOnNonBlockableRange, hmm2015FaultVsMunmap]);
