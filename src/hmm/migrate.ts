/**
 * Migration of anonymous memory to and from device memory: migrate_vma (by virtual range)
 * and migrate_device_* (by device pfn, for eviction), plus the reverse map of device pages
 * that eviction needs.
 *
 * Models: mm/migrate_device.c (migrate_vma_setup, migrate_vma_collect(_pmd/_hole),
 * migrate_vma_check_page, migrate_device_unmap, migrate_vma_insert_page,
 * __migrate_device_pages, __migrate_device_finalize, migrate_device_range,
 * migrate_device_pfn_lock), include/linux/migrate.h (MIGRATE_PFN_*, MIGRATE_VMA_SELECT_*,
 * struct migrate_vma), mm/migrate.c (remove_migration_pte, folio_migrate_mapping,
 * folio_migrate_flags), mm/rmap.c (try_to_migrate_one, for device pages).
 *
 * Protocol (the kernel's; the driver's part in brackets):
 *   setup:    [mmap_read_lock] collect inside ONE MMU_NOTIFY_MIGRATE invalidation of
 *             [start, end) whose owner is pgmap_owner (so the driver can skip its own
 *             device-private mappings): each selected page is referenced, trylocked and its PTE
 *             replaced by a migration entry (mapcount and the mapping's reference dropped, the
 *             migrator's reference kept); then unmap: pages still mapped elsewhere or with
 *             unexpected references are put back (remove_migration_ptes) and unlocked.
 *             cpages = entries marked MIGRATE after unmap (holes included).
 *   [driver: allocate dst pages, LOCK them (zone_device_page_init / lock_page), copy src->dst,
 *             dst[i] = migratePfn(pfn) (| MIGRATE_PFN_WRITE, which the core ignores)]
 *   pages:    move struct-page state src->dst (folio_migrate_mapping: refcount check, mapping
 *             and flags); entries with no source page get the new page inserted
 *             (migrate_vma_insert_page) under a second MIGRATE invalidation, which loses to a
 *             concurrent CPU fault that filled the PTE (MIGRATE cleared).
 *   [driver: update its page table; both pages are still locked]
 *   finalize: each migration entry becomes the new page (or the old one on failure) without an
 *             invalidation (it was non-present); pages are unlocked and put [mmap_read_unlock].
 * A CPU fault on a migration entry sleeps on the source page lock (migration_entry_wait) and
 * retries; pairs with the unlock in finalize.
 *
 * Locks: mmap_lock (read, held by the caller of the migrate_vma_* calls) keeps the VMA and the
 * range's page tables alive; the mm's ptl protects each PTE change and the counts it implies;
 * the page lock (PG_LOCKED) of every collected page is held from collect to finalize, which is
 * what makes it safe to copy its contents. Order: mmap_lock -> page lock (trylock only in
 * collect, so two migrators never wait on each other) -> ptl. No scheduling point under the ptl.
 *
 * Reference counts (current kernels: a free device page has refcount 0): a mapping (present,
 * device-private or device-exclusive PTE) holds one reference and one mapcount; a migration
 * entry holds neither; the migrator holds one reference per collected page from collect to
 * finalize; the fault path (do_swap_page) holds one more on faultPage; the driver's freshly
 * allocated dst page holds one, dropped by finalize. So a page moved to the device is freed by
 * finalize, and a device page migrated back is freed when the fault path puts it (its pagemap's
 * pageFree puts it back on the free list).
 *
 * Device reverse map: the kernel finds a page's mappings through its anon_vma; we have no
 * reverse map, so for zone-device pages only we record (mm, addr) for each device-private or
 * device-coherent mapping and each migration entry of a device page installed here. Records
 * are hints, verified (the PTE still holds that pfn) when used, and pruned when stale: paths
 * outside this file that add such mappings (fork copying device-private entries) leave them
 * unknown to eviction, paths that remove or move them (zap, mremap) leave stale records.
 *
 * Simplifications: order-0 pages only (MIGRATE_VMA_SELECT_COMPOUND is accepted and ignored:
 * thp_migration_supported() is false here); PageAnonExclusive is approximated by "anonymous
 * and mapped once"; PG_PINNED stands for folio_maybe_dma_pinned (fails the refcount checks);
 * system pages still mapped by another mm (shared after fork) are put back instead of being
 * unmapped through an rmap; shmem pages are never migrated (the kernel can move them between
 * system pages through the page cache, which ShmemObject cannot replace); migration entries
 * carry the young/dirty bits as PTE_ACCESSED/PTE_DIRTY (make_migration_entry_young/_dirty);
 * scheduling points between PTE tables (512 entries), not per page.
 */
import {
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_MIGRATE,
  type MmuNotifierRange,
  mmuNotifierInvalidateRangeEnd,
  mmuNotifierInvalidateRangeStart,
  mmuNotifierRangeInitOwner,
} from '../notifier/index.js';
import {
  MmStruct,
  PAGE_SIZE,
  PG_ANON,
  PG_DIRTY,
  PG_PINNED,
  PG_REFERENCED,
  PG_SHMEM,
  PTE_ACCESSED,
  PTE_DIRTY,
  PTE_KIND_MASK,
  PTE_PRESENT,
  PTE_PROTNONE,
  PTE_SWP_DEVICE_PRIVATE,
  PTE_SWP_MIGRATION,
  PTE_WRITE,
  PTE_ZERO,
  PhysMem,
  VM_EXEC,
  VM_IO,
  VM_PFNMAP,
  VM_READ,
  VM_WRITE,
  Vma,
  ZONE_DEVICE_COHERENT,
  ZONE_DEVICE_PRIVATE,
  ZONE_SYSTEM,
  isDevPagemap,
  vpnOf,
  withInvalidation,
} from '../mm/index.js';
import { EINVAL, KernelBug, KernelError } from '../sim/index.js';
import { deviceRmapAdd, deviceRmapMappings, deviceRmapMapsPfn, deviceRmapRemove } from '../mm/index.js';

