import { describe, expect, it } from 'vitest';
import { DevPagemap } from '../../src/hmm/devmem.js';
import { makeDeviceExclusive } from '../../src/hmm/exclusive.js';
import { EOPNOTSUPP } from '../../src/sim/index.js';
import {
  MIGRATE_PFN_MIGRATE,
  MIGRATE_PFN_VALID,
  MIGRATE_PFN_WRITE,
  MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
  MIGRATE_VMA_SELECT_SYSTEM,
  MigrateVma,
  migratePfn,
  migratePfnToPfn,
  migrateVmaFinalize,
  migrateVmaPages,
  migrateVmaSetup,
} from '../../src/hmm/migrate.js';
import {
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  MAP_SHARED,
  MMU_NOTIFY_EXCLUSIVE,
  MmuNotifier,
  PAGE_SIZE,
  PROT_READ,
  PROT_WRITE,
  PTE_KIND_MASK,
  PTE_PRESENT,
  PTE_SWP_DEVICE_EXCLUSIVE,
  PTE_SWP_DEVICE_PRIVATE,
  PTE_WRITE,
  PhysMem,
  cpuRead64,
  cpuWrite64,
  createMm,
  mmap,
  mmuNotifierRegister,
  mprotect,
  vpnOf,
  type MmStruct,
  type VmFault,
} from '../../src/index.js';
import { EACCES, EFAULT, EINVAL, Engine, KernelBug, KernelError, type RunResult } from '../../src/sim/index.js';

const P = PAGE_SIZE;
const RW = PROT_READ | PROT_WRITE;
const PRIV = MAP_PRIVATE | MAP_ANONYMOUS;

interface World {
  readonly engine: Engine;
  readonly phys: PhysMem;
  readonly mm: MmStruct;
}

async function inWorld(body: (w: World) => Promise<void>): Promise<RunResult> {
  const engine = new Engine({ strategy: 'fifo' });
  const phys = new PhysMem(engine, { frames: 1024, maxDeviceFrames: 64 });
  const mm = createMm(engine, phys, { name: 'mm' });
  engine.spawn('cpu0', () => body({ engine, phys, mm }));
  const r = await engine.run();
  if (!r.ok) throw r.failure;
  return r;
}

type Recorded = { event: number; start: number; end: number; owner: unknown };

async function recordInvalidations(mm: MmStruct): Promise<Recorded[]> {
  const events: Recorded[] = [];
  const sub = new MmuNotifier({
    invalidateRangeStart: (_s, r) => {
      events.push({ event: r.event, start: r.start, end: r.end, owner: r.owner });
      return 0;
    },
  });
  expect(await mmuNotifierRegister(sub, mm)).toBe(0);
  return events;
}

function pte(mm: MmStruct, addr: number): { bits: number; pfn: number; kind: number } {
  const vpn = vpnOf(addr);
  const bits = mm.pgtable.bitsAt(vpn);
  return { bits, pfn: mm.pgtable.pfnAt(vpn), kind: bits & PTE_KIND_MASK };
}

/** makeDeviceExclusive under mmap_lock (read), then the caller's unlock and put, as dmirror_exclusive. */
async function exclusive(mm: MmStruct, addr: number, owner: unknown): Promise<number> {
  await mm.mmapLock.downRead();
  try {
    const pfn = await makeDeviceExclusive(mm, addr, owner);
    if (pfn > 0) {
      expect(mm.phys.pageLocked(pfn)).toBe(true);
      mm.phys.unlockPage(pfn);
      mm.phys.putPage(pfn);
    }
    return pfn;
  } finally {
    mm.mmapLock.upRead();
  }
}

const dev0 = { name: 'dev0' };
const dev1 = { name: 'dev1' };

