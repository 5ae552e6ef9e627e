/**
 * An invalidation the driver may not sleep in: the OOM killer picks the process while its
 * device is busy, the OOM reaper unmaps its memory with NON-BLOCKABLE invalidations
 * (mmu_notifier_invalidate_range_start_nonblock), retrying a few times when a notifier refuses,
 * and exit_mmap then tears everything down.
 *
 * In a non-blockable callback a correct driver takes its lock only by trylock and returns false
 * (-EAGAIN) when it would have to sleep, e.g. to wait for a TLB shootdown: the reaper skips the
 * range and exit_mmap, which may block, zaps it later. A driver that sleeps there (bug class 3)
 * fails the run with a sleep in atomic context (the oracle's lock rule); one that returns
 * success without having zapped leaves the device a translation to a page the reaper frees
 * (invalidation, use after free). The device job may be killed once the memory is gone.
 */
import { PAGE_SIZE, type ScenarioContext, type WarpContext, cpuWrite64, defineScenario, deviceTask, exitMm, oomReapTaskMm } from 'hmm-emu';

const PAGES = 8;
const ROUNDS = 6;
const WARPS = 2;
const BUF = 0x10_0000_0000;
/** __oom_reap_task_mm retries (MAX_OOM_REAP_RETRIES) and the pause between tries (HZ/10, shortened). */
const REAP_TRIES = 10;
const REAP_PAUSE_NS = 500;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;

async function busy(ctx: ScenarioContext, w: WarpContext): Promise<void> {
  for (let r = 0; r < ROUNDS; r++) {
    for (let p = w.warp; p < PAGES; p += WARPS) {
      await w.load(addr(p, 0), 8);
      ctx.bump('access');
      await w.atomicAdd(addr(p, 1), 8, 1);
      ctx.bump('access');
    }
  }
}

export const invalidationOnNonBlockableRange = defineScenario({
  name: 'invalidation-on-non-blockable-range',
  description: 'The OOM reaper unmaps a process with non-blockable invalidations while its device is busy, then the process exits; the driver must neither sleep in the non-blockable callback nor report a zap it did not do.',
  origin: 'mm/oom_kill.c __oom_reap_task_mm with mmu_notifier_invalidate_range_start_nonblock; bug class 3 (sleeping in a non-blockable invalidate)',
  tags: ['race', 'oom', 'non-blockable', 'exit'],
  world: { frames: 256, devices: [{ name: 'gpu0', memoryFrames: 16 }] },
  drivers: 'any',
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF });
    for (let p = 0; p < PAGES; p++) await cpuWrite64(ctx.mm, addr(p, 0), BigInt(0xc000 + p));
  },
  tasks: {
    gpu: deviceTask({ warps: WARPS, killable: true, kernel: busy }),
    // The victim's CPU threads are already dead (SIGKILL): only the reaper and exit touch the mm.
    async oom(ctx) {
      await ctx.racePoint({ counter: 'access', max: 2 * ROUNDS * PAGES, until: ['gpu'], jitterNs: 200 });
      let tries = 0;
      let ret = -1;
      while (tries < REAP_TRIES && ret !== 0) {
        tries++;
        ret = await oomReapTaskMm(ctx.mm);
        if (ret !== 0) await ctx.sleep(REAP_PAUSE_NS);
      }
      ctx.log(`oom reaper: ${ret === 0 ? 'reaped' : `gave up (${ret})`} after ${tries} tries`);
      await exitMm(ctx.mm);
    },
  },
});