declare module '../sim/trace.js' {
  interface TraceEventMap {
    /** migrate_vma_setup returned (`result` 0 or -errno; counts as left in the args). */
    'hmm.migrate_setup': { mm: number; start: number; end: number; flags: number; npages: number; cpages: number; result: number };
    /** migrate_vma_pages / migrate_device_pages: entries still marked MIGRATE with a dst. */
    'hmm.migrate_pages': { mm: number | null; npages: number; migrating: number };
    /** migrate_vma_finalize / migrate_device_finalize: pages moved and pages put back. */
    'hmm.migrate_finalize': { mm: number | null; npages: number; moved: number; restored: number };
    /** migrate_device_range: device pages locked and unmapped for eviction. */
    'hmm.migrate_device_range': { startPfn: number; npages: number; collected: number };
  }
}

// ---- include/linux/migrate.h ----

/** The entry holds a pfn (migrate_pfn sets it). */
export const MIGRATE_PFN_VALID = 1n << 0n;
/** The entry is selected for migration (set by setup, cleared by the core when it gives up). */
export const MIGRATE_PFN_MIGRATE = 1n << 1n;
/** The source mapping was writable (src); the driver may set it on dst, which the core ignores. */
export const MIGRATE_PFN_WRITE = 1n << 3n;
/** A compound (THP) entry: never produced here (no THP). */
export const MIGRATE_PFN_COMPOUND = 1n << 4n;
export const MIGRATE_PFN_SHIFT = 6n;

/** enum migrate_vma_direction. */
export const MIGRATE_VMA_SELECT_SYSTEM = 1;
export const MIGRATE_VMA_SELECT_DEVICE_PRIVATE = 2;
export const MIGRATE_VMA_SELECT_DEVICE_COHERENT = 4;
export const MIGRATE_VMA_SELECT_COMPOUND = 8;
const SELECT_KNOWN = 15;

// The same flags on the low 32-bit word of an entry, which the hot loops use: src/dst are
// read and written through Uint32Array views (little-endian: word 2i is the low half), so no
// BigInt is created per page. pfn = (lo >>> 6) + hi * 2**26.
const F_VALID = 1;
const F_MIGRATE = 2;
const F_WRITE = 8;
const PFN_LO_BITS = 0x3ffffff; // 26 bits of pfn fit in the low word above the 6 flag bits
const PFN_HI_UNIT = 0x4000000;

/** migrate_pfn: the entry for `pfn`, with MIGRATE_PFN_VALID. */
export function migratePfn(pfn: number): bigint {
  if (!Number.isSafeInteger(pfn) || pfn < 0 || pfn >= 2 ** 52) throw new KernelError(EINVAL, `migrate_pfn: pfn must be a non-negative integer: ${String(pfn)}`);
  return (BigInt(pfn) << MIGRATE_PFN_SHIFT) | MIGRATE_PFN_VALID;
}

/** migrate_pfn_to_page, as a pfn: the entry's pfn, or 0 when MIGRATE_PFN_VALID is clear. */
export function migratePfnToPfn(m: bigint): number {
  if (typeof m !== 'bigint') throw new KernelError(EINVAL, `migrate_pfn_to_page: entry must be a bigint: ${String(m)}`);
  if ((m & MIGRATE_PFN_VALID) === 0n) return 0;
  return Number(BigInt.asUintN(64, m) >> MIGRATE_PFN_SHIFT);
}

function words(a: BigUint64Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length * 2);
}

function pfnAt(w: Uint32Array, i: number): number {
  return (w[2 * i]! >>> 6) + w[2 * i + 1]! * PFN_HI_UNIT;
}

function setEntry(w: Uint32Array, i: number, pfn: number, flags: number): void {
  w[2 * i] = (pfn & PFN_LO_BITS) * 64 + flags;
  w[2 * i + 1] = Math.floor(pfn / PFN_HI_UNIT);
}

// ---- struct migrate_vma ----

/** What a MigrateVma is built from (struct migrate_vma's inputs). */
export interface MigrateVmaOptions {
  /** vma->vm_mm: our Vma does not point to its mm, so the mm is given here. Required. */
  readonly mm: MmStruct;
  /** The VMA containing [start, end); null makes setup return -EINVAL. */
  readonly vma: Vma | null;
  /** First address (rounded down to a page by setup). */
  readonly start: number;
  /** End address, exclusive (rounded down to a page by setup). */
  readonly end: number;
  /** At least (end - start) / PAGE_SIZE entries; null makes setup return -EINVAL. */
  readonly src: BigUint64Array | null;
  /** At least (end - start) / PAGE_SIZE entries; null makes setup return -EINVAL. */
  readonly dst: BigUint64Array | null;
  /** pgmap->owner of the device pages to select, and the owner of the MIGRATE invalidations. Default null. */
  readonly pgmapOwner?: unknown;
  /** MIGRATE_VMA_SELECT_* bits. Default 0 (only empty entries are collected). */
  readonly flags?: number;
  /** The locked device-private page of the fault being handled (migrate_to_ram), or 0. Default 0. */
  readonly faultPage?: number;
}

/**
 * struct migrate_vma. Fields are public and mutable, as in C: setup writes start/end (page
 * aligned), src, dst, cpages and npages; the driver writes dst. The src array must not be
 * changed by the caller after setup, nor dst after migrateVmaPages.
 */
