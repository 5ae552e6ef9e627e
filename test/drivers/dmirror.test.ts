/**
 * Ports of tools/testing/selftests/mm/hmm-tests.c that do not migrate (the migration cases are
 * in dmirror-migrate.test.ts), on dmirror over the mock GPU, asserting the kernel test's
 * counters (cpages, faults) and data. Each case runs in one fifo run (the kernel test is one
 * thread); anon_teardown explores schedules. THP, hugetlbfs and file-backed variants do not
 * apply (no THP, anonymous memory only); mixedmap needs mmap of the device file (not modelled).
 */
import { describe, expect, it } from 'vitest';
import {
  EFAULT,
  EINVAL,
  EPERM,
  KernelError,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  MAP_SHARED,
  type MmStruct,
  PAGE_SIZE,
  PROT_NONE,
  PROT_READ,
  PROT_WRITE,
  PTE_KIND_MASK,
  PTE_PRESENT,
  PTE_PROTNONE,
  PTE_SWP_DEVICE_EXCLUSIVE,
  PTE_SWP_DEVICE_PRIVATE,
  PTE_WRITE,
  cpuRead64,
  exitMm,
  explore,
  fork,
  mmap,
  mprotect,
  munmap,
} from 'hmm-emu';
import {
  Dmirror,
  HMM_DMIRROR_CHECK_EXCLUSIVE,
  HMM_DMIRROR_EXCLUSIVE,
  HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL,
  HMM_DMIRROR_PROT_ERROR,
  HMM_DMIRROR_PROT_NONE,
  HMM_DMIRROR_PROT_READ,
  HMM_DMIRROR_PROT_WRITE,
  HMM_DMIRROR_PROT_ZERO,
  HMM_DMIRROR_READ,
  HMM_DMIRROR_SNAPSHOT,
  HMM_DMIRROR_WRITE,
  HmmBuffer,
  type HmmWorld,
  type HmmWorldOptions,
  cpuReadInts,
  cpuWriteInts,
  hmmDmirrorCmd,
  hmmMigrateSysToDev,
  hmmProgram,
  runHmmTest,
} from '../../drivers/dmirror/index.js';

const P = PAGE_SIZE;
/** HMM_BUFFER_SIZE (1024 << 12) in pages. */
const NPAGES = 1024;
const RW = PROT_READ | PROT_WRITE;
const PRIV = MAP_PRIVATE | MAP_ANONYMOUS;
const SHARED = MAP_SHARED | MAP_ANONYMOUS;
const NTIMES = 10;

/** A test body run as one fifo run; the run must end cleanly with no WARN. */
function hmmTest(body: (w: HmmWorld) => Promise<void>, opts: HmmWorldOptions = {}): () => Promise<void> {
  return async () => {
    const r = await runHmmTest(body, opts);
    if (!r.ok) throw r.failure;
    expect(r.warnings).toBe(0);
  };
}

/** mmap + an hmm_buffer with a mirror of `mirrorBytes` (default: the mapping's size). */
async function newBuffer(mm: MmStruct, npages: number, prot = RW, flags = PRIV, mirrorBytes = npages * P): Promise<HmmBuffer> {
  const size = npages * P;
  const ptr = await mmap(mm, 0, size, prot, flags);
  return new HmmBuffer(ptr, size, new Uint8Array(mirrorBytes));
}

/** Throws at the first int of `a` in [from, to) that is not f(i) (one assertion, not a million). */
function expectInts(what: string, a: Int32Array, f: (i: number) => number, from = 0, to = a.length): void {
  for (let i = from; i < to; i++) {
    if (a[i] !== f(i)) throw new Error(`${what}: int ${i} is ${a[i]}, expected ${f(i)}`);
  }
}

/** Fills the mirror with ints f(i). */
function fillMirror(b: HmmBuffer, f: (i: number) => number): void {
  const a = b.mirrorInts;
  for (let i = 0; i < a.length; i++) a[i] = f(i);
}

