import { describe, expect, it } from 'vitest';
import { Completion, Engine, WaitQueue } from '../../src/sim/index.js';

describe('WaitQueue', () => {
  it('waitEvent sleeps until the condition holds and a wake-up arrives', async () => {
    const e = new Engine();
    const wq = new WaitQueue(e, 'wq');
    let flag = false;
    let wokeAt = -1;
    e.spawn('waiter', async () => {
      await wq.waitEvent(() => flag);
      wokeAt = e.now;
    });
    e.spawn('waker', async () => {
      await e.sleep(100);
      flag = true;
      wq.wakeUp();
    });
    expect((await e.run()).ok).toBe(true);
    expect(wokeAt).toBe(100);
  });

  it('a wake-up without the condition puts the waiter back to sleep', async () => {
    const e = new Engine();
    const wq = new WaitQueue(e, 'wq');
    let n = 0;
    let checks = 0;
    e.spawn('waiter', async () => {
      await wq.waitEvent(() => {
        checks++;
        return n >= 2;
      });
    });
    e.spawn('waker', async () => {
      for (let i = 0; i < 2; i++) {
        await e.yield();
        n++;
        wq.wakeUp();
      }
    });
    expect((await e.run()).ok).toBe(true);
    expect(checks).toBe(3);
  });

  it('wakeUp wakes all non-exclusive waiters but one exclusive; wakeUpAll wakes everyone', async () => {
    const e = new Engine();
    const wq = new WaitQueue(e, 'wq');
    let go = false;
    const woke: string[] = [];
    for (const n of ['x1', 'x2']) {
      e.spawn(n, async () => {
        await wq.waitEventExclusive(() => go);
        woke.push(n);
      });
    }
    e.spawn('plain', async () => {
      await wq.waitEvent(() => go);
      woke.push('plain');
    });
    e.spawn('waker', async () => {
      await e.yield();
      go = true;
      wq.wakeUp();
      await e.yield();
      await e.yield();
      expect(woke.sort()).toEqual(['plain', 'x1']);
      wq.wakeUpAll();
    });
    expect((await e.run()).ok).toBe(true);
    expect(woke.sort()).toEqual(['plain', 'x1', 'x2']);
  });

  it('waitEventTimeout returns 0 after the timeout in virtual time, or the time left', async () => {
    const e = new Engine();
    const wq = new WaitQueue(e, 'wq');
    let flag = false;
    const got: Array<[number, number]> = [];
    e.spawn('timeout', async () => {
      got.push([await wq.waitEventTimeout(() => false, 1000), e.now]);
    });
    e.spawn('success', async () => {
      got.push([await wq.waitEventTimeout(() => flag, 5000), e.now]);
    });
    e.spawn('waker', async () => {
      await e.sleep(2000);
      flag = true;
      wq.wakeUpAll();
    });
    expect((await e.run()).ok).toBe(true);
    expect(got).toEqual([
      [0, 1000],
      [3000, 2000],
    ]);
    expect(wq.active()).toBe(false);
  });

  it('a stale timeout does not move virtual time', async () => {
    const e = new Engine();
    const wq = new WaitQueue(e, 'wq');
    let flag = false;
    e.spawn('w', async () => {
      await wq.waitEventTimeout(() => flag, 1_000_000);
    });
    e.spawn('k', async () => {
      await e.sleep(10);
      flag = true;
      wq.wakeUp();
    });
    const r = await e.run();
    expect(r.time).toBe(10);
  });
});

describe('Completion', () => {
  it('complete lets one waiter through, completeAll lets all through', async () => {
    const e = new Engine();
    const c = new Completion(e, 'done');
    const through: string[] = [];
    for (const n of ['a', 'b', 'c']) {
      e.spawn(n, async () => {
        await c.waitForCompletion();
        through.push(n);
      });
    }
    e.spawn('signal', async () => {
      await e.yield();
      c.complete();
      await e.sleep(10);
      expect(through).toHaveLength(1);
      c.completeAll();
    });
    expect((await e.run()).ok).toBe(true);
    expect(through).toHaveLength(3);
    expect(c.isDone()).toBe(true);
  });

  it('tryWaitForCompletion does not block', async () => {
    const e = new Engine();
    const c = new Completion(e, 'x');
    e.spawn('t', async () => {
      expect(c.tryWaitForCompletion()).toBe(false);
      c.complete();
      expect(c.tryWaitForCompletion()).toBe(true);
      expect(c.isDone()).toBe(false);
    });
    expect((await e.run()).ok).toBe(true);
  });
});
