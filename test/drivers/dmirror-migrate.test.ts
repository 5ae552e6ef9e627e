/**
 * Ports of the migration cases of tools/testing/selftests/mm/hmm-tests.c on dmirror (device
 * private memory on the mock GPU), with the kernel test's counters, plus the FAIL_ALLOC flag,
 * MIGRATE_TO_SYS, RELEASE and the device-memory counters. THP variants run their 4 KiB path.
 */
import { describe, expect, it } from 'vitest';
import {
  EINVAL,
  ENOENT,
  ENOMEM,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  MAP_SHARED,
  MREMAP_DONTUNMAP,
  MREMAP_FIXED,
  MREMAP_MAYMOVE,
  type MmStruct,
  PAGE_SIZE,
  PMD_SIZE,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
  SegvError,
  cpuRead64,
  cpuWrite64,
  exitMm,
  fork,
  mmap,
  mprotect,
  mremap,
  munmap,
} from 'hmm-emu';
import {
  HMM_DMIRROR_FLAGS,
  HMM_DMIRROR_FLAG_FAIL_ALLOC,
  HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL,
  HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL,
  HMM_DMIRROR_PROT_WRITE,
  HMM_DMIRROR_READ,
  HMM_DMIRROR_RELEASE,
  HMM_DMIRROR_SNAPSHOT,
  HmmBuffer,
  type HmmWorld,
  type HmmWorldOptions,
  cpuReadInts,
  cpuWriteInts,
  hmmDmirrorCmd,
  hmmMigrateDevToSys,
  hmmMigrateSysToDev,
  runHmmTest,
} from '../../drivers/dmirror/index.js';

const P = PAGE_SIZE;
const NPAGES = 1024;
const RW = PROT_READ | PROT_WRITE;
const PRIV = MAP_PRIVATE | MAP_ANONYMOUS;
const SHARED = MAP_SHARED | MAP_ANONYMOUS;
const NTIMES = 10;
const ONEKB = 1024;
const ONEMEG = 1 << 20;

function hmmTest(body: (w: HmmWorld) => Promise<void>, opts: HmmWorldOptions = {}): () => Promise<void> {
  return async () => {
    const r = await runHmmTest(body, opts);
    if (!r.ok) throw r.failure;
    expect(r.warnings).toBe(0);
  };
}

async function newBuffer(mm: MmStruct, npages: number, prot = RW, flags = PRIV, mirrorBytes = npages * P): Promise<HmmBuffer> {
  const size = npages * P;
  const ptr = await mmap(mm, 0, size, prot, flags);
  return new HmmBuffer(ptr, size, new Uint8Array(mirrorBytes));
}

function expectInts(what: string, a: Int32Array, f: (i: number) => number, from = 0, to = a.length): void {
  for (let i = from; i < to; i++) {
    if (a[i] !== f(i)) throw new Error(`${what}: int ${i} is ${a[i]}, expected ${f(i)}`);
  }
}

/** The CPU entry of a page is a device-private one (the page is on the device). */
function onDevice(mm: MmStruct, addr: number): boolean {
  const b = mm.pgtable.bitsAt(addr / P);
  return b !== 0 && (b & 1) === 0 && mm.phys.isDevicePfn(mm.pgtable.pfnAt(addr / P));
}

