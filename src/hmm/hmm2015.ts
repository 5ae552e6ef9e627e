/**
 * The 2015 HMM mirror API: struct hmm per mm, mirrors with their own page table, device faults
 * synchronized with CPU page-table updates by the two-sided protocol. Never merged upstream
 * (hmm_range_fault and interval notifiers replaced it); reproduced faithfully, with its known
 * weaknesses.
 *
 * Models: the 2015 HMM patches (HMM v9, Jul 2015, with v8 of May 2015 where v9 did not change
 * it): "mmu_notifier: keep track of active invalidation ranges v4" (src/notifier/ranges2015.ts),
 * "HMM: heterogeneous memory management v4" (hmm_mirror_register/unregister, hmm_notifier_release,
 * hmm_mirror_kill), "HMM: add per mirror page table v4" (hmm_update, hmm_mirror_update_pt, the
 * mmu event mapping), "HMM: add device page fault support v4" (hmm_device_fault_start/end,
 * hmm_wait_device_fault, hmm_mirror_fault, hmm_mirror_handle_fault, hmm_mirror_fault_pmd,
 * hmm_mm_fault); and the review by Hubbard (Jun 2015) and Hairgrove (Jun and Sep 2015).
 *
 * Objects: one Hmm per mm (mm->hmm), created by the first hmmMirrorRegister, which registers
 * ONE classic MmuNotifier on the mm (invalidateRangeStart = hmm_update, release =
 * hmm_notifier_release); one HmmMirror per (device, mm), with its HmmMirrorTable; an HmmDevice
 * with ops update(mirror, event) and release(mirror).
 *
 * Locks (what protects what):
 * - hmm.lock (SpinLock): deviceFaults, ndeviceFaults, and every event's `backoff` while it is
 *   on deviceFaults.
 * - hmm.rwsem (RwSemaphore, the 2015 hmm->rwsem): the mirror list; read while calling device
 *   updates from hmm_update, write to add or remove a mirror.
 * - mirror.pt.dirLock (SpinLock, the directory lock): the mirror table's VALID/WRITE/pfn
 *   (the device may set DIRTY without it). A leaf lock.
 * - mm.mmapLock: held for read by the device fault path (hmm_mirror_fault), for write by
 *   registration (and by destroy, to clear mm->hmm).
 * Lock order: mmap_lock -> hmm.rwsem -> hmm.lock -> subscriptions.lock (hmmDeviceFaultStart
 * checks is_valid under hmm.lock: both spinlocks, nothing sleeps); dirLock nests under
 * nothing we take. Device update ops are called without hmm.lock or dirLock (they may sleep),
 * from an invalidation with hmm.rwsem held for read, from a fault with mmap_lock held for read.
 *
 * The two-sided protocol ("each side publishes itself before it checks the other"):
 * - an invalidation is on subscriptions.ranges (published by invalidate_range_start) before
 *   its callback, hmm_update, scans deviceFaults: it marks every overlapping fault backoff and
 *   waits until ndeviceFaults changes, then rescans, until none overlaps; only then does it
 *   call the device updates and mask the mirror tables (and only after that does the CPU
 *   entry change);
 * - a fault waits until no active range overlaps (wait_valid), then rechecks the ranges
 *   (is_valid) and inserts itself into deviceFaults in ONE hmm.lock section.
 * So either the fault sees the invalidation (it waits, or fails the recheck with -EAGAIN and
 * retries) or the invalidation sees the fault (it sets backoff and waits for fault_end): the
 * invalidation wins. Guarantee: the device update of an invalidation runs after the device
 * update of any fault that mapped those pages, and a fault that starts after an invalidation
 * does not walk the range until it left `ranges` (after invalidate_range_end). Between the
 * pieces of the walk (each 2 MiB step) and around device updates the task may be preempted.
 *
 * Diagram A, the fault is published first: the invalidation waits for it.
 *
 *   device fault (hmmMirrorFault)            invalidation (CPU: COW, madvise, migration...)
 *   -----------------------------            ----------------------------------------------
 *   mmap_read_lock
 *   hmmDeviceFaultStart
 *     wait_valid: no range, returns
 *     lock(hmm.lock); is_valid: true
 *     deviceFaults += ev; n++ ; unlock
 *   walk: fill the mirror table
 *   device.update(mirror, ev) ...            invalidate_range_start: ranges += r
 *                                            hmm_update -> hmmWaitDeviceFault
 *                                              lock; ev overlaps: ev.backoff = true
 *                                              snapshot n; unlock; wait_event(n changes)
 *   ... returns; ev.backoff: -EAGAIN
 *   hmmDeviceFaultEnd: n--; wake_up  ------->    woken; rescan: nothing overlaps
 *   mmap_read_unlock; retry                  device.update(mirror, inv); mask mirror table
 *   hmmDeviceFaultStart                      CPU PTEs change
 *     wait_valid: r active, sleeps           invalidate_range_end: ranges -= r; wake_up
 *     woken: valid; ...  <-------------------
 *
 * Diagram B, the invalidation is published first: the fault retries.
 *
 *   device fault                             invalidation
 *   ------------                             ------------
 *   hmmDeviceFaultStart
 *     wait_valid: no range, returns
 *     (preempted)                            invalidate_range_start: ranges += r
 *                                            hmm_update -> hmmWaitDeviceFault: no fault
 *     lock(hmm.lock); is_valid: false        device.update(mirror, inv); mask mirror table
 *     unlock; -EAGAIN                        ...
 *   mmap_read_unlock; retry
 *   hmmDeviceFaultStart
 *     wait_valid: r active, sleeps ...       invalidate_range_end: ranges -= r; wake_up
 *
 * test/hmm/hmm2015.test.ts runs both diagrams.
 *
 * Review points, reproduced as they were:
 * - Hubbard (Jun 2015): nothing blocks new invalidations; the protocol above is Glisse's answer
 *   ("a 2 sided synchronization").
 * - Hairgrove (Sep 2015): the documented wait_valid / lock / recheck usage deadlocks when the
 *   driver's own invalidate_range_start takes that lock (the diagram in ranges2015.ts). HMM
 *   does not hold anything the invalidation needs when the recheck fails (it returns -EAGAIN),
 *   trading the deadlock for possible starvation: hmmMirrorFault retries forever, as the patch
 *   did (mirror.stats.retries counts the retries).
 * - Hairgrove (Jun 2015): the dirty bit moves to the page only from a writable entry
 *   (hmm_pte_test_and_clear_dirty && hmm_pte_test_write); kept.
 *
 * Where we depart from the patch, said once:
 * - the mm is passed to hmmMirrorRegister (the patch used current->mm), and an HmmDevice needs
 *   no separate registration (hmm_device_register only put it on a list);
 * - bad input throws KernelError (the patch returned -EINVAL for a bad event or etype);
 * - a protnone CPU entry is not mirrored (x86's pte_present() is true for PROT_NONE, so the
 *   patch's walk would have mapped it); it takes the -ENOENT path, whose CPU fault fails;
 * - -ENOENT faults the CPU pages from where the walk stopped (the patch: from the start of the
 *   range not yet given to the device); both fault only present-or-faultable pages;
 * - a non-blockable invalidation (OOM reaper, which postdates the patch) gets -EAGAIN from
 *   hmm_update, which sleeps;
 * - when the last mirror goes, the Hmm is destroyed at once (the patch: at the last kref put).
 * Kept from the patch, and worth knowing: the teardown of a mirror (mm release, unregister, a
 * failed update) does not wait for that mirror's device faults in flight; such a fault can
 * still fill the dead mirror's table and call its update op, after release(). A driver fails
 * its update op once released and stops reading the table.
 * Simplifications: no THP (the walk's huge-PMD path), no DMA mapping of mirror entries.
 */
