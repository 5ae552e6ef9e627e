/**
 * A process page table: x86-64 4-level paging (PGD -> PUD -> PMD -> PTE table), 512 entries
 * per level, indexed by virtual page number (vpn = addr / 4096, vpn < 2**36).
 *
 * Models: include/linux/pgtable.h (pte_none, pte_present, the pgd/pud/pmd/pte offset walk),
 * include/linux/swapops.h (non-present special entries), mm/memory.c (__pte_alloc on demand,
 * free_pgtables freeing empty tables).
 *
 * Locking: none here. The caller holds the mm's page-table lock (one PTL per mm, the
 * simplification stated in constants.ts) for every call, including the whole of a
 * forEachLeaf walk; this class runs no scheduling point.
 *
 * Representation: a leaf (PteTable) is struct of arrays, a Uint32 pfn and a Uint8 of PTE_*
 * bits per entry (bits 0 = pte_none), in one 2.5 KiB buffer. Upper levels hold 512 child
 * slots and a count of non-empty ones. A table whose count drops to 0 is freed at once, up the
 * tree (the kernel frees page tables only at munmap/exit time; freeing eagerly keeps memory
 * proportional to what is mapped, and no caller can tell the difference).
 *
 * Simplification: no huge entries at the PMD or PUD level (no THP).
 */
import type { Engine } from '../sim/engine.js';
import { EINVAL, KernelBug, KernelError } from '../sim/errors.js';
import { PAGE_SIZE, PTE_KIND_MASK, PTE_PRESENT, PTE_WRITE, PTRS_PER_TABLE } from './constants.js';

/** The virtual page number of an address. */
export function vpnOf(addr: number): number {
  return Math.floor(addr / PAGE_SIZE);
}

/** pte_none. */
export function pteNone(bits: number): boolean {
  return bits === 0;
}

/** pte_present. */
export function ptePresent(bits: number): boolean {
  return (bits & PTE_PRESENT) !== 0;
}

/** pte_write (for a non-present entry: a writable swap-format entry). */
export function pteWrite(bits: number): boolean {
  return (bits & PTE_WRITE) !== 0;
}

/** The kind of a non-present entry: bits & PTE_KIND_MASK (PTE_SWP_*), 0 for none or present. */
export function pteKind(bits: number): number {
  return bits & PTE_KIND_MASK;
}

/** is_swap_pte: non-present and not none (a device-private, migration or device-exclusive entry). */
export function isSwapEntry(bits: number): boolean {
  return (bits & PTE_PRESENT) === 0 && (bits & PTE_KIND_MASK) !== 0;
}

/** vpn limit: 48-bit virtual addresses. */
export const VPN_LIMIT = 2 ** 36;
/** vpns covered by one PGD entry (a PUD table), one PUD entry (a PMD table), one PMD entry (a PTE table). */
const PGD_SPAN = 2 ** 27;
const PUD_SHIFT = 18;
const PMD_SHIFT = 9;
const IDX_MASK = PTRS_PER_TABLE - 1;

/**
 * A leaf page table (the PTE table of one PMD entry): 512 entries.
 *
 * Entries may be read and written through the arrays directly, but `used` (the number of
 * non-none entries) must stay right: change an entry between none and not-none only through
 * setIndex/clearIndex, or adjust `used` yourself.
 */
export class PteTable {
  /** pfn per entry (0 for none). */
  readonly pfn: Uint32Array;
  /** PTE_* bits per entry (0 = none). */
  readonly bits: Uint8Array;
  /** Non-none entries. */
  used = 0;

  constructor() {
    const buf = new ArrayBuffer(PTRS_PER_TABLE * 5);
    this.pfn = new Uint32Array(buf, 0, PTRS_PER_TABLE);
    this.bits = new Uint8Array(buf, PTRS_PER_TABLE * 4, PTRS_PER_TABLE);
  }

  /** Sets entry `i` (bits must be != 0; 0 clears it), keeping `used` right. No validation: hot path. */
  setIndex(i: number, pfn: number, bits: number): void {
    if (bits === 0) {
      this.clearIndex(i);
      return;
    }
    if (this.bits[i] === 0) this.used++;
    this.pfn[i] = pfn;
    this.bits[i] = bits;
  }

