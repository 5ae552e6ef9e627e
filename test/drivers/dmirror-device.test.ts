/**
 * dmirror as a GPU driver: user kernels launched on a mirror fault through the Device's fault
 * buffer and the worker; the invalidate callback's duties (erase, TLB shootdown before it
 * returns, trylock and refusal when not blockable, own MIGRATE / EXCLUSIVE events); mm exit.
 */
import { describe, expect, it } from 'vitest';
import {
  DeviceFaultError,
  EAGAIN,
  MADV_DONTNEED,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  PAGE_SIZE,
  PROT_READ,
  PROT_WRITE,
  PTE_KIND_MASK,
  PTE_SWP_DEVICE_EXCLUSIVE,
  cpuRead64,
  cpuWrite64,
  exitMm,
  explore,
  madvise,
  mmap,
  munmap,
  oomReapTaskMm,
} from 'hmm-emu';
import {
  Dmirror,
  HMM_DMIRROR_EXCLUSIVE,
  HMM_DMIRROR_READ,
  HmmBuffer,
  type HmmWorld,
  type HmmWorldOptions,
  cpuWriteInts,
  hmmDmirrorCmd,
  hmmMigrateSysToDev,
  hmmProgram,
  runHmmTest,
} from '../../drivers/dmirror/index.js';

const P = PAGE_SIZE;
const RW = PROT_READ | PROT_WRITE;
const PRIV = MAP_PRIVATE | MAP_ANONYMOUS;

function hmmTest(body: (w: HmmWorld) => Promise<void>, opts: HmmWorldOptions = {}): () => Promise<void> {
  return async () => {
    const r = await runHmmTest(body, { faultWorker: true, ...opts });
    if (!r.ok) throw r.failure;
    expect(r.warnings).toBe(0);
  };
}

