/**
 * Rule 4, data: a reference memory per mm, with fork/copy-on-write and shared-mapping
 * semantics; every CPU or device read returns the last value written to that address in
 * simulation order; no write is lost across migrations, eviction or fork.
 *
 * The reference memory is what an ideal machine without caches, copies or migrations would
 * hold. It is keyed by the logical page, never by the frame that happens to back it:
 * - private anonymous memory: (mm, virtual page). Migration (CPU or device, either way),
 *   eviction, COW breaks and exclusive access do not touch it: contents do not change when
 *   pages move, so a lost copy shows up as a read that differs.
 * - shared anonymous memory (a shmem object's page, PG_SHMEM): the frame itself, since shmem
 *   pages never move and every mapping of them, in any mm and at any address, is the same
 *   logical page. Forgotten when the frame is freed.
 * Granularity: bytes; a logical page is a 4 KiB array allocated at its first write (absent
 * pages read as zero).
 *
 * What changes it, and when (in trace order, which is simulation order):
 * - a CPU store ('cpu.access') or a device store or atomic ('device.access'): through the
 *   translation used, at the address accessed (the device mirrors its mm's addresses);
 * - a private PTE zapped ('mm.pte' op 'zap': munmap, MAP_FIXED over a mapping, madvise
 *   DONTNEED, the OOM reaper, exit): the page reads as zero from then on. Zapping a shared
 *   page's PTE keeps its contents (the object keeps the page);
 * - mremap's move ('mm.move_ptes', under the ptl with the move): pages move to the new
 *   addresses; the old ones are empty (MREMAP_DONTUNMAP leaves them mapped and reading zero);
 * - fork ('mm.fork', emitted with the parent's mmap_lock still held): the child gets a copy of
 *   every private page, and shares the shared ones;
 * - exit ('mm.exit'): everything of the mm goes.
 * Mmap needs nothing: a new mapping's pages have never been written.
 *
 * A read compares what the access returned with the reference: a device that reads a stale
 * frame (one the CPU no longer maps) is already stopped by rule 1; a read through a coherent
 * translation that returns something else means a write was lost (a migration copied too early
 * or not at all, a copy engine raced, a store went to a frame nobody maps any more).
 * Cost: O(bytes accessed) per access; O(pages moved) per mremap; O(private pages) per fork.
 */
import { PAGE_SIZE, PG_SHMEM, type PhysMem } from '../mm/index.js';
import { forKeysIn } from './watch.js';

/** One logical page of the reference: its bytes and the trace seq of its last write. */
export interface RefPage {
  readonly bytes: Uint8Array;
  lastWrite: number;
}

/** The first differing byte of a read. */
export interface Mismatch {
  /** Offset in the page. */
  readonly offset: number;
  /** The 8-byte-aligned little-endian word around it: what the read saw, what the reference holds. */
  readonly got: bigint;
  readonly want: bigint;
  readonly wordOffset: number;
  /** Trace seq of the last write to the page (-1: never written since it was mapped). */
  readonly lastWrite: number;
}

export class ReferenceMemory {
  private readonly priv = new Map<number, Map<number, RefPage>>();
  private readonly shared = new Map<number, RefPage>();

  constructor(private readonly phys: () => PhysMem | null) {}

  /** Starts tracking mm `mm` (empty). */
  addMm(mm: number): void {
    if (!this.priv.has(mm)) this.priv.set(mm, new Map());
  }

  /** True if mm `mm` is tracked. */
  tracks(mm: number): boolean {
    return this.priv.has(mm);
  }

  /** Private pages held for `mm` (for tests and statistics). */
  pages(mm: number): number {
    return this.priv.get(mm)?.size ?? 0;
  }

  private isShared(pfn: number): boolean {
    const phys = this.phys();
    return phys !== null && pfn > 0 && ((phys.flags[pfn] ?? 0) & PG_SHMEM) !== 0;
  }

  private lookup(mm: number, vpn: number, pfn: number): RefPage | undefined {
    return this.isShared(pfn) ? this.shared.get(pfn) : this.priv.get(mm)?.get(vpn);
  }

  private lookupOrCreate(mm: number, vpn: number, pfn: number): RefPage | undefined {
    if (this.isShared(pfn)) {
      let p = this.shared.get(pfn);
      if (p === undefined) this.shared.set(pfn, (p = { bytes: new Uint8Array(PAGE_SIZE), lastWrite: -1 }));
      return p;
    }
    const m = this.priv.get(mm);
    if (m === undefined) return undefined;
    let p = m.get(vpn);
    if (p === undefined) m.set(vpn, (p = { bytes: new Uint8Array(PAGE_SIZE), lastWrite: -1 }));
    return p;
  }

