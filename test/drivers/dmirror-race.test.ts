/**
 * dmirror under the shared race harness (harness.ts): every case, device migration included,
 * over 250 random and 250 PCT schedules each, with the frame oracle on every device access.
 * The adapter binds one Device with device-private memory, its fault worker and one open of
 * the world's mm; device migration is HMM_DMIRROR_MIGRATE_TO_DEV on the raced pages.
 */
import { describe, expect, it } from 'vitest';
import { PAGE_SIZE } from 'hmm-emu';
import { Dmirror, DmirrorDevice, HMM_DMIRROR_MIGRATE_TO_DEV } from '../../drivers/dmirror/index.js';
import { type DriverUnderTest, RACE_CASES, caseApplies, exploreCase, raceFailureMessage } from './harness.js';

const DEVICE_FRAMES = 64;

/** dmirror through the harness adapter. */
export const dmirrorDriver: DriverUnderTest = {
  name: 'dmirror',
  supports: new Set(['device-migration']),
  deviceFrames: DEVICE_FRAMES,
  async bind(world) {
    const mdev = DmirrorDevice.create(world.engine, world.phys, { name: 'gpu0', memory: { frames: DEVICE_FRAMES } });
    mdev.startFaultWorker();
    const fd = await Dmirror.open(mdev, world.mm);
    return {
      launch: (opts, kernel) => fd.launch(opts, kernel),
      deviceMigrate: (addr, npages) => fd.ioctl(HMM_DMIRROR_MIGRATE_TO_DEV, { addr, ptr: new Uint8Array(npages * PAGE_SIZE), npages, cpages: 0, faults: 0 }),
      async unbind() {
        await fd.release();
        await mdev.stop();
      },
    };
  },
};

describe('dmirror under the race harness', () => {
  for (const kase of RACE_CASES) {
    if (!caseApplies(dmirrorDriver, kase)) continue;
    it(`${kase}: the mirror stays coherent over 250 random and 250 PCT schedules`, async () => {
      const r = await exploreCase(dmirrorDriver, kase, { random: 250, pct: 250 });
      if (r.firstFailure !== null) throw new Error(raceFailureMessage('dmirror', kase, r.firstFailure));
      expect(r.runs).toBe(500);
    });
  }
});
