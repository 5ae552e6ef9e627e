/**
 * The CPU page-fault handler and CPU accesses.
 *
 * Models: mm/memory.c (handle_mm_fault, do_anonymous_page, do_wp_page / wp_page_copy /
 * wp_page_reuse, do_swap_page for device-private, migration and device-exclusive entries),
 * arch/x86/mm/fault.c (access_error -> SIGSEGV with SEGV_MAPERR / SEGV_ACCERR).
 *
 * A CPU access (cpuRead / cpuWrite) is one scheduling point per page, then a hardware walk of
 * the current page table: a present entry that permits the access is used at once (CPU TLBs
 * are not modelled: the walk always sees the current entry). Otherwise the access faults: it
 * takes mmap_lock for read, runs handleMmFault, drops the lock and retries, as the hardware
 * re-executes the instruction.
 *
 * handleMmFault returns 0 when the access should be retried, or a negative errno: -EFAULT (no
 * VMA: SIGSEGV/MAPERR), -EACCES (the VMA forbids it: SIGSEGV/ACCERR), -ENOMEM (no page: the
 * kernel's VM_FAULT_OOM), or the pagemap's error from migrate_to_ram (SIGBUS).
 * Allocation happens under the ptl here (our allocator does not sleep), so the kernel's
 * "allocate, then lock and recheck pte_none" race window does not exist in this model.
 */
import { MMU_NOTIFY_CLEAR, MMU_NOTIFY_EXCLUSIVE } from '../notifier/index.js';
import { EACCES, EFAULT, EINVAL, ENOMEM, KernelError } from '../sim/index.js';
import {
  PAGE_SIZE,
  PG_ANON,
  PG_DIRTY,
  PTE_ACCESSED,
  PTE_DIRTY,
  PTE_KIND_MASK,
  PTE_PRESENT,
  PTE_PROTNONE,
  PTE_SWP_DEVICE_EXCLUSIVE,
  PTE_SWP_DEVICE_PRIVATE,
  PTE_SWP_MIGRATION,
  PTE_WRITE,
  PTE_ZERO,
  VM_EXEC,
  VM_READ,
  VM_WRITE,
  ZERO_PFN,
} from './constants.js';
import { type MmStruct, vpnOf, withInvalidation } from './mm.js';
import { isDevPagemap } from './pagemap.js';
import type { Vma } from './vma.js';

declare module '../sim/trace.js' {
  interface TraceEventMap {
    /**
     * A CPU access touched a frame: one event per page touched, emitted in the same synchronous
     * step as the byte access (no scheduling point between the walk and the touch). `bytes` are
     * the bytes read (load) or written (store), a copy owned by the event.
     */
    'cpu.access': { mm: number; task: string; addr: number; size: number; kind: 'load' | 'store'; pfn: number; bytes: Uint8Array };
  }
}

/** A CPU access that the kernel would answer with a signal: SIGSEGV (EFAULT, EACCES) or SIGBUS. */
export class SegvError extends KernelError {
  readonly signal: 'SIGSEGV' | 'SIGBUS';
  constructor(
    errno: number,
    readonly addr: number,
    readonly write: boolean,
    message: string,
  ) {
    super(errno, message);
    this.signal = errno === EFAULT || errno === EACCES ? 'SIGSEGV' : 'SIGBUS';
  }
}

const U64_MAX = 0xffff_ffff_ffff_ffffn;

/** Fault flags (FAULT_FLAG_*). */
export const FAULT_FLAG_WRITE = 0x1;
/** The fault comes from a remote user (GUP or hmm_range_fault), not from the CPU executing code. */
export const FAULT_FLAG_REMOTE = 0x2;

/** access_error: may this VMA be accessed this way? */
function accessAllowed(vma: Vma, write: boolean): boolean {
  return write ? (vma.flags & VM_WRITE) !== 0 : (vma.flags & (VM_READ | VM_WRITE | VM_EXEC)) !== 0;
}

function setPte(mm: MmStruct, addr: number, pfn: number, bits: number, op: string): void {
  mm.pgtable.set(vpnOf(addr), pfn, bits);
  if (mm.engine.trace.active) mm.engine.trace.emit('mm.pte', { mm: mm.id, addr, pfn, bits, op });
}

