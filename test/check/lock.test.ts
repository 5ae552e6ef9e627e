/** Rule 5, lock discipline: the engine's lock errors are classified into reports; other failures are not. */
import { describe, expect, it } from 'vitest';
import { Completion, Engine, Mutex, TaskCrashedError } from '../../src/sim/index.js';
import { cpuWrite64, oomReapTaskMm } from '../../src/mm/index.js';
import { MmuIntervalNotifier, ULONG_MAX_ADDR, mmuIntervalNotifierInsert } from '../../src/notifier/index.js';
import { attachOracle, classifyFailure } from '../../src/check/index.js';
import { BUF, expectViolation, mapBuf, run, world } from './helpers.js';

describe('rule 5: lock discipline', () => {
  it('classifies a lock-order inversion (lockdep) as a lock-discipline report', async () => {
    const e = new Engine();
    const oracle = attachOracle(e);
    const a = new Mutex(e, 'a');
    const b = new Mutex(e, 'b');
    e.spawn('t', async () => {
      await a.lock();
      await b.lock();
      b.unlock();
      a.unlock();
      await b.lock();
      await a.lock(); // b -> a after a -> b: an inversion, though nothing deadlocks
    });
    const r = await e.run();
    const rep = oracle.classify(r.failure);
    expect(rep?.code).toBe('lock/lockdep');
    expect(oracle.violations).toContain(rep);
  });

  it('classifies a deadlock and names each blocked task', async () => {
    const e = new Engine();
    const oracle = attachOracle(e);
    const never = new Completion(e, 'never');
    e.spawn('stuck', async () => never.waitForCompletion());
    const r = await e.run();
    const rep = oracle.classify(r.failure)!;
    expect(rep.code).toBe('lock/deadlock');
    expect(rep.details.join('\n')).toMatch(/stuck waits on/);
  });

  it('classifies a callback that sleeps in a non-blockable invalidation', async () => {
    const w = world();
    const sleepy = new MmuIntervalNotifier('sleepy');
    const r = await run(w, async () => {
      await mmuIntervalNotifierInsert(sleepy, w.mm, 0, ULONG_MAX_ADDR, {
        invalidate: async () => {
          await w.engine.sleep(10); // the OOM reaper's range may not sleep
          return true;
        },
      });
      await mapBuf(w, 1);
      await cpuWrite64(w.mm, BUF, 1n);
      await oomReapTaskMm(w.mm);
    });
    expect(w.oracle.classify(r.failure)?.code).toBe('lock/sleep-in-atomic');
  });

  it('returns a violation its own report and leaves crashes unclassified', async () => {
    const w = world();
    const r = await run(w, async () => {
      w.as.map(BUF, 300); // a free frame
    });
    const v = expectViolation(r, 'use-after-free/at-map');
    expect(w.oracle.classify(v)).toBe(v.report);
    expect(w.oracle.violations).toEqual([v.report]);
    expect(classifyFailure(w.engine, new TaskCrashedError('boom', 't', new Error('boom')))).toBeNull();
    expect(w.oracle.classify(null)).toBeNull();
  });
});