export class MigrateVma {
  mm: MmStruct;
  vma: Vma | null;
  start: number;
  end: number;
  src: BigUint64Array | null;
  dst: BigUint64Array | null;
  /** Entries selected for migration (after setup: those still marked MIGRATE). */
  cpages = 0;
  /** Entries collected (one per page of the range). */
  npages = 0;
  pgmapOwner: unknown;
  flags: number;
  /** pfn of the fault's device page, or 0. */
  faultPage: number;

  constructor(opts: MigrateVmaOptions) {
    if (opts === null || typeof opts !== 'object') throw new KernelError(EINVAL, `MigrateVma: options must be an object: ${String(opts)}`);
    this.mm = opts.mm;
    this.vma = opts.vma;
    this.start = opts.start;
    this.end = opts.end;
    this.src = opts.src;
    this.dst = opts.dst;
    this.pgmapOwner = opts.pgmapOwner ?? null;
    this.flags = opts.flags ?? 0;
    this.faultPage = opts.faultPage ?? 0;
    checkArgs(this, 'MigrateVma');
  }
}

/** Type checks of the fields (bad input throws, before anything changes). */
function checkArgs(args: MigrateVma, what: string): void {
  if (!(args instanceof MigrateVma)) throw new KernelError(EINVAL, `${what}: args must be a MigrateVma: ${String(args)}`);
  if (!(args.mm instanceof MmStruct)) throw new KernelError(EINVAL, `${what}: mm must be an MmStruct: ${String(args.mm)}`);
  if (args.vma !== null && !(args.vma instanceof Vma)) throw new KernelError(EINVAL, `${what}: vma must be a Vma or null: ${String(args.vma)}`);
  for (const [name, v] of [
    ['start', args.start],
    ['end', args.end],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 0) throw new KernelError(EINVAL, `${what}: ${name} must be a non-negative integer address: ${String(v)}`);
  }
  for (const [name, a] of [
    ['src', args.src],
    ['dst', args.dst],
  ] as const) {
    if (a !== null && !(a instanceof BigUint64Array)) throw new KernelError(EINVAL, `${what}: ${name} must be a BigUint64Array or null: ${String(a)}`);
  }
  if (!Number.isInteger(args.flags) || args.flags < 0) throw new KernelError(EINVAL, `${what}: flags must be a non-negative integer: ${String(args.flags)}`);
  if (!Number.isInteger(args.faultPage) || args.faultPage < 0 || args.faultPage >= args.mm.phys.totalFrames) {
    throw new KernelError(EINVAL, `${what}: faultPage must be 0 or a pfn below ${args.mm.phys.totalFrames}: ${String(args.faultPage)}`);
  }
}

// ---- helpers ----

function tracePte(mm: MmStruct, addr: number, pfn: number, bits: number, op: string): void {
  const t = mm.engine.trace;
  if (t.active && t.wants('mm.pte')) t.emit('mm.pte', { mm: mm.id, addr, pfn, bits, op });
}

/** vm_page_prot of the VMA at addr: PROT_NONE VMAs give protnone PTEs. */
function protnoneBit(vma: Vma | null): number {
  return vma !== null && (vma.flags & (VM_READ | VM_WRITE | VM_EXEC)) === 0 ? PTE_PROTNONE : 0;
}

/**
 * migrate_vma_check_page: false if the page has references beyond its mappings and the ones
 * migration holds (the migrator's; the fault path's on faultPage; the extra one the kernel
 * still allows ZONE_DEVICE pages; the page cache's for shmem).
 */
function checkPage(phys: PhysMem, pfn: number, faultPage: number): boolean {
  let extra = 1 + (pfn === faultPage ? 1 : 0);
  if (phys.zone[pfn] !== ZONE_SYSTEM) extra++;
  const f = phys.flags[pfn]!;
  if (f & PG_SHMEM) extra++;
  if (f & PG_PINNED) return false;
  return phys.refcount[pfn]! - extra <= phys.mapcount[pfn]!;
}

/**
 * try_to_migrate for a device page: every other recorded mapping becomes a migration entry,
 * each inside a CLEAR invalidation of its page (try_to_migrate_one: no owner). System pages
 * have no reverse map here: they stay mapped (and the caller puts them back).
 */
async function tryToMigrate(phys: PhysMem, pfn: number): Promise<void> {
  if (!phys.isDevicePfn(pfn)) return;
  for (const { mm, addr } of deviceRmapMappings(phys, pfn)) {
    if (phys.mapcount[pfn] === 0) return; // folio_not_mapped: done
    if (!deviceRmapMapsPfn(mm, addr, pfn)) continue; // changed while we slept
    const vpn = vpnOf(addr);
    await withInvalidation(mm, MMU_NOTIFY_CLEAR, addr, addr + PAGE_SIZE, null, () => {
      const pt = mm.pgtable;
      const b = pt.bitsAt(vpn);
      if (pt.pfnAt(vpn) !== pfn || b === 0) return;
      let nb: number;
      if (b & PTE_PRESENT) {
        if (b & PTE_DIRTY) phys.flags[pfn]! |= PG_DIRTY;
        nb = PTE_SWP_MIGRATION | (b & (PTE_WRITE | PTE_DIRTY | PTE_ACCESSED));
      } else if ((b & PTE_KIND_MASK) === PTE_SWP_DEVICE_PRIVATE) {
        nb = PTE_SWP_MIGRATION | (b & PTE_WRITE);
      } else {
        return;
      }
      pt.set(vpn, pfn, nb);
      phys.decMapcount(pfn);
      phys.putPage(pfn);
      tracePte(mm, addr, pfn, nb, 'migration-entry');
    });
  }
}

