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
import { PAGE_SIZE, defineScenario } from 'hmm-emu';
import { cpuReadTwoWords, expectAllOnDevice, expectTwoWords, fillTwoWords, launchSweep, onDevice, readTwoWordsBack } from './common.js';

const PAGES = 8;
const BUF = 0x10_0000_0000;
/** Device compute time after each access of a sweep, so that the racing operation falls among them. */
const COMPUTE_NS = 1000;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;

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
      expectAllOnDevice(ctx, BUF, PAGES, 'the migration');
      expectTwoWords(ctx, (await dev.run(readTwoWordsBack(ctx, BUF, PAGES, 'read')))[0]!, PAGES, 'device read-back');

      // Release the device memory at a chosen moment of a device sweep.
      const sweep = launchSweep(ctx, dev, 'sweep', 2 * PAGES, readTwoWordsBack(ctx, BUF, PAGES, 'sweep', COMPUTE_NS));
      await ctx.racePoint({ counter: 'sweep', max: 2 * PAGES, until: ['cpu'], jitterNs: 300 });
      ctx.expectEqual(await dev.releaseDeviceMemory(), 0, 'releaseDeviceMemory');
      expectTwoWords(ctx, (await sweep.join())[0]!, PAGES, 'device sweep');
      // A first-touch driver (oversubscription) may have moved pages the sweep read back to its memory.
      if (!ctx.driver.features.includes('oversubscription')) {
        for (let p = 0; p < PAGES; p++) ctx.expect(!onDevice(ctx.mm, addr(p, 0)), `page ${p} is still in device memory after the release`);
      }
      expectTwoWords(ctx, await cpuReadTwoWords(ctx, BUF, PAGES), PAGES, 'CPU read after the release');
      expectTwoWords(ctx, (await dev.run(readTwoWordsBack(ctx, BUF, PAGES, 'last')))[0]!, PAGES, 'device read after the release');
    },
  },
});
