import { describe, expect, it } from 'vitest';
import {
  EDEADLK,
  EINVAL,
  Engine,
  KernelError,
  KernelWarning,
  RunawayError,
  TaskCrashedError,
  type TraceEvent,
} from '../../src/sim/index.js';

describe('engine basics', () => {
  it('runs tasks to completion and join returns their results', async () => {
    const e = new Engine();
    const child = e.spawn('child', async () => {
      await e.yield();
      return 42;
    });
    let got = 0;
    e.spawn('parent', async () => {
      got = await child.join();
    });
    const r = await e.run();
    expect(r.ok).toBe(true);
    expect(got).toBe(42);
    expect(child.state).toBe('done');
    expect(child.result).toBe(42);
  });

  it('fifo round-robins at yields', async () => {
    const e = new Engine({ strategy: 'fifo' });
    const order: string[] = [];
    for (const n of ['a', 'b', 'c']) {
      e.spawn(n, async () => {
        for (let i = 0; i < 2; i++) {
          order.push(`${n}${i}`);
          await e.yield();
        }
      });
    }
    await e.run();
    expect(order).toEqual(['a0', 'b0', 'c0', 'a1', 'b1', 'c1']);
  });

  it('virtual time jumps to the next timer when nothing is runnable', async () => {
    const e = new Engine();
    const log: Array<[string, number]> = [];
    e.spawn('slow', async () => {
      await e.sleep(1000);
      log.push(['slow', e.now]);
    });
    e.spawn('fast', async () => {
      await e.sleep(10);
      log.push(['fast', e.now]);
      await e.sleep(5);
      log.push(['fast2', e.now]);
    });
    const r = await e.run();
    expect(log).toEqual([
      ['fast', 10],
      ['fast2', 15],
      ['slow', 1000],
    ]);
    expect(r.time).toBe(1000);
  });

  it('timers due at the same instant wake in the order they were set', async () => {
    const e = new Engine();
    const order: string[] = [];
    for (const n of ['x', 'y', 'z']) {
      e.spawn(n, async () => {
        await e.sleep(100);
        order.push(n);
      });
    }
    await e.run();
    expect(order).toEqual(['x', 'y', 'z']);
  });

  it('spawn from a running task makes a runnable task with a parent', async () => {
    const e = new Engine();
    let parentOfChild: string | undefined;
    e.spawn('root', async (root) => {
      const c = e.spawn('child', async () => 7);
      parentOfChild = c.parent?.name;
      expect(await c.join()).toBe(7);
      expect(root.name).toBe('root');
    });
    expect((await e.run()).ok).toBe(true);
    expect(parentOfChild).toBe('root');
  });

  it('choose logs choices with more than one option and none for n = 1', async () => {
    const e = new Engine({ strategy: 'random', seed: 9 });
    const values: number[] = [];
    e.spawn('t', async () => {
      values.push(e.choose(1));
      for (let i = 0; i < 5; i++) values.push(e.choose(10, 'pick'));
    });
    const r = await e.run();
    expect(values[0]).toBe(0);
    expect(r.decisions).toEqual(values.slice(1));
    expect(values.slice(1).every((v) => v >= 0 && v < 10)).toBe(true);
  });

  it('chance never fires under fifo and always fires at num = den', async () => {
    const e = new Engine({ strategy: 'fifo' });
    const seen: boolean[] = [];
    e.spawn('t', async () => {
      seen.push(e.chance(1, 2), e.chance(99, 100), e.chance(0, 5), e.chance(3, 3));
    });
    await e.run();
    expect(seen).toEqual([false, false, false, true]);
  });

  it('WARN_ON is counted and traced, and fatal when asked', async () => {
    const e = new Engine();
    const warns: string[] = [];
    e.trace.on('warn', (ev) => warns.push(ev.message));
    e.spawn('t', async () => {
      expect(e.warnOn(false, 'no')).toBe(false);
      expect(e.warnOn(true, 'yes')).toBe(true);
    });
    const r = await e.run();
    expect(r.ok).toBe(true);
    expect(r.warnings).toBe(1);
    expect(warns).toEqual(['yes']);

    const f = new Engine({ warnFatal: true });
    f.spawn('t', async () => {
      f.warnOn(true, 'bad thing');
    });
    const rf = await f.run();
    expect(rf.failure).toBeInstanceOf(KernelWarning);
    expect(rf.failure?.message).toContain('bad thing');
  });

  it('the run-away guard stops a livelock with RunawayError', async () => {
    const e = new Engine({ maxSteps: 1000 });
    e.spawn('spin', async () => {
      for (;;) await e.yield();
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(RunawayError);
    expect(r.failure?.message).toContain('1000');
  });

  it('a task that throws fails the run with TaskCrashedError naming it', async () => {
    const e = new Engine();
    e.spawn('boom', async () => {
      await e.yield();
      throw new Error('kaput');
    });
    e.spawn('other', async () => {
      for (let i = 0; i < 10; i++) await e.yield();
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(TaskCrashedError);
    expect(r.failure?.message).toBe('task boom crashed: Error: kaput');
  });

  it('trace events carry a total order (seq) and the virtual time', async () => {
    const e = new Engine();
    const events: TraceEvent[] = [];
    e.trace.onAny((ev) => events.push(ev));
    e.spawn('a', async () => {
      await e.sleep(5);
    });
    await e.run();
    expect(events.map((ev) => ev.seq)).toEqual(events.map((_, i) => i));
    expect(events.map((ev) => ev.type)).toEqual(['task.spawn', 'sched.switch', 'time.advance', 'sched.switch', 'task.exit', 'run.end']);
    expect(events.at(-1)?.time).toBe(5);
  });

  it('with nobody listening the bus reports inactive, so emit sites build nothing', () => {
    const e = new Engine();
    expect(e.trace.active).toBe(false);
    const off = e.trace.on('sched.switch', () => {});
    expect(e.trace.wants('sched.switch')).toBe(true);
    expect(e.trace.wants('task.spawn')).toBe(false);
    off();
    off();
    expect(e.trace.active).toBe(false);
  });
});

describe('engine bad input', () => {
  const inTask = async (fn: (e: Engine) => Promise<void> | void): Promise<unknown> => {
    const e = new Engine();
    let thrown: unknown;
    e.spawn('t', async () => {
      try {
        await fn(e);
      } catch (err) {
        thrown = err;
      }
    });
    const r = await e.run();
    expect(r.ok).toBe(true);
    return thrown;
  };

  it('a negative, NaN or infinite sleep is EINVAL and does not sleep', async () => {
    for (const ns of [-1, Number.NaN, Infinity]) {
      const err = await inTask((e) => e.sleep(ns));
      expect(err).toBeInstanceOf(KernelError);
      expect((err as KernelError).errno).toBe(EINVAL);
      expect((err as KernelError).message).toContain(String(ns));
    }
  });

  it('joining a task twice is EINVAL; joining oneself is EDEADLK', async () => {
    const e = new Engine();
    const errs: KernelError[] = [];
    const child = e.spawn('child', async () => 1);
    e.spawn('parent', async (self) => {
      await child.join();
      try {
        await child.join();
      } catch (err) {
        errs.push(err as KernelError);
      }
      try {
        await self.join();
      } catch (err) {
        errs.push(err as KernelError);
      }
    });
    expect((await e.run()).ok).toBe(true);
    expect(errs.map((x) => x.errno)).toEqual([EINVAL, EDEADLK]);
    expect(errs[0]?.message).toContain('already joined');
  });

  it('bad spawn arguments, bad choose and bad chance are EINVAL', async () => {
    const e = new Engine();
    expect(() => e.spawn('', async () => {})).toThrow(KernelError);
    expect(() => e.spawn('x', 5 as never)).toThrow(/fn must be an async function/);
    expect(() => e.choose(0)).toThrow(/positive integer: 0/);
    expect(() => e.choose(2.5)).toThrow(KernelError);
    expect(() => e.chance(3, 2)).toThrow(/3\/2/);
    expect(e.allTasks).toHaveLength(0);
  });

  it('bad engine options are EINVAL naming the value', () => {
    expect(() => new Engine({ seed: -1 })).toThrow(/seed must be an integer in \[0, 2\^32\): -1/);
    expect(() => new Engine({ seed: 1.5 })).toThrow(KernelError);
    expect(() => new Engine({ strategy: 'bogus' })).toThrow(/unknown strategy "bogus"/);
    expect(() => new Engine({ strategy: 'pct:0' })).toThrow(/depth/);
    expect(() => new Engine({ strategy: 'pct:2' })).toThrow(/step estimate/);
    expect(() => new Engine({ maxSteps: 0 })).toThrow(/maxSteps/);
  });

  it('an engine runs once', async () => {
    const e = new Engine();
    await e.run();
    await expect(e.run()).rejects.toThrow(/runs once/);
  });

  it('scheduling points outside a task are a KernelBug', async () => {
    const e = new Engine();
    expect(() => e.yield()).toThrow(/called outside a task/);
  });
});

describe('trace listeners', () => {
  it('a listener that throws fails the run with its error instead of corrupting or hanging it', async () => {
    const e = new Engine();
    e.trace.on('time.advance', () => {
      throw new Error('listener bug');
    });
    e.spawn('t', async () => {
      await e.sleep(5);
      await e.sleep(5);
    });
    const r = await e.run();
    expect(r.ok).toBe(false);
    expect(r.failure?.message).toBe('trace listener for time.advance threw: listener bug');
  });
});
