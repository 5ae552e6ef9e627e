/**
 * hmm-tests' migrate_release: the driver migrates 8 filled pages to device memory and the
 * device reads them back; then all of the device's memory is released (test_hmm's
 * HMM_DMIRROR_RELEASE: migrate_device_range evicts every device page to system memory, as when
 * the device memory goes away) at a chosen moment of a device sweep over the buffer; the CPU
 * then reads the data from system memory, and the device reads it once more.
 *
 * A correct driver copies every device page to a system page before the CPU entry points to
 * it, leaves no page in device memory (the kernel test checks the device's free frames and
 * the CPU data), and drops its device mapping of every evicted page when the eviction's
 * invalidation reaches it: that event carries no owner, so no filter may skip it. A driver
 * that keeps a mapping or a TLB entry is flagged by the oracle when its callback returns
 * (invalidation) or when the sweep reaches the freed device frame (use after free,
 * translation); one that copies late or not at all loses data (data); a release that leaves
 * pages in device memory fails the expectations.
 */
import { type DeviceJob, type MmStruct, PAGE_SIZE, PTE_SWP_DEVICE_PRIVATE, type ScenarioContext, type ScenarioDevice, type WarpContext, cpuRead64, defineScenario, pteKind, vpnOf } from 'hmm-emu';
import { fillTwoWords, initWord } from './common.js';

const PAGES = 8;
const BUF = 0x10_0000_0000;
/** Device compute time after each access of a sweep, so that the racing operation falls among them. */
const COMPUTE_NS = 1000;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;

/** The CPU entry of the page at `a` is a device-private one (/proc/self/pagemap: a swap entry). */
const onDevice = (mm: MmStruct, a: number): boolean => pteKind(mm.pgtable.bitsAt(vpnOf(a))) === PTE_SWP_DEVICE_PRIVATE;

/** A device kernel that reads words 0 and 1 of every page back to front, bumping `counter` and computing `computeNs` after each; returns them by (page, word). */
function readAll(ctx: ScenarioContext, counter: string, computeNs = 0): (w: WarpContext) => Promise<bigint[]> {
  return async (w) => {
    const out = new Array<bigint>(2 * PAGES).fill(-1n);
    for (let p = PAGES - 1; p >= 0; p--) {
      for (let word = 0; word < 2; word++) {
        out[2 * p + word] = await w.load(addr(p, word), 8);
        ctx.bump(counter);
        if (computeNs > 0) await ctx.sleep(computeNs);
      }
    }
    return out;
  };
}

function expectInit(ctx: ScenarioContext, got: readonly bigint[], who: string): void {
  for (let p = 0; p < PAGES; p++) for (let w = 0; w < 2; w++) ctx.expectEqual(got[2 * p + w]!, initWord(p, w), `${who}: page ${p} word ${w}`);
}

/**
 * Launches `kernel` on `dev` as a sweep whose progress is `counter`. When the job ends (killed
 * or not) the counter jumps by `max`, which releases a racePoint waiting on it: a launched job
 * is not a task that racePoint's `until` could name, so the racePoint names the waiting task
 * itself there (an empty `until` would release it at once).
 */
function launchSweep<T>(ctx: ScenarioContext, dev: ScenarioDevice, counter: string, max: number, kernel: (w: WarpContext) => Promise<T>): DeviceJob<T> {
  return dev.launch(async (w) => {
    try {
      return await kernel(w);
    } finally {
      ctx.bump(counter, max);
    }
  });
}

export const migrateRelease = defineScenario({
  name: 'migrate-release',
  description:
    'The driver migrates 8 pages to device memory, then releases all its device memory while the device reads the pages; every page must land in system memory with its data, and no device read may reach an evicted frame.',
  origin: 'tools/testing/selftests/mm/hmm-tests.c: migrate_release',
  tags: ['hmm-tests:migrate_release', 'migration', 'device-private', 'eviction', 'race'],
  world: { frames: 128, devices: [{ name: 'gpu0', memoryFrames: 16 }] },
  drivers: { features: ['device-migration', 'release'] },
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF });
    await fillTwoWords(ctx, BUF, PAGES);
  },
  tasks: {
    async cpu(ctx) {
      const dev = ctx.device();
      const ret = await dev.migrateToDevice(BUF, PAGES);
      ctx.expect(ret >= 0, `migrateToDevice returned ${ret}`);
      for (let p = 0; p < PAGES; p++) ctx.expect(onDevice(ctx.mm, addr(p, 0)), `page ${p} is not in device memory after the migration`);
      expectInit(ctx, (await dev.run(readAll(ctx, 'read')))[0]!, 'device read-back');

      // Release the device memory at a chosen moment of a device sweep.
      const sweep = launchSweep(ctx, dev, 'sweep', 2 * PAGES, readAll(ctx, 'sweep', COMPUTE_NS));
      await ctx.racePoint({ counter: 'sweep', max: 2 * PAGES, until: ['cpu'], jitterNs: 300 });
      ctx.expectEqual(await dev.releaseDeviceMemory(), 0, 'releaseDeviceMemory');
      expectInit(ctx, (await sweep.join())[0]!, 'device sweep');
      // A first-touch driver (oversubscription) may have moved pages the sweep read back to its memory.
      if (!ctx.driver.features.includes('oversubscription')) {
        for (let p = 0; p < PAGES; p++) ctx.expect(!onDevice(ctx.mm, addr(p, 0)), `page ${p} is still in device memory after the release`);
      }
      const cpu: bigint[] = [];
      for (let p = 0; p < PAGES; p++) for (let w = 0; w < 2; w++) cpu.push(await cpuRead64(ctx.mm, addr(p, w)));
      expectInit(ctx, cpu, 'CPU read after the release');
      expectInit(ctx, (await dev.run(readAll(ctx, 'last')))[0]!, 'device read after the release');
    },
  },
});
