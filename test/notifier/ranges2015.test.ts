import { describe, expect, it } from 'vitest';
import { DeadlockError, EAGAIN, Engine, KernelBug, Mutex, RwSemaphore, explore, type Program } from '../../src/sim/index.js';
import {
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_UNMAP,
  MmuIntervalNotifier,
  MmuNotifier,
  type NotifierMm,
  ULONG_MAX_ADDR,
  mmuIntervalNotifierInsert,
  mmuIntervalSetSeq,
  mmuNotifierInvalidateRangeEnd,
  mmuNotifierInvalidateRangeStart,
  mmuNotifierInvalidateRangeStartNonblock,
  mmuNotifierRangeInit,
  mmuNotifierRangeIsValid,
  mmuNotifierRangeIsValidLocked,
  mmuNotifierRangeWaitValid,
  mmuNotifierRegister,
} from '../../src/notifier/index.js';

function fakeMm(e: Engine, id = 1): NotifierMm {
  return { engine: e, id, mmapLock: new RwSemaphore(e, 'mmap_lock'), notifierSubscriptions: null };
}

/** Gives the mm subscriptions (and so range tracking) with a notifier that does nothing. */
async function track(mm: NotifierMm): Promise<void> {
  await mmuNotifierRegister(new MmuNotifier({}, 'tracker'), mm);
}

/** start, hold for `ns`, end. */
async function invalidateFor(mm: NotifierMm, start: number, end: number, ns: number): Promise<void> {
  const r = mmuNotifierRangeInit(MMU_NOTIFY_UNMAP, 0, mm, start, end);
  await mmuNotifierInvalidateRangeStart(r);
  await mm.engine.sleep(ns);
  await mmuNotifierInvalidateRangeEnd(r);
}

