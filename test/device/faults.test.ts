/** Faults: the fault buffer, overflow, the interrupt, replay and cancel, with a tiny driver. */
import { describe, expect, it } from 'vitest';
import { EFAULT, EINVAL, KernelError, type TraceEvent } from '../../src/sim/index.js';
import { PAGE_SIZE } from '../../src/mm/index.js';
import {
  DEV_PTE_ATOMIC,
  DEV_PTE_WRITE,
  DeviceFaultError,
  type DeviceAddressSpace,
  type DeviceOptions,
  FaultBuffer,
  type FaultRecord,
} from '../../src/device/index.js';
import { makeWorld, run, type World } from './helpers.js';

const A = 0x1000_0000;

function world(opts: DeviceOptions = {}, strategy = 'fifo', seed = 0): World {
  return makeWorld({ frames: 1024, deviceFrames: 0 }, opts, strategy, seed);
}

/**
 * The tiny driver: on each interrupt, handles overflow, maps every faulting page that is not
 * mapped (a fresh zeroed frame, writable and atomic), then replays. Records seen go to `seen`.
 */
function startDriver(w: World, as: DeviceAddressSpace, seen: FaultRecord[] = []): void {
  const { dev, phys, engine } = w;
  engine.spawn('driver', async () => {
    while (await dev.waitForInterrupt()) {
      const overflow = dev.faultBuffer.overflow;
      if (overflow) dev.faultBuffer.clearOverflow();
      for (const r of dev.faultBuffer.drain()) {
        seen.push(r);
        if (as.pageTable.flagsAt(r.address / PAGE_SIZE) === 0) as.map(r.address, phys.allocPage(), DEV_PTE_WRITE | DEV_PTE_ATOMIC);
      }
      await engine.sleep(2000); // servicing takes time: more faults pile up meanwhile
      dev.replay(as.asid);
    }
  });
}

describe('FaultBuffer (ring)', () => {
  it('records go in at PUT and come out at GET, oldest first, with their fields', () => {
    const fb = new FaultBuffer(4);
    expect(fb.push(0x1000, 1, 0, 1, 7, 10, 0)).toBe(true);
    expect(fb.push(0x2000, 2, 1, 1, 7, 11, 1)).toBe(true);
    expect([fb.get, fb.put, fb.length]).toEqual([0, 2, 2]);
    expect(fb.peek(1)).toEqual({ address: 0x2000, access: 'write', engine: 1, asid: 1, job: 7, time: 11, seq: 1 });
    expect(fb.drain(1).map((r) => r.access)).toEqual(['read']);
    expect(fb.read(1).address).toBe(0x2000);
    fb.setGet(2);
    expect(fb.length).toBe(0);
  });

  it('a full ring drops the record and sets the sticky overflow flag until cleared', () => {
    const fb = new FaultBuffer(2);
    fb.push(0x1000, 1, 0, 1, 1, 0, 0);
    fb.push(0x2000, 1, 0, 1, 1, 0, 1);
    expect(fb.push(0x3000, 1, 0, 1, 1, 0, 2)).toBe(false);
    expect(fb.overflow).toBe(true);
    expect(fb.drain().map((r) => r.seq)).toEqual([0, 1]);
    expect(fb.overflow).toBe(true);
    fb.clearOverflow();
    expect(fb.overflow).toBe(false);
  });

  it('GET/PUT wrap around; setGet to PUT on a full ring consumes everything', () => {
    const fb = new FaultBuffer(3);
    for (let i = 0; i < 3; i++) fb.push(i * PAGE_SIZE, 1, 0, 1, 1, 0, i);
    fb.drain(2);
    fb.push(3 * PAGE_SIZE, 1, 0, 1, 1, 0, 3);
    fb.push(4 * PAGE_SIZE, 1, 0, 1, 1, 0, 4);
    expect([fb.get, fb.put, fb.length]).toEqual([2, 2, 3]);
    expect([0, 1, 2].map((i) => fb.peek(i).seq)).toEqual([2, 3, 4]);
    fb.setGet(fb.put);
    expect(fb.length).toBe(0);
  });

  it('bad GET/PUT use throws KernelError EINVAL naming the slot', () => {
    const fb = new FaultBuffer(4);
    fb.push(0, 1, 0, 1, 1, 0, 0);
    expect(() => fb.read(1)).toThrow(/slot 1 holds no unread record/);
    expect(() => fb.setGet(2)).toThrow(/slot 2 is past PUT/);
    expect(() => fb.peek(-1)).toThrow(/-1/);
    expect(() => new FaultBuffer(0)).toThrow(/capacity .*: 0/);
    expect(fb.length).toBe(1);
  });
});

