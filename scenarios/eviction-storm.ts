/**
 * An eviction storm: the device has 4 frames of memory and the working set is 16 pages. Four
 * warps sweep the whole buffer twice, two upwards and two downwards, each reading and
 * incrementing its own word of every page; the driver migrates each 2-page window it faults on
 * to device memory (first touch), so with the memory 4x oversubscribed it evicts device pages
 * back to RAM again and again (the second sweep refaults what the first evicted), while the
 * other warps still map them and the CPU, at chosen moments, writes its word of every fourth
 * page (each write to a device page faults it back through migrate_to_ram).
 *
 * A correct driver evicts with migrate_device_range, whose CLEAR invalidations zap every device
 * mapping of the pages before they are copied, maps a window only after its migration has
 * finished, and frees a device frame only when nothing maps it. A driver that keeps a mapping
 * of an evicted frame (reused for the next window at once: 4 frames for 16 pages) lets a warp
 * read or write another page's data; one that copies before the zap, or loses the race between
 * an eviction and a CPU fault on the same page, loses an increment: the oracle flags the access
 * (translation, use after free, data) and the check finds a word short. The check also asserts
 * that the driver did evict (its `evictions` counter), or the storm did not happen.
 */
import { PAGE_SIZE, type ScenarioContext, type WarpContext, cpuRead64, cpuWrite64, defineScenario, deviceTask } from 'hmm-emu';

const PAGES = 16;
const DEVICE_FRAMES = 4;
const WARPS = 4;
const ROUNDS = 2;
/** The CPU writes its word of every CPU_STRIDE-th page. */
const CPU_STRIDE = 4;
/**
 * Virtual ns a warp computes per page: the sweeps last long enough (about 120 us) for device
 * pages to age past mockgpu's eviction grace (minResidencyNs, 20 us) while windows still fault.
 */
const COMPUTE_NS = 2000;
const BUF = 0x10_0000_0000;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;
/** Word WARPS of a page is the CPU's. */
const CPU_WORD = WARPS;
const cpuVal = (round: number, page: number): bigint => BigInt(0xc000 + round * 0x100 + page);

async function sweep(ctx: ScenarioContext, w: WarpContext): Promise<void> {
  // Even warps sweep up, odd warps down: two windows fault at a time, and evict each other's.
  const up = w.warp % 2 === 0;
  for (let r = 0; r < ROUNDS; r++) {
    for (let i = 0; i < PAGES; i++) {
      const p = up ? i : PAGES - 1 - i;
      const v = await w.load(addr(p, w.warp), 8);
      await w.store(addr(p, w.warp), 8, v + 1n);
      ctx.bump('access');
      await ctx.sleep(COMPUTE_NS);
    }
  }
}

export const evictionStorm = defineScenario({
  name: 'eviction-storm',
  description:
    'Four warps sweep 16 pages twice, reading and incrementing their words, on a device with 4 frames of memory, so the driver migrates on first touch and evicts constantly, while the CPU writes some pages; data must stay right and no device mapping may outlive its frame.',
  origin:
    'NVIDIA UVM oversubscription and eviction (uvm_va_block eviction to sysmem under memory pressure) and nouveau_dmem_evict_chunk / migrate_device_range (peers.md)',
  tags: ['race', 'oversubscription', 'eviction', 'migration', 'device-private'],
  world: {
    frames: 256,
    // mockgpu's hints: 2-page fault windows (two windows fill the device memory); an eviction
    // pass takes every device page older than 20 us (its defaults, spelled out for sizing).
    devices: [{ name: 'gpu0', memoryFrames: DEVICE_FRAMES, driverOptions: { windowPages: 2, evictPages: 16, minResidencyNs: 20_000 } }],
  },
  drivers: { features: ['oversubscription'] },
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF });
    for (let p = 0; p < PAGES; p++) {
      // One CPU write makes the page a real anonymous page (the warps' words start at zero).
      await cpuWrite64(ctx.mm, addr(p, CPU_WORD), cpuVal(0, p));
    }
  },
  tasks: {
    gpu: deviceTask({ warps: WARPS, kernel: sweep }),
    async cpu(ctx) {
      for (let r = 1; r <= ROUNDS; r++) {
        // Anywhere in the sweeps: the pages may be on the device, being evicted, or in RAM.
        await ctx.racePoint({ counter: 'access', max: WARPS * ROUNDS * PAGES, until: ['gpu'], jitterNs: 200, label: `cpu round ${r}` });
        for (let p = 0; p < PAGES; p += CPU_STRIDE) {
          await cpuWrite64(ctx.mm, addr(p, CPU_WORD), cpuVal(r, p));
          await cpuRead64(ctx.mm, addr(p, (p / CPU_STRIDE) % WARPS)); // a warp's word: the oracle checks it
        }
      }
    },
  },
  async check(ctx) {
    for (let p = 0; p < PAGES; p++) {
      for (let w = 0; w < WARPS; w++) ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, w)), BigInt(ROUNDS), `page ${p} word ${w} (warp ${w}'s increments)`);
      ctx.expectEqual(await cpuRead64(ctx.mm, addr(p, CPU_WORD)), cpuVal(p % CPU_STRIDE === 0 ? ROUNDS : 0, p), `page ${p} CPU word`);
    }
    const stats = ctx.device().stats();
    ctx.expect((stats['evictions'] ?? 0) > 0, () => `the device memory was oversubscribed 4x, yet the driver reports no eviction: ${JSON.stringify(stats)}`);
  },
});