describe('make_device_exclusive', () => {
  it('replaces a written page by a writable device-exclusive entry, returning it locked and referenced', async () => {
    await inWorld(async ({ mm, phys }) => {
      const a = await mmap(mm, 0, 2 * P, RW, PRIV);
      await cpuWrite64(mm, a + P + 8, 0x1234n);
      const page = pte(mm, a + P).pfn;
      const events = await recordInvalidations(mm);
      await mm.mmapLock.downRead();
      const pfn = await makeDeviceExclusive(mm, a + P + 100, dev0); // any address in the page
      expect(pfn).toBe(page);
      expect([phys.refcount[pfn], phys.mapcount[pfn], phys.pageLocked(pfn)]).toEqual([2, 1, true]);
      expect(pte(mm, a + P)).toEqual({ bits: PTE_SWP_DEVICE_EXCLUSIVE | PTE_WRITE, pfn: page, kind: PTE_SWP_DEVICE_EXCLUSIVE });
      phys.unlockPage(pfn);
      phys.putPage(pfn);
      mm.mmapLock.upRead();
      expect([phys.refcount[pfn], phys.mapcount[pfn]]).toEqual([1, 1]);
      expect(events).toEqual([{ event: MMU_NOTIFY_EXCLUSIVE, start: a + P, end: a + 2 * P, owner: dev0 }]);
    });
  });

  it('is revoked by a CPU read with an invalidation owned by nobody; data and counts stay right', async () => {
    await inWorld(async ({ mm, phys }) => {
      const a = await mmap(mm, 0, P, RW, PRIV);
      await cpuWrite64(mm, a, 77n);
      const pfn = await exclusive(mm, a, dev0);
      const events = await recordInvalidations(mm);
      expect(await cpuRead64(mm, a)).toBe(77n);
      // src/mm/fault.ts restoreExclusive: MMU_NOTIFY_EXCLUSIVE with owner NULL (kernels up to
      // 6.14; mainline now sends MMU_NOTIFY_CLEAR here).
      expect(events).toEqual([{ event: MMU_NOTIFY_EXCLUSIVE, start: a, end: a + P, owner: null }]);
      const e = pte(mm, a);
      expect([e.pfn, e.bits & (PTE_PRESENT | PTE_WRITE)]).toEqual([pfn, PTE_PRESENT | PTE_WRITE]);
      expect([phys.refcount[pfn], phys.mapcount[pfn], phys.pageLocked(pfn)]).toEqual([1, 1, false]);
    });
  });

  it('after mprotect(PROT_READ) the restored PTE is read-only: a CPU write fails with EACCES (regression)', async () => {
    await inWorld(async ({ mm }) => {
      const a = await mmap(mm, 0, P, RW, PRIV);
      await cpuWrite64(mm, a, 5n);
      expect(await exclusive(mm, a, dev0)).toBeGreaterThan(0);
      await mprotect(mm, a, P, PROT_READ);
      expect(mm.pgtable.bitsAt(vpnOf(a)) & PTE_WRITE).toBe(0);
      expect(await cpuRead64(mm, a)).toBe(5n); // restores the PTE
      expect(mm.pgtable.bitsAt(vpnOf(a)) & PTE_WRITE).toBe(0);
      let errno = 0;
      try {
        await cpuWrite64(mm, a, 6n);
      } catch (e) {
        errno = (e as KernelError).errno;
      }
      expect(errno).toBe(EACCES);
      expect(await cpuRead64(mm, a)).toBe(5n);
    });
  });

  it('is revoked by a CPU write, which then lands in the same page', async () => {
    await inWorld(async ({ mm, phys }) => {
      const a = await mmap(mm, 0, P, RW, PRIV);
      await cpuWrite64(mm, a, 1n);
      const pfn = await exclusive(mm, a, dev0);
      for (let k = 0; k < 3; k++) await cpuWrite64(mm, a, (await cpuRead64(mm, a)) + 1n); // "CPU increments revoke"
      expect(await cpuRead64(mm, a)).toBe(4n);
      expect(pte(mm, a).pfn).toBe(pfn);
      expect([phys.refcount[pfn], phys.mapcount[pfn]]).toEqual([1, 1]);
    });
  });

  it('faults in an untouched or zero-page address writable first', async () => {
    await inWorld(async ({ mm, phys }) => {
      const a = await mmap(mm, 0, 2 * P, RW, PRIV);
      await cpuRead64(mm, a + P); // the zero page: GUP for write breaks COW
      const used = phys.usedSystemFrames();
      const p0 = await exclusive(mm, a, dev0);
      const p1 = await exclusive(mm, a + P, dev0);
      expect(phys.usedSystemFrames()).toBe(used + 2);
      expect([pte(mm, a).kind, pte(mm, a + P).kind]).toEqual([PTE_SWP_DEVICE_EXCLUSIVE, PTE_SWP_DEVICE_EXCLUSIVE]);
      expect(p0).not.toBe(p1);
      expect(await cpuRead64(mm, a + P)).toBe(0n);
    });
  });

  it('passes between two devices: the second one first revokes the first with an ownerless invalidation', async () => {
    await inWorld(async ({ mm }) => {
      const a = await mmap(mm, 0, P, RW, PRIV);
      await cpuWrite64(mm, a, 5n);
      const events = await recordInvalidations(mm);
      const p0 = await exclusive(mm, a, dev0);
      const p1 = await exclusive(mm, a, dev1);
      expect(p1).toBe(p0);
      expect(events.map((e) => e.owner)).toEqual([dev0, null, dev1]);
      expect(events.every((e) => e.event === MMU_NOTIFY_EXCLUSIVE)).toBe(true);
      expect(await cpuRead64(mm, a)).toBe(5n);
    });
  });

  it('fails with -EOPNOTSUPP on a MAP_SHARED mapping, leaving the PTE and counts as they were', async () => {
    await inWorld(async ({ mm, phys }) => {
      const a = await mmap(mm, 0, P, RW, MAP_SHARED | MAP_ANONYMOUS);
      await cpuWrite64(mm, a, 9n);
      const before = pte(mm, a);
      const events = await recordInvalidations(mm);
      expect(await exclusive(mm, a, dev0)).toBe(-EOPNOTSUPP);
      expect(pte(mm, a)).toEqual(before);
      expect([phys.refcount[before.pfn], phys.mapcount[before.pfn], phys.pageLocked(before.pfn)]).toEqual([2, 1, false]);
      expect(events).toEqual([]);
    });
  });

  it('fails with -EFAULT without a mapping or on a read-only mapping (GUP for write)', async () => {
    await inWorld(async ({ mm }) => {
      const ro = await mmap(mm, 0, P, PROT_READ, PRIV);
      await cpuRead64(mm, ro);
      const before = pte(mm, ro);
      expect(await exclusive(mm, ro, dev0)).toBe(-EFAULT);
      expect(pte(mm, ro)).toEqual(before);
      expect(await exclusive(mm, ro + 16 * P, dev0)).toBe(-EFAULT);
    });
  });

  it('migrates a device-private page back to RAM before making it exclusive', async () => {
    await inWorld(async ({ mm, phys }) => {
      let faults = 0;
      const pgmap = new DevPagemap(phys, {
        owner: dev0,
        nframes: 4,
        migrateToRam: async (vmf: VmFault) => {
          faults++;
          const args = new MigrateVma({ mm: vmf.mm, vma: vmf.vma, start: vmf.address, end: vmf.address + P, src: new BigUint64Array(1), dst: new BigUint64Array(1), pgmapOwner: dev0, flags: MIGRATE_VMA_SELECT_DEVICE_PRIVATE, faultPage: vmf.pfn });
          expect(await migrateVmaSetup(args)).toBe(0);
          const s = args.src![0]!;
          const d = phys.allocPage();
          phys.trylockPage(d);
          phys.copyPage(d, migratePfnToPfn(s));
          args.dst![0] = migratePfn(d) | (s & MIGRATE_PFN_WRITE);
          await migrateVmaPages(args);
          await migrateVmaFinalize(args);
          return 0;
        },
      });
      const a = await mmap(mm, 0, P, RW, PRIV);
      await cpuWrite64(mm, a, 31n);
      // Move the page to the device.
      await mm.mmapLock.downRead();
      const args = new MigrateVma({ mm, vma: mm.vmas.lookup(a), start: a, end: a + P, src: new BigUint64Array(1), dst: new BigUint64Array(1), pgmapOwner: dev0, flags: MIGRATE_VMA_SELECT_SYSTEM });
      expect(await migrateVmaSetup(args)).toBe(0);
      expect(args.src![0]! & (MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE)).toBe(MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE);
      const d = pgmap.allocPage();
      phys.trylockPage(d);
      phys.copyPage(d, migratePfnToPfn(args.src![0]!));
      args.dst![0] = migratePfn(d);
      await migrateVmaPages(args);
      await migrateVmaFinalize(args);
      mm.mmapLock.upRead();
      expect(pte(mm, a).kind).toBe(PTE_SWP_DEVICE_PRIVATE);
      const pfn = await exclusive(mm, a, dev0);
      expect(faults).toBe(1);
      expect(phys.isDevicePfn(pfn)).toBe(false);
      expect(pgmap.freeFrames).toBe(4);
      expect(await cpuRead64(mm, a)).toBe(31n);
    });
  });

  it('throws KernelError for an address outside user space, changing nothing', async () => {
    await inWorld(async ({ mm }) => {
      await mm.mmapLock.downRead();
      await expect(makeDeviceExclusive(mm, -4096, dev0)).rejects.toThrow(KernelError);
      await expect(makeDeviceExclusive(mm, 2 ** 47, dev0)).rejects.toThrow(/user address/);
      mm.mmapLock.upRead();
      expect(EINVAL).toBe(22);
    });
  });

  it('is a KernelBug to call it without mmap_lock', async () => {
    const engine = new Engine();
    const phys = new PhysMem(engine, { frames: 64, maxDeviceFrames: 0 });
    const mm = createMm(engine, phys);
    engine.spawn('cpu0', async () => {
      const a = await mmap(mm, 0, P, RW, PRIV);
      await makeDeviceExclusive(mm, a, dev0);
    });
    const r = await engine.run();
    expect(r.failure).toBeInstanceOf(KernelBug);
  });
});

