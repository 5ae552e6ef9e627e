/**
 * hmm_range_fault: snapshot (and optionally fault in) the CPU page table of a range for a
 * mirroring device.
 *
 * Models: mm/hmm.c as of 6.x mainline (hmm_range_fault, hmm_vma_fault, hmm_pte_need_fault,
 * hmm_range_need_fault, hmm_vma_walk_hole, hmm_vma_handle_pte, hmm_vma_walk_pmd,
 * hmm_vma_walk_test, hmm_pfns_fill), include/linux/hmm.h (struct hmm_range), the walk order of
 * mm/pagewalk.c (walk_page_range, walk_page_test, the pgd/pud/pmd hole callbacks) and
 * mm/migrate.c (migration_entry_wait).
 *
 * Locks: the caller holds mmap_lock (read or write) across the call (asserted): the VMA list
 * cannot change under us, PTEs can (madvise, COW faults, migration, CPU faults all run under
 * the read lock). The kernel reads PTEs locklessly (pte_offset_map + ptep_get); we take the
 * mm's ptl for the scan of one PTE table because PageTable requires it, and no scheduling
 * point happens inside a scan either way. Order: mmap_lock -> ptl. The driver's update lock
 * (the one its invalidate callback takes) must NOT be held: a fault here can invalidate (COW,
 * migrate_to_ram, device-exclusive restore), and the callback would then wait for it forever.
 *
 * Protocol (Documentation/mm/hmm.rst): the result is a snapshot that may be stale as soon as
 * it is written. It is usable only if, under the driver's update lock, mmu_interval_read_retry
 * (range.notifier, range.notifierSeq) is false. hmm_range_fault itself checks the sequence
 * (mmu_interval_check_retry, a lockless hint) only at the top of each walk iteration, i.e. at
 * the start and after each internal restart (a fault, a migration wait), and returns -EBUSY
 * when it moved: the caller re-reads the sequence and calls again.
 *
 * The walk (hmm_range_fault's loop around walk_page_range, started at `last`):
 *  - per VMA piece, hmm_vma_walk_test: VM_IO | VM_PFNMAP or no VM_READ -> -EFAULT if any page
 *    requests a fault, else ERROR for every page, and the walk moves on;
 *  - a hole (outside any VMA): -EFAULT if requested, else ERROR; a missing table inside a VMA
 *    (pgd/pud/pmd none): fault the whole hole if any page of it requests one, else 0;
 *  - per PTE, hmm_vma_handle_pte: request = (in & pfn_flags_mask) | default_flags; a fault is
 *    needed if REQ_FAULT and the entry is not valid for the CPU, or REQ_WRITE and it is not
 *    writable. A device-private entry of range.devPrivateOwner is reported (VALID, WRITE if the
 *    entry is writable) without faulting, whatever was requested; other non-present entries
 *    give 0 unless a fault is requested: device-private and device-exclusive entries are then
 *    faulted, a migration entry is waited on (-EBUSY restart).
 *  - a fault (hmm_vma_fault) is -EPERM if a write is needed on a VMA without VM_WRITE; else
 *    handle_mm_fault(FAULT_FLAG_REMOTE [| WRITE]) on EVERY page from the one that needed it to
 *    the end of the hole or PTE table, requested or not (as the kernel); any fault error is
 *    -EFAULT; then -EBUSY restarts the walk at that page. Entries before `last` hold outputs,
 *    entries from `last` on still hold their inputs.
 *
 * Scheduling points: after each page-table step (one PTE table, one hole, one skipped VMA) if
 * the walk goes on (where the kernel drops the PTE lock and may be preempted), after each
 * handle_mm_fault, and in the migration wait. Invalidations can therefore race the walk; the
 * two interleavings below are what a driver has to survive (test/hmm/range-fault.test.ts runs
 * both).
 *
 * 1. A walk that restarts sees a moved sequence and returns -EBUSY:
 *
 *   driver                                        other task
 *   ------                                        ----------
 *   seq = mmu_interval_read_begin(sub)            (page B: migration entry, page locked)
 *   mmap_read_lock
 *   hmm_range_fault:
 *    check_retry(seq): false
 *    table of A: A present -> VALID | pfnA
 *    table of B: B migration entry, REQ_FAULT:
 *     migration_entry_wait: sleeps on B's lock
 *                                                 madvise(A, DONTNEED): invalidate_start ->
 *                                                  callback: set_seq (pairs with check_retry)
 *                                                 finish B's migration; unlock B
 *     -EBUSY (internal restart at B)
 *    check_retry(seq): true -> return -EBUSY
 *   mmap_read_unlock; goto again
 *
 * 2. A walk that does not restart returns 0 with a stale entry; read_retry catches it:
 *
 *   driver                                        other task
 *   ------                                        ----------
 *   seq = mmu_interval_read_begin(sub)
 *   mmap_read_lock
 *   hmm_range_fault:
 *    check_retry(seq): false
 *    table of A: A present -> VALID | pfnA
 *    (scheduling point between tables)
 *                                                 madvise(A, DONTNEED): invalidate_start ->
 *                                                  callback: lock; set_seq; unlock
 *                                                 zap A; invalidate_end
 *    table of B: B present -> VALID | pfnB
 *    return 0                                     (hmm_pfns[A] names a freed page)
 *   mmap_read_unlock
 *   lock(update)
 *   mmu_interval_read_retry(sub, seq): true -> unlock; goto again
 *
 * Deviation: mainline maps every VM_FAULT_ERROR of handle_mm_fault, out-of-memory included,
 * to -EFAULT (hmm_vma_fault), so -ENOMEM is documented but never returned; we do the same.
 * Simplifications: no THP or hugetlb (no PMD/PUD leaves, map order always 0); no swap entries;
 * every present entry maps a normal page or the zero page (vm_normal_page never fails).
 */
