/**
 * hmm-tests' migrate_shared: MAP_SHARED anonymous memory (shmem) cannot move to device-private
 * memory, which holds anonymous private pages only. The driver is asked to migrate 8 untouched
 * shared pages (the kernel test: test_hmm's read-back then finds nothing mapped, -ENOENT);
 * then the CPU fills them and the driver is asked again, at a chosen moment of a device sweep
 * that reads one word of each page and writes another.
 *
 * A correct driver leaves shared pages where they are: it reports the failure (dmirror:
 * -ENOENT while nothing is mapped; a best-effort migrate such as mockgpu's reports 0 pages
 * moved), every CPU entry still points to system memory (on a driver with 'snapshot', the
 * device's snapshot shows no device page either), and the device reads and writes the shared
 * frames coherently. The attempt is not a no-op for the mm: migrate_vma_setup collects the
 * shared pages under migration entries before it gives them up and restores them, so a
 * driver that skips its own MIGRATE invalidation without zapping (bug class 4) lets the sweep
 * translate a page under a migration entry: the oracle flags it (translation). A migration
 * that moved a shared page fails the expectations; a lost device write is flagged (data).
 */
import { ENOENT, MAP_SHARED, type MmStruct, PAGE_SIZE, SNAPSHOT, type ScenarioContext, cpuRead64, defineScenario, isSwapEntry, ptePresent, vpnOf } from 'hmm-emu';
import { fillTwoWords, initWord, launchSweep } from './common.js';

const PAGES = 8;
const BUF = 0x10_0000_0000;
/** Device compute time after each access of a sweep, so that the racing operation falls among them. */
const COMPUTE_NS = 1000;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;
const devVal = (page: number): bigint => BigInt(0xd000 + page);

/** The CPU maps the page at `a` to a frame of system memory, or not at all (never a device page, never a swap-format entry). */
const notOnDevice = (mm: MmStruct, a: number): boolean => {
  const bits = mm.pgtable.bitsAt(vpnOf(a));
  if (isSwapEntry(bits)) return false;
  return !ptePresent(bits) || !mm.phys.isDevicePfn(mm.pgtable.pfnAt(vpnOf(a)));
};

/** Snapshot codes of a page in system memory, or of none. */
const SYSTEM_CODES: readonly number[] = [SNAPSHOT.NONE, SNAPSHOT.READ, SNAPSHOT.WRITE, SNAPSHOT.ZERO | SNAPSHOT.READ];

/** The attempt's return: an error where the driver reports one (dmirror's read-back: -ENOENT), else 0 pages moved. */
function expectRefused(ctx: ScenarioContext, ret: number, what: string): void {
  ctx.expect(ret === 0 || ret === -ENOENT, `${what}: migrateToDevice of shared memory returned ${ret} (expected -ENOENT, or 0 pages moved)`);
}

async function expectStayed(ctx: ScenarioContext, after: string): Promise<void> {
  for (let p = 0; p < PAGES; p++) ctx.expect(notOnDevice(ctx.mm, addr(p, 0)), `shared page ${p} moved to device memory ${after}`);
  if (ctx.driver.features.includes('snapshot')) {
    const codes = await ctx.device().snapshot(BUF, PAGES);
    ctx.log(`snapshot ${after}: ${[...codes].map((c) => c.toString(16)).join(' ')}`);
    for (let p = 0; p < PAGES; p++) ctx.expect(SYSTEM_CODES.includes(codes[p]!), `shared page ${p}: snapshot code 0x${codes[p]!.toString(16)} is not a system page or none ${after}`);
  }
}

export const migrateShared = defineScenario({
  name: 'migrate-shared',
  description:
    'The driver is asked to migrate 8 MAP_SHARED anonymous pages to device memory, untouched and then filled while the device reads and writes them; no page may move, and every access must see the shared data.',
  origin: 'tools/testing/selftests/mm/hmm-tests.c: migrate_shared',
  tags: ['hmm-tests:migrate_shared', 'migration', 'shmem', 'race'],
  world: { frames: 128, devices: [{ name: 'gpu0', memoryFrames: 16 }] },
  drivers: { features: ['device-migration'] },
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF, flags: MAP_SHARED });
  },
  tasks: {
    async cpu(ctx) {
      const dev = ctx.device();
      // Untouched, as in the kernel test: nothing moves, and nothing is mapped to read back.
      const first = await dev.migrateToDevice(BUF, PAGES);
      ctx.log(`migrateToDevice of untouched shared memory: ${first}`);
      expectRefused(ctx, first, 'untouched');
      await expectStayed(ctx, 'by the first attempt');

      await fillTwoWords(ctx, BUF, PAGES);
      const sweep = launchSweep(ctx, dev, 'sweep', 2 * PAGES, async (w) => {
        for (let p = PAGES - 1; p >= 0; p--) {
          await w.load(addr(p, 0), 8); // the oracle checks the value: the CPU's fill
          ctx.bump('sweep');
          await ctx.sleep(COMPUTE_NS);
          await w.store(addr(p, 1), 8, devVal(p));
          ctx.bump('sweep');
          await ctx.sleep(COMPUTE_NS);
        }
      });
      await ctx.racePoint({ counter: 'sweep', max: 2 * PAGES, until: ['cpu'], jitterNs: 300 });
      const second = await dev.migrateToDevice(BUF, PAGES);
      ctx.log(`migrateToDevice of filled shared memory: ${second}`);
      expectRefused(ctx, second, 'filled');
      await sweep.join();
      await expectStayed(ctx, 'by the second attempt');
    },
  },
  async check(ctx) {
    for (let p = 0; p < PAGES; p++) {
      ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, 0)), initWord(p, 0), `page ${p} word 0 (the CPU's fill)`);
      ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, 1)), devVal(p), `page ${p} word 1 (the device's write)`);
    }
  },
});
