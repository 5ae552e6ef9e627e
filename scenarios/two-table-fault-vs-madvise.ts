/**
 * madvise(DONTNEED) landing inside a fault whose walk spans two page tables: two pages straddle
 * a PMD boundary and are faulted together (driver hint faultWindowPages: 2), so each
 * hmm_range_fault yields between the two tables; the device reads the first page 4 times and a
 * CPU thread woken by each device fault zaps that page.
 *
 * munmap cannot show this: it takes mmap_lock for write, which excludes the walk, and a
 * one-page walk has no scheduling point after its sequence check. madvise runs under mmap_lock
 * for read and can overlap the walk. A driver that reads the interval sequence after the walk
 * instead of before it (bug class 1) misses the invalidation and maps the zapped frame.
 */
import { MADV_DONTNEED, PAGE_SIZE, PMD_SIZE, cpuWrite64, defineScenario, deviceTask, madvise } from 'hmm-emu';

const ROUNDS = 4;
const A = PMD_SIZE - PAGE_SIZE;

export const twoTableFaultVsMadvise = defineScenario({
  name: 'two-table-fault-vs-madvise',
  description: 'A device fault window of two pages straddling a PMD boundary races madvise(DONTNEED) of its first page from a thread woken by each fault; the driver must not map the zapped frame.',
  origin: 'bug class 1 (linux-hmm.md §8): the interval sequence read after the hmm_range_fault walk instead of before it',
  tags: ['race', 'madvise', 'fault', 'read-retry'],
  world: { frames: 256, devices: [{ name: 'gpu0', memoryFrames: 16, driverOptions: { faultWindowPages: 2 } }] },
  drivers: { api: 'modern' },
  setup(ctx) {
    ctx.engine.trace.on('device.fault', () => ctx.bump('fault'));
    return (async () => {
      await ctx.mmap(2, { addr: A });
      await cpuWrite64(ctx.mm, A, 1n);
      await cpuWrite64(ctx.mm, A + PAGE_SIZE, 2n);
    })();
  },
  tasks: {
    gpu: deviceTask({
      async kernel(_ctx, w) {
        for (let i = 0; i < ROUNDS; i++) {
          await w.load(A, 8);
          await w.device.engine.sleep(200);
        }
      },
    }),
    async cpu(ctx) {
      for (let i = 1; i <= ROUNDS; i++) {
        await ctx.waitFor(() => ctx.count('fault') >= i || ctx.finished('gpu'));
        if (ctx.finished('gpu')) return;
        ctx.expectEqual(await madvise(ctx.mm, A, PAGE_SIZE, MADV_DONTNEED), 0, 'madvise');
      }
    },
  },
});
