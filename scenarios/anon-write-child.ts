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
import { defineScenario } from 'hmm-emu';
import { childDeviceWrite, expectPairs, fillPairs } from './common.js';

const PAGES = 8;
const WARPS = 2;
const BUF = 0x10_0000_0000;

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
      await fillPairs(ctx, BUF, 0, PAGES);
      const migrate = ctx.driver.features.includes('device-migration') ? ctx.choose(2, 'migrate before fork') : 0;
      if (migrate === 1) {
        const ret = await ctx.device('gpu0').migrateToDevice(BUF, PAGES);
        ctx.expect(ret >= 0, `migrate to device memory failed: ${ret}`);
      }
      ctx.log(`migrate ${migrate}`);

      // The child sees the fill, has its own device write -i everywhere, sees that, and exits.
      await childDeviceWrite(ctx, 'gpu1', BUF, PAGES, WARPS);

      // The parent's buffer did not change.
      await expectPairs(ctx, ctx.mm, BUF, PAGES, (p, off) => `parent read of page ${p} offset ${off} after the child's write`);
    },
  },
});