describe('2015 active-range tracking', () => {
  it('wait_valid sleeps while an overlapping range is active and wakes when it ends', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    let returned = -1;
    e.spawn('main', async () => {
      await track(mm);
      const inv = e.spawn('cpu', () => invalidateFor(mm, 0x1000, 0x2000, 100));
      const fault = e.spawn('device_fault', async () => {
        await e.sleep(10);
        expect(mmuNotifierRangeIsValid(mm, 0x1800, 0x2800)).toBe(false);
        await mmuNotifierRangeWaitValid(mm, 0x1800, 0x2800);
        returned = e.now;
        expect(mmuNotifierRangeIsValid(mm, 0x1800, 0x2800)).toBe(true);
      });
      await inv.join();
      await fault.join();
    });
    expect((await e.run()).ok).toBe(true);
    expect(returned).toBe(100);
  });

  it('a non-overlapping range ending also wakes wait_valid, which then waits again', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    let blocks = 0;
    let returned = -1;
    e.spawn('main', async () => {
      await track(mm);
      const overlapping = e.spawn('cpu0', () => invalidateFor(mm, 0x1000, 0x2000, 100));
      const other = e.spawn('cpu1', () => invalidateFor(mm, 0x5000, 0x6000, 50));
      const fault = e.spawn('device_fault', async () => {
        await e.sleep(10);
        const off = e.trace.on('wait.block', (ev) => {
          if (ev.task === e.current?.id && ev.on.includes('mmu_notifier_mm.wait_queue')) blocks++;
        });
        await mmuNotifierRangeWaitValid(mm, 0x1000, 0x2000);
        off();
        returned = e.now;
      });
      await overlapping.join();
      await other.join();
      await fault.join();
    });
    expect((await e.run()).ok).toBe(true);
    expect(blocks).toBe(2); // woken at 50 by cpu1's end (nranges changed), slept again
    expect(returned).toBe(100);
  });

  it('the range is published before any start callback and removed after every end callback, without a wake-up at start', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const seen: string[] = [];
    e.spawn('main', async () => {
      await mmuIntervalNotifierInsert(new MmuIntervalNotifier('itv'), mm, 0, 0x10000, {
        invalidate(s, r, cur) {
          mmuIntervalSetSeq(s, cur);
          seen.push(`interval start: valid=${mmuNotifierRangeIsValid(mm, r.start, r.end)}`);
          return true;
        },
      });
      await mmuNotifierRegister(
        new MmuNotifier(
          {
            invalidateRangeStart: (_s, r) => {
              seen.push(`classic start: valid=${mmuNotifierRangeIsValid(mm, r.start, r.end)} nranges=${mm.notifierSubscriptions!.nranges}`);
              return 0;
            },
            invalidateRangeEnd: (_s, r) => {
              seen.push(`classic end: valid=${mmuNotifierRangeIsValid(mm, r.start, r.end)}`);
            },
          },
          'classic',
        ),
        mm,
      );
      const wakes: number[] = [];
      const off = e.trace.on('wait.wake', (ev) => void wakes.push(ev.task));
      const r = mmuNotifierRangeInit(MMU_NOTIFY_CLEAR, 0, mm, 0x1000, 0x2000);
      await mmuNotifierInvalidateRangeStart(r);
      seen.push(`between: valid=${mmuNotifierRangeIsValid(mm, 0x1000, 0x2000)}`);
      await mmuNotifierInvalidateRangeEnd(r);
      off();
      seen.push(`after: valid=${mmuNotifierRangeIsValid(mm, 0x1000, 0x2000)} nranges=${mm.notifierSubscriptions!.nranges} wakes=${wakes.length}`);
    });
    expect((await e.run()).ok).toBe(true);
    expect(seen).toEqual([
      'interval start: valid=false',
      'classic start: valid=false nranges=1',
      'between: valid=false',
      'classic end: valid=false',
      'after: valid=true nranges=0 wakes=0',
    ]);
  });

  it('is_valid uses half-open overlap: touching ranges do not conflict', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const got: boolean[] = [];
    e.spawn('main', async () => {
      expect(mmuNotifierRangeIsValid(mm, 0x1000, 0x2000)).toBe(true); // no subscriptions: always valid
      await track(mm);
      const r = mmuNotifierRangeInit(MMU_NOTIFY_UNMAP, 0, mm, 0x1000, 0x2000);
      await mmuNotifierInvalidateRangeStart(r);
      for (const [s, en] of [
        [0, 0x1000],
        [0x2000, 0x3000],
        [0xfff, 0x1001],
        [0x1fff, 0x2000],
        [0x1400, 0x1800],
        [0, ULONG_MAX_ADDR],
      ] as const) {
        got.push(mmuNotifierRangeIsValid(mm, s, en));
      }
      await mmuNotifierInvalidateRangeEnd(r);
    });
    expect((await e.run()).ok).toBe(true);
    expect(got).toEqual([true, true, false, false, false, false]);
  });

  it('is_valid_locked wants subscriptions.lock held', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    e.spawn('main', async () => {
      expect(mmuNotifierRangeIsValidLocked(mm, 0, 0x1000)).toBe(true); // no subscriptions, no lock
      await track(mm);
      const subs = mm.notifierSubscriptions!;
      subs.lock.lock();
      expect(mmuNotifierRangeIsValidLocked(mm, 0, 0x1000)).toBe(true);
      subs.lock.unlock();
      mmuNotifierRangeIsValidLocked(mm, 0, 0x1000);
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(KernelBug);
    expect(r.failure?.message).toContain('mmu_notifier_subscriptions.lock');
  });

  it('a failed non-blockable start takes its range off the list (no end will come)', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    e.spawn('oom_reaper', async () => {
      await mmuNotifierRegister(new MmuNotifier({ invalidateRangeStart: () => -EAGAIN }, 'busy'), mm);
      const r = mmuNotifierRangeInit(MMU_NOTIFY_CLEAR, 0, mm, 0, 0x1000);
      expect(await mmuNotifierInvalidateRangeStartNonblock(r)).toBe(-EAGAIN);
      expect(mmuNotifierRangeIsValid(mm, 0, 0x1000)).toBe(true);
      await mmuNotifierRangeWaitValid(mm, 0, 0x1000);
    });
    expect((await e.run()).ok).toBe(true);
  });

  it('Hubbard: nothing blocks new invalidations, so a range valid when wait_valid returns can be invalid at once', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const seen: string[] = [];
    e.spawn('main', async () => {
      await track(mm);
      const inv = e.spawn('cpu', async () => {
        await invalidateFor(mm, 0, 0x1000, 10);
        await e.sleep(5);
        await invalidateFor(mm, 0, 0x1000, 10); // [15, 25): starts while the fault goes on
      });
      const fault = e.spawn('device_fault', async () => {
        await e.sleep(1);
        await mmuNotifierRangeWaitValid(mm, 0, 0x1000);
        seen.push(`${e.now}: ${mmuNotifierRangeIsValid(mm, 0, 0x1000)}`);
        await e.sleep(10); // "walk the CPU page table"
        seen.push(`${e.now}: ${mmuNotifierRangeIsValid(mm, 0, 0x1000)}`);
      });
      await inv.join();
      await fault.join();
    });
    expect((await e.run()).ok).toBe(true);
    expect(seen).toEqual(['10: true', '20: false']);
  });

  it('wait_valid can sleep through a window of validity: the count went back to its snapshot before the waiter ran', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    let returned = -1;
    e.spawn('main', async () => {
      await track(mm);
      const inv = e.spawn('cpu', async () => {
        await invalidateFor(mm, 0, 0x1000, 10);
        // No scheduling point between the end above and this start: nranges goes 1 -> 0 -> 1
        // before the woken waiter runs, so `nranges != snapshot` is false again.
        await invalidateFor(mm, 0, 0x1000, 10);
      });
      const fault = e.spawn('device_fault', async () => {
        await e.sleep(1);
        await mmuNotifierRangeWaitValid(mm, 0, 0x1000);
        returned = e.now;
      });
      await inv.join();
      await fault.join();
    });
    expect((await e.run()).ok).toBe(true);
    expect(returned).toBe(20);
  });

  it('Hairgrove: the documented wait_valid / lock / recheck sequence deadlocks (the diagram in ranges2015.ts)', async () => {
    const run = async (hmmStyle: boolean): Promise<{ ok: boolean; failure: Error | null; tries: number }> => {
      const e = new Engine({ strategy: 'fifo' });
      const mm = fakeMm(e);
      const blockNew = new Mutex(e, 'block_new_invalidation');
      let tries = 0;
      e.spawn('main', async () => {
        // Thread B's notifier: blocks new invalidations on the fault's lock from its start callback.
        await mmuNotifierRegister(
          new MmuNotifier(
            {
              async invalidateRangeStart() {
                await blockNew.lock();
                blockNew.unlock();
                return 0;
              },
            },
            'blocker',
          ),
          mm,
        );
        const a = e.spawn('A', async () => {
          // again: wait_valid(); lock_block_new_invalidation(); if (!is_valid()) goto again; ...; unlock()
          for (;;) {
            tries++;
            await mmuNotifierRangeWaitValid(mm, 0, 0x1000); // valid: returns at once
            await blockNew.lock(); // B publishes its range meanwhile, then blocks in its callback
            if (mmuNotifierRangeIsValid(mm, 0, 0x1000)) break;
            if (hmmStyle) blockNew.unlock(); // HMM: drop the lock and retry (-EAGAIN)
          }
          blockNew.unlock();
        });
        const b = e.spawn('B', () => invalidateFor(mm, 0, 0x1000, 10));
        await a.join();
        await b.join();
      });
      const r = await e.run();
      return { ok: r.ok, failure: r.failure, tries };
    };
    const documented = await run(false);
    expect(documented.failure).toBeInstanceOf(DeadlockError);
    expect(documented.failure?.message).toContain('A: wait queue "mmu_notifier_mm.wait_queue"');
    expect(documented.failure?.message).toContain('B: mutex "block_new_invalidation" held by A');
    const hmm = await run(true);
    expect(hmm.ok).toBe(true);
    expect(hmm.tries).toBe(2);
  });

  it('no lost wake-up: concurrent ranges and waiters always finish, and wait_valid returns only on a valid range', async () => {
    const program: Program = (e) => {
      const mm = fakeMm(e);
      const span = (): [number, number] => {
        const s = e.choose(4, 'start') * 0x1000;
        return [s, s + (1 + e.choose(2, 'len')) * 0x1000];
      };
      e.spawn('main', async () => {
        await track(mm);
        const tasks = [];
        for (let i = 0; i < 3; i++) {
          tasks.push(
            e.spawn(`cpu${i}`, async () => {
              for (let k = 0; k < 3; k++) {
                const [s, en] = span();
                const r = mmuNotifierRangeInit(MMU_NOTIFY_UNMAP, 0, mm, s, en);
                await mmuNotifierInvalidateRangeStart(r);
                await e.yield();
                await mmuNotifierInvalidateRangeEnd(r);
              }
            }),
          );
        }
        for (let i = 0; i < 2; i++) {
          tasks.push(
            e.spawn(`fault${i}`, async () => {
              for (let k = 0; k < 3; k++) {
                const [s, en] = span();
                await mmuNotifierRangeWaitValid(mm, s, en);
                if (!mmuNotifierRangeIsValid(mm, s, en)) throw new Error('wait_valid returned on an invalid range');
                await e.yield();
              }
            }),
          );
        }
        for (const t of tasks) await t.join();
        const subs = mm.notifierSubscriptions!;
        if (subs.nranges !== 0 || subs.ranges.length !== 0) throw new Error('ranges left behind');
      });
    };
    for (const strategy of ['random', 'pct:3']) {
      const res = await explore(program, { runs: 300, strategy });
      expect(res.failures.map((f) => f.failure?.message)).toEqual([]);
    }
  });
});
