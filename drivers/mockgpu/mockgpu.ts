/**
 * mockgpu: a production-shaped driver for the mock GPU, in the manner of nouveau's SVM and
 * NVIDIA UVM's replayable-fault servicing.
 *
 * Models: drivers/gpu/drm/nouveau/nouveau_svm.c (nouveau_svm_fault: the fault buffer handler;
 * nouveau_svmm_init/_fini: binding an mm; nouveau_ivmm_find: instance -> svmm) and
 * kernel-open/nvidia-uvm/uvm_gpu_replayable_faults.c (uvm_gpu_service_replayable_faults:
 * batches, overflow, one replay per batch, cancel of what cannot be served).
 *
 * The fault handler (one engine task, `<name>.fault`, the bottom half):
 *
 *   while waitForInterrupt():                     the interrupt level is cleared on return
 *     while the buffer holds records or overflowed:
 *       overflow? clear it (its dropped faults come back with the replay)
 *       drain up to batchSize records; sort; coalesce per page; group per window (batch.ts)
 *       svmm of each asid (under svmLock); unknown asid -> cancel its faults
 *       submit one job per window to the worker pool (pool.ts); pool.drain()
 *       one replay (if anything was served, or the buffer overflowed)
 *
 * A window's job (svmm.ts) clips it to VMAs, migrates it to device memory under the
 * first-touch policy (devmem.ts), faults it in with hmm_range_fault and programs the device
 * page table, then takes make_device_exclusive for atomics on system memory; faults it cannot
 * serve are cancelled (the context is killed: DeviceFaultError). The replay lets every stalled
 * access retry; those whose page was invalidated meanwhile simply fault again.
 *
 * Locks and what they protect:
 * - `svmLock` (class "mockgpu.svm", nouveau's svm->mutex): `byAsid` and `byMm` (bind, unbind,
 *   the handler's lookups). Held only around map accesses: never with another lock. Readers in
 *   migrate_to_ram read `byMm` without it (one synchronous lookup, atomic under the engine's
 *   one-task rule), since they run under mmap_lock and a page lock.
 * - per svmm: `mutex` and `notifierLock` (svmm.ts); device memory: `evictLock` (devmem.ts).
 * - `stats`, `stopped`: synchronous updates.
 * Lock order (the whole driver): svmm.notifierLock -> mmap_lock -> page lock -> evictLock ->
 * svmm.mutex; svmLock alone. The handler holds no lock while it waits for the pool.
 *
 * Simplifications vs nouveau/UVM: one fault buffer and one handler (UVM services per GPU, with
 * up to 20 batches per pass; we drain until empty); windows are serviced in parallel on the
 * pool, where UVM locks VA blocks; no non-replayable faults, no access counters, no read
 * duplication; the thrashing defence is the eviction residency time only.
 */
import {
  EBUSY,
  EINVAL,
  ENODEV,
  ESRCH,
  KernelError,
  Mutex,
  WaitQueue,
  mmuNotifierRegister,
  type Device,
  type DeviceAddressSpace,
  type Engine,
  type MmStruct,
  type Task,
} from 'hmm-emu';
import { prepareBatch } from './batch.js';
import { MockGpuMemory } from './devmem.js';
import { EnginePool } from './pool.js';
import { MockGpuSvmm } from './svmm.js';

/** HMM_RANGE_DEFAULT_TIMEOUT (1000 ms), in virtual ns. */
export const HMM_RANGE_DEFAULT_TIMEOUT_NS = 1_000_000_000;

