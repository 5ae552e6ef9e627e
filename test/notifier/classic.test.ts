import { describe, expect, it } from 'vitest';
import { DeadlockError, EAGAIN, EEXIST, EINVAL, Engine, KernelError, RwSemaphore } from '../../src/sim/index.js';
import {
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_UNMAP,
  MmuNotifier,
  type MmuNotifierOps,
  type NotifierMm,
  __mmuNotifierRegister,
  mmHasNotifiers,
  mmuNotifierArchInvalidateSecondaryTlbs,
  mmuNotifierClearFlushYoung,
  mmuNotifierClearYoung,
  mmuNotifierInvalidateRangeEnd,
  mmuNotifierInvalidateRangeStart,
  mmuNotifierInvalidateRangeStartNonblock,
  mmuNotifierRangeInit,
  mmuNotifierRegister,
  mmuNotifierRelease,
  mmuNotifierSubscriptionsDestroy,
  mmuNotifierTestYoung,
  mmuNotifierUnregister,
} from '../../src/notifier/index.js';

function fakeMm(e: Engine, id = 1): NotifierMm {
  return { engine: e, id, mmapLock: new RwSemaphore(e, 'mmap_lock'), notifierSubscriptions: null };
}

/** Records every callback as `name:op`. */
function recording(log: string[], name: string, extra: Partial<MmuNotifierOps> = {}): MmuNotifierOps {
  return {
    release: () => {
      log.push(`${name}:release`);
    },
    invalidateRangeStart: (_s, r) => {
      log.push(`${name}:start ${r.start.toString(16)}`);
      return 0;
    },
    invalidateRangeEnd: (_s, r) => {
      log.push(`${name}:end ${r.start.toString(16)}`);
    },
    ...extra,
  };
}

async function invalidate(mm: NotifierMm, start: number, end: number): Promise<void> {
  const r = mmuNotifierRangeInit(MMU_NOTIFY_UNMAP, 0, mm, start, end);
  await mmuNotifierInvalidateRangeStart(r);
  await mmuNotifierInvalidateRangeEnd(r);
}

