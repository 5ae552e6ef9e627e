import { describe, expect, it } from 'vitest';
import { deviceRmapAdd, deviceRmapMappings } from '../../src/mm/index.js';
import { DevPagemap } from '../../src/hmm/devmem.js';
import {
  MIGRATE_PFN_COMPOUND,
  MIGRATE_PFN_MIGRATE,
  MIGRATE_PFN_SHIFT,
  MIGRATE_PFN_VALID,
  MIGRATE_PFN_WRITE,
  MIGRATE_VMA_SELECT_COMPOUND,
  MIGRATE_VMA_SELECT_DEVICE_COHERENT,
  MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
  MIGRATE_VMA_SELECT_SYSTEM,
  MigrateVma,
  migrateDeviceFinalize,
  migrateDevicePages,
  migrateDeviceRange,
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
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_MIGRATE,
  MmuNotifier,
  PAGE_SIZE,
  PG_PINNED,
  PROT_READ,
  PROT_WRITE,
  PTE_KIND_MASK,
  PTE_PRESENT,
  PTE_SWP_DEVICE_PRIVATE,
  PTE_SWP_MIGRATION,
  PTE_WRITE,
  PhysMem,
  VM_READ,
  VM_WRITE,
  ZERO_PFN,
  cpuRead,
  cpuRead64,
  cpuWrite,
  cpuWrite64,
  createMm,
  fork,
  mmap,
  mmuNotifierRegister,
  vpnOf,
  type MmStruct,
  type VmFault,
} from '../../src/index.js';
import { EINVAL, ENOMEM, Engine, KernelBug, KernelError, explore, type RunResult } from '../../src/sim/index.js';

const P = PAGE_SIZE;
const RW = PROT_READ | PROT_WRITE;
const PRIV = MAP_PRIVATE | MAP_ANONYMOUS;
const SHARED = MAP_SHARED | MAP_ANONYMOUS;

/**
 * A mini dmirror (lib/test_hmm.c): device-private memory whose contents live in the device
 * frames themselves, migrate to device / to system by virtual range, migrate_to_ram for CPU
 * faults, eviction by pfn.
 */
class TestDevice {
  readonly owner: { readonly name: string };
  readonly pgmap: DevPagemap;
  /** migrate_to_ram calls, and those that moved the page. */
  faultCalls = 0;
  faultMigrated = 0;
  /** Fail the next N device page allocations (HMM_DMIRROR_FLAG_FAIL_ALLOC). */
  failAlloc = 0;

  constructor(
    readonly phys: PhysMem,
    nframes: number,
    name = 'dev0',
  ) {
    this.owner = { name };
    this.pgmap = new DevPagemap(phys, { owner: this.owner, nframes, name, migrateToRam: (vmf) => this.devmemFault(vmf) });
  }

  /** dmirror_devmem_alloc_page: a device page, locked as zone_device_page_init leaves it. */
  allocDevicePage(): number {
    if (this.failAlloc > 0) {
      this.failAlloc--;
      return -ENOMEM;
    }
    const p = this.pgmap.allocPage();
    if (p > 0 && !this.phys.trylockPage(p)) throw new Error(`fresh device page ${p} is locked`);
    return p;
  }

  /** dmirror_migrate_alloc_and_copy. */
  allocAndCopy(args: MigrateVma): void {
    const src = args.src!;
    const dst = args.dst!;
    for (let i = 0; i < args.npages; i++) {
      const s = src[i]!;
      if (!(s & MIGRATE_PFN_MIGRATE)) continue;
      const spage = migratePfnToPfn(s);
      if (spage !== 0 && this.phys.isDevicePfn(spage)) continue;
      const dpage = this.allocDevicePage();
      if (dpage < 0) continue;
      if (spage !== 0) this.phys.copyPage(dpage, spage);
      else this.phys.clearPage(dpage);
      dst[i] = migratePfn(dpage) | (s & MIGRATE_PFN_WRITE || (spage === 0 && args.vma!.flags & VM_WRITE) ? MIGRATE_PFN_WRITE : 0n);
    }
  }

  /** dmirror_devmem_fault_alloc_and_copy: system pages for device sources. */
  faultAllocAndCopy(args: MigrateVma): number {
    const src = args.src!;
    const dst = args.dst!;
    for (let i = 0; i < args.npages; i++) {
      const s = src[i]!;
      const spage = migratePfnToPfn(s);
      if (spage === 0 || !(s & MIGRATE_PFN_MIGRATE)) continue;
      const dpage = this.phys.allocPage();
      if (dpage < 0) return -ENOMEM;
      this.phys.trylockPage(dpage);
      this.phys.copyPage(dpage, spage);
      dst[i] = migratePfn(dpage) | (s & MIGRATE_PFN_WRITE);
    }
    return 0;
  }

  /** dmirror_migrate_to_device. Returns -errno, or the sum of cpages after setup and the pages moved. */
  async migrateToDevice(mm: MmStruct, start: number, npages: number, chunk = 512): Promise<{ ret: number; cpages: number; moved: number }> {
    return this.migrateRange(mm, start, npages, chunk, MIGRATE_VMA_SELECT_SYSTEM, (a) => {
      this.allocAndCopy(a);
      return 0;
    });
  }

  /** dmirror_migrate_to_system. */
  async migrateToSystem(mm: MmStruct, start: number, npages: number, chunk = 512, owner: unknown = this.owner): Promise<{ ret: number; cpages: number; moved: number }> {
    return this.migrateRange(mm, start, npages, chunk, MIGRATE_VMA_SELECT_DEVICE_PRIVATE, (a) => this.faultAllocAndCopy(a), owner);
  }

