/**
 * The mmu-notifier invalidations each mm operation emits, reduced from the trace to one line per
 * event and compared with what the kernel emits at the same call site.
 *
 * Every expected array below was written from the kernel source, not from this model (file and
 * function named in each test's comment; the recent linux-mm/linux-mm tree unless said). Where
 * the model departs from the kernel, the test states the kernel's behaviour and fails until
 * src/ is fixed.
 *
 * Line format:
 *   start EVENT [start,end) blockable|nonblockable owner=...   'notifier.invalidate_start'
 *     interval EVENT [start,end) blockable|nonblockable          interval notifier callback
 *     classic start|end EVENT [start,end)                        classic notifier callbacks
 *     classic release                                            classic ->release
 *   end EVENT [start,end)                                      'notifier.invalidate_end'
 * Callback lines are shown only where a test asks for them (take({ calls: true })).
 */
import { describe, expect, it } from 'vitest';
import {
  MADV_DONTNEED,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  MAP_SHARED,
  MREMAP_DONTUNMAP,
  MREMAP_FIXED,
  MREMAP_MAYMOVE,
  MMAP_BASE,
  PAGE_SIZE,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
  TASK_SIZE,
  cpuRead,
  cpuWrite,
  exitMm,
  fork,
  madvise,
  migratePages,
  mmap,
  mprotect,
  mremap,
  munmap,
  oomReapTaskMm,
  vpnOf,
} from '../../src/mm/index.js';
import {
  MmuIntervalNotifier,
  MmuNotifier,
  type MmuNotifierOps,
  type MmuNotifierRange,
  ULONG_MAX_ADDR,
  mmuIntervalNotifierInsert,
  mmuIntervalSetSeq,
  mmuNotifierEventName,
  mmuNotifierRangeBlockable,
  mmuNotifierRegister,
} from '../../src/notifier/index.js';
import { EAGAIN } from '../../src/sim/index.js';
import { bytes, inMm, type MmWorld } from './helpers.js';

const P = PAGE_SIZE;
const RW = PROT_READ | PROT_WRITE;
const PRIV = MAP_PRIVATE | MAP_ANONYMOUS;
const SHARED = MAP_SHARED | MAP_ANONYMOUS;
const FIXED = PRIV | MAP_FIXED;
/** 256 MiB: PMD- and PUD-table aligned, far from MMAP_BASE. */
const X = 0x1000_0000;
const Y = 0x2000_0000;
const Z = 0x3000_0000;

function hex(n: number): string {
  return n === ULONG_MAX_ADDR ? 'ULONG_MAX' : `0x${n.toString(16)}`;
}

function ev(event: number): string {
  return mmuNotifierEventName(event).replace(/^MMU_NOTIFY_/, '');
}

function rng(start: number, end: number): string {
  return `[${hex(start)},${hex(end)})`;
}

function describeRange(r: MmuNotifierRange): string {
  return `${ev(r.event)} ${rng(r.start, r.end)}`;
}

/** The expected pair of lines of one invalidation with no callback lines. */
function inv(event: string, start: number, end: number, blockable = true): string[] {
  return [`start ${event} ${rng(start, end)} ${blockable ? 'blockable' : 'nonblockable'} owner=null`, `end ${event} ${rng(start, end)}`];
}

interface Recorder {
  /** The lines recorded since the last take (callback lines only with calls), then forgets them. */
  take(opts?: { calls?: boolean }): string[];
  /** Start events seen on other mms than the recorded one. */
  readonly foreign: number;
}

/**
 * Subscribes `w.mm` with one interval notifier over the whole user address space (it calls
 * mmuIntervalSetSeq, as drivers must) and one classic notifier (recording start/end/release, or
 * with `refuse`, refusing non-blockable ranges with -EAGAIN and having no end, as the kernel
 * requires of such a notifier), and records the trace's invalidate_start/_end of `w.mm`.
 */
