/**
 * dmirror's migrations: MIGRATE_TO_DEV and MIGRATE_TO_SYS (migrate_vma by virtual range),
 * migrate_to_ram for CPU faults on device-private pages, and eviction of all device memory
 * (migrate_device_range: RELEASE and close).
 *
 * Models: lib/test_hmm.c (6.x mainline): dmirror_migrate_to_device,
 * dmirror_migrate_alloc_and_copy, dmirror_migrate_finalize_and_map, dmirror_migrate_to_system,
 * dmirror_devmem_fault_alloc_and_copy, dmirror_successful_migrated_pages, dmirror_devmem_fault,
 * dmirror_device_evict_chunk. Device pages keep their data in their own frames (the kernel's
 * BACKING_PAGE is the device page itself, as for device-coherent memory), so the device page
 * table maps them directly; copies go through the Device's copy engine (one batch per chunk).
 *
 * The protocol around an own migration (pairs with dmirrorIntervalInvalidate):
 *
 *   beginOwnMigration          register [start, end) and the SELECT flags with the device
 *   migrate_vma_setup          [MIGRATE invalidation, owner = this device: each mirror of this
 *                               device on the mm sets its sequence and erases the entries the
 *                               migration can select, then the TLB; other entries stay]
 *                              selected pages: locked, CPU PTEs -> migration entries
 *   allocate + lock dst pages, copy (copy engine)
 *   migrate_vma_pages          [a second own MIGRATE invalidation for pages put into holes]
 *   migrate_vma_finalize       CPU PTEs -> the new pages (or the old ones), pages unlocked
 *   map the new pages          (to the device only) a no-fault hmm_range_fault under the
 *                              sequence protocol: commit each entry that still maps its new page
 *   endOwnMigration
 *
 * test_hmm maps the new pages before migrate_vma_finalize (dmirror_migrate_finalize_and_map),
 * while their CPU entries are still migration entries, and erases the pages it moves only on
 * the way back, one by one, right before copying each. Both leave windows in which the device
 * can reach a page the CPU does not map (with a device that runs concurrently, a write there
 * can even be lost: it lands in the source after the copy); erasing in the callback and mapping
 * after finalize, through the read_begin / read_retry protocol, leaves none. A device fault
 * racing the migration either committed before setup (erased by it), sees read_retry true
 * (setup set the sequence), or waits in hmm_range_fault on the migration entry and then
 * reports the new page.
 *
 * FAIL_ALLOC (HMM_DMIRROR_FLAGS): the next allocation of a migration fails once. To the device,
 * that page is skipped (no THP here: test_hmm only falls back for huge pages), so the
 * read-back finds it unmapped and MIGRATE_TO_DEV returns -ENOENT; on the way back it is
 * VM_FAULT_OOM: MIGRATE_TO_SYS returns -ENOMEM and a CPU fault gets SIGBUS.
 *
 * Locks: mmap_lock (read) across each migrate_vma sequence (the caller's for migrate_to_ram);
 * page locks from setup to finalize; each mirror's mutex only around its own table updates
 * (in the callbacks, and the final map). Order: mmap_lock -> page locks -> dmirror.mutex.
 */
import {
  EBUSY,
  EINVAL,
  EIO,
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  HmmRange,
  hmmPfnToPfn,
  hmmRangeFault,
  mmuIntervalReadBegin,
  mmuIntervalReadRetry,
  ENOMEM,
  MIGRATE_PFN_MIGRATE,
  MIGRATE_PFN_VALID,
  MIGRATE_PFN_WRITE,
  MIGRATE_VMA_SELECT_COMPOUND,
  MIGRATE_VMA_SELECT_SYSTEM,
  MigrateVma,
  PAGE_SIZE,
  PTRS_PER_TABLE,
  VM_READ,
  type VmFault,
  ZERO_PFN,
  migrateDeviceFinalize,
  migrateDevicePages,
  migrateDeviceRange,
  migratePfn,
  migratePfnToPfn,
  migrateVmaFinalize,
  migrateVmaPages,
  migrateVmaSetup,
} from 'hmm-emu';
import { dmirrorReadBack } from './commands.js';
import type { DmirrorDevice } from './device.js';
import { DPT_XA_TAG_READ, DPT_XA_TAG_WRITE, type Dmirror, HMM_RANGE_DEFAULT_TIMEOUT_NS } from './mirror.js';
import { HMM_DMIRROR_FLAG_FAIL_ALLOC, type HmmDmirrorCmd } from './uapi.js';

