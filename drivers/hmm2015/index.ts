/** drivers/hmm2015: a mock-GPU driver on the 2015 HMM mirror API (see README.md). */
export { Hmm2015Driver } from './driver.js';
export type { Hmm2015DriverOptions, Hmm2015DriverStats } from './driver.js';
export { coalesceFaults, accessRank } from './fault-batch.js';
export type { FaultGroup } from './fault-batch.js';
