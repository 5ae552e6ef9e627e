/**
 * The scenario format: defineScenario({ name, description, tags, world, drivers, state, setup,
 * tasks, check }) validates a definition and returns a frozen Scenario.
 *
 * A scenario is a recipe, not a run: the runner builds everything afresh for each run (the
 * world, the drivers' devices, `state()`), so a scenario is deterministic given the seed and the
 * strategy, and any run replays from its schedule string. Its parts:
 *
 *   world    the memory, the mms and the devices (each with its device memory), see WorldSpec
 *   drivers  which drivers it applies to (names, or an API generation and needed features)
 *   state    a factory of the per-run state shared by setup, tasks and check (default {})
 *   setup    runs first, in the task "scenario", after every device is bound
 *   tasks    named CPU threads (async functions) and device kernels (deviceTask(...)), all
 *            started together after setup, in definition order
 *   check    runs after every task ended, before teardown (unbind, exit, the oracle's audit)
 *
 * Every function gets the ScenarioContext (context.ts). Malformed definitions throw
 * KernelError(EINVAL) naming the field, at definition time.
 */
import type { DeviceOptions, WarpContext } from '../device/index.js';
import { EINVAL, KernelError } from '../sim/index.js';
import type { ScenarioContext } from './context.js';
import { DRIVER_APIS, DRIVER_FEATURES, type DriverApi, type DriverFeature, type DriverSelector } from './driver.js';

/** A CPU thread of a scenario. */
export type CpuTask<S = unknown> = (ctx: ScenarioContext<S>) => Promise<void>;

/** A device kernel of a scenario: launched through the driver on `device`, joined by its task. */
export interface DeviceTask<S = unknown> {
  readonly kind: 'device';
  /** The world device it runs on. Default: the first device. */
  readonly device?: string;
  /** Warps (each runs `kernel` once). Default 1. */
  readonly warps?: number;
  /**
   * The job may be killed by a fault the driver cannot service (a GPU segfault after munmap,
   * a write after mprotect, the mm's exit): the task then ends normally and its name goes to
   * ctx.killed. Default false: a kill fails the scenario.
   */
  readonly killable?: boolean;
  /** Each warp's body. */
  readonly kernel: (ctx: ScenarioContext<S>, warp: WarpContext) => Promise<void>;
}

/** Builds a device task (sets `kind`). */
export function deviceTask<S = unknown>(spec: Omit<DeviceTask<S>, 'kind'>): DeviceTask<S> {
  return { ...spec, kind: 'device' };
}

export type TaskSpec<S = unknown> = CpuTask<S> | DeviceTask<S>;

/** One device of the world: bound by the driver under test to one mm. */
export interface DeviceSpec {
  /** Unique device name. */
  readonly name: string;
  /** The mm it mirrors. Default: the first mm. */
  readonly mm?: string;
  /** Frames of device memory. Default 64. */
  readonly memoryFrames?: number;
  /** Hardware options (TLB geometry, fault buffer entries, cost model). Default none. */
  readonly hardware?: Omit<DeviceOptions, 'name' | 'memory'>;
  /** Driver-specific hints (a driver ignores those it does not know), e.g. { faultWindowPages: 4 } for hmm2015. */
  readonly driverOptions?: Readonly<Record<string, unknown>>;
  /**
   * Not bound at the start: the scenario binds it with ctx.bindDevice(name, mm) (to a fork
   * child, say: hmm-tests' child opening its own mirror). Its memory is reserved all the same.
   * Default false.
   */
  readonly deferred?: boolean;
}

/** The world of a scenario. Every field is optional; each says its default. */
export interface WorldSpec {
  /** System RAM frames. Default 1024 (4 MiB). */
  readonly frames?: number;
  /** The mms (processes), by name. Default ['proc']. */
  readonly mms?: readonly string[];
  /** The devices. Default [{ name: 'gpu0' }]. */
  readonly devices?: readonly DeviceSpec[];
}

/** A world with every default filled in. */
export interface ResolvedWorld {
  readonly frames: number;
  readonly mms: readonly string[];
  readonly devices: ReadonlyArray<{
    readonly name: string;
    readonly mm: string;
    readonly memoryFrames: number;
    readonly hardware: Readonly<Omit<DeviceOptions, 'name' | 'memory'>>;
    readonly driverOptions: Readonly<Record<string, unknown>>;
    readonly deferred: boolean;
  }>;
}