import { MmuIntervalNotifier, mmuIntervalCheckRetry } from '../notifier/index.js';
import {
  FAULT_FLAG_REMOTE,
  FAULT_FLAG_WRITE,
  MmStruct,
  PAGE_SIZE,
  PGDIR_SIZE,
  PMD_SIZE,
  PTE_KIND_MASK,
  PTE_PRESENT,
  PTE_PROTNONE,
  PTE_SWP_DEVICE_EXCLUSIVE,
  PTE_SWP_DEVICE_PRIVATE,
  PTE_SWP_MIGRATION,
  PTE_WRITE,
  PUD_SIZE,
  type PteTable,
  TASK_SIZE,
  VM_IO,
  VM_PFNMAP,
  VM_READ,
  VM_WRITE,
  type Vma,
  handleMmFault,
  isDevPagemap,
} from '../mm/index.js';
import { EBUSY, EFAULT, EINVAL, ENOMEM, EPERM, KernelBug, KernelError } from '../sim/index.js';
import { HMM_PFN_ERROR, HMM_PFN_INOUT_FLAGS, HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE, HMM_PFN_VALID, HMM_PFN_WRITE } from './hmm-pfn.js';

declare module '../sim/trace.js' {
  interface TraceEventMap {
    /** hmm_range_fault returned `ret` after `faults` handle_mm_fault calls. */
    'hmm.range_fault': { mm: number; start: number; end: number; ret: number; faults: number };
  }
}

const U64_LIMIT = 1n << 64n;

// The walk works on the high 32-bit half of each entry, where every flag lives (bits 53..63 ->
// 21..31 of the high word), and writes the pfn (< 2**32) to the low half: no bigint per page.
// Uint32 views of a BigUint64Array: word 2i is the low half on a little-endian host, which
// PhysMem already requires.
const hi = (f: bigint): number => Number(f >> 32n);
const VALID_HI = hi(HMM_PFN_VALID);
const WRITE_HI = hi(HMM_PFN_WRITE);
const ERROR_HI = hi(HMM_PFN_ERROR);
const INOUT_HI = hi(HMM_PFN_INOUT_FLAGS);
const REQ_FAULT_HI = hi(HMM_PFN_REQ_FAULT);
const REQ_WRITE_HI = hi(HMM_PFN_REQ_WRITE);