  /** pte_clear on entry `i`, keeping `used` right. Returns the old bits (0 if it was none). */
  clearIndex(i: number): number {
    const old = this.bits[i]!;
    if (old !== 0) {
      this.bits[i] = 0;
      this.pfn[i] = 0;
      this.used--;
    }
    return old;
  }
}

/** An upper-level table (PGD, PUD or PMD): 512 child slots. */
class PageDir<T> {
  readonly slots: Array<T | null> = new Array<T | null>(PTRS_PER_TABLE).fill(null);
  /** Non-null slots. */
  used = 0;
}

type Pmd = PageDir<PteTable>;
type Pud = PageDir<Pmd>;

/** The callback of forEachLeaf: entries [from, to) of `leaf`, whose index 0 is `baseVpn`. */
export type LeafFn = (leaf: PteTable, from: number, to: number, baseVpn: number) => void;

/** mm->pgd and the tables below it. See the module comment for locking. */
export class PageTable {
  private readonly pgd = new PageDir<Pud>();
  // The last leaf looked up, by the vpn of its index 0 (-1: none): sequential walks skip the
  // upper levels. Reset when that leaf is freed.
  private cacheBase = -1;
  private cacheLeaf: PteTable | null = null;
  private walking = 0;

  /**
   * @param engine where a contract violation (KernelBug) is reported, failing the run; without
   *   one (pure data-structure use) the KernelBug is only thrown.
   */
  constructor(readonly engine: Engine | null = null) {}

  /** The PTE bits at `vpn` (0 for none). */
  bitsAt(vpn: number): number {
    const leaf = this.leafAt(vpn);
    return leaf === null ? 0 : leaf.bits[vpn & IDX_MASK]!;
  }

  /** The pfn at `vpn` (0 for none). */
  pfnAt(vpn: number): number {
    const leaf = this.leafAt(vpn);
    return leaf === null ? 0 : leaf.pfn[vpn & IDX_MASK]!;
  }

  /** pte_offset_map: the existing leaf covering `vpn` (index vpn & 511 in it), or null. */
  leafAt(vpn: number): PteTable | null {
    // `vpn & 511` keeps the low 9 bits of any integer below 2**53; a non-integer or negative
    // vpn never matches a cached base, so the cache hit needs no validation.
    const base = vpn - (vpn & IDX_MASK);
    if (base === this.cacheBase) return this.cacheLeaf;
    checkVpn('leafAt', vpn);
    const g = Math.floor(vpn / PGD_SPAN);
    const r = vpn - g * PGD_SPAN;
    const pud = this.pgd.slots[g];
    if (pud == null) return null;
    const pmd = pud.slots[r >>> PUD_SHIFT];
    if (pmd == null) return null;
    const leaf = pmd.slots[(r >>> PMD_SHIFT) & IDX_MASK];
    if (leaf == null) return null;
    this.cacheBase = base;
    this.cacheLeaf = leaf;
    return leaf;
  }

  /** pte_alloc: the leaf covering `vpn`, allocating the tables on the way as needed. */
  leafFor(vpn: number): PteTable {
    const base = vpn - (vpn & IDX_MASK);
    if (base === this.cacheBase) return this.cacheLeaf!;
    checkVpn('leafFor', vpn);
    const g = Math.floor(vpn / PGD_SPAN);
    const r = vpn - g * PGD_SPAN;
    const u = r >>> PUD_SHIFT;
    const m = (r >>> PMD_SHIFT) & IDX_MASK;
    let pud = this.pgd.slots[g];
    if (pud == null) {
      this.checkNotWalking('allocate a PUD table');
      pud = new PageDir<Pmd>();
      this.pgd.slots[g] = pud;
      this.pgd.used++;
    }
    let pmd = pud.slots[u];
    if (pmd == null) {
      this.checkNotWalking('allocate a PMD table');
      pmd = new PageDir<PteTable>();
      pud.slots[u] = pmd;
      pud.used++;
    }
    let leaf = pmd.slots[m];
    if (leaf == null) {
      this.checkNotWalking('allocate a PTE table');
      leaf = new PteTable();
      pmd.slots[m] = leaf;
      pmd.used++;
    }
    this.cacheBase = base;
    this.cacheLeaf = leaf;
    return leaf;
  }

