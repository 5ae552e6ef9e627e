/**
 * struct dmirror: one open of the mirror device by a process. It mirrors the process's whole
 * address space into a Device address space through one interval notifier, and keeps that
 * mirror coherent with the canonical HMM loop.
 *
 * Models: lib/test_hmm.c (6.x mainline): dmirror_fops_open / _release,
 * dmirror_interval_invalidate, dmirror_do_update, dmirror_range_fault, dmirror_fault,
 * dmirror_do_fault; Documentation/mm/hmm.rst (the read_begin / hmm_range_fault / lock /
 * read_retry loop). The device page table is the Device address space's page table: the
 * kernel's xarray `pt` keyed by `va >> PAGE_SHIFT`, whose entry tags map to device PTE bits:
 *
 *   xarray entry                       device entry
 *   page (untagged: read)              pfn, DEV_PTE_VALID
 *   page | DPT_XA_TAG_WRITE            pfn, WRITE + ATOMIC
 *   page | DPT_XA_TAG_ATOMIC           pfn, WRITE + ATOMIC, and the vpn in `exclusive`
 *
 * The mock GPU does atomics to any memory it may write (as PCIe atomics), so a writable entry
 * is mapped atomic and a device kernel's atomic fault is serviced as a write fault. The ATOMIC
 * tag means what it means in test_hmm: the page was made exclusive to the device
 * (make_device_exclusive) and CHECK_EXCLUSIVE reports it; the bits cannot say that, so the
 * tagged vpns are kept in a side set that every erase and store keeps in step. Like the xarray,
 * the device page table holds no page references: the notifier alone keeps it correct.
 *
 * The invalidate protocol (dmirror_interval_invalidate), which pairs with the read side in
 * dmirrorRangeFault through `mutex` and the notifier sequence:
 *
 *   invalidation (CPU side)                    fault (dmirrorRangeFault)
 *   -----------------------                    -------------------------
 *                                              seq = read_begin(notifier)
 *                                              mmap_read_lock; hmm_range_fault; unlock
 *   invalidate_start:
 *    mutex_lock
 *     set_seq(cur_seq)           (pairs with read_retry)
 *     erase device entries [start, end]
 *     TLB invalidate; WAIT for the fence       (entries the device may still hold go here)
 *    mutex_unlock
 *   CPU PTEs change, pages may be freed
 *                                              mutex_lock
 *                                               read_retry(seq): true -> unlock, again
 *                                               (false: no invalidation since read_begin:
 *                                                program the device entries)
 *                                              mutex_unlock
 *
 * Own events (range.owner is this device's pgmap owner), and where this departs from test_hmm:
 * - MIGRATE (our own migrate_vma): test_hmm returns at once, leaving the erase of the moved
 *   pages to its migration code, after the CPU entries have already become migration entries
 *   (its fake device only touches memory inside ioctls under the mutex, so nobody notices).
 *   The point of the filter, per the patch that added the owner ("mm/notifier: add migration
 *   invalidation type"), is to leave alone the device mappings the migration cannot move. We
 *   keep that point and close the window: the callback sets the sequence and erases exactly the
 *   entries the migration may select (the migrating code registers its range and
 *   MIGRATE_VMA_SELECT_* flags with the DmirrorDevice first): system pages when migrating to
 *   the device, this device's pages when migrating back. Device pages already on the device stay
 *   mapped across a migration to the device, and nothing the CPU stops mapping stays mapped.
 * - EXCLUSIVE (our own make_device_exclusive): skipped, as nouveau does: the frame does not
 *   change, and the EXCLUSIVE command checks for invalidations after it (see
 *   dmirrorExclusivePage: it compares the sequence of the own event with `lastNonOwnSeq`, the
 *   sequence of the last other invalidation that reached us).
 * - The device TLB is shot down, and the fence awaited, before the callback returns.
 *
 * Why trylock when the range is not blockable: the OOM reaper calls the callback where it may
 * not sleep, and mutex_lock may sleep; a failed trylock returns false and the reaper retries
 * later. Here a non-blockable callback also refuses when it would have to erase entries,
 * because dropping them needs a TLB shootdown whose fence cannot be awaited without sleeping;
 * with nothing to erase there is nothing the device can still reach (every erase waits for its
 * fence under the mutex, which the trylock now holds), so it only sets the sequence.
 *
 * Locks and what they protect:
 * - `mutex` (class 'dmirror.mutex'): the device page table, `exclusive`, `lastNonOwnSeq` and
 *   the TLB of `as` (every change, and every command's device copy, runs under it), and the
 *   notifier sequence for read_retry.
 * - `lifetime` (RwSemaphore, class 'dmirror.lifetime'): commands and the fault worker hold it
 *   for read while they use the mirror; release() takes it for write once, to wait for them.
 * - `flags`, `pendingExclusive`: changed synchronously (one task runs at a time).
 * Lock order: lifetime -> mmap_lock -> page lock -> mutex. The mutex is never held across
 * hmm_range_fault (a fault there can invalidate, and the callback takes the mutex) nor while
 * taking mmap_lock.
 *
 * Simplifications: 4 KiB pages only (no PMD entries, no THP paths, MIGRATE_VMA_SELECT_COMPOUND
 * is passed and ignored by the core).
 */
