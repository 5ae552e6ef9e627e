/**
 * hmm-tests' anon_write_child: the parent fills 8 private pages (the kernel test's ints
 * ptr[i] = i), migrates them to its device's memory first when the driver can (the kernel test
 * loops over both; here the schedule chooses), and forks. The child reads the parent's values,
 * opens its own mirror (a second device of the world, bound to the child's mm) and has that
 * device write every page (two warps; per page an 8-byte word and a 4-byte int, the values
 * -i); the child then reads the device's values and exits, and the parent's buffer must be
 * unchanged.
 *
 * fork shares the pages copy-on-write (device-private pages as read-only device entries in
 * both mms). A correct driver faults the child's device writes with a write request, which
 * breaks COW in the child: the device writes the child's new copies and the parent keeps its
 * frames. A child CPU read of a page still in the parent's device memory migrates it back
 * (migrate_to_ram). A driver that maps a COW-shared page writable (it faults for read only and
 * maps writable) writes the parent's frame: the oracle flags the device write (translation) and
 * the parent's check fails; one that keeps its device's writable entries (of the migrated
 * pages) across fork is flagged at fork's write-protect callback. The child exits with its
 * mirror still bound: a driver whose release leaves device entries (a TLB entry, say) is
 * flagged there. The kernel test checks the child's view of the device write only without
 * migration; here it holds either way and is always checked.
 */
import { DeviceFaultError, PAGE_SIZE, cpuRead64, cpuWrite64, defineScenario, exitMm } from 'hmm-emu';

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

export const anonWriteChild = defineScenario({
  name: 'anon-write-child',
  description: "A fork child's own device writes 8 private pages inherited from the parent (optionally in the parent's device memory at fork); the child must see the device's values and the parent its own, unchanged (copy on write).",
  origin: 'tools/testing/selftests/mm/hmm-tests.c: anon_write_child',
  tags: ['hmm-tests', 'write', 'fork', 'cow', 'device-private', 'migration'],
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
      await ctx.mmap(PAGES, { addr: BUF });
      // Initialize the buffer so we can tell if it is written.
      for (let p = 0; p < PAGES; p++) for (const off of [W0, W1]) await cpuWrite64(ctx.mm, BUF + p * PAGE_SIZE + off, pair(idx(p, off)));
      const migrate = ctx.driver.features.includes('device-migration') ? ctx.choose(2, 'migrate before fork') : 0;
      if (migrate === 1) {
        const ret = await ctx.device('gpu0').migrateToDevice(BUF, PAGES);
        ctx.expect(ret >= 0, `migrate to device memory failed: ${ret}`);
      }
      ctx.log(`migrate ${migrate}`);

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

      // The parent's buffer did not change.
      for (let p = 0; p < PAGES; p++) for (const off of [W0, W1]) ctx.expectEqual(await cpuRead64(ctx.mm, BUF + p * PAGE_SIZE + off), pair(idx(p, off)), `parent read of page ${p} offset ${off} after the child's write`);
    },
  },
});