/** mm/hmm.c: what a page needs (HMM_NEED_*). */
const HMM_NEED_FAULT = 1;
const HMM_NEED_WRITE_FAULT = 2;
const HMM_NEED_ALL_BITS = HMM_NEED_FAULT | HMM_NEED_WRITE_FAULT;

/** Options of an HmmRange (the fields of struct hmm_range). */
export interface HmmRangeOptions {
  /** The interval notifier covering the range; its mm is the address space walked. Required. */
  readonly notifier: MmuIntervalNotifier;
  /** The result of mmuIntervalReadBegin(notifier). Default 0: set it before each call. */
  readonly notifierSeq?: number;
  /** First address (inclusive), page aligned. Required. */
  readonly start: number;
  /** End address (exclusive), page aligned, above start and at most TASK_SIZE. Required. */
  readonly end: number;
  /** Per-page input requests and output entries; at least (end - start) / PAGE_SIZE long. Default: zeroed, exactly that long. */
  readonly hmmPfns?: BigUint64Array;
  /** Request flags for every page (HMM_PFN_REQ_FAULT, HMM_PFN_REQ_WRITE). Default 0n. */
  readonly defaultFlags?: bigint;
  /** Which bits of each hmmPfns input count as a per-page request. Default 0n (only defaultFlags). */
  readonly pfnFlagsMask?: bigint;
  /** Device-private pages of pagemaps with this owner are reported instead of faulted. Default null. */
  readonly devPrivateOwner?: unknown;
}

/**
 * struct hmm_range. Drivers set notifierSeq before each call and may reuse the range (new
 * start/end/hmmPfns); hmmRangeFault validates the fields on every call.
 */
export class HmmRange {
  notifier: MmuIntervalNotifier;
  notifierSeq: number;
  start: number;
  end: number;
  hmmPfns: BigUint64Array;
  defaultFlags: bigint;
  pfnFlagsMask: bigint;
  devPrivateOwner: unknown;

  /** Throws KernelError(EINVAL) naming the bad field (ENOMEM if a default hmmPfns cannot be allocated). */
  constructor(opts: HmmRangeOptions) {
    if (typeof opts !== 'object' || opts === null) throw new KernelError(EINVAL, `HmmRange: options must be an object: ${String(opts)}`);
    this.notifier = opts.notifier;
    this.notifierSeq = opts.notifierSeq ?? 0;
    this.start = opts.start;
    this.end = opts.end;
    this.defaultFlags = opts.defaultFlags ?? 0n;
    this.pfnFlagsMask = opts.pfnFlagsMask ?? 0n;
    this.devPrivateOwner = opts.devPrivateOwner ?? null;
    // A placeholder until the bounds are checked, so that bad bounds are an EINVAL, not an
    // attempt to allocate for them.
    this.hmmPfns = opts.hmmPfns ?? new BigUint64Array(0);
    if (opts.hmmPfns === undefined) {
      checkBounds('HmmRange', this);
      try {
        this.hmmPfns = new BigUint64Array(this.npages);
      } catch {
        throw new KernelError(ENOMEM, `HmmRange: no memory for ${this.npages} entries: pass hmmPfns or a smaller range`);
      }
    }
    checkRange('HmmRange', this);
  }

  /** Pages in [start, end). */
  get npages(): number {
    return (this.end - this.start) / PAGE_SIZE;
  }
}

function hex(n: number): string {
  return typeof n === 'number' ? `0x${n.toString(16)}` : String(n);
}

