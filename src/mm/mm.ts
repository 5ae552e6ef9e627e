/**
 * MmStruct: one simulated process address space.
 *
 * Models: include/linux/mm_types.h (struct mm_struct), kernel/fork.c (mm lifetime),
 * mm/memory.c (zap_pte_range), mm/mprotect.c (change_pte_range).
 *
 * Locks (the kernel's order): mmap_lock (RwSemaphore, class "mmap_lock") -> driver locks ->
 * the page-table lock (SpinLock "ptl": ONE per mm, where the kernel has one per PTE table;
 * simplification) -> notifier subscriptions lock. mmap_lock protects the VMA list and every
 * VMA; the ptl protects the page table and the struct-page counts it implies (mapcount, the
 * mapping's reference). Notifier callbacks run without the ptl.
 *
 * The contract the project rests on: no PTE is changed or removed without an invalidation
 * that brackets it: mmuNotifierInvalidateRangeStart before the change, End after it (and
 * after the CPU TLB flush, which is instant here: CPU TLBs are not modelled, so a CPU access
 * always walks the current page table). The single exception is the kernel's: upgrading a
 * PTE's permissions (wp_page_reuse, fault-in of a none entry) needs no invalidation, since no
 * secondary MMU can hold a translation that the upgrade makes stale.
 */
import {
  MMU_NOTIFIER_RANGE_BLOCKABLE,
  mmuNotifierInvalidateRangeEnd,
  mmuNotifierInvalidateRangeStart,
  mmuNotifierRangeInitOwner,
  type MmuNotifierSubscriptions,
  type NotifierMm,
} from '../notifier/index.js';
import { ESRCH, KernelError, RwSemaphore, SpinLock, type Engine } from '../sim/index.js';
import {
  PAGE_SIZE,
  PG_DIRTY,
  PGDIR_SIZE,
  PTE_DIRTY,
  PTE_KIND_MASK,
  PTE_PRESENT,
  PTE_SWP_DEVICE_EXCLUSIVE,
  PTE_SWP_DEVICE_PRIVATE,
  PTE_WRITE,
  PTE_ZERO,
  PUD_SIZE,
} from './constants.js';
import { PageTable, type PteTable, vpnOf } from './pagetable.js';
import type { PhysMem } from './phys.js';
import { deviceRmapRemove } from './rmap.js';
import { VmaList } from './vma.js';

declare module '../sim/trace.js' {
  interface TraceEventMap {
    /** A system call on an mm finished (result: 0, an address, or -errno). */
    'mm.syscall': { mm: number; op: string; start: number; len: number; result: number };
    /** A CPU page fault was handled (result 0 or -errno). */
    'mm.fault': { mm: number; task: string; addr: number; write: boolean; result: number };
    /** A PTE changed (emitted only when someone listens). */
    'mm.pte': { mm: number; addr: number; pfn: number; bits: number; op: string };
    /** An mm was created (fork: parent is set) or exited. */
    'mm.create': { mm: number; name: string; parent: number | null };
    'mm.exit': { mm: number };
  }
}

let nextMmId = 1;

/** Options of a new mm. */
export interface MmOptions {
  /** Name for traces and errors. Default `mm<id>`. */
  readonly name?: string;
}

/** Counters of one mm, for statistics and tests. */
export interface MmStats {
  faults: number;
  cowCopies: number;
  zeroMaps: number;
  invalidations: number;
}

export class MmStruct implements NotifierMm {
  readonly id: number;
  readonly name: string;
  readonly mmapLock: RwSemaphore;
  /** The page-table lock: one per mm (the kernel has one per PTE table). */
  readonly ptl: SpinLock;
  readonly pgtable: PageTable;
  readonly vmas = new VmaList();
  notifierSubscriptions: MmuNotifierSubscriptions | null = null;
  /** live -> exiting (exit_mmap running) -> dead. */
  state: 'live' | 'exiting' | 'dead' = 'live';
  readonly stats: MmStats = { faults: 0, cowCopies: 0, zeroMaps: 0, invalidations: 0 };

  constructor(
    readonly engine: Engine,
    readonly phys: PhysMem,
    opts: MmOptions = {},
    parent: MmStruct | null = null,
  ) {
    this.id = nextMmId++;
    this.name = opts.name ?? `mm${this.id}`;
    this.mmapLock = new RwSemaphore(engine, `${this.name}.mmap_lock`, { lockClass: 'mmap_lock' });
    this.ptl = new SpinLock(engine, `${this.name}.ptl`, { lockClass: 'ptl' });
    this.pgtable = new PageTable(engine);
    if (engine.trace.active) engine.trace.emit('mm.create', { mm: this.id, name: this.name, parent: parent?.id ?? null });
  }

  /** Throws ESRCH if the mm has exited (or is exiting). */
  checkAlive(op: string): void {
    if (this.state !== 'live') throw new KernelError(ESRCH, `${op}: ${this.name} has exited`);
  }

  toString(): string {
    return this.name;
  }
}