/**
 * remove_migration_ptes(src, dst): each migration entry of `src` becomes a mapping of `dst`
 * (the same page on failure), with no invalidation (it was non-present). `hint` is the entry
 * migrate_vma installed itself; device pages are also looked up in the reverse map. Returns
 * the entries replaced. Synchronous (no scheduling point); takes each mm's ptl.
 */
function removeMigrationPtes(phys: PhysMem, src: number, dst: number, hintMm: MmStruct | null, hintAddr: number): number {
  let n = 0;
  if (hintMm !== null) n += removeMigrationPte(phys, src, dst, hintMm, hintAddr);
  if (phys.isDevicePfn(src)) {
    for (const { mm, addr } of deviceRmapMappings(phys, src)) n += removeMigrationPte(phys, src, dst, mm, addr);
  }
  return n;
}

function removeMigrationPte(phys: PhysMem, src: number, dst: number, mm: MmStruct, addr: number): number {
  const pt = mm.pgtable;
  const vpn = vpnOf(addr);
  mm.ptl.lock();
  try {
    const b = pt.bitsAt(vpn);
    if ((b & (PTE_PRESENT | PTE_KIND_MASK)) !== PTE_SWP_MIGRATION || pt.pfnAt(vpn) !== src) return 0;
    let nb: number;
    if (phys.zone[dst] === ZONE_DEVICE_PRIVATE) {
      nb = PTE_SWP_DEVICE_PRIVATE | (b & PTE_WRITE);
    } else {
      const dirty = b & PTE_DIRTY && phys.flags[dst]! & PG_DIRTY ? PTE_DIRTY : 0;
      nb = PTE_PRESENT | (b & (PTE_WRITE | PTE_ACCESSED)) | dirty | protnoneBit(mm.vmas.lookup(addr));
    }
    phys.getPage(dst);
    phys.incMapcount(dst);
    pt.set(vpn, dst, nb);
    if (src !== dst) deviceRmapRemove(phys, src, mm, addr);
    if (phys.zone[dst] !== ZONE_SYSTEM) deviceRmapAdd(phys, dst, mm, addr);
    tracePte(mm, addr, dst, nb, src === dst ? 'migration-restore' : 'migration-remove');
    return 1;
  } finally {
    mm.ptl.unlock();
  }
}

// ---- migrate_vma_setup ----

/**
 * migrate_vma_setup: validates the range, collects its pages and unmaps them (see the module
 * comment). Caller holds mmap_lock (read). Returns 0, or -EINVAL for: no vma, a VM_IO /
 * VM_PFNMAP vma, fewer than one page, a range not inside args.vma (or args.vma not the mm's
 * vma there), src or dst null or shorter than the range, unknown flag bits, or a faultPage that
 * is not a locked device-private page. As the kernel, start and end are first rounded down to
 * pages, and the page count is taken from the unrounded span. On -EINVAL nothing else changed.
 */
export async function migrateVmaSetup(args: MigrateVma): Promise<number> {
  checkArgs(args, 'migrate_vma_setup');
  const mm = args.mm;
  mm.mmapLock.assertHeld();
  const ret = setupChecks(args);
  if (ret === 0) {
    const n = (args.end - args.start) / PAGE_SIZE;
    args.src!.fill(0n, 0, n);
    args.dst!.fill(0n, 0, n);
    args.cpages = 0;
    args.npages = 0;
    await migrateVmaCollect(args);
    if (args.cpages > 0) args.cpages = await migrateDeviceUnmap(mm.phys, words(args.src!), args.npages, args.faultPage, mm, args.start);
  }
  const t = mm.engine.trace;
  if (t.active && t.wants('hmm.migrate_setup')) {
    t.emit('hmm.migrate_setup', { mm: mm.id, start: args.start, end: args.end, flags: args.flags, npages: args.npages, cpages: args.cpages, result: ret });
  }
  return ret;
}

function setupChecks(args: MigrateVma): number {
  const nrPages = Math.floor((args.end - args.start) / PAGE_SIZE);
  args.start -= args.start % PAGE_SIZE;
  args.end -= args.end % PAGE_SIZE;
  const vma = args.vma;
  if (vma === null || (vma.flags & (VM_IO | VM_PFNMAP)) !== 0) return -EINVAL;
  if (nrPages <= 0) return -EINVAL;
  if (args.start < vma.start || args.start >= vma.end) return -EINVAL;
  if (args.end <= vma.start || args.end > vma.end) return -EINVAL;
  // Not in the kernel (a stale vma pointer is a use-after-free there): the vma must be the mm's.
  if (args.mm.vmas.lookup(args.start) !== vma) return -EINVAL;
  // Not in the kernel (it cannot know the array sizes): arrays must hold the range.
  if (args.src === null || args.dst === null) return -EINVAL;
  const n = (args.end - args.start) / PAGE_SIZE;
  if (args.src.length < n || args.dst.length < n) return -EINVAL;
  // Not in the kernel (it ignores unknown bits): a driver passing them has a bug.
  if ((args.flags & ~SELECT_KNOWN) !== 0) return -EINVAL;
  const fp = args.faultPage;
  if (fp !== 0) {
    const phys = args.mm.phys;
    if (phys.zone[fp] !== ZONE_DEVICE_PRIVATE || phys.refcount[fp] === 0) return -EINVAL;
    if (!phys.pageLocked(fp)) return -EINVAL;
  }
  return 0;
}

/**
 * migrate_vma_collect: one MIGRATE invalidation (owner pgmap_owner) around a walk of
 * [start, end), one PTE table at a time under the ptl (pte_offset_map_lock), with a
 * scheduling point between tables.
 */
