/**
 * The address-space system calls: mmap, munmap, mprotect, madvise(MADV_DONTNEED), mremap.
 *
 * Models: mm/mmap.c, mm/vma.c (do_mmap, mmap_region, do_vmi_munmap, unmap_region),
 * mm/mprotect.c (do_mprotect_pkey, mprotect_fixup, change_protection), mm/madvise.c
 * (madvise_dontneed_single_vma), mm/mremap.c (mremap_to, move_vma, vma_expandable).
 *
 * Every call validates its arguments before it takes a lock or changes anything: bad input
 * throws KernelError with the kernel's errno and the bad value, and the mm is exactly as
 * before. Two deliberate departures from the kernel, both so that a failed call changes
 * nothing: mprotect on a range with a hole fails with ENOMEM before touching any VMA (the
 * kernel may have changed the VMAs before the hole), and madvise(DONTNEED) on a range with a
 * hole fails with ENOMEM without zapping the mapped parts (the kernel zaps them and then
 * returns ENOMEM). Only anonymous memory is modelled.
 *
 * Locking as the kernel: mmap, munmap, mprotect and mremap take mmap_lock for write (munmap
 * downgrades to read before zapping, as do_vmi_align_munmap does); madvise(DONTNEED) takes it
 * for read. PTE changes happen under the ptl inside a notifier invalidation with the
 * kernel's event: UNMAP for munmap, MAP_FIXED replacement and mremap moves; CLEAR for
 * madvise(DONTNEED); PROTECTION_VMA for mprotect.
 */
import { MMU_NOTIFY_CLEAR, MMU_NOTIFY_PROTECTION_VMA, MMU_NOTIFY_UNMAP } from '../notifier/index.js';
import { EEXIST, EFAULT, EINVAL, ENOMEM, EPERM, KernelError } from '../sim/index.js';
import {
  MADV_DONTNEED,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_FIXED_NOREPLACE,
  MAP_PRIVATE,
  MAP_SHARED,
  MMAP_BASE,
  MMAP_MIN_ADDR,
  MREMAP_DONTUNMAP,
  MREMAP_FIXED,
  MREMAP_MAYMOVE,
  PAGE_SIZE,
  PROT_EXEC,
  PROT_READ,
  PROT_WRITE,
  PTE_KIND_MASK,
  PTE_PRESENT,
  PTE_PROTNONE,
  PTE_SWP_DEVICE_EXCLUSIVE,
  PTE_SWP_DEVICE_PRIVATE,
  PTE_SWP_MIGRATION,
  PTE_WRITE,
  PTE_ZERO,
  TASK_SIZE,
  VM_EXEC,
  VM_MAYSHARE,
  VM_READ,
  VM_SHARED,
  VM_WRITE,
} from './constants.js';
import { type MmStruct, firstPopulatedPud, forEachPgdSpan, vpnOf, withInvalidation, zapRange } from './mm.js';
import { deviceRmapAdd, deviceRmapRemove } from './rmap.js';
import { ShmemObject } from './shmem.js';
import { VM_ANON_MAY, Vma } from './vma.js';

declare module '../sim/trace.js' {
  interface TraceEventMap {
    /**
     * mremap's move_page_tables moved the entries of [from, from + len) to [to, to + len):
     * emitted under the ptl, in the same synchronous step as the move (the contents move with
     * their frames; the source range is empty after it).
     */
    'mm.move_ptes': { mm: number; from: number; to: number; len: number };
  }
}

const KNOWN_MAP_FLAGS = MAP_SHARED | MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE;
const KNOWN_PROT = PROT_READ | PROT_WRITE | PROT_EXEC;

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function needUint(op: string, what: string, v: number): void {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new KernelError(EINVAL, `${op}: ${what} must be a non-negative integer: ${String(v)}`);
}

function needAligned(op: string, what: string, v: number): void {
  needUint(op, what, v);
  if (v % PAGE_SIZE !== 0) throw new KernelError(EINVAL, `${op}: ${what} ${hex(v)} is not page aligned`);
}

