import { describe, expect, it } from 'vitest';
import { AtomicSleepError, EAGAIN, Engine, KernelBug, RwSemaphore, SpinLock, type TraceEvent } from '../../src/sim/index.js';
import {
  MMU_NOTIFIER_RANGE_BLOCKABLE,
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_MIGRATE,
  MMU_NOTIFY_UNMAP,
  MmuIntervalNotifier,
  MmuNotifier,
  type NotifierMm,
  mmuIntervalNotifierInsert,
  mmuIntervalReadBegin,
  mmuIntervalSetSeq,
  mmuNotifierInvalidateRangeEnd,
  mmuNotifierInvalidateRangeStart,
  mmuNotifierInvalidateRangeStartNonblock,
  mmuNotifierRangeInit,
  mmuNotifierRangeInitOwner,
  mmuNotifierRegister,
  mmuNotifierRelease,
} from '../../src/notifier/index.js';

function fakeMm(e: Engine, id = 1): NotifierMm {
  return { engine: e, id, mmapLock: new RwSemaphore(e, 'mmap_lock'), notifierSubscriptions: null };
}

/** One line per notifier event, for compact snapshots. */
function reduce(ev: TraceEvent): string | null {
  switch (ev.type) {
    case 'notifier.invalidate_start':
      return `start r${ev.range} [${ev.start.toString(16)},${ev.end.toString(16)}) ev=${ev.event} blockable=${ev.blockable} owner=${ev.owner}`;
    case 'notifier.callback':
      return `cb r${ev.range} ${ev.kind} ${ev.phase} ${ev.sub} -> ${String(ev.result)}`;
    case 'notifier.invalidate_end':
      return `end r${ev.range}`;
    case 'notifier.seq':
      return `seq ${ev.seq}`;
    case 'notifier.register':
    case 'notifier.unregister':
      return `${ev.type.slice(9)} ${ev.kind} ${ev.sub}`;
    default:
      return null;
  }
}

