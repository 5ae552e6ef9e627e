/**
 * DmirrorVariant: the reference driver dmirror (drivers/dmirror) bound to one mm with a
 * device-fault worker, with the two halves of its coherence protocol behind two overridable
 * methods, so that each broken driver of the catalogue is a subclass overriding ONE of them:
 *
 *   invalidate(dmirror, mni, range, curSeq)   the interval notifier's callback
 *                                             (reference: dmirrorIntervalInvalidate)
 *   rangeFault(dmirror, range)                the read_begin / hmm_range_fault / lock /
 *                                             read_retry / commit loop (reference: dmirrorRangeFault)
 *
 * Everything else is dmirror itself: DmirrorDevice (device memory, migrate_to_ram, eviction),
 * Dmirror.open (the whole-mm interval notifier, the mutex, the device page table), the
 * MIGRATE_TO_DEV ioctl and release. dmirror calls its own functions directly, so two pieces are
 * interposed here:
 * - the notifier's ops: replaced right after Dmirror.open returns (no scheduling point in
 *   between, so no invalidation can reach the old ops) by ones that call this.invalidate;
 * - the fault worker: this file's faultWorker, shaped like drivers/dmirror/worker.ts (drain,
 *   skip a page the table already grants, service the rest one page at a time, cancel what
 *   fails, replay), calling this.rangeFault where dmirror's worker calls dmirrorFault.
 * One more departure, in unbind: the device page table is erased before dmirror's release
 * (see there). With neither method overridden this is the control of every catalogue entry
 * built on it: test/drivers/buggy.test.ts runs it over the same schedules as each broken
 * subclass.
 *
 * Locks: the reference driver's (mmap_lock -> dmirror.mutex; `lifetime` for read around each
 * service, by trylock, as dmirror's worker). The worker and unbind change state synchronously.
 */
import {
  DEVICE_VA_LIMIT,
  DEV_PTE_ATOMIC,
  DEV_PTE_VALID,
  DEV_PTE_WRITE,
  type DeviceJob,
  type DeviceKernel,
  EFAULT,
  ENODEV,
  type Engine,
  type FaultRecord,
  HMM_PFN_REQ_FAULT,
  HMM_PFN_REQ_WRITE,
  HmmRange,
  type LaunchOptions,
  type MmStruct,
  type MmuIntervalNotifier,
  type MmuNotifierRange,
  PAGE_SIZE,
  type PhysMem,
  type Task,
} from 'hmm-emu';
import { Dmirror, DmirrorDevice, HMM_DMIRROR_MIGRATE_TO_DEV, dmirrorIntervalInvalidate, dmirrorRangeFault } from '../dmirror/index.js';

/** Options of DmirrorVariant.bind. Every field is optional; each says its default. */
export interface DmirrorVariantOptions {
  /** Name of the Device. Default 'gpu0'. */
  readonly name?: string;
  /** Device-private frames of the device (migration target). Default 64. */
  readonly deviceFrames?: number;
  /**
   * Pages faulted per device fault, from the faulting page, clipped to its VMA (dmirror's
   * worker: 1). More makes each hmm_range_fault walk several pages. Default 1.
   */
  readonly faultWindowPages?: number;
}

/** DEV_PTE_* bits an access needs, by access kind. */
const NEED: Readonly<Record<FaultRecord['access'], number>> = { prefetch: DEV_PTE_VALID, read: DEV_PTE_VALID, write: DEV_PTE_WRITE, atomic: DEV_PTE_ATOMIC };

export class DmirrorVariant {
  /** The reference device (its Device is `mdevice.device`). */
  readonly mdevice: DmirrorDevice;
  /** The reference mirror of `mm` (its notifier, mutex and device page table). */
  readonly mirror: Dmirror;
  readonly faultWindowPages: number;
  private worker: Task<void> | null = null;

  /**
   * Creates the device, opens a mirror of `mm`, routes its notifier through `invalidate` and
   * starts the fault worker. Runs in a task. Throws what DmirrorDevice.create or Dmirror.open
   * throw.
   */
  static async bind(engine: Engine, phys: PhysMem, mm: MmStruct, opts: DmirrorVariantOptions = {}): Promise<DmirrorVariant> {
    const mdevice = DmirrorDevice.create(engine, phys, { name: opts.name ?? 'gpu0', memory: { frames: opts.deviceFrames ?? 64 } });
    const mirror = await Dmirror.open(mdevice, mm);
    const v = new this(mdevice, mirror, opts.faultWindowPages ?? 1);
    // Pairs with Dmirror.open's insert: the same notifier, its callback now this.invalidate.
    mirror.notifier.ops = { invalidate: (mni, range, curSeq) => v.invalidate(mirror, mni, range, curSeq) };
    v.worker = engine.spawn(`${mdevice.name}.variant_fault`, () => v.faultWorker());
    return v;
  }

