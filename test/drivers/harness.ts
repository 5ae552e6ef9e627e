/**
 * The driver race harness: every mirroring driver, with device kernels running, under a
 * concurrent munmap, mprotect, madvise(DONTNEED), fork, CPU page migration, device migration or
 * exit, across many schedules; device reads must see CPU writes and CPU reads device writes.
 *
 * A driver joins through a small adapter (DriverUnderTest -> BoundDriver): bind to a world's mm,
 * launch device kernels on the mirror, optionally migrate pages to device memory, unbind. The
 * harness owns the world (engine, physical memory, mm), the buffer, the CPU tasks, the device
 * kernel and the checks; the adapter owns nothing but its driver.
 *
 * One run of a case (a Program: explore() runs it under many seeds and strategies):
 *
 *   main (CPU)                        device job (W warps, page i to warp i % W)   racer
 *   bind; mmap N pages; write round 0                                              wait for a chosen
 *   launch; spawn racer                                                            tick, sleep a
 *   round r = 1..R:                                                                chosen jitter,
 *     write word0 of every page  ---> wait cpuRound >= r                           op(raced pages)
 *     cpuRound = r                     load word0 of page r-1 (all warps: duplicates)
 *     wait all warps done r  <-------  per own page: think; load word0 (must see the CPU's value),
 *     read word1, word3 of every page    load word2, store word1, atomicAdd word3; done r
 *       (must see the device's values)
 *   join job; unbind; exit (fork: the child too); usedSystemFrames back to its baseline
 *
 * The op's start is a chosen tick (ticks: see below) of the protocol plus a chosen jitter in
 * virtual time, so that it lands anywhere: between accesses, during a fault's service, during
 * a shootdown. Every choice goes through engine.choose, so a schedule string replays it.
 *
 * Words of a page: 0 CPU->device, 1 device->CPU, 2 the fork child's own word (the parent's
 * device must read 0 there), 3 a device atomic counter.
 *
 * What is legal, per case (R = the raced pages; "started"/"done": the op's call/return):
 * - munmap(R): a CPU access to R may SEGV once started; the device job may be killed
 *   (DeviceFaultError, any access) by a fault on R once started; a device access to R that
 *   begins after done must not succeed. Values: exact.
 * - mprotect(R, PROT_READ): CPU writes to R may SEGV once started; the job may be killed by a
 *   write or atomic on R once started; a device store or atomic to R that begins after done
 *   must not succeed (it must fault and be cancelled, never land). Values: exact.
 * - madvise(R, DONTNEED): nothing fails; a read of a word of R may return 0 instead of the last
 *   value written when the zap may have fallen between that write and the read (started before
 *   the read returned, not done before the write landed). Otherwise exact.
 * - fork: nothing fails; the parent is exact (and never sees the child's word 2); the child's
 *   view of each word is a value written before fork returned and not older than the last one
 *   written before fork started: later parent writes, by the CPU or the device, are invisible.
 * - cpu-migration(R), device-migration(R): nothing fails; values exact.
 * - exit: the racer ("exiter") asks main to stop, waits until main stopped at its next access
 *   or wait (exit_group kills the other threads first: no CPU access races exit_mmap), then
 *   calls exitMm while the device runs; the job may be killed by any fault once started; a
 *   device access that begins after done must not succeed; unbind afterwards must end every
 *   task (the engine reports a task left blocked as a deadlock) and free every frame.
 * "Exact": a device load returns the CPU's last write, a CPU read the device's last write, an
 * atomic's old value the last counter value. Ticks (a counter bumped at each recorded event,
 * in the same synchronous step as the access) order accesses and the op.
 * Every case also runs the frame oracle (unless disabled): at each 'device.access' the CPU page
 * table of the mm must map that frame at that address (present and accessible, or a
 * device-private / device-exclusive entry of it), writable for a store or atomic; a load may
 * also read the source frame of a migration entry (locked, its data intact). It catches a
 * stale device TLB or page table even when the stale access happens to read the right bytes.
 * A violation throws HarnessViolation in the task that sees it (or in the trace listener): the
 * run fails, and raceFailureMessage prints its schedule string for replay().
 *
 * Locks: none of its own; harness state changes synchronously between scheduling points;
 * tasks wait on two WaitQueues: `progress` (rounds, exit) and `tickWq` (the racer's tick).
 * Cost: about 1 ms a run (12 pages, 3 warps, 3 rounds: 800-1200 scheduling steps).
 */
