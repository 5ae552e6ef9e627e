/**
 * Physical memory: struct page for every frame, the page allocator, the page lock and page
 * contents, for system RAM and device memory alike.
 *
 * Models: include/linux/mm_types.h (struct page: _refcount, _mapcount, flags, zone, pgmap),
 * mm/page_alloc.c (alloc_page, __free_pages), include/linux/mm.h (get_page, put_page, and
 * free_zone_device_folio's call of pgmap->ops->page_free), mm/memremap.c
 * (memremap_pages: device frames start free with refcount 0; zone_device_page_init),
 * mm/filemap.c (folio_lock, folio_trylock, folio_unlock, folio_wait_locked),
 * include/linux/highmem.h (copy_highpage, clear_highpage).
 *
 * Layout: struct of arrays indexed by pfn, no object per page. pfn 0 is the shared zero page
 * (ZERO_PFN); system RAM is [1, frames]; device frames follow, handed out by
 * registerDeviceFrames in registration order.
 *
 * What protects what: every method here except lockPage and waitOnPageLocked is synchronous,
 * so it runs without a scheduling point and is atomic with respect to other tasks. That stands
 * in for the kernel's atomics (_refcount, _mapcount, page flag bit ops) and zone->lock (the free
 * list). Page contents have no lock of their own, as in the kernel: whoever reads or writes
 * them holds what makes that safe (the page lock for a migration copy, a mapping for a CPU
 * access). PG_LOCKED is the page lock itself (a sleeping bit lock).
 *
 * Simplifications: order-0 pages only; one zone per kind with no watermarks, per-cpu lists or
 * allocator-driven reclaim (reclaim lives in the mm); device pagemaps cannot be unregistered.
 */
import type { Engine } from '../sim/engine.js';
import { EINVAL, ENOMEM, KernelBug, KernelError } from '../sim/errors.js';
import { WaitQueue } from '../sim/waitqueue.js';
import { PAGE_SIZE, PG_LOCKED, ZERO_PFN, ZONE_DEVICE_COHERENT, ZONE_DEVICE_PRIVATE, ZONE_SYSTEM, type Zone } from './constants.js';

declare module '../sim/trace.js' {
  interface TraceEventMap {
    /** A frame was handed out: by allocPage (system) or initDevicePage (device). */
    'page.alloc': { pfn: number; zone: number };
    /** A frame's refcount dropped to 0; `generation` is the frame's new generation. */
    'page.free': { pfn: number; zone: number; generation: number };
  }
}

/** Options of a PhysMem. */
export interface PhysMemOptions {
  /**
   * System RAM frames (4 KiB each), not counting the zero page at pfn 0. A positive integer
   * <= 2**26. Default 262144 (1 GiB).
   */
  readonly frames?: number;
  /**
   * Frames that device pagemaps may register in total: struct page arrays are sized for them
   * up front. An integer in [0, 2**26]. Default 1 << 20 (4 GiB of device memory).
   */
  readonly maxDeviceFrames?: number;
}

/** What PhysMem needs of a device pagemap (the HMM layer implements it). */
export interface PagemapFrames {
  /**
   * Called when a device frame's refcount drops to 0 (the kernel's pgmap->ops->page_free): the
   * frame is free again for the pagemap's allocator. The frame's state is already reset
   * (contents dropped, flags clear, generation bumped) when this runs.
   */
  pageFree(pfn: number): void;
}

// ---- content storage geometry ----
/** A small slot holds up to this many non-zero 8-byte words of a page. */
const SMALL_WORDS = 4;
/**
 * Uint32s per small slot: [0] = key0 | key1 << 16, [1] = key2 | key3 << 16 (key = word index
 * + 1, 0 = empty; entries fill in order and are never removed), then (lo, hi) per entry. A free
 * slot keeps its header 0 and the next free slot + 1 in [2].
 */
const SMALL_STRIDE = 2 + 2 * SMALL_WORDS;
const SMALL_CHUNK_SHIFT = 12;
const SMALL_CHUNK_SLOTS = 1 << SMALL_CHUNK_SHIFT;
const SMALL_CHUNK_MASK = SMALL_CHUNK_SLOTS - 1;
/** Full pages are 4 KiB chunks of 256 KiB arenas; a free one keeps the next free + 1 in word 0. */
const FULL_CHUNK_SHIFT = 6;
const FULL_CHUNK_PAGES = 1 << FULL_CHUNK_SHIFT;
const FULL_CHUNK_MASK = FULL_CHUNK_PAGES - 1;
const U32_PER_PAGE = PAGE_SIZE / 4;

const MAX_FRAMES = 2 ** 26;
const TWO_32 = 2 ** 32;
const U64_LIMIT = 1n << 64n;
const NEVER: Promise<never> = new Promise<never>(() => {});

// Full pages are read both as bytes and as Uint32 words through views of one buffer: the
// byte order of a word is the host's, and pages are defined little-endian (x86-64).
if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1) throw new Error('hmm-emu needs a little-endian host');

