/**
 * The contract the mm rests on (src/mm/mm.ts): no PTE is changed or removed without an
 * invalidation that brackets it. Permission upgrades and fills (none -> present, and a
 * migration entry replaced by a page: remove_migration_ptes) need none, as in the kernel.
 *
 * PteContract checks it from the outside, through the trace and read-only page-table walks:
 * - 'notifier.invalidate_start' / '_end' give each invalidation's range and its [start, end]
 *   window in trace order (seq);
 * - at every scheduling point ('sched.switch', and 'run.end', and check()) it snapshots the
 *   whole page table of every watched mm and diffs it with the previous snapshot. Every change
 *   happened in the interval (previous check, this check); a change that needs an
 *   invalidation must lie inside a range of the same mm that was active at some point of
 *   that interval (started before this check, not ended before the previous one).
 * Since a task runs without interruption between two scheduling points, and withInvalidation
 * changes PTEs with no scheduling point between its last start callback and its first end
 * callback, this is exact enough to catch a change made outside every bracket: see the
 * negative tests, which prove the checker fails when it must.
 *
 * Granularity: changes are seen per interval between scheduling points. A change undone in
 * the same interval (a fill and its removal with no scheduling point between them) is
 * invisible; only the task that made it could have seen that entry, and no mm path does that.
 *
 * Only mms with notifier subscriptions emit invalidation events, so every watched mm gets an
 * interval notifier (a fork child right after fork returns, before anyone else can see it).
 */
import { describe, expect, it } from 'vitest';
import {
  MADV_DONTNEED,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_PRIVATE,
  MAP_SHARED,
  MREMAP_FIXED,
  MREMAP_MAYMOVE,
  type MmStruct,
  PAGE_SIZE,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
  PTE_KIND_MASK,
  PTE_PRESENT,
  PTE_PROTNONE,
  PTE_SWP_MIGRATION,
  PTE_WRITE,
  PhysMem,
  TASK_SIZE,
  cpuRead,
  cpuWrite,
  createMm,
  exitMm,
  fork,
  madvise,
  migratePages,
  mmap,
  mprotect,
  mremap,
  munmap,
  oomReapTaskMm,
  withInvalidation,
  zapRange,
} from '../../src/mm/index.js';
import { wrprotectRange } from '../../src/mm/mm.js';
import {
  MMU_NOTIFY_CLEAR,
  MmuIntervalNotifier,
  MmuNotifier,
  type MmuNotifierRange,
  mmuIntervalNotifierInsert, mmuIntervalSetSeq, mmuNotifierRangeBlockable, mmuNotifierRegister } from '../../src/notifier/index.js';
import { Completion, Engine, KernelError, type RunResult } from '../../src/sim/index.js';
import { bytes } from './helpers.js';

const P = PAGE_SIZE;
const RW = PROT_READ | PROT_WRITE;
const PRIV = MAP_PRIVATE | MAP_ANONYMOUS;
const USER_VPNS = TASK_SIZE / PAGE_SIZE;

/** One PTE change that no active invalidation of its mm covered. */
interface Violation {
  readonly mm: string;
  readonly addr: number;
  /** `pfn/bits` in hex, or `none`. */
  readonly before: string;
  readonly after: string;
  /** Why it needed an invalidation. */
  readonly why: string;
  /** Scheduling step at which it was seen (the change happened since the previous one). */
  readonly step: number;
}

interface ActiveRange {
  readonly mm: number;
  readonly id: number;
  readonly start: number;
  readonly end: number;
  readonly startSeq: number;
  endSeq: number | null;
}

/** pfn * 256 + bits: exact in a double (pfn is a uint32). */
type Entry = number;

function fmt(e: Entry | undefined): string {
  if (e === undefined) return 'none';
  return `${Math.floor(e / 256).toString(16)}/${(e % 256).toString(16)}`;
}

/**
 * Why changing `before` into `after` needs an invalidation, or null if it does not (the
 * kernel's rule: removals, frame changes and permission downgrades do; upgrades and fills do not).
 */