/** The driver-supplied fields, as the kernel's callers are trusted to set them. */
function checkRange(what: string, r: HmmRange): MmStruct {
  if (!(r instanceof HmmRange)) throw new KernelError(EINVAL, `${what}: not an HmmRange: ${String(r)}`);
  if (!(r.notifier instanceof MmuIntervalNotifier)) throw new KernelError(EINVAL, `${what}: notifier is not an MmuIntervalNotifier: ${String(r.notifier)}`);
  const mm = r.notifier.mm;
  if (!(mm instanceof MmStruct)) throw new KernelError(EINVAL, `${what}: ${r.notifier} is not inserted in an mm`);
  if (!Number.isSafeInteger(r.notifierSeq)) throw new KernelError(EINVAL, `${what}: notifierSeq must be an integer: ${String(r.notifierSeq)}`);
  checkBounds(what, r);
  if (!(r.hmmPfns instanceof BigUint64Array)) throw new KernelError(EINVAL, `${what}: hmmPfns must be a BigUint64Array: ${String(r.hmmPfns)}`);
  const npages = (r.end - r.start) / PAGE_SIZE;
  if (r.hmmPfns.length < npages) throw new KernelError(EINVAL, `${what}: hmmPfns has ${r.hmmPfns.length} entries for ${npages} pages`);
  for (const [name, v] of [
    ['defaultFlags', r.defaultFlags],
    ['pfnFlagsMask', r.pfnFlagsMask],
  ] as const) {
    if (typeof v !== 'bigint' || v < 0n || v >= U64_LIMIT) throw new KernelError(EINVAL, `${what}: ${name} must be a 64-bit unsigned bigint: ${String(v)}`);
  }
  return mm;
}

/** start and end: page aligned, start < end <= TASK_SIZE. */
function checkBounds(what: string, r: HmmRange): void {
  for (const [name, v] of [
    ['start', r.start],
    ['end', r.end],
  ] as const) {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v % PAGE_SIZE !== 0) {
      throw new KernelError(EINVAL, `${what}: ${name} must be a page-aligned address: ${hex(v)}`);
    }
  }
  if (r.start >= r.end || r.end > TASK_SIZE) throw new KernelError(EINVAL, `${what}: need start < end <= TASK_SIZE: [${hex(r.start)}, ${hex(r.end)})`);
}

/** struct hmm_vma_walk, plus the decoded request flags and the fault/wait a scan asks for. */
interface HmmVmaWalk {
  readonly range: HmmRange;
  readonly mm: MmStruct;
  /** Uint32 view of range.hmmPfns (2 words per page). */
  readonly words: Uint32Array;
  /** High halves of pfn_flags_mask and default_flags. */
  readonly maskHi: number;
  readonly defaultHi: number;
  /** Can any page request a fault? (hmm_range_need_fault's early out.) */
  readonly mayFault: boolean;
  /** Where the next walk starts: the first entry still holding its input. */
  last: number;
  /** handle_mm_fault calls made. */
  faults: number;
  /** Set by a PTE scan that returns FAULT_PENDING / WAIT_MIGRATION. */
  pendingEnd: number;
  pendingRequired: number;
  pendingPfn: number;
}

/** Internal results of a synchronous PTE-table scan (never returned to the caller). */
const FAULT_PENDING = 1;
const WAIT_MIGRATION = 2;

/** hmm_pte_need_fault on high halves: HMM_NEED_* for one page. */
function hmmPteNeedFault(w: HmmVmaWalk, inHi: number, cpuHi: number): number {
  const req = (inHi & w.maskHi) | w.defaultHi;
  if ((req & REQ_FAULT_HI) === 0) return 0;
  if ((req & REQ_WRITE_HI) !== 0 && (cpuHi & WRITE_HI) === 0) return HMM_NEED_FAULT | HMM_NEED_WRITE_FAULT;
  if ((cpuHi & VALID_HI) === 0) return HMM_NEED_FAULT;
  return 0;
}

/** hmm_range_need_fault over [addr, end) with the same cpu flags for every page. */
function hmmRangeNeedFault(w: HmmVmaWalk, addr: number, end: number, cpuHi: number): number {
  if (!w.mayFault) return 0;
  const words = w.words;
  let required = 0;
  for (let i = (addr - w.range.start) / PAGE_SIZE, n = (end - w.range.start) / PAGE_SIZE; i < n; i++) {
    required |= hmmPteNeedFault(w, words[2 * i + 1]!, cpuHi);
    if (required === HMM_NEED_ALL_BITS) break;
  }
  return required;
}

