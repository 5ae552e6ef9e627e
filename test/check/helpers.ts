/**
 * Test worlds for the oracle: an engine with the oracle attached, physical memory, an mm, a
 * device with one address space, and a tiny hand-written driver whose invalidate callback
 * does (or does not) zap, so that each test can build a violating state, or a legal near miss,
 * directly.
 */
import { expect } from 'vitest';
import { EINVAL, Engine, Mutex, type RunResult } from '../../src/sim/index.js';
import {
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  type MmStruct,
  PAGE_SIZE,
  PROT_READ,
  PROT_WRITE,
  PhysMem,
  type VmFault,
  createMm,
  mmap,
} from '../../src/mm/index.js';
import {
  MIGRATE_PFN_MIGRATE,
  MIGRATE_PFN_WRITE,
  MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
  MIGRATE_VMA_SELECT_SYSTEM,
  MigrateVma,
  migratePfn,
  migratePfnToPfn,
  migrateVmaFinalize,
  migrateVmaPages,
  migrateVmaSetup,
} from '../../src/hmm/index.js';
import {
  MMU_NOTIFY_EXCLUSIVE,
  MMU_NOTIFY_MIGRATE,
  MmuIntervalNotifier,
  type MmuNotifierRange,
  ULONG_MAX_ADDR,
  mmuIntervalNotifierInsert,
  mmuIntervalSetSeq,
  mmuNotifierRangeBlockable,
} from '../../src/notifier/index.js';
import { Device, type DeviceAddressSpace } from '../../src/device/index.js';
import { CoherencyViolation, type Oracle, type OracleOptions, attachOracle } from '../../src/check/index.js';

export const P = PAGE_SIZE;
export const RW = PROT_READ | PROT_WRITE;
export const PRIV = MAP_PRIVATE | MAP_ANONYMOUS;
/** Where tests map their buffer (page aligned, below MMAP_BASE). */
export const BUF = 0x10_0000_0000;

/** What the test driver's invalidate callback does. */
export type ZapMode = 'all' | 'everything' | 'pt-only' | 'no-fence-wait' | 'none' | 'write-protect';

export interface World {
  readonly engine: Engine;
  readonly phys: PhysMem;
  readonly mm: MmStruct;
  readonly dev: Device;
  readonly as: DeviceAddressSpace;
  readonly oracle: Oracle;
  /** The driver's update lock (its callback takes it). */
  readonly lock: Mutex;
  /** The driver's notifier ('mirror', over the whole address space), once inserted. */
  readonly sub: MmuIntervalNotifier;
  /** The callback's behaviour; tests change it between steps. */
  zap: ZapMode;
  /** Skip MIGRATE and EXCLUSIVE events owned by the device (its pgmap owner). */
  skipOwn: boolean;
  /** Events skipped whoever owns them (a buggy owner filter). */
  skipEvents: number[];
  /** Invalidations the callback saw: `${event}:${start}-${end}`. */
  readonly seen: string[];
}

export interface WorldOptions {
  readonly oracle?: OracleOptions;
  /** Declare the driver's notifier to the oracle (default true). */
  readonly declare?: boolean;
  /** The subscriptions to declare instead of ['mirror']. */
  readonly subs?: readonly string[];
  readonly strategy?: string;
  readonly seed?: number;
}

/** A fresh world; the driver's notifier is inserted by `insertDriver` from inside a task. */
export function world(opts: WorldOptions = {}): World {
  const engine = new Engine({ strategy: opts.strategy ?? 'fifo', seed: opts.seed ?? 0 });
  const phys = new PhysMem(engine, { frames: 512, maxDeviceFrames: 128 });
  const oracle = attachOracle(engine, opts.oracle ?? {});
  const mm = createMm(engine, phys, { name: 'mm' });
  const dev = new Device(engine, phys, { name: 'gpu0', memory: { frames: 32 } });
  const as = dev.createAddressSpace();
  oracle.watchDevice(dev, { as, mm, notifierSubs: opts.declare === false ? [] : (opts.subs ?? ['mirror']) });
  const w: World = {
    engine,
    phys,
    mm,
    dev,
    as,
    oracle,
    lock: new Mutex(engine, 'driver.update'),
    sub: new MmuIntervalNotifier('mirror'),
    zap: 'all',
    skipOwn: false,
    skipEvents: [],
    seen: [],
  };
  return w;
}

/** The test driver's invalidate callback (dmirror's shape, with the zap made configurable). */
async function invalidate(w: World, range: MmuNotifierRange, curSeq: number): Promise<boolean> {
  w.seen.push(`${range.event}:${range.start.toString(16)}-${range.end.toString(16)}`);
  const own = range.owner !== null && range.owner === w.dev.memory?.owner;
  if (w.skipOwn && own && (range.event === MMU_NOTIFY_MIGRATE || range.event === MMU_NOTIFY_EXCLUSIVE)) return true;
  if (w.skipEvents.includes(range.event)) return true;
  if (mmuNotifierRangeBlockable(range)) await w.lock.lock();
  else if (!w.lock.trylock()) return false;
  mmuIntervalSetSeq(w.sub, curSeq);
  const start = range.start;
  const end = Math.min(range.end, 2 ** 48);
  switch (w.zap) {
    case 'all':
      w.as.unmap(start, end);
      await w.dev.tlbInvalidate(w.as, start, end).wait();
      break;
    case 'everything':
      w.as.unmap(0, 2 ** 48);
      await w.dev.tlbInvalidateAll(w.as).wait();
      break;
    case 'pt-only':
      w.as.unmap(start, end);
      break;
    case 'no-fence-wait':
      w.as.unmap(start, end);
      w.dev.tlbInvalidate(w.as, start, end);
      break;
    case 'write-protect': {
      const ro: Array<[number, number]> = [];
      w.as.pageTable.forEach((vpn, pfn) => ro.push([vpn, pfn]), start / P, end / P);
      for (const [vpn, pfn] of ro) w.as.map(vpn * P, pfn, 0);
      await w.dev.tlbInvalidate(w.as, start, end).wait();
      break;
    }
    case 'none':
      break;
  }
  w.lock.unlock();
  return true;
}

