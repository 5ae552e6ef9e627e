/**
 * Compute engines: device kernels ("jobs") run as warps, and every memory access of a warp goes
 * through the device MMU: TLB, page walk, fault, stall, replay or cancel.
 *
 * Models: replayable faults of NVIDIA GPUs (kernel-open/nvidia-uvm/uvm_gpu_replayable_faults.c:
 * "fault and stall": the faulting access waits in the uTLB until a replay makes it retry its
 * translation, or a cancel kills its context) and nouveau's use of them (nouveau_svm.c: one
 * REPLAY after servicing a batch; a group it cannot service is cancelled, killing the channel).
 *
 * An access, step by step (each `await` is a scheduling point):
 *
 *   await sleep(lookup)        lookup = tlbHitNs, + pageWalkNs if the TLB does not hold the page
 *                              now (charged up front, so that one point serves a hit or a walk)
 *   TLB hit, permitted    -> touch memory at once           (no page-table read: stale hits are real)
 *   TLB hit, forbidden    -> drop the entry, fault
 *   miss (walk charged)   -> walk the page table NOW; valid and permitted: fill, touch; else fault
 *   miss (not charged: the entry went during the sleep) -> await sleep(pageWalkNs), walk as above
 *   fault: await sleep(faultNs); write a record (or drop it: overflow); raise the interrupt;
 *          stall until a replay of the address space or a cancel of the job (then throw
 *          DeviceFaultError); await sleep(replayNs + lookup); retry from the TLB lookup.
 *
 * The translation that succeeds and the byte access happen in one synchronous step, with the
 * 'device.access' event emitted in it: the oracle checks the frame against the CPU page table at
 * exactly the instant the device touched it. A killed job's accesses fail at their next
 * scheduling point, so no access of a cancelled context touches memory afterwards.
 *
 * What protects what: nothing is shared across scheduling points except through the device's
 * own synchronous methods; a warp's private state (tlbHit) is read right after it is written.
 * The stall pairs with Device.replay: the access snapshots `replayGen` and waits for it to
 * change, with no scheduling point between writing its record and queueing on `replayWq`, so a
 * replay issued after the record is visible always releases it.
 *
 * Simplifications: accesses are naturally aligned and at most 8 bytes (one page); a warp has one
 * access in flight (many warps give many in flight); a prefetch fault is reported at once, without
 * the fault round trip, and never stalls.
 */
import { EINVAL, KernelBug, KernelError, type Task } from '../sim/index.js';
import { PAGE_SIZE, ZERO_PFN } from '../mm/index.js';
import type { DeviceAddressSpace } from './address-space.js';
import { DEVICE_VA_LIMIT } from './address-space.js';
import type { Device } from './device.js';
import type { DeviceFaultError } from './errors.js';
import { ACCESS_ATOMIC, ACCESS_PREFETCH, ACCESS_READ, ACCESS_WRITE, FAULT_ACCESS } from './fault-buffer.js';
import { DEV_PTE_ATOMIC, DEV_PTE_VALID, DEV_PTE_WRITE } from './pagetable.js';

/** A device kernel: the body each warp runs. */
export type DeviceKernel<T> = (ctx: WarpContext) => Promise<T>;

/** Options of Device.launch. */
export interface LaunchOptions {
  /** Warps (engine tasks) running the kernel concurrently. An integer in [1, 65536]. Default 1. */
  readonly warps?: number;
  /** The compute engine that runs it, in [0, Device.computeEngines). Default 0. */
  readonly engine?: number;
  /** Name for task names and traces. Default `job<id>`. */
  readonly name?: string;
}

/** DEV_PTE_* bits an access needs, by access code. Atomic implies write (map enforces it). */
// Indexed by ACCESS_* code: prefetch 0, read 1, write 2, atomic 3.
const NEED: readonly number[] = [DEV_PTE_VALID, DEV_PTE_VALID, DEV_PTE_WRITE, DEV_PTE_ATOMIC];

const NEXT_WALK = 0;
const NEXT_FAULT = 1;
const KIND_NAME = ['prefetch', 'load', 'store', 'atomic'] as const;
const U64 = 1n << 64n;

/**
 * A launched device kernel (a context: what a cancel kills). Join it to get each warp's result;
 * if it was cancelled, join throws the DeviceFaultError.
 */
export class DeviceJob<T> {
  /** @internal the warp tasks. */
  readonly tasks: Task<T | undefined>[] = [];
  /** @internal warps still running. */
  live = 0;
  /** @internal accesses of this job stalled on a fault right now. */
  stalled = 0;
  /** @internal address and access code of the latest stalled access. */
  stallAddr = 0;
  /** @internal */
  stallAccess = 0;
  private killedBy: DeviceFaultError | null = null;
  private joined = false;

