/**
 * Bug 9: a 2015-API driver that maps pages without hmmDeviceFaultStart.
 *
 * Hmm2015Driver whose device-fault update "prefetches": it programs the whole aligned block of
 * PREFETCH_BLOCK_PAGES pages around the faulting page from HMM's mirror table (as UVM maps a
 * region around a fault), while hmmMirrorFault published only the faulting window with
 * hmm_device_fault_start. The other pages of the block are mapped outside the two-sided
 * protocol: an invalidation of them neither makes this fault back off nor waits for it (they
 * do not overlap it), so the prefetch can re-map a page after that invalidation's own update
 * zapped it and before HMM masked the mirror table; the CPU then frees the page under the
 * device.
 *
 * Seen in the real world: the 2015 review. Asked by John Hubbard (Jun 2015) where new
 * invalidations were blocked, Jerome Glisse answered that it is "a 2 sided synchronization":
 * hmm_device_fault_start() waits for conflicting invalidations, hmm_wait_device_fault() makes
 * conflicting faults back off. A page mapped without the first half is covered by neither.
 */
import { type Engine, HMM_DEVICE_RFAULT, HMM_DEVICE_WFAULT, HMM_VM_END, HmmEvent, type MmStruct, PAGE_SIZE, type PhysMem } from 'hmm-emu';
import { Hmm2015Driver, type Hmm2015DriverOptions } from '../hmm2015/index.js';

/** The fault update maps the whole aligned block of this many pages around each fault. */
export const PREFETCH_BLOCK_PAGES = 16;

export class NoFaultStartDriver extends Hmm2015Driver {
  protected constructor(engine: Engine, phys: PhysMem, mm: MmStruct, opts: Hmm2015DriverOptions) {
    super(engine, phys, mm, opts);
    const ops = this.hmmDevice.ops;
    const update = ops.update.bind(ops);
    ops.update = (mirror, ev) => {
      if (ev.etype !== HMM_DEVICE_RFAULT && ev.etype !== HMM_DEVICE_WFAULT) return update(mirror, ev);
      // BUG: programs the whole block around the fault from the mirror table, but
      // hmmDeviceFaultStart published only [ev.start, ev.end).
      const block = PREFETCH_BLOCK_PAGES * PAGE_SIZE;
      const start = ev.start - (ev.start % block);
      return update(mirror, new HmmEvent(ev.etype, start, Math.min(Math.max(ev.end, start + block), HMM_VM_END)));
    };
  }
}
