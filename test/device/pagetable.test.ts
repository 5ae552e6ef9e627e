/** The device page table: compact leaves, range clears, inspection, and the driver's map/unmap. */
import { describe, expect, it } from 'vitest';
import { EINVAL, Engine, KernelError, type TraceEvent } from '../../src/sim/index.js';
import { PhysMem } from '../../src/mm/index.js';
import { DEV_PTE_ATOMIC, DEV_PTE_VALID, DEV_PTE_WRITE, Device, DevicePageTable } from '../../src/device/index.js';

function entries(pt: DevicePageTable | { forEach: DevicePageTable['forEach'] }, start?: number, end?: number): string[] {
  const out: string[] = [];
  pt.forEach((vpn, pfn, flags) => out.push(`${vpn}:${pfn}:${flags}`), start, end);
  return out;
}

function device(): { engine: Engine; phys: PhysMem; dev: Device } {
  const engine = new Engine();
  const phys = new PhysMem(engine, { frames: 64, maxDeviceFrames: 64 });
  const dev = new Device(engine, phys, { memory: { frames: 16 } });
  return { engine, phys, dev };
}

function einval(f: () => unknown): KernelError {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(KernelError);
  expect((err as KernelError).errno).toBe(EINVAL);
  return err as KernelError;
}

describe('DevicePageTable (data structure)', () => {
  it('set, lookup and pfnAt; an absent entry has flags 0 and pfn -1', () => {
    const pt = new DevicePageTable();
    expect(pt.set(1000, 42, DEV_PTE_VALID | DEV_PTE_WRITE)).toBe(0);
    expect(pt.lookup(1000)).toBe(DEV_PTE_VALID | DEV_PTE_WRITE);
    expect(pt.foundPfn).toBe(42);
    expect(pt.pfnAt(1000)).toBe(42);
    expect([pt.flagsAt(1001), pt.pfnAt(1001), pt.lookup(5_000_000)]).toEqual([0, -1, 0]);
    expect(pt.set(1000, 43, DEV_PTE_VALID)).toBe(DEV_PTE_VALID | DEV_PTE_WRITE);
    expect(pt.size).toBe(1);
  });

  it('clearRange clears exactly [start, end) across leaves and frees empty leaves', () => {
    const pt = new DevicePageTable();
    for (let v = 500; v < 1600; v++) pt.set(v, v, DEV_PTE_VALID);
    expect(pt.leafCount).toBe(4);
    expect(pt.clearRange(510, 1540)).toBe(1030);
    expect(entries(pt).map((e) => Number(e.split(':')[0]))).toEqual([
      ...Array.from({ length: 10 }, (_, i) => 500 + i),
      ...Array.from({ length: 60 }, (_, i) => 1540 + i),
    ]);
    expect(pt.leafCount).toBe(2);
    expect(pt.size).toBe(70);
  });

  it('a wide, sparse clear visits only the leaves that exist', () => {
    const pt = new DevicePageTable();
    pt.set(3, 1, DEV_PTE_VALID);
    pt.set(2 ** 35, 2, DEV_PTE_VALID);
    pt.set(2 ** 36 - 1, 3, DEV_PTE_VALID);
    expect(pt.clearRange(4, 2 ** 36)).toBe(2);
    expect(entries(pt)).toEqual([`3:1:${DEV_PTE_VALID}`]);
  });

  it('forEach is ascending by vpn and honours its bounds', () => {
    const pt = new DevicePageTable();
    for (const v of [9000, 5, 700, 2 ** 33]) pt.set(v, v % 1000, DEV_PTE_VALID);
    expect(entries(pt).map((e) => Number(e.split(':')[0]))).toEqual([5, 700, 9000, 2 ** 33]);
    expect(entries(pt, 6, 9001).map((e) => Number(e.split(':')[0]))).toEqual([700, 9000]);
  });

  it('holds 1,000,000 entries in a few MB and clears them in one call', () => {
    const pt = new DevicePageTable();
    for (let v = 0; v < 1_000_000; v++) pt.set(0x10_0000 + v, (v % 60_000) + 1, DEV_PTE_VALID | DEV_PTE_WRITE);
    expect(pt.size).toBe(1_000_000);
    expect(pt.leafCount).toBe(Math.ceil(1_000_000 / 512));
    expect(pt.leafCount * 512 * 5).toBeLessThan(6_000_000);
    expect(pt.pfnAt(0x10_0000 + 999_999)).toBe((999_999 % 60_000) + 1);
    expect(pt.clearRange(0, 2 ** 36)).toBe(1_000_000);
    expect(pt.leafCount).toBe(0);
  });
});