async function record(w: MmWorld, opts: { refuse?: boolean } = {}): Promise<Recorder> {
  const { engine, mm } = w;
  const lines: Array<{ call: boolean; text: string }> = [];
  const ranges = new Map<number, string>();
  let foreign = 0;
  engine.trace.on('notifier.invalidate_start', (e) => {
    if (e.mm !== mm.id) {
      foreign++;
      return;
    }
    const text = `${ev(e.event)} ${rng(e.start, e.end)}`;
    ranges.set(e.range, text);
    lines.push({ call: false, text: `start ${text} ${e.blockable ? 'blockable' : 'nonblockable'} owner=${e.owner ?? 'null'}` });
  });
  engine.trace.on('notifier.invalidate_end', (e) => {
    if (e.mm === mm.id) lines.push({ call: false, text: `end ${ranges.get(e.range) ?? `#${e.range}`}` });
  });
  const sub = new MmuIntervalNotifier('mirror');
  const ret = await mmuIntervalNotifierInsert(sub, mm, 0, TASK_SIZE, {
    invalidate(s, range, cur) {
      mmuIntervalSetSeq(s, cur);
      lines.push({ call: true, text: `  interval ${describeRange(range)} ${mmuNotifierRangeBlockable(range) ? 'blockable' : 'nonblockable'}` });
      return true;
    },
  });
  expect(ret).toBe(0);
  const recording: MmuNotifierOps = {
    invalidateRangeStart(_s, range) {
      lines.push({ call: true, text: `  classic start ${describeRange(range)}` });
      return 0;
    },
    invalidateRangeEnd(_s, range) {
      lines.push({ call: true, text: `  classic end ${describeRange(range)}` });
    },
    release() {
      lines.push({ call: true, text: '  classic release' });
    },
  };
  const refusing: MmuNotifierOps = {
    invalidateRangeStart(_s, range) {
      const blockable = mmuNotifierRangeBlockable(range);
      lines.push({ call: true, text: `  classic start ${describeRange(range)} ${blockable ? 'ok' : '-EAGAIN'}` });
      return blockable ? 0 : -EAGAIN;
    },
  };
  expect(await mmuNotifierRegister(new MmuNotifier(opts.refuse === true ? refusing : recording, 'kvm'), mm)).toBe(0);
  return {
    take(o = {}) {
      const out = lines.filter((l) => o.calls === true || !l.call).map((l) => l.text);
      lines.length = 0;
      return out;
    },
    get foreign() {
      return foreign;
    },
  };
}

/** Whether `addr` of `w.mm` has a PTE (any kind). */
function mapped(w: MmWorld, addr: number): boolean {
  return w.mm.pgtable.bitsAt(vpnOf(addr)) !== 0;
}

describe('dispatch order', () => {
  it('start calls interval notifiers before classic ones; end calls the classic end, then the end event', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X, P, RW, FIXED);
      await cpuWrite(w.mm, X, bytes(1));
      rec.take();
      await munmap(w.mm, X, P);
      // mm/mmu_notifier.c __mmu_notifier_invalidate_range_start: mn_itree_invalidate, then
      // mn_hlist_invalidate_range_start; _end: mn_itree_inv_end (no callback), then mn_hlist_invalidate_end.
      expect(rec.take({ calls: true })).toEqual([
        `start UNMAP ${rng(X, X + P)} blockable owner=null`,
        `  interval UNMAP ${rng(X, X + P)} blockable`,
        `  classic start UNMAP ${rng(X, X + P)}`,
        `  classic end UNMAP ${rng(X, X + P)}`,
        `end UNMAP ${rng(X, X + P)}`,
      ]);
    });
  });
});

