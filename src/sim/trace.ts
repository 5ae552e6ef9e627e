/**
 * The trace bus: typed, namespaced inspection events on eventemitter3.
 *
 * Every event carries `type`, `seq` (a total order over the run: the bus's own counter) and
 * `time` (virtual ns). Emission is synchronous. Emit sites first ask `wants(type)`, so that
 * with nobody listening the hot path builds no event object at all.
 *
 * Layers above add their own events by declaration merging:
 *
 *     declare module '../sim/trace.js' {
 *       interface TraceEventMap { 'mm.fault': { addr: number; write: boolean } }
 *     }
 */
import { EventEmitter } from 'eventemitter3';

/** Payloads of the engine's events, by type. Extended by other layers (see above). */
export interface TraceEventMap {
  'task.spawn': { task: number; name: string; parent: number | null };
  'task.exit': { task: number; name: string };
  'sched.switch': { from: number | null; to: number; name: string; step: number };
  'sched.decision': { step: number; choices: number; chosen: number };
  'time.advance': { from: number; to: number };
  'engine.choose': { n: number; value: number; label: string };
  'lock.acquire': { task: number; lock: string; mode: 'exclusive' | 'shared'; trylock: boolean };
  'lock.contend': { task: number; lock: string; holder: string };
  'lock.release': { task: number; lock: string };
  'wait.block': { task: number; on: string };
  'wait.wake': { task: number; by: number | null };
  warn: { message: string; count: number };
  'run.end': { ok: boolean; steps: number; code: string | null };
}

export type TraceEventType = keyof TraceEventMap;

/** An emitted event: its payload plus `type`, `seq` and `time`. */
export type TraceEvent<K extends TraceEventType = TraceEventType> = {
  [T in K]: TraceEventMap[T] & { readonly type: T; readonly seq: number; readonly time: number };
}[K];

type Listener<K extends TraceEventType> = (event: TraceEvent<K>) => void;

export class TraceBus {
  private readonly emitter = new EventEmitter();
  private readonly counts = new Map<string, number>();
  private anyCount = 0;
  private seq = 0;
  /** True while anyone listens to anything: the cheapest first guard for hot paths. */
  active = false;

  /**
   * @param clock virtual time source
   * @param onListenerError called when a listener throws; the engine fails the run with it
   */
  constructor(
    private readonly clock: () => number,
    private readonly onListenerError: (err: unknown, event: TraceEvent) => void = (err) => {
      throw err;
    },
  ) {}

  /** True when someone listens to `type` (or to every event). Check it before building an event. */
  wants(type: TraceEventType): boolean {
    return this.active && (this.anyCount > 0 || (this.counts.get(type) ?? 0) > 0);
  }

  private recount(): void {
    let total = this.anyCount;
    for (const n of this.counts.values()) total += n;
    this.active = total > 0;
  }

  /** Emits synchronously. Callers guard with `wants(type)` on hot paths. */
  emit<K extends TraceEventType>(type: K, payload: TraceEventMap[K]): void {
    if (!this.wants(type)) return;
    const event = { type, seq: this.seq++, time: this.clock(), ...payload } as TraceEvent<K>;
    try {
      this.emitter.emit(type, event);
      if (this.anyCount > 0) this.emitter.emit('*', event);
    } catch (err) {
      // A listener (an oracle, a test) threw: the run fails with it, the emit site goes on.
      this.onListenerError(err, event as TraceEvent);
    }
  }

  /** Listens to one type. Returns a function that removes the listener. */
  on<K extends TraceEventType>(type: K, listener: Listener<K>): () => void {
    this.emitter.on(type, listener);
    this.counts.set(type, (this.counts.get(type) ?? 0) + 1);
    this.recount();
    let on = true;
    return () => {
      if (!on) return;
      on = false;
      this.emitter.off(type, listener);
      this.counts.set(type, (this.counts.get(type) ?? 1) - 1);
      this.recount();
    };
  }

  /** Listens to every event. Returns a function that removes the listener. */
  onAny(listener: (event: TraceEvent) => void): () => void {
    this.emitter.on('*', listener);
    this.anyCount++;
    this.recount();
    let on = true;
    return () => {
      if (!on) return;
      on = false;
      this.emitter.off('*', listener);
      this.anyCount--;
      this.recount();
    };
  }
}
