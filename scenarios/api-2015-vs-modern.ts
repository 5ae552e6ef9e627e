/**
 * One workload for both API generations: the 2015 mirror API (hmm_device_fault_start, and
 * hmm_wait_device_fault on the invalidation path, which makes conflicting device faults back
 * off) against the interval-notifier protocol that replaced it (mmu_interval_read_begin /
 * read_retry around hmm_range_fault). Run it side by side with
 *
 *     hmm-emu run api-2015-vs-modern --compare --runs 200
 *
 * which prints, per driver, the device faults, the fault-loop retries, the 2015 backoffs, the
 * fault latency (stall to successful retry), the invalidations and the virtual time.
 *
 * Four warps each own 3 of 12 pages and increment a word of each, round after round, and all
 * of them read a word of 4 scratch pages. Meanwhile a CPU thread, at chosen moments, drops the
 * scratch pages with madvise(DONTNEED) (mmap_lock held for read, so the invalidation overlaps
 * device faults in flight: on the 2015 API that is where faults back off, on the modern one
 * where read_retry fails) and writes them again, and moves a chosen group of owned pages to
 * new frames (migrate_pages: a CLEAR invalidation that keeps the data). Every driver must stay
 * coherent and lose no increment; what differs is the cost of getting there.
 */
import { MADV_DONTNEED, PAGE_SIZE, cpuRead64, cpuWrite64, defineScenario, deviceTask, madvise, migratePages } from 'hmm-emu';

const WARPS = 4;
const OWNED = 12;
const SCRATCH = 4;
const ROUNDS = 3;
const BUF = 0x10_0000_0000;
const page = (p: number): number => BUF + p * PAGE_SIZE;
/** The scratch word the CPU writes after round r's drop. */
const marker = (r: number, s: number): bigint => BigInt(0x5c00 + 0x10 * r + s);

export const api2015VsModern = defineScenario({
  name: 'api-2015-vs-modern',
  description: 'Four warps increment their own pages and read shared scratch pages while the CPU drops the scratch pages (madvise DONTNEED) and migrates owned pages at chosen moments; every driver must lose no increment. Compare the API generations with `hmm-emu run api-2015-vs-modern --compare`.',
  origin: 'the 2015 HMM patches (hmm_device_fault_start / hmm_wait_device_fault, seed-2015-mmu-notifier-range-tracking.txt) vs the interval notifiers and hmm_range_fault that replaced them (mm/mmu_notifier.c, mm/hmm.c)',
  tags: ['race', 'comparison', '2015-api', 'backoff', 'madvise', 'migration'],
  world: { frames: 256, devices: [{ name: 'gpu0', memoryFrames: 0, driverOptions: { faultWindowPages: 4 } }] },
  drivers: 'any',
  async setup(ctx) {
    await ctx.mmap(OWNED + SCRATCH, { addr: BUF });
    for (let p = 0; p < OWNED; p++) await cpuWrite64(ctx.mm, page(p), BigInt(0x1000 * p));
  },
  tasks: {
    gpu: deviceTask({
      warps: WARPS,
      async kernel(ctx, w) {
        for (let r = 0; r < ROUNDS; r++) {
          for (let p = w.warp; p < OWNED; p += WARPS) {
            const v = await w.load(page(p), 8);
            await w.store(page(p), 8, v + 1n);
            ctx.bump('access');
          }
          // The scratch word reads 0 after a drop, or the CPU's marker: the oracle knows which.
          await w.load(page(OWNED + ((w.warp + r) % SCRATCH)), 8);
          ctx.bump('access');
        }
      },
    }),
    async cpu(ctx) {
      const total = ROUNDS * (OWNED + WARPS);
      for (let r = 0; r < ROUNDS; r++) {
        await ctx.racePoint({ counter: 'access', max: total, until: ['gpu'], jitterNs: 300, label: `drop ${r}` });
        ctx.expectEqual(await madvise(ctx.mm, page(OWNED), SCRATCH * PAGE_SIZE, MADV_DONTNEED), 0, 'madvise(DONTNEED)');
        for (let s = 0; s < SCRATCH; s++) await cpuWrite64(ctx.mm, page(OWNED + s), marker(r, s));
        const g = ctx.choose(OWNED / WARPS, `migrate group ${r}`);
        const moved = await migratePages(ctx.mm, page(g * WARPS), page((g + 1) * WARPS));
        ctx.log(`round ${r}: dropped the scratch pages, migrated ${moved} of pages ${g * WARPS}..${(g + 1) * WARPS - 1}`);
      }
    },
  },
  async check(ctx) {
    for (let p = 0; p < OWNED; p++) ctx.expectEqual(await cpuRead64(ctx.mm, page(p)), BigInt(0x1000 * p + ROUNDS), `owned page ${p} (the device's ${ROUNDS} increments)`);
    for (let s = 0; s < SCRATCH; s++) ctx.expectEqual(await cpuRead64(ctx.mm, page(OWNED + s)), marker(ROUNDS - 1, s), `scratch page ${s} (the CPU's last marker)`);
  },
});
