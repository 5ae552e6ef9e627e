import { describe, expect, it } from 'vitest';
import {
  Completion,
  DeadlockError,
  EACCES,
  EAGAIN,
  EEXIST,
  EFAULT,
  EINVAL,
  EIO,
  ENODEV,
  Engine,
  KernelBug,
  KernelError,
  Mutex,
  type Program,
  type RunResult,
  explore,
  replay,
} from '../../src/sim/index.js';
import {
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_EXCLUSIVE,
  MMU_NOTIFY_MIGRATE,
  MMU_NOTIFY_RELEASE,
  MMU_NOTIFY_SOFT_DIRTY,
  MMU_NOTIFY_UNMAP,
  MmuNotifier,
  mmuNotifierRangeIsValid,
  mmuNotifierRangeWaitValid,
  mmuNotifierRegister,
} from '../../src/notifier/index.js';
import {
  MADV_DONTNEED,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  type MmStruct,
  PAGE_SIZE,
  PG_DIRTY,
  PMD_SIZE,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
  PTE_PRESENT,
  PTE_PROTNONE,
  PTE_WRITE,
  PhysMem,
  TASK_SIZE,
  ZERO_PFN,
  cpuRead64,
  cpuWrite64,
  createMm,
  exitMm,
  fork,
  madvise,
  migratePages,
  mmap,
  mprotect,
  munmap,
  oomReapTaskMm,
  withInvalidation,
  zapRange,
} from '../../src/mm/index.js';
import {
  HMM_DEVICE_RFAULT,
  HMM_DEVICE_WFAULT,
  HMM_FORK,
  HMM_MIGRATE,
  HMM_MUNMAP,
  HMM_NONE,
  HMM_PTE_ALL,
  HMM_PTE_VALID,
  HMM_PTE_WRITE,
  HMM_WRITE_PROTECT,
  HmmEvent,
  hmmEtypeFromMmu,
  hmmEtypeName,
} from '../../src/hmm/hmm2015-event.js';
import {
  Hmm,
  HmmDevice,
  type HmmDeviceOps,
  HmmMirror,
  hmmDeviceFaultEnd,
  hmmDeviceFaultStart,
  hmmFromMm,
  hmmMirrorFault,
  hmmMirrorRegister,
  hmmMirrorUnregister,
  hmmWaitDeviceFault,
} from '../../src/hmm/hmm2015.js';

const P = PAGE_SIZE;
const RW = PROT_READ | PROT_WRITE;
const PRIV = MAP_PRIVATE | MAP_ANONYMOUS;

interface World {
  readonly e: Engine;
  readonly phys: PhysMem;
  readonly mm: MmStruct;
}

function world(e: Engine, frames = 1024): World {
  const phys = new PhysMem(e, { frames, maxDeviceFrames: 0 });
  return { e, phys, mm: createMm(e, phys, { name: 'mm' }) };
}

/** Runs `body` in task "main" of a fresh fifo world; returns the run result. */
async function run(body: (w: World) => Promise<void>, setup?: (w: World) => void): Promise<RunResult> {
  const e = new Engine({ strategy: 'fifo' });
  const w = world(e);
  setup?.(w);
  e.spawn('main', () => body(w));
  return e.run();
}

/** As run, failing the test if the run fails. */
async function runOk(body: (w: World) => Promise<void>, setup?: (w: World) => void): Promise<RunResult> {
  const r = await run(body, setup);
  if (!r.ok) throw r.failure;
  return r;
}

interface Update {
  readonly mirror: string;
  readonly etype: string;
  readonly start: number;
  readonly end: number;
}

/** A device that records its updates and releases and programs nothing (it reads through the mirror table). */
function recordingDevice(e: Engine, name = 'gpu', update?: HmmDeviceOps['update']) {
  const updates: Update[] = [];
  const released: string[] = [];
  const dev = new HmmDevice(e, name, {
    update(mirror, ev) {
      updates.push({ mirror: mirror.name, etype: hmmEtypeName(ev.etype), start: ev.start, end: ev.end });
      return update === undefined ? 0 : update(mirror, ev);
    },
    release(mirror) {
      released.push(mirror.name);
    },
  });
  return { dev, updates, released, cpuUpdates: () => updates.filter((u) => !u.etype.startsWith('HMM_DEVICE_')) };
}

/** The mock device's load: through the mirror table, faulting as needed. A bigint, or a negative errno. */
async function devRead64(mirror: HmmMirror, phys: PhysMem, addr: number): Promise<bigint | number> {
  const vpn = Math.floor(addr / P);
  const page = vpn * P;
  for (;;) {
    if (mirror.pt.bitsAt(vpn) & HMM_PTE_VALID) return phys.readU64(mirror.pt.pfnAt(vpn), addr % P);
    const r = await hmmMirrorFault(mirror, new HmmEvent(HMM_DEVICE_RFAULT, page, page + P));
    if (r !== 0) return r;
  }
}

/** The mock device's store: needs a writable mirror entry; marks it dirty. 0 or a negative errno. */
async function devWrite64(mirror: HmmMirror, phys: PhysMem, addr: number, v: bigint): Promise<number> {
  const vpn = Math.floor(addr / P);
  const page = vpn * P;
  for (;;) {
    const b = mirror.pt.bitsAt(vpn);
    if ((b & (HMM_PTE_VALID | HMM_PTE_WRITE)) === (HMM_PTE_VALID | HMM_PTE_WRITE)) {
      phys.writeU64(mirror.pt.pfnAt(vpn), addr % P, v);
      mirror.pt.setDirty(vpn);
      return 0;
    }
    const r = await hmmMirrorFault(mirror, new HmmEvent(HMM_DEVICE_WFAULT, page, page + P));
    if (r !== 0) return r;
  }
}