import {
  MmuNotifier,
  type MmuNotifierRange,
  __mmuNotifierRegister,
  mmuNotifierRangeBlockable,
  mmuNotifierRangeIsValid,
  mmuNotifierRangeWaitValid,
  mmuNotifierUnregister,
} from '../notifier/index.js';
import {
  FAULT_FLAG_REMOTE,
  FAULT_FLAG_WRITE,
  MmStruct,
  PAGE_SIZE,
  PG_DIRTY,
  PMD_SIZE,
  PTE_PRESENT,
  PTE_PROTNONE,
  PTE_WRITE,
  VM_IO,
  VM_PFNMAP,
  VM_WRITE,
  type Vma,
  handleMmFault,
  vpnOf,
} from '../mm/index.js';
import {
  EACCES,
  EAGAIN,
  EEXIST,
  EFAULT,
  EINVAL,
  EIO,
  ENODEV,
  ENOENT,
  ENOMEM,
  type Engine,
  KernelBug,
  KernelError,
  RwSemaphore,
  SpinLock,
  WaitQueue,
} from '../sim/index.js';
import {
  HMM_DEVICE_RFAULT,
  HMM_DEVICE_WFAULT,
  HMM_MUNMAP,
  HMM_NONE,
  HMM_PTE_DIRTY,
  HMM_PTE_VALID,
  HMM_PTE_WRITE,
  HMM_VM_END,
  HmmEvent,
  hmmEtypeFromMmu,
  hmmEventOverlap,
} from './hmm2015-event.js';
import { HmmMirrorTable } from './hmm2015-pt.js';

declare module '../sim/trace.js' {
  interface TraceEventMap {
    /** A mirror was registered on an mm (the first one created the Hmm). */
    'hmm2015.register': { mm: number; mirror: string };
    /** hmmMirrorUnregister returned. */
    'hmm2015.unregister': { mm: number; mirror: string };
    /** A mirror was torn down (mm release, unregister or a failed update): device.release returned. */
    'hmm2015.release': { mm: number; mirror: string };
    /** hmmDeviceFaultStart: wait_valid returned; the recheck under hmm.lock comes next (the window of diagram B). */
    'hmm2015.fault_valid': { mm: number; mirror: string | null; start: number; end: number };
    /** hmmDeviceFaultStart returned: 0 (on deviceFaults) or -EAGAIN (an invalidation overlapped at the recheck). */
    'hmm2015.fault_start': { mm: number; mirror: string | null; start: number; end: number; ret: number };
    'hmm2015.fault_end': { mm: number; mirror: string | null; start: number; end: number };
    /** An invalidation marked an overlapping device fault backoff. */
    'hmm2015.backoff': { mm: number; mirror: string | null; start: number; end: number; istart: number; iend: number; etype: number };
    /** An invalidation sleeps until ndeviceFaults changes from `ndeviceFaults`. */
    'hmm2015.wait': { mm: number; start: number; end: number; etype: number; ndeviceFaults: number };
    /** A device update op returned (a fault's or an invalidation's). */
    'hmm2015.update': { mm: number; mirror: string; etype: number; start: number; end: number; ret: number };
    /** hmmMirrorFault returned. */
    'hmm2015.mirror_fault': { mm: number; mirror: string; etype: number; start: number; end: number; ret: number; retries: number };
  }
}

