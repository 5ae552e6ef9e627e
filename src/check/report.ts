/**
 * Violation reports and the error that fails a run with one.
 *
 * A report names the rule and the check, the address, the mm and the device, the frames
 * involved with their generations, the last events touching that page (from the oracle's
 * history), and the seed, strategy and decision log that replay the run. The replay data is
 * read from the engine when the report is rendered, so a report made mid-run renders the
 * complete log once the run has ended (a failed run makes no decision after its failure).
 */
import { type Engine, SimError, type TraceEvent, formatSchedule } from '../sim/index.js';
import { PAGE_SIZE, ZONE_DEVICE_COHERENT, ZONE_DEVICE_PRIVATE } from '../mm/index.js';
import { mmuNotifierEventName } from '../notifier/index.js';
import { type OracleCheck, type OracleRule, RULE_TITLES } from './rules.js';

/** A frame involved in a violation, as it was when the violation was detected. */
export interface FrameInfo {
  readonly pfn: number;
  /** The frame's generation at detection (bumped at every free). */
  readonly generation: number;
  /** The generation the device's entry was installed at, when it is known and differs. */
  readonly installedGeneration: number | null;
  readonly zone: 'system' | 'device-private' | 'device-coherent' | 'zero';
  readonly refcount: number;
  readonly mapcount: number;
  /** What the frame is to this violation: 'device translation', 'CPU mapping', 'freed frame', ... */
  readonly role: string;
}

/** What the oracle knows when it detects a violation. */
export interface ViolationInit {
  readonly rule: OracleRule;
  readonly check: OracleCheck;
  /** One line: what is wrong. */
  readonly message: string;
  /** More lines of explanation (the CPU entry, the device entry, the values). */
  readonly details?: readonly string[];
  readonly mm?: number | null;
  readonly mmName?: string | null;
  readonly addr?: number | null;
  readonly device?: string | null;
  readonly asid?: number | null;
  readonly frames?: readonly FrameInfo[];
  /** The event at which it was detected (null for an audit). */
  readonly event?: TraceEvent | null;
  /** The last events touching the page (oldest first). */
  readonly history?: readonly TraceEvent[];
}

/** One violation of the contract. Immutable except that its replay data is read at render time. */
export class ViolationReport {
  readonly rule: OracleRule;
  readonly check: OracleCheck;
  readonly message: string;
  readonly details: readonly string[];
  readonly mm: number | null;
  readonly mmName: string | null;
  readonly addr: number | null;
  readonly device: string | null;
  readonly asid: number | null;
  readonly frames: readonly FrameInfo[];
  readonly event: TraceEvent | null;
  readonly history: readonly TraceEvent[];
  /** Virtual time of detection (ns). */
  readonly time: number;
  /** The task running at detection, or null. */
  readonly task: string | null;

  constructor(
    /** The engine of the run: its seed, strategy and decision log replay the run. */
    readonly engine: Engine,
    init: ViolationInit,
  ) {
    this.rule = init.rule;
    this.check = init.check;
    this.message = init.message;
    this.details = init.details ?? [];
    this.mm = init.mm ?? null;
    this.mmName = init.mmName ?? null;
    this.addr = init.addr ?? null;
    this.device = init.device ?? null;
    this.asid = init.asid ?? null;
    this.frames = init.frames ?? [];
    this.event = init.event ?? null;
    this.history = init.history ?? [];
    this.time = engine.now;
    this.task = engine.current?.name ?? null;
  }

  /** `translation/frame-mismatch`. */
  get code(): string {
    return `${this.rule}/${this.check}`;
  }

  get seed(): number {
    return this.engine.seed;
  }

  get strategy(): string {
    return this.engine.strategy.spec;
  }

  /** The decision log so far (complete once the run has ended). */
  get decisions(): readonly number[] {
    return this.engine.decisions;
  }

  /** The printable schedule that replays the run (`replay(program, schedule)`). */
  get schedule(): string {
    return formatSchedule({ seed: this.engine.seed, strategy: this.engine.strategy.spec, decisions: this.engine.decisions });
  }

  /** A one-line summary. */
  summary(): string {
    const where: string[] = [];
    if (this.device !== null) where.push(`${this.device}${this.asid !== null ? ` asid ${this.asid}` : ''}`);
    if (this.mmName !== null || this.mm !== null) where.push(this.mmName ?? `mm #${this.mm}`);
    if (this.addr !== null) where.push(hex(this.addr));
    return `${RULE_TITLES[this.rule]} (${this.check})${where.length > 0 ? ` [${where.join(', ')}]` : ''}: ${this.message}`;
  }

