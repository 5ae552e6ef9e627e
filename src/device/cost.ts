/**
 * The device cost model: how much virtual time each hardware operation of the mock GPU takes.
 *
 * The defaults are round figures of the right order for a discrete GPU on PCIe (NVIDIA UVM's
 * replayable faults cost microseconds per round trip; a TLB hit is a cycle; a walk is a few
 * memory reads). Every figure is in virtual nanoseconds; only ratios matter to schedules, so
 * a scenario may scale them freely. Immutable once built; nothing here holds run state.
 */
import { EINVAL, KernelError } from '../sim/index.js';
import { PAGE_SIZE } from '../mm/index.js';

/** Options of a DeviceCost. Every field is optional; each says its default. */
export interface DeviceCostOptions {
  /** A TLB lookup, charged on every access (a hit costs only this). Default 1 ns. */
  readonly tlbHitNs?: number;
  /** A page-table walk after a TLB miss, charged on top of tlbHitNs. Default 100 ns. */
  readonly pageWalkNs?: number;
  /**
   * The hardware part of a fault round trip: from the failed translation until the fault
   * record is visible in the fault buffer and the interrupt is raised. Default 1,000 ns.
   */
  readonly faultNs?: number;
  /** A TLB invalidation (range or all): from issue until the entries are gone and the fence signals. Default 500 ns. */
  readonly tlbShootdownNs?: number;
  /** From a replay until the stalled accesses retry their translation. Default 500 ns. */
  readonly replayNs?: number;
  /** Fixed latency of one copy-engine operation (single page or batch). Default 2,000 ns. */
  readonly copyLatencyNs?: number;
  /** Copy-engine bandwidth in GB/s, i.e. bytes per ns. Default 16 (a page moves in 256 ns). */
  readonly copyBandwidthGBps?: number;
}

/** A validated, complete cost model. */
export class DeviceCost {
  readonly tlbHitNs: number;
  readonly pageWalkNs: number;
  readonly faultNs: number;
  readonly tlbShootdownNs: number;
  readonly replayNs: number;
  readonly copyLatencyNs: number;
  readonly copyBandwidthGBps: number;

  constructor(opts: DeviceCostOptions = {}) {
    if (opts === null || typeof opts !== 'object') throw new KernelError(EINVAL, `DeviceCost: options must be an object: ${String(opts)}`);
    this.tlbHitNs = ns('tlbHitNs', opts.tlbHitNs, 1);
    this.pageWalkNs = ns('pageWalkNs', opts.pageWalkNs, 100);
    this.faultNs = ns('faultNs', opts.faultNs, 1000);
    this.tlbShootdownNs = ns('tlbShootdownNs', opts.tlbShootdownNs, 500);
    this.replayNs = ns('replayNs', opts.replayNs, 500);
    this.copyLatencyNs = ns('copyLatencyNs', opts.copyLatencyNs, 2000);
    const bw = opts.copyBandwidthGBps ?? 16;
    if (typeof bw !== 'number' || !Number.isFinite(bw) || bw <= 0) {
      throw new KernelError(EINVAL, `DeviceCost: copyBandwidthGBps must be a finite number > 0: ${String(bw)}`);
    }
    this.copyBandwidthGBps = bw;
  }

  /**
   * Virtual time of one copy-engine operation moving `pages` pages: the latency plus the
   * transfer at the bandwidth, rounded up to a whole ns (so that times stay integers).
   */
  copyNs(pages: number): number {
    return this.copyLatencyNs + Math.ceil((pages * PAGE_SIZE) / this.copyBandwidthGBps);
  }
}

function ns(name: string, v: number | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new KernelError(EINVAL, `DeviceCost: ${name} must be a finite number >= 0: ${String(v)}`);
  return v;
}
