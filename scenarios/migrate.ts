/**
 * hmm-tests' migrate: the CPU fills 8 pages, the driver migrates them to its device memory
 * (migrate_vma), the device reads the data back (the kernel test's MIGRATE_TO_DEV read-back),
 * and the CPU reads everything back, each touch faulting a device-private page home through the
 * driver's migrate_to_ram. The CPU's read-back races a second device sweep, which reads pages
 * that are still in device memory and pages that have just been faulted home.
 *
 * A correct driver copies every page before the CPU entry points to the new one, leaves every
 * page in device memory (the kernel test's cpages == npages; here each CPU entry is a
 * device-private one afterwards), and zaps its mapping of a device page when migrate_to_ram
 * moves it home, even though that migration is its own (bug class 4). A driver that copies
 * nothing, maps the wrong frame or keeps a device page mapped after it went home and was freed
 * lets a read return stale data or reach a freed frame: the oracle flags it (data, translation,
 * use after free), and the expectations flag a migration that does not move the pages.
 */
import { type DeviceJob, type MmStruct, PAGE_SIZE, PTE_SWP_DEVICE_PRIVATE, type ScenarioContext, type ScenarioDevice, type WarpContext, cpuRead64, defineScenario, ptePresent, pteKind, vpnOf } from 'hmm-emu';
import { fillTwoWords, initWord } from './common.js';

const PAGES = 8;
const BUF = 0x10_0000_0000;
/** Device compute time after each access of a sweep, so that the racing operation falls among them. */
const COMPUTE_NS = 1000;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;

/** The CPU entry of the page at `a` is a device-private one (/proc/self/pagemap: a swap entry). */
const onDevice = (mm: MmStruct, a: number): boolean => pteKind(mm.pgtable.bitsAt(vpnOf(a))) === PTE_SWP_DEVICE_PRIVATE;
/** The CPU maps the page at `a` to a frame of system memory. */
const inRam = (mm: MmStruct, a: number): boolean => ptePresent(mm.pgtable.bitsAt(vpnOf(a))) && !mm.phys.isDevicePfn(mm.pgtable.pfnAt(vpnOf(a)));

/** The device reads words 0 and 1 of every page, bumping 'device' after each page; returns them. */
async function deviceReadAll(ctx: ScenarioContext): Promise<bigint[]> {
  const [got] = await ctx.device().run(async (w) => {
    const out: bigint[] = [];
    for (let p = 0; p < PAGES; p++) {
      out.push(await w.load(addr(p, 0), 8), await w.load(addr(p, 1), 8));
      ctx.bump('device');
    }
    return out;
  });
  return got!;
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

export const migrate = defineScenario({
  name: 'migrate',
  description:
    'The driver migrates 8 filled pages to device memory, the device reads them, then the CPU reads them back (faulting each home) while the device reads them again; every page must move and every read see the data.',
  origin: 'tools/testing/selftests/mm/hmm-tests.c: migrate',
  tags: ['hmm-tests:migrate', 'migration', 'device-private', 'migrate_to_ram', 'race'],
  world: { frames: 128, devices: [{ name: 'gpu0', memoryFrames: 16 }] },
  drivers: { features: ['device-migration'] },
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
      // What the device reads of its own memory (MIGRATE_TO_DEV's read-back).
      expectInit(ctx, await deviceReadAll(ctx), 'device read-back');
      // The CPU faults the pages home while the device sweeps them again.
      const sweep = launchSweep(ctx, dev, 'sweep', 2 * PAGES, async (warp) => {
        // Back to front: the CPU goes front to back, so the two meet somewhere.
        const out: bigint[] = new Array<bigint>(2 * PAGES).fill(-1n);
        for (let p = PAGES - 1; p >= 0; p--) {
          for (let w = 0; w < 2; w++) {
            out[2 * p + w] = await warp.load(addr(p, w), 8);
            ctx.bump('sweep');
            await ctx.sleep(COMPUTE_NS);
          }
        }
        return out;
      });
      await ctx.racePoint({ counter: 'sweep', max: 2 * PAGES, until: ['cpu'], jitterNs: 300 });
      for (let p = 0; p < PAGES; p++) {
        for (let w = 0; w < 2; w++) ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, w)), initWord(p, w), `CPU read-back: page ${p} word ${w}`);
      }
      const [swept] = await sweep.join();
      expectInit(ctx, swept!, 'device sweep');
    },
  },
  async check(ctx) {
    // Each CPU touch leaves the page in system memory (a first-touch driver's sweep may have
    // pulled some back to the device: touching them again brings them home).
    for (let p = 0; p < PAGES; p++) {
      ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, 1)), initWord(p, 1), `final: page ${p} word 1`);
      ctx.expect(inRam(ctx.mm, addr(p, 0)), `page ${p} is not in system memory after a CPU access`);
    }
  },
});
