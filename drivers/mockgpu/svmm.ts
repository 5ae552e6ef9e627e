/**
 * MockGpuSvmm: one mm mirrored on one mockgpu device address space, and the fault path of one
 * fault window.
 *
 * Models: struct nouveau_svmm and its fault path (drivers/gpu/drm/nouveau/nouveau_svm.c:
 * nouveau_svmm_invalidate_range_start, nouveau_svm_range_invalidate, nouveau_range_fault,
 * nouveau_atomic_range_fault, nouveau_hmm_convert_pfn), with UVM's window ("VA block")
 * servicing in place of nouveau's single-page window.
 *
 * Two kinds of notifier, as nouveau:
 * - a whole-mm classic notifier (`notifier`): its invalidate_range_start refuses a
 *   non-blockable range (-EAGAIN), skips MMU_NOTIFY_MIGRATE events whose owner is this device
 *   (the migration paths zap their own entries, see devmem.ts), and otherwise zaps the device
 *   page table of the range and waits for the device TLB shootdown, under `mutex`;
 * - per-window interval notifiers (`windows`, one per aligned window of notifierPages pages,
 *   inserted on first use and cached until unbind): their invalidate refuses a non-blockable
 *   range (returns false, see below), else takes `mutex`, calls mmuIntervalSetSeq and returns;
 *   the zap is the classic notifier's,
 *   which the dispatch calls AFTER the interval ones (nouveau's "very hacky" reliance). They skip
 *   only MMU_NOTIFY_EXCLUSIVE events of this device, without which make_device_exclusive
 *   would bump the sequence the atomic fault path is reading and livelock it.
 *
 * Non-blockable ranges (the OOM reaper's mmu_notifier_invalidate_range_start_nonblock) and a
 * kernel trap. In mm/mmu_notifier.c, __mmu_notifier_invalidate_range_start runs
 * mn_itree_invalidate first (active_invalidate_ranges++, invalidate_seq |= 1 on overlap, the
 * interval callbacks), then mn_hlist_invalidate_range_start. If the interval side succeeds and
 * a classic start then returns -EAGAIN, the -EAGAIN goes back to __oom_reap_task_mm, which does
 * not call mmu_notifier_invalidate_range_end: mn_itree_inv_end never runs, the active count
 * stays raised, and invalidate_seq, once odd, never goes even again, so every later
 * mmu_interval_read_begin and mmu_interval_notifier_remove (our unbind) waits forever
 * (src/notifier/dispatch.ts reproduces this). But when an interval callback itself returns
 * false, mn_itree_invalidate calls mn_itree_inv_end before returning -EAGAIN, so the itree side
 * is ended properly. So a careful driver with both kinds of notifier refuses a non-blockable
 * range in its interval callbacks (it could not zap there anyway: the classic notifier, which
 * zaps and waits for the TLB shootdown, cannot sleep either), and its classic notifier, reached
 * only for ranges no window overlaps, accepts such a range whenever nothing of it is mapped on
 * the device (a trylock and a page-table look, no sleep) and refuses it otherwise.
 *
 * The fault path of a window (rangeFault), in the documented order:
 *
 *   seq = mmu_interval_read_begin(window)      (no lock held)
 *   mmap_read_lock; hmm_range_fault; mmap_read_unlock      -EBUSY -> again
 *   mutex_lock
 *   mmu_interval_read_retry(window, seq)?  -> unlock, again     (pairs with set_seq above)
 *   a migration fence over the window?      -> unlock, wait for it to lift, again
 *   program the device page table from hmm_pfns
 *   mutex_unlock
 *
 * What each page of the window requests: a faulting page its access (read: REQ_FAULT; write
 * and atomic: REQ_FAULT | REQ_WRITE), unless the device already maps it with that access (a
 * stale duplicate record of an earlier batch: faulting it again would only undo our work, e.g.
 * restore our own device-exclusive entry); with prefetch, the other pages REQ_FAULT (+ WRITE
 * when the window writes), unless the device maps them already. Then, per fault: a write to a
 * device page mapped read-only (COW-shared by fork; hmm_range_fault reports our own device
 * pages without faulting them) moves that page to RAM and faults again; an atomic on a system
 * page takes make_device_exclusive (nouveau_atomic_range_fault). A failed attempt there leaves
 * our exclusive entry behind, and the next make_device_exclusive would restore it AFTER
 * read_begin (an ownerless invalidation: retry forever), so the retry restores it first.
 *
 * Locks and what they protect:
 * - `mutex` (class "mockgpu.svmm", nouveau's svmm->mutex, the update lock): the device page
 *   table of `as` and its TLB shootdowns; each window notifier's invalidate_seq (set_seq and
 *   read_retry); `dead`; `migrating` (the migration fences; removal is one synchronous step).
 * - `notifierLock` (class "mockgpu.svmm.notifiers"): the `windows` cache (insert, remove).
 *   Never taken by a notifier callback, so removing a notifier under it cannot deadlock; and
 *   never taken with mmap_lock held (insert may take mmap_lock for write).
 * - `active`/`idleWq`: fault jobs in flight, for unbind; synchronous updates.
 * Lock order: notifierLock -> mmap_lock -> page lock -> mutex. The update lock is never held
 * across hmm_range_fault, make_device_exclusive or a migration (they can invalidate, and the
 * callbacks take it), and never while taking another lock. No notifier is inserted or removed
 * from a callback or with `mutex` held.
 *
 * Simplifications vs nouveau: no unmanaged (kernel-reserved) VA range; the device page table is
 * written directly (PFNMAP/PFNCLR are one call each here); windows are cached instead of
 * inserted and removed around every fault (nouveau's temporary notifier), removed at unbind.
 */
