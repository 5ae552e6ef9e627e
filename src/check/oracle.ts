/**
 * The coherency oracle: attach it to an engine, tell it what to watch, and it checks every
 * event of the run against the kernel's contract (docs/oracle.md states each rule).
 *
 *     const oracle = attachOracle(engine);
 *     oracle.watchMm(mm);
 *     oracle.watchDevice(device, { as, mm, notifierSubs: ['dmirror0'], owner: pgmapOwner });
 *     ... run ...
 *     oracle.finish();               // the teardown audit
 *
 * It observes only: trace events (engine.trace.on, one listener per event type it needs, so
 * event types nobody needs stay free) and read-only inspection of the mm, the notifier
 * subscriptions, physical memory and the devices' page tables and TLBs. It never changes
 * simulation state. A violation is reported at the moment it is detected: it fails the run
 * with a CoherencyViolation (the first one wins; later ones are still collected in
 * `violations`), so the run's schedule replays it.
 *
 * Attach it before the world does anything (before mms allocate pages and devices map them);
 * an mm watched later is seeded from its frames' current contents, and a device address space
 * watched later from its current page table and TLB. With nothing attached the trace bus is
 * inactive and the oracle costs nothing; attached, each event costs O(1) or O(log n) except
 * where a file's header says otherwise (range events cost in proportion to the entries held).
 */
import { DEV_PTE_WRITE, type Device } from '../device/index.js';
import { MmStruct, PAGE_SIZE, PTE_KIND_MASK, PTE_PRESENT, PTE_SWP_DEVICE_EXCLUSIVE, PTE_SWP_DEVICE_PRIVATE, PTE_SWP_MIGRATION, PTE_ZERO, type PhysMem, VPN_LIMIT } from '../mm/index.js';
import { EINVAL, type Engine, KernelError, type TraceEvent, type TraceEventMap, type TraceEventType } from '../sim/index.js';
import type { OracleContext } from './context.js';
import { checkCpuAccess, checkDeviceAccess } from './data.js';
import { History } from './history.js';
import { type ActiveRange, callbackReturned, checkInstall, endClassic, endInterval, endRange, legitimateSkip } from './invalidation.js';
import { classifyFailure } from './lock.js';
import { ReferenceMemory } from './reference-memory.js';
import { CoherencyViolation, type ViolationInit, ViolationReport } from './report.js';
import type { CheckedRule } from './rules.js';
import { type KnownMm, teardownAudit } from './teardown.js';
import { checkTranslation } from './translation.js';
import { checkUseAtAccess, checkUseAtFree, checkUseAtMap } from './use-after-free.js';
import { DeviceWatch, type WatchDeviceOptions, watchKey } from './watch.js';

/** Options of attachOracle. */
export interface OracleOptions {
  /** Fail the run (engine.fail) at the first violation. Default true; false only collects. */
  readonly failRun?: boolean;
  /** Rules checked as events arrive; each defaults to true. */
  readonly rules?: Readonly<Partial<Record<CheckedRule, boolean>>>;
  /** Events remembered per virtual page and per frame, for reports. Default 16. */
  readonly historyPerPage?: number;
  /** Range events (invalidations, unmaps, shootdowns, system calls) remembered. Default 256. */
  readonly historyRanges?: number;
  /** Events shown in a report. Default 24. */
  readonly historyInReport?: number;
  /** Violations kept in `violations` (the first always fails the run). Default 100. */
  readonly maxViolations?: number;
  /** Physical memory, if known before the first watch (else taken from the first watched mm or device). */
  readonly phys?: PhysMem;
}

/** Counters of what the oracle checked (tests assert that checks ran). */
export interface OracleStats {
  deviceAccesses: number;
  cpuAccesses: number;
  callbacks: number;
  installs: number;
  frees: number;
}

interface MmTrack {
  readonly id: number;
  name: string;
  obj: MmStruct | null;
  alive: boolean;
}

function positiveInt(what: string, v: number | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (!Number.isInteger(v) || v < 1) throw new KernelError(EINVAL, `attachOracle: ${what} must be a positive integer: ${String(v)}`);
  return v;
}