/** struct hmm_device_ops. */
export interface HmmDeviceOps {
  /**
   * update(): make the device page table follow `event` on [event.start, event.end); may
   * sleep. For a CPU update (FORK, MIGRATE, MUNMAP, WRITE_PROTECT) HMM masks the mirror table
   * with event.pteMask after it returns: the device must stop using what the mask removes
   * (and set HMM_PTE_DIRTY on entries it wrote, if it has not yet). For a device fault
   * (DEVICE_RFAULT/WFAULT) the mirror table has been filled for the range: the device programs
   * its page table from it. Returns 0, -ENOMEM or -EIO; from a CPU update any error kills the
   * mirror (and any other value is WARNed and taken as -EIO); from a fault it is returned.
   */
  update(mirror: HmmMirror, event: HmmEvent): Promise<number> | number;
  /** release(): the mirror is gone (mm teardown, unregister, failed update); stop using the mm. May sleep. */
  release(mirror: HmmMirror): Promise<void> | void;
}

/** struct hmm_device. */
export class HmmDevice {
  /** Mirrors of this device (dlist), registered and not yet torn down. */
  readonly mirrors: HmmMirror[] = [];
  private nmirrors = 0;

  /** Throws KernelError(EINVAL) for a bad name or ops without update and release functions. */
  constructor(
    readonly engine: Engine,
    readonly name: string,
    readonly ops: HmmDeviceOps,
  ) {
    if (typeof name !== 'string' || name.length === 0) throw new KernelError(EINVAL, `HmmDevice: name must be a non-empty string: ${JSON.stringify(name)}`);
    if (typeof ops !== 'object' || ops === null || typeof ops.update !== 'function' || typeof ops.release !== 'function') {
      throw new KernelError(EINVAL, `HmmDevice ${name}: ops must have update and release functions`);
    }
  }

  /** @internal a deterministic default mirror name. */
  nextMirrorName(): string {
    return `${this.name}.mirror${++this.nmirrors}`;
  }

  toString(): string {
    return `hmm_device ${this.name}`;
  }
}

/** Counters of one mirror. */
export interface HmmMirrorStats {
  /** hmmMirrorFault calls that reached the fault loop. */
  faults: number;
  /** -EAGAIN retries of the fault loop (invalidation seen at start, backoff, or after faulting CPU pages). */
  retries: number;
  /** Times a fault found its event marked backoff. */
  backoffs: number;
  /** device.update calls (faults and CPU updates). */
  updates: number;
}

/** new: not yet registered; registering: hmmMirrorRegister in progress; live: on its Hmm's mirror list; dead: torn down (released, killed or unregistered). */
export type HmmMirrorState = 'new' | 'registering' | 'live' | 'dead';

/** struct hmm_mirror: one device mirroring one mm. */
export class HmmMirror {
  readonly name: string;
  /** The mirror page table (read-only for devices, except setDirty). */
  readonly pt: HmmMirrorTable;
  readonly stats: HmmMirrorStats = { faults: 0, retries: 0, backoffs: 0, updates: 0 };
  state: HmmMirrorState = 'new';
  /** The Hmm of the mm it mirrors, set by registration (kept after teardown, for inspection). */
  hmm: Hmm | null = null;
  /** @internal hmmMirrorUnregister ran. */
  unregistered = false;

  constructor(
    readonly device: HmmDevice,
    name?: string,
  ) {
    if (!(device instanceof HmmDevice)) throw new KernelError(EINVAL, `HmmMirror: not an HmmDevice: ${String(device)}`);
    if (name !== undefined && (typeof name !== 'string' || name.length === 0)) throw new KernelError(EINVAL, `HmmMirror: name must be a non-empty string: ${JSON.stringify(name)}`);
    this.name = name ?? device.nextMirrorName();
    this.pt = new HmmMirrorTable(device.engine, this.name);
  }

  toString(): string {
    return `hmm_mirror ${this.name}`;
  }
}

/** struct hmm: the per-mm state. Fields are public for inspection; only this module writes them. */
export class Hmm {
  readonly engine: Engine;
  /** Protects deviceFaults, ndeviceFaults and the faults' backoff flags. */
  readonly lock: SpinLock;
  /** The active device faults (list_add_tail order). */
  readonly deviceFaults: HmmEvent[] = [];
  /** deviceFaults.length, kept as the patch's counter: hmm_wait_device_fault waits for it to change. */
  ndeviceFaults = 0;
  /** hmm->wait_queue: woken at fault start and end, after hmm_update and after a fault's mmap unlock. */
  readonly wq: WaitQueue;
  /** hmm->rwsem: the mirror list. */
  readonly rwsem: RwSemaphore;
  /** Registered mirrors, newest first (hlist_add_head). */
  readonly mirrors: HmmMirror[] = [];
  /** The classic notifier: invalidateRangeStart = hmm_update, release = hmm_notifier_release. */
  readonly notifier: MmuNotifier;
  /** hmm->vm_end. */
  readonly vmEnd = HMM_VM_END;
  /** mm->hmm no longer points here (destroyed); updates are ignored. */
  dead = false;