import {
  DeviceFaultError,
  type DeviceJob,
  type DeviceKernel,
  type Engine,
  type ExploreResult,
  type LaunchOptions,
  MADV_DONTNEED,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  type MmStruct,
  PAGE_SIZE,
  PROT_READ,
  PROT_WRITE,
  PTE_KIND_MASK,
  PTE_PRESENT,
  PTE_PROTNONE,
  PTE_SWP_DEVICE_EXCLUSIVE,
  PTE_SWP_DEVICE_PRIVATE,
  PTE_SWP_MIGRATION,
  PTE_WRITE,
  PhysMem,
  type Program,
  type RunResult,
  SegvError,
  WaitQueue,
  type WarpContext,
  cpuRead64,
  cpuWrite64,
  createMm,
  exitMm,
  explore,
  fork,
  madvise,
  migratePages,
  mmap,
  mprotect,
  munmap,
  replay,
} from 'hmm-emu';

// ---- the adapter ----

/** What a case runs in: one engine, its physical memory and the mm the driver mirrors. */
export interface HarnessWorld {
  readonly engine: Engine;
  readonly phys: PhysMem;
  readonly mm: MmStruct;
}

/** Optional driver abilities that enable cases. */
export type DriverFeature = 'device-migration';

/**
 * A driver bound to a world's mm. `launch` takes (options, kernel) as Device.launch does; the
 * harness launches one job per run, after its mmap. `unbind` may run after the mm exited (the
 * exit case) and must then still end every task of the driver.
 */
export interface BoundDriver {
  /** Launches a device kernel on the mirror of the world's mm (as Device.launch). */
  launch<T>(opts: LaunchOptions, kernel: DeviceKernel<T>): DeviceJob<T>;
  /**
   * Migrates [addr, addr + npages pages) of the mm to device memory (migrate_vma). Required
   * with the 'device-migration' feature. Returns what the driver's call returns (0, a page
   * count or a negative errno): the harness only checks that the data stays coherent.
   */
  deviceMigrate?(addr: number, npages: number): Promise<number>;
  /** Stops mirroring; afterwards no task of the driver may remain blocked. */
  unbind(): Promise<void>;
}

/**
 * A driver under test: its name, what it supports (known before binding, so that a case that
 * does not apply is skipped without building a world), and how to bind it.
 */
export interface DriverUnderTest {
  readonly name: string;
  /** Optional features (which cases apply). */
  readonly supports: ReadonlySet<DriverFeature>;
  /** Device frames PhysMem must leave room for (the driver's device memory). Default 0. */
  readonly deviceFrames?: number;
  /** Binds to world.mm. Runs in a task (may sleep). */
  bind(world: HarnessWorld): Promise<BoundDriver>;
}

// ---- cases ----

export const RACE_CASES = ['munmap', 'mprotect', 'madvise', 'fork', 'cpu-migration', 'device-migration', 'exit'] as const;
export type RaceCase = (typeof RACE_CASES)[number];

/** The feature a case needs, if any. */
export function caseRequires(kase: RaceCase): DriverFeature | null {
  return kase === 'device-migration' ? 'device-migration' : null;
}

/** Whether `driver` can run `kase`. */
export function caseApplies(driver: DriverUnderTest, kase: RaceCase): boolean {
  const need = caseRequires(kase);
  return need === null || driver.supports.has(need);
}

