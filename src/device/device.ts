/**
 * The mock GPU: a mirroring device's hardware, as its driver programs it. It knows nothing of
 * HMM, notifiers or the mm; a driver (drivers/) maps pages into its page tables, invalidates its
 * TLBs, services its fault buffer, replays and cancels.
 *
 * Models: a GPU with replayable faults as NVIDIA UVM and nouveau drive it
 * (kernel-open/nvidia-uvm/uvm_gpu_replayable_faults.c, drivers/gpu/drm/nouveau/nouveau_svm.c):
 * - address spaces, each with a page table and a TLB (address-space.ts, pagetable.ts, tlb.ts);
 * - compute engines running jobs as warps whose accesses translate, fault and stall (engines.ts);
 * - a replayable fault buffer with an overflow flag and an interrupt (fault-buffer.ts, here);
 * - replay (every stalled access of an address space, or of all, retries its translation) and
 *   cancel (the faulting context is killed: its accesses fail with DeviceFaultError);
 * - TLB invalidation with completion fences (shootdown.ts), a copy engine (copy-engine.ts);
 * - device memory exposed as a DevPagemap whose migrate_to_ram and page_free go to handlers
 *   the driver installs (before that, migrate_to_ram fails with -EFAULT: SIGBUS for the CPU).
 *
 * The interrupt protocol (pairs with the driver's worker loop):
 *
 *   device                                   driver worker
 *   write record at PUT (or drop: overflow)  while (await dev.waitForInterrupt()) {
 *   irqPending = true; wake the worker         if (fb.overflow) fb.clearOverflow(), replay later
 *                                              recs = fb.drain(); service; replay
 *                                            }
 *
 * `irqPending` is a level cleared by waitForInterrupt as it returns, so a record written while
 * the driver drains raises it again and the next wait returns at once: no record is missed.
 *
 * What protects what: all device state changes synchronously (hardware registers and tables;
 * no scheduling point inside a method), atomic under the engine's one-task rule; the fault
 * buffer, the TLBs and the page tables have no locks, as in hardware. The driver brings its own
 * locks for its own protocol.
 *
 * Simplifications: 4 KiB pages only; one fault buffer for all address spaces; no engine
 * occupancy limits (any number of warps run concurrently); no non-replayable faults.
 */
import { EBUSY, EFAULT, EINVAL, KernelError, WaitQueue, type Engine } from '../sim/index.js';
import { PAGE_SIZE, type PhysMem, type VmFault } from '../mm/index.js';
import { DevPagemap, MEMORY_DEVICE_COHERENT, MEMORY_DEVICE_PRIVATE } from '../hmm/index.js';
import { DEVICE_VA_LIMIT, DeviceAddressSpace, checkPageAddr } from './address-space.js';
import { CopyEngine } from './copy-engine.js';
import { DeviceCost, type DeviceCostOptions } from './cost.js';
import { DeviceJob, WarpContext, accessName, type DeviceKernel, type LaunchOptions } from './engines.js';
import { DeviceFaultError } from './errors.js';
import { FAULT_ACCESS, FaultBuffer, type FaultAccess, type FaultRecord } from './fault-buffer.js';
import { Shootdown, type TlbFence } from './shootdown.js';
import { DeviceStats } from './stats.js';
import { type TlbOptions, tlbGeometry } from './tlb.js';

declare module '../sim/trace.js' {
  interface TraceEventMap {
    /**
     * A device access touched memory: emitted in the same synchronous step as the byte access
     * (no scheduling point between the translation and the touch). `pfn` is the frame the
     * translation gave, `generation` that frame's generation at this instant; `loaded` is the
     * value read (load, atomic), `stored` the value written (store, atomic; null for a failed CAS).
     */
    'device.access': {
      device: string;
      asid: number;
      engine: number;
      job: number;
      warp: number;
      addr: number;
      size: number;
      kind: 'load' | 'store' | 'atomic';
      pfn: number;
      generation: number;
      write: boolean;
      tlbHit: boolean;
      loaded: bigint | null;
      stored: bigint | null;
    };
    /** A fault record was written (`dropped` false) or dropped for lack of room (`dropped` true). `address` is page aligned. */
    'device.fault': { device: string; asid: number; engine: number; job: number; address: number; access: FaultAccess; recordSeq: number; dropped: boolean };
    /** replay(): `asid` null for all address spaces; `stalled` accesses released. */
    'device.replay': { device: string; asid: number | null; stalled: number };
    /** A job was killed by a cancel; `address` and `access` are what its DeviceFaultError names. */
    'device.cancel': { device: string; asid: number; job: number; address: number; access: FaultAccess };
    /** A TLB invalidation of [start, end) (addresses; [0, 2**48) with `all`) was issued or completed; `entries` dropped at completion. */
    'device.tlb_invalidate': { device: string; asid: number; start: number; end: number; all: boolean; phase: 'issued' | 'completed'; entries: number };
    /**
     * The page walker cached a translation in the TLB (a fill after a walk found a permitted
     * entry; it may have evicted another entry of the set, which is not reported).
     */
    'device.tlb_fill': { device: string; asid: number; vpn: number; pfn: number; write: boolean; atomic: boolean };
    /** A device page-table entry was written. */
    'device.pt_map': { device: string; asid: number; vpn: number; pfn: number; write: boolean; atomic: boolean };
    /** Device page-table entries of [start, end) (addresses) were cleared; `pages` valid entries went. */
    'device.pt_unmap': { device: string; asid: number; start: number; end: number; pages: number };
    /** The copy engine copied frame `src` to frame `dst` (emitted when the bytes land). */
    'device.copy': { device: string; dst: number; src: number };
  }
}