/** hmm_pfns_fill: every entry of [addr, end) becomes `cpuHi` (sticky flags kept), pfn 0. */
function hmmPfnsFill(w: HmmVmaWalk, addr: number, end: number, cpuHi: number): number {
  const words = w.words;
  for (let i = (addr - w.range.start) / PAGE_SIZE, n = (end - w.range.start) / PAGE_SIZE; i < n; i++) {
    words[2 * i] = 0;
    words[2 * i + 1] = (words[2 * i + 1]! & INOUT_HI) | cpuHi;
  }
  return 0;
}

/**
 * hmm_vma_fault: fault every page of [addr, end) (requested or not), then ask for a restart
 * at addr. Returns -EBUSY, -EPERM or -EFAULT.
 */
async function hmmVmaFault(w: HmmVmaWalk, addr: number, end: number, required: number, vma: Vma): Promise<number> {
  const mm = w.mm;
  w.last = addr;
  let flags = FAULT_FLAG_REMOTE;
  if (required & HMM_NEED_WRITE_FAULT) {
    if (!(vma.flags & VM_WRITE)) return -EPERM;
    flags |= FAULT_FLAG_WRITE;
  }
  for (let a = addr; a < end; a += PAGE_SIZE) {
    const ret = await handleMmFault(mm, a, flags);
    w.faults++;
    await mm.engine.yield();
    // VM_FAULT_ERROR, whatever its kind (SIGSEGV, SIGBUS, OOM): -EFAULT, as mainline.
    if (ret < 0) return -EFAULT;
  }
  return -EBUSY;
}

/** hmm_vma_walk_hole: [addr, end) has no page table (vma non-null) or no VMA (vma null). */
function hmmVmaWalkHole(w: HmmVmaWalk, addr: number, end: number, vma: Vma | null): number | Promise<number> {
  const required = hmmRangeNeedFault(w, addr, end, 0);
  if (vma === null) {
    if (required) return -EFAULT;
    return hmmPfnsFill(w, addr, end, ERROR_HI);
  }
  if (required) return hmmVmaFault(w, addr, end, required, vma);
  return hmmPfnsFill(w, addr, end, 0);
}

/**
 * hmm_vma_walk_test: 0 to walk the VMA piece [start, end), 1 to skip it (filled with ERROR),
 * -EFAULT when a skipped piece had a page that requested a fault.
 */
function hmmVmaWalkTest(w: HmmVmaWalk, start: number, end: number, vma: Vma): number {
  if (!(vma.flags & (VM_IO | VM_PFNMAP)) && vma.flags & VM_READ) return 0;
  // No struct pages behind it, or no read access (HMM assumes no write without read).
  if (hmmRangeNeedFault(w, start, end, 0)) return -EFAULT;
  hmmPfnsFill(w, start, end, ERROR_HI);
  return 1;
}

/**
 * hmm_vma_walk_pmd's PTE loop + hmm_vma_handle_pte over entries [from, to) of `leaf` (vpn of
 * index 0: `base`). Synchronous, under the ptl. Returns 0, -EFAULT, or FAULT_PENDING /
 * WAIT_MIGRATION with w.last and the pending fields set (the caller does the sleeping part
 * without the ptl).
 */