/** Options of a MockGpu. Every field is optional; each says its default. */
export interface MockGpuOptions {
  /** Name for tasks, locks and traces. Default: the device's name. */
  readonly name?: string;
  /** Fault records drained per batch (UVM's fault batch). An integer in [1, 65536]. Default 256. */
  readonly batchSize?: number;
  /**
   * Pages per fault window: faults are grouped per aligned window and each window is serviced
   * by one job with one hmm_range_fault (UVM's big page / VA block; nouveau's window is one
   * page). A power of two in [1, 512]. Default 16 (64 KiB).
   */
  readonly windowPages?: number;
  /**
   * Prefetch: fault in every page of a window (writable when the window has a write or atomic
   * fault and the VMA allows it), as UVM populates a whole big page. False: only the faulting
   * pages are faulted in; the others are mapped if already present. Default true.
   */
  readonly prefetch?: boolean;
  /**
   * Pages covered by one cached interval notifier: a power of two, a multiple of windowPages,
   * at most 2**18. Default windowPages (one notifier per window).
   */
  readonly notifierPages?: number;
  /** Jobs running at once on the worker pool (p-queue concurrency). An integer in [1, 64]. Default 4. */
  readonly workers?: number;
  /**
   * Migration policy: 'first-touch' moves a window the device faults on to device memory
   * (anonymous private memory only; a CPU access moves a page back through migrate_to_ram);
   * 'off' maps system memory. Default 'first-touch' when the device has memory, else 'off'.
   */
  readonly migration?: 'first-touch' | 'off';
  /** Device pages one eviction pass moves to RAM when device memory is full. An integer >= 1. Default 16. */
  readonly evictPages?: number;
  /** A device page allocated less than this long ago (virtual ns) is not evicted. Default 20,000. */
  readonly minResidencyNs?: number;
  /** Bound of one window's fault retry loop, in virtual ns. Default HMM_RANGE_DEFAULT_TIMEOUT_NS (1 s). */
  readonly faultTimeoutNs?: number;
}

/** The options, complete. */
export interface ResolvedMockGpuOptions {
  readonly batchSize: number;
  readonly windowPages: number;
  readonly prefetch: boolean;
  readonly notifierPages: number;
  readonly workers: number;
  readonly migration: 'first-touch' | 'off';
  readonly evictPages: number;
  readonly minResidencyNs: number;
  readonly faultTimeoutNs: number;
}

/** Driver counters (read directly, or snapshot with `{ ...gpu.stats }`). */
export interface MockGpuStats {
  /** Interrupts taken. */
  interrupts: number;
  /** Batches serviced. */
  batches: number;
  /** Fault records read. */
  faults: number;
  /** Records folded into another record of the same page. */
  duplicates: number;
  /** Windows serviced (pool jobs). */
  windows: number;
  /** Faults served (distinct pages, prefetches excluded). */
  served: number;
  /** Device page-table entries written. */
  pagesMapped: number;
  /** Replays issued. */
  replays: number;
  /** Records cancelled (contexts killed by them). */
  cancels: number;
  /** Overflows seen (and cleared). */
  overflows: number;
  /** hmm_range_fault calls; retry-loop iterations after the first (-EBUSY or read_retry). */
  rangeFaults: number;
  retries: number;
  /** Windows that failed as a whole and were retried page by page. */
  windowFallbacks: number;
  /** Pages mapped for atomics through make_device_exclusive. */
  exclusive: number;
  /** Writes to COW-shared device pages (after fork) moved to RAM to break COW there. */
  deviceCowBreaks: number;
  /** Commits that waited for a migration fence of their window to lift. */
  fenceWaits: number;
  /** Device page-table entries zapped, and the TLB shootdowns that went with them. */
  pagesZapped: number;
  shootdowns: number;
  /** MIGRATE invalidations of our own skipped by the classic notifier. */
  migrateSkips: number;
  /** Window notifiers inserted and removed. */
  notifiersInserted: number;
  notifiersRemoved: number;
  /** First-touch migrations (windows) and the pages moved to device memory in all. */
  firstTouchMigrations: number;
  migratedToDevice: number;
  /** migrate_to_ram calls and pages moved to RAM by them or by unbind. */
  migrateToRamCalls: number;
  migratedToRam: number;
  /** Eviction passes, pages evicted, passes that found nothing evictable. */
  evictions: number;
  evicted: number;
  evictionFailures: number;
  /** Device frames freed (page_free). */
  devicePagesFreed: number;
}

