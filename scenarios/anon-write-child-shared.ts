/**
 * hmm-tests' anon_write_child_shared: the parent fills 8 MAP_SHARED anonymous pages (the kernel
 * test's ints ptr[i] = i) and forks. The child reads the parent's values, opens its own mirror
 * (a second device of the world, bound to the child's mm) and has that device write every page
 * (two warps; per page an 8-byte word and a 4-byte int, the values -i); the child reads the
 * device's values and exits, and the parent must see them too.
 *
 * Shared memory is not copied on write: parent and child map the same frames. A correct driver
 * faults the child's device writes in with a write request and mirrors the shared frames, so
 * the device's values land where both processes read them. A driver that mirrors a private
 * copy (or a frame the child no longer maps) leaves the parent's values unchanged: the check
 * fails, and the oracle flags a device access to a frame the CPU does not map (translation).
 * The child exits with its mirror still bound: a driver whose release leaves device entries (a
 * TLB entry, say) is flagged there (entry-after-callback).
 */
import { DeviceFaultError, MAP_SHARED, PAGE_SIZE, cpuRead64, cpuWrite64, defineScenario, exitMm } from 'hmm-emu';

const PAGES = 8;
const WARPS = 2;
const BUF = 0x10_0000_0000;
/** Byte offsets of the two words touched per page: an 8-byte word at 0, a 4-byte int in the middle. */
const W0 = 0;
const W1 = PAGE_SIZE / 2;
const U32 = 0xffff_ffffn;
/** The kernel test's int index of byte `off` of page `p`. */
const idx = (p: number, off: number): number => (p * PAGE_SIZE + off) / 4;
/** The parent's 8 bytes at int index i (ptr[i] = i): ints i and i + 1, little-endian. */
const pair = (i: number): bigint => BigInt(i) | (BigInt(i + 1) << 32n);
/** The device's int at index i: -i, as the 32 bits the kernel test's mirror holds. */
const neg = (i: number): bigint => BigInt((-i) >>> 0);
/** The device's 8 bytes at int index i: ints -i and -(i + 1). */
const negPair = (i: number): bigint => neg(i) | (neg(i + 1) << 32n);

export const anonWriteChildShared = defineScenario({
  name: 'anon-write-child-shared',
  description: "A fork child's own device writes 8 MAP_SHARED anonymous pages inherited from the parent; the child and the parent must both see the device's values (no copy on write).",
  origin: 'tools/testing/selftests/mm/hmm-tests.c: anon_write_child_shared',
  tags: ['hmm-tests', 'write', 'fork', 'shared'],
  world: {
    frames: 128,
    devices: [
      { name: 'gpu0', memoryFrames: 16 },
      // The child's own mirror (the kernel test's hmm_open in the child).
      { name: 'gpu1', memoryFrames: 16, deferred: true },
    ],
  },
  drivers: 'any',
  tasks: {
    async test(ctx) {
      await ctx.mmap(PAGES, { addr: BUF, flags: MAP_SHARED });
      // Initialize the buffer so we can tell if it is written.
      for (let p = 0; p < PAGES; p++) for (const off of [W0, W1]) await cpuWrite64(ctx.mm, BUF + p * PAGE_SIZE + off, pair(idx(p, off)));

      const child = await ctx.fork(ctx.mm, 'child');
      // The child sees the parent's values.
      for (let p = 0; p < PAGES; p++) for (const off of [W0, W1]) ctx.expectEqual(await cpuRead64(child, BUF + p * PAGE_SIZE + off), pair(idx(p, off)), `child read of page ${p} offset ${off} after fork`);

      // The child needs its own mirror of its own mm; its device writes the buffer.
      const dev = await ctx.bindDevice('gpu1', child);
      try {
        await dev.run(
          async (w) => {
            for (let p = w.warp; p < PAGES; p += WARPS) {
              await w.store(BUF + p * PAGE_SIZE + W0, 8, negPair(idx(p, W0)));
              await w.store(BUF + p * PAGE_SIZE + W1, 4, neg(idx(p, W1)));
            }
          },
          { warps: WARPS },
        );
      } catch (err) {
        if (err instanceof DeviceFaultError) ctx.fail(`the child's device write was killed: ${err.message}`);
        throw err;
      }
      // What the device wrote (the high int at W1 is still the parent's i + 1).
      for (let p = 0; p < PAGES; p++) {
        ctx.expectEqual(await cpuRead64(child, BUF + p * PAGE_SIZE + W0), negPair(idx(p, W0)), `child read of page ${p} offset ${W0} after its device write`);
        ctx.expectEqual((await cpuRead64(child, BUF + p * PAGE_SIZE + W1)) & U32, neg(idx(p, W1)), `child read of page ${p} int at offset ${W1} after its device write`);
      }
      // The child exits (its mirror stays bound until teardown: the driver sees the mm go).
      await exitMm(child);

      // The parent's buffer did change.
      for (let p = 0; p < PAGES; p++) {
        ctx.expectEqual(await cpuRead64(ctx.mm, BUF + p * PAGE_SIZE + W0), negPair(idx(p, W0)), `parent read of page ${p} offset ${W0} after the child's device write`);
        ctx.expectEqual(await cpuRead64(ctx.mm, BUF + p * PAGE_SIZE + W1), neg(idx(p, W1)) | (BigInt(idx(p, W1) + 1) << 32n), `parent read of page ${p} offset ${W1} after the child's device write`);
      }
    },
  },
});
