import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PG_DIRTY, PG_LOCKED, ZERO_PFN, ZONE_DEVICE_COHERENT, ZONE_DEVICE_PRIVATE, ZONE_SYSTEM } from '../../src/mm/constants.js';
import { PhysMem, type PagemapFrames } from '../../src/mm/phys.js';
import { EINVAL, ENOMEM, Engine, KernelBug, KernelError, type TraceEvent } from '../../src/sim/index.js';

function mk(frames = 16, maxDeviceFrames = 16): { e: Engine; p: PhysMem } {
  const e = new Engine();
  return { e, p: new PhysMem(e, { frames, maxDeviceFrames }) };
}

/** Expects `fn` to throw a KernelError with `errno` whose message contains `text`. */
function expectKernelError(fn: () => unknown, errno: number, text: string): void {
  let caught: unknown = null;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(KernelError);
  expect((caught as KernelError).errno).toBe(errno);
  expect((caught as KernelError).message).toContain(text);
}

class FakePagemap implements PagemapFrames {
  readonly freed: number[] = [];
  pageFree(pfn: number): void {
    this.freed.push(pfn);
  }
}

describe('PhysMem: options', () => {
  it('rejects bad frame counts with EINVAL showing the value', () => {
    const e = new Engine();
    expectKernelError(() => new PhysMem(e, { frames: 0 }), EINVAL, ': 0');
    expectKernelError(() => new PhysMem(e, { frames: 1.5 }), EINVAL, '1.5');
    expectKernelError(() => new PhysMem(e, { frames: 2 ** 26 + 1 }), EINVAL, String(2 ** 26 + 1));
    expectKernelError(() => new PhysMem(e, { frames: 4, maxDeviceFrames: -1 }), EINVAL, '-1');
  });

  it('defaults to 1 GiB of RAM and room for 1<<20 device frames', () => {
    const p = new PhysMem(new Engine());
    expect(p.systemFrames).toBe(262144);
    expect(p.totalFrames).toBe(1 + 262144 + (1 << 20));
    expect(p.freeSystemFrames()).toBe(262144);
  });
});