  constructor(readonly mm: MmStruct) {
    const e = mm.engine;
    this.engine = e;
    this.lock = new SpinLock(e, `${mm.name}.hmm.lock`, { lockClass: 'hmm.lock' });
    this.wq = new WaitQueue(e, `${mm.name}.hmm.wait_queue`);
    this.rwsem = new RwSemaphore(e, `${mm.name}.hmm.rwsem`, { lockClass: 'hmm.rwsem' });
    this.notifier = new MmuNotifier(
      {
        invalidateRangeStart: (_sub, range) => hmmNotifierInvalidateRangeStart(this, range),
        release: () => hmmNotifierRelease(this),
      },
      `hmm@${mm.name}`,
    );
  }

  toString(): string {
    return `hmm of ${this.mm.name}`;
  }
}

/** mm->hmm. */
const mmHmm = new WeakMap<MmStruct, Hmm>();

/** mm->hmm: the mm's Hmm, or null if no mirror is registered on it. */
export function hmmFromMm(mm: MmStruct): Hmm | null {
  return mmHmm.get(mm) ?? null;
}

// ---- traces ----

function traceFault(hmm: Hmm, type: 'hmm2015.fault_valid' | 'hmm2015.fault_end', ev: HmmEvent): void {
  const t = hmm.engine.trace;
  if (t.active && t.wants(type)) t.emit(type, { mm: hmm.mm.id, mirror: ev.faulter, start: ev.start, end: ev.end });
}

function traceMirror(hmm: Hmm, type: 'hmm2015.register' | 'hmm2015.unregister' | 'hmm2015.release', mirror: HmmMirror): void {
  const t = hmm.engine.trace;
  if (t.active && t.wants(type)) t.emit(type, { mm: hmm.mm.id, mirror: mirror.name });
}

// ---- the device-fault list: the fault side and the invalidation side ----

function checkHmmEvent(what: string, hmm: Hmm, ev: HmmEvent): void {
  if (!(hmm instanceof Hmm)) throw new KernelError(EINVAL, `${what}: not an Hmm: ${String(hmm)}`);
  if (!(ev instanceof HmmEvent)) throw new KernelError(EINVAL, `${what}: not an HmmEvent: ${String(ev)}`);
}

function checkFaultEvent(what: string, ev: HmmEvent): void {
  if (ev.etype !== HMM_DEVICE_RFAULT && ev.etype !== HMM_DEVICE_WFAULT) throw new KernelError(EINVAL, `${what}: not a device fault: ${ev}`);
}

async function deviceFaultStart(hmm: Hmm, ev: HmmEvent): Promise<number> {
  const e = hmm.engine;
  const mm = hmm.mm;
  await mmuNotifierRangeWaitValid(mm, ev.start, ev.end);
  traceFault(hmm, 'hmm2015.fault_valid', ev);
  // The kernel may be preempted here: a new invalidation can publish its range before we
  // recheck. The recheck and the insertion are one hmm.lock section (pairs with the scan in
  // hmmWaitDeviceFault, which runs after the invalidation published its range).
  await e.yield();
  e.bugOn(ev.active, `hmm_device_fault_start: ${ev} is already an active device fault`);
  let ret = 0;
  hmm.lock.lock();
  if (mmuNotifierRangeIsValid(mm, ev.start, ev.end)) {
    hmm.deviceFaults.push(ev);
    hmm.ndeviceFaults++;
    ev.backoff = false;
    ev.active = true;
  } else {
    ret = -EAGAIN;
  }
  hmm.lock.unlock();
  hmm.wq.wakeUp();
  const t = e.trace;
  if (t.active && t.wants('hmm2015.fault_start')) t.emit('hmm2015.fault_start', { mm: mm.id, mirror: ev.faulter, start: ev.start, end: ev.end, ret });
  return ret;
}

/**
 * hmm_device_fault_start: waits until no invalidation overlaps [ev.start, ev.end), then, in one
 * hmm.lock section, rechecks and puts `ev` on hmm.deviceFaults (backoff cleared). Returns 0, or
 * -EAGAIN if an invalidation began in between (retry from the top, dropping mmap_lock first).
 * Pairs with hmmDeviceFaultEnd, which must follow a 0 before the event is reused.
 * Throws KernelError(EINVAL) for a bad hmm or event or an etype other than a device fault.
 */
export async function hmmDeviceFaultStart(hmm: Hmm, ev: HmmEvent): Promise<number> {
  checkHmmEvent('hmm_device_fault_start', hmm, ev);
  checkFaultEvent('hmm_device_fault_start', ev);
  hmm.engine.mightSleep('hmm_device_fault_start');
  return deviceFaultStart(hmm, ev);
}

/**
 * hmm_device_fault_end: takes `ev` off hmm.deviceFaults and wakes the invalidations waiting for
 * it. KernelBug if `ev` is not an active device fault of `hmm`.
 */
