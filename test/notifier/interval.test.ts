import { describe, expect, it } from 'vitest';
import {
  AtomicSleepError,
  Completion,
  EEXIST,
  EINVAL,
  Engine,
  KernelError,
  LockdepError,
  Mutex,
  RwSemaphore,
  explore,
  type Program,
  EOVERFLOW,
} from '../../src/sim/index.js';
import {
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_RELEASE,
  MMU_NOTIFY_UNMAP,
  MmuIntervalNotifier,
  type MmuIntervalNotifierOps,
  type NotifierMm,
  ULONG_MAX_ADDR,
  mmuIntervalCheckRetry,
  mmuIntervalNotifierInsert,
  mmuIntervalNotifierInsertLocked,
  mmuIntervalNotifierRemove,
  mmuIntervalReadBegin,
  mmuIntervalReadRetry,
  mmuIntervalSetSeq,
  mmuNotifierInvalidateRangeEnd,
  mmuNotifierInvalidateRangeStart,
  mmuNotifierInvalidateRangeStartNonblock,
  mmuNotifierRangeInit,
  mmuNotifierRelease,
} from '../../src/notifier/index.js';

function fakeMm(e: Engine, id = 1): NotifierMm {
  return { engine: e, id, mmapLock: new RwSemaphore(e, 'mmap_lock'), notifierSubscriptions: null };
}

/** A driver-like invalidate: takes the user lock around set_seq, records the call. */
function driverOps(lock: Mutex, log: string[], name: string): MmuIntervalNotifierOps {
  return {
    async invalidate(sub, range, cur) {
      await lock.lock();
      mmuIntervalSetSeq(sub, cur);
      log.push(`${name}:${range.start.toString(16)}`);
      lock.unlock();
      return true;
    },
  };
}

/** An invalidate that only sets the seq (never sleeps). */
const plainOps: MmuIntervalNotifierOps = {
  invalidate(sub, _range, cur) {
    mmuIntervalSetSeq(sub, cur);
    return true;
  },
};

async function invalidate(mm: NotifierMm, start: number, end: number, between?: () => Promise<void>): Promise<void> {
  const r = mmuNotifierRangeInit(MMU_NOTIFY_UNMAP, 0, mm, start, end);
  await mmuNotifierInvalidateRangeStart(r);
  if (between) await between();
  await mmuNotifierInvalidateRangeEnd(r);
}