describe('munmap and mmap(MAP_FIXED)', () => {
  it('munmap: one UNMAP over the whole requested range, holes and untouched pages included; nothing when nothing is mapped', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X + P, 2 * P, RW, FIXED);
      await cpuWrite(w.mm, X + P, bytes(1));
      await mmap(w.mm, Y, P, RW, FIXED); // never touched
      rec.take();
      // mm/vma.c do_vmi_munmap -> vms_clear_ptes -> unmap_region -> mm/memory.c unmap_vmas:
      // MMU_NOTIFY_UNMAP over [vms->start, vms->end), the requested range, page tables or not.
      await munmap(w.mm, X, 4 * P);
      await munmap(w.mm, Y, P);
      expect(rec.take()).toEqual([...inv('UNMAP', X, X + 4 * P), ...inv('UNMAP', Y, Y + P)]);
      // do_vmi_munmap: no VMA in the range -> return 0 before any invalidation.
      await munmap(w.mm, X, 4 * P);
      expect(rec.take()).toEqual([]);
      expect(mapped(w, X + P)).toBe(false);
    });
  });

  it('mmap(MAP_FIXED) over a mapping: UNMAP of the whole new range; over free space: nothing', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X + P, P, RW, FIXED);
      await cpuWrite(w.mm, X + P, bytes(1));
      rec.take();
      // mm/vma.c __mmap_prepare: init_vma_munmap(vms, .., map->addr, map->end) then
      // vms_clean_up_area -> vms_clear_ptes: UNMAP [addr, addr + len), not only the overlap.
      await mmap(w.mm, X, 3 * P, PROT_READ, FIXED);
      expect(rec.take()).toEqual(inv('UNMAP', X, X + 3 * P));
      expect(mapped(w, X + P)).toBe(false);
      await mmap(w.mm, Y, P, RW, FIXED);
      expect(rec.take()).toEqual([]);
    });
  });
});

describe('mprotect (mm/mprotect.c change_protection_range -> change_pud_range)', () => {
  it('PROTECTION_VMA per VMA piece from its first populated PUD entry to the end of its PGD span', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      const G = 0x4000_0000; // a PUD (1 GiB) boundary
      await mmap(w.mm, G - 2 * P, 4 * P, RW, FIXED);
      await cpuWrite(w.mm, G, bytes(1)); // only the second PUD entry has page tables
      rec.take();
      // change_pud_range: pud_none entries are skipped; the range starts at the first non-none one.
      await mprotect(w.mm, G - 2 * P, 4 * P, PROT_READ);
      expect(rec.take()).toEqual(inv('PROTECTION_VMA', G, G + 2 * P));
      await cpuRead(w.mm, G - 2 * P, 1); // now the first PUD entry has page tables too
      await mprotect(w.mm, G - 2 * P, 4 * P, RW);
      expect(rec.take()).toEqual(inv('PROTECTION_VMA', G - 2 * P, G + 2 * P));
    });
  });

  it('one PROTECTION_VMA per PGD (512 GiB) span: change_pud_range runs once per P4D/PGD entry', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      const B = 0x80_0000_0000; // a PGD boundary
      await mmap(w.mm, B - 2 * P, 4 * P, RW, FIXED);
      await cpuWrite(w.mm, B - 2 * P, bytes(1));
      await cpuWrite(w.mm, B, bytes(1));
      rec.take();
      await mprotect(w.mm, B - 2 * P, 4 * P, PROT_READ);
      expect(rec.take()).toEqual([...inv('PROTECTION_VMA', B - 2 * P, B), ...inv('PROTECTION_VMA', B, B + 2 * P)]);
    });
  });

  it('one PROTECTION_VMA per VMA the call covers (mprotect_fixup per VMA)', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X, 2 * P, RW, FIXED);
      await mmap(w.mm, X + 2 * P, 2 * P, PROT_READ, FIXED);
      await cpuWrite(w.mm, X, bytes(1));
      await cpuRead(w.mm, X + 2 * P, 1);
      rec.take();
      await mprotect(w.mm, X, 4 * P, PROT_NONE);
      expect(rec.take()).toEqual([...inv('PROTECTION_VMA', X, X + 2 * P), ...inv('PROTECTION_VMA', X + 2 * P, X + 4 * P)]);
    });
  });

  it('nothing for a never-touched mapping with no page tables in its PUD entries', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X, 4 * P, RW, FIXED);
      rec.take();
      await mprotect(w.mm, X, 4 * P, PROT_READ);
      expect(rec.take()).toEqual([]);
    });
  });

  it('nothing when the VMA flags do not change (mprotect_fixup returns before change_protection)', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X, 2 * P, RW, FIXED);
      await cpuWrite(w.mm, X, bytes(1));
      rec.take();
      // mprotect_fixup: if (vma_flags_same_pair(&old_vma_flags, &new_vma_flags)) { *pprev = vma; return 0; }
      await mprotect(w.mm, X, 2 * P, RW);
      expect(rec.take()).toEqual([]);
    });
  });

  it('a never-touched VMA whose PUD entry a neighbour populated is invalidated (pud_none tests the whole 1 GiB entry)', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      const B = X + 0x40_0000; // another PMD entry (2 MiB), same PUD entry (1 GiB) as X
      await mmap(w.mm, X, P, RW, FIXED);
      await mmap(w.mm, B, P, RW, FIXED);
      await cpuWrite(w.mm, X, bytes(1));
      rec.take();
      // change_pud_range(addr = B): pud_none(pud of B) is false (X's PMD table hangs there), so
      // the range [B, B + P) starts; change_pmd_range then skips B's none PMD entry.
      await mprotect(w.mm, B, P, PROT_READ);
      expect(rec.take()).toEqual(inv('PROTECTION_VMA', B, B + P));
    });
  });
});