export function hmmDeviceFaultEnd(hmm: Hmm, ev: HmmEvent): void {
  checkHmmEvent('hmm_device_fault_end', hmm, ev);
  const e = hmm.engine;
  hmm.lock.lock();
  const i = hmm.deviceFaults.indexOf(ev);
  if (i >= 0) {
    hmm.deviceFaults.splice(i, 1);
    hmm.ndeviceFaults--;
    ev.active = false;
  }
  hmm.lock.unlock();
  if (i < 0) e.bug(new KernelBug(`BUG: hmm_device_fault_end: ${ev} is not an active device fault of ${hmm}${e.current ? ` (task ${e.current.name})` : ''}`));
  hmm.wq.wakeUp();
  traceFault(hmm, 'hmm2015.fault_end', ev);
}

/**
 * hmm_wait_device_fault, from hmm_update (an invalidation whose range is already published):
 * marks every overlapping device fault backoff, and while any overlaps, waits until
 * ndeviceFaults changes (any change: a fault elsewhere ending also wakes it) and rescans.
 * Returns when no active device fault overlaps `ev`. Throws KernelError(EINVAL) for bad input.
 */
export async function hmmWaitDeviceFault(hmm: Hmm, ev: HmmEvent): Promise<void> {
  checkHmmEvent('hmm_wait_device_fault', hmm, ev);
  const e = hmm.engine;
  e.mightSleep('hmm_wait_device_fault');
  const t = e.trace;
  for (;;) {
    let waitFor = 0;
    let marked: HmmEvent[] | null = null;
    hmm.lock.lock();
    for (const f of hmm.deviceFaults) {
      if (!hmmEventOverlap(f, ev)) continue;
      if (!f.backoff && t.active) (marked ??= []).push(f);
      f.backoff = true;
      waitFor = hmm.ndeviceFaults;
    }
    hmm.lock.unlock();
    if (marked !== null && t.wants('hmm2015.backoff')) {
      for (const f of marked) t.emit('hmm2015.backoff', { mm: hmm.mm.id, mirror: f.faulter, start: f.start, end: f.end, istart: ev.start, iend: ev.end, etype: ev.etype });
    }
    if (waitFor === 0) return;
    if (t.active && t.wants('hmm2015.wait')) t.emit('hmm2015.wait', { mm: hmm.mm.id, start: ev.start, end: ev.end, etype: ev.etype, ndeviceFaults: waitFor });
    await hmm.wq.waitEvent(() => hmm.ndeviceFaults !== waitFor);
  }
}

// ---- CPU page-table updates: hmm_update ----

/** hmm_mirror_update_pt: new = old & pteMask on [ev.start, ev.end), moving DIRTY (of writable entries) to the page. */
function mirrorUpdatePt(mirror: HmmMirror, ev: HmmEvent): void {
  const table = mirror.pt;
  const mask = ev.pteMask;
  const flags = mirror.hmm!.mm.phys.flags;
  table.dirLock.lock();
  table.pt.forEachLeaf(vpnOf(ev.start), vpnOf(ev.end), (leaf, from, to) => {
    const bits = leaf.bits;
    for (let i = from; i < to; i++) {
      let b = bits[i]!;
      if (!(b & HMM_PTE_VALID)) continue;
      if ((b & (HMM_PTE_DIRTY | HMM_PTE_WRITE)) === (HMM_PTE_DIRTY | HMM_PTE_WRITE)) flags[leaf.pfn[i]!]! |= PG_DIRTY;
      b = b & ~HMM_PTE_DIRTY & mask;
      if (b & HMM_PTE_VALID) {
        bits[i] = b;
      } else {
        leaf.clearIndex(i);
        table.nvalid--;
      }
    }
  });
  table.dirLock.unlock();
}

/** Calls device.update with preemption points around it; counts and traces it. */
async function deviceUpdate(mirror: HmmMirror, ev: HmmEvent): Promise<number> {
  const e = mirror.device.engine;
  await e.yield();
  const ret = await mirror.device.ops.update(mirror, ev);
  mirror.stats.updates++;
  const t = e.trace;
  if (t.active && t.wants('hmm2015.update')) t.emit('hmm2015.update', { mm: mirror.hmm!.mm.id, mirror: mirror.name, etype: ev.etype, start: ev.start, end: ev.end, ret });
  await e.yield();
  return ret;
}

/** hmm_mirror_update: the device update, then the mirror table. Returns the update's result (-EIO for an unexpected one). */
async function mirrorUpdate(mirror: HmmMirror, ev: HmmEvent): Promise<number> {
  let ret = await deviceUpdate(mirror, ev);
  if (ret !== 0 && ret !== -ENOMEM && ret !== -EIO) {
    mirror.device.engine.warnOn(true, `${mirror}: update returned ${String(ret)} (only 0, -ENOMEM, -EIO): taken as -EIO`);
    ret = -EIO;
  }
  mirrorUpdatePt(mirror, ev);
  return ret;
}

/**
 * The teardown of a mirror already off the list (hmm_mirror_kill and hmm_notifier_release):
 * "make sure everything is unmapped" (a MUNMAP of [0, vm_end) through the device and the
 * table), then device.release. Like the patch, it does not wait for device faults in flight.
 */
