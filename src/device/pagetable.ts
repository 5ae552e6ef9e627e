/**
 * The device page table of one address space: virtual page -> (frame, flags), programmed only
 * by the driver and read by the device's page walker.
 *
 * Models: the GPU MMU's page table as a driver programs it (nouveau's PFNMAP of nvif_vmm,
 * lib/test_hmm.c's xarray keyed by `va >> PAGE_SHIFT` with WRITE/ATOMIC tags). An entry targets
 * any frame, system RAM or device memory, with a writable and an atomic bit. Like the
 * hardware, the table holds no page references: a driver that leaves an entry behind after the
 * frame is freed makes the device touch a reused frame, which the oracle sees (frame generation).
 *
 * Representation: leaves of 512 entries (a Uint32 pfn and a Uint8 of flags each, one 2.5 KiB
 * buffer) in a Map keyed by vpn / 512, with the last leaf cached: about 5 bytes a mapped page,
 * O(1) lookups without an object per page, empty leaves freed at once. (A Map of leaves rather
 * than a 4-level radix: the same leaves, one hash lookup in place of three array loads on a
 * leaf change, and no upper-level tables; measured in the report.)
 *
 * Locking: none. Every method is synchronous, hence atomic under the engine's one-task rule;
 * the walker and the driver never see a half-written entry.
 *
 * Simplification: 4 KiB entries only (no big pages).
 */
import { VPN_LIMIT } from '../mm/index.js';

/** The entry is valid (internal: set by map on every entry it writes). */
export const DEV_PTE_VALID = 0x1;
/** Stores and atomics may use the entry. */
export const DEV_PTE_WRITE = 0x2;
/** Atomics may use the entry (the driver sets it for exclusive or device-local pages). Requires DEV_PTE_WRITE. */
export const DEV_PTE_ATOMIC = 0x4;
/** The flags a driver may pass to map. */
export const DEV_PTE_MAP_FLAGS = DEV_PTE_WRITE | DEV_PTE_ATOMIC;

const LEAF_SIZE = 512;
const LEAF_MASK = LEAF_SIZE - 1;

class Leaf {
  readonly pfn: Uint32Array;
  readonly flags: Uint8Array;
  /** Valid entries. */
  used = 0;
  constructor() {
    const buf = new ArrayBuffer(LEAF_SIZE * 5);
    this.pfn = new Uint32Array(buf, 0, LEAF_SIZE);
    this.flags = new Uint8Array(buf, LEAF_SIZE * 4, LEAF_SIZE);
  }
}

/** What the oracle and tests may read of a device page table. */
export interface DevicePageTableView {
  /** Valid entries. */
  readonly size: number;
  /** The entry's flags (DEV_PTE_*), 0 if none. */
  flagsAt(vpn: number): number;
  /** The entry's pfn, or -1 if none. */
  pfnAt(vpn: number): number;
  /** Calls `fn` for each valid entry in [startVpn, endVpn), ascending. Do not change the table inside. */
  forEach(fn: (vpn: number, pfn: number, flags: number) => void, startVpn?: number, endVpn?: number): void;
}

/** One address space's device page table. Unvalidated: DeviceAddressSpace checks its callers' input. */
export class DevicePageTable implements DevicePageTableView {
  private readonly leaves = new Map<number, Leaf>();
  private cacheIdx = -1;
  private cacheLeaf: Leaf | null = null;
  private count = 0;
  /** The pfn of the entry found by the last `lookup` that returned non-zero. */
  foundPfn = 0;

  get size(): number {
    return this.count;
  }

  /** Leaves allocated (memory: about 2.6 KiB each). */
  get leafCount(): number {
    return this.leaves.size;
  }

  private leaf(idx: number): Leaf | null {
    if (idx === this.cacheIdx) return this.cacheLeaf;
    const l = this.leaves.get(idx);
    if (l === undefined) return null;
    this.cacheIdx = idx;
    this.cacheLeaf = l;
    return l;
  }

  /**
   * The walker's read: the entry's flags (0 if none), its pfn left in `foundPfn`. Hot path:
   * no validation, no allocation.
   */
  lookup(vpn: number): number {
    const l = this.leaf(Math.floor(vpn / LEAF_SIZE));
    if (l === null) return 0;
    const i = vpn & LEAF_MASK;
    const f = l.flags[i]!;
    if (f !== 0) this.foundPfn = l.pfn[i]!;
    return f;
  }