/** PAGE_ALIGN(len), or -1 when it overflows the address space. */
function pageAlign(len: number): number {
  const a = Math.ceil(len / PAGE_SIZE) * PAGE_SIZE;
  return a > TASK_SIZE ? -1 : a;
}

function protToVmFlags(prot: number): number {
  return (prot & PROT_READ ? VM_READ : 0) | (prot & PROT_WRITE ? VM_WRITE : 0) | (prot & PROT_EXEC ? VM_EXEC : 0);
}

function traceSyscall(mm: MmStruct, op: string, start: number, len: number, result: number): void {
  if (mm.engine.trace.active) mm.engine.trace.emit('mm.syscall', { mm: mm.id, op, start, len, result });
}

/**
 * get_unmapped_area, top-down: the highest free range of `len` bytes ending at or below
 * MMAP_BASE, or -1. Caller holds mmap_lock.
 */
function unmappedArea(mm: MmStruct, len: number): number {
  let top = MMAP_BASE;
  const vmas = mm.vmas.all;
  for (let i = vmas.length - 1; i >= -1; i--) {
    const v = i >= 0 ? vmas[i]! : null;
    if (v !== null && v.start >= top) continue;
    const floor = v === null ? MMAP_MIN_ADDR : v.end;
    if (top - floor >= len) return top - len;
    if (v !== null) top = Math.min(top, v.start);
  }
  return -1;
}

/**
 * Removes the VMAs covering [start, end) (splitting at the edges) and zaps their PTEs inside
 * an UNMAP invalidation. Caller holds mmap_lock for write; with `downgrade`, the lock is
 * downgraded to read before the zap (and the caller must release it with upRead).
 */
async function unmapRegion(mm: MmStruct, start: number, end: number, downgrade: boolean): Promise<void> {
  const list = mm.vmas;
  if (list.isFree(start, end)) return;
  list.splitAt(start);
  list.splitAt(end);
  const victims = list.overlapping(start, end);
  for (const v of victims) list.remove(v);
  if (downgrade) mm.mmapLock.downgradeWrite();
  await withInvalidation(mm, MMU_NOTIFY_UNMAP, start, end, null, () => zapRange(mm, start, end));
  for (const v of victims) v.shmem?.put();
}

/**
 * mmap(addr, length, prot, flags) for anonymous memory (MAP_ANONYMOUS with MAP_PRIVATE or
 * MAP_SHARED; MAP_FIXED, MAP_FIXED_NOREPLACE, or a hint). Returns the address.
 */
