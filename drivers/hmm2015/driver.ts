/**
 * hmm2015: a mirroring-device driver on the 2015 HMM API (the seed: hmm_mirror_register,
 * hmm_mirror_fault, the device `update` op), gluing the mock GPU (Device) to HMM.
 *
 * Models: the driver half of the 2015 HMM series ("HMM: add device page fault support v4",
 * HMM v9, Jul 2015: a device driver registers an hmm_device with update/release ops, one
 * hmm_mirror per process, and calls hmm_mirror_fault from its fault handler), shaped like the
 * drivers that later drove replayable fault buffers: nouveau_svm.c (drain the buffer, sort,
 * service per page, cancel what cannot be serviced, one replay) and NVIDIA UVM (batches,
 * duplicate coalescing, overflow recovery). See README.md next to this file for the design.
 *
 * Objects: one Device (the hardware) with one DeviceAddressSpace, one HmmDevice, one HmmMirror
 * of the bound mm, and one worker task servicing the fault buffer.
 *
 * The fault path (worker task):
 *   waitForInterrupt -> [serviceLock] clear overflow -> drain a batch -> coalesce per page,
 *   sort by address -> per page: skip if the device page table already permits the access;
 *   else hmmMirrorFault(mirror, DEVICE_RFAULT/WFAULT over [page, page + window)) which, with
 *   the fault on hmm.deviceFaults, calls update(fault event): program the device page table
 *   from mirror.pt -> failure (-EFAULT, -EACCES, -ENODEV, ...): cancel the page's records
 *   (the contexts get DeviceFaultError) -> replay the address space after each batch.
 * The invalidation path (update op with a CPU event, from hmm_update inside
 * invalidate_range_start, before the CPU page table changes):
 *   pteMask clears VALID (MUNMAP, MIGRATE): clear the device entries; clears WRITE (FORK,
 *   WRITE_PROTECT): remap them read-only; either way first move "device dirty" to the mirror
 *   table (mirror.pt.setDirty: the mock has no hardware dirty bit, so a writable device
 *   mapping counts as written), then shoot the device TLB down and WAIT for the fence. Only
 *   then does it return, and only then may the CPU entry change and the frame go.
 *
 * Locks (what protects what):
 * - serviceLock (Mutex, class 'hmm2015drv.service'): `state` ('bound' -> 'unbinding') against
 *   the worker's servicing: the worker holds it for a whole service pass; unbind takes it to
 *   leave 'bound', so that once unbind goes on, no hmmMirrorFault of ours is in flight or will
 *   start (2015's hmm_mirror_unregister does not wait for faults in flight).
 * - the Device's tables and TLBs have no lock (hardware, synchronous methods); each update op
 *   first charges ptWriteNs, then reads mirror.pt / the device table and programs the device
 *   page table in one synchronous step, so no driver lock is needed around them: HMM's
 *   two-sided protocol already orders a fault's update before any overlapping invalidation's
 *   update (hmm2015.ts, diagrams A and B), and concurrent overlapping invalidations read the
 *   device table only after their sleep.
 * - `released`, `liveWarps`: changed synchronously (one task runs at a time).
 * Lock order: serviceLock -> mmap_lock -> hmm.rwsem -> (hmm.lock, dirLock: HMM's). The update
 * and release ops run under mmap_lock or hmm.rwsem and take no driver lock.
 *
 * The teardown gap (kept from 2015, see src/hmm/hmm2015.ts): the mirror's teardown (mm exit,
 * unregister) does not wait for its device faults in flight, which may still fill the dead
 * mirror's table and call update after release. The fault update checks `released` and the
 * mirror state in the same synchronous step as it programs the device, and refuses (-EIO: the
 * fault fails, its records are cancelled); the driver never reads a dead mirror's table.
 *
 * Simplifications: one address space per binding; a read fault maps read-only (a page becomes
 * device-writable only through a write fault), a write fault maps read-write-atomic (the 2015
 * API has no exclusive access: the mock's system memory takes device atomics as PCIe/NVLink
 * atomics would); an upgrade needs no TLB shootdown (a stale read-only TLB entry faults once
 * and the replayed access walks the upgraded table).
 *
 * cpuUpdate, shootdown and mirrorDead are protected so that tests can build broken variants
 * (no zap, no shootdown, no teardown guard) and show that the race harness catches them.
 */
