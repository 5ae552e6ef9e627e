/**
 * TLB invalidation ("shootdown") with completion fences.
 *
 * Models: the GPU's TLB invalidate as drivers issue it (NVIDIA UVM: uvm_tlb_batch_end pushes
 * TLB_INVALIDATE methods and the driver waits on the push's tracker before the pages may be
 * reused; nouveau: the vmm flush after PFNCLR, waited on before the notifier returns). The
 * invalidation is issued at once and completes `tlbShootdownNs` later: the matching entries
 * are dropped AT COMPLETION, and until then accesses in flight (and new ones) may still hit them,
 * as on real hardware. A driver must wait for the fence before it lets the CPU side free or reuse
 * the frames; one that does not leaves a window the oracle catches.
 *
 * One worker task per device (spawned when the first invalidation is queued, gone when the queue
 * drains, so a finished run has no task left over) completes invalidations in issue order; with
 * a constant cost, issue order is completion order.
 *
 * What protects what: the queue and each fence's `done` change only synchronously (issue, and the
 * worker between its sleeps), atomic under the engine's one-task rule. Waiters sleep on the
 * device's fence wait queue and recheck their own fence (pairs with complete()).
 *
 * Simplification: one cost for every invalidation, whatever its size (hardware range
 * invalidates are per page-table level; a full flush is cheap, its refills are not).
 */
import { WaitQueue } from '../sim/index.js';
import { PAGE_SIZE } from '../mm/index.js';
import type { DeviceAddressSpace } from './address-space.js';
import type { Device } from './device.js';

/** A pending or completed TLB invalidation. */
export class TlbFence {
  private isDone = false;

  constructor(
    private readonly shootdown: Shootdown,
    /** @internal */
    readonly as: DeviceAddressSpace,
    /** First address invalidated. */
    readonly start: number,
    /** End of the invalidated range (exclusive); 2**48 for invalidate-all. */
    readonly end: number,
    /** True for an invalidate-all. */
    readonly all: boolean,
    /** Virtual time at which it completes. */
    readonly completesAt: number,
  ) {}

  get asid(): number {
    return this.as.asid;
  }

  /** True once the entries are gone. */
  get done(): boolean {
    return this.isDone;
  }

  /** @internal */
  markDone(): void {
    this.isDone = true;
  }

  /** Waits until the invalidation has completed (returns at once, with no scheduling point, if it has). */
  wait(): Promise<void> {
    return this.shootdown.wq.waitEvent(() => this.isDone);
  }
}

/** @internal the device's invalidation queue and its worker. */
export class Shootdown {
  readonly wq: WaitQueue;
  private queue: TlbFence[] = [];
  private head = 0;
  private workerLive = false;

  constructor(private readonly device: Device) {
    this.wq = new WaitQueue(device.engine, `${device.name}.tlb_fence`);
  }

  /** Invalidations issued and not yet completed. */
  get pending(): number {
    return this.queue.length - this.head;
  }

  issue(as: DeviceAddressSpace, start: number, end: number, all: boolean): TlbFence {
    const dev = this.device;
    const e = dev.engine;
    const fence = new TlbFence(this, as, start, end, all, e.now + dev.cost.tlbShootdownNs);
    this.queue.push(fence);
    const t = e.trace;
    if (t.active && t.wants('device.tlb_invalidate')) {
      t.emit('device.tlb_invalidate', { device: dev.name, asid: as.asid, start, end, all, phase: 'issued', entries: 0 });
    }
    if (!this.workerLive) {
      this.workerLive = true;
      e.spawn(`${dev.name}.tlb_shootdown`, () => this.worker());
    }
    return fence;
  }

  private async worker(): Promise<void> {
    const e = this.device.engine;
    while (this.head < this.queue.length) {
      const f = this.queue[this.head]!;
      if (f.completesAt > e.now) {
        await e.sleep(f.completesAt - e.now);
        continue; // recheck: the queue only grew meanwhile
      }
      this.head++;
      this.complete(f);
    }
    this.queue = [];
    this.head = 0;
    this.workerLive = false;
  }

  private complete(f: TlbFence): void {
    const dev = this.device;
    const as = f.as;
    let dropped = 0;
    if (!as.destroyed) {
      const tlb = as.tlbState;
      dropped = f.all ? tlb.invalidateAll() : tlb.invalidateRange(f.start / PAGE_SIZE, f.end / PAGE_SIZE);
    }
    dev.stats.tlbEntriesInvalidated += dropped;
    f.markDone();
    const t = dev.engine.trace;
    if (t.active && t.wants('device.tlb_invalidate')) {
      t.emit('device.tlb_invalidate', { device: dev.name, asid: as.asid, start: f.start, end: f.end, all: f.all, phase: 'completed', entries: dropped });
    }
    this.wq.wakeUpAll();
  }
}