describe('hmm-tests ports: migration', () => {
  it(
    'migrate: anonymous memory moves to device memory; cpages == npages and the device reads it back',
    hmmTest(async ({ mm, fds }) => {
      const b = await newBuffer(mm, NPAGES);
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i);
      expect(await hmmMigrateSysToDev(fds[0]!, b, NPAGES)).toBe(0);
      expect(b.cpages).toBe(NPAGES);
      expectInts('mirror', b.mirrorInts, (i) => i);
      expect(onDevice(mm, b.ptr)).toBe(true);
      expect(onDevice(mm, b.ptr + b.size - P)).toBe(true);
    }),
  );

  it(
    'migrate_fault: migrate, fault half back with the CPU, migrate the mix again; cpages == npages both times',
    hmmTest(async ({ mm, fds }) => {
      const b = await newBuffer(mm, NPAGES);
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i);
      expect(await hmmMigrateSysToDev(fds[0]!, b, NPAGES)).toBe(0);
      expect(b.cpages).toBe(NPAGES);
      expectInts('mirror', b.mirrorInts, (i) => i);
      // Fault half the pages back to system memory and check them.
      expectInts('memory', await cpuReadInts(mm, b.ptr, b.size / 8), (i) => i);
      expect(onDevice(mm, b.ptr)).toBe(false);
      expect(onDevice(mm, b.ptr + b.size - P)).toBe(true);
      b.mirror.fill(0);
      expect(await hmmMigrateSysToDev(fds[0]!, b, NPAGES)).toBe(0);
      expect(b.cpages).toBe(NPAGES);
      expectInts('mirror', b.mirrorInts, (i) => i);
    }),
  );

  it(
    'migrate_release: RELEASE evicts device memory; the CPU then reads the data from system memory',
    hmmTest(async ({ mm, devices, fds }) => {
      const b = await newBuffer(mm, NPAGES);
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i);
      expect(await hmmMigrateSysToDev(fds[0]!, b, NPAGES)).toBe(0);
      expect(b.cpages).toBe(NPAGES);
      expectInts('mirror', b.mirrorInts, (i) => i);
      const mem = devices[0]!.memory!;
      expect(mem.freeFrames).toBe(mem.nframes - NPAGES);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_RELEASE, b, NPAGES)).toBe(0);
      expect(mem.freeFrames).toBe(mem.nframes);
      expect(onDevice(mm, b.ptr)).toBe(false);
      expectInts('memory', await cpuReadInts(mm, b.ptr, b.size / 8), (i) => i);
    }),
  );

  it(
    'migrate_shared: MAP_SHARED anonymous memory does not move; the read-back finds nothing: -ENOENT',
    hmmTest(async ({ mm, fds }) => {
      const b = await newBuffer(mm, NPAGES, RW, SHARED);
      expect(await hmmMigrateSysToDev(fds[0]!, b, NPAGES)).toBe(-ENOENT);
    }),
  );

  it(
    'migrate_mixed: PROT_NONE and holes are -EINVAL; zero, read-only and writable pages move to device 1; device 0 cannot take page 5',
    hmmTest(
      async ({ mm, fds }) => {
        const b = await newBuffer(mm, 6, PROT_NONE);
        const p = b.ptr;
        // Migrating a protected area should be an error.
        expect(await hmmMigrateSysToDev(fds[1]!, b, 6)).toBe(-EINVAL);
        // We expect an error if the vma doesn't cover the range.
        expect(await munmap(mm, p + P, P)).toBe(0);
        expect(await hmmMigrateSysToDev(fds[1]!, b, 3)).toBe(-EINVAL);
        // Page 2: read-only zero page; page 3: read-only; pages 4-5: read-write.
        expect(await mprotect(mm, p + 2 * P, P, PROT_READ)).toBe(0);
        const val = Number(await cpuRead64(mm, p + 2 * P)) + 3;
        expect(val).toBe(3);
        expect(await mprotect(mm, p + 3 * P, P, RW)).toBe(0);
        await cpuWriteInts(mm, p + 3 * P, 1, () => val);
        expect(await mprotect(mm, p + 3 * P, P, PROT_READ)).toBe(0);
        expect(await mprotect(mm, p + 4 * P, 2 * P, RW)).toBe(0);
        await cpuWriteInts(mm, p + 4 * P, 1, () => val);
        await cpuWriteInts(mm, p + 5 * P, 1, () => val);
        // Now try to migrate pages 2-5 to device 1.
        b.ptr = p + 2 * P;
        expect(await hmmMigrateSysToDev(fds[1]!, b, 4)).toBe(0);
        expect(b.cpages).toBe(4);
        // Page 5 won't be migrated to device 0 because it's on device 1.
        b.ptr = p + 5 * P;
        expect(await hmmMigrateSysToDev(fds[0]!, b, 1)).toBe(-ENOENT);
      },
      { devices: 2 },
    ),
  );

  it(
    'migrate_multiple: ten rounds to the device and back (by CPU faults); cpages == npages each round',
    hmmTest(async ({ mm, fds }) => {
      for (let c = 0; c < NTIMES; c++) {
        const b = await newBuffer(mm, NPAGES);
        await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i);
        expect(await hmmMigrateSysToDev(fds[0]!, b, NPAGES)).toBe(0);
        expect(b.cpages).toBe(NPAGES);
        expectInts(`round ${c} mirror`, b.mirrorInts, (i) => i);
        expectInts(`round ${c} memory`, await cpuReadInts(mm, b.ptr, b.size / 4), (i) => i);
        expect(await munmap(mm, b.ptr, b.size)).toBe(0);
      }
    }),
  );

  it(
    'hmm_cow_in_device: after migrate and fork, the parent writing its pages brings them back and COWs them: snapshot WRITE',
    hmmTest(async ({ mm, fds }) => {
      const b = await newBuffer(mm, 4);
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i);
      expect(await hmmMigrateSysToDev(fds[0]!, b, 4)).toBe(0);
      expect(b.cpages).toBe(4);
      const child = await fork(mm, { name: 'child' });
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i);
      await exitMm(child);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_SNAPSHOT, b, 4)).toBe(0);
      expect(b.cpages).toBe(4);
      expect([...b.mirror.subarray(0, 4)]).toEqual([2, 2, 2, 2].map(() => HMM_DMIRROR_PROT_WRITE));
    }),
  );

  it(
    'migrate_partial_unmap_fault: after migrating 2 MiB and unmapping 1 MiB of it (at 0, 512 KiB, 1 MiB), the CPU reads the rest back',
    hmmTest(async ({ mm, fds }) => {
      const size = PMD_SIZE;
      const npages = size / P;
      for (const off of [0, 512 * ONEKB, ONEMEG]) {
        const oldPtr = await mmap(mm, 0, 2 * size, RW, PRIV);
        const map = Math.ceil(oldPtr / size) * size;
        const b = new HmmBuffer(map, size, new Uint8Array(size));
        await cpuWriteInts(mm, map, size / 4, (i) => i);
        expect(await hmmMigrateSysToDev(fds[0]!, b, npages)).toBe(0);
        expect(b.cpages).toBe(npages);
        expectInts('mirror', b.mirrorInts, (i) => i);
        expect(await munmap(mm, map + off, ONEMEG)).toBe(0);
        // Fault pages back to system memory and check them (one task: one access at a time).
        if (off > 0) expectInts('before the hole', await cpuReadInts(mm, map, off / 4), (i) => i);
        if (off + ONEMEG < size) expectInts('after the hole', await cpuReadInts(mm, map + off + ONEMEG, (size - off - ONEMEG) / 4), (i) => i + (off + ONEMEG) / 4);
        expect(await munmap(mm, oldPtr, 2 * size)).toBe(0);
      }
    }),
  );

  it(
    'migrate_remap_fault: mremap(MAYMOVE|FIXED [|DONTUNMAP]) before or after migrating 2 MiB; the CPU faults it back at the new address',
    hmmTest(async ({ mm, fds }) => {
      const size = PMD_SIZE;
      const npages = size / P;
      for (const before of [false, true]) {
        for (const dontUnmap of [false, true]) {
          for (const off of [0, 512 * ONEKB, ONEMEG]) {
            const flags = MREMAP_MAYMOVE | MREMAP_FIXED | (dontUnmap ? MREMAP_DONTUNMAP : 0);
            const oldPtr = await mmap(mm, 0, 8 * size, RW, PRIV);
            const map = Math.ceil(oldPtr / size) * size;
            expect(await munmap(mm, map + size, 2 * size)).toBe(0);
            const b = new HmmBuffer(map, size, new Uint8Array(size));
            await cpuWriteInts(mm, map, size / 4, (i) => i);
            let newPtr = 0;
            if (before) {
              newPtr = await mremap(mm, map, size, size, flags, map + size + off);
              expect(newPtr).toBe(map + size + off);
              b.ptr = newPtr;
            }
            expect(await hmmMigrateSysToDev(fds[0]!, b, npages)).toBe(0);
            expect(b.cpages).toBe(npages);
            expectInts('mirror', b.mirrorInts, (i) => i);
            if (!before) {
              newPtr = await mremap(mm, map, size, size, flags, map + size + off);
              expect(newPtr).toBe(map + size + off);
              b.ptr = newPtr;
            }
            expectInts(`before ${before} dontunmap ${dontUnmap} off ${off}`, await cpuReadInts(mm, newPtr, size / 4), (i) => i);
            expect(await munmap(mm, newPtr, size)).toBe(0);
            expect(await munmap(mm, oldPtr, 8 * size)).toBe(0);
          }
        }
      }
    }),
  );
});