/**
 * handle_mm_fault for one page. Caller holds mmap_lock (read or write). Returns 0 (retry the
 * access) or a negative errno. May sleep (COW invalidation, migration wait, migrate_to_ram).
 */
export async function handleMmFault(mm: MmStruct, address: number, flags: number): Promise<number> {
  mm.mmapLock.assertHeld();
  return faultLocked(mm, address - (address % PAGE_SIZE), (flags & FAULT_FLAG_WRITE) !== 0);
}

/** The fault with mmap_lock held: synchronous for the common cases, a promise otherwise. */
function faultLocked(mm: MmStruct, addr: number, write: boolean): number | Promise<number> {
  mm.stats.faults++;
  const r = faultSync(mm, addr, write);
  if (r !== NEEDS_SLEEP) return traceFault(mm, addr, write, r);
  return faultSleeping(mm, addr, write).then((ret) => traceFault(mm, addr, write, ret));
}

function traceFault(mm: MmStruct, addr: number, write: boolean, ret: number): number {
  if (mm.engine.trace.active) mm.engine.trace.emit('mm.fault', { mm: mm.id, task: mm.engine.current?.name ?? '', addr, write, result: ret });
  return ret;
}

/** faultSync's answer when the fault needs a path that may sleep. */
const NEEDS_SLEEP = 1;

/**
 * The paths that never sleep: errors, demand-zero and shared fault-in, protnone and
 * permission upgrades, wp_page_reuse. Returns 0, -errno, or NEEDS_SLEEP.
 */
function faultSync(mm: MmStruct, addr: number, write: boolean): number {
  // An exiting mm takes no new pages (the kernel's users can no longer mmget_not_zero it).
  if (mm.state !== 'live') return -EFAULT;
  const vma = mm.vmas.lookup(addr);
  if (vma === null) return -EFAULT;
  if (!accessAllowed(vma, write)) return -EACCES;
  const phys = mm.phys;
  const pt = mm.pgtable;
  const vpn = vpnOf(addr);
  mm.ptl.lock();
  try {
    const bits = pt.bitsAt(vpn);
    const pfn = pt.pfnAt(vpn);
    if (bits === 0) {
      // do_anonymous_page / do_read_fault (shmem).
      if (vma.shmem !== null) {
        const page = vma.shmem.findOrAlloc(vma.pgoffOf(addr));
        if (page < 0) return -ENOMEM;
        phys.getPage(page);
        phys.incMapcount(page);
        setPte(mm, addr, page, PTE_PRESENT | PTE_ACCESSED | (vma.writable() ? PTE_WRITE : 0) | (write ? PTE_DIRTY : 0), 'fault-shared');
        return 0;
      }
      if (!write) {
        setPte(mm, addr, ZERO_PFN, PTE_PRESENT | PTE_ZERO | PTE_ACCESSED, 'fault-zero');
        mm.stats.zeroMaps++;
        return 0;
      }
      const page = phys.allocPage();
      if (page < 0) return -ENOMEM;
      vma.anonVma = true;
      phys.flags[page]! |= PG_ANON;
      phys.incMapcount(page);
      setPte(mm, addr, page, PTE_PRESENT | PTE_WRITE | PTE_DIRTY | PTE_ACCESSED, 'fault-anon');
      return 0;
    }
    if (!(bits & PTE_PRESENT)) return NEEDS_SLEEP; // special entries: do_swap_page
    if (bits & PTE_PROTNONE) {
      // The VMA allows the access (checked above) but the entry is protnone: mprotect went
      // back and forth. Make it accessible again (NUMA-hinting style): no invalidation needed.
      pt.set(vpn, pfn, bits & ~PTE_PROTNONE);
      return 0;
    }
    if (!write || bits & PTE_WRITE) {
      pt.set(vpn, pfn, bits | PTE_ACCESSED | (write ? PTE_DIRTY : 0));
      return 0;
    }
    // Write to a read-only entry of a writable VMA: do_wp_page.
    if (vma.shmem !== null || (!(bits & PTE_ZERO) && phys.mapcount[pfn] === 1 && phys.refcount[pfn] === 1)) {
      // Shared memory, or wp_page_reuse (we are the only user): upgrading needs no invalidation.
      pt.set(vpn, pfn, bits | PTE_WRITE | PTE_DIRTY | PTE_ACCESSED);
      return 0;
    }
    return NEEDS_SLEEP; // wp_page_copy
  } finally {
    mm.ptl.unlock();
  }
}

