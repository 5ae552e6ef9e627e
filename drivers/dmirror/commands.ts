/**
 * The dmirror ioctl and its commands that do not migrate: READ, WRITE, SNAPSHOT, EXCLUSIVE,
 * CHECK_EXCLUSIVE, RELEASE and FLAGS (the migrations are in migrate.ts).
 *
 * Models: lib/test_hmm.c (6.x mainline): dmirror_fops_unlocked_ioctl, dmirror_bounce_init,
 * dmirror_read / dmirror_do_read, dmirror_write / dmirror_do_write, dmirror_snapshot /
 * dmirror_range_snapshot / dmirror_snapshot_invalidate / dmirror_mkentry, dmirror_exclusive /
 * dmirror_atomic_map, dmirror_check_atomic.
 *
 * READ and WRITE copy "under the mutex from the pages the device page table maps" through the
 * Device itself: the command launches a one-warp device kernel on the mirror's address space
 * that, per page, checks the entry (a missing one, or a non-WRITE one for a write, ends the copy
 * with -ENOENT, as xa_load does), makes ONE real device access to the page (a load, or a store
 * of the page's first word), and moves the rest of the page in the same synchronous step as
 * that access. So every page the command touches is a translated device access that the trace
 * ('device.access') and the oracle see, at one access per page rather than 512, and the page's
 * bytes move at the instant the translation was valid. The Device has no direct accessor
 * methods, which is why it is a kernel. The warp never faults: under the mutex the table cannot
 * lose an entry, and every entry change is followed by a TLB shootdown before the mutex drops,
 * so the TLB holds nothing the table does not grant.
 *
 * Counters (struct hmm_dmirror_cmd, what hmm-tests asserts): `cpages` counts the pages copied
 * (READ, WRITE, the read-backs of MIGRATE_TO_DEV and EXCLUSIVE), the pages migrated back
 * (MIGRATE_TO_SYS) or snapshotted; `faults` counts dmirror_fault calls that succeeded inside
 * READ and WRITE (one per -ENOENT retry): a range whose pages all need a fault takes one.
 * The block is written back only when the command returns 0.
 *
 * Locks: each command holds `lifetime` for read; the device copies hold `mutex`; SNAPSHOT
 * inserts a temporary interval notifier whose callback takes `mutex` only to set its sequence.
 * EXCLUSIVE: mmap_lock (read) -> page lock -> mutex; `pendingExclusive` changes synchronously.
 */
import {
  EBUSY,
  EFAULT,
  EINVAL,
  ENOENT,
  ENOMEM,
  EPERM,
  HMM_PFN_ERROR,
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  HmmRange,
  KernelError,
  MmuIntervalNotifier,
  type MmuNotifierRange,
  PAGE_SIZE,
  TASK_SIZE,
  ZERO_PFN,
  ZONE_DEVICE_COHERENT,
  ZONE_DEVICE_PRIVATE,
  hmmPfnToMapOrder,
  hmmPfnToPfn,
  hmmRangeFault,
  isDevPagemap,
  makeDeviceExclusive,
  mmuIntervalNotifierInsert,
  mmuIntervalNotifierRemove,
  mmuIntervalReadBegin,
  mmuIntervalReadRetry,
  mmuIntervalSetSeq,
  mmuNotifierRangeBlockable,
} from 'hmm-emu';
import { dmirrorMigrateToDevice, dmirrorMigrateToSystem } from './migrate.js';
import { DMIRROR_FAULT_CHUNK, DPT_XA_TAG_ATOMIC, DPT_XA_TAG_WRITE, type Dmirror, HMM_RANGE_DEFAULT_TIMEOUT_NS, dmirrorFault } from './mirror.js';
import {
  HMM_DMIRROR_CHECK_EXCLUSIVE,
  HMM_DMIRROR_EXCLUSIVE,
  HMM_DMIRROR_FLAGS,
  HMM_DMIRROR_MIGRATE_TO_DEV,
  HMM_DMIRROR_MIGRATE_TO_SYS,
  HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL,
  HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE,
  HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL,
  HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE,
  HMM_DMIRROR_PROT_ERROR,
  HMM_DMIRROR_PROT_NONE,
  HMM_DMIRROR_PROT_PMD,
  HMM_DMIRROR_PROT_PUD,
  HMM_DMIRROR_PROT_READ,
  HMM_DMIRROR_PROT_WRITE,
  HMM_DMIRROR_PROT_ZERO,
  HMM_DMIRROR_READ,
  HMM_DMIRROR_RELEASE,
  HMM_DMIRROR_SNAPSHOT,
  HMM_DMIRROR_WRITE,
  type HmmDmirrorCmd,
} from './uapi.js';