/** What a scenario author writes. */
export interface ScenarioDefinition<S = Record<string, never>> {
  /** Unique, kebab-case. */
  readonly name: string;
  /** One or two sentences: the race and what a correct driver must do. */
  readonly description: string;
  /** Free-form labels (`race`, `munmap`, `fork`, ...). Default none. */
  readonly tags?: readonly string[];
  /**
   * Where it comes from: the kernel test it ports (`hmm-tests.c: anon_read`), the bug or bug
   * class it reproduces, the commit or thread. Listed by `hmm-emu list`. Default none.
   */
  readonly origin?: string;
  readonly world?: WorldSpec;
  readonly drivers: DriverSelector;
  /** The per-run state factory. Default: an empty object. */
  readonly state?: () => S;
  readonly setup?: (ctx: ScenarioContext<S>) => Promise<void>;
  readonly tasks: Readonly<Record<string, TaskSpec<S>>>;
  readonly check?: (ctx: ScenarioContext<S>) => Promise<void>;
  /** Run-away guard per run, in scheduling steps. Default 1,000,000. */
  readonly maxSteps?: number;
}

/** A validated scenario (state erased: the runner does not care). */
export interface Scenario {
  readonly name: string;
  readonly description: string;
  readonly tags: readonly string[];
  /** Where it comes from ('' when the definition does not say). */
  readonly origin: string;
  readonly world: ResolvedWorld;
  readonly drivers: DriverSelector;
  readonly state: () => unknown;
  readonly setup: ((ctx: ScenarioContext<unknown>) => Promise<void>) | null;
  /** Tasks in definition order. */
  readonly tasks: ReadonlyArray<{ readonly name: string; readonly spec: TaskSpec<unknown> }>;
  readonly check: ((ctx: ScenarioContext<unknown>) => Promise<void>) | null;
  readonly maxSteps: number;
}

/** The name of the runner's own task (reserved). */
export const SCENARIO_TASK = 'scenario';

const KNOWN_FIELDS = new Set(['name', 'description', 'tags', 'origin', 'world', 'drivers', 'state', 'setup', 'tasks', 'check', 'maxSteps']);
const WORLD_FIELDS = new Set(['frames', 'mms', 'devices']);
const DEVICE_FIELDS = new Set(['name', 'mm', 'memoryFrames', 'hardware', 'driverOptions', 'deferred']);
const DEVICE_TASK_FIELDS = new Set(['kind', 'device', 'warps', 'killable', 'kernel']);
const SELECTOR_FIELDS = new Set(['api', 'features']);
const NAME_RE = /^[a-z0-9][a-z0-9-]*$/;
const TASK_RE = /^[A-Za-z0-9][\w.-]*$/;

