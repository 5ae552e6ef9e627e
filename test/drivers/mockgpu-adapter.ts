/** mockgpu's adapter for the driver race harness (test/drivers/harness.ts). */
import { expect } from 'vitest';
import { Device, PAGE_SIZE } from 'hmm-emu';
import { MockGpu, MockGpuSvmm, type MockGpuOptions } from '../../drivers/mockgpu/index.js';
import type { DriverUnderTest } from './harness.js';

/**
 * mockgpu as a DriverUnderTest: bind creates a device with `frames` frames of device memory,
 * a MockGpu with `opts`, starts its fault handler and binds the world's mm; deviceMigrate is
 * the explicit migration; unbind unbinds and stops the driver (its handler task exits).
 */
export function mockgpuUnderTest(opts: MockGpuOptions = {}, frames = 64, name = 'mockgpu'): DriverUnderTest {
  return {
    name,
    supports: new Set(['device-migration']),
    deviceFrames: frames,
    async bind(world) {
      const dev = new Device(world.engine, world.phys, { memory: { frames } });
      const gpu = new MockGpu(dev, opts);
      gpu.start();
      const svmm = await gpu.bind(world.mm);
      if (!(svmm instanceof MockGpuSvmm)) throw new Error(`mockgpu bind failed: ${String(svmm)}`);
      return {
        launch: (o, k) => dev.launch(svmm.as, o, k),
        deviceMigrate: (addr, npages) => gpu.migrate(svmm, addr, addr + npages * PAGE_SIZE),
        async unbind() {
          expect(await gpu.unbind(svmm)).toBe(0);
          await gpu.stop();
        },
      };
    },
  };
}
