/**
 * The 2015 per-mirror page table: what HMM itself knows the device may map.
 *
 * Models: "HMM: add HMM page table v2" (include/linux/hmm_pt.h: the hmm_pte bits and the
 * directory lock) and its use in "HMM: add per mirror page table v4" (hmm_mirror_update_pt)
 * and "HMM: add device page fault support v4" (hmm_mirror_fault_pmd), HMM v9, Jul 2015.
 *
 * One table per HmmMirror, keyed by virtual page number; an entry is (pfn, HMM_PTE_* bits):
 * VALID, WRITE, DIRTY. HMM fills it on a device fault from the CPU page table and masks it on
 * every CPU page-table update (new = old & event.pteMask), before the CPU entry changes, so
 * that at every scheduling point a valid entry names the frame the CPU maps there, and WRITE
 * only where the CPU entry is writable. The device programs its own page table from it (in
 * its update op) and may read it at any time.
 *
 * Locking: `dirLock` (a SpinLock, as the 2015 directory lock) protects VALID, WRITE and the
 * pfn: HMM changes them only under it. The exceptions are the 2015 ones: the device sets
 * DIRTY with setDirty() without the lock, and reads need no lock (one task runs at a time,
 * and a read runs no scheduling point). dirLock is a leaf lock: nothing is taken under it.
 *
 * Representation: a PageTable (src/mm) with HMM_PTE_* in its bits: no object per entry.
 */
import { PageTable, VPN_LIMIT } from '../mm/index.js';
import { EINVAL, type Engine, KernelError, SpinLock } from '../sim/index.js';
import { HMM_PTE_DIRTY, HMM_PTE_VALID, HMM_PTE_WRITE } from './hmm2015-event.js';

/** A mirror entry, for inspection. */
export interface HmmPte {
  readonly vpn: number;
  readonly pfn: number;
  readonly write: boolean;
  readonly dirty: boolean;
}

function checkVpn(what: string, vpn: number): void {
  if (!Number.isInteger(vpn) || vpn < 0 || vpn >= VPN_LIMIT) throw new KernelError(EINVAL, `${what}: vpn must be an integer in [0, 2**36): ${String(vpn)}`);
}

/** struct hmm_pt of one mirror. */
export class HmmMirrorTable {
  /** The directory lock (see the header). */
  readonly dirLock: SpinLock;
  /** @internal the entries; written by hmm2015.ts only, under dirLock. */
  readonly pt: PageTable;
  /** @internal valid entries (kept by hmm2015.ts). */
  nvalid = 0;

  constructor(engine: Engine, name: string) {
    this.dirLock = new SpinLock(engine, `${name}.dirLock`, { lockClass: 'hmm_mirror.dirLock' });
    this.pt = new PageTable(engine);
  }

  /** Valid entries. */
  get size(): number {
    return this.nvalid;
  }

  /** The HMM_PTE_* bits at `vpn` (0: no entry). The device's fast path; no allocation. */
  bitsAt(vpn: number): number {
    return this.pt.bitsAt(vpn);
  }

  /** The pfn at `vpn` (meaningful only when bitsAt(vpn) has HMM_PTE_VALID). */
  pfnAt(vpn: number): number {
    return this.pt.pfnAt(vpn);
  }

  /** The entry at `vpn`, or null. Throws KernelError(EINVAL) for a bad vpn. */
  lookup(vpn: number): HmmPte | null {
    checkVpn('hmm_pt lookup', vpn);
    const b = this.pt.bitsAt(vpn);
    if (!(b & HMM_PTE_VALID)) return null;
    return { vpn, pfn: this.pt.pfnAt(vpn), write: (b & HMM_PTE_WRITE) !== 0, dirty: (b & HMM_PTE_DIRTY) !== 0 };
  }

  /** Every valid entry in [startVpn, endVpn), in address order (allocates: for inspection). */
  entries(startVpn = 0, endVpn = VPN_LIMIT): HmmPte[] {
    checkVpn('hmm_pt entries', startVpn);
    if (!Number.isInteger(endVpn) || endVpn < startVpn || endVpn > VPN_LIMIT) throw new KernelError(EINVAL, `hmm_pt entries: bad end vpn ${String(endVpn)}`);
    const out: HmmPte[] = [];
    this.pt.forEachLeaf(startVpn, endVpn, (leaf, from, to, base) => {
      for (let i = from; i < to; i++) {
        const b = leaf.bits[i]!;
        if (b & HMM_PTE_VALID) out.push({ vpn: base + i, pfn: leaf.pfn[i]!, write: (b & HMM_PTE_WRITE) !== 0, dirty: (b & HMM_PTE_DIRTY) !== 0 });
      }
    });
    return out;
  }

  /**
   * hmm_pte_set_bit(HMM_PTE_DIRTY): the device wrote the page at `vpn`. No lock needed (the
   * 2015 exception). Returns false, changing nothing, if there is no valid entry there; the
   * next update moves the bit to the page (only from a writable entry, as the patch did).
   */
  setDirty(vpn: number): boolean {
    checkVpn('hmm_pte_set_dirty', vpn);
    const b = this.pt.bitsAt(vpn);
    if (!(b & HMM_PTE_VALID)) return false;
    this.pt.set(vpn, this.pt.pfnAt(vpn), b | HMM_PTE_DIRTY);
    return true;
  }
}