describe('PhysMem: allocator', () => {
  it('hands out zeroed frames with refcount 1 in zone SYSTEM, and alloc/free cycles keep the counts', () => {
    const { p } = mk(8);
    for (let cycle = 0; cycle < 3; cycle++) {
      const got: number[] = [];
      for (let i = 0; i < 8; i++) {
        const pfn = p.allocPage();
        expect(pfn).toBeGreaterThan(0);
        expect(p.refcount[pfn]).toBe(1);
        expect(p.mapcount[pfn]).toBe(0);
        expect(p.flags[pfn]).toBe(0);
        expect(p.zone[pfn]).toBe(ZONE_SYSTEM);
        expect(p.pageIsZero(pfn)).toBe(true);
        p.writeU64(pfn, 8, BigInt(pfn));
        got.push(pfn);
      }
      expect(new Set(got).size).toBe(8);
      expect(p.usedSystemFrames()).toBe(8);
      expect(p.freeSystemFrames()).toBe(0);
      for (const pfn of got) p.putPage(pfn);
      expect(p.usedSystemFrames()).toBe(0);
      expect(p.contentBytes()).toBe(0);
    }
  });

  it('is LIFO: the most recently freed frame comes back first, fresh frames in ascending order', () => {
    const { p } = mk(8);
    expect([p.allocPage(), p.allocPage(), p.allocPage()]).toEqual([1, 2, 3]);
    p.putPage(2);
    p.putPage(3);
    p.putPage(1);
    expect([p.allocPage(), p.allocPage(), p.allocPage(), p.allocPage()]).toEqual([1, 3, 2, 4]);
  });

  it('returns -ENOMEM at capacity and leaves the state unchanged', () => {
    const { p } = mk(4);
    const got = [p.allocPage(), p.allocPage(), p.allocPage(), p.allocPage()];
    const gen = Array.from(p.generation.subarray(0, 5));
    expect(p.allocPage()).toBe(-ENOMEM);
    expect(p.allocPage()).toBe(-ENOMEM);
    expect(p.usedSystemFrames()).toBe(4);
    expect(Array.from(p.generation.subarray(0, 5))).toEqual(gen);
    for (const pfn of got) expect(p.refcount[pfn]).toBe(1);
    p.putPage(got[2]!);
    expect(p.allocPage()).toBe(got[2]);
  });

  it('failNext(n) fails exactly the next n allocations, then allocation works again', () => {
    const { p } = mk(8);
    p.failNext(2);
    expect(p.allocPage()).toBe(-ENOMEM);
    expect(p.allocPage()).toBe(-ENOMEM);
    expect(p.usedSystemFrames()).toBe(0);
    expect(p.allocPage()).toBe(1);
    p.failNext(5);
    p.clearFailures();
    expect(p.allocPage()).toBe(2);
    expectKernelError(() => p.failNext(-1), EINVAL, '-1');
  });

  it('failRate draws each failure from the engine, logged in the run decisions and replayable from the seed', async () => {
    const runOnce = async (seed: number): Promise<{ outcomes: number[]; decisions: readonly number[] }> => {
      const e = new Engine({ strategy: 'random', seed });
      const p = new PhysMem(e, { frames: 64, maxDeviceFrames: 0 });
      const outcomes: number[] = [];
      e.spawn('allocator', async () => {
        p.failRate(1, 2);
        for (let i = 0; i < 20; i++) outcomes.push(p.allocPage());
      });
      const r = await e.run();
      expect(r.ok).toBe(true);
      return { outcomes, decisions: r.decisions };
    };
    const a = await runOnce(7);
    expect(a.decisions).toHaveLength(20);
    const failures = a.outcomes.filter((v) => v === -ENOMEM).length;
    expect(failures).toBeGreaterThan(0);
    expect(failures).toBeLessThan(20);
    // A decision >= den - num (here >= 1) means the failure fired.
    expect(a.decisions.map((d) => (d >= 1 ? -ENOMEM : 1))).toEqual(a.outcomes.map((v) => (v === -ENOMEM ? -ENOMEM : 1)));
    expect(await runOnce(7)).toEqual(a);
  });

  it('without an injected rate, allocation logs no decision', async () => {
    const e = new Engine({ strategy: 'random', seed: 3 });
    const p = new PhysMem(e, { frames: 8, maxDeviceFrames: 0 });
    e.spawn('allocator', async () => {
      for (let i = 0; i < 8; i++) p.allocPage();
    });
    const r = await e.run();
    expect(r.ok).toBe(true);
    expect(r.decisions).toEqual([]);
  });

  it('freeing bumps the generation, drops contents and clears flags; the trace shows the new generation', () => {
    const { e, p } = mk(4);
    const events: Array<TraceEvent<'page.alloc' | 'page.free'>> = [];
    e.trace.on('page.alloc', (ev) => events.push(ev));
    e.trace.on('page.free', (ev) => events.push(ev));
    const pfn = p.allocPage();
    p.writeU32(pfn, 0, 0xdead);
    p.flags[pfn]! |= PG_DIRTY;
    expect(p.generation[pfn]).toBe(0);
    p.getPage(pfn);
    p.putPage(pfn);
    expect(p.generation[pfn]).toBe(0);
    p.putPage(pfn);
    expect(p.generation[pfn]).toBe(1);
    expect(p.flags[pfn]).toBe(0);
    expect(p.contentBytes()).toBe(0);
    expect(p.allocPage()).toBe(pfn);
    expect(p.readU32(pfn, 0)).toBe(0);
    expect(events.map((ev) => [ev.type, ev.pfn, ev.zone, 'generation' in ev ? ev.generation : null])).toEqual([
      ['page.alloc', pfn, ZONE_SYSTEM, null],
      ['page.free', pfn, ZONE_SYSTEM, 1],
      ['page.alloc', pfn, ZONE_SYSTEM, null],
    ]);
  });

  it('a refcount underflow fails the run with a KernelBug naming the pfn', async () => {
    const e = new Engine();
    const p = new PhysMem(e, { frames: 4, maxDeviceFrames: 0 });
    e.spawn('buggy', async () => {
      const pfn = p.allocPage();
      p.putPage(pfn);
      p.putPage(pfn);
    });
    const r = await e.run();
    expect(r.ok).toBe(false);
    expect(r.failure).toBeInstanceOf(KernelBug);
    expect(r.failure!.message).toContain('pfn 1');
    expect(r.failure!.message).toContain('underflow');
  });

  it('get_page on a free frame is a KernelBug', async () => {
    const e = new Engine();
    const p = new PhysMem(e, { frames: 4, maxDeviceFrames: 0 });
    e.spawn('buggy', async () => {
      p.getPage(3);
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(KernelBug);
    expect(r.failure!.message).toContain('pfn 3');
  });

  it('freeing a frame that is still mapped is a KernelBug (bad page state)', async () => {
    const e = new Engine();
    const p = new PhysMem(e, { frames: 4, maxDeviceFrames: 0 });
    e.spawn('buggy', async () => {
      const pfn = p.allocPage();
      p.incMapcount(pfn);
      p.putPage(pfn);
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(KernelBug);
    expect(r.failure!.message).toContain('mapcount 1');
  });

  it('freeing a locked frame is a KernelBug', async () => {
    const e = new Engine();
    const p = new PhysMem(e, { frames: 4, maxDeviceFrames: 0 });
    e.spawn('buggy', async () => {
      const pfn = p.allocPage();
      expect(p.trylockPage(pfn)).toBe(true);
      p.putPage(pfn);
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(KernelBug);
    expect(r.failure!.message).toContain('locked pfn 1');
  });

  it('incMapcount/decMapcount count mappings; ZERO_PFN is not counted; underflow is a KernelBug', () => {
    const { e, p } = mk(4);
    const pfn = p.allocPage();
    p.incMapcount(pfn);
    p.incMapcount(pfn);
    expect(p.mapcount[pfn]).toBe(2);
    p.decMapcount(pfn);
    p.decMapcount(pfn);
    p.incMapcount(ZERO_PFN);
    expect(p.mapcount[ZERO_PFN]).toBe(0);
    expect(() => p.decMapcount(pfn)).toThrow(KernelBug);
    expect(e.finished).toBe(true); // engine.bug recorded the failure before throwing
  });

  it('get/put on ZERO_PFN are no-ops: the zero page is never freed', () => {
    const { p } = mk(4);
    for (let i = 0; i < 3; i++) p.putPage(ZERO_PFN);
    p.getPage(ZERO_PFN);
    expect(p.refcount[ZERO_PFN]).toBe(1);
    expect(p.generation[ZERO_PFN]).toBe(0);
    expect(p.freeSystemFrames()).toBe(4);
  });

  it('rejects pfns out of range with EINVAL showing the pfn', () => {
    const { p } = mk(4, 0);
    expectKernelError(() => p.getPage(5), EINVAL, ': 5');
    expectKernelError(() => p.readU32(-1, 0), EINVAL, ': -1');
    expectKernelError(() => p.putPage(1.5), EINVAL, '1.5');
  });
});

describe('PhysMem: device frames', () => {
  it('registers consecutive free frames (refcount 0) after system RAM, with 1-based pagemap ids', () => {
    const { p } = mk(8, 16);
    const a = new FakePagemap();
    const b = new FakePagemap();
    const ra = p.registerDeviceFrames(a, 4, ZONE_DEVICE_PRIVATE);
    const rb = p.registerDeviceFrames(b, 8, ZONE_DEVICE_COHERENT);
    expect(ra).toEqual({ firstPfn: 9, id: 1 });
    expect(rb).toEqual({ firstPfn: 13, id: 2 });
    for (let pfn = 9; pfn < 13; pfn++) {
      expect(p.refcount[pfn]).toBe(0);
      expect(p.zone[pfn]).toBe(ZONE_DEVICE_PRIVATE);
      expect(p.pgmapId[pfn]).toBe(1);
      expect(p.pagemapOf(pfn)).toBe(a);
      expect(p.isDevicePfn(pfn)).toBe(true);
    }
    expect(p.zone[13]).toBe(ZONE_DEVICE_COHERENT);
    expect(p.pagemapOf(20)).toBe(b);
    expect(p.pagemapOf(3)).toBeNull();
    expect(p.isDevicePfn(3)).toBe(false);
    expect(p.deviceFramesEnd).toBe(21);
    expect(p.freeSystemFrames()).toBe(8);
  });

  it('initDevicePage hands a frame out, and put_page to 0 calls the pagemap pageFree after resetting the frame', () => {
    const { e, p } = mk(4, 8);
    const pm = new FakePagemap();
    const frees: number[] = [];
    e.trace.on('page.free', (ev) => frees.push(ev.generation));
    const { firstPfn } = p.registerDeviceFrames(pm, 2, ZONE_DEVICE_PRIVATE);
    p.initDevicePage(firstPfn);
    expect(p.refcount[firstPfn]).toBe(1);
    p.writeU64(firstPfn, 0, 99n);
    p.getPage(firstPfn);
    p.putPage(firstPfn);
    expect(pm.freed).toEqual([]);
    p.putPage(firstPfn);
    expect(pm.freed).toEqual([firstPfn]);
    expect(frees).toEqual([1]);
    expect(p.refcount[firstPfn]).toBe(0);
    expect(p.generation[firstPfn]).toBe(1);
    expect(p.readU64(firstPfn, 0)).toBe(0n);
    expect(p.freeSystemFrames()).toBe(4); // not put on the system free list
    p.initDevicePage(firstPfn);
    expect(p.refcount[firstPfn]).toBe(1);
  });

  it('initDevicePage on a frame in use or a system frame is a KernelBug', () => {
    const { p } = mk(4, 8);
    const { firstPfn } = p.registerDeviceFrames(new FakePagemap(), 2, ZONE_DEVICE_PRIVATE);
    p.initDevicePage(firstPfn);
    expect(() => p.initDevicePage(firstPfn)).toThrow(/refcount 1/);
    const q = mk(4, 8).p;
    expect(() => q.initDevicePage(2)).toThrow(/not a device frame/);
  });

  it('rejects a bad count or zone with EINVAL and a full device range with ENOMEM, changing nothing', () => {
    const { p } = mk(4, 8);
    const pm = new FakePagemap();
    expectKernelError(() => p.registerDeviceFrames(pm, 0, ZONE_DEVICE_PRIVATE), EINVAL, ': 0');
    expectKernelError(() => p.registerDeviceFrames(pm, 2, ZONE_SYSTEM), EINVAL, ': 0');
    expectKernelError(() => p.registerDeviceFrames(pm, 9, ZONE_DEVICE_PRIVATE), ENOMEM, '9 frames');
    expect(p.registerDeviceFrames(pm, 8, ZONE_DEVICE_PRIVATE)).toEqual({ firstPfn: 5, id: 1 });
    expectKernelError(() => p.registerDeviceFrames(pm, 1, ZONE_DEVICE_PRIVATE), ENOMEM, '0 of maxDeviceFrames left');
  });

  it('allocPage never hands out device frames', () => {
    const { p } = mk(2, 8);
    p.registerDeviceFrames(new FakePagemap(), 8, ZONE_DEVICE_PRIVATE);
    expect([p.allocPage(), p.allocPage(), p.allocPage()]).toEqual([1, 2, -ENOMEM]);
  });
});

describe('PhysMem: contents', () => {
  it('untouched frames and the zero page read as zero', () => {
    const { p } = mk(4);
    const pfn = p.allocPage();
    const buf = new Uint8Array(4096).fill(7);
    p.readBytes(pfn, 0, buf, 0, 4096);
    expect(buf.every((b) => b === 0)).toBe(true);
    expect(p.readU32(ZERO_PFN, 4092)).toBe(0);
    expect(p.readU64(ZERO_PFN, 4088)).toBe(0n);
    expect(p.pageIsZero(ZERO_PFN)).toBe(true);
    expect(p.contentBytes()).toBe(0);
  });

  it('u32 and u64 accesses are little-endian views of the same bytes', () => {
    const { p } = mk(4);
    const pfn = p.allocPage();
    p.writeU64(pfn, 16, 0x0102030405060708n);
    expect(p.readU32(pfn, 16)).toBe(0x05060708);
    expect(p.readU32(pfn, 20)).toBe(0x01020304);
    const b = new Uint8Array(8);
    p.readBytes(pfn, 16, b, 0, 8);
    expect(Array.from(b)).toEqual([8, 7, 6, 5, 4, 3, 2, 1]);
    p.writeU32(pfn, 20, -1);
    expect(p.readU64(pfn, 16)).toBe(0xffffffff05060708n);
    p.writeU64(pfn, 4088, 2n ** 64n - 1n);
    expect(p.readU64(pfn, 4088)).toBe(2n ** 64n - 1n);
  });

  it('writing zeros to an untouched frame stores nothing', () => {
    const { p } = mk(4);
    const pfn = p.allocPage();
    p.writeU64(pfn, 0, 0n);
    p.writeU32(pfn, 8, 0);
    p.writeBytes(pfn, 0, new Uint8Array(4096), 0, 4096);
    expect(p.contentBytes()).toBe(0);
  });

  it('a few words take a 40-byte small slot; a fifth word promotes the page to 4 KiB', () => {
    const { p } = mk(4);
    const pfn = p.allocPage();
    for (let w = 0; w < 4; w++) p.writeU64(pfn, w * 512, BigInt(w + 1));
    expect(p.contentBytes()).toBe(40);
    p.writeU64(pfn, 0, 77n); // rewriting a stored word stays small
    expect(p.contentBytes()).toBe(40);
    p.writeU64(pfn, 8, 5n);
    expect(p.contentBytes()).toBe(4096);
    expect(p.contentStats()).toMatchObject({ smallPages: 0, fullPages: 1 });
    expect([0, 512, 1024, 1536, 8].map((o) => p.readU64(pfn, o))).toEqual([77n, 2n, 3n, 4n, 5n]);
    p.clearPage(pfn);
    expect(p.contentBytes()).toBe(0);
  });

  it('property: any sequence of byte, u32 and u64 writes reads back as a plain 4 KiB reference', () => {
    const op = fc.oneof(
      fc.record({ kind: fc.constant('u64' as const), word: fc.nat(511), value: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }),
      fc.record({ kind: fc.constant('u32' as const), slot: fc.nat(1023), value: fc.nat(0xffffffff) }),
      fc.record({
        kind: fc.constant('bytes' as const),
        offset: fc.nat(4095),
        data: fc.oneof(fc.uint8Array({ maxLength: 10 }), fc.uint8Array({ maxLength: 96 })),
      }),
      fc.record({ kind: fc.constant('clear' as const) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 40 }), fc.nat(3), (ops, hot) => {
        const { p } = mk(4);
        // Another frame whose storage is recycled, so reuse of pooled slots is exercised too.
        const other = p.allocPage();
        const pfn = p.allocPage();
        const ref = new Uint8Array(4096);
        const view = new DataView(ref.buffer);
        for (const o of ops) {
          if (o.kind === 'u64') {
            // Bias word indexes to a few hot ones so small pages stay small for a while.
            const word = hot > 0 ? o.word % (hot * 3) : o.word;
            p.writeU64(pfn, word * 8, o.value);
            view.setBigUint64(word * 8, o.value, true);
          } else if (o.kind === 'u32') {
            p.writeU32(pfn, o.slot * 4, o.value);
            view.setUint32(o.slot * 4, o.value, true);
          } else if (o.kind === 'bytes') {
            const len = Math.min(o.data.length, 4096 - o.offset);
            p.writeBytes(pfn, o.offset, o.data, 0, len);
            ref.set(o.data.subarray(0, len), o.offset);
          } else {
            p.clearPage(pfn);
            ref.fill(0);
            p.writeU64(other, 0, 1n);
            p.clearPage(other);
          }
        }
        const got = new Uint8Array(4096);
        p.readBytes(pfn, 0, got, 0, 4096);
        expect(got).toEqual(ref);
        for (let w = 0; w < 512; w += 37) expect(p.readU64(pfn, w * 8)).toBe(view.getBigUint64(w * 8, true));
        const part = new Uint8Array(100);
        p.readBytes(pfn, 1001, part, 0, 100);
        expect(part).toEqual(ref.subarray(1001, 1101));
        expect(p.pageIsZero(pfn)).toBe(ref.every((b) => b === 0));
      }),
      { numRuns: 300, seed: 42 },
    );
  });

  it('copyPage copies empty, small and full pages onto any destination; the source is unchanged', () => {
    const { p } = mk(8);
    const empty = p.allocPage();
    const small = p.allocPage();
    const full = p.allocPage();
    p.writeU64(small, 40, 0xabcdefn);
    const bytes = new Uint8Array(4096).map((_, i) => (i * 7 + 1) & 0xff);
    p.writeBytes(full, 0, bytes, 0, 4096);
    const read = (pfn: number): Uint8Array => {
      const b = new Uint8Array(4096);
      p.readBytes(pfn, 0, b, 0, 4096);
      return b;
    };
    for (const src of [empty, small, full]) {
      for (const init of ['none', 'small', 'full'] as const) {
        const dst = p.allocPage();
        if (init === 'small') p.writeU32(dst, 4, 9);
        if (init === 'full') p.writeBytes(dst, 0, new Uint8Array(4096).fill(3), 0, 4096);
        const before = read(src);
        p.copyPage(dst, src);
        expect(read(dst)).toEqual(before);
        expect(read(src)).toEqual(before);
        p.writeU32(dst, 40, 1); // the copy is independent of its source
        expect(read(src)).toEqual(before);
        p.putPage(dst);
      }
    }
    expect(p.contentBytes()).toBe(40 + 4096);
  });

  it('clearPage makes a frame read zero and releases its storage', () => {
    const { p } = mk(4);
    const pfn = p.allocPage();
    p.writeBytes(pfn, 100, new Uint8Array(200).fill(9), 0, 200);
    expect(p.pageIsZero(pfn)).toBe(false);
    p.clearPage(pfn);
    expect(p.pageIsZero(pfn)).toBe(true);
    expect(p.readU32(pfn, 200)).toBe(0);
    expect(p.contentBytes()).toBe(0);
  });

  it('writing the zero page is a KernelBug that fails the run', async () => {
    const e = new Engine();
    const p = new PhysMem(e, { frames: 4, maxDeviceFrames: 0 });
    e.spawn('buggy', async () => {
      p.writeU32(ZERO_PFN, 0, 1);
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(KernelBug);
    expect(r.failure!.message).toContain('zero page');
    for (const write of [
      (q: PhysMem) => q.writeU64(ZERO_PFN, 0, 1n),
      (q: PhysMem) => q.writeBytes(ZERO_PFN, 0, new Uint8Array(1), 0, 1),
      (q: PhysMem) => q.copyPage(ZERO_PFN, 1),
      (q: PhysMem) => q.clearPage(ZERO_PFN),
    ]) {
      expect(() => write(mk(4).p)).toThrow(KernelBug);
    }
  });

  it('rejects bad offsets, lengths and values with EINVAL showing the value, changing nothing', () => {
    const { p } = mk(4);
    const pfn = p.allocPage();
    const buf = new Uint8Array(16);
    expectKernelError(() => p.readU32(pfn, 2), EINVAL, ': 2');
    expectKernelError(() => p.readU32(pfn, 4096), EINVAL, ': 4096');
    expectKernelError(() => p.writeU32(pfn, -4, 1), EINVAL, ': -4');
    expectKernelError(() => p.readU64(pfn, 4), EINVAL, ': 4');
    expectKernelError(() => p.writeU64(pfn, 12, 1n), EINVAL, ': 12');
    expectKernelError(() => p.writeU64(pfn, 0, -1n), EINVAL, ': -1');
    expectKernelError(() => p.writeU64(pfn, 0, 2n ** 64n), EINVAL, String(2n ** 64n));
    expectKernelError(() => p.writeU32(pfn, 0, 2 ** 32), EINVAL, String(2 ** 32));
    expectKernelError(() => p.readBytes(pfn, 4090, buf, 0, 8), EINVAL, 'offset 4090, len 8');
    expectKernelError(() => p.writeBytes(pfn, 0, buf, 10, 8), EINVAL, '[10, 10 + 8)');
    expect(p.contentBytes()).toBe(0);
  });
});

describe('PhysMem: page lock', () => {
  it('lockPage blocks until unlockPage; waitOnPageLocked waits without taking the lock', async () => {
    const e = new Engine();
    const p = new PhysMem(e, { frames: 4, maxDeviceFrames: 0 });
    const pfn = p.allocPage();
    const log: string[] = [];
    e.spawn('holder', async () => {
      await p.lockPage(pfn);
      log.push('holder locked');
      await e.sleep(100);
      log.push('holder unlocks');
      p.unlockPage(pfn);
    });
    e.spawn('locker', async () => {
      await e.yield();
      await p.lockPage(pfn);
      log.push(`locker locked at ${e.now}`);
      await e.sleep(50);
      p.unlockPage(pfn);
    });
    e.spawn('waiter', async () => {
      await e.yield();
      await p.waitOnPageLocked(pfn);
      log.push(`waiter saw it unlocked at ${e.now}, locked=${p.pageLocked(pfn)}`);
    });
    const r = await e.run();
    expect(r.ok).toBe(true);
    // The waiter, woken at 100 with the locker, finds the page locked again and waits on.
    expect(log).toEqual(['holder locked', 'holder unlocks', 'locker locked at 100', 'waiter saw it unlocked at 150, locked=false']);
    expect(p.flags[pfn]! & PG_LOCKED).toBe(0);
  });

  it('an unlock of another frame does not let a waiter through', async () => {
    const e = new Engine();
    const p = new PhysMem(e, { frames: 4, maxDeviceFrames: 0 });
    const log: string[] = [];
    e.spawn('main', async () => {
      expect(p.trylockPage(1)).toBe(true);
      expect(p.trylockPage(2)).toBe(true);
      expect(p.trylockPage(1)).toBe(false);
      e.spawn('waiter', async () => {
        await p.lockPage(1);
        log.push(`got 1 at ${e.now}`);
        p.unlockPage(1);
      });
      await e.sleep(10);
      p.unlockPage(2);
      await e.sleep(10);
      log.push('unlock 1');
      p.unlockPage(1);
    });
    const r = await e.run();
    expect(r.ok).toBe(true);
    expect(log).toEqual(['unlock 1', 'got 1 at 20']);
  });

  it('unlocking an unlocked frame is a KernelBug', async () => {
    const e = new Engine();
    const p = new PhysMem(e, { frames: 4, maxDeviceFrames: 0 });
    e.spawn('buggy', async () => {
      p.unlockPage(1);
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(KernelBug);
    expect(r.failure!.message).toContain('pfn 1');
  });

  it('a lock never released is reported as a deadlock on the page_lock wait queue', async () => {
    const e = new Engine();
    const p = new PhysMem(e, { frames: 4, maxDeviceFrames: 0 });
    e.spawn('a', async () => {
      await p.lockPage(1);
      await p.lockPage(1);
    });
    const r = await e.run();
    expect(r.failure?.name).toBe('DeadlockError');
    expect(r.failure!.message).toContain('page_lock');
  });
});