  /**
   * set_pte_at: entry `vpn` becomes (pfn, bits). bits must be != 0 (KernelBug: use clear);
   * KernelError EINVAL for a bad vpn, a pfn that is not a uint32 or bits outside a byte.
   */
  set(vpn: number, pfn: number, bits: number): void {
    if (pfn >>> 0 !== pfn) throw new KernelError(EINVAL, `set_pte_at: pfn must be a uint32: ${pfn}`);
    if ((bits & 0xff) !== bits || bits === 0) {
      if (bits === 0) this.bug(`set_pte_at(vpn ${vpn}) with none bits: use clear`);
      throw new KernelError(EINVAL, `set_pte_at: bits must be an integer in [1, 255]: ${bits}`);
    }
    const leaf = this.leafFor(vpn);
    const i = vpn & IDX_MASK;
    if (leaf.bits[i] === 0) leaf.used++;
    leaf.pfn[i] = pfn;
    leaf.bits[i] = bits;
  }

  /** pte_clear: entry `vpn` becomes none; tables left empty are freed. */
  clear(vpn: number): void {
    const leaf = this.leafAt(vpn);
    if (leaf === null) return;
    if (leaf.clearIndex(vpn & IDX_MASK) !== 0 && leaf.used === 0) this.freeLeafAt(vpn);
  }

  /**
   * Calls `fn` for every existing leaf overlapping [startVpn, endVpn), in ascending order, with
   * the index range [from, to) inside it and the vpn of its index 0. Absent subtrees cost O(1)
   * per absent upper entry. After `fn` returns, a leaf with used == 0 is freed (and emptied
   * upper tables with it).
   *
   * Inside `fn`, change entries through the leaf only (leaf.setIndex / leaf.clearIndex, or
   * the arrays with `used` kept right by hand); calls that would allocate or free tables of
   * this PageTable (set or leafFor of an absent leaf, clear emptying a leaf) are a KernelBug.
   */
  forEachLeaf(startVpn: number, endVpn: number, fn: LeafFn): void {
    checkRange('forEachLeaf', startVpn, endVpn);
    if (startVpn >= endVpn) return;
    const last = endVpn - 1;
    const pgd = this.pgd;
    const g0 = Math.floor(startVpn / PGD_SPAN);
    const g1 = Math.floor(last / PGD_SPAN);
    this.walking++;
    try {
      for (let g = g0; g <= g1; g++) {
        const pud = pgd.slots[g];
        if (pud == null) continue;
        const gBase = g * PGD_SPAN;
        // Offsets within this PUD table's span (< 2**27: safe for 32-bit ops).
        const lo = Math.max(startVpn, gBase) - gBase;
        const hi = Math.min(last, gBase + PGD_SPAN - 1) - gBase;
        const u1 = hi >>> PUD_SHIFT;
        for (let u = lo >>> PUD_SHIFT; u <= u1; u++) {
          const pmd = pud.slots[u];
          if (pmd == null) continue;
          const uOff = u << PUD_SHIFT;
          const mlo = Math.max(lo, uOff) - uOff;
          const mhi = Math.min(hi, uOff + (1 << PUD_SHIFT) - 1) - uOff;
          const m1 = mhi >>> PMD_SHIFT;
          for (let m = mlo >>> PMD_SHIFT; m <= m1; m++) {
            const leaf = pmd.slots[m];
            if (leaf == null) continue;
            const lOff = uOff + (m << PMD_SHIFT);
            const from = Math.max(lo, lOff) - lOff;
            const to = Math.min(hi, lOff + IDX_MASK) - lOff + 1;
            fn(leaf, from, to, gBase + lOff);
            if (leaf.used === 0) {
              pmd.slots[m] = null;
              pmd.used--;
              if (this.cacheLeaf === leaf) this.dropCache();
            }
          }
          if (pmd.used === 0) {
            pud.slots[u] = null;
            pud.used--;
          }
        }
        if (pud.used === 0) {
          pgd.slots[g] = null;
          pgd.used--;
        }
      }
    } finally {
      this.walking--;
    }
  }