import {
  DEVICE_VA_LIMIT,
  DEV_PTE_ATOMIC,
  DEV_PTE_VALID,
  DEV_PTE_WRITE,
  Device,
  type DeviceAddressSpace,
  type DeviceJob,
  type DeviceKernel,
  type DeviceOptions,
  EINVAL,
  type Engine,
  HMM_DEVICE_RFAULT,
  HMM_DEVICE_WFAULT,
  HMM_PTE_VALID,
  HMM_PTE_WRITE,
  HMM_VM_END,
  HmmDevice,
  HmmEvent,
  HmmMirror,
  KernelError,
  type LaunchOptions,
  MmStruct,
  Mutex,
  PAGE_SIZE,
  PhysMem,
  type Task,
  WaitQueue,
  errnoName,
  hmmMirrorFault,
  hmmMirrorRegister,
  hmmMirrorUnregister,
  EIO,
  type FaultRecord,
} from 'hmm-emu';
import { accessRank, coalesceFaults, type FaultGroup } from './fault-batch.js';

/** Options of Hmm2015Driver.bind. Every field is optional; each says its default. */
export interface Hmm2015DriverOptions {
  /** Name of the Device, the HmmDevice and the worker task. Default 'gpu0'. */
  readonly name?: string;
  /**
   * Pages per device fault event: hmmMirrorFault is called over [page, page + n pages)
   * (clipped by HMM to the VMA holding the page, and to HMM_VM_END). 1 (the default, as
   * nouveau's window) faults exactly the page; more is read-ahead, and for a write fault it
   * write-faults (COW-breaks) the whole window. An integer in [1, 512].
   */
  readonly faultWindowPages?: number;
  /** Records drained per batch (UVM: 256). A replay follows each batch. An integer in [1, 65536]. Default 256. */
  readonly batchSize?: number;
  /**
   * Virtual time (ns) the driver spends writing device page-table entries in an update op that
   * changes them (pushing the PTE writes and waiting for them, as nouveau's vmm update): the
   * fault stays on hmm.deviceFaults meanwhile, so overlapping invalidations back off and wait.
   * A finite number >= 0. Default 200.
   */
  readonly ptWriteNs?: number;
  /**
   * Hardware options of the Device (TLB, fault buffer entries, cost model, ...). The name comes
   * from `name`; device memory defaults to none (frames 0): the 2015 API has no migration.
   */
  readonly device?: Omit<DeviceOptions, 'name'>;
}

/** Counters of one binding. */
export interface Hmm2015DriverStats {
  /** Service passes (one per interrupt taken). */
  passes: number;
  /** Batches drained (a replay follows each). */
  batches: number;
  /** Fault records read. */
  records: number;
  /** Records folded into another of the same page in their batch. */
  coalesced: number;
  /** Pages whose access the device page table already permitted (serviced by an earlier record or window). */
  skipped: number;
  /** Records of a job already killed or gone: dropped. */
  stale: number;
  /** hmmMirrorFault calls. */
  faults: number;
  /** hmmMirrorFault calls that failed (their records were cancelled). */
  faultErrors: number;
  /** Jobs killed by a cancel from this driver. */
  cancelled: number;
  /** Fault-buffer overflows seen (flag cleared, then replayed). */
  overflows: number;
  /** Device replays issued. */
  replays: number;
  /** update() calls for device faults that programmed the device page table. */
  faultUpdates: number;
  /** update() calls for CPU events (FORK, MIGRATE, MUNMAP, WRITE_PROTECT). */
  cpuUpdates: number;
  /** Device entries cleared by CPU events and release. */
  zapped: number;
  /** Device entries made read-only by CPU events. */
  writeProtected: number;
  /** Device-dirty pages handed to the mirror table (mirror.pt.setDirty). */
  dirtied: number;
  /** TLB shootdowns issued and waited for. */
  shootdowns: number;
  /** Fault updates refused because the mirror was already torn down (the 2015 teardown gap). */
  deadUpdates: number;
}