/**
 * The coherence invariant the 2015 protocol keeps at every scheduling point: a mirror entry
 * names the frame the CPU maps there (present, not protnone), and is writable only where the
 * CPU entry is. Throws (failing the run when called from a trace listener).
 */
function checkCoherent(mm: MmStruct, mirror: HmmMirror): void {
  for (const ent of mirror.pt.entries()) {
    const b = mm.pgtable.bitsAt(ent.vpn);
    const where = `${mirror.name} vpn 0x${ent.vpn.toString(16)}`;
    if ((b & (PTE_PRESENT | PTE_PROTNONE)) !== PTE_PRESENT) throw new Error(`stale mirror entry: ${where} but the CPU entry is not accessible (bits 0x${b.toString(16)})`);
    if (mm.pgtable.pfnAt(ent.vpn) !== ent.pfn) throw new Error(`stale mirror entry: ${where} maps pfn ${ent.pfn}, the CPU pfn ${mm.pgtable.pfnAt(ent.vpn)}`);
    if (ent.write && !(b & PTE_WRITE)) throw new Error(`stale write permission: ${where} is writable, the CPU entry is not`);
  }
}

/** Collects hmm2015.* and notifier start/end events as short strings `task: what`. */
function traceLog(e: Engine): string[] {
  const out: string[] = [];
  const who = (): string => e.current?.name ?? '-';
  e.trace.on('hmm2015.fault_valid', () => void out.push(`${who()}: fault_valid`));
  e.trace.on('hmm2015.fault_start', (ev) => void out.push(`${who()}: fault_start ${ev.ret === 0 ? 0 : ev.ret === -EAGAIN ? '-EAGAIN' : ev.ret}`));
  e.trace.on('hmm2015.fault_end', () => void out.push(`${who()}: fault_end`));
  e.trace.on('hmm2015.backoff', () => void out.push(`${who()}: backoff`));
  e.trace.on('hmm2015.wait', () => void out.push(`${who()}: wait`));
  e.trace.on('hmm2015.update', (ev) => void out.push(`${who()}: update ${hmmEtypeName(ev.etype)}`));
  e.trace.on('hmm2015.mirror_fault', (ev) => void out.push(`${who()}: mirror_fault ${ev.ret} retries=${ev.retries}`));
  e.trace.on('notifier.invalidate_start', () => void out.push(`${who()}: invalidate_start`));
  e.trace.on('notifier.invalidate_end', () => void out.push(`${who()}: invalidate_end`));
  return out;
}

describe('HmmEvent and the event mapping', () => {
  it('pte masks: MIGRATE and MUNMAP clear the entry, FORK and WRITE_PROTECT clear write, faults keep all', () => {
    const mask = (t: number): number => new HmmEvent(t, 0, P).pteMask;
    expect(mask(HMM_MIGRATE)).toBe(0);
    expect(mask(HMM_MUNMAP)).toBe(0);
    expect(mask(HMM_FORK)).toBe(HMM_PTE_ALL & ~HMM_PTE_WRITE);
    expect(mask(HMM_WRITE_PROTECT)).toBe(HMM_PTE_ALL & ~HMM_PTE_WRITE);
    expect(mask(HMM_DEVICE_RFAULT)).toBe(HMM_PTE_ALL);
    expect(mask(HMM_DEVICE_WFAULT)).toBe(HMM_PTE_ALL);
  });

  it('bad events throw KernelError(EINVAL) with the bad value', () => {
    const bad = (f: () => unknown, text: string): void => {
      let err: unknown;
      try {
        f();
      } catch (x) {
        err = x;
      }
      expect(err).toBeInstanceOf(KernelError);
      expect((err as KernelError).errno).toBe(EINVAL);
      expect((err as KernelError).message).toContain(text);
    };
    bad(() => new HmmEvent(HMM_DEVICE_RFAULT, 0x1001, 0x3000), '4097');
    bad(() => new HmmEvent(HMM_DEVICE_RFAULT, 0x1000, 0x2800), '10240');
    bad(() => new HmmEvent(HMM_DEVICE_RFAULT, 0x2000, 0x2000), '[0x2000, 0x2000)');
    bad(() => new HmmEvent(HMM_DEVICE_RFAULT, 0x3000, 0x2000), '[0x3000, 0x2000)');
    bad(() => new HmmEvent(HMM_NONE, 0, P), 'unknown etype 0');
    bad(() => new HmmEvent(42, 0, P), 'unknown etype 42');
    bad(() => new HmmEvent(HMM_DEVICE_RFAULT, 0, TASK_SIZE + P), String(TASK_SIZE + P));
  });

  it('maps every mmu event (the 2015 switch on today\'s names); PROTECTION_VMA reads the VMA', async () => {
    await runOk(async ({ mm }) => {
      const a = await mmap(mm, 0, 3 * P, RW, PRIV);
      expect(hmmEtypeFromMmu(mm, MMU_NOTIFY_UNMAP, a)).toBe(HMM_MUNMAP);
      expect(hmmEtypeFromMmu(mm, MMU_NOTIFY_RELEASE, 0)).toBe(HMM_MUNMAP);
      expect(hmmEtypeFromMmu(mm, MMU_NOTIFY_CLEAR, a)).toBe(HMM_MIGRATE);
      expect(hmmEtypeFromMmu(mm, MMU_NOTIFY_MIGRATE, a)).toBe(HMM_MIGRATE);
      expect(hmmEtypeFromMmu(mm, MMU_NOTIFY_EXCLUSIVE, a)).toBe(HMM_MIGRATE);
      expect(hmmEtypeFromMmu(mm, MMU_NOTIFY_SOFT_DIRTY, a)).toBe(HMM_WRITE_PROTECT);
      expect(hmmEtypeFromMmu(mm, 3 /* PROTECTION_PAGE */, a)).toBe(HMM_FORK);
      expect(hmmEtypeFromMmu(mm, 2 /* PROTECTION_VMA */, a)).toBe(HMM_NONE); // RW: ignored
      await mprotect(mm, a + P, P, PROT_READ);
      expect(hmmEtypeFromMmu(mm, 2, a + P)).toBe(HMM_WRITE_PROTECT);
      await mprotect(mm, a + 2 * P, P, PROT_NONE);
      expect(hmmEtypeFromMmu(mm, 2, a + 2 * P)).toBe(HMM_MUNMAP);
      expect(hmmEtypeFromMmu(mm, 2, a + 3 * P)).toBe(HMM_MUNMAP); // no VMA
    });
  });

  it('each mm operation reaches the device as the mapped etype; mprotect RO->RW is ignored', async () => {
    await runOk(async ({ e, mm }) => {
      const rec = recordingDevice(e);
      const mirror = new HmmMirror(rec.dev, 'm');
      const a = await mmap(mm, 0, 8 * P, RW, PRIV);
      for (let i = 0; i < 8; i++) await cpuWrite64(mm, a + i * P, BigInt(i + 1));
      expect(await hmmMirrorRegister(mirror, mm)).toBe(0);
      expect(await hmmMirrorFault(mirror, new HmmEvent(HMM_DEVICE_WFAULT, a, a + 8 * P))).toBe(0);
      const seen = (): string[] => rec.cpuUpdates().map((u) => `${u.etype} ${(u.start - a) / P}-${(u.end - a) / P}`);
      await mprotect(mm, a, P, PROT_READ);
      await mprotect(mm, a + P, P, PROT_NONE);
      await mprotect(mm, a, P, RW);
      await munmap(mm, a + 7 * P, P);
      await madvise(mm, a + 6 * P, P, MADV_DONTNEED);
      const child = await fork(mm);
      await cpuWrite64(mm, a + 5 * P, 55n); // COW break in the parent
      expect(await migratePages(mm, a + 4 * P, a + 5 * P)).toBe(0); // shared with the child: not movable
      await mm.mmapLock.downRead();
      await withInvalidation(mm, MMU_NOTIFY_SOFT_DIRTY, a + 2 * P, a + 3 * P, null, () => 0);
      await withInvalidation(mm, MMU_NOTIFY_EXCLUSIVE, a + 2 * P, a + 3 * P, null, () => 0);
      await withInvalidation(mm, MMU_NOTIFY_MIGRATE, a + 3 * P, a + 4 * P, 'someone', () => 0);
      mm.mmapLock.upRead();
      expect(seen()).toEqual([
        'HMM_WRITE_PROTECT 0-1',
        'HMM_MUNMAP 1-2',
        'HMM_MUNMAP 7-8',
        'HMM_MIGRATE 6-7',
        'HMM_FORK 0-1', // fork: one PROTECTION_PAGE per COW VMA
        'HMM_FORK 1-2',
        'HMM_FORK 2-7',
        'HMM_MIGRATE 5-6',
        'HMM_WRITE_PROTECT 2-3',
        'HMM_MIGRATE 2-3',
        'HMM_MIGRATE 3-4',
      ]);
      await exitMm(child);
      await exitMm(mm);
      expect(seen().slice(11)).toEqual([`HMM_MUNMAP ${-a / P}-${(TASK_SIZE - a) / P}`]); // the teardown's "unmap everything"
      expect(rec.released).toEqual(['m']);
    });
  });
});

