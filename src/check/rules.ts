/**
 * The oracle's rules and the stable codes of the checks inside them.
 *
 * Each rule is stated precisely in docs/oracle.md, with the kernel contract it comes from. A
 * violation names its rule and its check: `translation/frame-mismatch`, `invalidation/entry-after-callback`, ...
 */

/** The rules of the oracle (the headings of docs/oracle.md). */
export const ORACLE_RULES = ['translation', 'invalidation', 'use-after-free', 'data', 'lock', 'teardown'] as const;

export type OracleRule = (typeof ORACLE_RULES)[number];

/** The rules the oracle checks as events arrive (the others come from the engine or from finish()). */
export type CheckedRule = 'translation' | 'invalidation' | 'use-after-free' | 'data';

/** Human titles of the rules, for reports. */
export const RULE_TITLES: Readonly<Record<OracleRule, string>> = {
  translation: 'translation coherence',
  invalidation: 'invalidation discipline',
  'use-after-free': 'no use after free',
  data: 'data',
  lock: 'lock discipline',
  teardown: 'teardown audit',
};

/** The checks of each rule (stable codes). */
export const ORACLE_CHECKS = {
  translation: ['no-cpu-mapping', 'frame-mismatch', 'write-not-permitted'],
  invalidation: ['entry-after-callback', 'install-during-invalidation'],
  'use-after-free': ['at-use', 'at-map', 'at-free'],
  data: ['stale-read'],
  lock: ['lockdep', 'deadlock', 'sleep-in-atomic'],
  teardown: ['device-mapping-left', 'stale-entry', 'mapcount', 'refcount', 'frame-leak', 'task-blocked'],
} as const satisfies Record<OracleRule, readonly string[]>;

export type OracleCheck = (typeof ORACLE_CHECKS)[OracleRule][number];
