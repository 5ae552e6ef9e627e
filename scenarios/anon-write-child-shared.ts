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
import { MAP_SHARED, PAGE_SIZE, cpuRead64, defineScenario } from 'hmm-emu';
import { W0, W1, childDeviceWrite, fillPairs, idx, neg, negPair } from './common.js';

const PAGES = 8;
const WARPS = 2;
const BUF = 0x10_0000_0000;

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
      await fillPairs(ctx, BUF, 0, PAGES);

      // The child sees the fill, has its own device write -i everywhere, sees that, and exits.
      await childDeviceWrite(ctx, 'gpu1', BUF, PAGES, WARPS);

      // The parent's buffer did change.
      for (let p = 0; p < PAGES; p++) {
        ctx.expectEqual(await cpuRead64(ctx.mm, BUF + p * PAGE_SIZE + W0), negPair(idx(p, W0)), `parent read of page ${p} offset ${W0} after the child's device write`);
        ctx.expectEqual(await cpuRead64(ctx.mm, BUF + p * PAGE_SIZE + W1), neg(idx(p, W1)) | (BigInt(idx(p, W1) + 1) << 32n), `parent read of page ${p} offset ${W1} after the child's device write`);
      }
    },
  },
});
