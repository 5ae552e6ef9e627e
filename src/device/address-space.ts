/**
 * A device address space: one GPU virtual address space (a channel's VMM, UVM's per-GPU VA
 * space), with its own page table, TLB and replay state. The driver creates one per mirrored mm
 * and programs its page table; jobs launched on it translate through it.
 *
 * Models: the driver-visible half of the GPU MMU: map and unmap write page-table entries at
 * once (the driver writes the entries itself, as nouveau's PFNMAP/PFNCLR or test_hmm's xarray
 * stores); they do NOT touch the TLB, which the driver invalidates separately
 * (Device.tlbInvalidate), so an unmap without an invalidation leaves stale translations live.
 *
 * What protects what: every method is synchronous, so each runs atomically under the engine's
 * one-task rule; the driver serializes its own page-table updates as it sees fit (test_hmm uses
 * its mutex). `replayWq` is where stalled accesses of this address space wait; `replayGen` is
 * bumped by each replay (pairs with the stalled access's snapshot in engines.ts).
 *
 * Simplification: 4 KiB mappings only; no page-table memory accounting.
 */
import { EINVAL, KernelError, WaitQueue } from '../sim/index.js';
import { PAGE_SIZE } from '../mm/index.js';
import type { Device } from './device.js';
import type { DeviceJob } from './engines.js';
import { DEV_PTE_ATOMIC, DEV_PTE_MAP_FLAGS, DEV_PTE_VALID, DEV_PTE_WRITE, DevicePageTable, type DevicePageTableView } from './pagetable.js';
import { Tlb, type TlbView } from './tlb.js';

/** Device virtual addresses are below 2**48 (vpn < 2**36), as the CPU side. */
export const DEVICE_VA_LIMIT = 2 ** 48;

export class DeviceAddressSpace {
  /** @internal the page table (read it through `pageTable`). */
  readonly pt = new DevicePageTable();
  /** @internal the TLB (read it through `tlb`). */
  readonly tlbState: Tlb;
  /** @internal bumped by each replay of this address space. */
  replayGen = 0;
  /** @internal stalled accesses wait here for a replay or a cancel. */
  readonly replayWq: WaitQueue;
  /** @internal accesses stalled on a fault right now. */
  stalled = 0;
  /** @internal live jobs, in launch order. */
  readonly jobs = new Set<DeviceJob<unknown>>();
  /** @internal */
  destroyed = false;

  constructor(
    readonly device: Device,
    readonly asid: number,
    tlbEntries: number,
    tlbWays: number,
  ) {
    this.tlbState = new Tlb(tlbEntries, tlbWays);
    this.replayWq = new WaitQueue(device.engine, `${device.name}.as${asid}.replay`);
  }

  /** Read-only view of the page table (for the oracle and tests). */
  get pageTable(): DevicePageTableView {
    return this.pt;
  }

  /** Read-only view of the TLB (for the oracle and tests). */
  get tlb(): TlbView {
    return this.tlbState;
  }

  /** Accesses of this address space stalled on a fault right now. */
  get stalledAccesses(): number {
    return this.stalled;
  }

  /** True once Device.destroyAddressSpace has run. */
  get isDestroyed(): boolean {
    return this.destroyed;
  }

  /**
   * Writes the page-table entry of the page at `addr` (page aligned): it targets frame `pfn`
   * (system RAM, the zero page or device memory) with `flags` (DEV_PTE_WRITE, DEV_PTE_ATOMIC;
   * atomic requires write). Replaces any existing entry; does not touch the TLB (a changed entry
   * needs an invalidation, a new one does not). KernelError EINVAL on bad input, nothing changed.
   */
  map(addr: number, pfn: number, flags = 0): void {
    this.checkLive('map');
    checkPageAddr('map', 'addr', addr);
    this.checkPfn('map', pfn);
    checkFlags('map', flags);
    this.setEntry(addr / PAGE_SIZE, pfn, flags | DEV_PTE_VALID);
  }

