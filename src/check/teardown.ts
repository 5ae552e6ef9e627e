/**
 * Rule 6, the teardown audit (Oracle.finish): after exit and release no device mapping
 * remains, every frame's refcount and mapcount balance, no task is left blocked.
 *
 * - Device mappings: a watched address space whose mm has exited must hold no page-table or
 *   TLB entry (a destroyed address space holds none). One whose mm is still alive may hold
 *   entries, but each must be coherent now (rule 1 and 3 applied to entries at rest: the CPU
 *   frame, a write bit only where the CPU entry is writable, the generation it was made at).
 * - Frames: when every mm the oracle knows has exited, every frame allocated since the oracle
 *   was attached must be free again (refcount 0, mapcount 0): anything else is a leak. While
 *   some are alive (and all of those are watched objects, so their page tables can be read),
 *   each frame's mapcount must equal the CPU entries that map it (present entries other than
 *   the zero page, device-private and device-exclusive entries), and its refcount must cover
 *   them (plus the page cache's reference of a shmem page).
 * - Tasks: when the run has ended cleanly no task may be left unfinished; when finish() runs
 *   inside a task, no other task may be blocked (sleeping and runnable ones will finish).
 * Each check reports once, listing up to eight offenders and their count.
 * Cost: O(frames allocated since attach + CPU and device entries), once per run.
 */
import { DEV_PTE_WRITE } from '../device/index.js';
import {
  type MmStruct,
  PG_SHMEM,
  PTE_KIND_MASK,
  PTE_PRESENT,
  PTE_SWP_DEVICE_EXCLUSIVE,
  PTE_SWP_DEVICE_PRIVATE,
  PTE_ZERO,
  VPN_LIMIT,
  ZERO_PFN,
} from '../mm/index.js';
import { type OracleContext, hex } from './context.js';
import { type FrameInfo, frameInfo } from './report.js';
import { cpuTarget } from './translation.js';
import type { DeviceWatch } from './watch.js';

/** An mm as the oracle knows it. */
export interface KnownMm {
  readonly id: number;
  readonly name: string;
  /** The object, if watched (needed to read its page table). */
  readonly obj: MmStruct | null;
  readonly alive: boolean;
}

export interface TeardownInput {
  readonly watches: readonly DeviceWatch[];
  readonly mms: readonly KnownMm[];
  /** Frames allocated since attach and not freed. */
  readonly liveFrames: ReadonlySet<number>;
  /** The run has ended; `runOk` says whether it ended cleanly (null: not ended). */
  readonly runOk: boolean | null;
}

const LIST = 8;

/** Runs the audit; reports through ctx. */
export function teardownAudit(ctx: OracleContext, input: TeardownInput): void {
  for (const w of input.watches) auditDevice(ctx, w, input);
  auditFrames(ctx, input);
  auditTasks(ctx, input);
}

function mmDead(w: DeviceWatch, input: TeardownInput): boolean {
  if (w.mm.state === 'dead') return true;
  const k = input.mms.find((m) => m.id === w.mm.id);
  return k !== undefined && !k.alive;
}

function auditDevice(ctx: OracleContext, w: DeviceWatch, input: TeardownInput): void {
  if (w.as.isDestroyed) return;
  const dead = mmDead(w, input);
  const bad: string[] = [];
  let count = 0;
  let first: { vpn: number; pfn: number; gen: number | null } | null = null;
  const note = (vpn: number, pfn: number, gen: number | null, what: string): void => {
    count++;
    first ??= { vpn, pfn, gen };
    if (bad.length < LIST) bad.push(what);
  };
  w.as.pageTable.forEach((vpn, pfn, flags) => {
    const gen = w.pt.get(vpn)?.generation ?? null;
    if (dead) {
      note(vpn, pfn, gen, `page-table entry ${hex(vpn * 4096)} -> pfn ${pfn}`);
      return;
    }
    const why = staleness(ctx, w, vpn, pfn, (flags & DEV_PTE_WRITE) !== 0, gen);
    if (why !== null) note(vpn, pfn, gen, `page-table entry ${hex(vpn * 4096)} -> pfn ${pfn}: ${why}`);
  });
  w.as.tlb.forEach((vpn, pfn, flags) => {
    const s = w.tlb.get(vpn);
    const gen = s !== undefined && s.pfn === pfn ? s.generation : null;
    if (dead) {
      note(vpn, pfn, gen, `TLB entry ${hex(vpn * 4096)} -> pfn ${pfn}`);
      return;
    }
    const why = staleness(ctx, w, vpn, pfn, (flags & DEV_PTE_WRITE) !== 0, gen);
    if (why !== null) note(vpn, pfn, gen, `TLB entry ${hex(vpn * 4096)} -> pfn ${pfn}: ${why}`);
  });
  if (first === null) return;
  const f: { vpn: number; pfn: number; gen: number | null } = first;
  ctx.report({
    rule: 'teardown',
    check: dead ? 'device-mapping-left' : 'stale-entry',
    message: dead
      ? `${w.device.name} asid ${w.as.asid} still holds ${count} entr${count === 1 ? 'y' : 'ies'} after ${w.mm.name} exited`
      : `${w.device.name} asid ${w.as.asid} holds ${count} entr${count === 1 ? 'y' : 'ies'} that no longer match ${w.mm.name}'s page table`,
    details: count > bad.length ? [...bad, `... and ${count - bad.length} more`] : bad,
    mm: w.mm.id,
    mmName: w.mm.name,
    addr: f.vpn * 4096,
    device: w.device.name,
    asid: w.as.asid,
    frames: [frameInfo(ctx.phys, f.pfn, 'held by the device', f.gen)],
  });
}