/** True (and clears the flag) when `dmirror` asked the next allocation to fail. */
function takeFailAlloc(dmirror: Dmirror | null): boolean {
  if (dmirror === null || !(dmirror.flags & HMM_DMIRROR_FLAG_FAIL_ALLOC)) return false;
  dmirror.flags &= ~HMM_DMIRROR_FLAG_FAIL_ALLOC;
  return true;
}

// ---- to the device ----

/**
 * dmirror_migrate_alloc_and_copy: a locked device page for each selected entry (skipped when
 * the allocation fails), filled from the source page or cleared (no source: pte_none or the
 * zero page), dst = migrate_pfn(dpage) | (src & MIGRATE_PFN_WRITE).
 */
export async function dmirrorMigrateAllocAndCopy(args: MigrateVma, dmirror: Dmirror): Promise<void> {
  const mdevice = dmirror.mdevice;
  const phys = mdevice.phys;
  const e = mdevice.engine;
  const src = args.src!;
  const dst = args.dst!;
  const dpages: number[] = [];
  const spages: number[] = [];
  for (let i = 0; i < args.npages; i++) {
    const s = src[i]!;
    if (!(s & MIGRATE_PFN_MIGRATE)) continue;
    // spage may be 0: an unallocated pte_none() or the read-only zero page.
    const spage = migratePfnToPfn(s);
    if (spage !== 0 && phys.isDevicePfn(spage)) {
      e.warnOn(true, `${dmirror.name}: page already in device, spage pfn ${spage}`);
      continue;
    }
    const dpage = takeFailAlloc(dmirror) ? -ENOMEM : mdevice.allocPage(dmirror);
    if (dpage < 0) continue;
    dst[i] = migratePfn(dpage) | (s & MIGRATE_PFN_WRITE);
    dpages.push(dpage);
    spages.push(spage !== 0 ? spage : ZERO_PFN); // copying the zero page clears
  }
  await mdevice.device.copyEngine.copyPages(dpages, spages);
}

/**
 * dmirror_migrate_finalize_and_map, after migrate_vma_finalize: maps the pages that moved in
 * the migrating mirror's device page table, each only if the CPU still maps it (a no-fault
 * hmm_range_fault over the range, committed under the mutex when read_retry is false; entries
 * whose page moved on meanwhile are left for a later fault). WRITE if the dst entry and the CPU
 * entry both say so. Caller holds mmap_lock (read). Gives up (maps nothing more) on a walk
 * error or after HMM_RANGE_DEFAULT_TIMEOUT.
 */
