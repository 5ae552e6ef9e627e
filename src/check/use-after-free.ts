/**
 * Rule 3, no use after free: no device entry refers to a frame that was freed or reused.
 *
 * A frame's generation is bumped at every free (PhysMem.generation), so an entry remembers the
 * generation its frame had when the entry was made (the page-table shadow at 'device.pt_map';
 * a TLB fill inherits it from the page-table entry it copied). Three moments are checked:
 * - at use ('device.access'): the frame is free now (refcount 0), or its generation differs
 *   from the one the entry was made at (freed and reused since: an ABA the frame number alone
 *   cannot show);
 * - at map ('device.pt_map'): the driver maps a free frame;
 * - at free ('page.free'): some watched device's page table or TLB still refers to the frame.
 * Cost: O(1) at use and map; at free, O(entries the shadows hold for that frame).
 */
import { ZERO_PFN } from '../mm/index.js';
import type { TraceEvent } from '../sim/index.js';
import { type OracleContext, hex } from './context.js';
import { frameInfo } from './report.js';
import type { DeviceWatch } from './watch.js';

/** Checks one 'device.access' for a free or reused frame. Returns false if it reported. */
export function checkUseAtAccess(ctx: OracleContext, w: DeviceWatch, ev: TraceEvent<'device.access'>, installedGeneration: number | null): boolean {
  const pfn = ev.pfn;
  if (pfn === ZERO_PFN) return true;
  const free = ctx.phys.refcount[pfn] === 0;
  const reused = installedGeneration !== null && installedGeneration !== ev.generation;
  if (!free && !reused) return true;
  const how = ev.tlbHit ? 'a TLB entry' : 'a page-table entry';
  const message = free
    ? `${w.device.name} ${ev.kind} at ${hex(ev.addr)} used ${how} for pfn ${pfn}, which is free (refcount 0)`
    : `${w.device.name} ${ev.kind} at ${hex(ev.addr)} used ${how} made when pfn ${pfn} had generation ${installedGeneration}; the frame was freed and reused since (generation ${ev.generation})`;
  ctx.report({
    rule: 'use-after-free',
    check: 'at-use',
    message,
    mm: w.mm.id,
    mmName: w.mm.name,
    addr: ev.addr,
    device: w.device.name,
    asid: w.as.asid,
    frames: [frameInfo(ctx.phys, pfn, 'device translation', installedGeneration)],
    event: ev,
  });
  return false;
}

/** Checks one 'device.pt_map' for a free frame. Returns false if it reported. */
export function checkUseAtMap(ctx: OracleContext, w: DeviceWatch, ev: TraceEvent<'device.pt_map'>): boolean {
  const pfn = ev.pfn;
  if (pfn === ZERO_PFN || ctx.phys.refcount[pfn] !== 0) return true;
  const addr = ev.vpn * 4096;
  ctx.report({
    rule: 'use-after-free',
    check: 'at-map',
    message: `${w.device.name} maps ${hex(addr)} to pfn ${pfn}, which is free (refcount 0)`,
    mm: w.mm.id,
    mmName: w.mm.name,
    addr,
    device: w.device.name,
    asid: w.as.asid,
    frames: [frameInfo(ctx.phys, pfn, 'mapped by the device')],
    event: ev,
  });
  return false;
}

/** Checks one 'page.free' against every watched device. Returns false if it reported. */
export function checkUseAtFree(ctx: OracleContext, watches: Iterable<DeviceWatch>, ev: TraceEvent<'page.free'>): boolean {
  const pfn = ev.pfn;
  for (const w of watches) {
    const pt = w.ptRefs(pfn);
    const tlb = w.tlbRefs(pfn);
    if (pt.length === 0 && tlb.length === 0) continue;
    const vpn = pt.length > 0 ? pt[0]! : tlb[0]!;
    const where: string[] = [];
    if (pt.length > 0) where.push(`its page table at ${pt.map((v) => hex(v * 4096)).join(', ')}`);
    if (tlb.length > 0) where.push(`its TLB at ${tlb.map((v) => hex(v * 4096)).join(', ')}`);
    const installed = w.pt.get(vpn)?.generation ?? w.tlb.get(vpn)?.generation ?? null;
    ctx.report({
      rule: 'use-after-free',
      check: 'at-free',
      message: `pfn ${pfn} was freed (now generation ${ev.generation}) while ${w.device.name} asid ${w.as.asid} still refers to it in ${where.join(' and ')}`,
      mm: w.mm.id,
      mmName: w.mm.name,
      addr: vpn * 4096,
      device: w.device.name,
      asid: w.as.asid,
      frames: [frameInfo(ctx.phys, pfn, 'freed frame still mapped by the device', installed)],
      event: ev,
    });
    return false;
  }
  return true;
}