/** Options of a case run. Every field is optional; each says its default. */
export interface RaceOptions {
  /** Pages in the buffer. Default 12. */
  readonly pages?: number;
  /** The raced pages [lo, hi). Default [3, 9). */
  readonly raced?: readonly [number, number];
  /** Warps of the device kernel. Default 3. */
  readonly warps?: number;
  /** Handshake rounds after the initial CPU write. Default 3. */
  readonly rounds?: number;
  /** Run the frame oracle on every device access. Default true. */
  readonly oracle?: boolean;
  /** After its chosen tick, the op waits a chosen multiple in [0, jitterSteps) of jitterNs (virtual ns). Default 100. */
  readonly jitterNs?: number;
  /** Default 24. */
  readonly jitterSteps?: number;
  /** Virtual ns a warp computes between two pages (spreads its accesses in time). Default 50. */
  readonly thinkNs?: number;
  /**
   * Called with each run's world as soon as it is built, before any task runs: where a test
   * attaches an observer of the whole run, such as the coherency oracle of src/check
   * (attachOracle), which must see the world from its first event. Default: none.
   */
  readonly onWorld?: (world: HarnessWorld) => void;
}

interface Resolved {
  readonly pages: number;
  readonly lo: number;
  readonly hi: number;
  readonly warps: number;
  readonly rounds: number;
  readonly oracle: boolean;
  readonly jitterNs: number;
  readonly jitterSteps: number;
  readonly thinkNs: number;
}

function resolve(o: RaceOptions): Resolved {
  const pages = o.pages ?? 12;
  const [lo, hi] = o.raced ?? [3, 9];
  const r: Resolved = {
    pages,
    lo,
    hi,
    warps: o.warps ?? 3,
    rounds: o.rounds ?? 3,
    oracle: o.oracle ?? true,
    jitterNs: o.jitterNs ?? 100,
    jitterSteps: o.jitterSteps ?? 24,
    thinkNs: o.thinkNs ?? 50,
  };
  if (!(Number.isInteger(pages) && pages >= 1 && Number.isInteger(lo) && Number.isInteger(hi) && lo >= 0 && lo < hi && hi <= pages)) {
    throw new Error(`race options: bad pages ${pages} / raced [${lo}, ${hi})`);
  }
  return r;
}

/** A broken protocol: the message says what was seen and what was legal. */
export class HarnessViolation extends Error {
  override readonly name = 'HarnessViolation';
}

/** What may fail, per case (see the header). */
interface Rules {
  /** The op applies to every page (fork, exit) rather than [lo, hi). */
  readonly wholeMm: boolean;
  readonly cpuMayFail: (kind: 'read' | 'write') => boolean;
  readonly deviceMayDie: (access: string) => boolean;
  readonly deviceMustFailAfter: (kind: 'load' | 'store' | 'atomic') => boolean;
  readonly mayZero: boolean;
}

const NEVER = (): boolean => false;
const ALWAYS = (): boolean => true;

function rulesOf(kase: RaceCase): Rules {
  switch (kase) {
    case 'munmap':
      return { wholeMm: false, cpuMayFail: ALWAYS, deviceMayDie: ALWAYS, deviceMustFailAfter: ALWAYS, mayZero: false };
    case 'mprotect':
      return {
        wholeMm: false,
        cpuMayFail: (k) => k === 'write',
        deviceMayDie: (a) => a === 'write' || a === 'atomic',
        deviceMustFailAfter: (k) => k !== 'load',
        mayZero: false,
      };
    case 'madvise':
      return { wholeMm: false, cpuMayFail: NEVER, deviceMayDie: NEVER, deviceMustFailAfter: NEVER, mayZero: true };
    case 'exit':
      return { wholeMm: true, cpuMayFail: NEVER, deviceMayDie: ALWAYS, deviceMustFailAfter: ALWAYS, mayZero: false };
    case 'fork':
      return { wholeMm: true, cpuMayFail: NEVER, deviceMayDie: NEVER, deviceMustFailAfter: NEVER, mayZero: false };
    case 'cpu-migration':
    case 'device-migration':
      return { wholeMm: false, cpuMayFail: NEVER, deviceMayDie: NEVER, deviceMustFailAfter: NEVER, mayZero: false };
  }
}

const W_CPU = 0;
const W_DEV = 1;
const W_CHILD = 2;
const W_ATOMIC = 3;
const NWORDS = 4;