import {
  DEV_PTE_ATOMIC,
  DEV_PTE_VALID,
  DEV_PTE_WRITE,
  DEVICE_VA_LIMIT,
  EAGAIN,
  EBUSY,
  EFAULT,
  EINVAL,
  ENODEV,
  EPERM,
  FAULT_FLAG_REMOTE,
  HMM_PFN_REQ_FAULT,
  HMM_PFN_REQ_WRITE,
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  HmmRange,
  MMU_NOTIFY_EXCLUSIVE,
  MMU_NOTIFY_MIGRATE,
  MmuIntervalNotifier,
  MmuNotifier,
  Mutex,
  PAGE_SIZE,
  VM_READ,
  VM_WRITE,
  WaitQueue,
  handleMmFault,
  hmmRangeFault,
  makeDeviceExclusive,
  mmuIntervalNotifierInsert,
  mmuIntervalNotifierRemove,
  mmuIntervalReadBegin,
  mmuIntervalReadRetry,
  mmuIntervalSetSeq,
  mmuNotifierRangeBlockable,
  mmuNotifierUnregister,
  type DeviceAddressSpace,
  type MmStruct,
  type MmuIntervalNotifierOps,
  type MmuNotifierRange,
  type Vma,
} from 'hmm-emu';
import { ACCESS_ATOMIC, ACCESS_PREFETCH, ACCESS_WRITE, type CoalescedFault, type FaultWindow } from './batch.js';
import type { MockGpu } from './mockgpu.js';

// hmm_pfns entries through a Uint32 view: the low word is the pfn (frames < 2**32), the high
// word holds the flags (bit 63 -> bit 31 of the high word). No BigInt per page.
const VALID_HI = Number(HMM_PFN_VALID >> 32n) | 0;
const WRITE_HI = Number(HMM_PFN_WRITE >> 32n) | 0;
const REQ_READ_HI = Number(HMM_PFN_REQ_FAULT >> 32n) | 0;
const REQ_WRITE_HI = (Number(HMM_PFN_REQ_FAULT >> 32n) | Number(HMM_PFN_REQ_WRITE >> 32n)) | 0;
const REQ_MASK = HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE;

/** One VMA's share of a fault window: what one hmm_range_fault covers. */
interface WindowPiece {
  readonly start: number;
  readonly end: number;
  readonly writable: boolean;
  readonly faults: CoalescedFault[];
}

export class MockGpuSvmm {
  /** The update lock (nouveau's svmm->mutex). */
  readonly mutex: Mutex;
  /** The whole-mm classic notifier. */
  readonly notifier: MmuNotifier;
  /** Set (under `mutex`) by unbind or ->release: no new device mapping after it. */
  dead = false;
  private readonly notifierLock: Mutex;
  private readonly windows = new Map<number, MmuIntervalNotifier>();
  private readonly windowOps: MmuIntervalNotifierOps;
  private readonly notifierBytes: number;
  private active = 0;
  private readonly idleWq: WaitQueue;
  /** Ranges being migrated (migrationBegin/End): no device mapping is committed in them. */
  private readonly migrating: Array<[number, number]> = [];
  private readonly migrateWq: WaitQueue;
  private unbound = false;