describe('hmm-tests ports: reads and writes', () => {
  it('open_close: a mirror opens (notifier inserted) and closes (removed)', async () => {
    let dm: Dmirror | null = null;
    const r = await runHmmTest(async ({ fds }) => {
      dm = fds[0]!;
      expect(dm.notifier.mm).not.toBeNull();
    });
    if (!r.ok) throw r.failure;
    expect(dm!.notifier.mm).toBeNull();
    expect(dm!.released).toBe(true);
  });

  it(
    'anon_read: the device reads none and zero pages then data; faults == 1, cpages == npages',
    hmmTest(async ({ mm, fds }) => {
      const b = await newBuffer(mm, NPAGES);
      // Initialize buffer in system memory but leave the first two pages zero (pte_none and pfn_zero).
      await cpuWriteInts(mm, b.ptr + 2 * P, (b.size - 2 * P) / 4, (i) => i + (2 * P) / 4);
      expect(await mprotect(mm, b.ptr, b.size, PROT_READ)).toBe(0);
      // Populate the CPU page table with a special zero page.
      expect(await cpuRead64(mm, b.ptr + P)).toBe(0n);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_READ, b, NPAGES)).toBe(0);
      expect(b.cpages).toBe(NPAGES);
      expect(b.faults).toBe(1);
      expectInts('mirror', b.mirrorInts, (i) => (i < (2 * P) / 4 ? 0 : i));
    }),
  );

  it(
    'anon_read_prot: PROT_NONE memory reads as -EFAULT and the mirror buffer stays untouched',
    hmmTest(async ({ mm, fds }) => {
      const b = await newBuffer(mm, NPAGES);
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i);
      fillMirror(b, (i) => -i);
      expect(await mprotect(mm, b.ptr, b.size, PROT_NONE)).toBe(0);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_READ, b, NPAGES)).toBe(-EFAULT);
      expect(await mprotect(mm, b.ptr, b.size, PROT_READ)).toBe(0);
      expectInts('memory', await cpuReadInts(mm, b.ptr, b.size / 4), (i) => i);
      expectInts('mirror', b.mirrorInts, (i) => -i);
    }),
  );

  it(
    'anon_write: the device writes every page; faults == 1 and the CPU sees the data',
    hmmTest(async ({ mm, fds }) => {
      const b = await newBuffer(mm, NPAGES);
      fillMirror(b, (i) => i);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_WRITE, b, NPAGES)).toBe(0);
      expect(b.cpages).toBe(NPAGES);
      expect(b.faults).toBe(1);
      expectInts('memory', await cpuReadInts(mm, b.ptr, b.size / 4), (i) => i);
    }),
  );

  it(
    'anon_write_prot: a read-only mapping reads the zero page, refuses writes with -EPERM, and takes them after mprotect(RW)',
    hmmTest(async ({ mm, fds }) => {
      const b = await newBuffer(mm, NPAGES, PROT_READ);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_READ, b, 1)).toBe(0);
      expect(b.cpages).toBe(1);
      expect(b.faults).toBe(1);
      fillMirror(b, (i) => i);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_WRITE, b, NPAGES)).toBe(-EPERM);
      expectInts('memory', await cpuReadInts(mm, b.ptr, b.size / 4), () => 0);
      // Now allow writing and see that the zero page is replaced.
      expect(await mprotect(mm, b.ptr, b.size, RW)).toBe(0);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_WRITE, b, NPAGES)).toBe(0);
      expect(b.cpages).toBe(NPAGES);
      expect(b.faults).toBe(1);
      expectInts('memory', await cpuReadInts(mm, b.ptr, b.size / 4), (i) => i);
    }),
  );

  it(
    "anon_write_child: a forked child's device write copies on write; the parent keeps its data",
    hmmTest(async ({ mm, devices }) => {
      const b = await newBuffer(mm, 2 * NPAGES, RW, PRIV, NPAGES * P);
      b.size = NPAGES * P;
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i);
      fillMirror(b, (i) => -i);
      const child = await fork(mm, { name: 'child' });
      // The child sees the parent's values, and needs its own mirror of its own mm.
      expectInts('child memory', await cpuReadInts(child, b.ptr, b.size / 4), (i) => i);
      const childFd = await Dmirror.open(devices[0]!, child);
      expect(await hmmDmirrorCmd(childFd, HMM_DMIRROR_WRITE, b, NPAGES)).toBe(0);
      expect(b.cpages).toBe(NPAGES);
      expect(b.faults).toBe(1);
      expectInts('child memory', await cpuReadInts(child, b.ptr, b.size / 4), (i) => -i);
      await childFd.release();
      await exitMm(child);
      // The parent's buffer did not change.
      expectInts('parent memory', await cpuReadInts(mm, b.ptr, b.size / 4), (i) => i);
    }),
  );

  it(
    "anon_write_child (migrate): after the parent migrates to the device and forks, the child's CPU read brings the pages back and its device write copies on write",
    hmmTest(async ({ mm, devices, fds }) => {
      const b = await newBuffer(mm, 2 * NPAGES, RW, PRIV, NPAGES * P);
      b.size = NPAGES * P;
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i);
      expect(await hmmMigrateSysToDev(fds[0]!, b, NPAGES)).toBe(0);
      expect(b.cpages).toBe(NPAGES);
      fillMirror(b, (i) => -i);
      const child = await fork(mm, { name: 'child' });
      // The child's read of device-private pages migrates them back (migrate_to_ram).
      expectInts('child memory', await cpuReadInts(child, b.ptr, b.size / 4), (i) => i);
      const childFd = await Dmirror.open(devices[0]!, child);
      expect(await hmmDmirrorCmd(childFd, HMM_DMIRROR_WRITE, b, NPAGES)).toBe(0);
      expect(b.cpages).toBe(NPAGES);
      expect(b.faults).toBe(1);
      expectInts('child memory', await cpuReadInts(child, b.ptr, b.size / 4), (i) => -i);
      await childFd.release();
      await exitMm(child);
      expectInts('parent memory', await cpuReadInts(mm, b.ptr, b.size / 4), (i) => i);
    }),
  );

  it(
    "anon_write_child_shared: a child's device write to MAP_SHARED memory is seen by the parent",
    hmmTest(async ({ mm, devices }) => {
      const b = await newBuffer(mm, NPAGES, RW, SHARED);
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i);
      fillMirror(b, (i) => -i);
      const child = await fork(mm, { name: 'child' });
      expectInts('child memory', await cpuReadInts(child, b.ptr, b.size / 4), (i) => i);
      const childFd = await Dmirror.open(devices[0]!, child);
      expect(await hmmDmirrorCmd(childFd, HMM_DMIRROR_WRITE, b, NPAGES)).toBe(0);
      expect(b.cpages).toBe(NPAGES);
      expect(b.faults).toBe(1);
      expectInts('child memory', await cpuReadInts(child, b.ptr, b.size / 4), (i) => -i);
      await childFd.release();
      await exitMm(child);
      expectInts('parent memory', await cpuReadInts(mm, b.ptr, b.size / 4), (i) => -i);
    }),
  );

  it(
    'anon_read_multiple: ten fresh buffers each read with faults == 1 and the right data',
    hmmTest(async ({ mm, fds }) => {
      for (let c = 0; c < NTIMES; c++) {
        const b = await newBuffer(mm, NPAGES);
        await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i + c);
        expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_READ, b, NPAGES)).toBe(0);
        expect(b.cpages).toBe(NPAGES);
        expect(b.faults).toBe(1);
        expectInts(`round ${c}`, b.mirrorInts, (i) => i + c);
        expect(await munmap(mm, b.ptr, b.size)).toBe(0);
      }
    }),
  );

  it(
    'double_map: two devices read the same pages; after a migration to device 1, device 0 faults them back (faults == 1)',
    hmmTest(
      async ({ mm, fds }) => {
        const b = await newBuffer(mm, 6);
        await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i);
        expect(await mprotect(mm, b.ptr, b.size, PROT_READ)).toBe(0);
        for (const fd of [fds[0]!, fds[1]!]) {
          expect(await hmmDmirrorCmd(fd, HMM_DMIRROR_READ, b, 6)).toBe(0);
          expect(b.cpages).toBe(6);
          expect(b.faults).toBe(1);
          expectInts('mirror', b.mirrorInts, (i) => i);
        }
        expect(await hmmMigrateSysToDev(fds[1]!, b, 6)).toBe(0);
        expect(b.cpages).toBe(6);
        b.mirror.fill(0);
        expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_READ, b, 6)).toBe(0);
        expect(b.cpages).toBe(6);
        expect(b.faults).toBe(1);
        expectInts('device 0 read', b.mirrorInts, (i) => i);
      },
      { devices: 2 },
    ),
  );
});