describe('the mirror page table', () => {
  it('a fault fills it from the CPU page table; masks clear write or the entry and move the device dirty bit to the page', async () => {
    await runOk(async ({ e, mm, phys }) => {
      const rec = recordingDevice(e);
      const mirror = new HmmMirror(rec.dev, 'm');
      const a = await mmap(mm, 0, 3 * P, RW, PRIV);
      await cpuWrite64(mm, a, 1n);
      await cpuWrite64(mm, a + P, 2n);
      await hmmMirrorRegister(mirror, mm);
      expect(await hmmMirrorFault(mirror, new HmmEvent(HMM_DEVICE_WFAULT, a, a + 2 * P))).toBe(0);
      const v = a / P;
      const pfn0 = mm.pgtable.pfnAt(v);
      const pfn1 = mm.pgtable.pfnAt(v + 1);
      expect(mirror.pt.entries()).toEqual([
        { vpn: v, pfn: pfn0, write: true, dirty: false },
        { vpn: v + 1, pfn: pfn1, write: true, dirty: false },
      ]);
      expect(mirror.pt.size).toBe(2);
      expect(mirror.pt.setDirty(v)).toBe(true); // the device wrote page 0
      expect(mirror.pt.setDirty(v + 2)).toBe(false); // no entry
      expect(phys.flags[pfn0]! & PG_DIRTY).toBe(0);
      await mprotect(mm, a, 3 * P, PROT_READ); // WRITE_PROTECT
      expect(mirror.pt.entries()).toEqual([
        { vpn: v, pfn: pfn0, write: false, dirty: false },
        { vpn: v + 1, pfn: pfn1, write: false, dirty: false },
      ]);
      expect(phys.flags[pfn0]! & PG_DIRTY).toBe(PG_DIRTY);
      expect(phys.flags[pfn1]! & PG_DIRTY).toBe(0);
      await munmap(mm, a + P, P); // MUNMAP
      expect(mirror.pt.lookup(v + 1)).toBeNull();
      expect(mirror.pt.lookup(v)).toEqual({ vpn: v, pfn: pfn0, write: false, dirty: false });
      expect(mirror.pt.size).toBe(1);
      checkCoherent(mm, mirror);
      await hmmMirrorUnregister(mirror);
      expect(mirror.pt.size).toBe(0);
    });
  });

  it('a read fault on untouched memory mirrors the zero page read-only; a write fault then mirrors the new page', async () => {
    await runOk(async ({ e, mm }) => {
      const { dev } = recordingDevice(e);
      const mirror = new HmmMirror(dev, 'm');
      const a = await mmap(mm, 0, P, RW, PRIV);
      await hmmMirrorRegister(mirror, mm);
      expect(await hmmMirrorFault(mirror, new HmmEvent(HMM_DEVICE_RFAULT, a, a + P))).toBe(0);
      expect(mirror.pt.lookup(a / P)).toEqual({ vpn: a / P, pfn: ZERO_PFN, write: false, dirty: false });
      expect(mirror.stats).toEqual({ faults: 1, retries: 1, backoffs: 0, updates: 1 }); // -ENOENT, CPU fault, retry
      expect(await hmmMirrorFault(mirror, new HmmEvent(HMM_DEVICE_WFAULT, a, a + P))).toBe(0);
      const ent = mirror.pt.lookup(a / P)!;
      expect(ent.pfn).not.toBe(ZERO_PFN);
      expect(ent.pfn).toBe(mm.pgtable.pfnAt(a / P));
      expect(ent.write).toBe(true);
      checkCoherent(mm, mirror);
    });
  });

  it('a fault over several PMDs fills every page; a hole, PROT_NONE, read-only VMA give the 2015 errors', async () => {
    await runOk(async ({ e, mm }) => {
      const { dev } = recordingDevice(e);
      const mirror = new HmmMirror(dev, 'm');
      const a = await mmap(mm, 0, 3 * PMD_SIZE, RW, PRIV);
      await hmmMirrorRegister(mirror, mm);
      const s = a + PMD_SIZE - 4 * P; // crosses a 2 MiB boundary
      const ev = new HmmEvent(HMM_DEVICE_WFAULT, s, s + PMD_SIZE);
      expect(await hmmMirrorFault(mirror, ev)).toBe(0);
      expect(mirror.pt.size).toBe(PMD_SIZE / P);
      checkCoherent(mm, mirror);
      // The event is clipped to the VMA containing its start.
      const ro = await mmap(mm, 0, 2 * P, PROT_READ, PRIV);
      const past = new HmmEvent(HMM_DEVICE_RFAULT, ro, ro + 4 * P);
      expect(await hmmMirrorFault(mirror, past)).toBe(0);
      expect(past.end).toBe(ro + 2 * P);
      expect(await hmmMirrorFault(mirror, new HmmEvent(HMM_DEVICE_WFAULT, ro, ro + P))).toBe(-EACCES);
      const none = await mmap(mm, 0, P, PROT_NONE, PRIV);
      expect(await hmmMirrorFault(mirror, new HmmEvent(HMM_DEVICE_RFAULT, none, none + P))).toBe(-EFAULT);
      expect(mirror.pt.lookup(none / P)).toBeNull();
      await munmap(mm, a + P, P);
      const hole = new HmmEvent(HMM_DEVICE_RFAULT, a + P, a + 2 * P);
      expect(await hmmMirrorFault(mirror, hole)).toBe(-EFAULT);
      checkCoherent(mm, mirror);
    });
  });

  it('lookup and entries reject bad page numbers', async () => {
    await runOk(async ({ e }) => {
      const m = new HmmMirror(recordingDevice(e).dev);
      expect(() => m.pt.lookup(-1)).toThrow(KernelError);
      expect(() => m.pt.lookup(1.5)).toThrow(/1.5/);
      expect(() => m.pt.entries(4, 2)).toThrow(KernelError);
      expect(m.pt.entries()).toEqual([]);
    });
  });
});

