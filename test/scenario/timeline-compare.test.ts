/** The event timeline, driver comparisons, deferred devices and the snapshot/exclusive/release commands. */
import { describe, expect, it } from 'vitest';
import type { KernelError} from 'hmm-emu';
import { EINVAL, PAGE_SIZE, cpuRead64, cpuWrite64, munmap } from 'hmm-emu';
import { SNAPSHOT, compareScenario, defineScenario, deviceTask, mergeFaultLatency, renderTimeline, replayScenario, runScenario } from 'hmm-emu/testing';
import { drivers } from '../../drivers/index.js';
import { deviceFaultVsMunmap, forkWhileMirrored } from '../../scenarios/index.js';

const BUF = 0x10_0000_0000;

/** A device that writes 4 pages while the CPU logs and unmaps the upper two (killable). */
const small = defineScenario({
  name: 'timeline-small',
  description: 'a test scenario',
  drivers: 'any',
  world: { frames: 64, devices: [{ name: 'gpu0', memoryFrames: 0 }] },
  async setup(ctx) {
    await ctx.mmap(4, { addr: BUF });
  },
  tasks: {
    gpu: deviceTask({
      killable: true,
      async kernel(_ctx, w) {
        for (let p = 0; p < 4; p++) await w.store(BUF + p * PAGE_SIZE, 8, BigInt(p + 1));
      },
    }),
    async cpu(ctx) {
      await ctx.racePoint({ counter: 'never', max: 0, until: ['gpu'] });
      ctx.log('unmapping the upper half');
      ctx.expectEqual(await munmap(ctx.mm, BUF + 2 * PAGE_SIZE, 2 * PAGE_SIZE), 0, 'munmap');
    },
  },
});

describe('the event timeline', () => {
  it('is off by default and, when asked for, tells the story: syscalls, faults, page-table writes, log lines, in time order', async () => {
    const plain = await runScenario(small, { driver: 'dmirror', registry: drivers, seed: 1 });
    expect(plain.timeline).toBeNull();
    const r = await runScenario(small, { driver: 'dmirror', registry: drivers, seed: 1, timeline: true });
    expect(r.verdict, r.summary).toBe('coherent');
    const t = r.timeline!;
    const types = t.entries.map((e) => e.type);
    for (const ty of ['mm.syscall', 'device.fault', 'device.pt_map', 'notifier.invalidate_start', 'notifier.invalidate_end', 'scenario.log']) expect(types, ty).toContain(ty);
    // No per-access noise, no scheduler internals.
    for (const ty of ['device.access', 'cpu.access', 'sched.switch', 'lock.acquire', 'time.advance']) expect(types).not.toContain(ty);
    for (let i = 1; i < t.entries.length; i++) expect(t.entries[i]!.seq).toBeGreaterThan(t.entries[i - 1]!.seq);
    const log = t.entries.find((e) => e.type === 'scenario.log')!;
    expect([log.task, log.text]).toEqual(['cpu', 'message="unmapping the upper half"']);
    // The timeline does not perturb the run: same schedule with and without it.
    expect(r.schedule).toBe(plain.schedule);
    const text = renderTimeline(t);
    expect(text.split('\n')).toHaveLength(t.entries.length);
    expect(text).toMatch(/\d+ns {2}cpu +mm\.syscall +mm=1 op=munmap start=0x1000002000 len=8192 result=0/);
  });

  it('folds a run of the same event in one task that differs only in addresses into one line with a count', async () => {
    const r = await runScenario(deviceFaultVsMunmap, { driver: 'dmirror', registry: drivers, seed: 3, timeline: true });
    const faults = r.timeline!.entries.find((e) => e.type === 'mm.fault' && e.task === 'scenario')!;
    // setup's fill writes 8 pages in a row: one line, x8, first and last address.
    expect(faults.count).toBe(8);
    expect(faults.text).toContain('addr=0x1000000000');
    expect(faults.lastText).toContain('addr=0x1000007000');
    expect(renderTimeline(r.timeline!)).toContain('(x8, last: mm=1 addr=0x1000007000');
  });

  it('a replay gives the same timeline line for line, mm ids included', async () => {
    const r = await runScenario(deviceFaultVsMunmap, { driver: 'mockgpu', registry: drivers, seed: 11, strategy: 'pct:3', timeline: true });
    // A second run in the same process gets new process-wide mm ids: the timeline renumbers them.
    const again = await replayScenario(deviceFaultVsMunmap, 'mockgpu', r.schedule, { registry: drivers, timeline: true });
    expect(renderTimeline(again.timeline!)).toBe(renderTimeline(r.timeline!));
    expect(renderTimeline(r.timeline!)).toMatch(/ mm=1 /);
  });

  it('keeps an mm.fork line\'s parent and child, renumbered per run as reports are', async () => {
    const r = await runScenario(forkWhileMirrored, { driver: 'dmirror', registry: drivers, seed: 4, timeline: true });
    const fork = r.timeline!.entries.find((e) => e.type === 'mm.fork')!;
    expect(fork.text).toBe('parent=1 child=2');
    const spawn = r.timeline!.entries.find((e) => e.type === 'task.spawn')!;
    expect(spawn.text).toBe('name=scenario');
  });

  it('selects event types by name or prefix, or all of them, and keeps at most `limit` lines', async () => {
    const dev = await runScenario(small, { driver: 'dmirror', registry: drivers, seed: 1, timeline: { types: ['device.'] } });
    expect(new Set(dev.timeline!.entries.map((e) => e.type.split('.')[0]))).toEqual(new Set(['device']));
    expect(dev.timeline!.entries.map((e) => e.type)).toContain('device.access');
    const all = await runScenario(small, { driver: 'dmirror', registry: drivers, seed: 1, timeline: { types: 'all', limit: 5 } });
    expect(all.timeline!.entries).toHaveLength(5);
    expect(all.timeline!.dropped).toBeGreaterThan(0);
    expect(renderTimeline(all.timeline!)).toMatch(/\.\.\. \d+ more lines not kept/);
    await expect(runScenario(small, { driver: 'dmirror', registry: drivers, timeline: { limit: 0 } })).rejects.toThrow(/timeline: limit must be a positive integer/);
    await expect(runScenario(small, { driver: 'dmirror', registry: drivers, timeline: 'yes' as unknown as boolean })).rejects.toThrow(/timeline must be a boolean or timeline options/);
  });
});

