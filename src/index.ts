/** hmm-emu: the public API. Each layer is also available as a subpath (`hmm-emu/sim`, ...). */
export * from './sim/index.js';
export * from './notifier/index.js';
export * from './mm/index.js';
export * from './hmm/index.js';
export * from './device/index.js';
export * from './check/index.js';
export * from './scenario/index.js';