  constructor(
    readonly gpu: MockGpu,
    readonly mm: MmStruct,
    /** The device address space mirroring `mm` (launch kernels on it). */
    readonly as: DeviceAddressSpace,
  ) {
    const e = gpu.engine;
    const tag = `${gpu.name}.as${as.asid}`;
    this.mutex = new Mutex(e, `${tag}.mutex`, { lockClass: 'mockgpu.svmm' });
    this.notifierLock = new Mutex(e, `${tag}.notifiers`, { lockClass: 'mockgpu.svmm.notifiers' });
    this.idleWq = new WaitQueue(e, `${tag}.idle`);
    this.migrateWq = new WaitQueue(e, `${tag}.migrate`);
    this.notifierBytes = gpu.options.notifierPages * PAGE_SIZE;
    this.notifier = new MmuNotifier(
      {
        invalidateRangeStart: (_sub, range) => this.invalidateRangeStart(range),
        release: () => this.release(),
      },
      `${tag}.mn`,
    );
    this.windowOps = { invalidate: (sub, range, curSeq) => this.windowInvalidate(sub, range, curSeq) };
  }

  get asid(): number {
    return this.as.asid;
  }

  /** Window notifiers inserted (cached) right now. */
  get windowNotifiers(): number {
    return this.windows.size;
  }

  // ---- invalidation ----

  /** nouveau_svmm_invalidate_range_start. */
  private async invalidateRangeStart(range: MmuNotifierRange): Promise<number> {
    // Non-blockable (the OOM reaper): we cannot wait for a TLB shootdown. Every window notifier
    // overlapping the range has refused it already (windowInvalidate), so the dispatch never
    // reaches us for those; here no window overlaps. Accept the range only when we can tell
    // without sleeping that the device maps nothing in it (nothing to zap), else refuse: a
    // refusal here, after the interval side accepted, would leave the itree invalidation
    // active for good (see the file header).
    if (!mmuNotifierRangeBlockable(range)) return this.nothingMappedNonblock(range) ? 0 : -EAGAIN;
    // Our own migrations zap our entries themselves (devmem.ts), once the pages are locked.
    if (range.event === MMU_NOTIFY_MIGRATE && range.owner === this.gpu.owner) {
      this.gpu.stats.migrateSkips++;
      return 0;
    }
    await this.mutex.lock();
    try {
      await this.zapLocked(range.start, range.end);
    } finally {
      this.mutex.unlock();
    }
    return 0;
  }

  /**
   * ->release (exit_mmap): the mm is going away. After this returns the notifier is off the
   * mm's list, so the UNMAP of everything that follows will not reach it: no mapping may be
   * made from now on (dead), and every one made so far goes now.
   */
  private async release(): Promise<void> {
    await this.mutex.lock();
    try {
      this.dead = true;
      await this.zapLocked(0, DEVICE_VA_LIMIT);
    } finally {
      this.mutex.unlock();
    }
  }

  /**
   * True if, under a trylock of `mutex` (no zap or commit in progress), the device maps no page
   * of `range`. Never sleeps.
   */
  private nothingMappedNonblock(range: MmuNotifierRange): boolean {
    if (!this.mutex.trylock()) return false;
    try {
      const as = this.as;
      const s = Math.min(range.start - (range.start % PAGE_SIZE), DEVICE_VA_LIMIT);
      const e = Math.min(Math.ceil(range.end / PAGE_SIZE) * PAGE_SIZE, DEVICE_VA_LIMIT);
      if (as.isDestroyed || s >= e) return true;
      let mapped = false;
      as.pageTable.forEach(() => (mapped = true), s / PAGE_SIZE, e / PAGE_SIZE);
      return !mapped;
    } finally {
      this.mutex.unlock();
    }
  }

  /**
   * nouveau_svm_range_invalidate: only the sequence; the classic notifier, called next, zaps.
   * A non-blockable range is refused (false) here, before the classic notifier sees it: see the
   * file header (the kernel trap of an interval side accepted, then a classic start refused).
   */
  private async windowInvalidate(sub: MmuIntervalNotifier, range: MmuNotifierRange, curSeq: number): Promise<boolean> {
    if (range.event === MMU_NOTIFY_EXCLUSIVE && range.owner === this.gpu.owner) return true;
    if (!mmuNotifierRangeBlockable(range)) return false;
    await this.mutex.lock();
    mmuIntervalSetSeq(sub, curSeq); // pairs with mmuIntervalReadRetry in rangeFault / atomicFault
    this.mutex.unlock();
    return true;
  }

