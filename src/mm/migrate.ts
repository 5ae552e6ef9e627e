/**
 * CPU-side page migration (compaction / NUMA balancing style): resident anonymous pages move
 * to new frames through migration entries.
 *
 * Models: mm/migrate.c (migrate_pages, migrate_folio_unmap, migrate_folio_move,
 * remove_migration_ptes), mm/rmap.c (try_to_migrate_one).
 *
 * Per page, under mmap_lock for read: lock the page (skip it if someone else holds it);
 * inside a CLEAR invalidation of the page (try_to_migrate_one's event: the kernel uses
 * MMU_NOTIFY_CLEAR here, MIGRATE being reserved for migrate_vma with its owner), replace the
 * PTE with a migration entry, moving the mapping's reference to the migrator; then (a
 * scheduling point later, where CPU faults on the page wait on the page lock) allocate the new
 * frame, copy, and install it in place of the migration entry if the entry is still there
 * (remove_migration_ptes: a non-present -> present change, no invalidation needed); unlock.
 * Pages that cannot move are left in place: the zero page, shmem pages and pages with other
 * users (mapcount or refcount above 1: shared after fork, pinned) — we keep no reverse map
 * to update their other mappings.
 */
import { MMU_NOTIFY_CLEAR } from '../notifier/index.js';
import { EINVAL, KernelError } from '../sim/index.js';
import { PAGE_SIZE, PG_ANON, PG_PINNED, PTE_PRESENT, PTE_PROTNONE, PTE_SWP_MIGRATION, PTE_WRITE, PTE_ZERO, TASK_SIZE } from './constants.js';
import { type MmStruct, vpnOf, withInvalidation } from './mm.js';

declare module '../sim/trace.js' {
  interface TraceEventMap {
    'mm.migrate': { mm: number; addr: number; from: number; to: number; ok: boolean };
  }
}

/**
 * A page we may move: anonymous, not pinned, mapped once, and referenced only by that mapping
 * plus `extraRefs` (the reference we hold while migrating).
 */
function movable(mm: MmStruct, bits: number, pfn: number, extraRefs: number): boolean {
  const p = mm.phys;
  return (
    (bits & (PTE_PRESENT | PTE_ZERO | PTE_PROTNONE)) === PTE_PRESENT &&
    (p.flags[pfn]! & (PG_ANON | PG_PINNED)) === PG_ANON &&
    p.mapcount[pfn] === 1 &&
    p.refcount[pfn] === 1 + extraRefs
  );
}

/** Migrates the movable resident pages of [start, end). Returns how many moved. */
export async function migratePages(mm: MmStruct, start: number, end: number): Promise<number> {
  for (const [what, v] of [
    ['start', start],
    ['end', end],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 0 || v % PAGE_SIZE !== 0) throw new KernelError(EINVAL, `migratePages: ${what} must be a page-aligned address: ${String(v)}`);
  }
  if (end <= start || end > TASK_SIZE) throw new KernelError(EINVAL, `migratePages: bad range [0x${start.toString(16)}, 0x${end.toString(16)})`);
  mm.checkAlive('migratePages');
  const phys = mm.phys;
  const pt = mm.pgtable;
  let moved = 0;
  await mm.mmapLock.downRead();
  try {
    for (const vma of mm.vmas.overlapping(start, end)) {
      if (vma.shmem !== null) continue;
      const s = Math.max(start, vma.start);
      const e = Math.min(end, vma.end);
      for (let addr = s; addr < e; addr += PAGE_SIZE) {
        const vpn = vpnOf(addr);
        const bits = pt.bitsAt(vpn);
        const old = pt.pfnAt(vpn);
        if (!movable(mm, bits, old, 0)) continue;
        // Isolate: our own reference keeps the page alive (and lockable) even if the mapping
        // is zapped while we sleep in the invalidation, as folio_isolate_lru does.
        phys.getPage(old);
        if (!phys.trylockPage(old)) {
          phys.putPage(old);
          continue;
        }
        // Unmap: the PTE becomes a migration entry; the mapping's reference passes to us.
        const unmapped = await withInvalidation(mm, MMU_NOTIFY_CLEAR, addr, addr + PAGE_SIZE, null, () => {
          if (pt.bitsAt(vpn) !== bits || pt.pfnAt(vpn) !== old || !movable(mm, bits, old, 1)) return false;
          phys.decMapcount(old);
          pt.set(vpn, old, PTE_SWP_MIGRATION | (bits & PTE_WRITE));
          return true;
        });
        if (!unmapped) {
          phys.unlockPage(old);
          phys.putPage(old);
          continue;
        }
        await mm.engine.yield();
        const fresh = phys.allocPage();
        mm.ptl.lock();
        const stillOurs = pt.bitsAt(vpn) === (PTE_SWP_MIGRATION | (bits & PTE_WRITE)) && pt.pfnAt(vpn) === old;
        let ok = false;
        if (stillOurs && fresh > 0) {
          phys.copyPage(fresh, old);
          phys.flags[fresh]! |= PG_ANON;
          phys.incMapcount(fresh);
          pt.set(vpn, fresh, bits);
          ok = true;
        } else if (stillOurs) {
          // No frame: put the old page back (migration failed, the page stays).
          phys.incMapcount(old);
          pt.set(vpn, old, bits);
        }
        mm.ptl.unlock();
        phys.unlockPage(old); // faults waiting on the migration entry retry now
        if (ok) phys.putPage(old); // the mapping's reference, which the migration entry carried
        else if (fresh > 0) phys.putPage(fresh);
        if (!stillOurs) phys.putPage(old); // zapped meanwhile: the mapping's reference
        phys.putPage(old); // our isolation reference
        if (ok) moved++;
        if (mm.engine.trace.active) mm.engine.trace.emit('mm.migrate', { mm: mm.id, addr, from: old, to: ok ? fresh : old, ok });
      }
    }
  } finally {
    mm.mmapLock.upRead();
  }
  return moved;
}