async function mirrorTeardown(hmm: Hmm, mirror: HmmMirror): Promise<void> {
  mirror.state = 'dead';
  const d = mirror.device.mirrors.indexOf(mirror);
  if (d >= 0) mirror.device.mirrors.splice(d, 1);
  await mirrorUpdate(mirror, new HmmEvent(HMM_MUNMAP, 0, hmm.vmEnd));
  await mirror.device.engine.yield();
  await mirror.device.ops.release(mirror);
  traceMirror(hmm, 'hmm2015.release', mirror);
}

/** hmm_mirror_kill: takes `mirror` off the list (if still on it) and tears it down. */
async function mirrorKill(hmm: Hmm, mirror: HmmMirror): Promise<void> {
  await hmm.rwsem.downWrite();
  const i = hmm.mirrors.indexOf(mirror);
  if (i >= 0) hmm.mirrors.splice(i, 1);
  hmm.rwsem.upWrite();
  if (i >= 0) await mirrorTeardown(hmm, mirror);
}

/**
 * hmm_update: waits for the overlapping device faults to back off, then updates every mirror
 * (device first, then its table). A mirror whose device update fails is killed and the pass
 * restarts, as the patch's `goto again`.
 */
async function hmmUpdate(hmm: Hmm, ev: HmmEvent): Promise<void> {
  if (hmm.dead || mmHmm.get(hmm.mm) !== hmm) return; // "Is this hmm already fully stop ?"
  await hmmWaitDeviceFault(hmm, ev);
  for (;;) {
    let failed: HmmMirror | null = null;
    await hmm.rwsem.downRead();
    try {
      for (const mirror of hmm.mirrors) {
        if ((await mirrorUpdate(mirror, ev)) !== 0) {
          failed = mirror;
          break;
        }
      }
    } finally {
      hmm.rwsem.upRead();
    }
    if (failed === null) break;
    await mirrorKill(hmm, failed);
  }
  hmm.wq.wakeUp();
}

/** hmm_notifier_invalidate_range_start: map the event, clip to vm_end, hmm_update. */
async function hmmNotifierInvalidateRangeStart(hmm: Hmm, range: MmuNotifierRange): Promise<number> {
  // hmm_update sleeps; the patch predates non-blockable ranges. Refuse them, as sleeping
  // notifiers do today (the OOM reaper then skips the range).
  if (!mmuNotifierRangeBlockable(range)) return -EAGAIN;
  if (range.start >= hmm.vmEnd) return 0;
  const etype = hmmEtypeFromMmu(hmm.mm, range.event, range.start);
  if (etype === HMM_NONE) return 0;
  const start = range.start - (range.start % PAGE_SIZE);
  const end = Math.min(Math.ceil(range.end / PAGE_SIZE) * PAGE_SIZE, hmm.vmEnd);
  await hmmUpdate(hmm, new HmmEvent(etype, start, end));
  return 0;
}

/** hmm_notifier_release: every mirror leaves the list and is torn down (device.release). */
async function hmmNotifierRelease(hmm: Hmm): Promise<void> {
  await hmm.rwsem.downWrite();
  for (;;) {
    const mirror = hmm.mirrors.shift();
    if (mirror === undefined) break;
    hmm.rwsem.upWrite();
    await mirrorTeardown(hmm, mirror);
    await hmm.rwsem.downWrite();
  }
  hmm.rwsem.upWrite();
  hmm.wq.wakeUp();
}

// ---- registration ----

/**
 * hmm_mirror_register: starts mirroring `mm` with `mirror` (the first mirror of an mm creates
 * its Hmm and registers its notifier). Takes mmap_lock for write; the caller must not hold it.
 * Returns 0 or the error of the notifier registration. Throws KernelError: EINVAL for a bad
 * mirror or an mm of another engine, EEXIST for a mirror registered before, ESRCH for an
 * exited mm.
 */
export async function hmmMirrorRegister(mirror: HmmMirror, mm: MmStruct): Promise<number> {
  if (!(mirror instanceof HmmMirror)) throw new KernelError(EINVAL, `hmm_mirror_register: not an HmmMirror: ${String(mirror)}`);
  if (!(mm instanceof MmStruct)) throw new KernelError(EINVAL, `hmm_mirror_register: not an MmStruct: ${String(mm)}`);
  if (mm.engine !== mirror.device.engine) throw new KernelError(EINVAL, `hmm_mirror_register: ${mm} and ${mirror.device} belong to different engines`);
  if (mirror.state !== 'new') throw new KernelError(EEXIST, `hmm_mirror_register: ${mirror} was already registered (state ${mirror.state})`);
  mm.checkAlive('hmm_mirror_register');
  mm.engine.mightSleep('hmm_mirror_register');
  mirror.state = 'registering';
  let hmm: Hmm | undefined;
  await mm.mmapLock.downWrite();
  try {
    hmm = mmHmm.get(mm);
    if (hmm === undefined) {
      const created = new Hmm(mm);
      const ret = await __mmuNotifierRegister(created.notifier, mm);
      if (ret !== 0) {
        mirror.state = 'new';
        return ret;
      }
      mmHmm.set(mm, created);
      hmm = created;
    }
    await hmm.rwsem.downWrite();
    hmm.mirrors.unshift(mirror);
    mirror.hmm = hmm;
    mirror.state = 'live';
    hmm.rwsem.upWrite();
    mirror.device.mirrors.push(mirror);
  } finally {
    mm.mmapLock.upWrite();
  }
  traceMirror(hmm, 'hmm2015.register', mirror);
  return 0;
}