  private async migrateRange(
    mm: MmStruct,
    start: number,
    npages: number,
    chunk: number,
    flags: number,
    copy: (a: MigrateVma) => number,
    owner: unknown = this.owner,
  ): Promise<{ ret: number; cpages: number; moved: number }> {
    const src = new BigUint64Array(chunk);
    const dst = new BigUint64Array(chunk);
    let cpages = 0;
    let moved = 0;
    const end = start + npages * P;
    await mm.mmapLock.downRead();
    try {
      for (let addr = start; addr < end; ) {
        const vma = mm.vmas.lookup(addr);
        if (vma === null || !(vma.flags & VM_READ)) return { ret: -EINVAL, cpages, moved };
        const next = Math.min(end, addr + chunk * P, vma.end);
        const args = new MigrateVma({ mm, vma, start: addr, end: next, src, dst, pgmapOwner: owner, flags });
        const ret = await migrateVmaSetup(args);
        if (ret !== 0) return { ret, cpages, moved };
        cpages += args.cpages;
        const r = copy(args);
        if (r !== 0) {
          await migrateVmaFinalize(args);
          return { ret: r, cpages, moved };
        }
        await migrateVmaPages(args);
        for (let i = 0; i < args.npages; i++) if (src[i]! & MIGRATE_PFN_MIGRATE && dst[i]! & MIGRATE_PFN_VALID) moved++;
        await migrateVmaFinalize(args);
        addr = next;
      }
    } finally {
      mm.mmapLock.upRead();
    }
    return { ret: 0, cpages, moved };
  }

  /** dmirror_devmem_fault (migrate_to_ram): one page, SELECT_DEVICE_PRIVATE, fault_page set. */
  async devmemFault(vmf: VmFault): Promise<number> {
    this.faultCalls++;
    const args = new MigrateVma({
      mm: vmf.mm,
      vma: vmf.vma,
      start: vmf.address,
      end: vmf.address + P,
      src: new BigUint64Array(1),
      dst: new BigUint64Array(1),
      pgmapOwner: this.owner,
      flags: MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
      faultPage: vmf.pfn,
    });
    if ((await migrateVmaSetup(args)) !== 0) return -EINVAL; // VM_FAULT_SIGBUS
    await this.phys.engine.yield(); // the copy takes time: other CPUs run meanwhile
    const r = this.faultAllocAndCopy(args);
    if (r !== 0) {
      await migrateVmaFinalize(args);
      return r;
    }
    await migrateVmaPages(args);
    if (args.src![0]! & MIGRATE_PFN_MIGRATE && args.dst![0]! & MIGRATE_PFN_VALID) this.faultMigrated++;
    await migrateVmaFinalize(args);
    return 0;
  }

  /** dmirror_device_evict_chunk: migrate_device_range over the whole pagemap. */
  async evictAll(): Promise<number> {
    const n = this.pgmap.nframes;
    const src = new BigUint64Array(n);
    const dst = new BigUint64Array(n);
    await migrateDeviceRange(this.phys, src, this.pgmap.firstPfn, n);
    let moved = 0;
    for (let i = 0; i < n; i++) {
      const s = src[i]!;
      const spage = migratePfnToPfn(s);
      if (spage === 0 || !(s & MIGRATE_PFN_MIGRATE)) continue;
      const d = this.phys.allocPage();
      if (d < 0) throw new Error('eviction needs system memory');
      this.phys.trylockPage(d);
      this.phys.copyPage(d, spage);
      dst[i] = migratePfn(d) | (s & MIGRATE_PFN_WRITE);
      moved++;
    }
    migrateDevicePages(this.phys, src, dst, n);
    await migrateDeviceFinalize(this.phys, src, dst, n);
    return moved;
  }
}

interface World {
  readonly engine: Engine;
  readonly phys: PhysMem;
  readonly mm: MmStruct;
  readonly dev: TestDevice;
}

function makeWorld(engine: Engine, opts: { frames?: number; devFrames?: number } = {}): World {
  const phys = new PhysMem(engine, { frames: opts.frames ?? 4096, maxDeviceFrames: 2 * (opts.devFrames ?? 1024) });
  const mm = createMm(engine, phys, { name: 'mm' });
  return { engine, phys, mm, dev: new TestDevice(phys, opts.devFrames ?? 1024) };
}

async function inWorld(body: (w: World) => Promise<void>, opts: { frames?: number; devFrames?: number } = {}): Promise<RunResult> {
  const engine = new Engine({ strategy: 'fifo' });
  const w = makeWorld(engine, opts);
  engine.spawn('cpu0', () => body(w));
  const r = await engine.run();
  if (!r.ok) throw r.failure;
  return r;
}

/** The PTE at addr: bits and pfn. */
function pte(mm: MmStruct, addr: number): { bits: number; pfn: number; kind: number } {
  const vpn = vpnOf(addr);
  const bits = mm.pgtable.bitsAt(vpn);
  return { bits, pfn: mm.pgtable.pfnAt(vpn), kind: bits & PTE_KIND_MASK };
}

/** A recognisable word for page i of round r. */
const word = (i: number, r = 0): bigint => 0x1000_0000_0000n + BigInt(i) * 0x1_0001n + BigInt(r) * 0x100_0000_0000n;

/** Records every invalidation start on mm (register before taking mmap_lock). */
async function recordInvalidations(mm: MmStruct): Promise<Array<{ event: number; start: number; end: number; owner: unknown }>> {
  const events: Array<{ event: number; start: number; end: number; owner: unknown }> = [];
  const sub = new MmuNotifier({
    invalidateRangeStart: (_s, range) => {
      events.push({ event: range.event, start: range.start, end: range.end, owner: range.owner });
      return 0;
    },
  });
  expect(await mmuNotifierRegister(sub, mm)).toBe(0);
  return events;
}