  flagsAt(vpn: number): number {
    const l = this.leaf(Math.floor(vpn / LEAF_SIZE));
    return l === null ? 0 : l.flags[vpn & LEAF_MASK]!;
  }

  pfnAt(vpn: number): number {
    const l = this.leaf(Math.floor(vpn / LEAF_SIZE));
    if (l === null) return -1;
    const i = vpn & LEAF_MASK;
    return l.flags[i] === 0 ? -1 : l.pfn[i]!;
  }

  /** Writes entry `vpn` (flags must include DEV_PTE_VALID). Returns the old flags (0 if none). */
  set(vpn: number, pfn: number, flags: number): number {
    const idx = Math.floor(vpn / LEAF_SIZE);
    let l = this.leaf(idx);
    if (l === null) {
      l = new Leaf();
      this.leaves.set(idx, l);
      this.cacheIdx = idx;
      this.cacheLeaf = l;
    }
    const i = vpn & LEAF_MASK;
    const old = l.flags[i]!;
    if (old === 0) {
      l.used++;
      this.count++;
    }
    l.pfn[i] = pfn;
    l.flags[i] = flags;
    return old;
  }

  /**
   * Clears every entry in [startVpn, endVpn); frees leaves left empty. Returns how many valid
   * entries it cleared. O(min(leaves spanned, leaves allocated)) plus the entries cleared.
   */
  clearRange(startVpn: number, endVpn: number): number {
    if (startVpn >= endVpn || this.count === 0) return 0;
    const i0 = Math.floor(startVpn / LEAF_SIZE);
    const i1 = Math.floor((endVpn - 1) / LEAF_SIZE);
    let cleared = 0;
    if (i1 - i0 + 1 <= this.leaves.size) {
      for (let idx = i0; idx <= i1; idx++) cleared += this.clearLeaf(idx, startVpn, endVpn);
    } else {
      // A wide, sparse range: visit only the leaves that exist (deleting while iterating a
      // Map is safe in JS).
      for (const idx of this.leaves.keys()) if (idx >= i0 && idx <= i1) cleared += this.clearLeaf(idx, startVpn, endVpn);
    }
    this.count -= cleared;
    return cleared;
  }

  private clearLeaf(idx: number, startVpn: number, endVpn: number): number {
    const l = this.leaves.get(idx);
    if (l === undefined) return 0;
    const base = idx * LEAF_SIZE;
    const from = Math.max(startVpn, base) - base;
    const to = Math.min(endVpn, base + LEAF_SIZE) - base;
    const flags = l.flags;
    let cleared = 0;
    if (from === 0 && to === LEAF_SIZE) {
      cleared = l.used;
      l.used = 0;
    } else {
      for (let i = from; i < to; i++) {
        if (flags[i] !== 0) {
          flags[i] = 0;
          l.pfn[i] = 0;
          cleared++;
        }
      }
      l.used -= cleared;
    }
    if (l.used === 0) {
      this.leaves.delete(idx);
      if (this.cacheLeaf === l) {
        this.cacheIdx = -1;
        this.cacheLeaf = null;
      }
    }
    return cleared;
  }

  forEach(fn: (vpn: number, pfn: number, flags: number) => void, startVpn = 0, endVpn = VPN_LIMIT): void {
    if (startVpn >= endVpn) return;
    const i0 = Math.floor(startVpn / LEAF_SIZE);
    const i1 = Math.floor((endVpn - 1) / LEAF_SIZE);
    const idxs: number[] = [];
    for (const idx of this.leaves.keys()) if (idx >= i0 && idx <= i1) idxs.push(idx);
    idxs.sort((a, b) => a - b);
    for (const idx of idxs) {
      const l = this.leaves.get(idx)!;
      const base = idx * LEAF_SIZE;
      const from = Math.max(startVpn, base) - base;
      const to = Math.min(endVpn, base + LEAF_SIZE) - base;
      for (let i = from; i < to; i++) {
        const f = l.flags[i]!;
        if (f !== 0) fn(base + i, l.pfn[i]!, f);
      }
    }
  }

  /** Clears everything. */
  clearAll(): number {
    const n = this.count;
    this.leaves.clear();
    this.cacheIdx = -1;
    this.cacheLeaf = null;
    this.count = 0;
    return n;
  }
}