describe('madvise(MADV_DONTNEED)', () => {
  it('CLEAR per VMA piece of the range, page tables or not (zap_vma_range_batched per VMA)', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X, 2 * P, RW, FIXED);
      await mmap(w.mm, X + 2 * P, 2 * P, PROT_READ, FIXED);
      await cpuWrite(w.mm, X, bytes(1));
      rec.take();
      // mm/madvise.c madvise_dontneed_single_vma -> mm/memory.c zap_vma_range_batched
      // (zap_page_range_single in older kernels): MMU_NOTIFY_CLEAR [address, address + size).
      await madvise(w.mm, X + P, 2 * P, MADV_DONTNEED);
      expect(rec.take()).toEqual([...inv('CLEAR', X + P, X + 2 * P), ...inv('CLEAR', X + 2 * P, X + 3 * P)]);
    });
  });
});

describe('mremap (mm/mremap.c)', () => {
  it('shrink: UNMAP of the tail (shrink_vma -> do_vmi_munmap); growth in place: nothing', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X, 4 * P, RW, FIXED);
      for (let i = 0; i < 4; i++) await cpuWrite(w.mm, X + i * P, bytes(i));
      rec.take();
      expect(await mremap(w.mm, X, 4 * P, 2 * P, 0)).toBe(X);
      expect(rec.take()).toEqual(inv('UNMAP', X + 2 * P, X + 4 * P));
      expect(await mremap(w.mm, X, 2 * P, 3 * P, 0)).toBe(X);
      expect(rec.take()).toEqual([]);
    });
  });

  it('move: UNMAP of the old range by move_page_tables, then again by unmap_source_vma (do_vmi_munmap of the source)', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X, 2 * P, RW, FIXED);
      await mmap(w.mm, X + 2 * P, P, PROT_READ, FIXED); // blocks growth in place
      await cpuWrite(w.mm, X, bytes(1));
      await cpuWrite(w.mm, X + P, bytes(2));
      rec.take();
      const to = await mremap(w.mm, X, 2 * P, 4 * P, MREMAP_MAYMOVE);
      expect(to).toBe(MMAP_BASE - 4 * P);
      // move_vma: copy_vma_and_data -> move_page_tables: MMU_NOTIFY_UNMAP [old_addr, old_end)
      // (X is PMD aligned: try_realign_addr changes nothing); then unmap_source_vma ->
      // do_vmi_munmap(addr, old_len): the source VMA still exists, so unmap_vmas runs again.
      expect(rec.take()).toEqual([...inv('UNMAP', X, X + 2 * P), ...inv('UNMAP', X, X + 2 * P)]);
    });
  });

  it('move with MREMAP_DONTUNMAP: only move_page_tables\' UNMAP of the old range (dontunmap_complete unmaps nothing)', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X, 2 * P, RW, FIXED);
      await cpuWrite(w.mm, X, bytes(1));
      rec.take();
      await mremap(w.mm, X, 2 * P, 2 * P, MREMAP_MAYMOVE | MREMAP_DONTUNMAP);
      expect(rec.take()).toEqual(inv('UNMAP', X, X + 2 * P));
    });
  });

  it('MREMAP_FIXED onto a mapping while shrinking: UNMAP of the target, then of the tail, then the move', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X, 4 * P, RW, FIXED);
      await mmap(w.mm, Y, 2 * P, RW, FIXED);
      await cpuWrite(w.mm, X, bytes(1));
      await cpuWrite(w.mm, Y, bytes(2));
      rec.take();
      expect(await mremap(w.mm, X, 4 * P, 2 * P, MREMAP_MAYMOVE | MREMAP_FIXED, Y)).toBe(Y);
      // mremap_to: do_munmap(new_addr, new_len) first, then shrink_vma (the tail), then
      // move_vma: move_page_tables and unmap_source_vma over [addr, addr + new_len).
      expect(rec.take()).toEqual([
        ...inv('UNMAP', Y, Y + 2 * P),
        ...inv('UNMAP', X + 2 * P, X + 4 * P),
        ...inv('UNMAP', X, X + 2 * P),
        ...inv('UNMAP', X, X + 2 * P),
      ]);
    });
  });
});