import {
  DEVICE_VA_LIMIT,
  DEV_PTE_ATOMIC,
  DEV_PTE_WRITE,
  type DeviceAddressSpace,
  type DeviceJob,
  type DeviceKernel,
  EBUSY,
  EFAULT,
  EINVAL,
  HMM_PFN_ERROR,
  HMM_PFN_REQ_FAULT,
  HMM_PFN_REQ_WRITE,
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  HmmRange,
  KernelError,
  type LaunchOptions,
  MIGRATE_VMA_SELECT_DEVICE_COHERENT,
  MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
  MIGRATE_VMA_SELECT_SYSTEM,
  MMU_NOTIFY_EXCLUSIVE,
  MMU_NOTIFY_MIGRATE,
  MmStruct,
  MmuIntervalNotifier,
  type MmuNotifierRange,
  Mutex,
  PAGE_SIZE,
  RwSemaphore,
  TASK_SIZE,
  ULONG_MAX_ADDR,
  errnoName,
  hmmPfnToPfn,
  hmmRangeFault,
  mmuIntervalNotifierInsert,
  mmuIntervalNotifierRemove,
  mmuIntervalReadBegin,
  mmuIntervalReadRetry,
  mmuIntervalSetSeq,
  mmuNotifierRangeBlockable,
} from 'hmm-emu';
import type { DmirrorDevice } from './device.js';
import { dmirrorIoctl } from './commands.js';
import type { HmmDmirrorCmd } from './uapi.js';

/** HMM_RANGE_DEFAULT_TIMEOUT (1000 ms), in virtual ns: how long one range fault may keep retrying. */
export const HMM_RANGE_DEFAULT_TIMEOUT_NS = 1_000_000_000;

/** Pages per hmm_range_fault call of dmirror_fault (`unsigned long pfns[32]`). */
export const DMIRROR_FAULT_CHUNK = 32;

/** xarray entry tags (xa_tag_pointer): an untagged entry is read-only. */
export const DPT_XA_TAG_READ = 0;
export const DPT_XA_TAG_ATOMIC = 1;
export const DPT_XA_TAG_WRITE = 3;

/** The notifier covers the whole mm: [0, ULONG_MAX & PAGE_MASK). */
const WHOLE_MM = ULONG_MAX_ADDR - (ULONG_MAX_ADDR % PAGE_SIZE);
const VPN_END = DEVICE_VA_LIMIT / PAGE_SIZE;

/** Counters of one mirror. */
export interface DmirrorStats {
  /** Invalidate callbacks (all events, own ones included). */
  invalidations: number;
  /** Callbacks that returned false (non-blockable: trylock failed, or entries that need a shootdown). */
  invalidateRefused: number;
  /** Own MIGRATE events (erase filtered to what the migration can move) and own EXCLUSIVE events (skipped). */
  ownEventsFiltered: number;
  /** Device entries erased (by invalidations, migrations and release). */
  zapped: number;
  /** Device TLB invalidations issued and waited for. */
  shootdowns: number;
  /** dmirror_range_fault calls. */
  rangeFaults: number;
  /** hmm_range_fault calls (retries included). */
  hmmRangeFaults: number;
  /** hmm_range_fault returning -EBUSY (the sequence moved during the walk). */
  busy: number;
  /** read_retry true under the mutex: the snapshot was stale, loop again. */
  retries: number;
  /** Device entries written by commits (faults, migrations, exclusive). */
  committed: number;
  /** Device faults serviced by the fault worker for this mirror. */
  deviceFaults: number;
  /** Device faults the worker could not service (their contexts were cancelled). */
  deviceFaultErrors: number;
}