/** The paths that may sleep: COW copy and do_swap_page's special entries. */
async function faultSleeping(mm: MmStruct, addr: number, write: boolean): Promise<number> {
  const vma = mm.vmas.lookup(addr);
  if (vma === null) return -EFAULT;
  const phys = mm.phys;
  const pt = mm.pgtable;
  const vpn = vpnOf(addr);
  mm.ptl.lock();
  const bits = pt.bitsAt(vpn);
  const pfn = pt.pfnAt(vpn);
  mm.ptl.unlock();
  if (bits & PTE_PRESENT) {
    vma.anonVma = true; // anon_vma_prepare before the COW copy
    return wpPageCopy(mm, addr, pfn, bits);
  }
  const kind = bits & PTE_KIND_MASK;
  if (kind === PTE_SWP_MIGRATION) {
    // migration_entry_wait: sleep until the migrator unlocks the page, then retry.
    await phys.waitOnPageLocked(pfn);
    return 0;
  }
  if (kind === PTE_SWP_DEVICE_PRIVATE) {
    const pgmap = phys.pagemapOf(pfn);
    if (!isDevPagemap(pgmap)) return -EFAULT;
    // Lock the page (or wait for whoever holds it, then retry), take a reference, call
    // migrate_to_ram without the ptl, then unlock and put: as do_swap_page.
    if (!phys.trylockPage(pfn)) {
      await phys.waitOnPageLocked(pfn);
      return 0;
    }
    mm.ptl.lock();
    const still = pt.bitsAt(vpn) === bits && pt.pfnAt(vpn) === pfn;
    mm.ptl.unlock();
    if (!still) {
      phys.unlockPage(pfn);
      return 0;
    }
    phys.getPage(pfn);
    try {
      return await pgmap.migrateToRam({ mm, vma, address: addr, pfn, write });
    } finally {
      phys.unlockPage(pfn);
      phys.putPage(pfn);
    }
  }
  if (kind === PTE_SWP_DEVICE_EXCLUSIVE) return restoreExclusive(mm, addr, pfn, bits);
  return 0; // the entry changed under us: retry
}

/** wp_page_copy: COW break into a new page inside a CLEAR invalidation of that page. */
async function wpPageCopy(mm: MmStruct, addr: number, oldPfn: number, oldBits: number): Promise<number> {
  const phys = mm.phys;
  const page = phys.allocPage();
  if (page < 0) return -ENOMEM;
  if (!(oldBits & PTE_ZERO)) phys.copyPage(page, oldPfn);
  phys.flags[page]! |= PG_ANON;
  const vpn = vpnOf(addr);
  const done = await withInvalidation(mm, MMU_NOTIFY_CLEAR, addr, addr + PAGE_SIZE, null, () => {
    const pt = mm.pgtable;
    if (pt.bitsAt(vpn) !== oldBits || pt.pfnAt(vpn) !== oldPfn) return false; // raced: retry
    if (!(oldBits & PTE_ZERO)) {
      phys.decMapcount(oldPfn);
      phys.putPage(oldPfn);
    }
    phys.incMapcount(page);
    setPte(mm, addr, page, PTE_PRESENT | PTE_WRITE | PTE_DIRTY | PTE_ACCESSED, 'cow');
    return true;
  });
  if (!done) phys.putPage(page);
  else mm.stats.cowCopies++;
  return 0;
}

/**
 * remove_device_exclusive_entry: restore the original PTE inside an EXCLUSIVE invalidation
 * (owner NULL, so even the device that made it exclusive is told), with the page locked.
 */
