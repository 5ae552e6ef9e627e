/**
 * Rule 2, invalidation discipline: once a device's invalidate callback for a range has
 * returned (for an event it does not legitimately skip), the device holds no page-table or TLB
 * entry in the range, and installs none there until that invalidation has ended.
 *
 * - An entry installed after the invalidation started but before the device's callback ran is
 *   legal (the CPU entry has not changed yet, and the callback removes it): obligations start
 *   when the callback returns ('notifier.callback', emitted right after it returned).
 * - Over-invalidation is legal: only entries that remain are looked at.
 * - Legitimate skips: MIGRATE and EXCLUSIVE events whose range owner is the device's pgmap
 *   owner (the driver then zaps its own entries itself; if it does not, rules 1 and 3 catch the
 *   stale entry later). No obligation is made for them.
 * - Permission-only events (PROTECTION_VMA, PROTECTION_PAGE, SOFT_DIRTY) keep the frame and
 *   only take permissions away, so the device may keep (and install) entries that the new
 *   permissions allow: read-only ones (for PROTECTION_VMA: whatever the VMA, whose new flags
 *   mprotect sets before invalidating, still allows). The 2015 API's FORK and WRITE_PROTECT
 *   updates write-protect device entries this way.
 * - A callback that refused a non-blockable range (false, -EAGAIN) promised nothing: the
 *   invalidation fails and the CPU entries do not change. On a blockable range the refusal is
 *   only WARNed and the invalidation proceeds, so the obligation stands.
 * - The end: an interval subscription's obligations end when the mm's invalidate_seq goes even
 *   (mn_itree_inv_end of the last overlapping invalidation: read_retry can succeed from then
 *   on); a classic one's when its own invalidate_range_end returned; every obligation of an
 *   invalidation ends at 'notifier.invalidate_end'. A classic ->release obliges the device to
 *   drop everything of the mm.
 * An interval subscription's obligation covers the range within the notifier's interval (other
 * notifiers of the same device guard the rest); a classic one's, the whole range.
 *
 * Cost: per callback of a watched subscription, O(device entries in the range) (page-table
 * walk plus the TLB shadow); per 'device.pt_map' or 'device.tlb_fill', O(obligations in force).
 */
import { DEV_PTE_WRITE } from '../device/index.js';
import { PAGE_SIZE, VM_EXEC, VM_READ, VM_WRITE, VPN_LIMIT } from '../mm/index.js';
import {
  MMU_NOTIFY_EXCLUSIVE,
  MMU_NOTIFY_MIGRATE,
  MMU_NOTIFY_PROTECTION_PAGE,
  MMU_NOTIFY_PROTECTION_VMA,
  MMU_NOTIFY_RELEASE,
  MMU_NOTIFY_SOFT_DIRTY,
  MmuIntervalNotifier,
  ULONG_MAX_ADDR,
  mmuNotifierEventName,
} from '../notifier/index.js';
import type { TraceEvent } from '../sim/index.js';
import { type OracleContext, hex } from './context.js';
import { frameInfo } from './report.js';
import type { DeviceWatch, Obligation, ShadowEntry } from './watch.js';

/** An invalidation in progress, from its 'notifier.invalidate_start'. */
export interface ActiveRange {
  readonly id: number;
  readonly mm: number;
  readonly start: number;
  readonly end: number;
  readonly event: number;
  readonly blockable: boolean;
  /** range->owner: the object when it could be found on the mm's active-range list, else the traced string. */
  readonly owner: unknown;
  readonly ownerIsObject: boolean;
}

/** Events that take permissions away without changing the frame. */
export function permissionOnly(event: number): boolean {
  return event === MMU_NOTIFY_PROTECTION_VMA || event === MMU_NOTIFY_PROTECTION_PAGE || event === MMU_NOTIFY_SOFT_DIRTY;
}

/** MIGRATE or EXCLUSIVE owned by the device's own pgmap owner: the driver may skip it. */
export function legitimateSkip(r: ActiveRange, w: DeviceWatch): boolean {
  if (r.event !== MMU_NOTIFY_MIGRATE && r.event !== MMU_NOTIFY_EXCLUSIVE) return false;
  if (w.owner === null || w.owner === undefined || r.owner === null || r.owner === undefined) return false;
  return r.ownerIsObject ? r.owner === w.owner : r.owner === String(w.owner);
}

