/**
 * hmm-tests' migrate_multiple: round after round (4 here, 10 in the kernel test), the process
 * maps a fresh buffer at the same address, fills it, the driver migrates it to device memory
 * and the device reads it back; then the pages go home, while a device sweep reads them: by
 * the driver's explicit migration to system memory on every other round when it has one (the
 * kernel test's device-coherent path), by CPU faults (migrate_to_ram) otherwise; the CPU
 * checks the data and unmaps the buffer. Each round's frames are freed and reused by the next.
 *
 * A correct driver moves every page each way (the kernel test's cpages == npages; here the
 * CPU entries are device-private ones after the migration and point to system memory after
 * the way back), copies before it remaps, and drops its device mapping of every page that
 * leaves its memory, whichever way it leaves, even when the migration is its own (bug class
 * 4). A driver that keeps such a mapping lets the sweep, or a later round, reach a freed or
 * reused frame: the oracle flags it (use after free, translation, data).
 */
import { PAGE_SIZE, type ScenarioContext, cpuRead64, cpuWrite64, defineScenario, munmap } from 'hmm-emu';
import { cpuReadTwoWords, expectAllOnDevice, expectTwoWords, inRam, launchSweep, readTwoWordsBack } from './common.js';

const PAGES = 4;
const ROUNDS = 4;
const BUF = 0x10_0000_0000;
/** Device compute time after each access of a sweep, so that the racing operation falls among them. */
const COMPUTE_NS = 1000;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;
const val = (round: number, page: number, word: number): bigint => BigInt(0x10000 * (round + 1) + 0x100 * page + word);

/** Expects `got` (by page, then word 0 and 1) to hold round r's values. */
function expectRound(ctx: ScenarioContext, r: number, got: readonly bigint[], who: string): void {
  expectTwoWords(ctx, got, PAGES, `round ${r} ${who}`, (p, w) => val(r, p, w));
}

export const migrateMultiple = defineScenario({
  name: 'migrate-multiple',
  description:
    'Four rounds of: map and fill 4 pages, migrate them to device memory, read them on the device, bring them home (explicitly or by CPU faults) while the device reads them, check and unmap; each way every page must move and every read see that round\'s data.',
  origin: 'tools/testing/selftests/mm/hmm-tests.c: migrate_multiple',
  tags: ['hmm-tests:migrate_multiple', 'migration', 'device-private', 'migrate_to_ram', 'frame-reuse', 'race'],
  world: { frames: 128, devices: [{ name: 'gpu0', memoryFrames: 16 }] },
  drivers: { features: ['device-migration'] },
  tasks: {
    async cpu(ctx) {
      const dev = ctx.device();
      const explicit = ctx.driver.features.includes('migrate-to-system');
      // A first-touch driver (oversubscription) may move a page the sweep reads back to the device.
      const firstTouch = ctx.driver.features.includes('oversubscription');
      for (let r = 0; r < ROUNDS; r++) {
        await ctx.mmap(PAGES, { addr: BUF });
        for (let p = 0; p < PAGES; p++) for (let w = 0; w < 2; w++) await cpuWrite64(ctx.mm, addr(p, w), val(r, p, w));

        const to = await dev.migrateToDevice(BUF, PAGES);
        ctx.expect(to >= 0, `round ${r}: migrateToDevice returned ${to}`);
        expectAllOnDevice(ctx, BUF, PAGES, 'the migration', `round ${r}: `);
        expectRound(ctx, r, (await dev.run(readTwoWordsBack(ctx, BUF, PAGES, `read${r}`)))[0]!, 'device read-back');

        // Home again, at a chosen moment of a device sweep.
        const sweepCounter = `sweep${r}`;
        const sweep = launchSweep(ctx, dev, sweepCounter, 2 * PAGES, readTwoWordsBack(ctx, BUF, PAGES, sweepCounter, COMPUTE_NS));
        await ctx.racePoint({ counter: sweepCounter, max: 2 * PAGES, until: ['cpu'], jitterNs: 300, label: `round ${r} home` });
        if (explicit && r % 2 === 0) {
          const back = await dev.migrateToSystem(BUF, PAGES);
          ctx.expect(back >= 0, `round ${r}: migrateToSystem returned ${back}`);
          if (!firstTouch) for (let p = 0; p < PAGES; p++) ctx.expect(inRam(ctx.mm, addr(p, 0)), `round ${r}: page ${p} is not in system memory after migrateToSystem`);
        }
        expectRound(ctx, r, await cpuReadTwoWords(ctx, BUF, PAGES), 'CPU read');
        expectRound(ctx, r, (await sweep.join())[0]!, 'device sweep');
        for (let p = 0; p < PAGES; p++) {
          await cpuRead64(ctx.mm, addr(p, 1));
          ctx.expect(inRam(ctx.mm, addr(p, 0)), `round ${r}: page ${p} is not in system memory after a CPU access`);
        }
        ctx.expectEqual(await munmap(ctx.mm, BUF, PAGES * PAGE_SIZE), 0, `round ${r}: munmap`);
      }
    },
  },
});