async function restoreExclusive(mm: MmStruct, addr: number, pfn: number, bits: number): Promise<number> {
  const phys = mm.phys;
  // folio_try_get before folio_trylock: our reference keeps the page alive if the entry is
  // zapped while we sleep in the invalidation (it would otherwise be freed while locked).
  phys.getPage(pfn);
  if (!phys.trylockPage(pfn)) {
    phys.putPage(pfn);
    await phys.waitOnPageLocked(pfn);
    return 0;
  }
  const vpn = vpnOf(addr);
  try {
    await withInvalidation(mm, MMU_NOTIFY_EXCLUSIVE, addr, addr + PAGE_SIZE, null, () => {
      const pt = mm.pgtable;
      if (pt.bitsAt(vpn) !== bits || pt.pfnAt(vpn) !== pfn) return;
      // restore_exclusive_pte: writable only if the VMA still is and the page is exclusively
      // ours (can_change_pte_writable); dirty only if the page is; the entry starts old.
      const vma = mm.vmas.lookup(addr);
      const writable = vma !== null && vma.writable() && phys.mapcount[pfn] === 1 && phys.refcount[pfn]! <= 2;
      const dirty = (phys.flags[pfn]! & PG_DIRTY) !== 0;
      setPte(mm, addr, pfn, PTE_PRESENT | (writable ? PTE_WRITE : 0) | (dirty ? PTE_DIRTY : 0), 'restore-exclusive');
    });
  } finally {
    phys.unlockPage(pfn);
    phys.putPage(pfn);
  }
  return 0;
}

// ---- CPU accesses ----

function segv(mm: MmStruct, ret: number, addr: number, write: boolean): SegvError {
  const what = ret === -EFAULT ? 'no mapping' : ret === -EACCES ? 'protection' : ret === -ENOMEM ? 'out of memory' : 'bus error';
  return new SegvError(-ret, addr, write, `${write ? 'write' : 'read'} at 0x${addr.toString(16)} in ${mm.name}: ${what}`);
}

/** The hardware walk: the pfn if the current entry permits the access, else -1. */
function cpuWalk(mm: MmStruct, addr: number, write: boolean): number {
  const pt = mm.pgtable;
  const vpn = vpnOf(addr);
  const b = pt.bitsAt(vpn);
  if ((b & (PTE_PRESENT | PTE_PROTNONE)) !== PTE_PRESENT || (write && !(b & PTE_WRITE))) return -1;
  const want = b | PTE_ACCESSED | (write ? PTE_DIRTY : 0);
  const pfn = pt.pfnAt(vpn);
  if (want !== b) pt.set(vpn, pfn, want);
  return pfn;
}

/**
 * The fault fast path of a CPU access, entirely synchronous: mmap_read_trylock, the
 * non-sleeping fault paths, unlock, walk again. Returns the pfn, or -1 when the slow path
 * (cpuTranslate) is needed: the lock is contended or the fault may sleep.
 */
function cpuFaultFast(mm: MmStruct, addr: number, write: boolean): number {
  if (mm.state !== 'live') throw segv(mm, -EFAULT, addr, write);
  const lock = mm.mmapLock;
  if (!lock.tryDownRead()) return -1;
  const page = addr - (addr % PAGE_SIZE);
  let ret: number;
  try {
    ret = faultSync(mm, page, write);
    if (ret !== NEEDS_SLEEP) {
      mm.stats.faults++;
      traceFault(mm, page, write, ret);
    }
  } finally {
    lock.upRead();
  }
  if (ret === NEEDS_SLEEP) return -1;
  if (ret < 0) throw segv(mm, ret, addr, write);
  return cpuWalk(mm, addr, write);
}

/** A CPU access's translation: walk, fast fault, or the sleeping fault path. */
function cpuResolve(mm: MmStruct, addr: number, write: boolean): number | Promise<number> {
  const pfn = cpuWalk(mm, addr, write);
  if (pfn >= 0) return pfn;
  const fast = cpuFaultFast(mm, addr, write);
  return fast >= 0 ? fast : cpuTranslate(mm, addr, write);
}

/**
 * Resolves the frame backing `addr` for a CPU access, faulting as needed (do_user_addr_fault:
 * mmap_read_trylock first, mmap_read_lock if contended). Returns the pfn; the entry is current
 * until the caller's next scheduling point.
 */
async function cpuTranslate(mm: MmStruct, addr: number, write: boolean): Promise<number> {
  const page = addr - (addr % PAGE_SIZE);
  for (;;) {
    const pfn = cpuWalk(mm, addr, write);
    if (pfn >= 0) return pfn;
    if (mm.state !== 'live') throw segv(mm, -EFAULT, addr, write);
    const lock = mm.mmapLock;
    if (!lock.tryDownRead()) await lock.downRead();
    let ret: number;
    try {
      const r = faultLocked(mm, page, write);
      ret = typeof r === 'number' ? r : await r;
    } finally {
      lock.upRead();
    }
    if (ret < 0) throw segv(mm, ret, addr, write);
  }
}