  /** The full report, as text. */
  render(): string {
    const lines: string[] = [`coherency violation: ${RULE_TITLES[this.rule]} (${this.code})`, `  ${this.message}`];
    for (const d of this.details) lines.push(`  ${d}`);
    const at = this.event !== null ? `event #${this.event.seq} (${this.event.type}), ` : '';
    lines.push(`  detected at ${at}t=${this.time}ns${this.task !== null ? `, task ${this.task}` : ''}`);
    if (this.device !== null) lines.push(`  device: ${this.device}${this.asid !== null ? ` asid ${this.asid}` : ''}`);
    if (this.mm !== null) lines.push(`  mm: ${this.mmName ?? '?'} (#${this.mm})`);
    if (this.addr !== null) lines.push(`  address: ${hex(this.addr)} (page ${hex(this.addr - (this.addr % PAGE_SIZE))})`);
    if (this.frames.length > 0) {
      lines.push('  frames:');
      for (const f of this.frames) lines.push(`    ${formatFrame(f)}`);
    }
    if (this.history.length > 0) {
      lines.push('  last events touching the page:');
      for (const ev of this.history) lines.push(`    ${formatEvent(ev)}`);
    }
    lines.push(`  replay: seed ${this.seed}, strategy ${this.strategy}, ${this.decisions.length} decisions`);
    lines.push(`    schedule ${this.schedule}`);
    return lines.join('\n');
  }

  /** A JSON-safe view (bigints and byte arrays as hex strings). */
  toJSON(): Record<string, unknown> {
    return {
      rule: this.rule,
      check: this.check,
      code: this.code,
      message: this.message,
      details: this.details,
      mm: this.mm,
      mmName: this.mmName,
      addr: this.addr,
      device: this.device,
      asid: this.asid,
      frames: this.frames,
      time: this.time,
      task: this.task,
      event: this.event === null ? null : formatEvent(this.event),
      history: this.history.map(formatEvent),
      seed: this.seed,
      strategy: this.strategy,
      schedule: this.schedule,
    };
  }

  toString(): string {
    return this.summary();
  }
}

/** The oracle's code for a failed run. */
export const COHERENCY_VIOLATION = 'COHERENCY_VIOLATION' as const;

/** The error a run fails with when the oracle detects a violation. `report` has everything. */
export class CoherencyViolation extends SimError {
  override readonly name = 'CoherencyViolation';
  readonly code = COHERENCY_VIOLATION;

  constructor(readonly report: ViolationReport) {
    super(`coherency violation: ${report.summary()}`);
  }
}

// ---- formatting ----

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

const ADDR_KEYS = new Set(['addr', 'start', 'end', 'address', 'from', 'to', 'istart', 'iend']);

function zoneName(zone: number, pfn: number): FrameInfo['zone'] {
  if (pfn === 0) return 'zero';
  if (zone === ZONE_DEVICE_PRIVATE) return 'device-private';
  if (zone === ZONE_DEVICE_COHERENT) return 'device-coherent';
  return 'system';
}

/** A frame's line in a report. */
export function formatFrame(f: FrameInfo): string {
  const gen = f.installedGeneration !== null && f.installedGeneration !== f.generation ? `gen ${f.generation} (device entry made at gen ${f.installedGeneration})` : `gen ${f.generation}`;
  return `pfn ${f.pfn} ${gen}, ${f.zone}, refcount ${f.refcount}, mapcount ${f.mapcount}: ${f.role}`;
}

/** Builds a FrameInfo from the frame's current struct page state. */
export function frameInfo(
  phys: { readonly generation: Uint32Array; readonly zone: Uint8Array; readonly refcount: Int32Array; readonly mapcount: Int32Array },
  pfn: number,
  role: string,
  installedGeneration: number | null = null,
): FrameInfo {
  return {
    pfn,
    generation: phys.generation[pfn] ?? 0,
    installedGeneration,
    zone: zoneName(phys.zone[pfn] ?? 0, pfn),
    refcount: phys.refcount[pfn] ?? 0,
    mapcount: phys.mapcount[pfn] ?? 0,
    role,
  };
}

function formatValue(key: string, v: unknown, type: string): string {
  if (typeof v === 'bigint') return `0x${v.toString(16)}`;
  if (typeof v === 'number') {
    if (ADDR_KEYS.has(key) && ((key !== 'from' && key !== 'to') || type === 'mm.move_ptes')) return hex(v);
    if (key === 'event' && type.startsWith('notifier.')) return mmuNotifierEventName(v);
    if (key === 'vpn') return `${hex(v * PAGE_SIZE)}`;
    if (key === 'result' && type === 'mm.syscall' && v >= PAGE_SIZE) return hex(v); // an address
    return String(v);
  }
  if (v instanceof Uint8Array) {
    const shown = Array.from(v.subarray(0, 16), (b) => b.toString(16).padStart(2, '0')).join('');
    return `${shown}${v.length > 16 ? `...(${v.length} bytes)` : ''}`;
  }
  if (typeof v === 'string') return /^[\w.:@#/-]*$/.test(v) ? v : JSON.stringify(v);
  return String(v);
}

/** One event on one line: `#seq t=time type key=value ...` (addresses in hex; vpn shown as its address). */
export function formatEvent(ev: TraceEvent): string {
  const fields = formatEventFields(ev);
  return `#${ev.seq} t=${ev.time} ${ev.type}${fields === '' ? '' : ` ${fields}`}`;
}

/** An event's payload fields, `key=value ...`, as formatEvent writes them; keys in `omit` are left out. */
export function formatEventFields(ev: TraceEvent, omit?: ReadonlySet<string>): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(ev)) {
    if (k === 'type' || k === 'seq' || k === 'time' || omit?.has(k) === true) continue;
    parts.push(`${k === 'vpn' ? 'page' : k}=${formatValue(k, v, ev.type)}`);
  }
  return parts.join(' ');
}
