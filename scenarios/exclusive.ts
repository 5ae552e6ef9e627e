/**
 * hmm-tests' exclusive: the CPU fills 8 pages and the driver makes them exclusive to the
 * device (make_device_exclusive: each CPU entry becomes a device-exclusive entry, mapped for
 * atomics on the device). The device then adds 1 atomically to word 1 of every page, twice
 * over with some compute in between, and reads word 0, while the CPU, from a chosen moment on,
 * increments word 0 of every page, top page first; each CPU access to an exclusive page
 * revokes the exclusivity (the CPU entry is restored under an invalidation). Then the CPU
 * increments word 1 too, and the driver must report that nothing is exclusive any more (the
 * kernel test's HMM_DMIRROR_CHECK_EXCLUSIVE == 0).
 *
 * A correct driver holds every page exclusive after the command (checkExclusive: -EPERM),
 * drops its atomic mapping when the CPU revokes it and serves the device's next atomic through
 * an ordinary write fault, so no increment is lost on either side: word 0 ends at its initial
 * value + 1 and word 1 at + 3 (the device's two rounds and the CPU's one). A driver that keeps
 * its atomic mapping or its TLB entry after the revocation is flagged by the oracle when its
 * callback returns (invalidation) or when its next atomic reaches the page behind the CPU's
 * back (translation, data); a lost increment, or a page still exclusive, fails the
 * expectations.
 */
import { PAGE_SIZE, cpuRead64, cpuWrite64, defineScenario, deviceTask, EPERM } from 'hmm-emu';
import { fillTwoWords, initWord } from './common.js';

const PAGES = 8;
const BUF = 0x10_0000_0000;
/** Rounds of device atomics over the buffer, and the compute time after each (so the CPU's increments fall among them). */
const ROUNDS = 2;
const COMPUTE_NS = 200;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;

export const exclusive = defineScenario({
  name: 'exclusive',
  description:
    'The driver makes 8 pages exclusive to the device, which increments them atomically while the CPU increments other words of the same pages (revoking the exclusivity); no increment may be lost and no page may stay exclusive after the CPU touched it.',
  origin: 'tools/testing/selftests/mm/hmm-tests.c: exclusive',
  tags: ['hmm-tests:exclusive', 'exclusive', 'atomics', 'race'],
  world: { frames: 128, devices: [{ name: 'gpu0', memoryFrames: 16 }] },
  drivers: { features: ['exclusive'] },
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF });
    await fillTwoWords(ctx, BUF, PAGES);
    // Map memory exclusively for device access.
    ctx.expectEqual(await ctx.device().makeExclusive(BUF, PAGES), 0, 'makeExclusive');
    ctx.expectEqual(await ctx.device().checkExclusive(BUF, PAGES), -EPERM, 'checkExclusive before any CPU access');
  },
  tasks: {
    gpu: deviceTask({
      async kernel(ctx, w) {
        for (let r = 0; r < ROUNDS; r++) {
          for (let p = 0; p < PAGES; p++) {
            await w.atomicAdd(addr(p, 1), 8, 1);
            ctx.bump('atomic');
            await w.load(addr(p, 0), 8); // the oracle checks it: the CPU's word, incremented or not
            await ctx.sleep(COMPUTE_NS);
          }
        }
      },
    }),
    async cpu(ctx) {
      await ctx.racePoint({ counter: 'atomic', max: ROUNDS * PAGES, until: ['gpu'], jitterNs: 300 });
      // Fault pages back to system memory and check them: ptr[i]++ on word 0, from the top
      // page down (the device goes up: the two meet).
      for (let p = PAGES - 1; p >= 0; p--) {
        const v = await cpuRead64(ctx.mm, addr(p, 0));
        ctx.expectEqual(v, initWord(p, 0), `page ${p} word 0 before the CPU increment`);
        await cpuWrite64(ctx.mm, addr(p, 0), v + 1n);
      }
    },
  },
  async check(ctx) {
    // The CPU increments word 1 as well, after the device's atomics.
    for (let p = 0; p < PAGES; p++) {
      const v = await cpuRead64(ctx.mm, addr(p, 1));
      ctx.expectEqual(v, initWord(p, 1) + BigInt(ROUNDS), `page ${p} word 1 after the device's atomics`);
      await cpuWrite64(ctx.mm, addr(p, 1), v + 1n);
    }
    for (let p = 0; p < PAGES; p++) {
      ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, 0)), initWord(p, 0) + 1n, `page ${p} word 0 at the end`);
      ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, 1)), initWord(p, 1) + BigInt(ROUNDS) + 1n, `page ${p} word 1 at the end`);
    }
    // Check atomic access revoked.
    ctx.expectEqual(await ctx.device().checkExclusive(BUF, PAGES), 0, 'checkExclusive after the CPU touched every page');
  },
});