const U64_LIMIT = 2 ** 64;

// ---- the bounce buffer and user copies ----

/** struct dmirror_bounce: the kernel-side copy of the user buffer. */
export interface DmirrorBounce {
  readonly buf: Uint8Array;
  readonly addr: number;
  readonly size: number;
  cpages: number;
}

/** dmirror_bounce_init: null when the buffer cannot be allocated (-ENOMEM for the caller). */
export function dmirrorBounceInit(addr: number, size: number): DmirrorBounce | null {
  let buf: Uint8Array;
  try {
    buf = new Uint8Array(size);
  } catch {
    return null;
  }
  return { buf, addr, size, cpages: 0 };
}

/** copy_to_user: false (the caller returns -EFAULT) when the user buffer is too short. */
function copyToUser(ptr: Uint8Array, src: Uint8Array, len = src.length, at = 0): boolean {
  if (ptr.length < at + len) return false;
  ptr.set(len === src.length ? src : src.subarray(0, len), at);
  return true;
}

/** copy_from_user. */
function copyFromUser(dst: Uint8Array, ptr: Uint8Array): boolean {
  if (ptr.length < dst.length) return false;
  dst.set(ptr.subarray(0, dst.length));
  return true;
}

/** mmget_not_zero: the mm still has users. */
function mmgetNotZero(dmirror: Dmirror): boolean {
  return dmirror.mm.state === 'live';
}

// ---- READ / WRITE ----

/**
 * The device copy of dmirror_do_read / dmirror_do_write for [start, end): a one-warp kernel on
 * the mirror's address space (see the module comment). Returns 0 or -ENOENT at the first page
 * without a (writable, for a write) entry; bounce.cpages counts the pages copied. Caller holds
 * the mutex.
 */
async function dmirrorDeviceCopy(dmirror: Dmirror, start: number, end: number, bounce: DmirrorBounce, write: boolean): Promise<number> {
  dmirror.mutex.assertHeld();
  if (start >= end) return 0;
  const dev = dmirror.mdevice.device;
  const phys = dmirror.mdevice.phys;
  const buf = bounce.buf;
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const first = start - (start % PAGE_SIZE);
  const job = dev.launch(dmirror.as, { warps: 1, name: `${dmirror.name}.${write ? 'write' : 'read'}` }, async (ctx) => {
    let off = first - bounce.addr;
    for (let vpn = first / PAGE_SIZE, v1 = Math.ceil(end / PAGE_SIZE); vpn < v1; vpn++, off += PAGE_SIZE) {
      const tag = dmirror.ptTag(vpn);
      if (tag < 0 || (write && tag !== DPT_XA_TAG_WRITE)) return -ENOENT;
      const addr = vpn * PAGE_SIZE;
      if (write) {
        await ctx.store(addr, 8, view.getBigUint64(off, true));
        phys.writeBytes(dmirror.ptPfn(vpn), 0, buf, off, PAGE_SIZE); // memcpy_to_page, at the store's instant
      } else {
        await ctx.load(addr, 8);
        phys.readBytes(dmirror.ptPfn(vpn), 0, buf, off, PAGE_SIZE); // memcpy_from_page, at the load's instant
      }
      bounce.cpages++;
    }
    return 0;
  });
  const [ret] = await job.join();
  return ret!;
}

/** dmirror_do_read: caller holds the mutex. */
export function dmirrorDoRead(dmirror: Dmirror, start: number, end: number, bounce: DmirrorBounce): Promise<number> {
  return dmirrorDeviceCopy(dmirror, start, end, bounce, false);
}

/** dmirror_do_write: caller holds the mutex. */
export function dmirrorDoWrite(dmirror: Dmirror, start: number, end: number, bounce: DmirrorBounce): Promise<number> {
  return dmirrorDeviceCopy(dmirror, start, end, bounce, true);
}