describe('comparing drivers on one workload', () => {
  it('runs the same seeds on each driver and reports verdicts, retries, backoffs and fault latency per driver', async () => {
    const c = await compareScenario(deviceFaultVsMunmap, { drivers: ['dmirror', 'mockgpu'], registry: drivers, runs: 20, seed: 5 });
    expect(c.rows.map((r) => [r.driver, r.api, r.runs, r.verdicts.coherent])).toEqual([
      ['dmirror', 'modern', 20, 20],
      ['mockgpu', 'modern', 20, 20],
    ]);
    for (const r of c.rows) {
      expect(r.totals.deviceFaults).toBeGreaterThan(0);
      expect(r.totals.faultLatency.count).toBeGreaterThan(0);
      expect(r.totals.faultLatency.meanNs).toBeGreaterThan(0);
      expect(r.totals.faultLatency.histogram.reduce((a, b) => a + b, 0)).toBe(r.totals.faultLatency.count);
    }
    // The same seeds give the same figures.
    const again = await compareScenario(deviceFaultVsMunmap, { drivers: ['dmirror'], registry: drivers, runs: 20, seed: 5 });
    expect(again.rows[0]!.totals).toEqual(c.rows[0]!.totals);
  });

  it('refuses a driver the scenario does not apply to before running anything, and bad counts', async () => {
    await expect(compareScenario(deviceFaultVsMunmap, { drivers: ['dmirror', 'hmm2015'], registry: drivers })).rejects.toThrow(/does not apply to driver hmm2015/);
    await expect(compareScenario(deviceFaultVsMunmap, { drivers: [], registry: drivers })).rejects.toThrow(/drivers must be a non-empty array/);
    await expect(compareScenario(deviceFaultVsMunmap, { drivers: ['dmirror'], registry: drivers, runs: 0 })).rejects.toThrow(/runs must be a positive integer/);
  });

  it('mergeFaultLatency weighs means by counts and sums the histograms', () => {
    const m = mergeFaultLatency([
      { count: 1, meanNs: 100, maxNs: 100, histogram: [1, 0, 0, 0, 0, 0] },
      { count: 3, meanNs: 2000, maxNs: 5000, histogram: [0, 3, 0, 0, 0, 0] },
    ]);
    expect(m).toEqual({ count: 4, meanNs: 1525, maxNs: 5000, histogram: [1, 3, 0, 0, 0, 0] });
    expect(mergeFaultLatency([])).toEqual({ count: 0, meanNs: 0, maxNs: 0, histogram: [0, 0, 0, 0, 0, 0] });
  });
});