function hmmScanPteTable(w: HmmVmaWalk, leaf: PteTable, from: number, to: number, base: number, spanEnd: number): number {
  const words = w.words;
  const bits = leaf.bits;
  const pfns = leaf.pfn;
  const phys = w.mm.phys;
  const owner = w.range.devPrivateOwner;
  let idx = base + from - w.range.start / PAGE_SIZE;
  for (let i = from; i < to; i++, idx++) {
    const inHi = words[2 * idx + 1]!;
    const b = bits[i]!;
    let newHi = 0;
    let newLo = 0;
    let required = 0;
    if (b === 0) {
      required = hmmPteNeedFault(w, inHi, 0);
    } else if ((b & PTE_PRESENT) === 0) {
      const kind = b & PTE_KIND_MASK;
      const pfn = pfns[i]!;
      if (kind === PTE_SWP_DEVICE_PRIVATE) {
        const pgmap = phys.pagemapOf(pfn);
        // Don't fault in device-private pages owned by the caller: report the pfn.
        if (isDevPagemap(pgmap) && pgmap.owner === owner) {
          newHi = VALID_HI | (b & PTE_WRITE ? WRITE_HI : 0);
          newLo = pfn;
        } else required = hmmPteNeedFault(w, inHi, 0);
      } else {
        required = hmmPteNeedFault(w, inHi, 0);
        if (required && kind === PTE_SWP_MIGRATION) {
          // pfn_swap_entry_to_page's rule: a migration entry's page is locked while it exists.
          if (!phys.pageLocked(pfn)) w.mm.engine.bug(new KernelBug(`BUG: migration entry at ${hex((base + i) * PAGE_SIZE)} names unlocked pfn ${pfn}`));
          w.last = (base + i) * PAGE_SIZE;
          w.pendingPfn = pfn;
          return WAIT_MIGRATION;
        }
        if (required && kind !== PTE_SWP_DEVICE_EXCLUSIVE) return -EFAULT; // "report error for everything else"
      }
    } else {
      // pte_to_hmm_pfn_flags: a protnone entry is not valid for the CPU.
      const cpuHi = b & PTE_PROTNONE ? 0 : VALID_HI | (b & PTE_WRITE ? WRITE_HI : 0);
      required = hmmPteNeedFault(w, inHi, cpuHi);
      // The zero page is treated as a normal page: its pfn, read-only.
      newHi = cpuHi;
      newLo = pfns[i]!;
    }
    if (required) {
      w.last = (base + i) * PAGE_SIZE;
      w.pendingEnd = spanEnd;
      w.pendingRequired = required;
      return FAULT_PENDING;
    }
    words[2 * idx] = newLo;
    words[2 * idx + 1] = (inHi & INOUT_HI) | newHi;
  }
  return 0;
}

/**
 * The end of the hole starting at `a` (no PTE table covers it) within [a, end): the level at
 * which walk_p4d/pud/pmd_range finds the entry none decides its size. Empty tables are freed
 * at once in our PageTable, so an upper entry is none exactly when its span has no leaf.
 */
function holeEnd(w: HmmVmaWalk, a: number, end: number): number {
  const pt = w.mm.pgtable;
  const pgdStart = Math.floor(a / PGDIR_SIZE) * PGDIR_SIZE;
  if (!pt.hasLeaves(pgdStart / PAGE_SIZE, (pgdStart + PGDIR_SIZE) / PAGE_SIZE)) return Math.min(end, pgdStart + PGDIR_SIZE);
  const pudStart = Math.floor(a / PUD_SIZE) * PUD_SIZE;
  if (!pt.hasLeaves(pudStart / PAGE_SIZE, (pudStart + PUD_SIZE) / PAGE_SIZE)) return Math.min(end, pudStart + PUD_SIZE);
  return Math.min(end, (Math.floor(a / PMD_SIZE) + 1) * PMD_SIZE);
}

/** migration_entry_wait: sleep until the migrator unlocks the page, then restart the walk. */
async function migrationEntryWait(w: HmmVmaWalk): Promise<number> {
  // The kernel rechecks the entry under the ptl first; no scheduling point separates that
  // recheck from our scan, so the entry is still there.
  await w.mm.phys.waitOnPageLocked(w.pendingPfn);
  return -EBUSY;
}

