/**
 * The drivers scenarios run on: each driver of drivers/ behind the scenario driver interface
 * (ScenarioDriver: name, API generation, reference or buggy, features, and a `bind` that builds
 * one device of it for a world), and `drivers`, the registry the runner and the CLI look names
 * up in. Scenarios never import this file: they name the drivers they apply to, and whoever runs
 * them passes `drivers.get(name)` (or `{ driver: name, registry: drivers }`).
 *
 * Each adapter tells the oracle what it needs to watch the device: the address space, the
 * notifier subscriptions whose callbacks zap the device (dmirror's interval notifier; the 2015
 * API's per-mm `Hmm` notifier `hmm@<mm>`; mockgpu's whole-mm classic notifier, never its
 * per-window interval notifiers, which only bump a sequence), and the pgmap owner.
 *
 * Adding a driver: write a ScenarioDriver (the `boundFrom*` helpers below build the bound device
 * from a reference driver's objects, for variants that subclass them) and either list it in
 * ALL_DRIVERS here or call registerDriver(it) from its module. Buggy drivers set kind 'buggy',
 * `base` (the reference they break), `bug` and `caughtBy` (the scenarios expected to catch them).
 */
import {
  Device,
  type DeviceOptions,
  DriverRegistry,
  EINVAL,
  KernelError,
  type BoundDevice,
  type MmStruct,
  PAGE_SIZE,
  type ScenarioDriver,
  errnoName,
} from 'hmm-emu';
import {
  Dmirror,
  DmirrorDevice,
  HMM_DMIRROR_CHECK_EXCLUSIVE,
  HMM_DMIRROR_EXCLUSIVE,
  HMM_DMIRROR_MIGRATE_TO_DEV,
  HMM_DMIRROR_MIGRATE_TO_SYS,
  HMM_DMIRROR_RELEASE,
  HMM_DMIRROR_SNAPSHOT,
} from './dmirror/index.js';
import { Hmm2015Driver, type Hmm2015DriverOptions } from './hmm2015/index.js';
import { MockGpu, type MockGpuOptions, MockGpuSvmm } from './mockgpu/index.js';
import {
  BUGGY_DRIVERS,
  type DmirrorVariant,
  LockAcrossFaultDmirror,
  NoFaultStartDriver,
  NoReadRetryDmirror,
  NoTlbFlushDmirror,
  OwnMigrateNoZapDmirror,
  RetryOutsideLockDmirror,
  SeqAfterWalkDmirror,
  SleepNonblockableDmirror,
  WritableAcrossForkDmirror,
} from './buggy/index.js';

/** Copies the options of `from` whose names are in `keys` (driver hints from a scenario's world). */
function pick<T>(from: Readonly<Record<string, unknown>>, keys: readonly (keyof T & string)[]): Partial<T> {
  const out: Record<string, unknown> = {};
  for (const k of keys) if (from[k] !== undefined) out[k] = from[k];
  return out as Partial<T>;
}

// ---- dmirror ----

/** The bound device of an open dmirror file (`fd`) on `mdev`; unbind releases it and stops the worker. */
export function boundFromDmirror(mdev: DmirrorDevice, fd: Dmirror): BoundDevice {
  const cmd = (request: number, addr: number, npages: number, ptr: Uint8Array = new Uint8Array(npages * PAGE_SIZE)): Promise<number> => fd.ioctl(request, { addr, ptr, npages, cpages: 0, faults: 0 });
  return {
    device: mdev.device,
    as: fd.as,
    notifierSubs: [fd.notifier],
    owner: mdev.owner,
    launch: (opts, kernel) => fd.launch(opts, kernel),
    commands: {
      migrateToDevice: (addr, npages) => cmd(HMM_DMIRROR_MIGRATE_TO_DEV, addr, npages),
      migrateToSystem: (addr, npages) => cmd(HMM_DMIRROR_MIGRATE_TO_SYS, addr, npages),
      snapshot: (addr, npages, out) => cmd(HMM_DMIRROR_SNAPSHOT, addr, npages, out),
      makeExclusive: (addr, npages) => cmd(HMM_DMIRROR_EXCLUSIVE, addr, npages),
      checkExclusive: (addr, npages) => cmd(HMM_DMIRROR_CHECK_EXCLUSIVE, addr, npages, new Uint8Array(0)),
      // RELEASE evicts the whole device memory; the ioctl only checks its range (one page here).
      releaseDeviceMemory: () => cmd(HMM_DMIRROR_RELEASE, PAGE_SIZE, 1, new Uint8Array(0)),
    },
    // retries: every extra turn of the fault loop (read_retry true, or -EBUSY from the walk).
    stats: () => ({ ...fd.stats, retries: fd.stats.retries + fd.stats.busy }),
    async unbind() {
      await fd.release();
      await mdev.stop();
    },
  };
}

