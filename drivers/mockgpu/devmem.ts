/**
 * mockgpu's device memory: allocation with eviction, migration to device memory (the
 * first-touch policy and the explicit call), migrate_to_ram, and eviction back to RAM.
 *
 * Models: drivers/gpu/drm/nouveau/nouveau_dmem.c (nouveau_dmem_migrate_vma,
 * nouveau_dmem_migrate_chunk, nouveau_dmem_migrate_to_ram, nouveau_dmem_evict_chunk,
 * nouveau_dmem_page_alloc_locked) and lib/test_hmm.c's dmirror_devmem_fault and
 * dmirror_device_evict_chunk; the policy is NVIDIA UVM's (migrate on first device touch, evict
 * to system memory when the GPU is oversubscribed).
 *
 * Every migration follows migrate_vma's protocol (src/hmm/migrate.ts): setup (collect, lock,
 * migration entries, inside a MIGRATE invalidation owned by this device), copy with the copy
 * engine, pages, finalize. Our classic notifier skips MIGRATE events of this device (nouveau
 * does), so each migration clears its own device mappings: BEFORE setup, inside a migration
 * fence (svmm.migrationBegin/End) that keeps the fault path from mapping the range again until
 * finalize. The device therefore never touches a page while its CPU entry is a migration entry,
 * and cannot write a source page while it is copied:
 *
 *   migrator                                      device / fault path
 *   migrationBegin(range): fence; PFNCLR + TLB    device accesses fault from here on
 *   migrate_vma_setup (MIGRATE, owner = us):
 *     window notifiers: set_seq                   a fault job in flight fails read_retry
 *     classic notifier: skipped                   a commit in the fence waits for it to lift
 *   copy (copy engine)                            hmm_range_fault waits on migration entries
 *   migrate_vma_pages, migrate_vma_finalize
 *   migrationEnd(range): the fence lifts          the fault path maps the new pages
 *
 * (Zapping after setup instead, as the skip might suggest, leaves the window between the
 * migration entry and the zap in which a TLB hit still reaches the old page: the race
 * harness's frame oracle catches it in the device-migration case.)
 *
 * Eviction (oversubscription): when the device memory is full, `allocPage` evicts a run of
 * device frames from a clock hand with migrate_device_range (whose CLEAR invalidations, owned
 * by nobody, zap the device mappings through the notifiers), copies them to fresh system pages,
 * then migrate_device_pages / _finalize. Frames allocated less than minResidencyNs ago are
 * never chosen: a window migrated for a batch stays until the replayed accesses have used it,
 * so the device makes progress even when its working set exceeds its memory; when nothing can
 * be evicted the window stays in system memory (mapped remotely, as UVM pins thrashing pages).
 *
 * Locks: mmap_lock (read) around migrate_vma (taken here, or held by the CPU fault that calls
 * migrate_to_ram); page locks from setup to finalize; `evictLock` (class "mockgpu.evict")
 * serializes eviction passes and the clock hand; the svmm mutex inside migrationBegin and
 * inside the notifier callbacks of eviction's invalidations. Order: mmap_lock -> page lock ->
 * evictLock -> svmm mutex. Eviction only trylocks device pages, so it never waits on a page
 * lock; nothing waits for a migration fence while holding a lock.
 * `since` and `hand` change synchronously (allocation) or under evictLock.
 *
 * Simplifications: a migration copies whole windows page by page in one copy-engine batch (no
 * THP, no partial chunks); the victim choice is a clock over frames, not UVM's LRU of VA blocks;
 * no thrashing detector beyond the residency time.
 */
import {
  MIGRATE_PFN_MIGRATE,
  MIGRATE_PFN_VALID,
  MIGRATE_PFN_WRITE,
  MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
  MIGRATE_VMA_SELECT_SYSTEM,
  MigrateVma,
  Mutex,
  PAGE_SIZE,
  VM_READ,
  VM_WRITE,
  ENOMEM,
  EFAULT,
  migrateDeviceFinalize,
  migrateDevicePages,
  migrateDeviceRange,
  migratePfn,
  migratePfnToPfn,
  migrateVmaFinalize,
  migrateVmaPages,
  migrateVmaSetup,
  type DevPagemap,
  type MmStruct,
  type PhysMem,
  type Vma,
  type VmFault,
} from 'hmm-emu';
import type { MockGpu } from './mockgpu.js';
import type { MockGpuSvmm } from './svmm.js';

/** Pages per migrate_vma call (one PTE table, as dmirror's chunks). */
const CHUNK_PAGES = 512;

