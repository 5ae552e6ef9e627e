/** The device TLB: set-associative LRU, stale entries until invalidated, asynchronous shootdown. */
import { describe, expect, it } from 'vitest';
import { EINVAL, Engine, KernelError, type TraceEvent } from '../../src/sim/index.js';
import { PAGE_SIZE, PhysMem } from '../../src/mm/index.js';
import { DEV_PTE_VALID, DEV_PTE_WRITE, Device, type DeviceOptions, Tlb } from '../../src/device/index.js';
import { makeWorld, run, type World } from './helpers.js';

const A = 0x40_0000;

function world(opts: DeviceOptions = {}): World {
  return makeWorld({ frames: 256, deviceFrames: 0 }, opts);
}

function entries(t: { forEach(fn: (vpn: number, pfn: number, flags: number) => void): void }): string[] {
  const out: string[] = [];
  t.forEach((vpn, pfn) => out.push(`${vpn}:${pfn}`));
  return out;
}

describe('Tlb (data structure)', () => {
  it('misses, fills, then hits; the entry carries pfn and flags', () => {
    const t = new Tlb(8, 2);
    expect(t.lookup(5)).toBe(-1);
    t.fill(5, 77, DEV_PTE_VALID | DEV_PTE_WRITE);
    const s = t.lookup(5);
    expect(s).toBeGreaterThanOrEqual(0);
    expect(t.pfn[s]).toBe(77);
    expect(t.flags[s]).toBe(DEV_PTE_VALID | DEV_PTE_WRITE);
    expect(t.size).toBe(1);
    expect(t.sets).toBe(4);
  });

  it('a full set evicts its least recently used way, not another set', () => {
    const t = new Tlb(8, 2); // 4 sets: vpns 0, 4, 8 share set 0
    t.fill(0, 100, DEV_PTE_VALID);
    t.fill(4, 104, DEV_PTE_VALID);
    t.fill(1, 101, DEV_PTE_VALID); // set 1, untouched by what follows
    t.lookup(0); // 4 is now LRU in set 0
    t.fill(8, 108, DEV_PTE_VALID);
    expect(t.peek(4)).toBe(-1);
    expect(t.peek(0)).toBe(100);
    expect(t.peek(8)).toBe(108);
    expect(t.peek(1)).toBe(101);
    expect(t.size).toBe(3);
  });

  it('associativity decides conflicts: direct-mapped thrashes where 2-way does not', () => {
    const direct = new Tlb(4, 1);
    const twoWay = new Tlb(4, 2);
    for (const t of [direct, twoWay]) {
      t.fill(0, 1, DEV_PTE_VALID);
      t.fill(4, 2, DEV_PTE_VALID); // same set as 0 in both geometries
    }
    expect(direct.peek(0)).toBe(-1);
    expect(twoWay.peek(0)).toBe(1);
  });

  it('fully associative TLBs (indexed) keep LRU order across all entries', () => {
    const t = new Tlb(64, 64);
    for (let v = 0; v < 64; v++) t.fill(v * 1000, v, DEV_PTE_VALID);
    t.lookup(0);
    t.fill(999_999, 5, DEV_PTE_VALID); // evicts vpn 1000, the LRU now
    expect(t.peek(1000)).toBe(-1);
    expect(t.peek(0)).toBe(0);
    expect(t.peek(999_999)).toBe(5);
    expect(t.size).toBe(64);
  });

  it('invalidateRange drops exactly the range, short or wide; invalidateAll drops all', () => {
    const t = new Tlb(64, 4);
    for (let v = 0; v < 32; v++) t.fill(v, v + 1, DEV_PTE_VALID);
    expect(t.invalidateRange(4, 6)).toBe(2);
    expect(t.invalidateRange(20, 2 ** 36)).toBe(12);
    expect(entries(t)).toEqual([0, 1, 2, 3, ...Array.from({ length: 14 }, (_, i) => i + 6)].map((v) => `${v}:${v + 1}`));
    expect(t.invalidateAll()).toBe(18);
    expect(t.size).toBe(0);
  });

  it('vpns above 2**32 index and match correctly', () => {
    const t = new Tlb(16, 4);
    const big = 2 ** 35 + 3;
    t.fill(big, 9, DEV_PTE_VALID);
    expect(t.peek(big)).toBe(9);
    expect(t.peek(3)).toBe(-1);
  });
});