export class Oracle {
  readonly stats: OracleStats = { deviceAccesses: 0, cpuAccesses: 0, callbacks: 0, installs: 0, frees: 0 };
  private physMem: PhysMem | null;
  private readonly failRun: boolean;
  private readonly maxViolations: number;
  private readonly historyInReport: number;
  private readonly on: Readonly<Record<CheckedRule, boolean>>;
  private readonly history: History;
  private readonly ref: ReferenceMemory;
  private readonly mms = new Map<number, MmTrack>();
  private readonly watches = new Map<string, DeviceWatch>();
  private readonly watchesByMm = new Map<number, DeviceWatch[]>();
  private readonly ranges = new Map<number, ActiveRange>();
  private readonly liveFrames = new Set<number>();
  private readonly found: ViolationReport[] = [];
  private readonly offs: Array<() => void> = [];
  private runOk: boolean | null = null;
  /** Events that needed physical memory before the oracle knew it (a misconfiguration finish() reports). */
  private blind = 0;
  private audited = false;
  private readonly ctx: OracleContext;

  constructor(
    readonly engine: Engine,
    opts: OracleOptions = {},
  ) {
    if (opts === null || typeof opts !== 'object') throw new KernelError(EINVAL, `attachOracle: options must be an object: ${String(opts)}`);
    this.failRun = opts.failRun ?? true;
    this.maxViolations = positiveInt('maxViolations', opts.maxViolations, 100);
    this.historyInReport = positiveInt('historyInReport', opts.historyInReport, 24);
    this.history = new History(positiveInt('historyPerPage', opts.historyPerPage, 16), positiveInt('historyRanges', opts.historyRanges, 256));
    const r = opts.rules ?? {};
    this.on = { translation: r.translation ?? true, invalidation: r.invalidation ?? true, 'use-after-free': r['use-after-free'] ?? true, data: r.data ?? true };
    this.physMem = opts.phys ?? null;
    this.ref = new ReferenceMemory(() => this.physMem);
    const physOf = (): PhysMem => this.physMem!;
    this.ctx = {
      engine,
      get phys(): PhysMem {
        return physOf();
      },
      report: (init) => this.report(init),
      mmName: (id) => this.mms.get(id)?.name ?? `mm${id}`,
    };
    this.subscribe();
  }

  /** Violations found so far, in detection order (at most maxViolations). */
  get violations(): readonly ViolationReport[] {
    return this.found;
  }

  /** True until detach(). */
  get attached(): boolean {
    return this.offs.length > 0;
  }

  /**
   * Watches an mm: its data is checked (reference memory) and its page table is read by the
   * teardown audit. Mms created while the oracle is attached (fork children included) are
   * tracked for data from their creation; watching them too lets the audit count their
   * mappings. An mm created before attach is seeded from its frames' current contents.
   */
  watchMm(mm: MmStruct): void {
    if (!(mm instanceof MmStruct)) throw new KernelError(EINVAL, `watchMm: not an MmStruct: ${String(mm)}`);
    this.usePhys(mm.phys, `watchMm(${mm.name})`);
    let t = this.mms.get(mm.id);
    if (t === undefined) {
      t = { id: mm.id, name: mm.name, obj: mm, alive: mm.state !== 'dead' };
      this.mms.set(mm.id, t);
      if (t.alive) {
        this.ref.addMm(mm.id);
        this.seedMm(mm);
      }
    }
    t.obj = mm;
  }

