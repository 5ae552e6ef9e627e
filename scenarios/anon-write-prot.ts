/**
 * hmm-tests' anon_write_prot: 8 private pages mapped PROT_READ and never written. The device
 * reads page 0 (the zero page); then it tries to write every page, which must fail; the CPU
 * reads 0 everywhere; after mprotect(PROT_READ | PROT_WRITE) the device writes every page and
 * the CPU reads the device's values. The steps are sequential (one CPU thread launching three
 * device jobs of two warps each), as in the kernel test; the drivers' fault workers run
 * concurrently under the schedule.
 *
 * A correct driver maps page 0 read-only (the zero page), refuses the write (hmm_range_fault
 * with a write request on a read-only VMA fails with -EPERM; the driver cancels the fault and
 * the job dies before writing anything), and after mprotect faults the pages in writable: the
 * zero page is replaced by a private page. A driver that maps the zero page (or any page)
 * writable, or ignores the write permission, lets the device write where the CPU may not: the
 * device store hits the zero page or the oracle flags it (translation), and the CPU's 0s change.
 */
import { DeviceFaultError, PAGE_SIZE, PROT_READ, PROT_WRITE, type ScenarioContext, cpuRead64, defineScenario, mprotect } from 'hmm-emu';
import { W0, W1, expectWrittenInts, idx, pair } from './common.js';

const PAGES = 8;
const WARPS = 2;
const BUF = 0x10_0000_0000;

/** The device writes two words of every page (two warps), listing each store that landed in `landed`; DeviceFaultError if the job is killed. */
async function deviceWrite(ctx: ScenarioContext, landed: string[]): Promise<void> {
  await ctx.device().run(
    async (w) => {
      for (let p = w.warp; p < PAGES; p += WARPS) {
        await w.store(BUF + p * PAGE_SIZE + W0, 8, pair(idx(p, W0)));
        landed.push(`page ${p} offset ${W0}`);
        await w.store(BUF + p * PAGE_SIZE + W1, 4, idx(p, W1));
        landed.push(`page ${p} offset ${W1}`);
      }
    },
    { warps: WARPS },
  );
}

export const anonWriteProt = defineScenario({
  name: 'anon-write-prot',
  description: 'The device reads the zero page of a PROT_READ private mapping, then tries to write it: the write must be refused (job killed, memory still 0); after mprotect(RW) the write must land and the CPU see it.',
  origin: 'tools/testing/selftests/mm/hmm-tests.c: anon_write_prot',
  tags: ['hmm-tests', 'write', 'mprotect', 'read-only', 'zero-page', 'eperm'],
  world: { frames: 128, devices: [{ name: 'gpu0', memoryFrames: 16 }] },
  drivers: 'any',
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF, prot: PROT_READ });
  },
  tasks: {
    async test(ctx) {
      const dev = ctx.device();
      // The device reads the zero page.
      const [zero] = await dev.run(async (w) => [await w.load(BUF + W0, 8), await w.load(BUF + W1, 4)]);
      ctx.expectEqual(zero![0]!, 0n, 'device read of page 0 offset 0 (zero page)');
      ctx.expectEqual(zero![1]!, 0n, `device read of page 0 offset ${W1} (zero page)`);

      // The device write is refused.
      const landed: string[] = [];
      let killed = false;
      try {
        await deviceWrite(ctx, landed);
      } catch (err) {
        if (!(err instanceof DeviceFaultError)) throw err;
        killed = true;
      }
      ctx.expect(killed, 'the device write to PROT_READ memory succeeded: it must fail (-EPERM, the job killed)');
      ctx.expect(landed.length === 0, () => `device writes landed in PROT_READ memory: ${landed.join(', ')}`);
      for (let p = 0; p < PAGES; p++) for (const off of [W0, W1]) ctx.expectEqual(await cpuRead64(ctx.mm, BUF + p * PAGE_SIZE + off), 0n, `CPU read of page ${p} offset ${off} after the refused write`);

      // Now allow writing: the zero page is replaced.
      ctx.expectEqual(await mprotect(ctx.mm, BUF, PAGES * PAGE_SIZE, PROT_READ | PROT_WRITE), 0, 'mprotect(PROT_READ | PROT_WRITE)');
      try {
        await deviceWrite(ctx, landed);
      } catch (err) {
        if (err instanceof DeviceFaultError) ctx.fail(`the device write after mprotect(PROT_READ | PROT_WRITE) was killed: ${err.message}`);
        throw err;
      }
      await expectWrittenInts(ctx, BUF, PAGES);
    },
  },
});