/** Every mapped page's refcount and mapcount are exactly one (single mapping, nobody else). */
function expectSoleMappings(w: World, start: number, npages: number): void {
  for (let i = 0; i < npages; i++) {
    const { bits, pfn } = pte(w.mm, start + i * P);
    if (bits === 0 || pfn === ZERO_PFN) continue;
    expect([w.phys.refcount[pfn], w.phys.mapcount[pfn], w.phys.pageLocked(pfn)], `page ${i} (pfn ${pfn})`).toEqual([1, 1, false]);
  }
}

describe('MIGRATE_PFN encoding', () => {
  it('has the kernel flag values and round-trips pfns', () => {
    expect([MIGRATE_PFN_VALID, MIGRATE_PFN_MIGRATE, MIGRATE_PFN_WRITE, MIGRATE_PFN_COMPOUND, MIGRATE_PFN_SHIFT]).toEqual([1n, 2n, 8n, 16n, 6n]);
    expect([MIGRATE_VMA_SELECT_SYSTEM, MIGRATE_VMA_SELECT_DEVICE_PRIVATE, MIGRATE_VMA_SELECT_DEVICE_COHERENT, MIGRATE_VMA_SELECT_COMPOUND]).toEqual([1, 2, 4, 8]);
    expect(migratePfn(5)).toBe((5n << 6n) | 1n);
    expect(migratePfnToPfn(migratePfn(0x7ff_ffff) | MIGRATE_PFN_MIGRATE)).toBe(0x7ff_ffff);
    expect(migratePfnToPfn(MIGRATE_PFN_MIGRATE)).toBe(0);
    expect(() => migratePfn(-1)).toThrow(KernelError);
  });
});