/** Why a device entry at rest is stale, or null if it is coherent. */
function staleness(ctx: OracleContext, w: DeviceWatch, vpn: number, pfn: number, write: boolean, gen: number | null): string | null {
  const cpu = cpuTarget(w.mm, vpn);
  if (cpu.pfn !== pfn) return `the CPU page table has ${cpu.desc}`;
  if (write && !cpu.writable) return `writable, but the CPU page table has ${cpu.desc}`;
  if (pfn !== ZERO_PFN && ctx.phys.refcount[pfn] === 0) return 'the frame is free';
  if (gen !== null && gen !== ctx.phys.generation[pfn]) return `made at generation ${gen}, the frame is at generation ${ctx.phys.generation[pfn]}`;
  return null;
}

/** Counts the CPU entries that hold a mapcount, per frame, over the mms' page tables. */
function countMappings(mms: readonly MmStruct[]): Map<number, number> {
  const counted = new Map<number, number>();
  for (const mm of mms) {
    mm.pgtable.forEachLeaf(0, VPN_LIMIT, (leaf, from, to) => {
      for (let i = from; i < to; i++) {
        const b = leaf.bits[i]!;
        if (b === 0) continue;
        const kind = b & PTE_KIND_MASK;
        const maps = b & PTE_PRESENT ? (b & PTE_ZERO) === 0 : kind === PTE_SWP_DEVICE_PRIVATE || kind === PTE_SWP_DEVICE_EXCLUSIVE;
        if (!maps) continue;
        const pfn = leaf.pfn[i]!;
        counted.set(pfn, (counted.get(pfn) ?? 0) + 1);
      }
    });
  }
  return counted;
}

function auditFrames(ctx: OracleContext, input: TeardownInput): void {
  const phys = ctx.phys;
  const alive = input.mms.filter((m) => m.alive);
  const allDead = alive.length === 0;
  const readable = alive.every((m) => m.obj !== null);
  const counted = !allDead && readable ? countMappings(alive.map((m) => m.obj!)) : null;
  const pfns = new Set(input.liveFrames);
  if (counted !== null) for (const p of counted.keys()) pfns.add(p);
  const sorted = [...pfns].sort((a, b) => a - b);
  const bad = { 'frame-leak': [] as FrameInfo[], mapcount: [] as FrameInfo[], refcount: [] as FrameInfo[] };
  const total = { 'frame-leak': 0, mapcount: 0, refcount: 0 };
  const add = (check: keyof typeof bad, pfn: number, role: string): void => {
    total[check]++;
    if (bad[check].length < LIST) bad[check].push(frameInfo(phys, pfn, role));
  };
  for (const pfn of sorted) {
    if (pfn === ZERO_PFN) continue;
    const rc = phys.refcount[pfn]!;
    const mc = phys.mapcount[pfn]!;
    if (allDead) {
      if (rc !== 0 || mc !== 0) add('frame-leak', pfn, 'still referenced after every mm exited');
      continue;
    }
    if (counted === null) continue;
    const c = counted.get(pfn) ?? 0;
    if (mc !== c) add('mapcount', pfn, `mapcount ${mc}, but ${c} CPU entr${c === 1 ? 'y maps' : 'ies map'} it`);
    const need = c + ((phys.flags[pfn]! & PG_SHMEM) !== 0 ? 1 : 0);
    if (rc < need) add('refcount', pfn, `refcount ${rc}, below the ${need} references its mappings hold`);
  }
  const messages = {
    'frame-leak': 'frames are still in use after every mm exited (leaked references or mappings)',
    mapcount: 'frames whose mapcount does not match the CPU entries mapping them',
    refcount: 'frames whose refcount does not cover their mappings',
  } as const;
  for (const check of ['frame-leak', 'mapcount', 'refcount'] as const) {
    if (total[check] === 0) continue;
    ctx.report({
      rule: 'teardown',
      check,
      message: `${total[check]} ${messages[check]}`,
      details: total[check] > bad[check].length ? [`(showing ${bad[check].length} of ${total[check]})`] : [],
      frames: bad[check],
    });
  }
}

function auditTasks(ctx: OracleContext, input: TeardownInput): void {
  const e = ctx.engine;
  let stuck: string[];
  if (e.finished) {
    if (input.runOk !== true) return; // a failed run leaves its tasks parked: not the audit's business
    stuck = e.allTasks.filter((t) => t.state !== 'done').map((t) => `${t.name} (${t.state}${t.waitsOn ? ` on ${t.waitsOn.describeWait(t)}` : ''})`);
  } else {
    const cur = e.current;
    stuck = e.allTasks.filter((t) => t !== cur && t.state === 'blocked').map((t) => `${t.name} (blocked${t.waitsOn ? ` on ${t.waitsOn.describeWait(t)}` : ''})`);
  }
  if (stuck.length === 0) return;
  ctx.report({
    rule: 'teardown',
    check: 'task-blocked',
    message: `${stuck.length} task${stuck.length === 1 ? ' is' : 's are'} left blocked at teardown`,
    details: stuck.slice(0, LIST),
  });
}
