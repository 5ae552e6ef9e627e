/** Rule 2, invalidation discipline: leftovers and installs inside the window are flagged; legal near misses are not. */
import { describe, expect, it } from 'vitest';
import { Completion, type Engine } from '../../src/sim/index.js';
import { DEV_PTE_WRITE } from '../../src/device/index.js';
import { PROT_NONE, PROT_READ, cpuWrite64, exitMm, fork, mprotect, munmap, oomReapTaskMm } from '../../src/mm/index.js';
import {
  MMU_NOTIFY_EXCLUSIVE,
  MmuIntervalNotifier,
  MmuNotifier,
  type MmuNotifierRange,
  ULONG_MAX_ADDR,
  mmuIntervalNotifierInsert,
  mmuNotifierRegister,
} from '../../src/notifier/index.js';
import { makeDeviceExclusive } from '../../src/hmm/index.js';
import { BUF, P, type World, cpuPfn, devLoad, expectViolation, insertDriver, mapBuf, run, runOk, world } from './helpers.js';

/**
 * A second interval notifier over the whole mm whose callback parks until released: it holds
 * an invalidation open so that another task can act inside it.
 */
function parkingNotifier(e: Engine, name: string): { entered: Completion; release: Completion; insert: (w: World) => Promise<number> } {
  const entered = new Completion(e, `${name}.entered`);
  const release = new Completion(e, `${name}.release`);
  let armed = true;
  const sub = new MmuIntervalNotifier(name);
  return {
    entered,
    release,
    insert: (w) =>
      mmuIntervalNotifierInsert(sub, w.mm, 0, ULONG_MAX_ADDR, {
        invalidate: async () => {
          if (armed) {
            armed = false;
            entered.complete();
            await release.waitForCompletion();
          }
          return true;
        },
      }),
  };
}

/** Fills page 0 of BUF with a value and maps it into the device, writable. */
async function populate(w: World, pages = 1): Promise<void> {
  await mapBuf(w, pages);
  for (let i = 0; i < pages; i++) {
    await cpuWrite64(w.mm, BUF + i * P, BigInt(i + 1));
    w.as.map(BUF + i * P, cpuPfn(w, BUF + i * P), DEV_PTE_WRITE);
  }
}

