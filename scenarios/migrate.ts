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
import { PAGE_SIZE, cpuRead64, defineScenario } from 'hmm-emu';
import { cpuExpectInit, deviceReadTwoWords, expectAllOnDevice, expectTwoWords, fillTwoWords, inRam, initWord, launchSweep, readTwoWordsBack } from './common.js';

const PAGES = 8;
const BUF = 0x10_0000_0000;
/** Device compute time after each access of a sweep, so that the racing operation falls among them. */
const COMPUTE_NS = 1000;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;

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
      expectAllOnDevice(ctx, BUF, PAGES, 'the migration');
      // What the device reads of its own memory (MIGRATE_TO_DEV's read-back).
      expectTwoWords(ctx, await deviceReadTwoWords(ctx, BUF, PAGES), PAGES, 'device read-back');
      // The CPU faults the pages home while the device sweeps them again, back to front: the
      // CPU goes front to back, so the two meet somewhere.
      const sweep = launchSweep(ctx, dev, 'sweep', 2 * PAGES, readTwoWordsBack(ctx, BUF, PAGES, 'sweep', COMPUTE_NS));
      await ctx.racePoint({ counter: 'sweep', max: 2 * PAGES, until: ['cpu'], jitterNs: 300 });
      await cpuExpectInit(ctx, BUF, 0, PAGES, 'CPU read-back');
      const [swept] = await sweep.join();
      expectTwoWords(ctx, swept!, PAGES, 'device sweep');
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