describe('classic mmu notifiers: registration', () => {
  it('register creates the subscriptions lazily; callbacks run newest first; unregister calls release once and stops callbacks', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const log: string[] = [];
    const a = new MmuNotifier(recording(log, 'a'), 'a');
    const b = new MmuNotifier(recording(log, 'b'), 'b');
    e.spawn('main', async () => {
      expect(mmHasNotifiers(mm)).toBe(false);
      expect(await mmuNotifierRegister(a, mm)).toBe(0);
      expect(mmHasNotifiers(mm)).toBe(true);
      expect(await mmuNotifierRegister(b, mm)).toBe(0);
      expect(a.mm).toBe(mm);
      await invalidate(mm, 0x1000, 0x2000);
      await mmuNotifierUnregister(a, mm);
      expect(a.mm).toBe(null);
      await invalidate(mm, 0x3000, 0x4000);
      await mmuNotifierUnregister(b, mm);
      await invalidate(mm, 0x5000, 0x6000);
      mmuNotifierSubscriptionsDestroy(mm);
      expect(mm.notifierSubscriptions).toBe(null);
    });
    expect((await e.run()).ok).toBe(true);
    expect(log).toEqual(['b:start 1000', 'a:start 1000', 'b:end 1000', 'a:end 1000', 'a:release', 'b:start 3000', 'b:end 3000', 'b:release']);
  });

  it('__mmu_notifier_register requires mmap_lock held for write', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    e.spawn('main', async () => {
      await mm.mmapLock.downWrite();
      expect(await __mmuNotifierRegister(new MmuNotifier({}, 'ok'), mm)).toBe(0);
      mm.mmapLock.upWrite();
      await __mmuNotifierRegister(new MmuNotifier({}, 'bad'), mm);
    });
    const r = await e.run();
    expect(r.failure?.message).toContain('lockdep_assert_held_write');
  });

  it('calls the mm_take_all_locks hooks when the mm provides them', async () => {
    const e = new Engine();
    const calls: string[] = [];
    const mm: NotifierMm = {
      ...fakeMm(e),
      mmTakeAllLocks: () => {
        calls.push('take');
        return Promise.resolve(0);
      },
      mmDropAllLocks: () => {
        calls.push('drop');
      },
    };
    e.spawn('main', async () => {
      await mmuNotifierRegister(new MmuNotifier({}, 'n'), mm);
    });
    expect((await e.run()).ok).toBe(true);
    expect(calls).toEqual(['take', 'drop']);
  });

  it('double register, unregister of a non-registered notifier and bad ops are typed errors that change nothing', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const other = fakeMm(e, 2);
    const log: string[] = [];
    const a = new MmuNotifier(recording(log, 'a'), 'a');
    const got: unknown[] = [];
    e.spawn('main', async () => {
      await mmuNotifierRegister(a, mm);
      for (const bad of [() => mmuNotifierRegister(a, mm), () => mmuNotifierRegister(a, other), () => mmuNotifierUnregister(new MmuNotifier({}), mm), () => mmuNotifierUnregister(a, other)]) {
        try {
          await bad();
          got.push('no error');
        } catch (err) {
          got.push(err instanceof KernelError ? err.errno : err);
        }
      }
      expect(mm.mmapLock.isLocked()).toBe(false);
      expect(other.notifierSubscriptions).toBe(null);
      await invalidate(mm, 0, 0x1000);
      // Both invalidate_range_start/end and arch_invalidate_secondary_tlbs: WARN, -EINVAL.
      got.push(await mmuNotifierRegister(new MmuNotifier({ invalidateRangeStart: () => 0, archInvalidateSecondaryTlbs: () => {} }), mm));
    });
    const r = await e.run();
    expect(r.ok).toBe(true);
    expect(r.warnings).toBe(1);
    expect(got).toEqual([EEXIST, EEXIST, EINVAL, EINVAL, -EINVAL]);
    expect(log).toEqual(['a:start 0', 'a:end 0']);
    expect(() => new MmuNotifier(null as unknown as MmuNotifierOps)).toThrow(KernelError);
  });

  it('release (exit_mmap) calls ->release and unlinks; a later unregister does not call it again', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const log: string[] = [];
    const a = new MmuNotifier(recording(log, 'a'), 'a');
    const b = new MmuNotifier(recording(log, 'b'), 'b');
    e.spawn('main', async () => {
      await mmuNotifierRegister(a, mm);
      await mmuNotifierRegister(b, mm);
      await mmuNotifierRelease(mm);
      expect(mm.notifierSubscriptions!.first).toBe(null);
      await invalidate(mm, 0, 0x1000); // nobody listens any more
      await mmuNotifierUnregister(a, mm);
      await mmuNotifierUnregister(b, mm);
      expect(b.mm).toBe(null);
    });
    expect((await e.run()).ok).toBe(true);
    expect(log).toEqual(['b:release', 'a:release']);
  });

  it('unregister waits for a callback still running on another task (synchronize_srcu)', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const log: string[] = [];
    const a = new MmuNotifier(
      {
        async invalidateRangeStart() {
          log.push(`start begins at ${e.now}`);
          await e.sleep(100);
          log.push(`start returns at ${e.now}`);
          return 0;
        },
      },
      'slow',
    );
    e.spawn('main', async () => {
      await mmuNotifierRegister(a, mm);
      const inv = e.spawn('cpu', async () => {
        const r = mmuNotifierRangeInit(MMU_NOTIFY_CLEAR, 0, mm, 0, 0x1000);
        await mmuNotifierInvalidateRangeStart(r);
        await e.sleep(100);
        await mmuNotifierInvalidateRangeEnd(r);
      });
      const unreg = e.spawn('driver', async () => {
        await e.sleep(10);
        await mmuNotifierUnregister(a, mm);
        log.push(`unregistered at ${e.now}`);
      });
      await inv.join();
      await unreg.join();
    });
    expect((await e.run()).ok).toBe(true);
    expect(log).toEqual(['start begins at 0', 'start returns at 100', 'unregistered at 100']);
  });

  it('a later reader does not hold up unregister: synchronize waits only for readers that began before it', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const log: string[] = [];
    const slow = new MmuNotifier(
      {
        async invalidateRangeStart() {
          await e.sleep(1000);
          return 0;
        },
      },
      'slow',
    );
    const gone = new MmuNotifier({}, 'gone');
    e.spawn('main', async () => {
      await mmuNotifierRegister(gone, mm);
      await mmuNotifierRegister(slow, mm);
      const unreg = e.spawn('driver', async () => {
        await e.sleep(10);
        await mmuNotifierUnregister(gone, mm);
        log.push(`unregistered at ${e.now}`);
      });
      const inv = e.spawn('cpu', async () => {
        await e.sleep(20); // starts after the unregister's grace period began
        await invalidate(mm, 0, 0x1000);
      });
      await unreg.join();
      await inv.join();
    });
    expect((await e.run()).ok).toBe(true);
    expect(log).toEqual(['unregistered at 10']);
  });

  it('unregister from inside a callback deadlocks, as in the kernel, and the deadlock detector reports it', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const a: MmuNotifier = new MmuNotifier(
      {
        async invalidateRangeStart(s) {
          await mmuNotifierUnregister(s, mm);
          return 0;
        },
      },
      'suicidal',
    );
    e.spawn('main', async () => {
      await mmuNotifierRegister(a, mm);
      await invalidate(mm, 0, 0x1000);
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(DeadlockError);
    expect(r.failure?.message).toContain('synchronize_srcu(mmu_notifier srcu)');
  });
});