describe('mmu_interval_read_begin / read_retry protocol', () => {
  it('runs the read_begin diagram: an invalidation between read_begin and the locked read_retry makes it return true', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const ulock = new Mutex(e, 'user_lock');
    const log: string[] = [];
    const sub = new MmuIntervalNotifier('mirror');
    const begun = new Completion(e, 'begun');
    const invDone = new Completion(e, 'inv_done');
    let retry: boolean | null = null;
    e.spawn('main', async () => {
      expect(await mmuIntervalNotifierInsert(sub, mm, 0x1000, 0x2000, driverOps(ulock, log, 'mirror'))).toBe(0);
      const driver = e.spawn('driver', async () => {
        const seq = await mmuIntervalReadBegin(sub); // spin_lock; seq = sub->invalidate_seq; not invalidating
        log.push('read_begin');
        begun.complete();
        await invDone.waitForCompletion(); // "fault in pages" while the invalidation runs through
        await ulock.lock();
        retry = mmuIntervalReadRetry(sub, seq);
        log.push(`read_retry=${retry}`);
        ulock.unlock();
      });
      const inv = e.spawn('invalidation', async () => {
        await begun.waitForCompletion();
        await invalidate(mm, 0x1000, 0x2000); // seq |= 1; invalidate() -> set_seq; inv_end: seq++
        log.push('inv_end');
        invDone.complete();
      });
      await driver.join();
      await inv.join();
    });
    const r = await e.run();
    expect(r.ok).toBe(true);
    expect(log).toEqual(['read_begin', 'mirror:1000', 'inv_end', 'read_retry=true']);
    expect(retry).toBe(true);
  });

  it('read_retry returns false when the invalidation comes after the locked check', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const ulock = new Mutex(e, 'user_lock');
    const log: string[] = [];
    const sub = new MmuIntervalNotifier('mirror');
    const checked = new Completion(e, 'checked');
    let retry: boolean | null = null;
    let checkAfter: boolean | null = null;
    e.spawn('main', async () => {
      await mmuIntervalNotifierInsert(sub, mm, 0x1000, 0x2000, driverOps(ulock, log, 'mirror'));
      const driver = e.spawn('driver', async () => {
        const seq = await mmuIntervalReadBegin(sub);
        await ulock.lock();
        retry = mmuIntervalReadRetry(sub, seq);
        ulock.unlock();
        checked.complete();
        await e.sleep(100);
        checkAfter = mmuIntervalCheckRetry(sub, seq); // the lockless hint sees the later collision
      });
      const inv = e.spawn('invalidation', async () => {
        await checked.waitForCompletion();
        await invalidate(mm, 0x1000, 0x2000);
      });
      await driver.join();
      await inv.join();
    });
    const r = await e.run();
    expect(r.ok).toBe(true);
    expect(retry).toBe(false);
    expect(checkAfter).toBe(true);
  });

  it('an invalidation that does not overlap the notifier does not disturb its critical section', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const sub = new MmuIntervalNotifier('mirror');
    let retry: boolean | null = null;
    e.spawn('main', async () => {
      await mmuIntervalNotifierInsert(sub, mm, 0x1000, 0x1000, plainOps);
      const seq = await mmuIntervalReadBegin(sub);
      await invalidate(mm, 0x2000, 0x3000); // [0x1000, 0x1fff] vs [0x2000, 0x3000): no overlap
      retry = mmuIntervalReadRetry(sub, seq);
    });
    expect((await e.run()).ok).toBe(true);
    expect(retry).toBe(false);
  });

  it('read_begin sleeps while an invalidation of the notifier is active and returns after its end', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const sub = new MmuIntervalNotifier('mirror');
    const started = new Completion(e, 'started');
    const log: string[] = [];
    e.spawn('main', async () => {
      await mmuIntervalNotifierInsert(sub, mm, 0, 0x10000, plainOps);
      const inv = e.spawn('invalidation', async () => {
        await invalidate(mm, 0x4000, 0x5000, async () => {
          started.complete();
          await e.sleep(500);
          log.push(`end at ${e.now}`);
        });
      });
      const reader = e.spawn('reader', async () => {
        await started.waitForCompletion();
        const seq = await mmuIntervalReadBegin(sub);
        log.push(`read_begin returned at ${e.now}`);
        expect(seq & 1).toBe(1);
        expect(mmuIntervalReadRetry(sub, seq)).toBe(false);
      });
      await inv.join();
      await reader.join();
    });
    expect((await e.run()).ok).toBe(true);
    expect(log).toEqual(['end at 500', 'read_begin returned at 500']);
  });

  it('overlapping invalidations keep the seq odd until the last one ends', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const sub = new MmuIntervalNotifier('mirror');
    const seqs: Array<[string, number]> = [];
    let readerDone = -1;
    e.spawn('main', async () => {
      await mmuIntervalNotifierInsert(sub, mm, 0, 0x10000, plainOps);
      const subs = mm.notifierSubscriptions!;
      const a = e.spawn('inv-a', async () => {
        await invalidate(mm, 0x1000, 0x3000, async () => {
          seqs.push(['a started', subs.invalidateSeq]);
          await e.sleep(100);
        });
        seqs.push(['a ended', subs.invalidateSeq]);
      });
      const b = e.spawn('inv-b', async () => {
        await e.sleep(50);
        await invalidate(mm, 0x2000, 0x4000, async () => {
          seqs.push(['b started', subs.invalidateSeq]);
          await e.sleep(100);
        });
        seqs.push(['b ended', subs.invalidateSeq]);
      });
      const reader = e.spawn('reader', async () => {
        await e.sleep(120); // a has ended, b has not
        await mmuIntervalReadBegin(sub);
        readerDone = e.now;
      });
      await a.join();
      await b.join();
      await reader.join();
    });
    expect((await e.run()).ok).toBe(true);
    expect(seqs).toEqual([
      ['a started', 3],
      ['b started', 3],
      ['a ended', 3],
      ['b ended', 4],
    ]);
    expect(readerDone).toBe(150);
  });

  it('a driver that checks read_retry under its lock never keeps a stale mirror, over many random schedules', async () => {
    // A CPU "PTE" and a device mirror of it. The invalidation clears the mirror in its callback
    // and changes the PTE between start and end; the driver mirrors the PTE with the protocol.
    const program = (checkRetry: boolean): Program => (e) => {
      const mm = fakeMm(e);
      const ulock = new Mutex(e, 'user_lock');
      const sub = new MmuIntervalNotifier('mirror');
      let pte = 1;
      let mirror: number | null = null;
      e.spawn('main', async () => {
        await mmuIntervalNotifierInsert(sub, mm, 0, 0x1000, {
          async invalidate(s, _range, cur) {
            await ulock.lock();
            mmuIntervalSetSeq(s, cur);
            mirror = null;
            ulock.unlock();
            return true;
          },
        });
        const inv = e.spawn('cpu', async () => {
          for (let i = 0; i < 3; i++) {
            await invalidate(mm, 0, 0x1000, async () => {
              await e.yield();
              pte++;
            });
            await e.yield();
          }
        });
        const dev = e.spawn('device', async () => {
          for (let i = 0; i < 3; i++) {
            for (;;) {
              const seq = await mmuIntervalReadBegin(sub);
              const v = pte; // hmm_range_fault: read the CPU page table
              await e.yield();
              await ulock.lock();
              if (checkRetry && mmuIntervalReadRetry(sub, seq)) {
                ulock.unlock();
                continue;
              }
              mirror = v;
              ulock.unlock();
              break;
            }
            await e.yield();
          }
        });
        await inv.join();
        await dev.join();
        if (mirror !== null && mirror !== pte) throw new Error(`stale mirror ${mirror}, pte ${pte}`);
      });
    };
    const good = await explore(program(true), { runs: 300, strategy: 'random' });
    expect(good.failures).toEqual([]);
    const broken = await explore(program(false), { runs: 300, strategy: 'random' });
    expect(broken.firstFailure?.failure?.message).toContain('stale mirror');
  });
});