/**
 * struct page for every frame, the page allocator and page contents.
 *
 * The struct page arrays are public for hot loops in the mm, which may read them freely.
 * Writes go through the methods, except `flags` bits other than PG_LOCKED, which the mm may set
 * and clear directly (the kernel's SetPageDirty and friends); PG_LOCKED only through the page
 * lock methods.
 */
export class PhysMem {
  /** _refcount (0 = free). Write only through allocPage, getPage, putPage, initDevicePage. */
  readonly refcount: Int32Array;
  /** _mapcount, 0-based (the kernel's is -1-based): how many PTEs map the frame. Write through incMapcount/decMapcount. */
  readonly mapcount: Int32Array;
  /** PG_* bits. PG_LOCKED only through the page lock methods; other bits the mm may set directly. */
  readonly flags: Uint8Array;
  /** page_zonenum: ZONE_SYSTEM, ZONE_DEVICE_PRIVATE or ZONE_DEVICE_COHERENT. Read only. */
  readonly zone: Uint8Array;
  /** 1-based id of the frame's device pagemap (page->pgmap), 0 for none. Read only. */
  readonly pgmapId: Uint16Array;
  /** Bumped every time the frame is freed: tells a stale reference from a reused frame. Read only. */
  readonly generation: Uint32Array;
  /**
   * Capacity in frames: the zero page, system RAM and the room for device frames. Every pfn
   * handed out is below it; device pfns at or above `deviceFramesEnd` are not registered yet.
   */
  readonly totalFrames: number;
  /** System RAM frames: pfns [1, systemFrames]. */
  readonly systemFrames: number;
  /** The first pfn available to device pagemaps (systemFrames + 1). */
  readonly firstDevicePfn: number;

  /** Per frame: 0 no contents, s > 0 small slot s - 1, s < 0 full page -s - 1. */
  private readonly content: Int32Array;

  // The free list of system frames: a LIFO stack of freed pfns over never-used frames handed
  // out in ascending order, i.e. exactly a stack initialised with [frames, ..., 2, 1] (top =
  // lowest pfn), without the cost of filling it at construction.
  private freeStack = new Uint32Array(1024);
  private freeTop = 0;
  private nextFresh = 1;

  private deviceEnd: number;
  private readonly pagemaps: PagemapFrames[] = [];

  private failNextCount = 0;
  private failNum = 0;
  private failDen = 0;

  private readonly pageLockWq: WaitQueue;

  private readonly smallChunks: Uint32Array[] = [];
  private smallNext = 0;
  private smallFree = -1;
  private smallInUse = 0;
  private readonly fullBytes: Uint8Array[] = [];
  private readonly fullWords: Uint32Array[] = [];
  private fullNext = 0;
  private fullFree = -1;
  private fullInUse = 0;

  // loadWord's result, to read a word without allocating.
  private wLo = 0;
  private wHi = 0;

  constructor(
    readonly engine: Engine,
    opts: PhysMemOptions = {},
  ) {
    const frames = opts.frames ?? 262144;
    if (!Number.isInteger(frames) || frames < 1 || frames > MAX_FRAMES) throw new KernelError(EINVAL, `PhysMem: frames must be a positive integer <= 2**26: ${frames}`);
    const maxDev = opts.maxDeviceFrames ?? 1 << 20;
    if (!Number.isInteger(maxDev) || maxDev < 0 || maxDev > MAX_FRAMES) throw new KernelError(EINVAL, `PhysMem: maxDeviceFrames must be an integer in [0, 2**26]: ${maxDev}`);
    const n = 1 + frames + maxDev;
    this.systemFrames = frames;
    this.firstDevicePfn = frames + 1;
    this.deviceEnd = frames + 1;
    this.totalFrames = n;
    this.refcount = new Int32Array(n);
    this.mapcount = new Int32Array(n);
    this.flags = new Uint8Array(n);
    this.zone = new Uint8Array(n);
    this.pgmapId = new Uint16Array(n);
    this.generation = new Uint32Array(n);
    this.content = new Int32Array(n);
    // The zero page holds one reference forever: it is never freed.
    this.refcount[ZERO_PFN] = 1;
    this.pageLockWq = new WaitQueue(engine, 'page_lock');
  }

  // ---- allocator ----

  /** Free system frames (the zero page is not counted). */
  freeSystemFrames(): number {
    return this.freeTop + (this.systemFrames + 1 - this.nextFresh);
  }

  /** Allocated system frames. */
  usedSystemFrames(): number {
    return this.systemFrames - this.freeSystemFrames();
  }

  /** End (exclusive) of the device pfns registered so far. */
  get deviceFramesEnd(): number {
    return this.deviceEnd;
  }

