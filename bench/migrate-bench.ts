/**
 * migrate.pages_per_s: 1,000,000 written anonymous pages migrated to device-private memory and
 * back, in batches of BATCH pages per migrate_vma call (as a driver does: setup, allocate +
 * lock + copy, pages, finalize), all under one mmap read lock. Both directions count: the
 * figure is 2,000,000 pages / seconds of one round trip, best of ROUNDS after a warm-up round.
 * Every page's word is checked after each direction (not timed).
 */
import {
  DevPagemap,
  MIGRATE_PFN_MIGRATE,
  MIGRATE_PFN_WRITE,
  MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
  MIGRATE_VMA_SELECT_SYSTEM,
  MigrateVma,
  migratePfn,
  migratePfnToPfn,
  migrateVmaFinalize,
  migrateVmaPages,
  migrateVmaSetup,
  EFAULT,
  Engine,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  PAGE_SIZE,
  PROT_READ,
  PROT_WRITE,
  PTE_KIND_MASK,
  PTE_PRESENT,
  PhysMem,
  createMm,
  cpuWrite64,
  mmap,
  vpnOf,
  type MmStruct,
} from '../src/index.js';

const PAGES = 1_000_000;
const FRAMES = 1_100_000;
/** Pages per migrate_vma call. */
export const BATCH = 4096;
const ROUNDS = 3;

/** The word written at page i (at offset 8 * (i % 512)). */
const wordOf = (i: number): bigint => BigInt(i) * 0x9e37_79b9n + 1n;

/** One direction over [a, a + PAGES pages) in batches; returns the pages moved. */
async function migrateAll(mm: MmStruct, pgmap: DevPagemap, a: number, toDevice: boolean): Promise<number> {
  const phys = mm.phys;
  const src = new BigUint64Array(BATCH);
  const dst = new BigUint64Array(BATCH);
  const vma = mm.vmas.lookup(a);
  let moved = 0;
  for (let s = a; s < a + PAGES * PAGE_SIZE; s += BATCH * PAGE_SIZE) {
    const e = Math.min(s + BATCH * PAGE_SIZE, a + PAGES * PAGE_SIZE);
    const args = new MigrateVma({ mm, vma, start: s, end: e, src, dst, pgmapOwner: pgmap.owner, flags: toDevice ? MIGRATE_VMA_SELECT_SYSTEM : MIGRATE_VMA_SELECT_DEVICE_PRIVATE });
    if ((await migrateVmaSetup(args)) !== 0) throw new Error('migrate_vma_setup failed');
    for (let i = 0; i < args.npages; i++) {
      const m = src[i]!;
      if (!(m & MIGRATE_PFN_MIGRATE)) continue;
      const spage = migratePfnToPfn(m);
      const dpage = toDevice ? pgmap.allocPage() : phys.allocPage();
      if (dpage < 0) throw new Error('out of memory');
      phys.trylockPage(dpage);
      if (spage !== 0) phys.copyPage(dpage, spage);
      dst[i] = migratePfn(dpage) | (m & MIGRATE_PFN_WRITE);
    }
    await migrateVmaPages(args);
    for (let i = 0; i < args.npages; i++) if (src[i]! & MIGRATE_PFN_MIGRATE) moved++;
    await migrateVmaFinalize(args);
  }
  return moved;
}

function verify(mm: MmStruct, a: number, present: boolean): void {
  const pt = mm.pgtable;
  for (let i = 0; i < PAGES; i++) {
    const vpn = vpnOf(a) + i;
    const bits = pt.bitsAt(vpn);
    if (present ? !(bits & PTE_PRESENT) : (bits & PTE_PRESENT) !== 0 || (bits & PTE_KIND_MASK) === 0) throw new Error(`page ${i}: unexpected PTE bits ${bits}`);
    const v = mm.phys.readU64(pt.pfnAt(vpn), 8 * (i % 512));
    if (v !== wordOf(i)) throw new Error(`page ${i}: read ${v}, expected ${wordOf(i)}`);
  }
}

export const migrateWorkload = {
  name: 'migrate.pages_per_s',
  target: '>= 1,000,000',
  async run(): Promise<{ value: number; unit: string }> {
    const engine = new Engine({ strategy: 'fifo', maxSteps: 100_000_000 });
    const phys = new PhysMem(engine, { frames: FRAMES, maxDeviceFrames: FRAMES });
    const pgmap = new DevPagemap(phys, { owner: { name: 'bench-device' }, nframes: FRAMES, migrateToRam: () => Promise.resolve(-EFAULT) });
    const mm = createMm(engine, phys, { name: 'bench' });
    let best = 0;
    engine.spawn('driver', async () => {
      const a = await mmap(mm, 0, PAGES * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      for (let i = 0; i < PAGES; i++) await cpuWrite64(mm, a + i * PAGE_SIZE + 8 * (i % 512), wordOf(i));
      for (let round = 0; round <= ROUNDS; round++) {
        await mm.mmapLock.downRead();
        const t0 = performance.now();
        const there = await migrateAll(mm, pgmap, a, true);
        const t1 = performance.now();
        verify(mm, a, false);
        const t2 = performance.now();
        const back = await migrateAll(mm, pgmap, a, false);
        const t3 = performance.now();
        mm.mmapLock.upRead();
        if (there !== PAGES || back !== PAGES) throw new Error(`moved ${there} there and ${back} back, expected ${PAGES}`);
        verify(mm, a, true);
        if (pgmap.freeFrames !== FRAMES) throw new Error(`${FRAMES - pgmap.freeFrames} device frames leaked`);
        const ms = t1 - t0 + (t3 - t2);
        const rate = (2 * PAGES) / (ms / 1000);
        if (process.env['MIGRATE_BENCH_VERBOSE']) process.stdout.write(`round ${round}: to device ${(t1 - t0).toFixed(0)} ms, back ${(t3 - t2).toFixed(0)} ms, ${Math.round(rate)} pages/s\n`);
        if (round > 0) best = Math.max(best, rate);
      }
    });
    const r = await engine.run();
    if (!r.ok) throw r.failure;
    return { value: Math.round(best), unit: 'pages/s' };
  },
};