describe('DeviceAddressSpace map and unmap', () => {
  it('map writes one entry with the valid bit; unmap clears a range and reports it', () => {
    const { engine, dev } = device();
    const as = dev.createAddressSpace();
    const ev: string[] = [];
    engine.trace.on('device.pt_map', (e: TraceEvent<'device.pt_map'>) => ev.push(`map ${e.vpn}->${e.pfn} w=${e.write} a=${e.atomic}`));
    engine.trace.on('device.pt_unmap', (e: TraceEvent<'device.pt_unmap'>) => ev.push(`unmap ${e.start}-${e.end} ${e.pages}`));
    as.map(0x5000, 7, DEV_PTE_WRITE | DEV_PTE_ATOMIC);
    as.mapRange(0x8000, [8, 9], 0);
    expect(as.pageTable.flagsAt(5)).toBe(DEV_PTE_VALID | DEV_PTE_WRITE | DEV_PTE_ATOMIC);
    expect(entries(as.pageTable)).toEqual([`5:7:7`, `8:8:1`, `9:9:1`]);
    expect(as.unmap(0x6000, 0x9000)).toBe(1);
    expect(ev).toEqual(['map 5->7 w=true a=true', 'map 8->8 w=false a=false', 'map 9->9 w=false a=false', 'unmap 24576-36864 1']);
    expect([dev.stats.ptMaps, dev.stats.ptUnmaps]).toEqual([3, 1]);
  });

  it('maps device frames of the device memory like system frames', () => {
    const { dev } = device();
    const as = dev.createAddressSpace();
    const d = dev.memory!.allocPage();
    as.map(0, d, DEV_PTE_WRITE);
    expect(as.pageTable.pfnAt(0)).toBe(d);
  });

  it('bad input throws KernelError EINVAL with the value and changes nothing', () => {
    const { phys, dev } = device();
    const as = dev.createAddressSpace();
    expect(String(einval(() => as.map(0x1001, 1)))).toMatch(/page-aligned .*: 4097/);
    expect(String(einval(() => as.map(2 ** 48, 1)))).toMatch(/281474976710656/);
    expect(String(einval(() => as.map(0, phys.deviceFramesEnd)))).toMatch(new RegExp(`: ${phys.deviceFramesEnd}$`));
    expect(String(einval(() => as.map(0, -1)))).toMatch(/-1/);
    expect(String(einval(() => as.map(0, 1, DEV_PTE_ATOMIC)))).toMatch(/requires DEV_PTE_WRITE/);
    expect(String(einval(() => as.map(0, 1, 0x10)))).toMatch(/flags .*: 16/);
    expect(String(einval(() => as.mapRange(0, [1, 2, 1e9])))).toMatch(/1000000000/);
    expect(String(einval(() => as.unmap(0x2000, 0x1000)))).toMatch(/start 0x2000 > end 0x1000/);
    expect(as.pageTable.size).toBe(0);
    expect(dev.stats.ptMaps).toBe(0);
  });

  it('a destroyed address space refuses map, launch and invalidation', () => {
    const { dev } = device();
    const as = dev.createAddressSpace();
    as.map(0, 1);
    dev.destroyAddressSpace(as);
    expect(as.isDestroyed).toBe(true);
    expect(as.pageTable.size).toBe(0);
    expect(dev.addressSpace(as.asid)).toBeUndefined();
    einval(() => as.map(0, 1));
    einval(() => dev.launch(as, {}, async () => 0));
    einval(() => dev.tlbInvalidateAll(as));
  });
});