  /**
   * alloc_page(GFP_HIGHUSER | __GFP_ZERO): a zeroed system frame with refcount 1, mapcount 0,
   * flags 0. Returns its pfn (> 0), or -ENOMEM when RAM is exhausted or an injected failure
   * fires (an exhausted allocation consumes no injected failure and logs no decision).
   * Deterministic: the most recently freed frame first, then never-used frames in ascending
   * pfn order.
   */
  allocPage(): number {
    let pfn: number;
    if (this.freeTop > 0) {
      if (this.injectedFailure()) return -ENOMEM;
      pfn = this.freeStack[--this.freeTop]!;
    } else if (this.nextFresh <= this.systemFrames) {
      if (this.injectedFailure()) return -ENOMEM;
      pfn = this.nextFresh++;
    } else {
      return -ENOMEM;
    }
    this.refcount[pfn] = 1;
    const t = this.engine.trace;
    if (t.active && t.wants('page.alloc')) t.emit('page.alloc', { pfn, zone: ZONE_SYSTEM });
    return pfn;
  }

  private injectedFailure(): boolean {
    if (this.failNextCount > 0) {
      this.failNextCount--;
      return true;
    }
    return this.failDen !== 0 && this.engine.chance(this.failNum, this.failDen, 'alloc-fail');
  }

  /** The next `n` allocPage calls that find a free frame fail with -ENOMEM. */
  failNext(n: number): void {
    if (!Number.isInteger(n) || n < 0) throw new KernelError(EINVAL, `failNext: n must be a non-negative integer: ${n}`);
    this.failNextCount = n;
  }

  /**
   * Each allocPage that finds a free frame fails with probability num/den, decided by
   * `engine.chance(num, den, 'alloc-fail')` (logged; never under fifo unless num = den).
   */
  failRate(num: number, den: number): void {
    if (!Number.isInteger(num) || !Number.isInteger(den) || den < 1 || num < 0 || num > den) {
      throw new KernelError(EINVAL, `failRate: need integers 0 <= num <= den, den >= 1: ${num}/${den}`);
    }
    this.failNum = num;
    this.failDen = num === 0 ? 0 : den;
  }

  /** Cancels failNext and failRate. */
  clearFailures(): void {
    this.failNextCount = 0;
    this.failNum = 0;
    this.failDen = 0;
  }

  /**
   * get_page: takes a reference. A no-op on ZERO_PFN (the zero page is never freed, so its
   * references are not counted). BUG on a free frame (refcount 0).
   */
  getPage(pfn: number): void {
    this.checkPfn(pfn, 'get_page');
    if (pfn === ZERO_PFN) return;
    const rc = this.refcount[pfn]!;
    if (rc <= 0) this.engine.bug(new KernelBug(`BUG: get_page on free pfn ${pfn} (refcount ${rc})`));
    this.refcount[pfn] = rc + 1;
  }

  /**
   * put_page: drops a reference; at 0 the frame is freed: contents dropped, flags cleared,
   * generation bumped, then a system frame goes back on the free list and a device frame goes
   * to its pagemap's pageFree. A no-op on ZERO_PFN. BUG on underflow, or on freeing a frame that
   * is still mapped or locked.
   */
  putPage(pfn: number): void {
    this.checkPfn(pfn, 'put_page');
    if (pfn === ZERO_PFN) return;
    const rc = this.refcount[pfn]!;
    if (rc <= 0) this.engine.bug(new KernelBug(`BUG: put_page on pfn ${pfn}: refcount underflow (refcount ${rc})`));
    this.refcount[pfn] = rc - 1;
    if (rc === 1) this.freeFrame(pfn);
  }

  private freeFrame(pfn: number): void {
    const mc = this.mapcount[pfn]!;
    if (mc !== 0) this.engine.bug(new KernelBug(`BUG: bad page state: freeing pfn ${pfn} with mapcount ${mc}`));
    if ((this.flags[pfn]! & PG_LOCKED) !== 0) this.engine.bug(new KernelBug(`BUG: bad page state: freeing locked pfn ${pfn}`));
    if (this.content[pfn] !== 0) this.dropContent(pfn);
    this.flags[pfn] = 0;
    const gen = (this.generation[pfn]! + 1) >>> 0;
    this.generation[pfn] = gen;
    const t = this.engine.trace;
    if (t.active && t.wants('page.free')) t.emit('page.free', { pfn, zone: this.zone[pfn]!, generation: gen });
    const id = this.pgmapId[pfn]!;
    if (id !== 0) {
      this.pagemaps[id - 1]!.pageFree(pfn);
      return;
    }
    if (this.freeTop === this.freeStack.length) {
      const grown = new Uint32Array(Math.min(this.systemFrames, this.freeStack.length * 2));
      grown.set(this.freeStack);
      this.freeStack = grown;
    }
    this.freeStack[this.freeTop++] = pfn;
  }

  /**
   * page_add_*_rmap: one more PTE maps the frame. A no-op on ZERO_PFN (the zero page is not
   * rmapped). BUG on a free frame.
   */
  incMapcount(pfn: number): void {
    this.checkPfn(pfn, 'page_add_rmap');
    if (pfn === ZERO_PFN) return;
    if (this.refcount[pfn]! <= 0) this.engine.bug(new KernelBug(`BUG: mapping free pfn ${pfn}`));
    this.mapcount[pfn]!++;
  }