  /**
   * Seeds page `vpn` of `mm` (backed by `pfn`) with the frame's current contents: for an mm the
   * oracle starts watching after it was populated.
   */
  seed(mm: number, vpn: number, pfn: number): void {
    const phys = this.phys();
    if (phys === null || pfn === 0 || phys.pageIsZero(pfn)) return;
    if (this.isShared(pfn) ? this.shared.has(pfn) : this.priv.get(mm)?.has(vpn) === true) return;
    const p = this.lookupOrCreate(mm, vpn, pfn);
    if (p !== undefined) phys.readBytes(pfn, 0, p.bytes, 0, PAGE_SIZE);
  }

  /** A write of `bytes` at `addr` of `mm` through frame `pfn` (at trace seq `seq`). */
  write(mm: number, addr: number, pfn: number, bytes: Uint8Array, seq: number): void {
    const off = addr % PAGE_SIZE;
    const p = this.lookupOrCreate(mm, Math.floor(addr / PAGE_SIZE), pfn);
    if (p === undefined) return;
    p.bytes.set(bytes, off);
    p.lastWrite = seq;
  }

  /** Compares a read of `bytes` at `addr` of `mm` through frame `pfn`; null if it matches. */
  compare(mm: number, addr: number, pfn: number, bytes: Uint8Array): Mismatch | null {
    if (!this.priv.has(mm)) return null;
    const off = addr % PAGE_SIZE;
    const p = this.lookup(mm, Math.floor(addr / PAGE_SIZE), pfn);
    const ref = p?.bytes;
    for (let i = 0; i < bytes.length; i++) {
      const want = ref === undefined ? 0 : ref[off + i]!;
      if (bytes[i] !== want) {
        const at = off + i;
        const wordOffset = at - (at % 8);
        const got = new Uint8Array(8);
        // The word as the read saw it: its own bytes where it covered the word, else the reference's.
        for (let k = 0; k < 8; k++) {
          const o = wordOffset + k;
          got[k] = o >= off && o < off + bytes.length ? bytes[o - off]! : ref === undefined ? 0 : ref[o]!;
        }
        return { offset: at, got: le64(got, 0), want: ref === undefined ? 0n : le64(ref, wordOffset), wordOffset, lastWrite: p?.lastWrite ?? -1 };
      }
    }
    return null;
  }

  /** A private page's PTE was zapped: its contents are gone (shared pages keep theirs). */
  zapped(mm: number, vpn: number, pfn: number): void {
    if (this.isShared(pfn)) return;
    this.priv.get(mm)?.delete(vpn);
  }

  /** mremap moved [fromVpn, fromVpn + n) to [toVpn, toVpn + n). */
  move(mm: number, fromVpn: number, toVpn: number, n: number): void {
    const m = this.priv.get(mm);
    if (m === undefined) return;
    const moved: Array<[number, RefPage]> = [];
    forKeysIn(m, fromVpn, fromVpn + n, (vpn, p) => {
      m.delete(vpn);
      moved.push([vpn - fromVpn + toVpn, p]);
    });
    forKeysIn(m, toVpn, toVpn + n, (vpn) => m.delete(vpn));
    for (const [vpn, p] of moved) m.set(vpn, p);
  }

  /** fork: the child gets a copy of every private page of the parent. */
  fork(parent: number, child: number): void {
    const src = this.priv.get(parent);
    const dst = new Map<number, RefPage>();
    if (src !== undefined) for (const [vpn, p] of src) dst.set(vpn, { bytes: p.bytes.slice(), lastWrite: p.lastWrite });
    this.priv.set(child, dst);
  }

  /** The mm exited: forget it. */
  dropMm(mm: number): void {
    this.priv.delete(mm);
  }

  /** A frame was freed: a shared page backed by it is gone. */
  freed(pfn: number): void {
    this.shared.delete(pfn);
  }
}

/** The little-endian u64 at `off` of `b`. */
export function le64(b: Uint8Array, off: number): bigint {
  let v = 0n;
  for (let k = 7; k >= 0; k--) v = (v << 8n) | BigInt(b[off + k] ?? 0);
  return v;
}

/** The `size` little-endian bytes of `v`. */
export function leBytes(v: bigint, size: number): Uint8Array {
  const out = new Uint8Array(size);
  let x = v;
  for (let k = 0; k < size; k++) {
    out[k] = Number(x & 0xffn);
    x >>= 8n;
  }
  return out;
}