async function migrateVmaCollect(args: MigrateVma): Promise<void> {
  const mm = args.mm;
  const range = mmuNotifierRangeInitOwner(MMU_NOTIFY_MIGRATE, 0, mm, args.start, args.end, args.pgmapOwner);
  mm.stats.invalidations++;
  await mmuNotifierInvalidateRangeStart(range);
  const sw = words(args.src!);
  const dw = words(args.dst!);
  const v0 = vpnOf(args.start);
  const v1 = vpnOf(args.end);
  for (let v = v0; v < v1; ) {
    const next = Math.min(v1, v - (v % 512) + 512);
    if (v !== v0) await mm.engine.yield();
    collectTable(args, sw, dw, v, next);
    v = next;
  }
  await mmuNotifierInvalidateRangeEnd(range);
  args.end = args.start + args.npages * PAGE_SIZE;
}

/** migrate_vma_collect_pmd / _hole for the entries [v, next) of one PTE table. */
function collectTable(args: MigrateVma, sw: Uint32Array, dw: Uint32Array, v: number, next: number): void {
  const mm = args.mm;
  const phys = mm.phys;
  const anon = args.vma!.shmem === null; // vma_is_anonymous
  const leaf = mm.pgtable.leafAt(v);
  if (leaf === null) {
    // migrate_vma_collect_hole: only anonymous memory may be populated.
    for (let k = v; k < next; k++) {
      const i = args.npages++;
      sw[2 * i] = anon ? F_MIGRATE : 0;
      sw[2 * i + 1] = 0;
      dw[2 * i] = 0;
      dw[2 * i + 1] = 0;
      if (anon) args.cpages++;
    }
    return;
  }
  const flags = args.flags;
  const owner = args.pgmapOwner;
  const faultPage = args.faultPage;
  const bitsArr = leaf.bits;
  const pfnArr = leaf.pfn;
  const pflags = phys.flags;
  const tracing = mm.engine.trace.active;
  mm.ptl.lock();
  try {
    for (let k = v; k < next; k++) {
      const j = k & 511;
      const i = args.npages++;
      dw[2 * i] = 0;
      dw[2 * i + 1] = 0;
      sw[2 * i] = 0;
      sw[2 * i + 1] = 0;
      const b = bitsArr[j]!;
      if (b === 0) {
        if (anon) {
          sw[2 * i] = F_MIGRATE;
          args.cpages++;
        }
        continue;
      }
      const pfn = pfnArr[j]!;
      let mflags: number;
      if (!(b & PTE_PRESENT)) {
        // Only device-private entries are migratable; migration, device-exclusive: skipped.
        if ((b & PTE_KIND_MASK) !== PTE_SWP_DEVICE_PRIVATE) continue;
        const pgmap = phys.pagemapOf(pfn);
        if (!(flags & MIGRATE_VMA_SELECT_DEVICE_PRIVATE) || !isDevPagemap(pgmap) || pgmap.owner !== owner) continue;
        mflags = F_MIGRATE | (b & PTE_WRITE ? F_WRITE : 0);
      } else {
        if (b & PTE_ZERO) {
          // The zero page: an empty source (no page), selected with SELECT_SYSTEM only.
          if (flags & MIGRATE_VMA_SELECT_SYSTEM) {
            sw[2 * i] = F_MIGRATE;
            args.cpages++;
          }
          continue;
        }
        const zone = phys.zone[pfn];
        if (zone === ZONE_SYSTEM && !(flags & MIGRATE_VMA_SELECT_SYSTEM)) continue;
        if (zone === ZONE_DEVICE_COHERENT) {
          const pgmap = phys.pagemapOf(pfn);
          if (!(flags & MIGRATE_VMA_SELECT_DEVICE_COHERENT) || !isDevPagemap(pgmap) || pgmap.owner !== owner) continue;
        }
        mflags = F_MIGRATE | (b & PTE_WRITE ? F_WRITE : 0);
      }
      // !page->mapping: a system page that is neither anonymous nor shmem is not migratable.
      if (phys.zone[pfn] === ZONE_SYSTEM && (pflags[pfn]! & (PG_ANON | PG_SHMEM)) === 0) continue;
      phys.getPage(pfn);
      if (pfn !== faultPage && !phys.trylockPage(pfn)) {
        // Best effort: a page someone else holds locked is not migrated.
        phys.putPage(pfn);
        continue;
      }
      const pf = pflags[pfn]!;
      if (pf & PG_ANON && pf & PG_PINNED && phys.mapcount[pfn] === 1) {
        // anon_exclusive and folio_try_share_anon_rmap_pte refuses (maybe DMA-pinned): the PTE
        // stays as it was.
        if (pfn !== faultPage) phys.unlockPage(pfn);
        phys.putPage(pfn);
        continue;
      }
      args.cpages++;
      let nb = PTE_SWP_MIGRATION | (mflags & F_WRITE ? PTE_WRITE : 0);
      if (b & PTE_PRESENT) {
        if (b & PTE_DIRTY) pflags[pfn]! |= PG_DIRTY; // folio_mark_dirty now the PTE is gone
        nb |= b & (PTE_DIRTY | PTE_ACCESSED);
      }
      bitsArr[j] = nb; // non-none to non-none: the table's `used` count is unchanged
      phys.decMapcount(pfn);
      phys.putPage(pfn); // the mapping's reference; the one taken above stays with the migrator
      setEntry(sw, i, pfn, F_VALID | mflags);
      if (tracing) tracePte(mm, k * PAGE_SIZE, pfn, nb, 'migration-entry');
    }
  } finally {
    mm.ptl.unlock();
  }
}

/**
 * migrate_device_unmap: for each collected page, unmap what is still mapped (device pages
 * through the reverse map), then check its references; failures lose MIGRATE and are put back
 * (remove_migration_ptes, unlock, put) with src = 0. Returns the entries still marked MIGRATE.
 * `hintMm`/`hintStart`: where migrate_vma installed entry i (null for migrate_device_range).
 */