  /** page_remove_rmap: one PTE fewer maps the frame. A no-op on ZERO_PFN. BUG on underflow. */
  decMapcount(pfn: number): void {
    this.checkPfn(pfn, 'page_remove_rmap');
    if (pfn === ZERO_PFN) return;
    const mc = this.mapcount[pfn]!;
    if (mc <= 0) this.engine.bug(new KernelBug(`BUG: mapcount underflow on pfn ${pfn} (mapcount ${mc})`));
    this.mapcount[pfn] = mc - 1;
  }

  // ---- device frames ----

  /**
   * memremap_pages: reserves `n` consecutive frames of `zone` (ZONE_DEVICE_PRIVATE or
   * ZONE_DEVICE_COHERENT) for `pagemap`. They start free with refcount 0; the pagemap's own
   * allocator hands one out with initDevicePage. Returns the first pfn and the pagemap's
   * 1-based id (stored in pgmapId for each frame). KernelError EINVAL on a bad n or zone,
   * ENOMEM when maxDeviceFrames has no room for n more frames.
   */
  registerDeviceFrames(pagemap: PagemapFrames, n: number, zone: Zone): { firstPfn: number; id: number } {
    if (pagemap === null || typeof pagemap !== 'object' || typeof pagemap.pageFree !== 'function') {
      throw new KernelError(EINVAL, `registerDeviceFrames: pagemap must have a pageFree method: ${String(pagemap)}`);
    }
    if (!Number.isInteger(n) || n < 1) throw new KernelError(EINVAL, `registerDeviceFrames: n must be a positive integer: ${n}`);
    if (zone !== ZONE_DEVICE_PRIVATE && zone !== ZONE_DEVICE_COHERENT) {
      throw new KernelError(EINVAL, `registerDeviceFrames: zone must be ZONE_DEVICE_PRIVATE or ZONE_DEVICE_COHERENT: ${String(zone)}`);
    }
    const room = this.totalFrames - this.deviceEnd;
    if (n > room) throw new KernelError(ENOMEM, `registerDeviceFrames: ${n} frames requested, ${room} of maxDeviceFrames left`);
    if (this.pagemaps.length >= 0xffff) throw new KernelError(ENOMEM, `registerDeviceFrames: too many pagemaps: ${this.pagemaps.length}`);
    this.pagemaps.push(pagemap);
    const id = this.pagemaps.length;
    const firstPfn = this.deviceEnd;
    this.deviceEnd += n;
    this.zone.fill(zone, firstPfn, firstPfn + n);
    this.pgmapId.fill(id, firstPfn, firstPfn + n);
    return { firstPfn, id };
  }

  /**
   * zone_device_page_init: the pagemap hands out a free device frame (refcount 0 -> 1, zeroed
   * contents, flags 0). BUG if the frame is not a registered device frame or is not free.
   */
  initDevicePage(pfn: number): void {
    this.checkPfn(pfn, 'zone_device_page_init');
    if (this.pgmapId[pfn] === 0) this.engine.bug(new KernelBug(`BUG: zone_device_page_init on pfn ${pfn}, not a device frame`));
    const rc = this.refcount[pfn]!;
    if (rc !== 0) this.engine.bug(new KernelBug(`BUG: zone_device_page_init on pfn ${pfn} with refcount ${rc}`));
    this.refcount[pfn] = 1;
    const t = this.engine.trace;
    if (t.active && t.wants('page.alloc')) t.emit('page.alloc', { pfn, zone: this.zone[pfn]! });
  }

  /** page->pgmap: the device pagemap owning `pfn`, or null for system RAM and the zero page. */
  pagemapOf(pfn: number): PagemapFrames | null {
    this.checkPfn(pfn, 'page_pgmap');
    const id = this.pgmapId[pfn]!;
    return id === 0 ? null : this.pagemaps[id - 1]!;
  }

  /** is_zone_device_page. */
  isDevicePfn(pfn: number): boolean {
    return this.pgmapId[pfn] !== 0 && this.pgmapId[pfn] !== undefined;
  }

  // ---- page lock ----
  //
  // All frames share one WaitQueue, 'page_lock' (the kernel hashes folios onto a table of wait
  // queues; one bucket is that hash at its coarsest). A waiter rechecks its own pfn, so an
  // unlock of another frame only costs a spurious wake-up.

  /** folio_trylock: takes PG_LOCKED if clear. Not a scheduling point. */
  trylockPage(pfn: number): boolean {
    this.checkPfn(pfn, 'folio_trylock');
    const f = this.flags[pfn]!;
    if ((f & PG_LOCKED) !== 0) return false;
    this.flags[pfn] = f | PG_LOCKED;
    return true;
  }

  /**
   * folio_lock: takes PG_LOCKED, sleeping until it is clear. might_sleep (an AtomicSleepError
   * in atomic context) but no preemption point when the lock is free, as the kernel's fast
   * path; callers locking many pages place their own scheduling points.
   */
  async lockPage(pfn: number): Promise<void> {
    this.checkPfn(pfn, 'folio_lock');
    if (this.engine.mightSleep(`folio_lock(pfn ${pfn})`) === null) return NEVER;
    const flags = this.flags;
    while (!this.trylockPage(pfn)) await this.pageLockWq.waitEvent(() => (flags[pfn]! & PG_LOCKED) === 0);
  }