function isObj(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function show(v: unknown): string {
  if (typeof v === 'function') return 'a function';
  if (typeof v === 'string') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(show).join(', ')}]`;
  if (isObj(v)) return `{${Object.keys(v).join(', ')}}`;
  return String(v);
}

/** Validation with messages that name the scenario and the field. */
class Checker {
  constructor(private readonly who: string) {}

  fail(field: string, what: string, v: unknown): never {
    throw new KernelError(EINVAL, `${this.who}: ${field} ${what}: ${show(v)}`);
  }

  unknownFields(field: string, obj: Record<string, unknown>, known: ReadonlySet<string>): void {
    for (const k of Object.keys(obj)) if (!known.has(k)) this.fail(field === '' ? k : `${field}.${k}`, `is not a field (known: ${[...known].join(', ')})`, obj[k]);
  }

  nonEmptyString(field: string, v: unknown): string {
    if (typeof v !== 'string' || v.trim().length === 0) this.fail(field, 'must be a non-empty string', v);
    return v;
  }

  int(field: string, v: unknown, min: number, max: number): number {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) this.fail(field, `must be an integer in [${min}, ${max}]`, v);
    return v;
  }

  fn(field: string, v: unknown): void {
    if (typeof v !== 'function') this.fail(field, 'must be a function', v);
  }
}

function resolveWorld(c: Checker, w: unknown): ResolvedWorld {
  if (w === undefined) w = {};
  if (!isObj(w)) c.fail('world', 'must be an object', w);
  c.unknownFields('world', w, WORLD_FIELDS);
  const frames = w['frames'] === undefined ? 1024 : c.int('world.frames', w['frames'], 16, 2 ** 26);
  const mmsIn = w['mms'] ?? ['proc'];
  if (!Array.isArray(mmsIn) || mmsIn.length === 0) c.fail('world.mms', 'must be a non-empty array of mm names', mmsIn);
  const mms: string[] = [];
  (mmsIn as unknown[]).forEach((m, i) => {
    const name = c.nonEmptyString(`world.mms[${i}]`, m);
    if (mms.includes(name)) c.fail(`world.mms[${i}]`, 'is a duplicate mm name', name);
    mms.push(name);
  });
  const devsIn = w['devices'] ?? [{ name: 'gpu0' }];
  if (!Array.isArray(devsIn) || devsIn.length === 0) c.fail('world.devices', 'must be a non-empty array of devices', devsIn);
  const devices: Array<ResolvedWorld['devices'][number]> = [];
  (devsIn as unknown[]).forEach((d, i) => {
    const f = `world.devices[${i}]`;
    if (!isObj(d)) c.fail(f, 'must be an object', d);
    c.unknownFields(f, d, DEVICE_FIELDS);
    const name = c.nonEmptyString(`${f}.name`, d['name']);
    if (devices.some((x) => x.name === name)) c.fail(`${f}.name`, 'is a duplicate device name', name);
    const mm = d['mm'] === undefined ? mms[0]! : c.nonEmptyString(`${f}.mm`, d['mm']);
    if (!mms.includes(mm)) c.fail(`${f}.mm`, `must name one of world.mms (${mms.join(', ')})`, mm);
    const memoryFrames = d['memoryFrames'] === undefined ? 64 : c.int(`${f}.memoryFrames`, d['memoryFrames'], 0, 2 ** 20);
    const hardware = d['hardware'] ?? {};
    if (!isObj(hardware)) c.fail(`${f}.hardware`, 'must be an object of Device options', hardware);
    if ('name' in hardware || 'memory' in hardware) c.fail(`${f}.hardware`, 'must not set name or memory (use name and memoryFrames)', hardware);
    const driverOptions = d['driverOptions'] ?? {};
    if (!isObj(driverOptions)) c.fail(`${f}.driverOptions`, 'must be an object', driverOptions);
    const deferred = d['deferred'] ?? false;
    if (typeof deferred !== 'boolean') c.fail(`${f}.deferred`, 'must be a boolean', deferred);
    devices.push(Object.freeze({ name, mm, memoryFrames, hardware: Object.freeze({ ...hardware }), driverOptions: Object.freeze({ ...driverOptions }), deferred }));
  });
  return Object.freeze({ frames, mms: Object.freeze(mms), devices: Object.freeze(devices) });
}

function checkSelector(c: Checker, s: unknown): DriverSelector {
  if (s === 'any') return s;
  if (Array.isArray(s)) {
    if (s.length === 0) c.fail('drivers', "must not be empty (use 'any' for every driver)", s);
    s.forEach((n, i) => c.nonEmptyString(`drivers[${i}]`, n));
    return Object.freeze([...(s as string[])]);
  }
  if (!isObj(s)) c.fail('drivers', "must be 'any', a list of driver names, or { api, features }", s);
  c.unknownFields('drivers', s, SELECTOR_FIELDS);
  const api = s['api'];
  if (api !== undefined) {
    const apis = typeof api === 'string' ? [api] : api;
    if (!Array.isArray(apis) || apis.length === 0 || apis.some((a) => !DRIVER_APIS.includes(a as DriverApi))) c.fail('drivers.api', "must be '2015', 'modern' or a list of them", api);
  }
  const features = s['features'];
  if (features !== undefined) {
    if (!Array.isArray(features)) c.fail('drivers.features', 'must be an array', features);
    features.forEach((f, i) => {
      if (!DRIVER_FEATURES.includes(f as DriverFeature)) c.fail(`drivers.features[${i}]`, `must be one of ${DRIVER_FEATURES.join(', ')}`, f);
    });
  }
  return Object.freeze({ ...s }) as DriverSelector;
}

function checkTask(c: Checker, name: string, spec: unknown, world: ResolvedWorld): TaskSpec<unknown> {
  const f = `tasks.${name}`;
  if (!TASK_RE.test(name)) c.fail(f, 'has a bad name (letters, digits, _ . -; starting with a letter or digit)', name);
  if (name === SCENARIO_TASK) c.fail(f, `is reserved: the runner's own task is named '${SCENARIO_TASK}'`, name);
  if (typeof spec === 'function') return spec as CpuTask<unknown>;
  if (!isObj(spec)) c.fail(f, 'must be an async function (a CPU thread) or deviceTask({ kernel, ... })', spec);
  c.unknownFields(f, spec, DEVICE_TASK_FIELDS);
  if (spec['kind'] !== 'device') c.fail(`${f}.kind`, "must be 'device' (build device tasks with deviceTask)", spec['kind']);
  c.fn(`${f}.kernel`, spec['kernel']);
  if (spec['warps'] !== undefined) c.int(`${f}.warps`, spec['warps'], 1, 65536);
  if (spec['killable'] !== undefined && typeof spec['killable'] !== 'boolean') c.fail(`${f}.killable`, 'must be a boolean', spec['killable']);
  if (spec['device'] !== undefined) {
    const d = c.nonEmptyString(`${f}.device`, spec['device']);
    if (!world.devices.some((x) => x.name === d)) c.fail(`${f}.device`, `must name a world device (${world.devices.map((x) => x.name).join(', ')})`, d);
  }
  return Object.freeze({ ...spec }) as unknown as DeviceTask<unknown>;
}