function newStats(): MockGpuStats {
  return {
    interrupts: 0,
    batches: 0,
    faults: 0,
    duplicates: 0,
    windows: 0,
    served: 0,
    pagesMapped: 0,
    replays: 0,
    cancels: 0,
    overflows: 0,
    rangeFaults: 0,
    retries: 0,
    windowFallbacks: 0,
    exclusive: 0,
    deviceCowBreaks: 0,
    fenceWaits: 0,
    pagesZapped: 0,
    shootdowns: 0,
    migrateSkips: 0,
    notifiersInserted: 0,
    notifiersRemoved: 0,
    firstTouchMigrations: 0,
    migratedToDevice: 0,
    migrateToRamCalls: 0,
    migratedToRam: 0,
    evictions: 0,
    evicted: 0,
    evictionFailures: 0,
    devicePagesFreed: 0,
  };
}

const isPow2 = (n: number): boolean => Number.isInteger(n) && n >= 1 && (n & (n - 1)) === 0;

function resolveOptions(name: string, o: MockGpuOptions, hasMemory: boolean): ResolvedMockGpuOptions {
  const bad = (what: string, v: unknown): never => {
    throw new KernelError(EINVAL, `MockGpu ${name}: ${what}: ${String(v)}`);
  };
  const batchSize = o.batchSize ?? 256;
  if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > 65536) bad('batchSize must be an integer in [1, 65536]', batchSize);
  const windowPages = o.windowPages ?? 16;
  if (!isPow2(windowPages) || windowPages > 512) bad('windowPages must be a power of two in [1, 512]', windowPages);
  const notifierPages = o.notifierPages ?? windowPages;
  if (!isPow2(notifierPages) || notifierPages < windowPages || notifierPages > 2 ** 18) bad(`notifierPages must be a power of two in [windowPages (${windowPages}), 2**18]`, notifierPages);
  const workers = o.workers ?? 4;
  if (!Number.isInteger(workers) || workers < 1 || workers > 64) bad('workers must be an integer in [1, 64]', workers);
  const migration = o.migration ?? (hasMemory ? 'first-touch' : 'off');
  if (migration !== 'first-touch' && migration !== 'off') bad("migration must be 'first-touch' or 'off'", migration);
  if (migration === 'first-touch' && !hasMemory) bad("migration 'first-touch' needs device memory", migration);
  const evictPages = o.evictPages ?? 16;
  if (!Number.isInteger(evictPages) || evictPages < 1) bad('evictPages must be an integer >= 1', evictPages);
  const minResidencyNs = o.minResidencyNs ?? 20_000;
  if (typeof minResidencyNs !== 'number' || !Number.isFinite(minResidencyNs) || minResidencyNs < 0) bad('minResidencyNs must be a finite number >= 0', minResidencyNs);
  const faultTimeoutNs = o.faultTimeoutNs ?? HMM_RANGE_DEFAULT_TIMEOUT_NS;
  if (typeof faultTimeoutNs !== 'number' || !Number.isFinite(faultTimeoutNs) || faultTimeoutNs < 0) bad('faultTimeoutNs must be a finite number >= 0', faultTimeoutNs);
  const prefetch = o.prefetch ?? true;
  if (typeof prefetch !== 'boolean') bad('prefetch must be a boolean', prefetch);
  return { batchSize, windowPages, prefetch, notifierPages, workers, migration, evictPages, minResidencyNs, faultTimeoutNs };
}

export class MockGpu {
  readonly name: string;
  readonly engine: Engine;
  readonly options: ResolvedMockGpuOptions;
  readonly stats: MockGpuStats = newStats();
  /** pgmap->owner of the device memory (or the device): what hmm_range_fault and migrate_vma match, and what our notifiers skip. */
  readonly owner: unknown;
  /** Device memory management, or null when the device has none. */
  readonly memory: MockGpuMemory | null;
  /** The worker pool the windows are serviced on. */
  readonly pool: EnginePool;
  private readonly svmLock: Mutex;
  private readonly byAsid = new Map<number, MockGpuSvmm>();
  private readonly byMm = new Map<MmStruct, MockGpuSvmm>();
  private handler: Task<void> | null = null;
  private handlerDone = false;
  private readonly handlerWq: WaitQueue;
  private stopped = false;
  private scratchBuf = new Uint32Array(64);