function newStats(): DmirrorStats {
  return {
    invalidations: 0,
    invalidateRefused: 0,
    ownEventsFiltered: 0,
    zapped: 0,
    shootdowns: 0,
    rangeFaults: 0,
    hmmRangeFaults: 0,
    busy: 0,
    retries: 0,
    committed: 0,
    deviceFaults: 0,
    deviceFaultErrors: 0,
  };
}

/** struct dmirror. Open one with Dmirror.open; drive it with ioctl; close it with release. */
export class Dmirror {
  /** The interval notifier over the whole mm. */
  readonly notifier: MmuIntervalNotifier;
  /** Protects the device page table and TLB, and pairs set_seq with read_retry. */
  readonly mutex: Mutex;
  /** Commands and device-fault service hold it for read; release for write. */
  readonly lifetime: RwSemaphore;
  /** The device address space that mirrors `mm`: its page table is the kernel's `pt` xarray. */
  readonly as: DeviceAddressSpace;
  readonly name: string;
  readonly stats: DmirrorStats = newStats();
  /** HMM_DMIRROR_FLAG_* (HMM_DMIRROR_FLAGS sets it). */
  flags = 0;
  /** release() began: new commands get -EINVAL, the fault worker cancels this mirror's faults. */
  released = false;
  /** The vpns whose entries carry DPT_XA_TAG_ATOMIC (made exclusive). Under the mutex. */
  readonly exclusive = new Set<number>();
  /** cur_seq of the last invalidation that reached us, own EXCLUSIVE events excepted. Under the mutex. */
  lastNonOwnSeq = 0;
  /** Pages in make_device_exclusive now: address -> cur_seq of the own EXCLUSIVE event that converted it (0 before). */
  readonly pendingExclusive = new Map<number, number>();

  private constructor(
    readonly mdevice: DmirrorDevice,
    readonly mm: MmStruct,
    name: string,
  ) {
    this.name = name;
    const e = mm.engine;
    this.notifier = new MmuIntervalNotifier(name);
    this.mutex = new Mutex(e, `${name}.mutex`, { lockClass: 'dmirror.mutex' });
    this.lifetime = new RwSemaphore(e, `${name}.lifetime`, { lockClass: 'dmirror.lifetime' });
    this.as = mdevice.device.createAddressSpace();
  }

  /**
   * dmirror_fops_open: a mirror of `mm` on `mdevice`, with its interval notifier inserted over
   * the whole address space. Runs in a task (inserting may sleep). Throws KernelError(EINVAL)
   * for a bad argument, ESRCH for an mm that has exited, or with the errno of a failed insert.
   */
  static async open(mdevice: DmirrorDevice, mm: MmStruct): Promise<Dmirror> {
    if (mdevice === null || typeof mdevice !== 'object' || typeof mdevice.attach !== 'function') {
      throw new KernelError(EINVAL, `dmirror open: not a DmirrorDevice: ${String(mdevice)}`);
    }
    if (!(mm instanceof MmStruct)) throw new KernelError(EINVAL, `dmirror open: not an mm: ${String(mm)}`);
    if (mm.engine !== mdevice.engine) throw new KernelError(EINVAL, `dmirror open: ${mm.name} runs on another engine than ${mdevice.name}`);
    mm.checkAlive('dmirror open'); // the opening process is alive (ESRCH otherwise)
    const dmirror = new Dmirror(mdevice, mm, mdevice.nextMirrorName());
    const ret = await mmuIntervalNotifierInsert(dmirror.notifier, mm, 0, WHOLE_MM, {
      invalidate: (mni, range, curSeq) => dmirrorIntervalInvalidate(dmirror, mni, range, curSeq),
    });
    if (ret !== 0) {
      mdevice.device.destroyAddressSpace(dmirror.as);
      throw new KernelError(-ret, `dmirror open: mmu_interval_notifier_insert on ${mm.name} failed: ${errnoName(-ret)}`);
    }
    mdevice.attach(dmirror);
    return dmirror;
  }

