/**
 * The oracle's memory of recent events, for violation reports: a small ring per virtual page
 * (per mm), a small ring per frame, and one ring of range events (invalidations, unmaps,
 * shootdowns, system calls). A report gathers the rings of its page and frames plus the range
 * events that cover its address, in trace order.
 *
 * Cost: O(1) per recorded event (one Map lookup, one array store); memory is bounded by the
 * ring sizes times the pages and frames touched. Rings keep references to the bus's event
 * objects (no copy).
 */
import type { TraceEvent } from '../sim/index.js';
import { PAGE_SIZE } from '../mm/index.js';

/**
 * A fixed-size ring of events, oldest overwritten first. Each event is kept with the order in
 * which the oracle saw it: trace order, which is also `seq` order except for an event whose
 * payload carries its own `seq` field ('device.fault' does: the fault buffer's sequence).
 */
export class EventRing {
  private readonly slots: (TraceEvent | undefined)[];
  private readonly order: Float64Array;
  private next = 0;
  private count = 0;

  constructor(readonly capacity: number) {
    this.slots = new Array<TraceEvent | undefined>(capacity);
    this.order = new Float64Array(capacity);
  }

  push(ev: TraceEvent, order: number): void {
    if (this.count > 0 && this.slots[(this.next - 1 + this.capacity) % this.capacity] === ev) return;
    this.slots[this.next] = ev;
    this.order[this.next] = order;
    this.next = (this.next + 1) % this.capacity;
    if (this.count < this.capacity) this.count++;
  }

  /** Calls `fn` for each event, oldest first, with its arrival order. */
  forEach(fn: (ev: TraceEvent, order: number) => void): void {
    const start = (this.next - this.count + this.capacity) % this.capacity;
    for (let i = 0; i < this.count; i++) {
      const k = (start + i) % this.capacity;
      fn(this.slots[k]!, this.order[k]!);
    }
  }

  /** The events, oldest first. */
  toArray(): TraceEvent[] {
    const out: TraceEvent[] = [];
    this.forEach((ev) => out.push(ev));
    return out;
  }
}

/** What a report asks the history about. */
export interface HistoryQuery {
  readonly mm: number | null;
  readonly addr: number | null;
  readonly device: string | null;
  readonly asid: number | null;
  readonly pfns: readonly number[];
}

export class History {
  private readonly byPage = new Map<number, Map<number, EventRing>>();
  private readonly byFrame = new Map<number, EventRing>();
  private readonly rangeRing: EventRing;
  /** Arrival counter: the order events reached the oracle. */
  private tick = 0;

  /**
   * @param perPage events kept per virtual page and per frame
   * @param ranges range events kept in all
   */
  constructor(
    private readonly perPage: number,
    ranges: number,
  ) {
    this.rangeRing = new EventRing(ranges);
  }

  /** Records `ev` as touching page `vpn` of mm `mm`. */
  page(mm: number, vpn: number, ev: TraceEvent): void {
    let m = this.byPage.get(mm);
    if (m === undefined) this.byPage.set(mm, (m = new Map()));
    let r = m.get(vpn);
    if (r === undefined) m.set(vpn, (r = new EventRing(this.perPage)));
    r.push(ev, this.arrival(ev));
  }

  /** Records `ev` as touching frame `pfn`. */
  frame(pfn: number, ev: TraceEvent): void {
    let r = this.byFrame.get(pfn);
    if (r === undefined) this.byFrame.set(pfn, (r = new EventRing(this.perPage)));
    r.push(ev, this.arrival(ev));
  }

  /** Records a range event (matched against a report's address when the report is made). */
  range(ev: TraceEvent): void {
    this.rangeRing.push(ev, this.arrival(ev));
  }

  // One event may be recorded in several rings: the same arrival number for all of them.
  private lastEvent: TraceEvent | null = null;
  private arrival(ev: TraceEvent): number {
    if (ev !== this.lastEvent) {
      this.lastEvent = ev;
      this.tick++;
    }
    return this.tick;
  }

  /** Forgets an mm's page rings (after it exited and its reports can no longer be made). */
  dropMm(mm: number): void {
    this.byPage.delete(mm);
  }

  /** The last `limit` events touching the page, its frames, or covering its address; oldest first. */
  query(q: HistoryQuery, limit: number): TraceEvent[] {
    const seen = new Map<TraceEvent, number>();
    const add = (ev: TraceEvent, order: number): void => {
      if (!seen.has(ev)) seen.set(ev, order);
    };
    if (q.mm !== null && q.addr !== null) this.byPage.get(q.mm)?.get(Math.floor(q.addr / PAGE_SIZE))?.forEach(add);
    for (const pfn of q.pfns) this.byFrame.get(pfn)?.forEach(add);
    // Range events: those that cover the address, and the callbacks and ends of the
    // invalidations that do.
    const ranges = new Set<number>();
    this.rangeRing.forEach((ev, order) => {
      if (rangeEventCovers(ev, q, ranges)) add(ev, order);
    });
    const out = [...seen.entries()].sort((a, b) => a[1] - b[1]).map(([ev]) => ev);
    return out.length > limit ? out.slice(out.length - limit) : out;
  }
}

function within(addr: number, start: number, end: number): boolean {
  return addr >= start && addr < end;
}

/** True if range event `ev` concerns the query's address (`ranges`: invalidations found so far). */
function rangeEventCovers(ev: TraceEvent, q: HistoryQuery, ranges: Set<number>): boolean {
  const addr = q.addr;
  switch (ev.type) {
    case 'notifier.invalidate_start':
      if (ev.mm === q.mm && addr !== null && within(addr, ev.start, ev.end)) {
        ranges.add(ev.range);
        return true;
      }
      return false;
    case 'notifier.callback':
    case 'notifier.invalidate_end':
      return ev.mm === q.mm && ranges.has(ev.range);
    case 'device.pt_unmap':
    case 'device.tlb_invalidate':
      return ev.device === q.device && ev.asid === q.asid && addr !== null && within(addr, ev.start, ev.end);
    case 'mm.syscall':
      return ev.mm === q.mm && addr !== null && (within(addr, ev.start, ev.start + ev.len) || ev.op === 'mremap');
    case 'mm.move_ptes':
      return ev.mm === q.mm && addr !== null && (within(addr, ev.from, ev.from + ev.len) || within(addr, ev.to, ev.to + ev.len));
    case 'mm.fork':
      return ev.parent === q.mm || ev.child === q.mm;
    case 'mm.exit':
      return ev.mm === q.mm;
    default:
      return q.mm === null && q.addr === null;
  }
}