  constructor(
    readonly device: Device,
    opts: MockGpuOptions = {},
  ) {
    if (opts === null || typeof opts !== 'object') throw new KernelError(EINVAL, `MockGpu: options must be an object: ${String(opts)}`);
    const name = opts.name ?? device.name;
    if (typeof name !== 'string' || name.length === 0) throw new KernelError(EINVAL, `MockGpu: name must be a non-empty string: ${JSON.stringify(name)}`);
    this.name = name;
    this.engine = device.engine;
    this.options = resolveOptions(name, opts, device.memory !== null);
    this.owner = device.memory?.owner ?? device;
    this.pool = new EnginePool(this.engine, `${name}.wq`, this.options.workers);
    this.svmLock = new Mutex(this.engine, `${name}.svm`, { lockClass: 'mockgpu.svm' });
    this.handlerWq = new WaitQueue(this.engine, `${name}.handler`);
    this.memory = device.memory === null ? null : new MockGpuMemory(this, device.memory);
    if (this.memory !== null) {
      const mem = this.memory;
      device.setMemoryOps({
        migrateToRam: (vmf) => mem.migrateToRam(vmf),
        pageFree: () => {
          this.stats.devicePagesFreed++;
        },
      });
    }
  }

  /** Starts the fault handler task. Call once, before the run or from a task. */
  start(): void {
    if (this.handler !== null) throw new KernelError(EINVAL, `MockGpu ${this.name}: already started`);
    this.handler = this.engine.spawn(`${this.name}.fault`, () => this.faultHandler());
  }

  /**
   * Stops the driver: interrupts off (Device.stop), then waits for the handler to finish what
   * is pending and exit, and for the pool to drain. Bindings are not undone (unbind them first).
   */
  async stop(): Promise<void> {
    this.stopped = true;
    this.device.stop();
    if (this.handler !== null) await this.handlerWq.waitEvent(() => this.handlerDone);
    await this.pool.drain();
  }

  /** The binding of `mm`, if any. */
  svmmOf(mm: MmStruct): MockGpuSvmm | undefined {
    return this.byMm.get(mm);
  }

  /** Live bindings. */
  get bindings(): number {
    return this.byMm.size;
  }

  /**
   * nouveau_svmm_init: mirrors `mm` on a new device address space and registers the whole-mm
   * classic notifier (takes mmap_lock for write: the caller must not hold it). Returns the
   * binding, or -ENODEV (stopped), -EBUSY (mm already bound), -ESRCH (mm exited), or the
   * registration's error.
   */
  async bind(mm: MmStruct): Promise<MockGpuSvmm | number> {
    if (this.stopped) return -ENODEV;
    if (mm.state !== 'live') return -ESRCH;
    let as: DeviceAddressSpace;
    let svmm: MockGpuSvmm;
    await this.svmLock.lock();
    try {
      if (this.byMm.has(mm)) return -EBUSY;
      as = this.device.createAddressSpace();
      svmm = new MockGpuSvmm(this, mm, as);
      this.byMm.set(mm, svmm); // reserved; faults of the new asid are not served until registered
    } finally {
      this.svmLock.unlock();
    }
    const ret = await mmuNotifierRegister(svmm.notifier, mm);
    await this.svmLock.lock();
    try {
      if (ret !== 0) {
        this.byMm.delete(mm);
        this.device.destroyAddressSpace(as);
        return ret;
      }
      this.byAsid.set(as.asid, svmm);
    } finally {
      this.svmLock.unlock();
    }
    return svmm;
  }

