import { describe, expect, it } from 'vitest';
import {
  Completion,
  EBUSY,
  EFAULT,
  EINVAL,
  ENOMEM,
  EPERM,
  Engine,
  KernelError,
  Mutex,
  type RunResult,
  explore,
} from '../../src/sim/index.js';
import {
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_EXCLUSIVE,
  MMU_NOTIFY_MIGRATE,
  MmuIntervalNotifier,
  type MmuIntervalNotifierOps,
  mmuIntervalNotifierInsert,
  mmuIntervalNotifierRemove,
  mmuIntervalReadBegin,
  mmuIntervalReadRetry,
  mmuIntervalSetSeq,
} from '../../src/notifier/index.js';
import {
  MADV_DONTNEED,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  type MmStruct,
  PAGE_SIZE,
  PG_ANON,
  PMD_SIZE,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
  PTE_ACCESSED,
  PTE_DIRTY,
  PTE_KIND_MASK,
  PTE_PRESENT,
  PTE_PROTNONE,
  PTE_SWP_DEVICE_EXCLUSIVE,
  PTE_SWP_DEVICE_PRIVATE,
  PTE_SWP_MIGRATION,
  PTE_WRITE,
  PhysMem,
  TASK_SIZE,
  VM_PFNMAP,
  ZERO_PFN,
  type VmFault,
  cpuRead64,
  cpuWrite64,
  createMm,
  madvise,
  migratePages,
  mmap,
  mprotect,
  munmap,
  withInvalidation,
} from '../../src/mm/index.js';
import { DevPagemap } from '../../src/hmm/devmem.js';
import {
  HMM_PFN_DMA_MAPPED,
  HMM_PFN_ERROR,
  HMM_PFN_FLAGS,
  HMM_PFN_ORDER_SHIFT,
  HMM_PFN_P2PDMA,
  HMM_PFN_P2PDMA_BUS,
  HMM_PFN_REQ_FAULT,
  HMM_PFN_REQ_WRITE,
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  hmmPfnFromPfn,
  hmmPfnToMapOrder,
  hmmPfnToPfn,
} from '../../src/hmm/hmm-pfn.js';
import { HmmRange, hmmRangeFault } from '../../src/hmm/range-fault.js';

const P = PAGE_SIZE;
const RW = PROT_READ | PROT_WRITE;
const PRIV = MAP_PRIVATE | MAP_ANONYMOUS;
const FIXED = PRIV | MAP_FIXED;
/** A PMD-aligned address: page i of it sits in PTE table floor(i / 512). */
const ADDR = 0x10_0000_0000;
const READ = HMM_PFN_REQ_FAULT;
const WRITE = HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE;
const OWNER = { name: 'this device' };
const FOREIGN = { name: 'another device' };

interface World {
  readonly engine: Engine;
  readonly phys: PhysMem;
  readonly mm: MmStruct;
  /** The mirror's notifier, over the whole user address space. */
  readonly sub: MmuIntervalNotifier;
  /** The driver's update lock (the invalidate callback takes it). */
  readonly update: Mutex;
  /** Device memory of this device (owner OWNER) and of another one (owner FOREIGN). */
  readonly own: DevPagemap;
  readonly foreign: DevPagemap;
  /** migrate_to_ram calls, by pagemap owner name. */
  readonly migrateCalls: string[];
}

/**
 * migrate_to_ram as a driver does it with migrate_vma: a new system page, the contents
 * copied, the PTE replaced inside a MIGRATE invalidation owned by the pagemap's owner.
 */
function migrateBack(w: () => World, owner: { name: string }) {
  return async (vmf: VmFault): Promise<number> => {
    const { phys, migrateCalls } = w();
    migrateCalls.push(owner.name);
    const { mm, address, pfn } = vmf;
    const sys = phys.allocPage();
    if (sys < 0) return sys;
    phys.copyPage(sys, pfn);
    phys.flags[sys] = phys.flags[sys]! | PG_ANON;
    const vpn = address / P;
    const done = await withInvalidation(mm, MMU_NOTIFY_MIGRATE, address, address + P, owner, () => {
      const pt = mm.pgtable;
      const bits = pt.bitsAt(vpn);
      if (pt.pfnAt(vpn) !== pfn || (bits & PTE_KIND_MASK) !== PTE_SWP_DEVICE_PRIVATE) return false;
      phys.decMapcount(pfn);
      phys.putPage(pfn); // the mapping's reference; the fault path holds its own
      phys.incMapcount(sys);
      pt.set(vpn, sys, PTE_PRESENT | PTE_ACCESSED | (bits & PTE_WRITE ? PTE_WRITE | PTE_DIRTY : 0));
      return true;
    });
    if (!done) phys.putPage(sys);
    return 0;
  };
}

function mirrorOps(update: Mutex, log?: string[]): MmuIntervalNotifierOps {
  return {
    async invalidate(sub, range, cur) {
      await update.lock();
      mmuIntervalSetSeq(sub, cur);
      log?.push(`invalidate 0x${range.start.toString(16)}`);
      update.unlock();
      return true;
    },
  };
}

/** Runs `body` as task "driver" in a fresh world; returns the run result (failures included). */
async function runWorld(body: (w: World) => Promise<void>, opts: { strategy?: string; seed?: number; log?: string[] } = {}): Promise<RunResult> {
  const engine = new Engine({ strategy: opts.strategy ?? 'fifo', seed: opts.seed ?? 0 });
  const phys = new PhysMem(engine, { frames: 4096, maxDeviceFrames: 4096 });
  const mm = createMm(engine, phys, { name: 'mm' });
  let world: World | null = null;
  const get = (): World => world!;
  const own = new DevPagemap(phys, { owner: OWNER, nframes: 64, migrateToRam: migrateBack(get, OWNER), name: 'own' });
  const foreign = new DevPagemap(phys, { owner: FOREIGN, nframes: 64, migrateToRam: migrateBack(get, FOREIGN), name: 'foreign' });
  const update = new Mutex(engine, 'update');
  world = { engine, phys, mm, sub: new MmuIntervalNotifier('mirror'), update, own, foreign, migrateCalls: [] };
  const w = world;
  engine.spawn('driver', async () => {
    expect(await mmuIntervalNotifierInsert(w.sub, mm, 0, TASK_SIZE, mirrorOps(update, opts.log))).toBe(0);
    await body(w);
  });
  return engine.run();
}

