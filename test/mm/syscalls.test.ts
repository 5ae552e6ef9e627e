import { describe, expect, it } from 'vitest';
import {
  EACCES,
  EEXIST,
  EFAULT,
  EINVAL,
  ENOMEM,
  EPERM,
  ESRCH,
} from '../../src/sim/index.js';
import {
  MADV_DONTNEED,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_FIXED_NOREPLACE,
  MAP_PRIVATE,
  MAP_SHARED,
  MREMAP_DONTUNMAP,
  MREMAP_FIXED,
  MREMAP_MAYMOVE,
  PAGE_SIZE,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
  SegvError,
  cpuRead,
  cpuRead64,
  cpuWrite,
  cpuWrite64,
  exitMm,
  fork,
  madvise,
  migratePages,
  mmap,
  mprotect,
  mremap,
  munmap,
} from '../../src/mm/index.js';
import { bytes, expectErrno, inMm, snapshot } from './helpers.js';

const RW = PROT_READ | PROT_WRITE;
const PRIV = MAP_PRIVATE | MAP_ANONYMOUS;
const SHARED = MAP_SHARED | MAP_ANONYMOUS;
const P = PAGE_SIZE;

describe('mmap and CPU access', () => {
  it('an anonymous private mapping reads zero, then returns what was written', async () => {
    await inMm(async ({ mm }) => {
      const a = await mmap(mm, 0, 3 * P, RW, PRIV);
      expect(a % P).toBe(0);
      expect(await cpuRead64(mm, a + 8)).toBe(0n);
      await cpuWrite64(mm, a + 8, 0xdead_beef_cafe_f00dn);
      expect(await cpuRead64(mm, a + 8)).toBe(0xdead_beef_cafe_f00dn);
      await cpuWrite(mm, a + P - 2, bytes(1, 2, 3, 4)); // crosses a page boundary
      expect([...(await cpuRead(mm, a + P - 2, 4))]).toEqual([1, 2, 3, 4]);
    });
  });

  it('a read fault maps the shared zero page; the first write allocates a frame', async () => {
    await inMm(async ({ mm, phys }) => {
      const a = await mmap(mm, 0, P, RW, PRIV);
      const before = phys.usedSystemFrames();
      await cpuRead(mm, a, 1);
      expect(mm.stats.zeroMaps).toBe(1);
      expect(phys.usedSystemFrames()).toBe(before);
      await cpuWrite(mm, a, bytes(7));
      expect(phys.usedSystemFrames()).toBe(before + 1);
      expect(mm.stats.cowCopies).toBe(1); // COW from the zero page
    });
  });

  it('no mapping is SIGSEGV/EFAULT; a forbidden access is SIGSEGV/EACCES', async () => {
    await inMm(async ({ mm }) => {
      const a = await mmap(mm, 0, P, PROT_READ, PRIV);
      const e1 = await expectErrno(cpuWrite(mm, a, bytes(1)), EACCES);
      expect(e1).toBeInstanceOf(SegvError);
      expect((e1 as SegvError).signal).toBe('SIGSEGV');
      await expectErrno(cpuRead(mm, a + P, 1), EFAULT);
      const n = await mmap(mm, 0, P, PROT_NONE, PRIV);
      await expectErrno(cpuRead(mm, n, 1), EACCES);
    });
  });

  it('a hint is honoured when free; MAP_FIXED replaces; MAP_FIXED_NOREPLACE refuses with EEXIST', async () => {
    await inMm(async (w) => {
      const { mm } = w;
      const hint = 0x1000_0000;
      expect(await mmap(mm, hint, 2 * P, RW, PRIV)).toBe(hint);
      await cpuWrite(mm, hint, bytes(9));
      const before = snapshot(w);
      await expectErrno(mmap(mm, hint + P, P, RW, PRIV | MAP_FIXED_NOREPLACE), EEXIST);
      expect(snapshot(w)).toBe(before);
      expect(await mmap(mm, hint, P, RW, PRIV | MAP_FIXED)).toBe(hint);
      expect([...(await cpuRead(mm, hint, 1))]).toEqual([0]);
      expect(await mmap(mm, hint, P, RW, PRIV)).not.toBe(hint); // taken: placed elsewhere
    });
  });

  it('adjacent compatible private mappings merge into one VMA', async () => {
    await inMm(async ({ mm }) => {
      const a = 0x2000_0000;
      await mmap(mm, a, P, RW, PRIV | MAP_FIXED);
      await mmap(mm, a + P, P, RW, PRIV | MAP_FIXED);
      expect(mm.vmas.length).toBe(1);
      await mmap(mm, a + 2 * P, P, PROT_READ, PRIV | MAP_FIXED);
      expect(mm.vmas.length).toBe(2);
    });
  });
});

