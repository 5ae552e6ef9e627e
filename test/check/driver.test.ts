/**
 * The oracle over many schedules: a small but complete driver (interval notifier, fault worker,
 * hmm_range_fault loop) racing a CPU munmap stays quiet; the same driver without
 * mmu_interval_read_retry (bug class 1, anon_teardown) is caught.
 */
import { describe, expect, it } from 'vitest';
import { EBUSY, EFAULT, type Engine, Mutex, type Program, explore } from '../../src/sim/index.js';
import { MAP_FIXED, type MmStruct, PhysMem, createMm, cpuWrite64, exitMm, mmap, munmap } from '../../src/mm/index.js';
import { MmuIntervalNotifier, ULONG_MAX_ADDR, mmuIntervalNotifierInsert, mmuIntervalReadBegin, mmuIntervalReadRetry, mmuIntervalSetSeq, mmuNotifierRangeBlockable } from '../../src/notifier/index.js';
import { HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE, HMM_PFN_WRITE, HmmRange, hmmPfnToPfn, hmmRangeFault } from '../../src/hmm/index.js';
import { DEV_PTE_WRITE, Device, DeviceFaultError, type DeviceAddressSpace } from '../../src/device/index.js';
import { CoherencyViolation, type Oracle, attachOracle } from '../../src/check/index.js';
import { BUF, P, PRIV, RW } from './helpers.js';

/** The driver of docs/driver-guide.md, with a fault worker; `noRetry` commits without read_retry. */
class MiniDriver {
  readonly sub = new MmuIntervalNotifier('mini');
  readonly lock: Mutex;

  constructor(
    readonly e: Engine,
    readonly mm: MmStruct,
    readonly dev: Device,
    readonly as: DeviceAddressSpace,
    readonly noRetry: boolean,
  ) {
    this.lock = new Mutex(e, 'mini.update');
  }

  async bind(): Promise<void> {
    await mmuIntervalNotifierInsert(this.sub, this.mm, 0, ULONG_MAX_ADDR, {
      invalidate: async (sub, range, curSeq) => {
        if (mmuNotifierRangeBlockable(range)) await this.lock.lock();
        else if (!this.lock.trylock()) return false;
        mmuIntervalSetSeq(sub, curSeq);
        const end = Math.min(range.end, 2 ** 48);
        this.as.unmap(range.start, end);
        await this.dev.tlbInvalidate(this.as, range.start, end).wait();
        this.lock.unlock();
        return true;
      },
    });
  }

  async fault(addr: number, write: boolean): Promise<number> {
    const range = new HmmRange({ notifier: this.sub, start: addr, end: addr + P, defaultFlags: HMM_PFN_REQ_FAULT | (write ? HMM_PFN_REQ_WRITE : 0n) });
    for (;;) {
      range.notifierSeq = await mmuIntervalReadBegin(this.sub);
      await this.mm.mmapLock.downRead();
      const ret = await hmmRangeFault(range);
      this.mm.mmapLock.upRead();
      if (ret === -EBUSY) continue;
      if (ret < 0) return ret;
      await this.e.sleep(300); // programming the GPU takes time: the CPU runs meanwhile
      await this.lock.lock();
      if (!this.noRetry && mmuIntervalReadRetry(this.sub, range.notifierSeq)) {
        this.lock.unlock();
        continue;
      }
      const p = range.hmmPfns[0]!;
      this.as.map(addr, hmmPfnToPfn(p), (p & HMM_PFN_WRITE) !== 0n ? DEV_PTE_WRITE : 0);
      this.lock.unlock();
      return 0;
    }
  }

  /** The fault worker: drain, service, replay, until the device is stopped. */
  async worker(): Promise<void> {
    const fb = this.dev.faultBuffer;
    while (await this.dev.waitForInterrupt()) {
      if (fb.overflow) fb.clearOverflow();
      for (const rec of fb.drain()) {
        const ret = await this.fault(rec.address, rec.access === 'write' || rec.access === 'atomic');
        if (ret === -EFAULT || ret < 0) this.dev.cancelFault(rec);
      }
      this.dev.replay(this.as.asid);
    }
  }
}

/** anon_teardown: two device jobs read and write 8 pages while the CPU unmaps the upper half. */
function anonTeardown(noRetry: boolean, out: { oracle?: Oracle }): Program {
  return (e: Engine) => {
    const phys = new PhysMem(e, { frames: 128, maxDeviceFrames: 8 });
    const oracle = attachOracle(e);
    out.oracle = oracle;
    const mm = createMm(e, phys, { name: 'app' });
    const dev = new Device(e, phys, { name: 'gpu0', memory: { frames: 8 } });
    const as = dev.createAddressSpace();
    oracle.watchDevice(dev, { as, mm, notifierSubs: ['mini'] });
    const drv = new MiniDriver(e, mm, dev, as, noRetry);
    e.spawn('cpu', async () => {
      await drv.bind();
      const worker = e.spawn('mini.worker', () => drv.worker());
      await mmap(mm, BUF, 8 * P, RW, PRIV | MAP_FIXED);
      for (let i = 0; i < 8; i++) await cpuWrite64(mm, BUF + i * P, BigInt(i + 1));
      // Two jobs (a cancel kills only the faulting one), walking the pages in opposite orders.
      const jobs = [0, 1].map((j) =>
        dev.launch(as, { name: `walk${j}` }, async (ctx) => {
          for (let i = 0; i < 8; i++) {
            const a = BUF + (j === 0 ? i : 7 - i) * P + 8 * j;
            const v = await ctx.load(a, 8);
            await ctx.store(a, 8, v + 100n);
          }
        }),
      );
      // The unmap comes after a random delay, as hmm-tests' anon_teardown.
      await e.sleep(1 + e.choose(64, 'delay') * 100);
      await munmap(mm, BUF + 4 * P, 4 * P);
      for (const job of jobs) {
        try {
          await job.join();
        } catch (err) {
          if (!(err instanceof DeviceFaultError)) throw err;
        }
      }
      await exitMm(mm);
      dev.stop();
      await worker.join();
      oracle.finish();
    });
  };
}

describe('the oracle over many schedules', () => {
  it('stays quiet for a correct driver racing munmap (anon_teardown) under random and PCT schedules', async () => {
    for (const strategy of ['random', 'pct:3']) {
      const out: { oracle?: Oracle } = {};
      const res = await explore(anonTeardown(false, out), { runs: 40, strategy, seed: 1 });
      expect(res.firstFailure?.failure ?? null, `${strategy}: ${String(res.firstFailure?.failure)}`).toBeNull();
      expect(out.oracle!.stats.deviceAccesses).toBeGreaterThan(0);
      expect(out.oracle!.stats.callbacks).toBeGreaterThan(0);
    }
  });

  it('catches the driver that commits without mmu_interval_read_retry, and the schedule replays it', async () => {
    const out: { oracle?: Oracle } = {};
    const res = await explore(anonTeardown(true, out), { runs: 200, strategy: 'random', seed: 1 });
    const f = res.firstFailure;
    expect(f, 'no schedule exposed the bug').not.toBeNull();
    expect(f!.failure).toBeInstanceOf(CoherencyViolation);
    const rep = (f!.failure as CoherencyViolation).report;
    expect(['invalidation', 'use-after-free', 'translation']).toContain(rep.rule);
    expect(rep.schedule).toBe(f!.schedule);
  });
});