async function migrateDeviceUnmap(phys: PhysMem, sw: Uint32Array, npages: number, faultPage: number, hintMm: MmStruct | null, hintStart: number): Promise<number> {
  let restore = 0;
  let unmapped = 0;
  for (let i = 0; i < npages; i++) {
    const lo = sw[2 * i]!;
    if (!(lo & F_VALID)) {
      if (lo & F_MIGRATE) unmapped++;
      continue;
    }
    const pfn = pfnAt(sw, i);
    if (phys.mapcount[pfn]! > 0) await tryToMigrate(phys, pfn);
    if (phys.mapcount[pfn]! > 0 || !checkPage(phys, pfn, faultPage)) {
      sw[2 * i] = lo & ~F_MIGRATE;
      restore++;
      continue;
    }
    unmapped++;
  }
  for (let i = 0; i < npages && restore > 0; i++) {
    const lo = sw[2 * i]!;
    if (!(lo & F_VALID) || lo & F_MIGRATE) continue;
    const pfn = pfnAt(sw, i);
    removeMigrationPtes(phys, pfn, pfn, hintMm, hintStart + i * PAGE_SIZE);
    sw[2 * i] = 0;
    sw[2 * i + 1] = 0;
    if (pfn !== faultPage) phys.unlockPage(pfn);
    phys.putPage(pfn);
    restore--;
  }
  return unmapped;
}

// ---- migrate_vma_pages / migrate_device_pages ----

/**
 * Validates the driver's dst entries before anything changes: a pfn beyond memory throws
 * KernelError(EINVAL); a dst page that is free or not locked is a contract violation
 * ("destination pages must be locked") and a KernelBug.
 */
function checkDst(phys: PhysMem, sw: Uint32Array, dw: Uint32Array, npages: number, what: string): void {
  for (let i = 0; i < npages; i++) {
    if (!(dw[2 * i]! & F_VALID)) continue;
    const pfn = pfnAt(dw, i);
    if (pfn === 0 || pfn >= phys.totalFrames) throw new KernelError(EINVAL, `${what}: dst[${i}] holds pfn ${pfn}, not a page (memory has ${phys.totalFrames} frames)`);
    if (phys.refcount[pfn] === 0) phys.engine.bug(new KernelBug(`BUG: ${what}: dst[${i}] pfn ${pfn} is a free page`));
    if (!phys.pageLocked(pfn)) phys.engine.bug(new KernelBug(`BUG: ${what}: dst[${i}] pfn ${pfn} is not locked (destination pages must be locked)`));
    if (sw[2 * i]! & F_VALID && pfnAt(sw, i) === pfn) phys.engine.bug(new KernelBug(`BUG: ${what}: dst[${i}] is the source page ${pfn}`));
  }
}

/**
 * The per-entry part of __migrate_device_pages from index `from`: moves struct-page state for
 * entries with both pages; returns the index of the first empty source still marked MIGRATE
 * with a dst when `inserting` is false (the caller starts the invalidation and calls again
 * with inserting true), else inserts those pages too. Returns npages when done.
 */
function migratePagesFrom(phys: PhysMem, sw: Uint32Array, dw: Uint32Array, npages: number, migrate: MigrateVma | null, from: number, inserting: boolean): number {
  const pflags = phys.flags;
  for (let i = from; i < npages; i++) {
    const dlo = dw[2 * i]!;
    const slo = sw[2 * i]!;
    if (!(dlo & F_VALID)) {
      sw[2 * i] = slo & ~F_MIGRATE;
      continue;
    }
    const newpfn = pfnAt(dw, i);
    if (!(slo & F_VALID)) {
      if (!(slo & F_MIGRATE)) continue;
      if (migrate === null) phys.engine.bug(new KernelBug(`BUG: migrate_device_pages: src[${i}] is MIGRATE without a page (only migrate_vma has holes)`));
      if (!inserting) return i;
      migrateVmaInsertPage(migrate, migrate.start + i * PAGE_SIZE, newpfn, sw, i);
      continue;
    }
    const pfn = pfnAt(sw, i);
    // folio_mapping(): shmem pages are in a page cache. To device memory only anonymous pages
    // move; to system memory the kernel would replace them in the page cache, which is not
    // modelled: they never move.
    if (pflags[pfn]! & PG_SHMEM) {
      sw[2 * i] = slo & ~F_MIGRATE;
      continue;
    }
    // folio_migrate_mapping: the only references left are the mappings (none: unmapped), the
    // migrator's, and the fault path's on fault_page.
    const extra = migrate !== null && migrate.faultPage === pfn ? 1 : 0;
    if (phys.refcount[pfn] !== phys.mapcount[pfn]! + extra + 1 || pflags[pfn]! & PG_PINNED) {
      sw[2 * i] = slo & ~F_MIGRATE;
      continue;
    }
    // newfolio->mapping = folio->mapping, and folio_migrate_flags.
    pflags[newpfn]! |= pflags[pfn]! & (PG_ANON | PG_DIRTY | PG_REFERENCED);
  }
  return npages;
}

/**
 * migrate_vma_insert_page: maps the new page at an address that had no page (none, or the
 * zero page) when setup ran, as do_anonymous_page would; aborts (clearing MIGRATE) if the VMA
 * is not anonymous, the mm is exiting, or the PTE changed meanwhile (a CPU fault won).
 * Caller is inside the MIGRATE invalidation.
 */
