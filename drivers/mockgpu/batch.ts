/**
 * Fault-batch preprocessing of mockgpu: one drain of the replayable fault buffer becomes a
 * list of fault windows, each a set of coalesced page faults of one address space.
 *
 * Models: the fault cache of nouveau_svm_fault (drivers/gpu/drm/nouveau/nouveau_svm.c: read
 * every entry from GET to PUT, sort by instance, address and access priority with
 * nouveau_svm_fault_cmp / nouveau_svm_fault_priority, then skip duplicates that the first
 * fault of a page already satisfies) and NVIDIA UVM's batch preprocessing
 * (uvm_gpu_replayable_faults.c: fetch up to a batch of entries, sort, coalesce duplicates into
 * one serviced fault with an instance count, then service by VA block).
 *
 * The steps, each pure and synchronous (no state, no locks, no scheduling point):
 *   sortFaults      asid ascending, page ascending, access priority DESCENDING (the strongest
 *                   access of a page first, as old nouveau put WRITE before READ), seq ascending
 *   coalesceFaults  one CoalescedFault per (asid, page): the first record's access is the
 *                   page's strongest; every record is kept, so that a failed service can cancel
 *                   each faulting context (two warps of two jobs on one page: both die)
 *   groupByWindow   one FaultWindow per (asid, aligned window of `windowPages` pages): what one
 *                   worker services with one hmm_range_fault (UVM's VA block / big page)
 *
 * Access priority is nouveau's: prefetch 0 < read 1 < write 2 < atomic 3 (the device's
 * FAULT_ACCESS codes are in that order).
 */
import { PAGE_SIZE, type FaultAccess, type FaultRecord } from 'hmm-emu';

export const ACCESS_PREFETCH = 0;
export const ACCESS_READ = 1;
export const ACCESS_WRITE = 2;
export const ACCESS_ATOMIC = 3;

/** Access priority by name (nouveau_svm_fault_priority). */
export const ACCESS_PRIORITY: Readonly<Record<FaultAccess, number>> = { prefetch: ACCESS_PREFETCH, read: ACCESS_READ, write: ACCESS_WRITE, atomic: ACCESS_ATOMIC };

/** Every record of one page of one address space in a batch. */
export interface CoalescedFault {
  readonly asid: number;
  /** The faulting page (page aligned). */
  readonly address: number;
  /** The strongest access among the records (ACCESS_*). */
  readonly access: number;
  /** The records, strongest first (the sort order); length - 1 duplicates were folded in. */
  readonly records: readonly FaultRecord[];
}

/** The coalesced faults of one aligned window of one address space. */
export interface FaultWindow {
  readonly asid: number;
  /** Window index: address / (windowPages * PAGE_SIZE). */
  readonly index: number;
  /** [start, end): the aligned window (not yet clipped to a VMA). */
  readonly start: number;
  readonly end: number;
  /** The faults, ascending address. */
  readonly faults: readonly CoalescedFault[];
  /** The strongest access in the window (ACCESS_*). */
  readonly access: number;
}

/** A batch, prepared. */
export interface PreparedBatch {
  readonly windows: FaultWindow[];
  /** Records folded into another of the same page (records - distinct pages). */
  readonly duplicates: number;
  /** Distinct (asid, page) faults. */
  readonly pages: number;
}

/** nouveau_svm_fault_cmp, with the access order reversed so that the strongest comes first, then seq for a total order. */
export function compareFaults(a: FaultRecord, b: FaultRecord): number {
  return a.asid - b.asid || a.address - b.address || ACCESS_PRIORITY[b.access] - ACCESS_PRIORITY[a.access] || a.seq - b.seq;
}

/** Sorts records in place (see compareFaults) and returns them. */
export function sortFaults(records: FaultRecord[]): FaultRecord[] {
  return records.sort(compareFaults);
}

/** Folds sorted records into one fault per (asid, page); the first record of each run is its strongest access. */
export function coalesceFaults(sorted: readonly FaultRecord[]): CoalescedFault[] {
  const out: CoalescedFault[] = [];
  let cur: { asid: number; address: number; access: number; records: FaultRecord[] } | null = null;
  for (const r of sorted) {
    const address = r.address - (r.address % PAGE_SIZE);
    if (cur !== null && cur.asid === r.asid && cur.address === address) {
      cur.records.push(r);
      continue;
    }
    cur = { asid: r.asid, address, access: ACCESS_PRIORITY[r.access], records: [r] };
    out.push(cur);
  }
  return out;
}

/** Groups coalesced faults (sorted by asid, address) into aligned windows of `windowPages` pages. */
export function groupByWindow(faults: readonly CoalescedFault[], windowPages: number): FaultWindow[] {
  const size = windowPages * PAGE_SIZE;
  const out: FaultWindow[] = [];
  let cur: { asid: number; index: number; start: number; end: number; faults: CoalescedFault[]; access: number } | null = null;
  for (const f of faults) {
    const index = Math.floor(f.address / size);
    if (cur !== null && cur.asid === f.asid && cur.index === index) {
      cur.faults.push(f);
      if (f.access > cur.access) cur.access = f.access;
      continue;
    }
    cur = { asid: f.asid, index, start: index * size, end: (index + 1) * size, faults: [f], access: f.access };
    out.push(cur);
  }
  return out;
}

/** sort + coalesce + group: what the fault handler does with one drain. `records` is sorted in place. */
export function prepareBatch(records: FaultRecord[], windowPages: number): PreparedBatch {
  const faults = coalesceFaults(sortFaults(records));
  return { windows: groupByWindow(faults, windowPages), duplicates: records.length - faults.length, pages: faults.length };
}
