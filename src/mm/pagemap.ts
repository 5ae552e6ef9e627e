/**
 * The interface between the mm and device memory (struct dev_pagemap's ops), defined here and
 * implemented by the HMM layer (DevPagemap). A CPU fault on a device-private entry calls the
 * owning pagemap's `migrateToRam`, as do_swap_page calls pgmap->ops->migrate_to_ram.
 */
import type { PagemapFrames } from './phys.js';
import type { MmStruct } from './mm.js';
import type { Vma } from './vma.js';

/** struct vm_fault, as far as migrate_to_ram needs it. */
export interface VmFault {
  readonly mm: MmStruct;
  readonly vma: Vma;
  /** The faulting address, page aligned. */
  readonly address: number;
  /** The device-private page the entry points to (vmf->page). */
  readonly pfn: number;
  readonly write: boolean;
}

/** dev_pagemap_ops of a device-private (or device-coherent) pagemap. */
export interface DevPagemapOps extends PagemapFrames {
  /** pgmap->owner: compared with hmm_range.dev_private_owner and migrate_vma.pgmap_owner. */
  readonly owner: unknown;
  /**
   * migrate_to_ram: called with the mmap read lock held, the device page locked and referenced
   * by the caller. Returns 0 (the access retries) or a negative errno (the access fails with
   * SIGBUS).
   */
  migrateToRam(vmf: VmFault): Promise<number>;
}

export function isDevPagemap(p: PagemapFrames | null): p is DevPagemapOps {
  return p !== null && typeof (p as Partial<DevPagemapOps>).migrateToRam === 'function';
}