describe('classic mmu notifiers: dispatch', () => {
  it('a non-blockable -EAGAIN calls every start, then every end at once', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const log: string[] = [];
    let ret: number | null = null;
    e.spawn('oom_reaper', async () => {
      await mmuNotifierRegister(new MmuNotifier(recording(log, 'a'), 'a'), mm);
      await mmuNotifierRegister(
        new MmuNotifier(
          {
            invalidateRangeStart: (_s, r) => {
              log.push(`busy:start ${r.start.toString(16)}`);
              return -EAGAIN;
            },
          },
          'busy',
        ),
        mm,
      );
      await mmuNotifierRegister(new MmuNotifier(recording(log, 'c'), 'c'), mm);
      ret = await mmuNotifierInvalidateRangeStartNonblock(mmuNotifierRangeInit(MMU_NOTIFY_CLEAR, 0, mm, 0x1000, 0x2000));
      expect(mm.notifierSubscriptions!.nranges).toBe(0);
    });
    const r = await e.run();
    expect(r.ok).toBe(true);
    expect(r.warnings).toBe(0);
    expect(ret).toBe(-EAGAIN);
    expect(log).toEqual(['c:start 1000', 'busy:start 1000', 'a:start 1000', 'c:end 1000', 'a:end 1000']);
  });

  it('a failing start on a blockable range, or a failing notifier that has an end, WARNs', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    e.spawn('main', async () => {
      await mmuNotifierRegister(new MmuNotifier({ invalidateRangeStart: () => -EAGAIN, invalidateRangeEnd: () => {} }, 'bad'), mm);
      await invalidate(mm, 0, 0x1000);
    });
    const r = await e.run();
    expect(r.ok).toBe(true);
    expect(r.warnings).toBe(2);
  });

  it('a classic start that sleeps in a non-blockable range is an AtomicSleepError', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    e.spawn('oom_reaper', async () => {
      await mmuNotifierRegister(
        new MmuNotifier(
          {
            async invalidateRangeStart() {
              await e.sleep(1);
              return 0;
            },
          },
          'sleeper',
        ),
        mm,
      );
      await mmuNotifierInvalidateRangeStartNonblock(mmuNotifierRangeInit(MMU_NOTIFY_CLEAR, 0, mm, 0, 0x1000));
    });
    const r = await e.run();
    expect(r.failure?.name).toBe('AtomicSleepError');
  });

  it('clear_young and clear_flush_young OR every notifier; test_young stops at the first young one', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const asked: string[] = [];
    const results: boolean[] = [];
    e.spawn('kswapd', async () => {
      results.push(mmuNotifierTestYoung(mm, 0x1000), mmuNotifierClearYoung(mm, 0, 0x1000));
      for (const [name, young] of [
        ['a', false],
        ['b', true],
        ['c', false],
      ] as const) {
        await mmuNotifierRegister(
          new MmuNotifier(
            {
              clearFlushYoung: () => {
                asked.push(`${name}:cfy`);
                return young;
              },
              clearYoung: () => {
                asked.push(`${name}:cy`);
                return young ? 1 : 0;
              },
              testYoung: () => {
                asked.push(`${name}:ty`);
                return young;
              },
            },
            name,
          ),
          mm,
        );
      }
      results.push(mmuNotifierClearFlushYoung(mm, 0, 0x1000), mmuNotifierClearYoung(mm, 0, 0x1000), mmuNotifierTestYoung(mm, 0x1000));
    });
    expect((await e.run()).ok).toBe(true);
    expect(results).toEqual([false, false, true, true, true]);
    expect(asked).toEqual(['c:cfy', 'b:cfy', 'a:cfy', 'c:cy', 'b:cy', 'a:cy', 'c:ty', 'b:ty']);
  });

  it('arch_invalidate_secondary_tlbs reaches the notifiers that implement it', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const got: Array<[number, number]> = [];
    e.spawn('main', async () => {
      mmuNotifierArchInvalidateSecondaryTlbs(mm, 0, 0x1000); // no subscriptions: nothing
      await mmuNotifierRegister(new MmuNotifier({ archInvalidateSecondaryTlbs: (_s, _mm, s, en) => void got.push([s, en]) }, 'iommu'), mm);
      mmuNotifierArchInvalidateSecondaryTlbs(mm, 0x2000, 0x3000);
    });
    expect((await e.run()).ok).toBe(true);
    expect(got).toEqual([[0x2000, 0x3000]]);
  });

  it('destroying subscriptions with a notifier still registered is a BUG', async () => {
    const e = new Engine();
    const mm = fakeMm(e);
    e.spawn('main', async () => {
      await mmuNotifierRegister(new MmuNotifier({}, 'leaked'), mm);
      mmuNotifierSubscriptionsDestroy(mm);
    });
    const r = await e.run();
    expect(r.failure?.name).toBe('KernelBug');
    expect(r.failure?.message).toContain('still has classic notifiers (leaked');
  });
});
