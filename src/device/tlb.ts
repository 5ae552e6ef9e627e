/**
 * The device TLB of one address space: a set-associative cache of page-table entries with LRU
 * replacement.
 *
 * Models: a GPU's translation cache as drivers must treat it (NVIDIA UVM's uvm_tlb_batch and
 * the HAL's tlb_invalidate_va / tlb_invalidate_all; nouveau's vmm flush after PFNCLR). A hit
 * never consults the page table, so an entry outlives its page-table entry until the driver
 * invalidates it: a driver that zaps its page table but not the TLB (bug class 5 of the
 * reference) leaves the device reading the old frame. Invalid and faulting translations are not
 * cached (no negative entries; an entry that fails a permission check is dropped when the access
 * faults), so a fill of an empty entry or a permission upgrade needs no invalidation, the same
 * rule the kernel has for CPU TLBs.
 *
 * Representation: struct of arrays over `entries` slots, set s holding slots [s*ways, (s+1)*ways):
 * the vpn tag (Float64: vpns reach 2**36; -1 = invalid), pfn, flags and an LRU stamp. A lookup
 * scans its set's ways; above 16 ways (e.g. fully associative) a Map vpn -> slot indexes the
 * slots instead. A one-entry cache of the last hit serves repeated accesses to one page.
 *
 * Locking: none; every method is synchronous, hence atomic under the engine's one-task rule.
 * Invalidation timing (issue, then completion after the shootdown cost) lives in shootdown.ts.
 *
 * Simplification: one TLB level per address space (no uTLB/L2 TLB split, no sharing between
 * address spaces).
 */
import { EINVAL, KernelError } from '../sim/index.js';

/** Options of a TLB (one per address space). */
export interface TlbOptions {
  /** Entries in total. A positive integer <= 2**20. Default 2048. */
  readonly entries?: number;
  /** Associativity (ways per set); must divide `entries`. Use `entries` for fully associative. Default 16 (fully associative if 16 does not divide `entries`). */
  readonly ways?: number;
}

/** What the oracle and tests may read of a TLB. */
export interface TlbView {
  readonly entries: number;
  readonly ways: number;
  readonly sets: number;
  /** Valid entries. */
  readonly size: number;
  /** Calls `fn` for each valid entry, ascending by vpn. */
  forEach(fn: (vpn: number, pfn: number, flags: number) => void): void;
  /** The cached pfn for `vpn`, or -1. Does not touch LRU state. */
  peek(vpn: number): number;
}

const INDEX_WAYS = 16;
const MAX_ENTRIES = 1 << 20;

/** Validates TLB options; returns [entries, ways]. */
export function tlbGeometry(opts: TlbOptions | undefined, who: string): [number, number] {
  const entries = opts?.entries ?? 2048;
  if (!Number.isInteger(entries) || entries < 1 || entries > MAX_ENTRIES) {
    throw new KernelError(EINVAL, `${who}: tlb.entries must be an integer in [1, 2**20]: ${String(entries)}`);
  }
  const ways = opts?.ways ?? (entries % 16 === 0 ? 16 : entries);
  if (!Number.isInteger(ways) || ways < 1 || ways > entries || entries % ways !== 0) {
    throw new KernelError(EINVAL, `${who}: tlb.ways must be a positive integer dividing tlb.entries (${entries}): ${String(ways)}`);
  }
  return [entries, ways];
}

export class Tlb implements TlbView {
  readonly sets: number;
  /** Per slot: the vpn tag, -1 when invalid. */
  private readonly tag: Float64Array;
  /** Per slot: the cached pfn. Read by the device after a hit. */
  readonly pfn: Uint32Array;
  /** Per slot: the cached DEV_PTE_* flags. Read by the device after a hit. */
  readonly flags: Uint8Array;
  private readonly stamp: Float64Array;
  private clock = 0;
  private readonly setMask: number;
  private readonly index: Map<number, number> | null;
  private lastVpn = -1;
  private lastSlot = -1;
  private count = 0;

  constructor(
    readonly entries: number,
    readonly ways: number,
  ) {
    this.sets = entries / ways;
    this.tag = new Float64Array(entries).fill(-1);
    this.pfn = new Uint32Array(entries);
    this.flags = new Uint8Array(entries);
    this.stamp = new Float64Array(entries);
    // Power-of-two set counts index with a mask (the low vpn bits, as hardware does).
    this.setMask = (this.sets & (this.sets - 1)) === 0 ? this.sets - 1 : -1;
    this.index = ways > INDEX_WAYS ? new Map() : null;
  }