describe('registration and teardown', () => {
  it('the first mirror creates the Hmm and its one notifier; unregister releases the mirror and the last one destroys the Hmm', async () => {
    await runOk(async ({ e, mm }) => {
      const rec = recordingDevice(e);
      const m1 = new HmmMirror(rec.dev, 'm1');
      const m2 = new HmmMirror(rec.dev, 'm2');
      expect(hmmFromMm(mm)).toBeNull();
      expect(await hmmMirrorRegister(m1, mm)).toBe(0);
      const hmm = hmmFromMm(mm)!;
      expect(hmm).toBeInstanceOf(Hmm);
      expect(await hmmMirrorRegister(m2, mm)).toBe(0);
      expect(hmmFromMm(mm)).toBe(hmm);
      expect(hmm.mirrors.map((m) => m.name)).toEqual(['m2', 'm1']);
      expect(mm.notifierSubscriptions!.first).toBe(hmm.notifier);
      expect(hmm.notifier.next).toBeNull(); // one notifier for both mirrors
      expect(rec.dev.mirrors).toEqual([m1, m2]);
      const a = await mmap(mm, 0, P, RW, PRIV);
      await cpuWrite64(mm, a, 9n);
      expect(await hmmMirrorFault(m1, new HmmEvent(HMM_DEVICE_RFAULT, a, a + P))).toBe(0);
      await hmmMirrorUnregister(m1);
      expect(m1.state).toBe('dead');
      expect(m1.pt.size).toBe(0);
      expect(rec.released).toEqual(['m1']);
      expect(rec.cpuUpdates()).toEqual([{ mirror: 'm1', etype: 'HMM_MUNMAP', start: 0, end: TASK_SIZE }]);
      expect(hmmFromMm(mm)).toBe(hmm);
      expect(await hmmMirrorFault(m1, new HmmEvent(HMM_DEVICE_RFAULT, a, a + P))).toBe(-ENODEV);
      await hmmMirrorUnregister(m2);
      expect(hmmFromMm(mm)).toBeNull();
      expect(hmm.dead).toBe(true);
      expect(mm.notifierSubscriptions!.first).toBeNull();
      expect(rec.dev.mirrors).toEqual([]);
      // A new mirror gets a new Hmm.
      const m3 = new HmmMirror(rec.dev, 'm3');
      expect(await hmmMirrorRegister(m3, mm)).toBe(0);
      expect(hmmFromMm(mm)).not.toBe(hmm);
      await hmmMirrorUnregister(m3);
    });
  });

  it('mm teardown releases every mirror once; faults then fail with -ENODEV; unregister after it releases nothing more', async () => {
    await runOk(async ({ e, mm }) => {
      const rec = recordingDevice(e);
      const m1 = new HmmMirror(rec.dev, 'm1');
      const m2 = new HmmMirror(rec.dev, 'm2');
      await hmmMirrorRegister(m1, mm);
      await hmmMirrorRegister(m2, mm);
      const a = await mmap(mm, 0, 2 * P, RW, PRIV);
      expect(await hmmMirrorFault(m1, new HmmEvent(HMM_DEVICE_WFAULT, a, a + 2 * P))).toBe(0);
      await exitMm(mm);
      expect(rec.released.sort()).toEqual(['m1', 'm2']);
      expect(m1.state).toBe('dead');
      expect(m1.pt.size).toBe(0);
      expect(await hmmMirrorFault(m1, new HmmEvent(HMM_DEVICE_RFAULT, a, a + P))).toBe(-ENODEV);
      await hmmMirrorUnregister(m1);
      await hmmMirrorUnregister(m2);
      expect(rec.released.length).toBe(2);
      expect(hmmFromMm(mm)).toBeNull();
    });
  });

  it('a device update that fails on a CPU update kills that mirror (an unexpected error is WARNed as -EIO)', async () => {
    const r = await runOk(async ({ e, mm }) => {
      let fail = 0;
      const bad = recordingDevice(e, 'bad', (_m, ev) => (ev.etype === HMM_MIGRATE ? fail : 0));
      const good = recordingDevice(e, 'good');
      const mb = new HmmMirror(bad.dev, 'mb');
      const mg = new HmmMirror(good.dev, 'mg');
      await hmmMirrorRegister(mb, mm);
      await hmmMirrorRegister(mg, mm);
      const a = await mmap(mm, 0, P, RW, PRIV);
      await cpuWrite64(mm, a, 1n);
      fail = -EIO;
      await madvise(mm, a, P, MADV_DONTNEED);
      expect(bad.released).toEqual(['mb']);
      expect(mb.state).toBe('dead');
      expect(good.released).toEqual([]);
      expect(hmmFromMm(mm)!.mirrors).toEqual([mg]);
      const mb2 = new HmmMirror(bad.dev, 'mb2');
      await hmmMirrorRegister(mb2, mm);
      fail = -999;
      await madvise(mm, a, P, MADV_DONTNEED);
      expect(bad.released).toEqual(['mb', 'mb2']);
      expect(e.warnings).toBe(1);
    });
    expect(r.warnings).toBe(1);
  });

  it('bad registrations and bad fault calls throw typed errors and change nothing', async () => {
    await runOk(async ({ e, mm }) => {
      const { dev } = recordingDevice(e);
      const m = new HmmMirror(dev, 'm');
      await expect(hmmMirrorUnregister(m)).rejects.toMatchObject({ errno: EINVAL });
      expect(await hmmMirrorRegister(m, mm)).toBe(0);
      await expect(hmmMirrorRegister(m, mm)).rejects.toMatchObject({ errno: EEXIST, message: expect.stringContaining('m was already registered') });
      expect(hmmFromMm(mm)!.mirrors).toEqual([m]);
      const a = await mmap(mm, 0, P, RW, PRIV);
      await expect(hmmMirrorFault(m, new HmmEvent(HMM_MUNMAP, a, a + P))).rejects.toMatchObject({ errno: EINVAL, message: expect.stringContaining('HMM_MUNMAP') });
      await expect(hmmDeviceFaultStart(hmmFromMm(mm)!, new HmmEvent(HMM_FORK, a, a + P))).rejects.toMatchObject({ errno: EINVAL });
      expect(() => new HmmDevice(e, 'x', {} as HmmDeviceOps)).toThrow(KernelError);
      expect(() => new HmmMirror({} as HmmDevice)).toThrow(KernelError);
      await hmmMirrorUnregister(m);
      await expect(hmmMirrorUnregister(m)).rejects.toMatchObject({ errno: EINVAL, message: expect.stringContaining('already unregistered') });
      await expect(hmmMirrorRegister(m, mm)).rejects.toMatchObject({ errno: EEXIST });
    });
  });

  it('ending a fault that did not start, or faulting with an event already in flight, is a KernelBug', async () => {
    const r1 = await run(async ({ e, mm }) => {
      const m = new HmmMirror(recordingDevice(e).dev);
      await hmmMirrorRegister(m, mm);
      hmmDeviceFaultEnd(hmmFromMm(mm)!, new HmmEvent(HMM_DEVICE_RFAULT, 0, P));
    });
    expect(r1.failure).toBeInstanceOf(KernelBug);
    expect(r1.failure?.message).toContain('is not an active device fault');
    const r2 = await run(async ({ e, mm }) => {
      const m = new HmmMirror(recordingDevice(e).dev);
      await hmmMirrorRegister(m, mm);
      const a = await mmap(mm, 0, P, RW, PRIV);
      const ev = new HmmEvent(HMM_DEVICE_RFAULT, a, a + P);
      expect(await hmmDeviceFaultStart(hmmFromMm(mm)!, ev)).toBe(0);
      await hmmMirrorFault(m, ev);
    });
    expect(r2.failure).toBeInstanceOf(KernelBug);
    expect(r2.failure?.message).toContain('already an active device fault');
  });

  it('a non-blockable invalidation (the OOM reaper) is refused with -EAGAIN: hmm_update sleeps', async () => {
    await runOk(async ({ e, mm }) => {
      const m = new HmmMirror(recordingDevice(e).dev);
      await hmmMirrorRegister(m, mm);
      const a = await mmap(mm, 0, P, RW, PRIV);
      await cpuWrite64(mm, a, 1n);
      expect(await oomReapTaskMm(mm)).toBe(-EAGAIN);
      expect(await cpuRead64(mm, a)).toBe(1n);
      await hmmMirrorUnregister(m);
    });
  });
});

