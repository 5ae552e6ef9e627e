/**
 * The scenario driver interface and the driver registry.
 *
 * A scenario never imports driver code: it names the drivers it applies to (by name, by API
 * generation, by the features it needs), and the runner is handed a ScenarioDriver: an adapter
 * that says what the driver is (name, API generation, reference or buggy, features) and how to
 * bind one device of it to an mm. The adapters live with the drivers (drivers/index.ts, the
 * registry of the project's drivers); a test may write its own.
 *
 * What the runner needs of a bound device, and why:
 * - `device` and `as`: the oracle watches that address space (rule 1 to 3 at every access);
 * - `notifierSubs` and `owner`: the subscriptions whose callbacks zap the device, and the
 *   driver's pgmap owner, exactly as Oracle.watchDevice takes them (see docs/oracle.md: list
 *   only subscriptions that invalidate; the owner's own MIGRATE/EXCLUSIVE events may be skipped);
 * - `launch`: device kernels of the scenario run through the driver (its fault servicing);
 * - `commands`: the optional driver commands scenarios use (migrations), one per feature;
 * - `stats`: counters for the run's statistics (`retries` is read by name);
 * - `unbind`: teardown; afterwards no task of the driver may remain blocked.
 *
 * No state except the registry's map, which changes only through `add` (synchronous).
 */
import type { Device, DeviceAddressSpace, DeviceJob, DeviceKernel, DeviceOptions, LaunchOptions } from '../device/index.js';
import type { MmStruct, PhysMem } from '../mm/index.js';
import type { NotifierSub } from '../check/index.js';
import { EINVAL, type Engine, KernelError } from '../sim/index.js';

/** The API generation a driver is written against. */
export type DriverApi = '2015' | 'modern';
export const DRIVER_APIS: readonly DriverApi[] = ['2015', 'modern'];

/** A reference driver (expected coherent) or a deliberately broken one (expected caught). */
export type DriverKind = 'reference' | 'buggy';
export const DRIVER_KINDS: readonly DriverKind[] = ['reference', 'buggy'];

/**
 * Optional driver abilities a scenario may need. Each names the command it requires (none for
 * 'oversubscription', a behaviour):
 * - 'device-migration': `commands.migrateToDevice` (migrate_vma to device memory);
 * - 'migrate-to-system': `commands.migrateToSystem` (device memory back to RAM on request);
 * - 'snapshot': `commands.snapshot` (the CPU page table as the device would see it, no fault:
 *   test_hmm's HMM_DMIRROR_SNAPSHOT, one SNAPSHOT_* code per page);
 * - 'exclusive': `commands.makeExclusive` and `commands.checkExclusive` (make_device_exclusive
 *   for device atomics, and whether any page is still held exclusive);
 * - 'release': `commands.releaseDeviceMemory` (evict every device page to RAM: the device
 *   memory going away, test_hmm's HMM_DMIRROR_RELEASE);
 * - 'oversubscription': the driver migrates to device memory on first device touch and evicts
 *   when that memory is full, so a working set larger than the device memory still runs.
 */
export type DriverFeature = 'device-migration' | 'migrate-to-system' | 'snapshot' | 'exclusive' | 'release' | 'oversubscription';
export const DRIVER_FEATURES: readonly DriverFeature[] = ['device-migration', 'migrate-to-system', 'snapshot', 'exclusive', 'release', 'oversubscription'];

/**
 * The per-page codes of `commands.snapshot` (test_hmm_uapi.h's HMM_DMIRROR_PROT_*): ERROR (no
 * VMA, or no access), NONE (not present), READ / WRITE (the CPU permission, ORed with ZERO for
 * the zero page), DEV_PRIVATE_LOCAL / _REMOTE (device-private memory of this device or of
 * another), DEV_COHERENT_LOCAL / _REMOTE. PMD and PUD never occur here (no huge pages).
 */
export const SNAPSHOT = Object.freeze({
  ERROR: 0xff,
  NONE: 0x00,
  READ: 0x01,
  WRITE: 0x02,
  PMD: 0x04,
  PUD: 0x08,
  ZERO: 0x10,
  DEV_PRIVATE_LOCAL: 0x20,
  DEV_PRIVATE_REMOTE: 0x30,
  DEV_COHERENT_LOCAL: 0x40,
  DEV_COHERENT_REMOTE: 0x50,
} as const);