export async function dmirrorMigrateFinalizeAndMap(args: MigrateVma, dmirror: Dmirror): Promise<number> {
  const src = args.src!;
  const dst = args.dst!;
  const n = args.npages;
  if (n === 0) return 0;
  let any = false;
  for (let i = 0; i < n && !any; i++) any = (src[i]! & MIGRATE_PFN_MIGRATE) !== 0n && migratePfnToPfn(dst[i]!) !== 0;
  if (!any) return 0;
  const e = dmirror.mm.engine;
  const timeout = e.now + HMM_RANGE_DEFAULT_TIMEOUT_NS;
  const range = new HmmRange({ notifier: dmirror.notifier, start: args.start, end: args.start + n * PAGE_SIZE, devPrivateOwner: dmirror.mdevice.owner });
  const pfns = range.hmmPfns;
  const v0 = args.start / PAGE_SIZE;
  for (;;) {
    if (e.now > timeout) return -EBUSY;
    range.notifierSeq = await mmuIntervalReadBegin(dmirror.notifier);
    const ret = await hmmRangeFault(range);
    if (ret === -EBUSY) continue;
    if (ret !== 0) return ret;
    await dmirror.mutex.lock();
    if (mmuIntervalReadRetry(dmirror.notifier, range.notifierSeq)) {
      dmirror.mutex.unlock();
      dmirror.stats.retries++;
      continue;
    }
    break;
  }
  try {
    let lo = -1;
    let hi = -1;
    for (let i = 0; i < n; i++) {
      if (!(src[i]! & MIGRATE_PFN_MIGRATE)) continue;
      const d = dst[i]!;
      const dpage = migratePfnToPfn(d);
      const f = pfns[i]!;
      if (dpage === 0 || !(f & HMM_PFN_VALID) || hmmPfnToPfn(f) !== dpage) continue;
      // Store the page that holds the data: the device page itself.
      const tag = d & MIGRATE_PFN_WRITE && f & HMM_PFN_WRITE ? DPT_XA_TAG_WRITE : DPT_XA_TAG_READ;
      if (dmirror.ptStore(v0 + i, dpage, tag)) {
        if (lo < 0) lo = v0 + i;
        hi = v0 + i + 1;
      }
    }
    if (lo >= 0) await dmirror.tlbFlush(lo * PAGE_SIZE, hi * PAGE_SIZE);
  } finally {
    dmirror.mutex.unlock();
  }
  return 0;
}

/**
 * dmirror_migrate_to_device: per VMA piece of at most PTRS_PER_PTE pages, migrate_vma with
 * SELECT_SYSTEM; -EINVAL for a hole or a VMA without VM_READ. Then reads the range back
 * through the device (cpages = pages read; -ENOENT if a page did not move and is not mapped).
 */
export async function dmirrorMigrateToDevice(dmirror: Dmirror, cmd: HmmDmirrorCmd): Promise<number> {
  const mm = dmirror.mm;
  const start = cmd.addr;
  const end = start + cmd.npages * PAGE_SIZE;
  if (mm.state !== 'live') return -EINVAL; // mmget_not_zero
  const src = new BigUint64Array(PTRS_PER_TABLE);
  const dst = new BigUint64Array(PTRS_PER_TABLE);
  let ret = 0;
  await mm.mmapLock.downRead();
  try {
    for (let addr = start, next: number; addr < end; addr = next) {
      const vma = mm.vmas.lookup(addr);
      if (vma === null || !(vma.flags & VM_READ)) return -EINVAL;
      next = Math.min(end, addr + PTRS_PER_TABLE * PAGE_SIZE, vma.end);
      const args = new MigrateVma({
        mm,
        vma,
        start: addr,
        end: next,
        src,
        dst,
        pgmapOwner: dmirror.mdevice.owner,
        flags: MIGRATE_VMA_SELECT_SYSTEM | MIGRATE_VMA_SELECT_COMPOUND,
      });
      const own = dmirror.mdevice.beginOwnMigration(mm, addr, next, args.flags);
      try {
        ret = await migrateVmaSetup(args);
        if (ret !== 0) return ret;
        await dmirrorMigrateAllocAndCopy(args, dmirror);
        await migrateVmaPages(args);
        await migrateVmaFinalize(args);
        await dmirrorMigrateFinalizeAndMap(args, dmirror);
      } finally {
        dmirror.mdevice.endOwnMigration(own);
      }
    }
  } finally {
    mm.mmapLock.upRead();
  }
  // Return the migrated data for verification.
  return dmirrorReadBack(dmirror, cmd);
}

// ---- back to system memory ----

