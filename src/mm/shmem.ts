/**
 * The object behind a MAP_SHARED anonymous mapping: a shmem file's page cache.
 *
 * Models: mm/shmem.c, reduced to what anonymous shared memory needs. Pages are indexed by page
 * offset; the object holds one reference on each of its pages (the page cache's), and every
 * PTE that maps one holds another (plus a mapcount). Fork shares the object; the last VMA to
 * let go of it (put) frees its pages. Protected by the mmap_lock of the mms that map it (all
 * access happens under some mm's mmap_lock with the engine's one-task-at-a-time rule; shmem
 * pages never move, so there is no finer lock).
 */
import { ENOMEM } from '../sim/index.js';
import { PG_SHMEM } from './constants.js';
import type { PhysMem } from './phys.js';

let nextShmemId = 1;

export class ShmemObject {
  readonly id = nextShmemId++;
  private readonly pages = new Map<number, number>();
  private users = 1;

  constructor(
    readonly phys: PhysMem,
    /** Size in pages (the mapping's length at creation; grows with mremap). */
    public npages: number,
  ) {}

  /** The page at `index`, allocating a zeroed one on first use; -ENOMEM if none can be had. */
  findOrAlloc(index: number): number {
    const have = this.pages.get(index);
    if (have !== undefined) return have;
    const pfn = this.phys.allocPage();
    if (pfn < 0) return -ENOMEM;
    this.phys.flags[pfn]! |= PG_SHMEM;
    this.pages.set(index, pfn);
    return pfn;
  }

  /** The page at `index`, or 0 if not yet allocated. */
  find(index: number): number {
    return this.pages.get(index) ?? 0;
  }

  get residentPages(): number {
    return this.pages.size;
  }

  get(): void {
    this.users++;
  }

  /** Drops a user; the last one frees the pages. */
  put(): void {
    if (--this.users > 0) return;
    for (const pfn of this.pages.values()) this.phys.putPage(pfn);
    this.pages.clear();
  }
}