/** __walk_page_range for the VMA piece [start, end): PTE tables and holes, in order. */
async function hmmWalkVma(w: HmmVmaWalk, vma: Vma, start: number, end: number): Promise<number> {
  const mm = w.mm;
  const pt = mm.pgtable;
  for (let a = start; a < end; ) {
    const leaf = pt.leafAt(a / PAGE_SIZE);
    let next: number;
    let ret: number;
    if (leaf === null) {
      next = holeEnd(w, a, end);
      const r = hmmVmaWalkHole(w, a, next, vma);
      ret = typeof r === 'number' ? r : await r;
    } else {
      next = Math.min(end, (Math.floor(a / PMD_SIZE) + 1) * PMD_SIZE);
      const base = Math.floor(a / PMD_SIZE) * (PMD_SIZE / PAGE_SIZE);
      const from = a / PAGE_SIZE - base;
      mm.ptl.lock();
      let r: number;
      try {
        r = hmmScanPteTable(w, leaf, from, from + (next - a) / PAGE_SIZE, base, next);
      } finally {
        mm.ptl.unlock();
      }
      if (r === FAULT_PENDING) ret = await hmmVmaFault(w, w.last, w.pendingEnd, w.pendingRequired, vma);
      else if (r === WAIT_MIGRATION) ret = await migrationEntryWait(w);
      else ret = r;
    }
    if (ret !== 0) return ret;
    a = next;
    if (a < w.range.end) await mm.engine.yield(); // the PTE lock is dropped here: preemptible
  }
  return 0;
}

/** walk_page_range(mm, start, end) with hmm_walk_ops. */
async function hmmWalkPageRange(w: HmmVmaWalk, start: number, end: number): Promise<number> {
  const vmas = w.mm.vmas;
  let vma = vmas.findVma(start);
  let s = start;
  while (s < end) {
    let next: number;
    let err: number;
    if (vma === null || s < vma.start) {
      // After the last VMA, or in a gap before the next one: pte_hole with walk->vma NULL.
      next = vma === null ? end : Math.min(end, vma.start);
      err = hmmVmaWalkHole(w, s, next, null) as number;
    } else {
      const cur = vma;
      next = Math.min(end, cur.end);
      vma = vmas.findVma(cur.end);
      err = hmmVmaWalkTest(w, s, next, cur);
      if (err > 0) {
        err = 0;
        if (next < w.range.end) await w.mm.engine.yield();
      } else if (err === 0) {
        err = await hmmWalkVma(w, cur, s, next);
      }
    }
    if (err !== 0) return err;
    s = next;
  }
  return 0;
}

/**
 * hmm_range_fault: fills range.hmmPfns for [range.start, range.end) from the CPU page table
 * of range.notifier's mm, faulting pages in as the requests ask. The caller holds the mmap
 * lock (read or write; a KernelBug otherwise) and must not hold its update lock.
 *
 * Returns 0 (every entry is an output; valid only if mmuIntervalReadRetry under the update
 * lock says so), -EBUSY (the sequence moved: read_begin again and retry), -EFAULT (a requested
 * page has no VMA, a forbidden VMA, or its fault failed), -EPERM (a write was requested on a
 * VMA without VM_WRITE). On an error the entries from the failing page on hold their inputs.
 * Bad range fields throw KernelError(EINVAL) with nothing changed.
 */
export async function hmmRangeFault(range: HmmRange): Promise<number> {
  const mm = checkRange('hmm_range_fault', range);
  mm.mmapLock.assertHeld();
  const pfns = range.hmmPfns;
  const w: HmmVmaWalk = {
    range,
    mm,
    words: new Uint32Array(pfns.buffer, pfns.byteOffset, pfns.length * 2),
    maskHi: hi(range.pfnFlagsMask),
    defaultHi: hi(range.defaultFlags),
    mayFault: ((range.defaultFlags | range.pfnFlagsMask) & HMM_PFN_REQ_FAULT) !== 0n,
    last: range.start,
    faults: 0,
    pendingEnd: 0,
    pendingRequired: 0,
    pendingPfn: 0,
  };
  let ret: number;
  do {
    // If the range is no longer valid, force a retry (pairs with mmuIntervalSetSeq).
    if (mmuIntervalCheckRetry(range.notifier, range.notifierSeq)) {
      ret = -EBUSY;
      break;
    }
    ret = await hmmWalkPageRange(w, w.last, range.end);
    // -EBUSY: restart at w.last. Entries below it are outputs, the rest still inputs.
  } while (ret === -EBUSY);
  const t = mm.engine.trace;
  if (t.active && t.wants('hmm.range_fault')) t.emit('hmm.range_fault', { mm: mm.id, start: range.start, end: range.end, ret, faults: w.faults });
  return ret;
}
