import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  PTE_ACCESSED,
  PTE_DIRTY,
  PTE_PRESENT,
  PTE_SWP_DEVICE_EXCLUSIVE,
  PTE_SWP_DEVICE_PRIVATE,
  PTE_SWP_MIGRATION,
  PTE_WRITE,
  PTE_ZERO,
} from '../../src/mm/constants.js';
import { PageTable, type PteTable, isSwapEntry, pteKind, pteNone, ptePresent, pteWrite } from '../../src/mm/pagetable.js';
import { EINVAL, Engine, KernelBug, KernelError } from '../../src/sim/index.js';

const P = PTE_PRESENT;
const PW = PTE_PRESENT | PTE_WRITE;
const FAR = [0, 511, 512, 2 ** 18 - 1, 2 ** 18, 2 ** 27 - 1, 2 ** 27, 2 ** 35 + 12345, 2 ** 36 - 1];

function collect(pt: PageTable, start: number, end: number): Array<[number, number, number]> {
  const out: Array<[number, number, number]> = [];
  pt.forEachLeaf(start, end, (_leaf, from, to, base) => out.push([base, from, to]));
  return out;
}

describe('PTE helpers', () => {
  it('decode none, present, write, zero and the swap-format kinds', () => {
    expect(pteNone(0)).toBe(true);
    expect(pteNone(P)).toBe(false);
    expect(ptePresent(PW | PTE_DIRTY | PTE_ACCESSED)).toBe(true);
    expect(pteWrite(PW)).toBe(true);
    expect(pteWrite(P | PTE_ZERO)).toBe(false);
    for (const kind of [PTE_SWP_DEVICE_PRIVATE, PTE_SWP_MIGRATION, PTE_SWP_DEVICE_EXCLUSIVE]) {
      expect(isSwapEntry(kind)).toBe(true);
      expect(isSwapEntry(kind | PTE_WRITE)).toBe(true);
      expect(ptePresent(kind)).toBe(false);
      expect(pteKind(kind | PTE_WRITE)).toBe(kind);
    }
    expect(isSwapEntry(0)).toBe(false);
    expect(isSwapEntry(PW)).toBe(false);
    expect(pteKind(PW)).toBe(0);
  });
});

