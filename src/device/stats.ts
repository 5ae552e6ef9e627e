/**
 * Device statistics: hardware performance counters of the mock GPU, plus the per-fault
 * latency distribution (in virtual time, from the access's first fault to its successful
 * retry) that a fault-servicing driver is judged by.
 *
 * The counters are plain number fields incremented on the hot path (no allocation); read them
 * directly or take a `snapshot()`. Updated only synchronously by the device, so no lock.
 */

/** Upper bounds (exclusive, ns) of the fault-latency histogram buckets; a last bucket takes the rest. */
export const FAULT_LATENCY_BUCKETS_NS: readonly number[] = [1_000, 10_000, 100_000, 1_000_000, 10_000_000];

/** The per-fault latency distribution: stall to successful retry, in virtual ns. */
export interface FaultLatencySnapshot {
  readonly count: number;
  /** 0 when count is 0. */
  readonly minNs: number;
  readonly maxNs: number;
  readonly meanNs: number;
  /** Counts per bucket: [0, 1 us), [1, 10 us), [10, 100 us), [100 us, 1 ms), [1, 10 ms), [10 ms, inf). */
  readonly histogram: readonly number[];
}

/** A copy of every counter at one instant. */
export interface DeviceStatsSnapshot {
  readonly accesses: number;
  readonly loads: number;
  readonly stores: number;
  readonly atomics: number;
  readonly prefetches: number;
  readonly tlbHits: number;
  readonly tlbMisses: number;
  readonly pageWalks: number;
  readonly faults: number;
  readonly faultsDropped: number;
  readonly replays: number;
  readonly cancels: number;
  readonly invalidations: number;
  readonly invalidationsAll: number;
  readonly pagesInvalidated: number;
  readonly tlbEntriesInvalidated: number;
  readonly ptMaps: number;
  readonly ptUnmaps: number;
  readonly copies: number;
  readonly pagesCopied: number;
  readonly jobs: number;
  readonly faultLatency: FaultLatencySnapshot;
}

export class DeviceStats {
  /** Accesses that touched memory (loads, stores, atomics), counted once each, however many retries. */
  accesses = 0;
  loads = 0;
  stores = 0;
  /** Atomic accesses (add and compare-and-swap). */
  atomics = 0;
  /** Prefetch requests (translation only, no memory touched). */
  prefetches = 0;
  /** Translations served by the TLB (retries count again). */
  tlbHits = 0;
  tlbMisses = 0;
  /** Page-table walks (one per TLB miss). */
  pageWalks = 0;
  /** Fault records written to the fault buffer. */
  faults = 0;
  /** Fault records dropped because the buffer was full (the overflow flag was set). */
  faultsDropped = 0;
  /** replay() calls. */
  replays = 0;
  /** Contexts (jobs) killed by a cancel. */
  cancels = 0;
  /** Range invalidations issued. */
  invalidations = 0;
  /** Invalidate-all operations issued. */
  invalidationsAll = 0;
  /** Pages covered by range invalidations (what the driver asked for). */
  pagesInvalidated = 0;
  /** TLB entries actually dropped at invalidation completion. */
  tlbEntriesInvalidated = 0;
  /** Page-table entries written by map. */
  ptMaps = 0;
  /** Valid page-table entries cleared by unmap. */
  ptUnmaps = 0;
  /** Copy-engine operations (a batch counts once). */
  copies = 0;
  pagesCopied = 0;
  /** Jobs launched. */
  jobs = 0;

  private latCount = 0;
  private latMin = Infinity;
  private latMax = 0;
  private latSum = 0;
  private readonly latHist = new Float64Array(FAULT_LATENCY_BUCKETS_NS.length + 1);

  /** Records one serviced fault: `ns` from the access's first fault to its successful retry. */
  recordFaultLatency(ns: number): void {
    this.latCount++;
    if (ns < this.latMin) this.latMin = ns;
    if (ns > this.latMax) this.latMax = ns;
    this.latSum += ns;
    const b = FAULT_LATENCY_BUCKETS_NS;
    let i = 0;
    while (i < b.length && ns >= b[i]!) i++;
    this.latHist[i]!++;
  }

  /** The fault-latency distribution so far. */
  faultLatency(): FaultLatencySnapshot {
    const n = this.latCount;
    return {
      count: n,
      minNs: n === 0 ? 0 : this.latMin,
      maxNs: this.latMax,
      meanNs: n === 0 ? 0 : this.latSum / n,
      histogram: Array.from(this.latHist),
    };
  }

  /** Every counter, copied. */
  snapshot(): DeviceStatsSnapshot {
    return {
      accesses: this.accesses,
      loads: this.loads,
      stores: this.stores,
      atomics: this.atomics,
      prefetches: this.prefetches,
      tlbHits: this.tlbHits,
      tlbMisses: this.tlbMisses,
      pageWalks: this.pageWalks,
      faults: this.faults,
      faultsDropped: this.faultsDropped,
      replays: this.replays,
      cancels: this.cancels,
      invalidations: this.invalidations,
      invalidationsAll: this.invalidationsAll,
      pagesInvalidated: this.pagesInvalidated,
      tlbEntriesInvalidated: this.tlbEntriesInvalidated,
      ptMaps: this.ptMaps,
      ptUnmaps: this.ptUnmaps,
      copies: this.copies,
      pagesCopied: this.pagesCopied,
      jobs: this.jobs,
      faultLatency: this.faultLatency(),
    };
  }
}
