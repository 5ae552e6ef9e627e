/** Test helpers: an engine, physical memory and an mm, with the body run in one task. */
import { expect } from 'vitest';
import { Engine, KernelError, type RunResult } from '../../src/sim/index.js';
import { PhysMem, createMm, type MmStruct, PAGE_SIZE } from '../../src/mm/index.js';

export interface MmWorld {
  readonly engine: Engine;
  readonly phys: PhysMem;
  readonly mm: MmStruct;
}

/** Runs `body` in a task named "cpu0" on a fresh world; fails the test if the run fails. */
export async function inMm(body: (w: MmWorld) => Promise<void>, opts: { frames?: number; strategy?: string; seed?: number } = {}): Promise<RunResult> {
  const engine = new Engine({ strategy: opts.strategy ?? 'fifo', seed: opts.seed ?? 0 });
  const phys = new PhysMem(engine, { frames: opts.frames ?? 4096 });
  const mm = createMm(engine, phys, { name: 'mm' });
  engine.spawn('cpu0', async () => body({ engine, phys, mm }));
  const r = await engine.run();
  if (!r.ok) throw r.failure;
  return r;
}

/** Expects `p` to reject with a KernelError of `errno`; returns the error. */
export async function expectErrno(p: Promise<unknown>, errno: number): Promise<KernelError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err, 'expected a KernelError').toBeInstanceOf(KernelError);
  expect((err as KernelError).errno).toBe(errno);
  return err as KernelError;
}

/** A comparable snapshot of an mm's visible state: VMAs, page-table entries, frame usage. */
export function snapshot(w: MmWorld): string {
  const vmas = w.mm.vmas.all.map((v) => `${v.start}-${v.end}:${v.flags}:${v.shmem?.id ?? 0}:${v.pgoff}`);
  const ptes: string[] = [];
  for (const v of w.mm.vmas.all) {
    w.mm.pgtable.forEachLeaf(v.start / PAGE_SIZE, v.end / PAGE_SIZE, (leaf, from, to, base) => {
      for (let i = from; i < to; i++) if (leaf.bits[i] !== 0) ptes.push(`${base + i}:${leaf.pfn[i]}:${leaf.bits[i]}`);
    });
  }
  return JSON.stringify({ vmas, ptes, used: w.phys.usedSystemFrames(), state: w.mm.state });
}

export const bytes = (...xs: number[]): Uint8Array => Uint8Array.from(xs);
