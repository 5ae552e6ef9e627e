/**
 * struct dmirror_device: one mirror device (one mock GPU) and what all its opens share: the
 * device memory allocator (its DevPagemap), the counters `calloc` / `cfree`, each device page's
 * owning mirror (page->zone_device_data), the dev_pagemap_ops (migrate_to_ram, page_free), and
 * the worker task that services the Device's replayable fault buffer for every open mirror.
 *
 * Models: lib/test_hmm.c (6.x mainline): struct dmirror_device, dmirror_devmem_alloc_page,
 * dmirror_devmem_free, dmirror_select_device, dmirror_device_remove_chunks (RELEASE), and the
 * per-mirror-device list the kernel keeps implicitly (opens of /dev/hmm_dmirrorN). The memory
 * is the Device's own pagemap (`device.memory`), created with the Device: the kernel allocates
 * 256 MiB chunks on demand; here the pagemap is fixed and "removing the chunks" evicts every page
 * and keeps the frames for later allocations.
 *
 * What protects what:
 * - `calloc`, `cfree`, the owner table and the free list (inside DevPagemap): the kernel's
 *   mdevice->lock spinlock; here they change only synchronously (no scheduling point inside
 *   allocPage / devmemFree), atomic under the engine's one-task rule.
 * - `devmemLock` (Mutex, class 'dmirror.devmem_lock'): serializes RELEASE (chunk removal).
 * - the mirror set, the asid map and the own-migration list: changed synchronously.
 * Lock order: devmem_lock -> (mmap_lock, page locks) -> dmirror.mutex.
 */
import {
  type DevPagemap,
  Device,
  type DeviceOptions,
  EINVAL,
  ENOMEM,
  type Engine,
  KernelBug,
  KernelError,
  MEMORY_DEVICE_COHERENT,
  MIGRATE_VMA_SELECT_DEVICE_COHERENT,
  MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
  type MmStruct,
  Mutex,
  type PhysMem,
  type Task,
} from 'hmm-emu';
import type { Dmirror } from './mirror.js';
import { dmirrorDevmemFault, dmirrorDeviceEvict } from './migrate.js';
import { HMM_DMIRROR_MEMORY_DEVICE_COHERENT, HMM_DMIRROR_MEMORY_DEVICE_PRIVATE } from './uapi.js';
import { type DmirrorWorkerStats, dmirrorFaultWorker, newWorkerStats } from './worker.js';

/** A migration this device started (see beginOwnMigration). */
export interface OwnMigration {
  readonly mm: MmStruct;
  readonly start: number;
  readonly end: number;
  /** MIGRATE_VMA_SELECT_* */
  readonly flags: number;
}

export class DmirrorDevice {
  readonly engine: Engine;
  readonly phys: PhysMem;
  /** The device's memory (MEMORY_DEVICE_PRIVATE or _COHERENT), or null when it has none. */
  readonly memory: DevPagemap | null;
  /** pgmap->owner: this device's identity for hmm_range_fault, migrate_vma and own-event filtering. */
  readonly owner: unknown;
  /** HMM_DMIRROR_MEMORY_DEVICE_PRIVATE or _COHERENT. */
  readonly zoneDeviceType: number;
  /** Device pages allocated (mdevice->calloc). */
  calloc = 0;
  /** Device pages freed back (mdevice->cfree). */
  cfree = 0;
  /** Serializes RELEASE (mdevice->devmem_lock). */
  readonly devmemLock: Mutex;
  /** Fault-worker counters. */
  readonly workerStats: DmirrorWorkerStats = newWorkerStats();

  /** page->zone_device_data: the mirror that migrated each device page here, by pfn - firstPfn. */
  private readonly zoneDeviceData: (Dmirror | null)[];
  private readonly mirrors = new Set<Dmirror>();
  private readonly byAsid = new Map<number, Dmirror>();
  private opens = 0;
  private worker: Task<void> | null = null;
  /** Own migrations in flight (registered before migrate_vma_setup, dropped after finalize). */
  private readonly ownMigrations: OwnMigration[] = [];

  constructor(readonly device: Device) {
    if (!(device instanceof Device)) throw new KernelError(EINVAL, `DmirrorDevice: not a Device: ${String(device)}`);
    this.engine = device.engine;
    this.phys = device.phys;
    this.memory = device.memory;
    this.owner = device.memory?.owner ?? device;
    this.zoneDeviceType = device.memory?.type === MEMORY_DEVICE_COHERENT ? HMM_DMIRROR_MEMORY_DEVICE_COHERENT : HMM_DMIRROR_MEMORY_DEVICE_PRIVATE;
    this.devmemLock = new Mutex(this.engine, `${device.name}.devmem_lock`, { lockClass: 'dmirror.devmem_lock' });
    this.zoneDeviceData = new Array<Dmirror | null>(device.memory?.nframes ?? 0).fill(null);
    if (device.memory !== null) {
      device.setMemoryOps({
        migrateToRam: (vmf) => dmirrorDevmemFault(this, vmf),
        pageFree: (pfn) => this.devmemFree(pfn),
      });
    }
  }

  /** A Device built from `opts` (device memory included) and its dmirror device. */
  static create(engine: Engine, phys: PhysMem, opts: DeviceOptions = {}): DmirrorDevice {
    return new DmirrorDevice(new Device(engine, phys, opts));
  }

  get name(): string {
    return this.device.name;
  }

