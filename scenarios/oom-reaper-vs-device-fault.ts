/**
 * The OOM reaper against a busy device: two warps read 8 pages twice while the reaper, after a
 * chosen delay, reaps the mm with non-blockable invalidations, retrying up to 3 times on -EAGAIN.
 *
 * A correct driver never sleeps in a non-blockable callback: it trylocks and refuses (-EAGAIN /
 * false) when it would have to wait. One that blocks there (bug class 3) fails the run with a
 * sleep in atomic context.
 */
import { EAGAIN, PAGE_SIZE, cpuWrite64, defineScenario, deviceTask, oomReapTaskMm } from 'hmm-emu';

const PAGES = 8;
const BUF = 0x10_0000_0000;

export const oomReaperVsDeviceFault = defineScenario({
  name: 'oom-reaper-vs-device-fault',
  description: 'The OOM reaper reaps a process after a chosen delay while two device warps read its memory; the driver must not sleep in the non-blockable invalidation.',
  origin: 'mm/oom_kill.c oom_reap_task (3 attempts on -EAGAIN); bug class 3',
  tags: ['race', 'oom', 'non-blockable'],
  world: { frames: 256, devices: [{ name: 'gpu0', memoryFrames: 16 }] },
  drivers: 'any',
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF });
    for (let p = 0; p < PAGES; p++) await cpuWrite64(ctx.mm, BUF + p * PAGE_SIZE, BigInt(p + 1));
  },
  tasks: {
    gpu: deviceTask({
      warps: 2,
      killable: true,
      async kernel(_ctx, w) {
        for (let r = 0; r < 2; r++) {
          for (let p = w.warp; p < PAGES; p += 2) {
            await w.device.engine.sleep(50);
            await w.load(BUF + p * PAGE_SIZE, 8);
          }
        }
      },
    }),
    async oom(ctx) {
      await ctx.sleep(ctx.choose(24, 'reap delay') * 100);
      for (let i = 0; i < 3 && (await oomReapTaskMm(ctx.mm)) === -EAGAIN; i++) await ctx.sleep(1_000);
    },
  },
});