/** lib/test_hmm.c's dmirror with its fault worker (for user kernels). */
export const dmirrorDriver: ScenarioDriver = {
  name: 'dmirror',
  description: "lib/test_hmm.c's mirror driver: an interval notifier, the hmm_range_fault loop, device-private memory with migrate_vma",
  api: 'modern',
  kind: 'reference',
  features: ['device-migration', 'migrate-to-system', 'snapshot', 'exclusive', 'release'],
  async bind(req) {
    const mdev = DmirrorDevice.create(req.engine, req.phys, { ...req.hardware, name: req.name, memory: { frames: req.memoryFrames } });
    mdev.startFaultWorker();
    const fd = await Dmirror.open(mdev, req.mm);
    return boundFromDmirror(mdev, fd);
  },
};

// ---- hmm2015 ----

/** The bound device of a 2015-API binding of `mm`. */
export function boundFromHmm2015(drv: Hmm2015Driver, mm: MmStruct): BoundDevice {
  return {
    device: drv.device,
    as: drv.as,
    // The mm's Hmm notifier calls every mirror's update before it returns (docs/oracle.md).
    notifierSubs: [`hmm@${mm.name}`],
    launch: (opts, kernel) => drv.launch(opts, kernel),
    commands: {},
    stats: () => ({ ...drv.stats, retries: drv.mirror.stats.retries, backoffs: drv.mirror.stats.backoffs }),
    unbind: () => drv.unbind(),
  };
}

/** The 2015 HMM mirror API driver (hmm_mirror_register, hmm_mirror_fault, the update op). */
export const hmm2015Driver: ScenarioDriver = {
  name: 'hmm2015',
  description: 'a mock-GPU driver on the 2015 HMM mirror API: hmm_mirror_fault from a batched fault worker, the device update op',
  api: '2015',
  kind: 'reference',
  features: [],
  async bind(req) {
    const opts: Hmm2015DriverOptions = {
      ...pick<Hmm2015DriverOptions>(req.options, ['faultWindowPages', 'batchSize', 'ptWriteNs']),
      name: req.name,
      device: { ...req.hardware, memory: { frames: 0 } },
    };
    const drv = await Hmm2015Driver.bind(req.engine, req.phys, req.mm, opts);
    return boundFromHmm2015(drv, req.mm);
  },
};

// ---- mockgpu ----

/** The bound device of a mockgpu binding; unbind unbinds and stops the driver. */
export function boundFromMockGpu(gpu: MockGpu, svmm: MockGpuSvmm): BoundDevice {
  return {
    device: gpu.device,
    as: svmm.as,
    // Only the classic notifier zaps; the per-window interval notifiers only set their sequence.
    notifierSubs: [svmm.notifier],
    owner: gpu.owner,
    launch: (opts, kernel) => gpu.device.launch(svmm.as, opts, kernel),
    commands: { migrateToDevice: (addr, npages) => gpu.migrate(svmm, addr, addr + npages * PAGE_SIZE) },
    stats: () => ({ ...gpu.stats }),
    async unbind() {
      const ret = await gpu.unbind(svmm);
      if (ret !== 0) throw new KernelError(-ret, `mockgpu ${gpu.name}: unbind failed: ${errnoName(-ret)}`);
      await gpu.stop();
    },
  };
}

/** The production-shaped driver (nouveau SVM + UVM fault servicing, first-touch migration). */
export const mockgpuDriver: ScenarioDriver = {
  name: 'mockgpu',
  description: 'a production-shaped driver: batched fault windows on a worker pool, first-touch migration, a classic notifier plus window interval notifiers',
  api: 'modern',
  kind: 'reference',
  features: ['device-migration', 'oversubscription'],
  async bind(req) {
    const hw: DeviceOptions = { ...req.hardware, name: req.name, memory: { frames: req.memoryFrames } };
    const dev = new Device(req.engine, req.phys, hw);
    const opts = pick<MockGpuOptions>(req.options, ['batchSize', 'windowPages', 'prefetch', 'notifierPages', 'workers', 'migration', 'evictPages', 'minResidencyNs', 'faultTimeoutNs']);
    const gpu = new MockGpu(dev, opts);
    gpu.start();
    const svmm = await gpu.bind(req.mm);
    if (!(svmm instanceof MockGpuSvmm)) {
      await gpu.stop();
      throw new KernelError(typeof svmm === 'number' && svmm < 0 ? -svmm : EINVAL, `mockgpu ${req.name}: bind of ${req.mm.name} failed: ${String(svmm)}`);
    }
    return boundFromMockGpu(gpu, svmm);
  },
};

// ---- the broken drivers (drivers/buggy) ----