  /** True if any leaf exists overlapping [startVpn, endVpn) (mprotect: does a PMD/PUD span need an invalidation). */
  hasLeaves(startVpn: number, endVpn: number): boolean {
    checkRange('hasLeaves', startVpn, endVpn);
    if (startVpn >= endVpn) return false;
    const last = endVpn - 1;
    const g0 = Math.floor(startVpn / PGD_SPAN);
    const g1 = Math.floor(last / PGD_SPAN);
    for (let g = g0; g <= g1; g++) {
      const pud = this.pgd.slots[g];
      if (pud == null) continue;
      const gBase = g * PGD_SPAN;
      const lo = Math.max(startVpn, gBase) - gBase;
      const hi = Math.min(last, gBase + PGD_SPAN - 1) - gBase;
      const u1 = hi >>> PUD_SHIFT;
      for (let u = lo >>> PUD_SHIFT; u <= u1; u++) {
        const pmd = pud.slots[u];
        if (pmd == null) continue;
        const uOff = u << PUD_SHIFT;
        const mlo = Math.max(lo, uOff) - uOff;
        const mhi = Math.min(hi, uOff + (1 << PUD_SHIFT) - 1) - uOff;
        const m1 = mhi >>> PMD_SHIFT;
        for (let m = mlo >>> PMD_SHIFT; m <= m1; m++) if (pmd.slots[m] != null) return true;
      }
    }
    return false;
  }

  /** Tables per level below the PGD (which always exists) and non-none entries. O(tables). */
  stats(): { pudTables: number; pmdTables: number; pteTables: number; entries: number } {
    let pudTables = 0;
    let pmdTables = 0;
    let pteTables = 0;
    let entries = 0;
    for (const pud of this.pgd.slots) {
      if (pud === null) continue;
      pudTables++;
      for (const pmd of pud.slots) {
        if (pmd === null) continue;
        pmdTables++;
        for (const leaf of pmd.slots) {
          if (leaf === null) continue;
          pteTables++;
          entries += leaf.used;
        }
      }
    }
    return { pudTables, pmdTables, pteTables, entries };
  }

  /** Detaches the (empty) leaf covering `vpn` and every upper table left empty. */
  private freeLeafAt(vpn: number): void {
    this.checkNotWalking('free a PTE table');
    const g = Math.floor(vpn / PGD_SPAN);
    const r = vpn - g * PGD_SPAN;
    const u = r >>> PUD_SHIFT;
    const m = (r >>> PMD_SHIFT) & IDX_MASK;
    const pud = this.pgd.slots[g]!;
    const pmd = pud.slots[u]!;
    if (this.cacheLeaf === pmd.slots[m]) this.dropCache();
    pmd.slots[m] = null;
    if (--pmd.used > 0) return;
    pud.slots[u] = null;
    if (--pud.used > 0) return;
    this.pgd.slots[g] = null;
    this.pgd.used--;
  }

  private dropCache(): void {
    this.cacheBase = -1;
    this.cacheLeaf = null;
  }

  private checkNotWalking(what: string): void {
    if (this.walking > 0) this.bug(`page table: ${what} inside forEachLeaf (change entries through the leaf)`);
  }

  private bug(message: string): never {
    const err = new KernelBug(`BUG: ${message}`);
    if (this.engine !== null) this.engine.bug(err);
    throw err;
  }
}

function checkVpn(what: string, vpn: number): void {
  if (!Number.isInteger(vpn) || vpn < 0 || vpn >= VPN_LIMIT) throw new KernelError(EINVAL, `${what}: vpn must be an integer in [0, 2**36): ${vpn}`);
}

function checkRange(what: string, start: number, end: number): void {
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > VPN_LIMIT || start > end) {
    throw new KernelError(EINVAL, `${what}: need integers 0 <= startVpn <= endVpn <= 2**36: [${start}, ${end})`);
  }
}