/**
 * hmm_mirror_unregister: stops mirroring. Tears the mirror down (a MUNMAP of everything, then
 * device.release) unless the mm's release already did, and destroys the Hmm with its last
 * mirror (takes mmap_lock for write, unregisters the notifier). It sleeps: calling it from a
 * device op, or holding a lock the update op takes, deadlocks (as in the patch). Like the
 * patch's hmm_mirror_kill, the teardown does not wait for device faults in flight: the driver
 * must not fault on the mirror while unregistering it.
 * Throws KernelError(EINVAL) for a mirror that is not registered or already unregistered.
 */
export async function hmmMirrorUnregister(mirror: HmmMirror): Promise<void> {
  if (!(mirror instanceof HmmMirror)) throw new KernelError(EINVAL, `hmm_mirror_unregister: not an HmmMirror: ${String(mirror)}`);
  const hmm = mirror.hmm;
  if (hmm === null || mirror.state === 'new' || mirror.state === 'registering') throw new KernelError(EINVAL, `hmm_mirror_unregister: ${mirror} is not registered`);
  if (mirror.unregistered) throw new KernelError(EINVAL, `hmm_mirror_unregister: ${mirror} was already unregistered`);
  const mm = hmm.mm;
  mm.engine.mightSleep('hmm_mirror_unregister');
  mirror.unregistered = true;
  await mirrorKill(hmm, mirror);
  traceMirror(hmm, 'hmm2015.unregister', mirror);
  // hmm_unref -> hmm_destroy: the last mirror takes the Hmm with it (under mmap_lock, which
  // serializes with a registration that would find it in mm->hmm).
  let destroy = false;
  await mm.mmapLock.downWrite();
  if (hmm.mirrors.length === 0 && mmHmm.get(mm) === hmm) {
    mmHmm.delete(mm);
    hmm.dead = true;
    destroy = true;
  }
  mm.mmapLock.upWrite();
  if (destroy) await mmuNotifierUnregister(hmm.notifier, mm);
}

// ---- the device fault ----

/**
 * hmm_mirror_fault_pmd for [s, e) (within one PMD): fills the mirror table from the CPU page
 * table under dirLock. The CPU entries are read without the ptl, as the patch's
 * pte_offset_map: every change that could make the read stale is bracketed by an
 * invalidation, which waits for this fault. Returns where it stopped: `e` when the whole span
 * was mirrored, else the first page that needs a CPU fault (-ENOENT).
 */
function fillPmd(mirror: HmmMirror, mm: MmStruct, s: number, e: number, write: boolean): number {
  const v0 = vpnOf(s);
  const v1 = vpnOf(e);
  const cpu = mm.pgtable.leafAt(v0);
  if (cpu === null) return s; // pmd_none: -ENOENT
  const table = mirror.pt;
  const base = v0 & 511;
  const cbits = cpu.bits;
  const cpfns = cpu.pfn;
  let stop = e;
  let mismatch = -1;
  let stale = 0;
  table.dirLock.lock();
  let leaf = table.pt.leafAt(v0); // allocated at the first entry filled (hmm_pt_iter_populate)
  for (let k = 0; k < v1 - v0; k++) {
    const i = base + k;
    const b = cbits[i]!;
    if ((b & (PTE_PRESENT | PTE_PROTNONE)) !== PTE_PRESENT || (write && !(b & PTE_WRITE))) {
      stop = s + k * PAGE_SIZE;
      break;
    }
    const pfn = cpfns[i]!;
    const m = leaf === null ? 0 : leaf.bits[i]!;
    if (!(m & HMM_PTE_VALID)) {
      leaf ??= table.pt.leafFor(v0);
      leaf.setIndex(i, pfn, HMM_PTE_VALID | (b & PTE_WRITE ? HMM_PTE_WRITE : 0));
      table.nvalid++;
    } else if (leaf!.pfn[i] !== pfn) {
      mismatch = pfn;
      stale = leaf!.pfn[i]!;
      stop = s + k * PAGE_SIZE;
      break;
    } else if (b & PTE_WRITE) {
      leaf!.bits[i] = m | HMM_PTE_WRITE;
    }
  }
  table.dirLock.unlock();
  if (mismatch >= 0) {
    mm.engine.bug(new KernelBug(`BUG: hmm_mirror_fault: ${mirror} maps pfn ${stale} at 0x${stop.toString(16)} but the CPU maps pfn ${mismatch} (a stale mirror entry)`));
  }
  return stop;
}

/** hmm_mm_fault: faults the CPU pages of [from, ev.end) with mmap_lock held for read. */
async function mmFault(mm: MmStruct, ev: HmmEvent, from: number, write: boolean): Promise<number> {
  const flags = (write ? FAULT_FLAG_WRITE : 0) | FAULT_FLAG_REMOTE;
  for (let a = from; a < ev.end; a += PAGE_SIZE) {
    const r = await handleMmFault(mm, a, flags);
    if (r === -ENOMEM) return -ENOMEM;
    if (r < 0) return -EFAULT; // "Same error code for all other cases."
  }
  return 0;
}