  /**
   * PFNCLR: clears the device page table of [start, end) and, if it held anything, shoots the
   * TLB down and waits for it. Caller holds `mutex`. Entries are only ever cleared here, and the
   * wait completes under the lock, so when `mutex` is free no TLB entry survives its page-table
   * entry: an empty range needs no shootdown.
   */
  async zapLocked(start: number, end: number): Promise<number> {
    this.mutex.assertHeld();
    const as = this.as;
    const s = Math.min(start - (start % PAGE_SIZE), DEVICE_VA_LIMIT);
    const e = Math.min(Math.ceil(end / PAGE_SIZE) * PAGE_SIZE, DEVICE_VA_LIMIT);
    if (as.isDestroyed || s >= e) return 0;
    const n = as.unmap(s, e);
    if (n > 0) {
      const stats = this.gpu.stats;
      stats.pagesZapped += n;
      stats.shootdowns++;
      await this.gpu.device.tlbInvalidate(as, s, e).wait();
    }
    return n;
  }

  /**
   * The migration bracket (the "zap it yourself" half of skipping our own MIGRATE events):
   * before migrate_vma_setup of [start, end) of our mm, fence the range off (no device mapping
   * of it is committed until migrationEnd) and zap what is mapped, both under `mutex`. So the
   * device cannot touch a page of the range from before its migration entry is installed
   * until the new page is in place, although our classic notifier lets setup's invalidation
   * through without a zap. A fault job that meets the fence drops the mutex and waits for it
   * to lift, then retries (pairs with migrationEnd's wake).
   */
  async migrationBegin(start: number, end: number): Promise<void> {
    await this.mutex.lock();
    try {
      this.migrating.push([start, end]);
      await this.zapLocked(start, end);
    } finally {
      this.mutex.unlock();
    }
  }

  /** Ends a migrationBegin of [start, end): the fence lifts, waiting fault jobs retry. */
  migrationEnd(start: number, end: number): void {
    const i = this.migrating.findIndex(([s, e]) => s === start && e === end);
    if (i >= 0) this.migrating.splice(i, 1);
    this.migrateWq.wakeUpAll();
  }

  /** Does a migration fence overlap [start, end)? Read under `mutex`, or as a hint. */
  private fenced(start: number, end: number): boolean {
    for (const [s, e] of this.migrating) if (s < end && start < e) return true;
    return false;
  }

  // ---- window notifiers ----

  /** The cached interval notifier covering `addr`, inserted on first use; null if it cannot be (unbound, or insert failed). */
  private async windowNotifier(addr: number): Promise<MmuIntervalNotifier | null> {
    const idx = Math.floor(addr / this.notifierBytes);
    const hit = this.windows.get(idx);
    if (hit !== undefined) return hit;
    await this.notifierLock.lock();
    try {
      let sub = this.windows.get(idx);
      if (sub === undefined) {
        if (this.dead) return null;
        sub = new MmuIntervalNotifier(`${this.gpu.name}.as${this.asid}.win${idx}`);
        const ret = await mmuIntervalNotifierInsert(sub, this.mm, idx * this.notifierBytes, this.notifierBytes, this.windowOps);
        if (ret !== 0) return null;
        this.windows.set(idx, sub);
        this.gpu.stats.notifiersInserted++;
      }
      return sub;
    } finally {
      this.notifierLock.unlock();
    }
  }

  // ---- the fault path ----

  /** A fault job starts (called synchronously when it is submitted). */
  jobStarted(): void {
    this.active++;
  }

  /** A fault job ended. */
  jobEnded(): void {
    if (--this.active === 0) this.idleWq.wakeUpAll();
  }

  /**
   * Services one fault window (one worker job): splits it by VMA, migrates it to device memory
   * under the first-touch policy, faults and maps each piece, takes the atomic path for atomic
   * faults the mapping does not satisfy, and cancels the faults it cannot serve. Returns the
   * faults served (prefetches excluded).
   */
  async serviceWindow(w: FaultWindow): Promise<number> {
    const gpu = this.gpu;
    if (this.dead) return this.cancelAll(w.faults);
    const sub = await this.windowNotifier(w.start);
    if (sub === null) return this.cancelAll(w.faults);
    const pieces = await this.splitByVma(w);
    let served = 0;
    for (const piece of pieces) {
      const wants = piece.faults.some((f) => f.access !== ACCESS_PREFETCH);
      if (wants && gpu.options.migration === 'first-touch' && gpu.memory !== null && !this.dead) {
        for (const [s, e] of await this.notResident(sub, piece.start, piece.end)) await gpu.memory.migrateRange(this, s, e, true);
      }
      served += await this.servicePiece(sub, piece);
    }
    return served;
  }