/** Device memory options. */
export interface DeviceMemoryOptions {
  /** Frames (4 KiB each) of device memory; 0 for none. Default 4096 (16 MiB). */
  readonly frames?: number;
  /** 'private' (MEMORY_DEVICE_PRIVATE, the default) or 'coherent' (MEMORY_DEVICE_COHERENT). */
  readonly type?: 'private' | 'coherent';
  /** pgmap->owner, what hmm_range_fault and migrate_vma match. Default: the Device itself. */
  readonly owner?: unknown;
}

/** The handlers the driver installs for its device memory (dev_pagemap_ops). */
export interface DeviceMemoryOps {
  /** migrate_to_ram: called on a CPU fault on a device-private entry; 0 or a negative errno. */
  readonly migrateToRam: (vmf: VmFault) => Promise<number>;
  /** page_free: a device frame's last reference went (it is already back on the free list). */
  readonly pageFree?: (pfn: number) => void;
}

/** Options of a Device. */
export interface DeviceOptions {
  /** Name in traces and task names. Default 'gpu0'. */
  readonly name?: string;
  /** Compute engines (the `engine` of fault records). An integer in [1, 64]. Default 1. */
  readonly computeEngines?: number;
  /** TLB geometry of each address space. Default 2048 entries, 16 ways. */
  readonly tlb?: TlbOptions;
  /** Fault buffer entries. An integer in [1, 2**20]. Default 1024. */
  readonly faultBufferEntries?: number;
  /** Device memory. Default 4096 device-private frames owned by the device. */
  readonly memory?: DeviceMemoryOptions;
  /** Cost model (see DeviceCostOptions for the defaults). */
  readonly cost?: DeviceCostOptions;
}

export class Device {
  readonly name: string;
  readonly cost: DeviceCost;
  /** Hardware counters (read directly, or `stats.snapshot()`). */
  readonly stats = new DeviceStats();
  readonly computeEngines: number;
  /** The replayable fault buffer (the driver drains it after an interrupt). */
  readonly faultBuffer: FaultBuffer;
  /** Device memory as a pagemap, or null when the device has none. */
  readonly memory: DevPagemap | null;
  readonly copyEngine: CopyEngine;

  private readonly tlbEntries: number;
  private readonly tlbWays: number;
  private readonly spaces = new Map<number, DeviceAddressSpace>();
  private nextAsid = 1;
  private readonly liveJobs = new Map<number, DeviceJob<unknown>>();
  private nextJobId = 1;
  private faultSeq = 0;
  private irqPending = false;
  private stopped = false;
  private readonly irqWq: WaitQueue;
  private readonly shootdown: Shootdown;
  private memOps: DeviceMemoryOps | null = null;

