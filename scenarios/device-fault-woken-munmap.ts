/**
 * munmap landing inside a device fault's service window: two warps read and write 8 pages; a CPU
 * thread woken by the k-th device fault on the upper half (k chosen) unmaps that half.
 *
 * dmirror-shaped drivers service a fault in zero virtual time between their hmm_range_fault
 * walk and their commit, so a CPU operation started by a sleeping thread lands only while every
 * task is blocked, never inside that window (device-fault-vs-munmap cannot show a commit without
 * mmu_interval_read_retry). A thread woken by the fault itself is runnable inside it, and the
 * schedule decides where the munmap falls. A correct driver rechecks the sequence under its lock
 * and retries; one that commits a stale snapshot (bug class 1) maps a freed frame.
 */
import { PAGE_SIZE, cpuWrite64, defineScenario, deviceTask, munmap } from 'hmm-emu';

const PAGES = 8;
const UPPER = PAGES / 2;
const BUF = 0x10_0000_0000;

export const deviceFaultWokenMunmap = defineScenario({
  name: 'device-fault-woken-munmap',
  description: 'A CPU thread woken by the k-th device fault on the upper half of 8 mirrored pages unmaps that half while the fault is serviced; the driver must not commit the stale translation.',
  origin: 'bug class 1 (linux-hmm.md §8): a commit without mmu_interval_read_retry under the update lock (the rule of Documentation/mm/hmm.rst)',
  tags: ['race', 'munmap', 'fault', 'read-retry'],
  world: { frames: 256, devices: [{ name: 'gpu0', memoryFrames: 16 }] },
  drivers: { api: 'modern' },
  setup(ctx) {
    // Publish each device fault on the upper half, in the step the fault is raised: a task
    // waiting on it is runnable while the driver services that fault.
    ctx.engine.trace.on('device.fault', (ev) => {
      if (ev.address >= BUF + UPPER * PAGE_SIZE && ev.address < BUF + PAGES * PAGE_SIZE) ctx.bump('fault');
    });
    return (async () => {
      await ctx.mmap(PAGES, { addr: BUF });
      for (let p = 0; p < PAGES; p++) await cpuWrite64(ctx.mm, BUF + p * PAGE_SIZE, BigInt(p + 1));
    })();
  },
  tasks: {
    gpu: deviceTask({
      warps: 2,
      killable: true,
      async kernel(_ctx, w) {
        for (let p = w.warp; p < PAGES; p += 2) {
          const v = await w.load(BUF + p * PAGE_SIZE, 8);
          await w.store(BUF + p * PAGE_SIZE + 8, 8, v + 1n);
        }
      },
    }),
    async cpu(ctx) {
      const k = 1 + ctx.choose(4, 'munmap at fault');
      await ctx.waitFor(() => ctx.count('fault') >= k || ctx.finished('gpu'));
      ctx.expectEqual(await munmap(ctx.mm, BUF + UPPER * PAGE_SIZE, UPPER * PAGE_SIZE), 0, 'munmap');
    },
  },
});