describe('the two-sided protocol', () => {
  it('the device-fault list: start publishes, wait_device_fault marks overlapping faults backoff and waits for their end', async () => {
    await runOk(async ({ e, mm }) => {
      const m = new HmmMirror(recordingDevice(e).dev);
      await hmmMirrorRegister(m, mm);
      const hmm = hmmFromMm(mm)!;
      const f1 = new HmmEvent(HMM_DEVICE_RFAULT, 0x10000, 0x12000);
      const f2 = new HmmEvent(HMM_DEVICE_WFAULT, 0x20000, 0x21000);
      expect(await hmmDeviceFaultStart(hmm, f1)).toBe(0);
      expect(await hmmDeviceFaultStart(hmm, f2)).toBe(0);
      expect(hmm.ndeviceFaults).toBe(2);
      expect(hmm.deviceFaults).toEqual([f1, f2]);
      let returned = -1;
      const inv = e.spawn('inval', async () => {
        await hmmWaitDeviceFault(hmm, new HmmEvent(HMM_MIGRATE, 0x11000, 0x20000)); // touches f1 only (half-open)
        returned = e.now;
      });
      await e.sleep(10);
      expect(f1.backoff).toBe(true);
      expect(f2.backoff).toBe(false);
      hmmDeviceFaultEnd(hmm, f2); // a change of the count wakes it; it rescans and sleeps again
      await e.sleep(10);
      expect(returned).toBe(-1);
      hmmDeviceFaultEnd(hmm, f1);
      await inv.join();
      expect(returned).toBe(20);
      expect(hmm.ndeviceFaults).toBe(0);
      await hmmMirrorUnregister(m);
    });
  });

  it('diagram A: the fault is published first, so the invalidation waits for its device update and the fault backs off and retries', async () => {
    let log: string[] = [];
    let mirror: HmmMirror | null = null;
    await runOk(
      async ({ e, mm, phys }) => {
        const inUpdate = new Completion(e, 'fault in device update');
        const rec = recordingDevice(e, 'gpu', async (_m, ev) => {
          if (ev.etype === HMM_DEVICE_RFAULT && !inUpdate.isDone()) {
            inUpdate.complete();
            await e.sleep(100); // programming the device page table takes a while
          }
          return 0;
        });
        const m = new HmmMirror(rec.dev, 'm');
        mirror = m;
        const a = await mmap(mm, 0, P, RW, PRIV);
        await cpuWrite64(mm, a, 7n);
        await hmmMirrorRegister(m, mm);
        const dev = e.spawn('device', () => devRead64(m, phys, a));
        const cpu = e.spawn('cpu', async () => {
          await inUpdate.waitForCompletion();
          await madvise(mm, a, P, MADV_DONTNEED);
        });
        await cpu.join();
        expect(await dev.join()).toBe(0n); // retried after the zap: the zero page
        expect(await cpuRead64(mm, a)).toBe(0n);
        checkCoherent(mm, m);
      },
      ({ e }) => {
        log = traceLog(e);
      },
    );
    expect(log).toEqual([
      'device: fault_valid',
      'device: fault_start 0',
      'cpu: invalidate_start',
      'cpu: backoff', // the invalidation sees the fault...
      'cpu: wait', // ...and waits for it
      'device: update HMM_DEVICE_RFAULT', // the fault's device update comes first
      'device: fault_end', // backoff: -EAGAIN
      'cpu: update HMM_MIGRATE', // then the invalidation's
      'cpu: invalidate_end',
      'device: fault_valid', // the retry slept in wait_valid until the range ended
      'device: fault_start 0',
      'device: fault_end', // -ENOENT: the page is gone; fault it (zero page), retry
      'device: fault_valid',
      'device: fault_start 0',
      'device: update HMM_DEVICE_RFAULT',
      'device: fault_end',
      'device: mirror_fault 0 retries=2',
    ]);
    expect(mirror!.stats).toEqual({ faults: 1, retries: 2, backoffs: 1, updates: 3 });
  });

  it('diagram B: the invalidation is published between the fault\'s wait_valid and its recheck, so the fault returns -EAGAIN and retries', async () => {
    let log: string[] = [];
    let mirror: HmmMirror | null = null;
    let window: Completion | null = null;
    await runOk(
      async ({ e, mm, phys }) => {
        const rec = recordingDevice(e);
        const m = new HmmMirror(rec.dev, 'm');
        mirror = m;
        const a = await mmap(mm, 0, P, RW, PRIV);
        await cpuWrite64(mm, a, 7n);
        await hmmMirrorRegister(m, mm);
        const dev = e.spawn('device', () => devRead64(m, phys, a));
        const cpu = e.spawn('cpu', async () => {
          await mm.mmapLock.downRead();
          await window!.waitForCompletion(); // the fault is in the window: invalidate now
          await withInvalidation(mm, MMU_NOTIFY_CLEAR, a, a + P, null, () => zapRange(mm, a, a + P));
          mm.mmapLock.upRead();
        });
        await cpu.join();
        expect(await dev.join()).toBe(0n);
        checkCoherent(mm, m);
      },
      ({ e }) => {
        log = traceLog(e);
        const w = new Completion(e, 'fault between wait_valid and recheck');
        window = w;
        e.trace.on('hmm2015.fault_valid', () => {
          if (!w.isDone()) w.complete();
        });
      },
    );
    expect(log).toEqual([
      'device: fault_valid',
      'cpu: invalidate_start', // published inside the fault's window
      'device: fault_start -EAGAIN', // the recheck sees it: the fault does not publish itself
      'cpu: update HMM_MIGRATE', // no fault to wait for
      'cpu: invalidate_end',
      'device: fault_valid', // the retry slept in wait_valid until the range ended
      'device: fault_start 0',
      'device: fault_end', // -ENOENT: zapped; fault the zero page in, retry
      'device: fault_valid',
      'device: fault_start 0',
      'device: update HMM_DEVICE_RFAULT',
      'device: fault_end',
      'device: mirror_fault 0 retries=2',
    ]);
    expect(mirror!.stats).toEqual({ faults: 1, retries: 2, backoffs: 0, updates: 2 }); // one fault update, one MIGRATE
  });
});

