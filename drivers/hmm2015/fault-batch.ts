/**
 * Fault-batch preprocessing of the hmm2015 driver: coalesce the records of one drain of the
 * device's replayable fault buffer into one group per faulting page, sorted by address.
 *
 * Models: the "fault cache" step of nouveau_svm_fault (drivers/gpu/drm/nouveau/nouveau_svm.c:
 * read every entry, then sort by instance, address and access priority so that duplicates end
 * up adjacent and the strongest access of a page wins) and NVIDIA UVM's duplicate coalescing
 * (uvm_gpu_replayable_faults.c: one service per page per batch, however many warps faulted).
 *
 * Pure and synchronous: no state, no locks. Records are not modified; a group keeps them all so
 * that a failed service can cancel each faulting context (one record per context suffices, but
 * the hardware keeps one per access and cancelling twice is harmless).
 */
import { PAGE_SIZE, FAULT_ACCESS, type FaultAccess, type FaultRecord } from 'hmm-emu';

/** Every record of one page of one address space in a batch. */
export interface FaultGroup {
  /** The address space (the hardware's instance). */
  readonly asid: number;
  /** The faulting page (page aligned). */
  readonly address: number;
  /** The strongest access among the records (prefetch < read < write < atomic). */
  readonly access: FaultAccess;
  /** The records, in buffer (seq) order. */
  readonly records: readonly FaultRecord[];
}

/** Access priority: FAULT_ACCESS index (nouveau's order: prefetch < read < write < atomic). */
export function accessRank(a: FaultAccess): number {
  return FAULT_ACCESS.indexOf(a);
}

/**
 * One group per (asid, page), the strongest access of the page, sorted by asid then address.
 * `records.length - result.length` duplicates were coalesced.
 */
export function coalesceFaults(records: readonly FaultRecord[]): FaultGroup[] {
  const byKey = new Map<string, { asid: number; address: number; rank: number; records: FaultRecord[] }>();
  for (const r of records) {
    const address = r.address - (r.address % PAGE_SIZE);
    const key = `${r.asid}:${address}`;
    const rank = accessRank(r.access);
    const g = byKey.get(key);
    if (g === undefined) byKey.set(key, { asid: r.asid, address, rank, records: [r] });
    else {
      g.records.push(r);
      if (rank > g.rank) g.rank = rank;
    }
  }
  const out: FaultGroup[] = [];
  for (const g of byKey.values()) out.push({ asid: g.asid, address: g.address, access: FAULT_ACCESS[g.rank]!, records: g.records });
  out.sort((a, b) => a.asid - b.asid || a.address - b.address);
  return out;
}