/** hmm_mirror_handle_fault. Caller holds mmap_lock for read. */
async function mirrorHandleFault(mirror: HmmMirror, ev: HmmEvent, vma: Vma): Promise<number> {
  const hmm = mirror.hmm!;
  const mm = hmm.mm;
  const e = mm.engine;
  const write = ev.etype === HMM_DEVICE_WFAULT;
  if (write && !(vma.flags & VM_WRITE)) return -EACCES;
  let ret = await deviceFaultStart(hmm, ev);
  if (ret !== 0) return ret;
  let addr = ev.start; // the device has been updated for [ev.start, addr)
  let walked = addr; // mirror_fault.addr: the walk mirrored [addr, walked)
  for (;;) {
    if (ev.backoff) {
      ret = -EAGAIN;
      break;
    }
    if (addr >= ev.end) {
      ret = 0;
      break;
    }
    // walk_page_range(addr, ev.end): one PMD (2 MiB) at a time, checking backoff at each.
    walked = addr;
    ret = 0;
    for (let s = addr; s < ev.end; ) {
      if (s !== addr) await e.yield(); // preemptible between PMDs (not under dirLock)
      if (ev.backoff) {
        ret = -EAGAIN;
        break;
      }
      const pmdEnd = Math.min(ev.end, (Math.floor(s / PMD_SIZE) + 1) * PMD_SIZE);
      walked = fillPmd(mirror, mm, s, pmdEnd, write);
      if (walked !== pmdEnd) {
        ret = -ENOENT;
        break;
      }
      s = pmdEnd;
    }
    if (ret !== 0) break;
    ret = await deviceUpdate(mirror, ev);
    if (ret !== 0) break;
    addr = walked;
  }
  if (ret === -EAGAIN) mirror.stats.backoffs++;
  hmmDeviceFaultEnd(hmm, ev);
  if (ret === -ENOENT) {
    // After fault_end: a CPU fault may start an invalidation (COW), which would wait for us.
    const r = await mmFault(mm, ev, walked, write);
    ret = r !== 0 ? r : -EAGAIN;
  }
  return ret;
}

/** The body of hmm_mirror_fault under mmap_lock (read): the VMA checks, then the fault. */
async function mirrorFaultLocked(mirror: HmmMirror, ev: HmmEvent): Promise<number> {
  const mm = mirror.hmm!.mm;
  const vma = mm.vmas.findVma(ev.start); // find_vma_intersection(start, end)
  if (vma === null || vma.start >= ev.end) return -EFAULT;
  if (vma.start > ev.start) {
    ev.end = vma.start; // as the patch: the event now names the hole
    return -EFAULT;
  }
  ev.end = Math.min(ev.end, vma.end);
  if (vma.flags & (VM_IO | VM_PFNMAP)) return -EFAULT;
  return mirrorHandleFault(mirror, ev, vma);
}

/**
 * hmm_mirror_fault: makes the device able to access [ev.start, ev.end) (for writing with
 * DEVICE_WFAULT): faults the CPU pages as needed, fills the mirror table and calls
 * device.update(mirror, ev) with the range valid and this fault on hmm.deviceFaults, so that
 * any invalidation of the range calls its own device update after this one. Takes mmap_lock
 * for read; retries on -EAGAIN (forever, as the patch: see mirror.stats.retries).
 * Returns 0; -EFAULT (no VMA at ev.start, a special VMA, or the CPU fault failed: e.g. no
 * access to a PROT_NONE page); -EACCES (a write fault on a VMA without VM_WRITE); -ENOMEM;
 * -ENODEV (the mirror is not live: torn down by mm release or unregister); or the device
 * update's error. ev.end is clipped to the VMA containing ev.start.
 * Throws KernelError(EINVAL) for a bad mirror or event or an etype that is not a device fault;
 * KernelBug if `ev` is already an active fault.
 */
export async function hmmMirrorFault(mirror: HmmMirror, ev: HmmEvent): Promise<number> {
  if (!(mirror instanceof HmmMirror)) throw new KernelError(EINVAL, `hmm_mirror_fault: not an HmmMirror: ${String(mirror)}`);
  if (!(ev instanceof HmmEvent)) throw new KernelError(EINVAL, `hmm_mirror_fault: not an HmmEvent: ${String(ev)}`);
  checkFaultEvent('hmm_mirror_fault', ev);
  const e = mirror.device.engine;
  e.mightSleep('hmm_mirror_fault');
  e.bugOn(ev.active, `hmm_mirror_fault: ${ev} is already an active device fault`);
  if (mirror.state !== 'live') return -ENODEV;
  const hmm = mirror.hmm!;
  const mm = hmm.mm;
  ev.faulter = mirror.name;
  mirror.stats.faults++;
  let retries = 0;
  let ret: number;
  for (;;) {
    if (mirror.state !== 'live') {
      ret = -ENODEV;
      break;
    }
    await mm.mmapLock.downRead(); // a preemption point: a retry lets the others run first
    try {
      ret = await mirrorFaultLocked(mirror, ev);
    } finally {
      mm.mmapLock.upRead();
    }
    hmm.wq.wakeUp();
    if (ret !== -EAGAIN) break;
    mirror.stats.retries++;
    retries++;
  }
  const t = e.trace;
  if (t.active && t.wants('hmm2015.mirror_fault')) t.emit('hmm2015.mirror_fault', { mm: mm.id, mirror: mirror.name, etype: ev.etype, start: ev.start, end: ev.end, ret, retries });
  return ret;
}