function cpuVal(round: number, page: number): bigint {
  return 0xc0_0000n + BigInt(round * 0x100 + page + 1);
}
function devVal(round: number, page: number): bigint {
  return 0xd0_0000n + BigInt(round * 0x100 + page + 1);
}
function childVal(page: number): bigint {
  return 0xf0_0000n + BigInt(page + 1);
}
const hex = (n: number | bigint): string => `0x${n.toString(16)}`;

/** A write as it landed: its value and the tick of the instant it touched memory. */
interface WriteRec {
  readonly value: bigint;
  readonly end: number;
  readonly by: string;
}

/** The state of one run (one program invocation). */
class RaceRun {
  private tick = 0;
  opBegin: number | null = null;
  opEnd: number | null = null;
  /** writes[page][word], in landing order; entry 0 is the initial 0. */
  readonly writes: WriteRec[][][];
  /** Completed rounds per warp (Infinity: the warp ended). */
  readonly warpDone: number[];
  cpuRound = 0;
  killed: DeviceFaultError | null = null;
  /** Main finished its rounds and the job ended: the racer stops waiting for its tick. */
  allDone = false;
  /** exit: the exiter asked main to stop touching memory. */
  exitRequested = false;
  /** Main left its rounds (done or stopped for exit). */
  mainStopped = false;
  readonly progress: WaitQueue;
  /** The racer waits here for its chosen tick (woken at every tick). */
  readonly tickWq: WaitQueue;
  base = 0;

  constructor(
    readonly kase: RaceCase,
    readonly driver: string,
    readonly o: Resolved,
    readonly rules: Rules,
    readonly world: HarnessWorld,
  ) {
    this.writes = [];
    for (let p = 0; p < o.pages; p++) {
      const words: WriteRec[][] = [];
      for (let w = 0; w < NWORDS; w++) words.push([{ value: 0n, end: 0, by: 'initial' }]);
      this.writes.push(words);
    }
    this.warpDone = new Array<number>(o.warps).fill(0);
    this.progress = new WaitQueue(world.engine, 'harness.progress');
    this.tickWq = new WaitQueue(world.engine, 'harness.tick');
  }

  /** Ticks of a whole run: the initial writes, then per round a shared load per warp, and per page one CPU write, two CPU reads and four device accesses of two ticks each. */
  get expectedTicks(): number {
    return this.o.pages + this.o.rounds * (2 * this.o.warps + 11 * this.o.pages);
  }

  now(): number {
    this.tickWq.wakeUpAll();
    return ++this.tick;
  }

  /** Waits until tick `t` passed (or the run's work is over). */
  async untilTick(t: number): Promise<void> {
    await this.tickWq.waitEvent(() => this.tick >= t || this.allDone);
  }

  addr(page: number, word: number): number {
    return this.base + page * PAGE_SIZE + word * 8;
  }

  raced(page: number): boolean {
    return this.rules.wholeMm || (page >= this.o.lo && page < this.o.hi);
  }

  violation(msg: string): never {
    const op = `op ${this.opBegin === null ? 'not started' : this.opEnd === null ? `started at tick ${this.opBegin}` : `ran ticks ${this.opBegin}..${this.opEnd}`}`;
    throw new HarnessViolation(`${this.driver}/${this.kase}: ${msg} (${op}, task ${this.world.engine.current?.name ?? '-'})`);
  }

  record(page: number, word: number, value: bigint, end: number, by: string): void {
    this.writes[page]![word]!.push({ value, end, by });
  }

  last(page: number, word: number): WriteRec {
    const ws = this.writes[page]![word]!;
    return ws[ws.length - 1]!;
  }

  /** Checks a value read at tick `end` against the last write (and 0 where the zap may have fallen in between). */
  checkRead(who: string, page: number, word: number, v: bigint, end: number): void {
    const w = this.last(page, word);
    if (v === w.value) return;
    if (v === 0n && this.rules.mayZero && this.raced(page) && this.opBegin !== null && this.opBegin < end && (this.opEnd === null || this.opEnd > w.end)) return;
    this.violation(`${who} read ${hex(v)} at page ${page} word ${word}, but the last write was ${hex(w.value)} by ${w.by} at tick ${w.end}${this.rules.mayZero && this.raced(page) ? ' (and 0 was not legal)' : ''}`);
  }

