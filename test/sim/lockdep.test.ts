import { describe, expect, it } from 'vitest';
import { DeadlockError, Engine, LockdepError, Mutex, SpinLock } from '../../src/sim/index.js';

describe('lockdep', () => {
  it('ABBA order is a LockdepError naming both chains, in a run that did not deadlock', async () => {
    const e = new Engine({ strategy: 'fifo' });
    const a = new Mutex(e, 'A');
    const b = new Mutex(e, 'B');
    const first = e.spawn('first', async () => {
      await a.lock();
      await b.lock();
      b.unlock();
      a.unlock();
    });
    e.spawn('second', async () => {
      await first.join(); // strictly after: this run cannot deadlock
      await b.lock();
      await a.lock();
      a.unlock();
      b.unlock();
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(LockdepError);
    const msg = r.failure!.message;
    expect(msg).toContain('possible circular locking dependency: B -> A closes a cycle');
    expect(msg).toContain('second: acquires "A" while holding ["B"]');
    expect(msg).toContain('A -> B, first seen as first: acquires "B" while holding ["A"]');
  });

  it('finds a cycle through three classes', async () => {
    const e = new Engine();
    const [a, b, c] = ['A', 'B', 'C'].map((n) => new Mutex(e, n)) as [Mutex, Mutex, Mutex];
    e.spawn('t', async () => {
      for (const [x, y] of [
        [a, b],
        [b, c],
        [c, a],
      ] as Array<[Mutex, Mutex]>) {
        await x.lock();
        await y.lock();
        y.unlock();
        x.unlock();
      }
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(LockdepError);
    expect(r.failure?.message).toContain('C -> A closes a cycle');
  });

  it('a real deadlock with lockdep off is a DeadlockError naming each blocked task and its lock', async () => {
    const e = new Engine({ lockdep: false });
    const a = new Mutex(e, 'A');
    const b = new Mutex(e, 'B');
    e.spawn('t1', async () => {
      await a.lock();
      await e.yield();
      await b.lock();
    });
    e.spawn('t2', async () => {
      await b.lock();
      await e.yield();
      await a.lock();
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(DeadlockError);
    const d = r.failure as DeadlockError;
    expect(d.blocked).toEqual([
      { task: 't1', waitsOn: 'mutex "B" held by t2' },
      { task: 't2', waitsOn: 'mutex "A" held by t1' },
    ]);
  });

  it('a task blocked forever on a wait queue is reported as a deadlock', async () => {
    const { WaitQueue } = await import('../../src/sim/index.js');
    const e = new Engine();
    const wq = new WaitQueue(e, 'nranges');
    e.spawn('waiter', async () => {
      await wq.waitEvent(() => false);
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(DeadlockError);
    expect(r.failure?.message).toContain('waiter: wait queue "nranges"');
  });

  it('same-class nesting needs a subclass; with one it is accepted', async () => {
    const e = new Engine();
    const d0 = new Mutex(e, 'dev0.mutex', { lockClass: 'dmirror.mutex' });
    const d1 = new Mutex(e, 'dev1.mutex', { lockClass: 'dmirror.mutex' });
    e.spawn('t', async () => {
      await d0.lock();
      await d1.lock(1);
      d1.unlock();
      d0.unlock();
    });
    expect((await e.run()).ok).toBe(true);

    const f = new Engine();
    const x0 = new Mutex(f, 'dev0.mutex', { lockClass: 'dmirror.mutex' });
    const x1 = new Mutex(f, 'dev1.mutex', { lockClass: 'dmirror.mutex' });
    f.spawn('t', async () => {
      await x0.lock();
      await x1.lock();
    });
    const r = await f.run();
    expect(r.failure).toBeInstanceOf(LockdepError);
    expect(r.failure?.message).toContain('possible recursive locking');
  });

  it('a trylock adds no ordering edge to the lock it takes', async () => {
    const e = new Engine();
    const a = new Mutex(e, 'A');
    const b = new Mutex(e, 'B');
    e.spawn('t', async () => {
      await a.lock();
      expect(b.trylock()).toBe(true); // A -> B not recorded
      b.unlock();
      a.unlock();
      await b.lock();
      await a.lock(); // B -> A: no cycle, since the trylock added no A -> B
      a.unlock();
      b.unlock();
    });
    expect((await e.run()).ok).toBe(true);
  });

  it('spinlocks take part in the order graph', async () => {
    const e = new Engine();
    const m = new Mutex(e, 'driver.mutex');
    const s = new SpinLock(e, 'subscriptions.lock');
    e.spawn('t', async () => {
      await m.lock();
      s.lock();
      s.unlock();
      m.unlock();
      s.lock();
      m.trylock(); // trylock: fine
      m.unlock();
      s.unlock();
    });
    expect((await e.run()).ok).toBe(true);
  });
});
