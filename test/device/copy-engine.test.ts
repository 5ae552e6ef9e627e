/** The copy engine: latency + bandwidth in virtual time, one channel, real bytes. */
import { describe, expect, it } from 'vitest';
import { EINVAL, KernelError, type TraceEvent } from '../../src/sim/index.js';
import { ZERO_PFN } from '../../src/mm/index.js';
import { DeviceCost, type DeviceOptions } from '../../src/device/index.js';
import { makeWorld, run, type World } from './helpers.js';

function world(opts: DeviceOptions = {}): World {
  return makeWorld({ frames: 256, deviceFrames: 64 }, opts);
}

describe('copy engine', () => {
  it('one page takes latency + 4096 B at the bandwidth (2,000 + 256 ns by default)', async () => {
    const w = world();
    const src = w.phys.allocPage();
    const dst = w.dev.memory!.allocPage();
    w.phys.writeU64(src, 4088, 0xfeedn);
    let t = -1;
    await run(w, async () => {
      await w.dev.copyEngine.copyPage(dst, src);
      t = w.engine.now;
    });
    expect(t).toBe(2256);
    expect(w.phys.readU64(dst, 4088)).toBe(0xfeedn);
    expect(w.dev.stats.pagesCopied).toBe(1);
  });

  it('a batch pays the latency once: n pages take latency + n * 4096 / bandwidth', async () => {
    const w = world({ cost: { copyLatencyNs: 1000, copyBandwidthGBps: 8 } });
    const srcs = [1, 2, 3, 4].map(() => w.phys.allocPage());
    const dsts = srcs.map(() => w.dev.memory!.allocPage());
    srcs.forEach((p, i) => w.phys.writeU32(p, 0, 100 + i));
    let t = -1;
    await run(w, async () => {
      await w.dev.copyEngine.copyPages(dsts, srcs);
      t = w.engine.now;
    });
    expect(t).toBe(1000 + (4 * 4096) / 8);
    expect(dsts.map((d) => w.phys.readU32(d, 0))).toEqual([100, 101, 102, 103]);
    expect([w.dev.stats.copies, w.dev.stats.pagesCopied]).toEqual([1, 4]);
  });

  it('bytes land at completion: the destination is unchanged while the copy is in flight', async () => {
    const w = world();
    const src = w.phys.allocPage();
    const dst = w.phys.allocPage();
    w.phys.writeU64(src, 0, 7n);
    const seen: bigint[] = [];
    await run(w, async () => {
      const copier = w.engine.spawn('copier', async () => w.dev.copyEngine.copyPage(dst, src));
      await w.engine.sleep(2255);
      seen.push(w.phys.readU64(dst, 0));
      await copier.join();
      seen.push(w.phys.readU64(dst, 0));
    });
    expect(seen).toEqual([0n, 7n]);
  });

  it('concurrent copies queue on the one channel, in issue order', async () => {
    const w = world();
    const a = w.phys.allocPage();
    const b = w.phys.allocPage();
    const ends: string[] = [];
    const order: string[] = [];
    w.engine.trace.on('device.copy', (e: TraceEvent<'device.copy'>) => order.push(`${e.src}->${e.dst}@${e.time}`));
    await run(w, async () => {
      const t1 = w.engine.spawn('c1', async () => {
        await w.dev.copyEngine.copyPage(b, a);
        ends.push(`c1@${w.engine.now}`);
      });
      const t2 = w.engine.spawn('c2', async () => {
        await w.dev.copyEngine.copyPages([a], [b]);
        ends.push(`c2@${w.engine.now}`);
      });
      await t1.join();
      await t2.join();
    });
    expect(ends).toEqual(['c1@2256', 'c2@4512']);
    expect(order).toEqual([`${a}->${b}@2256`, `${b}->${a}@4512`]);
  });

  it('bad frames or mismatched batches throw KernelError EINVAL before any time passes', async () => {
    const w = world();
    const p = w.phys.allocPage();
    const errs: unknown[] = [];
    await run(w, async () => {
      for (const f of [
        () => w.dev.copyEngine.copyPage(ZERO_PFN, p),
        () => w.dev.copyEngine.copyPage(p, 1e9),
        () => w.dev.copyEngine.copyPage(1.5, p),
        () => w.dev.copyEngine.copyPages([p, p], [p]),
        () => w.dev.copyEngine.copyPages([p, ZERO_PFN], [p, p]),
      ]) {
        try {
          await f();
        } catch (e) {
          errs.push(e);
        }
      }
      expect(w.engine.now).toBe(0);
    });
    expect(errs).toHaveLength(5);
    for (const e of errs) expect((e as KernelError).errno).toBe(EINVAL);
    expect(String(errs[1])).toMatch(/1000000000/);
    expect(String(errs[3])).toMatch(/2 vs 1/);
    expect(w.dev.stats.copies).toBe(0);
  });

  it('DeviceCost validates every figure and shows the bad value', () => {
    expect(new DeviceCost().copyNs(1)).toBe(2256);
    expect(() => new DeviceCost({ tlbHitNs: -1 })).toThrow(/tlbHitNs must be a finite number >= 0: -1/);
    expect(() => new DeviceCost({ copyBandwidthGBps: 0 })).toThrow(/copyBandwidthGBps .*: 0/);
    expect(() => new DeviceCost({ faultNs: Infinity })).toThrow(/faultNs .*Infinity/);
    expect(() => new DeviceCost({ replayNs: Number.NaN })).toThrow(KernelError);
  });
});
