/**
 * The data rule and the teardown audit against the real mm: random sequences of mmap (private
 * and shared), stores, loads, fork, mremap (move and DONTUNMAP), madvise(DONTNEED), mprotect,
 * munmap, CPU migration and exit keep the oracle quiet: its reference memory agrees with the
 * mm's semantics, and every frame is free again after exit.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Engine, KernelError } from '../../src/sim/index.js';
import {
  MADV_DONTNEED,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  MAP_SHARED,
  MREMAP_DONTUNMAP,
  MREMAP_FIXED,
  MREMAP_MAYMOVE,
  type MmStruct,
  PROT_READ,
  PhysMem,
  SegvError,
  cpuRead,
  cpuWrite64,
  createMm,
  exitMm,
  fork,
  madvise,
  migratePages,
  mmap,
  mprotect,
  mremap,
  munmap,
} from '../../src/mm/index.js';
import { type ViolationReport, attachOracle } from '../../src/check/index.js';
import { P, RW } from './helpers.js';

const BASE = 0x2000_0000;
const PAGES = 12;

type Op =
  | { op: 'mmap'; page: number; n: number; shared: boolean }
  | { op: 'store'; page: number; word: number; value: bigint }
  | { op: 'load'; page: number }
  | { op: 'fork' }
  | { op: 'mremap'; page: number; n: number; to: number; dontunmap: boolean }
  | { op: 'madvise'; page: number; n: number }
  | { op: 'mprotect'; page: number; n: number; ro: boolean }
  | { op: 'munmap'; page: number; n: number }
  | { op: 'migrate' }
  | { op: 'switch'; to: number };

const page = fc.integer({ min: 0, max: PAGES - 1 });
const n = fc.integer({ min: 1, max: 3 });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ op: fc.constant('mmap' as const), page, n, shared: fc.boolean() }),
  fc.record({ op: fc.constant('store' as const), page, word: fc.integer({ min: 0, max: 3 }), value: fc.bigInt({ min: 1n, max: 1000n }) }),
  fc.record({ op: fc.constant('store' as const), page, word: fc.integer({ min: 0, max: 3 }), value: fc.bigInt({ min: 1n, max: 1000n }) }),
  fc.record({ op: fc.constant('load' as const), page }),
  fc.record({ op: fc.constant('load' as const), page }),
  fc.record({ op: fc.constant('fork' as const) }),
  fc.record({ op: fc.constant('mremap' as const), page, n, to: page, dontunmap: fc.boolean() }),
  fc.record({ op: fc.constant('madvise' as const), page, n }),
  fc.record({ op: fc.constant('mprotect' as const), page, n, ro: fc.boolean() }),
  fc.record({ op: fc.constant('munmap' as const), page, n }),
  fc.record({ op: fc.constant('migrate' as const) }),
  fc.record({ op: fc.constant('switch' as const), to: fc.integer({ min: 0, max: 3 }) }),
);

/** Runs one sequence with the oracle attached; returns what it found (the run's and finish()'s). */
async function runOps(ops: readonly Op[], seen: { cpu: number }): Promise<readonly ViolationReport[]> {
  const engine = new Engine();
  const phys = new PhysMem(engine, { frames: 1024, maxDeviceFrames: 0 });
  const oracle = attachOracle(engine, { phys, failRun: false });
  const mms: MmStruct[] = [createMm(engine, phys, { name: 'p0' })];
  let cur = 0;
  const start: Op[] = [
    { op: 'mmap', page: 0, n: 8, shared: false },
    { op: 'mmap', page: 8, n: 4, shared: true },
  ];
  engine.spawn('cpu', async () => {
    for (const o of [...start, ...ops]) {
      const mm = mms[cur]!;
      const at = (p: number): number => BASE + p * P;
      try {
        switch (o.op) {
          case 'mmap':
            await mmap(mm, at(o.page), o.n * P, RW, (o.shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS | MAP_FIXED);
            break;
          case 'store':
            await cpuWrite64(mm, at(o.page) + 8 * o.word, o.value);
            break;
          case 'load':
            await cpuRead(mm, at(o.page), P);
            break;
          case 'fork':
            if (mms.length < 4) {
              const child = await fork(mm);
              oracle.watchMm(child);
              mms.push(child);
            }
            break;
          case 'mremap':
            await mremap(mm, at(o.page), o.n * P, o.n * P, MREMAP_MAYMOVE | (o.dontunmap ? MREMAP_DONTUNMAP : MREMAP_FIXED), at(o.to));
            break;
          case 'madvise':
            await madvise(mm, at(o.page), o.n * P, MADV_DONTNEED);
            break;
          case 'mprotect':
            await mprotect(mm, at(o.page), o.n * P, o.ro ? PROT_READ : RW);
            break;
          case 'munmap':
            await munmap(mm, at(o.page), o.n * P);
            break;
          case 'migrate':
            await migratePages(mm, BASE, BASE + PAGES * P);
            break;
          case 'switch':
            cur = o.to % mms.length;
            break;
        }
      } catch (e) {
        if (!(e instanceof KernelError) && !(e instanceof SegvError)) throw e;
      }
    }
    for (const mm of mms) await exitMm(mm);
  });
  oracle.watchMm(mms[0]!);
  const r = await engine.run();
  if (!r.ok) throw r.failure;
  seen.cpu += oracle.stats.cpuAccesses;
  return oracle.finish();
}

describe('the oracle against random mm call sequences', () => {
  it('stays quiet: the reference memory follows fork, sharing, mremap, madvise, migration and exit', async () => {
    const seen = { cpu: 0 };
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 15, maxLength: 40 }), async (ops) => {
        const found = await runOps(ops, seen);
        if (found.length > 0) throw new Error(found[0]!.render());
      }),
      { numRuns: 300, seed: 7 },
    );
    expect(seen.cpu).toBeGreaterThan(1000);
  });
});