  constructor(
    readonly engine: Engine,
    readonly phys: PhysMem,
    opts: DeviceOptions = {},
  ) {
    if (opts === null || typeof opts !== 'object') throw new KernelError(EINVAL, `Device: options must be an object: ${String(opts)}`);
    const name = opts.name ?? 'gpu0';
    if (typeof name !== 'string' || name.length === 0) throw new KernelError(EINVAL, `Device: name must be a non-empty string: ${JSON.stringify(name)}`);
    const ce = opts.computeEngines ?? 1;
    if (!Number.isInteger(ce) || ce < 1 || ce > 64) throw new KernelError(EINVAL, `Device ${name}: computeEngines must be an integer in [1, 64]: ${String(ce)}`);
    const [entries, ways] = tlbGeometry(opts.tlb, `Device ${name}`);
    const fbe = opts.faultBufferEntries ?? 1024;
    if (!Number.isInteger(fbe) || fbe < 1 || fbe > 1 << 20) throw new KernelError(EINVAL, `Device ${name}: faultBufferEntries must be an integer in [1, 2**20]: ${String(fbe)}`);
    const mem = opts.memory ?? {};
    const frames = mem.frames ?? 4096;
    if (!Number.isInteger(frames) || frames < 0) throw new KernelError(EINVAL, `Device ${name}: memory.frames must be an integer >= 0: ${String(frames)}`);
    const type = mem.type ?? 'private';
    if (type !== 'private' && type !== 'coherent') throw new KernelError(EINVAL, `Device ${name}: memory.type must be 'private' or 'coherent': ${String(type)}`);
    // Everything checked: from here on, construction has effects (device frames registered).
    this.name = name;
    this.cost = new DeviceCost(opts.cost);
    this.computeEngines = ce;
    this.tlbEntries = entries;
    this.tlbWays = ways;
    this.faultBuffer = new FaultBuffer(fbe);
    this.irqWq = new WaitQueue(engine, `${name}.irq`);
    this.shootdown = new Shootdown(this);
    this.copyEngine = new CopyEngine(this);
    this.memory =
      frames === 0
        ? null
        : new DevPagemap(phys, {
            type: type === 'private' ? MEMORY_DEVICE_PRIVATE : MEMORY_DEVICE_COHERENT,
            owner: mem.owner ?? this,
            nframes: frames,
            name: `${name}.mem`,
            migrateToRam: (vmf) => (this.memOps === null ? Promise.resolve(-EFAULT) : this.memOps.migrateToRam(vmf)),
            pageFree: (pfn) => this.memOps?.pageFree?.(pfn),
          });
  }

  // ---- device memory ----

  /** Installs the driver's migrate_to_ram and page_free handlers for the device memory. */
  setMemoryOps(ops: DeviceMemoryOps): void {
    if (ops === null || typeof ops !== 'object' || typeof ops.migrateToRam !== 'function') {
      throw new KernelError(EINVAL, `${this.name} setMemoryOps: ops.migrateToRam must be a function: ${String(ops === null || typeof ops !== 'object' ? ops : ops.migrateToRam)}`);
    }
    if (ops.pageFree !== undefined && typeof ops.pageFree !== 'function') {
      throw new KernelError(EINVAL, `${this.name} setMemoryOps: ops.pageFree must be a function: ${String(ops.pageFree)}`);
    }
    this.memOps = ops;
  }

  // ---- address spaces ----

  /** A new, empty address space (asids count from 1). */
  createAddressSpace(): DeviceAddressSpace {
    const as = new DeviceAddressSpace(this, this.nextAsid++, this.tlbEntries, this.tlbWays);
    this.spaces.set(as.asid, as);
    return as;
  }

  /** The live address space `asid`, or undefined. */
  addressSpace(asid: number): DeviceAddressSpace | undefined {
    return this.spaces.get(asid);
  }

  /** The live address spaces, by asid. */
  get addressSpaces(): readonly DeviceAddressSpace[] {
    return [...this.spaces.values()];
  }

  /** Drops an address space, its page table and TLB. KernelError EBUSY while jobs still run on it. */
  destroyAddressSpace(as: DeviceAddressSpace): void {
    this.checkAs('destroyAddressSpace', as);
    if (as.jobs.size > 0) throw new KernelError(EBUSY, `destroyAddressSpace: ${as.jobs.size} job(s) still run on asid ${as.asid} of ${this.name}`);
    as.pt.clearAll();
    as.tlbState.invalidateAll();
    as.destroyed = true;
    this.spaces.delete(as.asid);
  }

  // ---- compute engines ----