describe('user kernels on a mirror', () => {
  it(
    'loads see CPU data, stores and atomics reach the CPU, all through device faults serviced by the worker',
    hmmTest(async ({ mm, devices, fds }) => {
      const n = 16;
      const base = await mmap(mm, 0, n * P, RW, PRIV);
      for (let p = 0; p < n; p++) await cpuWrite64(mm, base + p * P, BigInt(1000 + p));
      const job = fds[0]!.launch({ warps: 4, name: 'k' }, async (ctx) => {
        let sum = 0n;
        for (let p = ctx.warp; p < n; p += ctx.warps) {
          sum += await ctx.load(base + p * P, 8);
          await ctx.store(base + p * P + 8, 8, BigInt(2000 + p));
          await ctx.atomicAdd(base + p * P + 16, 8, 1);
          await ctx.atomicAdd(base + p * P + 16, 8, 1);
        }
        return sum;
      });
      const sums = await job.join();
      expect(sums.reduce((a, b) => a + b, 0n)).toBe(BigInt(n * 1000 + (n * (n - 1)) / 2));
      for (let p = 0; p < n; p++) {
        expect(await cpuRead64(mm, base + p * P + 8)).toBe(BigInt(2000 + p));
        expect(await cpuRead64(mm, base + p * P + 16)).toBe(2n);
      }
      const ws = devices[0]!.workerStats;
      expect(ws.serviced).toBeGreaterThanOrEqual(n);
      expect(ws.cancelled).toBe(0);
      expect(fds[0]!.stats.deviceFaults).toBe(ws.serviced);
    }),
  );

  it(
    'an access to an unmapped address is cancelled: the job fails with DeviceFaultError (a GPU segfault)',
    hmmTest(async ({ mm, devices, fds }) => {
      const base = await mmap(mm, 0, 2 * P, RW, PRIV);
      expect(await munmap(mm, base + P, P)).toBe(0);
      const job = fds[0]!.launch({ warps: 1 }, async (ctx) => {
        await ctx.store(base, 8, 1);
        await ctx.load(base + P, 8); // the hole
        return 0;
      });
      let err: unknown = null;
      try {
        await job.join();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(DeviceFaultError);
      expect((err as DeviceFaultError).address).toBe(base + P);
      expect(devices[0]!.workerStats.cancelled).toBe(1);
      expect(await cpuRead64(mm, base)).toBe(1n);
    }),
  );

  it(
    'a store to a read-only mapping is cancelled while loads of it work',
    hmmTest(async ({ mm, fds }) => {
      const base = await mmap(mm, 0, P, PROT_READ, PRIV);
      const reads = fds[0]!.launch({ warps: 1 }, async (ctx) => ctx.load(base, 8));
      expect(await reads.join()).toEqual([0n]);
      const writes = fds[0]!.launch({ warps: 1 }, async (ctx) => ctx.store(base, 8, 5));
      await expect(writes.join()).rejects.toBeInstanceOf(DeviceFaultError);
    }),
  );

  it(
    'after the mm exits, the RELEASE invalidation has emptied the device page table and new faults are cancelled',
    hmmTest(async ({ mm, fds }) => {
      const base = await mmap(mm, 0, 4 * P, RW, PRIV);
      const touch = fds[0]!.launch({ warps: 1 }, async (ctx) => {
        for (let p = 0; p < 4; p++) await ctx.store(base + p * P, 8, p);
      });
      await touch.join();
      expect(fds[0]!.as.pageTable.size).toBe(4);
      await exitMm(mm);
      expect(fds[0]!.as.pageTable.size).toBe(0);
      const late = fds[0]!.launch({ warps: 1 }, async (ctx) => ctx.load(base, 8));
      await expect(late.join()).rejects.toBeInstanceOf(DeviceFaultError);
    }),
  );

  it(
    'a fault-buffer overflow is recovered: the worker replays everything and every warp finishes',
    hmmTest(
      async ({ mm, fds }) => {
        const n = 8;
        const base = await mmap(mm, 0, n * P, RW, PRIV);
        const job = fds[0]!.launch({ warps: n }, async (ctx) => {
          await ctx.store(base + ctx.warp * P, 8, ctx.warp + 1);
          return ctx.load(base + ctx.warp * P, 8);
        });
        expect(await job.join()).toEqual([1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n]);
      },
      { deviceOptions: { faultBufferEntries: 2 } },
    ),
  );
});

describe('the invalidate callback', () => {
  it(
    'munmap returns only after the device page table is erased and the device TLB shot down',
    hmmTest(async ({ mm, devices, fds }) => {
      const fd = fds[0]!;
      const base = await mmap(mm, 0, 8 * P, RW, PRIV);
      await fd.launch({ warps: 1 }, async (ctx) => {
        for (let p = 0; p < 8; p++) await ctx.store(base + p * P, 8, p);
      }).join();
      let tlbEntries = 0;
      fd.as.tlb.forEach(() => tlbEntries++);
      expect(tlbEntries).toBe(8);
      const shootdowns = fd.stats.shootdowns;
      expect(await munmap(mm, base, 4 * P)).toBe(0);
      expect(devices[0]!.device.pendingInvalidations).toBe(0);
      const left: number[] = [];
      fd.as.tlb.forEach((vpn) => left.push(vpn - base / P));
      expect(left.sort((a, b) => a - b)).toEqual([5, 6, 7]); // the erase's end is inclusive: page 4 went too
      expect(fd.stats.shootdowns).toBe(shootdowns + 1);
      expect(fd.as.pageTable.size).toBe(3);
    }),
  );

  it(
    'the OOM reaper (non-blockable) is refused while the device maps the range, or the mutex is taken; allowed otherwise',
    hmmTest(async ({ engine, mm, fds }) => {
      const fd = fds[0]!;
      const b = await mmap(mm, 0, 4 * P, RW, PRIV);
      const buffer = new HmmBuffer(b, 4 * P, new Uint8Array(4 * P));
      await cpuWriteInts(mm, b, P, (i) => i);
      expect(await hmmDmirrorCmd(fd, HMM_DMIRROR_READ, buffer, 4)).toBe(0);
      // Entries to erase: the TLB shootdown would have to be waited for.
      expect(await oomReapTaskMm(mm)).toBe(-EAGAIN);
      expect(fd.stats.invalidateRefused).toBe(1);
      expect(fd.as.pageTable.size).toBe(4); // nothing changed
      expect(await munmap(mm, b, 4 * P)).toBe(0);
      await mmap(mm, 0, 4 * P, RW, PRIV);
      // Another task holds the mutex: trylock fails.
      const holder = engine.spawn('holder', async () => {
        await fd.mutex.lock();
        await engine.sleep(10_000);
        fd.mutex.unlock();
      });
      await engine.sleep(1);
      expect(fd.mutex.holder).toBe(holder);
      expect(await oomReapTaskMm(mm)).toBe(-EAGAIN);
      await holder.join();
      expect(fd.stats.invalidateRefused).toBe(2);
      // Nothing mapped and the mutex free: set_seq only, the reaper goes on.
      expect(await oomReapTaskMm(mm)).toBe(0);
    }),
  );

  it(
    "a CPU fault on a device page erases it from every mirror of the device on the mm, the migrating one's or not",
    hmmTest(async ({ mm, devices, fds }) => {
      const a = fds[0]!;
      const other = await Dmirror.open(devices[0]!, mm);
      const b = new HmmBuffer(await mmap(mm, 0, 2 * P, RW, PRIV), 2 * P, new Uint8Array(2 * P));
      await cpuWriteInts(mm, b.ptr, (2 * P) / 4, (i) => i);
      expect(await hmmMigrateSysToDev(a, b, 2)).toBe(0);
      // The other open reads the device pages directly (same owner: hmm_range_fault reports them).
      expect(await hmmDmirrorCmd(other, HMM_DMIRROR_READ, b, 2)).toBe(0);
      expect(other.ptPfn(b.ptr / P)).toBe(a.ptPfn(b.ptr / P));
      expect(await cpuRead64(mm, b.ptr)).toBe(1n << 32n); // ints 0 and 1
      expect(a.ptPfn(b.ptr / P)).toBe(-1);
      expect(other.ptPfn(b.ptr / P)).toBe(-1);
      expect(other.ptPfn(b.ptr / P + 1)).not.toBe(-1); // its neighbour is still on the device
      await other.release();
    }),
  );
});

describe('EXCLUSIVE against a concurrent zap', () => {
  it('never leaves an ATOMIC entry whose CPU entry is not device-exclusive of the same page, over 300 schedules', async () => {
    let stored = 0;
    const program = hmmProgram(async ({ engine, mm, fds }) => {
      const fd = fds[0]!;
      const n = 4;
      const b = new HmmBuffer(await mmap(mm, 0, n * P, RW, PRIV), n * P, new Uint8Array(n * P));
      await cpuWriteInts(mm, b.ptr, (n * P) / 4, (i) => i);
      const zapper = engine.spawn('madvise', async () => {
        for (let k = engine.choose(48, 'delay'); k > 0; k--) await engine.yield();
        await madvise(mm, b.ptr + engine.choose(n, 'page') * P, P, MADV_DONTNEED);
      });
      const ret = await hmmDmirrorCmd(fd, HMM_DMIRROR_EXCLUSIVE, b, n);
      await zapper.join();
      expect([0, -2]).toContain(ret); // -ENOENT: the read-back found a page zapped after it was made exclusive
      for (const vpn of fd.exclusive) {
        stored++;
        const bits = mm.pgtable.bitsAt(vpn);
        if ((bits & PTE_KIND_MASK) !== PTE_SWP_DEVICE_EXCLUSIVE || mm.pgtable.pfnAt(vpn) !== fd.ptPfn(vpn)) {
          throw new Error(`vpn 0x${vpn.toString(16)} is ATOMIC on the device but the CPU entry is bits 0x${bits.toString(16)}`);
        }
      }
    });
    for (const strategy of ['random', 'pct:2']) {
      const r = await explore(program, { runs: 150, strategy, seed: 7 });
      if (r.firstFailure !== null) throw r.firstFailure.failure;
    }
    expect(stored).toBeGreaterThan(0);
  });
});
