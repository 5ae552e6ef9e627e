/**
 * Rule 4, data: the checks on accesses (the reference memory itself is reference-memory.ts).
 *
 * A CPU load ('cpu.access') or a device load or atomic ('device.access') must return the
 * reference's bytes at that address; a store (or an atomic's new value) then becomes the
 * reference's. For a device, the address is the device virtual address, which is the mirrored
 * mm's address. Device accesses reach this check only after rules 3 and 1 passed, so the frame
 * is the one the CPU maps: a difference is a lost write, not a stale translation.
 * Cost: O(bytes accessed).
 */
import { PAGE_SIZE } from '../mm/index.js';
import type { TraceEvent } from '../sim/index.js';
import { type OracleContext, hex } from './context.js';
import { type Mismatch, type ReferenceMemory, leBytes } from './reference-memory.js';
import { frameInfo } from './report.js';

function mismatchDetails(m: Mismatch, addr: number): string[] {
  const page = addr - (addr % PAGE_SIZE);
  return [
    `first differing byte at ${hex(page + m.offset)}: the 8-byte word at ${hex(page + m.wordOffset)} read as 0x${m.got.toString(16)}, the last value written there is 0x${m.want.toString(16)}`,
    m.lastWrite >= 0 ? `the page was last written at event #${m.lastWrite}` : 'the page was never written since it was mapped: it must read as zero',
  ];
}

/** A CPU access: checks a load, records a store. Returns false if it reported. */
export function checkCpuAccess(ctx: OracleContext, ref: ReferenceMemory, ev: TraceEvent<'cpu.access'>): boolean {
  if (!ref.tracks(ev.mm)) return true;
  if (ev.kind === 'store') {
    ref.write(ev.mm, ev.addr, ev.pfn, ev.bytes, ev.seq);
    return true;
  }
  const m = ref.compare(ev.mm, ev.addr, ev.pfn, ev.bytes);
  if (m === null) return true;
  ctx.report({
    rule: 'data',
    check: 'stale-read',
    message: `CPU load of ${ev.size} bytes at ${hex(ev.addr)} by ${ev.task || 'a task'} through pfn ${ev.pfn} did not return the last value written there`,
    details: mismatchDetails(m, ev.addr),
    mm: ev.mm,
    mmName: ctx.mmName(ev.mm),
    addr: ev.addr,
    frames: [frameInfo(ctx.phys, ev.pfn, 'CPU mapping')],
    event: ev,
  });
  return false;
}

/** A device access (translation already checked): checks a load or atomic, records a store. */
export function checkDeviceAccess(ctx: OracleContext, ref: ReferenceMemory, mm: number, ev: TraceEvent<'device.access'>): boolean {
  if (!ref.tracks(mm)) return true;
  if (ev.loaded !== null) {
    const m = ref.compare(mm, ev.addr, ev.pfn, leBytes(ev.loaded, ev.size));
    if (m !== null) {
      ctx.report({
        rule: 'data',
        check: 'stale-read',
        message: `${ev.device} ${ev.kind} of ${ev.size} bytes at ${hex(ev.addr)} through pfn ${ev.pfn} read 0x${ev.loaded.toString(16)}, not the last value written there`,
        details: mismatchDetails(m, ev.addr),
        mm,
        mmName: ctx.mmName(mm),
        addr: ev.addr,
        device: ev.device,
        asid: ev.asid,
        frames: [frameInfo(ctx.phys, ev.pfn, 'device translation')],
        event: ev,
      });
      return false;
    }
  }
  if (ev.stored !== null) ref.write(mm, ev.addr, ev.pfn, leBytes(ev.stored, ev.size), ev.seq);
  return true;
}