  /** dmirror_select_device: which device pages migrate_vma may select on the way back. */
  get selectDevice(): number {
    return this.zoneDeviceType === HMM_DMIRROR_MEMORY_DEVICE_PRIVATE ? MIGRATE_VMA_SELECT_DEVICE_PRIVATE : MIGRATE_VMA_SELECT_DEVICE_COHERENT;
  }

  // ---- opens ----

  /** @internal a name for the next open. */
  nextMirrorName(): string {
    return `${this.device.name}.dmirror${this.opens++}`;
  }

  /** @internal open: the mirror is live (its faults are serviced). */
  attach(dmirror: Dmirror): void {
    this.mirrors.add(dmirror);
    this.byAsid.set(dmirror.as.asid, dmirror);
  }

  /** @internal release. */
  detach(dmirror: Dmirror): void {
    this.mirrors.delete(dmirror);
    this.byAsid.delete(dmirror.as.asid);
  }

  /** The open mirrors, in open order. */
  get openMirrors(): readonly Dmirror[] {
    return [...this.mirrors];
  }

  /** The open mirrors of `mm`. */
  mirrorsOf(mm: MmStruct): Dmirror[] {
    const out: Dmirror[] = [];
    for (const m of this.mirrors) if (m.mm === mm && !m.released) out.push(m);
    return out;
  }

  /** The mirror whose device address space is `asid`, if open. */
  mirrorOfAsid(asid: number): Dmirror | undefined {
    return this.byAsid.get(asid);
  }

  // ---- own migrations ----

  /**
   * Registers a migration of [start, end) of `mm` that this device is about to start with
   * migrate_vma (pgmap_owner = this.owner) selecting `flags` (MIGRATE_VMA_SELECT_*): the
   * mirrors' callbacks then erase, for that own MIGRATE event, only the entries such a migration
   * can move. Pair with endOwnMigration (in a finally).
   */
  beginOwnMigration(mm: MmStruct, start: number, end: number, flags: number): OwnMigration {
    const m: OwnMigration = { mm, start, end, flags };
    this.ownMigrations.push(m);
    return m;
  }

  /** Drops a registration of beginOwnMigration. */
  endOwnMigration(m: OwnMigration): void {
    const i = this.ownMigrations.indexOf(m);
    if (i >= 0) this.ownMigrations.splice(i, 1);
  }

  /** The MIGRATE_VMA_SELECT_* flags of the own migrations of `mm` overlapping [start, end) (0: none registered). */
  ownMigrationFlags(mm: MmStruct, start: number, end: number): number {
    let flags = 0;
    for (const m of this.ownMigrations) if (m.mm === mm && m.start < end && start < m.end) flags |= m.flags;
    return flags;
  }

  // ---- device memory ----

  /**
   * dmirror_devmem_alloc_page: a free device page, referenced and LOCKED (zone_device_page_init
   * locks it; DevPagemap.allocPage hands it out unlocked), with `dmirror` as its owner; or
   * -ENOMEM when device memory is full (the kernel would add a chunk). Synchronous.
   */
  allocPage(dmirror: Dmirror): number {
    const mem = this.memory;
    if (mem === null) return -ENOMEM;
    const pfn = mem.allocPage();
    if (pfn < 0) return pfn;
    // A free page is unlocked and nobody else holds it: the trylock cannot fail.
    if (!this.phys.trylockPage(pfn)) this.engine.bug(new KernelBug(`BUG: ${this.name}: fresh device page ${pfn} is locked`));
    this.calloc++;
    this.zoneDeviceData[pfn - mem.firstPfn] = dmirror;
    return pfn;
  }

  /** The mirror that migrated device page `pfn` here (rpage->zone_device_data), or null. */
  pageOwner(pfn: number): Dmirror | null {
    const mem = this.memory;
    if (mem === null || !mem.contains(pfn)) return null;
    return this.zoneDeviceData[pfn - mem.firstPfn] ?? null;
  }

  /** dmirror_devmem_free (dev_pagemap_ops.page_free): the page is back on the free list. */
  private devmemFree(pfn: number): void {
    const mem = this.memory!;
    this.cfree++;
    this.zoneDeviceData[pfn - mem.firstPfn] = null;
  }

  /**
   * dmirror_device_evict_chunk over all device memory: every device page in use goes back to
   * system memory (migrate_device_range). Returns the pages moved.
   */
  evictAll(): Promise<number> {
    return dmirrorDeviceEvict(this);
  }

  /** HMM_DMIRROR_RELEASE: dmirror_device_remove_chunks under devmem_lock (here: evict everything). */
  async removeChunks(): Promise<number> {
    await this.devmemLock.lock();
    try {
      return await this.evictAll();
    } finally {
      this.devmemLock.unlock();
    }
  }

  // ---- the fault worker ----

  /**
   * Starts the worker task that services the Device's fault buffer for every open mirror (see
   * worker.ts). Call stop() to end it, or the run ends with the worker blocked (a deadlock
   * report). Idempotent.
   */
  startFaultWorker(): void {
    if (this.worker !== null && this.worker.state !== 'done') return;
    this.worker = this.engine.spawn(`${this.device.name}.dmirror_fault`, () => dmirrorFaultWorker(this));
  }

  /** Stops interrupt delivery (Device.stop) and waits for the worker to exit. */
  async stop(): Promise<void> {
    this.device.stop();
    const w = this.worker;
    this.worker = null;
    if (w !== null) await w.join();
  }
}