function vpnSpan(start: number, end: number): [number, number] {
  return [Math.floor(start / PAGE_SIZE), Math.min(VPN_LIMIT, Math.ceil(Math.min(end, ULONG_MAX_ADDR) / PAGE_SIZE))];
}

/** May an entry (writable or not) be held or installed at `vpn` while `o` is in force? */
function entryAllowed(w: DeviceWatch, o: Obligation, vpn: number, write: boolean): boolean {
  if (!permissionOnly(o.event)) return false;
  if (o.event === MMU_NOTIFY_PROTECTION_VMA) {
    const vma = w.mm.vmas.lookup(vpn * PAGE_SIZE);
    if (vma === null) return false;
    return write ? vma.writable() : (vma.flags & (VM_READ | VM_WRITE | VM_EXEC)) !== 0;
  }
  return !write;
}

function describe(o: Obligation, r: ActiveRange | null): string {
  const span = r !== null ? `[${hex(r.start)}, ${hex(r.end)})` : `[${hex(o.startVpn * PAGE_SIZE)}, ${hex(o.endVpn * PAGE_SIZE)})`;
  return `invalidation #${o.rangeId} ${span} ${mmuNotifierEventName(o.event)}`;
}

/** The spans a callback of `sub` obliges the device to clear: the range within the notifier's interval. */
function obligationSpans(w: DeviceWatch, r: ActiveRange, sub: string, kind: 'interval' | 'classic'): Array<[number, number]> {
  if (kind === 'classic') return [vpnSpan(r.start, r.end)];
  let subs: readonly MmuIntervalNotifier[] = w.subObjects.filter((s): s is MmuIntervalNotifier => s instanceof MmuIntervalNotifier && s.name === sub);
  if (subs.length === 0) subs = (w.mm.notifierSubscriptions?.itree.search(r.start, r.end - 1) ?? []).filter((s) => s.name === sub);
  if (subs.length === 0) return [vpnSpan(r.start, r.end)];
  const out: Array<[number, number]> = [];
  for (const s of subs) {
    const a = Math.max(r.start, s.start);
    const b = Math.min(r.end, s.last + 1);
    if (a < b) out.push(vpnSpan(a, b));
  }
  return out;
}

/**
 * A watched subscription's start (or release) callback returned: checks what the device still
 * holds and puts the obligation in force. `r` is null for a ->release from unregister (no
 * range: only the check, since nothing will tell the device of later invalidations).
 */
export function callbackReturned(ctx: OracleContext, w: DeviceWatch, r: ActiveRange | null, ev: TraceEvent<'notifier.callback'>): void {
  const spans: Array<[number, number]> = r === null || ev.phase === 'release' ? [[0, VPN_LIMIT]] : obligationSpans(w, r, ev.sub, ev.kind);
  const event = r === null || ev.phase === 'release' ? MMU_NOTIFY_RELEASE : r.event;
  for (const [startVpn, endVpn] of spans) {
    const o: Obligation = { rangeId: ev.range, sub: ev.sub, kind: ev.kind, startVpn, endVpn, event, seq: ev.seq };
    if (!checkHeld(ctx, w, o, r, ev)) return;
    if (r !== null) w.obligations.push(o);
  }
}