/** A device access must find the CPU page table mapping the same frame (and writable for a write) at that instant. */
function attachFrameOracle(w: HmmWorld, mm: MmStruct): void {
  const pt = mm.pgtable;
  w.engine.trace.on('device.access', (ev) => {
    const vpn = Math.floor(ev.addr / P);
    const b = pt.bitsAt(vpn);
    const kind = b & PTE_KIND_MASK;
    const same = pt.pfnAt(vpn) === ev.pfn && (!ev.write || (b & PTE_WRITE) !== 0);
    const ok = b & PTE_PRESENT ? same && !(b & PTE_PROTNONE) : (kind === PTE_SWP_DEVICE_PRIVATE || kind === PTE_SWP_DEVICE_EXCLUSIVE) && same;
    if (!ok) throw new Error(`device ${ev.kind} at 0x${ev.addr.toString(16)} touched pfn ${ev.pfn}, CPU entry bits 0x${b.toString(16)} pfn ${pt.pfnAt(vpn)}`);
  });
}

describe('hmm-tests ports: anon_teardown', () => {
  it('anon_teardown: a device read racing an munmap of the second half either fails or reads the right data, over 300 schedules', async () => {
    const outcomes = new Map<number, number>();
    const program = hmmProgram(async (w) => {
      const { engine, mm, fds } = w;
      attachFrameOracle(w, mm);
      const c = engine.choose(NTIMES, 'round');
      const b = await newBuffer(mm, NPAGES);
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i + c);
      // Delay for a bit and then unmap the second half while it is being read.
      const unmapper = engine.spawn('unmap_buffer', async () => {
        await engine.sleep(engine.choose(32, 'delay') * 4000);
        await munmap(mm, b.ptr + b.size / 2, b.size / 2);
      });
      const rc = await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_READ, b, NPAGES);
      outcomes.set(rc, (outcomes.get(rc) ?? 0) + 1);
      if (rc === 0) {
        expect(b.cpages).toBe(NPAGES);
        expect(b.faults).toBe(1);
        expectInts('mirror', b.mirrorInts, (i) => i + c);
      } else {
        expect(rc).toBe(-EFAULT);
      }
      await unmapper.join();
    });
    for (const strategy of ['random', 'pct:2']) {
      const r = await explore(program, { runs: 150, strategy, seed: 1 });
      if (r.firstFailure !== null) throw r.firstFailure.failure;
    }
    // Both outcomes happen: the read wins the race, or the munmap does.
    expect(outcomes.get(0)).toBeGreaterThan(0);
    expect(outcomes.get(-EFAULT)).toBeGreaterThan(0);
  });
});

