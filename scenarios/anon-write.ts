/**
 * hmm-tests' anon_write: the device writes 8 fresh private pages (two warps; per page an 8-byte
 * word at offset 0 and a 4-byte int in the middle, the kernel test's ints ptr[i] = i), then the
 * CPU reads them.
 *
 * None of the pages is populated when the device writes, so each first device access is a
 * write fault on a pte-none page: a correct driver asks hmm_range_fault for write access, which
 * allocates a zeroed page and maps it writable on the CPU, and mirrors that page; the CPU then
 * reads the device's values. A driver that faults for read only gets the shared zero page and,
 * if it maps that writable, writes into it (caught at the store); one that faults nothing
 * (snapshot only) cannot map a pte-none page and kills the job (the task is not killable: the
 * run fails); a write landing in a frame the CPU does not map is flagged by the oracle, and a
 * lost write fails the check.
 */
import { PAGE_SIZE, defineScenario, deviceTask } from 'hmm-emu';
import { W0, W1, expectWrittenInts, idx, pair } from './common.js';

const PAGES = 8;
const WARPS = 2;
const BUF = 0x10_0000_0000;

export const anonWrite = defineScenario({
  name: 'anon-write',
  description: 'The device writes 8 fresh private pages (write faults on pte-none pages); the CPU must then read every value the device wrote.',
  origin: 'tools/testing/selftests/mm/hmm-tests.c: anon_write',
  tags: ['hmm-tests', 'write', 'pte-none'],
  world: { frames: 128, devices: [{ name: 'gpu0', memoryFrames: 16 }] },
  drivers: 'any',
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF });
  },
  tasks: {
    gpu: deviceTask({
      warps: WARPS,
      async kernel(_ctx, w) {
        for (let p = w.warp; p < PAGES; p += WARPS) {
          await w.store(BUF + p * PAGE_SIZE + W0, 8, pair(idx(p, W0)));
          await w.store(BUF + p * PAGE_SIZE + W1, 4, idx(p, W1));
        }
      },
    }),
  },
  async check(ctx) {
    // The device wrote the low int at W1; the high one was never written (0).
    await expectWrittenInts(ctx, BUF, PAGES);
  },
});