  /**
   * Launches `kernel` on `as` as `opts.warps` warps (engine tasks), each called with its
   * WarpContext. Not a scheduling point. Join the returned job for the results.
   */
  launch<T>(as: DeviceAddressSpace, opts: LaunchOptions, kernel: DeviceKernel<T>): DeviceJob<T> {
    this.checkAs('launch', as);
    if (opts === null || typeof opts !== 'object') throw new KernelError(EINVAL, `launch: options must be an object: ${String(opts)}`);
    const warps = opts.warps ?? 1;
    if (!Number.isInteger(warps) || warps < 1 || warps > 65536) throw new KernelError(EINVAL, `launch: warps must be an integer in [1, 65536]: ${String(warps)}`);
    const engineId = opts.engine ?? 0;
    if (!Number.isInteger(engineId) || engineId < 0 || engineId >= this.computeEngines) {
      throw new KernelError(EINVAL, `launch: engine must be an integer in [0, ${this.computeEngines}): ${String(engineId)}`);
    }
    if (typeof kernel !== 'function') throw new KernelError(EINVAL, `launch: kernel must be an async function: ${String(kernel)}`);
    const id = this.nextJobId++;
    const name = opts.name ?? `job${id}`;
    if (typeof name !== 'string' || name.length === 0) throw new KernelError(EINVAL, `launch: name must be a non-empty string: ${JSON.stringify(name)}`);
    const job = new DeviceJob<T>(this, as, id, name, engineId, warps);
    const j = job as DeviceJob<unknown>;
    as.jobs.add(j);
    this.liveJobs.set(id, j);
    this.stats.jobs++;
    job.live = warps;
    for (let w = 0; w < warps; w++) {
      const ctx = new WarpContext(this, j, w);
      const task = this.engine.spawn<T | undefined>(`${this.name}.${name}.w${w}`, async () => {
        try {
          return await kernel(ctx);
        } catch (err) {
          // A killed context ends quietly here; join reports it to whoever launched the job.
          if (err instanceof DeviceFaultError && job.killed !== null) return undefined;
          throw err;
        } finally {
          if (--job.live === 0) {
            as.jobs.delete(j);
            this.liveJobs.delete(id);
          }
        }
      });
      job.tasks.push(task);
    }
    return job;
  }

  /** The live job `id`, or undefined. */
  job(id: number): DeviceJob<unknown> | undefined {
    return this.liveJobs.get(id);
  }

  // ---- TLB invalidation ----

  /**
   * Invalidates the TLB entries of [start, end) (page-aligned addresses) in `as`. Returns at
   * once with a fence: the entries are dropped when it completes, cost.tlbShootdownNs later;
   * until then accesses may still hit them. Await `fence.wait()` before the frames may go.
   */
  tlbInvalidate(as: DeviceAddressSpace, start: number, end: number): TlbFence {
    this.checkAs('tlbInvalidate', as);
    checkPageAddr('tlbInvalidate', 'start', start);
    checkPageAddr('tlbInvalidate', 'end', end, true);
    if (start > end) throw new KernelError(EINVAL, `tlbInvalidate: start 0x${start.toString(16)} > end 0x${end.toString(16)}`);
    this.stats.invalidations++;
    this.stats.pagesInvalidated += (end - start) / PAGE_SIZE;
    return this.shootdown.issue(as, start, end, false);
  }

  /** Invalidates every TLB entry of `as`; a fence as tlbInvalidate. */
  tlbInvalidateAll(as: DeviceAddressSpace): TlbFence {
    this.checkAs('tlbInvalidateAll', as);
    this.stats.invalidationsAll++;
    return this.shootdown.issue(as, 0, DEVICE_VA_LIMIT, true);
  }

  /** Invalidations issued and not yet completed. */
  get pendingInvalidations(): number {
    return this.shootdown.pending;
  }

  // ---- faults: interrupt, replay, cancel ----

  /**
   * Blocks until the fault interrupt is raised (a record was written or dropped), clears it and
   * returns true. Returns false if the device was stopped (with no interrupt pending) or when
   * `timeoutNs` of virtual time pass first. Returns at once if the interrupt is already pending.
   */
  async waitForInterrupt(timeoutNs?: number): Promise<boolean> {
    if (timeoutNs !== undefined && (typeof timeoutNs !== 'number' || !Number.isFinite(timeoutNs) || timeoutNs < 0)) {
      throw new KernelError(EINVAL, `waitForInterrupt: timeoutNs must be a finite number >= 0: ${String(timeoutNs)}`);
    }
    const cond = (): boolean => this.irqPending || this.stopped;
    if (timeoutNs === undefined) await this.irqWq.waitEventExclusive(cond);
    else await this.irqWq.waitEventTimeout(cond, timeoutNs);
    if (!this.irqPending) return false;
    this.irqPending = false;
    return true;
  }

  /** True while the fault interrupt is raised and not yet taken by waitForInterrupt. */
  get interruptPending(): boolean {
    return this.irqPending;
  }

  /** True once stop() ran. */
  get isStopped(): boolean {
    return this.stopped;
  }