/** Runs dmirror_do_read under the mutex: the read-back of MIGRATE_TO_DEV and EXCLUSIVE. */
export async function dmirrorReadBack(dmirror: Dmirror, cmd: HmmDmirrorCmd): Promise<number> {
  const start = cmd.addr;
  const size = cmd.npages * PAGE_SIZE;
  const bounce = dmirrorBounceInit(start, size);
  if (bounce === null) return -ENOMEM;
  let ret: number;
  await dmirror.mutex.lock();
  try {
    ret = await dmirrorDoRead(dmirror, start, start + size, bounce);
  } finally {
    dmirror.mutex.unlock();
  }
  if (ret === 0 && !copyToUser(cmd.ptr, bounce.buf)) ret = -EFAULT;
  cmd.cpages = bounce.cpages;
  return ret;
}

/**
 * dmirror_read: copy from the device's view of [addr, addr + npages pages) into cmd.ptr;
 * each -ENOENT faults the rest of the range in (faults++) and retries.
 */
export async function dmirrorRead(dmirror: Dmirror, cmd: HmmDmirrorCmd): Promise<number> {
  const size = cmd.npages * PAGE_SIZE;
  let start = cmd.addr;
  const end = start + size;
  const bounce = dmirrorBounceInit(start, size);
  if (bounce === null) return -ENOMEM;
  let ret: number;
  for (;;) {
    await dmirror.mutex.lock();
    try {
      ret = await dmirrorDoRead(dmirror, start, end, bounce);
    } finally {
      dmirror.mutex.unlock();
    }
    if (ret !== -ENOENT) break;
    start = cmd.addr + bounce.cpages * PAGE_SIZE;
    ret = await dmirrorFault(dmirror, start, end, false);
    if (ret !== 0) break;
    cmd.faults++;
  }
  if (ret === 0 && !copyToUser(cmd.ptr, bounce.buf)) ret = -EFAULT;
  cmd.cpages = bounce.cpages;
  return ret;
}

/** dmirror_write: copy cmd.ptr to the device's view of the range, faulting it in for write. */
export async function dmirrorWrite(dmirror: Dmirror, cmd: HmmDmirrorCmd): Promise<number> {
  const size = cmd.npages * PAGE_SIZE;
  let start = cmd.addr;
  const end = start + size;
  const bounce = dmirrorBounceInit(start, size);
  if (bounce === null) return -ENOMEM;
  let ret: number;
  if (!copyFromUser(bounce.buf, cmd.ptr)) {
    ret = -EFAULT;
  } else {
    for (;;) {
      await dmirror.mutex.lock();
      try {
        ret = await dmirrorDoWrite(dmirror, start, end, bounce);
      } finally {
        dmirror.mutex.unlock();
      }
      if (ret !== -ENOENT) break;
      start = cmd.addr + bounce.cpages * PAGE_SIZE;
      ret = await dmirrorFault(dmirror, start, end, true);
      if (ret !== 0) break;
      cmd.faults++;
    }
  }
  cmd.cpages = bounce.cpages;
  return ret;
}

// ---- EXCLUSIVE / CHECK_EXCLUSIVE ----

/**
 * make_device_exclusive + dmirror_atomic_map for the page at `addr`, checked for a racing
 * invalidation. make_device_exclusive returns the page locked and referenced, its CPU entry
 * converted inside an own EXCLUSIVE event (which the callback records in pendingExclusive and
 * otherwise skips). The ATOMIC entry is stored, under the mutex, only if no other invalidation
 * reached the mirror in that event's sequence period or later (`lastNonOwnSeq` < its cur_seq):
 * one that did may have zapped the converted entry (madvise(DONTNEED) needs no page lock), and
 * test_hmm, which stores unconditionally, would leave the device mapping a page about to be
 * freed. Otherwise retry (bounded by HMM_RANGE_DEFAULT_TIMEOUT). Invalidations before the
 * conversion, such as make_device_exclusive's own undo of an earlier exclusive entry, do not
 * count, so a retry does not feed on itself (a read_begin / read_retry bracket around the call,
 * as nouveau's, would: every retry's undo moves the sequence again). An invalidation not yet
 * delivered blocks on the mutex and erases the entry after us. Caller holds mmap_lock (read).
 * Returns 0 or make_device_exclusive's error (or -EBUSY after the timeout).
 */
