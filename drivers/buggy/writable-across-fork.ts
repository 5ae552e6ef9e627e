/**
 * Bug 8: keeps device mappings writable across fork.
 *
 * dmirrorIntervalInvalidate with an "optimisation": MMU_NOTIFY_PROTECTION_PAGE (fork's
 * copy-on-write write-protect of every private page) keeps the frame, so the callback does
 * nothing for it. But after fork the frame is shared with the child: the device's writable
 * entry lets the parent's device writes land in the child's memory. The callback must at
 * least take write permission away (the reference erases the entries).
 *
 * Seen in the real world: hmm-tests' anon_write_child exists for this; the same leak with
 * DMA-pinned pages (the device keeps writing the old page, which the child keeps after the
 * parent's COW break) was fixed by "mm: Do early cow for pinned pages during fork() for ptes"
 * (Peter Xu, 5.9).
 */
import { MMU_NOTIFY_PROTECTION_PAGE, type MmuIntervalNotifier, type MmuNotifierRange } from 'hmm-emu';
import type { Dmirror } from '../dmirror/index.js';
import { DmirrorVariant } from './dmirror-variant.js';

export class WritableAcrossForkDmirror extends DmirrorVariant {
  protected override invalidate(dmirror: Dmirror, mni: MmuIntervalNotifier, range: MmuNotifierRange, curSeq: number): boolean | Promise<boolean> {
    // BUG: "only the permissions change": the device entries stay, writable.
    if (range.event === MMU_NOTIFY_PROTECTION_PAGE) return true;
    return super.invalidate(dmirror, mni, range, curSeq);
  }
}
