/**
 * CPU page migration (NUMA balancing, compaction) while the device mirrors the pages: two
 * warps read the CPU's words and write and increment their own on 8 pages, round after round,
 * a CPU thread writes its words and reads the device's, and at three chosen moments the kernel
 * migrates a chosen part of the buffer to new system frames (migratePages: per page, a CLEAR
 * invalidation around the migration entry, as try_to_migrate_one issues; then copy, the new PTE,
 * and the old frame is freed; the free list is LIFO, so the next page's new frame is the one
 * just freed: a stale translation of one page reaches another page's data).
 *
 * A correct driver drops its device mapping (page table AND TLB, waiting for the fence) in the
 * CLEAR callback and refaults onto the new frame; a fault it was servicing across the migration
 * retries (mmu_interval_read_retry) instead of committing the old frame. A driver that keeps a
 * stale translation (bug class 5: TLB not flushed), commits a snapshot taken before the
 * migration (class 1), or otherwise outlives the free (class 10) lets the device read or write
 * the freed source frame: the oracle flags the access (translation, use after free) or the
 * callback (entry-after-callback), and a device write into the old frame is lost from the new
 * one (data, and the check's final values).
 */
import { PAGE_SIZE, type ScenarioContext, type WarpContext, cpuRead64, cpuWrite64, defineScenario, deviceTask, migratePages } from 'hmm-emu';

const PAGES = 8;
const ROUNDS = 3;
const WARPS = 2;
const MIGRATIONS = 3;
/** Virtual ns a warp computes per page visited (a TLB hit costs about 1 ns, a fault about 1.7 us). */
const COMPUTE_NS = 500;
/** Virtual ns the CPU thread pauses after each page: it keeps writing while the device works. */
const CPU_PAUSE_NS = 400;
const BUF = 0x10_0000_0000;
/** Device progress steps: two per page and round (after the store, after the increment). */
const ACCESSES = 2 * ROUNDS * PAGES;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;
const cpuVal = (round: number, page: number): bigint => BigInt(0xc000 + round * 0x100 + page);
const devVal = (round: number, page: number): bigint => BigInt(0xd000 + round * 0x100 + page);

/** The parts of the buffer a migration may cover: all of it, either half, or the middle half. */
const RANGES: ReadonlyArray<readonly [number, number]> = [
  [0, PAGES],
  [0, PAGES / 2],
  [PAGES / 2, PAGES],
  [2, 6],
];

interface State {
  /** Pages moved by each migratePages call. */
  moved: number[];
}

async function deviceSide(ctx: ScenarioContext<State>, w: WarpContext): Promise<void> {
  for (let r = 0; r < ROUNDS; r++) {
    for (let p = w.warp; p < PAGES; p += WARPS) {
      await w.load(addr(p, 0), 8); // the CPU's word: the oracle checks it is the last write
      await w.store(addr(p, 1), 8, devVal(r, p));
      ctx.bump('access');
      // Word 2 is this warp's counter (only it writes it): a read-modify-write that a write
      // into the old frame would lose.
      const n = await w.load(addr(p, 2), 8);
      await w.store(addr(p, 2), 8, n + 1n);
      ctx.bump('access');
      await ctx.sleep(COMPUTE_NS); // the kernel's work on the page: the device is busy for a while
    }
  }
}

export const cpuMigrationWhileMirrored = defineScenario<State>({
  name: 'cpu-migration-while-mirrored',
  description:
    'The kernel migrates mirrored pages to new system frames at three chosen moments while two device warps and a CPU thread read and write them; the driver must drop its mapping of each old frame before it is freed, and nothing may reach it afterwards.',
  origin:
    'mm/migrate.c migrate_pages with the MMU_NOTIFY_CLEAR invalidation of mm/rmap.c try_to_migrate_one (NUMA balancing, compaction); bug classes 1, 5 and 10 (linux-hmm.md §8)',
  tags: ['race', 'migration', 'numa', 'compaction', 'use-after-free'],
  // No device memory: every page stays in system RAM, where migratePages can move it.
  world: { frames: 256, devices: [{ name: 'gpu0', memoryFrames: 0 }] },
  drivers: 'any',
  state: (): State => ({ moved: [] }),
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF });
    for (let p = 0; p < PAGES; p++) {
      await cpuWrite64(ctx.mm, addr(p, 0), cpuVal(0, p));
      await cpuWrite64(ctx.mm, addr(p, 1), devVal(0, p) - 1n);
    }
  },
  tasks: {
    gpu: deviceTask({ warps: WARPS, kernel: deviceSide }),
    async cpu(ctx) {
      for (let r = 1; r <= ROUNDS; r++) {
        for (let p = 0; p < PAGES; p++) {
          await cpuWrite64(ctx.mm, addr(p, 0), cpuVal(r, p));
          await cpuRead64(ctx.mm, addr(p, 1)); // the oracle checks it is the device's last write
          await ctx.sleep(CPU_PAUSE_NS);
        }
      }
    },
    async migrator(ctx) {
      for (let i = 0; i < MIGRATIONS; i++) {
        // Anywhere in the device's accesses, then up to about a fault's service of jitter.
        await ctx.racePoint({ counter: 'access', max: ACCESSES, until: ['gpu'], jitterNs: 100, label: `migration ${i}` });
        const [from, to] = RANGES[ctx.choose(RANGES.length, `migration ${i} range`)]!;
        const n = await migratePages(ctx.mm, BUF + from * PAGE_SIZE, BUF + to * PAGE_SIZE);
        ctx.state.moved.push(n);
        ctx.log(`migratePages [${from}, ${to}): ${n} moved`);
      }
    },
  },
  async check(ctx) {
    // Nothing pins these pages (a mirror holds no page reference): the migrations move them.
    const moved = ctx.state.moved.reduce((a, b) => a + b, 0);
    ctx.expect(moved > 0, () => `no page moved in ${MIGRATIONS} migrations (${ctx.state.moved.join(', ')}): the race did not happen`);
    for (let p = 0; p < PAGES; p++) {
      ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, 0)), cpuVal(ROUNDS, p), `page ${p} word 0 (last CPU write)`);
      ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, 1)), devVal(ROUNDS - 1, p), `page ${p} word 1 (last device write)`);
      ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, 2)), BigInt(ROUNDS), `page ${p} word 2 (device increments)`);
    }
  },
});