export async function dmirrorExclusivePage(dmirror: Dmirror, addr: number): Promise<number> {
  const mm = dmirror.mm;
  const e = mm.engine;
  const phys = mm.phys;
  const vpn = addr / PAGE_SIZE;
  const timeout = e.now + HMM_RANGE_DEFAULT_TIMEOUT_NS;
  for (;;) {
    if (e.now > timeout) return -EBUSY;
    dmirror.pendingExclusive.set(addr, 0);
    let pfn: number;
    try {
      pfn = await makeDeviceExclusive(mm, addr, dmirror.mdevice.owner);
    } catch (err) {
      dmirror.pendingExclusive.delete(addr);
      throw err;
    }
    const ownSeq = dmirror.pendingExclusive.get(addr) ?? 0;
    dmirror.pendingExclusive.delete(addr);
    if (pfn < 0) return pfn;
    let stored = false;
    await dmirror.mutex.lock();
    try {
      if (ownSeq > 0 && dmirror.lastNonOwnSeq < ownSeq) {
        stored = true;
        if (dmirror.ptStore(vpn, pfn, DPT_XA_TAG_ATOMIC)) await dmirror.tlbFlush(addr, addr + PAGE_SIZE);
      }
    } finally {
      dmirror.mutex.unlock();
      phys.unlockPage(pfn);
      phys.putPage(pfn);
    }
    if (stored) return 0;
    dmirror.stats.retries++;
  }
}

/** The loop of dmirror_exclusive over [start, end), under mmap_lock (read). Returns 0 or the first error. */
export async function dmirrorMakeExclusive(dmirror: Dmirror, start: number, end: number): Promise<number> {
  const mm = dmirror.mm;
  if (!mmgetNotZero(dmirror)) return -EINVAL;
  if (end > TASK_SIZE) return -EFAULT; // make_device_exclusive: no VMA there
  let ret = 0;
  await mm.mmapLock.downRead();
  try {
    for (let addr = start; ret === 0 && addr < end; addr += PAGE_SIZE) ret = await dmirrorExclusivePage(dmirror, addr);
  } finally {
    mm.mmapLock.upRead();
  }
  return ret;
}

/** dmirror_exclusive: make the range exclusive to the device, then read it back into cmd.ptr. */
export async function dmirrorExclusive(dmirror: Dmirror, cmd: HmmDmirrorCmd): Promise<number> {
  const start = cmd.addr;
  const end = start + cmd.npages * PAGE_SIZE;
  const ret = await dmirrorMakeExclusive(dmirror, start, end);
  if (ret !== 0) return ret;
  // Return the data for verification.
  return dmirrorReadBack(dmirror, cmd);
}

/** dmirror_check_atomic: -EPERM if any page of [start, end) is still mapped ATOMIC (exclusive). */
export function dmirrorCheckAtomic(dmirror: Dmirror, start: number, end: number): number {
  let ret = 0;
  const v0 = start / PAGE_SIZE;
  const v1 = Math.min(Math.ceil(end / PAGE_SIZE), 2 ** 36);
  dmirror.as.pageTable.forEach(
    (vpn) => {
      if (ret === 0 && dmirror.ptTag(vpn) === DPT_XA_TAG_ATOMIC) ret = -EPERM;
    },
    v0,
    v1,
  );
  return ret;
}

// ---- SNAPSHOT ----

/** dmirror_mkentry: the HMM_DMIRROR_PROT_* byte of one hmm_pfns entry. */
export function dmirrorMkentry(dmirror: Dmirror, entry: bigint): number {
  if (entry & HMM_PFN_ERROR) return HMM_DMIRROR_PROT_ERROR;
  if (!(entry & HMM_PFN_VALID)) return HMM_DMIRROR_PROT_NONE;
  const phys = dmirror.mdevice.phys;
  const pfn = hmmPfnToPfn(entry);
  let perm: number;
  const zone = phys.zone[pfn];
  if (zone === ZONE_DEVICE_PRIVATE || zone === ZONE_DEVICE_COHERENT) {
    // Is the page migrated to this device or some other? (dmirror_page_to_device: the pgmap owner.)
    const pgmap = phys.pagemapOf(pfn);
    const local = isDevPagemap(pgmap) && pgmap.owner === dmirror.mdevice.owner;
    if (zone === ZONE_DEVICE_PRIVATE) perm = local ? HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL : HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE;
    else perm = local ? HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL : HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE;
  } else if (pfn === ZERO_PFN) {
    perm = HMM_DMIRROR_PROT_ZERO;
  } else {
    perm = HMM_DMIRROR_PROT_NONE;
  }
  perm |= entry & HMM_PFN_WRITE ? HMM_DMIRROR_PROT_WRITE : HMM_DMIRROR_PROT_READ;
  const order = hmmPfnToMapOrder(entry);
  if (order === 9) perm |= HMM_DMIRROR_PROT_PMD;
  else if (order === 18) perm |= HMM_DMIRROR_PROT_PUD;
  return perm;
}

