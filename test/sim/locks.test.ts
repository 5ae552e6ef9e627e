import { describe, expect, it } from 'vitest';
import { AtomicSleepError, Engine, KernelBug, LockdepError, Mutex, RwSemaphore, SpinLock } from '../../src/sim/index.js';

describe('Mutex', () => {
  it('excludes: a read-modify-write across a yield never loses an update, under many random schedules', async () => {
    for (let seed = 0; seed < 50; seed++) {
      const e = new Engine({ strategy: 'random', seed });
      const m = new Mutex(e, 'counter');
      let x = 0;
      for (const n of ['a', 'b', 'c']) {
        e.spawn(n, async () => {
          for (let i = 0; i < 10; i++) {
            await m.lock();
            const v = x;
            await e.yield();
            x = v + 1;
            m.unlock();
          }
        });
      }
      const r = await e.run();
      expect(r.ok).toBe(true);
      expect(x).toBe(30);
    }
  });

  it('hands off to waiters in FIFO order', async () => {
    const e = new Engine();
    const m = new Mutex(e, 'm');
    const order: string[] = [];
    e.spawn('holder', async () => {
      await m.lock();
      for (let i = 0; i < 5; i++) await e.yield();
      m.unlock();
    });
    for (const n of ['w1', 'w2', 'w3']) {
      e.spawn(n, async () => {
        await m.lock();
        order.push(n);
        m.unlock();
      });
    }
    await e.run();
    expect(order).toEqual(['w1', 'w2', 'w3']);
  });

  it('trylock fails while held and succeeds when free, without blocking', async () => {
    const e = new Engine();
    const m = new Mutex(e, 'm');
    const got: boolean[] = [];
    e.spawn('a', async () => {
      await m.lock();
      await e.yield();
      m.unlock();
    });
    e.spawn('b', async () => {
      await e.yield(); // a passes mutex_lock's preemption point and takes it
      got.push(m.trylock());
      await e.yield();
      await e.yield();
      got.push(m.trylock());
      m.unlock();
    });
    expect((await e.run()).ok).toBe(true);
    expect(got).toEqual([false, true]);
  });

  it('unlocking a mutex the task does not hold is a LockdepError', async () => {
    const e = new Engine();
    const m = new Mutex(e, 'm');
    e.spawn('a', async () => {
      m.unlock();
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(LockdepError);
    expect(r.failure?.message).toContain('bad unlock balance: task a unlocks mutex "m" held by nobody');
  });

  it('assertHeld fails for a task that does not hold the lock', async () => {
    const e = new Engine();
    const m = new Mutex(e, 'dmirror.mutex');
    e.spawn('a', async () => {
      await m.lock();
      m.assertHeld();
      m.unlock();
      m.assertHeld();
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(KernelBug);
    expect(r.failure?.message).toContain('lockdep_assert_held: mutex "dmirror.mutex" not held by a');
  });

  it('a task exiting with a lock held is a KernelBug', async () => {
    const e = new Engine();
    const m = new Mutex(e, 'm');
    e.spawn('leaky', async () => {
      await m.lock();
    });
    const r = await e.run();
    expect(r.failure?.message).toContain('exited with locks held: ["m"]');
  });
});

describe('RwSemaphore', () => {
  it('admits readers together and a writer alone', async () => {
    const e = new Engine({ strategy: 'random', seed: 4 });
    const sem = new RwSemaphore(e, 'mmap_lock');
    let readers = 0;
    let writers = 0;
    let maxReaders = 0;
    const check = (): void => {
      expect(writers === 0 || (writers === 1 && readers === 0)).toBe(true);
    };
    for (let i = 0; i < 4; i++) {
      e.spawn(`r${i}`, async () => {
        for (let k = 0; k < 5; k++) {
          await sem.downRead();
          readers++;
          maxReaders = Math.max(maxReaders, readers);
          check();
          await e.yield();
          readers--;
          sem.upRead();
        }
      });
    }
    e.spawn('w', async () => {
      for (let k = 0; k < 5; k++) {
        await sem.downWrite();
        writers++;
        check();
        await e.yield();
        writers--;
        sem.upWrite();
      }
    });
    expect((await e.run()).ok).toBe(true);
    expect(maxReaders).toBeGreaterThan(1);
  });

  it('does not starve a writer: readers arriving after a waiting writer queue behind it', async () => {
    const e = new Engine();
    const sem = new RwSemaphore(e, 'mmap_lock');
    const order: string[] = [];
    e.spawn('r1', async () => {
      await sem.downRead();
      order.push('r1');
      for (let i = 0; i < 3; i++) await e.yield();
      sem.upRead();
    });
    e.spawn('w', async () => {
      await sem.downWrite();
      order.push('w');
      sem.upWrite();
    });
    e.spawn('r2', async () => {
      await e.yield();
      await sem.downRead();
      order.push('r2');
      sem.upRead();
    });
    expect((await e.run()).ok).toBe(true);
    expect(order).toEqual(['r1', 'w', 'r2']);
  });

  it('trylocks follow the kernel: read fails with a waiting writer; write fails when held', async () => {
    const e = new Engine();
    const sem = new RwSemaphore(e, 's');
    const got: Array<[string, boolean]> = [];
    e.spawn('r', async () => {
      await sem.downRead();
      await e.yield();
      got.push(['tryRead-with-writer-waiting', sem.tryDownRead()]);
      got.push(['tryWrite-while-read', sem.tryDownWrite()]);
      sem.upRead();
    });
    e.spawn('w', async () => {
      await sem.downWrite();
      sem.upWrite();
      got.push(['tryRead-free', sem.tryDownRead()]);
      sem.upRead();
      got.push(['tryWrite-free', sem.tryDownWrite()]);
      sem.upWrite();
    });
    expect((await e.run()).ok).toBe(true);
    expect(got).toEqual([
      ['tryRead-with-writer-waiting', false],
      ['tryWrite-while-read', false],
      ['tryRead-free', true],
      ['tryWrite-free', true],
    ]);
  });

  it('downgradeWrite turns the writer into a reader and admits queued readers', async () => {
    const e = new Engine();
    const sem = new RwSemaphore(e, 's');
    const seen: string[] = [];
    e.spawn('w', async () => {
      await sem.downWrite();
      await e.yield();
      await e.yield();
      sem.downgradeWrite();
      sem.assertHeld();
      await e.yield();
      seen.push(`w-read:${sem.isWriteLocked()}`);
      sem.upRead();
    });
    e.spawn('r', async () => {
      await sem.downRead();
      seen.push('r-in');
      sem.upRead();
    });
    expect((await e.run()).ok).toBe(true);
    expect(seen).toEqual(['r-in', 'w-read:false']);
  });

  it('assertWriteLocked fails under a read lock; up_write without holding is a LockdepError', async () => {
    const e = new Engine();
    const sem = new RwSemaphore(e, 'mmap_lock');
    e.spawn('a', async () => {
      await sem.downRead();
      sem.assertHeld();
      sem.assertWriteLocked();
    });
    const r = await e.run();
    expect(r.failure?.message).toContain('lockdep_assert_held_write: rwsem "mmap_lock" not write-held by a (holders: readers a)');

    const f = new Engine();
    const s2 = new RwSemaphore(f, 's');
    f.spawn('b', async () => {
      s2.upWrite();
    });
    expect((await f.run()).failure).toBeInstanceOf(LockdepError);
  });
});

describe('SpinLock and atomic context', () => {
  it('blocking while holding a spinlock is an AtomicSleepError naming the lock', async () => {
    const e = new Engine();
    const ptl = new SpinLock(e, 'ptl');
    const m = new Mutex(e, 'm');
    e.spawn('t', async () => {
      ptl.lock();
      await m.lock();
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(AtomicSleepError);
    expect(r.failure?.message).toContain('mutex_lock(m) in task t inside spinlock ptl');
  });

  it('a yield in a non-blocking context is an AtomicSleepError naming the context', async () => {
    const e = new Engine();
    e.spawn('oom_reaper', async () => {
      await e.nonBlocking('invalidate_range_start (non-blockable)', async () => {
        await e.yield();
      });
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(AtomicSleepError);
    expect(r.failure?.message).toContain('non-blockable');
  });

  it('a non-blocking context that does not sleep is fine and trylocks work inside it', async () => {
    const e = new Engine();
    const m = new Mutex(e, 'm');
    let inside = false;
    e.spawn('t', async () => {
      const ok = await e.nonBlocking('callback', () => {
        inside = e.inAtomic();
        if (!m.trylock()) return false;
        m.unlock();
        return true;
      });
      expect(ok).toBe(true);
      expect(e.inAtomic()).toBe(false);
    });
    expect((await e.run()).ok).toBe(true);
    expect(inside).toBe(true);
  });

  it('taking a spinlock twice is reported as recursive locking', async () => {
    const e = new Engine();
    const s = new SpinLock(e, 'ptl');
    e.spawn('t', async () => {
      s.lock();
      s.lock();
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(LockdepError);
    expect(r.failure?.message).toContain('possible recursive locking');
  });

  it('spin trylock, unlock and assertHeld behave as the kernel', async () => {
    const e = new Engine();
    const s = new SpinLock(e, 'lock');
    e.spawn('t', async () => {
      expect(s.trylock()).toBe(true);
      expect(s.trylock()).toBe(false);
      s.assertHeld();
      s.unlock();
      expect(s.isLocked()).toBe(false);
      await e.yield();
    });
    expect((await e.run()).ok).toBe(true);
  });
});