describe('hmm-tests ports: snapshot and exclusive access', () => {
  it(
    'snapshot: seven pages report ERROR, ERROR, ZERO|READ, READ, WRITE, DEV_PRIVATE_LOCAL|WRITE, NONE (device 1 page)',
    hmmTest(
      async ({ mm, fds }) => {
        const npages = 7;
        const b = await newBuffer(mm, npages, PROT_NONE, PRIV, npages);
        const p = b.ptr;
        // Punch a hole after the first page address.
        expect(await munmap(mm, p + P, P)).toBe(0);
        // Page 2 will be a read-only zero page.
        expect(await mprotect(mm, p + 2 * P, P, PROT_READ)).toBe(0);
        const val = Number(await cpuRead64(mm, p + 2 * P)) + 3;
        expect(val).toBe(3);
        // Page 3 will be read-only.
        expect(await mprotect(mm, p + 3 * P, P, RW)).toBe(0);
        await cpuWriteInts(mm, p + 3 * P, 1, () => val);
        expect(await mprotect(mm, p + 3 * P, P, PROT_READ)).toBe(0);
        // Pages 4-6 will be read-write.
        expect(await mprotect(mm, p + 4 * P, 3 * P, RW)).toBe(0);
        await cpuWriteInts(mm, p + 4 * P, 1, () => val);
        // Page 5 will be migrated to device 0, page 6 to device 1.
        const one = new HmmBuffer(p + 5 * P, P, new Uint8Array(P));
        expect(await hmmMigrateSysToDev(fds[0]!, one, 1)).toBe(0);
        expect(one.cpages).toBe(1);
        one.ptr = p + 6 * P;
        expect(await hmmMigrateSysToDev(fds[1]!, one, 1)).toBe(0);
        expect(one.cpages).toBe(1);
        expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_SNAPSHOT, b, npages)).toBe(0);
        expect(b.cpages).toBe(npages);
        expect([...b.mirror]).toEqual([
          HMM_DMIRROR_PROT_ERROR,
          HMM_DMIRROR_PROT_ERROR,
          HMM_DMIRROR_PROT_ZERO | HMM_DMIRROR_PROT_READ,
          HMM_DMIRROR_PROT_READ,
          HMM_DMIRROR_PROT_WRITE,
          HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | HMM_DMIRROR_PROT_WRITE,
          HMM_DMIRROR_PROT_NONE,
        ]);
      },
      { devices: 2 },
    ),
  );

  it(
    'exclusive: pages made exclusive read back right; CPU accesses revoke them; CHECK_EXCLUSIVE then returns 0',
    hmmTest(async ({ mm, fds }) => {
      const b = await newBuffer(mm, NPAGES);
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_EXCLUSIVE, b, NPAGES)).toBe(0);
      expect(b.cpages).toBe(NPAGES);
      expectInts('mirror', b.mirrorInts, (i) => i);
      // Still exclusive before the CPU touches anything.
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_CHECK_EXCLUSIVE, b, NPAGES)).toBe(-EPERM);
      // Fault pages back to system memory: ptr[i]++ (a read then a write of every page).
      const ints = await cpuReadInts(mm, b.ptr, b.size / 4);
      expectInts('memory', ints, (i) => i);
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => ints[i]! + 1);
      expectInts('memory', await cpuReadInts(mm, b.ptr, b.size / 4), (i) => i + 1);
      // Check atomic access revoked.
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_CHECK_EXCLUSIVE, b, NPAGES)).toBe(0);
    }),
  );

  it(
    'exclusive_mprotect: a device write after mprotect(PROT_READ) of exclusive pages is -EPERM',
    hmmTest(async ({ mm, fds }) => {
      const b = await newBuffer(mm, NPAGES);
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_EXCLUSIVE, b, NPAGES)).toBe(0);
      expect(b.cpages).toBe(NPAGES);
      expectInts('mirror', b.mirrorInts, (i) => i);
      expect(await mprotect(mm, b.ptr, b.size, PROT_READ)).toBe(0);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_WRITE, b, NPAGES)).toBe(-EPERM);
    }),
  );

  it(
    'exclusive_cow: after fork of exclusive pages, parent and child each increment their own copy',
    hmmTest(async ({ mm, fds }) => {
      const b = await newBuffer(mm, NPAGES);
      await cpuWriteInts(mm, b.ptr, b.size / 4, (i) => i);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_EXCLUSIVE, b, NPAGES)).toBe(0);
      expect(b.cpages).toBe(NPAGES);
      const child = await fork(mm, { name: 'child' });
      for (const m of [mm, child]) {
        const ints = await cpuReadInts(m, b.ptr, b.size / 4);
        expectInts(`${m.name} before`, ints, (i) => i);
        await cpuWriteInts(m, b.ptr, b.size / 4, (i) => ints[i]! + 1);
        expectInts(`${m.name} after`, await cpuReadInts(m, b.ptr, b.size / 4), (i) => i + 1);
      }
      await exitMm(child);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_CHECK_EXCLUSIVE, b, NPAGES)).toBe(0);
    }),
  );
});