  /**
   * The runs of [start, end) that the first-touch policy should move: pages neither in our
   * device memory (a snapshot: hmm_range_fault without requests, nothing is faulted) nor mapped
   * by the device already (our page table: a mapping we made stays until an invalidation, be
   * it of a system page we could not move, or of a page we hold exclusive for atomics). A hint,
   * read without locks: a migration fences and zaps only what it may move. On -EBUSY, the whole
   * range.
   */
  private async notResident(sub: MmuIntervalNotifier, start: number, end: number): Promise<Array<[number, number]>> {
    const mm = this.mm;
    const mem = this.gpu.device.memory!;
    const npages = (end - start) / PAGE_SIZE;
    const pfns = new BigUint64Array(npages);
    const words = new Uint32Array(pfns.buffer);
    const range = new HmmRange({ notifier: sub, start, end, hmmPfns: pfns, devPrivateOwner: this.gpu.owner });
    range.notifierSeq = await mmuIntervalReadBegin(sub);
    await mm.mmapLock.downRead();
    let ret: number;
    try {
      ret = await hmmRangeFault(range);
    } finally {
      mm.mmapLock.upRead();
    }
    if (ret !== 0) return [[start, end]];
    const pt = this.as.pageTable;
    const vpn0 = start / PAGE_SIZE;
    const runs: Array<[number, number]> = [];
    let runStart = -1;
    for (let i = 0; i <= npages; i++) {
      const resident = i < npages && (((words[2 * i + 1]! & VALID_HI) !== 0 && mem.contains(words[2 * i]!)) || pt.flagsAt(vpn0 + i) !== 0);
      if (i < npages && !resident) {
        if (runStart < 0) runStart = i;
      } else if (runStart >= 0) {
        runs.push([start + runStart * PAGE_SIZE, start + i * PAGE_SIZE]);
        runStart = -1;
      }
    }
    return runs;
  }

  /**
   * Faults and maps one VMA piece of a window: one hmm_range_fault over the piece with
   * prefetch, else one per faulting page (nouveau's one-page window: hmm_range_fault faults a
   * hole to its end, so a wider range would populate pages nobody asked for). Falls back to page
   * by page when the window fails as a whole.
   */
  private async servicePiece(sub: MmuIntervalNotifier, piece: WindowPiece): Promise<number> {
    const gpu = this.gpu;
    let served = 0;
    if (!gpu.options.prefetch) {
      for (const f of piece.faults) {
        const r = await this.rangeFault(sub, f.address, f.address + PAGE_SIZE, [f], false, f.access >= ACCESS_WRITE);
        if (f.access === ACCESS_PREFETCH) continue;
        if (r !== 0) this.cancel(f);
        else served += await this.finishFault(sub, f);
      }
      return served;
    }
    const groupWrite = piece.writable && piece.faults.some((f) => f.access >= ACCESS_WRITE);
    const ret = await this.rangeFault(sub, piece.start, piece.end, piece.faults, true, groupWrite);
    if (ret !== 0 && (piece.end - piece.start > PAGE_SIZE || piece.faults.length > 1) && (ret === -EFAULT || ret === -EPERM)) {
      // A page of the window cannot be served: find it, serve the rest (nouveau would cancel the lot).
      gpu.stats.windowFallbacks++;
      for (const f of piece.faults) {
        if (f.access === ACCESS_PREFETCH) continue;
        const r = await this.rangeFault(sub, f.address, f.address + PAGE_SIZE, [f], false, f.access >= ACCESS_WRITE);
        if (r !== 0) {
          this.cancel(f);
          continue;
        }
        served += await this.finishFault(sub, f);
      }
      return served;
    }
    if (ret !== 0) return this.cancelAll(piece.faults);
    for (const f of piece.faults) {
      if (f.access === ACCESS_PREFETCH) continue;
      served += await this.finishFault(sub, f);
    }
    return served;
  }