/** The commands each feature requires. */
const FEATURE_COMMANDS: Readonly<Record<DriverFeature, readonly (keyof DriverCommands)[]>> = {
  'device-migration': ['migrateToDevice'],
  'migrate-to-system': ['migrateToSystem'],
  snapshot: ['snapshot'],
  exclusive: ['makeExclusive', 'checkExclusive'],
  release: ['releaseDeviceMemory'],
  oversubscription: [],
};

/** What the runner asks a driver to bind: one device mirroring one mm. */
export interface BindRequest {
  readonly engine: Engine;
  readonly phys: PhysMem;
  /** The mm the device mirrors. */
  readonly mm: MmStruct;
  /** The device's name (unique in the world; the oracle names devices by it). */
  readonly name: string;
  /** Frames of device memory the world reserved for this device (0: none). */
  readonly memoryFrames: number;
  /** Hardware options of the Device (TLB, fault buffer, cost model); the driver adds name and memory. */
  readonly hardware: Readonly<Omit<DeviceOptions, 'name' | 'memory'>>;
  /** Driver-specific hints from the scenario's world (a driver ignores the ones it does not know). */
  readonly options: Readonly<Record<string, unknown>>;
}

/** The commands a scenario may call, present when the driver has the feature. */
export interface DriverCommands {
  /** 'device-migration': moves [addr, addr + npages pages) to device memory. Returns what the driver returns (>= 0 or -errno). */
  readonly migrateToDevice?: (addr: number, npages: number) => Promise<number>;
  /** 'migrate-to-system': moves this device's pages in [addr, addr + npages pages) back to RAM. */
  readonly migrateToSystem?: (addr: number, npages: number) => Promise<number>;
  /** 'snapshot': fills `out[i]` with the SNAPSHOT code of page i of [addr, addr + npages pages), without faulting. 0 or -errno. */
  readonly snapshot?: (addr: number, npages: number, out: Uint8Array) => Promise<number>;
  /** 'exclusive': make_device_exclusive on each page of the range, mapped atomic on the device. 0 or -errno. */
  readonly makeExclusive?: (addr: number, npages: number) => Promise<number>;
  /** 'exclusive': 0 if no page of the range is still held exclusive by the device, else -EPERM. */
  readonly checkExclusive?: (addr: number, npages: number) => Promise<number>;
  /** 'release': evicts every page of this device's memory back to RAM. 0 or -errno. */
  readonly releaseDeviceMemory?: () => Promise<number>;
}

/** One bound device of a driver. */
export interface BoundDevice {
  readonly device: Device;
  /** The device address space that mirrors the mm. */
  readonly as: DeviceAddressSpace;
  /** Subscriptions whose callbacks zap this device (names or notifier objects), for the oracle. */
  readonly notifierSubs: readonly NotifierSub[];
  /** The driver's pgmap owner (default: the device memory's owner). */
  readonly owner?: unknown;
  /** Launches a kernel on the mirror (its faults are serviced by the driver). Not a scheduling point. */
  launch<T>(opts: LaunchOptions, kernel: DeviceKernel<T>): DeviceJob<T>;
  readonly commands: DriverCommands;
  /** The driver's counters now (numbers only; `retries` is the fault-loop retries). */
  stats(): Readonly<Record<string, number>>;
  /** Stops mirroring. Called after every job launched here has ended; the mm may have exited. */
  unbind(): Promise<void>;
}

/** A driver as scenarios see it. */
export interface ScenarioDriver {
  /** Unique name (`dmirror`, `hmm2015`, `buggy-no-tlb-flush`, ...). */
  readonly name: string;
  /** One line: what it is. */
  readonly description: string;
  readonly api: DriverApi;
  readonly kind: DriverKind;
  readonly features: readonly DriverFeature[];
  /** For a variant: the driver it derives from (a scenario naming the base applies to it too). */
  readonly base?: string;
  /** For a buggy driver: the bug, in one line (bug class, what it skips). */
  readonly bug?: string;
  /** For a buggy driver: the scenarios expected to catch it. */
  readonly caughtBy?: readonly string[];
  /** Binds one device to `req.mm`. Runs in a task (may sleep). */
  bind(req: BindRequest): Promise<BoundDevice>;
}