describe('PageTable', () => {
  it('sets and reads entries at far-apart vpns, up to 2**36 - 1, each in its own tables', () => {
    const pt = new PageTable(new Engine());
    FAR.forEach((vpn, i) => pt.set(vpn, 1000 + i, i % 2 ? PW : P));
    FAR.forEach((vpn, i) => {
      expect(pt.pfnAt(vpn)).toBe(1000 + i);
      expect(pt.bitsAt(vpn)).toBe(i % 2 ? PW : P);
      expect(pt.leafAt(vpn)!.bits[vpn % 512]).toBe(i % 2 ? PW : P);
    });
    for (const vpn of [1, 510, 513, 2 ** 27 + 1, 2 ** 36 - 2]) {
      expect(pt.bitsAt(vpn)).toBe(0);
      expect(pt.pfnAt(vpn)).toBe(0);
    }
    expect(pt.leafAt(2 ** 30)).toBeNull();
    // 0 and 511 share a leaf; 2**35 + 12345 and 2**36 - 1 are in different PUD tables.
    expect(pt.stats()).toEqual({ pudTables: 4, pmdTables: 6, pteTables: 8, entries: 9 });
  });

  it('keeps used counts right on set, overwrite and clear', () => {
    const pt = new PageTable();
    pt.set(5, 1, P);
    pt.set(6, 2, P);
    pt.set(5, 3, PW); // overwrite: still 2
    const leaf = pt.leafAt(5)!;
    expect(leaf.used).toBe(2);
    expect(pt.pfnAt(5)).toBe(3);
    pt.clear(7); // already none
    expect(leaf.used).toBe(2);
    pt.clear(5);
    expect(leaf.used).toBe(1);
    expect(pt.pfnAt(5)).toBe(0);
    pt.clear(5);
    expect(leaf.used).toBe(1);
    pt.clear(2 ** 33); // no table there at all
    expect(pt.stats().entries).toBe(1);
  });

  it('frees empty tables up the tree when their last entry is cleared', () => {
    const pt = new PageTable();
    for (const vpn of FAR) pt.set(vpn, 7, P);
    for (const vpn of FAR) pt.clear(vpn);
    expect(pt.stats()).toEqual({ pudTables: 0, pmdTables: 0, pteTables: 0, entries: 0 });
    expect(pt.leafAt(0)).toBeNull();
    expect(pt.hasLeaves(0, 2 ** 36)).toBe(false);
    pt.set(0, 1, P); // the cached leaf was dropped: a new one is allocated and found
    expect(pt.pfnAt(0)).toBe(1);
    expect(pt.stats().pteTables).toBe(1);
  });

  it('leafFor allocates the tables for a vpn and returns the same leaf as leafAt', () => {
    const pt = new PageTable();
    const leaf = pt.leafFor(2 ** 30 + 3);
    expect(pt.leafAt(2 ** 30)).toBe(leaf);
    expect(pt.leafAt(2 ** 30 + 511)).toBe(leaf);
    expect(pt.leafAt(2 ** 30 + 512)).toBeNull();
    leaf.setIndex(3, 42, PW);
    expect(leaf.used).toBe(1);
    expect(pt.pfnAt(2 ** 30 + 3)).toBe(42);
  });

  it('forEachLeaf visits exactly the populated leaves of a range crossing PMD and PUD boundaries, with clipped index ranges', () => {
    const pt = new PageTable();
    const vpns = [100, 511, 512, 1000, 2 ** 18 - 1, 2 ** 18, 2 ** 18 + 700, 2 ** 27 - 5, 2 ** 27 + 3, 2 ** 28];
    for (const v of vpns) pt.set(v, v % 1000, P);
    expect(collect(pt, 200, 2 ** 27 + 4)).toEqual([
      [0, 200, 512],
      [512, 0, 512],
      [2 ** 18 - 512, 0, 512],
      [2 ** 18, 0, 512],
      [2 ** 18 + 512, 0, 512],
      [2 ** 27 - 512, 0, 512],
      [2 ** 27, 0, 4],
    ]);
    expect(collect(pt, 513, 514)).toEqual([[512, 1, 2]]);
    // An existing leaf overlapping the range is visited even if its entries lie outside it.
    expect(collect(pt, 2 ** 27 + 4, 2 ** 28)).toEqual([[2 ** 27, 4, 512]]);
    expect(collect(pt, 2 ** 27 + 512, 2 ** 28)).toEqual([]);
    expect(collect(pt, 0, 2 ** 36).length).toBe(8);
    expect(collect(pt, 5, 5)).toEqual([]);
  });

  it('forEachLeaf frees leaves the callback emptied with clearIndex, and their emptied parents', () => {
    const pt = new PageTable();
    const vpns = [0, 1, 600, 2 ** 18 + 1, 2 ** 27 + 9];
    for (const v of vpns) pt.set(v, 3, PW);
    pt.forEachLeaf(1, 2 ** 27 + 10, (leaf, from, to) => {
      for (let i = from; i < to; i++) leaf.clearIndex(i);
    });
    expect(pt.stats()).toEqual({ pudTables: 1, pmdTables: 1, pteTables: 1, entries: 1 });
    expect(pt.bitsAt(0)).toBe(PW);
    expect(pt.bitsAt(600)).toBe(0);
    expect(pt.hasLeaves(512, 2 ** 36)).toBe(false);
  });

  it('forEachLeaf lets the callback rewrite entries in place (mprotect-style) without freeing anything', () => {
    const pt = new PageTable();
    for (let v = 0; v < 2000; v += 3) pt.set(v, v, PW);
    pt.forEachLeaf(0, 2000, (leaf, from, to) => {
      for (let i = from; i < to; i++) if (leaf.bits[i] !== 0) leaf.bits[i] = leaf.bits[i]! & ~PTE_WRITE;
    });
    for (let v = 0; v < 2000; v += 3) expect(pt.bitsAt(v)).toBe(P);
    expect(pt.stats().entries).toBe(667);
  });

  it('changing the table structure inside forEachLeaf is a KernelBug', () => {
    const e = new Engine();
    const pt = new PageTable(e);
    pt.set(0, 1, P);
    expect(() =>
      pt.forEachLeaf(0, 512, () => {
        pt.set(5000, 1, P);
      }),
    ).toThrow(KernelBug);
    expect(e.finished).toBe(true);
    const pt2 = new PageTable();
    pt2.set(0, 1, P);
    expect(() => pt2.forEachLeaf(0, 1, () => pt2.clear(0))).toThrow(/inside forEachLeaf/);
    // Rewriting an entry of an existing leaf through set is fine.
    const pt3 = new PageTable();
    pt3.set(0, 1, P);
    pt3.forEachLeaf(0, 1, () => pt3.set(1, 2, P));
    expect(pt3.stats().entries).toBe(2);
  });

  it('hasLeaves tells whether any leaf overlaps a range', () => {
    const pt = new PageTable();
    pt.set(2 ** 18 + 5, 1, P);
    pt.set(2 ** 35, 1, P);
    expect(pt.hasLeaves(0, 2 ** 18)).toBe(false);
    expect(pt.hasLeaves(0, 2 ** 18 + 1)).toBe(true); // the leaf overlaps though entry 5 is outside
    expect(pt.hasLeaves(2 ** 18 + 511, 2 ** 18 + 512)).toBe(true);
    expect(pt.hasLeaves(2 ** 18 + 512, 2 ** 35)).toBe(false);
    expect(pt.hasLeaves(2 ** 35 - 1, 2 ** 35 + 1)).toBe(true);
    expect(pt.hasLeaves(7, 7)).toBe(false);
  });

  it('set with none bits is a KernelBug; bad vpns, pfns and bits are EINVAL showing the value', () => {
    const e = new Engine();
    const pt = new PageTable(e);
    const einval = (fn: () => unknown, text: string): void => {
      let err: unknown = null;
      try {
        fn();
      } catch (x) {
        err = x;
      }
      expect(err).toBeInstanceOf(KernelError);
      expect((err as KernelError).errno).toBe(EINVAL);
      expect((err as KernelError).message).toContain(text);
    };
    einval(() => pt.set(2 ** 36, 1, P), String(2 ** 36));
    einval(() => pt.set(-1, 1, P), ': -1');
    einval(() => pt.set(1.5, 1, P), '1.5');
    einval(() => pt.set(1, -2, P), ': -2');
    einval(() => pt.set(1, 1, 256), ': 256');
    einval(() => pt.bitsAt(2 ** 40), String(2 ** 40));
    einval(() => pt.forEachLeaf(10, 5, () => {}), '[10, 5)');
    einval(() => pt.hasLeaves(0, 2 ** 36 + 1), String(2 ** 36 + 1));
    expect(pt.stats().pteTables).toBe(0);
    expect(() => pt.set(1, 1, 0)).toThrow(KernelBug);
    expect(e.finished).toBe(true);
  });

  it('property: random sets and clears agree with a Map reference, and stats count exactly the populated leaves', () => {
    // Vpns clustered in a few regions so that leaves fill, empty and get freed, across PUD/PGD boundaries.
    const bases = [0, 2 ** 18 - 600, 2 ** 27 - 300, 2 ** 35];
    const vpnArb = fc.tuple(fc.nat(bases.length - 1), fc.nat(1200)).map(([b, o]) => bases[b]! + o);
    const op = fc.oneof(
      fc.record({ kind: fc.constant('set' as const), vpn: vpnArb, pfn: fc.nat(0xffffffff), bits: fc.integer({ min: 1, max: 255 }) }),
      fc.record({ kind: fc.constant('clear' as const), vpn: vpnArb }),
      fc.record({ kind: fc.constant('zap' as const), vpn: vpnArb, len: fc.nat(2000) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 200 }), (ops) => {
        const pt = new PageTable();
        const ref = new Map<number, [number, number]>();
        for (const o of ops) {
          if (o.kind === 'set') {
            pt.set(o.vpn, o.pfn, o.bits);
            ref.set(o.vpn, [o.pfn, o.bits]);
          } else if (o.kind === 'clear') {
            pt.clear(o.vpn);
            ref.delete(o.vpn);
          } else {
            const end = Math.min(o.vpn + o.len, 2 ** 36);
            pt.forEachLeaf(o.vpn, end, (leaf: PteTable, from, to, base) => {
              for (let i = from; i < to; i++) {
                leaf.clearIndex(i);
                ref.delete(base + i);
              }
            });
          }
        }
        for (const [vpn, [pfn, bits]] of ref) {
          expect(pt.pfnAt(vpn)).toBe(pfn);
          expect(pt.bitsAt(vpn)).toBe(bits);
        }
        const seen = new Map<number, [number, number]>();
        pt.forEachLeaf(0, 2 ** 36, (leaf, from, to, base) => {
          expect(leaf.used).toBeGreaterThan(0);
          let used = 0;
          for (let i = from; i < to; i++) {
            if (leaf.bits[i] !== 0) {
              used++;
              seen.set(base + i, [leaf.pfn[i]!, leaf.bits[i]!]);
            }
          }
          expect(used).toBe(leaf.used);
        });
        expect(seen).toEqual(ref);
        const leaves = new Set([...ref.keys()].map((v) => Math.floor(v / 512)));
        const s = pt.stats();
        expect(s.entries).toBe(ref.size);
        expect(s.pteTables).toBe(leaves.size);
        expect(s.pmdTables).toBe(new Set([...leaves].map((l) => Math.floor(l / 512))).size);
        expect(s.pudTables).toBe(new Set([...leaves].map((l) => Math.floor(l / 2 ** 18))).size);
      }),
      { numRuns: 200, seed: 7 },
    );
  });
});
