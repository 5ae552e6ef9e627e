/**
 * Device writes racing mprotect(PROT_READ): two warps store to and atomically increment words
 * of 8 pages, round after round (so their writable translations sit in the device TLB), while
 * the CPU write-protects the middle four pages at a chosen moment, reads them, and later makes
 * them writable again.
 *
 * A correct driver drops (or write-protects) the device's entries of the range, TLB included,
 * before its callback returns: a later device store or atomic there faults, and the driver
 * cannot service it while the VMA is read-only, so the job dies (it is killable) or, once the
 * range is writable again, retries and lands. A driver that keeps a writable TLB entry (bug
 * class 5), skips permission events or commits a stale writable snapshot (1) lets a device write
 * land where the CPU forbids writing: the oracle flags it (translation, invalidation).
 */
import { PAGE_SIZE, PROT_READ, PROT_WRITE, type ScenarioContext, type WarpContext, cpuRead64, cpuWrite64, defineScenario, deviceTask, mprotect } from 'hmm-emu';

const PAGES = 8;
const ROUNDS = 3;
const WARPS = 2;
const LO = 2;
const HI = 6;
const BUF = 0x10_0000_0000;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;
const devVal = (round: number, page: number): bigint => BigInt(0xd000 + round * 0x100 + page);

/** One warp's rounds: store word 1, add 1 to word 2, on each of its pages. */
async function writer(ctx: ScenarioContext, w: WarpContext): Promise<void> {
  for (let r = 0; r < ROUNDS; r++) {
    for (let p = w.warp; p < PAGES; p += WARPS) {
      await w.store(addr(p, 1), 8, devVal(r, p));
      ctx.bump('access');
      await w.atomicAdd(addr(p, 2), 8, 1);
      ctx.bump('access');
    }
  }
}

export const deviceWriteVsMprotect = defineScenario({
  name: 'device-write-vs-mprotect',
  description: 'Two warps store to and increment 8 pages round after round while the CPU makes the middle four read-only at a chosen moment; no device write may land where the CPU forbids writing.',
  origin: 'hmm-tests.c anon_write_prot, as a race; bug classes 1 and 5 (a writable device TLB entry after MMU_NOTIFY_PROTECTION_VMA)',
  tags: ['race', 'mprotect', 'write-protect', 'tlb'],
  world: { frames: 256, devices: [{ name: 'gpu0', memoryFrames: 16 }] },
  drivers: 'any',
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF });
    for (let p = 0; p < PAGES; p++) await cpuWrite64(ctx.mm, addr(p, 0), BigInt(0xc000 + p));
  },
  tasks: {
    gpu: deviceTask({ warps: WARPS, killable: true, kernel: writer }),
    async cpu(ctx) {
      await ctx.racePoint({ counter: 'access', max: 2 * ROUNDS * PAGES, until: ['gpu'], jitterNs: 200 });
      ctx.expectEqual(await mprotect(ctx.mm, addr(LO, 0), (HI - LO) * PAGE_SIZE, PROT_READ), 0, 'mprotect(PROT_READ)');
      // Reads of the protected pages still work (and the oracle checks what they return).
      for (let p = LO; p < HI; p++) for (let w = 0; w < 3; w++) await cpuRead64(ctx.mm, addr(p, w));
      await ctx.sleep(ctx.choose(4, 'read-only time') * 3000);
      ctx.expectEqual(await mprotect(ctx.mm, addr(LO, 0), (HI - LO) * PAGE_SIZE, PROT_READ | PROT_WRITE), 0, 'mprotect(PROT_READ | PROT_WRITE)');
    },
  },
  async check(ctx) {
    for (let p = 0; p < PAGES; p++) {
      ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, 0)), BigInt(0xc000 + p), `page ${p} word 0 (written by the CPU only)`);
      const n = await cpuRead64(ctx.mm, addr(p, 2));
      ctx.expect(n <= BigInt(ROUNDS), () => `page ${p}: the device counter is ${n}, more than the ${ROUNDS} increments made`);
      if (!ctx.killed.has('gpu')) ctx.expectEqual(n, BigInt(ROUNDS), `page ${p} device counter (the job was not killed)`);
    }
  },
});