describe('restore of a device-exclusive entry racing a zap', () => {
  it('holds a page reference across the restore, so a concurrent madvise(DONTNEED) never frees a locked page (regression)', async () => {
    const { explore: exploreRuns, madvise, MADV_DONTNEED } = await import('../../src/index.js');
    const result = await exploreRuns(
      (engine) => {
        const phys = new PhysMem(engine, { frames: 256, maxDeviceFrames: 0 });
        const mm = createMm(engine, phys, { name: 'mm' });
        engine.spawn('setup', async () => {
          // A classic notifier that sleeps in its callbacks widens every invalidation window.
          await mmuNotifierRegister(new MmuNotifier({ invalidateRangeStart: async () => (await engine.yield(), 0) }, 'slow'), mm);
          const a = await mmap(mm, 0x1000_0000, P, RW, PRIV | 0x10);
          await cpuWrite64(mm, a, 3n);
          expect(await exclusive(mm, a, dev0)).toBeGreaterThan(0);
          engine.spawn('reader', async () => {
            await cpuRead64(mm, a);
          });
          engine.spawn('zapper', async () => {
            await madvise(mm, a, P, MADV_DONTNEED);
          });
        });
      },
      { strategy: 'random', seed: 1, runs: 150 },
    );
    expect(result.firstFailure?.failure?.message ?? null).toBeNull();
  });
});