function needsInvalidation(before: Entry | undefined, after: Entry | undefined): string | null {
  if (before === undefined) return null; // none -> anything: a fill
  if (after === undefined) return 'removed';
  const ob = before % 256;
  const nb = after % 256;
  const opfn = Math.floor(before / 256);
  const npfn = Math.floor(after / 256);
  if (!(ob & PTE_PRESENT)) {
    // A migration entry maps nothing a secondary MMU can use: its replacement by a page is a
    // fill (remove_migration_ptes runs no notifier). Other swap-type entries (device-private,
    // device-exclusive) are mirrored by their device: any other change needs an invalidation.
    if ((ob & PTE_KIND_MASK) === PTE_SWP_MIGRATION && nb & PTE_PRESENT) return null;
    if (opfn !== npfn) return 'frame changed';
    if ((nb & PTE_KIND_MASK) !== (ob & PTE_KIND_MASK)) return 'entry kind changed';
    if (ob & PTE_WRITE && !(nb & PTE_WRITE)) return 'lost write';
    return null;
  }
  if (!(nb & PTE_PRESENT)) return 'present -> non-present';
  if (opfn !== npfn) return 'frame changed';
  if (ob & PTE_WRITE && !(nb & PTE_WRITE)) return 'lost write';
  if (!(ob & PTE_PROTNONE) && nb & PTE_PROTNONE) return 'became protnone';
  return null;
}

/**
 * Watches mms' page tables for changes not bracketed by an invalidation of the same mm.
 * Listens to the engine's trace from construction until dispose().
 */
class PteContract {
  readonly violations: Violation[] = [];
  /** Changes that needed an invalidation and had one (to prove the run was not vacuous). */
  covered = 0;
  /** Invalidations seen (started). */
  invalidations = 0;
  private readonly snaps = new Map<MmStruct, Map<number, Entry>>();
  private readonly ranges: ActiveRange[] = [];
  private lastSeq = -1;
  private readonly offs: Array<() => void> = [];

  constructor(private readonly engine: Engine) {
    const t = engine.trace;
    this.offs.push(
      t.on('notifier.invalidate_start', (e) => {
        this.invalidations++;
        this.ranges.push({ mm: e.mm, id: e.range, start: e.start, end: e.end, startSeq: e.seq, endSeq: null });
      }),
      t.on('notifier.invalidate_end', (e) => {
        const r = this.ranges.find((x) => x.mm === e.mm && x.id === e.range && x.endSeq === null);
        if (r !== undefined) r.endSeq = e.seq;
      }),
      t.on('sched.switch', (e) => this.checkAt(e.seq, e.step)),
      t.on('run.end', (e) => this.checkAt(e.seq, e.steps)),
    );
  }

  /** Starts watching `mm`: its current page table is the baseline (call before anyone else can change it). */
  watch(mm: MmStruct): void {
    this.snaps.set(mm, snapshotPt(mm));
  }

  /** Checks now (outside the trace), e.g. at the end of a test body. */
  check(): void {
    this.checkAt(Number.MAX_SAFE_INTEGER, this.engine.steps);
  }

  dispose(): void {
    for (const off of this.offs) off();
    this.offs.length = 0;
  }

  private checkAt(seq: number, step: number): void {
    const since = this.lastSeq;
    for (const [mm, prev] of this.snaps) {
      const cur = snapshotPt(mm);
      const vpns = new Set<number>([...prev.keys(), ...cur.keys()]);
      for (const vpn of vpns) {
        const before = prev.get(vpn);
        const after = cur.get(vpn);
        if (before === after) continue;
        const why = needsInvalidation(before, after);
        if (why === null) continue;
        const addr = vpn * PAGE_SIZE;
        const ok = this.ranges.some((r) => r.mm === mm.id && r.start <= addr && addr < r.end && r.startSeq < seq && (r.endSeq === null || r.endSeq > since));
        if (ok) this.covered++;
        else this.violations.push({ mm: mm.name, addr, before: fmt(before), after: fmt(after), why, step });
      }
      this.snaps.set(mm, cur);
    }
    this.lastSeq = seq;
    // Ranges that ended before this check can cover nothing later.
    for (let i = this.ranges.length - 1; i >= 0; i--) {
      const r = this.ranges[i]!;
      if (r.endSeq !== null && r.endSeq < seq) this.ranges.splice(i, 1);
    }
  }
}