  /**
   * Watches a device address space that mirrors `opts.mm` (also watched). See
   * WatchDeviceOptions: `notifierSubs` names the subscriptions whose callbacks zap the device,
   * `owner` its pgmap owner (legitimate skips of its own MIGRATE and EXCLUSIVE events).
   */
  watchDevice(device: Device, opts: WatchDeviceOptions): DeviceWatch {
    if (device === null || typeof device !== 'object' || typeof device.name !== 'string') throw new KernelError(EINVAL, `watchDevice: not a Device: ${String(device)}`);
    if (opts === null || typeof opts !== 'object') throw new KernelError(EINVAL, `watchDevice(${device.name}): options must be an object: ${String(opts)}`);
    if (opts.as === undefined || opts.as === null || opts.as.device !== device) throw new KernelError(EINVAL, `watchDevice(${device.name}): opts.as must be an address space of ${device.name}: ${String(opts.as)}`);
    if (!(opts.mm instanceof MmStruct)) throw new KernelError(EINVAL, `watchDevice(${device.name}): opts.mm must be an MmStruct: ${String(opts.mm)}`);
    if (!Array.isArray(opts.notifierSubs)) throw new KernelError(EINVAL, `watchDevice(${device.name}): opts.notifierSubs must be an array of subscription names or notifiers: ${String(opts.notifierSubs)}`);
    for (const s of opts.notifierSubs) {
      const ok = typeof s === 'string' ? s.length > 0 : s !== null && typeof s === 'object' && typeof s.name === 'string';
      if (!ok) throw new KernelError(EINVAL, `watchDevice(${device.name}): notifierSubs entries must be names or notifier objects: ${String(s)}`);
    }
    if (device.phys !== opts.mm.phys) throw new KernelError(EINVAL, `watchDevice(${device.name}): the device and ${opts.mm.name} use different PhysMem`);
    const key = watchKey(device.name, opts.as.asid);
    const old = this.watches.get(key);
    if (old !== undefined && old.device !== device) throw new KernelError(EINVAL, `watchDevice: two devices are named ${device.name}: device names must be unique`);
    if (old !== undefined) throw new KernelError(EINVAL, `watchDevice: ${device.name} asid ${opts.as.asid} is already watched`);
    this.watchMm(opts.mm);
    const w = new DeviceWatch(device, opts);
    // Seed the shadows from what the device holds now (entries of unknown age: current generation).
    const gen = this.physMem!.generation;
    w.as.pageTable.forEach((vpn, pfn, flags) => w.ptSet(vpn, { pfn, generation: gen[pfn]!, write: (flags & DEV_PTE_WRITE) !== 0, seq: -1 }));
    w.as.tlb.forEach((vpn, pfn, flags) => w.tlbSet(vpn, { pfn, generation: w.pt.get(vpn)?.pfn === pfn ? w.pt.get(vpn)!.generation : gen[pfn]!, write: (flags & DEV_PTE_WRITE) !== 0, seq: -1 }));
    this.watches.set(key, w);
    const list = this.watchesByMm.get(opts.mm.id);
    if (list === undefined) this.watchesByMm.set(opts.mm.id, [w]);
    else list.push(w);
    return w;
  }

  /**
   * The teardown audit (rule 6). Call it after the run has ended (then its violations are
   * returned and collected, the run being over) or at the very end of the last task (then the
   * first also fails the run). Returns every violation collected so far. The audit runs once;
   * later calls only return the violations.
   */
  finish(): readonly ViolationReport[] {
    if (this.physMem === null) {
      if (this.blind > 0) throw new KernelError(EINVAL, `oracle.finish: ${this.blind} events went unchecked because the oracle never learnt the PhysMem: pass attachOracle(engine, { phys }) or watch an mm or a device before the run`);
      return this.found;
    }
    if (this.audited) return this.found;
    this.audited = true;
    const mms: KnownMm[] = [...this.mms.values()].map((t) => ({ id: t.id, name: t.name, obj: t.obj, alive: t.alive && (t.obj === null || t.obj.state !== 'dead') }));
    teardownAudit(this.ctx, { watches: [...this.watches.values()], mms, liveFrames: this.liveFrames, runOk: this.runOk });
    return this.found;
  }

  /**
   * The report of a failed run's error (rule 5 for the engine's lock errors, the violation's
   * own report for a CoherencyViolation, null otherwise). A lock report is added to `violations`.
   */
  classify(err: unknown): ViolationReport | null {
    const r = classifyFailure(this.engine, err);
    if (r !== null && !this.found.includes(r) && this.found.length < this.maxViolations) this.found.push(r);
    return r;
  }

