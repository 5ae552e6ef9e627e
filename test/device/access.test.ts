/** Device accesses read and write the real bytes of the frames their translations point to. */
import { describe, expect, it } from 'vitest';
import { EINVAL, KernelError } from '../../src/sim/index.js';
import { ZERO_PFN } from '../../src/mm/index.js';
import { DEV_PTE_ATOMIC, DEV_PTE_WRITE, type DeviceOptions } from '../../src/device/index.js';
import { makeWorld, run, type World } from './helpers.js';

const A = 0x40_0000; // a device virtual address, page aligned

function world(opts: DeviceOptions = {}): World {
  return makeWorld({ frames: 256, deviceFrames: 64 }, opts);
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  return undefined;
}

describe('device accesses and frame bytes', () => {
  it('a device store lands in the system frame and PhysMem reads it back', async () => {
    const w = world();
    const pfn = w.phys.allocPage();
    const as = w.dev.createAddressSpace();
    as.map(A, pfn, DEV_PTE_WRITE);
    await run(w, async () => {
      await w.dev.launch(as, {}, async (ctx) => {
        await ctx.store(A + 8, 8, 0x1122334455667788n);
        await ctx.store(A + 16, 4, 0xdeadbeef);
        await ctx.store(A + 22, 2, 0xabcd);
        await ctx.store(A + 25, 1, 0x7f);
      }).join();
    });
    expect(w.phys.readU64(pfn, 8)).toBe(0x1122334455667788n);
    expect(w.phys.readU32(pfn, 16)).toBe(0xdeadbeef);
    expect(w.phys.readU32(pfn, 20)).toBe(0xabcd0000);
    expect(w.phys.readU32(pfn, 24)).toBe(0x7f00);
  });

  it('a device load reads what the CPU side wrote, at every size, little-endian', async () => {
    const w = world();
    const pfn = w.phys.allocPage();
    w.phys.writeU64(pfn, 64, 0x0807060504030201n);
    const as = w.dev.createAddressSpace();
    as.map(A, pfn);
    let got: bigint[] | undefined;
    await run(w, async () => {
      [got] = await w.dev.launch(as, {}, async (ctx) => [
        await ctx.load(A + 64, 8),
        await ctx.load(A + 64, 4),
        await ctx.load(A + 68, 4),
        await ctx.load(A + 66, 2),
        await ctx.load(A + 71, 1),
        await ctx.load(A + 200, 8),
      ]).join();
    });
    expect(got).toEqual([0x0807060504030201n, 0x04030201n, 0x08070605n, 0x0403n, 0x08n, 0n]);
  });

  it('accesses to a device frame touch that frame', async () => {
    const w = world();
    const dpfn = w.dev.memory!.allocPage();
    expect(w.phys.isDevicePfn(dpfn)).toBe(true);
    const as = w.dev.createAddressSpace();
    as.map(A, dpfn, DEV_PTE_WRITE | DEV_PTE_ATOMIC);
    await run(w, async () => {
      await w.dev.launch(as, {}, async (ctx) => {
        await ctx.store(A, 8, 41n);
        await ctx.atomicAdd(A, 8, 1n);
      }).join();
    });
    expect(w.phys.readU64(dpfn, 0)).toBe(42n);
  });

  it('atomicAdd and atomicCas return the old value and wrap modulo the word size', async () => {
    const w = world();
    const pfn = w.phys.allocPage();
    w.phys.writeU32(pfn, 0, 0xffffffff);
    w.phys.writeU64(pfn, 8, 5n);
    const as = w.dev.createAddressSpace();
    as.map(A, pfn, DEV_PTE_WRITE | DEV_PTE_ATOMIC);
    let r: bigint[] | undefined;
    await run(w, async () => {
      [r] = await w.dev.launch(as, {}, async (ctx) => [
        await ctx.atomicAdd(A, 4, 2),
        await ctx.atomicAdd(A + 8, 8, -6n),
        await ctx.atomicCas(A + 8, 8, 0n, 9n),
        await ctx.atomicCas(A + 8, 8, 0xffffffffffffffffn, 7n),
        await ctx.atomicCas(A, 4, 1, 3),
      ]).join();
    });
    expect(r).toEqual([0xffffffffn, 5n, 0xffffffffffffffffn, 0xffffffffffffffffn, 1n]);
    expect(w.phys.readU32(pfn, 0)).toBe(3);
    expect(w.phys.readU64(pfn, 8)).toBe(7n);
  });

  it('concurrent atomic increments from many warps all count', async () => {
    const w = world();
    const pfn = w.phys.allocPage();
    const as = w.dev.createAddressSpace();
    as.map(A, pfn, DEV_PTE_WRITE | DEV_PTE_ATOMIC);
    w.engine.spawn('main', async () => {
      await w.dev.launch(as, { warps: 8 }, async (ctx) => {
        for (let i = 0; i < 50; i++) await ctx.atomicAdd(A, 8, 1);
      }).join();
    });
    const engine = w.engine;
    const r = await engine.run();
    expect(r.ok).toBe(true);
    expect(w.phys.readU64(pfn, 0)).toBe(400n);
  });

  it('a store through a writable mapping of the zero page is a KernelBug', async () => {
    const w = world();
    const as = w.dev.createAddressSpace();
    as.map(A, ZERO_PFN, DEV_PTE_WRITE);
    w.engine.spawn('main', async () => {
      await w.dev.launch(as, {}, async (ctx) => ctx.store(A, 8, 1n)).join();
    });
    const r = await w.engine.run();
    expect(r.ok).toBe(false);
    expect((r.failure as { code?: string }).code).toBe('KERNEL_BUG');
    expect(r.failure!.message).toMatch(/zero page/);
  });

  it('bad access arguments throw KernelError EINVAL naming the value, before any time passes', async () => {
    const w = world();
    const pfn = w.phys.allocPage();
    const as = w.dev.createAddressSpace();
    as.map(A, pfn, DEV_PTE_WRITE | DEV_PTE_ATOMIC);
    const errs: unknown[] = [];
    let t = -1;
    await run(w, async () => {
      await w.dev.launch(as, {}, async (ctx) => {
        errs.push(await rejection(ctx.load(A, 3)));
        errs.push(await rejection(ctx.load(A + 2, 4)));
        errs.push(await rejection(ctx.load(-8, 8)));
        errs.push(await rejection(ctx.atomicAdd(A, 2, 1)));
        errs.push(await rejection(ctx.store(A, 1, 256)));
        errs.push(await rejection(ctx.store(A, 8, 2n ** 64n)));
        errs.push(await rejection(ctx.store(A, 4, 1.5)));
        t = w.engine.now;
      }).join();
    });
    expect(t).toBe(0);
    for (const e of errs) {
      expect(e).toBeInstanceOf(KernelError);
      expect((e as KernelError).errno).toBe(EINVAL);
    }
    expect(String(errs[0])).toMatch(/size must be 1, 2, 4 or 8: 3/);
    expect(String(errs[1])).toMatch(/not aligned/);
    expect(String(errs[4])).toMatch(/256/);
    expect(w.phys.pageIsZero(pfn)).toBe(true);
  });

  it('an access charges the TLB lookup, plus the page walk on a miss', async () => {
    const w = world({ cost: { tlbHitNs: 3, pageWalkNs: 40 } });
    const as = w.dev.createAddressSpace();
    as.map(A, w.phys.allocPage());
    const times: number[] = [];
    await run(w, async () => {
      await w.dev.launch(as, {}, async (ctx) => {
        await ctx.load(A, 8);
        times.push(w.engine.now);
        await ctx.load(A + 8, 8);
        times.push(w.engine.now);
      }).join();
    });
    expect(times).toEqual([43, 46]);
    expect(w.dev.stats.tlbMisses).toBe(1);
    expect(w.dev.stats.tlbHits).toBe(1);
    expect(w.dev.stats.pageWalks).toBe(1);
  });

  it('loads of a page the CPU rewrites see the new bytes (no data cache)', async () => {
    const w = world();
    const pfn = w.phys.allocPage();
    const as = w.dev.createAddressSpace();
    as.map(A, pfn);
    const seen: bigint[] = [];
    await run(w, async () => {
      const job = w.dev.launch(as, {}, async (ctx) => {
        for (let i = 0; i < 3; i++) {
          seen.push(await ctx.load(A, 8)); // at 101, 1102, 2103 ns
          await w.engine.sleep(1000);
        }
      });
      for (let i = 1; i <= 3; i++) {
        w.phys.writeU64(pfn, 0, BigInt(i)); // at 0, 1000, 2000 ns
        await w.engine.sleep(1000);
      }
      await job.join();
    });
    expect(seen).toEqual([1n, 2n, 3n]);
  });
});