export class MockGpuMemory {
  private readonly phys: PhysMem;
  /** Virtual time each device frame was last allocated (index: pfn - firstPfn). */
  private readonly since: Float64Array;
  private hand = 0;
  private readonly evictLock: Mutex;

  constructor(
    readonly gpu: MockGpu,
    readonly pgmap: DevPagemap,
  ) {
    this.phys = gpu.device.phys;
    this.since = new Float64Array(pgmap.nframes);
    this.evictLock = new Mutex(gpu.engine, `${gpu.name}.evict`, { lockClass: 'mockgpu.evict' });
  }

  /** Frames of device memory. */
  get frames(): number {
    return this.pgmap.nframes;
  }

  /** Free frames of device memory. */
  get freeFrames(): number {
    return this.pgmap.freeFrames;
  }

  /** nouveau_dmem_page_alloc_locked: a locked device page (refcount 1), evicting if memory is full; or -ENOMEM. */
  async allocPage(): Promise<number> {
    for (let tries = 0; ; tries++) {
      const pfn = this.pgmap.allocPage();
      if (pfn > 0) {
        this.since[pfn - this.pgmap.firstPfn] = this.gpu.engine.now;
        this.phys.trylockPage(pfn); // zone_device_page_init leaves it locked
        return pfn;
      }
      // Another job may take what we freed: try twice, then give up (stay in system memory).
      if (tries === 2 || (await this.evict(this.gpu.options.evictPages)) === 0) return -ENOMEM;
    }
  }

  // ---- eviction ----

  /** Evicts up to `want` device pages that are old enough, from the clock hand. Returns pages moved to RAM. */
  async evict(want: number): Promise<number> {
    await this.evictLock.lock();
    try {
      const { firstPfn, nframes } = this.pgmap;
      const phys = this.phys;
      const now = this.gpu.engine.now;
      const minAge = this.gpu.options.minResidencyNs;
      const runs: Array<[number, number]> = [];
      let runStart = -1;
      let chosen = 0;
      const close = (end: number): void => {
        if (runStart >= 0) runs.push([firstPfn + runStart, end - runStart]);
        runStart = -1;
      };
      for (let scanned = 0; scanned < nframes && chosen < want; scanned++) {
        const i = this.hand;
        this.hand = i + 1 === nframes ? 0 : i + 1;
        if (i === 0) close(nframes); // runs are contiguous: none wraps
        const pfn = firstPfn + i;
        const inUse = phys.refcount[pfn]! > 0;
        const ok = !inUse || (!phys.pageLocked(pfn) && now - this.since[i]! >= minAge);
        if (!ok) {
          close(i);
          continue;
        }
        if (runStart < 0) runStart = i;
        if (inUse) chosen++;
      }
      close(this.hand === 0 ? nframes : this.hand);
      if (chosen === 0) {
        this.gpu.stats.evictionFailures++;
        return 0;
      }
      this.gpu.stats.evictions++;
      let moved = 0;
      for (const [start, n] of runs) moved += await this.evictRange(start, n);
      return moved;
    } finally {
      this.evictLock.unlock();
    }
  }

  /** dmirror_device_evict_chunk over device pfns [startPfn, +n): migrate_device_range, copy, pages, finalize. */
  private async evictRange(startPfn: number, n: number): Promise<number> {
    const phys = this.phys;
    const src = new BigUint64Array(n);
    const dst = new BigUint64Array(n);
    await migrateDeviceRange(phys, src, startPfn, n);
    const dsts: number[] = [];
    const srcs: number[] = [];
    for (let i = 0; i < n; i++) {
      const s = src[i]!;
      if (!(s & MIGRATE_PFN_MIGRATE)) continue;
      const spage = migratePfnToPfn(s);
      if (spage === 0) continue;
      const d = phys.allocPage();
      if (d < 0) break; // no RAM: the rest stays on the device (finalize restores it)
      phys.trylockPage(d);
      dsts.push(d);
      srcs.push(spage);
      dst[i] = migratePfn(d) | (s & MIGRATE_PFN_WRITE);
    }
    // The device mappings went with migrate_device_range's CLEAR invalidations: the copy is stable.
    if (dsts.length > 0) await this.gpu.device.copyEngine.copyPages(dsts, srcs);
    migrateDevicePages(phys, src, dst, n);
    const moved = countMoved(src, dst, n);
    await migrateDeviceFinalize(phys, src, dst, n);
    this.gpu.stats.evicted += moved;
    return moved;
  }