/**
 * Validates `def` and returns the frozen scenario. Throws KernelError(EINVAL) naming the field
 * (`defineScenario(name): world.devices[0].mm must name one of world.mms (proc): "gpu"`).
 */
export function defineScenario<S = Record<string, never>>(def: ScenarioDefinition<S>): Scenario {
  if (!isObj(def)) throw new KernelError(EINVAL, `defineScenario: the definition must be an object: ${show(def)}`);
  const rawName = def['name' as keyof typeof def];
  const pre: Checker = new Checker(`defineScenario(${typeof rawName === 'string' ? rawName : '?'})`);
  const name = pre.nonEmptyString('name', rawName);
  if (!NAME_RE.test(name)) pre.fail('name', 'must be kebab-case (a-z, 0-9, -)', name);
  const c: Checker = new Checker(`defineScenario(${name})`);
  const d = def as unknown as Record<string, unknown>;
  c.unknownFields('', d, KNOWN_FIELDS);
  const description = c.nonEmptyString('description', d['description']);
  const tagsIn = d['tags'] ?? [];
  if (!Array.isArray(tagsIn)) c.fail('tags', 'must be an array of strings', tagsIn);
  const tags = (tagsIn as unknown[]).map((t, i) => c.nonEmptyString(`tags[${i}]`, t));
  const origin = d['origin'] === undefined ? '' : c.nonEmptyString('origin', d['origin']);
  const world = resolveWorld(c, d['world']);
  if (d['drivers'] === undefined) c.fail('drivers', "is required ('any', names, or { api, features })", undefined);
  const drivers = checkSelector(c, d['drivers']);
  for (const k of ['state', 'setup', 'check'] as const) if (d[k] !== undefined) c.fn(k, d[k]);
  const tasksIn = d['tasks'];
  if (!isObj(tasksIn) || Object.keys(tasksIn).length === 0) c.fail('tasks', 'must be an object with at least one task', tasksIn);
  const tasks = Object.keys(tasksIn).map((t) => Object.freeze({ name: t, spec: checkTask(c, t, tasksIn[t], world) }));
  const maxSteps = d['maxSteps'] === undefined ? 1_000_000 : c.int('maxSteps', d['maxSteps'], 1, 2 ** 31 - 1);
  const stateFn = (d['state'] as (() => unknown) | undefined) ?? ((): unknown => ({}));
  return Object.freeze({
    name,
    description,
    tags: Object.freeze(tags),
    origin,
    world,
    drivers,
    state: stateFn,
    setup: (d['setup'] as Scenario['setup'] | undefined) ?? null,
    tasks: Object.freeze(tasks),
    check: (d['check'] as Scenario['check'] | undefined) ?? null,
    maxSteps,
  });
}

/** True for a value defineScenario returned (or shaped like one). */
export function isScenario(v: unknown): v is Scenario {
  return isObj(v) && typeof v['name'] === 'string' && Array.isArray(v['tasks']) && isObj(v['world']) && typeof v['state'] === 'function';
}