  /**
   * After the window is mapped: a fault whose page the device now maps with the access it
   * needs is served. Two cases need more: a write or atomic on a device page mapped read-only
   * (a device-private page COW-shared by fork: hmm_range_fault reports our own device pages
   * without faulting them, so no COW break happens) moves the page to RAM, where the retried
   * write fault breaks COW; an atomic on a system page takes make_device_exclusive. A page
   * found unmapped was invalidated meanwhile: the replayed access faults again. Returns 1 if
   * served, 0 if cancelled.
   */
  private async finishFault(sub: MmuIntervalNotifier, f: CoalescedFault): Promise<number> {
    const gpu = this.gpu;
    const pt = this.as.pageTable;
    const vpn = f.address / PAGE_SIZE;
    const need = ACCESS_NEEDS[f.access]!;
    let flags = pt.flagsAt(vpn);
    if ((flags & need) === need || (flags & DEV_PTE_VALID) === 0) return 1;
    const mem = gpu.memory;
    if (f.access >= ACCESS_WRITE && (flags & DEV_PTE_WRITE) === 0 && mem !== null && mem.pgmap.contains(pt.pfnAt(vpn))) {
      gpu.stats.deviceCowBreaks++;
      await mem.migrateRangeToSystem(this.mm, f.address, f.address + PAGE_SIZE);
      if ((await this.rangeFault(sub, f.address, f.address + PAGE_SIZE, [f], false, true)) !== 0) {
        this.cancel(f);
        return 0;
      }
      flags = pt.flagsAt(vpn);
      if ((flags & need) === need || (flags & DEV_PTE_WRITE) === 0) return 1;
    }
    if (f.access === ACCESS_ATOMIC && (flags & DEV_PTE_WRITE) !== 0 && !(mem !== null && mem.pgmap.contains(pt.pfnAt(vpn)))) {
      const r = await this.atomicFault(sub, f.address);
      if (r !== 0) {
        this.cancel(f);
        return 0;
      }
    }
    return 1;
  }

  /**
   * Clips the window to the VMAs of its faults (nouveau: find_vma_intersection, then the
   * window within the VMA). A fault with no readable VMA, or a write or atomic fault on a VMA
   * without VM_WRITE, cannot be served: it is cancelled now (prefetches are dropped).
   */
  private async splitByVma(w: FaultWindow): Promise<WindowPiece[]> {
    const mm = this.mm;
    const pieces: WindowPiece[] = [];
    await mm.mmapLock.downRead();
    try {
      let cur: { vma: Vma; piece: WindowPiece } | null = null;
      for (const f of w.faults) {
        const vma: Vma | null = cur !== null && f.address >= cur.vma.start && f.address < cur.vma.end ? cur.vma : mm.vmas.lookup(f.address);
        if (vma === null || (vma.flags & VM_READ) === 0 || (f.access >= ACCESS_WRITE && (vma.flags & VM_WRITE) === 0)) {
          if (f.access !== ACCESS_PREFETCH) this.cancel(f);
          continue;
        }
        if (cur === null || cur.vma !== vma) {
          cur = { vma, piece: { start: Math.max(w.start, vma.start), end: Math.min(w.end, vma.end), writable: (vma.flags & VM_WRITE) !== 0, faults: [] } };
          pieces.push(cur.piece);
        }
        cur.piece.faults.push(f);
      }
    } finally {
      mm.mmapLock.upRead();
    }
    return pieces;
  }