export async function mmap(mm: MmStruct, addr: number, length: number, prot: number, flags: number): Promise<number> {
  needUint('mmap', 'addr', addr);
  needUint('mmap', 'length', length);
  needUint('mmap', 'prot', prot);
  needUint('mmap', 'flags', flags);
  if (length === 0) throw new KernelError(EINVAL, 'mmap: length is 0');
  const len = pageAlign(length);
  if (len < 0) throw new KernelError(ENOMEM, `mmap: length ${hex(length)} exceeds the address space`);
  if (prot & ~KNOWN_PROT) throw new KernelError(EINVAL, `mmap: unknown prot bits ${hex(prot & ~KNOWN_PROT)}`);
  if (flags & ~KNOWN_MAP_FLAGS) throw new KernelError(EINVAL, `mmap: unknown or unsupported flags ${hex(flags & ~KNOWN_MAP_FLAGS)}`);
  const type = flags & (MAP_SHARED | MAP_PRIVATE);
  if (type !== MAP_SHARED && type !== MAP_PRIVATE) throw new KernelError(EINVAL, 'mmap: exactly one of MAP_SHARED and MAP_PRIVATE is required');
  if (!(flags & MAP_ANONYMOUS)) throw new KernelError(EINVAL, 'mmap: only anonymous mappings (MAP_ANONYMOUS) are modelled');
  const fixed = (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) !== 0;
  if (fixed) {
    if (addr % PAGE_SIZE !== 0) throw new KernelError(EINVAL, `mmap: MAP_FIXED address ${hex(addr)} is not page aligned`);
    if (addr + len > TASK_SIZE) throw new KernelError(ENOMEM, `mmap: [${hex(addr)}, ${hex(addr + len)}) is beyond the user address space`);
    if (addr < MMAP_MIN_ADDR) throw new KernelError(EPERM, `mmap: MAP_FIXED address ${hex(addr)} is below mmap_min_addr ${hex(MMAP_MIN_ADDR)}`);
  }
  mm.checkAlive('mmap');
  await mm.mmapLock.downWrite();
  try {
    mm.checkAlive('mmap');
    let start: number;
    if (fixed) {
      start = addr;
      if (!mm.vmas.isFree(start, start + len)) {
        if (flags & MAP_FIXED_NOREPLACE) throw new KernelError(EEXIST, `mmap: MAP_FIXED_NOREPLACE range [${hex(start)}, ${hex(start + len)}) overlaps an existing mapping`);
        await unmapRegion(mm, start, start + len, false);
      }
    } else {
      const hint = Math.floor(addr / PAGE_SIZE) * PAGE_SIZE;
      if (hint >= MMAP_MIN_ADDR && hint + len <= TASK_SIZE && mm.vmas.isFree(hint, hint + len)) start = hint;
      else start = unmappedArea(mm, len);
      if (start < 0) throw new KernelError(ENOMEM, `mmap: no free range of ${hex(len)} bytes`);
    }
    const shared = type === MAP_SHARED;
    const vmFlags = protToVmFlags(prot) | VM_ANON_MAY | (shared ? VM_SHARED | VM_MAYSHARE : 0);
    const vma = new Vma(start, start + len, vmFlags, shared ? new ShmemObject(mm.phys, len / PAGE_SIZE) : null, 0);
    mm.vmas.insert(vma);
    mm.vmas.mergeAround(vma);
    traceSyscall(mm, 'mmap', start, len, start);
    return start;
  } finally {
    mm.mmapLock.upWrite();
  }
}

/** munmap(addr, length). Unmapping a range with nothing mapped is not an error. */
export async function munmap(mm: MmStruct, addr: number, length: number): Promise<number> {
  needAligned('munmap', 'addr', addr);
  needUint('munmap', 'length', length);
  if (length === 0) throw new KernelError(EINVAL, 'munmap: length is 0');
  const len = pageAlign(length);
  if (len < 0 || addr + len > TASK_SIZE) throw new KernelError(EINVAL, `munmap: [${hex(addr)}, +${hex(length)}) is beyond the user address space`);
  mm.checkAlive('munmap');
  await mm.mmapLock.downWrite();
  let downgraded = false;
  try {
    mm.checkAlive('munmap');
    if (!mm.vmas.isFree(addr, addr + len)) {
      downgraded = true;
      await unmapRegion(mm, addr, addr + len, true);
    }
    traceSyscall(mm, 'munmap', addr, len, 0);
    return 0;
  } finally {
    if (downgraded) mm.mmapLock.upRead();
    else mm.mmapLock.upWrite();
  }
}

/**
 * change_pte_range for one VMA piece [s, e) going from `oldFlags` to `newFlags`. Caller holds
 * the ptl (inside the PROTECTION_VMA invalidation). Removing write clears it on present,
 * device-private and migration entries; PROT_NONE makes present entries protnone; adding
 * write (MM_CP_TRY_CHANGE_WRITABLE) makes exclusive anonymous pages and shared pages writable
 * again, as can_change_pte_writable allows.
 */