  constructor(
    readonly device: Device,
    readonly as: DeviceAddressSpace,
    readonly id: number,
    readonly name: string,
    /** The compute engine running it. */
    readonly engine: number,
    readonly warps: number,
  ) {}

  /** The address space's id. */
  get asid(): number {
    return this.as.asid;
  }

  /** The error that killed the job, or null. */
  get killed(): DeviceFaultError | null {
    return this.killedBy;
  }

  /** True once every warp has finished (normally or killed). */
  get done(): boolean {
    return this.live === 0;
  }

  /** @internal marks the job killed and wakes its stalled accesses so that they fail. */
  kill(err: DeviceFaultError): void {
    if (this.killedBy !== null) return;
    this.killedBy = err;
    this.as.replayWq.wakeUpAll();
  }

  /**
   * Waits for every warp; returns their results in warp order. Throws the DeviceFaultError if
   * the job was cancelled. Once per job (KernelError EINVAL the second time).
   */
  async join(): Promise<T[]> {
    if (this.joined) throw new KernelError(EINVAL, `join: ${this.device.name} job ${this.id} (${this.name}) was already joined`);
    this.joined = true;
    const out: T[] = [];
    for (const t of this.tasks) out.push((await t.join()) as T);
    if (this.killedBy !== null) throw this.killedBy;
    return out;
  }
}

/**
 * What a warp's kernel uses to access memory. Every access is async (a scheduling point with a
 * cost) and may stall on a fault. Values are bigints (numbers are accepted as input); addresses
 * must be naturally aligned (KernelError EINVAL otherwise, before anything happens).
 */
export class WarpContext {
  /** Whether the last successful translation hit the TLB (read right after it). */
  private tlbHit = false;
  /** Whether the current lookup's time included a page walk (lookupNs). */
  private walkCharged = false;
  /** What translateSlow does first after tlbTry failed: NEXT_WALK or NEXT_FAULT. */
  private next = NEXT_WALK;

  constructor(
    readonly device: Device,
    readonly job: DeviceJob<unknown>,
    /** This warp's index in [0, warps). */
    readonly warp: number,
  ) {}

  /** Warps of the job. */
  get warps(): number {
    return this.job.warps;
  }

  get asid(): number {
    return this.job.as.asid;
  }

  /** The compute engine running the warp. */
  get engine(): number {
    return this.job.engine;
  }

  /** Loads `size` bytes (1, 2, 4 or 8) at `addr`, little-endian, zero-extended. */
  async load(addr: number, size: number): Promise<bigint> {
    checkAccess('load', addr, size, false);
    await this.device.engine.sleep(this.lookupNs(addr));
    let pfn = this.tlbTry(ACCESS_READ, addr);
    if (pfn < 0) pfn = await this.translateSlow(ACCESS_READ, addr);
    const phys = this.device.phys;
    const off = addr % PAGE_SIZE;
    let v: bigint;
    if (size === 8) v = phys.readU64(pfn, off);
    else {
      const w = phys.readU32(pfn, off & ~3);
      v = BigInt(size === 4 ? w : (w >>> ((off & 3) * 8)) & (size === 1 ? 0xff : 0xffff));
    }
    this.accessed(1, addr, size, pfn, v, null);
    return v;
  }

  /** Stores the low `size` bytes (1, 2, 4 or 8) of `value` at `addr`. Needs a writable entry. */
  async store(addr: number, size: number, value: bigint | number): Promise<void> {
    checkAccess('store', addr, size, false);
    if (size === 8) {
      const v = big64('store', value);
      await this.device.engine.sleep(this.lookupNs(addr));
      let pfn = this.tlbTry(ACCESS_WRITE, addr);
      if (pfn < 0) pfn = await this.translateSlow(ACCESS_WRITE, addr);
      this.checkNotZeroPage(pfn, 'store', addr);
      this.device.phys.writeU64(pfn, addr % PAGE_SIZE, v);
      this.accessed(2, addr, size, pfn, null, v);
      return;
    }
    const v = small('store', value, size);
    await this.device.engine.sleep(this.lookupNs(addr));
    let pfn = this.tlbTry(ACCESS_WRITE, addr);
    if (pfn < 0) pfn = await this.translateSlow(ACCESS_WRITE, addr);
    this.checkNotZeroPage(pfn, 'store', addr);
    const phys = this.device.phys;
    const off = addr % PAGE_SIZE;
    if (size === 4) phys.writeU32(pfn, off, v);
    else {
      const base = off & ~3;
      const shift = (off & 3) * 8;
      const mask = (size === 1 ? 0xff : 0xffff) << shift;
      const w = phys.readU32(pfn, base);
      phys.writeU32(pfn, base, ((w & ~mask) | (v << shift)) >>> 0);
    }
    this.accessed(2, addr, size, pfn, null, BigInt(v));
  }