describe('invalidate_range_start/end dispatch', () => {
  it('without subscriptions start and end do nothing: no scheduling point, no trace event', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const events: string[] = [];
    e.trace.onAny((ev) => {
      if (ev.type.startsWith('notifier.')) events.push(ev.type);
    });
    let steps = -1;
    e.spawn('cpu', async () => {
      const before = e.steps;
      const r = mmuNotifierRangeInit(MMU_NOTIFY_UNMAP, 0, mm, 0, 0x1000);
      await mmuNotifierInvalidateRangeStart(r);
      await mmuNotifierInvalidateRangeEnd(r);
      expect(await mmuNotifierInvalidateRangeStartNonblock(r)).toBe(0);
      await mmuNotifierRelease(mm);
      steps = e.steps - before;
    });
    expect((await e.run()).ok).toBe(true);
    expect(steps).toBe(0);
    expect(events).toEqual([]);
  });

  it('with subscriptions but nothing to call, start and end take no scheduling point', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    let steps = -1;
    e.spawn('cpu', async () => {
      await mmuIntervalNotifierInsert(new MmuIntervalNotifier('far'), mm, 0x100000, 0x1000, { invalidate: () => true });
      await mmuNotifierRegister(new MmuNotifier({ release: () => {} }, 'no-invalidate'), mm);
      const before = e.steps;
      const r = mmuNotifierRangeInit(MMU_NOTIFY_UNMAP, 0, mm, 0, 0x1000);
      await mmuNotifierInvalidateRangeStart(r);
      await mmuNotifierInvalidateRangeEnd(r);
      steps = e.steps - before;
    });
    expect((await e.run()).ok).toBe(true);
    expect(steps).toBe(0);
  });

  it('start calls interval notifiers before classic ones; end runs the itree end before the classic ends (trace snapshot)', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const lines: string[] = [];
    e.trace.onAny((ev) => {
      const l = reduce(ev);
      if (l !== null) lines.push(l);
    });
    e.spawn('cpu', async () => {
      await mmuNotifierRegister(new MmuNotifier({ invalidateRangeStart: () => 0, invalidateRangeEnd: () => {} }, 'kvm'), mm);
      await mmuIntervalNotifierInsert(new MmuIntervalNotifier('svm'), mm, 0, 0x10000, {
        invalidate(s, _r, cur) {
          mmuIntervalSetSeq(s, cur);
          return true;
        },
      });
      const r = mmuNotifierRangeInitOwner(MMU_NOTIFY_MIGRATE, 0, mm, 0x2000, 0x4000, 'dmirror');
      await mmuNotifierInvalidateRangeStart(r);
      await mmuNotifierInvalidateRangeEnd(r);
    });
    expect((await e.run()).ok).toBe(true);
    expect(lines).toEqual([
      'register classic kvm',
      'register interval svm',
      'start r1 [2000,4000) ev=6 blockable=true owner=dmirror',
      'seq 3',
      'cb r1 interval start svm -> true',
      'cb r1 classic start kvm -> 0',
      'seq 4',
      'cb r1 classic end kvm -> null',
      'end r1',
    ]);
  });

  it("the 'notifier.callback' start event comes right after the callback returned", async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const log: string[] = [];
    e.trace.on('notifier.callback', (ev) => void log.push(`event ${ev.sub} ${ev.phase}`));
    e.spawn('cpu', async () => {
      for (const n of ['a', 'b']) {
        await mmuNotifierRegister(
          new MmuNotifier(
            {
              async invalidateRangeStart() {
                await e.yield();
                log.push(`returning ${n}`);
                return 0;
              },
            },
            n,
          ),
          mm,
        );
      }
      const r = mmuNotifierRangeInit(MMU_NOTIFY_CLEAR, 0, mm, 0, 0x1000);
      await mmuNotifierInvalidateRangeStart(r);
      await mmuNotifierInvalidateRangeEnd(r);
    });
    expect((await e.run()).ok).toBe(true);
    expect(log).toEqual(['returning b', 'event b start', 'returning a', 'event a start']);
  });

  it('start marks the range blockable and the nonblock variant clears the flag, whatever init said', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const flags: number[] = [];
    e.spawn('cpu', async () => {
      await mmuNotifierRegister(new MmuNotifier({ invalidateRangeStart: (_s, r) => (flags.push(r.flags), 0) }, 'n'), mm);
      const a = mmuNotifierRangeInit(MMU_NOTIFY_CLEAR, 0, mm, 0, 0x1000);
      await mmuNotifierInvalidateRangeStart(a);
      await mmuNotifierInvalidateRangeEnd(a);
      const b = mmuNotifierRangeInit(MMU_NOTIFY_CLEAR, MMU_NOTIFIER_RANGE_BLOCKABLE, mm, 0, 0x1000);
      expect(await mmuNotifierInvalidateRangeStartNonblock(b)).toBe(0);
      await mmuNotifierInvalidateRangeEnd(b);
    });
    expect((await e.run()).ok).toBe(true);
    expect(flags).toEqual([1, 0]);
  });

  it('invalidate_range_start may sleep: calling it under a spinlock is an AtomicSleepError', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const ptl = new SpinLock(e, 'ptl');
    e.spawn('cpu', async () => {
      ptl.lock();
      await mmuNotifierInvalidateRangeStart(mmuNotifierRangeInit(MMU_NOTIFY_CLEAR, 0, mm, 0, 0x1000));
      ptl.unlock();
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(AtomicSleepError);
  });

  it('an end without a start, a double end and a double start are BUGs', async () => {
    for (const misuse of ['end-only', 'double-end', 'double-start'] as const) {
      const e = new Engine();
      const mm = fakeMm(e);
      e.spawn('cpu', async () => {
        await mmuNotifierRegister(new MmuNotifier({}, 'n'), mm);
        const r = mmuNotifierRangeInit(MMU_NOTIFY_CLEAR, 0, mm, 0, 0x1000);
        if (misuse !== 'end-only') await mmuNotifierInvalidateRangeStart(r);
        if (misuse === 'double-start') await mmuNotifierInvalidateRangeStart(r);
        await mmuNotifierInvalidateRangeEnd(r);
        if (misuse === 'double-end') await mmuNotifierInvalidateRangeEnd(r);
      });
      const r = await e.run();
      expect(r.failure, misuse).toBeInstanceOf(KernelBug);
    }
  });

  it('a registration that races with an invalidation in flight is reported (the kernel excludes it with mm_take_all_locks)', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    e.spawn('reclaim', async () => {
      // Runs without mmap_lock, as rmap-walking reclaim does; the mm provides no mmTakeAllLocks.
      const r = mmuNotifierRangeInit(MMU_NOTIFY_CLEAR, 0, mm, 0, 0x1000);
      await mmuNotifierInvalidateRangeStart(r);
      await e.sleep(100);
      await mmuNotifierInvalidateRangeEnd(r);
    });
    e.spawn('driver', async () => {
      await e.sleep(10);
      await mmuNotifierRegister(new MmuNotifier({}, 'late'), mm);
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(KernelBug);
    expect(r.failure?.message).toContain('was not started on mm #1');
  });

  it('kernel fidelity: an -EAGAIN from a classic start after the interval side succeeded leaves active_invalidate_ranges raised', async () => {
    // __mmu_notifier_invalidate_range_start returns the classic -EAGAIN after mn_itree_invalidate
    // succeeded; the non-blocking caller then does not call invalidate_range_end, so the itree
    // side never ends. The model reproduces the kernel; a later overlapping invalidation leaves
    // the seq odd for good and read_begin sleeps forever.
    const e = new Engine();
    const mm = fakeMm(e);
    const itv = new MmuIntervalNotifier('svm');
    e.spawn('oom_reaper', async () => {
      await mmuIntervalNotifierInsert(itv, mm, 0, 0x1000, {
        invalidate(s, _r, cur) {
          mmuIntervalSetSeq(s, cur);
          return true;
        },
      });
      await mmuNotifierRegister(new MmuNotifier({ invalidateRangeStart: (_s, r) => (r.flags & MMU_NOTIFIER_RANGE_BLOCKABLE ? 0 : -EAGAIN) }, 'kvm'), mm);
      const subs = mm.notifierSubscriptions!;
      const r = mmuNotifierRangeInit(MMU_NOTIFY_CLEAR, 0, mm, 0x10000, 0x20000); // overlaps no interval notifier
      expect(await mmuNotifierInvalidateRangeStartNonblock(r)).toBe(-EAGAIN);
      expect(subs.activeInvalidateRanges).toBe(1);
      expect(subs.nranges).toBe(0);
      const r2 = mmuNotifierRangeInit(MMU_NOTIFY_UNMAP, 0, mm, 0, 0x1000);
      await mmuNotifierInvalidateRangeStart(r2);
      await mmuNotifierInvalidateRangeEnd(r2);
      expect(subs.invalidateSeq & 1).toBe(1);
      await mmuIntervalReadBegin(itv);
    });
    const r = await e.run();
    expect(r.failure?.name).toBe('DeadlockError');
    expect(r.failure?.message).toContain('mmu_notifier_subscriptions.wq');
  });
});
