/**
 * Device faults racing munmap (hmm-tests' anon_teardown, on a device with a TLB and a fault
 * buffer): two device jobs read and write 8 pages in opposite orders while the CPU unmaps the
 * upper half at a chosen moment, then maps fresh memory at the same address (so the freed
 * frames come back to another use) and writes it.
 *
 * A correct driver zaps the device page table and TLB in its invalidate callback and commits a
 * fault only after mmu_interval_read_retry under its update lock: a device access after the
 * munmap faults (and, as the range is gone, kills the job, or lands in the new mapping after
 * the remap). A driver that commits a stale snapshot (bug class 1), skips the TLB (5) or the
 * zap leaves a translation to a freed frame: the oracle flags the device access (translation,
 * use after free) or the callback (entry-after-callback).
 */
import { PAGE_SIZE, cpuRead64, cpuWrite64, defineScenario, munmap } from 'hmm-emu';
import { fillTwoWords, initWord, sweepJobs } from './common.js';

const PAGES = 8;
const UPPER = 4;
/** Where the buffer lives (page aligned, well below the mmap base). */
const BUF = 0x10_0000_0000;


export const deviceFaultVsMunmap = defineScenario({
  name: 'device-fault-vs-munmap',
  description: 'Two device jobs read and write 8 pages while the CPU unmaps the upper half at a chosen time and maps fresh memory there; no device access may reach a frame the CPU no longer maps.',
  origin: 'tools/testing/selftests/mm/hmm-tests.c: anon_teardown, on a device with a TLB and a fault buffer; bug classes 1, 5, 10 (linux-hmm.md §8)',
  tags: ['race', 'munmap', 'fault', 'use-after-free', 'hmm-tests:anon_teardown'],
  world: { frames: 256, devices: [{ name: 'gpu0', memoryFrames: 16 }] },
  drivers: { api: 'modern' },
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF });
    await fillTwoWords(ctx, BUF, PAGES);
  },
  tasks: {
    // Job j owns word j of every page: it reads it and writes it back plus 100.
    ...sweepJobs(BUF, PAGES),
    async cpu(ctx) {
      // Anywhere in the device's 32 accesses, then a jitter of up to about a fault's service.
      await ctx.racePoint({ counter: 'access', max: 4 * PAGES, until: ['up', 'down'], jitterNs: 200 });
      const ret = await munmap(ctx.mm, BUF + UPPER * PAGE_SIZE, (PAGES - UPPER) * PAGE_SIZE);
      ctx.expectEqual(ret, 0, 'munmap');
      // A chosen gap (device accesses in it fault on a hole and kill the job), then fresh memory
      // at the same address: the freed frames go to new uses.
      await ctx.sleep(ctx.choose(4, 'remap gap') * 2000);
      await ctx.mmap(PAGES - UPPER, { addr: BUF + UPPER * PAGE_SIZE });
      for (let p = UPPER; p < PAGES; p++) await cpuWrite64(ctx.mm, BUF + p * PAGE_SIZE + 16, 0xfeedn + BigInt(p));
    },
  },
  async check(ctx) {
    // The lower half stays mapped: each word holds its initial value, or that plus the device's 100.
    for (let p = 0; p < UPPER; p++) {
      for (let w = 0; w < 2; w++) {
        const v = await cpuRead64(ctx.mm, BUF + p * PAGE_SIZE + 8 * w);
        ctx.expect(v === initWord(p, w) || v === initWord(p, w) + 100n, () => `page ${p} word ${w} holds 0x${v.toString(16)}, neither the initial value nor the device's update`);
      }
    }
    for (let p = UPPER; p < PAGES; p++) ctx.expectEqual(await cpuRead64(ctx.mm, BUF + p * PAGE_SIZE + 16), 0xfeedn + BigInt(p), `remapped page ${p} word 2`);
  },
});