describe('migrate_vma: system memory to device memory', () => {
  it('moves n written pages: cpages == n, device-private entries, system pages freed, data intact', async () => {
    await inWorld(async ({ mm, phys, dev }) => {
      const n = 8;
      const a = await mmap(mm, 0, n * P, RW, PRIV);
      for (let i = 0; i < n; i++) await cpuWrite64(mm, a + i * P + 8, word(i));
      const used = phys.usedSystemFrames();
      const r = await dev.migrateToDevice(mm, a, n);
      expect(r).toEqual({ ret: 0, cpages: n, moved: n });
      expect(phys.usedSystemFrames()).toBe(used - n);
      expect(dev.pgmap.freeFrames).toBe(dev.pgmap.nframes - n);
      for (let i = 0; i < n; i++) {
        const e = pte(mm, a + i * P);
        expect(e.kind, `page ${i}`).toBe(PTE_SWP_DEVICE_PRIVATE);
        expect(e.bits & PTE_WRITE).toBe(PTE_WRITE);
        expect(phys.isDevicePfn(e.pfn)).toBe(true);
        expect(deviceRmapMappings(phys, e.pfn)).toEqual([{ mm, addr: a + i * P }]);
      }
      expectSoleMappings({ engine: mm.engine, phys, mm, dev }, a, n);
      // CPU reads fault each page back through migrate_to_ram.
      for (let i = 0; i < n; i++) expect(await cpuRead64(mm, a + i * P + 8)).toBe(word(i));
      expect([dev.faultCalls, dev.faultMigrated]).toEqual([n, n]);
      expect(dev.pgmap.freeFrames).toBe(dev.pgmap.nframes);
      expect(phys.usedSystemFrames()).toBe(used);
      for (let i = 0; i < n; i++) expect(pte(mm, a + i * P).bits & (PTE_PRESENT | PTE_WRITE)).toBe(PTE_PRESENT | PTE_WRITE);
      expectSoleMappings({ engine: mm.engine, phys, mm, dev }, a, n);
    });
  });

  it('selects empty and zero-page sources with SELECT_SYSTEM and inserts zeroed device pages', async () => {
    await inWorld(async ({ mm, phys, dev }) => {
      const a = await mmap(mm, 0, 4 * P, RW, PRIV);
      await cpuRead64(mm, a + 2 * P); // zero page
      await cpuRead64(mm, a + 3 * P); // zero page
      expect(pte(mm, a + 2 * P).pfn).toBe(ZERO_PFN);
      const used = phys.usedSystemFrames();
      const r = await dev.migrateToDevice(mm, a, 4);
      expect(r).toEqual({ ret: 0, cpages: 4, moved: 4 });
      for (let i = 0; i < 4; i++) expect(pte(mm, a + i * P).kind).toBe(PTE_SWP_DEVICE_PRIVATE);
      expect(phys.usedSystemFrames()).toBe(used);
      for (let i = 0; i < 4; i++) expect(await cpuRead64(mm, a + i * P + 16)).toBe(0n);
      expect(dev.pgmap.freeFrames).toBe(dev.pgmap.nframes);
    });
  });

  it('collects pte_none entries whatever the flags (the kernel checks SELECT_SYSTEM only for the zero page)', async () => {
    await inWorld(async ({ mm, dev }) => {
      const a = await mmap(mm, 0, 4 * P, RW, PRIV);
      await cpuRead64(mm, a); // zero page
      await cpuWrite64(mm, a + P, 1n); // system page
      const src = new BigUint64Array(4);
      const dst = new BigUint64Array(4);
      await mm.mmapLock.downRead();
      const args = new MigrateVma({ mm, vma: mm.vmas.lookup(a), start: a, end: a + 4 * P, src, dst, pgmapOwner: dev.owner, flags: MIGRATE_VMA_SELECT_DEVICE_PRIVATE });
      expect(await migrateVmaSetup(args)).toBe(0);
      expect([args.npages, args.cpages]).toEqual([4, 2]);
      expect([...src]).toEqual([0n, 0n, MIGRATE_PFN_MIGRATE, MIGRATE_PFN_MIGRATE]);
      await migrateVmaPages(args); // no dst: nothing moves
      await migrateVmaFinalize(args);
      mm.mmapLock.upRead();
      expect([...src]).toEqual([0n, 0n, 0n, 0n]);
      expect(pte(mm, a + 2 * P).bits).toBe(0);
    });
  });

  it('issues one MIGRATE invalidation owned by pgmap_owner for setup and one from the first hole for the inserts', async () => {
    await inWorld(async ({ mm, dev }) => {
      const a = await mmap(mm, 0, 4 * P, RW, PRIV);
      await cpuWrite64(mm, a, 1n);
      await cpuWrite64(mm, a + P, 2n);
      const events = await recordInvalidations(mm);
      await dev.migrateToDevice(mm, a, 4);
      expect(events).toEqual([
        { event: MMU_NOTIFY_MIGRATE, start: a, end: a + 4 * P, owner: dev.owner },
        { event: MMU_NOTIFY_MIGRATE, start: a + 2 * P, end: a + 4 * P, owner: dev.owner },
      ]);
    });
  });

  it('round-trips 10 times with CPU reads and writes faulting half the pages back in between (migrate_multiple)', async () => {
    const n = 64;
    await inWorld(async (w) => {
      const { mm, phys, dev } = w;
      const a = await mmap(mm, 0, n * P, RW, PRIV);
      const expected: bigint[][] = [];
      for (let i = 0; i < n; i++) {
        expected.push([word(i), 0n, word(i, 7)]);
        await cpuWrite64(mm, a + i * P, word(i));
        await cpuWrite64(mm, a + i * P + P - 8, word(i, 7));
      }
      // One page with a full 4 KiB pattern.
      const full = Uint8Array.from({ length: P }, (_, k) => (k * 7 + 3) & 0xff);
      await cpuWrite(mm, a + 5 * P, full);
      const used = phys.usedSystemFrames();
      const check = async (i: number): Promise<void> => {
        if (i === 5) {
          expect([...(await cpuRead(mm, a + 5 * P, P))]).toEqual([...full]);
          return;
        }
        expect([await cpuRead64(mm, a + i * P), await cpuRead64(mm, a + i * P + 8), await cpuRead64(mm, a + i * P + P - 8)], `page ${i}`).toEqual(expected[i]);
      };
      for (let round = 0; round < 10; round++) {
        const r = await dev.migrateToDevice(mm, a, n, 16);
        // Pages still on the device are not selected by SELECT_SYSTEM.
        expect(r).toEqual({ ret: 0, cpages: round === 0 ? n : n / 2, moved: round === 0 ? n : n / 2 });
        for (let i = 0; i < n; i++) expect(pte(mm, a + i * P).kind, `round ${round} page ${i}`).toBe(PTE_SWP_DEVICE_PRIVATE);
        // Fault the even pages back: reads, and a write to one word of every fourth page.
        for (let i = 0; i < n; i += 2) {
          if (i % 4 === 0 && i !== 4) {
            expected[i]![1] = word(i, round + 1);
            await cpuWrite64(mm, a + i * P + 8, word(i, round + 1));
          }
          await check(i);
        }
        expect(dev.pgmap.freeFrames).toBe(dev.pgmap.nframes - n / 2);
      }
      expect([dev.faultCalls, dev.faultMigrated]).toEqual([10 * (n / 2), 10 * (n / 2)]);
      const back = await dev.migrateToSystem(mm, a, n, 16);
      expect(back).toEqual({ ret: 0, cpages: n / 2, moved: n / 2 });
      for (let i = 0; i < n; i++) expect(pte(mm, a + i * P).bits & PTE_PRESENT).toBe(PTE_PRESENT);
      for (let i = 0; i < n; i++) await check(i);
      expect(dev.pgmap.freeFrames).toBe(dev.pgmap.nframes);
      expect(dev.faultCalls).toBe(10 * (n / 2)); // the checks above found every page in RAM
      expect(phys.usedSystemFrames()).toBe(used);
      expectSoleMappings(w, a, n);
    });
  });

  it('leaves a page that someone else holds locked in place (best effort)', async () => {
    await inWorld(async (w) => {
      const { mm, phys, dev } = w;
      const a = await mmap(mm, 0, 3 * P, RW, PRIV);
      for (let i = 0; i < 3; i++) await cpuWrite64(mm, a + i * P, word(i));
      const locked = pte(mm, a + P).pfn;
      expect(phys.trylockPage(locked)).toBe(true);
      const r = await dev.migrateToDevice(mm, a, 3);
      expect(r).toEqual({ ret: 0, cpages: 2, moved: 2 });
      expect(pte(mm, a + P)).toEqual({ bits: pte(mm, a + P).bits, pfn: locked, kind: 0 });
      expect(pte(mm, a + P).bits & PTE_PRESENT).toBe(PTE_PRESENT);
      phys.unlockPage(locked);
      for (let i = 0; i < 3; i++) expect(await cpuRead64(mm, a + i * P)).toBe(word(i));
      expectSoleMappings(w, a, 3);
    });
  });

  it('puts back a page with an extra reference (migrate_vma_check_page) and one marked pinned', async () => {
    await inWorld(async (w) => {
      const { mm, phys, dev } = w;
      const a = await mmap(mm, 0, 3 * P, RW, PRIV);
      for (let i = 0; i < 3; i++) await cpuWrite64(mm, a + i * P, word(i));
      const held = pte(mm, a).pfn;
      const pinned = pte(mm, a + 2 * P).pfn;
      phys.getPage(held);
      phys.flags[pinned]! |= PG_PINNED;
      const before = [pte(mm, a), pte(mm, a + 2 * P)];
      const r = await dev.migrateToDevice(mm, a, 3);
      expect(r).toEqual({ ret: 0, cpages: 1, moved: 1 });
      expect([pte(mm, a), pte(mm, a + 2 * P)]).toEqual(before);
      expect([phys.refcount[held], phys.mapcount[held], phys.pageLocked(held)]).toEqual([2, 1, false]);
      expect([phys.refcount[pinned], phys.mapcount[pinned], phys.pageLocked(pinned)]).toEqual([1, 1, false]);
      expect(pte(mm, a + P).kind).toBe(PTE_SWP_DEVICE_PRIVATE);
      phys.putPage(held);
      phys.flags[pinned]! &= ~PG_PINNED;
      for (let i = 0; i < 3; i++) expect(await cpuRead64(mm, a + i * P)).toBe(word(i));
      expectSoleMappings(w, a, 3);
    });
  });

  it('does not migrate a MAP_SHARED mapping: empty entries are not collected, resident pages are put back', async () => {
    await inWorld(async (w) => {
      const { mm, phys, dev } = w;
      const a = await mmap(mm, 0, 4 * P, RW, SHARED);
      // Untouched: nothing collected (dmirror then reports -ENOENT: no device entry).
      expect(await dev.migrateToDevice(mm, a, 4)).toEqual({ ret: 0, cpages: 0, moved: 0 });
      for (let i = 0; i < 4; i++) await cpuWrite64(mm, a + i * P, word(i));
      const before = [0, 1, 2, 3].map((i) => pte(mm, a + i * P));
      // Resident shmem pages pass setup (the page cache reference is expected) but
      // migrate_vma_pages refuses non-anonymous pages.
      expect(await dev.migrateToDevice(mm, a, 4)).toEqual({ ret: 0, cpages: 4, moved: 0 });
      expect([0, 1, 2, 3].map((i) => pte(mm, a + i * P))).toEqual(before);
      expect(dev.pgmap.freeFrames).toBe(dev.pgmap.nframes);
      for (let i = 0; i < 4; i++) {
        const pfn = before[i]!.pfn;
        expect([phys.refcount[pfn], phys.mapcount[pfn], phys.pageLocked(pfn)]).toEqual([2, 1, false]); // page cache + mapping
        expect(await cpuRead64(mm, a + i * P)).toBe(word(i));
      }
    });
  });

  it('restores the source when the driver could not allocate its dst page', async () => {
    await inWorld(async (w) => {
      const { mm, dev } = w;
      const a = await mmap(mm, 0, 3 * P, RW, PRIV);
      for (let i = 0; i < 3; i++) await cpuWrite64(mm, a + i * P, word(i));
      const first = pte(mm, a);
      dev.failAlloc = 1;
      expect(await dev.migrateToDevice(mm, a, 3)).toEqual({ ret: 0, cpages: 3, moved: 2 });
      expect(pte(mm, a)).toEqual(first);
      expect([pte(mm, a + P).kind, pte(mm, a + 2 * P).kind]).toEqual([PTE_SWP_DEVICE_PRIVATE, PTE_SWP_DEVICE_PRIVATE]);
      for (let i = 0; i < 3; i++) expect(await cpuRead64(mm, a + i * P)).toBe(word(i));
      expectSoleMappings(w, a, 3);
    });
  });

  it('loses an insert to a CPU fault that filled the empty PTE after setup (MIGRATE cleared, dst freed)', async () => {
    await inWorld(async (w) => {
      const { mm, phys, dev } = w;
      const a = await mmap(mm, 0, P, RW, PRIV);
      const src = new BigUint64Array(1);
      const dst = new BigUint64Array(1);
      await mm.mmapLock.downRead();
      const args = new MigrateVma({ mm, vma: mm.vmas.lookup(a), start: a, end: a + P, src, dst, pgmapOwner: dev.owner, flags: MIGRATE_VMA_SELECT_SYSTEM });
      expect(await migrateVmaSetup(args)).toBe(0);
      expect(args.cpages).toBe(1);
      await cpuWrite64(mm, a, 42n); // the CPU fills the PTE (mmap_lock is shared)
      dev.allocAndCopy(args);
      const dpage = migratePfnToPfn(dst[0]!);
      await migrateVmaPages(args);
      expect(src[0]! & MIGRATE_PFN_MIGRATE).toBe(0n);
      await migrateVmaFinalize(args);
      mm.mmapLock.upRead();
      expect(phys.refcount[dpage]).toBe(0);
      expect(dev.pgmap.freeFrames).toBe(dev.pgmap.nframes);
      expect(await cpuRead64(mm, a)).toBe(42n);
      expectSoleMappings(w, a, 1);
    });
  });

  it('selects only device pages whose pagemap owner matches (another owner: nothing collected)', async () => {
    await inWorld(async (w) => {
      const { mm, phys, dev } = w;
      const a = await mmap(mm, 0, 4 * P, RW, PRIV);
      for (let i = 0; i < 4; i++) await cpuWrite64(mm, a + i * P, word(i));
      await dev.migrateToDevice(mm, a, 4);
      const before = [0, 1, 2, 3].map((i) => pte(mm, a + i * P));
      const other = new TestDevice(phys, 16, 'dev1');
      expect(await dev.migrateToSystem(mm, a, 4, 512, other.owner)).toEqual({ ret: 0, cpages: 0, moved: 0 });
      expect([0, 1, 2, 3].map((i) => pte(mm, a + i * P))).toEqual(before);
      expect(await dev.migrateToSystem(mm, a, 4)).toEqual({ ret: 0, cpages: 4, moved: 4 });
      for (let i = 0; i < 4; i++) expect(await cpuRead64(mm, a + i * P)).toBe(word(i));
      expect(dev.faultCalls).toBe(0);
      expectSoleMappings(w, a, 4);
    });
  });
});

