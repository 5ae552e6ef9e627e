/**
 * fork() while the device mirrors the parent: the device writes and increments words of 8
 * pages round after round, the parent's CPU thread writes its own words, and at a chosen moment
 * the process forks. Afterwards the child reads everything.
 *
 * fork write-protects the parent's private pages (MMU_NOTIFY_PROTECTION_PAGE) so that the first
 * write after it copies the page. A correct driver drops write permission on the device too:
 * the device's next store faults, the driver's write fault breaks COW in the parent, and the
 * store lands in the parent's new copy. A driver that keeps a writable device entry (bug class
 * 8) keeps writing into the frame the child now shares: the oracle flags the device write
 * (translation: writing where the CPU does not permit it) and the child's reads see values
 * written after fork (data). The parent must also not lose a device write across the COW break.
 */
import { type MmStruct, PAGE_SIZE, type ScenarioContext, type WarpContext, cpuRead64, cpuWrite64, defineScenario, deviceTask } from 'hmm-emu';

const PAGES = 8;
const ROUNDS = 3;
const WARPS = 2;
const BUF = 0x10_0000_0000;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;
const devVal = (round: number, page: number): bigint => BigInt(0xd000 + round * 0x100 + page);
const cpuVal = (round: number, page: number): bigint => BigInt(0xc000 + round * 0x100 + page);

async function writer(ctx: ScenarioContext, w: WarpContext): Promise<void> {
  for (let r = 0; r < ROUNDS; r++) {
    for (let p = w.warp; p < PAGES; p += WARPS) {
      await w.store(addr(p, 1), 8, devVal(r, p));
      ctx.bump('access');
      await w.atomicAdd(addr(p, 2), 8, 1);
      ctx.bump('access');
      // The device also reads what the CPU writes (the oracle checks the value).
      await w.load(addr(p, 0), 8);
    }
  }
}

export const forkWhileMirrored = defineScenario({
  name: 'fork-while-mirrored',
  description: 'The process forks at a chosen moment while the device writes its memory; the child must see exactly the memory at fork time and the parent every device write.',
  origin: 'hmm-tests.c anon_write_child, as a race; bug class 8 (fork/COW: device mappings of private pages must lose write permission)',
  tags: ['race', 'fork', 'cow', 'write-protect'],
  world: { frames: 256, devices: [{ name: 'gpu0', memoryFrames: 16 }] },
  drivers: 'any',
  state: (): { child: MmStruct | null } => ({ child: null }),
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF });
    for (let p = 0; p < PAGES; p++) await cpuWrite64(ctx.mm, addr(p, 0), cpuVal(0, p));
  },
  tasks: {
    gpu: deviceTask({ warps: WARPS, kernel: writer }),
    async cpu(ctx) {
      for (let r = 1; r < ROUNDS; r++) {
        for (let p = 0; p < PAGES; p++) {
          await cpuWrite64(ctx.mm, addr(p, 0), cpuVal(r, p));
          await ctx.sleep(100);
        }
      }
    },
    async forker(ctx) {
      await ctx.racePoint({ counter: 'access', max: 2 * ROUNDS * PAGES, until: ['gpu'], jitterNs: 200 });
      const child = await ctx.fork(ctx.mm, 'child');
      ctx.state.child = child;
      // The child reads its memory after the parent's device is done writing: whatever it sees
      // must be what the parent held at fork time (the oracle's reference memory knows it).
      await ctx.waitFor(() => ctx.finished('gpu'));
      for (let p = 0; p < PAGES; p++) for (let w = 0; w < 3; w++) await cpuRead64(child, addr(p, w));
    },
  },
  async check(ctx) {
    for (let p = 0; p < PAGES; p++) {
      ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, 0)), cpuVal(ROUNDS - 1, p), `parent page ${p} word 0 (last CPU write)`);
      ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, 1)), devVal(ROUNDS - 1, p), `parent page ${p} word 1 (last device write)`);
      ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, 2)), BigInt(ROUNDS), `parent page ${p} word 2 (device increments)`);
    }
  },
});
