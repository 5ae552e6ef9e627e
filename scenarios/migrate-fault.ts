/**
 * hmm-tests' migrate_fault: the driver migrates 8 filled pages to device memory and the device
 * reads them; the CPU reads the lower half, faulting those pages home through migrate_to_ram,
 * and the device reads everything again; then the driver migrates the whole mix (4 pages in
 * system memory, 4 already in its memory) once more, while a device sweep reads the buffer,
 * and the device and the CPU read everything a last time.
 *
 * A correct driver moves exactly what it is asked to (the upper half stays in device memory
 * while the CPU reads the lower half; after the second migration every page is in device
 * memory again, the kernel test's cpages == npages twice), zaps its mapping of a device page
 * that migrate_to_ram moves home although that migration is its own, and zaps its mapping of a
 * system page that its own second migration moves (bug class 4). A driver that skips either
 * zap keeps a translation to a freed frame: the next device read is flagged by the oracle
 * (translation, use after free, data); a migration that moves the wrong pages fails the
 * expectations.
 */
import { type DeviceJob, type MmStruct, PAGE_SIZE, PTE_SWP_DEVICE_PRIVATE, type ScenarioContext, type ScenarioDevice, type WarpContext, cpuRead64, defineScenario, ptePresent, pteKind, vpnOf } from 'hmm-emu';
import { fillTwoWords, initWord } from './common.js';

const PAGES = 8;
const HALF = PAGES / 2;
const BUF = 0x10_0000_0000;
/** Device compute time after each access of a sweep, so that the racing operation falls among them. */
const COMPUTE_NS = 1000;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;

/** The CPU entry of the page at `a` is a device-private one (/proc/self/pagemap: a swap entry). */
const onDevice = (mm: MmStruct, a: number): boolean => pteKind(mm.pgtable.bitsAt(vpnOf(a))) === PTE_SWP_DEVICE_PRIVATE;
/** The CPU maps the page at `a` to a frame of system memory. */
const inRam = (mm: MmStruct, a: number): boolean => ptePresent(mm.pgtable.bitsAt(vpnOf(a))) && !mm.phys.isDevicePfn(mm.pgtable.pfnAt(vpnOf(a)));

/** The device reads words 0 and 1 of every page (bumping `counter` after each page) and checks them. */
async function deviceReadAll(ctx: ScenarioContext, who: string, counter = 'device'): Promise<void> {
  const [got] = await ctx.device().run(async (w) => {
    const out: bigint[] = [];
    for (let p = 0; p < PAGES; p++) {
      out.push(await w.load(addr(p, 0), 8), await w.load(addr(p, 1), 8));
      ctx.bump(counter);
    }
    return out;
  });
  for (let p = 0; p < PAGES; p++) for (let w = 0; w < 2; w++) ctx.expectEqual(got![2 * p + w]!, initWord(p, w), `${who}: page ${p} word ${w}`);
}

async function cpuReadPages(ctx: ScenarioContext, from: number, to: number, who: string): Promise<void> {
  for (let p = from; p < to; p++) for (let w = 0; w < 2; w++) ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, w)), initWord(p, w), `${who}: page ${p} word ${w}`);
}

function expectAllOnDevice(ctx: ScenarioContext, after: string): void {
  for (let p = 0; p < PAGES; p++) ctx.expect(onDevice(ctx.mm, addr(p, 0)), `page ${p} is not in device memory after ${after}`);
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

export const migrateFault = defineScenario({
  name: 'migrate-fault',
  description:
    'The driver migrates 8 pages to device memory, the CPU faults half of them home, and the driver migrates the mix again while the device reads it; each migration must move every page and every read see the data.',
  origin: 'tools/testing/selftests/mm/hmm-tests.c: migrate_fault',
  tags: ['hmm-tests:migrate_fault', 'migration', 'device-private', 'migrate_to_ram', 'race'],
  world: { frames: 128, devices: [{ name: 'gpu0', memoryFrames: 16 }] },
  drivers: { features: ['device-migration'] },
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF });
    await fillTwoWords(ctx, BUF, PAGES);
  },
  tasks: {
    async cpu(ctx) {
      const dev = ctx.device();
      const first = await dev.migrateToDevice(BUF, PAGES);
      ctx.expect(first >= 0, `first migrateToDevice returned ${first}`);
      expectAllOnDevice(ctx, 'the first migration');
      await deviceReadAll(ctx, 'device read-back');

      // Fault half the pages back to system memory and check them.
      await cpuReadPages(ctx, 0, HALF, 'CPU read of the lower half');
      for (let p = 0; p < PAGES; p++) {
        if (p < HALF) ctx.expect(inRam(ctx.mm, addr(p, 0)), `page ${p} is not in system memory after the CPU read it`);
        else ctx.expect(onDevice(ctx.mm, addr(p, 0)), `page ${p} left device memory, and the CPU did not touch it`);
      }
      // The device maps the mix: system pages below, its own pages above.
      await deviceReadAll(ctx, 'device read of the mix');

      // Migrate the mix again, at a chosen moment of a device sweep over it.
      const sweep = launchSweep(ctx, dev, 'sweep', 2 * PAGES, async (w) => {
        for (let p = PAGES - 1; p >= 0; p--) {
          for (let word = 0; word < 2; word++) {
            await w.load(addr(p, word), 8); // the oracle checks the frame and the value
            ctx.bump('sweep');
            await ctx.sleep(COMPUTE_NS);
          }
        }
      });
      await ctx.racePoint({ counter: 'sweep', max: 2 * PAGES, until: ['cpu'], jitterNs: 300 });
      const second = await dev.migrateToDevice(BUF, PAGES);
      await sweep.join();
      ctx.expect(second >= 0, `second migrateToDevice returned ${second}`);
      expectAllOnDevice(ctx, 'the second migration');
      await deviceReadAll(ctx, 'device read after the second migration');
    },
  },
  async check(ctx) {
    await cpuReadPages(ctx, 0, PAGES, 'final CPU read');
  },
});
