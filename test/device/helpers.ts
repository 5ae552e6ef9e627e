/** The shared test world of the device tests: an engine, physical memory and one Device. */
import { Engine, type RunResult } from '../../src/sim/index.js';
import { PhysMem } from '../../src/mm/index.js';
import { Device, type DeviceOptions } from '../../src/device/index.js';

export interface World {
  readonly engine: Engine;
  readonly phys: PhysMem;
  readonly dev: Device;
}

/** Sizes of a world: system frames and device-memory frames (0: no device memory). */
export interface WorldSize {
  readonly frames: number;
  readonly deviceFrames: number;
}

export function makeWorld(size: WorldSize, opts: DeviceOptions = {}, strategy = 'fifo', seed = 0): World {
  const engine = new Engine({ strategy, seed });
  const phys = new PhysMem(engine, { frames: size.frames, maxDeviceFrames: Math.max(size.deviceFrames, opts.memory?.frames ?? 0) });
  const dev = new Device(engine, phys, { memory: { frames: size.deviceFrames }, ...opts });
  return { engine, phys, dev };
}

/** Runs `body` as the task "main"; throws the run's failure. */
export async function run(w: World, body: () => Promise<void>): Promise<RunResult> {
  w.engine.spawn('main', body);
  const r = await w.engine.run();
  if (!r.ok) throw r.failure;
  return r;
}
