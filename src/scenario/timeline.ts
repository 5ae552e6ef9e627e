/**
 * The compact event timeline of a run (`hmm-emu run --timeline`, `replay --timeline`): what
 * happened, when and in which task, one line per step of the story, read top to bottom.
 *
 * It records the events that tell the story of a race, not every memory access: system calls,
 * CPU faults, invalidations (start, end), the device's faults, replays, cancels, page-table
 * writes and TLB shootdowns, hmm_range_fault, migrations, the 2015 API's fault/backoff/update,
 * fork and exit, task starts and ends, labelled choices (race points), warnings and the
 * scenario's own log lines. Runs of the same event in the same task that differ only in their
 * addresses (a batch of page-table writes, a fault window) fold into one line with a count and
 * the address range. `types` selects other event types (any prefix, or 'all').
 *
 * The recorder only listens: the schedule, and so the run, is the same with it as without it,
 * and a replay gives the same timeline line for line.
 *
 * No locks: listeners run synchronously at each emit.
 */
import { formatEventFields } from '../check/index.js';
import { EINVAL, type Engine, KernelError, type TraceEvent, type TraceEventType } from '../sim/index.js';

declare module '../sim/trace.js' {
  interface TraceEventMap {
    /** A scenario's ctx.log line. */
    'scenario.log': { message: string };
  }
}

/** The event types of the compact timeline. */
export const TIMELINE_EVENTS: readonly TraceEventType[] = [
  'task.spawn',
  'task.exit',
  'engine.choose',
  'warn',
  'scenario.log',
  'mm.syscall',
  'mm.fault',
  'mm.fork',
  'mm.exit',
  'mm.migrate',
  'mm.move_ptes',
  'notifier.register',
  'notifier.unregister',
  'notifier.invalidate_start',
  'notifier.invalidate_end',
  'device.fault',
  'device.replay',
  'device.cancel',
  'device.pt_map',
  'device.pt_unmap',
  'device.tlb_invalidate',
  'device.copy',
  'hmm.range_fault',
  'hmm.migrate_setup',
  'hmm.migrate_pages',
  'hmm.migrate_finalize',
  'hmm.migrate_device_range',
  'hmm.make_device_exclusive',
  'hmm2015.fault_start',
  'hmm2015.fault_end',
  'hmm2015.backoff',
  'hmm2015.wait',
  'hmm2015.update',
];

/** Options of a timeline. */
export interface TimelineOptions {
  /** Event types or type prefixes (`device.`), or 'all'. Default TIMELINE_EVENTS. */
  readonly types?: readonly string[] | 'all';
  /** At most this many lines are kept (the rest are counted in `dropped`). Default 100,000. */
  readonly limit?: number;
}

/** One line of a timeline. */
export interface TimelineEntry {
  /** Virtual time of the first event, ns. */
  readonly time: number;
  /** The trace sequence number of the first event. */
  readonly seq: number;
  /** The task that was running (`-` outside any task). */
  readonly task: string;
  readonly type: string;
  /** The first event's fields, `key=value ...` (addresses in hex). */
  readonly text: string;
  /** Events folded into this line (1 for a single event). */
  readonly count: number;
  /** For a folded run: the last event's fields. */
  readonly lastText: string | null;
}

/** A run's timeline. */
export interface Timeline {
  readonly entries: readonly TimelineEntry[];
  /** Lines beyond `limit`, not kept. */
  readonly dropped: number;
}

/** Fields that vary within a foldable run of events. */
const ADDRESS_FIELDS = new Set(['addr', 'address', 'start', 'end', 'vpn', 'pfn', 'from', 'to', 'recordSeq', 'len', 'entries']);

/** Fields shown elsewhere (the line's time, sequence, type and task). */
const HIDDEN_FIELDS = new Set(['type', 'seq', 'time']);

/** Payload fields the task column already says: task ids, and a spawned task's parent (an mm's parent stays). */
const TASK_FIELDS: ReadonlySet<string> = new Set(['task']);
const SPAWN_FIELDS: ReadonlySet<string> = new Set(['task', 'parent']);