function newStats(): Hmm2015DriverStats {
  return {
    passes: 0,
    batches: 0,
    records: 0,
    coalesced: 0,
    skipped: 0,
    stale: 0,
    faults: 0,
    faultErrors: 0,
    cancelled: 0,
    overflows: 0,
    replays: 0,
    faultUpdates: 0,
    cpuUpdates: 0,
    zapped: 0,
    writeProtected: 0,
    dirtied: 0,
    shootdowns: 0,
    deadUpdates: 0,
  };
}

/** DEV_PTE_* bits an access needs, by FAULT_ACCESS rank (prefetch, read, write, atomic). */
const NEED: readonly number[] = [DEV_PTE_VALID, DEV_PTE_VALID, DEV_PTE_WRITE, DEV_PTE_ATOMIC];
const RWA = DEV_PTE_WRITE | DEV_PTE_ATOMIC;

type DriverState = 'binding' | 'bound' | 'unbinding' | 'unbound';

/** One binding of a mock GPU to one mm through the 2015 HMM mirror API. */
export class Hmm2015Driver {
  /** The hardware. */
  readonly device: Device;
  /** The device address space mirroring `mm`. */
  readonly as: DeviceAddressSpace;
  /** The 2015 hmm_device (ops update and release). */
  readonly hmmDevice: HmmDevice;
  /** The 2015 hmm_mirror of `mm`. */
  readonly mirror: HmmMirror;
  readonly stats: Hmm2015DriverStats = newStats();
  /** Pages per fault event. */
  readonly faultWindowPages: number;
  /** Records per batch. */
  readonly batchSize: number;
  /** Virtual ns per page-table update. */
  readonly ptWriteNs: number;

  /** release() ran: the mirror is dead, its table is never read again (teardown gap guard). */
  private released = false;
  private state: DriverState = 'binding';
  private readonly serviceLock: Mutex;
  private liveWarps = 0;
  private readonly warpsWq: WaitQueue;
  private worker: Task<void> | null = null;

  /**
   * Binds a new mock GPU to `mm`: creates the Device and its address space, registers the
   * mirror (hmmMirrorRegister takes mmap_lock for write) and starts the fault worker. Must run
   * in a task. Throws KernelError: EINVAL for bad options or an mm of another engine; the errno
   * of a failed registration.
   */
  static async bind(engine: Engine, phys: PhysMem, mm: MmStruct, opts: Hmm2015DriverOptions = {}): Promise<Hmm2015Driver> {
    const d = new this(engine, phys, mm, opts);
    await d.start();
    return d;
  }

  protected constructor(
    readonly engine: Engine,
    readonly phys: PhysMem,
    readonly mm: MmStruct,
    opts: Hmm2015DriverOptions,
  ) {
    if (opts === null || typeof opts !== 'object') throw new KernelError(EINVAL, `Hmm2015Driver: options must be an object: ${String(opts)}`);
    if (!(phys instanceof PhysMem)) throw new KernelError(EINVAL, `Hmm2015Driver: not a PhysMem: ${String(phys)}`);
    if (!(mm instanceof MmStruct)) throw new KernelError(EINVAL, `Hmm2015Driver: not an MmStruct: ${String(mm)}`);
    if (mm.engine !== engine || phys !== mm.phys) throw new KernelError(EINVAL, `Hmm2015Driver: ${mm} belongs to another engine or physical memory`);
    const name = opts.name ?? 'gpu0';
    if (typeof name !== 'string' || name.length === 0) throw new KernelError(EINVAL, `Hmm2015Driver: name must be a non-empty string: ${JSON.stringify(name)}`);
    const win = opts.faultWindowPages ?? 1;
    if (!Number.isInteger(win) || win < 1 || win > 512) throw new KernelError(EINVAL, `Hmm2015Driver ${name}: faultWindowPages must be an integer in [1, 512]: ${String(win)}`);
    const batch = opts.batchSize ?? 256;
    if (!Number.isInteger(batch) || batch < 1 || batch > 65536) throw new KernelError(EINVAL, `Hmm2015Driver ${name}: batchSize must be an integer in [1, 65536]: ${String(batch)}`);
    const ptw = opts.ptWriteNs ?? 200;
    if (typeof ptw !== 'number' || !Number.isFinite(ptw) || ptw < 0) throw new KernelError(EINVAL, `Hmm2015Driver ${name}: ptWriteNs must be a finite number >= 0: ${String(ptw)}`);
    const devOpts = opts.device ?? {};
    if (devOpts === null || typeof devOpts !== 'object') throw new KernelError(EINVAL, `Hmm2015Driver ${name}: device options must be an object: ${String(devOpts)}`);
    this.faultWindowPages = win;
    this.batchSize = batch;
    this.ptWriteNs = ptw;
    this.device = new Device(engine, phys, { memory: { frames: 0 }, ...devOpts, name });
    this.as = this.device.createAddressSpace();
    this.hmmDevice = new HmmDevice(engine, name, {
      update: (mirror, ev) => this.update(mirror, ev),
      release: (mirror) => this.release(mirror),
    });
    this.mirror = new HmmMirror(this.hmmDevice, `${name}.mirror`);
    this.serviceLock = new Mutex(engine, `${name}.service`, { lockClass: 'hmm2015drv.service' });
    this.warpsWq = new WaitQueue(engine, `${name}.warps`);
  }