/**
 * Every non-none entry of the user address space. A read-only walk: forEachLeaf frees only
 * leaves left with no entries, and the mm never leaves one behind at a scheduling point.
 */
function snapshotPt(mm: MmStruct): Map<number, Entry> {
  const out = new Map<number, Entry>();
  mm.pgtable.forEachLeaf(0, USER_VPNS, (leaf, from, to, base) => {
    for (let i = from; i < to; i++) {
      const b = leaf.bits[i]!;
      if (b !== 0) out.set(base + i, leaf.pfn[i]! * 256 + b);
    }
  });
  return out;
}

/** An interval notifier over the whole user space (it does what a driver must: set_seq). */
async function subscribe(mm: MmStruct): Promise<void> {
  const ret = await mmuIntervalNotifierInsert(new MmuIntervalNotifier(`mirror@${mm.name}`), mm, 0, TASK_SIZE, {
    invalidate(sub, _range, cur) {
      mmuIntervalSetSeq(sub, cur);
      return true;
    },
  });
  expect(ret).toBe(0);
}

/** Runs `body` in one task on a fresh world with a PteContract watching the mm. */
async function withContract(body: (w: { engine: Engine; mm: MmStruct; contract: PteContract }) => Promise<void>): Promise<PteContract> {
  const engine = new Engine({ strategy: 'fifo', seed: 0 });
  const phys = new PhysMem(engine, { frames: 256 });
  const mm = createMm(engine, phys, { name: 'mm' });
  const contract = new PteContract(engine);
  contract.watch(mm);
  engine.spawn('cpu0', async () => {
    await subscribe(mm);
    await body({ engine, mm, contract });
  });
  const r = await engine.run();
  if (!r.ok) throw r.failure;
  contract.dispose();
  return contract;
}

describe('PteContract: the checker itself', () => {
  it('reports a PTE zapped under the ptl with no invalidation', async () => {
    const X = 0x1000_0000;
    const c = await withContract(async ({ engine, mm }) => {
      await mmap(mm, X, 2 * P, RW, PRIV | MAP_FIXED);
      await cpuWrite(mm, X, bytes(1));
      await cpuWrite(mm, X + P, bytes(2));
      await engine.yield(); // the fill above is seen first (see the granularity note at the top)
      // The bug: zap_pte_range with no mmu_notifier_invalidate_range_start/end around it
      // (zapRange keeps the page counts right; only the bracket is missing).
      mm.ptl.lock();
      zapRange(mm, X + P, X + 2 * P);
      mm.ptl.unlock();
      await engine.yield();
    });
    expect(c.violations).toEqual([expect.objectContaining({ mm: 'mm', addr: X + P, after: 'none', why: 'removed' })]);
  });

  it('reports a write-protect with no invalidation, and one made after the invalidation of its range ended', async () => {
    const X = 0x1000_0000;
    const c = await withContract(async ({ engine, mm }) => {
      await mmap(mm, X, 2 * P, RW, PRIV | MAP_FIXED);
      await cpuWrite(mm, X, bytes(1));
      await cpuWrite(mm, X + P, bytes(2));
      mm.ptl.lock();
      wrprotectRange(mm, X, X + P);
      mm.ptl.unlock();
      await engine.yield();
      // An empty invalidation of X + P, then a scheduling point, then the change: too late.
      await withInvalidation(mm, MMU_NOTIFY_CLEAR, X + P, X + 2 * P, null, () => 0);
      await engine.yield();
      mm.ptl.lock();
      wrprotectRange(mm, X + P, X + 2 * P);
      mm.ptl.unlock();
      await engine.yield();
    });
    expect(c.violations.map((v) => [v.addr, v.why])).toEqual([
      [X, 'lost write'],
      [X + P, 'lost write'],
    ]);
  });

  it('accepts fills, permission upgrades and bracketed changes', async () => {
    const X = 0x1000_0000;
    const c = await withContract(async ({ engine, mm }) => {
      await mmap(mm, X, 2 * P, RW, PRIV | MAP_FIXED);
      await cpuRead(mm, X, 1); // none -> zero page
      await cpuWrite(mm, X + P, bytes(1)); // none -> page
      await mprotect(mm, X, 2 * P, PROT_READ); // downgrade inside PROTECTION_VMA
      await mprotect(mm, X, 2 * P, RW); // upgrade (write back on the exclusive page)
      await cpuWrite(mm, X, bytes(2)); // COW of the zero page inside CLEAR
      await migratePages(mm, X, X + 2 * P); // CLEAR, then migration entry -> new page
      await engine.yield();
    });
    expect(c.violations).toEqual([]);
    expect(c.covered).toBeGreaterThan(0);
  });
});

