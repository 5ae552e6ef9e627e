/**
 * Migration to device memory racing CPU faults: the driver moves 8 pages to its device-private
 * memory (migrate_vma) at a chosen moment and again a little later, while a CPU thread writes
 * and reads the pages (each CPU touch of a device-private page faults it back to RAM through
 * the driver's migrate_to_ram) and a device kernel reads the CPU's words and writes its own.
 *
 * A correct driver copies each page before the new one is mapped, skips only its own MIGRATE
 * invalidations and then zaps the entries that migration moves itself, and makes the CPU fault
 * wait for or win against the migration: every read sees the last write. A driver that skips
 * its own events without zapping (bug class 4), copies too early or not at all, or leaves the
 * device mapping the source frame lets a read return stale data or a write land in a frame
 * nobody maps: the oracle flags it (data, translation, use after free).
 */
import { PAGE_SIZE, type ScenarioContext, type WarpContext, cpuRead64, cpuWrite64, defineScenario, deviceTask } from 'hmm-emu';

const PAGES = 8;
const ROUNDS = 3;
const BUF = 0x10_0000_0000;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;
const cpuVal = (round: number, page: number): bigint => BigInt(0xc000 + round * 0x100 + page);
const devVal = (round: number, page: number): bigint => BigInt(0xd000 + round * 0x100 + page);

async function deviceSide(ctx: ScenarioContext, w: WarpContext): Promise<void> {
  for (let r = 0; r < ROUNDS; r++) {
    for (let p = 0; p < PAGES; p++) {
      await w.load(addr(p, 0), 8); // the oracle checks it returns the CPU's last write
      await w.store(addr(p, 1), 8, devVal(r, p));
      ctx.bump('device');
    }
  }
}

export const deviceMigrationVsCpuFault = defineScenario({
  name: 'device-migration-vs-cpu-fault',
  description: 'The driver migrates 8 pages to device memory twice at chosen moments while a CPU thread faults them back by writing and reading them and the device reads and writes them; every read must see the last write.',
  origin: 'lib/test_hmm.c dmirror_migrate_to_device + dmirror_devmem_fault (migrate_to_ram); bug class 4 (an owner-filtered invalidation that skips without zapping)',
  tags: ['race', 'migration', 'device-private', 'migrate_to_ram'],
  world: { frames: 256, devices: [{ name: 'gpu0', memoryFrames: 32 }] },
  drivers: { features: ['device-migration'] },
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF });
    for (let p = 0; p < PAGES; p++) await cpuWrite64(ctx.mm, addr(p, 0), cpuVal(0, p));
  },
  tasks: {
    gpu: deviceTask({ kernel: deviceSide }),
    async cpu(ctx) {
      for (let r = 1; r < ROUNDS; r++) {
        for (let p = 0; p < PAGES; p++) {
          await cpuWrite64(ctx.mm, addr(p, 0), cpuVal(r, p));
          await cpuRead64(ctx.mm, addr(p, 1)); // the oracle checks it returns the device's last write
          ctx.bump('cpu');
        }
      }
    },
    async migrator(ctx) {
      const dev = ctx.device();
      await ctx.racePoint({ counter: 'cpu', max: (ROUNDS - 1) * PAGES, until: ['cpu'], jitterNs: 300 });
      const first = await dev.migrateToDevice(BUF, PAGES);
      ctx.log(`migrate_to_device: ${first}`);
      await ctx.racePoint({ counter: 'device', max: ROUNDS * PAGES, until: ['gpu'], jitterNs: 300, label: 'second migration' });
      const second = await dev.migrateToDevice(BUF, PAGES);
      ctx.log(`migrate_to_device again: ${second}`);
    },
  },
  async check(ctx) {
    for (let p = 0; p < PAGES; p++) {
      ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, 0)), cpuVal(ROUNDS - 1, p), `page ${p} word 0 (last CPU write)`);
      ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, 1)), devVal(ROUNDS - 1, p), `page ${p} word 1 (last device write)`);
    }
  },
});