  /** folio_unlock: clears PG_LOCKED and wakes the waiters. BUG if not locked. Any task may unlock (no owner). */
  unlockPage(pfn: number): void {
    this.checkPfn(pfn, 'folio_unlock');
    const f = this.flags[pfn]!;
    if ((f & PG_LOCKED) === 0) this.engine.bug(new KernelBug(`BUG: folio_unlock of unlocked pfn ${pfn}`));
    this.flags[pfn] = f & ~PG_LOCKED;
    if (this.pageLockWq.active()) this.pageLockWq.wakeUp();
  }

  /** folio_wait_locked: sleeps until PG_LOCKED is clear, without taking it. No scheduling point if already clear. */
  async waitOnPageLocked(pfn: number): Promise<void> {
    this.checkPfn(pfn, 'folio_wait_locked');
    const flags = this.flags;
    await this.pageLockWq.waitEvent(() => (flags[pfn]! & PG_LOCKED) === 0);
  }

  /** folio_test_locked. */
  pageLocked(pfn: number): boolean {
    this.checkPfn(pfn, 'folio_test_locked');
    return (this.flags[pfn]! & PG_LOCKED) !== 0;
  }

  // ---- contents ----
  //
  // Untouched frames store nothing and read as zero. The first non-zero word written takes a
  // small slot (up to 4 words, 40 bytes); a fifth distinct non-zero word promotes the page to a
  // full 4 KiB page. Both tiers live in pooled chunks with free lists threaded through the
  // free slots, so storing a page's contents allocates no JS object. A freed frame's contents
  // are dropped. Words written back to zero stay stored (no shrinking).

  /** Copies `len` bytes of the frame from `offset` into `dst` at `dstOffset`. */
  readBytes(pfn: number, offset: number, dst: Uint8Array, dstOffset: number, len: number): void {
    this.checkPfn(pfn, 'readBytes');
    checkRange('readBytes', offset, len);
    checkBuf('readBytes', 'dst', dst, dstOffset, len);
    const ct = this.content[pfn]!;
    if (ct === 0) {
      dst.fill(0, dstOffset, dstOffset + len);
    } else if (ct < 0) {
      const f = -ct - 1;
      const base = (f & FULL_CHUNK_MASK) * PAGE_SIZE + offset;
      dst.set(this.fullBytes[f >>> FULL_CHUNK_SHIFT]!.subarray(base, base + len), dstOffset);
    } else {
      dst.fill(0, dstOffset, dstOffset + len);
      const s = ct - 1;
      const c = this.smallChunks[s >>> SMALL_CHUNK_SHIFT]!;
      const b = (s & SMALL_CHUNK_MASK) * SMALL_STRIDE;
      const end = offset + len;
      for (let k = 0; k < SMALL_WORDS; k++) {
        const h = c[b + (k >>> 1)]!;
        const key = k & 1 ? h >>> 16 : h & 0xffff;
        if (key === 0) break;
        const wb = (key - 1) * 8;
        if (wb + 8 <= offset || wb >= end) continue;
        const lo = c[b + 2 + 2 * k]!;
        const hi = c[b + 3 + 2 * k]!;
        const from = Math.max(wb, offset);
        const to = Math.min(wb + 8, end);
        for (let i = from; i < to; i++) {
          const j = i - wb;
          dst[dstOffset + i - offset] = (j < 4 ? lo >>> (8 * j) : hi >>> (8 * (j - 4))) & 0xff;
        }
      }
    }
  }

  /** Copies `len` bytes from `src` at `srcOffset` into the frame at `offset`. BUG on ZERO_PFN. */
  writeBytes(pfn: number, offset: number, src: Uint8Array, srcOffset: number, len: number): void {
    this.checkWritable(pfn, 'writeBytes');
    checkRange('writeBytes', offset, len);
    checkBuf('writeBytes', 'src', src, srcOffset, len);
    const end = offset + len;
    let i = offset;
    while (i < end) {
      const ct = this.content[pfn]!;
      if (ct < 0) {
        const f = -ct - 1;
        const base = (f & FULL_CHUNK_MASK) * PAGE_SIZE;
        this.fullBytes[f >>> FULL_CHUNK_SHIFT]!.set(src.subarray(srcOffset + i - offset, srcOffset + len), base + i);
        return;
      }
      // Word by word while the page is small or empty (it may get promoted on the way).
      const w = i >>> 3;
      const wb = w * 8;
      const to = Math.min(wb + 8, end);
      this.loadWord(pfn, w);
      let lo = this.wLo;
      let hi = this.wHi;
      for (let j = i - wb; j < to - wb; j++) {
        const v = src[srcOffset + wb + j - offset]!;
        if (j < 4) lo = (lo & ~(0xff << (8 * j))) | (v << (8 * j));
        else hi = (hi & ~(0xff << (8 * (j - 4)))) | (v << (8 * (j - 4)));
      }
      this.storeWord(pfn, w, lo >>> 0, hi >>> 0);
      i = to;
    }
  }