/** Reports the first entry the device still holds in `o`'s span. Returns false if it reported. */
function checkHeld(ctx: OracleContext, w: DeviceWatch, o: Obligation, r: ActiveRange | null, ev: TraceEvent<'notifier.callback'>): boolean {
  if (w.as.isDestroyed) return true;
  let bad: { vpn: number; pfn: number; write: boolean; where: 'page-table' | 'TLB'; shadow: ShadowEntry | undefined } | null = null;
  w.as.pageTable.forEach(
    (vpn, pfn, flags) => {
      if (bad === null && !entryAllowed(w, o, vpn, (flags & DEV_PTE_WRITE) !== 0)) bad = { vpn, pfn, write: (flags & DEV_PTE_WRITE) !== 0, where: 'page-table', shadow: w.pt.get(vpn) };
    },
    o.startVpn,
    o.endVpn,
  );
  if (bad === null) {
    w.forTlbIn(o.startVpn, o.endVpn, (vpn, pfn, shadow) => {
      // Without a matching shadow the cached permissions are unknown: allowed only if nothing is.
      if (bad === null && (shadow === undefined || !entryAllowed(w, o, vpn, shadow.write))) bad = { vpn, pfn, write: shadow?.write ?? true, where: 'TLB', shadow };
    });
  }
  if (bad === null) return true;
  const b: { vpn: number; pfn: number; write: boolean; where: 'page-table' | 'TLB'; shadow: ShadowEntry | undefined } = bad;
  const addr = b.vpn * PAGE_SIZE;
  const details: string[] = [];
  if (b.where === 'TLB') {
    details.push(w.as.pageTable.flagsAt(b.vpn) === 0 ? 'the page-table entry is gone but the TLB still caches the translation: was the TLB invalidated, and its fence waited for, before the callback returned?' : 'the TLB caches the translation as well');
  }
  if (permissionOnly(o.event)) details.push(`a permission-only event: a ${b.write ? 'writable' : 'read-only'} entry is not allowed here by the new permissions`);
  ctx.report({
    rule: 'invalidation',
    check: 'entry-after-callback',
    message: `${w.device.name} still holds a ${b.write ? 'writable' : 'read-only'} ${b.where} entry ${hex(addr)} -> pfn ${b.pfn} after its ${ev.kind} ${ev.phase === 'release' ? 'release' : 'invalidate'} callback ${ev.sub} returned for ${describe(o, r)}`,
    details,
    mm: w.mm.id,
    mmName: w.mm.name,
    addr,
    device: w.device.name,
    asid: w.as.asid,
    frames: [frameInfo(ctx.phys, b.pfn, `held by the device's ${b.where}`, b.shadow?.generation ?? null)],
    event: ev,
  });
  return false;
}

/**
 * A 'device.pt_map' or 'device.tlb_fill' at `vpn`: reports it if an obligation forbids it.
 * `ranges` gives the invalidations for the message. Returns false if it reported.
 */
export function checkInstall(
  ctx: OracleContext,
  w: DeviceWatch,
  vpn: number,
  pfn: number,
  write: boolean,
  ev: TraceEvent<'device.pt_map'> | TraceEvent<'device.tlb_fill'>,
  ranges: ReadonlyMap<number, ActiveRange>,
): boolean {
  const obs = w.obligations;
  for (let i = 0; i < obs.length; i++) {
    const o = obs[i]!;
    if (vpn < o.startVpn || vpn >= o.endVpn || entryAllowed(w, o, vpn, write)) continue;
    const addr = vpn * PAGE_SIZE;
    const what = ev.type === 'device.pt_map' ? 'page-table entry' : 'TLB entry (filled by a page walk)';
    ctx.report({
      rule: 'invalidation',
      check: 'install-during-invalidation',
      message: `${w.device.name} installed a ${write ? 'writable' : 'read-only'} ${what} ${hex(addr)} -> pfn ${pfn} during ${describe(o, ranges.get(o.rangeId) ?? null)}, after its callback ${o.sub} returned (event #${o.seq}) and before the invalidation ended`,
      details: ['a mapping built from a walk that raced with the invalidation: the fault path must check mmu_interval_read_retry (or its equivalent) under the lock the callback takes'],
      mm: w.mm.id,
      mmName: w.mm.name,
      addr,
      device: w.device.name,
      asid: w.as.asid,
      frames: [frameInfo(ctx.phys, pfn, 'installed by the device')],
      event: ev,
    });
    return false;
  }
  return true;
}

/** Ends every obligation of invalidation `rangeId`. */
export function endRange(w: DeviceWatch, rangeId: number): void {
  removeWhere(w.obligations, (o) => o.rangeId === rangeId);
}

/** Ends the interval-notifier obligations (invalidate_seq went even). */
export function endInterval(w: DeviceWatch): void {
  removeWhere(w.obligations, (o) => o.kind === 'interval');
}

/** Ends the obligation a classic subscription took for `rangeId` (its invalidate_range_end returned). */
export function endClassic(w: DeviceWatch, rangeId: number, sub: string): void {
  removeWhere(w.obligations, (o) => o.kind === 'classic' && o.rangeId === rangeId && o.sub === sub);
}

function removeWhere<T>(a: T[], pred: (x: T) => boolean): void {
  let j = 0;
  for (let i = 0; i < a.length; i++) if (!pred(a[i]!)) a[j++] = a[i]!;
  a.length = j;
}