/**
 * dmirror_devmem_fault_alloc_and_copy: a locked system page for each selected device page,
 * filled from it, dst = migrate_pfn(page) | (src & MIGRATE_PFN_WRITE) (the kernel's xa_erase
 * before each copy happened in setup's own MIGRATE invalidation, for every mirror). Returns 0, or
 * -ENOMEM (VM_FAULT_OOM) when an allocation fails, with the dst pages taken so far released
 * (the kernel leaves them to migrate_vma_finalize, which would install them unmigrated).
 * `dmirror` is whose FAIL_ALLOC flag applies (null: none).
 */
export async function dmirrorDevmemFaultAllocAndCopy(args: MigrateVma, dmirror: Dmirror | null, mdevice: DmirrorDevice): Promise<number> {
  const phys = mdevice.phys;
  const e = mdevice.engine;
  const src = args.src!;
  const dst = args.dst!;
  const dpages: number[] = [];
  const spages: number[] = [];
  for (let i = 0; i < args.npages; i++) {
    const s = src[i]!;
    const spage = migratePfnToPfn(s);
    if (spage === 0 || !(s & MIGRATE_PFN_MIGRATE)) continue;
    if (!phys.isDevicePfn(spage)) {
      e.warnOn(true, `${mdevice.name}: migrating back pfn ${spage}, not a device page`);
      continue;
    }
    const dpage = takeFailAlloc(dmirror) ? -ENOMEM : phys.allocPage();
    if (dpage < 0) {
      for (let j = 0; j < i; j++) {
        const d = migratePfnToPfn(dst[j]!);
        if (d === 0) continue;
        phys.unlockPage(d);
        phys.putPage(d);
        dst[j] = 0n;
      }
      return -ENOMEM;
    }
    phys.trylockPage(dpage); // lock_page on a page nobody else can see yet
    dst[i] = migratePfn(dpage) | (s & MIGRATE_PFN_WRITE);
    dpages.push(dpage);
    spages.push(spage);
  }
  await mdevice.device.copyEngine.copyPages(dpages, spages);
  return 0;
}

/** dmirror_successful_migrated_pages: entries with a page still marked MIGRATE after migrate_vma_pages. */
export function dmirrorSuccessfulMigratedPages(args: MigrateVma): number {
  const src = args.src!;
  let cpages = 0;
  for (let i = 0; i < args.npages; i++) {
    const s = src[i]!;
    if (s & MIGRATE_PFN_VALID && s & MIGRATE_PFN_MIGRATE) cpages++;
  }
  return cpages;
}

/**
 * dmirror_migrate_to_system: per VMA piece of at most PTRS_PER_PTE pages, migrate_vma selecting
 * this device's pages; cpages = pages moved back. -EINVAL for a hole or a VMA without VM_READ;
 * -ENOMEM when a system page cannot be allocated.
 */
export async function dmirrorMigrateToSystem(dmirror: Dmirror, cmd: HmmDmirrorCmd): Promise<number> {
  const mm = dmirror.mm;
  const mdevice = dmirror.mdevice;
  const start = cmd.addr;
  const end = start + cmd.npages * PAGE_SIZE;
  if (mm.state !== 'live') return -EINVAL; // mmget_not_zero
  const src = new BigUint64Array(PTRS_PER_TABLE);
  const dst = new BigUint64Array(PTRS_PER_TABLE);
  cmd.cpages = 0;
  let ret = 0;
  await mm.mmapLock.downRead();
  try {
    for (let addr = start, next: number; addr < end; addr = next) {
      const vma = mm.vmas.lookup(addr);
      if (vma === null || !(vma.flags & VM_READ)) return -EINVAL;
      next = Math.min(end, addr + PTRS_PER_TABLE * PAGE_SIZE, vma.end);
      const args = new MigrateVma({ mm, vma, start: addr, end: next, src, dst, pgmapOwner: mdevice.owner, flags: mdevice.selectDevice | MIGRATE_VMA_SELECT_COMPOUND });
      const own = mdevice.beginOwnMigration(mm, addr, next, args.flags);
      try {
        ret = await migrateVmaSetup(args);
        if (ret !== 0) return ret;
        if ((await dmirrorDevmemFaultAllocAndCopy(args, dmirror, mdevice)) !== 0) {
          await migrateVmaFinalize(args);
          return -ENOMEM;
        }
        await migrateVmaPages(args);
        cmd.cpages += dmirrorSuccessfulMigratedPages(args);
        await migrateVmaFinalize(args);
      } finally {
        mdevice.endOwnMigration(own);
      }
    }
  } finally {
    mm.mmapLock.upRead();
  }
  return ret;
}