describe('deferred devices', () => {
  const forked = defineScenario({
    name: 'child-device',
    description: 'a fork child opens its own mirror and writes through it',
    drivers: 'any',
    world: { frames: 128, devices: [{ name: 'gpu0', memoryFrames: 0 }, { name: 'gpu1', memoryFrames: 0, deferred: true }] },
    async setup(ctx) {
      await ctx.mmap(2, { addr: BUF });
      await cpuWrite64(ctx.mm, BUF, 7n);
    },
    tasks: {
      async main(ctx) {
        ctx.expect(ctx.devices.length === 1, 'only gpu0 is bound at the start');
        const child = await ctx.fork();
        const d = await ctx.bindDevice('gpu1', child);
        await d.run(async (w) => w.store(BUF, 8, 9n));
        ctx.expectEqual(await cpuRead64(child, BUF), 9n, "child's word after its device's write");
        ctx.expectEqual(await cpuRead64(ctx.mm, BUF), 7n, "parent's word (copy-on-write)");
        await ctx.bindDevice('gpu1', child);
      },
    },
  });

  it('binds to a fork child when the scenario asks, watched by the oracle and unbound at teardown; binding twice is refused', async () => {
    for (const name of ['dmirror', 'hmm2015', 'mockgpu']) {
      const r = await runScenario(forked, { driver: name, registry: drivers, seed: 2 });
      expect(r.verdict, `${name}: ${r.summary}`).toBe('error');
      expect(r.summary).toContain('ctx.bindDevice: device "gpu1" is already bound');
      expect(r.stats.deviceAccesses).toBeGreaterThan(0);
    }
  });

  it('refuses to bind a device that is not deferred, or not in the world, and validates the flag', async () => {
    const s = (device: string) =>
      defineScenario({
        name: 'bind-bad',
        description: 'x',
        drivers: 'any',
        world: { frames: 64, devices: [{ name: 'gpu0', memoryFrames: 0 }] },
        tasks: { async main(ctx) { await ctx.bindDevice(device, ctx.mm); } },
      });
    expect((await runScenario(s('gpu0'), { driver: 'dmirror', registry: drivers })).summary).toContain('device "gpu0" is already bound');
    expect((await runScenario(s('gpu7'), { driver: 'dmirror', registry: drivers })).summary).toContain('"gpu7" is not a deferred device of the world (deferred: none)');
    expect(() => defineScenario({ name: 'x', description: 'x', drivers: 'any', world: { devices: [{ name: 'g', deferred: 'yes' as unknown as boolean }] }, tasks: { async t() {} } })).toThrow(/world\.devices\[0\]\.deferred must be a boolean: "yes"/);
    try {
      defineScenario({ name: 'x', description: 'x', origin: '', drivers: 'any', tasks: { async t() {} } });
      expect.unreachable();
    } catch (e) {
      expect((e as KernelError).errno).toBe(EINVAL);
      expect((e as Error).message).toMatch(/origin must be a non-empty string/);
    }
  });
});

describe('the snapshot, exclusive and release commands', () => {
  const cmds = defineScenario({
    name: 'commands',
    description: 'x',
    drivers: { features: ['snapshot', 'exclusive', 'release', 'device-migration'] },
    world: { frames: 128, devices: [{ name: 'gpu0', memoryFrames: 8 }] },
    tasks: {
      async main(ctx) {
        const dev = ctx.device();
        await ctx.mmap(3, { addr: BUF });
        await cpuRead64(ctx.mm, BUF + PAGE_SIZE); // the zero page
        await cpuWrite64(ctx.mm, BUF + 2 * PAGE_SIZE, 5n);
        ctx.expectEqual(Array.from(await dev.snapshot(BUF, 3)).join(','), [SNAPSHOT.NONE, SNAPSHOT.ZERO | SNAPSHOT.READ, SNAPSHOT.WRITE].join(','), 'snapshot');
        ctx.expectEqual(await dev.makeExclusive(BUF + 2 * PAGE_SIZE, 1), 0, 'makeExclusive');
        ctx.expectEqual(await dev.checkExclusive(BUF + 2 * PAGE_SIZE, 1), -1, 'checkExclusive while held (-EPERM)');
        await cpuWrite64(ctx.mm, BUF + 2 * PAGE_SIZE, 6n); // the CPU takes it back
        ctx.expectEqual(await dev.checkExclusive(BUF + 2 * PAGE_SIZE, 1), 0, 'checkExclusive after the CPU write');
        ctx.expectEqual(await dev.migrateToDevice(BUF + 2 * PAGE_SIZE, 1), 0, 'migrate');
        ctx.expectEqual((await dev.snapshot(BUF + 2 * PAGE_SIZE, 1))[0]!, SNAPSHOT.DEV_PRIVATE_LOCAL | SNAPSHOT.WRITE, 'snapshot of the migrated page');
        ctx.expectEqual(await dev.releaseDeviceMemory(), 0, 'release');
        ctx.expectEqual((await dev.snapshot(BUF + 2 * PAGE_SIZE, 1))[0]!, SNAPSHOT.WRITE, 'snapshot after release');
        ctx.expectEqual(await cpuRead64(ctx.mm, BUF + 2 * PAGE_SIZE), 6n, 'data after release');
        await dev.snapshot(BUF + 1, 1);
      },
    },
  });

  it('reach the driver through the context, and a failing snapshot throws with its errno', async () => {
    const r = await runScenario(cmds, { driver: 'dmirror', registry: drivers, seed: 0 });
    expect(r.verdict).toBe('error');
    expect(r.summary).toMatch(/snapshot of 1 pages at 0x1000000001 failed: EINVAL/);
  });

  it('a driver without the feature is refused by the selector, and its commands by the context', async () => {
    await expect(runScenario(cmds, { driver: 'mockgpu', registry: drivers })).rejects.toThrow(/needs the 'snapshot' feature, which mockgpu lacks/);
    const bare = defineScenario({ name: 'bare', description: 'x', drivers: 'any', world: { frames: 64, devices: [{ name: 'gpu0', memoryFrames: 0 }] }, tasks: { async main(ctx) { await ctx.device().snapshot(BUF, 1); } } });
    expect((await runScenario(bare, { driver: 'hmm2015', registry: drivers })).summary).toContain('has no snapshot command');
  });
});