function migrateVmaInsertPage(migrate: MigrateVma, addr: number, newpfn: number, sw: Uint32Array, i: number): void {
  const mm = migrate.mm;
  const phys = mm.phys;
  const vma = migrate.vma!;
  const abort = (): void => {
    sw[2 * i] = sw[2 * i]! & ~F_MIGRATE;
  };
  if (vma.shmem !== null) return abort();
  const zone = phys.zone[newpfn];
  const writable = (vma.flags & VM_WRITE) !== 0;
  const entry =
    zone === ZONE_DEVICE_PRIVATE
      ? PTE_SWP_DEVICE_PRIVATE | (writable ? PTE_WRITE : 0)
      : PTE_PRESENT | PTE_ACCESSED | (writable ? PTE_WRITE | PTE_DIRTY : 0) | protnoneBit(vma);
  const pt = mm.pgtable;
  const vpn = vpnOf(addr);
  mm.ptl.lock();
  try {
    if (mm.state !== 'live') return abort(); // check_stable_address_space
    const b = pt.bitsAt(vpn);
    if (b & PTE_PRESENT) {
      if (!(b & PTE_ZERO)) return abort();
      // The zero page is replaced (ptep_clear_flush): it holds no reference.
    } else if (b !== 0) {
      return abort();
    }
    phys.flags[newpfn]! |= PG_ANON; // folio_add_new_anon_rmap
    phys.incMapcount(newpfn);
    phys.getPage(newpfn);
    pt.set(vpn, newpfn, entry);
    if (zone !== ZONE_SYSTEM) deviceRmapAdd(phys, newpfn, mm, addr);
    sw[2 * i] = F_MIGRATE;
    sw[2 * i + 1] = 0;
    tracePte(mm, addr, newpfn, entry, 'migrate-insert');
  } finally {
    mm.ptl.unlock();
  }
}

function countMigrating(sw: Uint32Array, dw: Uint32Array, npages: number): number {
  let n = 0;
  for (let i = 0; i < npages; i++) if (sw[2 * i]! & F_MIGRATE && dw[2 * i]! & F_VALID) n++;
  return n;
}

/**
 * migrate_vma_pages: commits struct-page state from each src page to its dst page (the
 * driver has copied the contents); sources without a page get the dst page inserted under a
 * MIGRATE invalidation (owner pgmap_owner) of [first such address, end). Entries that cannot
 * move lose MIGRATE_PFN_MIGRATE. Caller holds mmap_lock (read); dst pages must be locked.
 */
export async function migrateVmaPages(args: MigrateVma): Promise<void> {
  checkArgs(args, 'migrate_vma_pages');
  const mm = args.mm;
  mm.mmapLock.assertHeld();
  if (args.src === null || args.dst === null || args.src.length < args.npages || args.dst.length < args.npages) {
    throw new KernelError(EINVAL, `migrate_vma_pages: src and dst must hold npages (${args.npages}) entries: call migrate_vma_setup first`);
  }
  const phys = mm.phys;
  const sw = words(args.src);
  const dw = words(args.dst);
  const n = args.npages;
  checkDst(phys, sw, dw, n, 'migrate_vma_pages');
  let range: MmuNotifierRange | null = null;
  let i = migratePagesFrom(phys, sw, dw, n, args, 0, false);
  if (i < n) {
    range = mmuNotifierRangeInitOwner(MMU_NOTIFY_MIGRATE, 0, mm, args.start + i * PAGE_SIZE, args.end, args.pgmapOwner);
    mm.stats.invalidations++;
    await mmuNotifierInvalidateRangeStart(range);
    i = migratePagesFrom(phys, sw, dw, n, args, i, true);
    await mmuNotifierInvalidateRangeEnd(range);
  }
  const t = mm.engine.trace;
  if (t.active && t.wants('hmm.migrate_pages')) t.emit('hmm.migrate_pages', { mm: mm.id, npages: n, migrating: countMigrating(sw, dw, n) });
}

/**
 * migrate_device_pages: migrate_vma_pages for entries from migrateDeviceRange (no VMA, so no
 * empty sources). Cannot sleep. `phys` stands for the kernel's global pfn_to_page.
 */
export function migrateDevicePages(phys: PhysMem, src: BigUint64Array, dst: BigUint64Array, npages: number): void {
  checkDeviceArrays(phys, 'migrate_device_pages', npages, src, dst);
  const sw = words(src);
  const dw = words(dst);
  checkDst(phys, sw, dw, npages, 'migrate_device_pages');
  migratePagesFrom(phys, sw, dw, npages, null, 0, true);
  const t = phys.engine.trace;
  if (t.active && t.wants('hmm.migrate_pages')) t.emit('hmm.migrate_pages', { mm: null, npages, migrating: countMigrating(sw, dw, npages) });
}

// ---- migrate_vma_finalize / migrate_device_finalize ----

/**
 * __migrate_device_finalize: each source's migration entries become the dst page when the
 * entry is still MIGRATE with a dst, else the source page again; then source and dst pages are
 * unlocked (except faultPage, which the fault path unlocks) and put. A scheduling point before
 * each PTE table's worth of entries (the kernel's rmap walks cond_resched per VMA).
 */
