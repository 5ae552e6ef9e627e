/** Reference drivers under the CPU-operation races: munmap, mprotect, fork. */
import { deviceFaultVsMunmap, deviceWriteVsMprotect, forkWhileMirrored } from '../../scenarios/index.js';
import { raceSuite } from './race-suite.js';

raceSuite([deviceFaultVsMunmap, deviceWriteVsMprotect, forkWhileMirrored]);