describe('device memory: MIGRATE_TO_SYS, FAIL_ALLOC, counters', () => {
  it(
    'MIGRATE_TO_SYS moves this device\'s pages back: cpages == pages moved, snapshot sees system memory',
    hmmTest(async ({ mm, devices, fds }) => {
      const b = await newBuffer(mm, NPAGES);
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => 7 * i);
      expect(await hmmMigrateSysToDev(fds[0]!, b, NPAGES)).toBe(0);
      const calloc = devices[0]!.calloc;
      expect(calloc).toBe(NPAGES);
      expect(await hmmMigrateDevToSys(fds[0]!, b, NPAGES)).toBe(0);
      expect(b.cpages).toBe(NPAGES);
      expect(devices[0]!.cfree).toBe(NPAGES);
      expect(onDevice(mm, b.ptr)).toBe(false);
      // Already in system memory: nothing more to move.
      expect(await hmmMigrateDevToSys(fds[0]!, b, NPAGES)).toBe(0);
      expect(b.cpages).toBe(0);
      const snap = new HmmBuffer(b.ptr, b.size, new Uint8Array(NPAGES));
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_SNAPSHOT, snap, NPAGES)).toBe(0);
      expect(snap.mirror.every((m) => m === HMM_DMIRROR_PROT_WRITE)).toBe(true);
      expectInts('memory', await cpuReadInts(mm, b.ptr, b.size / 4), (i) => 7 * i);
    }),
  );

  it(
    'FAIL_ALLOC fails the next device allocation once: that page stays behind (-ENOENT from the read-back), the next migration moves all',
    hmmTest(async ({ mm, fds }) => {
      const npages = 64;
      const b = await newBuffer(mm, npages);
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_FLAGS, b, HMM_DMIRROR_FLAG_FAIL_ALLOC)).toBe(0);
      expect(fds[0]!.flags).toBe(HMM_DMIRROR_FLAG_FAIL_ALLOC);
      expect(await hmmMigrateSysToDev(fds[0]!, b, npages)).toBe(-ENOENT);
      expect(fds[0]!.flags).toBe(0);
      expect(onDevice(mm, b.ptr)).toBe(false);
      expect(onDevice(mm, b.ptr + P)).toBe(true);
      expect(await hmmMigrateSysToDev(fds[0]!, b, npages)).toBe(0);
      expect(b.cpages).toBe(npages);
      expectInts('mirror', b.mirrorInts, (i) => i);
      expectInts('memory', await cpuReadInts(mm, b.ptr, b.size / 4), (i) => i);
    }),
  );

  it(
    'FAIL_ALLOC on the way back: MIGRATE_TO_SYS is -ENOMEM and a CPU fault gets SIGBUS, once; data survives',
    hmmTest(async ({ mm, fds }) => {
      const npages = 16;
      const b = await newBuffer(mm, npages);
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i ^ 0x5a5a);
      expect(await hmmMigrateSysToDev(fds[0]!, b, npages)).toBe(0);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_FLAGS, b, HMM_DMIRROR_FLAG_FAIL_ALLOC)).toBe(0);
      expect(await hmmMigrateDevToSys(fds[0]!, b, npages)).toBe(-ENOMEM);
      expect(onDevice(mm, b.ptr)).toBe(true);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_FLAGS, b, HMM_DMIRROR_FLAG_FAIL_ALLOC)).toBe(0);
      let err: unknown = null;
      try {
        await cpuRead64(mm, b.ptr);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(SegvError);
      expect((err as SegvError).signal).toBe('SIGBUS');
      expectInts('memory', await cpuReadInts(mm, b.ptr, b.size / 4), (i) => i ^ 0x5a5a);
    }),
  );

  it(
    'calloc and cfree count device pages; a CPU write to a migrated page frees it back to the device',
    hmmTest(async ({ mm, devices, fds }) => {
      const d = devices[0]!;
      const b = await newBuffer(mm, 8);
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i);
      expect(await hmmMigrateSysToDev(fds[0]!, b, 8)).toBe(0);
      expect([d.calloc, d.cfree]).toEqual([8, 0]);
      await cpuWrite64(mm, b.ptr, 99n);
      expect([d.calloc, d.cfree]).toEqual([8, 1]);
      expect(await munmap(mm, b.ptr, b.size)).toBe(0);
      expect([d.calloc, d.cfree]).toEqual([8, 8]);
    }),
  );

  it(
    'a migration to the device keeps the device mappings of pages already there (own MIGRATE events erase only what can move)',
    hmmTest(async ({ mm, fds }) => {
      const fd = fds[0]!;
      const b = await newBuffer(mm, 4);
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i);
      const first = new HmmBuffer(b.ptr, P, new Uint8Array(P));
      expect(await hmmMigrateSysToDev(fd, first, 1)).toBe(0);
      expect(await hmmDmirrorCmd(fd, HMM_DMIRROR_READ, b, 4)).toBe(0);
      const pfn0 = fd.ptPfn(b.ptr / P);
      const zapped = fd.stats.zapped;
      expect(await hmmMigrateSysToDev(fd, b, 4)).toBe(0);
      expect(b.cpages).toBe(4);
      expect(fd.ptPfn(b.ptr / P)).toBe(pfn0); // the device page stayed mapped
      expect(fd.stats.zapped - zapped).toBe(3); // the three system pages went (and came back as device pages)
      expectInts('mirror', b.mirrorInts, (i) => i);
    }),
  );

  it(
    'release of a mirror evicts the device memory and drops its address space',
    hmmTest(async ({ mm, devices, fds }) => {
      const b = await newBuffer(mm, 32);
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i + 1);
      expect(await hmmMigrateSysToDev(fds[0]!, b, 32)).toBe(0);
      const mem = devices[0]!.memory!;
      expect(mem.freeFrames).toBe(mem.nframes - 32);
      const asid = fds[0]!.as.asid;
      await fds[0]!.release();
      expect(mem.freeFrames).toBe(mem.nframes);
      expect(devices[0]!.device.addressSpace(asid)).toBeUndefined();
      expectInts('memory', await cpuReadInts(mm, b.ptr, b.size / 4), (i) => i + 1);
    }),
  );
});