  /** A device access that began at `begin` and succeeded. */
  checkDeviceSuccess(kind: 'load' | 'store' | 'atomic', page: number, begin: number): void {
    if (this.raced(page) && this.opEnd !== null && begin > this.opEnd && this.rules.deviceMustFailAfter(kind)) {
      this.violation(`device ${kind} at page ${page} began at tick ${begin}, after the ${this.kase} returned, and succeeded: it must fault and be cancelled`);
    }
  }

  /** A CPU access failed with `err`. */
  checkCpuFailure(kind: 'read' | 'write', page: number, err: unknown): void {
    if (err instanceof SegvError && this.raced(page) && this.opBegin !== null && this.rules.cpuMayFail(kind)) return;
    this.violation(`CPU ${kind} at page ${page} failed: ${err instanceof Error ? err.message : String(err)}`);
  }

  /** The device job was killed (seen by a warp). */
  checkKill(err: DeviceFaultError): void {
    if (this.killed === null) this.killed = err;
    const page = Math.floor((err.address - this.base) / PAGE_SIZE);
    if (this.opBegin !== null && this.rules.deviceMayDie(err.access) && page >= 0 && page < this.o.pages && this.raced(page)) return;
    this.violation(`device job killed: ${err.message} (page ${page})`);
  }
}

// ---- the frame oracle ----

function attachOracle(run: RaceRun, mm: MmStruct): void {
  const pt = mm.pgtable;
  run.world.engine.trace.on('device.access', (ev) => {
    const vpn = Math.floor(ev.addr / PAGE_SIZE);
    const b = pt.bitsAt(vpn);
    const cpfn = pt.pfnAt(vpn);
    const kind = b & PTE_KIND_MASK;
    let ok: boolean;
    if (b & PTE_PRESENT) ok = !(b & PTE_PROTNONE) && cpfn === ev.pfn && (!ev.write || (b & PTE_WRITE) !== 0);
    else if (kind === PTE_SWP_DEVICE_PRIVATE || kind === PTE_SWP_DEVICE_EXCLUSIVE) ok = cpfn === ev.pfn && (!ev.write || (b & PTE_WRITE) !== 0);
    // A page under migration: its source frame is locked and still holds the data, so a read
    // of it is coherent (a driver may keep its mapping through its own migrate_vma); a write
    // could land after the copy and be lost.
    else if (kind === PTE_SWP_MIGRATION) ok = cpfn === ev.pfn && !ev.write;
    else ok = false;
    if (!ok) {
      run.violation(
        `[oracle] device ${ev.kind} at ${hex(ev.addr)} (job ${ev.job} warp ${ev.warp}, tlb ${ev.tlbHit ? 'hit' : 'walk'}) touched pfn ${ev.pfn}, ` +
          `but the CPU entry there is ${b === 0 ? 'none' : `pfn ${cpfn} bits ${hex(b)}`}`,
      );
    }
  });
}

// ---- the program ----

async function cpuWriteChecked(run: RaceRun, mm: MmStruct, page: number, word: number, value: bigint): Promise<boolean> {
  try {
    await cpuWrite64(mm, run.addr(page, word), value);
  } catch (err) {
    run.checkCpuFailure('write', page, err);
    return false;
  }
  run.record(page, word, value, run.now(), 'cpu');
  return true;
}

async function cpuReadChecked(run: RaceRun, mm: MmStruct, page: number, word: number): Promise<void> {
  let v: bigint;
  try {
    v = await cpuRead64(mm, run.addr(page, word));
  } catch (err) {
    run.checkCpuFailure('read', page, err);
    return;
  }
  run.checkRead('CPU', page, word, v, run.now());
}

