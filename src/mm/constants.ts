/**
 * Constants of the simulated mm: page geometry, PTE encoding, zones, page flags, VMA flags and
 * the mmap/mprotect/madvise/mremap argument values (the kernel's numbers where userspace sees
 * them).
 *
 * Simplifications, said once: x86-64 4-level paging with 4 KiB pages only (no THP, no
 * hugetlb); 48-bit virtual addresses; one page-table lock per mm.
 */

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;
export const PAGE_MASK = -PAGE_SIZE;
/** Entries per page-table page at every level. */
export const PTRS_PER_TABLE = 512;
/** Bytes covered by one PTE table (a PMD entry), one PMD table (a PUD entry), one PUD table. */
export const PMD_SIZE = PAGE_SIZE * 512; // 2 MiB
export const PUD_SIZE = PMD_SIZE * 512; // 1 GiB
export const PGDIR_SIZE = PUD_SIZE * 512; // 512 GiB
/** The user address space: [0, TASK_SIZE). 47 bits usable, as x86-64's user half. */
export const TASK_SIZE = 2 ** 47;
/** Lowest address mmap picks for a hint-less mapping (vm.mmap_min_addr is 64 KiB; we start higher). */
export const MMAP_MIN_ADDR = 0x10000;
/** Where top-down hint-less mmap placement starts (below it, down). */
export const MMAP_BASE = 0x7f00_0000_0000;

// ---- PTE encoding: one Uint32 pfn + one Uint8 of bits per entry ----
// A none entry has bits == 0. Present entries have PTE_PRESENT. Non-present special entries
// (the kernel's swap-format entries) have PTE_PRESENT clear and a non-zero kind in
// PTE_KIND_MASK; PTE_WRITE on them means a writable entry (make_writable_*_entry).
export const PTE_PRESENT = 0x01;
export const PTE_WRITE = 0x02;
export const PTE_DIRTY = 0x04;
export const PTE_ACCESSED = 0x08;
/** A present mapping of the shared zero page (pte_special + my_zero_pfn). Never writable. */
export const PTE_ZERO = 0x10;
/**
 * pte_protnone: a present entry of a PROT_NONE VMA (x86's _PAGE_PROTNONE). It keeps its frame
 * but no access goes through it: the CPU faults, and the fault fails on the VMA's protection.
 */
export const PTE_PROTNONE = 0x80;
export const PTE_KIND_SHIFT = 5;
export const PTE_KIND_MASK = 0x3 << PTE_KIND_SHIFT;
/** Non-present: device-private entry (pfn of a device-private frame). */
export const PTE_SWP_DEVICE_PRIVATE = 0x1 << PTE_KIND_SHIFT;
/** Non-present: migration entry (pfn of the locked source frame). */
export const PTE_SWP_MIGRATION = 0x2 << PTE_KIND_SHIFT;
/** Non-present: device-exclusive entry (pfn of the frame the device holds exclusively). */
export const PTE_SWP_DEVICE_EXCLUSIVE = 0x3 << PTE_KIND_SHIFT;

// ---- physical memory ----
/** The shared zero page's pfn: never allocated or freed, always reads as zero, never written. */
export const ZERO_PFN = 0;
export const ZONE_SYSTEM = 0;
export const ZONE_DEVICE_PRIVATE = 1;
export const ZONE_DEVICE_COHERENT = 2;
export type Zone = typeof ZONE_SYSTEM | typeof ZONE_DEVICE_PRIVATE | typeof ZONE_DEVICE_COHERENT;
/** struct page flags (Uint8 per frame). */
export const PG_LOCKED = 0x01;
export const PG_DIRTY = 0x02;
export const PG_REFERENCED = 0x04;
/** Anonymous page (PageAnon). */
export const PG_ANON = 0x08;
/** Page of a shared anonymous (shmem) object. */
export const PG_SHMEM = 0x10;
/** Pinned (not movable): migration leaves it in place. */
export const PG_PINNED = 0x20;

// ---- VMA flags (vm_flags) ----
export const VM_READ = 0x1;
export const VM_WRITE = 0x2;
export const VM_EXEC = 0x4;
export const VM_SHARED = 0x8;
export const VM_MAYREAD = 0x10;
export const VM_MAYWRITE = 0x20;
export const VM_MAYEXEC = 0x40;
export const VM_MAYSHARE = 0x80;
/** Special mappings hmm_range_fault refuses (kept for fidelity; mmap never sets them). */
export const VM_IO = 0x4000;
export const VM_PFNMAP = 0x400;

// ---- userspace arguments ----
export const PROT_NONE = 0x0;
export const PROT_READ = 0x1;
export const PROT_WRITE = 0x2;
export const PROT_EXEC = 0x4;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_FIXED_NOREPLACE = 0x100000;
export const MREMAP_MAYMOVE = 1;
export const MREMAP_FIXED = 2;
export const MREMAP_DONTUNMAP = 4;
export const MADV_DONTNEED = 4;
