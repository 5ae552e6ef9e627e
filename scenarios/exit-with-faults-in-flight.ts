/**
 * The process exits while its device faults: two warps walk 16 pages, touching each for the
 * first time (with the smallest fault windows the drivers take as hints, most pages cost a
 * device fault), reading the CPU's word and incrementing their own, with half the buffer in
 * device memory (migrated at setup by drivers that can; mockgpu also migrates on first touch).
 * The process's last thread writes a few pages, then exits (exit_mmap: mmu_notifier_release,
 * then one UNMAP invalidation of everything around the zap, then the VMAs go) at a chosen
 * moment: between two device accesses, or woken by the k-th device fault, so that the exit
 * lands while that fault is being serviced. Another process then allocates and writes 16
 * pages, reusing the freed frames.
 *
 * A correct driver stops mirroring in ->release / the RELEASE invalidation: it zaps every device
 * mapping (page table and TLB, waiting for the fence), makes no new one (a fault in flight
 * finds the mm gone and fails), cancels what it cannot service (the job is killed, a GPU
 * segfault: legal here) and frees its device pages through the normal page-free path, so the
 * teardown audit finds no leaked frame, no device mapping left and no driver task blocked. A
 * driver that maps after release, commits a fault that snapshotted pages before the exit, or
 * skips the TLB lets the device reach a frame the exit freed (now another process's): the
 * oracle flags the access (translation, use after free) or the callback (entry-after-callback).
 */
import { PAGE_SIZE, type MmStruct, type ScenarioContext, type WarpContext, cpuWrite64, defineScenario, deviceTask, exitMm } from 'hmm-emu';

const PAGES = 16;
const WARPS = 2;
/** Pages [DEVICE_FROM, PAGES) go to device memory at setup when the driver can migrate. */
const DEVICE_FROM = PAGES / 2;
/** Virtual ns a warp computes per page. */
const COMPUTE_NS = 300;
const BUF = 0x10_0000_0000;
const OTHER = 0x20_0000_0000;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;

async function walker(ctx: ScenarioContext, w: WarpContext): Promise<void> {
  for (let p = w.warp; p < PAGES; p += WARPS) {
    await w.load(addr(p, 0), 8); // the CPU's word: the oracle checks the value and the frame
    ctx.bump('access');
    await w.atomicAdd(addr(p, 1 + w.warp), 8, 1);
    ctx.bump('access');
    await ctx.sleep(COMPUTE_NS);
  }
}

export const exitWithFaultsInFlight = defineScenario({
  name: 'exit-with-faults-in-flight',
  description:
    'The process exits at a chosen moment (between device accesses, or inside a device fault) while two device warps fault on 16 pages, some in device memory; the driver must stop the device cleanly in release, and no access may reach a frame the exit freed.',
  origin:
    'mmu_notifier_release / exit_mmap with a live device mirror (hmm-tests.c open_close and the teardown of its fixtures; the 2015 HMM review thread on ->release); bug class 10 (linux-hmm.md §8)',
  tags: ['race', 'exit', 'release', 'teardown', 'use-after-free'],
  world: {
    frames: 256,
    mms: ['proc', 'other'],
    // One page per fault window for the drivers that take the hint (mockgpu: windowPages, no
    // prefetch; hmm2015: faultWindowPages), so the device keeps faulting until the exit.
    devices: [{ name: 'gpu0', memoryFrames: 16, driverOptions: { windowPages: 1, prefetch: false, faultWindowPages: 1 } }],
  },
  drivers: 'any',
  setup(ctx) {
    // Publish each device fault in the step it is raised: a task waiting for it is runnable
    // while the driver services that fault.
    ctx.engine.trace.on('device.fault', () => void ctx.bump('fault'));
    return (async () => {
      await ctx.mmap(PAGES, { addr: BUF });
      for (let p = 0; p < PAGES; p++) await cpuWrite64(ctx.mm, addr(p, 0), BigInt(0xc000 + p));
      if (ctx.driver.features.includes('device-migration')) {
        const ret = await ctx.device().migrateToDevice(BUF + DEVICE_FROM * PAGE_SIZE, PAGES - DEVICE_FROM);
        ctx.expect(ret >= 0, `migrate to device: ${ret}`);
      }
    })();
  },
  tasks: {
    // Killable: after the exit, a fault on a page of the dead mm cannot be serviced.
    gpu: deviceTask({ warps: WARPS, killable: true, kernel: walker }),
    // The process's last thread (the others are gone): a few writes, then exit.
    async proc(ctx) {
      for (let p = 1; p < PAGES; p += 5) await cpuWrite64(ctx.mm, addr(p, 3), BigInt(0xe000 + p)); // device pages fault back to RAM
      let how: string;
      if (ctx.choose(2, 'exit timing') === 0) {
        how = 'between accesses';
        await ctx.racePoint({ counter: 'access', max: 2 * PAGES, until: ['gpu'], jitterNs: 150 });
      } else {
        // Woken by the k-th device fault: the exit starts while the driver services it.
        const k = 1 + ctx.choose(PAGES, 'exit at fault');
        how = `at device fault ${k}`;
        await ctx.waitFor(() => ctx.count('fault') >= k || ctx.finished('gpu'));
      }
      ctx.log(`exit ${how}, after ${ctx.count('access')} device accesses`);
      await exitMm(ctx.mm);
      // Another process takes the freed frames and fills them.
      const other: MmStruct = ctx.mmNamed('other');
      await ctx.mmap(PAGES, { addr: OTHER, mm: other });
      for (let p = 0; p < PAGES; p++) await cpuWrite64(other, OTHER + p * PAGE_SIZE, BigInt(0xf000 + p));
    },
  },
  async check(ctx) {
    ctx.expectEqual(ctx.mm.state, 'dead', 'the exited mm');
    ctx.log(`device job ${ctx.killed.has('gpu') ? 'killed' : 'finished'}`);
  },
});