/** As runWorld, failing the test if the run fails. */
async function inWorld(body: (w: World) => Promise<void>, opts: { strategy?: string; seed?: number; log?: string[] } = {}): Promise<RunResult> {
  const r = await runWorld(body, opts);
  if (!r.ok) throw r.failure;
  return r;
}

interface FaultOpts {
  readonly defaultFlags?: bigint;
  readonly pfnFlagsMask?: bigint;
  readonly inputs?: readonly bigint[];
  readonly owner?: unknown;
}

function makeRange(w: World, start: number, npages: number, o: FaultOpts = {}): HmmRange {
  const hmmPfns = new BigUint64Array(npages);
  o.inputs?.forEach((v, i) => (hmmPfns[i] = v));
  return new HmmRange({
    notifier: w.sub,
    start,
    end: start + npages * P,
    hmmPfns,
    defaultFlags: o.defaultFlags ?? 0n,
    pfnFlagsMask: o.pfnFlagsMask ?? 0n,
    devPrivateOwner: o.owner === undefined ? OWNER : o.owner,
  });
}

/** One attempt of the driver's loop: read_begin, mmap read lock, hmm_range_fault, unlock. */
async function attempt(w: World, range: HmmRange): Promise<number> {
  range.notifierSeq = await mmuIntervalReadBegin(w.sub);
  await w.mm.mmapLock.downRead();
  try {
    return await hmmRangeFault(range);
  } finally {
    w.mm.mmapLock.upRead();
  }
}

/** One attempt; returns the result and the entries. */
async function fault(w: World, start: number, npages: number, o: FaultOpts = {}): Promise<{ ret: number; pfns: bigint[] }> {
  const range = makeRange(w, start, npages, o);
  const ret = await attempt(w, range);
  return { ret, pfns: [...range.hmmPfns] };
}

/** The documented loop: retries -EBUSY (counted) until another result, then read_retry under the lock. */
async function faultLoop(w: World, start: number, npages: number, o: FaultOpts = {}): Promise<{ ret: number; pfns: bigint[]; busy: number }> {
  const range = makeRange(w, start, npages, o);
  let busy = 0;
  for (;;) {
    const ret = await attempt(w, range);
    if (ret === -EBUSY) {
      busy++;
      // A retry starts from the inputs again, as drivers refill them.
      range.hmmPfns.fill(0n);
      o.inputs?.forEach((v, i) => (range.hmmPfns[i] = v));
      continue;
    }
    if (ret !== 0) return { ret, pfns: [...range.hmmPfns], busy };
    await w.update.lock();
    const retry = mmuIntervalReadRetry(w.sub, range.notifierSeq);
    w.update.unlock();
    if (!retry) return { ret, pfns: [...range.hmmPfns], busy };
    busy++;
  }
}

/** The CPU's view of `addr`: { bits, pfn }. */
function pte(w: World, addr: number): { bits: number; pfn: number } {
  return { bits: w.mm.pgtable.bitsAt(addr / P), pfn: w.mm.pgtable.pfnAt(addr / P) };
}

const entry = (pfn: number, flags: bigint): bigint => BigInt(pfn) | flags;

/** Moves the page at `addr` to `pgmap`'s memory: a device-private entry, as migrate_vma would leave it. */
async function toDevice(w: World, addr: number, pgmap: DevPagemap, writable = true): Promise<number> {
  const { mm, phys } = w;
  await mm.mmapLock.downRead();
  try {
    return await withInvalidation(mm, MMU_NOTIFY_MIGRATE, addr, addr + P, pgmap.owner, () => {
      const vpn = addr / P;
      const sys = mm.pgtable.pfnAt(vpn);
      expect(mm.pgtable.bitsAt(vpn) & PTE_PRESENT).toBe(PTE_PRESENT);
      const dev = pgmap.allocPage();
      expect(dev).toBeGreaterThan(0);
      phys.copyPage(dev, sys);
      phys.incMapcount(dev);
      mm.pgtable.set(vpn, dev, PTE_SWP_DEVICE_PRIVATE | (writable ? PTE_WRITE : 0));
      phys.decMapcount(sys);
      phys.putPage(sys); // the mapping held the only reference: the system page is freed
      return dev;
    });
  } finally {
    mm.mmapLock.upRead();
  }
}

/** Replaces the PTE at `addr` with a writable device-exclusive entry (make_device_exclusive). */
async function makeExclusive(w: World, addr: number): Promise<number> {
  const { mm } = w;
  await mm.mmapLock.downRead();
  try {
    return await withInvalidation(mm, MMU_NOTIFY_EXCLUSIVE, addr, addr + P, OWNER, () => {
      const pfn = mm.pgtable.pfnAt(addr / P);
      // The page stays mapped (mapcount and the mapping's reference unchanged).
      mm.pgtable.set(addr / P, pfn, PTE_SWP_DEVICE_EXCLUSIVE | PTE_WRITE);
      return pfn;
    });
  } finally {
    mm.mmapLock.upRead();
  }
}

/** Installs a migration entry at `addr` with the page locked, as migrate_pages' unmap step. Returns the old pfn. */
async function startMigration(w: World, addr: number): Promise<number> {
  const { mm, phys } = w;
  const vpn = addr / P;
  await mm.mmapLock.downRead();
  try {
    const old = mm.pgtable.pfnAt(vpn);
    expect(phys.trylockPage(old)).toBe(true);
    await withInvalidation(mm, MMU_NOTIFY_CLEAR, addr, addr + P, null, () => {
      phys.decMapcount(old); // the mapping's reference passes to the migrator
      mm.pgtable.set(vpn, old, PTE_SWP_MIGRATION | PTE_WRITE);
    });
    return old;
  } finally {
    mm.mmapLock.upRead();
  }
}

/** remove_migration_ptes + unlock: the entry becomes the new page (no invalidation). Returns the new pfn. */
function finishMigration(w: World, addr: number, old: number): number {
  const { mm, phys } = w;
  const fresh = phys.allocPage();
  phys.copyPage(fresh, old);
  phys.flags[fresh] = phys.flags[fresh]! | PG_ANON;
  mm.ptl.lock();
  phys.incMapcount(fresh);
  mm.pgtable.set(addr / P, fresh, PTE_PRESENT | PTE_WRITE | PTE_DIRTY | PTE_ACCESSED);
  mm.ptl.unlock();
  phys.unlockPage(old);
  phys.putPage(old);
  return fresh;
}