describe('migrate_vma_setup: bad input', () => {
  /** Runs setup with the mmap read lock on a fresh 4-page mapping. */
  async function setupWith(w: World, make: (a: number) => Partial<ConstructorParameters<typeof MigrateVma>[0]>): Promise<{ ret: number; args: MigrateVma; a: number }> {
    const { mm } = w;
    const a = await mmap(mm, 0, 4 * P, RW, PRIV);
    for (let i = 0; i < 4; i++) await cpuWrite64(mm, a + i * P, word(i));
    const base = { mm, vma: mm.vmas.lookup(a), start: a, end: a + 4 * P, src: new BigUint64Array(4), dst: new BigUint64Array(4), flags: MIGRATE_VMA_SELECT_SYSTEM };
    await mm.mmapLock.downRead();
    try {
      const args = new MigrateVma({ ...base, ...make(a) });
      return { ret: await migrateVmaSetup(args), args, a };
    } finally {
      mm.mmapLock.upRead();
    }
  }

  const cases: Array<[string, (a: number, w: World) => Partial<ConstructorParameters<typeof MigrateVma>[0]>]> = [
    ['no vma', () => ({ vma: null })],
    ['end below start', (a) => ({ start: a + 2 * P, end: a + P })],
    ['less than a page once start is rounded (nr_pages 0)', (a) => ({ start: a + 0x800, end: a + P })],
    ['a range that runs past the VMA into a hole', (a) => ({ end: a + 6 * P, src: new BigUint64Array(6), dst: new BigUint64Array(6) })],
    ['a start below the VMA', (a) => ({ start: a - P })],
    ['a src array shorter than the range', () => ({ src: new BigUint64Array(3) })],
    ['a null dst', () => ({ dst: null })],
    ['unknown flag bits', () => ({ flags: 0x10 })],
    ['a fault page that is a system page', (a, w) => ({ faultPage: pte(w.mm, a).pfn })],
  ];
  for (const [what, make] of cases) {
    it(`returns -EINVAL for ${what}, changing nothing`, async () => {
      await inWorld(async (w) => {
        const snap = (): string => JSON.stringify([0, 1, 2, 3].map((i) => pte(w.mm, (w.mm.vmas.all[0]?.start ?? 0) + i * P)));
        let before = '';
        const { ret, args } = await setupWith(w, (a) => {
          before = snap();
          return make(a, w);
        });
        expect(ret).toBe(-EINVAL);
        expect([args.cpages, args.npages]).toEqual([0, 0]);
        expect(snap()).toBe(before);
      });
    });
  }

  it('returns -EINVAL for a device fault page that is not locked', async () => {
    await inWorld(async (w) => {
      const p = w.dev.pgmap.allocPage();
      const { ret } = await setupWith(w, () => ({ faultPage: p, flags: MIGRATE_VMA_SELECT_DEVICE_PRIVATE }));
      expect(ret).toBe(-EINVAL);
      w.phys.putPage(p);
    });
  });

  it('rounds an unaligned start and end down to pages as the kernel does', async () => {
    await inWorld(async (w) => {
      const { ret, args, a } = await setupWith(w, (x) => ({ start: x + 0x800, end: x + 2 * P + 0x800 }));
      expect(ret).toBe(0);
      expect([args.start, args.end, args.npages, args.cpages]).toEqual([a, a + 2 * P, 2, 2]);
      await w.mm.mmapLock.downRead();
      await migrateVmaFinalize(args); // no dst: put everything back
      w.mm.mmapLock.upRead();
      expectSoleMappings(w, a, 4);
    });
  });

  it('throws KernelError for arrays that are not BigUint64Array, before anything changes', async () => {
    await inWorld(async ({ mm }) => {
      const a = await mmap(mm, 0, P, RW, PRIV);
      expect(() => new MigrateVma({ mm, vma: mm.vmas.lookup(a), start: a, end: a + P, src: [0n] as unknown as BigUint64Array, dst: new BigUint64Array(1) })).toThrow(KernelError);
      expect(() => new MigrateVma({ mm, vma: mm.vmas.lookup(a), start: -1, end: a + P, src: null, dst: null })).toThrow(/start/);
    });
  });

  it('is a KernelBug to call setup without mmap_lock', async () => {
    const engine = new Engine();
    const w = makeWorld(engine);
    engine.spawn('cpu0', async () => {
      const a = await mmap(w.mm, 0, P, RW, PRIV);
      await migrateVmaSetup(new MigrateVma({ mm: w.mm, vma: w.mm.vmas.lookup(a), start: a, end: a + P, src: new BigUint64Array(1), dst: new BigUint64Array(1) }));
    });
    const r = await engine.run();
    expect(r.failure).toBeInstanceOf(KernelBug);
    expect(r.failure?.message).toMatch(/mmap_lock|not held/);
  });

  it('is a KernelBug to pass an unlocked dst page to migrate_vma_pages', async () => {
    const engine = new Engine();
    const w = makeWorld(engine);
    engine.spawn('cpu0', async () => {
      const { mm, dev } = w;
      const a = await mmap(mm, 0, P, RW, PRIV);
      await cpuWrite64(mm, a, 1n);
      await mm.mmapLock.downRead();
      const args = new MigrateVma({ mm, vma: mm.vmas.lookup(a), start: a, end: a + P, src: new BigUint64Array(1), dst: new BigUint64Array(1), flags: MIGRATE_VMA_SELECT_SYSTEM });
      await migrateVmaSetup(args);
      args.dst![0] = migratePfn(dev.pgmap.allocPage()); // not locked
      await migrateVmaPages(args);
    });
    const r = await engine.run();
    expect(r.failure).toBeInstanceOf(KernelBug);
    expect(r.failure?.message).toMatch(/not locked/);
  });
});

