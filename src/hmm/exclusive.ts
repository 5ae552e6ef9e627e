/**
 * Exclusive device access to an anonymous page: make_device_exclusive.
 *
 * Models: mm/rmap.c (make_device_exclusive, current kernels: one PTE, GUP first),
 * mm/gup.c (get_user_page_vma_remote with FOLL_GET | FOLL_WRITE: check_vma_flags,
 * faultin_page, vm_fault_to_errno). The CPU side, remove_device_exclusive_entry /
 * restore_exclusive_pte, lives in src/mm/fault.ts (restoreExclusive).
 *
 * Protocol: with mmap_lock held (read), fault the page in writable (GUP for write, which also
 * undoes another device's exclusive entry or migrates a device-private page back), take a
 * reference and the page lock, start an MMU_NOTIFY_EXCLUSIVE invalidation of the page whose
 * owner is the caller's (so the caller can filter out its own event: it must, or it livelocks
 * invalidating what it is setting up), recheck under the ptl that the same page is still mapped
 * writable (else undo and retry from GUP), and replace the PTE with a writable device-exclusive
 * entry. The entry keeps the mapping's reference and mapcount (current kernels: the folio stays
 * mapped). Returns the pfn with the page still locked and referenced: the caller programs its
 * device inside its notifier critical section, then unlocks and puts the page; from then on a
 * CPU access restores the PTE (under the page lock, with an invalidation owned by nobody).
 *
 * Locks: mmap_lock (read, caller) -> page lock (sleeping, folio_lock_killable) -> ptl. The
 * invalidation runs with the page lock held and the ptl not held.
 *
 * Simplifications: no THP to split (FOLL_SPLIT_PMD is moot); no signals (folio_lock_killable
 * never fails); hugetlb does not exist.
 */
import { MMU_NOTIFY_EXCLUSIVE, mmuNotifierInvalidateRangeEnd, mmuNotifierInvalidateRangeStart, mmuNotifierRangeInitOwner } from '../notifier/index.js';
import {
  FAULT_FLAG_REMOTE,
  FAULT_FLAG_WRITE,
  MmStruct,
  PAGE_SIZE,
  PG_ANON,
  PG_DIRTY,
  PTE_DIRTY,
  PTE_PRESENT,
  PTE_PROTNONE,
  PTE_SWP_DEVICE_EXCLUSIVE,
  PTE_WRITE,
  TASK_SIZE,
  VM_IO,
  VM_PFNMAP,
  VM_WRITE,
  handleMmFault,
  vpnOf,
} from '../mm/index.js';
import { EFAULT, EINVAL, ENOMEM, EOPNOTSUPP, KernelError } from '../sim/index.js';


declare module '../sim/trace.js' {
  interface TraceEventMap {
    /** make_device_exclusive returned: the pfn (page locked and referenced) or -errno. */
    'hmm.make_device_exclusive': { mm: number; addr: number; result: number };
  }
}

/**
 * get_user_page_vma_remote(mm, addr, FOLL_GET | FOLL_WRITE): the pfn of the page mapped
 * writable at `addr`, with a reference taken, faulting it in as needed; or -EFAULT (no VMA, a
 * VM_IO / VM_PFNMAP VMA, a VMA without VM_WRITE, a fault that would signal) or -ENOMEM.
 */