  /**
   * dmirror_fops_release: waits for the commands and device faults in flight, removes the
   * notifier (after which no callback runs), evicts the device's memory back to system memory
   * (current kernels do this on every close, since device pages point back to their mirror),
   * and drops the device address space. Jobs launched on the mirror must have ended
   * (KernelError EBUSY otherwise, with nothing changed). A second call does nothing.
   */
  async release(): Promise<void> {
    if (this.released) return;
    if (this.as.jobs.size > 0) throw new KernelError(EBUSY, `${this.name} release: ${this.as.jobs.size} device job(s) still run on asid ${this.as.asid}`);
    this.released = true;
    await this.lifetime.downWrite();
    this.lifetime.upWrite();
    await mmuIntervalNotifierRemove(this.notifier);
    // xa_destroy(&dmirror->pt): with the notifier gone nothing keeps the table right, so drop
    // it (and the TLB) before device memory is evicted and its frames freed.
    this.as.unmap(0, TASK_SIZE);
    await this.mdevice.device.tlbInvalidateAll(this.as).wait();
    await this.mdevice.evictAll();
    this.mdevice.detach(this);
    this.mdevice.device.destroyAddressSpace(this.as);
  }

  /** The ioctl: runs `command` with the command block `cmd` (see uapi.ts). Returns 0 or -errno. */
  ioctl(command: number, cmd: HmmDmirrorCmd): Promise<number> {
    return dmirrorIoctl(this, command, cmd);
  }

  /** Launches a user kernel on the mirror (Device.launch on `as`); its faults go to the device's fault worker. */
  launch<T>(opts: LaunchOptions, kernel: DeviceKernel<T>): DeviceJob<T> {
    if (this.released) throw new KernelError(EINVAL, `${this.name}: launch after release`);
    return this.mdevice.device.launch(this.as, opts, kernel);
  }

  // ---- the device page table (the kernel's xarray) ----

  /** True if `pfn` is this device's memory. */
  isLocal(pfn: number): boolean {
    const mem = this.mdevice.memory;
    return mem !== null && mem.contains(pfn);
  }

  /** xa_load + xa_pointer_tag: the entry's tag (DPT_XA_TAG_*), or -1 when there is none. */
  ptTag(vpn: number): number {
    const f = this.as.pageTable.flagsAt(vpn);
    if (f === 0) return -1;
    if (!(f & DEV_PTE_WRITE)) return DPT_XA_TAG_READ;
    return this.exclusive.size > 0 && this.exclusive.has(vpn) ? DPT_XA_TAG_ATOMIC : DPT_XA_TAG_WRITE;
  }

  /** xa_untag_pointer(xa_load): the entry's pfn, or -1. */
  ptPfn(vpn: number): number {
    return this.as.pageTable.pfnAt(vpn);
  }

  /**
   * xa_store(pt, vpn, page | tag). Returns true when it replaced a valid entry with a
   * different one: the TLB may hold the old translation, so the caller must tlbFlush before it
   * drops the mutex (a changed entry left in the TLB would let the device reach the old page,
   * or fault on a permission the table now grants). Caller holds the mutex.
   */
  ptStore(vpn: number, pfn: number, tag: number): boolean {
    const pt = this.as.pageTable;
    const flags = tag === DPT_XA_TAG_READ ? 0 : DEV_PTE_WRITE | DEV_PTE_ATOMIC;
    if (tag === DPT_XA_TAG_ATOMIC) this.exclusive.add(vpn);
    else if (this.exclusive.size > 0) this.exclusive.delete(vpn);
    const old = pt.flagsAt(vpn);
    const valid = old !== 0;
    // DEV_PTE_VALID is implied by map; compare the permission bits and the frame.
    if (valid && pt.pfnAt(vpn) === pfn && (old & (DEV_PTE_WRITE | DEV_PTE_ATOMIC)) === flags) return false;
    this.as.map(vpn * PAGE_SIZE, pfn, flags);
    this.stats.committed++;
    return valid;
  }

  /** xa_erase over the vpns [v0, v1): returns how many entries went. Caller holds the mutex and flushes the TLB. */
  ptErase(v0: number, v1: number): number {
    const n = this.as.unmap(v0 * PAGE_SIZE, v1 * PAGE_SIZE);
    if (this.exclusive.size > 0) for (const v of this.exclusive) if (v >= v0 && v < v1) this.exclusive.delete(v);
    this.stats.zapped += n;
    return n;
  }