/** Inserts the driver's notifier over the whole address space (call from a task). */
export async function insertDriver(w: World): Promise<void> {
  await mmuIntervalNotifierInsert(w.sub, w.mm, 0, ULONG_MAX_ADDR, { invalidate: (_s, r, seq) => invalidate(w, r, seq) });
}

/** mmap(BUF, n pages, RW, private) (call from a task). */
export async function mapBuf(w: World, pages: number, prot = RW, flags = PRIV): Promise<number> {
  return mmap(w.mm, BUF, pages * P, prot, flags | MAP_FIXED);
}

/** The pfn the CPU maps at `addr` (0 if none). */
export function cpuPfn(w: World, addr: number): number {
  return w.mm.pgtable.pfnAt(Math.floor(addr / P));
}

/** Runs `body` as task 'main' and returns the run's result (failed or not). */
export async function run(w: World, body: () => Promise<void>): Promise<RunResult> {
  w.engine.spawn('main', body);
  return w.engine.run();
}

/** Runs `body`; fails the test if the run fails. */
export async function runOk(w: World, body: () => Promise<void>): Promise<RunResult> {
  const r = await run(w, body);
  if (!r.ok) throw r.failure;
  return r;
}

/** Expects the run to have failed with a CoherencyViolation of `code` (`rule/check`); returns it. */
export function expectViolation(r: RunResult, code: string): CoherencyViolation {
  expect(r.ok, 'the run should have failed').toBe(false);
  expect(r.failure, `expected a CoherencyViolation, got ${String(r.failure)}`).toBeInstanceOf(CoherencyViolation);
  const v = r.failure as CoherencyViolation;
  expect(v.report.code).toBe(code);
  return v;
}

/** One device access as a one-warp job (joined). */
export async function devLoad(w: World, addr: number, size = 8): Promise<bigint> {
  const [v] = await w.dev.launch(w.as, {}, (ctx) => ctx.load(addr, size)).join();
  return v!;
}

export async function devStore(w: World, addr: number, value: bigint, size = 8): Promise<void> {
  await w.dev.launch(w.as, {}, (ctx) => ctx.store(addr, size, value)).join();
}

/**
 * Migrates the page at `addr` to the device's memory with migrate_vma (dmirror's
 * migrate_to_device for one page). `copy` false is the buggy driver that forgets to copy.
 * Returns the device pfn (0 if the page was not selected). Call from a task.
 */
export async function migrateToDevice(w: World, addr: number, copy = true): Promise<number> {
  const mm = w.mm;
  await mm.mmapLock.downRead();
  try {
    const src = new BigUint64Array(1);
    const dst = new BigUint64Array(1);
    const args = new MigrateVma({ mm, vma: mm.vmas.lookup(addr), start: addr, end: addr + P, src, dst, pgmapOwner: w.dev.memory!.owner, flags: MIGRATE_VMA_SELECT_SYSTEM });
    const ret = await migrateVmaSetup(args);
    if (ret !== 0) throw new Error(`migrate_vma_setup: ${ret}`);
    let d = 0;
    const s = src[0]!;
    if (s & MIGRATE_PFN_MIGRATE) {
      d = w.dev.memory!.allocPage();
      w.phys.trylockPage(d);
      const spage = migratePfnToPfn(s);
      if (copy && spage !== 0) w.phys.copyPage(d, spage);
      dst[0] = migratePfn(d) | (s & MIGRATE_PFN_WRITE);
    }
    await migrateVmaPages(args);
    await migrateVmaFinalize(args);
    return d;
  } finally {
    mm.mmapLock.upRead();
  }
}

/** Installs migrate_to_ram for the device's memory: dmirror_devmem_fault for one page (`copy` as above). */
export function installMigrateToRam(w: World, copy = true): void {
  w.dev.setMemoryOps({
    migrateToRam: async (vmf: VmFault): Promise<number> => {
      const args = new MigrateVma({
        mm: vmf.mm,
        vma: vmf.vma,
        start: vmf.address,
        end: vmf.address + P,
        src: new BigUint64Array(1),
        dst: new BigUint64Array(1),
        pgmapOwner: w.dev.memory!.owner,
        flags: MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
        faultPage: vmf.pfn,
      });
      if ((await migrateVmaSetup(args)) !== 0) return -EINVAL;
      const s = args.src![0]!;
      const spage = migratePfnToPfn(s);
      if (spage !== 0 && s & MIGRATE_PFN_MIGRATE) {
        const d = w.phys.allocPage();
        if (d < 0) return d;
        w.phys.trylockPage(d);
        if (copy) w.phys.copyPage(d, spage);
        args.dst![0] = migratePfn(d) | (s & MIGRATE_PFN_WRITE);
      }
      await migrateVmaPages(args);
      await migrateVmaFinalize(args);
      return 0;
    },
  });
}