/**
 * dmirror_snapshot_invalidate: any invalidation in the interval invalidates the whole
 * snapshot, so it only sets the sequence (under the mutex, which read_retry is checked under).
 */
function dmirrorSnapshotInvalidate(dmirror: Dmirror, mni: MmuIntervalNotifier, range: MmuNotifierRange, curSeq: number): boolean | Promise<boolean> {
  if (mmuNotifierRangeBlockable(range)) {
    return dmirror.mutex.lock().then(() => {
      mmuIntervalSetSeq(mni, curSeq);
      dmirror.mutex.unlock();
      return true;
    });
  }
  if (!dmirror.mutex.trylock()) return false;
  mmuIntervalSetSeq(mni, curSeq);
  dmirror.mutex.unlock();
  return true;
}

/**
 * dmirror_range_snapshot: hmm_range_fault without faulting over [start, end) (at most
 * DMIRROR_FAULT_CHUNK pages), with a temporary notifier over exactly that range (so that it
 * detects invalidations even where other notifiers overlap), into `perm`.
 */
async function dmirrorRangeSnapshot(dmirror: Dmirror, start: number, end: number, pfns: BigUint64Array, perm: Uint8Array): Promise<number> {
  const mm = dmirror.mm;
  const e = mm.engine;
  const timeout = e.now + HMM_RANGE_DEFAULT_TIMEOUT_NS;
  const notifier = new MmuIntervalNotifier(`${dmirror.name}.snapshot`);
  let ret = await mmuIntervalNotifierInsert(notifier, mm, start, end - start, {
    invalidate: (mni, range, curSeq) => dmirrorSnapshotInvalidate(dmirror, mni, range, curSeq),
  });
  if (ret !== 0) return ret;
  try {
    const range = new HmmRange({ notifier, start, end, hmmPfns: pfns, devPrivateOwner: dmirror.mdevice.owner });
    for (;;) {
      if (e.now > timeout) return -EBUSY;
      range.notifierSeq = await mmuIntervalReadBegin(notifier);
      await mm.mmapLock.downRead();
      try {
        ret = await hmmRangeFault(range);
      } finally {
        mm.mmapLock.upRead();
      }
      if (ret !== 0) {
        if (ret === -EBUSY) continue;
        return ret;
      }
      await dmirror.mutex.lock();
      if (mmuIntervalReadRetry(notifier, range.notifierSeq)) {
        dmirror.mutex.unlock();
        continue;
      }
      break;
    }
    const n = (end - start) / PAGE_SIZE;
    for (let i = 0; i < n; i++) perm[i] = dmirrorMkentry(dmirror, pfns[i]!);
    dmirror.mutex.unlock();
    return 0;
  } finally {
    await mmuIntervalNotifierRemove(notifier);
  }
}

/** dmirror_snapshot: one HMM_DMIRROR_PROT_* byte per page of the range into cmd.ptr; cpages += pages done. */
export async function dmirrorSnapshot(dmirror: Dmirror, cmd: HmmDmirrorCmd): Promise<number> {
  const start = cmd.addr;
  const end = start + cmd.npages * PAGE_SIZE;
  if (!mmgetNotZero(dmirror)) return -EINVAL;
  if (end > TASK_SIZE) return -EFAULT; // beyond the user address space: no VMA (hmm_range_fault's answer)
  const pfns = new BigUint64Array(DMIRROR_FAULT_CHUNK);
  const perm = new Uint8Array(DMIRROR_FAULT_CHUNK);
  let ret = 0;
  let uptr = 0;
  for (let addr = start; addr < end; ) {
    const next = Math.min(addr + DMIRROR_FAULT_CHUNK * PAGE_SIZE, end);
    ret = await dmirrorRangeSnapshot(dmirror, addr, next, pfns, perm);
    if (ret !== 0) break;
    const n = (next - addr) / PAGE_SIZE;
    if (!copyToUser(cmd.ptr, perm, n, uptr)) {
      ret = -EFAULT;
      break;
    }
    cmd.cpages += n;
    uptr += n;
    addr = next;
  }
  return ret;
}