describe('migrate_to_ram under concurrency', () => {
  /** Tasks that slept on the page lock, over all runs: proves the schedules contend. */
  let pageLockWaits = 0;

  /** 8 CPU tasks fault one device page: 4 read, 4 write their own word. */
  function program(engine: Engine): void {
    const w = makeWorld(engine, { devFrames: 8 });
    const { mm, dev } = w;
    engine.trace.on('wait.block', (e) => {
      if (e.on.includes('page_lock')) pageLockWaits++;
    });
    engine.spawn('setup', async () => {
      await recordInvalidations(mm); // a subscriber: scheduling points around its callbacks
      const a = await mmap(mm, 0, P, RW, PRIV);
      await cpuWrite64(mm, a, 0xfeedn);
      const r = await dev.migrateToDevice(mm, a, 1);
      if (r.moved !== 1) throw new Error(`setup: ${JSON.stringify(r)}`);
      const tasks = [];
      for (let k = 0; k < 8; k++) {
        tasks.push(
          engine.spawn(`cpu${k}`, async () => {
            if (k % 2 === 0) {
              const v = await cpuRead64(mm, a);
              if (v !== 0xfeedn) throw new Error(`cpu${k} read ${v}`);
            } else {
              await cpuWrite64(mm, a + 8 * (k + 1), BigInt(k));
            }
          }),
        );
      }
      for (const t of tasks) await t.join();
      if (dev.faultMigrated !== 1 || dev.faultCalls !== 1) throw new Error(`migrate_to_ram: ${dev.faultCalls} calls, ${dev.faultMigrated} migrations`);
      if ((await cpuRead64(mm, a)) !== 0xfeedn) throw new Error('word 0 lost');
      for (let k = 1; k < 8; k += 2) if ((await cpuRead64(mm, a + 8 * (k + 1))) !== BigInt(k)) throw new Error(`word of cpu${k} lost`);
      const { pfn } = pte(mm, a);
      if (w.phys.refcount[pfn] !== 1 || w.phys.mapcount[pfn] !== 1 || dev.pgmap.freeFrames !== 8) throw new Error('page counts wrong');
    });
  }

  it('migrates exactly once with no livelock over 150 random schedules', async () => {
    pageLockWaits = 0;
    const r = await explore(program, { runs: 150, strategy: 'random', seed: 1 });
    expect(r.firstFailure?.failure ?? null).toBeNull();
    expect(r.runs).toBe(150);
    expect(pageLockWaits).toBeGreaterThan(50);
  });

  it('migrates exactly once with no livelock over 150 PCT schedules', async () => {
    pageLockWaits = 0;
    const r = await explore(program, { runs: 150, strategy: 'pct:3', seed: 1000 });
    expect(r.firstFailure?.failure ?? null).toBeNull();
    expect(r.runs).toBe(150);
    expect(pageLockWaits).toBeGreaterThan(50);
  });
});