  /** Stops listening. The trace bus goes quiet again if nobody else listens. */
  detach(): void {
    for (const off of this.offs) off();
    this.offs.length = 0;
  }

  // ---- internals ----

  private usePhys(phys: PhysMem, who: string): void {
    if (this.physMem === null) this.physMem = phys;
    else if (this.physMem !== phys) throw new KernelError(EINVAL, `${who}: the oracle watches one PhysMem; this uses another`);
  }

  /** Seeds the reference memory of an mm that was populated before the oracle saw it. */
  private seedMm(mm: MmStruct): void {
    mm.pgtable.forEachLeaf(0, VPN_LIMIT, (leaf, from, to, base) => {
      for (let i = from; i < to; i++) {
        const b = leaf.bits[i]!;
        if (b === 0 || (b & PTE_PRESENT && b & PTE_ZERO)) continue;
        const kind = b & PTE_KIND_MASK;
        if (!(b & PTE_PRESENT) && kind !== PTE_SWP_DEVICE_PRIVATE && kind !== PTE_SWP_DEVICE_EXCLUSIVE && kind !== PTE_SWP_MIGRATION) continue;
        this.ref.seed(mm.id, base + i, leaf.pfn[i]!);
      }
    });
  }

  private report(init: ViolationInit): void {
    const pfns = (init.frames ?? []).map((f) => f.pfn);
    const history = this.history.query({ mm: init.mm ?? null, addr: init.addr ?? null, device: init.device ?? null, asid: init.asid ?? null, pfns }, this.historyInReport);
    const r = new ViolationReport(this.engine, { ...init, history });
    if (this.found.length < this.maxViolations) this.found.push(r);
    if (this.failRun && !this.engine.finished) this.engine.fail(new CoherencyViolation(r));
  }

  private listen<K extends TraceEventType>(type: K, fn: (ev: TraceEvent<K>) => void): void {
    this.offs.push(this.engine.trace.on(type, fn));
  }

  private watchOf(device: string, asid: number): DeviceWatch | undefined {
    return this.watches.size === 0 ? undefined : this.watches.get(watchKey(device, asid));
  }