  /** The little-endian u32 at `offset` (4-aligned). */
  readU32(pfn: number, offset: number): number {
    this.checkPfn(pfn, 'readU32');
    checkAligned('readU32', offset, 4);
    this.loadWord(pfn, offset >>> 3);
    return offset & 4 ? this.wHi : this.wLo;
  }

  /** Stores a u32 (an integer in [-2**31, 2**32), kept mod 2**32) at `offset` (4-aligned). BUG on ZERO_PFN. */
  writeU32(pfn: number, offset: number, value: number): void {
    this.checkWritable(pfn, 'writeU32');
    checkAligned('writeU32', offset, 4);
    if (!Number.isInteger(value) || value < -0x80000000 || value >= TWO_32) throw new KernelError(EINVAL, `writeU32: value must be an integer in [-2**31, 2**32): ${value}`);
    const w = offset >>> 3;
    this.loadWord(pfn, w);
    if (offset & 4) this.storeWord(pfn, w, this.wLo, value >>> 0);
    else this.storeWord(pfn, w, value >>> 0, this.wHi);
  }

  /** The little-endian u64 at `offset` (8-aligned). */
  readU64(pfn: number, offset: number): bigint {
    this.checkPfn(pfn, 'readU64');
    checkAligned('readU64', offset, 8);
    this.loadWord(pfn, offset >>> 3);
    const lo = this.wLo;
    const hi = this.wHi;
    return hi === 0 ? BigInt(lo) : (BigInt(hi) << 32n) | BigInt(lo);
  }

  /** Stores a u64 (a bigint in [0, 2**64)) at `offset` (8-aligned). BUG on ZERO_PFN. */
  writeU64(pfn: number, offset: number, value: bigint): void {
    this.checkWritable(pfn, 'writeU64');
    checkAligned('writeU64', offset, 8);
    if (typeof value !== 'bigint' || value < 0n || value >= U64_LIMIT) throw new KernelError(EINVAL, `writeU64: value must be a bigint in [0, 2**64): ${String(value)}`);
    let lo: number;
    let hi: number;
    if (value < 0x100000000n) {
      lo = Number(value);
      hi = 0;
    } else {
      lo = Number(value & 0xffffffffn);
      hi = Number(value >> 32n);
    }
    this.storeWord(pfn, offset >>> 3, lo, hi);
  }

  /** copy_highpage: dst's contents become src's. BUG if dst is ZERO_PFN. */
  copyPage(dstPfn: number, srcPfn: number): void {
    this.checkWritable(dstPfn, 'copyPage');
    this.checkPfn(srcPfn, 'copyPage');
    if (dstPfn === srcPfn) return;
    const sct = this.content[srcPfn]!;
    let dct = this.content[dstPfn]!;
    if (sct === 0) {
      if (dct !== 0) this.dropContent(dstPfn);
    } else if (sct > 0) {
      if (dct <= 0) {
        if (dct < 0) this.dropContent(dstPfn);
        dct = this.allocSmall() + 1;
        this.content[dstPfn] = dct;
      }
      const s = sct - 1;
      const d = dct - 1;
      const sc = this.smallChunks[s >>> SMALL_CHUNK_SHIFT]!;
      const dc = this.smallChunks[d >>> SMALL_CHUNK_SHIFT]!;
      const sb = (s & SMALL_CHUNK_MASK) * SMALL_STRIDE;
      dc.set(sc.subarray(sb, sb + SMALL_STRIDE), (d & SMALL_CHUNK_MASK) * SMALL_STRIDE);
    } else {
      if (dct >= 0) {
        if (dct > 0) this.dropContent(dstPfn);
        dct = -(this.allocFull() + 1);
        this.content[dstPfn] = dct;
      }
      const s = -sct - 1;
      const d = -dct - 1;
      const sb = (s & FULL_CHUNK_MASK) * PAGE_SIZE;
      this.fullBytes[d >>> FULL_CHUNK_SHIFT]!.set(this.fullBytes[s >>> FULL_CHUNK_SHIFT]!.subarray(sb, sb + PAGE_SIZE), (d & FULL_CHUNK_MASK) * PAGE_SIZE);
    }
  }

  /** clear_highpage: the frame reads as zero again (its storage is released). BUG on ZERO_PFN. */
  clearPage(pfn: number): void {
    this.checkWritable(pfn, 'clearPage');
    if (this.content[pfn] !== 0) this.dropContent(pfn);
  }

