/**
 * device.fault_pages_per_s: a device kernel (32 warps, each storing to its own slice page after
 * page) touches 1,000,000 fresh anonymous pages through mockgpu. Every page comes in through
 * the whole driver path: the device faults (records in the fault buffer, the interrupt), the
 * handler drains batches, sorts and coalesces them, services each window on the p-queue worker
 * pool (an interval notifier per window, one hmm_range_fault that populates the window
 * writable, the device page table filled under the update lock), and replays once per batch.
 * Migration policy off (system memory mapped remotely), as in the issue. Windows are 2 MiB
 * (512 pages, one notifier each): UVM's VA block, the span its prefetcher grows a fault to
 * under a sequential pattern; with 64 KiB windows the figure is about 40% lower (more jobs,
 * notifiers and batches per page; see drivers/mockgpu/README.md).
 *
 * The figure is pages / wall-clock seconds of the whole run (bind, mmap, kernel, unbind),
 * best of ROUNDS after a warm-up; every page's word is checked afterwards (not timed). The
 * floor is the engine: each page costs one device access and one handle_mm_fault (with its
 * scheduling point) inside hmm_range_fault; the driver's own work is about 2% of the profile.
 */
import { Device, Engine, MAP_ANONYMOUS, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE, PhysMem, createMm, mmap, type MmStruct } from '../src/index.js';
import { MockGpu, MockGpuSvmm, type MockGpuOptions } from '../drivers/mockgpu/index.js';

const PAGES = 1_000_000;
/** Warps of the kernel: each stores to its own contiguous slice, page after page. */
const WARPS = 32;
const ROUNDS = 3;
/** The driver configuration measured. */
export const BENCH_OPTIONS: MockGpuOptions = { migration: 'off', windowPages: 512, notifierPages: 512, prefetch: true, workers: 4, batchSize: 256 };

const wordOf = (i: number): number => (Math.imul(i, 0x9e37_79b9) | 1) >>> 0;

/** One run: returns the wall-clock seconds and the world for checking. */
async function once(opts: MockGpuOptions = BENCH_OPTIONS): Promise<{ seconds: number; mm: MmStruct; base: number; gpu: MockGpu; steps: number }> {
  const e = new Engine({ strategy: 'fifo', maxSteps: 200_000_000 });
  const phys = new PhysMem(e, { frames: PAGES + 8192, maxDeviceFrames: 0 });
  const mm = createMm(e, phys, { name: 'bench' });
  const dev = new Device(e, phys, { memory: { frames: 0 }, faultBufferEntries: 1024 });
  const gpu = new MockGpu(dev, opts);
  let base = 0;
  e.spawn('main', async () => {
    gpu.start();
    const svmm = await gpu.bind(mm);
    if (!(svmm instanceof MockGpuSvmm)) throw new Error(`bind failed: ${String(svmm)}`);
    base = await mmap(mm, 0, PAGES * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    const job = dev.launch(svmm.as, { warps: WARPS, name: 'touch' }, async (ctx) => {
      const first = Math.floor((ctx.warp * PAGES) / WARPS);
      const last = Math.floor(((ctx.warp + 1) * PAGES) / WARPS);
      for (let i = first; i < last; i++) await ctx.store(base + i * PAGE_SIZE + 4 * (i % 1024), 4, wordOf(i));
    });
    await job.join();
    await gpu.unbind(svmm);
    await gpu.stop();
  });
  const t0 = performance.now();
  const r = await e.run();
  const seconds = (performance.now() - t0) / 1000;
  if (!r.ok) throw r.failure;
  return { seconds, mm, base, gpu, steps: r.steps };
}

function verify(mm: MmStruct, base: number): void {
  const pt = mm.pgtable;
  for (let i = 0; i < PAGES; i++) {
    const vpn = base / PAGE_SIZE + i;
    const v = mm.phys.readU32(pt.pfnAt(vpn), 4 * (i % 1024));
    if (v !== wordOf(i)) throw new Error(`device.fault_pages_per_s: page ${i} holds ${v}, expected ${wordOf(i)}`);
  }
}

/** Runs the workload once (for the scratch runner): the figure and the driver's counters. */
export async function deviceBenchOnce(opts: MockGpuOptions = BENCH_OPTIONS): Promise<{ pagesPerS: number; seconds: number; steps: number; stats: MockGpu['stats'] }> {
  const r = await once(opts);
  verify(r.mm, r.base);
  return { pagesPerS: PAGES / r.seconds, seconds: r.seconds, steps: r.steps, stats: r.gpu.stats };
}

export const deviceWorkload: { name: 'device.fault_pages_per_s'; target: '>= 1,000,000'; run(): Promise<{ value: number; unit: string }> } = {
  name: 'device.fault_pages_per_s',
  target: '>= 1,000,000',
  async run() {
    const first = await once();
    verify(first.mm, first.base); // warm-up, checked
    let top = 0;
    for (let i = 0; i < ROUNDS; i++) {
      const r = await once();
      top = Math.max(top, PAGES / r.seconds);
    }
    return { value: Math.round(top), unit: 'pages/s' };
  },
};
