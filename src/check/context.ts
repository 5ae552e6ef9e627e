/**
 * What a rule module needs from the oracle: the engine, physical memory (read only), the mm
 * names for messages, and a way to report. Reports made through `report` get the page's
 * history attached and fail the run (see oracle.ts).
 */
import type { Engine } from '../sim/index.js';
import type { PhysMem } from '../mm/index.js';
import type { ViolationInit } from './report.js';

export interface OracleContext {
  readonly engine: Engine;
  readonly phys: PhysMem;
  /** Records the violation (with the page's history) and fails the run if the oracle is set to. */
  report(init: ViolationInit): void;
  /** The name of mm `id` for messages (`mm<id>` if unknown). */
  mmName(id: number): string;
}

/** `0x...`. */
export function hex(n: number): string {
  return `0x${n.toString(16)}`;
}