function fields(ev: TraceEvent): string {
  return formatEventFields(ev, ev.type === 'task.spawn' ? SPAWN_FIELDS : TASK_FIELDS);
}

function foldKey(ev: TraceEvent, task: string): string {
  const parts: string[] = [ev.type, task];
  for (const [k, v] of Object.entries(ev)) if (!HIDDEN_FIELDS.has(k) && !ADDRESS_FIELDS.has(k)) parts.push(`${k}=${typeof v === 'object' && v !== null ? '~' : String(v)}`);
  return parts.join('\u0000');
}

/** Records the timeline of the run on `engine`; read it after the run with `timeline()`. */
export class TimelineRecorder {
  private readonly entries: TimelineEntry[] = [];
  private readonly keys: string[] = [];
  private dropped = 0;
  private readonly limit: number;

  constructor(
    private readonly engine: Engine,
    opts: TimelineOptions = {},
  ) {
    if (opts === null || typeof opts !== 'object') throw new KernelError(EINVAL, `timeline: options must be an object: ${String(opts)}`);
    const limit = opts.limit ?? 100_000;
    if (!Number.isInteger(limit) || limit < 1) throw new KernelError(EINVAL, `timeline: limit must be a positive integer: ${String(limit)}`);
    this.limit = limit;
    const types = opts.types ?? TIMELINE_EVENTS;
    const onEvent = (ev: TraceEvent): void => this.record(ev);
    if (types === 'all') {
      engine.trace.onAny(onEvent);
      return;
    }
    if (!Array.isArray(types) || types.some((t) => typeof t !== 'string' || t.length === 0)) throw new KernelError(EINVAL, `timeline: types must be 'all' or a list of event types or prefixes: ${String(types)}`);
    const exact = types.filter((t) => !t.endsWith('.'));
    const prefixes = types.filter((t) => t.endsWith('.'));
    if (prefixes.length > 0) {
      engine.trace.onAny((ev) => {
        if (prefixes.some((p) => ev.type.startsWith(p)) && !exact.includes(ev.type)) this.record(ev);
      });
    }
    for (const t of exact) engine.trace.on(t as TraceEventType, onEvent);
  }

  private record(ev: TraceEvent): void {
    if (ev.type === 'engine.choose' && ev.label === '') return; // unlabelled picks are scheduling noise
    if (ev.type === 'device.tlb_invalidate' && ev.phase === 'completed') return; // the issue line says it
    const task = this.engine.current?.name ?? '-';
    const key = foldKey(ev, task);
    const n = this.entries.length;
    if (n > 0 && this.keys[n - 1] === key) {
      const last = this.entries[n - 1]!;
      this.entries[n - 1] = { ...last, count: last.count + 1, lastText: fields(ev) };
      return;
    }
    if (n >= this.limit) {
      this.dropped++;
      return;
    }
    this.entries.push({ time: ev.time, seq: ev.seq, task, type: ev.type, text: fields(ev), count: 1, lastText: null });
    this.keys.push(key);
  }

  /** The timeline so far. */
  timeline(): Timeline {
    return { entries: [...this.entries], dropped: this.dropped };
  }
}

/** The timeline as text: `    time  task  type  fields`, folded runs with `(xN, last: ...)`. */
export function renderTimeline(t: Timeline): string {
  const taskWidth = Math.min(18, Math.max(4, ...t.entries.map((e) => e.task.length)));
  const typeWidth = Math.min(26, Math.max(4, ...t.entries.map((e) => e.type.length)));
  const timeWidth = Math.max(6, ...t.entries.map((e) => String(e.time).length + 2));
  const lines = t.entries.map((e) => {
    const fold = e.count > 1 ? `  (x${e.count}, last: ${e.lastText ?? ''})` : '';
    return `${`${e.time}ns`.padStart(timeWidth)}  ${e.task.padEnd(taskWidth)}  ${e.type.padEnd(typeWidth)}  ${e.text}${fold}`.trimEnd();
  });
  if (t.dropped > 0) lines.push(`... ${t.dropped} more lines not kept (limit reached)`);
  return lines.join('\n');
}