  /** True when every byte of the frame is zero. */
  pageIsZero(pfn: number): boolean {
    this.checkPfn(pfn, 'pageIsZero');
    const ct = this.content[pfn]!;
    if (ct === 0) return true;
    if (ct > 0) {
      const s = ct - 1;
      const c = this.smallChunks[s >>> SMALL_CHUNK_SHIFT]!;
      const b = (s & SMALL_CHUNK_MASK) * SMALL_STRIDE;
      for (let k = 0; k < SMALL_WORDS; k++) {
        const h = c[b + (k >>> 1)]!;
        if ((k & 1 ? h >>> 16 : h & 0xffff) === 0) break;
        if ((c[b + 2 + 2 * k]! | c[b + 3 + 2 * k]!) !== 0) return false;
      }
      return true;
    }
    const f = -ct - 1;
    const words = this.fullWords[f >>> FULL_CHUNK_SHIFT]!;
    const base = (f & FULL_CHUNK_MASK) * U32_PER_PAGE;
    for (let i = base; i < base + U32_PER_PAGE; i++) if (words[i] !== 0) return false;
    return true;
  }

  /** Bytes of content storage in use: 40 per small page, 4096 per full page (pooled capacity not counted). */
  contentBytes(): number {
    return this.smallInUse * SMALL_STRIDE * 4 + this.fullInUse * PAGE_SIZE;
  }

  /** Content storage by tier: pages stored small and full, and the bytes the pools hold (capacity). */
  contentStats(): { smallPages: number; fullPages: number; poolBytes: number } {
    return {
      smallPages: this.smallInUse,
      fullPages: this.fullInUse,
      poolBytes: this.smallChunks.length * SMALL_CHUNK_SLOTS * SMALL_STRIDE * 4 + this.fullBytes.length * FULL_CHUNK_PAGES * PAGE_SIZE,
    };
  }

  // ---- content internals ----

  /** Sets wLo/wHi to 8-byte word `w` of the frame. */
  private loadWord(pfn: number, w: number): void {
    const ct = this.content[pfn]!;
    if (ct === 0) {
      this.wLo = 0;
      this.wHi = 0;
    } else if (ct < 0) {
      const f = -ct - 1;
      const words = this.fullWords[f >>> FULL_CHUNK_SHIFT]!;
      const q = (f & FULL_CHUNK_MASK) * U32_PER_PAGE + 2 * w;
      this.wLo = words[q]!;
      this.wHi = words[q + 1]!;
    } else {
      const s = ct - 1;
      const c = this.smallChunks[s >>> SMALL_CHUNK_SHIFT]!;
      const b = (s & SMALL_CHUNK_MASK) * SMALL_STRIDE;
      const k = findKey(c, b, w + 1);
      if (k < 0) {
        this.wLo = 0;
        this.wHi = 0;
      } else {
        this.wLo = c[b + 2 + 2 * k]!;
        this.wHi = c[b + 3 + 2 * k]!;
      }
    }
  }

  /** Stores word `w` = (lo, hi), both uint32. Zero words of empty pages and small slots take no storage. */
  private storeWord(pfn: number, w: number, lo: number, hi: number): void {
    const ct = this.content[pfn]!;
    if (ct < 0) {
      const f = -ct - 1;
      const words = this.fullWords[f >>> FULL_CHUNK_SHIFT]!;
      const q = (f & FULL_CHUNK_MASK) * U32_PER_PAGE + 2 * w;
      words[q] = lo;
      words[q + 1] = hi;
      return;
    }
    if (ct === 0) {
      if ((lo | hi) === 0) return;
      const s = this.allocSmall();
      this.content[pfn] = s + 1;
      const c = this.smallChunks[s >>> SMALL_CHUNK_SHIFT]!;
      const b = (s & SMALL_CHUNK_MASK) * SMALL_STRIDE;
      c[b] = w + 1;
      c[b + 2] = lo;
      c[b + 3] = hi;
      return;
    }
    const s = ct - 1;
    const c = this.smallChunks[s >>> SMALL_CHUNK_SHIFT]!;
    const b = (s & SMALL_CHUNK_MASK) * SMALL_STRIDE;
    const key = w + 1;
    for (let k = 0; k < SMALL_WORDS; k++) {
      const hw = b + (k >>> 1);
      const h = c[hw]!;
      const kk = k & 1 ? h >>> 16 : h & 0xffff;
      if (kk === key) {
        c[b + 2 + 2 * k] = lo;
        c[b + 3 + 2 * k] = hi;
        return;
      }
      if (kk === 0) {
        if ((lo | hi) === 0) return;
        c[hw] = k & 1 ? h | (key << 16) : h | key;
        c[b + 2 + 2 * k] = lo;
        c[b + 3 + 2 * k] = hi;
        return;
      }
    }
    if ((lo | hi) === 0) return;
    const f = this.promote(pfn, s);
    const words = this.fullWords[f >>> FULL_CHUNK_SHIFT]!;
    const q = (f & FULL_CHUNK_MASK) * U32_PER_PAGE + 2 * w;
    words[q] = lo;
    words[q + 1] = hi;
  }

