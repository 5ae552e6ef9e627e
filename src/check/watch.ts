/**
 * What the oracle knows of one watched device address space: its declaration (the mm it
 * mirrors, the notifier subscriptions through which it is told of invalidations, its pgmap
 * owner), a shadow of its page table and TLB built from the trace, and the invalidations it
 * has been told of and that have not ended yet (its obligations).
 *
 * The shadows exist for two questions the device's read-only views cannot answer cheaply:
 * which entries refer to frame `pfn` (at the moment of a free), and with which frame
 * generation each entry was installed (at the moment of use). Page-table shadow: exact, kept
 * by 'device.pt_map' and 'device.pt_unmap'. TLB shadow: a superset of the real TLB, kept by
 * 'device.tlb_fill' and completed 'device.tlb_invalidate' (LRU evictions and permission drops
 * are not traced, so evicted entries linger until an invalidation covers them); every answer
 * is confirmed against the real TLB with `tlb.peek`, so the superset never causes a report.
 *
 * Cost: O(1) per map or fill; O(min(pages in range, entries held)) per unmap or invalidation.
 */
import type { Device, DeviceAddressSpace } from '../device/index.js';
import type { MmStruct } from '../mm/index.js';
import type { MmuIntervalNotifier, MmuNotifier } from '../notifier/index.js';

/** A shadow entry: the frame, its generation when the entry was made, and the permissions. */
export interface ShadowEntry {
  readonly pfn: number;
  readonly generation: number;
  readonly write: boolean;
  /** Trace seq of the event that made it. */
  readonly seq: number;
}

/**
 * One obligation: the device was told (its callback for invalidation `rangeId` returned), so
 * until the invalidation ends it holds and installs nothing in [startVpn, endVpn) (for a
 * permission-only event: nothing the new permissions forbid).
 */
export interface Obligation {
  readonly rangeId: number;
  /** The subscription whose callback made it, and its kind (which end releases it). */
  readonly sub: string;
  readonly kind: 'interval' | 'classic';
  readonly startVpn: number;
  readonly endVpn: number;
  /** The mmu notifier event. */
  readonly event: number;
  /** Trace seq of the callback event. */
  readonly seq: number;
}

/** How a watched device is told of invalidations: subscription names or the notifier objects. */
export type NotifierSub = string | MmuIntervalNotifier | MmuNotifier;

/** Options of Oracle.watchDevice. */
export interface WatchDeviceOptions {
  /** The device address space that mirrors `mm`. */
  readonly as: DeviceAddressSpace;
  /** The mm it mirrors (device virtual addresses are the mm's addresses). */
  readonly mm: MmStruct;
  /**
   * The notifier subscriptions whose callbacks zap this device's entries: the names (as in
   * 'notifier.callback' events) or the notifier objects. An interval notifier's obligation
   * covers the invalidated range within the notifier's interval; a classic one's, the whole
   * range. List only subscriptions that invalidate: a notifier that only bumps a sequence
   * (nouveau's fault-window notifiers) must not be listed.
   */
  readonly notifierSubs: readonly NotifierSub[];
  /**
   * The driver's pgmap owner: MIGRATE and EXCLUSIVE invalidations whose range owner is this
   * object are the driver's own and may be skipped. Default: the device memory's owner
   * (`device.memory.owner`), or none.
   */
  readonly owner?: unknown;
}

/** The name a subscription has in 'notifier.callback' events. */
export function subName(s: NotifierSub): string {
  return typeof s === 'string' ? s : s.name;
}

export class DeviceWatch {
  readonly device: Device;
  readonly as: DeviceAddressSpace;
  readonly mm: MmStruct;
  readonly owner: unknown;
  /** Subscription names, and the interval-notifier objects given (for their intervals). */
  readonly subNames: ReadonlySet<string>;
  readonly subObjects: readonly NotifierSub[];
  /** Page-table shadow: vpn -> entry. */
  readonly pt = new Map<number, ShadowEntry>();
  /** TLB shadow (a superset of the TLB): vpn -> entry. */
  readonly tlb = new Map<number, ShadowEntry>();
  /** Obligations in force (few at a time: one per overlapping invalidation in flight). */
  readonly obligations: Obligation[] = [];
  private readonly ptByPfn = new Map<number, Set<number>>();
  private readonly tlbByPfn = new Map<number, Set<number>>();