describe('device-coherent memory (the hmm_device_coherent variant)', () => {
  it(
    'migrate, snapshot DEV_COHERENT_LOCAL|WRITE, MIGRATE_TO_SYS back; the CPU reads coherent pages without faulting',
    hmmTest(
      async ({ mm, fds }) => {
        const npages = 64;
        const b = await newBuffer(mm, npages);
        await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i);
        expect(await hmmMigrateSysToDev(fds[0]!, b, npages)).toBe(0);
        expect(b.cpages).toBe(npages);
        expectInts('mirror', b.mirrorInts, (i) => i);
        const snap = new HmmBuffer(b.ptr, b.size, new Uint8Array(npages));
        expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_SNAPSHOT, snap, npages)).toBe(0);
        expect(snap.mirror.every((m) => m === (HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL | HMM_DMIRROR_PROT_WRITE))).toBe(true);
        expectInts('memory on the device', await cpuReadInts(mm, b.ptr, b.size / 4), (i) => i);
        expect(await hmmMigrateDevToSys(fds[0]!, b, npages)).toBe(0);
        expect(b.cpages).toBe(npages);
        expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_SNAPSHOT, snap, npages)).toBe(0);
        expect(snap.mirror.every((m) => m === HMM_DMIRROR_PROT_WRITE)).toBe(true);
        expectInts('memory', await cpuReadInts(mm, b.ptr, b.size / 4), (i) => i);
        expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_READ, b, npages)).toBe(0);
      },
      { memoryType: 'coherent' },
    ),
  );

  it(
    'the device-private snapshot of a migrated page says DEV_PRIVATE_LOCAL|WRITE',
    hmmTest(async ({ mm, fds }) => {
      const b = await newBuffer(mm, 1, RW, PRIV, P);
      await cpuWriteInts(mm, b.ptr, 1, () => 1);
      expect(await hmmMigrateSysToDev(fds[0]!, b, 1)).toBe(0);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_SNAPSHOT, b, 1)).toBe(0);
      expect(b.mirror[0]).toBe(HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | HMM_DMIRROR_PROT_WRITE);
    }),
  );
});
