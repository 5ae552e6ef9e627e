/**
 * The 2015 HMM event: struct hmm_event, enum hmm_etype, the pte masks, and the mapping from
 * mmu notifier events to HMM events.
 *
 * Models: the 2015 HMM patches ("HMM: add per mirror page table v4" and "HMM: add device page
 * fault support v4", HMM v9, Jul 2015; v3 in HMM v8, May 2015): include/linux/hmm.h
 * (enum hmm_etype, struct hmm_event, hmm_event_overlap) and mm/hmm.c (hmm_event_init,
 * hmm_mmu_mprot_to_etype, the switch of hmm_notifier_invalidate_range_start).
 *
 * An event is [start, end), page aligned, below the HMM address limit (hmm->vm_end, TASK_SIZE).
 * `pteMask` is what survives in a mirror entry: new = old & pteMask (MIGRATE/MUNMAP clear the
 * entry, FORK/WRITE_PROTECT clear its write bit, device faults keep everything).
 * `backoff` is meaningful only for a device fault on hmm.deviceFaults: an overlapping
 * invalidation sets it (under hmm.lock) and the fault returns -EAGAIN at its next check.
 *
 * The mmu event mapping is the 2015 switch applied to today's event names (the 2015 series
 * had its own `enum mmu_event`: MMU_MPROT, MMU_MUNMAP, MMU_MIGRATE, MMU_WRITE_PROTECT, ...):
 *
 *   UNMAP, RELEASE          -> MUNMAP         (2015: MMU_MUNMAP)
 *   CLEAR                   -> MIGRATE        (the entry is cleared or replaced: the 2015 default)
 *   MIGRATE, EXCLUSIVE      -> MIGRATE        (2015: MMU_MIGRATE and the default)
 *   PROTECTION_PAGE         -> FORK           (fork's COW write-protect; 2015 v3: MMU_FORK)
 *   SOFT_DIRTY              -> WRITE_PROTECT  (2015: MMU_CLEAR_SOFT_DIRTY)
 *   PROTECTION_VMA          -> the VMA at range.start, looked up after mprotect_fixup set its
 *                              new flags: gone or lost read -> MUNMAP, lost write ->
 *                              WRITE_PROTECT, else NONE (ignored) (2015: MMU_MPROT)
 * The 2015 MMU_MUNLOCK (ignored) and MMU_HUGE_PAGE_SPLIT (MUNMAP) have no modern event.
 */
import { MMU_NOTIFY_CLEAR, MMU_NOTIFY_EXCLUSIVE, MMU_NOTIFY_MIGRATE, MMU_NOTIFY_PROTECTION_PAGE, MMU_NOTIFY_PROTECTION_VMA, MMU_NOTIFY_RELEASE, MMU_NOTIFY_SOFT_DIRTY, MMU_NOTIFY_UNMAP } from '../notifier/index.js';
import { type MmStruct, PAGE_SIZE, TASK_SIZE, VM_READ, VM_WRITE } from '../mm/index.js';
import { EINVAL, KernelError } from '../sim/index.js';

/** enum hmm_etype (HMM v9 order; v8's HMM_ISDIRTY was dropped in v9 for WRITE_PROTECT). */
export const HMM_NONE = 0;
export const HMM_FORK = 1;
export const HMM_MIGRATE = 2;
export const HMM_MUNMAP = 3;
export const HMM_DEVICE_RFAULT = 4;
export const HMM_DEVICE_WFAULT = 5;
export const HMM_WRITE_PROTECT = 6;

export type HmmEtype =
  | typeof HMM_NONE
  | typeof HMM_FORK
  | typeof HMM_MIGRATE
  | typeof HMM_MUNMAP
  | typeof HMM_DEVICE_RFAULT
  | typeof HMM_DEVICE_WFAULT
  | typeof HMM_WRITE_PROTECT;

const ETYPE_NAMES = ['HMM_NONE', 'HMM_FORK', 'HMM_MIGRATE', 'HMM_MUNMAP', 'HMM_DEVICE_RFAULT', 'HMM_DEVICE_WFAULT', 'HMM_WRITE_PROTECT'] as const;

/** The symbolic name of an etype (`HMM_MUNMAP`), or `HMM_<n>` for an unknown one. */
export function hmmEtypeName(etype: number): string {
  return ETYPE_NAMES[etype] ?? `HMM_${etype}`;
}

/** hmm->vm_end: HMM mirrors [0, TASK_SIZE); invalidations beyond it are ignored or clipped. */
export const HMM_VM_END = TASK_SIZE;