describe('fork and copy-on-write', () => {
  it('fork: PROTECTION_PAGE over each written private VMA, on the parent only; nothing for shared or untouched VMAs', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X, 2 * P, RW, FIXED);
      await mmap(w.mm, Y, P, RW, SHARED | MAP_FIXED);
      await mmap(w.mm, Z, P, RW, FIXED);
      await cpuWrite(w.mm, X, bytes(1));
      await cpuWrite(w.mm, Y, bytes(2));
      rec.take();
      // mm/memory.c copy_page_range: vma_needs_copy (anon_vma), then is_cow_mapping ->
      // MMU_NOTIFY_PROTECTION_PAGE [vm_start, vm_end) on src_mm. The child has no notifiers.
      const child = await fork(w.mm, { name: 'child' });
      expect(rec.take()).toEqual(inv('PROTECTION_PAGE', X, X + 2 * P));
      expect(rec.foreign).toBe(0);
      await exitMm(child);
    });
  });

  it('fork: PROTECTION_PAGE follows the anon_vma (vma_needs_copy), not the page tables', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X, P, RW, FIXED);
      await mmap(w.mm, Y, P, RW, FIXED);
      await cpuRead(w.mm, X, 1); // zero page only: do_anonymous_page never calls anon_vma_prepare
      await cpuWrite(w.mm, Y, bytes(1)); // anon_vma_prepare...
      await madvise(w.mm, Y, P, MADV_DONTNEED); // ...and the anon_vma stays after the zap
      rec.take();
      const child = await fork(w.mm, { name: 'child' });
      expect(rec.take()).toEqual(inv('PROTECTION_PAGE', Y, Y + P));
      await exitMm(child);
    });
  });

  it('a write fault on a page shared by fork: CLEAR of exactly that page; once the other side copied, reuse: nothing', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X, 2 * P, RW, FIXED);
      await cpuWrite(w.mm, X, bytes(1));
      await cpuWrite(w.mm, X + P, bytes(2));
      const child = await fork(w.mm, { name: 'child' });
      rec.take();
      // mm/memory.c wp_page_copy: MMU_NOTIFY_CLEAR [address & PAGE_MASK, + PAGE_SIZE).
      await cpuWrite(w.mm, X, bytes(3));
      expect(rec.take()).toEqual(inv('CLEAR', X, X + P));
      await cpuWrite(child, X + P, bytes(4)); // the child's copy: the child's mm, no notifier there
      expect(rec.take()).toEqual([]);
      // do_wp_page -> wp_can_reuse_anon_folio (refcount 1) -> wp_page_reuse: no notifier.
      await cpuWrite(w.mm, X + P, bytes(5));
      expect(rec.take()).toEqual([]);
      expect(rec.foreign).toBe(0);
      await exitMm(child);
    });
  });

  it('a write fault on the zero page: CLEAR of exactly that page; read fault-in and first-touch writes: nothing', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X, 2 * P, RW, FIXED);
      rec.take();
      await cpuRead(w.mm, X, 1); // do_anonymous_page maps the zero page: none -> present
      await cpuWrite(w.mm, X + P, bytes(1)); // do_anonymous_page allocates: none -> present
      expect(rec.take()).toEqual([]);
      // do_wp_page on the zero page (no folio) -> wp_page_copy: CLEAR of that page.
      await cpuWrite(w.mm, X, bytes(2));
      expect(rec.take()).toEqual(inv('CLEAR', X, X + P));
    });
  });
});

