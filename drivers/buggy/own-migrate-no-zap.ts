/**
 * Bug 6: skips its own MIGRATE events but does not zap its own entries itself.
 *
 * dmirrorIntervalInvalidate with the own-migration filter of test_hmm: an MMU_NOTIFY_MIGRATE
 * whose owner is this device returns at once. The filter is legal only if the driver then
 * erases the device entries of the pages the migration moves; dmirror's migration code leaves
 * that to the callback (which, for its own event, erases exactly what the migration can
 * select and sets the sequence). So the device keeps mapping a system page after
 * migrate_vma moved it to device memory and freed it, and a device page after a CPU fault
 * moved it back (migrate_to_ram).
 *
 * Seen in the real world: "mm/notifier: add migration invalidation type" (Ralph Campbell,
 * 2020) moved the responsibility for clearing device mappings of migrating pages to the
 * driver; v3 of its series fixed "a locking issue in nouveau for the migration
 * invalidation", and test_hmm's own skip leaves the window drivers/dmirror/README.md describes.
 */
import { MMU_NOTIFY_MIGRATE, type MmuIntervalNotifier, type MmuNotifierRange } from 'hmm-emu';
import type { Dmirror } from '../dmirror/index.js';
import { DmirrorVariant } from './dmirror-variant.js';

export class OwnMigrateNoZapDmirror extends DmirrorVariant {
  protected override invalidate(dmirror: Dmirror, mni: MmuIntervalNotifier, range: MmuNotifierRange, curSeq: number): boolean | Promise<boolean> {
    // BUG: own migrations are skipped outright; nothing else erases the pages they move.
    if (range.event === MMU_NOTIFY_MIGRATE && range.owner === dmirror.mdevice.owner) return true;
    return super.invalidate(dmirror, mni, range, curSeq);
  }
}