/** The device kernel: every warp handshakes with main round by round over its pages. */
function deviceKernel(run: RaceRun): DeviceKernel<void> {
  return async (ctx: WarpContext) => {
    const w = ctx.warp;
    const o = run.o;
    try {
      for (let r = 1; r <= o.rounds; r++) {
        await run.progress.waitEvent(() => run.cpuRound >= r);
        // Every warp reads one shared page first: the same page faults from every warp at once
        // (duplicate records in one batch).
        const s = (r - 1) % o.pages;
        let b = run.now();
        const vs = await ctx.load(run.addr(s, W_CPU), 8);
        let e = run.now();
        run.checkDeviceSuccess('load', s, b);
        run.checkRead('device', s, W_CPU, vs, e);
        for (let p = w; p < o.pages; p += o.warps) {
          if (o.thinkNs > 0) await ctx.device.engine.sleep(o.thinkNs);
          b = run.now();
          const v0 = await ctx.load(run.addr(p, W_CPU), 8);
          e = run.now();
          run.checkDeviceSuccess('load', p, b);
          run.checkRead('device', p, W_CPU, v0, e);
          b = run.now();
          const v2 = await ctx.load(run.addr(p, W_CHILD), 8);
          e = run.now();
          run.checkDeviceSuccess('load', p, b);
          run.checkRead('device', p, W_CHILD, v2, e);
          b = run.now();
          await ctx.store(run.addr(p, W_DEV), 8, devVal(r, p));
          e = run.now();
          run.checkDeviceSuccess('store', p, b);
          run.record(p, W_DEV, devVal(r, p), e, `device r${r}`);
          b = run.now();
          const old = await ctx.atomicAdd(run.addr(p, W_ATOMIC), 8, 1);
          e = run.now();
          run.checkDeviceSuccess('atomic', p, b);
          run.checkRead('device atomic', p, W_ATOMIC, old, e);
          run.record(p, W_ATOMIC, old + 1n, e, `device atomic r${r}`);
        }
        run.warpDone[w] = r;
        run.progress.wakeUpAll();
      }
    } catch (err) {
      if (!(err instanceof DeviceFaultError)) throw err;
      run.checkKill(err);
    } finally {
      run.warpDone[w] = Infinity;
      run.progress.wakeUpAll();
    }
  };
}

/** The racing operation of `kase` (not exit: main does that). */
async function racingOp(run: RaceRun, bound: BoundDriver, mm: MmStruct): Promise<MmStruct | null> {
  const { lo, hi } = run.o;
  const start = run.addr(lo, 0);
  const len = (hi - lo) * PAGE_SIZE;
  switch (run.kase) {
    case 'munmap':
      await munmap(mm, start, len);
      return null;
    case 'mprotect':
      await mprotect(mm, start, len, PROT_READ);
      return null;
    case 'madvise':
      await madvise(mm, start, len, MADV_DONTNEED);
      return null;
    case 'cpu-migration':
      await migratePages(mm, start, start + len);
      return null;
    case 'device-migration':
      if (bound.deviceMigrate === undefined) throw new Error(`${run.driver}: device-migration case without deviceMigrate`);
      await bound.deviceMigrate(start, hi - lo);
      return null;
    case 'fork':
      return fork(mm, { name: 'child' });
    case 'exit':
      await exitMm(mm);
      return null;
  }
}

/** Checks the fork child's words: written before fork returned, not older than the last write before it started. */
async function checkChild(run: RaceRun, child: MmStruct): Promise<void> {
  const begin = run.opBegin!;
  const end = run.opEnd!;
  for (let p = 0; p < run.o.pages; p++) {
    for (const word of [W_CPU, W_DEV, W_ATOMIC]) {
      const ws = run.writes[p]![word]!;
      let k0 = 0;
      for (let j = 0; j < ws.length; j++) if (ws[j]!.end < begin) k0 = j;
      const legal = ws.filter((w, j) => j >= k0 && w.end < end).map((w) => w.value);
      const v = await cpuRead64(child, run.addr(p, word));
      if (!legal.includes(v)) {
        run.violation(`fork child read ${hex(v)} at page ${p} word ${word}; legal: ${legal.map(hex).join(', ')} (writes: ${ws.map((w) => `${hex(w.value)}@${w.end}`).join(' ')})`);
      }
    }
    const own = await cpuRead64(child, run.addr(p, W_CHILD));
    if (own !== childVal(p)) run.violation(`fork child read ${hex(own)} in its own word of page ${p}, wrote ${hex(childVal(p))}`);
  }
}