  /**
   * map for consecutive pages: page i of [addr, addr + pfns.length * 4096) -> pfns[i], all with
   * `flags`. Every argument is checked before any entry is written.
   */
  mapRange(addr: number, pfns: ArrayLike<number>, flags = 0): void {
    this.checkLive('mapRange');
    checkPageAddr('mapRange', 'addr', addr);
    if (pfns === null || typeof pfns !== 'object' || typeof pfns.length !== 'number') {
      throw new KernelError(EINVAL, `mapRange: pfns must be an array of frame numbers: ${String(pfns)}`);
    }
    const n = pfns.length;
    if (addr + n * PAGE_SIZE > DEVICE_VA_LIMIT) throw new KernelError(EINVAL, `mapRange: [0x${addr.toString(16)}, +${n} pages) exceeds 2**48`);
    checkFlags('mapRange', flags);
    for (let i = 0; i < n; i++) this.checkPfn('mapRange', pfns[i]!);
    const vpn = addr / PAGE_SIZE;
    const f = flags | DEV_PTE_VALID;
    for (let i = 0; i < n; i++) this.setEntry(vpn + i, pfns[i]!, f);
  }

  /**
   * Clears the page-table entries of [start, end) (page aligned addresses, start <= end).
   * Returns how many valid entries it cleared. Does not touch the TLB: follow with
   * Device.tlbInvalidate and wait for its fence before freeing or reusing the frames.
   */
  unmap(start: number, end: number): number {
    this.checkLive('unmap');
    checkPageAddr('unmap', 'start', start);
    checkPageAddr('unmap', 'end', end, true);
    if (start > end) throw new KernelError(EINVAL, `unmap: start 0x${start.toString(16)} > end 0x${end.toString(16)}`);
    const n = this.pt.clearRange(start / PAGE_SIZE, end / PAGE_SIZE);
    const dev = this.device;
    dev.stats.ptUnmaps += n;
    const t = dev.engine.trace;
    if (t.active && t.wants('device.pt_unmap')) t.emit('device.pt_unmap', { device: dev.name, asid: this.asid, start, end, pages: n });
    return n;
  }

  private setEntry(vpn: number, pfn: number, flags: number): void {
    this.pt.set(vpn, pfn, flags);
    const dev = this.device;
    dev.stats.ptMaps++;
    const t = dev.engine.trace;
    if (t.active && t.wants('device.pt_map')) {
      t.emit('device.pt_map', { device: dev.name, asid: this.asid, vpn, pfn, write: (flags & DEV_PTE_WRITE) !== 0, atomic: (flags & DEV_PTE_ATOMIC) !== 0 });
    }
  }

  private checkPfn(what: string, pfn: number): void {
    const end = this.device.phys.deviceFramesEnd;
    if (!Number.isInteger(pfn) || pfn < 0 || pfn >= end) throw new KernelError(EINVAL, `${what}: pfn must be a registered frame in [0, ${end}): ${String(pfn)}`);
  }

  private checkLive(what: string): void {
    if (this.destroyed) throw new KernelError(EINVAL, `${what}: address space ${this.asid} of ${this.device.name} was destroyed`);
  }
}

/** A page-aligned device virtual address in [0, 2**48) (or up to 2**48 inclusive for a range end). */
export function checkPageAddr(what: string, name: string, addr: number, isEnd = false): void {
  if (!Number.isInteger(addr) || addr < 0 || addr > DEVICE_VA_LIMIT || (addr === DEVICE_VA_LIMIT && !isEnd) || addr % PAGE_SIZE !== 0) {
    throw new KernelError(EINVAL, `${what}: ${name} must be a page-aligned address in [0, 2**48${isEnd ? ']' : ')'}: ${String(addr)}`);
  }
}

function checkFlags(what: string, flags: number): void {
  if (!Number.isInteger(flags) || (flags & ~DEV_PTE_MAP_FLAGS) !== 0) {
    throw new KernelError(EINVAL, `${what}: flags must be a combination of DEV_PTE_WRITE and DEV_PTE_ATOMIC: ${String(flags)}`);
  }
  if ((flags & DEV_PTE_ATOMIC) !== 0 && (flags & DEV_PTE_WRITE) === 0) {
    throw new KernelError(EINVAL, `${what}: DEV_PTE_ATOMIC requires DEV_PTE_WRITE: flags ${flags}`);
  }
}
