/**
 * hmm-tests' hmm2.double_map: two devices mirror the same process. The CPU fills 6 pages and
 * makes them read-only; device 0 reads them, then device 1; then (on a driver with device
 * memory) device 1's driver migrates them to its memory, at a chosen moment of a device-0
 * sweep over the buffer, and device 0 reads them again: device 1's pages are not device 0's,
 * so its fault brings them back to system memory through device 1's migrate_to_ram, or maps
 * or moves them as the driver allows. Device 1 reads them once more, and so does the CPU.
 * On a driver without device memory the two devices' reads race instead.
 *
 * A correct driver gives each device its own mirror: device 1's migration invalidates device
 * 0's mappings (another device's event: no owner filter applies), device 1 drops its own
 * mapping of each system page it moves (its own event, bug class 4), and a device-0 fault on
 * a page in device 1's memory gets the data, not device 1's frame. When the sweep ended before
 * the migration began, the migration must succeed and move every page (the kernel test's
 * case); while device 0 still faults, it may bring a page home before dmirror's read-back
 * (-ENOENT then). A driver that keeps either mapping or TLB entry is flagged when its
 * callback returns (invalidation) or when its next read reaches the freed system frame (use
 * after free); one that maps another device's private frame reaches memory it cannot address
 * (translation, data).
 */
import { ENOENT, PAGE_SIZE, PROT_READ, type ScenarioContext, type WarpContext, defineScenario, mprotect } from 'hmm-emu';
import { cpuExpectInit, fillTwoWords, initWord, launchSweep, onDevice } from './common.js';

const PAGES = 6;
const BUF = 0x10_0000_0000;
/** Device compute time after each access of a sweep, so that the racing operation falls among them. */
const COMPUTE_NS = 1000;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;

/** A device kernel that reads word `word` of every page back to front, bumping `counter` and computing `computeNs` after each; returns them by page. */
function readAll(ctx: ScenarioContext, word: number, counter: string, computeNs = 0): (w: WarpContext) => Promise<bigint[]> {
  return async (w) => {
    const out = new Array<bigint>(PAGES).fill(-1n);
    for (let p = PAGES - 1; p >= 0; p--) {
      out[p] = await w.load(addr(p, word), 8);
      ctx.bump(counter);
      if (computeNs > 0) await ctx.sleep(computeNs);
    }
    return out;
  };
}

function expectInit(ctx: ScenarioContext, got: readonly bigint[], word: number, who: string): void {
  for (let p = 0; p < PAGES; p++) ctx.expectEqual(got[p]!, initWord(p, word), `${who}: page ${p} word ${word}`);
}

/** `device` reads word `word` of every page (a job joined by the calling task); the values are checked. */
async function deviceRead(ctx: ScenarioContext, device: string, word: number, who: string): Promise<void> {
  expectInit(ctx, (await ctx.device(device).run(readAll(ctx, word, `${device}.read`)))[0]!, word, who);
}

export const doubleMap = defineScenario({
  name: 'double-map',
  description:
    'Two devices mirror one process and read the same 6 read-only pages; device 1 migrates them to its memory while device 0 reads them, and both read them again; every read must see the data, and no device may keep a mapping the other\'s migration invalidated.',
  origin: 'tools/testing/selftests/mm/hmm-tests.c: hmm2.double_map',
  tags: ['hmm-tests:double_map', 'two-devices', 'migration', 'device-private', 'race'],
  world: {
    frames: 128,
    devices: [
      { name: 'gpu0', memoryFrames: 16 },
      { name: 'gpu1', memoryFrames: 16 },
    ],
  },
  drivers: 'any',
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF });
    await fillTwoWords(ctx, BUF, PAGES);
    // Make the region read-only.
    ctx.expectEqual(await mprotect(ctx.mm, BUF, PAGES * PAGE_SIZE, PROT_READ), 0, 'mprotect(PROT_READ)');
  },
  tasks: {
    async cpu(ctx) {
      // Device 0, then device 1, read system memory.
      await deviceRead(ctx, 'gpu0', 0, 'gpu0 read');
      await deviceRead(ctx, 'gpu1', 1, 'gpu1 read');

      const sweep = launchSweep(ctx, ctx.device('gpu0'), 'sweep', PAGES, readAll(ctx, 1, 'sweep', COMPUTE_NS));
      await ctx.racePoint({ counter: 'sweep', max: PAGES, until: ['cpu'], jitterNs: 300 });
      if (ctx.driver.features.includes('device-migration')) {
        // Migrate the pages to device 1 while device 0 reads them.
        const alone = ctx.count('sweep') >= 2 * PAGES; // the sweep ended first (its end adds PAGES)
        const ret = await ctx.device('gpu1').migrateToDevice(BUF, PAGES);
        ctx.log(`gpu1 migrateToDevice: ${ret}`);
        const allMoved = [...Array(PAGES).keys()].every((p) => onDevice(ctx.mm, addr(p, 0)));
        if (alone) {
          // The kernel test's case: the migration succeeds and moves every page.
          ctx.expect(ret >= 0, `gpu1 migrateToDevice returned ${ret}`);
          ctx.expect(allMoved, 'a page is not in device memory after the migration');
        } else {
          // A device-0 fault may bring a page home again before dmirror's read-back: -ENOENT.
          ctx.expect(ret >= 0 || (ret === -ENOENT && !allMoved), `gpu1 migrateToDevice returned ${ret} with every page in device memory`);
        }
      } else {
        // No device memory: device 1 reads while device 0 does.
        await deviceRead(ctx, 'gpu1', 0, 'gpu1 read racing gpu0');
      }
      expectInit(ctx, (await sweep.join())[0]!, 1, 'gpu0 sweep');

      // Device 0 reads again (from device 1's memory, wherever the driver brings it from).
      await deviceRead(ctx, 'gpu0', 0, 'gpu0 read after the migration');
      await deviceRead(ctx, 'gpu1', 1, 'gpu1 read after the migration');
    },
  },
  async check(ctx) {
    await cpuExpectInit(ctx, BUF, 0, PAGES, 'CPU read');
  },
});
