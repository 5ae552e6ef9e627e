/**
 * hmm-tests' exclusive_cow: the CPU fills 8 pages, the driver makes them exclusive to the
 * device, and the process forks. Then, concurrently, the parent and the child each increment
 * word 0 of every page of their own copy, and the device (mirroring the parent) adds to word 1
 * of every page atomically. fork restores the parent's exclusive entries to ordinary ones and
 * write-protects them for copy-on-write; every first write afterwards, the CPU's or the
 * device's, copies the page in the process that writes.
 *
 * A correct driver drops its atomic mappings when fork write-protects the pages (the fork's
 * invalidation), and serves the device's next atomic with a write fault that breaks COW in
 * the parent: the parent sees its increment and the device's, the child only its own (the
 * kernel test: both processes increment correctly), and nothing is exclusive afterwards. A
 * driver that keeps a writable or atomic device mapping across fork (bug class 8) would make
 * the device write the frame the child now shares: the oracle flags the fork's callback that
 * returns with the writable entry still there (invalidation), the device write (translation:
 * writing where the CPU does not permit it) and the child's reads (data), and the
 * expectations catch a lost or misplaced increment.
 */
import { EPERM, type MmStruct, PAGE_SIZE, type ScenarioContext, cpuRead64, cpuWrite64, defineScenario, deviceTask } from 'hmm-emu';
import { fillTwoWords, initWord } from './common.js';

const PAGES = 8;
/** Device compute time after each atomic (so the CPUs' COW breaks fall among the atomics). */
const COMPUTE_NS = 200;
const BUF = 0x10_0000_0000;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;

interface State {
  child: MmStruct | null;
}

/** ptr[i]++ on word 0 of every page of `mm`, top page first, checking what it read. */
async function increment(ctx: ScenarioContext<State>, mm: MmStruct, who: string): Promise<void> {
  for (let p = PAGES - 1; p >= 0; p--) {
    const v = await cpuRead64(mm, addr(p, 0));
    ctx.expectEqual(v, initWord(p, 0), `${who}: page ${p} word 0 before its increment`);
    await cpuWrite64(mm, addr(p, 0), v + 1n);
  }
  for (let p = 0; p < PAGES; p++) ctx.expectEqual(await cpuRead64(mm, addr(p, 0)), initWord(p, 0) + 1n, `${who}: page ${p} word 0 after its increment`);
}

export const exclusiveCow = defineScenario<State>({
  name: 'exclusive-cow',
  description:
    "The driver makes 8 pages exclusive to the device and the process forks; parent and child each increment their own copy while the device increments the parent's atomically; each process must see exactly its own increments (and the parent the device's).",
  origin: 'tools/testing/selftests/mm/hmm-tests.c: exclusive_cow',
  tags: ['hmm-tests:exclusive_cow', 'exclusive', 'atomics', 'fork', 'cow', 'race'],
  world: { frames: 128, devices: [{ name: 'gpu0', memoryFrames: 16 }] },
  drivers: { features: ['exclusive'] },
  state: (): State => ({ child: null }),
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF });
    await fillTwoWords(ctx, BUF, PAGES);
    // Map memory exclusively for device access.
    ctx.expectEqual(await ctx.device().makeExclusive(BUF, PAGES), 0, 'makeExclusive');
    ctx.expectEqual(await ctx.device().checkExclusive(BUF, PAGES), -EPERM, 'checkExclusive before fork');
    ctx.state.child = await ctx.fork(ctx.mm, 'child');
  },
  tasks: {
    gpu: deviceTask<State>({
      async kernel(ctx, w) {
        for (let p = 0; p < PAGES; p++) {
          await w.atomicAdd(addr(p, 1), 8, 1);
          ctx.bump('atomic');
          await ctx.sleep(COMPUTE_NS);
        }
      },
    }),
    async parent(ctx) {
      await ctx.racePoint({ counter: 'atomic', max: PAGES, until: ['gpu'], jitterNs: 300 });
      await increment(ctx, ctx.mm, 'parent');
    },
    async child(ctx) {
      await ctx.racePoint({ counter: 'atomic', max: PAGES, until: ['gpu'], jitterNs: 300, label: 'child' });
      await increment(ctx, ctx.state.child!, 'child');
    },
  },
  async check(ctx) {
    const child = ctx.state.child!;
    for (let p = 0; p < PAGES; p++) {
      ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, 1)), initWord(p, 1) + 1n, `parent: page ${p} word 1 (the device's atomic)`);
      ctx.expectEqual(await cpuRead64(child, addr(p, 1)), initWord(p, 1), `child: page ${p} word 1 (no device write reaches the child)`);
    }
    ctx.expectEqual(await ctx.device().checkExclusive(BUF, PAGES), 0, 'checkExclusive after fork and the CPU accesses');
  },
});