/**
 * Hairgrove's deadlock (Sep 2015), written as the documented usage: a driver whose own
 * invalidate_range_start takes its lock L, and whose fault path does
 *   again: wait_valid(); lock(L); if (!is_valid()) goto again;   // L still held
 * Thread B's range is published before its callback blocks on L, so A waits in wait_valid for
 * a range that cannot end.
 */
function hairgroveDriver(opts: { hmmStyle: boolean }): Program {
  return (e) => {
    const { mm } = world(e, 64);
    const L = new Mutex(e, 'driver.lock');
    e.spawn('main', async () => {
      const a = await mmap(mm, 0, P, RW, PRIV);
      await cpuWrite64(mm, a, 1n);
      await mmuNotifierRegister(
        new MmuNotifier(
          {
            async invalidateRangeStart() {
              await L.lock(); // block new device mappings while we zap the device page table
              L.unlock();
              return 0;
            },
          },
          'driver',
        ),
        mm,
      );
      const A = e.spawn('A', async () => {
        await mm.mmapLock.downRead();
        for (;;) {
          await mmuNotifierRangeWaitValid(mm, a, a + P);
          await L.lock();
          if (mmuNotifierRangeIsValid(mm, a, a + P)) break;
          if (opts.hmmStyle) L.unlock(); // HMM: do not hold it on failure (-EAGAIN)
        }
        // ...program the device page table from the CPU page table...
        L.unlock();
        mm.mmapLock.upRead();
      });
      const B = e.spawn('B', () => madvise(mm, a, P, MADV_DONTNEED).then(() => undefined));
      await A.join();
      await B.join();
    });
  };
}