// ---- the randomized workload ----

/** The shared window both CPU tasks work in: 16 pages. */
const WIN = 0x2000_0000;
const WIN_PAGES = 16;

function pick<T>(engine: Engine, xs: readonly T[], label: string): T {
  return xs[engine.choose(xs.length, label)]!;
}

/** A page-aligned [start, start + pages) inside the window. */
function span(engine: Engine, maxPages = 4): [number, number] {
  const first = engine.choose(WIN_PAGES, 'page');
  const pages = 1 + engine.choose(Math.min(maxPages, WIN_PAGES - first), 'pages');
  return [WIN + first * P, pages * P];
}

/** KernelError (and SegvError, its subclass) are normal outcomes of a random call; anything else is not. */
async function tolerate(p: Promise<unknown>): Promise<void> {
  try {
    await p;
  } catch (e) {
    if (!(e instanceof KernelError)) throw e;
  }
}

const OPS = ['mmap', 'munmap', 'mprotect', 'madvise', 'mremap', 'fork', 'write', 'write', 'read', 'migrate', 'reap'] as const;

/** One random operation of a CPU task on `mm`. */
async function randomOp(engine: Engine, mm: MmStruct, contract: PteContract, stats: Map<string, number>): Promise<void> {
  const op = pick(engine, OPS, 'op');
  stats.set(op, (stats.get(op) ?? 0) + 1);
  switch (op) {
    case 'mmap': {
      const [a, len] = span(engine);
      const prot = pick(engine, [RW, RW, PROT_READ], 'prot');
      const flags = pick(engine, [PRIV, PRIV, MAP_SHARED | MAP_ANONYMOUS], 'flags') | MAP_FIXED;
      return tolerate(mmap(mm, a, len, prot, flags));
    }
    case 'munmap': {
      const [a, len] = span(engine, 8);
      return tolerate(munmap(mm, a, len));
    }
    case 'mprotect': {
      const [a, len] = span(engine);
      return tolerate(mprotect(mm, a, len, pick(engine, [PROT_NONE, PROT_READ, RW, RW], 'prot')));
    }
    case 'madvise': {
      const [a, len] = span(engine);
      return tolerate(madvise(mm, a, len, MADV_DONTNEED));
    }
    case 'mremap': {
      const [a, len] = span(engine);
      if (engine.chance(1, 2, 'mremap.fixed')) {
        const pages = 1 + engine.choose(4, 'newPages');
        const to = WIN + engine.choose(WIN_PAGES - pages + 1, 'to') * P;
        return tolerate(mremap(mm, a, len, pages * P, MREMAP_MAYMOVE | MREMAP_FIXED, to));
      }
      return tolerate(mremap(mm, a, len, (1 + engine.choose(4, 'newPages')) * P, 0));
    }
    case 'fork': {
      let child: MmStruct;
      try {
        child = await fork(mm, { name: `${mm.name}.child${stats.get('fork') ?? 0}` });
      } catch (e) {
        if (e instanceof KernelError) return;
        throw e;
      }
      contract.watch(child); // nobody else knows the child yet: its table is the baseline
      await subscribe(child);
      const [a] = span(engine, 1);
      await tolerate(cpuWrite(child, a, bytes(0xcc)));
      await tolerate(cpuRead(child, a, 1));
      return tolerate(exitMm(child));
    }
    case 'write': {
      const [a] = span(engine, 1);
      return tolerate(cpuWrite(mm, a + engine.choose(8, 'off') * 8, bytes(engine.choose(256, 'byte'))));
    }
    case 'read': {
      const [a] = span(engine, 1);
      return tolerate(cpuRead(mm, a, 16));
    }
    case 'migrate': {
      const [a, len] = span(engine, 8);
      return tolerate(migratePages(mm, a, a + len));
    }
    case 'reap':
      return tolerate(oomReapTaskMm(mm));
  }
}