describe('faults in the device', () => {
  it('a load of an unmapped page faults, stalls, and completes after the driver maps and replays', async () => {
    const w = world({ cost: { tlbHitNs: 1, pageWalkNs: 100, faultNs: 1000, replayNs: 500 } });
    const as = w.dev.createAddressSpace();
    const seen: FaultRecord[] = [];
    startDriver(w, as, seen);
    let v: bigint | undefined;
    await run(w, async () => {
      [v] = await w.dev.launch(as, { name: 'k' }, async (ctx) => ctx.load(A + 24, 8)).join();
      w.dev.stop();
    });
    expect(v).toBe(0n);
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({ address: A, access: 'read', engine: 0, asid: as.asid, time: 1101, seq: 0 });
    // Fault detected at 101, visible at 1101, replay at 3101, retry walks: done at 3101 + 500 + 101.
    const lat = w.dev.stats.faultLatency();
    expect([lat.count, lat.minNs, lat.maxNs, lat.meanNs]).toEqual([1, 3601, 3601, 3601]);
    expect(lat.histogram).toEqual([0, 1, 0, 0, 0, 0]);
    expect(w.dev.stats.faults).toBe(1);
    expect(w.dev.stats.replays).toBe(1);
  });

  it('store on a read-only entry faults as write, atomic on a non-atomic entry as atomic', async () => {
    const w = world();
    const pfn = w.phys.allocPage();
    const as = w.dev.createAddressSpace();
    as.map(A, pfn);
    as.map(A + PAGE_SIZE, w.phys.allocPage(), DEV_PTE_WRITE);
    const kinds: string[] = [];
    w.engine.spawn('driver', async () => {
      while (await w.dev.waitForInterrupt()) {
        for (const r of w.dev.faultBuffer.drain()) {
          kinds.push(`${r.access}@${r.address - A}`);
          as.map(r.address, as.pageTable.pfnAt(r.address / PAGE_SIZE), DEV_PTE_WRITE | DEV_PTE_ATOMIC);
        }
        w.dev.replay();
      }
    });
    await run(w, async () => {
      await w.dev.launch(as, {}, async (ctx) => {
        await ctx.store(A, 4, 1);
        await ctx.atomicAdd(A + PAGE_SIZE, 4, 1);
      }).join();
      w.dev.stop();
    });
    expect(kinds).toEqual(['write@0', `atomic@${PAGE_SIZE}`]);
  });

  it('overflow: a tiny buffer drops records and sets the flag; clear, map, replay: everyone progresses', async () => {
    const w = world({ faultBufferEntries: 2 });
    const as = w.dev.createAddressSpace();
    const seen: FaultRecord[] = [];
    let overflows = 0;
    const seqs: number[] = [];
    w.engine.trace.on('device.fault', (e: TraceEvent<'device.fault'>) => {
      if (e.dropped) overflows++;
      seqs.push(e.recordSeq);
    });
    startDriver(w, as, seen);
    let sums: bigint[] = [];
    await run(w, async () => {
      const job = w.dev.launch(as, { warps: 16 }, async (ctx) => {
        const addr = A + ctx.warp * PAGE_SIZE;
        await ctx.store(addr, 8, BigInt(ctx.warp + 1));
        return ctx.load(addr, 8);
      });
      sums = await job.join();
      w.dev.stop();
    });
    expect(sums).toEqual(Array.from({ length: 16 }, (_, i) => BigInt(i + 1)));
    expect(overflows).toBeGreaterThan(0);
    expect(w.dev.stats.faultsDropped).toBe(overflows);
    expect(w.dev.stats.faults).toBe(seen.length);
    // Every page faulted at least once; a dropped fault recurred after a replay.
    expect(new Set(seen.map((r) => r.address)).size).toBe(16);
    // seq counts dropped faults too: written and dropped together number 0, 1, 2, ...
    expect(seqs).toEqual(Array.from({ length: seen.length + overflows }, (_, i) => i));
    expect(w.dev.faultBuffer.overflow).toBe(false);
  });

  it('replay releases only the stalled accesses of the address space named', async () => {
    const w = world();
    const as1 = w.dev.createAddressSpace();
    const as2 = w.dev.createAddressSpace();
    const order: string[] = [];
    await run(w, async () => {
      const j1 = w.dev.launch(as1, {}, async (ctx) => {
        await ctx.load(A, 8);
        order.push('as1');
      });
      const j2 = w.dev.launch(as2, {}, async (ctx) => {
        await ctx.load(A, 8);
        order.push('as2');
      });
      await w.engine.sleep(5000);
      expect([as1.stalledAccesses, as2.stalledAccesses]).toEqual([1, 1]);
      as2.map(A, w.phys.allocPage());
      as1.map(A, w.phys.allocPage());
      expect(w.dev.replay(as2.asid)).toBe(1);
      await j2.join();
      expect(as1.stalledAccesses).toBe(1);
      expect(w.dev.replay()).toBe(1);
      await j1.join();
    });
    expect(order).toEqual(['as2', 'as1']);
  });

  it('a replay before the page is mapped makes the access fault again (a duplicate record)', async () => {
    const w = world();
    const as = w.dev.createAddressSpace();
    await run(w, async () => {
      const job = w.dev.launch(as, {}, async (ctx) => ctx.load(A, 8));
      expect(await w.dev.waitForInterrupt()).toBe(true);
      w.dev.replay(as.asid); // nothing mapped yet
      expect(await w.dev.waitForInterrupt()).toBe(true);
      const recs = w.dev.faultBuffer.drain();
      expect(recs.map((r) => [r.address, r.seq])).toEqual([
        [A, 0],
        [A, 1],
      ]);
      as.map(A, w.phys.allocPage());
      w.dev.replay(as.asid);
      await job.join();
    });
    expect(w.dev.stats.faults).toBe(2);
  });

  it('cancel kills the faulting context: joining the job throws DeviceFaultError naming the address', async () => {
    const w = world();
    const as = w.dev.createAddressSpace();
    let err: unknown;
    const bystanderDone: boolean[] = [];
    await run(w, async () => {
      as.map(A + PAGE_SIZE, w.phys.allocPage());
      const bad = w.dev.launch(as, { warps: 3 }, async (ctx) => {
        await ctx.load(A + PAGE_SIZE, 8);
        if (ctx.warp === 0) await ctx.store(A + 0x28, 8, 1n); // unmapped: faults
        else await w.engine.sleep(100_000); // will find its next access failing
        await ctx.load(A + PAGE_SIZE, 8);
        return ctx.warp;
      });
      const good = w.dev.launch(as, {}, async (ctx) => {
        await w.engine.sleep(50_000);
        await ctx.load(A + PAGE_SIZE, 8);
        bystanderDone.push(true);
      });
      expect(await w.dev.waitForInterrupt()).toBe(true);
      const [rec] = w.dev.faultBuffer.drain();
      expect(rec!.access).toBe('write');
      expect(w.dev.cancel(as.asid)).toBe(1);
      try {
        await bad.join();
      } catch (e) {
        err = e;
      }
      await good.join();
    });
    expect(err).toBeInstanceOf(DeviceFaultError);
    const e = err as DeviceFaultError;
    expect(e).toBeInstanceOf(KernelError);
    expect(e.errno).toBe(EFAULT);
    expect([e.address, e.access, e.asid]).toEqual([A + 0x28, 'write', as.asid]);
    expect(e.message).toMatch(/GPU segfault: write fault at 0x10000028/);
    expect(bystanderDone).toEqual([true]);
    expect(w.dev.stats.cancels).toBe(1);
    expect(as.jobs.size).toBe(0);
  });

  it('cancelFault kills the job of one record only; a second cancel of it is a no-op', async () => {
    const w = world();
    const as = w.dev.createAddressSpace();
    const outcome: string[] = [];
    const cancels: string[] = [];
    w.engine.trace.on('device.cancel', (e: TraceEvent<'device.cancel'>) => cancels.push(`${e.job}:${e.access}@${e.address}`));
    await run(w, async () => {
      const j1 = w.dev.launch(as, {}, async (ctx) => ctx.atomicAdd(A, 8, 1));
      const j2 = w.dev.launch(as, {}, async (ctx) => ctx.load(A + PAGE_SIZE, 8));
      await w.engine.sleep(10_000);
      const recs = w.dev.faultBuffer.drain();
      expect(recs.map((r) => r.job)).toEqual([j1.id, j2.id]);
      expect(w.dev.cancelFault(recs[0]!)).toBe(true);
      expect(w.dev.cancelFault(recs[0]!)).toBe(false);
      as.map(A + PAGE_SIZE, w.phys.allocPage());
      w.dev.replay();
      for (const j of [j1, j2]) {
        try {
          await j.join();
          outcome.push(`${j.id} ok`);
        } catch (e) {
          outcome.push(`${j.id} ${(e as DeviceFaultError).access}`);
        }
      }
    });
    expect(outcome).toEqual(['1 atomic', '2 ok']);
    expect(cancels).toEqual([`1:atomic@${A}`]);
  });

  it('a prefetch of an unmapped page reports a prefetch fault and does not stall', async () => {
    const w = world();
    const as = w.dev.createAddressSpace();
    as.map(A + PAGE_SIZE, w.phys.allocPage());
    let r: boolean[] | undefined;
    await run(w, async () => {
      [r] = await w.dev.launch(as, {}, async (ctx) => [await ctx.prefetch(A), await ctx.prefetch(A + PAGE_SIZE)]).join();
    });
    expect(r).toEqual([false, true]);
    expect(w.dev.faultBuffer.drain().map((x) => x.access)).toEqual(['prefetch']);
    expect(w.dev.interruptPending).toBe(true);
    expect(as.tlb.size).toBe(1);
    expect(w.dev.stats.prefetches).toBe(2);
  });

  it('a driver that never replays leaves a deadlock that names the replay wait queue', async () => {
    const w = world();
    const as = w.dev.createAddressSpace();
    w.engine.spawn('main', async () => {
      await w.dev.launch(as, { name: 'stuck' }, async (ctx) => ctx.load(A, 8)).join();
    });
    const r = await w.engine.run();
    expect(r.ok).toBe(false);
    expect(r.failure!.message).toMatch(/gpu0\.stuck\.w0: wait queue "gpu0\.as1\.replay"/);
  });

  it('waitForInterrupt times out in virtual time, and returns false once stopped', async () => {
    const w = world();
    const got: string[] = [];
    await run(w, async () => {
      got.push(`${await w.dev.waitForInterrupt(700)}@${w.engine.now}`);
      w.engine.spawn('stopper', async () => {
        await w.engine.sleep(300);
        w.dev.stop();
      });
      got.push(`${await w.dev.waitForInterrupt()}@${w.engine.now}`);
      await expect(w.dev.waitForInterrupt(-1)).rejects.toThrow(/timeoutNs .*: -1/);
    });
    expect(got).toEqual(['false@700', 'false@1000']);
  });

  it('many faulting warps under random schedules all finish with the right data', async () => {
    for (let seed = 1; seed <= 5; seed++) {
      const w = world({ faultBufferEntries: 4 }, 'random', seed);
      const as = w.dev.createAddressSpace();
      startDriver(w, as);
      let got: bigint[] = [];
      await run(w, async () => {
        got = await w.dev.launch(as, { warps: 12 }, async (ctx) => {
          const addr = A + (ctx.warp % 5) * PAGE_SIZE;
          await ctx.atomicAdd(addr, 8, 1);
          return BigInt(ctx.warp);
        }).join();
        w.dev.stop();
      });
      expect(got).toHaveLength(12);
      let total = 0n;
      as.pageTable.forEach((_vpn, pfn) => {
        total += w.phys.readU64(pfn, 0);
      });
      expect(total).toBe(12n);
    }
  });

  it('replay and cancel of an unknown address space throw KernelError EINVAL', () => {
    const w = world();
    expect(() => w.dev.replay(9)).toThrow(KernelError);
    expect(() => w.dev.cancel(9)).toThrow(/no address space 9/);
    let err: unknown;
    try {
      w.dev.cancelFault({ address: 0, access: 'bogus' as 'read', engine: 0, asid: 1, job: 1, time: 0, seq: 0 });
    } catch (e) {
      err = e;
    }
    expect((err as KernelError).errno).toBe(EINVAL);
    expect(w.dev.stats.replays).toBe(0);
  });
});