describe('interval notifier insert and remove', () => {
  it('an insert during an invalidation is deferred: not called for it, and its first read_begin waits for the end', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const lock = new Mutex(e, 'user_lock');
    const log: string[] = [];
    const old = new MmuIntervalNotifier('old');
    const late = new MmuIntervalNotifier('late');
    e.spawn('main', async () => {
      await mmuIntervalNotifierInsert(old, mm, 0, 0x10000, driverOps(lock, log, 'old'));
      const subs = mm.notifierSubscriptions!;
      const inv = e.spawn('invalidation', async () => {
        await invalidate(mm, 0x1000, 0x2000, async () => {
          await e.sleep(100);
          log.push('inv end');
        });
      });
      const inserter = e.spawn('inserter', async () => {
        await e.sleep(10);
        expect(subs.invalidateSeq & 1).toBe(1);
        expect(await mmuIntervalNotifierInsert(late, mm, 0x1000, 0x1000, driverOps(lock, log, 'late'))).toBe(0);
        expect(subs.deferredList).toEqual([late]);
        expect(subs.itree.size).toBe(1);
        await mmuIntervalReadBegin(late);
        log.push(`late read_begin returned at ${e.now}`);
        expect(subs.itree.size).toBe(2);
        expect(subs.deferredList).toEqual([]);
        await invalidate(mm, 0x1000, 0x2000);
      });
      await inv.join();
      await inserter.join();
    });
    expect((await e.run()).ok).toBe(true);
    expect(log).toEqual(['old:1000', 'inv end', 'late read_begin returned at 100', 'old:1000', 'late:1000']);
  });

  it('an insert while a non-overlapping invalidation runs (seq even) goes in the tree and forces the seq odd', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const first = new MmuIntervalNotifier('first');
    const second = new MmuIntervalNotifier('second');
    const log: string[] = [];
    e.spawn('main', async () => {
      await mmuIntervalNotifierInsert(first, mm, 0x100000, 0x1000, plainOps);
      const subs = mm.notifierSubscriptions!;
      const inv = e.spawn('invalidation', async () => {
        await invalidate(mm, 0x1000, 0x2000, async () => {
          await e.sleep(100);
        });
        log.push(`end at ${e.now}`);
      });
      const ins = e.spawn('inserter', async () => {
        await e.sleep(10);
        expect(subs.activeInvalidateRanges).toBe(1);
        expect(subs.invalidateSeq).toBe(2); // partially excluded: no notifier overlaps
        await mmuIntervalNotifierInsert(second, mm, 0x1000, 0x1000, plainOps);
        expect(subs.invalidateSeq).toBe(3);
        expect(second.invalidateSeq).toBe(3);
        expect(subs.itree.size).toBe(2);
        await mmuIntervalReadBegin(second);
        log.push(`read_begin at ${e.now}`);
        expect(subs.invalidateSeq).toBe(4);
      });
      await inv.join();
      await ins.join();
    });
    expect((await e.run()).ok).toBe(true);
    expect(log).toEqual(['end at 100', 'read_begin at 100']);
  });

  it('a remove during an invalidation waits for its end, and the callbacks are never called after it returns', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const sub = new MmuIntervalNotifier('victim');
    const events: string[] = [];
    let removed = false;
    e.spawn('main', async () => {
      await mmuIntervalNotifierInsert(sub, mm, 0, 0x10000, {
        async invalidate(s, range, cur) {
          expect(removed).toBe(false);
          events.push(`callback start ${range.start.toString(16)} at ${e.now}`);
          await e.sleep(100); // still running when remove is called
          mmuIntervalSetSeq(s, cur);
          events.push(`callback done at ${e.now}`);
          return true;
        },
      });
      const subs = mm.notifierSubscriptions!;
      const inv = e.spawn('invalidation', async () => {
        await invalidate(mm, 0x1000, 0x2000, async () => {
          await e.sleep(50);
        });
        events.push(`inv end at ${e.now}`);
        // Later invalidations: the notifier is gone.
        await invalidate(mm, 0x3000, 0x4000);
      });
      const remover = e.spawn('remover', async () => {
        await e.sleep(10);
        await mmuIntervalNotifierRemove(sub);
        removed = true;
        events.push(`removed at ${e.now}`);
        expect(subs.itree.size).toBe(0);
        expect(sub.mm).toBe(null);
      });
      await inv.join();
      await remover.join();
    });
    const r = await e.run();
    expect(r.ok).toBe(true);
    expect(events).toEqual(['callback start 1000 at 0', 'callback done at 100', 'inv end at 150', 'removed at 150']);
  });

  it('removing a notifier whose insert is still deferred unqueues it without waiting', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const old = new MmuIntervalNotifier('old');
    const late = new MmuIntervalNotifier('late');
    let calls = 0;
    e.spawn('main', async () => {
      await mmuIntervalNotifierInsert(old, mm, 0, 0x10000, plainOps);
      const subs = mm.notifierSubscriptions!;
      const inv = e.spawn('invalidation', async () => {
        await invalidate(mm, 0, 0x1000, async () => {
          await e.sleep(100);
        });
      });
      const t = e.spawn('t', async () => {
        await e.sleep(10);
        await mmuIntervalNotifierInsert(late, mm, 0, 0x1000, {
          invalidate() {
            calls++;
            return true;
          },
        });
        expect(subs.deferredList).toEqual([late]);
        const t0 = e.now;
        await mmuIntervalNotifierRemove(late);
        expect(e.now).toBe(t0);
        expect(subs.deferredList).toEqual([]);
      });
      await inv.join();
      await t.join();
      await invalidate(mm, 0, 0x1000);
      expect(subs.itree.size).toBe(1);
    });
    expect((await e.run()).ok).toBe(true);
    expect(calls).toBe(0);
  });

  it('insert_locked needs mmap_lock held for write', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const ok = new MmuIntervalNotifier('ok');
    e.spawn('locked', async () => {
      await mm.mmapLock.downWrite();
      expect(await mmuIntervalNotifierInsertLocked(ok, mm, 0, 0x1000, plainOps)).toBe(0);
      mm.mmapLock.upWrite();
      expect(mm.notifierSubscriptions?.hasItree).toBe(true);
      await mmuIntervalNotifierInsertLocked(new MmuIntervalNotifier('bad'), mm, 0, 0x1000, plainOps);
    });
    const r = await e.run();
    expect(r.failure?.message).toContain('lockdep_assert_held_write: rwsem "mmap_lock"');
  });

  it('rejects bad input with typed errors and leaves the state unchanged', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const sub = new MmuIntervalNotifier('n');
    const got: unknown[] = [];
    e.spawn('main', async () => {
      got.push(await mmuIntervalNotifierInsert(sub, mm, 0x1000, 0, plainOps)); // length 0
      got.push(await mmuIntervalNotifierInsert(sub, mm, ULONG_MAX_ADDR, 2, plainOps)); // wraps
      expect(mm.notifierSubscriptions).toBe(null);
      expect(sub.mm).toBe(null);
      for (const bad of [
        () => mmuIntervalNotifierInsert(sub, mm, -1, 0x1000, plainOps),
        () => mmuIntervalNotifierInsert(sub, mm, 0.5, 0x1000, plainOps),
        () => mmuIntervalNotifierInsert(sub, mm, 0, 0x1000, {} as MmuIntervalNotifierOps),
        () => mmuIntervalNotifierRemove(sub),
        () => mmuIntervalReadBegin(sub),
      ]) {
        try {
          await bad();
          got.push('no error');
        } catch (err) {
          got.push(err instanceof KernelError ? err.code : err);
        }
      }
      expect(mm.notifierSubscriptions).toBe(null);
      // The very last address is fine: last = ULONG_MAX_ADDR.
      got.push(await mmuIntervalNotifierInsert(sub, mm, ULONG_MAX_ADDR, 1, plainOps));
      expect(sub.last).toBe(ULONG_MAX_ADDR);
      try {
        await mmuIntervalNotifierInsert(sub, mm, 0, 0x1000, plainOps);
      } catch (err) {
        got.push(err instanceof KernelError ? err.errno : err);
      }
      expect(mm.notifierSubscriptions!.itree.size).toBe(1);
      await mmuIntervalNotifierRemove(sub);
      try {
        await mmuIntervalNotifierRemove(sub);
      } catch (err) {
        got.push(err instanceof KernelError ? err.errno : err);
      }
    });
    expect((await e.run()).ok).toBe(true);
    expect(got).toEqual([-EOVERFLOW, -EOVERFLOW, 'EINVAL', 'EINVAL', 'EINVAL', 'EINVAL', 'EINVAL', 0, EEXIST, EINVAL]);
  });

  it('two notifiers on the same interval are distinct entries: removing one keeps the other', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const log: string[] = [];
    const ops = (n: string): MmuIntervalNotifierOps => ({
      invalidate(s, _r, cur) {
        mmuIntervalSetSeq(s, cur);
        log.push(n);
        return true;
      },
    });
    const a = new MmuIntervalNotifier('a');
    const b = new MmuIntervalNotifier('b');
    e.spawn('main', async () => {
      await mmuIntervalNotifierInsert(a, mm, 0x1000, 0x1000, ops('a'));
      await mmuIntervalNotifierInsert(b, mm, 0x1000, 0x1000, ops('b'));
      await invalidate(mm, 0, 0x10000);
      await mmuIntervalNotifierRemove(a);
      await invalidate(mm, 0, 0x10000);
    });
    expect((await e.run()).ok).toBe(true);
    expect(log).toEqual(['a', 'b', 'b']);
  });

  it('callbacks see only overlapping notifiers, in address order, with inclusive last', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const log: string[] = [];
    e.spawn('main', async () => {
      for (const [name, start] of [
        ['c', 0x3000],
        ['a', 0x1000],
        ['b', 0x2000],
      ] as const) {
        await mmuIntervalNotifierInsert(new MmuIntervalNotifier(name), mm, start, 0x1000, {
          invalidate(s, _r, cur) {
            mmuIntervalSetSeq(s, cur);
            log.push(name);
            return true;
          },
        });
      }
      await invalidate(mm, 0x1fff, 0x3000); // a's last byte .. b: not c
      log.push('|');
      await invalidate(mm, 0, ULONG_MAX_ADDR);
    });
    expect((await e.run()).ok).toBe(true);
    expect(log).toEqual(['a', 'b', '|', 'a', 'b', 'c']);
  });
});