describe('rule 2: invalidation discipline', () => {
  it('flags a page-table entry left behind after the device callback returned', async () => {
    const w = world();
    w.zap = 'none';
    const r = await run(w, async () => {
      await insertDriver(w);
      await populate(w);
      await munmap(w.mm, BUF, P);
    });
    const v = expectViolation(r, 'invalidation/entry-after-callback');
    expect(v.report.message).toMatch(/page-table entry/);
    expect(v.report.message).toMatch(/MMU_NOTIFY_UNMAP/);
  });

  it('flags a TLB entry left when the callback zaps the page table but not the TLB', async () => {
    const w = world();
    w.zap = 'pt-only';
    const r = await run(w, async () => {
      await insertDriver(w);
      await populate(w);
      await devLoad(w, BUF);
      await munmap(w.mm, BUF, P);
    });
    const v = expectViolation(r, 'invalidation/entry-after-callback');
    expect(v.report.message).toMatch(/TLB entry/);
    expect(v.report.details.join(' ')).toMatch(/fence/);
  });

  it('flags a TLB entry whose shootdown the callback issued but did not wait for', async () => {
    const w = world();
    w.zap = 'no-fence-wait';
    const r = await run(w, async () => {
      await insertDriver(w);
      await populate(w);
      await devLoad(w, BUF);
      await munmap(w.mm, BUF, P);
    });
    expectViolation(r, 'invalidation/entry-after-callback');
  });

  it('flags an entry installed after the device callback returned and before the invalidation ended', async () => {
    const w = world();
    const park = parkingNotifier(w.engine, 'slow');
    const r = await run(w, async () => {
      await insertDriver(w); // first in the interval order: its callback runs before 'slow'
      await park.insert(w);
      await populate(w);
      const pfn = cpuPfn(w, BUF);
      w.engine.spawn('racer', async () => {
        await park.entered.waitForCompletion();
        w.as.map(BUF, pfn, DEV_PTE_WRITE); // built from the old CPU entry, too late
        park.release.complete();
      });
      await munmap(w.mm, BUF, P);
    });
    const v = expectViolation(r, 'invalidation/install-during-invalidation');
    expect(v.report.task).toBe('racer');
  });

  it('accepts an entry installed after the invalidation started but before the device callback ran', async () => {
    const w = world();
    const park = parkingNotifier(w.engine, 'slow');
    await runOk(w, async () => {
      await park.insert(w); // first: the device's callback runs after it, and zaps the racer's entry
      await insertDriver(w);
      await populate(w);
      const pfn = cpuPfn(w, BUF);
      w.engine.spawn('racer', async () => {
        await park.entered.waitForCompletion();
        w.as.map(BUF, pfn, DEV_PTE_WRITE);
        park.release.complete();
      });
      await munmap(w.mm, BUF, P);
      expect(w.as.pageTable.size).toBe(0);
    });
    expect(w.oracle.violations).toEqual([]);
    expect(w.oracle.stats.callbacks).toBeGreaterThan(0);
  });

  it('accepts over-invalidation and an entry installed after the invalidation ended', async () => {
    const w = world();
    w.zap = 'everything';
    await runOk(w, async () => {
      await insertDriver(w);
      await populate(w, 2);
      await munmap(w.mm, BUF + P, P); // zaps page 0 too: harmless
      w.as.map(BUF, cpuPfn(w, BUF), DEV_PTE_WRITE); // re-faulted after the end
      expect(await devLoad(w, BUF)).toBe(1n);
    });
    expect(w.oracle.violations).toEqual([]);
  });

  it("accepts the device's skip of its own EXCLUSIVE event", async () => {
    const w = world();
    w.skipOwn = true;
    await runOk(w, async () => {
      await insertDriver(w);
      await populate(w);
      await w.mm.mmapLock.downRead();
      const pfn = await makeDeviceExclusive(w.mm, BUF, w.dev.memory!.owner);
      w.mm.mmapLock.upRead();
      w.phys.unlockPage(pfn);
      w.phys.putPage(pfn);
      expect(w.as.pageTable.pfnAt(BUF / P)).toBe(pfn); // kept: the same frame, now exclusive
      expect(await devLoad(w, BUF)).toBe(1n);
    });
    expect(w.oracle.violations).toEqual([]);
  });

  it("flags a skip of an EXCLUSIVE event that another owner started", async () => {
    const w = world();
    w.skipEvents = [MMU_NOTIFY_EXCLUSIVE]; // the owner filter forgot to compare owners
    const r = await run(w, async () => {
      await insertDriver(w);
      await populate(w);
      await w.mm.mmapLock.downRead();
      await makeDeviceExclusive(w.mm, BUF, { name: 'another device' });
    });
    expectViolation(r, 'invalidation/entry-after-callback');
  });

  it('accepts read-only entries kept through fork but flags a writable one', async () => {
    const ok = world();
    ok.zap = 'write-protect';
    await runOk(ok, async () => {
      await insertDriver(ok);
      await populate(ok);
      await fork(ok.mm);
      expect(ok.as.pageTable.flagsAt(BUF / P) & DEV_PTE_WRITE).toBe(0);
    });
    expect(ok.oracle.violations).toEqual([]);

    const bad = world();
    bad.zap = 'none';
    const r = await run(bad, async () => {
      await insertDriver(bad);
      await populate(bad);
      await fork(bad.mm);
    });
    const v = expectViolation(r, 'invalidation/entry-after-callback');
    expect(v.report.message).toMatch(/MMU_NOTIFY_PROTECTION_PAGE/);
  });

  it('accepts a write-protected entry through mprotect(PROT_READ) but not through mprotect(PROT_NONE)', async () => {
    const ok = world();
    ok.zap = 'write-protect';
    await runOk(ok, async () => {
      await insertDriver(ok);
      await populate(ok);
      await mprotect(ok.mm, BUF, P, PROT_READ);
      expect(await devLoad(ok, BUF)).toBe(1n);
    });
    expect(ok.oracle.violations).toEqual([]);

    const bad = world();
    bad.zap = 'write-protect';
    const r = await run(bad, async () => {
      await insertDriver(bad);
      await populate(bad);
      await mprotect(bad.mm, BUF, P, PROT_NONE);
    });
    expectViolation(r, 'invalidation/entry-after-callback');
  });

  it('makes no obligation of a non-blockable invalidation the callback refused', async () => {
    const w = world();
    await runOk(w, async () => {
      await insertDriver(w);
      await populate(w);
      await w.lock.lock(); // the callback's trylock fails: it refuses the OOM reaper's range
      expect(await oomReapTaskMm(w.mm)).toBeLessThan(0);
      w.lock.unlock();
      expect(await devLoad(w, BUF)).toBe(1n); // nothing changed: the entry is still coherent
    });
    expect(w.oracle.violations).toEqual([]);
  });

  /**
   * Two classic notifiers: the device's ('drv', zaps in its start) runs first, 'slowc' parks in
   * its start or its end during the CLEAR invalidation of a COW break, while a racer maps the
   * page from the CPU entry it sees then.
   */
  async function classicRace(parkIn: 'start' | 'end') {
    const w = world({ subs: ['drv'] });
    const entered = new Completion(w.engine, 'entered');
    const release = new Completion(w.engine, 'release');
    let armed = false;
    const park = async (): Promise<void> => {
      if (!armed) return;
      armed = false;
      entered.complete();
      await release.waitForCompletion();
    };
    const slow = new MmuNotifier(
      parkIn === 'start'
        ? { invalidateRangeStart: async () => (await park(), 0) }
        : { invalidateRangeStart: () => 0, invalidateRangeEnd: park },
      'slowc',
    );
    const drv = new MmuNotifier(
      {
        invalidateRangeStart: async (_s, range: MmuNotifierRange) => {
          const end = Math.min(range.end, 2 ** 48);
          w.as.unmap(range.start, end);
          await w.dev.tlbInvalidate(w.as, range.start, end).wait();
          return 0;
        },
        invalidateRangeEnd: () => {},
      },
      'drv',
    );
    const r = await run(w, async () => {
      await mmuNotifierRegister(slow, w.mm);
      await mmuNotifierRegister(drv, w.mm); // newest first: drv's callbacks run before slowc's
      await populate(w);
      await fork(w.mm);
      armed = true;
      w.engine.spawn('racer', async () => {
        await entered.waitForCompletion();
        w.as.map(BUF, cpuPfn(w, BUF)); // the old frame in the start phase, the new one in the end phase
        release.complete();
      });
      await cpuWrite64(w.mm, BUF, 9n); // COW break: a CLEAR invalidation of the page
    });
    return { w, r };
  }

  it("accepts an install once the classic subscription's own invalidate_range_end returned", async () => {
    const { w, r } = await classicRace('end');
    expect(r.ok, String(r.failure)).toBe(true);
    expect(w.oracle.violations).toEqual([]);
  });

  it('flags an install between a classic start callback and the end of the invalidation', async () => {
    const { r } = await classicRace('start');
    expectViolation(r, 'invalidation/install-during-invalidation');
  });

  it('flags a classic ->release that leaves device entries behind', async () => {
    const w = world({ subs: ['drv'] });
    const drv = new MmuNotifier({ release: () => {} }, 'drv');
    const r = await run(w, async () => {
      await mmuNotifierRegister(drv, w.mm);
      await populate(w);
      await exitMm(w.mm);
    });
    const v = expectViolation(r, 'invalidation/entry-after-callback');
    expect(v.report.message).toMatch(/release callback/);
  });
});