/**
 * Which drivers a scenario applies to: 'any'; a list of names (a driver also matches through
 * its `base`); or a filter on API generation and needed features (all given must hold).
 */
export type DriverSelector =
  | 'any'
  | readonly string[]
  | {
      readonly api?: DriverApi | readonly DriverApi[];
      readonly features?: readonly DriverFeature[];
    };

/** Null if `selector` admits `driver`, else why not (one line). */
export function selectorRejects(selector: DriverSelector, driver: ScenarioDriver): string | null {
  if (selector === 'any') return null;
  if (Array.isArray(selector)) {
    const names = selector as readonly string[];
    if (names.includes(driver.name) || (driver.base !== undefined && names.includes(driver.base))) return null;
    return `it applies to ${names.join(', ')} only`;
  }
  const f = selector as Exclude<DriverSelector, 'any' | readonly string[]>;
  if (f.api !== undefined) {
    const apis: readonly DriverApi[] = typeof f.api === 'string' ? [f.api] : f.api;
    if (!apis.includes(driver.api)) return `it needs the ${apis.join(' or ')} API, ${driver.name} is ${driver.api}`;
  }
  for (const need of f.features ?? []) if (!driver.features.includes(need)) return `it needs the '${need}' feature, which ${driver.name} lacks`;
  return null;
}

/** Describes a selector in one line (for listings). */
export function describeSelector(selector: DriverSelector): string {
  if (selector === 'any') return 'any driver';
  if (Array.isArray(selector)) return (selector as readonly string[]).join(', ');
  const f = selector as Exclude<DriverSelector, 'any' | readonly string[]>;
  const parts: string[] = [];
  if (f.api !== undefined) parts.push(`${typeof f.api === 'string' ? f.api : f.api.join('|')} API`);
  if (f.features !== undefined && f.features.length > 0) parts.push(`features ${f.features.join(', ')}`);
  return parts.length === 0 ? 'any driver' : parts.join(', ');
}