  private async start(): Promise<void> {
    const ret = await hmmMirrorRegister(this.mirror, this.mm);
    if (ret !== 0) {
      this.device.destroyAddressSpace(this.as);
      this.state = 'unbound';
      throw new KernelError(-ret, `Hmm2015Driver ${this.device.name}: hmm_mirror_register failed: ${errnoName(ret)}`);
    }
    this.state = 'bound';
    this.worker = this.engine.spawn(`${this.device.name}.fault_worker`, () => this.faultWorker());
  }

  /** True between a successful bind and the start of unbind. */
  get bound(): boolean {
    return this.state === 'bound';
  }

  /** True once the mirror was torn down (mm exit or unbind): the device maps nothing of the mm. */
  get isReleased(): boolean {
    return this.released;
  }

  /**
   * Launches `kernel` on the mirror's address space (Device.launch). Not a scheduling point.
   * KernelError EINVAL once unbinding started.
   */
  launch<T>(opts: LaunchOptions, kernel: DeviceKernel<T>): DeviceJob<T> {
    if (this.state !== 'bound') throw new KernelError(EINVAL, `${this.device.name} launch: the driver is ${this.state}`);
    if (typeof kernel !== 'function') throw new KernelError(EINVAL, `${this.device.name} launch: kernel must be an async function: ${String(kernel)}`);
    const warps = opts?.warps ?? 1;
    const job = this.device.launch(this.as, opts, async (ctx) => {
      try {
        return await kernel(ctx);
      } finally {
        if (--this.liveWarps === 0) this.warpsWq.wakeUpAll();
      }
    });
    this.liveWarps += warps; // Device.launch validated `warps`; the warps start after this returns
    return job;
  }

  /**
   * Unbinds: no fault is serviced after this starts (new records are cancelled), the mirror is
   * unregistered (unless the mm's exit already tore it down: then only the Hmm goes), every job
   * launched here is waited for (a job that touches memory faults and is cancelled; one that
   * never does must end by itself), the worker stops and the address space is destroyed.
   * Must run in a task that holds no lock the update op needs. KernelError EINVAL if not bound.
   */
  async unbind(): Promise<void> {
    if (this.state !== 'bound') throw new KernelError(EINVAL, `${this.device.name} unbind: the driver is ${this.state}`);
    this.engine.mightSleep('Hmm2015Driver.unbind');
    // Pairs with faultWorker: after this section no hmmMirrorFault of ours runs or starts.
    await this.serviceLock.lock();
    this.state = 'unbinding';
    this.serviceLock.unlock();
    await hmmMirrorUnregister(this.mirror);
    await this.warpsWq.waitEvent(() => this.liveWarps === 0);
    this.device.stop();
    if (this.worker !== null) await this.worker.join();
    this.device.destroyAddressSpace(this.as);
    this.state = 'unbound';
  }

  // ---- the fault path ----

  private async faultWorker(): Promise<void> {
    while (await this.device.waitForInterrupt()) {
      await this.serviceLock.lock();
      try {
        await this.servicePass();
      } finally {
        this.serviceLock.unlock();
      }
    }
  }

