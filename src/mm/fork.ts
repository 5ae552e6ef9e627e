/**
 * fork and exit of an address space.
 *
 * Models: kernel/fork.c (dup_mmap), mm/memory.c (copy_page_range, copy_present_pte,
 * copy_nonpresent_pte), mm/mmap.c (exit_mmap).
 *
 * fork takes the parent's mmap_lock for write. Only VMAs with an anon_vma are copied
 * (vma_needs_copy): for each private writable (COW) one, the parent's entries are
 * write-protected inside a PROTECTION_PAGE invalidation of the VMA (as copy_page_range does),
 * and parent and child share every page read-only until one of them writes (do_wp_page copies,
 * or reuses when it is the last user). Shared VMAs share their shmem object; the child faults
 * its pages in from it. Device-private entries are shared the
 * same way (read-only when COW); device-exclusive entries are restored first (as
 * try_restore_exclusive_pte). The child is a new mm with no notifiers; its own locks are not
 * taken, since no one else can see it yet.
 *
 * oomReapTaskMm is the OOM reaper: it frees a dying process's private anonymous memory with
 * NON-BLOCKABLE UNMAP invalidations (mmu_notifier_invalidate_range_start_nonblock), taking
 * mmap_lock only by trylock. A notifier that cannot proceed without sleeping returns -EAGAIN;
 * the reaper skips that VMA and reports -EAGAIN so that its caller retries later, as
 * __oom_reap_task_mm does. Reaped pages read as zero afterwards (the process is being killed).
 *
 * exit runs exit_mmap: mmu_notifier_release first (interval notifiers get a RELEASE
 * invalidation of everything, classic ones ->release), then one UNMAP invalidation of
 * [0, ULONG_MAX) around zapping every VMA, then the VMAs go. Interval notifiers stay
 * registered: their drivers must remove them (the kernel's behaviour).
 */
import {
  MMU_NOTIFY_PROTECTION_PAGE,
  MMU_NOTIFY_UNMAP,
  ULONG_MAX_ADDR,
  mmuNotifierInvalidateRangeEnd,
  mmuNotifierInvalidateRangeStartNonblock,
  mmuNotifierRangeInitOwner,
  mmuNotifierRelease,
} from '../notifier/index.js';
import { EAGAIN } from '../sim/index.js';
import {
  PAGE_SIZE,
  PTE_KIND_MASK,
  PTE_PRESENT,
  PTE_SWP_DEVICE_EXCLUSIVE,
  PTE_SWP_DEVICE_PRIVATE,
  PTE_SWP_MIGRATION,
  PTE_WRITE,
  PTE_ZERO,
} from './constants.js';
import { MmStruct, type MmOptions, vpnOf, withInvalidation, zapRange } from './mm.js';
import { deviceRmapAdd } from './rmap.js';
import type { Vma } from './vma.js';

declare module '../sim/trace.js' {
  interface TraceEventMap {
    'mm.fork': { parent: number; child: number };
  }
}

/** copy_page_range for one VMA (caller holds the parent's ptl). */
function copyRange(parent: MmStruct, child: MmStruct, vma: Vma): void {
  const phys = parent.phys;
  const cow = vma.cow;
  const cpt = child.pgtable;
  parent.pgtable.forEachLeaf(vpnOf(vma.start), vpnOf(vma.end), (leaf, from, to, base) => {
    const bits = leaf.bits;
    const pfns = leaf.pfn;
    for (let i = from; i < to; i++) {
      let b = bits[i]!;
      if (b === 0) continue;
      const pfn = pfns[i]!;
      if (!(b & PTE_PRESENT)) {
        const kind = b & PTE_KIND_MASK;
        if (kind === PTE_SWP_DEVICE_EXCLUSIVE) {
          // try_restore_exclusive_pte: the parent's entry becomes an ordinary PTE again.
          b = PTE_PRESENT | (b & PTE_WRITE);
          bits[i] = b;
        } else if (kind === PTE_SWP_DEVICE_PRIVATE || kind === PTE_SWP_MIGRATION) {
          if (kind === PTE_SWP_DEVICE_PRIVATE) {
            phys.getPage(pfn);
            phys.incMapcount(pfn);
          }
          // copy_nonpresent_pte: the child maps the device page too; record it for migration back.
          deviceRmapAdd(phys, pfn, child, (base + i) * PAGE_SIZE);
          if (cow && b & PTE_WRITE) {
            b &= ~PTE_WRITE;
            bits[i] = b;
          }
          cpt.set(base + i, pfn, b);
          continue;
        }
      }
      if (!(b & PTE_ZERO)) {
        phys.getPage(pfn);
        phys.incMapcount(pfn);
      }
      if (cow && b & PTE_WRITE) {
        b &= ~PTE_WRITE;
        bits[i] = b;
      }
      cpt.set(base + i, pfn, b);
    }
  });
}

