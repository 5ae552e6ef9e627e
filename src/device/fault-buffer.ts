/**
 * The replayable fault buffer: a bounded ring the device writes fault records into and the
 * driver reads out, GET/PUT style.
 *
 * Models: the GPU's replayable fault buffer as nouveau (drivers/gpu/drm/nouveau/nouveau_svm.c:
 * nouveau_svm_fault_buffer, read entries from GET to PUT, then write GET) and NVIDIA UVM
 * (kernel-open/nvidia-uvm/uvm_gpu_replayable_faults.c: cached_get / cached_put, batches of up to
 * 256 entries) drive it. The hardware writes at PUT; when the ring is full a new record is
 * dropped and the sticky overflow flag is set, which only the driver clears (clearOverflow).
 * A dropped fault is not lost for good: its access stays stalled, and the next replay makes it
 * retry and fault again, so a driver that clears the overflow and replays recovers every access.
 * Records are not coalesced: the same page faulting in many warps gives many records (UVM
 * coalesces duplicates in software).
 *
 * Representation: struct of arrays, one slot per entry; a record object is built only when the
 * driver reads one.
 *
 * Locking: none; the device writes and the driver reads synchronously, atomic under the
 * engine's one-task rule (the hardware's GET/PUT registers need no lock either).
 *
 * Simplification: no valid bit per entry (PUT is always current), no separate non-replayable
 * buffer (the copy engine works on physical frames and never faults).
 */
import { EINVAL, KernelError } from '../sim/index.js';

/** The access that faulted. Numeric codes (FAULT_ACCESS index) follow nouveau's priority: prefetch < read < write < atomic. */
export type FaultAccess = 'prefetch' | 'read' | 'write' | 'atomic';

/** FaultAccess by code. */
export const FAULT_ACCESS: readonly FaultAccess[] = ['prefetch', 'read', 'write', 'atomic'];
export const ACCESS_PREFETCH = 0;
export const ACCESS_READ = 1;
export const ACCESS_WRITE = 2;
export const ACCESS_ATOMIC = 3;

/** One fault record, as the driver reads it. */
export interface FaultRecord {
  /** The faulting virtual address, page aligned (as the hardware reports it). */
  readonly address: number;
  readonly access: FaultAccess;
  /** The compute engine that ran the access. */
  readonly engine: number;
  /** The address space (the hardware's instance pointer). */
  readonly asid: number;
  /** The context (launched job) that faulted: what a per-record cancel kills. */
  readonly job: number;
  /** Virtual time the record became visible. */
  readonly time: number;
  /** The device's fault sequence number; dropped faults consume one too, so a gap shows a drop. */
  readonly seq: number;
}

export class FaultBuffer {
  private readonly addr: Float64Array;
  private readonly access: Uint8Array;
  private readonly engine: Uint32Array;
  private readonly asid: Uint32Array;
  private readonly job: Uint32Array;
  private readonly time: Float64Array;
  private readonly seq: Float64Array;
  private getPos = 0;
  private putPos = 0;
  private count = 0;
  private overflowed = false;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > 1 << 20) {
      throw new KernelError(EINVAL, `FaultBuffer: capacity must be an integer in [1, 2**20]: ${String(capacity)}`);
    }
    this.addr = new Float64Array(capacity);
    this.access = new Uint8Array(capacity);
    this.engine = new Uint32Array(capacity);
    this.asid = new Uint32Array(capacity);
    this.job = new Uint32Array(capacity);
    this.time = new Float64Array(capacity);
    this.seq = new Float64Array(capacity);
  }

  /** Records waiting to be read (PUT - GET). */
  get length(): number {
    return this.count;
  }

  /** The GET pointer: the slot of the oldest unread record. */
  get get(): number {
    return this.getPos;
  }

  /** The PUT pointer: the slot the next record goes to. */
  get put(): number {
    return this.putPos;
  }

  /** True once a record was dropped for lack of room, until clearOverflow. */
  get overflow(): boolean {
    return this.overflowed;
  }

  /** Clears the overflow flag (the driver has seen it; it should replay so that dropped faults recur). */
  clearOverflow(): void {
    this.overflowed = false;
  }

  /** The record in slot `slot`, which must hold an unread record (between GET and PUT). */
  read(slot: number): FaultRecord {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.capacity) {
      throw new KernelError(EINVAL, `fault buffer read: slot must be an integer in [0, ${this.capacity}): ${String(slot)}`);
    }
    if ((slot - this.getPos + this.capacity) % this.capacity >= this.count) {
      throw new KernelError(EINVAL, `fault buffer read: slot ${slot} holds no unread record (GET ${this.getPos}, PUT ${this.putPos}, ${this.count} unread)`);
    }
    return this.record(slot);
  }

  /** The i-th unread record (0 = oldest) without consuming it. */
  peek(i: number): FaultRecord {
    if (!Number.isInteger(i) || i < 0 || i >= this.count) throw new KernelError(EINVAL, `fault buffer peek: index must be an integer in [0, ${this.count}): ${String(i)}`);
    return this.record((this.getPos + i) % this.capacity);
  }

  /** Writes GET: the records from the old GET up to `slot` (exclusive) are consumed. `slot` must be in the unread window or equal PUT. */
  setGet(slot: number): void {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.capacity) {
      throw new KernelError(EINVAL, `fault buffer setGet: slot must be an integer in [0, ${this.capacity}): ${String(slot)}`);
    }
    let n = (slot - this.getPos + this.capacity) % this.capacity;
    // A full ring has GET == PUT: moving GET to PUT then consumes everything.
    if (n === 0 && slot === this.putPos && this.count === this.capacity) n = this.capacity;
    if (n > this.count) {
      throw new KernelError(EINVAL, `fault buffer setGet: slot ${slot} is past PUT (GET ${this.getPos}, PUT ${this.putPos}, ${this.count} unread)`);
    }
    this.getPos = slot;
    this.count -= n;
  }

  /** Reads and consumes up to `max` records (default all), oldest first. */
  drain(max = Infinity): FaultRecord[] {
    if (typeof max !== 'number' || !(max >= 0)) throw new KernelError(EINVAL, `fault buffer drain: max must be a number >= 0: ${String(max)}`);
    const n = Math.min(this.count, max);
    const out: FaultRecord[] = new Array<FaultRecord>(n);
    for (let i = 0; i < n; i++) {
      out[i] = this.record(this.getPos);
      this.getPos = this.getPos + 1 === this.capacity ? 0 : this.getPos + 1;
    }
    this.count -= n;
    return out;
  }

  /**
   * The hardware's write at PUT. Returns false, setting the overflow flag, when the ring is full
   * (the record is dropped).
   */
  push(address: number, access: number, engine: number, asid: number, job: number, time: number, seq: number): boolean {
    if (this.count === this.capacity) {
      this.overflowed = true;
      return false;
    }
    const p = this.putPos;
    this.addr[p] = address;
    this.access[p] = access;
    this.engine[p] = engine;
    this.asid[p] = asid;
    this.job[p] = job;
    this.time[p] = time;
    this.seq[p] = seq;
    this.putPos = p + 1 === this.capacity ? 0 : p + 1;
    this.count++;
    return true;
  }

  private record(slot: number): FaultRecord {
    return {
      address: this.addr[slot]!,
      access: FAULT_ACCESS[this.access[slot]!]!,
      engine: this.engine[slot]!,
      asid: this.asid[slot]!,
      job: this.job[slot]!,
      time: this.time[slot]!,
      seq: this.seq[slot]!,
    };
  }
}