interface WorkloadResult {
  readonly run: RunResult;
  readonly contract: PteContract;
  readonly stats: Map<string, number>;
}

/** Two CPU tasks doing random operations on one mm's window, then exit; the contract watches it all. */
async function workload(seed: number, opsPerTask: number): Promise<WorkloadResult> {
  const engine = new Engine({ strategy: 'random', seed });
  const phys = new PhysMem(engine, { frames: 512 });
  const mm = createMm(engine, phys, { name: 'mm' });
  const contract = new PteContract(engine);
  contract.watch(mm);
  const stats = new Map<string, number>();
  engine.spawn('setup', async () => {
    await subscribe(mm);
    // A classic notifier that sleeps in blockable callbacks, so other tasks run inside brackets.
    const nap = async (range: MmuNotifierRange): Promise<void> => {
      if (mmuNotifierRangeBlockable(range)) await engine.yield();
    };
    const kvm = new MmuNotifier(
      {
        async invalidateRangeStart(_s, range) {
          await nap(range);
          return 0;
        },
        async invalidateRangeEnd(_s, range) {
          await nap(range);
        },
      },
      'kvm',
    );
    expect(await mmuNotifierRegister(kvm, mm)).toBe(0);
    const cpus = [0, 1].map((i) =>
      engine.spawn(`cpu${i}`, async () => {
        for (let n = 0; n < opsPerTask; n++) await randomOp(engine, mm, contract, stats);
      }),
    );
    for (const t of cpus) await t.join();
    await exitMm(mm);
  });
  const run = await engine.run();
  contract.check();
  contract.dispose();
  return { run, contract, stats };
}

describe('the invalidation contract under a random two-CPU workload', () => {
  for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
    it(`seed ${seed}: no PTE changes or goes away outside an invalidation of its mm`, async () => {
      const { run, contract, stats } = await workload(seed, 60);
      if (!run.ok) throw run.failure;
      expect(contract.violations).toEqual([]);
      // Not vacuous: the run invalidated, and changes that needed it were seen covered.
      expect(contract.invalidations).toBeGreaterThan(10);
      expect(contract.covered).toBeGreaterThan(0);
      expect(stats.size).toBeGreaterThan(5);
    });
  }

  it('the workload is deterministic: the same seed gives the same schedule and the same checks', async () => {
    const a = await workload(3, 30);
    const b = await workload(3, 30);
    expect(b.run.schedule).toBe(a.run.schedule);
    expect(b.contract.covered).toBe(a.contract.covered);
    expect(b.contract.invalidations).toBe(a.contract.invalidations);
  });

  it('the checker fires inside the workload when one CPU clears PTEs behind the notifiers\' back', async () => {
    const engine = new Engine({ strategy: 'random', seed: 11 });
    const phys = new PhysMem(engine, { frames: 512 });
    const mm = createMm(engine, phys, { name: 'mm' });
    const contract = new PteContract(engine);
    contract.watch(mm);
    const stats = new Map<string, number>();
    let zapped = 0;
    engine.spawn('setup', async () => {
      await subscribe(mm);
      await mmap(mm, WIN, WIN_PAGES * P, RW, PRIV | MAP_FIXED);
      for (let i = 0; i < WIN_PAGES; i++) await cpuWrite(mm, WIN + i * P, bytes(i));
      const good = engine.spawn('cpu0', async () => {
        for (let n = 0; n < 20; n++) await randomOp(engine, mm, contract, stats);
      });
      const bad = engine.spawn('buggy', async () => {
        for (let n = 0; n < 5; n++) {
          await engine.yield();
          await mm.mmapLock.downRead();
          const a = WIN + engine.choose(WIN_PAGES, 'page') * P;
          mm.ptl.lock();
          zapped += zapRange(mm, a, a + P); // madvise(DONTNEED) without its CLEAR invalidation
          mm.ptl.unlock();
          mm.mmapLock.upRead();
        }
      });
      await good.join();
      await bad.join();
    });
    const run = await engine.run();
    contract.check();
    contract.dispose();
    if (!run.ok) throw run.failure;
    // Every buggy zap is caught, unless a correct CLEAR/UNMAP of the same page happened to be
    // in flight on the other CPU in the same interval (then the checker cannot tell them apart).
    expect(zapped).toBeGreaterThan(0);
    expect(contract.violations.length).toBeGreaterThan(0);
    expect(contract.violations.length).toBeLessThanOrEqual(zapped);
    for (const v of contract.violations) {
      expect(v.why).toBe('removed');
      expect(v.addr >= WIN && v.addr < WIN + WIN_PAGES * P).toBe(true);
    }
  });
});

