/** Rule 6, the teardown audit: leftover mappings, unbalanced counts, leaks and blocked tasks; a clean teardown passes. */
import { describe, expect, it } from 'vitest';
import { Completion } from '../../src/sim/index.js';
import { DEV_PTE_WRITE } from '../../src/device/index.js';
import { PROT_READ, cpuWrite64, exitMm, fork, mprotect } from '../../src/mm/index.js';
import { BUF, P, cpuPfn, devLoad, expectViolation, insertDriver, mapBuf, run, runOk, world } from './helpers.js';

describe('rule 6: teardown audit', () => {
  it('passes a clean teardown: the driver zapped, every frame is free again', async () => {
    const w = world();
    await runOk(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 4);
      for (let i = 0; i < 4; i++) await cpuWrite64(w.mm, BUF + i * P, BigInt(i));
      w.as.map(BUF, cpuPfn(w, BUF), DEV_PTE_WRITE);
      await devLoad(w, BUF);
      const child = await fork(w.mm);
      w.oracle.watchMm(child);
      await exitMm(child);
      await exitMm(w.mm);
    });
    expect(w.oracle.finish()).toEqual([]);
  });

  it('flags a device mapping left after exit and the device frame it leaks', async () => {
    const w = world();
    await runOk(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF, 1n);
      await exitMm(w.mm);
      const d = w.dev.memory!.allocPage(); // the driver's own page, mapped and never freed
      w.as.map(BUF, d, DEV_PTE_WRITE);
    });
    expect(w.oracle.finish().map((v) => v.code)).toEqual(['teardown/device-mapping-left', 'teardown/frame-leak']);
  });

  it('flags a device entry at rest that no longer matches the live CPU page table', async () => {
    const w = world({ declare: false });
    w.zap = 'none';
    await runOk(w, async () => {
      await insertDriver(w);
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF, 1n);
      w.as.map(BUF, cpuPfn(w, BUF), DEV_PTE_WRITE);
      await mprotect(w.mm, BUF, P, PROT_READ);
    });
    const [v] = w.oracle.finish();
    expect(v?.code).toBe('teardown/stale-entry');
    expect(v?.details[0]).toMatch(/writable, but the CPU page table has a present read-only CPU entry/);
  });

  it('flags a mapcount that does not match the CPU entries mapping the frame', async () => {
    const w = world();
    await runOk(w, async () => {
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF, 1n);
      w.phys.incMapcount(cpuPfn(w, BUF)); // a mapping nobody made
    });
    const [v] = w.oracle.finish();
    expect(v?.code).toBe('teardown/mapcount');
    expect(v?.frames[0]?.role).toMatch(/mapcount 2, but 1 CPU entry maps it/);
  });

  it('flags a task left blocked when the audit runs at the end of the last task, but not a sleeping one', async () => {
    const w = world();
    const never = new Completion(w.engine, 'never');
    const r = await run(w, async () => {
      w.engine.spawn('napper', async () => w.engine.sleep(1_000_000));
      w.engine.spawn('waiter', async () => never.waitForCompletion());
      await w.engine.yield();
      await w.engine.yield();
      w.oracle.finish();
    });
    const v = expectViolation(r, 'teardown/task-blocked');
    expect(v.report.details).toEqual(['waiter (blocked on wait queue "completion never")']);
  });
});
