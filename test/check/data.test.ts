/** Rule 4, data: lost writes are flagged; migration, fork, sharing, mremap and madvise keep the reference right. */
import { describe, expect, it } from 'vitest';
import { DEV_PTE_WRITE } from '../../src/device/index.js';
import {
  MADV_DONTNEED,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_SHARED,
  MREMAP_DONTUNMAP,
  MREMAP_FIXED,
  MREMAP_MAYMOVE,
  cpuRead,
  cpuRead64,
  cpuWrite,
  cpuWrite64,
  exitMm,
  fork,
  madvise,
  migratePages,
  mmap,
  mremap,
  munmap,
} from '../../src/mm/index.js';
import { BUF, P, RW, cpuPfn, devLoad, devStore, expectViolation, insertDriver, installMigrateToRam, mapBuf, migrateToDevice, run, runOk, world } from './helpers.js';

describe('rule 4: data', () => {
  it('flags a device read of a page whose migration to the device forgot to copy', async () => {
    const w = world();
    const r = await run(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF + 16, 42n);
      const d = await migrateToDevice(w, BUF, false);
      w.as.map(BUF, d, DEV_PTE_WRITE);
      await devLoad(w, BUF + 16);
    });
    const v = expectViolation(r, 'data/stale-read');
    expect(v.report.details.join('\n')).toMatch(/0x2a/);
  });

  it('flags a CPU read after a migration back to RAM that forgot to copy the device writes', async () => {
    const w = world();
    installMigrateToRam(w, false);
    const r = await run(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF, 1n);
      const d = await migrateToDevice(w, BUF);
      w.as.map(BUF, d, DEV_PTE_WRITE);
      await devStore(w, BUF, 2n);
      await cpuRead64(w.mm, BUF);
    });
    const v = expectViolation(r, 'data/stale-read');
    expect(v.report.message).toMatch(/CPU load/);
  });

  it('flags bytes changed behind the back of every mapping', async () => {
    const w = world();
    const r = await run(w, async () => {
      await mapBuf(w, 1);
      await cpuWrite(w.mm, BUF + 100, Uint8Array.from([1, 2, 3]));
      w.phys.writeU32(cpuPfn(w, BUF), 100, 0x99); // a copy engine writing the wrong frame, say
      await cpuRead(w.mm, BUF, 200);
    });
    const v = expectViolation(r, 'data/stale-read');
    expect(v.report.details[0]).toMatch(/first differing byte at 0x1000000064/);
  });

  it('keeps values across CPU migration and a round trip through device memory', async () => {
    const w = world();
    installMigrateToRam(w);
    await runOk(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 2);
      await cpuWrite64(w.mm, BUF, 7n);
      await cpuWrite64(w.mm, BUF + P, 8n);
      expect(await migratePages(w.mm, BUF, BUF + 2 * P)).toBe(2);
      const d = await migrateToDevice(w, BUF);
      w.as.map(BUF, d, DEV_PTE_WRITE);
      expect(await devLoad(w, BUF)).toBe(7n);
      await devStore(w, BUF, 70n);
      expect(await cpuRead64(w.mm, BUF)).toBe(70n);
      expect(await cpuRead64(w.mm, BUF + P)).toBe(8n);
    });
    expect(w.oracle.violations).toEqual([]);
    expect(w.oracle.stats.cpuAccesses).toBeGreaterThan(0);
  });

  it('gives a fork child its own copy of private memory and shares shared memory', async () => {
    const w = world();
    const SH = BUF + 16 * P;
    await runOk(w, async () => {
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF, 1n);
      await mmap(w.mm, SH, P, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED);
      await cpuWrite64(w.mm, SH, 10n);
      const child = await fork(w.mm);
      w.oracle.watchMm(child);
      await cpuWrite64(w.mm, BUF, 2n); // COW: the child keeps 1
      await cpuWrite64(child, SH, 11n); // shared: the parent sees 11
      expect(await cpuRead64(child, BUF)).toBe(1n);
      expect(await cpuRead64(w.mm, BUF)).toBe(2n);
      expect(await cpuRead64(w.mm, SH)).toBe(11n);
      await exitMm(child);
    });
    expect(w.oracle.violations).toEqual([]);
  });

  it('moves contents with mremap, leaves DONTUNMAP sources empty, and zeroes dropped pages', async () => {
    const w = world();
    const SH = BUF + 64 * P;
    await runOk(w, async () => {
      await mapBuf(w, 2);
      await cpuWrite64(w.mm, BUF, 1n);
      await cpuWrite64(w.mm, BUF + P, 2n);
      const to = await mremap(w.mm, BUF, 2 * P, 2 * P, MREMAP_MAYMOVE | MREMAP_FIXED, BUF + 8 * P);
      expect(await cpuRead64(w.mm, to + P)).toBe(2n);
      const again = await mremap(w.mm, to, 2 * P, 2 * P, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, 0);
      expect(await cpuRead64(w.mm, again)).toBe(1n);
      expect(await cpuRead64(w.mm, to)).toBe(0n); // still mapped, empty
      await madvise(w.mm, again, P, MADV_DONTNEED);
      expect(await cpuRead64(w.mm, again)).toBe(0n);
      await mmap(w.mm, SH, P, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED);
      await cpuWrite64(w.mm, SH, 5n);
      await madvise(w.mm, SH, P, MADV_DONTNEED); // shared: the object keeps the page
      expect(await cpuRead64(w.mm, SH)).toBe(5n);
      await munmap(w.mm, again, 2 * P);
      await mapBuf(w, 1);
      expect(await cpuRead64(w.mm, BUF)).toBe(0n);
    });
    expect(w.oracle.violations).toEqual([]);
  });
});