describe('non-blockable invalidations of interval notifiers', () => {
  it('a callback returning false gives -EAGAIN and ends the itree side at once', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const calls: string[] = [];
    let ret: number | null = null;
    e.spawn('oom_reaper', async () => {
      for (const [name, ok] of [
        ['first', true],
        ['busy', false],
        ['never', true],
      ] as const) {
        await mmuIntervalNotifierInsert(new MmuIntervalNotifier(name), mm, 0x1000 * (calls.length + 1), 0x1000, {
          invalidate(s, range, cur) {
            calls.push(`${name} blockable=${range.flags & 1}`);
            if (!ok) return false;
            mmuIntervalSetSeq(s, cur);
            return true;
          },
        });
        calls.length = 0;
      }
      const r = mmuNotifierRangeInit(MMU_NOTIFY_CLEAR, 1, mm, 0, 0x10000);
      ret = await mmuNotifierInvalidateRangeStartNonblock(r);
      const subs = mm.notifierSubscriptions!;
      expect(subs.activeInvalidateRanges).toBe(0);
      expect(subs.invalidateSeq & 1).toBe(0);
      expect(subs.nranges).toBe(0);
    });
    const r = await e.run();
    expect(r.ok).toBe(true);
    expect(ret).toBe(-11);
    expect(calls).toEqual(['first blockable=0', 'busy blockable=0']);
  });

  it('a callback that sleeps in a non-blockable range fails the run with AtomicSleepError', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const m = new Mutex(e, 'driver_lock');
    e.spawn('oom_reaper', async () => {
      await mmuIntervalNotifierInsert(new MmuIntervalNotifier('sleeper'), mm, 0, 0x1000, {
        async invalidate(s, _range, cur) {
          await m.lock(); // wrong: must return false when !blockable
          mmuIntervalSetSeq(s, cur);
          m.unlock();
          return true;
        },
      });
      await mmuNotifierInvalidateRangeStartNonblock(mmuNotifierRangeInit(MMU_NOTIFY_CLEAR, 0, mm, 0, 0x1000));
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(AtomicSleepError);
    expect(r.failure?.message).toContain('invalidate_range_start (non-blockable)');
  });

  it('false on a blockable range is a WARN and the other notifiers are still called', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const calls: string[] = [];
    e.spawn('main', async () => {
      for (const [name, ok] of [
        ['liar', false],
        ['honest', true],
      ] as const) {
        await mmuIntervalNotifierInsert(new MmuIntervalNotifier(name), mm, name === 'liar' ? 0 : 0x1000, 0x1000, {
          invalidate(s, _range, cur) {
            calls.push(name);
            mmuIntervalSetSeq(s, cur);
            return ok;
          },
        });
      }
      await invalidate(mm, 0, 0x2000);
    });
    const r = await e.run();
    expect(r.ok).toBe(true);
    expect(r.warnings).toBe(1);
    expect(calls).toEqual(['liar', 'honest']);
  });
});