function changePteRange(mm: MmStruct, vma: Vma, s: number, e: number, newFlags: number): void {
  const phys = mm.phys;
  const accessible = (newFlags & (VM_READ | VM_WRITE | VM_EXEC)) !== 0;
  const writable = (newFlags & VM_WRITE) !== 0;
  const shared = vma.shared;
  mm.pgtable.forEachLeaf(vpnOf(s), vpnOf(e), (leaf, from, to) => {
    const bits = leaf.bits;
    const pfns = leaf.pfn;
    for (let i = from; i < to; i++) {
      let b = bits[i]!;
      if (b === 0) continue;
      if (b & PTE_PRESENT) {
        b = accessible ? b & ~PTE_PROTNONE : b | PTE_PROTNONE;
        if (!writable) b &= ~PTE_WRITE;
        else if (!(b & PTE_WRITE) && !(b & PTE_ZERO)) {
          const pfn = pfns[i]!;
          if (shared || (phys.mapcount[pfn] === 1 && phys.refcount[pfn] === 1)) b |= PTE_WRITE;
        }
      } else {
        const kind = b & PTE_KIND_MASK;
        if (!writable && (kind === PTE_SWP_DEVICE_PRIVATE || kind === PTE_SWP_MIGRATION || kind === PTE_SWP_DEVICE_EXCLUSIVE)) b &= ~PTE_WRITE;
      }
      bits[i] = b;
    }
  });
}

/** mprotect(addr, length, prot). */
export async function mprotect(mm: MmStruct, addr: number, length: number, prot: number): Promise<number> {
  needAligned('mprotect', 'addr', addr);
  needUint('mprotect', 'length', length);
  needUint('mprotect', 'prot', prot);
  if (prot & ~KNOWN_PROT) throw new KernelError(EINVAL, `mprotect: unknown prot bits ${hex(prot & ~KNOWN_PROT)}`);
  if (length === 0) return 0;
  const len = pageAlign(length);
  if (len < 0 || addr + len > TASK_SIZE) throw new KernelError(ENOMEM, `mprotect: [${hex(addr)}, +${hex(length)}) is beyond the user address space`);
  const end = addr + len;
  mm.checkAlive('mprotect');
  await mm.mmapLock.downWrite();
  try {
    mm.checkAlive('mprotect');
    if (!mm.vmas.covers(addr, end)) throw new KernelError(ENOMEM, `mprotect: [${hex(addr)}, ${hex(end)}) is not fully mapped`);
    mm.vmas.splitAt(addr);
    mm.vmas.splitAt(end);
    const pieces = mm.vmas.overlapping(addr, end);
    const protFlags = protToVmFlags(prot);
    for (const vma of pieces) {
      const newFlags = (vma.flags & ~(VM_READ | VM_WRITE | VM_EXEC)) | protFlags;
      if (newFlags === vma.flags) continue; // mprotect_fixup: nothing to change, no invalidation
      const spans: Array<[number, number]> = [];
      forEachPgdSpan(vma.start, vma.end, (s, e) => {
        const first = firstPopulatedPud(mm, s, e);
        if (first !== null) spans.push([first, e]);
      });
      // mprotect_fixup sets the new flags before change_protection: callbacks see them.
      vma.flags = newFlags;
      for (const [s, e] of spans) {
        await withInvalidation(mm, MMU_NOTIFY_PROTECTION_VMA, s, e, null, () => changePteRange(mm, vma, s, e, newFlags));
      }
    }
    for (const vma of pieces) if (mm.vmas.all.includes(vma)) mm.vmas.mergeAround(vma);
    // A piece absorbed by its left neighbour never had its right edge checked: the range's end.
    mm.vmas.mergeBoundary(end);
    traceSyscall(mm, 'mprotect', addr, len, 0);
    return 0;
  } finally {
    mm.mmapLock.upWrite();
  }
}

/** madvise(addr, length, MADV_DONTNEED): drops the pages; private memory reads as zero after. */
export async function madvise(mm: MmStruct, addr: number, length: number, advice: number): Promise<number> {
  needAligned('madvise', 'addr', addr);
  needUint('madvise', 'length', length);
  if (advice !== MADV_DONTNEED) throw new KernelError(EINVAL, `madvise: only MADV_DONTNEED (${MADV_DONTNEED}) is modelled, got ${String(advice)}`);
  if (length === 0) return 0;
  const len = pageAlign(length);
  if (len < 0 || addr + len > TASK_SIZE) throw new KernelError(EINVAL, `madvise: [${hex(addr)}, +${hex(length)}) is beyond the user address space`);
  const end = addr + len;
  mm.checkAlive('madvise');
  await mm.mmapLock.downRead();
  try {
    mm.checkAlive('madvise');
    if (!mm.vmas.covers(addr, end)) throw new KernelError(ENOMEM, `madvise: [${hex(addr)}, ${hex(end)}) is not fully mapped`);
    for (const vma of mm.vmas.overlapping(addr, end)) {
      const s = Math.max(addr, vma.start);
      const e = Math.min(end, vma.end);
      await withInvalidation(mm, MMU_NOTIFY_CLEAR, s, e, null, () => zapRange(mm, s, e));
    }
    traceSyscall(mm, 'madvise', addr, len, 0);
    return 0;
  } finally {
    mm.mmapLock.upRead();
  }
}