/** Mirror page-table entry bits (the 2015 hmm_pte bits, as far as the model needs them). */
export const HMM_PTE_VALID = 0x1;
export const HMM_PTE_WRITE = 0x2;
/** Set by the device for memory it wrote; moved to the page (PG_DIRTY) by the next update. */
export const HMM_PTE_DIRTY = 0x4;
/** Every bit: the mask of events that change nothing (device faults). */
export const HMM_PTE_ALL = 0xff;

/** event->pte_mask of hmm_event_init. */
function pteMaskOf(etype: HmmEtype): number {
  switch (etype) {
    case HMM_FORK:
    case HMM_WRITE_PROTECT:
      return HMM_PTE_ALL & ~HMM_PTE_WRITE;
    case HMM_MIGRATE:
    case HMM_MUNMAP:
      return 0;
    default:
      return HMM_PTE_ALL;
  }
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/**
 * struct hmm_event: one device fault or one CPU page-table update, [start, end).
 * A device driver allocates one per fault (the kernel's lived on the stack); it may reuse it
 * once the fault returned.
 */
export class HmmEvent {
  readonly etype: HmmEtype;
  /** First address (inclusive, page aligned). */
  start: number;
  /**
   * Last address (exclusive, page aligned). hmmMirrorFault clips it to the end of the VMA that
   * contains `start`, as the patch did: a driver faults the rest with another event.
   */
  end: number;
  /** Set by an overlapping invalidation while this fault is on hmm.deviceFaults (under hmm.lock). */
  backoff = false;
  /** @internal on hmm.deviceFaults (list_empty(&event->list) is false). */
  active = false;
  /** @internal the mirror faulting with it, for traces. */
  faulter: string | null = null;

  /**
   * Throws KernelError(EINVAL) for an unknown etype (HMM_NONE included: hmm_event_init refused
   * it), an unaligned start or end, start >= end, or end beyond HMM_VM_END.
   */
  constructor(etype: number, start: number, end: number) {
    if (!Number.isInteger(etype) || etype <= HMM_NONE || etype > HMM_WRITE_PROTECT) throw new KernelError(EINVAL, `hmm_event: unknown etype ${String(etype)}`);
    if (!Number.isSafeInteger(start) || start < 0 || start % PAGE_SIZE !== 0) throw new KernelError(EINVAL, `hmm_event: start must be a page-aligned address: ${String(start)}`);
    if (!Number.isSafeInteger(end) || end % PAGE_SIZE !== 0 || end > HMM_VM_END) {
      throw new KernelError(EINVAL, `hmm_event: end must be a page-aligned address <= ${hex(HMM_VM_END)}: ${String(end)}`);
    }
    if (start >= end) throw new KernelError(EINVAL, `hmm_event: start must be below end: [${hex(start)}, ${hex(end)})`);
    this.etype = etype as HmmEtype;
    this.start = start;
    this.end = end;
  }

  /** event->pte_mask: the mirror-entry bits this event leaves (new = old & pteMask). */
  get pteMask(): number {
    return pteMaskOf(this.etype);
  }

  toString(): string {
    return `hmm_event [${hex(this.start)}, ${hex(this.end)}) ${hmmEtypeName(this.etype)}`;
  }
}

/** hmm_event_overlap: the two events' half-open ranges intersect. */
export function hmmEventOverlap(a: HmmEvent, b: HmmEvent): boolean {
  return !(a.end <= b.start || a.start >= b.end);
}

/**
 * hmm_mmu_mprot_to_etype: what an mprotect of the VMA at `addr` means for a mirror. The caller
 * holds mmap_lock (mprotect holds it for write and has already set the VMA's new flags).
 */
function mprotToEtype(mm: MmStruct, addr: number): HmmEtype {
  const vma = mm.vmas.lookup(addr);
  if (vma === null || !(vma.flags & VM_READ)) return HMM_MUNMAP;
  if (!(vma.flags & VM_WRITE)) return HMM_WRITE_PROTECT;
  return HMM_NONE;
}

/**
 * The etype of an mmu notifier event on [start, ...) of `mm` (the switch of
 * hmm_notifier_invalidate_range_start; see the table in the header). HMM_NONE: ignore it.
 */
export function hmmEtypeFromMmu(mm: MmStruct, event: number, start: number): HmmEtype {
  switch (event) {
    case MMU_NOTIFY_UNMAP:
    case MMU_NOTIFY_RELEASE:
      return HMM_MUNMAP;
    case MMU_NOTIFY_PROTECTION_PAGE:
      return HMM_FORK;
    case MMU_NOTIFY_SOFT_DIRTY:
      return HMM_WRITE_PROTECT;
    case MMU_NOTIFY_PROTECTION_VMA:
      return mprotToEtype(mm, start);
    case MMU_NOTIFY_CLEAR:
    case MMU_NOTIFY_MIGRATE:
    case MMU_NOTIFY_EXCLUSIVE:
    default:
      return HMM_MIGRATE;
  }
}