/**
 * dmirror_devmem_fault (dev_pagemap_ops.migrate_to_ram): migrates the one faulting page back
 * with fault_page set. Called by the CPU fault handler with mmap_lock (read) held and the page
 * locked and referenced. Returns 0 (the access retries), -EIO (VM_FAULT_SIGBUS: setup refused)
 * or -ENOMEM (VM_FAULT_OOM); both errors are SIGBUS for the access.
 */
export async function dmirrorDevmemFault(mdevice: DmirrorDevice, vmf: VmFault): Promise<number> {
  // rpage->zone_device_data: the mirror that migrated the page (whose FAIL_ALLOC flag applies).
  const dmirror = mdevice.pageOwner(vmf.pfn);
  const args = new MigrateVma({
    mm: vmf.mm,
    vma: vmf.vma,
    start: vmf.address,
    end: vmf.address + PAGE_SIZE,
    src: new BigUint64Array(1),
    dst: new BigUint64Array(1),
    pgmapOwner: mdevice.owner,
    flags: mdevice.selectDevice,
    faultPage: vmf.pfn,
  });
  const own = mdevice.beginOwnMigration(vmf.mm, args.start, args.end, args.flags);
  try {
    // In practice migrate_vma_setup() never fails unless the test is wrong.
    if ((await migrateVmaSetup(args)) !== 0) return -EIO;
    const ret = await dmirrorDevmemFaultAllocAndCopy(args, dmirror, mdevice);
    if (ret !== 0) {
      await migrateVmaFinalize(args);
      return ret;
    }
    await migrateVmaPages(args);
    // No device finalize step: setup's invalidation erased the device entries.
    await migrateVmaFinalize(args);
    return 0;
  } finally {
    mdevice.endOwnMigration(own);
  }
}

/**
 * dmirror_device_evict_chunk over the whole device memory: migrate_device_range, a system
 * page for each page collected (the kernel allocates with __GFP_NOFAIL; here a failed
 * allocation leaves that page on the device), copy, migrate_device_pages / _finalize. The
 * device mappings go through migrate_device_range's per-mapping CLEAR invalidations. Returns
 * the pages moved.
 */
export async function dmirrorDeviceEvict(mdevice: DmirrorDevice): Promise<number> {
  const mem = mdevice.memory;
  if (mem === null || mem.freeFrames === mem.nframes) return 0; // nothing in use
  const phys = mdevice.phys;
  const e = mdevice.engine;
  const n = mem.nframes;
  const src = new BigUint64Array(n);
  const dst = new BigUint64Array(n);
  await migrateDeviceRange(phys, src, mem.firstPfn, n);
  const dpages: number[] = [];
  const spages: number[] = [];
  for (let i = 0; i < n; i++) {
    const s = src[i]!;
    const spage = migratePfnToPfn(s);
    if (spage === 0 || !(s & MIGRATE_PFN_MIGRATE)) continue;
    if (!phys.isDevicePfn(spage)) {
      e.warnOn(true, `${mdevice.name}: evicting pfn ${spage}, not a device page`);
      continue;
    }
    const dpage = phys.allocPage();
    if (dpage < 0) continue;
    phys.trylockPage(dpage);
    dst[i] = migratePfn(dpage) | (s & MIGRATE_PFN_WRITE);
    dpages.push(dpage);
    spages.push(spage);
  }
  await mdevice.device.copyEngine.copyPages(dpages, spages);
  migrateDevicePages(phys, src, dst, n);
  await migrateDeviceFinalize(phys, src, dst, n);
  return dpages.length;
}