describe('HMM_PFN flags (include/linux/hmm.h)', () => {
  it('has the kernel values for a 64-bit long', () => {
    expect(HMM_PFN_VALID).toBe(0x8000_0000_0000_0000n);
    expect(HMM_PFN_WRITE).toBe(0x4000_0000_0000_0000n);
    expect(HMM_PFN_ERROR).toBe(0x2000_0000_0000_0000n);
    expect(HMM_PFN_DMA_MAPPED).toBe(1n << 60n);
    expect(HMM_PFN_P2PDMA).toBe(1n << 59n);
    expect(HMM_PFN_P2PDMA_BUS).toBe(1n << 58n);
    expect(HMM_PFN_ORDER_SHIFT).toBe(53n);
    expect(HMM_PFN_REQ_FAULT).toBe(HMM_PFN_VALID);
    expect(HMM_PFN_REQ_WRITE).toBe(HMM_PFN_WRITE);
    expect(HMM_PFN_FLAGS).toBe(0xffe0_0000_0000_0000n);
  });

  it('decodes the pfn and the map order, and encodes an entry', () => {
    const x = HMM_PFN_VALID | HMM_PFN_WRITE | (9n << HMM_PFN_ORDER_SHIFT) | 0x1234n;
    expect(hmmPfnToPfn(x)).toBe(0x1234);
    expect(hmmPfnToMapOrder(x)).toBe(9);
    expect(hmmPfnToMapOrder(HMM_PFN_VALID | 7n)).toBe(0);
    expect(hmmPfnFromPfn(0x1234, HMM_PFN_VALID)).toBe(HMM_PFN_VALID | 0x1234n);
    expect(hmmPfnFromPfn(5)).toBe(5n);
  });

  it('rejects values that are not entries', () => {
    expect(() => hmmPfnToPfn(-1n)).toThrow(KernelError);
    expect(() => hmmPfnToPfn(1n << 64n)).toThrow(/64-bit/);
    expect(() => hmmPfnToMapOrder(3 as unknown as bigint)).toThrow(KernelError);
    expect(() => hmmPfnFromPfn(-1)).toThrow(/pfn must be/);
    expect(() => hmmPfnFromPfn(1, 1n)).toThrow(/flags must be/);
  });
});