/**
 * Moves the entries of [from, from + len) to [to, to + len) inside an UNMAP invalidation of
 * the old range (move_page_tables). Frames, permissions and special entries move unchanged.
 */
async function movePageTables(mm: MmStruct, from: number, to: number, len: number): Promise<void> {
  await withInvalidation(mm, MMU_NOTIFY_UNMAP, from, from + len, null, () => {
    const pt = mm.pgtable;
    const moves: number[] = [];
    pt.forEachLeaf(vpnOf(from), vpnOf(from + len), (leaf, lo, hi, base) => {
      for (let i = lo; i < hi; i++) {
        const b = leaf.bits[i]!;
        if (b === 0) continue;
        moves.push(base + i, leaf.pfn[i]!, b);
      }
    });
    // Clear first, then set: source and destination never overlap (checked by the caller).
    for (let k = 0; k < moves.length; k += 3) pt.clear(moves[k]!);
    const delta = vpnOf(to) - vpnOf(from);
    for (let k = 0; k < moves.length; k += 3) {
      const vpn = moves[k]!;
      const pfn = moves[k + 1]!;
      const bits = moves[k + 2]!;
      pt.set(vpn + delta, pfn, bits);
      if (!(bits & PTE_PRESENT)) {
        // Device pages (device-private or under migration) are found through the reverse map.
        deviceRmapRemove(mm.phys, pfn, mm, vpn * PAGE_SIZE);
        deviceRmapAdd(mm.phys, pfn, mm, (vpn + delta) * PAGE_SIZE);
      }
    }
    const t = mm.engine.trace;
    if (t.active && t.wants('mm.move_ptes')) t.emit('mm.move_ptes', { mm: mm.id, from, to, len });
  });
}