  /** True if the device page table has an entry in the vpns [v0, v1) that `keep` does not keep. */
  ptHasEntries(v0: number, v1: number, keep: ((pfn: number) => boolean) | null): boolean {
    const pt = this.as.pageTable;
    if (pt.size === 0 || v0 >= v1) return false;
    let found = false;
    pt.forEach((_vpn, pfn) => {
      if (keep === null || !keep(pfn)) found = true;
    }, v0, v1);
    return found;
  }

  /**
   * Invalidates the device TLB for [start, end) and waits for the fence: afterwards no access
   * of this address space can use a translation of the range dropped before the call. Caller
   * holds the mutex (it may sleep).
   */
  async tlbFlush(start: number, end: number): Promise<void> {
    const s = Math.min(start, DEVICE_VA_LIMIT);
    const e = Math.min(end, DEVICE_VA_LIMIT);
    if (s >= e) return;
    this.stats.shootdowns++;
    const fence = this.mdevice.device.tlbInvalidate(this.as, s, e);
    await fence.wait();
  }
}

/** The vpns [v0, v1) an invalidation of [start, end) erases: the xarray walk's end is inclusive (one page more, harmless, as in the kernel). */
function updateSpan(start: number, end: number): [number, number] {
  return [Math.floor(start / PAGE_SIZE), Math.min(Math.floor(end / PAGE_SIZE) + 1, VPN_END)];
}

/**
 * The vpns [v0, v1) of exactly [start, end): an own MIGRATE event erases no more than the
 * migration can move (one page more would drop a neighbour still on the device, which the
 * migrate_fault case then finds missing: test_hmm never erases there, it skips the event).
 */
function exactSpan(start: number, end: number): [number, number] {
  return [Math.floor(start / PAGE_SIZE), Math.min(Math.ceil(end / PAGE_SIZE), VPN_END)];
}

/**
 * dmirror_do_update: erases the device entries of [start, end] (exactly [start, end) when
 * `keep` is given) except those `keep` keeps (by pfn; null: none), then shoots the TLB down
 * over what it erased and waits. Caller holds the mutex.
 */
export async function dmirrorDoUpdate(dmirror: Dmirror, start: number, end: number, keep: ((pfn: number) => boolean) | null = null): Promise<void> {
  const [v0, v1] = keep === null ? updateSpan(start, end) : exactSpan(start, end);
  if (v0 >= v1 || dmirror.as.pageTable.size === 0) return;
  if (keep === null) {
    // The XArray doesn't hold references to pages: it is OK to just clear the entries.
    if (dmirror.ptErase(v0, v1) > 0) await dmirror.tlbFlush(v0 * PAGE_SIZE, v1 * PAGE_SIZE);
    return;
  }
  const gone: number[] = [];
  dmirror.as.pageTable.forEach((vpn, pfn) => {
    if (!keep(pfn)) gone.push(vpn);
  }, v0, v1);
  if (gone.length === 0) return;
  for (let i = 0; i < gone.length; ) {
    let j = i + 1;
    while (j < gone.length && gone[j] === gone[j - 1]! + 1) j++;
    dmirror.ptErase(gone[i]!, gone[j - 1]! + 1);
    i = j;
  }
  await dmirror.tlbFlush(gone[0]! * PAGE_SIZE, (gone[gone.length - 1]! + 1) * PAGE_SIZE);
}

/**
 * What an own MIGRATE invalidation of [start, end) leaves mapped: the entries whose pages the
 * migration cannot select (registered MIGRATE_VMA_SELECT_* flags; unregistered: none kept).
 */
function ownMigrateKeep(dmirror: Dmirror, start: number, end: number): ((pfn: number) => boolean) | null {
  const flags = dmirror.mdevice.ownMigrationFlags(dmirror.mm, start, end);
  if (flags === 0) return null;
  const phys = dmirror.mdevice.phys;
  const system = (flags & MIGRATE_VMA_SELECT_SYSTEM) !== 0;
  const device = (flags & (MIGRATE_VMA_SELECT_DEVICE_PRIVATE | MIGRATE_VMA_SELECT_DEVICE_COHERENT)) !== 0;
  return (pfn) => (phys.isDevicePfn(pfn) ? !(device && dmirror.isLocal(pfn)) : !system);
}