describe('TLB in the device', () => {
  it('an unmapped page still hits the TLB and reads the OLD frame until invalidated', async () => {
    const w = world();
    const oldPfn = w.phys.allocPage();
    const newPfn = w.phys.allocPage();
    w.phys.writeU64(oldPfn, 0, 111n);
    w.phys.writeU64(newPfn, 0, 222n);
    const as = w.dev.createAddressSpace();
    as.map(A, oldPfn);
    const seen: bigint[] = [];
    await run(w, async () => {
      const job = w.dev.launch(as, {}, async (ctx) => {
        seen.push(await ctx.load(A, 8)); // fills the TLB
        as.unmap(A, A + PAGE_SIZE); // the buggy driver: page table only
        as.map(A, newPfn);
        seen.push(await ctx.load(A, 8)); // stale hit: old frame
        await w.dev.tlbInvalidate(as, A, A + PAGE_SIZE).wait();
        seen.push(await ctx.load(A, 8)); // walks: new frame
      });
      await job.join();
    });
    expect(seen).toEqual([111n, 111n, 222n]);
  });

  it('an invalidation completes only after tlbShootdownNs; until then accesses still hit', async () => {
    const w = world({ cost: { tlbShootdownNs: 500, tlbHitNs: 1, pageWalkNs: 100 } });
    const pfn = w.phys.allocPage();
    const as = w.dev.createAddressSpace();
    as.map(A, pfn);
    const log: string[] = [];
    await run(w, async () => {
      await w.dev.launch(as, {}, async (ctx) => ctx.load(A, 8)).join(); // TLB warm, t = 101
      as.unmap(A, A + PAGE_SIZE);
      const t0 = w.engine.now;
      const fence = w.dev.tlbInvalidate(as, A, A + PAGE_SIZE);
      expect(fence.done).toBe(false);
      expect(fence.completesAt).toBe(t0 + 500);
      expect(w.dev.pendingInvalidations).toBe(1);
      // In flight: a warp loading during the shootdown still hits the stale entry.
      const job = w.dev.launch(as, {}, async (ctx) => {
        await ctx.load(A, 8);
        log.push(`hit at +${w.engine.now - t0}`);
      });
      await job.join();
      expect(as.tlb.peek(A / PAGE_SIZE)).toBe(pfn);
      await fence.wait();
      log.push(`done at +${w.engine.now - t0}`);
      expect(fence.done).toBe(true);
      expect(as.tlb.size).toBe(0);
      await fence.wait(); // a completed fence returns at once
      log.push(`again at +${w.engine.now - t0}`);
    });
    expect(log).toEqual(['hit at +1', 'done at +500', 'again at +500']);
    expect(w.dev.stats.invalidations).toBe(1);
    expect(w.dev.stats.pagesInvalidated).toBe(1);
    expect(w.dev.stats.tlbEntriesInvalidated).toBe(1);
  });

  it('invalidations complete in issue order and emit issued then completed', async () => {
    const w = world({ cost: { tlbShootdownNs: 500 } });
    const as = w.dev.createAddressSpace();
    const events: string[] = [];
    w.engine.trace.on('device.tlb_invalidate', (e: TraceEvent<'device.tlb_invalidate'>) => events.push(`${e.phase}:${e.start}-${e.all ? 'all' : e.end}@${e.time}`));
    await run(w, async () => {
      const f1 = w.dev.tlbInvalidate(as, 0, PAGE_SIZE);
      await w.engine.sleep(100);
      const f2 = w.dev.tlbInvalidateAll(as);
      await f2.wait();
      expect(f1.done).toBe(true);
    });
    expect(events).toEqual(['issued:0-4096@0', 'issued:0-all@100', 'completed:0-4096@500', 'completed:0-all@600']);
    expect(w.dev.stats.invalidationsAll).toBe(1);
  });

  it('a driver that never waits still gets its entries dropped at completion time', async () => {
    const w = world({ cost: { tlbShootdownNs: 300 } });
    const as = w.dev.createAddressSpace();
    as.map(A, w.phys.allocPage());
    let sizeBefore = -1;
    await run(w, async () => {
      await w.dev.launch(as, {}, async (ctx) => ctx.load(A, 8)).join();
      w.dev.tlbInvalidateAll(as);
      await w.engine.sleep(299);
      sizeBefore = as.tlb.size;
    });
    expect(sizeBefore).toBe(1);
    expect(as.tlb.size).toBe(0);
  });

  it('an entry dropped during the lookup makes the access pay a second step for the walk', async () => {
    const w = world({ cost: { tlbHitNs: 50, pageWalkNs: 100, tlbShootdownNs: 10 } });
    const as = w.dev.createAddressSpace();
    as.map(A, w.phys.allocPage());
    let done = -1;
    await run(w, async () => {
      const job = w.dev.launch(as, {}, async (ctx) => {
        await ctx.load(A, 8); // miss: 150
        await w.engine.sleep(15);
        await ctx.load(A, 8); // predicted hit at 165, the entry goes at 170: walk, 215 + 100
        done = w.engine.now;
      });
      await w.engine.sleep(160);
      w.dev.tlbInvalidateAll(as);
      await job.join();
    });
    expect(done).toBe(315);
    expect([w.dev.stats.tlbMisses, w.dev.stats.pageWalks, w.dev.stats.tlbHits]).toEqual([2, 2, 0]);
  });

  it('the LRU entry is evicted from a small TLB and the access walks again', async () => {
    const w = world({ tlb: { entries: 2, ways: 2 } });
    const as = w.dev.createAddressSpace();
    for (let i = 0; i < 3; i++) as.map(A + i * PAGE_SIZE, w.phys.allocPage());
    await run(w, async () => {
      await w.dev.launch(as, {}, async (ctx) => {
        await ctx.load(A, 8); // miss
        await ctx.load(A + PAGE_SIZE, 8); // miss
        await ctx.load(A, 8); // hit; page 1 becomes LRU
        await ctx.load(A + 2 * PAGE_SIZE, 8); // miss, evicts page 1
        await ctx.load(A, 8); // hit
        await ctx.load(A + PAGE_SIZE, 8); // miss again
      }).join();
    });
    expect([w.dev.stats.tlbHits, w.dev.stats.tlbMisses, w.dev.stats.pageWalks]).toEqual([2, 4, 4]);
    expect(entries(as.tlb).map((e) => e.split(':')[0])).toEqual([String(A / PAGE_SIZE), String(A / PAGE_SIZE + 1)]);
  });

  it('permission upgrades need no invalidation: a write fault drops the read-only entry', async () => {
    const w = world();
    const pfn = w.phys.allocPage();
    const as = w.dev.createAddressSpace();
    as.map(A, pfn); // read-only
    await run(w, async () => {
      w.engine.spawn('driver', async () => {
        while (await w.dev.waitForInterrupt()) {
          for (const r of w.dev.faultBuffer.drain()) {
            expect(r.access).toBe('write');
            as.map(r.address, pfn, DEV_PTE_WRITE); // upgrade, no invalidation
          }
          w.dev.replay();
        }
      });
      await w.dev.launch(as, {}, async (ctx) => {
        await ctx.load(A, 8); // caches the read-only entry
        await ctx.store(A, 8, 5n); // faults on the cached entry, retries through the upgraded one
      }).join();
      w.dev.stop();
    });
    expect(w.phys.readU64(pfn, 0)).toBe(5n);
    expect(w.dev.stats.faults).toBe(1);
  });

  it('bad TLB geometry and bad ranges throw KernelError EINVAL with the value', () => {
    const e = new Engine();
    const phys = new PhysMem(e, { frames: 16, maxDeviceFrames: 0 });
    expect(() => new Device(e, phys, { memory: { frames: 0 }, tlb: { entries: 12, ways: 5 } })).toThrow(/tlb.ways .*: 5/);
    expect(() => new Device(e, phys, { memory: { frames: 0 }, tlb: { entries: 0 } })).toThrow(/tlb.entries .*: 0/);
    const dev = new Device(e, phys, { memory: { frames: 0 }, tlb: { entries: 24 } });
    expect(dev.createAddressSpace().tlb.ways).toBe(24);
    const as = dev.createAddressSpace();
    for (const [s, end] of [
      [1, PAGE_SIZE],
      [PAGE_SIZE * 2, PAGE_SIZE],
      [0, 2 ** 48 + PAGE_SIZE],
    ] as const) {
      let err: unknown;
      try {
        dev.tlbInvalidate(as, s, end);
      } catch (x) {
        err = x;
      }
      expect(err).toBeInstanceOf(KernelError);
      expect((err as KernelError).errno).toBe(EINVAL);
    }
    expect(dev.pendingInvalidations).toBe(0);
  });
});