async function finalize(phys: PhysMem, sw: Uint32Array, dw: Uint32Array, npages: number, faultPage: number, hintMm: MmStruct | null, hintStart: number): Promise<{ moved: number; restored: number }> {
  const e = phys.engine;
  let moved = 0;
  let restored = 0;
  for (let i = 0; i < npages; i++) {
    if ((i & 511) === 0) await e.yield(); // cond_resched in the rmap walks
    const dlo = dw[2 * i]!;
    const slo = sw[2 * i]!;
    const dst = dlo & F_VALID ? pfnAt(dw, i) : 0;
    if (!(slo & F_VALID)) {
      if (dst !== 0) {
        // An empty source: the inserted page's own mapping holds it now, or nobody (freed).
        e.warnOn(faultPage === dst, `migrate_vma_finalize: dst ${dst} is the fault page`);
        phys.unlockPage(dst);
        phys.putPage(dst);
        if (slo & F_MIGRATE) moved++;
      }
      continue;
    }
    const src = pfnAt(sw, i);
    let d = dst;
    if (!(slo & F_MIGRATE) || dst === 0) {
      if (dst !== 0) {
        e.warnOn(faultPage === dst, `migrate_vma_finalize: dst ${dst} is the fault page`);
        phys.unlockPage(dst);
        phys.putPage(dst);
      }
      d = src;
      restored++;
    } else {
      moved++;
    }
    removeMigrationPtes(phys, src, d, hintMm, hintStart + i * PAGE_SIZE);
    if (src !== faultPage) phys.unlockPage(src);
    phys.putPage(src);
    if (d !== src) {
      e.warnOn(faultPage === d, `migrate_vma_finalize: dst ${d} is the fault page`);
      phys.unlockPage(d);
      phys.putPage(d);
    }
  }
  return { moved, restored };
}

/**
 * migrate_vma_finalize: replaces every migration entry by the new page (a present PTE for
 * system and device-coherent memory; a device-private entry, writable if the migration entry
 * was, for device-private memory) or restores the old page, then unlocks and puts the pages.
 * Caller holds mmap_lock (read).
 */
export async function migrateVmaFinalize(args: MigrateVma): Promise<void> {
  checkArgs(args, 'migrate_vma_finalize');
  const mm = args.mm;
  mm.mmapLock.assertHeld();
  if (args.src === null || args.dst === null || args.src.length < args.npages || args.dst.length < args.npages) {
    throw new KernelError(EINVAL, `migrate_vma_finalize: src and dst must hold npages (${args.npages}) entries`);
  }
  const r = await finalize(mm.phys, words(args.src), words(args.dst), args.npages, args.faultPage, mm, args.start);
  const t = mm.engine.trace;
  if (t.active && t.wants('hmm.migrate_finalize')) t.emit('hmm.migrate_finalize', { mm: mm.id, npages: args.npages, ...r });
}

/** migrate_device_finalize: migrate_vma_finalize for entries from migrateDeviceRange. */
export async function migrateDeviceFinalize(phys: PhysMem, src: BigUint64Array, dst: BigUint64Array, npages: number): Promise<void> {
  checkDeviceArrays(phys, 'migrate_device_finalize', npages, src, dst);
  const r = await finalize(phys, words(src), words(dst), npages, 0, null, 0);
  const t = phys.engine.trace;
  if (t.active && t.wants('hmm.migrate_finalize')) t.emit('hmm.migrate_finalize', { mm: null, npages, ...r });
}

// ---- migrate_device_range ----

function checkDeviceArrays(phys: PhysMem, what: string, npages: number, src: BigUint64Array, dst: BigUint64Array | null): void {
  if (!(phys instanceof PhysMem)) throw new KernelError(EINVAL, `${what}: phys must be a PhysMem: ${String(phys)}`);
  if (!Number.isInteger(npages) || npages < 0) throw new KernelError(EINVAL, `${what}: npages must be a non-negative integer: ${String(npages)}`);
  if (!(src instanceof BigUint64Array) || src.length < npages) throw new KernelError(EINVAL, `${what}: src must be a BigUint64Array of at least ${npages} entries`);
  if (dst !== null && (!(dst instanceof BigUint64Array) || dst.length < npages)) throw new KernelError(EINVAL, `${what}: dst must be a BigUint64Array of at least ${npages} entries`);
}

/**
 * migrate_device_range: for eviction (driver unload, RELEASE): each in-use page of the device
 * pfns [startPfn, startPfn + npages) that can be trylocked is referenced, locked and selected
 * (src[i] = migratePfn | MIGRATE, else 0); then every selected page is unmapped through the
 * reverse map (each mapping becomes a migration entry inside a CLEAR invalidation of its page)
 * and checked as migrate_vma does. The driver then allocates and locks system pages, copies,
 * and calls migrateDevicePages and migrateDeviceFinalize. Holds no mmap_lock (the kernel relies
 * on the anon_vma lock). Returns 0. `phys` stands for the kernel's global pfn_to_page; pfns
 * that are not registered device frames throw KernelError(EINVAL) before anything changes.
 */
export async function migrateDeviceRange(phys: PhysMem, src: BigUint64Array, startPfn: number, npages: number): Promise<number> {
  checkDeviceArrays(phys, 'migrate_device_range', npages, src, null);
  if (!Number.isInteger(startPfn) || startPfn < phys.firstDevicePfn || startPfn + npages > phys.deviceFramesEnd) {
    throw new KernelError(EINVAL, `migrate_device_range: [${String(startPfn)}, +${npages}) is not inside the device frames [${phys.firstDevicePfn}, ${phys.deviceFramesEnd})`);
  }
  const sw = words(src);
  let collected = 0;
  for (let i = 0; i < npages; i++) {
    const pfn = startPfn + i;
    // migrate_device_pfn_lock: folio_get_nontail_page (fails on a free page), trylock.
    sw[2 * i] = 0;
    sw[2 * i + 1] = 0;
    if (phys.refcount[pfn] === 0) continue;
    phys.getPage(pfn);
    if (!phys.trylockPage(pfn)) {
      phys.putPage(pfn);
      continue;
    }
    setEntry(sw, i, pfn, F_VALID | F_MIGRATE);
    collected++;
  }
  await migrateDeviceUnmap(phys, sw, npages, 0, null, 0);
  const t = phys.engine.trace;
  if (t.active && t.wants('hmm.migrate_device_range')) t.emit('hmm.migrate_device_range', { startPfn, npages, collected });
  return 0;
}