function isObj(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Validates a driver adapter's description (not its behaviour). KernelError(EINVAL) naming the field. */
export function checkScenarioDriver(d: unknown, who = 'driver'): ScenarioDriver {
  if (!isObj(d)) throw new KernelError(EINVAL, `${who}: must be a ScenarioDriver object: ${String(d)}`);
  const name = d['name'];
  if (typeof name !== 'string' || !/^[a-z0-9][a-z0-9._-]*$/.test(name)) throw new KernelError(EINVAL, `${who}: name must be a lower-case identifier (a-z, 0-9, '.', '_', '-'): ${JSON.stringify(name)}`);
  const w = `${who} ${name}`;
  if (typeof d['description'] !== 'string' || d['description'].length === 0) throw new KernelError(EINVAL, `${w}: description must be a non-empty string: ${JSON.stringify(d['description'])}`);
  if (!DRIVER_APIS.includes(d['api'] as DriverApi)) throw new KernelError(EINVAL, `${w}: api must be '2015' or 'modern': ${JSON.stringify(d['api'])}`);
  if (!DRIVER_KINDS.includes(d['kind'] as DriverKind)) throw new KernelError(EINVAL, `${w}: kind must be 'reference' or 'buggy': ${JSON.stringify(d['kind'])}`);
  const features = d['features'];
  if (!Array.isArray(features)) throw new KernelError(EINVAL, `${w}: features must be an array: ${String(features)}`);
  for (const f of features) if (!DRIVER_FEATURES.includes(f as DriverFeature)) throw new KernelError(EINVAL, `${w}: unknown feature ${JSON.stringify(f)} (known: ${DRIVER_FEATURES.join(', ')})`);
  for (const k of ['base', 'bug'] as const) {
    if (d[k] !== undefined && (typeof d[k] !== 'string' || d[k].length === 0)) throw new KernelError(EINVAL, `${w}: ${k} must be a non-empty string: ${JSON.stringify(d[k])}`);
  }
  const cb = d['caughtBy'];
  if (cb !== undefined && (!Array.isArray(cb) || cb.some((s) => typeof s !== 'string' || s.length === 0))) throw new KernelError(EINVAL, `${w}: caughtBy must be an array of scenario names: ${String(cb)}`);
  if (typeof d['bind'] !== 'function') throw new KernelError(EINVAL, `${w}: bind must be an async function`);
  return d as unknown as ScenarioDriver;
}

/** Validates what a driver's bind returned. KernelError(EINVAL) naming the field. */
export function checkBoundDevice(b: unknown, driver: ScenarioDriver, req: BindRequest): BoundDevice {
  const w = `driver ${driver.name}: bind(${req.name}) returned`;
  if (!isObj(b)) throw new KernelError(EINVAL, `${w} ${String(b)}, not a BoundDevice`);
  const dev = b['device'] as Device | undefined;
  if (!isObj(dev) || typeof dev.name !== 'string') throw new KernelError(EINVAL, `${w} no device: ${String(dev)}`);
  if (dev.name !== req.name) throw new KernelError(EINVAL, `${w} a device named ${JSON.stringify(dev.name)}; the world asked for ${JSON.stringify(req.name)}`);
  const as = b['as'] as DeviceAddressSpace | undefined;
  if (!isObj(as) || as.device !== dev) throw new KernelError(EINVAL, `${w} an 'as' that is not an address space of ${dev.name}`);
  if (!Array.isArray(b['notifierSubs'])) throw new KernelError(EINVAL, `${w} notifierSubs that is not an array: ${String(b['notifierSubs'])}`);
  if (typeof b['launch'] !== 'function') throw new KernelError(EINVAL, `${w} no launch function`);
  if (typeof b['stats'] !== 'function') throw new KernelError(EINVAL, `${w} no stats function`);
  if (typeof b['unbind'] !== 'function') throw new KernelError(EINVAL, `${w} no unbind function`);
  const cmds = b['commands'];
  if (!isObj(cmds)) throw new KernelError(EINVAL, `${w} commands that is not an object: ${String(cmds)}`);
  for (const f of driver.features) {
    for (const c of FEATURE_COMMANDS[f]) if (typeof cmds[c] !== 'function') throw new KernelError(EINVAL, `${w} no commands.${c}, yet the driver has the '${f}' feature`);
  }
  return b as unknown as BoundDevice;
}

/**
 * Drivers by name. The project's registry is drivers/index.ts; tests may build their own.
 * Listing order is insertion order.
 */
export class DriverRegistry {
  private readonly byName = new Map<string, ScenarioDriver>();

  constructor(drivers: Iterable<ScenarioDriver> = []) {
    for (const d of drivers) this.add(d);
  }

  /** Adds a driver; KernelError(EINVAL) for a malformed one or a duplicate name. Returns the registry. */
  add(driver: ScenarioDriver): this {
    const d = checkScenarioDriver(driver, 'DriverRegistry.add');
    if (this.byName.has(d.name)) throw new KernelError(EINVAL, `DriverRegistry.add: a driver named ${d.name} is already registered`);
    this.byName.set(d.name, d);
    return this;
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  /** The driver named `name`; KernelError(EINVAL) listing the known names if there is none. */
  get(name: string): ScenarioDriver {
    const d = this.byName.get(name);
    if (d === undefined) throw new KernelError(EINVAL, `no driver named ${JSON.stringify(name)} (known: ${[...this.byName.keys()].join(', ') || 'none'})`);
    return d;
  }

  /** Every driver, optionally only of one kind. */
  list(kind?: DriverKind): ScenarioDriver[] {
    const all = [...this.byName.values()];
    return kind === undefined ? all : all.filter((d) => d.kind === kind);
  }

  /** The drivers `selector` admits (optionally only of one kind). */
  select(selector: DriverSelector, kind?: DriverKind): ScenarioDriver[] {
    return this.list(kind).filter((d) => selectorRejects(selector, d) === null);
  }

  get size(): number {
    return this.byName.size;
  }
}