/** mremap(oldAddr, oldLen, newLen, flags, newAddr): shrink, grow in place, or move (MAYMOVE, FIXED, DONTUNMAP). */
export async function mremap(mm: MmStruct, oldAddr: number, oldLen: number, newLen: number, flags: number, newAddr = 0): Promise<number> {
  needAligned('mremap', 'old_address', oldAddr);
  needUint('mremap', 'old_size', oldLen);
  needUint('mremap', 'new_size', newLen);
  needUint('mremap', 'flags', flags);
  needUint('mremap', 'new_address', newAddr);
  const known = MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP;
  if (flags & ~known) throw new KernelError(EINVAL, `mremap: unknown flags ${hex(flags & ~known)}`);
  if (flags & MREMAP_FIXED && !(flags & MREMAP_MAYMOVE)) throw new KernelError(EINVAL, 'mremap: MREMAP_FIXED requires MREMAP_MAYMOVE');
  if (oldLen === 0) throw new KernelError(EINVAL, 'mremap: old_size 0 (duplicating a shared mapping) is not modelled');
  if (newLen === 0) throw new KernelError(EINVAL, 'mremap: new_size is 0');
  const olen = pageAlign(oldLen);
  const nlen = pageAlign(newLen);
  if (olen < 0 || nlen < 0 || oldAddr + olen > TASK_SIZE) throw new KernelError(EINVAL, 'mremap: size beyond the user address space');
  const dontunmap = (flags & MREMAP_DONTUNMAP) !== 0;
  if (dontunmap && (!(flags & MREMAP_MAYMOVE) || olen !== nlen)) throw new KernelError(EINVAL, 'mremap: MREMAP_DONTUNMAP requires MREMAP_MAYMOVE and old_size == new_size');
  const fixed = (flags & MREMAP_FIXED) !== 0;
  if (fixed) {
    if (newAddr % PAGE_SIZE !== 0) throw new KernelError(EINVAL, `mremap: new_address ${hex(newAddr)} is not page aligned`);
    if (newAddr + nlen > TASK_SIZE || newAddr < MMAP_MIN_ADDR) throw new KernelError(EINVAL, `mremap: new range at ${hex(newAddr)} is outside the user address space`);
    if (newAddr < oldAddr + olen && oldAddr < newAddr + nlen) throw new KernelError(EINVAL, 'mremap: old and new ranges overlap');
  }
  mm.checkAlive('mremap');
  await mm.mmapLock.downWrite();
  try {
    mm.checkAlive('mremap');
    const vma = mm.vmas.lookup(oldAddr);
    if (vma === null || oldAddr + olen > vma.end) throw new KernelError(EFAULT, `mremap: [${hex(oldAddr)}, ${hex(oldAddr + olen)}) is not inside one mapping`);
    if (dontunmap && vma.shared) throw new KernelError(EINVAL, 'mremap: MREMAP_DONTUNMAP of a shared mapping is not modelled');

    // MREMAP_FIXED and MREMAP_DONTUNMAP always move (mremap_to); otherwise shrink or grow in place first.
    const mustMove = fixed || dontunmap;
    if (!mustMove && nlen <= olen) {
      if (nlen < olen) await unmapRegion(mm, oldAddr + nlen, oldAddr + olen, false);
      traceSyscall(mm, 'mremap', oldAddr, nlen, oldAddr);
      return oldAddr;
    }
    if (!mustMove && oldAddr + olen === vma.end && oldAddr + nlen <= TASK_SIZE && mm.vmas.isFree(vma.end, oldAddr + nlen)) {
      vma.end = oldAddr + nlen;
      if (vma.shmem !== null) vma.shmem.npages = Math.max(vma.shmem.npages, vma.pgoffOf(vma.end));
      mm.vmas.mergeAround(vma);
      traceSyscall(mm, 'mremap', oldAddr, nlen, oldAddr);
      return oldAddr;
    }
    if (!(flags & MREMAP_MAYMOVE)) throw new KernelError(ENOMEM, `mremap: cannot grow [${hex(oldAddr)}, +${hex(olen)}) in place and MREMAP_MAYMOVE is not set`);

    // mremap_to: the target is unmapped first, then the tail of a shrinking move.
    let moveLen = olen;
    let target: number;
    if (fixed) {
      target = newAddr;
      await unmapRegion(mm, target, target + nlen, false);
      if (nlen < olen) {
        await unmapRegion(mm, oldAddr + nlen, oldAddr + olen, false);
        moveLen = nlen;
      }
    } else {
      target = unmappedArea(mm, nlen);
      if (target < 0) throw new KernelError(ENOMEM, `mremap: no free range of ${hex(nlen)} bytes`);
    }
    // The piece being moved becomes its own VMA.
    mm.vmas.splitAt(oldAddr);
    mm.vmas.splitAt(oldAddr + moveLen);
    const piece = mm.vmas.lookup(oldAddr)!;
    const moved = new Vma(target, target + nlen, piece.flags, piece.shmem, piece.shmem === null ? 0 : piece.pgoff);
    moved.anonVma = piece.anonVma;
    piece.shmem?.get();
    if (moved.shmem !== null) moved.shmem.npages = Math.max(moved.shmem.npages, moved.pgoffOf(moved.end));
    await movePageTables(mm, oldAddr, target, moveLen);
    mm.vmas.insert(moved);
    // move_vma -> unmap_source_vma: the old range goes through do_vmi_munmap (a second UNMAP,
    // with nothing left to zap), unless MREMAP_DONTUNMAP keeps it mapped and empty.
    if (!dontunmap) await unmapRegion(mm, oldAddr, oldAddr + moveLen, false);
    mm.vmas.mergeAround(moved);
    traceSyscall(mm, 'mremap', target, nlen, target);
    return target;
  } finally {
    mm.mmapLock.upWrite();
  }
}