// ---- the ioctl ----

function checkCmd(command: number, cmd: HmmDmirrorCmd): void {
  if (typeof command !== 'number' || !Number.isInteger(command)) throw new KernelError(EINVAL, `dmirror ioctl: command must be an integer: ${String(command)}`);
  if (cmd === null || typeof cmd !== 'object') throw new KernelError(EINVAL, `dmirror ioctl: cmd must be an object: ${String(cmd)}`);
  if (!Number.isSafeInteger(cmd.addr) || cmd.addr < 0) throw new KernelError(EINVAL, `dmirror ioctl: cmd.addr must be a non-negative integer: ${String(cmd.addr)}`);
  if (!Number.isSafeInteger(cmd.npages) || cmd.npages < 0) throw new KernelError(EINVAL, `dmirror ioctl: cmd.npages must be a non-negative integer: ${String(cmd.npages)}`);
  if (!(cmd.ptr instanceof Uint8Array)) throw new KernelError(EINVAL, `dmirror ioctl: cmd.ptr must be a Uint8Array: ${String(cmd.ptr)}`);
}

/**
 * dmirror_fops_unlocked_ioctl: validates the block (an unaligned address, or one that the size
 * overflows, is -EINVAL, as is an unknown command or a released mirror), zeroes cpages and
 * faults, runs the command and writes cpages / faults back to `cmd` only when it returns 0.
 * A malformed block (wrong types) throws KernelError(EINVAL).
 */
export async function dmirrorIoctl(dmirror: Dmirror, command: number, cmd: HmmDmirrorCmd): Promise<number> {
  checkCmd(command, cmd);
  if (dmirror.released) return -EINVAL;
  if (cmd.addr % PAGE_SIZE !== 0) return -EINVAL;
  const size = cmd.npages * PAGE_SIZE;
  if (cmd.addr >= cmd.addr + size || cmd.addr + size > U64_LIMIT) return -EINVAL;
  const c: HmmDmirrorCmd = { addr: cmd.addr, ptr: cmd.ptr, npages: cmd.npages, cpages: 0, faults: 0 };
  await dmirror.lifetime.downRead();
  let ret: number;
  try {
    if (dmirror.released) return -EINVAL;
    switch (command) {
      case HMM_DMIRROR_READ:
        ret = await dmirrorRead(dmirror, c);
        break;
      case HMM_DMIRROR_WRITE:
        ret = await dmirrorWrite(dmirror, c);
        break;
      case HMM_DMIRROR_MIGRATE_TO_DEV:
        ret = await dmirrorMigrateToDevice(dmirror, c);
        break;
      case HMM_DMIRROR_MIGRATE_TO_SYS:
        ret = await dmirrorMigrateToSystem(dmirror, c);
        break;
      case HMM_DMIRROR_EXCLUSIVE:
        ret = await dmirrorExclusive(dmirror, c);
        break;
      case HMM_DMIRROR_CHECK_EXCLUSIVE:
        ret = dmirrorCheckAtomic(dmirror, c.addr, c.addr + size);
        break;
      case HMM_DMIRROR_SNAPSHOT:
        ret = await dmirrorSnapshot(dmirror, c);
        break;
      case HMM_DMIRROR_RELEASE:
        await dmirror.mdevice.removeChunks();
        ret = 0;
        break;
      case HMM_DMIRROR_FLAGS:
        dmirror.flags = c.npages;
        ret = 0;
        break;
      default:
        return -EINVAL;
    }
  } finally {
    dmirror.lifetime.upRead();
  }
  if (ret !== 0) return ret;
  cmd.cpages = c.cpages;
  cmd.faults = c.faults;
  return 0;
}