describe('the ioctl block', () => {
  it(
    'rejects an unaligned address, an empty range and an unknown command with -EINVAL',
    hmmTest(async ({ mm, fds }) => {
      const b = await newBuffer(mm, 4);
      const fd = fds[0]!;
      expect(await fd.ioctl(HMM_DMIRROR_READ, { addr: b.ptr + 8, ptr: b.mirror, npages: 1, cpages: 0, faults: 0 })).toBe(-EINVAL);
      expect(await fd.ioctl(HMM_DMIRROR_READ, { addr: b.ptr, ptr: b.mirror, npages: 0, cpages: 0, faults: 0 })).toBe(-EINVAL);
      expect(await fd.ioctl(0x1234, { addr: b.ptr, ptr: b.mirror, npages: 1, cpages: 0, faults: 0 })).toBe(-EINVAL);
      // cpages and faults are written back only on success.
      const cmd = { addr: b.ptr, ptr: b.mirror, npages: 1, cpages: 7, faults: 7 };
      expect(await fd.ioctl(HMM_DMIRROR_READ, { ...cmd, addr: b.ptr + 1 })).toBe(-EINVAL);
      expect(cmd.cpages).toBe(7);
    }),
  );

  it(
    'a malformed block throws KernelError(EINVAL) naming the bad field',
    hmmTest(async ({ mm, fds }) => {
      const b = await newBuffer(mm, 1);
      const fd = fds[0]!;
      for (const bad of [
        { addr: -4096, ptr: b.mirror, npages: 1 },
        { addr: b.ptr, ptr: b.mirror, npages: 1.5 },
        { addr: b.ptr, ptr: [1, 2, 3] as unknown as Uint8Array, npages: 1 },
      ]) {
        let err: unknown = null;
        try {
          await fd.ioctl(HMM_DMIRROR_READ, { ...bad, cpages: 0, faults: 0 });
        } catch (e) {
          err = e;
        }
        expect(err).toBeInstanceOf(KernelError);
        expect((err as KernelError).errno).toBe(EINVAL);
      }
    }),
  );

  it(
    'a user buffer too short is -EFAULT: after the device read for READ, before anything for WRITE',
    hmmTest(async ({ mm, fds }) => {
      const b = await newBuffer(mm, 2);
      const fd = fds[0]!;
      const short = new Uint8Array(P);
      expect(await fd.ioctl(HMM_DMIRROR_READ, { addr: b.ptr, ptr: short, npages: 2, cpages: 0, faults: 0 })).toBe(-EFAULT);
      expect(fd.as.pageTable.size).toBe(2); // the read itself happened
      expect(await fd.ioctl(HMM_DMIRROR_WRITE, { addr: b.ptr, ptr: short, npages: 2, cpages: 0, faults: 0 })).toBe(-EFAULT);
      expect(fd.as.pageTable.flagsAt(b.ptr / P)).toBe(1); // still read-only: nothing was faulted for write
    }),
  );

  it(
    'a released mirror answers -EINVAL; a read of a hole is -EFAULT and of MAP_SHARED pages works',
    hmmTest(async ({ mm, devices, fds }) => {
      const b = await newBuffer(mm, 3, RW, SHARED, 2 * P);
      await cpuWriteInts(mm, b.ptr, (2 * P) / 4, (i) => 3 * i);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_READ, b, 2)).toBe(0);
      expectInts('mirror', b.mirrorInts, (i) => 3 * i);
      const hole = new HmmBuffer(b.ptr + 2 * P, P, new Uint8Array(P));
      expect(await munmap(mm, hole.ptr, P)).toBe(0);
      expect(await hmmDmirrorCmd(fds[0]!, HMM_DMIRROR_READ, hole, 1)).toBe(-EFAULT);
      const extra = await Dmirror.open(devices[0]!, mm);
      await extra.release();
      expect(await hmmDmirrorCmd(extra, HMM_DMIRROR_READ, b, 1)).toBe(-EINVAL);
    }),
  );
});
