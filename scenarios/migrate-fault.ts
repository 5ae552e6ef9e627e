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
import { PAGE_SIZE, type ScenarioContext, defineScenario } from 'hmm-emu';
import { cpuExpectInit, deviceReadTwoWords, expectAllOnDevice, expectTwoWords, fillTwoWords, inRam, launchSweep, onDevice, readTwoWordsBack } from './common.js';

const PAGES = 8;
const HALF = PAGES / 2;
const BUF = 0x10_0000_0000;
/** Device compute time after each access of a sweep, so that the racing operation falls among them. */
const COMPUTE_NS = 1000;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;

/** The device reads words 0 and 1 of every page (bumping 'device' after each page) and checks them. */
async function deviceReadAll(ctx: ScenarioContext, who: string): Promise<void> {
  expectTwoWords(ctx, await deviceReadTwoWords(ctx, BUF, PAGES), PAGES, who);
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
      expectAllOnDevice(ctx, BUF, PAGES, 'the first migration');
      await deviceReadAll(ctx, 'device read-back');

      // Fault half the pages back to system memory and check them.
      await cpuExpectInit(ctx, BUF, 0, HALF, 'CPU read of the lower half');
      for (let p = 0; p < PAGES; p++) {
        if (p < HALF) ctx.expect(inRam(ctx.mm, addr(p, 0)), `page ${p} is not in system memory after the CPU read it`);
        else ctx.expect(onDevice(ctx.mm, addr(p, 0)), `page ${p} left device memory, and the CPU did not touch it`);
      }
      // The device maps the mix: system pages below, its own pages above.
      await deviceReadAll(ctx, 'device read of the mix');

      // Migrate the mix again, at a chosen moment of a device sweep over it (the oracle checks
      // the frame and the value of each read).
      const sweep = launchSweep(ctx, dev, 'sweep', 2 * PAGES, readTwoWordsBack(ctx, BUF, PAGES, 'sweep', COMPUTE_NS));
      await ctx.racePoint({ counter: 'sweep', max: 2 * PAGES, until: ['cpu'], jitterNs: 300 });
      const second = await dev.migrateToDevice(BUF, PAGES);
      await sweep.join();
      ctx.expect(second >= 0, `second migrateToDevice returned ${second}`);
      expectAllOnDevice(ctx, BUF, PAGES, 'the second migration');
      await deviceReadAll(ctx, 'device read after the second migration');
    },
  },
  async check(ctx) {
    await cpuExpectInit(ctx, BUF, 0, PAGES, 'final CPU read');
  },
});