describe('munmap, mprotect, madvise, mremap', () => {
  it('munmap of the middle splits the VMA; the hole faults and the rest keeps its data', async () => {
    await inMm(async ({ mm }) => {
      const a = await mmap(mm, 0, 3 * P, RW, PRIV);
      for (let i = 0; i < 3; i++) await cpuWrite(mm, a + i * P, bytes(i + 1));
      await munmap(mm, a + P, P);
      expect(mm.vmas.length).toBe(2);
      await expectErrno(cpuRead(mm, a + P, 1), EFAULT);
      expect([...(await cpuRead(mm, a, 1))]).toEqual([1]);
      expect([...(await cpuRead(mm, a + 2 * P, 1))]).toEqual([3]);
      expect(await munmap(mm, a + P, P)).toBe(0); // nothing mapped there: not an error
    });
  });

  it('mprotect splits and merges VMAs and enforces the new protection', async () => {
    await inMm(async ({ mm }) => {
      const a = await mmap(mm, 0, 4 * P, RW, PRIV);
      await cpuWrite(mm, a + P, bytes(5));
      await mprotect(mm, a + P, 2 * P, PROT_READ);
      expect(mm.vmas.length).toBe(3);
      await expectErrno(cpuWrite(mm, a + P, bytes(6)), EACCES);
      expect([...(await cpuRead(mm, a + P, 1))]).toEqual([5]);
      await mprotect(mm, a + P, 2 * P, RW);
      expect(mm.vmas.length).toBe(1);
      await cpuWrite(mm, a + P, bytes(6));
      await mprotect(mm, a, 4 * P, PROT_NONE);
      await expectErrno(cpuRead(mm, a + P, 1), EACCES);
      await mprotect(mm, a, 4 * P, PROT_READ);
      expect([...(await cpuRead(mm, a + P, 1))]).toEqual([6]);
    });
  });

  it('mprotect merges the VMA after the range too, so a later mremap sees one mapping (regression)', async () => {
    await inMm(async ({ mm }) => {
      const a = 0x1000_0000;
      await mmap(mm, a, 3 * P, RW, PRIV | MAP_FIXED);
      await mprotect(mm, a, P, PROT_NONE);
      await mprotect(mm, a, 2 * P, RW);
      expect(mm.vmas.all.map(String)).toEqual(['vma[0x10000000-0x10003000 rwp]']);
      expect(await mremap(mm, a + P, 2 * P, 2 * P, MREMAP_MAYMOVE)).toBeGreaterThan(0);
    });
  });

  it('madvise(DONTNEED) zeroes private memory but shared memory keeps its contents', async () => {
    await inMm(async ({ mm }) => {
      const p = await mmap(mm, 0, P, RW, PRIV);
      const s = await mmap(mm, 0, P, RW, SHARED);
      await cpuWrite(mm, p, bytes(1));
      await cpuWrite(mm, s, bytes(2));
      await madvise(mm, p, P, MADV_DONTNEED);
      await madvise(mm, s, P, MADV_DONTNEED);
      expect([...(await cpuRead(mm, p, 1))]).toEqual([0]);
      expect([...(await cpuRead(mm, s, 1))]).toEqual([2]);
    });
  });

  it('mremap grows in place, moves with MAYMOVE and FIXED, and DONTUNMAP leaves the old range empty', async () => {
    await inMm(async ({ mm }) => {
      const a = await mmap(mm, 0x3000_0000, P, RW, PRIV);
      await cpuWrite(mm, a, bytes(4));
      expect(await mremap(mm, a, P, 2 * P, 0)).toBe(a);
      await cpuWrite(mm, a + P, bytes(5));
      await mmap(mm, a + 2 * P, P, PROT_READ, PRIV | MAP_FIXED); // blocks growth in place
      await expectErrno(mremap(mm, a, 2 * P, 4 * P, 0), ENOMEM);
      const b = await mremap(mm, a, 2 * P, 4 * P, MREMAP_MAYMOVE);
      expect(b).not.toBe(a);
      expect([...(await cpuRead(mm, b, 1))]).toEqual([4]);
      expect([...(await cpuRead(mm, b + P, 1))]).toEqual([5]);
      await expectErrno(cpuRead(mm, a, 1), EFAULT);
      const c = await mremap(mm, b, 4 * P, 4 * P, MREMAP_MAYMOVE | MREMAP_FIXED, 0x4000_0000);
      expect(c).toBe(0x4000_0000);
      expect([...(await cpuRead(mm, c + P, 1))]).toEqual([5]);
      const d = await mremap(mm, c, 4 * P, 4 * P, MREMAP_MAYMOVE | MREMAP_DONTUNMAP);
      expect([...(await cpuRead(mm, d, 1))]).toEqual([4]);
      expect([...(await cpuRead(mm, c, 1))]).toEqual([0]); // still mapped, now empty
    });
  });
});