  /** dmirror RELEASE: every device page in use goes back to RAM (those locked right now stay). Returns pages moved. */
  async evictAll(): Promise<number> {
    await this.evictLock.lock();
    try {
      let moved = 0;
      const { firstPfn, nframes } = this.pgmap;
      for (let s = 0; s < nframes; s += CHUNK_PAGES) moved += await this.evictRange(firstPfn + s, Math.min(CHUNK_PAGES, nframes - s));
      return moved;
    } finally {
      this.evictLock.unlock();
    }
  }

  // ---- migration to device memory ----

  /**
   * nouveau_dmem_migrate_vma over [start, end) of svmm.mm, best effort: anonymous private
   * readable VMAs only, pages that cannot move stay. Takes mmap_lock (read). Returns the pages
   * moved to device memory. `firstTouch` only tags the statistics.
   */
  async migrateRange(svmm: MockGpuSvmm, start: number, end: number, firstTouch = false): Promise<number> {
    const moved = await forEachAnonChunk(svmm.mm, start, end, (vma, s, e) => ((vma.flags & VM_READ) !== 0 ? this.migrateChunkToDevice(svmm, vma, s, e) : Promise.resolve(0)));
    if (firstTouch) this.gpu.stats.firstTouchMigrations++;
    return moved;
  }

  /** nouveau_dmem_migrate_chunk: one migrate_vma of [s, e) within `vma` to device memory. Caller holds mmap_lock (read). */
  private async migrateChunkToDevice(svmm: MockGpuSvmm, vma: Vma, s: number, e: number): Promise<number> {
    const n = (e - s) / PAGE_SIZE;
    const src = new BigUint64Array(n);
    const dst = new BigUint64Array(n);
    const args = new MigrateVma({ mm: svmm.mm, vma, start: s, end: e, src, dst, pgmapOwner: this.gpu.owner, flags: MIGRATE_VMA_SELECT_SYSTEM });
    // Our classic notifier will skip setup's MIGRATE event: fence the range and zap it first.
    await svmm.migrationBegin(s, e);
    try {
      return await this.migrateCollectedToDevice(args, vma);
    } finally {
      svmm.migrationEnd(s, e);
    }
  }

  /** setup, allocate + copy, pages, finalize of a migrate_vma to device memory. */
  private async migrateCollectedToDevice(args: MigrateVma, vma: Vma): Promise<number> {
    const phys = this.phys;
    const src = args.src!;
    const dst = args.dst!;
    if ((await migrateVmaSetup(args)) !== 0 || args.cpages === 0) return 0;
    const writable = (vma.flags & VM_WRITE) !== 0;
    const dsts: number[] = [];
    const srcs: number[] = [];
    for (let i = 0; i < args.npages; i++) {
      const m = src[i]!;
      if (!(m & MIGRATE_PFN_MIGRATE)) continue;
      const spage = migratePfnToPfn(m);
      const d = await this.allocPage();
      if (d < 0) break; // device memory full and nothing evictable: the rest stays in RAM
      if (spage === 0) phys.clearPage(d);
      else {
        dsts.push(d);
        srcs.push(spage);
      }
      dst[i] = migratePfn(d) | (m & MIGRATE_PFN_WRITE || (spage === 0 && writable) ? MIGRATE_PFN_WRITE : 0n);
    }
    if (dsts.length > 0) await this.gpu.device.copyEngine.copyPages(dsts, srcs);
    await migrateVmaPages(args);
    const moved = countMoved(src, dst, args.npages);
    await migrateVmaFinalize(args);
    this.gpu.stats.migratedToDevice += moved;
    return moved;
  }

  // ---- migration to system memory ----

  /**
   * dev_pagemap_ops.migrate_to_ram (nouveau_dmem_migrate_to_ram): the CPU touched a
   * device-private page; move it to a system page. Called with mmap_lock (read) held and the
   * page locked and referenced. Returns 0 (the access retries) or -errno (SIGBUS).
   */
  async migrateToRam(vmf: VmFault): Promise<number> {
    this.gpu.stats.migrateToRamCalls++;
    const ret = await this.migrateChunkToSystem(vmf.mm, vmf.vma, vmf.address, vmf.address + PAGE_SIZE, vmf.pfn);
    return ret < 0 ? ret : 0;
  }

  /** Moves the device pages of [start, end) of `mm` to system memory. Takes mmap_lock (read). Returns pages moved. */
  async migrateRangeToSystem(mm: MmStruct, start: number, end: number): Promise<number> {
    return forEachAnonChunk(mm, start, end, async (vma, s, e) => Math.max(0, await this.migrateChunkToSystem(mm, vma, s, e, 0)));
  }

