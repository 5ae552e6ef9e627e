/**
 * The user side of tools/testing/selftests/mm/hmm-tests.c, for ports of its cases and for
 * scenarios: the fixtures `hmm` (one device) and `hmm2` (two devices) as a world with one
 * engine, one physical memory, one mm and one open mirror per device; struct hmm_buffer;
 * hmm_dmirror_cmd and the migrate helpers; int-array accessors for the CPU side.
 *
 * Models: hmm-tests.c's FIXTURE(hmm) / FIXTURE(hmm2), struct hmm_buffer, hmm_dmirror_cmd,
 * hmm_migrate_sys_to_dev, hmm_migrate_dev_to_sys. /dev/hmm_dmirrorN is a DmirrorDevice on its
 * own Device ("gpuN"); open() is Dmirror.open on the world's mm.
 *
 * No locks: the world is built before the run; the body runs in one task ("test"); the
 * buffer is the body's own.
 */
import { type DeviceOptions, Engine, type MmStruct, PhysMem, type Program, type RunResult, cpuRead, cpuWrite, createMm } from 'hmm-emu';
import { DmirrorDevice } from './device.js';
import { Dmirror } from './mirror.js';
import { HMM_DMIRROR_MIGRATE_TO_DEV, HMM_DMIRROR_MIGRATE_TO_SYS } from './uapi.js';

/** The world of one hmm-tests case. */
export interface HmmWorld {
  readonly engine: Engine;
  readonly phys: PhysMem;
  /** The test process's mm. */
  readonly mm: MmStruct;
  /** /dev/hmm_dmirror0, 1, ... */
  readonly devices: readonly DmirrorDevice[];
  /** The fixture's open files: fds[i] is an open of devices[i] by `mm`. */
  readonly fds: readonly Dmirror[];
}

/** Options of a world. Every field is optional; each says its default. */
export interface HmmWorldOptions {
  /** Devices (1: FIXTURE(hmm), 2: FIXTURE(hmm2)). Default 1. */
  readonly devices?: number;
  /** System frames. Default 8192 (32 MiB). */
  readonly frames?: number;
  /** Device memory frames per device. Default 2048. */
  readonly deviceFrames?: number;
  /** 'private' (the default) or 'coherent' device memory (the hmm_device_coherent variant). */
  readonly memoryType?: 'private' | 'coherent';
  /** Start each device's fault worker (for user device kernels). Default false. */
  readonly faultWorker?: boolean;
  /** More hardware options of each Device (TLB, fault buffer, cost model). Default none. */
  readonly deviceOptions?: Omit<DeviceOptions, 'name' | 'memory'>;
}

/**
 * A program (for runProgram / explore) that builds the world, opens the fixture's files, runs
 * `body` in a task named "test", closes the files (FIXTURE_TEARDOWN) and stops the workers.
 */
export function hmmProgram(body: (w: HmmWorld) => Promise<void>, opts: HmmWorldOptions = {}): Program {
  return (engine: Engine) => {
    const ndev = opts.devices ?? 1;
    const devFrames = opts.deviceFrames ?? 2048;
    const phys = new PhysMem(engine, { frames: opts.frames ?? 8192, maxDeviceFrames: ndev * devFrames });
    const mm = createMm(engine, phys, { name: 'hmm-tests' });
    const devices: DmirrorDevice[] = [];
    for (let i = 0; i < ndev; i++) {
      devices.push(DmirrorDevice.create(engine, phys, { ...opts.deviceOptions, name: `hmm_dmirror${i}`, memory: { frames: devFrames, type: opts.memoryType ?? 'private' } }));
    }
    engine.spawn('test', async () => {
      const fds: Dmirror[] = [];
      for (const d of devices) {
        if (opts.faultWorker) d.startFaultWorker();
        fds.push(await Dmirror.open(d, mm));
      }
      await body({ engine, phys, mm, devices, fds });
      for (const fd of fds) await fd.release();
      for (const d of devices) await d.stop();
    });
  };
}

/** Runs one case on a fifo engine; resolves with the result (check `ok`). */
export async function runHmmTest(body: (w: HmmWorld) => Promise<void>, opts: HmmWorldOptions & { readonly seed?: number; readonly strategy?: string } = {}): Promise<RunResult> {
  const engine = new Engine({ seed: opts.seed ?? 0, strategy: opts.strategy ?? 'fifo' });
  hmmProgram(body, opts)(engine);
  return engine.run();
}

/** struct hmm_buffer: `ptr` is the mapping's address, `mirror` the device-side buffer. */
export class HmmBuffer {
  cpages = 0;
  faults = 0;
  constructor(
    /** Start of the mapping (buffer->ptr). */
    public ptr: number,
    /** buffer->size in bytes. */
    public size: number,
    /** buffer->mirror: what the device reads into / writes from. */
    public mirror: Uint8Array,
  ) {}

  /** The mirror as ints (the tests' `int *ptr = buffer->mirror`). */
  get mirrorInts(): Int32Array {
    return new Int32Array(this.mirror.buffer, this.mirror.byteOffset, this.mirror.byteLength >> 2);
  }
}

/**
 * hmm_dmirror_cmd: issues `request` on `fd` for `npages` pages at buffer.ptr with
 * buffer.mirror as the user buffer; on success copies cpages and faults into the buffer.
 * Returns 0 or -errno.
 */
export async function hmmDmirrorCmd(fd: Dmirror, request: number, buffer: HmmBuffer, npages: number): Promise<number> {
  const cmd = { addr: buffer.ptr, ptr: buffer.mirror, npages, cpages: 0, faults: 0 };
  const ret = await fd.ioctl(request, cmd);
  if (ret !== 0) return ret;
  buffer.cpages = cmd.cpages;
  buffer.faults = cmd.faults;
  return 0;
}

/** hmm_migrate_sys_to_dev. */
export function hmmMigrateSysToDev(fd: Dmirror, buffer: HmmBuffer, npages: number): Promise<number> {
  return hmmDmirrorCmd(fd, HMM_DMIRROR_MIGRATE_TO_DEV, buffer, npages);
}

/** hmm_migrate_dev_to_sys. */
export function hmmMigrateDevToSys(fd: Dmirror, buffer: HmmBuffer, npages: number): Promise<number> {
  return hmmDmirrorCmd(fd, HMM_DMIRROR_MIGRATE_TO_SYS, buffer, npages);
}

/** Writes ints f(0), f(1), ... (n of them) at `addr` as the CPU (`ptr[i] = f(i)`). */
export async function cpuWriteInts(mm: MmStruct, addr: number, n: number, f: (i: number) => number): Promise<void> {
  const a = new Int32Array(n);
  for (let i = 0; i < n; i++) a[i] = f(i);
  await cpuWrite(mm, addr, new Uint8Array(a.buffer));
}

/** Reads n ints at `addr` as the CPU. */
export async function cpuReadInts(mm: MmStruct, addr: number, n: number): Promise<Int32Array> {
  const b = await cpuRead(mm, addr, n * 4);
  return new Int32Array(b.buffer, b.byteOffset, n);
}