describe('hmm_range_fault per entry kind', () => {
  it('none, not requested: 0, and nothing is faulted', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, 2 * P, RW, FIXED);
      const faults = w.mm.stats.faults;
      const used = w.phys.usedSystemFrames();
      const r = await fault(w, ADDR, 2);
      expect(r).toEqual({ ret: 0, pfns: [0n, 0n] });
      expect(w.mm.stats.faults).toBe(faults);
      expect(w.phys.usedSystemFrames()).toBe(used);
    });
  });

  it('none with REQ_WRITE: faulted to a new page, VALID | WRITE, in one call (no invalidation)', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, 2 * P, RW, FIXED);
      const r = await fault(w, ADDR, 2, { defaultFlags: WRITE });
      expect(r.ret).toBe(0);
      for (let i = 0; i < 2; i++) {
        const { bits, pfn } = pte(w, ADDR + i * P);
        expect(bits & (PTE_PRESENT | PTE_WRITE)).toBe(PTE_PRESENT | PTE_WRITE);
        expect(pfn).not.toBe(ZERO_PFN);
        expect(r.pfns[i]).toBe(entry(pfn, HMM_PFN_VALID | HMM_PFN_WRITE));
      }
    });
  });

  it('none with a read request: the zero page, VALID only', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, P, RW, FIXED);
      const r = await fault(w, ADDR, 1, { defaultFlags: READ });
      expect(r).toEqual({ ret: 0, pfns: [entry(ZERO_PFN, HMM_PFN_VALID)] });
      expect(w.mm.stats.zeroMaps).toBe(1);
    });
  });

  it('zero page with REQ_WRITE: the COW fault invalidates the page, so the call returns -EBUSY; the retry reports the copy', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, P, RW, FIXED);
      expect(await cpuRead64(w.mm, ADDR)).toBe(0n); // maps the zero page
      expect(pte(w, ADDR).pfn).toBe(ZERO_PFN);
      const first = await fault(w, ADDR, 1, { defaultFlags: WRITE });
      expect(first.ret).toBe(-EBUSY); // wp_page_copy's CLEAR invalidation moved the sequence
      const { pfn } = pte(w, ADDR);
      expect(pfn).not.toBe(ZERO_PFN);
      expect(w.mm.stats.cowCopies).toBe(1);
      const again = await fault(w, ADDR, 1, { defaultFlags: WRITE });
      expect(again).toEqual({ ret: 0, pfns: [entry(pfn, HMM_PFN_VALID | HMM_PFN_WRITE)] });
    });
  });

  it('read-only after mprotect(READ): VALID only; REQ_WRITE is -EPERM with the entries left as inputs', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, P, RW, FIXED);
      await cpuWrite64(w.mm, ADDR, 7n);
      await mprotect(w.mm, ADDR, P, PROT_READ);
      const { pfn } = pte(w, ADDR);
      expect(await fault(w, ADDR, 1, { defaultFlags: READ })).toEqual({ ret: 0, pfns: [entry(pfn, HMM_PFN_VALID)] });
      const faults = w.mm.stats.faults;
      const denied = await fault(w, ADDR, 1, { pfnFlagsMask: WRITE, inputs: [WRITE] });
      expect(denied).toEqual({ ret: -EPERM, pfns: [WRITE] });
      expect(w.mm.stats.faults).toBe(faults);
    });
  });

  it('read-write: VALID | WRITE with the page pfn, without a fault', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, P, RW, FIXED);
      await cpuWrite64(w.mm, ADDR, 7n);
      const faults = w.mm.stats.faults;
      const r = await fault(w, ADDR, 1, { defaultFlags: WRITE });
      expect(r).toEqual({ ret: 0, pfns: [entry(pte(w, ADDR).pfn, HMM_PFN_VALID | HMM_PFN_WRITE)] });
      expect(w.mm.stats.faults).toBe(faults);
    });
  });

  it('PROT_NONE: -EFAULT when requested, ERROR in a snapshot (the vma has no VM_READ)', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, 2 * P, RW, FIXED);
      await cpuWrite64(w.mm, ADDR, 7n);
      await mprotect(w.mm, ADDR, 2 * P, PROT_NONE);
      expect(pte(w, ADDR).bits & PTE_PROTNONE).toBe(PTE_PROTNONE);
      expect(await fault(w, ADDR, 2, { defaultFlags: READ })).toEqual({ ret: -EFAULT, pfns: [0n, 0n] });
      expect(await fault(w, ADDR, 2)).toEqual({ ret: 0, pfns: [HMM_PFN_ERROR, HMM_PFN_ERROR] });
    });
  });

  it('a write request on a read-only vma is -EPERM; a read request there maps the zero page', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, P, PROT_READ, FIXED);
      expect((await fault(w, ADDR, 1, { defaultFlags: WRITE })).ret).toBe(-EPERM);
      expect(pte(w, ADDR).bits).toBe(0);
      expect(await fault(w, ADDR, 1, { defaultFlags: READ })).toEqual({ ret: 0, pfns: [entry(ZERO_PFN, HMM_PFN_VALID)] });
    });
  });

  it('own device-private page: VALID | WRITE with the device pfn, no fault, no migration', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, P, RW, FIXED);
      await cpuWrite64(w.mm, ADDR, 0xabcn);
      const free = w.phys.freeSystemFrames();
      const dev = await toDevice(w, ADDR, w.own);
      expect(w.phys.freeSystemFrames()).toBe(free + 1); // the system page was freed
      expect(w.phys.mapcount[dev]).toBe(1);
      expect(w.own.contains(dev)).toBe(true);
      const faults = w.mm.stats.faults;
      const r = await fault(w, ADDR, 1, { defaultFlags: WRITE });
      expect(r).toEqual({ ret: 0, pfns: [entry(dev, HMM_PFN_VALID | HMM_PFN_WRITE)] });
      expect(w.mm.stats.faults).toBe(faults);
      expect(w.migrateCalls).toEqual([]);
      expect(w.phys.readU64(dev, 0)).toBe(0xabcn);
    });
  });

  it('own read-only device-private page: VALID without WRITE even when REQ_WRITE asks (the kernel does not fault it)', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, P, RW, FIXED);
      await cpuWrite64(w.mm, ADDR, 1n);
      const dev = await toDevice(w, ADDR, w.own, false);
      expect(await fault(w, ADDR, 1, { defaultFlags: WRITE })).toEqual({ ret: 0, pfns: [entry(dev, HMM_PFN_VALID)] });
      expect(w.migrateCalls).toEqual([]);
    });
  });

  it("another device's private page: 0 when not requested; requested, migrate_to_ram brings it back (-EBUSY from its invalidation, then the system pfn)", async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, P, RW, FIXED);
      await cpuWrite64(w.mm, ADDR, 0x5151n);
      const dev = await toDevice(w, ADDR, w.foreign);
      const freeDev = w.foreign.freeFrames;
      expect(await fault(w, ADDR, 1)).toEqual({ ret: 0, pfns: [0n] });
      expect(w.migrateCalls).toEqual([]);
      const first = await fault(w, ADDR, 1, { defaultFlags: READ });
      expect(first.ret).toBe(-EBUSY);
      expect(w.migrateCalls).toEqual(['another device']);
      const { pfn, bits } = pte(w, ADDR);
      expect(bits & PTE_PRESENT).toBe(PTE_PRESENT);
      expect(w.phys.isDevicePfn(pfn)).toBe(false);
      expect(w.foreign.freeFrames).toBe(freeDev + 1); // the device page went back to its pagemap
      expect(w.phys.refcount[dev]).toBe(0);
      const again = await fault(w, ADDR, 1, { defaultFlags: READ });
      expect(again).toEqual({ ret: 0, pfns: [entry(pfn, HMM_PFN_VALID | HMM_PFN_WRITE)] });
      expect(await cpuRead64(w.mm, ADDR)).toBe(0x5151n);
    });
  });

  it("a device-private page is reported only to its owner: with another devPrivateOwner it is faulted back", async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, P, RW, FIXED);
      await cpuWrite64(w.mm, ADDR, 3n);
      await toDevice(w, ADDR, w.own);
      const r = await faultLoop(w, ADDR, 1, { defaultFlags: READ, owner: null });
      expect(r.ret).toBe(0);
      expect(w.migrateCalls).toEqual(['this device']);
      expect(r.pfns[0]).toBe(entry(pte(w, ADDR).pfn, HMM_PFN_VALID | HMM_PFN_WRITE));
    });
  });

  it('device-exclusive entry: 0 when not requested; requested, the fault restores the PTE (-EBUSY from the EXCLUSIVE invalidation), then VALID | WRITE', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, P, RW, FIXED);
      await cpuWrite64(w.mm, ADDR, 9n);
      const pfn = await makeExclusive(w, ADDR);
      expect(await fault(w, ADDR, 1)).toEqual({ ret: 0, pfns: [0n] });
      expect(pte(w, ADDR).bits & PTE_KIND_MASK).toBe(PTE_SWP_DEVICE_EXCLUSIVE);
      expect((await fault(w, ADDR, 1, { defaultFlags: READ })).ret).toBe(-EBUSY);
      // restore_exclusive_pte: old, and clean unless the page is dirty (this helper did not mark it).
      expect(pte(w, ADDR)).toEqual({ pfn, bits: PTE_PRESENT | PTE_WRITE });
      expect(await fault(w, ADDR, 1, { defaultFlags: READ })).toEqual({ ret: 0, pfns: [entry(pfn, HMM_PFN_VALID | HMM_PFN_WRITE)] });
    });
  });

  it('migration entry (diagram 1): the walk waits for the page lock; an invalidation meanwhile makes it return -EBUSY', async () => {
    const A = ADDR + PMD_SIZE - P; // last page of one PTE table
    const B = ADDR + PMD_SIZE; // first page of the next
    const log: string[] = [];
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, 2 * PMD_SIZE, RW, FIXED);
      await cpuWrite64(w.mm, A, 1n);
      await cpuWrite64(w.mm, B, 2n);
      const pfnA = pte(w, A).pfn;
      const old = await startMigration(w, B);
      const range = makeRange(w, A, 2, { defaultFlags: READ });
      const other = w.engine.spawn('other', async () => {
        // Start once the walk has reported A (and so moved on to B's table).
        while ((range.hmmPfns[0]! & HMM_PFN_VALID) === 0n) await w.engine.yield();
        log.push('A reported');
        expect(w.phys.pageLocked(old)).toBe(true);
        await madvise(w.mm, A, P, MADV_DONTNEED);
        log.push('madvise A done');
        finishMigration(w, B, old);
        log.push('B unlocked');
      });
      const ret = await attempt(w, range);
      log.push(`ret ${ret}`);
      expect(ret).toBe(-EBUSY);
      expect(range.hmmPfns[0]).toBe(entry(pfnA, HMM_PFN_VALID | HMM_PFN_WRITE)); // the (now stale) output
      expect(range.hmmPfns[1]).toBe(0n); // still its input: the walk stopped at B
      await other.join();
      const again = await faultLoop(w, A, 2, { defaultFlags: READ });
      expect(again.ret).toBe(0);
      expect(again.pfns).toEqual([entry(ZERO_PFN, HMM_PFN_VALID), entry(pte(w, B).pfn, HMM_PFN_VALID | HMM_PFN_WRITE)]);
      expect(await cpuRead64(w.mm, B)).toBe(2n);
    });
    expect(log).toEqual(['A reported', 'madvise A done', 'B unlocked', 'ret -16']);
  });

  it('migration entry: with no invalidation meanwhile, the walk restarts after the wait and returns 0 with the new page', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, 2 * P, RW, FIXED);
      await cpuWrite64(w.mm, ADDR + P, 5n);
      const old = await startMigration(w, ADDR + P);
      let fresh = 0;
      const migrator = w.engine.spawn('migrator', async () => {
        await w.engine.sleep(1000);
        fresh = finishMigration(w, ADDR + P, old);
      });
      const r = await fault(w, ADDR, 2, { defaultFlags: READ });
      expect(w.engine.now).toBe(1000); // it slept until the migration finished
      expect(r).toEqual({ ret: 0, pfns: [entry(ZERO_PFN, HMM_PFN_VALID), entry(fresh, HMM_PFN_VALID | HMM_PFN_WRITE)] });
      await migrator.join();
    });
  });

  it('migration entry, not requested: 0 without waiting', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, P, RW, FIXED);
      await cpuWrite64(w.mm, ADDR, 5n);
      const old = await startMigration(w, ADDR);
      expect(await fault(w, ADDR, 1)).toEqual({ ret: 0, pfns: [0n] });
      finishMigration(w, ADDR, old);
    });
  });

  it('migratePages racing a faulting walk: the walk waits or sees either page, never a freed one', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, 4 * P, RW, FIXED);
      for (let i = 0; i < 4; i++) await cpuWrite64(w.mm, ADDR + i * P, BigInt(i + 1));
      const mover = w.engine.spawn('mover', async () => {
        expect(await migratePages(w.mm, ADDR, ADDR + 4 * P)).toBe(4);
      });
      const r = await faultLoop(w, ADDR, 4, { defaultFlags: READ });
      expect(r.ret).toBe(0);
      await mover.join();
      const again = await faultLoop(w, ADDR, 4, { defaultFlags: READ });
      for (let i = 0; i < 4; i++) expect(again.pfns[i]).toBe(entry(pte(w, ADDR + i * P).pfn, HMM_PFN_VALID | HMM_PFN_WRITE));
    });
  });

  it('no vma: -EFAULT when a fault is requested there, ERROR when not', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, P, RW, FIXED);
      await cpuWrite64(w.mm, ADDR, 1n);
      const pfn = pte(w, ADDR).pfn;
      expect(await fault(w, ADDR, 3, { defaultFlags: READ })).toEqual({ ret: -EFAULT, pfns: [entry(pfn, HMM_PFN_VALID | HMM_PFN_WRITE), 0n, 0n] });
      expect(await fault(w, ADDR, 3)).toEqual({ ret: 0, pfns: [entry(pfn, HMM_PFN_VALID | HMM_PFN_WRITE), HMM_PFN_ERROR, HMM_PFN_ERROR] });
      // A hole before the vma, and a request only for the mapped page: no error.
      const mask = { pfnFlagsMask: READ, inputs: [0n, READ] };
      expect(await fault(w, ADDR - P, 2, mask)).toEqual({ ret: 0, pfns: [HMM_PFN_ERROR, entry(pfn, HMM_PFN_VALID | HMM_PFN_WRITE)] });
    });
  });

  it('a VM_PFNMAP vma: ERROR in a snapshot, -EFAULT when requested (hmm_vma_walk_test)', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, P, RW, FIXED);
      w.mm.vmas.lookup(ADDR)!.flags |= VM_PFNMAP;
      expect(await fault(w, ADDR, 1)).toEqual({ ret: 0, pfns: [HMM_PFN_ERROR] });
      expect((await fault(w, ADDR, 1, { defaultFlags: READ })).ret).toBe(-EFAULT);
    });
  });

  it('a fault covers the rest of the hole or PTE table, requested or not, as hmm_vma_fault does', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, 8 * P, RW, FIXED);
      const mask = { pfnFlagsMask: WRITE, inputs: [0n, 0n, WRITE, 0n] };
      // No PTE table yet: the hole is the whole range, faulted from its start.
      let faults = w.mm.stats.faults;
      const a = await fault(w, ADDR, 4, mask);
      expect(a.ret).toBe(0);
      expect(w.mm.stats.faults - faults).toBe(4);
      for (let i = 0; i < 4; i++) expect(a.pfns[i]).toBe(entry(pte(w, ADDR + i * P).pfn, HMM_PFN_VALID | HMM_PFN_WRITE));
      // The table exists now: a fault at page 6 covers pages 6 and 7 only; page 5 stays none.
      faults = w.mm.stats.faults;
      const b = await fault(w, ADDR + 4 * P, 4, mask);
      expect(w.mm.stats.faults - faults).toBe(2);
      expect(b.pfns[0]).toBe(0n);
      expect(b.pfns[1]).toBe(0n);
      expect(pte(w, ADDR + 5 * P).bits).toBe(0);
      expect(b.pfns[2]).toBe(entry(pte(w, ADDR + 6 * P).pfn, HMM_PFN_VALID | HMM_PFN_WRITE));
      expect(b.pfns[3]).toBe(entry(pte(w, ADDR + 7 * P).pfn, HMM_PFN_VALID | HMM_PFN_WRITE));
    });
  });

  it('a failing fault is -EFAULT, out of memory included (mainline maps every VM_FAULT_ERROR to -EFAULT)', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, P, RW, FIXED);
      w.phys.failNext(1);
      const r = await fault(w, ADDR, 1, { defaultFlags: WRITE });
      expect(r.ret).toBe(-EFAULT);
      expect(r.ret).not.toBe(-ENOMEM);
    });
  });

  it('keeps the sticky DMA_MAPPED / P2PDMA / P2PDMA_BUS input flags and drops the rest of the input', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, 2 * P, RW, FIXED);
      await cpuWrite64(w.mm, ADDR, 1n);
      const sticky = HMM_PFN_DMA_MAPPED | HMM_PFN_P2PDMA_BUS;
      const r = await fault(w, ADDR, 2, { inputs: [sticky | HMM_PFN_ERROR | 77n, HMM_PFN_P2PDMA | 5n] });
      expect(r.ret).toBe(0);
      expect(r.pfns).toEqual([entry(pte(w, ADDR).pfn, HMM_PFN_VALID | HMM_PFN_WRITE | sticky), HMM_PFN_P2PDMA]);
    });
  });

  it('a snapshot (default_flags 0, mask 0) reports every entry kind without faulting or waiting', async () => {
    await inWorld(async (w) => {
      const { mm } = w;
      // 0: PROT_NONE  1: hole  2: zero  3: read-only  4: read-write  5: own device-private
      // 6: foreign device-private  7: device-exclusive  8: migration  9: none
      await mmap(mm, ADDR, P, RW, FIXED);
      await mmap(mm, ADDR + 2 * P, 8 * P, RW, FIXED);
      for (const i of [0, 3, 4, 5, 6, 7, 8]) await cpuWrite64(mm, ADDR + i * P, BigInt(i));
      await cpuRead64(mm, ADDR + 2 * P);
      await mprotect(mm, ADDR, P, PROT_NONE);
      await mprotect(mm, ADDR + 3 * P, P, PROT_READ);
      const dev = await toDevice(w, ADDR + 5 * P, w.own);
      await toDevice(w, ADDR + 6 * P, w.foreign);
      await makeExclusive(w, ADDR + 7 * P);
      const old = await startMigration(w, ADDR + 8 * P);
      const faults = mm.stats.faults;
      const t0 = w.engine.now;
      const r = await fault(w, ADDR, 10);
      expect(r.ret).toBe(0);
      expect(r.pfns).toEqual([
        HMM_PFN_ERROR,
        HMM_PFN_ERROR,
        entry(ZERO_PFN, HMM_PFN_VALID),
        entry(pte(w, ADDR + 3 * P).pfn, HMM_PFN_VALID),
        entry(pte(w, ADDR + 4 * P).pfn, HMM_PFN_VALID | HMM_PFN_WRITE),
        entry(dev, HMM_PFN_VALID | HMM_PFN_WRITE),
        0n,
        0n,
        0n,
        0n,
      ]);
      expect(mm.stats.faults).toBe(faults);
      expect(w.engine.now).toBe(t0);
      expect(w.migrateCalls).toEqual([]);
      finishMigration(w, ADDR + 8 * P, old);
    });
  });

  it('records hmm.range_fault with the result and the number of handle_mm_fault calls', async () => {
    const events: Array<{ ret: number; faults: number; start: number; end: number }> = [];
    await inWorld(async (w) => {
      const off = w.engine.trace.on('hmm.range_fault', (e) => events.push({ ret: e.ret, faults: e.faults, start: e.start, end: e.end }));
      await mmap(w.mm, ADDR, 3 * P, RW, FIXED);
      await fault(w, ADDR, 3, { defaultFlags: WRITE });
      await fault(w, ADDR, 4, { defaultFlags: READ });
      off();
    });
    expect(events).toEqual([
      { ret: 0, faults: 3, start: ADDR, end: ADDR + 3 * P },
      { ret: -EFAULT, faults: 0, start: ADDR, end: ADDR + 4 * P },
    ]);
  });
});