function checkRange(op: string, addr: number, len: number): void {
  if (typeof addr !== 'number' || !Number.isSafeInteger(addr) || addr < 0) throw new KernelError(EINVAL, `${op}: address must be a non-negative integer: ${String(addr)}`);
  if (!Number.isSafeInteger(len) || len < 0) throw new KernelError(EINVAL, `${op}: length must be a non-negative integer: ${String(len)}`);
}

/** Reads `len` bytes at `addr` as the current CPU task. Throws SegvError as the CPU would fault. */
export async function cpuRead(mm: MmStruct, addr: number, len: number): Promise<Uint8Array> {
  checkRange('cpuRead', addr, len);
  const out = new Uint8Array(len);
  let done = 0;
  while (done < len) {
    const a = addr + done;
    const off = a % PAGE_SIZE;
    const n = Math.min(len - done, PAGE_SIZE - off);
    await mm.engine.yield();
    const r = cpuResolve(mm, a, false);
    const pfn = typeof r === 'number' ? r : await r;
    mm.phys.readBytes(pfn, off, out, done, n);
    if (mm.engine.trace.active) traceCpuAccess(mm, a, n, 'load', pfn, out, done);
    done += n;
  }
  return out;
}

/** Writes `data` at `addr` as the current CPU task (page by page, each page atomic). */
export async function cpuWrite(mm: MmStruct, addr: number, data: Uint8Array): Promise<void> {
  checkRange('cpuWrite', addr, data.length);
  let done = 0;
  while (done < data.length) {
    const a = addr + done;
    const off = a % PAGE_SIZE;
    const n = Math.min(data.length - done, PAGE_SIZE - off);
    await mm.engine.yield();
    const r = cpuResolve(mm, a, true);
    const pfn = typeof r === 'number' ? r : await r;
    mm.phys.writeBytes(pfn, off, data, done, n);
    if (mm.engine.trace.active) traceCpuAccess(mm, a, n, 'store', pfn, data, done);
    done += n;
  }
}

function checkWord(op: string, addr: number): void {
  checkRange(op, addr, 8);
  if (addr % 8 !== 0) throw new KernelError(EINVAL, `${op}: address 0x${addr.toString(16)} is not 8-byte aligned`);
}

/** Reads the 8-byte word at `addr` (8-byte aligned). */
export async function cpuRead64(mm: MmStruct, addr: number): Promise<bigint> {
  checkWord('cpuRead64', addr);
  await mm.engine.yield();
  const r = cpuResolve(mm, addr, false);
  const pfn = typeof r === 'number' ? r : await r;
  const v = mm.phys.readU64(pfn, addr % PAGE_SIZE);
  if (mm.engine.trace.active && mm.engine.trace.wants('cpu.access')) traceCpuAccess(mm, addr, 8, 'load', pfn, u64Bytes(v), 0);
  return v;
}

/** Writes the 8-byte word at `addr` (8-byte aligned). */
export async function cpuWrite64(mm: MmStruct, addr: number, value: bigint): Promise<void> {
  checkWord('cpuWrite64', addr);
  if (typeof value !== 'bigint') throw new KernelError(EINVAL, `cpuWrite64: value must be a bigint: ${String(value)}`);
  await mm.engine.yield();
  const r = cpuResolve(mm, addr, true);
  const pfn = typeof r === 'number' ? r : await r;
  const v = value < 0n || value > U64_MAX ? BigInt.asUintN(64, value) : value;
  mm.phys.writeU64(pfn, addr % PAGE_SIZE, v);
  if (mm.engine.trace.active && mm.engine.trace.wants('cpu.access')) traceCpuAccess(mm, addr, 8, 'store', pfn, u64Bytes(v), 0);
}

/** Emits 'cpu.access' for `size` bytes of `buf` at `off` (copied) if anyone listens. */
function traceCpuAccess(mm: MmStruct, addr: number, size: number, kind: 'load' | 'store', pfn: number, buf: Uint8Array, off: number): void {
  const t = mm.engine.trace;
  if (t.active && t.wants('cpu.access')) {
    t.emit('cpu.access', { mm: mm.id, task: mm.engine.current?.name ?? '', addr, size, kind, pfn, bytes: buf.slice(off, off + size) });
  }
}

/** The 8 little-endian bytes of a u64 (for the trace only). */
function u64Bytes(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, true);
  return b;
}
