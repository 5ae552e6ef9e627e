/**
 * Rule 1, translation coherence: every device access, TLB hit or page walk, translates to the
 * frame that the CPU page table maps at that instant for that address (for a device-private or
 * device-exclusive CPU entry, to the frame the entry designates), and writes only where the CPU
 * entry permits writing.
 *
 * Checked on 'device.access', which the device emits in the same synchronous step as the byte
 * access, so the CPU entry read here is the one in force when the device touched memory.
 * Cost: one CPU page-table lookup (O(1) with the walk cache).
 */
import {
  type MmStruct,
  PTE_KIND_MASK,
  PTE_PRESENT,
  PTE_PROTNONE,
  PTE_SWP_DEVICE_EXCLUSIVE,
  PTE_SWP_DEVICE_PRIVATE,
  PTE_SWP_MIGRATION,
  PTE_WRITE,
  PTE_ZERO,
} from '../mm/index.js';
import type { TraceEvent } from '../sim/index.js';
import { type OracleContext, hex } from './context.js';
import { frameInfo } from './report.js';
import type { DeviceWatch } from './watch.js';

/** What the CPU page table says about one page, for a secondary MMU. */
export interface CpuTarget {
  /** The frame a secondary MMU may translate to, or -1 when it may not translate at all. */
  readonly pfn: number;
  /** Whether a secondary MMU may write through it. */
  readonly writable: boolean;
  /** The CPU entry, described. */
  readonly desc: string;
}

/** Describes the CPU entry of page `vpn` of `mm` and what it permits a device. */
export function cpuTarget(mm: MmStruct, vpn: number): CpuTarget {
  const bits = mm.pgtable.bitsAt(vpn);
  const pfn = mm.pgtable.pfnAt(vpn);
  if (bits === 0) return { pfn: -1, writable: false, desc: 'no CPU entry (pte_none)' };
  if (bits & PTE_PRESENT) {
    if (bits & PTE_PROTNONE) return { pfn: -1, writable: false, desc: `a PROT_NONE CPU entry for pfn ${pfn}` };
    const writable = (bits & PTE_WRITE) !== 0 && (bits & PTE_ZERO) === 0;
    return { pfn, writable, desc: `a present ${writable ? 'writable' : 'read-only'} CPU entry for pfn ${pfn}${bits & PTE_ZERO ? ' (the zero page)' : ''}` };
  }
  const kind = bits & PTE_KIND_MASK;
  const w = (bits & PTE_WRITE) !== 0;
  if (kind === PTE_SWP_DEVICE_PRIVATE) return { pfn, writable: w, desc: `a ${w ? 'writable' : 'read-only'} device-private CPU entry for pfn ${pfn}` };
  if (kind === PTE_SWP_DEVICE_EXCLUSIVE) return { pfn, writable: w, desc: `a ${w ? 'writable' : 'read-only'} device-exclusive CPU entry for pfn ${pfn}` };
  if (kind === PTE_SWP_MIGRATION) return { pfn: -1, writable: false, desc: `a migration entry for pfn ${pfn} (the page is being migrated)` };
  return { pfn: -1, writable: false, desc: `an unknown CPU entry (bits ${hex(bits)})` };
}

/** Checks one 'device.access' against the CPU page table. Returns false if it reported. */
export function checkTranslation(ctx: OracleContext, w: DeviceWatch, ev: TraceEvent<'device.access'>, installedGeneration: number | null): boolean {
  const vpn = Math.floor(ev.addr / 4096);
  const cpu = cpuTarget(w.mm, vpn);
  const how = `${ev.tlbHit ? 'TLB hit' : 'page walk'}`;
  const what = `${w.device.name} ${ev.kind} of ${ev.size} bytes at ${hex(ev.addr)}`;
  let check: 'no-cpu-mapping' | 'frame-mismatch' | 'write-not-permitted' | null = null;
  let message = '';
  if (cpu.pfn < 0) {
    check = 'no-cpu-mapping';
    message = `${what} translated (${how}) to pfn ${ev.pfn}, but the CPU page table has ${cpu.desc}: no device may translate this page`;
  } else if (cpu.pfn !== ev.pfn) {
    check = 'frame-mismatch';
    message = `${what} translated (${how}) to pfn ${ev.pfn}, but the CPU page table has ${cpu.desc}`;
  } else if (ev.write && !cpu.writable) {
    check = 'write-not-permitted';
    message = `${what} wrote pfn ${ev.pfn} (${how}), but the CPU page table has ${cpu.desc}`;
  }
  if (check === null) return true;
  const frames = [frameInfo(ctx.phys, ev.pfn, 'device translation', installedGeneration)];
  if (cpu.pfn >= 0 && cpu.pfn !== ev.pfn) frames.push(frameInfo(ctx.phys, cpu.pfn, 'CPU mapping'));
  else if (cpu.pfn < 0) {
    const p = w.mm.pgtable.pfnAt(vpn);
    if (p !== ev.pfn && w.mm.pgtable.bitsAt(vpn) !== 0) frames.push(frameInfo(ctx.phys, p, 'CPU entry'));
  }
  ctx.report({
    rule: 'translation',
    check,
    message,
    details: [`job ${ev.job} warp ${ev.warp} engine ${ev.engine}`],
    mm: w.mm.id,
    mmName: w.mm.name,
    addr: ev.addr,
    device: w.device.name,
    asid: w.as.asid,
    frames,
    event: ev,
  });
  return false;
}