/**
 * Main's CPU side of the handshake. In the exit case it stops at its next access or wait once
 * the exiter asked (the kernel kills the other threads before exit_mmap: none touches memory
 * after), so that exitMm races only with the device.
 */
async function cpuRounds(run: RaceRun, mm: MmStruct): Promise<void> {
  const o = run.o;
  try {
    for (let r = 1; r <= o.rounds; r++) {
      for (let p = 0; p < o.pages; p++) {
        if (run.exitRequested) return;
        await cpuWriteChecked(run, mm, p, W_CPU, cpuVal(r, p));
      }
      run.cpuRound = r;
      run.progress.wakeUpAll();
      await run.progress.waitEvent(() => run.warpDone.every((d) => d >= r) || run.exitRequested);
      for (let p = 0; p < o.pages; p++) {
        if (run.exitRequested) return;
        await cpuReadChecked(run, mm, p, W_DEV);
        await cpuReadChecked(run, mm, p, W_ATOMIC);
      }
    }
  } finally {
    // Let the device run whatever rounds remain, whatever happened here.
    run.cpuRound = Infinity;
    run.mainStopped = true;
    run.progress.wakeUpAll();
  }
}

/** The program of one run of `kase` on `driver`. */
export function raceProgram(driver: DriverUnderTest, kase: RaceCase, options: RaceOptions = {}): Program {
  const o = resolve(options);
  const rules = rulesOf(kase);
  if (!caseApplies(driver, kase)) throw new Error(`${driver.name} does not support ${kase} (needs ${caseRequires(kase)})`);
  return (engine: Engine) => {
    const phys = new PhysMem(engine, { frames: 1024, maxDeviceFrames: driver.deviceFrames ?? 0 });
    const mm = createMm(engine, phys, { name: 'proc' });
    const world: HarnessWorld = { engine, phys, mm };
    const run = new RaceRun(kase, driver.name, o, rules, world);
    options.onWorld?.(world);
    if (o.oracle) attachOracle(run, mm);
    engine.spawn('main', async () => {
      const baseline = phys.usedSystemFrames();
      const bound = await driver.bind(world);
      run.base = await mmap(mm, 0, o.pages * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      for (let p = 0; p < o.pages; p++) await cpuWriteChecked(run, mm, p, W_CPU, cpuVal(0, p));
      const job = bound.launch({ warps: o.warps, name: 'k' }, deviceKernel(run));
      const forked: { child: MmStruct | null } = { child: null };
      const racer = engine.spawn(kase === 'exit' ? 'exiter' : 'racer', async () => {
        // The op starts at a chosen point of the protocol (a tick), then races with it.
        await run.untilTick(engine.choose(run.expectedTicks, 'harness op tick'));
        // Then a chosen delay within about one device fault round trip, so that the op can
        // also land while a fault is being serviced (ticks only move between accesses).
        await engine.sleep(engine.choose(o.jitterSteps, 'harness op jitter') * o.jitterNs);
        if (kase === 'exit') {
          // exit_group: the other threads die first (main stops at its next access).
          run.exitRequested = true;
          run.progress.wakeUpAll();
          await run.progress.waitEvent(() => run.mainStopped);
        }
        run.opBegin = run.now();
        const child = await racingOp(run, bound, mm);
        run.opEnd = run.now();
        forked.child = child;
        if (child === null) return;
        // The child writes its own word later (its COW break copies the shared frame then).
        await run.untilTick(run.opEnd + engine.choose(run.expectedTicks, 'harness child tick'));
        for (let p = 0; p < o.pages; p++) await cpuWrite64(child, run.addr(p, W_CHILD), childVal(p));
      });
      await cpuRounds(run, mm);
      try {
        await job.join();
        if (run.killed !== null) run.violation('the job was killed but join did not throw');
      } catch (err) {
        if (!(err instanceof DeviceFaultError)) throw err;
        if (run.killed === null) run.checkKill(err); // killed with no warp left to see it
      }
      run.allDone = true;
      run.tickWq.wakeUpAll();
      await racer.join();
      const child = forked.child;
      if (child !== null) await checkChild(run, child);
      await bound.unbind();
      if (mm.state !== 'dead') await exitMm(mm);
      if (child !== null) await exitMm(child);
      const used = phys.usedSystemFrames();
      if (used !== baseline) run.violation(`frame leak: ${used} system frames in use after unbind and exit, ${baseline} before bind`);
    });
  };
}

/** Seeds per strategy of a full case exploration. */
export interface RaceSeeds {
  /** Runs under 'random'. Default 250. */
  readonly random?: number;
  /** Runs under `pct`. Default 250. */
  readonly pct?: number;
  /** The PCT spec. Default 'pct:3'. */
  readonly pctSpec?: string;
  /** First seed. Default 1. */
  readonly seed?: number;
  /** Run-away guard per run (scheduling steps). Default 200,000. */
  readonly maxSteps?: number;
}

/** The outcome of exploring one case under both strategies. */
export interface RaceReport {
  readonly driver: string;
  readonly kase: RaceCase;
  /** Runs made in all. */
  readonly runs: number;
  readonly random: ExploreResult;
  readonly pct: ExploreResult;
  /** The first failing run (random first), or null. */
  readonly firstFailure: RunResult | null;
  /** Its 1-based index in its strategy's exploration, and the strategy. */
  readonly firstFailureAt: { readonly strategy: 'random' | 'pct'; readonly index: number } | null;
  /** The longest run, in scheduling steps. */
  readonly maxSteps: number;
}

/**
 * Explores `kase` on `driver` under `random` then `pct` seeds, stopping each at its first
 * failure. Runs are independent: run i of a strategy uses seed `seed + i`.
 */
export async function exploreCase(driver: DriverUnderTest, kase: RaceCase, seeds: RaceSeeds = {}, options: RaceOptions = {}): Promise<RaceReport> {
  const program = raceProgram(driver, kase, options);
  const seed = seeds.seed ?? 1;
  const maxSteps = seeds.maxSteps ?? 200_000;
  let longest = 0;
  const onRun = (r: RunResult): void => {
    if (r.steps > longest) longest = r.steps;
  };
  const random = await explore(program, { runs: seeds.random ?? 250, strategy: 'random', seed, maxSteps, onRun });
  const pct = await explore(program, { runs: seeds.pct ?? 250, strategy: seeds.pctSpec ?? 'pct:3', seed, maxSteps, onRun });
  const firstFailureAt =
    random.firstFailureAt !== null ? { strategy: 'random' as const, index: random.firstFailureAt } : pct.firstFailureAt !== null ? { strategy: 'pct' as const, index: pct.firstFailureAt } : null;
  return { driver: driver.name, kase, runs: random.runs + pct.runs, random, pct, firstFailure: random.firstFailure ?? pct.firstFailure, firstFailureAt, maxSteps: longest };
}

/** A failing run, printable: what failed and the schedule string that replays it. */
export function raceFailureMessage(driver: string, kase: RaceCase, r: RunResult): string {
  return `${driver}/${kase} failed (seed ${r.seed}, strategy ${r.strategy}, ${r.steps} steps): ${r.failure?.message ?? '(no failure)'}\n  replay: replayCase(driver, '${kase}', '${r.schedule}')`;
}

/** Replays one run of `kase` on `driver` from its schedule string (same options as explored). */
export function replayCase(driver: DriverUnderTest, kase: RaceCase, schedule: string, options: RaceOptions = {}): Promise<RunResult> {
  return replay(raceProgram(driver, kase, options), schedule, { maxSteps: 200_000 });
}