  get size(): number {
    return this.count;
  }

  private setBase(vpn: number): number {
    const m = this.setMask;
    return (m >= 0 ? vpn & m : vpn % this.sets) * this.ways;
  }

  /** The slot holding `vpn` (marked most recently used), or -1. Hot path: no allocation. */
  lookup(vpn: number): number {
    if (vpn === this.lastVpn) {
      this.stamp[this.lastSlot] = ++this.clock;
      return this.lastSlot;
    }
    const slot = this.find(vpn);
    if (slot >= 0) {
      this.stamp[slot] = ++this.clock;
      this.lastVpn = vpn;
      this.lastSlot = slot;
    }
    return slot;
  }

  private find(vpn: number): number {
    if (this.index !== null) return this.index.get(vpn) ?? -1;
    const tag = this.tag;
    const b = this.setBase(vpn);
    const e = b + this.ways;
    for (let s = b; s < e; s++) if (tag[s] === vpn) return s;
    return -1;
  }

  /** True if `vpn` is cached. No LRU update. */
  holds(vpn: number): boolean {
    return vpn === this.lastVpn || this.find(vpn) >= 0;
  }

  peek(vpn: number): number {
    const s = this.find(vpn);
    return s < 0 ? -1 : this.pfn[s]!;
  }

  /**
   * Caches (vpn -> pfn, flags): refreshes the entry if present, else fills an invalid way or
   * evicts the set's LRU one. `knownAbsent`: the caller has just seen a miss (skips the search).
   */
  fill(vpn: number, pfn: number, flags: number, knownAbsent = false): void {
    let slot = knownAbsent ? -1 : this.find(vpn);
    if (slot < 0) {
      const b = this.setBase(vpn);
      const e = b + this.ways;
      const tag = this.tag;
      const stamp = this.stamp;
      let lru = b;
      for (let s = b; s < e; s++) {
        if (tag[s] === -1) {
          lru = s;
          break;
        }
        if (stamp[s]! < stamp[lru]!) lru = s;
      }
      slot = lru;
      if (tag[slot] === -1) this.count++;
      else this.evict(slot);
      tag[slot] = vpn;
      this.index?.set(vpn, slot);
    }
    this.pfn[slot] = pfn;
    this.flags[slot] = flags;
    this.stamp[slot] = ++this.clock;
    this.lastVpn = vpn;
    this.lastSlot = slot;
  }

  /** Forgets slot `slot`'s translation (without counting it as invalid: the caller refills it). */
  private evict(slot: number): void {
    const old = this.tag[slot]!;
    this.index?.delete(old);
    if (this.lastSlot === slot) {
      this.lastVpn = -1;
      this.lastSlot = -1;
    }
  }

  /** Drops one slot's entry (an access faulted on it). */
  drop(slot: number): void {
    if (this.tag[slot] === -1) return;
    this.evict(slot);
    this.tag[slot] = -1;
    this.flags[slot] = 0;
    this.count--;
  }

  /** Drops every entry with a vpn in [startVpn, endVpn). Returns how many it dropped. */
  invalidateRange(startVpn: number, endVpn: number): number {
    if (startVpn >= endVpn || this.count === 0) return 0;
    let n = 0;
    const span = endVpn - startVpn;
    if (span * (this.index !== null ? 1 : this.ways) < this.entries) {
      // A short range: probe each page's set instead of scanning the whole TLB.
      for (let v = startVpn; v < endVpn; v++) {
        const s = this.find(v);
        if (s >= 0) {
          this.drop(s);
          n++;
        }
      }
      return n;
    }
    const tag = this.tag;
    for (let s = 0; s < this.entries; s++) {
      const t = tag[s]!;
      if (t >= startVpn && t < endVpn) {
        this.drop(s);
        n++;
      }
    }
    return n;
  }

  /** Drops every entry. Returns how many it dropped. */
  invalidateAll(): number {
    const n = this.count;
    this.tag.fill(-1);
    this.flags.fill(0);
    this.index?.clear();
    this.count = 0;
    this.lastVpn = -1;
    this.lastSlot = -1;
    return n;
  }

  forEach(fn: (vpn: number, pfn: number, flags: number) => void): void {
    const slots: number[] = [];
    for (let s = 0; s < this.entries; s++) if (this.tag[s] !== -1) slots.push(s);
    slots.sort((a, b) => this.tag[a]! - this.tag[b]!);
    for (const s of slots) fn(this.tag[s]!, this.pfn[s]!, this.flags[s]!);
  }
}
