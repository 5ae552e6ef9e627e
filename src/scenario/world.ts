/**
 * The world builder: physical memory, the mms and (from a task) the devices of a scenario, with
 * the oracle attached before anything allocates a page.
 *
 * buildWorld is synchronous and runs in the program, before the engine starts: it attaches the
 * oracle (with the PhysMem, so that no event goes unchecked), creates the PhysMem sized for the
 * world's RAM plus every device's memory, and creates and watches each mm. Binding the devices
 * sleeps (notifier registration takes mmap_lock), so `bindDevices` runs in the runner's task;
 * each device is watched as soon as its driver returns it, before any kernel runs on it.
 *
 * No locks: the world is built before the run, devices are bound by one task in order.
 */
import { type Oracle, type OracleOptions, attachOracle } from '../check/index.js';
import { type MmStruct, PhysMem, createMm } from '../mm/index.js';
import { EINVAL, type Engine, KernelError } from '../sim/index.js';
import type { ResolvedWorld } from './define.js';
import { type BindRequest, type BoundDevice, type ScenarioDriver, checkBoundDevice } from './driver.js';

/** One bound device of a world. */
export interface WorldDevice {
  readonly name: string;
  readonly mm: MmStruct;
  readonly bound: BoundDevice;
}

/** A built world. */
export interface ScenarioWorld {
  readonly engine: Engine;
  readonly phys: PhysMem;
  /** The world's mms by name, in WorldSpec order. */
  readonly mms: ReadonlyMap<string, MmStruct>;
  /** The oracle, or null when built with `oracle: false`. */
  readonly oracle: Oracle | null;
  readonly spec: ResolvedWorld;
}

/** Options of buildWorld. */
export interface BuildWorldOptions {
  /** Attach the coherency oracle (true, the default), with these options, or not at all (false: benchmarks). */
  readonly oracle?: boolean | Omit<OracleOptions, 'phys'>;
}

/** Builds the memory and the mms of `spec` on `engine` (before the run starts). */
export function buildWorld(engine: Engine, spec: ResolvedWorld, opts: BuildWorldOptions = {}): ScenarioWorld {
  const o = opts.oracle ?? true;
  if (typeof o !== 'boolean' && (o === null || typeof o !== 'object')) throw new KernelError(EINVAL, `buildWorld: oracle must be a boolean or oracle options: ${String(o)}`);
  const deviceFrames = spec.devices.reduce((n, d) => n + d.memoryFrames, 0);
  const phys = new PhysMem(engine, { frames: spec.frames, maxDeviceFrames: deviceFrames });
  const oracle = o === false ? null : attachOracle(engine, { ...(o === true ? {} : o), phys });
  const mms = new Map<string, MmStruct>();
  for (const name of spec.mms) {
    const mm = createMm(engine, phys, { name });
    oracle?.watchMm(mm);
    mms.set(name, mm);
  }
  return { engine, phys, mms, oracle, spec };
}

/**
 * Binds one device of `driver` per world device that is not deferred, in order, and watches
 * each with the oracle (its address space, the driver's notifier subscriptions and pgmap
 * owner). Runs in a task. A driver that fails to bind throws; the devices bound before it are
 * returned by `onBound` as they come, so the caller can unbind them.
 */
export async function bindDevices(world: ScenarioWorld, driver: ScenarioDriver, onBound: (d: WorldDevice) => void): Promise<void> {
  for (const spec of world.spec.devices) {
    if (spec.deferred) continue;
    onBound(await bindDevice(world, driver, spec.name, world.mms.get(spec.mm)!));
  }
}

/**
 * Binds the world device named `name` to `mm` (a world mm or a fork child) and watches it with
 * the oracle before returning it: the start of a run for the world's devices, ctx.bindDevice
 * for deferred ones. Runs in a task.
 */
export async function bindDevice(world: ScenarioWorld, driver: ScenarioDriver, name: string, mm: MmStruct): Promise<WorldDevice> {
  const spec = world.spec.devices.find((d) => d.name === name);
  if (spec === undefined) throw new KernelError(EINVAL, `bindDevice: no world device named ${JSON.stringify(name)} (devices: ${world.spec.devices.map((d) => d.name).join(', ')})`);
  const req: BindRequest = {
    engine: world.engine,
    phys: world.phys,
    mm,
    name: spec.name,
    memoryFrames: spec.memoryFrames,
    hardware: spec.hardware,
    options: spec.driverOptions,
  };
  const bound = checkBoundDevice(await driver.bind(req), driver, req);
  try {
    world.oracle?.watchDevice(bound.device, {
      as: bound.as,
      mm,
      notifierSubs: bound.notifierSubs,
      ...(bound.owner !== undefined ? { owner: bound.owner } : {}),
    });
  } catch (e) {
    await bound.unbind(); // nothing else knows of it yet
    throw e;
  }
  return { name: spec.name, mm, bound };
}