describe('fork, exit and page migration', () => {
  it('fork: private memory is copy-on-write both ways; shared memory stays shared', async () => {
    await inMm(async ({ mm }) => {
      const p = await mmap(mm, 0, P, RW, PRIV);
      const s = await mmap(mm, 0, P, RW, SHARED);
      await cpuWrite(mm, p, bytes(1));
      await cpuWrite(mm, s, bytes(1));
      const child = await fork(mm, { name: 'child' });
      expect([...(await cpuRead(child, p, 1))]).toEqual([1]);
      await cpuWrite(mm, p, bytes(2));
      expect([...(await cpuRead(child, p, 1))]).toEqual([1]);
      await cpuWrite(child, p, bytes(3));
      expect([...(await cpuRead(mm, p, 1))]).toEqual([2]);
      await cpuWrite(child, s, bytes(9));
      expect([...(await cpuRead(mm, s, 1))]).toEqual([9]);
      await exitMm(child);
    });
  });

  it('exit frees every frame and later calls fail with ESRCH', async () => {
    await inMm(async ({ mm, phys }) => {
      const base = phys.usedSystemFrames();
      const p = await mmap(mm, 0, 8 * P, RW, PRIV);
      const s = await mmap(mm, 0, 8 * P, RW, SHARED);
      for (let i = 0; i < 8; i++) {
        await cpuWrite(mm, p + i * P, bytes(i));
        await cpuWrite(mm, s + i * P, bytes(i));
      }
      const child = await fork(mm);
      await cpuWrite(child, p, bytes(99));
      await exitMm(child);
      await exitMm(mm);
      expect(phys.usedSystemFrames()).toBe(base);
      await expectErrno(mmap(mm, 0, P, RW, PRIV), ESRCH);
      await expectErrno(exitMm(mm), ESRCH);
      await expectErrno(cpuRead(mm, p, 1), EFAULT);
    });
  });

  it('migratePages moves resident pages to new frames and keeps every byte', async () => {
    await inMm(async ({ mm }) => {
      const a = await mmap(mm, 0, 4 * P, RW, PRIV);
      for (let i = 0; i < 4; i++) await cpuWrite64(mm, a + i * P + 16, BigInt(i + 100));
      const before = [0, 1, 2, 3].map((i) => mm.pgtable.pfnAt(a / P + i));
      expect(await migratePages(mm, a, a + 4 * P)).toBe(4);
      const after = [0, 1, 2, 3].map((i) => mm.pgtable.pfnAt(a / P + i));
      for (let i = 0; i < 4; i++) {
        expect(after[i]).not.toBe(before[i]);
        expect(await cpuRead64(mm, a + i * P + 16)).toBe(BigInt(i + 100));
      }
    });
  });
});

