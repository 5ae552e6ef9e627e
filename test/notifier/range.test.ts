import { describe, expect, it } from 'vitest';
import { EINVAL, Engine, KernelError, RwSemaphore } from '../../src/sim/index.js';
import {
  MMU_NOTIFIER_RANGE_BLOCKABLE,
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_EXCLUSIVE,
  MMU_NOTIFY_MIGRATE,
  MMU_NOTIFY_PROTECTION_PAGE,
  MMU_NOTIFY_PROTECTION_VMA,
  MMU_NOTIFY_RELEASE,
  MMU_NOTIFY_SOFT_DIRTY,
  MMU_NOTIFY_UNMAP,
  type NotifierMm,
  ULONG_MAX_ADDR,
  mmuNotifierEventName,
  mmuNotifierRangeBlockable,
  mmuNotifierRangeInit,
  mmuNotifierRangeInitOwner,
} from '../../src/notifier/index.js';

function fakeMm(e: Engine, id = 1): NotifierMm {
  return { engine: e, id, mmapLock: new RwSemaphore(e, 'mmap_lock'), notifierSubscriptions: null };
}

describe('mmu notifier events and ranges', () => {
  it('events have the kernel numbering and names', () => {
    expect([
      MMU_NOTIFY_UNMAP,
      MMU_NOTIFY_CLEAR,
      MMU_NOTIFY_PROTECTION_VMA,
      MMU_NOTIFY_PROTECTION_PAGE,
      MMU_NOTIFY_SOFT_DIRTY,
      MMU_NOTIFY_RELEASE,
      MMU_NOTIFY_MIGRATE,
      MMU_NOTIFY_EXCLUSIVE,
    ]).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(mmuNotifierEventName(MMU_NOTIFY_MIGRATE)).toBe('MMU_NOTIFY_MIGRATE');
    expect(mmuNotifierEventName(42)).toBe('MMU_NOTIFY_42');
    expect(MMU_NOTIFIER_RANGE_BLOCKABLE).toBe(1);
  });

  it('init fills the range; ids are unique per engine and start afresh on a new engine', () => {
    const e = new Engine();
    const mm = fakeMm(e);
    const a = mmuNotifierRangeInit(MMU_NOTIFY_UNMAP, MMU_NOTIFIER_RANGE_BLOCKABLE, mm, 0x1000, 0x3000);
    const owner = { pgmap: 'dmirror' };
    const b = mmuNotifierRangeInitOwner(MMU_NOTIFY_MIGRATE, 0, mm, 0x1000, 0x2000, owner);
    expect([a.mm, a.start, a.end, a.event, a.flags, a.owner]).toEqual([mm, 0x1000, 0x3000, MMU_NOTIFY_UNMAP, 1, null]);
    expect(b.owner).toBe(owner);
    expect(mmuNotifierRangeBlockable(a)).toBe(true);
    expect(mmuNotifierRangeBlockable(b)).toBe(false);
    expect([a.id, b.id]).toEqual([1, 2]);
    expect(mmuNotifierRangeInit(MMU_NOTIFY_CLEAR, 0, fakeMm(new Engine()), 0, 1).id).toBe(1);
    expect(String(a)).toBe('range #1 [0x1000, 0x3000) MMU_NOTIFY_UNMAP');
  });

  it('rejects empty, reversed, negative, too large or non-integer spans and unknown events with EINVAL', () => {
    const mm = fakeMm(new Engine());
    const bad: Array<[number, number, number]> = [
      [0x1000, 0x1000, MMU_NOTIFY_UNMAP],
      [0x2000, 0x1000, MMU_NOTIFY_UNMAP],
      [-1, 0x1000, MMU_NOTIFY_UNMAP],
      [0, ULONG_MAX_ADDR + 1, MMU_NOTIFY_UNMAP],
      [0.5, 0x1000, MMU_NOTIFY_UNMAP],
      [0, 0x1000, 8],
    ];
    for (const [s, en, ev] of bad) {
      let err: unknown = null;
      try {
        mmuNotifierRangeInit(ev, 0, mm, s, en);
      } catch (x) {
        err = x;
      }
      expect(err).toBeInstanceOf(KernelError);
      expect((err as KernelError).errno).toBe(EINVAL);
    }
    expect(mmuNotifierRangeInit(MMU_NOTIFY_RELEASE, 0, mm, 0, ULONG_MAX_ADDR).end).toBe(ULONG_MAX_ADDR);
  });
});
