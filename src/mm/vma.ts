/**
 * VMAs and the per-mm VMA list.
 *
 * Models: include/linux/mm_types.h (vm_area_struct), mm/vma.c, mm/mmap.c (find_vma,
 * vma_merge, split). The kernel keeps VMAs in a maple tree; we keep a sorted array with binary
 * search: O(log n) lookups and O(n) inserts, fine for the hundreds of VMAs a scenario makes.
 * Protected by mmap_lock: readers may look up, only writers change the list or a VMA.
 */
import { PAGE_SHIFT, VM_MAYREAD, VM_MAYWRITE, VM_READ, VM_SHARED, VM_WRITE } from './constants.js';
import type { ShmemObject } from './shmem.js';

let nextVmaId = 1;

/** struct vm_area_struct: [start, end) with flags; shared anonymous VMAs map a shmem object. */
export class Vma {
  readonly id = nextVmaId++;
  /**
   * vma->anon_vma != NULL: the VMA has had anonymous pages (anon_vma_prepare at the first
   * anonymous page). fork copies the page tables only of such VMAs (vma_needs_copy).
   */
  anonVma = false;
  constructor(
    public start: number,
    public end: number,
    public flags: number,
    /** The shmem object of a MAP_SHARED anonymous mapping, or null for private anonymous memory. */
    public shmem: ShmemObject | null,
    /** Page offset of `start` in the shmem object (vm_pgoff); 0 for private memory. */
    public pgoff: number,
  ) {}

  get shared(): boolean {
    return (this.flags & VM_SHARED) !== 0;
  }

  /** is_cow_mapping: private and may be written. */
  get cow(): boolean {
    return (this.flags & (VM_SHARED | VM_MAYWRITE)) === VM_MAYWRITE;
  }

  readable(): boolean {
    return (this.flags & VM_READ) !== 0;
  }

  writable(): boolean {
    return (this.flags & VM_WRITE) !== 0;
  }

  /** The shmem page index of address `addr` in this VMA. */
  pgoffOf(addr: number): number {
    return this.pgoff + (addr - this.start) / 2 ** PAGE_SHIFT;
  }

  clone(start: number, end: number): Vma {
    const v = new Vma(start, end, this.flags, this.shmem, this.shmem === null ? 0 : this.pgoffOf(start));
    v.anonVma = this.anonVma;
    this.shmem?.get();
    return v;
  }

  toString(): string {
    return `vma[0x${this.start.toString(16)}-0x${this.end.toString(16)} ${protString(this.flags)}${this.shared ? 's' : 'p'}]`;
  }
}

export function protString(flags: number): string {
  return `${flags & VM_READ ? 'r' : '-'}${flags & VM_WRITE ? 'w' : '-'}`;
}

/** The default may-flags of an anonymous mapping (anonymous memory may always be read and written). */
export const VM_ANON_MAY = VM_MAYREAD | VM_MAYWRITE;

/** Sorted, non-overlapping VMAs of one mm. */
export class VmaList {
  private list: Vma[] = [];

  get length(): number {
    return this.list.length;
  }

  /** All VMAs in address order (a live view: do not mutate). */
  get all(): readonly Vma[] {
    return this.list;
  }

  /** Index of the first VMA with end > addr (list.length if none). */
  private indexAfter(addr: number): number {
    let lo = 0;
    let hi = this.list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.list[mid]!.end <= addr) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** find_vma: the first VMA with end > addr (it may start above addr), or null. */
  findVma(addr: number): Vma | null {
    return this.list[this.indexAfter(addr)] ?? null;
  }

  /** vma_lookup: the VMA containing addr, or null. */
  lookup(addr: number): Vma | null {
    const v = this.findVma(addr);
    return v !== null && v.start <= addr ? v : null;
  }

  /** VMAs overlapping [start, end), in order. */
  overlapping(start: number, end: number): Vma[] {
    const out: Vma[] = [];
    for (let i = this.indexAfter(start); i < this.list.length; i++) {
      const v = this.list[i]!;
      if (v.start >= end) break;
      out.push(v);
    }
    return out;
  }

  /** True if every byte of [start, end) is covered by some VMA. */
  covers(start: number, end: number): boolean {
    let at = start;
    for (const v of this.overlapping(start, end)) {
      if (v.start > at) return false;
      at = v.end;
    }
    return at >= end;
  }

  /** True if no VMA overlaps [start, end). */
  isFree(start: number, end: number): boolean {
    const v = this.findVma(start);
    return v === null || v.start >= end;
  }

  insert(vma: Vma): void {
    const i = this.indexAfter(vma.start);
    this.list.splice(i, 0, vma);
  }

  remove(vma: Vma): void {
    const i = this.list.indexOf(vma);
    if (i >= 0) this.list.splice(i, 1);
  }

  /**
   * Splits VMAs so that `addr` is a boundary (split_vma). No-op if addr is outside any VMA or
   * already a boundary. Returns the VMA that now starts at addr, if any.
   */
  splitAt(addr: number): Vma | null {
    const v = this.lookup(addr);
    if (v === null || v.start === addr) return v;
    const tail = v.clone(addr, v.end);
    v.end = addr;
    this.insert(tail);
    return tail;
  }

  /** Merges `vma` with its neighbours where compatible (vma_merge), returning the survivor. */
  mergeAround(vma: Vma): Vma {
    let v = vma;
    const i = this.list.indexOf(v);
    const prev = i > 0 ? this.list[i - 1]! : null;
    if (prev !== null && canMerge(prev, v)) {
      prev.end = v.end;
      prev.anonVma ||= v.anonVma;
      this.remove(v);
      v.shmem?.put();
      v = prev;
    }
    const j = this.list.indexOf(v);
    const next = this.list[j + 1] ?? null;
    if (next !== null && canMerge(v, next)) {
      v.end = next.end;
      v.anonVma ||= next.anonVma;
      this.remove(next);
      next.shmem?.put();
    }
    return v;
  }

  /** Merges the VMA ending at `addr` with the one starting there, if they are compatible. */
  mergeBoundary(addr: number): void {
    const right = this.lookup(addr);
    const left = addr > 0 ? this.lookup(addr - 1) : null;
    if (left === null || right === null || left === right || !canMerge(left, right)) return;
    left.end = right.end;
    left.anonVma ||= right.anonVma;
    this.remove(right);
    right.shmem?.put();
  }

  /** Removes every VMA (exit). */
  clear(): Vma[] {
    const all = this.list;
    this.list = [];
    return all;
  }
}

/** Adjacent and identical in flags; shared ones must map the same object contiguously. */
function canMerge(a: Vma, b: Vma): boolean {
  if (a.end !== b.start || a.flags !== b.flags || a.shmem !== b.shmem) return false;
  return a.shmem === null || a.pgoffOf(a.end) === b.pgoff;
}