describe('migration', () => {
  it('migratePages: CLEAR of each page moved (try_to_migrate_one); zero-page and empty entries: nothing', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X, 4 * P, RW, FIXED);
      await cpuWrite(w.mm, X, bytes(1));
      await cpuWrite(w.mm, X + 2 * P, bytes(2));
      await cpuRead(w.mm, X + 3 * P, 1);
      rec.take();
      // mm/rmap.c try_to_migrate_one: MMU_NOTIFY_CLEAR [address, vma_address_end) = one page
      // for a small folio; remove_migration_ptes installs the new page without a notifier.
      expect(await migratePages(w.mm, X, X + 4 * P)).toBe(2);
      expect(rec.take()).toEqual([...inv('CLEAR', X, X + P), ...inv('CLEAR', X + 2 * P, X + 3 * P)]);
    });
  });
});

describe('exit and the OOM reaper', () => {
  it('exit: RELEASE [0, ULONG_MAX) to interval notifiers and ->release to classic ones, then UNMAP [0, ULONG_MAX) without them', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X, P, RW, FIXED);
      await cpuWrite(w.mm, X, bytes(1));
      rec.take();
      // mm/mmap.c exit_mmap: mmu_notifier_release (mm/mmu_notifier.c __mmu_notifier_release:
      // mn_itree_release = an invalidation of [0, ULONG_MAX) with MMU_NOTIFY_RELEASE, then
      // mn_hlist_release: ->release and unlink every classic notifier), then unmap_vmas(.., 0,
      // ULONG_MAX, ..): MMU_NOTIFY_UNMAP, which the unlinked classic notifier no longer sees.
      await exitMm(w.mm);
      expect(rec.take({ calls: true })).toEqual([
        `start RELEASE ${rng(0, ULONG_MAX_ADDR)} blockable owner=null`,
        `  interval RELEASE ${rng(0, ULONG_MAX_ADDR)} blockable`,
        '  classic release',
        `end RELEASE ${rng(0, ULONG_MAX_ADDR)}`,
        `start UNMAP ${rng(0, ULONG_MAX_ADDR)} blockable owner=null`,
        `  interval UNMAP ${rng(0, ULONG_MAX_ADDR)} blockable`,
        `end UNMAP ${rng(0, ULONG_MAX_ADDR)}`,
      ]);
    });
  });

  it('exit of an mm without VMAs: only the release (exit_mmap returns before unmap_vmas when there is no VMA)', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await exitMm(w.mm);
      // exit_mmap: vma = vma_next(&vmi); if (!vma || xa_is_zero(vma)) { ... goto destroy / return; }
      expect(rec.take()).toEqual(inv('RELEASE', 0, ULONG_MAX_ADDR));
    });
  });

  it('oomReapTaskMm: a NON-blockable UNMAP per private VMA, shared VMAs skipped, pages gone', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X, 2 * P, RW, FIXED);
      await mmap(w.mm, Y, P, RW, SHARED | MAP_FIXED);
      await cpuWrite(w.mm, X, bytes(1));
      await cpuWrite(w.mm, Y, bytes(2));
      rec.take();
      // mm/oom_kill.c __oom_reap_task_mm (6.1): for vma_is_anonymous || !VM_SHARED:
      // MMU_NOTIFY_UNMAP [vm_start, vm_end) with mmu_notifier_invalidate_range_start_nonblock.
      // (Later kernels use MMU_NOTIFY_CLEAR; recent linux-mm moved it to mm/memory.c
      // zap_vma_for_reaping, in 1 GiB chunks from the top.) Shared anonymous memory is shmem:
      // vm_ops set and VM_SHARED, so it is skipped.
      expect(await oomReapTaskMm(w.mm)).toBe(0);
      expect(rec.take()).toEqual(inv('UNMAP', X, X + 2 * P, false));
      expect(mapped(w, X)).toBe(false);
      expect(mapped(w, Y)).toBe(true);
    });
  });

  it('oomReapTaskMm: a private VMA without page tables still gets its invalidation (no page-table test in __oom_reap_task_mm)', async () => {
    await inMm(async (w) => {
      const rec = await record(w);
      await mmap(w.mm, X, P, RW, FIXED);
      await mmap(w.mm, Y, P, RW, FIXED); // never touched
      await cpuWrite(w.mm, X, bytes(1));
      rec.take();
      expect(await oomReapTaskMm(w.mm)).toBe(0);
      expect(rec.take()).toEqual([...inv('UNMAP', X, X + P, false), ...inv('UNMAP', Y, Y + P, false)]);
    });
  });

  it('oomReapTaskMm: a classic notifier refusing a non-blockable range makes it return -EAGAIN and leaves the PTEs', async () => {
    await inMm(async (w) => {
      const rec = await record(w, { refuse: true });
      await mmap(w.mm, X, P, RW, FIXED);
      await mmap(w.mm, Y, P, PROT_READ, FIXED);
      await cpuWrite(w.mm, X, bytes(1));
      await cpuRead(w.mm, Y, 1);
      rec.take();
      // __oom_reap_task_mm: mmu_notifier_invalidate_range_start_nonblock fails -> ret = false,
      // continue with the next VMA; the caller retries. No invalidate_range_end is called.
      expect(await oomReapTaskMm(w.mm)).toBe(-EAGAIN);
      expect(rec.take({ calls: true })).toEqual([
        `start UNMAP ${rng(X, X + P)} nonblockable owner=null`,
        `  interval UNMAP ${rng(X, X + P)} nonblockable`,
        `  classic start UNMAP ${rng(X, X + P)} -EAGAIN`,
        `end UNMAP ${rng(X, X + P)}`,
        `start UNMAP ${rng(Y, Y + P)} nonblockable owner=null`,
        `  interval UNMAP ${rng(Y, Y + P)} nonblockable`,
        `  classic start UNMAP ${rng(Y, Y + P)} -EAGAIN`,
        `end UNMAP ${rng(Y, Y + P)}`,
      ]);
      expect(mapped(w, X)).toBe(true);
      expect(mapped(w, Y)).toBe(true);
      // The kernel's quirk, reproduced on purpose (src/notifier/dispatch.ts): the interval side
      // succeeded and __mmu_notifier_invalidate_range_start returns the classic -EAGAIN without
      // mn_itree_inv_end, so active_invalidate_ranges stays raised, once per refused VMA.
      expect(w.mm.notifierSubscriptions?.activeInvalidateRanges).toBe(2);
    });
  });
});
