/**
 * hmm-tests' anon_read_prot: the CPU writes 8 private pages, makes them PROT_NONE, and the
 * device tries to read them (two warps, two words a page); then the CPU makes them PROT_READ
 * and checks its data.
 *
 * A correct driver refuses the device read: hmm_range_fault fails on a VMA without read
 * permission (-EFAULT), the driver cancels the fault and the job dies (the kernel test's ioctl
 * returns -EFAULT) without having read anything; after mprotect(PROT_READ) the CPU reads its
 * own values unchanged. A driver that maps a PROT_NONE page anyway (say from the CPU page table
 * as it stands, present but protnone) lets the device read what the CPU may not: the oracle
 * flags the access (translation), and the check fails (the job lived, or read something).
 */
import { PAGE_SIZE, PROT_NONE, PROT_READ, defineScenario, deviceTask, mprotect } from 'hmm-emu';
import { W0, W1, expectPairs, fillPairs } from './common.js';

const PAGES = 8;
const WARPS = 2;
const BUF = 0x10_0000_0000;

interface State {
  /** Device reads that returned (none may): page and offset. */
  readonly reads: string[];
}

export const anonReadProt = defineScenario({
  name: 'anon-read-prot',
  description: 'The device reads 8 private pages the CPU wrote and then made PROT_NONE; the read must fail (the job is killed) having read nothing, and the CPU data must be unchanged once readable again.',
  origin: 'tools/testing/selftests/mm/hmm-tests.c: anon_read_prot',
  tags: ['hmm-tests', 'read', 'mprotect', 'prot-none', 'efault'],
  world: { frames: 128, devices: [{ name: 'gpu0', memoryFrames: 16 }] },
  drivers: 'any',
  state: (): State => ({ reads: [] }),
  async setup(ctx) {
    await ctx.mmap(PAGES, { addr: BUF });
    await fillPairs(ctx, BUF, 0, PAGES);
    // Protect the buffer from reading.
    ctx.expectEqual(await mprotect(ctx.mm, BUF, PAGES * PAGE_SIZE, PROT_NONE), 0, 'mprotect(PROT_NONE)');
  },
  tasks: {
    // Killable: the kill is the expected outcome (the kernel test's -EFAULT); check() insists on it.
    gpu: deviceTask<State>({
      warps: WARPS,
      killable: true,
      async kernel(ctx, w) {
        for (let p = w.warp; p < PAGES; p += WARPS) {
          await w.load(BUF + p * PAGE_SIZE + W0, 8);
          ctx.state.reads.push(`page ${p} offset ${W0}`);
          await w.load(BUF + p * PAGE_SIZE + W1, 4);
          ctx.state.reads.push(`page ${p} offset ${W1}`);
        }
      },
    }),
  },
  async check(ctx) {
    ctx.expect(ctx.killed.has('gpu'), 'the device read of PROT_NONE memory succeeded: it must fail (-EFAULT, the job killed)');
    ctx.expect(ctx.state.reads.length === 0, () => `the device read PROT_NONE memory: ${ctx.state.reads.join(', ')}`);
    // Allow the CPU to read the buffer so we can check it.
    ctx.expectEqual(await mprotect(ctx.mm, BUF, PAGES * PAGE_SIZE, PROT_READ), 0, 'mprotect(PROT_READ)');
    await expectPairs(ctx, ctx.mm, BUF, PAGES, (p, off) => `CPU read of page ${p} offset ${off}`);
  },
});