  private subscribe(): void {
    const h = this.history;
    // ---- mm lifetime and contents ----
    this.listen('mm.create', (ev) => {
      if (!this.mms.has(ev.mm)) this.mms.set(ev.mm, { id: ev.mm, name: ev.name, obj: null, alive: true });
      this.ref.addMm(ev.mm);
    });
    this.listen('mm.exit', (ev) => {
      h.range(ev);
      const t = this.mms.get(ev.mm);
      if (t !== undefined) t.alive = false;
      this.ref.dropMm(ev.mm);
    });
    this.listen('mm.fork', (ev) => {
      h.range(ev);
      if (this.ref.tracks(ev.parent)) this.ref.fork(ev.parent, ev.child);
      else this.ref.dropMm(ev.child); // the parent's contents are unknown: so are the child's
    });
    this.listen('mm.pte', (ev) => {
      const vpn = Math.floor(ev.addr / PAGE_SIZE);
      h.page(ev.mm, vpn, ev);
      if (ev.pfn !== 0) h.frame(ev.pfn, ev);
      if (ev.op === 'zap') this.ref.zapped(ev.mm, vpn, ev.pfn);
    });
    this.listen('mm.move_ptes', (ev) => {
      h.range(ev);
      this.ref.move(ev.mm, ev.from / PAGE_SIZE, ev.to / PAGE_SIZE, ev.len / PAGE_SIZE);
    });
    this.listen('mm.syscall', (ev) => h.range(ev));
    this.listen('mm.fault', (ev) => h.page(ev.mm, Math.floor(ev.addr / PAGE_SIZE), ev));
    this.listen('mm.migrate', (ev) => {
      h.page(ev.mm, Math.floor(ev.addr / PAGE_SIZE), ev);
      h.frame(ev.from, ev);
      if (ev.to !== ev.from) h.frame(ev.to, ev);
    });
    this.listen('cpu.access', (ev) => {
      h.page(ev.mm, Math.floor(ev.addr / PAGE_SIZE), ev);
      h.frame(ev.pfn, ev);
      if (this.physMem === null) {
        this.blind++;
        return;
      }
      this.stats.cpuAccesses++;
      if (this.on.data) checkCpuAccess(this.ctx, this.ref, ev);
    });
    // ---- frames ----
    this.listen('page.alloc', (ev) => {
      this.liveFrames.add(ev.pfn);
      h.frame(ev.pfn, ev);
    });
    this.listen('page.free', (ev) => {
      this.liveFrames.delete(ev.pfn);
      h.frame(ev.pfn, ev);
      this.stats.frees++;
      if (this.physMem !== null && this.on['use-after-free'] && this.watches.size > 0) checkUseAtFree(this.ctx, this.watches.values(), ev);
      this.ref.freed(ev.pfn);
    });
    // ---- notifiers ----
    this.listen('notifier.invalidate_start', (ev) => {
      h.range(ev);
      this.ranges.set(ev.range, this.activeRange(ev));
    });
    this.listen('notifier.callback', (ev) => {
      h.range(ev);
      this.onCallback(ev);
    });
    this.listen('notifier.invalidate_end', (ev) => {
      h.range(ev);
      this.ranges.delete(ev.range);
      const ws = this.watchesByMm.get(ev.mm);
      if (ws !== undefined) for (const w of ws) endRange(w, ev.range);
    });
    this.listen('notifier.seq', (ev) => {
      if (ev.seq % 2 !== 0) return;
      const ws = this.watchesByMm.get(ev.mm);
      if (ws !== undefined) for (const w of ws) endInterval(w);
    });
    // ---- devices ----
    this.listen('device.pt_map', (ev) => {
      const w = this.watchOf(ev.device, ev.asid);
      if (w === undefined || this.physMem === null) return;
      h.page(w.mm.id, ev.vpn, ev);
      h.frame(ev.pfn, ev);
      this.stats.installs++;
      const ok = !this.on['use-after-free'] || checkUseAtMap(this.ctx, w, ev);
      if (ok && this.on.invalidation && w.obligations.length > 0) checkInstall(this.ctx, w, ev.vpn, ev.pfn, ev.write, ev, this.ranges);
      w.ptSet(ev.vpn, { pfn: ev.pfn, generation: this.physMem.generation[ev.pfn]!, write: ev.write, seq: ev.seq });
    });
    this.listen('device.pt_unmap', (ev) => {
      h.range(ev);
      const w = this.watchOf(ev.device, ev.asid);
      if (w !== undefined) w.ptClear(ev.start / PAGE_SIZE, ev.end / PAGE_SIZE);
    });
    this.listen('device.tlb_fill', (ev) => {
      const w = this.watchOf(ev.device, ev.asid);
      if (w === undefined || this.physMem === null) return;
      h.page(w.mm.id, ev.vpn, ev);
      h.frame(ev.pfn, ev);
      if (this.on.invalidation && w.obligations.length > 0) checkInstall(this.ctx, w, ev.vpn, ev.pfn, ev.write, ev, this.ranges);
      // The fill copies a page-table entry: it inherits that entry's generation.
      const pt = w.pt.get(ev.vpn);
      const generation = pt !== undefined && pt.pfn === ev.pfn ? pt.generation : this.physMem.generation[ev.pfn]!;
      w.tlbSet(ev.vpn, { pfn: ev.pfn, generation, write: ev.write, seq: ev.seq });
    });
    this.listen('device.tlb_invalidate', (ev) => {
      h.range(ev);
      if (ev.phase !== 'completed') return;
      const w = this.watchOf(ev.device, ev.asid);
      if (w === undefined) return;
      if (ev.all) w.tlbClear(0, VPN_LIMIT);
      else w.tlbClear(ev.start / PAGE_SIZE, ev.end / PAGE_SIZE);
    });
    this.listen('device.access', (ev) => this.onDeviceAccess(ev));
    this.listen('device.fault', (ev) => {
      const w = this.watchOf(ev.device, ev.asid);
      if (w !== undefined) h.page(w.mm.id, Math.floor(ev.address / PAGE_SIZE), ev);
    });
    this.listen('device.copy', (ev) => {
      h.frame(ev.dst, ev);
      h.frame(ev.src, ev);
    });
    this.listen('run.end', (ev) => {
      this.runOk = ev.ok;
    });
  }