  protected constructor(mdevice: DmirrorDevice, mirror: Dmirror, faultWindowPages: number) {
    this.mdevice = mdevice;
    this.mirror = mirror;
    this.faultWindowPages = faultWindowPages;
  }

  get mm(): MmStruct {
    return this.mirror.mm;
  }

  /** The interval notifier's invalidate callback. Reference: dmirrorIntervalInvalidate. */
  protected invalidate(dmirror: Dmirror, mni: MmuIntervalNotifier, range: MmuNotifierRange, curSeq: number): boolean | Promise<boolean> {
    return dmirrorIntervalInvalidate(dmirror, mni, range, curSeq);
  }

  /** Faults `range` into the device page table. Reference: dmirrorRangeFault (the canonical loop). */
  protected rangeFault(dmirror: Dmirror, range: HmmRange): Promise<number> {
    return dmirrorRangeFault(dmirror, range);
  }

  /** Launches a device kernel on the mirror. */
  launch<T>(opts: LaunchOptions, kernel: DeviceKernel<T>): DeviceJob<T> {
    return this.mirror.launch(opts, kernel);
  }

  /** HMM_DMIRROR_MIGRATE_TO_DEV of [addr, addr + npages pages): the reference migration. */
  deviceMigrate(addr: number, npages: number): Promise<number> {
    return this.mirror.ioctl(HMM_DMIRROR_MIGRATE_TO_DEV, { addr, ptr: new Uint8Array(npages * PAGE_SIZE), npages, cpages: 0, faults: 0 });
  }

  /**
   * Stops the fault worker, erases the device page table, releases the mirror. Jobs must have
   * ended. The erase is a departure from dmirror's release, which evicts device memory before
   * it destroys the address space: the entries of evicted device pages would still be in the
   * device page table when those pages are freed (unreachable, since no job runs and the
   * notifier is gone, but a use after free to the oracle's rule, which checks at the free).
   * test_hmm's release drops its table (xa_destroy) before any eviction.
   */
  async unbind(): Promise<void> {
    const m = this.mirror;
    this.mdevice.device.stop();
    const w = this.worker;
    this.worker = null;
    if (w !== null) await w.join();
    await m.mutex.lock();
    try {
      if (m.ptErase(0, DEVICE_VA_LIMIT / PAGE_SIZE) > 0) await m.tlbFlush(0, DEVICE_VA_LIMIT);
    } finally {
      m.mutex.unlock();
    }
    await m.release();
  }

  // ---- the fault worker (drivers/dmirror/worker.ts, with this.rangeFault) ----

  private async faultWorker(): Promise<void> {
    const dev = this.mdevice.device;
    const fb = dev.faultBuffer;
    while (await dev.waitForInterrupt()) {
      // Dropped records fault again when their accesses are replayed.
      if (fb.overflow) fb.clearOverflow();
      for (const rec of fb.drain()) {
        if (rec.access === 'prefetch') continue; // a prefetch does not stall
        if ((await this.serviceFault(rec)) !== 0) dev.cancelFault(rec);
      }
      dev.replay();
    }
  }

  /** Services one record: 0 when the access can be replayed, else the error that cancels it. */
  private async serviceFault(rec: FaultRecord): Promise<number> {
    const m = this.mirror;
    if (rec.asid !== m.as.asid || m.released || !m.lifetime.tryDownRead()) return -ENODEV;
    try {
      const need = NEED[rec.access];
      // Another record of the page may have been serviced meanwhile.
      if ((m.as.pageTable.flagsAt(rec.address / PAGE_SIZE) & need) === need) return 0;
      if (m.mm.state !== 'live') return -EFAULT;
      const write = rec.access === 'write' || rec.access === 'atomic';
      let end = rec.address + PAGE_SIZE;
      if (this.faultWindowPages > 1) {
        await m.mm.mmapLock.downRead();
        const vma = m.mm.vmas.lookup(rec.address);
        m.mm.mmapLock.upRead();
        if (vma !== null) end = Math.min(rec.address + this.faultWindowPages * PAGE_SIZE, vma.end);
      }
      const range = new HmmRange({
        notifier: m.notifier,
        start: rec.address,
        end,
        defaultFlags: HMM_PFN_REQ_FAULT | (write ? HMM_PFN_REQ_WRITE : 0n),
        devPrivateOwner: this.mdevice.owner,
      });
      m.stats.deviceFaults++;
      return await this.rangeFault(m, range);
    } finally {
      m.lifetime.upRead();
    }
  }
}