  /** Stops interrupt delivery: every waitForInterrupt returns false once no interrupt is pending (lets driver workers exit). */
  stop(): void {
    this.stopped = true;
    this.irqWq.wakeUpAll();
  }

  /**
   * Makes every stalled access of address space `asid` (of every address space if omitted)
   * retry its translation, cost.replayNs from now. Accesses whose fault was dropped retry too,
   * and fault again if still unmapped. Returns how many stalled accesses it released.
   */
  replay(asid?: number): number {
    let released = 0;
    if (asid === undefined) {
      for (const as of this.spaces.values()) released += this.replayAs(as);
    } else {
      const as = this.spaces.get(asid);
      if (as === undefined) throw new KernelError(EINVAL, `replay: no address space ${String(asid)} on ${this.name}`);
      released = this.replayAs(as);
    }
    this.stats.replays++;
    const t = this.engine.trace;
    if (t.active && t.wants('device.replay')) t.emit('device.replay', { device: this.name, asid: asid ?? null, stalled: released });
    return released;
  }

  private replayAs(as: DeviceAddressSpace): number {
    as.replayGen++;
    as.replayWq.wakeUpAll();
    return as.stalled;
  }

  /**
   * Cancels the faults of address space `asid`: every job of it with a stalled access is killed
   * (its accesses fail, joining it throws DeviceFaultError naming its stalled access). Jobs that
   * are not faulting keep running. Returns how many jobs it killed.
   */
  cancel(asid: number): number {
    const as = this.spaces.get(asid);
    if (as === undefined) throw new KernelError(EINVAL, `cancel: no address space ${String(asid)} on ${this.name}`);
    let killed = 0;
    for (const job of [...as.jobs]) {
      if (job.stalled === 0 || job.killed !== null) continue;
      this.kill(job, job.stallAddr, job.stallAccess);
      killed++;
    }
    return killed;
  }

  /**
   * Cancels one fault record: the job that wrote it is killed (if still live and not already
   * killed). Returns true if it killed the job.
   */
  cancelFault(record: FaultRecord): boolean {
    if (record === null || typeof record !== 'object' || !Number.isInteger(record.job)) {
      throw new KernelError(EINVAL, `cancelFault: not a fault record: ${String(record)}`);
    }
    const code = FAULT_ACCESS.indexOf(record.access);
    if (code < 0) throw new KernelError(EINVAL, `cancelFault: unknown access ${String(record.access)}`);
    const job = this.liveJobs.get(record.job);
    if (job === undefined || job.killed !== null) return false;
    // Name the job's own stalled access when it is on the cancelled page (the exact address).
    const samePage = job.stalled > 0 && Math.floor(job.stallAddr / PAGE_SIZE) === Math.floor(record.address / PAGE_SIZE);
    this.kill(job, samePage ? job.stallAddr : record.address, samePage ? job.stallAccess : code);
    return true;
  }

  private kill(job: DeviceJob<unknown>, address: number, access: number): void {
    const a = accessName(access) as FaultAccess;
    job.kill(new DeviceFaultError(this.name, job.asid, job.id, address, a));
    this.stats.cancels++;
    const t = this.engine.trace;
    if (t.active && t.wants('device.cancel')) t.emit('device.cancel', { device: this.name, asid: job.asid, job: job.id, address, access: a });
  }

  /** @internal the hardware's fault report: writes (or drops) a record and raises the interrupt. */
  recordFault(w: WarpContext, access: number, addr: number): void {
    const seq = this.faultSeq++;
    const job = w.job;
    const page = addr - (addr % PAGE_SIZE);
    const ok = this.faultBuffer.push(page, access, job.engine, job.as.asid, job.id, this.engine.now, seq);
    if (ok) this.stats.faults++;
    else this.stats.faultsDropped++;
    const t = this.engine.trace;
    if (t.active && t.wants('device.fault')) {
      t.emit('device.fault', { device: this.name, asid: job.as.asid, engine: job.engine, job: job.id, address: page, access: FAULT_ACCESS[access]!, recordSeq: seq, dropped: !ok });
    }
    this.irqPending = true;
    this.irqWq.wakeUp();
  }

  private checkAs(what: string, as: DeviceAddressSpace): void {
    if (!(as instanceof DeviceAddressSpace) || as.device !== this) throw new KernelError(EINVAL, `${what}: not an address space of ${this.name}: ${String(as)}`);
    if (as.destroyed) throw new KernelError(EINVAL, `${what}: address space ${as.asid} of ${this.name} was destroyed`);
  }
}
