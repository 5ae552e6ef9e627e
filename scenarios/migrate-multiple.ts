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
import { type DeviceJob, type MmStruct, PAGE_SIZE, PTE_SWP_DEVICE_PRIVATE, type ScenarioContext, type ScenarioDevice, type WarpContext, cpuRead64, cpuWrite64, defineScenario, munmap, ptePresent, pteKind, vpnOf } from 'hmm-emu';

const PAGES = 4;
const ROUNDS = 4;
const BUF = 0x10_0000_0000;
/** Device compute time after each access of a sweep, so that the racing operation falls among them. */
const COMPUTE_NS = 1000;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;
const val = (round: number, page: number, word: number): bigint => BigInt(0x10000 * (round + 1) + 0x100 * page + word);

/** The CPU entry of the page at `a` is a device-private one (/proc/self/pagemap: a swap entry). */
const onDevice = (mm: MmStruct, a: number): boolean => pteKind(mm.pgtable.bitsAt(vpnOf(a))) === PTE_SWP_DEVICE_PRIVATE;
/** The CPU maps the page at `a` to a frame of system memory. */
const inRam = (mm: MmStruct, a: number): boolean => ptePresent(mm.pgtable.bitsAt(vpnOf(a))) && !mm.phys.isDevicePfn(mm.pgtable.pfnAt(vpnOf(a)));

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

function expectRound(ctx: ScenarioContext, r: number, got: readonly bigint[], who: string): void {
  for (let p = 0; p < PAGES; p++) for (let w = 0; w < 2; w++) ctx.expectEqual(got[2 * p + w]!, val(r, p, w), `round ${r} ${who}: page ${p} word ${w}`);
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
        for (let p = 0; p < PAGES; p++) ctx.expect(onDevice(ctx.mm, addr(p, 0)), `round ${r}: page ${p} is not in device memory after the migration`);
        expectRound(ctx, r, (await dev.run(readAll(ctx, `read${r}`)))[0]!, 'device read-back');

        // Home again, at a chosen moment of a device sweep.
        const sweepCounter = `sweep${r}`;
        const sweep = launchSweep(ctx, dev, sweepCounter, 2 * PAGES, readAll(ctx, sweepCounter, COMPUTE_NS));
        await ctx.racePoint({ counter: sweepCounter, max: 2 * PAGES, until: ['cpu'], jitterNs: 300, label: `round ${r} home` });
        if (explicit && r % 2 === 0) {
          const back = await dev.migrateToSystem(BUF, PAGES);
          ctx.expect(back >= 0, `round ${r}: migrateToSystem returned ${back}`);
          if (!firstTouch) for (let p = 0; p < PAGES; p++) ctx.expect(inRam(ctx.mm, addr(p, 0)), `round ${r}: page ${p} is not in system memory after migrateToSystem`);
        }
        const cpu: bigint[] = [];
        for (let p = 0; p < PAGES; p++) for (let w = 0; w < 2; w++) cpu.push(await cpuRead64(ctx.mm, addr(p, w)));
        expectRound(ctx, r, cpu, 'CPU read');
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