describe('Hairgrove: the documented wait_valid / lock / recheck usage deadlocks; the HMM path does not', () => {
  it('random schedules find the deadlock; the engine reports both tasks and a replay reproduces it', async () => {
    const res = await explore(hairgroveDriver({ hmmStyle: false }), { runs: 500, strategy: 'random' });
    const f = res.firstFailure;
    expect(f, 'no schedule deadlocked').not.toBeNull();
    expect(f!.failure).toBeInstanceOf(DeadlockError);
    const msg = f!.failure!.message;
    expect(msg).toContain('A: wait queue "mmu_notifier_mm.wait_queue"');
    expect(msg).toContain('B: mutex "driver.lock" held by A');
    const again = await replay(hairgroveDriver({ hmmStyle: false }), f!.schedule);
    expect(again.failure).toBeInstanceOf(DeadlockError);
    expect(again.failure!.message).toBe(msg);
    // The same schedule with the lock dropped on failure completes.
    const fixed = await replay(hairgroveDriver({ hmmStyle: true }), f!.schedule, { strict: false });
    expect(fixed.ok).toBe(true);
  });

  /** The same race through HMM: a device fault while the CPU invalidates the page; the device's update takes L. */
  const raceTotals = { backoffs: 0, retries: 0, waits: 0 };
  const hmmRace: Program = (e) => {
    e.trace.on('hmm2015.wait', () => void raceTotals.waits++);
    const { mm, phys } = world(e, 64);
    const L = new Mutex(e, 'driver.lock');
    const dev = new HmmDevice(e, 'gpu', {
      async update() {
        await L.lock(); // the fault's update programs, an invalidation's zaps: both under L
        L.unlock();
        return 0;
      },
      release() {},
    });
    const mirror = new HmmMirror(dev, 'm');
    e.trace.on('sched.switch', () => checkCoherent(mm, mirror));
    e.spawn('main', async () => {
      const a = await mmap(mm, 0, 2 * P, RW, PRIV);
      await cpuWrite64(mm, a, 1n);
      await mmuNotifierRegister(new MmuNotifier({ invalidateRangeStart: () => 0 }, 'other'), mm);
      await hmmMirrorRegister(mirror, mm);
      let got: bigint | number = -1;
      const A = e.spawn('A', async () => {
        got = await devRead64(mirror, phys, a);
      });
      const B = e.spawn('B', async () => {
        await madvise(mm, a, P, MADV_DONTNEED);
        await cpuWrite64(mm, a, 2n);
        await migratePages(mm, a, a + 2 * P);
        await cpuWrite64(mm, a, 3n);
      });
      await A.join();
      await B.join();
      if (typeof got !== 'bigint') throw new Error(`device read failed: ${got}`);
      if (![0n, 1n, 2n, 3n].includes(got)) throw new Error(`device read ${got}`);
      const now = await devRead64(mirror, phys, a);
      if (now !== 3n) throw new Error(`device reads ${String(now)}, CPU wrote 3`);
      raceTotals.backoffs += mirror.stats.backoffs;
      raceTotals.retries += mirror.stats.retries;
      await hmmMirrorUnregister(mirror);
    });
  };

  it('hmmMirrorFault + hmm_update under the same race: no deadlock, the fault completes (300 random + 300 PCT schedules)', async () => {
    for (const strategy of ['random', 'pct:3']) {
      const res = await explore(hmmRace, { runs: 300, strategy });
      expect(res.failures.map((f) => `${f.schedule}: ${f.failure?.message}`)).toEqual([]);
    }
    // Both sides of the protocol were exercised: invalidations waited for faults, faults backed off.
    expect(raceTotals.waits).toBeGreaterThan(0);
    expect(raceTotals.backoffs).toBeGreaterThan(0);
    expect(raceTotals.retries).toBeGreaterThan(raceTotals.backoffs);
  });
});

