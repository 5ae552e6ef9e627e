/**
 * The decision log: every nondeterministic decision of a run, in order. Two kinds share one
 * sequence: which task runs at a scheduling point where more than one task is runnable (the
 * chosen task's id), and each `engine.choose(n)` with n > 1 (the chosen value). Decisions
 * with a single option are not logged: they are forced, so a replay makes them again.
 *
 * A run is identified by `{ seed, strategy, decisions }`. `formatSchedule` writes it as one
 * short printable string (varint + run-length, base64url); `parseSchedule` reads it back.
 */
import { EINVAL, KernelError } from './errors.js';

/** A serializable run schedule: enough to replay the run exactly. */
export interface Schedule {
  readonly seed: number;
  /** The strategy spec that produced it, e.g. `pct:2:k=140` (see `parseStrategy`). */
  readonly strategy: string;
  readonly decisions: readonly number[];
}

const PREFIX = 'hmm1';

function pushVarint(out: number[], v: number): void {
  while (v > 0x7f) {
    out.push((v & 0x7f) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
}

/** Encodes decisions as (value, repeat) varint pairs: schedules repeat the same task often. */
export function encodeDecisions(decisions: readonly number[]): string {
  const bytes: number[] = [];
  for (let i = 0; i < decisions.length; ) {
    const v = decisions[i]!;
    let j = i + 1;
    while (j < decisions.length && decisions[j] === v) j++;
    pushVarint(bytes, v);
    pushVarint(bytes, j - i);
    i = j;
  }
  return Buffer.from(bytes).toString('base64url');
}

export function decodeDecisions(text: string): number[] {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) {
    throw new KernelError(EINVAL, `decision data is not base64url: ${JSON.stringify(text.slice(0, 40))}`);
  }
  const bytes = Buffer.from(text, 'base64url');
  const out: number[] = [];
  let i = 0;
  const read = (): number => {
    let v = 0;
    let mul = 1;
    for (;;) {
      if (i >= bytes.length) throw new KernelError(EINVAL, 'decision data is truncated');
      const b = bytes[i++]!;
      v += (b & 0x7f) * mul;
      if (b < 0x80) return v;
      mul *= 128;
      if (mul > 2 ** 49) throw new KernelError(EINVAL, 'decision data has an oversized number');
    }
  };
  while (i < bytes.length) {
    const v = read();
    const n = read();
    if (n === 0 || out.length + n > 100_000_000) throw new KernelError(EINVAL, `decision data has a bad run length ${n}`);
    for (let k = 0; k < n; k++) out.push(v);
  }
  return out;
}

/** `hmm1;<strategy>;<seed>;<decisions>`: printable, shell-safe when quoted, and short. */
export function formatSchedule(s: Schedule): string {
  return `${PREFIX};${s.strategy};${s.seed};${encodeDecisions(s.decisions)}`;
}

export function parseSchedule(text: string): Schedule {
  const parts = text.trim().split(';');
  if (parts.length !== 4 || parts[0] !== PREFIX) {
    throw new KernelError(EINVAL, `not a schedule string (expected "${PREFIX};strategy;seed;data"): ${JSON.stringify(text.slice(0, 60))}`);
  }
  const [, strategy, seedText, data] = parts as [string, string, string, string];
  const seed = Number(seedText);
  if (!/^\d+$/.test(seedText) || !Number.isSafeInteger(seed) || seed > 0xffffffff) {
    throw new KernelError(EINVAL, `schedule seed must be an integer in [0, 2^32): ${JSON.stringify(seedText)}`);
  }
  if (strategy.length === 0) throw new KernelError(EINVAL, 'schedule has an empty strategy');
  return { seed, strategy, decisions: decodeDecisions(data) };
}

/** Validates a schedule read from JSON. */
export function scheduleFromJSON(value: unknown): Schedule {
  const v = value as Partial<Record<keyof Schedule, unknown>> | null;
  if (typeof v !== 'object' || v === null) throw new KernelError(EINVAL, 'schedule JSON must be an object');
  if (typeof v.seed !== 'number' || !Number.isInteger(v.seed) || v.seed < 0 || v.seed > 0xffffffff) {
    throw new KernelError(EINVAL, `schedule seed must be an integer in [0, 2^32): ${String(v.seed)}`);
  }
  if (typeof v.strategy !== 'string' || v.strategy.length === 0) throw new KernelError(EINVAL, 'schedule strategy must be a non-empty string');
  if (!Array.isArray(v.decisions) || !v.decisions.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
    throw new KernelError(EINVAL, 'schedule decisions must be an array of non-negative integers');
  }
  return { seed: v.seed, strategy: v.strategy, decisions: v.decisions as number[] };
}