  /** Moves the frame's small slot `s` into a new full page; returns the full page's index. */
  private promote(pfn: number, s: number): number {
    const f = this.allocFull();
    const c = this.smallChunks[s >>> SMALL_CHUNK_SHIFT]!;
    const b = (s & SMALL_CHUNK_MASK) * SMALL_STRIDE;
    const words = this.fullWords[f >>> FULL_CHUNK_SHIFT]!;
    const base = (f & FULL_CHUNK_MASK) * U32_PER_PAGE;
    for (let k = 0; k < SMALL_WORDS; k++) {
      const h = c[b + (k >>> 1)]!;
      const key = k & 1 ? h >>> 16 : h & 0xffff;
      if (key === 0) break;
      words[base + 2 * (key - 1)] = c[b + 2 + 2 * k]!;
      words[base + 2 * (key - 1) + 1] = c[b + 3 + 2 * k]!;
    }
    this.freeSmall(s);
    this.content[pfn] = -(f + 1);
    return f;
  }

  private dropContent(pfn: number): void {
    const ct = this.content[pfn]!;
    if (ct > 0) this.freeSmall(ct - 1);
    else if (ct < 0) this.freeFull(-ct - 1);
    this.content[pfn] = 0;
  }

  /** A small slot with an empty header. */
  private allocSmall(): number {
    this.smallInUse++;
    let s = this.smallFree;
    if (s >= 0) {
      const c = this.smallChunks[s >>> SMALL_CHUNK_SHIFT]!;
      const b = (s & SMALL_CHUNK_MASK) * SMALL_STRIDE;
      this.smallFree = c[b + 2]! - 1;
      return s;
    }
    s = this.smallNext++;
    if (s >>> SMALL_CHUNK_SHIFT === this.smallChunks.length) this.smallChunks.push(new Uint32Array(SMALL_CHUNK_SLOTS * SMALL_STRIDE));
    return s;
  }

  private freeSmall(s: number): void {
    this.smallInUse--;
    const c = this.smallChunks[s >>> SMALL_CHUNK_SHIFT]!;
    const b = (s & SMALL_CHUNK_MASK) * SMALL_STRIDE;
    c[b] = 0;
    c[b + 1] = 0;
    c[b + 2] = this.smallFree + 1;
    this.smallFree = s;
  }

  /** A zeroed full page. */
  private allocFull(): number {
    this.fullInUse++;
    let f = this.fullFree;
    if (f >= 0) {
      const ci = f >>> FULL_CHUNK_SHIFT;
      const base = (f & FULL_CHUNK_MASK) * U32_PER_PAGE;
      const words = this.fullWords[ci]!;
      this.fullFree = words[base]! - 1;
      words.fill(0, base, base + U32_PER_PAGE);
      return f;
    }
    f = this.fullNext++;
    if (f >>> FULL_CHUNK_SHIFT === this.fullBytes.length) {
      const buf = new ArrayBuffer(FULL_CHUNK_PAGES * PAGE_SIZE);
      this.fullBytes.push(new Uint8Array(buf));
      this.fullWords.push(new Uint32Array(buf));
    }
    return f;
  }

  private freeFull(f: number): void {
    this.fullInUse--;
    this.fullWords[f >>> FULL_CHUNK_SHIFT]![(f & FULL_CHUNK_MASK) * U32_PER_PAGE] = this.fullFree + 1;
    this.fullFree = f;
  }

  // ---- argument checks ----

  private checkPfn(pfn: number, what: string): void {
    if (pfn >>> 0 !== pfn || pfn >= this.totalFrames) throw new KernelError(EINVAL, `${what}: pfn out of range [0, ${this.totalFrames}): ${pfn}`);
  }

  private checkWritable(pfn: number, what: string): void {
    this.checkPfn(pfn, what);
    if (pfn === ZERO_PFN) this.engine.bug(new KernelBug(`BUG: ${what} to the zero page (pfn ${ZERO_PFN})`));
  }
}

/** Entry index of `key` in the small slot at `b`, or -1. */
function findKey(c: Uint32Array, b: number, key: number): number {
  const h0 = c[b]!;
  if ((h0 & 0xffff) === key) return 0;
  if (h0 >>> 16 === key) return 1;
  const h1 = c[b + 1]!;
  if ((h1 & 0xffff) === key) return 2;
  if (h1 >>> 16 === key) return 3;
  return -1;
}

function checkRange(what: string, offset: number, len: number): void {
  if (!Number.isInteger(offset) || offset < 0 || !Number.isInteger(len) || len < 0 || offset + len > PAGE_SIZE) {
    throw new KernelError(EINVAL, `${what}: need integers offset, len >= 0 with offset + len <= 4096: offset ${offset}, len ${len}`);
  }
}

function checkBuf(what: string, name: string, buf: Uint8Array, off: number, len: number): void {
  if (!(buf instanceof Uint8Array)) throw new KernelError(EINVAL, `${what}: ${name} must be a Uint8Array: ${String(buf)}`);
  if (!Number.isInteger(off) || off < 0 || off + len > buf.length) {
    throw new KernelError(EINVAL, `${what}: ${name} range [${off}, ${off} + ${len}) exceeds its length ${buf.length}`);
  }
}

function checkAligned(what: string, offset: number, align: number): void {
  if (offset >>> 0 !== offset || offset > PAGE_SIZE - align || offset % align !== 0) {
    throw new KernelError(EINVAL, `${what}: offset must be a multiple of ${align} in [0, ${PAGE_SIZE - align}]: ${offset}`);
  }
}