  /**
   * nouveau_range_fault for [start, end): the read_begin / hmm_range_fault / read_retry loop,
   * bounded by faultTimeoutNs of virtual time, then the device page table is programmed under
   * `mutex`. Faulting pages request their access; with `prefetch`, the other pages request a
   * fault too (write when `groupWrite`), else they are only snapshotted and mapped if present.
   * Returns 0, or -EFAULT / -EPERM (hmm_range_fault's), -EBUSY (timed out), -ENODEV (unbound).
   */
  private async rangeFault(
    sub: MmuIntervalNotifier,
    start: number,
    end: number,
    faults: readonly CoalescedFault[],
    prefetch: boolean,
    groupWrite: boolean,
  ): Promise<number> {
    const gpu = this.gpu;
    const e = gpu.engine;
    const mm = this.mm;
    const npages = (end - start) / PAGE_SIZE;
    const pfns = new BigUint64Array(npages);
    const words = new Uint32Array(pfns.buffer);
    const range = new HmmRange({ notifier: sub, start, end, hmmPfns: pfns, pfnFlagsMask: REQ_MASK, devPrivateOwner: gpu.owner });
    const other = prefetch ? (groupWrite ? REQ_WRITE_HI : REQ_READ_HI) : 0;
    const deadline = e.now + gpu.options.faultTimeoutNs;
    for (let attempt = 0; ; attempt++) {
      if (attempt > 0) {
        gpu.stats.retries++;
        if (e.now >= deadline || attempt >= MAX_ATTEMPTS) return -EBUSY;
      }
      // The inputs: hmm_range_fault leaves outputs in the entries it got to. A page the device
      // already maps with the prefetch's access is only snapshotted: faulting it again could
      // only undo what we set up (our device-exclusive entries, restored by a write fault).
      const pt = this.as.pageTable;
      const have = groupWrite ? DEV_PTE_WRITE : DEV_PTE_VALID;
      for (let i = 0, vpn = start / PAGE_SIZE; i < npages; i++, vpn++) {
        words[2 * i] = 0;
        words[2 * i + 1] = other !== 0 && (pt.flagsAt(vpn) & have) === have ? 0 : other;
      }
      // A faulting page the device already maps with the access it needs was served by an
      // earlier batch (its record is a stale duplicate, written before that batch's replay):
      // skip it, as nouveau skips faults its window already satisfies. Faulting it again could
      // restore our own device-exclusive entry and livelock the atomics.
      for (const f of faults) {
        if (f.access === ACCESS_PREFETCH) continue;
        const need = ACCESS_NEEDS[f.access]!;
        if ((pt.flagsAt(f.address / PAGE_SIZE) & need) === need) continue;
        words[2 * ((f.address - start) / PAGE_SIZE) + 1] = f.access >= ACCESS_WRITE ? REQ_WRITE_HI : REQ_READ_HI;
      }
      range.notifierSeq = await mmuIntervalReadBegin(sub);
      await mm.mmapLock.downRead();
      let ret: number;
      try {
        gpu.stats.rangeFaults++;
        ret = await hmmRangeFault(range);
      } finally {
        mm.mmapLock.upRead();
      }
      if (ret === -EBUSY) continue;
      if (ret !== 0) return ret;
      await this.mutex.lock();
      if (mmuIntervalReadRetry(sub, range.notifierSeq)) {
        this.mutex.unlock();
        continue;
      }
      if (this.dead) {
        this.mutex.unlock();
        return -ENODEV;
      }
      if (this.fenced(start, end)) {
        // A migration of (part of) the window is in flight: commit after it (pairs with migrationEnd).
        this.mutex.unlock();
        gpu.stats.fenceWaits++;
        await this.migrateWq.waitEvent(() => !this.fenced(start, end));
        continue;
      }
      try {
        await this.commitLocked(start, npages, words);
      } finally {
        this.mutex.unlock();
      }
      return 0;
    }
  }

  /**
   * nouveau_hmm_convert_pfn + PFNMAP: writes the device page table from hmm_pfns, in runs of
   * pages with the same flags. Writable device-local pages get atomic access too. Caller holds
   * `mutex` and has checked read_retry. An existing entry naming another frame would be a
   * missed invalidation: it is counted (WARN) and its TLB entry shot down before returning.
   */
  private async commitLocked(start: number, npages: number, words: Uint32Array): Promise<void> {
    const gpu = this.gpu;
    const as = this.as;
    const pt = as.pageTable;
    const mem = gpu.device.memory;
    const run = gpu.scratch(npages);
    let runStart = -1;
    let runFlags = 0;
    let runLen = 0;
    let mapped = 0;
    let stale = false;
    const flush = (): void => {
      if (runLen > 0) as.mapRange(start + runStart * PAGE_SIZE, run.subarray(0, runLen), runFlags);
      runLen = 0;
    };
    const vpn0 = start / PAGE_SIZE;
    for (let i = 0; i < npages; i++) {
      const hiw = words[2 * i + 1]!;
      if ((hiw & VALID_HI) === 0) {
        flush();
        continue;
      }
      const pfn = words[2 * i]!;
      let flags = (hiw & WRITE_HI) !== 0 ? DEV_PTE_WRITE : 0;
      if (flags !== 0 && mem !== null && mem.contains(pfn)) flags |= DEV_PTE_ATOMIC;
      const old = pt.pfnAt(vpn0 + i);
      if (old >= 0 && old !== pfn) stale = true;
      if (runLen > 0 && flags !== runFlags) flush();
      if (runLen === 0) {
        runStart = i;
        runFlags = flags;
      }
      run[runLen++] = pfn;
      mapped++;
    }
    flush();
    gpu.stats.pagesMapped += mapped;
    if (stale) {
      gpu.engine.warnOn(true, `${gpu.name}: a device PTE of [0x${start.toString(16)}, +${npages} pages) named another frame (missed invalidation)`);
      await gpu.device.tlbInvalidate(as, start, start + npages * PAGE_SIZE).wait();
    }
  }

