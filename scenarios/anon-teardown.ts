/**
 * hmm-tests' anon_teardown: a device read of a whole buffer races a CPU thread that unmaps its
 * second half. Each of 3 rounds maps 8 fresh private pages (where the kernel puts them: after
 * the first round, where the previous round's buffer was), fills them (the kernel test's ints
 * ptr[i] = i + c in round c), and the device reads them (two warps; per page an 8-byte word at
 * offset 0 and then a 4-byte int in the middle) while the unmapper thread munmaps pages 4-7 at
 * a chosen moment of the read (after any of its 16 accesses, plus a jitter of up to about a
 * fault's service: the kernel test's random delay). The round then unmaps the first half (the
 * kernel test leaves it mapped), so the next round's buffer reuses the address and the frames.
 *
 * A correct driver zaps the device's entries (page table and TLB) of the unmapped range before
 * its invalidation returns and never commits a translation snapshotted before it: a device read
 * either completes before the munmap and returns the CPU's data, or faults on the hole and the
 * driver kills the job (the kernel test's -EFAULT). So every read that returns is right, and the
 * job is killed only once the munmap has begun. A driver that leaves a stale TLB or page-table
 * entry, or commits a stale snapshot, lets the device read a freed frame (the second word of a
 * page, or the next round's buffer at the same address): the oracle flags the access
 * (translation, use after free), the map (use after free) or the callback (entry-after-callback).
 */
import { DeviceFaultError, PAGE_SIZE, type ScenarioContext, defineScenario, munmap } from 'hmm-emu';
import { W0, W1, fillPairs, idx, pair } from './common.js';

const PAGES = 8;
const HALF = PAGES / 2;
const WARPS = 2;
const ROUNDS = 3;
/** Device accesses per round (two per page): the range of the unmapper's chosen moment. */
const ACCESSES = 2 * PAGES;
/** The value a device read must return: 8 bytes at W0, 4 at W1 (the low int of the pair). */
const expected = (p: number, off: number, c: number): bigint => (off === W0 ? pair(idx(p, off), c) : BigInt(idx(p, off) + c));

interface State {
  /** Round c's buffer (set before the round starts). */
  buf: number;
  /** The round whose munmap has begun (-1: none yet). */
  unmapping: number;
}

/** The progress counter of round c's device read. */
const readCounter = (c: number): string => `read${c}`;

/** One round: map, fill, read everything on the device while the unmapper runs, check, unmap the rest. */
async function round(ctx: ScenarioContext<State>, c: number): Promise<void> {
  const buf = await ctx.mmap(PAGES);
  await fillPairs(ctx, buf, 0, PAGES, c);
  ctx.state.buf = buf;
  ctx.bump('round'); // the unmapper may start its countdown

  const bad: string[] = [];
  let killedAt: number | null = null;
  try {
    await ctx.device().run(
      async (w) => {
        for (let p = w.warp; p < PAGES; p += WARPS) {
          for (const [off, size] of [[W0, 8], [W1, 4]] as const) {
            const v = await w.load(buf + p * PAGE_SIZE + off, size);
            ctx.bump(readCounter(c));
            if (v !== expected(p, off, c)) bad.push(`page ${p} offset ${off}: 0x${v.toString(16)}, expected 0x${expected(p, off, c).toString(16)}`);
          }
        }
      },
      { warps: WARPS },
    );
  } catch (err) {
    if (!(err instanceof DeviceFaultError)) throw err;
    killedAt = err.address;
  }
  // The read is over: release the unmapper even if it waits for accesses that never came.
  ctx.bump(readCounter(c), Math.max(0, ACCESSES - ctx.count(readCounter(c))));

  // If the device read a page, the data must be right.
  ctx.expect(bad.length === 0, () => `round ${c}: the device read wrong data: ${bad.join('; ')}`);
  if (killedAt !== null) {
    ctx.log(`round ${c}: device read killed at 0x${killedAt.toString(16)}`);
    // Only pages gone from the CPU may kill the job: until the munmap begins, every page is readable.
    ctx.expect(ctx.state.unmapping >= c, `round ${c}: the device read was killed (at 0x${killedAt.toString(16)}) before the munmap began`);
  } else {
    ctx.log(`round ${c}: device read completed`);
  }
  await ctx.waitFor(() => ctx.count('unmapped') > c);
  ctx.expectEqual(await munmap(ctx.mm, buf, HALF * PAGE_SIZE), 0, `round ${c}: munmap of the first half`);
}

export const anonTeardown = defineScenario({
  name: 'anon-teardown',
  description: 'The device reads all of a fresh 8-page buffer while a CPU thread unmaps its second half at a chosen moment, for 3 rounds; every device read that returns must return the CPU\'s data, and the job may be killed only once the munmap has begun.',
  origin: 'tools/testing/selftests/mm/hmm-tests.c: anon_teardown',
  tags: ['hmm-tests', 'race', 'munmap', 'read', 'use-after-free'],
  world: { frames: 128, devices: [{ name: 'gpu0', memoryFrames: 16 }] },
  drivers: 'any',
  state: (): State => ({ buf: 0, unmapping: -1 }),
  tasks: {
    async reader(ctx) {
      for (let c = 0; c < ROUNDS; c++) await round(ctx, c);
    },
    async unmapper(ctx) {
      for (let c = 0; c < ROUNDS; c++) {
        await ctx.waitFor(() => ctx.count('round') > c);
        // Delay for a bit (a chosen moment of the read), then unmap the second half while it is being read.
        await ctx.racePoint({ counter: readCounter(c), max: ACCESSES, until: ['reader'], jitterNs: 200 });
        ctx.state.unmapping = c;
        ctx.expectEqual(await munmap(ctx.mm, ctx.state.buf + HALF * PAGE_SIZE, HALF * PAGE_SIZE), 0, `round ${c}: munmap of the second half`);
        ctx.bump('unmapped');
      }
    },
  },
});