/** The bound device of a DmirrorVariant (a broken dmirror of drivers/buggy, or its control). */
export function boundFromDmirrorVariant(v: DmirrorVariant): BoundDevice {
  return {
    device: v.mdevice.device,
    as: v.mirror.as,
    notifierSubs: [v.mirror.notifier],
    owner: v.mdevice.owner,
    launch: (opts, kernel) => v.launch(opts, kernel),
    commands: { migrateToDevice: (addr, npages) => v.deviceMigrate(addr, npages) },
    stats: () => ({ ...v.mirror.stats }),
    unbind: () => v.unbind(),
  };
}

/**
 * The scenarios that catch each broken driver (pct:3, within 1,000 schedules; asserted by
 * test/scenario/buggy-drivers.test.ts), by catalogue id.
 */
const CAUGHT_BY: Readonly<Record<number, readonly string[]>> = {
  1: ['device-fault-woken-munmap'],
  2: ['device-fault-woken-munmap'],
  3: ['two-table-fault-vs-madvise'],
  4: ['device-fault-vs-munmap'],
  5: ['oom-reaper-vs-device-fault'],
  6: ['device-migration-vs-cpu-fault'],
  7: ['fork-while-mirrored'],
  8: ['fork-while-mirrored'],
  9: ['hmm2015-fault-vs-munmap'],
};

/** Registry names of the catalogue's drivers, by class name. */
const BUGGY_NAMES: Readonly<Record<string, string>> = {
  NoReadRetryDmirror: 'dmirror-no-read-retry',
  RetryOutsideLockDmirror: 'dmirror-retry-outside-lock',
  SeqAfterWalkDmirror: 'dmirror-seq-after-walk',
  NoTlbFlushDmirror: 'dmirror-no-tlb-flush',
  SleepNonblockableDmirror: 'dmirror-sleep-nonblockable',
  OwnMigrateNoZapDmirror: 'dmirror-own-migrate-no-zap',
  LockAcrossFaultDmirror: 'dmirror-lock-across-fault',
  WritableAcrossForkDmirror: 'dmirror-writable-across-fork',
  NoFaultStartDriver: 'hmm2015-no-fault-start',
};

const VARIANT_CLASSES: Readonly<Record<string, typeof DmirrorVariant>> = {
  NoReadRetryDmirror,
  RetryOutsideLockDmirror,
  SeqAfterWalkDmirror,
  NoTlbFlushDmirror,
  SleepNonblockableDmirror,
  OwnMigrateNoZapDmirror,
  LockAcrossFaultDmirror,
  WritableAcrossForkDmirror,
};

function buggyDriver(id: number): ScenarioDriver {
  const info = BUGGY_DRIVERS.find((b) => b.id === id)!;
  const common = {
    name: BUGGY_NAMES[info.name]!,
    description: `drivers/buggy #${id} ${info.name}: ${info.reference} that ${info.bug}`,
    kind: 'buggy' as const,
    base: info.reference,
    bug: info.bug,
    caughtBy: CAUGHT_BY[id]!,
  };
  if (info.reference === 'hmm2015') {
    return {
      ...common,
      api: '2015',
      features: [],
      async bind(req) {
        const opts: Hmm2015DriverOptions = {
          ...pick<Hmm2015DriverOptions>(req.options, ['faultWindowPages', 'batchSize', 'ptWriteNs']),
          name: req.name,
          device: { ...req.hardware, memory: { frames: 0 } },
        };
        const drv = await NoFaultStartDriver.bind(req.engine, req.phys, req.mm, opts);
        return boundFromHmm2015(drv, req.mm);
      },
    };
  }
  const cls = VARIANT_CLASSES[info.name]!;
  return {
    ...common,
    api: 'modern',
    features: ['device-migration'],
    async bind(req) {
      const fw = req.options['faultWindowPages'];
      const v = await cls.bind(req.engine, req.phys, req.mm, {
        name: req.name,
        deviceFrames: req.memoryFrames,
        ...(typeof fw === 'number' ? { faultWindowPages: fw } : {}),
      });
      return boundFromDmirrorVariant(v);
    },
  };
}

/** The nine broken drivers of drivers/buggy, in catalogue order (kind 'buggy'). */
export const BUGGY_SCENARIO_DRIVERS: readonly ScenarioDriver[] = BUGGY_DRIVERS.map((b) => buggyDriver(b.id));

// ---- the registry ----

/** The reference drivers (expected coherent in every scenario that applies to them). */
export const REFERENCE_DRIVERS: readonly ScenarioDriver[] = [dmirrorDriver, hmm2015Driver, mockgpuDriver];

/** Every driver known to scenarios. Broken drivers (drivers/buggy) join here. */
export const ALL_DRIVERS: readonly ScenarioDriver[] = [...REFERENCE_DRIVERS, ...BUGGY_SCENARIO_DRIVERS];

/** The registry of drivers by name. */
export const drivers: DriverRegistry = new DriverRegistry(ALL_DRIVERS);

/** Registers another driver (KernelError(EINVAL) for a malformed one or a taken name). */
export function registerDriver(driver: ScenarioDriver): void {
  drivers.add(driver);
}
