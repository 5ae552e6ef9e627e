/** src/check: the coherency oracle, its reference memory, violation reports and the teardown audit. */
export { Oracle, attachOracle, ORACLE_EVENTS } from './oracle.js';
export type { OracleOptions, OracleStats } from './oracle.js';
export { DeviceWatch, subName } from './watch.js';
export type { WatchDeviceOptions, NotifierSub, ShadowEntry, Obligation } from './watch.js';
export { ViolationReport, CoherencyViolation, COHERENCY_VIOLATION, formatEvent, formatEventFields, formatFrame, frameInfo } from './report.js';
export type { FrameInfo, ViolationInit } from './report.js';
export { ORACLE_RULES, ORACLE_CHECKS, RULE_TITLES } from './rules.js';
export type { OracleRule, OracleCheck, CheckedRule } from './rules.js';
export { classifyFailure } from './lock.js';
export { ReferenceMemory } from './reference-memory.js';
export type { RefPage, Mismatch } from './reference-memory.js';
export { cpuTarget } from './translation.js';
export type { CpuTarget } from './translation.js';
export { permissionOnly, legitimateSkip } from './invalidation.js';
export type { ActiveRange } from './invalidation.js';
export { EventRing, History } from './history.js';
export type { HistoryQuery } from './history.js';