/** Creates an address space on `phys`. */
export function createMm(engine: Engine, phys: PhysMem, opts: MmOptions = {}): MmStruct {
  return new MmStruct(engine, phys, opts);
}

// ---- helpers shared by the operations (callers hold the locks named) ----

export { vpnOf } from './pagetable.js';

/** Clears entry i of a leaf (caller holds the ptl). */
export function clearEntry(leaf: PteTable, i: number): void {
  if (leaf.bits[i] === 0) return;
  leaf.bits[i] = 0;
  leaf.pfn[i] = 0;
  leaf.used--;
}

/**
 * zap_pte_range over [start, end): clears every entry and drops what it held (the mapping's
 * page reference and mapcount). Migration entries hold neither (the migrator took them when
 * it installed the entry). Caller holds the ptl. Returns the entries cleared.
 */
export function zapRange(mm: MmStruct, start: number, end: number): number {
  const phys = mm.phys;
  const pflags = phys.flags;
  const tracing = mm.engine.trace.active && mm.engine.trace.wants('mm.pte');
  let n = 0;
  mm.pgtable.forEachLeaf(vpnOf(start), vpnOf(end), (leaf, from, to, base) => {
    const bits = leaf.bits;
    const pfns = leaf.pfn;
    for (let i = from; i < to; i++) {
      const b = bits[i]!;
      if (b === 0) continue;
      const pfn = pfns[i]!;
      if (b & PTE_PRESENT) {
        if (!(b & PTE_ZERO)) {
          phys.decMapcount(pfn);
          if (b & PTE_DIRTY) pflags[pfn]! |= PG_DIRTY;
          phys.putPage(pfn);
        }
      } else {
        const kind = b & PTE_KIND_MASK;
        if (kind === PTE_SWP_DEVICE_PRIVATE || kind === PTE_SWP_DEVICE_EXCLUSIVE) {
          if (kind === PTE_SWP_DEVICE_PRIVATE) deviceRmapRemove(phys, pfn, mm, (base + i) * PAGE_SIZE);
          phys.decMapcount(pfn);
          phys.putPage(pfn);
        }
      }
      bits[i] = 0;
      pfns[i] = 0;
      leaf.used--;
      n++;
      if (tracing) mm.engine.trace.emit('mm.pte', { mm: mm.id, addr: (base + i) * PAGE_SIZE, pfn, bits: 0, op: 'zap' });
    }
  });
  return n;
}

/**
 * Brackets `change` (which runs under the ptl) with an invalidation of [start, end): start
 * before, end after (after the CPU TLB flush, instant here). `owner` is the range owner
 * (MIGRATE and EXCLUSIVE events); null otherwise.
 */
export async function withInvalidation<T>(mm: MmStruct, event: number, start: number, end: number, owner: unknown, change: () => T): Promise<T> {
  const range = mmuNotifierRangeInitOwner(event, MMU_NOTIFIER_RANGE_BLOCKABLE, mm, start, end, owner);
  mm.stats.invalidations++;
  await mmuNotifierInvalidateRangeStart(range);
  mm.ptl.lock();
  let result: T;
  try {
    result = change();
  } finally {
    mm.ptl.unlock();
  }
  await mmuNotifierInvalidateRangeEnd(range);
  return result;
}

/** Calls fn for each span [s, e) of [start, end) that lies within one PGD entry (512 GiB). */
export function forEachPgdSpan(start: number, end: number, fn: (s: number, e: number) => void): void {
  for (let s = start; s < end; ) {
    const e = Math.min(end, (Math.floor(s / PGDIR_SIZE) + 1) * PGDIR_SIZE);
    fn(s, e);
    s = e;
  }
}

/**
 * The start of the range change_pud_range would invalidate for [s, e): the address of the
 * first populated PUD entry (or `s` itself if its own PUD entry is populated); null if none is.
 */
export function firstPopulatedPud(mm: MmStruct, s: number, e: number): number | null {
  for (let a = s; a < e; ) {
    const pudStart = Math.floor(a / PUD_SIZE) * PUD_SIZE;
    const pudEnd = pudStart + PUD_SIZE;
    // pud_none looks at the whole 1 GiB entry: a neighbour's pages populate it for us too.
    if (mm.pgtable.hasLeaves(vpnOf(pudStart), vpnOf(pudEnd))) return a;
    a = Math.min(e, pudEnd);
  }
  return null;
}

/** Write-protects every writable entry in [start, end) (caller holds the ptl). Returns entries changed. */
export function wrprotectRange(mm: MmStruct, start: number, end: number): number {
  let n = 0;
  mm.pgtable.forEachLeaf(vpnOf(start), vpnOf(end), (leaf, from, to) => {
    const bits = leaf.bits;
    for (let i = from; i < to; i++) {
      const b = bits[i]!;
      if (b & PTE_WRITE) {
        bits[i] = b & ~PTE_WRITE;
        n++;
      }
    }
  });
  return n;
}
