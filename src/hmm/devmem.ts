/**
 * Device memory: struct dev_pagemap of type MEMORY_DEVICE_PRIVATE or MEMORY_DEVICE_COHERENT.
 *
 * Models: mm/memremap.c (memremap_pages, zone_device_page_init, free_zone_device_folio),
 * include/linux/memremap.h, and the device-page allocator of lib/test_hmm.c (a free list
 * owned by the driver). A pagemap registers `nframes` frames of its zone with PhysMem; a free
 * device frame has refcount 0 (current kernels); `allocPage` hands one out with refcount 1;
 * when the last reference goes, PhysMem resets the frame and calls `pageFree`, which puts it
 * back on the free list and tells the driver (its page_free op).
 *
 * The CPU fault on a device-private entry reaches `migrateToRam` (dev_pagemap_ops
 * .migrate_to_ram), which the driver supplies: it is called with the mmap read lock held and
 * the page locked and referenced by the fault handler (src/mm/fault.ts).
 *
 * Locking: the free list is touched only synchronously (allocPage, and pageFree from
 * putPage), so no lock is needed under the engine's one-task-at-a-time rule.
 */
import type { PhysMem } from '../mm/index.js';
import { ZONE_DEVICE_COHERENT, ZONE_DEVICE_PRIVATE, type DevPagemapOps, type VmFault } from '../mm/index.js';
import { EINVAL, ENOMEM, KernelError } from '../sim/index.js';

/** enum memory_type. */
export const MEMORY_DEVICE_PRIVATE = 1;
export const MEMORY_DEVICE_COHERENT = 2;
export type MemoryType = typeof MEMORY_DEVICE_PRIVATE | typeof MEMORY_DEVICE_COHERENT;

declare module '../sim/trace.js' {
  interface TraceEventMap {
    'devmem.alloc': { pgmap: string; pfn: number };
    'devmem.free': { pgmap: string; pfn: number };
  }
}

/** Options of a device pagemap. */
export interface DevPagemapOptions {
  /** MEMORY_DEVICE_PRIVATE (default) or MEMORY_DEVICE_COHERENT. */
  readonly type?: MemoryType;
  /** pgmap->owner: matched against hmm_range.dev_private_owner and migrate_vma.pgmap_owner. Required. */
  readonly owner: unknown;
  /** Frames of device memory (4 KiB each). Required, positive. */
  readonly nframes: number;
  /** The driver's migrate_to_ram (dev_pagemap_ops). Required for device-private memory. */
  readonly migrateToRam?: (vmf: VmFault) => Promise<number>;
  /** The driver's page_free hook, called after the frame is back on the free list. */
  readonly pageFree?: (pfn: number) => void;
  /** Name for traces. Default `pgmap<id>`. */
  readonly name?: string;
}

/** struct dev_pagemap plus the driver's free list of device pages. */
export class DevPagemap implements DevPagemapOps {
  readonly type: MemoryType;
  readonly owner: unknown;
  readonly nframes: number;
  readonly firstPfn: number;
  /** The pgmapId PhysMem stores for each of our frames. */
  readonly id: number;
  readonly name: string;
  private readonly free: Int32Array;
  private nfree: number;
  private readonly onMigrateToRam: ((vmf: VmFault) => Promise<number>) | null;
  private readonly onPageFree: ((pfn: number) => void) | null;

  constructor(
    readonly phys: PhysMem,
    opts: DevPagemapOptions,
  ) {
    const type = opts.type ?? MEMORY_DEVICE_PRIVATE;
    if (type !== MEMORY_DEVICE_PRIVATE && type !== MEMORY_DEVICE_COHERENT) throw new KernelError(EINVAL, `DevPagemap: unknown type ${String(type)}`);
    if (!Number.isInteger(opts.nframes) || opts.nframes < 1) throw new KernelError(EINVAL, `DevPagemap: nframes must be a positive integer: ${String(opts.nframes)}`);
    if (opts.owner === undefined || opts.owner === null) throw new KernelError(EINVAL, 'DevPagemap: owner is required (the driver identity HMM matches)');
    if (type === MEMORY_DEVICE_PRIVATE && typeof opts.migrateToRam !== 'function') {
      throw new KernelError(EINVAL, 'DevPagemap: device-private memory needs a migrateToRam handler');
    }
    this.type = type;
    this.owner = opts.owner;
    this.nframes = opts.nframes;
    this.onMigrateToRam = opts.migrateToRam ?? null;
    this.onPageFree = opts.pageFree ?? null;
    const { firstPfn, id } = phys.registerDeviceFrames(this, opts.nframes, type === MEMORY_DEVICE_PRIVATE ? ZONE_DEVICE_PRIVATE : ZONE_DEVICE_COHERENT);
    this.firstPfn = firstPfn;
    this.id = id;
    this.name = opts.name ?? `pgmap${id}`;
    // Free list as a stack: lowest pfn handed out first.
    this.free = new Int32Array(opts.nframes);
    for (let i = 0; i < opts.nframes; i++) this.free[i] = firstPfn + opts.nframes - 1 - i;
    this.nfree = opts.nframes;
  }

  /** True if `pfn` is one of this pagemap's frames. */
  contains(pfn: number): boolean {
    return pfn >= this.firstPfn && pfn < this.firstPfn + this.nframes;
  }

  /** Free device frames. */
  get freeFrames(): number {
    return this.nfree;
  }

  /**
   * A free device frame with refcount 1 (zone_device_page_init), not locked; or -ENOMEM when
   * device memory is full.
   */
  allocPage(): number {
    if (this.nfree === 0) return -ENOMEM;
    const pfn = this.free[--this.nfree]!;
    this.phys.initDevicePage(pfn);
    const e = this.phys.engine;
    if (e.trace.active) e.trace.emit('devmem.alloc', { pgmap: this.name, pfn });
    return pfn;
  }

  /** page_free: PhysMem calls it when a frame's refcount drops to 0. */
  pageFree(pfn: number): void {
    this.free[this.nfree++] = pfn;
    const e = this.phys.engine;
    if (e.trace.active) e.trace.emit('devmem.free', { pgmap: this.name, pfn });
    this.onPageFree?.(pfn);
  }

  /** migrate_to_ram: the driver's handler. */
  migrateToRam(vmf: VmFault): Promise<number> {
    if (this.onMigrateToRam === null) return Promise.resolve(-EINVAL);
    return this.onMigrateToRam(vmf);
  }
}