describe('device pages shared after fork', () => {
  it('migrate back together once the child mapping is in the device reverse map (what fork must record)', async () => {
    await inWorld(async (w) => {
      const { mm, phys, dev } = w;
      const a = await mmap(mm, 0, P, RW, PRIV);
      await cpuWrite64(mm, a, 0xabcn);
      await dev.migrateToDevice(mm, a, 1);
      const d = pte(mm, a).pfn;
      const child = await fork(mm, { name: 'child' });
      expect([pte(child, a).kind, pte(child, a).pfn, phys.refcount[d], phys.mapcount[d]]).toEqual([PTE_SWP_DEVICE_PRIVATE, d, 2, 2]);
      // src/mm/fork.ts does not record the child's mapping yet: the call it needs.
      deviceRmapAdd(phys, d, child, a);
      const events = await recordInvalidations(child);
      expect(await cpuRead64(mm, a)).toBe(0xabcn); // the parent faults: both mappings move
      expect([dev.faultCalls, dev.faultMigrated]).toEqual([1, 1]);
      expect(events).toEqual([{ event: MMU_NOTIFY_CLEAR, start: a, end: a + P, owner: null }]); // try_to_migrate_one on the child
      const s = pte(mm, a).pfn;
      expect(pte(child, a).pfn).toBe(s);
      for (const m of [mm, child]) expect(pte(m, a).bits & (PTE_PRESENT | PTE_WRITE)).toBe(PTE_PRESENT); // still COW-shared
      expect([phys.refcount[s], phys.mapcount[s], phys.refcount[d]]).toEqual([2, 2, 0]);
      expect(dev.pgmap.freeFrames).toBe(dev.pgmap.nframes);
      await cpuWrite64(child, a, 1n); // COW break in the child
      expect([await cpuRead64(mm, a), await cpuRead64(child, a)]).toEqual([0xabcn, 1n]);
    });
  });
});

