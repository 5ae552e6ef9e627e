/** The Device as a whole: configuration, device memory, jobs, statistics, trace, determinism. */
import { describe, expect, it } from 'vitest';
import { EBUSY, EFAULT, EINVAL, Engine, KernelError, type TraceEvent } from '../../src/sim/index.js';
import { PAGE_SIZE, PhysMem, ZONE_DEVICE_COHERENT, ZONE_DEVICE_PRIVATE, type VmFault } from '../../src/mm/index.js';
import { DEV_PTE_ATOMIC, DEV_PTE_WRITE, Device, type DeviceOptions } from '../../src/device/index.js';
import { makeWorld, run, type World } from './helpers.js';

const A = 0x2000_0000;

function world(opts: DeviceOptions = {}, strategy = 'fifo', seed = 0): World {
  return makeWorld({ frames: 512, deviceFrames: 32 }, opts, strategy, seed);
}

function einval(f: () => unknown): string {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(KernelError);
  expect((err as KernelError).errno).toBe(EINVAL);
  return (err as Error).message;
}

describe('Device configuration', () => {
  it('bad options throw KernelError EINVAL showing the value, and register no device memory', () => {
    const engine = new Engine();
    const phys = new PhysMem(engine, { frames: 16, maxDeviceFrames: 64 });
    expect(einval(() => new Device(engine, phys, { name: '' }))).toMatch(/name .*""/);
    expect(einval(() => new Device(engine, phys, { computeEngines: 0 }))).toMatch(/computeEngines .*: 0/);
    expect(einval(() => new Device(engine, phys, { faultBufferEntries: 2.5 }))).toMatch(/faultBufferEntries .*: 2.5/);
    expect(einval(() => new Device(engine, phys, { memory: { frames: -1 } }))).toMatch(/memory.frames .*: -1/);
    expect(einval(() => new Device(engine, phys, { memory: { type: 'shared' as 'private' } }))).toMatch(/memory.type .*: shared/);
    expect(einval(() => new Device(engine, phys, { cost: { pageWalkNs: -5 } }))).toMatch(/pageWalkNs .*: -5/);
    expect(phys.deviceFramesEnd).toBe(phys.firstDevicePfn);
  });

  it('device memory is a device-private pagemap owned by the device by default, or coherent with a given owner', () => {
    const engine = new Engine();
    const phys = new PhysMem(engine, { frames: 16, maxDeviceFrames: 64 });
    const d1 = new Device(engine, phys, { name: 'd1', memory: { frames: 8 } });
    const owner = { driver: 'x' };
    const d2 = new Device(engine, phys, { name: 'd2', memory: { frames: 8, type: 'coherent', owner } });
    const d3 = new Device(engine, phys, { name: 'd3', memory: { frames: 0 } });
    expect(d1.memory!.owner).toBe(d1);
    expect(phys.zone[d1.memory!.firstPfn]).toBe(ZONE_DEVICE_PRIVATE);
    expect(d2.memory!.owner).toBe(owner);
    expect(phys.zone[d2.memory!.firstPfn]).toBe(ZONE_DEVICE_COHERENT);
    expect(d3.memory).toBeNull();
    expect(d1.memory!.nframes).toBe(8);
  });
});

describe('device memory ops', () => {
  it('migrateToRam returns -EFAULT (SIGBUS) until the driver installs its handler, then delegates', async () => {
    const w = world();
    const vmf = { address: 0, pfn: w.dev.memory!.firstPfn, write: false } as unknown as VmFault;
    const got: number[] = [];
    const calls: VmFault[] = [];
    await run(w, async () => {
      got.push(await w.dev.memory!.migrateToRam(vmf));
      w.dev.setMemoryOps({
        migrateToRam: async (f) => {
          calls.push(f);
          return 0;
        },
      });
      got.push(await w.dev.memory!.migrateToRam(vmf));
    });
    expect(got).toEqual([-EFAULT, 0]);
    expect(calls).toEqual([vmf]);
  });

  it('pageFree reaches the driver once the frame is back on the free list', () => {
    const w = world();
    const freed: Array<[number, number]> = [];
    w.dev.setMemoryOps({ migrateToRam: async () => 0, pageFree: (pfn) => freed.push([pfn, w.dev.memory!.freeFrames]) });
    const pfn = w.dev.memory!.allocPage();
    expect(w.dev.memory!.freeFrames).toBe(31);
    w.phys.putPage(pfn);
    expect(freed).toEqual([[pfn, 32]]);
    expect(einval(() => w.dev.setMemoryOps({} as never))).toMatch(/migrateToRam must be a function/);
  });
});