describe('bad input leaves the mm unchanged', () => {
  it('each bad call throws the kernel errno naming the problem, and nothing changes', async () => {
    await inMm(async (w) => {
      const { mm } = w;
      const a = await mmap(mm, 0x5000_0000, 4 * P, RW, PRIV);
      await cpuWrite(mm, a, bytes(1));
      const before = snapshot(w);
      const cases: Array<[() => Promise<unknown>, number, RegExp]> = [
        [() => mmap(mm, 0, 0, RW, PRIV), EINVAL, /length is 0/],
        [() => mmap(mm, 0, 2 ** 48, RW, PRIV), ENOMEM, /exceeds/],
        [() => mmap(mm, 0x5000_0001, P, RW, PRIV | MAP_FIXED), EINVAL, /not page aligned/],
        [() => mmap(mm, 0x1000, P, RW, PRIV | MAP_FIXED), EPERM, /mmap_min_addr/],
        [() => mmap(mm, 0, P, RW, MAP_ANONYMOUS), EINVAL, /MAP_SHARED and MAP_PRIVATE/],
        [() => mmap(mm, 0, P, RW, MAP_PRIVATE), EINVAL, /anonymous/],
        [() => mmap(mm, 0, P, 0x40, PRIV), EINVAL, /prot/],
        [() => mmap(mm, a, P, RW, PRIV | MAP_FIXED_NOREPLACE), EEXIST, /overlaps/],
        [() => mmap(mm, -4096, P, RW, PRIV), EINVAL, /non-negative/],
        [() => munmap(mm, a + 1, P), EINVAL, /not page aligned/],
        [() => munmap(mm, a, 0), EINVAL, /length is 0/],
        [() => munmap(mm, 2 ** 47 - P, 2 * P), EINVAL, /beyond/],
        [() => mprotect(mm, a + 12, P, PROT_READ), EINVAL, /aligned/],
        [() => mprotect(mm, a, 8 * P, PROT_READ), ENOMEM, /not fully mapped/],
        [() => mprotect(mm, a, P, 0x80), EINVAL, /prot/],
        [() => madvise(mm, a, 8 * P, MADV_DONTNEED), ENOMEM, /not fully mapped/],
        [() => madvise(mm, a, P, 12345), EINVAL, /MADV_DONTNEED/],
        [() => mremap(mm, a + 8 * P, P, 2 * P, MREMAP_MAYMOVE), EFAULT, /not inside one mapping/],
        [() => mremap(mm, a, P, 0, MREMAP_MAYMOVE), EINVAL, /new_size is 0/],
        [() => mremap(mm, a, P, P, MREMAP_FIXED, 0x6000_0000), EINVAL, /requires MREMAP_MAYMOVE/],
        [() => mremap(mm, a, P, 2 * P, MREMAP_MAYMOVE | MREMAP_DONTUNMAP), EINVAL, /DONTUNMAP/],
        [() => mremap(mm, a, 2 * P, 2 * P, MREMAP_MAYMOVE | MREMAP_FIXED, a + P), EINVAL, /overlap/],
        [() => migratePages(mm, a + 1, a + P), EINVAL, /page-aligned/],
        [() => cpuRead64(mm, a + 4), EINVAL, /8-byte aligned/],
      ];
      for (const [call, errno, msg] of cases) {
        const e = await expectErrno(call(), errno);
        expect(e.message).toMatch(msg);
        expect(snapshot(w)).toBe(before);
      }
    });
  });
});