  /**
   * nouveau_svmm_fini: stops mirroring svmm.mm (svmm.teardown), moves the mm's device pages
   * back to RAM, kills the contexts still stalled on the address space (nobody will serve
   * them) and destroys it if no job runs on it any more (else it stays, zapped, and its late
   * faults are cancelled). Returns 0 or -EINVAL (not bound here).
   */
  async unbind(svmm: MockGpuSvmm): Promise<number> {
    await this.svmLock.lock();
    try {
      if (this.byMm.get(svmm.mm) !== svmm) return -EINVAL;
      this.byAsid.delete(svmm.asid);
      this.byMm.delete(svmm.mm);
    } finally {
      this.svmLock.unlock();
    }
    const ret = await svmm.teardown();
    if (ret !== 0) return ret;
    if (this.memory !== null) await this.memory.migrateMmToSystem(svmm.mm);
    const as = svmm.as;
    if (!as.isDestroyed) {
      this.device.cancel(as.asid);
      try {
        this.device.destroyAddressSpace(as);
      } catch (err) {
        if (!(err instanceof KernelError) || err.errno !== EBUSY) throw err;
      }
    }
    return 0;
  }

  /**
   * The explicit migration (nouveau's SVM_BIND MIGRATE command): moves [start, end) of the
   * bound mm to device memory, best effort. Returns the pages moved, or -EINVAL (no device
   * memory, or not bound).
   */
  async migrate(svmm: MockGpuSvmm, start: number, end: number): Promise<number> {
    if (this.memory === null || this.byMm.get(svmm.mm) !== svmm || svmm.dead) return -EINVAL;
    return this.memory.migrateRange(svmm, start, end);
  }

  /** @internal a reusable Uint32Array of at least n entries (the handler's jobs are synchronous between its uses). */
  scratch(n: number): Uint32Array {
    if (this.scratchBuf.length < n) this.scratchBuf = new Uint32Array(Math.max(n, 2 * this.scratchBuf.length));
    return this.scratchBuf;
  }

  // ---- the fault handler ----

  private async faultHandler(): Promise<void> {
    const dev = this.device;
    const fb = dev.faultBuffer;
    try {
      while (await dev.waitForInterrupt()) {
        this.stats.interrupts++;
        while (fb.length > 0 || fb.overflow) await this.serviceBatch();
      }
    } finally {
      this.handlerDone = true;
      this.handlerWq.wakeUpAll();
    }
  }

  /** One batch: drain, prepare, look up, service on the pool, replay once. */
  private async serviceBatch(): Promise<void> {
    const dev = this.device;
    const fb = dev.faultBuffer;
    const stats = this.stats;
    // Clear the overflow before draining: records dropped from now on set it again.
    const overflow = fb.overflow;
    if (overflow) {
      fb.clearOverflow();
      stats.overflows++;
    }
    const records = fb.drain(this.options.batchSize);
    stats.batches++;
    stats.faults += records.length;
    const batch = prepareBatch(records, this.options.windowPages);
    stats.duplicates += batch.duplicates;
    const owners: Array<MockGpuSvmm | undefined> = [];
    await this.svmLock.lock();
    for (const w of batch.windows) owners.push(this.byAsid.get(w.asid));
    this.svmLock.unlock();
    let served = 0;
    for (let i = 0; i < batch.windows.length; i++) {
      const w = batch.windows[i]!;
      const svmm = owners[i];
      if (svmm === undefined) {
        // nouveau: "Cancel any faults from non-SVM channels."
        for (const f of w.faults) if (f.access > 0) for (const r of f.records) if (dev.cancelFault(r)) stats.cancels++;
        continue;
      }
      stats.windows++;
      svmm.jobStarted();
      this.pool.submit(
        'fault',
        async () => {
          try {
            const n = await svmm.serviceWindow(w); // not `served += await`: that reads `served` before the wait
            served += n;
          } finally {
            svmm.jobEnded();
          }
        },
        w.access,
      );
    }
    await this.pool.drain();
    stats.served += served;
    if (served > 0 || overflow) {
      dev.replay();
      stats.replays++;
    }
  }
}
