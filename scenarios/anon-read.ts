/**
 * hmm-tests' anon_read: the device reads private anonymous memory in the three states a read
 * fault meets: page 0 never touched (pte none), page 1 read by the CPU only (the shared zero
 * page), pages 2-7 written by the CPU. The buffer is made read-only (mprotect(PROT_READ)) before
 * the CPU reads page 1 and before the device reads, as in the kernel test; then two warps read
 * two words of every page (8 bytes at offset 0, 4 bytes in the middle: the kernel test's ints
 * ptr[i] = i).
 *
 * A correct driver faults the pte-none page in for reading (hmm_range_fault with a read request
 * on a read-only VMA maps the zero page), mirrors the zero page and the written pages read-only,
 * and the device sees 0 for pages 0 and 1 and the CPU's values for the rest. A driver that does
 * not ask hmm_range_fault to fault (snapshot only) cannot map page 0 and kills the job (the task
 * is not killable: the run fails); one that mirrors a different frame than the CPU maps (or the
 * zero page writable) is flagged by the oracle at the access (translation, data); wrong values
 * fail the check.
 */
import { PAGE_SIZE, PROT_READ, cpuRead64, defineScenario, deviceTask, mprotect } from 'hmm-emu';
import { W0, W1, fillPairs, idx, pair } from './common.js';

const PAGES = 8;
const WARPS = 2;
const BUF = 0x10_0000_0000;
/** What the device must read at (page, W0) and (page, W1): pages 0 and 1 are zero. */
const expected = (p: number): [bigint, bigint] => (p < 2 ? [0n, 0n] : [pair(idx(p, W0)), BigInt(idx(p, W1))]);

interface State {
  /** What the device read per page: [8-byte word at W0, 4-byte int at W1]. */
  readonly seen: Array<[bigint, bigint] | undefined>;
}

export const anonRead = defineScenario({
  name: 'anon-read',
  description: 'The device reads 8 read-only private pages: one never touched, one holding the zero page, six written by the CPU; it must read 0 for the first two and the CPU\'s values for the rest.',
  origin: 'tools/testing/selftests/mm/hmm-tests.c: anon_read',
  tags: ['hmm-tests', 'read', 'zero-page', 'pte-none', 'mprotect'],
  world: { frames: 128, devices: [{ name: 'gpu0', memoryFrames: 16 }] },
  drivers: 'any',
  state: (): State => ({ seen: [] }),
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF });
    // Initialize the buffer but leave the first two pages zero (pte none and the zero page).
    await fillPairs(ctx, BUF, 2, PAGES);
    ctx.expectEqual(await mprotect(ctx.mm, BUF, PAGES * PAGE_SIZE, PROT_READ), 0, 'mprotect(PROT_READ)');
    // Populate the CPU page table with the zero page at page 1.
    ctx.expectEqual(await cpuRead64(ctx.mm, BUF + PAGE_SIZE), 0n, 'CPU read of page 1 (zero page)');
  },
  tasks: {
    gpu: deviceTask<State>({
      warps: WARPS,
      async kernel(ctx, w) {
        for (let p = w.warp; p < PAGES; p += WARPS) {
          const a = await w.load(BUF + p * PAGE_SIZE + W0, 8);
          const b = await w.load(BUF + p * PAGE_SIZE + W1, 4);
          ctx.state.seen[p] = [a, b];
        }
      },
    }),
  },
  async check(ctx) {
    for (let p = 0; p < PAGES; p++) {
      const seen = ctx.state.seen[p];
      ctx.expect(seen !== undefined, `the device did not read page ${p}`);
      const [e0, e1] = expected(p);
      ctx.expectEqual(seen![0], e0, `device read of page ${p} word 0`);
      ctx.expectEqual(seen![1], e1, `device read of page ${p} int at offset ${W1}`);
    }
  },
});
