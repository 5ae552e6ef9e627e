/**
 * The device-fault worker: services the Device's replayable fault buffer for user kernels
 * launched on dmirror mirrors (the part of a real GPU driver that test_hmm's fake device does
 * not need: its "device" only moves data inside ioctls).
 *
 * Models: the fault-buffer half of a GPU driver, shaped like nouveau_svm.c
 * (nouveau_svm_fault: drain, coalesce, service each page with the range-fault loop, cancel
 * what cannot be serviced, one replay) and serviced with dmirror's own fault path: each
 * faulting page goes through dmirror_fault (the canonical loop of mirror.ts) for write if the
 * access was a write or an atomic (writable entries are mapped atomic: the mock GPU's atomics
 * reach system memory as PCIe atomics would; nouveau, whose hardware cannot, takes the
 * make_device_exclusive path instead, which the EXCLUSIVE command shows). A fault that cannot
 * be serviced (no VMA, no permission, the mm gone, the mirror released) cancels its context:
 * the job fails with DeviceFaultError, the GPU's segfault.
 *
 *   device                              worker (one task per DmirrorDevice)
 *   write record; raise interrupt  -->  while (waitForInterrupt()):
 *   stall until replay / cancel           overflow? clear it, replay everything afterwards
 *                                         drain; coalesce per (asid, page), strongest access
 *                                         per page: skip if the table already grants it, else
 *                                           [lifetime read] dmirrorFault
 *                                           failure -> cancel the page's records
 *                   <--------------------  replay each address space seen (all after an overflow)
 *
 * The replay comes after servicing, so a stalled access that retries either finds its entry or
 * faults again (a record written after the drain raises the interrupt again; the
 * Device's level-triggered interrupt loses none).
 *
 * Locks: each mirror's `lifetime` (read, by trylock: a mirror being released gets its faults
 * cancelled) around the service; then dmirror_fault's own (mmap_lock, then the mutex). Stats
 * change synchronously.
 */
import { DEV_PTE_ATOMIC, DEV_PTE_VALID, DEV_PTE_WRITE, ENODEV, FAULT_ACCESS, type FaultAccess, type FaultRecord, PAGE_SIZE } from 'hmm-emu';
import type { DmirrorDevice } from './device.js';
import { type Dmirror, dmirrorFault } from './mirror.js';

/** Counters of a device's fault worker. */
export interface DmirrorWorkerStats {
  /** Interrupts taken (service passes). */
  interrupts: number;
  /** Fault records drained. */
  records: number;
  /** Records folded into another of the same page in their batch. */
  coalesced: number;
  /** Pages whose access the device page table already granted (serviced meanwhile). */
  skipped: number;
  /** Pages serviced (dmirror_fault called). */
  serviced: number;
  /** Prefetch records (never serviced: a prefetch does not stall). */
  prefetches: number;
  /** Jobs killed by a cancel. */
  cancelled: number;
  /** Fault-buffer overflows seen. */
  overflows: number;
  /** Replays issued. */
  replays: number;
}

/** Zeroed counters. */
export function newWorkerStats(): DmirrorWorkerStats {
  return { interrupts: 0, records: 0, coalesced: 0, skipped: 0, serviced: 0, prefetches: 0, cancelled: 0, overflows: 0, replays: 0 };
}

/** DEV_PTE_* bits an access needs, by FAULT_ACCESS rank (prefetch, read, write, atomic). */
const NEED: readonly number[] = [DEV_PTE_VALID, DEV_PTE_VALID, DEV_PTE_WRITE, DEV_PTE_ATOMIC];

/** One page's records in a batch. */
interface FaultGroup {
  readonly asid: number;
  readonly address: number;
  /** The strongest access (FAULT_ACCESS rank). */
  rank: number;
  readonly records: FaultRecord[];
}

function rankOf(access: FaultAccess): number {
  return FAULT_ACCESS.indexOf(access);
}

/** The worker task's body: one service pass per interrupt, until the Device is stopped. */
export async function dmirrorFaultWorker(mdevice: DmirrorDevice): Promise<void> {
  const dev = mdevice.device;
  while (await dev.waitForInterrupt()) await dmirrorServiceFaults(mdevice);
}

/** One service pass: drain, coalesce, service, cancel failures, replay. */
export async function dmirrorServiceFaults(mdevice: DmirrorDevice): Promise<void> {
  const dev = mdevice.device;
  const stats = mdevice.workerStats;
  const fb = dev.faultBuffer;
  stats.interrupts++;
  let replayAll = false;
  if (fb.overflow) {
    // Dropped faults recur once their accesses are replayed.
    fb.clearOverflow();
    stats.overflows++;
    replayAll = true;
  }
  const records = fb.drain();
  stats.records += records.length;
  const groups = new Map<string, FaultGroup>();
  for (const r of records) {
    const key = `${r.asid}:${r.address}`;
    const g = groups.get(key);
    if (g === undefined) {
      groups.set(key, { asid: r.asid, address: r.address, rank: rankOf(r.access), records: [r] });
    } else {
      stats.coalesced++;
      g.rank = Math.max(g.rank, rankOf(r.access));
      g.records.push(r);
    }
  }
  const asids = new Set<number>();
  for (const g of groups.values()) {
    asids.add(g.asid);
    if (g.rank === 0) {
      stats.prefetches += g.records.length;
      continue;
    }
    const m = mdevice.mirrorOfAsid(g.asid);
    let ret = -ENODEV;
    if (m !== undefined && !m.released && m.lifetime.tryDownRead()) {
      try {
        ret = await dmirrorServiceFault(m, g.address, g.rank);
      } finally {
        m.lifetime.upRead();
      }
    }
    if (ret !== 0) {
      if (m !== undefined) m.stats.deviceFaultErrors++;
      for (const r of g.records) if (dev.cancelFault(r)) stats.cancelled++;
    }
  }
  if (replayAll) {
    dev.replay();
    stats.replays++;
  } else {
    for (const asid of asids) {
      if (dev.addressSpace(asid) === undefined) continue;
      dev.replay(asid);
      stats.replays++;
    }
  }
}

/**
 * Services one faulting page of `dmirror` for an access of FAULT_ACCESS rank `rank` (read 1,
 * write 2, atomic 3). Returns 0 or the error that makes the worker cancel it.
 */
export async function dmirrorServiceFault(dmirror: Dmirror, address: number, rank: number): Promise<number> {
  const stats = dmirror.mdevice.workerStats;
  const pt = dmirror.as.pageTable;
  const vpn = address / PAGE_SIZE;
  const need = NEED[rank]!;
  // Another record, a command or a migration may have mapped it meanwhile (a hint: if it is
  // gone again by the replay, the access faults again).
  if ((pt.flagsAt(vpn) & need) === need) {
    stats.skipped++;
    return 0;
  }
  stats.serviced++;
  dmirror.stats.deviceFaults++;
  // A writable entry is atomic too (see mirror.ts): an atomic is a write fault.
  return dmirrorFault(dmirror, address, address + PAGE_SIZE, rank >= 2);
}