  /** Atomically adds `delta` (mod 2**(8*size)) to the `size`-byte (4 or 8) word at `addr`; returns the old value. Needs an atomic entry. */
  async atomicAdd(addr: number, size: number, delta: bigint | number): Promise<bigint> {
    checkAccess('atomicAdd', addr, size, true);
    const phys = this.device.phys;
    const off = addr % PAGE_SIZE;
    if (size === 8) {
      const d = big64('atomicAdd', delta);
      await this.device.engine.sleep(this.lookupNs(addr));
      let pfn = this.tlbTry(ACCESS_ATOMIC, addr);
      if (pfn < 0) pfn = await this.translateSlow(ACCESS_ATOMIC, addr);
      this.checkNotZeroPage(pfn, 'atomicAdd', addr);
      const old = phys.readU64(pfn, off);
      const nv = (old + d) % U64;
      phys.writeU64(pfn, off, nv);
      this.accessed(3, addr, size, pfn, old, nv);
      return old;
    }
    const d = small('atomicAdd', delta, 4);
    await this.device.engine.sleep(this.lookupNs(addr));
    let pfn = this.tlbTry(ACCESS_ATOMIC, addr);
    if (pfn < 0) pfn = await this.translateSlow(ACCESS_ATOMIC, addr);
    this.checkNotZeroPage(pfn, 'atomicAdd', addr);
    const old = phys.readU32(pfn, off);
    const nv = (old + d) >>> 0;
    phys.writeU32(pfn, off, nv);
    const o = BigInt(old);
    this.accessed(3, addr, size, pfn, o, BigInt(nv));
    return o;
  }

  /** Atomic compare-and-swap of the `size`-byte (4 or 8) word at `addr`: stores `desired` if it equals `expected`; returns the old value. Needs an atomic entry. */
  async atomicCas(addr: number, size: number, expected: bigint | number, desired: bigint | number): Promise<bigint> {
    checkAccess('atomicCas', addr, size, true);
    const phys = this.device.phys;
    const off = addr % PAGE_SIZE;
    if (size === 8) {
      const exp = big64('atomicCas', expected);
      const des = big64('atomicCas', desired);
      await this.device.engine.sleep(this.lookupNs(addr));
      let pfn = this.tlbTry(ACCESS_ATOMIC, addr);
      if (pfn < 0) pfn = await this.translateSlow(ACCESS_ATOMIC, addr);
      this.checkNotZeroPage(pfn, 'atomicCas', addr);
      const old = phys.readU64(pfn, off);
      const hit = old === exp;
      if (hit) phys.writeU64(pfn, off, des);
      this.accessed(3, addr, size, pfn, old, hit ? des : null);
      return old;
    }
    const exp = small('atomicCas', expected, 4);
    const des = small('atomicCas', desired, 4);
    await this.device.engine.sleep(this.lookupNs(addr));
    let pfn = this.tlbTry(ACCESS_ATOMIC, addr);
    if (pfn < 0) pfn = await this.translateSlow(ACCESS_ATOMIC, addr);
    this.checkNotZeroPage(pfn, 'atomicCas', addr);
    const old = phys.readU32(pfn, off);
    const hit = old === exp;
    if (hit) phys.writeU32(pfn, off, des);
    const o = BigInt(old);
    this.accessed(3, addr, size, pfn, o, hit ? BigInt(des) : null);
    return o;
  }

  /**
   * Prefetch: translates `addr` (warming the TLB) without touching memory. On a translation
   * fault it writes a 'prefetch' record and raises the interrupt, but does not stall. Returns
   * true if the page was mapped.
   */
  async prefetch(addr: number): Promise<boolean> {
    checkAccess('prefetch', addr, 1, false);
    this.device.stats.prefetches++;
    await this.device.engine.sleep(this.lookupNs(addr));
    if (this.tlbTry(ACCESS_PREFETCH, addr) >= 0) return true;
    return (await this.translateSlow(ACCESS_PREFETCH, addr)) >= 0;
  }

