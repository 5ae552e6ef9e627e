/** Rule 3, no use after free: at free, at map and at use (by generation); legal reuse stays quiet. */
import { describe, expect, it } from 'vitest';
import { DEV_PTE_WRITE } from '../../src/device/index.js';
import { cpuRead64, cpuWrite64, madvise, MADV_DONTNEED, munmap } from '../../src/mm/index.js';
import { BUF, P, cpuPfn, devLoad, expectViolation, insertDriver, mapBuf, run, runOk, world } from './helpers.js';

describe('rule 3: no use after free', () => {
  it('flags a frame freed while a device page table still maps it', async () => {
    const w = world({ declare: false }); // the device is never told: its entry outlives the page
    w.zap = 'none';
    const r = await run(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF, 1n);
      w.as.map(BUF, cpuPfn(w, BUF), DEV_PTE_WRITE);
      await munmap(w.mm, BUF, P);
    });
    const v = expectViolation(r, 'use-after-free/at-free');
    expect(v.report.message).toMatch(/page table/);
    expect(v.report.frames[0]!.installedGeneration).not.toBeNull();
  });

  it('flags a frame freed while only the device TLB still caches it', async () => {
    const w = world({ declare: false });
    w.zap = 'pt-only';
    const r = await run(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF, 1n);
      w.as.map(BUF, cpuPfn(w, BUF));
      await devLoad(w, BUF);
      await madvise(w.mm, BUF, P, MADV_DONTNEED);
    });
    const v = expectViolation(r, 'use-after-free/at-free');
    expect(v.report.message).toMatch(/its TLB/);
  });

  it('flags a device mapping of a free frame', async () => {
    const w = world();
    const r = await run(w, async () => {
      w.as.map(BUF, 200); // never allocated: refcount 0
    });
    expectViolation(r, 'use-after-free/at-map');
  });

  it('catches a freed-and-reused frame by its generation even when the CPU maps the same pfn again', async () => {
    const w = world({ declare: false, oracle: { failRun: false } });
    w.zap = 'none';
    await runOk(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF, 1n);
      const old = cpuPfn(w, BUF);
      w.as.map(BUF, old);
      await munmap(w.mm, BUF, P); // freed: reported at free (collected only)
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF, 2n); // the allocator hands the same frame back (LIFO)
      expect(cpuPfn(w, BUF)).toBe(old);
      await devLoad(w, BUF); // same pfn as the CPU's, but made for the frame's previous life
    });
    expect(w.oracle.violations.map((v) => v.code)).toEqual(['use-after-free/at-free', 'use-after-free/at-use']);
    expect(w.oracle.violations[1]!.message).toMatch(/freed and reused/);
  });

  it('accepts a frame freed after the device zapped it, and a new mapping of the reused frame', async () => {
    const w = world();
    await runOk(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF, 1n);
      const old = cpuPfn(w, BUF);
      w.as.map(BUF, old);
      await devLoad(w, BUF);
      await munmap(w.mm, BUF, P); // the callback zaps the page table and the TLB first
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF, 2n);
      expect(cpuPfn(w, BUF)).toBe(old);
      w.as.map(BUF, old); // a fresh entry for the frame's new life
      expect(await devLoad(w, BUF)).toBe(2n);
      expect(await cpuRead64(w.mm, BUF)).toBe(2n);
    });
    expect(w.oracle.violations).toEqual([]);
    expect(w.oracle.stats.frees).toBeGreaterThan(0);
  });
});