describe('hmm_range_fault concurrency', () => {
  it('leaves a scheduling point between PTE tables: another task runs during a three-table walk', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, 3 * PMD_SIZE, RW, FIXED);
      for (let t = 0; t < 3; t++) await cpuWrite64(w.mm, ADDR + t * PMD_SIZE, 1n);
      let ticks = 0;
      let walking = false;
      let ticksInWalk = 0;
      let stop = false;
      const ticker = w.engine.spawn('ticker', async () => {
        while (!stop) {
          ticks++;
          if (walking) ticksInWalk++;
          await w.engine.yield();
        }
      });
      const range = makeRange(w, ADDR, 3 * 512);
      await w.mm.mmapLock.downRead();
      range.notifierSeq = await mmuIntervalReadBegin(w.sub);
      walking = true;
      expect(await hmmRangeFault(range)).toBe(0);
      walking = false;
      w.mm.mmapLock.upRead();
      stop = true;
      await ticker.join();
      expect(ticks).toBeGreaterThan(0);
      expect(ticksInWalk).toBe(2); // after tables 0 and 1, none after the last
    });
  });

  it('diagram 2: a walk without restart returns 0 with a stale entry; read_retry under the update lock says retry', async () => {
    const A = ADDR + PMD_SIZE - P;
    const npages = 8 * 512 + 2; // A, seven empty PTE tables' worth of holes, then B
    const B = A + (npages - 1) * P;
    const order: string[] = [];
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, 10 * PMD_SIZE, RW, FIXED);
      await cpuWrite64(w.mm, A, 1n);
      await cpuWrite64(w.mm, B, 2n);
      const pfnA = pte(w, A).pfn;
      const inputs = new Array<bigint>(npages).fill(0n);
      inputs[0] = READ;
      inputs[npages - 1] = READ;
      const range = makeRange(w, A, npages, { pfnFlagsMask: READ, inputs });
      const done = new Completion(w.engine, 'inv_done');
      const offInv = w.engine.trace.on('notifier.invalidate_start', () => order.push('invalidate_start'));
      const offHmm = w.engine.trace.on('hmm.range_fault', (e) => order.push(`hmm_range_fault ${e.ret}`));
      const other = w.engine.spawn('other', async () => {
        while ((range.hmmPfns[0]! & HMM_PFN_VALID) === 0n) await w.engine.yield();
        await madvise(w.mm, A, P, MADV_DONTNEED);
        done.complete();
      });
      const ret = await attempt(w, range);
      expect(ret).toBe(0);
      await done.waitForCompletion();
      await w.update.lock();
      const retry = mmuIntervalReadRetry(w.sub, range.notifierSeq);
      // The entry for A names a page the CPU no longer maps.
      expect(hmmPfnToPfn(range.hmmPfns[0]!)).toBe(pfnA);
      expect(pte(w, A).bits).toBe(0);
      w.update.unlock();
      expect(retry).toBe(true);
      expect(range.hmmPfns[npages - 1]).toBe(entry(pte(w, B).pfn, HMM_PFN_VALID | HMM_PFN_WRITE));
      await other.join();
      offInv();
      offHmm();
    });
    expect(order).toEqual(['invalidate_start', 'hmm_range_fault 0']); // the invalidation raced the walk
  });

  const NP = 6;
  type Totals = { runs: number; busy: number; retries: number; commits: number; efault: number; eperm: number };
  /** A mirror driver running the documented loop against a task changing the same range. */
  const raceProgram = (totals: Totals, checkReadRetry: boolean) => (e: Engine): void => {
    const phys = new PhysMem(e, { frames: 256, maxDeviceFrames: 0 });
    const mm = createMm(e, phys, { name: 'mm' });
    const sub = new MmuIntervalNotifier('mirror');
    const update = new Mutex(e, 'update');
    // The device page table: page index -> committed entry. Only under `update`.
    const mirror = new Map<number, bigint>();
    const ops: MmuIntervalNotifierOps = {
      async invalidate(s, range, cur) {
        await update.lock();
        mmuIntervalSetSeq(s, cur);
        for (const i of [...mirror.keys()]) {
          const a = ADDR + i * P;
          if (a < range.end && a + P > range.start) mirror.delete(i);
        }
        update.unlock();
        return true;
      },
    };
    /** Under `update`: every mirror entry (or the ones just committed) matches the CPU page table now. */
    const checkCoherent = (entries: Iterable<[number, bigint]>, what: string): void => {
      for (const [i, x] of entries) {
        if ((x & HMM_PFN_VALID) === 0n) continue;
        const bits = mm.pgtable.bitsAt(ADDR / P + i);
        const pfn = mm.pgtable.pfnAt(ADDR / P + i);
        const ok = (bits & (PTE_PRESENT | PTE_PROTNONE)) === PTE_PRESENT && pfn === hmmPfnToPfn(x) && ((x & HMM_PFN_WRITE) === 0n || (bits & PTE_WRITE) !== 0);
        if (!ok) throw new Error(`${what}: page ${i} entry 0x${x.toString(16)} but the CPU maps pfn ${pfn} bits 0x${bits.toString(16)}`);
      }
    };
    e.spawn('main', async () => {
      await mmap(mm, ADDR, NP * P, RW, FIXED);
      expect(await mmuIntervalNotifierInsert(sub, mm, ADDR, NP * P, ops)).toBe(0);
      for (let i = 0; i < NP; i += 2) await cpuWrite64(mm, ADDR + i * P, BigInt(i + 1));
      const driver = e.spawn('driver', async () => {
        let commits = 0;
        for (let attempt = 0; attempt < 30 && commits < 3; attempt++) {
          const range = new HmmRange({ notifier: sub, start: ADDR, end: ADDR + NP * P, defaultFlags: attempt % 2 ? WRITE : READ });
          range.notifierSeq = await mmuIntervalReadBegin(sub);
          await mm.mmapLock.downRead();
          const ret = await hmmRangeFault(range);
          mm.mmapLock.upRead();
          if (ret === -EBUSY) {
            totals.busy++;
            continue;
          }
          if (ret === -EFAULT || ret === -EPERM) {
            if (ret === -EFAULT) totals.efault++;
            else totals.eperm++;
            continue;
          }
          expect(ret).toBe(0);
          await update.lock();
          if (checkReadRetry && mmuIntervalReadRetry(sub, range.notifierSeq)) {
            update.unlock();
            totals.retries++;
            continue;
          }
          const entries = [...range.hmmPfns].map((x, i) => [i, x] as [number, bigint]);
          checkCoherent(entries, 'commit');
          for (const [i, x] of entries) mirror.set(i, x);
          commits++;
          totals.commits++;
          update.unlock();
        }
      });
      const cpu = e.spawn('mutator', async () => {
        const check = async (what: string): Promise<void> => {
          await update.lock();
          checkCoherent(mirror.entries(), what);
          update.unlock();
        };
        await madvise(mm, ADDR, 2 * P, MADV_DONTNEED);
        await check('after madvise');
        await cpuWrite64(mm, ADDR + 3 * P, 9n);
        await mprotect(mm, ADDR, NP * P, PROT_READ);
        await check('after mprotect(READ)');
        await mprotect(mm, ADDR, NP * P, RW);
        await migratePages(mm, ADDR, ADDR + NP * P);
        await check('after migratePages');
        await munmap(mm, ADDR + 2 * P, 2 * P);
        await check('after munmap');
        await mmap(mm, ADDR + 2 * P, 2 * P, RW, FIXED);
        await cpuWrite64(mm, ADDR + 2 * P, 4n);
        await check('after mmap');
      });
      await driver.join();
      await cpu.join();
      await update.lock();
      checkCoherent(mirror.entries(), 'at the end');
      update.unlock();
      await mmuIntervalNotifierRemove(sub);
    });
  };

  it('the driver loop stays coherent against munmap/mprotect/madvise/migration, and -EBUSY and read_retry both happen (random and PCT)', async () => {
    const totals: Totals = { runs: 0, busy: 0, retries: 0, commits: 0, efault: 0, eperm: 0 };
    const program = raceProgram(totals, true);
    const onRun = (r: RunResult): void => {
      totals.runs++;
      if (!r.ok) throw r.failure;
    };
    const random = await explore(program, { runs: 150, strategy: 'random', seed: 1, onRun });
    expect(random.failures).toEqual([]);
    const pct = await explore(program, { runs: 100, strategy: 'pct:3', seed: 1000, onRun });
    expect(pct.failures).toEqual([]);
    expect(totals.runs).toBe(250);
    expect(totals.commits).toBeGreaterThan(0);
    expect(totals.busy).toBeGreaterThan(0);
    expect(totals.retries).toBeGreaterThan(0);
  }, 60_000);

  it('the same check catches a driver that commits without read_retry (bug class 1)', async () => {
    const totals: Totals = { runs: 0, busy: 0, retries: 0, commits: 0, efault: 0, eperm: 0 };
    const res = await explore(raceProgram(totals, false), { runs: 200, strategy: 'random', seed: 1 });
    expect(res.firstFailure?.failure?.message).toMatch(/(commit|after \w+).*: page \d+ entry 0x[0-9a-f]+ but the CPU maps/);
  }, 60_000);
});