describe('jobs', () => {
  it('launch validates its arguments; a job joins once and returns results in warp order', async () => {
    const w = world({ computeEngines: 2 });
    const as = w.dev.createAddressSpace();
    const other = new Device(w.engine, w.phys, { name: 'other', memory: { frames: 0 } }).createAddressSpace();
    expect(einval(() => w.dev.launch(as, { warps: 0 }, async () => 0))).toMatch(/warps .*: 0/);
    expect(einval(() => w.dev.launch(as, { engine: 2 }, async () => 0))).toMatch(/engine .*\[0, 2\): 2/);
    expect(einval(() => w.dev.launch(other, {}, async () => 0))).toMatch(/not an address space of gpu0/);
    expect(w.dev.stats.jobs).toBe(0);
    let res: number[] = [];
    let second: unknown;
    await run(w, async () => {
      const job = w.dev.launch(as, { warps: 4, engine: 1 }, async (ctx) => {
        expect(ctx.engine).toBe(1);
        await w.engine.sleep(10 * (4 - ctx.warp));
        return ctx.warp * 10;
      });
      expect(w.dev.job(job.id)).toBe(job);
      res = await job.join();
      expect(job.done).toBe(true);
      expect(w.dev.job(job.id)).toBeUndefined();
      try {
        await job.join();
      } catch (e) {
        second = e;
      }
    });
    expect(res).toEqual([0, 10, 20, 30]);
    expect((second as KernelError).errno).toBe(EINVAL);
  });

  it('fault records carry the engine that ran the access', async () => {
    const w = world({ computeEngines: 3 });
    const as = w.dev.createAddressSpace();
    await run(w, async () => {
      const job = w.dev.launch(as, { engine: 2 }, async (ctx) => ctx.load(A, 8));
      await w.dev.waitForInterrupt();
      expect(w.dev.faultBuffer.peek(0).engine).toBe(2);
      as.map(A, w.phys.allocPage());
      w.dev.replay();
      await job.join();
    });
  });

  it('an address space with running jobs cannot be destroyed (EBUSY)', async () => {
    const w = world();
    const as = w.dev.createAddressSpace();
    let err: unknown;
    await run(w, async () => {
      const job = w.dev.launch(as, {}, async () => w.engine.sleep(10));
      try {
        w.dev.destroyAddressSpace(as);
      } catch (e) {
        err = e;
      }
      await job.join();
      w.dev.destroyAddressSpace(as);
    });
    expect((err as KernelError).errno).toBe(EBUSY);
    expect(w.dev.addressSpaces).toEqual([]);
  });

  it('an error thrown by a kernel (not a cancel) fails the run as a crash', async () => {
    const w = world();
    const as = w.dev.createAddressSpace();
    w.engine.spawn('main', async () => {
      await w.dev.launch(as, {}, async () => {
        throw new Error('kernel bug');
      }).join();
    });
    const r = await w.engine.run();
    expect(r.ok).toBe(false);
    expect(r.failure!.message).toMatch(/gpu0\.job1\.w0 crashed: Error: kernel bug/);
  });
});