describe('coherence of a device reading and writing through the mirror table', () => {
  it('the device sees CPU writes after faulting and the CPU sees device writes', async () => {
    await runOk(async ({ e, mm, phys }) => {
      const m = new HmmMirror(recordingDevice(e).dev, 'm');
      await hmmMirrorRegister(m, mm);
      const a = await mmap(mm, 0, 4 * P, RW, PRIV);
      await cpuWrite64(mm, a + 8, 0x1234n);
      expect(await devRead64(m, phys, a + 8)).toBe(0x1234n);
      expect(await devWrite64(m, phys, a + P + 16, 0xbeefn)).toBe(0);
      expect(await cpuRead64(mm, a + P + 16)).toBe(0xbeefn);
      await cpuWrite64(mm, a + P + 16, 0xcafen);
      expect(await devRead64(m, phys, a + P + 16)).toBe(0xcafen);
      const child = await fork(mm); // FORK: the parent's mirror loses write
      expect(m.pt.lookup((a + P) / P)!.write).toBe(false);
      await cpuWrite64(child, a + P + 16, 0x1111n);
      expect(await devRead64(m, phys, a + P + 16)).toBe(0xcafen); // the child's write is not ours
      expect(await devWrite64(m, phys, a + P + 16, 0x2222n)).toBe(0); // COW break for the parent
      expect(await cpuRead64(mm, a + P + 16)).toBe(0x2222n);
      expect(await cpuRead64(child, a + P + 16)).toBe(0x1111n);
      checkCoherent(mm, m);
      await exitMm(child);
      await hmmMirrorUnregister(m);
    });
  });

  /**
   * A CPU thread maps, writes, unmaps, protects, forks and drops pages while the device reads
   * and writes them through its mirror; the invariant is checked at every scheduling point
   * and the data at the end.
   */
  const NPAGES = 6;
  const totals = { faults: 0, retries: 0, backoffs: 0, waits: 0 };
  const coherenceRun: Program = (e) => {
    e.trace.on('hmm2015.wait', () => void totals.waits++);
    const { mm, phys } = world(e, 256);
    const m = new HmmMirror(recordingDevice(e).dev, 'm');
    e.trace.on('sched.switch', () => checkCoherent(mm, m));
    e.spawn('main', async () => {
      const a = await mmap(mm, 0, NPAGES * P, RW, PRIV);
      // Another secondary MMU registered first: its callback runs after HMM's, so an
      // invalidation can be preempted between masking the mirror and changing the CPU entry.
      await mmuNotifierRegister(new MmuNotifier({ invalidateRangeStart: () => 0 }, 'other'), mm);
      await hmmMirrorRegister(m, mm);
      // prot per page, as the CPU thread (the only one changing mappings) knows it.
      const prot: number[] = new Array<number>(NPAGES).fill(RW);
      const children: MmStruct[] = [];
      const cpu = e.spawn('cpu', async () => {
        for (let k = 0; k < 8; k++) {
          const i = e.choose(NPAGES, 'page');
          const addr = a + i * P;
          switch (e.choose(7, 'op')) {
            case 0:
            case 1:
              if (prot[i] === RW) await cpuWrite64(mm, addr, BigInt(100 * k + i));
              break;
            case 2:
              if (prot[i] !== -1) {
                await munmap(mm, addr, P);
                prot[i] = -1;
              }
              break;
            case 3: {
              if (prot[i] === -1) {
                await mmap(mm, addr, P, RW, PRIV | 0x10 /* MAP_FIXED */);
                prot[i] = RW;
              } else {
                const p = [PROT_NONE, PROT_READ, RW][e.choose(3, 'prot')]!;
                await mprotect(mm, addr, P, p);
                prot[i] = p;
              }
              break;
            }
            case 4:
              if (children.length < 2) children.push(await fork(mm));
              break;
            case 5:
              if (prot[i] !== -1) await madvise(mm, addr, P, MADV_DONTNEED);
              break;
            case 6:
              await migratePages(mm, a, a + NPAGES * P);
              break;
          }
        }
      });
      const device = e.spawn('device', async () => {
        for (let k = 0; k < 8; k++) {
          const addr = a + e.choose(NPAGES, 'page') * P + 8;
          if (e.chance(1, 2, 'write')) await devWrite64(m, phys, addr, BigInt(1000 + k));
          else await devRead64(m, phys, addr);
        }
      });
      await cpu.join();
      await device.join();
      for (let i = 0; i < NPAGES; i++) {
        if (prot[i] === -1 || prot[i] === PROT_NONE) {
          expect(m.pt.lookup((a + i * P) / P)).toBeNull();
          continue;
        }
        const want = await cpuRead64(mm, a + i * P + 8);
        expect(await devRead64(m, phys, a + i * P + 8)).toBe(want);
      }
      for (const c of children) await exitMm(c);
      totals.faults += m.stats.faults;
      totals.retries += m.stats.retries;
      totals.backoffs += m.stats.backoffs;
      await hmmMirrorUnregister(m);
    });
  };

  it('no stale entry and no stale write bit at any scheduling point, and the device reads what the CPU reads, across many schedules', async () => {
    for (const strategy of ['random', 'pct:3']) {
      const res = await explore(coherenceRun, { runs: 400, strategy, seed: 1000 });
      expect(res.failures.map((f) => `${f.schedule}: ${f.failure?.message}`)).toEqual([]);
    }
    expect(totals.waits).toBeGreaterThan(0);
    expect(totals.backoffs).toBeGreaterThan(0);
    expect(totals.retries).toBeGreaterThan(totals.backoffs);
  });
});