describe('hmm_range_fault contract', () => {
  it('a call without the mmap lock is a kernel bug (mmap_assert_locked)', async () => {
    const r = await runWorld(async (w) => {
      await mmap(w.mm, ADDR, P, RW, FIXED);
      const range = makeRange(w, ADDR, 1);
      range.notifierSeq = await mmuIntervalReadBegin(w.sub);
      await hmmRangeFault(range);
    });
    expect(r.ok).toBe(false);
    expect(r.failure?.message).toMatch(/lockdep_assert_held: rwsem "mm.mmap_lock"/);
  });

  it('a migration entry whose page is not locked is a kernel bug', async () => {
    const r = await runWorld(async (w) => {
      await mmap(w.mm, ADDR, P, RW, FIXED);
      await cpuWrite64(w.mm, ADDR, 1n);
      const pfn = pte(w, ADDR).pfn;
      w.mm.ptl.lock();
      w.mm.pgtable.set(ADDR / P, pfn, PTE_SWP_MIGRATION);
      w.mm.ptl.unlock();
      await fault(w, ADDR, 1, { defaultFlags: READ });
    });
    expect(r.ok).toBe(false);
    expect(r.failure?.message).toMatch(/migration entry .* names unlocked pfn/);
  });

  it('rejects bad ranges with EINVAL and changes nothing', async () => {
    await inWorld(async (w) => {
      await mmap(w.mm, ADDR, 4 * P, RW, FIXED);
      const bad = (o: Partial<ConstructorParameters<typeof HmmRange>[0]>, re: RegExp): void => {
        let err: unknown;
        try {
          new HmmRange({ notifier: w.sub, start: ADDR, end: ADDR + P, ...o });
        } catch (e) {
          err = e;
        }
        expect(err).toBeInstanceOf(KernelError);
        expect((err as KernelError).errno).toBe(EINVAL);
        expect((err as Error).message).toMatch(re);
      };
      bad({ start: ADDR + 1 }, /start must be a page-aligned address: 0x1000000001/);
      bad({ end: ADDR + 100 }, /end must be a page-aligned address/);
      bad({ end: ADDR }, /need start < end/);
      bad({ start: ADDR + 2 * P }, /need start < end/);
      bad({ end: TASK_SIZE + P }, /need start < end <= TASK_SIZE/);
      bad({ end: ADDR + 4 * P, hmmPfns: new BigUint64Array(3) }, /hmmPfns has 3 entries for 4 pages/);
      bad({ defaultFlags: -1n }, /defaultFlags must be/);
      bad({ pfnFlagsMask: 1n << 64n }, /pfnFlagsMask must be/);
      bad({ notifier: new MmuIntervalNotifier('loose') }, /is not inserted in an mm/);

      // A range made valid, then broken before the call: the call throws and touches nothing.
      const range = makeRange(w, ADDR, 4, { defaultFlags: WRITE, inputs: [1n, 2n, 3n, 4n] });
      range.notifierSeq = await mmuIntervalReadBegin(w.sub);
      const before = JSON.stringify({ ptes: [0, 1, 2, 3].map((i) => pte(w, ADDR + i * P)), faults: w.mm.stats.faults });
      await w.mm.mmapLock.downRead();
      for (const mutate of [
        () => (range.end = ADDR + 5 * P),
        () => (range.start = ADDR + 7),
        () => (range.hmmPfns = new BigUint64Array(2)),
      ]) {
        const saved = { start: range.start, end: range.end, hmmPfns: range.hmmPfns };
        mutate();
        await expect(hmmRangeFault(range)).rejects.toMatchObject({ errno: EINVAL });
        Object.assign(range, saved);
      }
      w.mm.mmapLock.upRead();
      expect([...range.hmmPfns]).toEqual([1n, 2n, 3n, 4n]);
      expect(JSON.stringify({ ptes: [0, 1, 2, 3].map((i) => pte(w, ADDR + i * P)), faults: w.mm.stats.faults })).toBe(before);
      // A notifier removed after the range was built.
      await mmuIntervalNotifierRemove(w.sub);
      await w.mm.mmapLock.downRead();
      await expect(hmmRangeFault(range)).rejects.toThrow(/is not inserted in an mm/);
      w.mm.mmapLock.upRead();
    });
  });

  it('defaults: a zeroed hmmPfns of the right length, flags 0, owner null', async () => {
    await inWorld(async (w) => {
      const r = new HmmRange({ notifier: w.sub, start: ADDR, end: ADDR + 3 * P });
      expect(r.hmmPfns.length).toBe(3);
      expect(r.npages).toBe(3);
      expect([r.defaultFlags, r.pfnFlagsMask, r.devPrivateOwner, r.notifierSeq]).toEqual([0n, 0n, null, 0]);
      // Bounds are checked before the default array is sized; one too large to allocate is ENOMEM.
      expect(() => new HmmRange({ notifier: w.sub, start: 0, end: TASK_SIZE + P })).toThrow(/need start < end <= TASK_SIZE/);
      expect(() => new HmmRange({ notifier: w.sub, start: 0, end: TASK_SIZE })).toThrow(expect.objectContaining({ errno: ENOMEM }));
      expect(() => new HmmRange({ notifier: w.sub, start: ADDR, end: ADDR + P, hmmPfns: [0n] as unknown as BigUint64Array })).toThrow(/must be a BigUint64Array/);
    });
  });
});