/**
 * dmirror_interval_invalidate (mmu_interval_notifier_ops.invalidate). See the module comment
 * for the protocol and the own events. Synchronous when the range is not blockable (it may not
 * sleep there).
 */
export function dmirrorIntervalInvalidate(dmirror: Dmirror, mni: MmuIntervalNotifier, range: MmuNotifierRange, curSeq: number): boolean | Promise<boolean> {
  dmirror.stats.invalidations++;
  const own = range.owner !== null && range.owner === dmirror.mdevice.owner;
  if (own && range.event === MMU_NOTIFY_EXCLUSIVE) {
    // Our own make_device_exclusive: record the sequence of the event that converts the page,
    // for dmirrorExclusivePage's check; no erase (the frame stays) and no set_seq.
    for (const [addr, seq] of dmirror.pendingExclusive) if (addr >= range.start && addr < range.end && curSeq > seq) dmirror.pendingExclusive.set(addr, curSeq);
    dmirror.stats.ownEventsFiltered++;
    return true;
  }
  const keep = own && range.event === MMU_NOTIFY_MIGRATE ? ownMigrateKeep(dmirror, range.start, range.end) : null;
  if (keep !== null) dmirror.stats.ownEventsFiltered++;
  if (mmuNotifierRangeBlockable(range)) return dmirrorInvalidateBlocking(dmirror, mni, range, curSeq, keep);
  if (!dmirror.mutex.trylock()) {
    dmirror.stats.invalidateRefused++;
    return false;
  }
  const [v0, v1] = keep === null ? updateSpan(range.start, range.end) : exactSpan(range.start, range.end);
  if (dmirror.ptHasEntries(v0, v1, keep)) {
    // Dropping them needs a TLB shootdown we cannot wait for here.
    dmirror.mutex.unlock();
    dmirror.stats.invalidateRefused++;
    return false;
  }
  mmuIntervalSetSeq(mni, curSeq);
  dmirror.lastNonOwnSeq = curSeq;
  dmirror.mutex.unlock();
  return true;
}

async function dmirrorInvalidateBlocking(dmirror: Dmirror, mni: MmuIntervalNotifier, range: MmuNotifierRange, curSeq: number, keep: ((pfn: number) => boolean) | null): Promise<boolean> {
  await dmirror.mutex.lock();
  try {
    mmuIntervalSetSeq(mni, curSeq);
    dmirror.lastNonOwnSeq = curSeq;
    await dmirrorDoUpdate(dmirror, range.start, range.end, keep);
  } finally {
    dmirror.mutex.unlock();
  }
  return true;
}

/**
 * dmirror_do_fault: programs the device entries of `range` from its hmm_pfns. Caller holds the
 * mutex and has just seen read_retry false. Returns 0, or -EFAULT when a write was requested
 * but a page came back read-only (a WARN: hmm_range_fault should have faulted it writable,
 * except for a read-only device-private page of our own, which it reports without faulting).
 * Entries that replaced different ones are shot down from the TLB before it returns.
 */
export async function dmirrorDoFault(dmirror: Dmirror, range: HmmRange): Promise<number> {
  dmirror.mutex.assertHeld();
  const e = dmirror.mm.engine;
  const pfns = range.hmmPfns;
  const v0 = range.start / PAGE_SIZE;
  const v1 = range.end / PAGE_SIZE;
  let ret = 0;
  let lo = -1;
  let hi = -1;
  for (let vpn = v0; vpn < v1; vpn++) {
    const f = pfns[vpn - v0]!;
    // Since we asked hmm_range_fault to populate pages, it shouldn't return an error entry on
    // success. (The messages are built only when a WARN fires: this loop is hot.)
    if (f & HMM_PFN_ERROR) e.warnOn(true, `${dmirror.name}: hmm_range_fault returned an error entry at 0x${(vpn * PAGE_SIZE).toString(16)}`);
    if (!(f & HMM_PFN_VALID)) {
      e.warnOn(true, `${dmirror.name}: hmm_range_fault returned an invalid entry at 0x${(vpn * PAGE_SIZE).toString(16)}`);
      continue;
    }
    let tag = DPT_XA_TAG_READ;
    if (f & HMM_PFN_WRITE) tag = DPT_XA_TAG_WRITE;
    else if (range.defaultFlags & HMM_PFN_REQ_WRITE) {
      e.warnOn(true, `${dmirror.name}: write fault got a read-only page at 0x${(vpn * PAGE_SIZE).toString(16)}`);
      ret = -EFAULT;
      break;
    }
    if (dmirror.ptStore(vpn, hmmPfnToPfn(f), tag)) {
      if (lo < 0) lo = vpn;
      hi = vpn + 1;
    }
  }
  if (lo >= 0) await dmirror.tlbFlush(lo * PAGE_SIZE, hi * PAGE_SIZE);
  return ret;
}