  /** One interrupt's worth: drain in batches, service, replay after each batch. Caller holds serviceLock. */
  private async servicePass(): Promise<void> {
    const dev = this.device;
    const fb = dev.faultBuffer;
    this.stats.passes++;
    // Clear before draining: a record dropped after this sets the flag (and the interrupt) again.
    const overflow = fb.overflow;
    if (overflow) {
      fb.clearOverflow();
      this.stats.overflows++;
    }
    let replayed = false;
    while (fb.length > 0) {
      const recs = fb.drain(this.batchSize);
      this.stats.batches++;
      this.stats.records += recs.length;
      const groups = coalesceFaults(recs);
      this.stats.coalesced += recs.length - groups.length;
      for (const g of groups) await this.serviceGroup(g);
      this.replay();
      replayed = true;
    }
    // Dropped faults are not in the buffer: their accesses are still stalled and re-fault when
    // replayed.
    if (overflow && !replayed) this.replay();
  }

  private replay(): void {
    if (this.as.isDestroyed) return;
    this.device.replay(this.as.asid);
    this.stats.replays++;
  }

  private async serviceGroup(g: FaultGroup): Promise<void> {
    const rank = accessRank(g.access);
    // Records of contexts already killed (or finished) need nothing.
    const live = g.records.filter((r) => {
      const job = this.device.job(r.job);
      return job !== undefined && job.killed === null;
    });
    this.stats.stale += g.records.length - live.length;
    if (live.length === 0) return;
    if (g.asid !== this.as.asid || this.state !== 'bound' || this.released || g.address >= HMM_VM_END) {
      // Unknown instance (nouveau cancels it), a dying binding, or beyond what HMM mirrors.
      this.cancel(live);
      return;
    }
    const need = NEED[rank]!;
    if ((this.as.pageTable.flagsAt(g.address / PAGE_SIZE) & need) === need) {
      this.stats.skipped++;
      return;
    }
    const write = rank >= accessRank('write');
    const end = Math.min(g.address + this.faultWindowPages * PAGE_SIZE, HMM_VM_END);
    const ev = new HmmEvent(write ? HMM_DEVICE_WFAULT : HMM_DEVICE_RFAULT, g.address, end);
    this.stats.faults++;
    const ret = await hmmMirrorFault(this.mirror, ev);
    if (ret !== 0) {
      this.stats.faultErrors++;
      this.cancel(live);
    }
  }

  /** Cancels the contexts of `records` (a prefetch never stalls: nothing to cancel for it). */
  private cancel(records: readonly FaultRecord[]): void {
    for (const r of records) {
      if (r.access === 'prefetch') continue;
      if (this.device.cancelFault(r)) this.stats.cancelled++;
    }
  }

  // ---- the update and release ops ----

  /** hmm_device_ops.update. */
  private async update(mirror: HmmMirror, ev: HmmEvent): Promise<number> {
    if (ev.etype === HMM_DEVICE_RFAULT || ev.etype === HMM_DEVICE_WFAULT) return this.faultUpdate(mirror, ev);
    if (this.released || mirror !== this.mirror || this.as.isDestroyed) return 0; // nothing mapped any more
    this.stats.cpuUpdates++;
    return this.cpuUpdate(ev);
  }

  /**
   * A device fault's update: program the device page table from mirror.pt over the event.
   * HMM holds the fault on hmm.deviceFaults, so no overlapping invalidation runs its update
   * until this returns. Refuses (-EIO) a torn-down mirror: the teardown gap.
   */
  private async faultUpdate(mirror: HmmMirror, ev: HmmEvent): Promise<number> {
    if (this.ptWriteNs > 0) await this.engine.sleep(this.ptWriteNs);
    // From here to the programming: one synchronous step (no release can slip in between).
    if (this.mirrorDead(mirror)) {
      this.stats.deadUpdates++;
      return -EIO;
    }
    this.stats.faultUpdates++;
    const pt = mirror.pt;
    const dpt = this.as.pageTable;
    const write = ev.etype === HMM_DEVICE_WFAULT;
    let stale = false;
    for (let vpn = ev.start / PAGE_SIZE, end = ev.end / PAGE_SIZE; vpn < end; vpn++) {
      const b = pt.bitsAt(vpn);
      if (!(b & HMM_PTE_VALID)) continue;
      const pfn = pt.pfnAt(vpn);
      const want = write && b & HMM_PTE_WRITE ? RWA : 0;
      const old = dpt.flagsAt(vpn);
      if (old !== 0 && dpt.pfnAt(vpn) === pfn) {
        if (!(b & HMM_PTE_WRITE) && old & DEV_PTE_WRITE) {
          // More than the mirror grants: cannot happen while every CPU update reached us; mend it.
          this.as.map(vpn * PAGE_SIZE, pfn, 0);
          stale = true;
        } else if ((old & want) !== want) {
          this.as.map(vpn * PAGE_SIZE, pfn, want); // an upgrade: no shootdown needed
        }
        continue;
      }
      if (old !== 0) stale = true; // another frame: the old translation must go
      this.as.map(vpn * PAGE_SIZE, pfn, want);
    }
    if (stale) await this.shootdown(ev.start, ev.end);
    return 0;
  }