  /**
   * nouveau_atomic_range_fault: exclusive access to a system page for a device atomic
   * (make_device_exclusive, owner = this device, so that our window notifier lets it through),
   * mapped with DEV_PTE_ATOMIC while the page is still locked. Returns 0 or -errno.
   */
  private async atomicFault(sub: MmuIntervalNotifier, addr: number): Promise<number> {
    const gpu = this.gpu;
    const e = gpu.engine;
    const mm = this.mm;
    const phys = mm.phys;
    const deadline = e.now + gpu.options.faultTimeoutNs;
    for (let attempt = 0; ; attempt++) {
      if (attempt > 0) {
        gpu.stats.retries++;
        if (e.now >= deadline || attempt >= MAX_ATTEMPTS) return -EBUSY;
        // The failed attempt left our device-exclusive entry in the CPU page table. The next
        // make_device_exclusive would restore it first (GUP for write), an ownerless EXCLUSIVE
        // invalidation that moves the sequence after our read_begin: retry forever. So restore it
        // now, before reading the sequence.
        await mm.mmapLock.downRead();
        try {
          await handleMmFault(mm, addr, FAULT_FLAG_REMOTE);
        } finally {
          mm.mmapLock.upRead();
        }
      }
      const seq = await mmuIntervalReadBegin(sub);
      await mm.mmapLock.downRead();
      let pfn: number;
      try {
        pfn = await makeDeviceExclusive(mm, addr, gpu.owner);
      } finally {
        mm.mmapLock.upRead();
      }
      if (pfn < 0) return pfn;
      await this.mutex.lock();
      const fenced = this.fenced(addr, addr + PAGE_SIZE);
      const retry = fenced || mmuIntervalReadRetry(sub, seq);
      if (!retry && !this.dead) {
        this.as.map(addr, pfn, DEV_PTE_WRITE | DEV_PTE_ATOMIC);
        gpu.stats.exclusive++;
      }
      this.mutex.unlock();
      phys.unlockPage(pfn);
      phys.putPage(pfn);
      if (this.dead) return -ENODEV;
      if (!retry) return 0;
      if (fenced) {
        // The page is being migrated: retry once that is done (pairs with migrationEnd). Not a
        // busy retry: the migration waits on virtual time (copies, TLB fences), which does not
        // pass while a task stays runnable.
        gpu.stats.fenceWaits++;
        await this.migrateWq.waitEvent(() => !this.fenced(addr, addr + PAGE_SIZE));
      }
    }
  }

  private cancel(f: CoalescedFault): void {
    const dev = this.gpu.device;
    for (const r of f.records) if (dev.cancelFault(r)) this.gpu.stats.cancels++;
  }

  private cancelAll(faults: readonly CoalescedFault[]): number {
    for (const f of faults) if (f.access !== ACCESS_PREFETCH) this.cancel(f);
    return 0;
  }

  // ---- unbind ----

  /**
   * Stops mirroring: no new mapping (dead, everything zapped), waits for the fault jobs in
   * flight, unregisters the classic notifier, removes the window notifiers (not from a callback,
   * not under `mutex`), then the driver moves the mm's device pages back to RAM. Returns 0, or
   * -EINVAL if already unbound.
   */
  async teardown(): Promise<number> {
    if (this.unbound) return -EINVAL;
    this.unbound = true;
    await this.mutex.lock();
    try {
      this.dead = true;
      await this.zapLocked(0, DEVICE_VA_LIMIT);
    } finally {
      this.mutex.unlock();
    }
    await this.idleWq.waitEvent(() => this.active === 0);
    await mmuNotifierUnregister(this.notifier, this.mm);
    await this.notifierLock.lock();
    try {
      for (const sub of this.windows.values()) {
        await mmuIntervalNotifierRemove(sub);
        this.gpu.stats.notifiersRemoved++;
      }
      this.windows.clear();
    } finally {
      this.notifierLock.unlock();
    }
    return 0;
  }

}

/** DEV_PTE_* bits an access needs, by ACCESS_* code (prefetch, read, write, atomic). */
const ACCESS_NEEDS: readonly number[] = [DEV_PTE_VALID, DEV_PTE_VALID, DEV_PTE_VALID | DEV_PTE_WRITE, DEV_PTE_VALID | DEV_PTE_WRITE | DEV_PTE_ATOMIC];

/** Attempts of one retry loop before giving up (the virtual-time timeout usually comes first). */
const MAX_ATTEMPTS = 1000;