/**
 * dmirror_range_fault: the canonical loop (Documentation/mm/hmm.rst), bounded by
 * HMM_RANGE_DEFAULT_TIMEOUT of virtual time:
 *   again: seq = read_begin; mmap_read_lock; hmm_range_fault; mmap_read_unlock;
 *          -EBUSY -> again; other error -> return it;
 *          mutex_lock; read_retry(seq) -> mutex_unlock, again;
 *          commit (dmirror_do_fault); mutex_unlock.
 */
export async function dmirrorRangeFault(dmirror: Dmirror, range: HmmRange): Promise<number> {
  const mm = dmirror.mm;
  const e = mm.engine;
  const timeout = e.now + HMM_RANGE_DEFAULT_TIMEOUT_NS;
  dmirror.stats.rangeFaults++;
  let ret: number;
  for (;;) {
    if (e.now > timeout) return -EBUSY;
    range.notifierSeq = await mmuIntervalReadBegin(range.notifier);
    await mm.mmapLock.downRead();
    try {
      dmirror.stats.hmmRangeFaults++;
      ret = await hmmRangeFault(range);
    } finally {
      mm.mmapLock.upRead();
    }
    if (ret !== 0) {
      if (ret === -EBUSY) {
        dmirror.stats.busy++;
        continue;
      }
      return ret;
    }
    await dmirror.mutex.lock();
    if (mmuIntervalReadRetry(range.notifier, range.notifierSeq)) {
      dmirror.mutex.unlock();
      dmirror.stats.retries++;
      continue;
    }
    break;
  }
  try {
    return await dmirrorDoFault(dmirror, range);
  } finally {
    dmirror.mutex.unlock();
  }
}

/**
 * dmirror_fault: faults [start, end) into the device page table, DMIRROR_FAULT_CHUNK pages per
 * hmm_range_fault, for write if `write`. Returns 0 or the first error (-EFAULT: no VMA, no
 * access or a failed fault; -EPERM: write to a read-only VMA; -EBUSY: timed out).
 * Departure: when the mm has exited (mmget_not_zero fails) the kernel returns 0, which the
 * READ/WRITE loop would retry forever; the kernel cannot get there (the caller is the mm's own
 * process), the device-fault worker can: it gets -EFAULT and cancels the fault.
 */
export async function dmirrorFault(dmirror: Dmirror, start: number, end: number, write: boolean): Promise<number> {
  const mm = dmirror.mm;
  if (mm.state !== 'live') return -EFAULT;
  if (start >= end) return 0;
  // No VMA beyond the user address space: what hmm_range_fault would say about it.
  if (end > TASK_SIZE) return -EFAULT;
  const range = new HmmRange({
    notifier: dmirror.notifier,
    start,
    end: Math.min(start + DMIRROR_FAULT_CHUNK * PAGE_SIZE, end),
    hmmPfns: new BigUint64Array(DMIRROR_FAULT_CHUNK),
    pfnFlagsMask: 0n,
    defaultFlags: HMM_PFN_REQ_FAULT | (write ? HMM_PFN_REQ_WRITE : 0n),
    devPrivateOwner: dmirror.mdevice.owner,
  });
  let ret = 0;
  for (let addr = start; addr < end; addr = range.end) {
    range.start = addr;
    range.end = Math.min(addr + DMIRROR_FAULT_CHUNK * PAGE_SIZE, end);
    ret = await dmirrorRangeFault(dmirror, range);
    if (ret !== 0) break;
  }
  return ret;
}