  /**
   * The teardown-gap guard: true once the mirror was torn down (release ran, or HMM marked it
   * dead). A fault update then must not touch the device. Overridable for broken variants.
   */
  protected mirrorDead(mirror: HmmMirror): boolean {
    return this.released || mirror !== this.mirror || mirror.state !== 'live' || this.as.isDestroyed;
  }

  /**
   * A CPU page-table update, before the CPU entries change: zap (pteMask without VALID) or
   * write-protect (without WRITE) the device entries of [ev.start, ev.end), handing device
   * dirtiness to the mirror table first, then shoot the device TLB down and wait for it.
   * Overridable so that tests can build broken variants.
   */
  protected async cpuUpdate(ev: HmmEvent): Promise<number> {
    const mask = ev.pteMask;
    if ((mask & (HMM_PTE_VALID | HMM_PTE_WRITE)) === (HMM_PTE_VALID | HMM_PTE_WRITE)) return 0;
    const zap = (mask & HMM_PTE_VALID) === 0;
    const s = ev.start / PAGE_SIZE;
    const e = ev.end / PAGE_SIZE;
    const dpt = this.as.pageTable;
    let mapped = 0;
    dpt.forEach(() => void mapped++, s, e);
    if (mapped > 0 && this.ptWriteNs > 0) await this.engine.sleep(this.ptWriteNs);
    // From here to the shootdown's issue: one synchronous step (the entries are read now).
    const writable: number[] = []; // vpn, pfn pairs
    dpt.forEach(
      (vpn, pfn, flags) => {
        if (flags & DEV_PTE_WRITE) writable.push(vpn, pfn);
      },
      s,
      e,
    );
    for (let i = 0; i < writable.length; i += 2) if (this.mirror.pt.setDirty(writable[i]!)) this.stats.dirtied++;
    let changed: number;
    if (zap) {
      changed = this.as.unmap(ev.start, ev.end);
      this.stats.zapped += changed;
    } else {
      for (let i = 0; i < writable.length; i += 2) this.as.map(writable[i]! * PAGE_SIZE, writable[i + 1]!, 0);
      changed = writable.length / 2;
      this.stats.writeProtected += changed;
    }
    // Another invalidation may have cleared these entries and still wait on its fence: ours,
    // issued after it, completes after it (fences complete in issue order).
    if (changed > 0 || this.device.pendingInvalidations > 0) await this.shootdown(ev.start, ev.end);
    return 0;
  }

  /**
   * Invalidates the device TLB for [start, end) (everything when end is DEVICE_VA_LIMIT) and
   * waits until the entries are gone. Overridable for broken variants.
   */
  protected async shootdown(start: number, end: number): Promise<void> {
    this.stats.shootdowns++;
    const fence = start === 0 && end === DEVICE_VA_LIMIT ? this.device.tlbInvalidateAll(this.as) : this.device.tlbInvalidate(this.as, start, end);
    await fence.wait();
  }

  /** hmm_device_ops.release: the mirror is gone; clear everything and never read its table again. */
  private async release(mirror: HmmMirror): Promise<void> {
    if (mirror !== this.mirror) return;
    this.released = true;
    if (this.as.isDestroyed) return;
    this.stats.zapped += this.as.unmap(0, DEVICE_VA_LIMIT);
    await this.shootdown(0, DEVICE_VA_LIMIT);
  }
}