describe('migrate_device_range (eviction by pfn)', () => {
  it('evicts every device page of a pagemap back to system memory with data and counts intact', async () => {
    await inWorld(
      async (w) => {
        const { mm, phys, dev } = w;
        const n = 24;
        const a = await mmap(mm, 0, n * P, RW, PRIV);
        for (let i = 0; i < n; i++) await cpuWrite64(mm, a + i * P + 24, word(i));
        expect((await dev.migrateToDevice(mm, a, n)).moved).toBe(n);
        // Make one entry read-only: it must come back read-only.
        await w.mm.mmapLock.downRead();
        const ro = vpnOf(a + 3 * P);
        mm.ptl.lock();
        mm.pgtable.set(ro, mm.pgtable.pfnAt(ro), PTE_SWP_DEVICE_PRIVATE);
        mm.ptl.unlock();
        w.mm.mmapLock.upRead();
        const events = await recordInvalidations(mm);
        const used = phys.usedSystemFrames();
        expect(await dev.evictAll()).toBe(n);
        expect(dev.pgmap.freeFrames).toBe(dev.pgmap.nframes);
        expect(phys.usedSystemFrames()).toBe(used + n);
        // try_to_migrate_one: one CLEAR invalidation per mapping, no owner.
        expect(events.length).toBe(n);
        expect(events.every((e) => e.event === MMU_NOTIFY_CLEAR && e.owner === null && e.end - e.start === P)).toBe(true);
        for (let i = 0; i < n; i++) {
          const e = pte(mm, a + i * P);
          expect(e.bits & (PTE_PRESENT | PTE_WRITE), `page ${i}`).toBe(i === 3 ? PTE_PRESENT : PTE_PRESENT | PTE_WRITE);
          expect(phys.isDevicePfn(e.pfn)).toBe(false);
        }
        expect(dev.faultCalls).toBe(0);
        for (let i = 0; i < n; i++) expect(await cpuRead64(mm, a + i * P + 24)).toBe(word(i));
        expectSoleMappings(w, a, n);
      },
      { devFrames: 32 },
    );
  });

  it('skips free and locked device pages and restores pages it cannot evict', async () => {
    await inWorld(
      async (w) => {
        const { mm, phys, dev } = w;
        const a = await mmap(mm, 0, 2 * P, RW, PRIV);
        for (let i = 0; i < 2; i++) await cpuWrite64(mm, a + i * P, word(i));
        await dev.migrateToDevice(mm, a, 2);
        const d0 = pte(mm, a).pfn;
        const d1 = pte(mm, a + P).pfn;
        phys.trylockPage(d0); // someone holds it: not collected
        phys.getPage(d1); // an unexpected reference: put back after unmap
        phys.getPage(d1); // (ZONE_DEVICE pages are allowed one extra)
        const src = new BigUint64Array(4);
        await migrateDeviceRange(phys, src, dev.pgmap.firstPfn, 4);
        expect([...src]).toEqual([0n, 0n, 0n, 0n]);
        expect([pte(mm, a), pte(mm, a + P)].map((e) => [e.kind, e.pfn])).toEqual([
          [PTE_SWP_DEVICE_PRIVATE, d0],
          [PTE_SWP_DEVICE_PRIVATE, d1],
        ]);
        expect([phys.refcount[d1], phys.mapcount[d1], phys.pageLocked(d1)]).toEqual([3, 1, false]);
        phys.unlockPage(d0);
        phys.putPage(d1);
        phys.putPage(d1);
        expect(await dev.evictAll()).toBe(2);
        for (let i = 0; i < 2; i++) expect(await cpuRead64(mm, a + i * P)).toBe(word(i));
      },
      { devFrames: 4 },
    );
  });

  it('throws KernelError for pfns outside the device frames', async () => {
    await inWorld(async ({ phys }) => {
      await expect(migrateDeviceRange(phys, new BigUint64Array(2), 1, 2)).rejects.toThrow(KernelError);
    });
  });
});

describe('migration entries', () => {
  it('are what a CPU fault sees between setup and finalize, and it waits for the page unlock', async () => {
    const engine = new Engine({ strategy: 'fifo' });
    const w = makeWorld(engine);
    const { mm, phys, dev } = w;
    const seen: string[] = [];
    engine.spawn('migrator', async () => {
      const a = await mmap(mm, 0, P, RW, PRIV);
      await cpuWrite64(mm, a, 7n);
      await mm.mmapLock.downRead();
      const args = new MigrateVma({ mm, vma: mm.vmas.lookup(a), start: a, end: a + P, src: new BigUint64Array(1), dst: new BigUint64Array(1), pgmapOwner: dev.owner, flags: MIGRATE_VMA_SELECT_SYSTEM });
      await migrateVmaSetup(args);
      expect(pte(mm, a).kind).toBe(PTE_SWP_MIGRATION);
      expect(phys.pageLocked(migratePfnToPfn(args.src![0]!))).toBe(true);
      engine.spawn('reader', async () => {
        seen.push(`read ${await cpuRead64(mm, a)}`);
      });
      await engine.sleep(1000); // the reader faults and sleeps on the page lock
      seen.push('finalize');
      dev.allocAndCopy(args);
      await migrateVmaPages(args);
      await migrateVmaFinalize(args);
      mm.mmapLock.upRead();
    });
    const r = await engine.run();
    expect(r.failure).toBeNull();
    expect(seen).toEqual(['finalize', 'read 7']);
    expect(dev.faultCalls).toBe(1);
  });
});