/** fork(): a copy-on-write child of `parent`. */
export async function fork(parent: MmStruct, opts: MmOptions = {}): Promise<MmStruct> {
  parent.checkAlive('fork');
  await parent.mmapLock.downWrite();
  try {
    parent.checkAlive('fork');
    const child = new MmStruct(parent.engine, parent.phys, opts, parent);
    for (const vma of parent.vmas.all) {
      child.vmas.insert(vma.clone(vma.start, vma.end));
      // vma_needs_copy: only VMAs with an anon_vma have page tables worth copying; shared
      // (shmem) VMAs and never-written private ones refault in the child from their object or
      // the zero page.
      if (!vma.anonVma) continue;
      if (vma.cow) {
        await withInvalidation(parent, MMU_NOTIFY_PROTECTION_PAGE, vma.start, vma.end, null, () => copyRange(parent, child, vma));
      } else {
        parent.ptl.lock();
        try {
          copyRange(parent, child, vma);
        } finally {
          parent.ptl.unlock();
        }
      }
    }
    if (parent.engine.trace.active) parent.engine.trace.emit('mm.fork', { parent: parent.id, child: child.id });
    return child;
  } finally {
    parent.mmapLock.upWrite();
  }
}

/** exit_mmap: tears the address space down. Later operations on it fail with ESRCH. */
export async function exitMm(mm: MmStruct): Promise<void> {
  mm.checkAlive('exit');
  mm.state = 'exiting';
  await mmuNotifierRelease(mm);
  await mm.mmapLock.downRead();
  try {
    // exit_mmap returns before unmap_vmas when there is no VMA.
    if (mm.vmas.length > 0) {
      await withInvalidation(mm, MMU_NOTIFY_UNMAP, 0, ULONG_MAX_ADDR, null, () => {
        for (const vma of mm.vmas.all) zapRange(mm, vma.start, vma.end);
      });
    }
  } finally {
    mm.mmapLock.upRead();
  }
  await mm.mmapLock.downWrite();
  try {
    for (const vma of mm.vmas.clear()) vma.shmem?.put();
    mm.state = 'dead';
  } finally {
    mm.mmapLock.upWrite();
  }
  if (mm.engine.trace.active) mm.engine.trace.emit('mm.exit', { mm: mm.id });
}

/**
 * __oom_reap_task_mm: zaps every private anonymous VMA inside a non-blockable UNMAP
 * invalidation. Returns 0 when everything was reaped, -EAGAIN when mmap_lock could not be
 * taken or a notifier refused (the caller retries, as oom_reap_task does).
 */
export async function oomReapTaskMm(mm: MmStruct): Promise<number> {
  if (mm.state === 'dead') return 0;
  if (!mm.mmapLock.tryDownRead()) return -EAGAIN;
  let ret = 0;
  try {
    for (const vma of mm.vmas.all) {
      if (vma.shared) continue;
      const range = mmuNotifierRangeInitOwner(MMU_NOTIFY_UNMAP, 0, mm, vma.start, vma.end, null);
      mm.stats.invalidations++;
      if ((await mmuNotifierInvalidateRangeStartNonblock(range)) !== 0) {
        ret = -EAGAIN;
        continue;
      }
      mm.ptl.lock();
      try {
        zapRange(mm, vma.start, vma.end);
      } finally {
        mm.ptl.unlock();
      }
      await mmuNotifierInvalidateRangeEnd(range);
    }
  } finally {
    mm.mmapLock.upRead();
  }
  return ret;
}