  constructor(device: Device, opts: WatchDeviceOptions) {
    this.device = device;
    this.as = opts.as;
    this.mm = opts.mm;
    this.owner = opts.owner !== undefined ? opts.owner : (device.memory?.owner ?? null);
    this.subObjects = [...opts.notifierSubs];
    this.subNames = new Set(opts.notifierSubs.map(subName));
  }

  get key(): string {
    return watchKey(this.device.name, this.as.asid);
  }

  toString(): string {
    return `${this.device.name} asid ${this.as.asid}`;
  }

  // ---- page-table shadow ----

  ptSet(vpn: number, e: ShadowEntry): void {
    const old = this.pt.get(vpn);
    if (old !== undefined) unindex(this.ptByPfn, old.pfn, vpn);
    this.pt.set(vpn, e);
    index(this.ptByPfn, e.pfn, vpn);
  }

  ptClear(startVpn: number, endVpn: number): void {
    forKeysIn(this.pt, startVpn, endVpn, (vpn, e) => {
      this.pt.delete(vpn);
      unindex(this.ptByPfn, e.pfn, vpn);
    });
  }

  // ---- TLB shadow ----

  tlbSet(vpn: number, e: ShadowEntry): void {
    const old = this.tlb.get(vpn);
    if (old !== undefined) unindex(this.tlbByPfn, old.pfn, vpn);
    this.tlb.set(vpn, e);
    index(this.tlbByPfn, e.pfn, vpn);
  }

  tlbClear(startVpn: number, endVpn: number): void {
    forKeysIn(this.tlb, startVpn, endVpn, (vpn, e) => {
      this.tlb.delete(vpn);
      unindex(this.tlbByPfn, e.pfn, vpn);
    });
  }

  // ---- questions, answered against the real tables ----

  /** The vpns whose page-table entry refers to `pfn` now. */
  ptRefs(pfn: number): number[] {
    const out: number[] = [];
    const vpns = this.ptByPfn.get(pfn);
    if (vpns === undefined || this.as.isDestroyed) return out;
    for (const vpn of vpns) if (this.as.pageTable.pfnAt(vpn) === pfn) out.push(vpn);
    return out;
  }

  /** The vpns whose TLB entry refers to `pfn` now. */
  tlbRefs(pfn: number): number[] {
    const out: number[] = [];
    const vpns = this.tlbByPfn.get(pfn);
    if (vpns === undefined || this.as.isDestroyed) return out;
    for (const vpn of vpns) if (this.as.tlb.peek(vpn) === pfn) out.push(vpn);
    return out;
  }

  /** Calls `fn` for each TLB entry held now in [startVpn, endVpn) (with its shadow, if it matches). */
  forTlbIn(startVpn: number, endVpn: number, fn: (vpn: number, pfn: number, shadow: ShadowEntry | undefined) => void): void {
    if (this.as.isDestroyed) return;
    forKeysIn(this.tlb, startVpn, endVpn, (vpn, e) => {
      const pfn = this.as.tlb.peek(vpn);
      if (pfn >= 0) fn(vpn, pfn, pfn === e.pfn ? e : undefined);
    });
  }
}

/** The key of a watched address space: device name and asid. */
export function watchKey(device: string, asid: number): string {
  return `${device}\u0000${asid}`;
}

function index(m: Map<number, Set<number>>, pfn: number, vpn: number): void {
  let s = m.get(pfn);
  if (s === undefined) m.set(pfn, (s = new Set()));
  s.add(vpn);
}

function unindex(m: Map<number, Set<number>>, pfn: number, vpn: number): void {
  const s = m.get(pfn);
  if (s === undefined) return;
  s.delete(vpn);
  if (s.size === 0) m.delete(pfn);
}

/**
 * Calls `fn` for every key of `m` in [start, end): probes each key of a short range, scans the
 * map for a wide one, so the cost is O(min(end - start, m.size)). `fn` may delete the key.
 */
export function forKeysIn<V>(m: Map<number, V>, start: number, end: number, fn: (key: number, value: V) => void): void {
  if (start >= end || m.size === 0) return;
  if (end - start <= m.size) {
    for (let k = start; k < end; k++) {
      const v = m.get(k);
      if (v !== undefined) fn(k, v);
    }
    return;
  }
  const hits: number[] = [];
  for (const k of m.keys()) if (k >= start && k < end) hits.push(k);
  hits.sort((a, b) => a - b);
  for (const k of hits) fn(k, m.get(k)!);
}