describe('a bug the random workload found (seeds 127, 160, 204, 215, 235, 360, 384, 443, 452 at 120 ops per task)', () => {
  // src/mm/migrate.ts locks the page (trylockPage) without taking a reference, then sleeps in
  // the CLEAR invalidation's start callbacks with the PTE still present. A madvise(DONTNEED)
  // (or munmap, or the OOM reaper) on the other CPU zaps the PTE meanwhile and drops the
  // page's last reference: the page is freed while PG_locked ("BUG: bad page state").
  // The kernel cannot get there: migrate_pages works on folios isolated from the LRU
  // (folio_isolate_lru / isolate_folio_to_list take a reference), and the reference is only
  // dropped after the folio is unlocked (mm/migrate.c migrate_folio_done / putback).
  it('migratePages holds a reference on the page it locked: a DONTNEED racing its CLEAR invalidation frees nothing under it', async () => {
    const X = 0x1000_0000;
    const engine = new Engine({ strategy: 'fifo', seed: 0 });
    const phys = new PhysMem(engine, { frames: 64 });
    const mm = createMm(engine, phys, { name: 'mm' });
    const zapped = new Completion(engine, 'zapped');
    let moved = -1;
    let framesBefore = -1;
    engine.spawn('setup', async () => {
      await mmap(mm, X, P, RW, PRIV | MAP_FIXED);
      framesBefore = phys.usedSystemFrames();
      await cpuWrite(mm, X, bytes(1));
      // A driver whose invalidate_range_start sleeps (a mutex) while the other CPU runs:
      // here, until that CPU's madvise has returned.
      let migratorWaited = false;
      const sleepy = new MmuNotifier(
        {
          async invalidateRangeStart() {
            if (engine.current?.name === 'migrator' && !migratorWaited) {
              migratorWaited = true;
              await zapped.waitForCompletion();
            }
            return 0;
          },
        },
        'sleepy',
      );
      expect(await mmuNotifierRegister(sleepy, mm)).toBe(0);
      const migrator = engine.spawn('migrator', async () => {
        moved = await migratePages(mm, X, X + P);
      });
      const dontneed = engine.spawn('dontneed', async () => {
        await madvise(mm, X, P, MADV_DONTNEED);
        zapped.complete();
      });
      await migrator.join();
      await dontneed.join();
    });
    const run = await engine.run();
    if (!run.ok) throw run.failure;
    expect(moved).toBe(0); // the PTE went away before the migration entry could be installed
    expect(phys.usedSystemFrames()).toBe(framesBefore); // the page was freed, once, after unlock
  });
});