  /** The invalidation of a 'notifier.invalidate_start', with its owner object when it can be found. */
  private activeRange(ev: TraceEvent<'notifier.invalidate_start'>): ActiveRange {
    let owner: unknown = ev.owner;
    let ownerIsObject = false;
    if (ev.owner !== null) {
      // The range object is on the mm's active-range list (published before the event).
      const ws = this.watchesByMm.get(ev.mm);
      const rs = ws?.[0]?.mm.notifierSubscriptions?.ranges;
      if (rs !== undefined) {
        for (let i = rs.length - 1; i >= 0; i--) {
          if (rs[i]!.id === ev.range) {
            owner = rs[i]!.owner;
            ownerIsObject = true;
            break;
          }
        }
      }
    }
    return { id: ev.range, mm: ev.mm, start: ev.start, end: ev.end, event: ev.event, blockable: ev.blockable, owner, ownerIsObject };
  }

  private onCallback(ev: TraceEvent<'notifier.callback'>): void {
    const ws = this.watchesByMm.get(ev.mm);
    if (ws === undefined || this.physMem === null) return;
    for (const w of ws) {
      if (!w.subNames.has(ev.sub)) continue;
      if (ev.phase === 'end') {
        if (ev.kind === 'classic') endClassic(w, ev.range, ev.sub);
        continue;
      }
      if (!this.on.invalidation) continue;
      this.stats.callbacks++;
      const r = this.ranges.get(ev.range) ?? null;
      if (ev.phase === 'release') {
        callbackReturned(this.ctx, w, r, ev);
        continue;
      }
      if (r === null) continue; // began before the oracle was attached
      // A refusal of a non-blockable range aborts the invalidation: nothing was promised.
      if (!r.blockable && (ev.result === false || (typeof ev.result === 'number' && ev.result !== 0))) continue;
      if (legitimateSkip(r, w)) continue;
      callbackReturned(this.ctx, w, r, ev);
    }
  }

  private onDeviceAccess(ev: TraceEvent<'device.access'>): void {
    const w = this.watchOf(ev.device, ev.asid);
    if (w === undefined || this.physMem === null) return;
    const vpn = Math.floor(ev.addr / PAGE_SIZE);
    this.history.page(w.mm.id, vpn, ev);
    this.history.frame(ev.pfn, ev);
    this.stats.deviceAccesses++;
    const s = ev.tlbHit ? (w.tlb.get(vpn) ?? w.pt.get(vpn)) : w.pt.get(vpn);
    const installed = s !== undefined && s.pfn === ev.pfn ? s.generation : null;
    if (this.on['use-after-free'] && !checkUseAtAccess(this.ctx, w, ev, installed)) return;
    if (this.on.translation && !checkTranslation(this.ctx, w, ev, installed)) return;
    if (this.on.data) checkDeviceAccess(this.ctx, this.ref, w.mm.id, ev);
  }
}

/** Attaches an oracle to `engine` (subscribes to its trace bus). */
export function attachOracle(engine: Engine, opts: OracleOptions = {}): Oracle {
  return new Oracle(engine, opts);
}

/** The trace events the oracle listens to (its cost when attached is the cost of these). */
export const ORACLE_EVENTS: readonly (keyof TraceEventMap)[] = [
  'mm.create',
  'mm.exit',
  'mm.fork',
  'mm.pte',
  'mm.move_ptes',
  'mm.syscall',
  'mm.fault',
  'mm.migrate',
  'cpu.access',
  'page.alloc',
  'page.free',
  'notifier.invalidate_start',
  'notifier.callback',
  'notifier.invalidate_end',
  'notifier.seq',
  'device.pt_map',
  'device.pt_unmap',
  'device.tlb_fill',
  'device.tlb_invalidate',
  'device.access',
  'device.fault',
  'device.copy',
  'run.end',
];
