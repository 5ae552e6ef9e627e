/**
 * The 2015 API's device fault racing the zaps of munmap and madvise(DONTNEED), across a
 * page-table boundary: two device jobs read and write 16 pages straddling a 2 MiB boundary,
 * faulting them through hmm_mirror_fault with a 4-page fault window (one fault event spans both
 * PTE tables, and its walk yields between them), while the CPU unmaps the 6 pages around the
 * boundary at a chosen moment and maps fresh memory there, and another CPU thread drops the top
 * 5 pages with madvise(DONTNEED) at another chosen moment.
 *
 * munmap holds mmap_lock for write, so it falls between two faults (each holds it for read);
 * madvise(DONTNEED) holds it for read, so its invalidation overlaps faults in flight: that is
 * where the 2015 two-sided protocol works (hmm_device_fault_start publishes the fault before it
 * checks for invalidations; hmm_update marks overlapping faults backoff and waits for them). A
 * correct driver zaps and shoots down the device in its update op before returning and
 * programs the device only from inside the fault's update. A driver that programs the device
 * after hmm_mirror_fault returned (from a stale copy of the mirror table), or that skips the zap
 * or the shootdown, leaves a translation to a freed frame: the oracle flags it.
 */
import { MADV_DONTNEED, PAGE_SIZE, PMD_SIZE, cpuRead64, cpuWrite64, defineScenario, madvise, munmap } from 'hmm-emu';
import { fillTwoWords, initWord, sweepJobs } from './common.js';

const PAGES = 16;
/** The buffer: 8 pages below a 2 MiB boundary, 8 above. */
const BUF = 0x10_0000_0000 + PMD_SIZE - 8 * PAGE_SIZE;
/** The unmapped pages [LO, HI): around the boundary. */
const LO = 5;
const HI = 11;
/** The dropped pages [DROP, PAGES). */
const DROP = 11;


export const hmm2015FaultVsMunmap = defineScenario({
  name: 'hmm2015-fault-vs-munmap',
  description: 'Device faults through the 2015 hmm_mirror_fault, with fault windows spanning a 2 MiB page-table boundary, race an munmap and remap of the pages around the boundary and a madvise(DONTNEED) of the top pages; no device access may reach a freed frame.',
  origin: 'the 2015 HMM patches: hmm_device_fault_start / hmm_wait_device_fault and the backoff protocol (seed-2015-mmu-notifier-range-tracking.txt)',
  tags: ['race', 'munmap', 'madvise', 'fault', '2015-api', 'backoff'],
  world: { frames: 256, devices: [{ name: 'gpu0', memoryFrames: 0, driverOptions: { faultWindowPages: 4 } }] },
  drivers: { api: '2015' },
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF });
    await fillTwoWords(ctx, BUF, PAGES);
  },
  tasks: {
    // Job j owns word j of every page: it reads it and writes it back plus 100.
    ...sweepJobs(BUF, PAGES),
    async cpu(ctx) {
      await ctx.racePoint({ counter: 'access', max: 4 * PAGES, until: ['up', 'down'], jitterNs: 200 });
      ctx.expectEqual(await munmap(ctx.mm, BUF + LO * PAGE_SIZE, (HI - LO) * PAGE_SIZE), 0, 'munmap');
      await ctx.sleep(ctx.choose(4, 'remap gap') * 2000);
      await ctx.mmap(HI - LO, { addr: BUF + LO * PAGE_SIZE });
      for (let p = LO; p < HI; p++) await cpuWrite64(ctx.mm, BUF + p * PAGE_SIZE + 16, 0xfeedn + BigInt(p));
    },
    async dropper(ctx) {
      await ctx.racePoint({ counter: 'access', max: 4 * PAGES, until: ['up', 'down'], jitterNs: 200, label: 'dontneed' });
      ctx.expectEqual(await madvise(ctx.mm, BUF + DROP * PAGE_SIZE, (PAGES - DROP) * PAGE_SIZE, MADV_DONTNEED), 0, 'madvise(DONTNEED)');
    },
  },
  async check(ctx) {
    for (let p = 0; p < PAGES; p++) {
      if (p >= LO && p < HI) {
        ctx.expectEqual(await cpuRead64(ctx.mm, BUF + p * PAGE_SIZE + 16), 0xfeedn + BigInt(p), `remapped page ${p} word 2`);
        continue;
      }
      for (let w = 0; w < 2; w++) {
        const v = await cpuRead64(ctx.mm, BUF + p * PAGE_SIZE + 8 * w);
        // A dropped page reads zero afterwards; the device may have updated it before or after.
        const legal = p >= DROP ? [initWord(p, w), initWord(p, w) + 100n, 0n, 100n] : [initWord(p, w), initWord(p, w) + 100n];
        ctx.expect(legal.includes(v), () => `page ${p} word ${w} holds 0x${v.toString(16)}; legal: ${legal.map((x) => `0x${x.toString(16)}`).join(', ')}`);
      }
    }
  },
});
