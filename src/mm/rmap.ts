/**
 * The reverse map of device pages: where each device frame is mapped (mm, address).
 *
 * Models: the part of mm/rmap.c that migrate_device_range and remove_migration_ptes need for
 * device pages. We keep no reverse map for system pages (see src/mm/migrate.ts); device pages
 * need one because eviction (migrate_device_range) starts from the pfn, and because a device
 * page shared after fork must be found in every mm when it migrates back.
 *
 * Records are hints: every user verifies a record against the page table (mapsPfn), and a
 * stale record is pruned when its slot is reused. Installers of device-private or migration
 * entries of device pfns call deviceRmapAdd (src/hmm/migrate.ts, fork's copy_nonpresent_pte,
 * mremap's move); removers call deviceRmapRemove (zap, mremap). Protected like the page table
 * (the ptl of the mm named by the record); one slot per device pfn, overflow in a Map.
 */
import { PTE_KIND_MASK, PTE_PRESENT, PTE_SWP_DEVICE_PRIVATE, PTE_SWP_MIGRATION } from './constants.js';
import type { MmStruct } from './mm.js';
import { vpnOf } from './pagetable.js';
import type { PhysMem } from './phys.js';


/** One recorded mapping of a device page. */
export interface DeviceMapping {
  readonly mm: MmStruct;
  readonly addr: number;
}

/** Per-PhysMem record of where device pages are mapped: one slot per device pfn, overflow in a Map. */
class DeviceRmap {
  private readonly base: number;
  private readonly mms: Array<MmStruct | null>;
  private readonly addrs: Float64Array;
  private readonly extra = new Map<number, DeviceMapping[]>();

  constructor(phys: PhysMem) {
    this.base = phys.firstDevicePfn;
    const n = phys.totalFrames - this.base;
    this.mms = new Array<MmStruct | null>(n).fill(null);
    this.addrs = new Float64Array(n);
  }

  add(pfn: number, mm: MmStruct, addr: number): void {
    const i = pfn - this.base;
    const cur = this.mms[i]!;
    if (cur === mm && this.addrs[i] === addr) return;
    if (cur === null || !deviceRmapMapsPfn(cur, this.addrs[i]!, pfn)) {
      // An empty or stale slot: take it.
      this.mms[i] = mm;
      this.addrs[i] = addr;
      return;
    }
    let list = this.extra.get(pfn);
    if (list === undefined) {
      list = [];
      this.extra.set(pfn, list);
    }
    for (let k = list.length - 1; k >= 0; k--) {
      const e = list[k]!;
      if (e.mm === mm && e.addr === addr) return;
      if (!deviceRmapMapsPfn(e.mm, e.addr, pfn)) list.splice(k, 1);
    }
    list.push({ mm, addr });
  }

  remove(pfn: number, mm: MmStruct, addr: number): void {
    const i = pfn - this.base;
    const list = this.extra.get(pfn);
    if (this.mms[i] === mm && this.addrs[i] === addr) {
      const next = list?.pop();
      if (next === undefined) {
        this.mms[i] = null;
      } else {
        this.mms[i] = next.mm;
        this.addrs[i] = next.addr;
      }
      if (list !== undefined && list.length === 0) this.extra.delete(pfn);
      return;
    }
    if (list === undefined) return;
    const k = list.findIndex((e) => e.mm === mm && e.addr === addr);
    if (k >= 0) list.splice(k, 1);
    if (list.length === 0) this.extra.delete(pfn);
  }

  /** A snapshot of the recorded mappings of `pfn` (callers verify each). */
  mappings(pfn: number): DeviceMapping[] {
    const i = pfn - this.base;
    const mm = this.mms[i];
    const out: DeviceMapping[] = mm === null || mm === undefined ? [] : [{ mm, addr: this.addrs[i]! }];
    const list = this.extra.get(pfn);
    if (list !== undefined) out.push(...list);
    return out;
  }
}

const rmaps = new WeakMap<PhysMem, DeviceRmap>();

function rmapOf(phys: PhysMem): DeviceRmap {
  let r = rmaps.get(phys);
  if (r === undefined) {
    r = new DeviceRmap(phys);
    rmaps.set(phys, r);
  }
  return r;
}

/**
 * True if the PTE at (mm, addr) maps device page `pfn` the way the reverse map tracks: a
 * device-private entry, a migration entry, or a present PTE (device-coherent memory).
 */
export function deviceRmapMapsPfn(mm: MmStruct, addr: number, pfn: number): boolean {
  const vpn = vpnOf(addr);
  const b = mm.pgtable.bitsAt(vpn);
  if (b === 0 || mm.pgtable.pfnAt(vpn) !== pfn) return false;
  if (b & PTE_PRESENT) return true;
  const kind = b & PTE_KIND_MASK;
  return kind === PTE_SWP_DEVICE_PRIVATE || kind === PTE_SWP_MIGRATION;
}

/**
 * Records that device page `pfn` is mapped at (mm, addr). For code outside this file that
 * installs device-private entries (fork's copy_nonpresent_pte). A no-op for system pfns.
 */
export function deviceRmapAdd(phys: PhysMem, pfn: number, mm: MmStruct, addr: number): void {
  if (phys.isDevicePfn(pfn)) rmapOf(phys).add(pfn, mm, addr);
}

/** Forgets the mapping of device page `pfn` at (mm, addr) (zap, or the old address of an mremap move). */
export function deviceRmapRemove(phys: PhysMem, pfn: number, mm: MmStruct, addr: number): void {
  if (phys.isDevicePfn(pfn)) rmapOf(phys).remove(pfn, mm, addr);
}

/** The verified mappings of device page `pfn` (device-private, migration or present entries). */
export function deviceRmapMappings(phys: PhysMem, pfn: number): DeviceMapping[] {
  if (!phys.isDevicePfn(pfn)) return [];
  return rmapOf(phys)
    .mappings(pfn)
    .filter((m) => deviceRmapMapsPfn(m.mm, m.addr, pfn));
}