  /**
   * The virtual time of the translation about to start, charged up front by the access's one
   * scheduling point: the TLB lookup, plus the page walk when the TLB does not hold the page
   * now (a peek, no LRU update). The translation itself runs after the sleep (tlbTry), so the
   * walk reads the page table at the instant the access touches memory. A prediction that
   * turns out wrong costs a hit the walk time, or a miss a second scheduling point.
   */
  private lookupNs(addr: number): number {
    const cost = this.device.cost;
    const cached = this.job.as.tlbState.holds(Math.floor(addr / PAGE_SIZE));
    this.walkCharged = !cached;
    return cached ? cost.tlbHitNs : cost.tlbHitNs + cost.pageWalkNs;
  }

  /**
   * The translation, run right after the scheduling point that charged lookupNs: a permitted
   * TLB hit, or (when the walk was charged) a walk that finds a permitted entry and fills the
   * TLB, returns the pfn. Otherwise -1, with `next` saying what translateSlow does: walk
   * (a miss whose walk was not charged) or fault (the walk found nothing permitted, or a hit
   * lacked the permission: the entry is dropped). Throws the job's DeviceFaultError once it is
   * killed. Synchronous: the common case costs one scheduling point and no extra promise.
   */
  private tlbTry(access: number, addr: number): number {
    const job = this.job;
    if (job.killed !== null) throw job.killed;
    const as = job.as;
    const tlb = as.tlbState;
    const stats = this.device.stats;
    const vpn = Math.floor(addr / PAGE_SIZE);
    const need = NEED[access]!;
    const slot = tlb.lookup(vpn);
    if (slot >= 0) {
      stats.tlbHits++;
      if ((tlb.flags[slot]! & need) === need) {
        this.tlbHit = true;
        return tlb.pfn[slot]!;
      }
      // The hardware keeps no faulting translation: the retry walks the (maybe upgraded) table.
      tlb.drop(slot);
      this.next = NEXT_FAULT;
      return -1;
    }
    stats.tlbMisses++;
    if (!this.walkCharged) {
      this.next = NEXT_WALK;
      return -1;
    }
    return this.walk(vpn, need, true);
  }

  /**
   * The page walk, now: a permitted entry fills the TLB and gives the pfn; else -1 (fault
   * next). `missed`: the TLB lookup just missed, with no scheduling point since.
   */
  private walk(vpn: number, need: number, missed: boolean): number {
    const as = this.job.as;
    const pt = as.pt;
    this.device.stats.pageWalks++;
    const flags = pt.lookup(vpn);
    if ((flags & need) === need) {
      const pfn = pt.foundPfn;
      as.tlbState.fill(vpn, pfn, flags, missed);
      this.tlbHit = false;
      const t = this.device.engine.trace;
      if (t.active && t.wants('device.tlb_fill')) {
        t.emit('device.tlb_fill', { device: this.device.name, asid: as.asid, vpn, pfn, write: (flags & DEV_PTE_WRITE) !== 0, atomic: (flags & DEV_PTE_ATOMIC) !== 0 });
      }
      return pfn;
    }
    this.next = NEXT_FAULT;
    return -1;
  }

  /**
   * The rest of a translation after tlbTry failed: walk, or fault, stall and retry, until it
   * succeeds; returns the pfn (-1 for a prefetch that faulted). Throws the job's
   * DeviceFaultError once it is killed.
   */
  private async translateSlow(access: number, addr: number): Promise<number> {
    const dev = this.device;
    const e = dev.engine;
    const cost = dev.cost;
    const stats = dev.stats;
    const job = this.job;
    const as = job.as;
    const vpn = Math.floor(addr / PAGE_SIZE);
    const need = NEED[access]!;
    let faultStart = -1;
    for (;;) {
      if (this.next === NEXT_WALK) {
        await e.sleep(cost.pageWalkNs);
        if (job.killed !== null) throw job.killed;
        const pfn = this.walk(vpn, need, false);
        if (pfn >= 0) {
          if (faultStart >= 0) stats.recordFaultLatency(e.now - faultStart);
          return pfn;
        }
      }
      if (access === ACCESS_PREFETCH) {
        dev.recordFault(this, ACCESS_PREFETCH, addr);
        return -1;
      }
      if (faultStart < 0) faultStart = e.now;
      await e.sleep(cost.faultNs);
      if (job.killed !== null) throw job.killed;
      // Record, interrupt and queueing on replayWq with no scheduling point in between: a
      // replay that follows the record's visibility cannot be missed (pairs with Device.replay).
      dev.recordFault(this, access, addr);
      const gen = as.replayGen;
      job.stalled++;
      job.stallAddr = addr;
      job.stallAccess = access;
      as.stalled++;
      try {
        await as.replayWq.waitEvent(() => as.replayGen !== gen || job.killed !== null);
      } finally {
        job.stalled--;
        as.stalled--;
      }
      if (job.killed !== null) throw job.killed;
      // The replay latency and the retried lookup in one scheduling point.
      await e.sleep(cost.replayNs + this.lookupNs(addr));
      const pfn = this.tlbTry(access, addr);
      if (pfn >= 0) {
        stats.recordFaultLatency(e.now - faultStart);
        return pfn;
      }
    }
  }