describe('statistics and trace', () => {
  it('counts accesses, hits, misses, walks, faults, replays, maps, invalidations', async () => {
    const w = world();
    const as = w.dev.createAddressSpace();
    as.map(A, w.phys.allocPage(), DEV_PTE_WRITE | DEV_PTE_ATOMIC);
    await run(w, async () => {
      const job = w.dev.launch(as, {}, async (ctx) => {
        await ctx.load(A, 8); // miss + walk
        await ctx.store(A, 4, 1); // hit
        await ctx.atomicAdd(A, 4, 1); // hit
        await ctx.load(A + PAGE_SIZE, 8); // miss + walk, fault, then a walk on retry
      });
      await w.dev.waitForInterrupt();
      w.dev.faultBuffer.drain();
      as.map(A + PAGE_SIZE, w.phys.allocPage());
      w.dev.replay(as.asid);
      await job.join();
      await w.dev.tlbInvalidate(as, A, A + 4 * PAGE_SIZE).wait();
    });
    const s = w.dev.stats.snapshot();
    expect(s).toMatchObject({
      accesses: 4,
      loads: 2,
      stores: 1,
      atomics: 1,
      tlbHits: 2,
      tlbMisses: 3,
      pageWalks: 3,
      faults: 1,
      faultsDropped: 0,
      replays: 1,
      cancels: 0,
      invalidations: 1,
      pagesInvalidated: 4,
      tlbEntriesInvalidated: 2,
      ptMaps: 2,
      jobs: 1,
    });
    expect(s.faultLatency.count).toBe(1);
  });

  it('device.access is emitted at the touch: a walk sees the entry as it is at that instant', async () => {
    const w = world({ cost: { tlbHitNs: 1, pageWalkNs: 100 } });
    const oldPfn = w.phys.allocPage();
    const newPfn = w.phys.allocPage();
    const as = w.dev.createAddressSpace();
    as.map(A, oldPfn, DEV_PTE_WRITE);
    const events: Array<TraceEvent<'device.access'>> = [];
    const atEvent: bigint[] = [];
    w.engine.trace.on('device.access', (e) => {
      events.push(e);
      atEvent.push(w.phys.readU64(e.pfn, 0)); // the bytes are already there
      expect(as.pageTable.pfnAt(e.addr / PAGE_SIZE)).toBe(e.pfn);
    });
    await run(w, async () => {
      const job = w.dev.launch(as, {}, async (ctx) => ctx.store(A, 8, 9n));
      await w.engine.sleep(50); // inside the access's lookup + walk time
      as.map(A, newPfn, DEV_PTE_WRITE); // a fill-time change: the walk at the touch sees it
      await job.join();
    });
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ device: 'gpu0', asid: as.asid, engine: 0, addr: A, size: 8, kind: 'store', pfn: newPfn, write: true, tlbHit: false, stored: 9n, loaded: null, time: 101 });
    expect(events[0]!.generation).toBe(w.phys.generation[newPfn]);
    expect(atEvent).toEqual([9n]);
    expect(w.phys.readU64(oldPfn, 0)).toBe(0n);
  });

  it('with nobody listening, no device event is built (the trace bus stays inactive)', async () => {
    const w = world();
    const as = w.dev.createAddressSpace();
    as.map(A, w.phys.allocPage());
    const emit = w.engine.trace.emit.bind(w.engine.trace);
    let calls = 0;
    w.engine.trace.emit = ((...args: Parameters<typeof emit>) => {
      calls++;
      emit(...args);
    }) as typeof emit;
    await run(w, async () => {
      await w.dev.launch(as, { warps: 2 }, async (ctx) => ctx.load(A, 8)).join();
      await w.dev.tlbInvalidateAll(as).wait();
    });
    expect(calls).toBe(0);
  });

  it('the same seed gives the same device trace, byte for byte', async () => {
    const once = async (): Promise<string> => {
      const w = world({ faultBufferEntries: 3 }, 'random', 42);
      const as = w.dev.createAddressSpace();
      const lines: string[] = [];
      w.engine.trace.onAny((e) => {
        if (e.type.startsWith('device.')) lines.push(JSON.stringify(e, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v)));
      });
      w.engine.spawn('driver', async () => {
        while (await w.dev.waitForInterrupt()) {
          if (w.dev.faultBuffer.overflow) w.dev.faultBuffer.clearOverflow();
          for (const r of w.dev.faultBuffer.drain()) {
            if (as.pageTable.flagsAt(r.address / PAGE_SIZE) === 0) as.map(r.address, w.phys.allocPage(), DEV_PTE_WRITE | DEV_PTE_ATOMIC);
          }
          await w.engine.sleep(700);
          w.dev.replay();
        }
      });
      await run(w, async () => {
        await w.dev.launch(as, { warps: 10 }, async (ctx) => {
          for (let i = 0; i < 4; i++) await ctx.atomicAdd(A + ((ctx.warp + i) % 6) * PAGE_SIZE, 8, 1);
        }).join();
        await w.dev.tlbInvalidateAll(as).wait();
        w.dev.stop();
      });
      return lines.join('\n');
    };
    const a = await once();
    const b = await once();
    expect(a.length).toBeGreaterThan(1000);
    expect(a).toBe(b);
  });
});
