/** Rule 1, translation coherence: each check fires on a violating state built by hand, and legal near misses stay quiet. */
import { describe, expect, it } from 'vitest';
import { DEV_PTE_ATOMIC, DEV_PTE_WRITE } from '../../src/device/index.js';
import { PROT_READ, cpuRead64, cpuWrite64, fork, mprotect } from '../../src/mm/index.js';
import { makeDeviceExclusive } from '../../src/hmm/index.js';
import { BUF, P, cpuPfn, devLoad, devStore, expectViolation, insertDriver, installMigrateToRam, mapBuf, migrateToDevice, run, runOk, world } from './helpers.js';

describe('rule 1: translation coherence', () => {
  it('flags a device entry that points at a frame the CPU maps elsewhere', async () => {
    const w = world();
    const r = await run(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 2);
      await cpuWrite64(w.mm, BUF, 1n);
      await cpuWrite64(w.mm, BUF + P, 2n);
      w.as.map(BUF, cpuPfn(w, BUF + P), DEV_PTE_WRITE); // the neighbour's frame
      await devLoad(w, BUF);
    });
    const v = expectViolation(r, 'translation/frame-mismatch');
    expect(v.report.addr).toBe(BUF);
    expect(v.report.frames.map((f) => f.role)).toEqual(['device translation', 'CPU mapping']);
  });

  it('flags a device entry for a page the CPU has not mapped at all', async () => {
    const w = world();
    const r = await run(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 2);
      await cpuWrite64(w.mm, BUF, 1n);
      w.as.map(BUF + P, cpuPfn(w, BUF)); // BUF + P was never touched: pte_none
      await devLoad(w, BUF + P);
    });
    expectViolation(r, 'translation/no-cpu-mapping');
  });

  it('flags a device store through a writable entry over a read-only CPU entry', async () => {
    const w = world({ declare: false }); // the device is told nothing: only rule 1 can see it
    const r = await run(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF, 1n);
      w.as.map(BUF, cpuPfn(w, BUF), DEV_PTE_WRITE);
      w.zap = 'none'; // the buggy driver keeps its writable entry
      await mprotect(w.mm, BUF, P, PROT_READ);
      await devStore(w, BUF, 7n);
    });
    const v = expectViolation(r, 'translation/write-not-permitted');
    expect(v.report.message).toMatch(/read-only CPU entry/);
  });

  it('flags a TLB hit that outlived its page-table entry once the CPU frame changed', async () => {
    const w = world({ declare: false });
    const r = await run(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF, 1n);
      w.as.map(BUF, cpuPfn(w, BUF));
      await devLoad(w, BUF); // fills the TLB
      w.zap = 'pt-only';
      const child = await fork(w.mm);
      await cpuWrite64(w.mm, BUF, 2n); // COW: the parent gets a new frame; the child keeps the old
      expect(child.pgtable.pfnAt(BUF / P)).not.toBe(cpuPfn(w, BUF));
      await devLoad(w, BUF); // the stale TLB entry still points at the child's frame
    });
    const v = expectViolation(r, 'translation/frame-mismatch');
    expect(v.report.message).toMatch(/TLB hit/);
  });

  it('stays quiet for walks, TLB hits and stores through entries that match the CPU', async () => {
    const w = world();
    await runOk(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF, 5n);
      w.as.map(BUF, cpuPfn(w, BUF), DEV_PTE_WRITE);
      expect(await devLoad(w, BUF)).toBe(5n);
      await devStore(w, BUF + 8, 6n);
      expect(await cpuRead64(w.mm, BUF + 8)).toBe(6n);
    });
    expect(w.oracle.violations).toEqual([]);
    expect(w.oracle.stats.deviceAccesses).toBe(2);
  });

  it('lets the device read a COW-shared frame after fork through a write-protected entry', async () => {
    const w = world();
    await runOk(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF, 5n);
      w.as.map(BUF, cpuPfn(w, BUF), DEV_PTE_WRITE);
      w.zap = 'write-protect';
      await fork(w.mm);
      expect(await devLoad(w, BUF)).toBe(5n);
    });
    expect(w.oracle.violations).toEqual([]);
  });

  it('accepts device accesses to the frame a device-exclusive CPU entry designates', async () => {
    const w = world();
    w.skipOwn = true;
    await runOk(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF, 41n);
      await w.mm.mmapLock.downRead();
      const pfn = await makeDeviceExclusive(w.mm, BUF, w.dev.memory!.owner);
      w.mm.mmapLock.upRead();
      w.phys.unlockPage(pfn);
      w.phys.putPage(pfn);
      w.as.map(BUF, pfn, DEV_PTE_WRITE | DEV_PTE_ATOMIC);
      await w.dev.launch(w.as, {}, (ctx) => ctx.atomicAdd(BUF, 8, 1n)).join();
      expect(await cpuRead64(w.mm, BUF)).toBe(42n); // restores the entry: the driver's callback zaps
    });
    expect(w.oracle.violations).toEqual([]);
  });

  it('accepts device accesses to the device frame a device-private CPU entry designates', async () => {
    const w = world();
    installMigrateToRam(w);
    await runOk(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF, 9n);
      const d = await migrateToDevice(w, BUF);
      expect(d).toBeGreaterThan(0);
      w.as.map(BUF, d, DEV_PTE_WRITE);
      expect(await devLoad(w, BUF)).toBe(9n);
      await devStore(w, BUF, 10n);
      expect(await cpuRead64(w.mm, BUF)).toBe(10n); // migrate_to_ram; the MIGRATE callback zaps
    });
    expect(w.oracle.violations).toEqual([]);
  });
});