describe('interval notifiers and teardown, lockdep', () => {
  it('release invalidates every interval notifier with a blockable RELEASE range and leaves them in the tree', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const seen: string[] = [];
    e.spawn('exit_mmap', async () => {
      for (const start of [0x1000, 0x7f0000000000]) {
        await mmuIntervalNotifierInsert(new MmuIntervalNotifier(`n${start.toString(16)}`), mm, start, 0x1000, {
          invalidate(s, range, cur) {
            mmuIntervalSetSeq(s, cur);
            seen.push(`${s.name} event=${range.event} blockable=${range.flags & 1} [${range.start}, ${range.end === ULONG_MAX_ADDR ? 'ULONG_MAX' : range.end})`);
            return true;
          },
        });
      }
      await mmuNotifierRelease(mm);
      const subs = mm.notifierSubscriptions!;
      expect(subs.itree.size).toBe(2);
      expect(subs.activeInvalidateRanges).toBe(0);
      expect(subs.invalidateSeq).toBe(4);
    });
    expect((await e.run()).ok).toBe(true);
    expect(seen).toEqual([`n1000 event=${MMU_NOTIFY_RELEASE} blockable=1 [0, ULONG_MAX)`, `n7f0000000000 event=${MMU_NOTIFY_RELEASE} blockable=1 [0, ULONG_MAX)`]);
  });

  it('read_begin while holding a lock the invalidate callback takes is a lockdep report', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const ulock = new Mutex(e, 'user_lock');
    const sub = new MmuIntervalNotifier('mirror');
    e.spawn('driver', async () => {
      await mmuIntervalNotifierInsert(sub, mm, 0, 0x1000, driverOps(ulock, [], 'mirror'));
      await invalidate(mm, 0, 0x1000); // records invalidate_range_start -> user_lock
      await ulock.lock();
      await mmuIntervalReadBegin(sub); // user_lock -> invalidate_range_start: a cycle
      ulock.unlock();
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(LockdepError);
    expect(r.failure?.message).toContain('user_lock -> mmu_notifier_invalidate_range_start closes a cycle');
  });
});