  /** Counts the access and emits 'device.access' in the same synchronous step as the byte access. */
  private accessed(kind: 1 | 2 | 3, addr: number, size: number, pfn: number, loaded: bigint | null, stored: bigint | null): void {
    const dev = this.device;
    const stats = dev.stats;
    stats.accesses++;
    if (kind === 1) stats.loads++;
    else if (kind === 2) stats.stores++;
    else stats.atomics++;
    const t = dev.engine.trace;
    if (t.active && t.wants('device.access')) {
      const job = this.job;
      t.emit('device.access', {
        device: dev.name,
        asid: job.as.asid,
        engine: job.engine,
        job: job.id,
        warp: this.warp,
        addr,
        size,
        kind: KIND_NAME[kind] as 'load' | 'store' | 'atomic',
        pfn,
        generation: dev.phys.generation[pfn]!,
        write: kind !== 1,
        tlbHit: this.tlbHit,
        loaded,
        stored,
      });
    }
  }

  private checkNotZeroPage(pfn: number, what: string, addr: number): void {
    if (pfn === ZERO_PFN) {
      const e = this.device.engine;
      e.bug(new KernelBug(`BUG: device ${this.device.name} ${what} at 0x${addr.toString(16)} (asid ${this.asid}) reached the zero page: the driver mapped pfn 0 writable`));
    }
  }
}

/** The access of an error message, for a code. */
export function accessName(code: number): string {
  return FAULT_ACCESS[code] ?? String(code);
}

/** Checks an access's address and size; `atomic` accesses are 4 or 8 bytes. */
function checkAccess(what: string, addr: number, size: number, atomic: boolean): void {
  if (atomic ? size !== 4 && size !== 8 : size !== 1 && size !== 2 && size !== 4 && size !== 8) {
    throw new KernelError(EINVAL, `${what}: size must be ${atomic ? '4 or 8' : '1, 2, 4 or 8'}: ${String(size)}`);
  }
  if (!Number.isInteger(addr) || addr < 0 || addr + size > DEVICE_VA_LIMIT) throw new KernelError(EINVAL, `${what}: addr must be an integer in [0, 2**48): ${String(addr)}`);
  if (addr % size !== 0) throw new KernelError(EINVAL, `${what}: addr 0x${addr.toString(16)} is not aligned to its size ${size}`);
}

/** A value for a 1-, 2- or 4-byte access as a uint32; accepts [-(2**(8*size-1)), 2**(8*size)). */
function small(what: string, v: bigint | number, size: number): number {
  const bits = size * 8;
  const hi = 2 ** bits;
  let n: number;
  if (typeof v === 'number') {
    if (!Number.isInteger(v) || v < -hi / 2 || v >= hi) throw new KernelError(EINVAL, `${what}: value must be an integer in [-2**${bits - 1}, 2**${bits}): ${String(v)}`);
    n = v;
  } else if (typeof v === 'bigint') {
    if (v < -BigInt(hi / 2) || v >= BigInt(hi)) throw new KernelError(EINVAL, `${what}: value must be in [-2**${bits - 1}, 2**${bits}): ${String(v)}`);
    n = Number(v);
  } else {
    throw new KernelError(EINVAL, `${what}: value must be a bigint or a number: ${String(v)}`);
  }
  return n < 0 ? n + hi : n;
}

/** A value for an 8-byte access as a bigint in [0, 2**64); accepts [-(2**63), 2**64) and safe integers. */
function big64(what: string, v: bigint | number): bigint {
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) throw new KernelError(EINVAL, `${what}: value must be a safe integer or a bigint: ${String(v)}`);
    return v < 0 ? BigInt(v) + U64 : BigInt(v);
  }
  if (typeof v !== 'bigint' || v < -(1n << 63n) || v >= U64) throw new KernelError(EINVAL, `${what}: value must be a bigint in [-2**63, 2**64): ${String(v)}`);
  return v < 0n ? v + U64 : v;
}