async function getUserPageWrite(mm: MmStruct, addr: number): Promise<number> {
  const pt = mm.pgtable;
  const vpn = vpnOf(addr);
  for (;;) {
    const vma = mm.vmas.lookup(addr);
    if (vma === null) return -EFAULT;
    if (vma.flags & (VM_IO | VM_PFNMAP) || !(vma.flags & VM_WRITE)) return -EFAULT; // check_vma_flags
    mm.ptl.lock();
    const b = pt.bitsAt(vpn);
    const pfn = pt.pfnAt(vpn);
    const ok = (b & (PTE_PRESENT | PTE_PROTNONE | PTE_WRITE)) === (PTE_PRESENT | PTE_WRITE);
    if (ok) mm.phys.getPage(pfn); // follow_page_pte with FOLL_GET
    mm.ptl.unlock();
    if (ok) return pfn;
    // faultin_page; vm_fault_to_errno: OOM -> -ENOMEM, SIGSEGV/SIGBUS -> -EFAULT.
    const ret = await handleMmFault(mm, addr, FAULT_FLAG_WRITE | FAULT_FLAG_REMOTE);
    if (ret === -ENOMEM) return -ENOMEM;
    if (ret < 0) return -EFAULT;
    await mm.engine.yield(); // cond_resched in __get_user_pages' loop
  }
}

/**
 * make_device_exclusive(mm, addr, owner): marks the page at `addr` (rounded down) for
 * exclusive use by a device. Caller holds mmap_lock (read). Returns the page's pfn, locked and
 * referenced (the caller unlocks and puts it: phys.unlockPage(pfn); phys.putPage(pfn)), or
 * -EFAULT / -ENOMEM from faulting the page in writable, or -EOPNOTSUPP when the page is not
 * anonymous (a MAP_SHARED mapping). A bad address throws KernelError(EINVAL).
 */
export async function makeDeviceExclusive(mm: MmStruct, addr: number, owner: unknown): Promise<number> {
  if (!(mm instanceof MmStruct)) throw new KernelError(EINVAL, `make_device_exclusive: mm must be an MmStruct: ${String(mm)}`);
  if (!Number.isSafeInteger(addr) || addr < 0 || addr >= TASK_SIZE) throw new KernelError(EINVAL, `make_device_exclusive: addr must be a user address: ${String(addr)}`);
  mm.mmapLock.assertHeld();
  const page = addr - (addr % PAGE_SIZE);
  const ret = await makeExclusive(mm, page, owner);
  const t = mm.engine.trace;
  if (t.active && t.wants('hmm.make_device_exclusive')) t.emit('hmm.make_device_exclusive', { mm: mm.id, addr: page, result: ret });
  return ret;
}

async function makeExclusive(mm: MmStruct, addr: number, owner: unknown): Promise<number> {
  const phys = mm.phys;
  const pt = mm.pgtable;
  const vpn = vpnOf(addr);
  for (;;) {
    const pfn = await getUserPageWrite(mm, addr);
    if (pfn < 0) return pfn;
    if (!(phys.flags[pfn]! & PG_ANON)) {
      phys.putPage(pfn);
      return -EOPNOTSUPP;
    }
    await phys.lockPage(pfn);
    const range = mmuNotifierRangeInitOwner(MMU_NOTIFY_EXCLUSIVE, 0, mm, addr, addr + PAGE_SIZE, owner);
    mm.stats.invalidations++;
    await mmuNotifierInvalidateRangeStart(range);
    // Second walk: still the same page, mapped writable? (An anonymous page mapped writable
    // has exactly one PTE, so there are no other mappings to convert.)
    mm.ptl.lock();
    const b = pt.bitsAt(vpn);
    const same = pt.pfnAt(vpn) === pfn && (b & (PTE_PRESENT | PTE_PROTNONE | PTE_WRITE)) === (PTE_PRESENT | PTE_WRITE);
    if (same) {
      if (b & PTE_DIRTY) phys.flags[pfn]! |= PG_DIRTY; // the PTE is gone: keep its dirty bit on the folio
      const nb = PTE_SWP_DEVICE_EXCLUSIVE | PTE_WRITE;
      pt.set(vpn, pfn, nb);
      const t = mm.engine.trace;
      if (t.active && t.wants('mm.pte')) t.emit('mm.pte', { mm: mm.id, addr, pfn, bits: nb, op: 'device-exclusive' });
    }
    mm.ptl.unlock();
    await mmuNotifierInvalidateRangeEnd(range);
    if (same) return pfn;
    phys.unlockPage(pfn);
    phys.putPage(pfn);
  }
}
