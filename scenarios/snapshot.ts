/**
 * hmm-tests' hmm2.snapshot: two devices mirror the process; 7 pages are set up in seven
 * states and device 0 snapshots the CPU page table without faulting (test_hmm's
 * HMM_DMIRROR_SNAPSHOT: hmm_range_fault with no fault flags). The pages: PROT_NONE; a hole
 * (munmapped); the zero page (read through a read-only mapping); a read-only page the CPU
 * wrote; a writable page the CPU wrote; an untouched writable page migrated to device 0's
 * memory; one migrated to device 1's memory. Afterwards the CPU and device 0 read the data.
 *
 * A correct driver reports, page by page, exactly what the kernel test asserts: ERROR, ERROR,
 * ZERO|READ, READ, WRITE, DEV_PRIVATE_LOCAL|WRITE, and NONE for device 1's page (its private
 * memory is not device 0's and the snapshot must not fault it home), all without faulting
 * anything in or moving anything. A snapshot that faults (the zero page would become a
 * written page, the hole or the PROT_NONE page an error of another kind, device 1's page
 * would come home) or misreads a permission fails the expectations; a device read of the
 * migrated pages that reaches the wrong frame is flagged by the oracle.
 */
import { PAGE_SIZE, PROT_NONE, PROT_READ, PROT_WRITE, SNAPSHOT, cpuRead64, cpuWrite64, defineScenario, mprotect, munmap } from 'hmm-emu';

const PAGES = 7;
const BUF = 0x10_0000_0000;
const page = (p: number): number => BUF + p * PAGE_SIZE;
const VAL = 3n;

/** The kernel test's expectations, page by page (device-private memory, as dmirror's). */
const EXPECTED: readonly number[] = [
  SNAPSHOT.ERROR, // PROT_NONE
  SNAPSHOT.ERROR, // the hole
  SNAPSHOT.ZERO | SNAPSHOT.READ, // the zero page, read-only
  SNAPSHOT.READ, // written, then read-only
  SNAPSHOT.WRITE, // written, read-write
  SNAPSHOT.DEV_PRIVATE_LOCAL | SNAPSHOT.WRITE, // in device 0's memory
  SNAPSHOT.NONE, // in device 1's memory
];
const WHAT = ['PROT_NONE', 'hole', 'zero page', 'read-only', 'read-write', "device 0's memory", "device 1's memory"];

export const snapshot = defineScenario({
  name: 'snapshot',
  description:
    "Device 0 snapshots 7 pages without faulting: PROT_NONE, a hole, the zero page, read-only, read-write, in its own memory and in device 1's; it must report ERROR, ERROR, ZERO|READ, READ, WRITE, DEV_PRIVATE_LOCAL|WRITE and NONE.",
  origin: 'tools/testing/selftests/mm/hmm-tests.c: hmm2.snapshot',
  tags: ['hmm-tests:snapshot', 'snapshot', 'two-devices', 'migration', 'device-private'],
  world: {
    frames: 128,
    devices: [
      { name: 'gpu0', memoryFrames: 8 },
      { name: 'gpu1', memoryFrames: 8 },
    ],
  },
  drivers: { features: ['snapshot', 'device-migration'] },
  tasks: {
    async cpu(ctx) {
      const mm = ctx.mm;
      // Reserve a range of addresses.
      await ctx.mmap(PAGES, { addr: BUF, prot: PROT_NONE });
      // Punch a hole after the first page address.
      ctx.expectEqual(await munmap(mm, page(1), PAGE_SIZE), 0, 'munmap of page 1');
      // Page 2 will be the read-only zero page.
      ctx.expectEqual(await mprotect(mm, page(2), PAGE_SIZE, PROT_READ), 0, 'mprotect of page 2');
      ctx.expectEqual(await cpuRead64(mm, page(2)), 0n, 'page 2 (zero page) reads 0');
      // Page 3 will be read-only.
      ctx.expectEqual(await mprotect(mm, page(3), PAGE_SIZE, PROT_READ | PROT_WRITE), 0, 'mprotect of page 3 read-write');
      await cpuWrite64(mm, page(3), VAL);
      ctx.expectEqual(await mprotect(mm, page(3), PAGE_SIZE, PROT_READ), 0, 'mprotect of page 3 read-only');
      // Pages 4-6 will be read-write.
      ctx.expectEqual(await mprotect(mm, page(4), 3 * PAGE_SIZE, PROT_READ | PROT_WRITE), 0, 'mprotect of pages 4-6');
      await cpuWrite64(mm, page(4), VAL);
      // Page 5 will be migrated to device 0, page 6 to device 1.
      const r5 = await ctx.device('gpu0').migrateToDevice(page(5), 1);
      ctx.expect(r5 >= 0, `migrateToDevice of page 5 to gpu0 returned ${r5}`);
      const r6 = await ctx.device('gpu1').migrateToDevice(page(6), 1);
      ctx.expect(r6 >= 0, `migrateToDevice of page 6 to gpu1 returned ${r6}`);

      // Simulate a device snapshotting CPU page tables.
      const codes = await ctx.device('gpu0').snapshot(BUF, PAGES);
      ctx.log(`snapshot: ${[...codes].map((c) => `0x${c.toString(16)}`).join(' ')}`);
      for (let p = 0; p < PAGES; p++) ctx.expectEqual(codes[p]!, EXPECTED[p]!, `snapshot of page ${p} (${WHAT[p]})`);
      // Snapshotting faulted nothing in: a second one sees the same.
      const again = await ctx.device('gpu0').snapshot(BUF, PAGES);
      for (let p = 0; p < PAGES; p++) ctx.expectEqual(again[p]!, EXPECTED[p]!, `second snapshot of page ${p} (${WHAT[p]})`);

      // The data: device 0 reads pages 2-6 (page 6 comes from device 1's memory), then the CPU.
      const [got] = await ctx.device('gpu0').run(async (w) => {
        const out: bigint[] = [];
        for (let p = 2; p < PAGES; p++) out.push(await w.load(page(p), 8));
        return out;
      });
      const want = [0n, VAL, VAL, 0n, 0n];
      for (let p = 2; p < PAGES; p++) ctx.expectEqual(got![p - 2]!, want[p - 2]!, `gpu0 read of page ${p} (${WHAT[p]})`);
      for (let p = 2; p < PAGES; p++) ctx.expectEqual(await cpuRead64(mm, page(p)), want[p - 2]!, `CPU read of page ${p} (${WHAT[p]})`);
    },
  },
});
