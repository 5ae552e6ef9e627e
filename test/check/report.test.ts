/** Violation reports: what they name, how they replay, and what the oracle costs when detached. */
import { describe, expect, it } from 'vitest';
import { Engine, type Program, parseSchedule, replay, runProgram } from '../../src/sim/index.js';
import { DEV_PTE_WRITE, Device } from '../../src/device/index.js';
import { MAP_FIXED, PhysMem, cpuWrite64, createMm, mmap } from '../../src/mm/index.js';
import { CoherencyViolation, type Oracle, attachOracle, formatEvent } from '../../src/check/index.js';
import { BUF, P, PRIV, RW, cpuPfn, devLoad, expectViolation, insertDriver, mapBuf, run, world } from './helpers.js';

/** A program whose device entry points at the wrong frame; `out` gets its oracle. */
function wrongFrame(out: { oracle?: Oracle }): Program {
  return (engine: Engine) => {
    const phys = new PhysMem(engine, { frames: 64, maxDeviceFrames: 8 });
    const oracle = attachOracle(engine);
    out.oracle = oracle;
    const mm = createMm(engine, phys, { name: 'app' });
    const dev = new Device(engine, phys, { name: 'gpu7', memory: { frames: 8 } });
    const as = dev.createAddressSpace();
    oracle.watchDevice(dev, { as, mm, notifierSubs: [] });
    engine.spawn('cpu', async () => {
      await mmap(mm, BUF, 2 * P, RW, PRIV | MAP_FIXED);
      await cpuWrite64(mm, BUF, 1n);
      await cpuWrite64(mm, BUF + P, 2n);
      as.map(BUF, mm.pgtable.pfnAt(BUF / P + 1), DEV_PTE_WRITE);
      engine.spawn('noise', async () => {
        for (let i = 0; i < 3; i++) await engine.yield();
      });
      await dev.launch(as, { warps: 2 }, async (ctx) => ctx.load(BUF + 8 * ctx.warp, 8)).join();
    });
  };
}

describe('violation reports', () => {
  it('name the rule, address, device, frames with generations, recent events and the replay data', async () => {
    const w = world();
    const r = await run(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 2);
      await cpuWrite64(w.mm, BUF, 1n);
      await cpuWrite64(w.mm, BUF + P, 2n);
      w.as.map(BUF, cpuPfn(w, BUF + P), DEV_PTE_WRITE);
      await devLoad(w, BUF);
    });
    const rep = expectViolation(r, 'translation/frame-mismatch').report;
    const text = rep.render();
    expect(text).toMatch(/^coherency violation: translation coherence \(translation\/frame-mismatch\)/);
    expect(text).toContain('device: gpu0 asid 1');
    expect(text).toContain('address: 0x1000000000');
    expect(text).toMatch(/pfn \d+ gen 0, system, refcount 1, mapcount 1: device translation/);
    expect(text).toMatch(/device\.pt_map .*page=0x1000000000/);
    expect(text).toMatch(/cpu\.access .*kind=store/);
    expect(text).toMatch(/device\.access .*tlbHit=false/);
    expect(text).toContain(`schedule ${r.schedule}`);
    expect(rep.schedule).toBe(r.schedule);
    expect(parseSchedule(rep.schedule).strategy).toBe('fifo');
    expect(rep.history.every((ev, i, a) => i === 0 || a[i - 1]!.seq < ev.seq)).toBe(true);
    expect(JSON.parse(JSON.stringify(rep.toJSON()))).toMatchObject({ code: 'translation/frame-mismatch', device: 'gpu0', addr: BUF });
    expect(r.failure!.message).toMatch(/^coherency violation: translation coherence \(frame-mismatch\) \[gpu0 asid 1, mm, 0x1000000000\]/);
  });

  it('replay from their schedule to the same violation at the same event', async () => {
    const first: { oracle?: Oracle } = {};
    const r = await runProgram(wrongFrame(first), { seed: 5, strategy: 'random' });
    expect(r.failure).toBeInstanceOf(CoherencyViolation);
    const rep = (r.failure as CoherencyViolation).report;
    expect(rep.seed).toBe(5);
    expect(rep.strategy).toBe('random');
    const again: { oracle?: Oracle } = {};
    const r2 = await replay(wrongFrame(again), rep.schedule);
    const rep2 = (r2.failure as CoherencyViolation).report;
    expect(rep2.code).toBe(rep.code);
    expect(rep2.message).toBe(rep.message);
    expect(rep2.event?.seq).toBe(rep.event?.seq);
    // mm ids come from a process-wide counter (src/mm), so the two runs' mms differ only in id.
    const norm = (evs: typeof rep.history): string[] => evs.map((ev) => formatEvent(ev).replace(/ mm=\d+/, ' mm=N'));
    expect(norm(rep2.history)).toEqual(norm(rep.history));
  });

  it('cost nothing once detached: the trace bus goes quiet', () => {
    const e = new Engine();
    const oracle = attachOracle(e);
    expect(e.trace.active).toBe(true);
    oracle.detach();
    expect(e.trace.active).toBe(false);
    expect(oracle.attached).toBe(false);
  });

  it('keep only the last events of a page', async () => {
    const w = world({ oracle: { historyPerPage: 4, historyInReport: 6 } });
    const r = await run(w, async () => {
      await mapBuf(w, 2);
      for (let i = 0; i < 10; i++) await cpuWrite64(w.mm, BUF, BigInt(i));
      await cpuWrite64(w.mm, BUF + P, 2n);
      w.as.map(BUF, cpuPfn(w, BUF + P));
      await devLoad(w, BUF);
    });
    const rep = expectViolation(r, 'translation/frame-mismatch').report;
    expect(rep.history.length).toBeLessThanOrEqual(6);
    expect(rep.history.at(-1)?.type).toBe('device.access');
  });
});