  /** Moves every device page of `mm` back to system memory (unbind). Takes mmap_lock (read). Returns pages moved. */
  async migrateMmToSystem(mm: MmStruct): Promise<number> {
    let moved = 0;
    await mm.mmapLock.downRead();
    try {
      if (mm.state !== 'live') return 0;
      for (const vma of [...mm.vmas.all]) {
        if (vma.shmem !== null) continue;
        for (let s = vma.start; s < vma.end; s += CHUNK_PAGES * PAGE_SIZE) {
          const r = await this.migrateChunkToSystem(mm, vma, s, Math.min(vma.end, s + CHUNK_PAGES * PAGE_SIZE), 0);
          if (r > 0) moved += r;
        }
      }
    } finally {
      mm.mmapLock.upRead();
    }
    return moved;
  }

  /** One migrate_vma of [s, e) from device memory to system pages. Caller holds mmap_lock (read). Returns pages moved or -errno. */
  private async migrateChunkToSystem(mm: MmStruct, vma: Vma, s: number, e: number, faultPage: number): Promise<number> {
    const n = (e - s) / PAGE_SIZE;
    const src = new BigUint64Array(n);
    const dst = new BigUint64Array(n);
    const args = new MigrateVma({ mm, vma, start: s, end: e, src, dst, pgmapOwner: this.gpu.owner, flags: MIGRATE_VMA_SELECT_DEVICE_PRIVATE, faultPage });
    // The device may map these device pages: our classic notifier will skip setup's MIGRATE
    // event, so fence the range and zap it first (an mm we do not mirror has nothing to zap).
    const svmm = this.gpu.svmmOf(mm);
    if (svmm === undefined) return this.migrateCollectedToSystem(args, faultPage);
    await svmm.migrationBegin(s, e);
    try {
      return await this.migrateCollectedToSystem(args, faultPage);
    } finally {
      svmm.migrationEnd(s, e);
    }
  }

  /** setup, allocate + copy, pages, finalize of a migrate_vma to system memory. */
  private async migrateCollectedToSystem(args: MigrateVma, faultPage: number): Promise<number> {
    const phys = this.phys;
    const src = args.src!;
    const dst = args.dst!;
    if ((await migrateVmaSetup(args)) !== 0) return -EFAULT;
    if (args.cpages === 0) return 0;
    const dsts: number[] = [];
    const srcs: number[] = [];
    let oom = false;
    for (let i = 0; i < args.npages; i++) {
      const m = src[i]!;
      if (!(m & MIGRATE_PFN_MIGRATE)) continue;
      const spage = migratePfnToPfn(m);
      if (spage === 0) continue;
      const d = phys.allocPage();
      if (d < 0) {
        oom = true;
        break;
      }
      phys.trylockPage(d);
      dsts.push(d);
      srcs.push(spage);
      dst[i] = migratePfn(d) | (m & MIGRATE_PFN_WRITE);
    }
    if (dsts.length > 0) await this.gpu.device.copyEngine.copyPages(dsts, srcs);
    await migrateVmaPages(args);
    const moved = countMoved(src, dst, args.npages);
    await migrateVmaFinalize(args);
    this.gpu.stats.migratedToRam += moved;
    return oom && faultPage !== 0 ? -ENOMEM : moved;
  }
}

/** Entries that moved: still MIGRATE, with a destination. */
function countMoved(src: BigUint64Array, dst: BigUint64Array, n: number): number {
  let moved = 0;
  for (let i = 0; i < n; i++) if (src[i]! & MIGRATE_PFN_MIGRATE && dst[i]! & MIGRATE_PFN_VALID) moved++;
  return moved;
}

/**
 * Calls `fn` on each chunk (at most CHUNK_PAGES pages, within one VMA) of the anonymous
 * private VMAs over [start, end) of `mm`, under mmap_lock (read), up to the first hole; returns
 * the sum of what `fn` returned (pages moved).
 */
async function forEachAnonChunk(mm: MmStruct, start: number, end: number, fn: (vma: Vma, s: number, e: number) => Promise<number>): Promise<number> {
  let moved = 0;
  await mm.mmapLock.downRead();
  try {
    for (let addr = start - (start % PAGE_SIZE); addr < end; ) {
      const vma = mm.vmas.findVma(addr);
      if (vma === null || vma.start >= end) break;
      if (addr < vma.start) addr = vma.start;
      const next = Math.min(end, vma.end, addr + CHUNK_PAGES * PAGE_SIZE);
      if (vma.shmem === null) moved += await fn(vma, addr, next);
      addr = next;
    }
  } finally {
    mm.mmapLock.upRead();
  }
  return moved;
}
