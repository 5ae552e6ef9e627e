/**
 * Pieces shared by the bundled scenarios. Scenario files stay readable on their own; only what
 * two or more of them repeat lives here:
 *
 *   - a buffer filled with known words (initWord: words 0 and 1 of each page), the device and
 *     CPU reads and checks of it, and a pair of device jobs that sweep it in opposite
 *     directions, each loading a word and storing it plus 100 (the race and migration scenarios);
 *   - where a page is, by the CPU page table (device-private entry, or system memory), and a
 *     device sweep launched as a job whose end releases a racePoint (the migration ports);
 *   - the anon_* ports' layout: the kernel test's ints ptr[i] = i, touched per page as an 8-byte
 *     word at W0 and a 4-byte int at W1, and the fork-child device write of anon_write_child*.
 */
import {
  DeviceFaultError,
  type DeviceJob,
  type DeviceTask,
  type MmStruct,
  PAGE_SIZE,
  PTE_SWP_DEVICE_PRIVATE,
  type ScenarioContext,
  type ScenarioDevice,
  type WarpContext,
  cpuRead64,
  cpuWrite64,
  deviceTask,
  exitMm,
  ptePresent,
  pteKind,
  vpnOf,
} from 'hmm-emu';

// ---- a buffer of known words (words 0 and 1 of each page) ----

/** The word first written at (page, word) of a swept buffer. */
export const initWord = (page: number, word: number): bigint => BigInt(0x1000 * (page + 1) + word);

/** The address of 8-byte word `word` of page `page` of the buffer at `base`. */
const wordAddr = (base: number, page: number, word: number): number => base + page * PAGE_SIZE + 8 * word;

/** Writes initWord(p, w) to words 0 and 1 of each of `pages` pages at `base`. */
export async function fillTwoWords(ctx: ScenarioContext, base: number, pages: number): Promise<void> {
  for (let p = 0; p < pages; p++) for (let w = 0; w < 2; w++) await cpuWrite64(ctx.mm, wordAddr(base, p, w), initWord(p, w));
}

/** Expects got[2p + w] to be want(p, w) for words 0 and 1 of each of `pages` pages, each named `${who}: page p word w`. */
export function expectTwoWords(ctx: ScenarioContext, got: readonly bigint[], pages: number, who: string, want: (page: number, word: number) => bigint = initWord): void {
  for (let p = 0; p < pages; p++) for (let w = 0; w < 2; w++) ctx.expectEqual(got[2 * p + w]!, want(p, w), `${who}: page ${p} word ${w}`);
}

/** The CPU reads words 0 and 1 of pages [from, to) at `base`, expecting initWord after each read, named `${who}: page p word w`. */
export async function cpuExpectInit(ctx: ScenarioContext, base: number, from: number, to: number, who: string): Promise<void> {
  for (let p = from; p < to; p++) for (let w = 0; w < 2; w++) ctx.expectEqual(await cpuRead64(ctx.mm, wordAddr(base, p, w)), initWord(p, w), `${who}: page ${p} word ${w}`);
}

/** The CPU reads words 0 and 1 of each of `pages` pages at `base`; returns them by (page, word). */
export async function cpuReadTwoWords(ctx: ScenarioContext, base: number, pages: number): Promise<bigint[]> {
  const out: bigint[] = [];
  for (let p = 0; p < pages; p++) for (let w = 0; w < 2; w++) out.push(await cpuRead64(ctx.mm, wordAddr(base, p, w)));
  return out;
}

/** The default device reads words 0 and 1 of each of `pages` pages at `base` front to back in one job, bumping `counter` after each page; returns them by (page, word). */
export async function deviceReadTwoWords(ctx: ScenarioContext, base: number, pages: number, counter = 'device'): Promise<bigint[]> {
  const [got] = await ctx.device().run(async (w) => {
    const out: bigint[] = [];
    for (let p = 0; p < pages; p++) {
      out.push(await w.load(wordAddr(base, p, 0), 8), await w.load(wordAddr(base, p, 1), 8));
      ctx.bump(counter);
    }
    return out;
  });
  return got!;
}

/** A device kernel that reads words 0 and 1 of each of `pages` pages at `base` back to front, bumping `counter` and computing `computeNs` after each; returns them by (page, word). */
export function readTwoWordsBack(ctx: ScenarioContext, base: number, pages: number, counter: string, computeNs = 0): (w: WarpContext) => Promise<bigint[]> {
  return async (w) => {
    const out = new Array<bigint>(2 * pages).fill(-1n);
    for (let p = pages - 1; p >= 0; p--) {
      for (let word = 0; word < 2; word++) {
        out[2 * p + word] = await w.load(wordAddr(base, p, word), 8);
        ctx.bump(counter);
        if (computeNs > 0) await ctx.sleep(computeNs);
      }
    }
    return out;
  };
}

/** Loads the word at `a`, stores it plus 100, publishing each access as progress ('access'). */
export async function bumpAdd(ctx: ScenarioContext, w: WarpContext, a: number): Promise<void> {
  const v = await w.load(a, 8);
  ctx.bump('access');
  await w.store(a, 8, v + 100n);
  ctx.bump('access');
}

/** Two killable jobs: "up" bumps word 0 of every page in ascending order, "down" word 1 in descending order. */
export function sweepJobs(base: number, pages: number): { up: DeviceTask; down: DeviceTask } {
  return {
    up: deviceTask({
      killable: true,
      async kernel(ctx, w) {
        for (let p = 0; p < pages; p++) await bumpAdd(ctx, w, base + p * PAGE_SIZE);
      },
    }),
    down: deviceTask({
      killable: true,
      async kernel(ctx, w) {
        for (let p = pages - 1; p >= 0; p--) await bumpAdd(ctx, w, base + p * PAGE_SIZE + 8);
      },
    }),
  };
}

// ---- where a page is, and device sweeps as jobs ----

/** The CPU entry of the page at `a` is a device-private one (/proc/self/pagemap: a swap entry). */
export const onDevice = (mm: MmStruct, a: number): boolean => pteKind(mm.pgtable.bitsAt(vpnOf(a))) === PTE_SWP_DEVICE_PRIVATE;

/** The CPU maps the page at `a` to a frame of system memory. */
export const inRam = (mm: MmStruct, a: number): boolean => ptePresent(mm.pgtable.bitsAt(vpnOf(a))) && !mm.phys.isDevicePfn(mm.pgtable.pfnAt(vpnOf(a)));

/** Expects each of `pages` pages at `base` to be in device memory, else fails `${prefix}page p is not in device memory after ${after}`. */
export function expectAllOnDevice(ctx: ScenarioContext, base: number, pages: number, after: string, prefix = ''): void {
  for (let p = 0; p < pages; p++) ctx.expect(onDevice(ctx.mm, base + p * PAGE_SIZE), `${prefix}page ${p} is not in device memory after ${after}`);
}

/** Launches `kernel` on `dev` as a sweep with progress `counter`, whose end (killed or not) bumps it by `max` to release a racePoint on it (a job is no task its `until` can name). */
export function launchSweep<T>(ctx: ScenarioContext, dev: ScenarioDevice, counter: string, max: number, kernel: (w: WarpContext) => Promise<T>): DeviceJob<T> {
  return dev.launch(async (w) => {
    try {
      return await kernel(w);
    } finally {
      ctx.bump(counter, max);
    }
  });
}

// ---- the anon_* ports: the kernel test's ints ptr[i] = i ----

/** Byte offset of the 8-byte word the anon_* ports touch per page (the 4-byte int is at W1). */
export const W0 = 0;

/** Byte offset of the 4-byte int the anon_* ports touch per page, in its middle. */
export const W1 = PAGE_SIZE / 2;

/** The kernel test's int index of byte `off` of page `p` (its buffer holds ptr[i] = i). */
export const idx = (p: number, off: number): number => (p * PAGE_SIZE + off) / 4;

/** The 8 bytes at int index i when ptr[i] = i + c: ints i + c and i + 1 + c, little-endian. */
export const pair = (i: number, c = 0): bigint => BigInt(i + c) | (BigInt(i + 1 + c) << 32n);

/** A device's int at index i in the fork-child ports: -i, as the 32 bits the kernel test's mirror holds. */
export const neg = (i: number): bigint => BigInt((-i) >>> 0);

/** A device's 8 bytes at int index i in the fork-child ports: ints -i and -(i + 1). */
export const negPair = (i: number): bigint => neg(i) | (neg(i + 1) << 32n);

/** The low 32 bits of a word. */
const U32 = 0xffff_ffffn;

/** Writes pair(idx(p, off), c) at W0 and W1 of pages [from, to) at `base` (the kernel test's ptr[i] = i + c). */
export async function fillPairs(ctx: ScenarioContext, base: number, from: number, to: number, c = 0): Promise<void> {
  for (let p = from; p < to; p++) for (const off of [W0, W1]) await cpuWrite64(ctx.mm, base + p * PAGE_SIZE + off, pair(idx(p, off), c));
}

/** Reads W0 and W1 of each of `pages` pages at `base` through `mm`, expecting pair(idx(p, off)); `what(p, off)` names each read. */
export async function expectPairs(ctx: ScenarioContext, mm: MmStruct, base: number, pages: number, what: (p: number, off: number) => string): Promise<void> {
  for (let p = 0; p < pages; p++) for (const off of [W0, W1]) ctx.expectEqual(await cpuRead64(mm, base + p * PAGE_SIZE + off), pair(idx(p, off)), what(p, off));
}

/** The CPU reads what a device wrote as ptr[i] = i to each of `pages` pages at `base`: pair(idx) at W0, at W1 the int alone (its high neighbour never written). */
export async function expectWrittenInts(ctx: ScenarioContext, base: number, pages: number): Promise<void> {
  for (let p = 0; p < pages; p++) {
    ctx.expectEqual(await cpuRead64(ctx.mm, base + p * PAGE_SIZE + W0), pair(idx(p, W0)), `CPU read of page ${p} offset ${W0}`);
    ctx.expectEqual(await cpuRead64(ctx.mm, base + p * PAGE_SIZE + W1), BigInt(idx(p, W1)), `CPU read of page ${p} offset ${W1}`);
  }
}

/** anon_write_child*: forks, checks the child sees the fill, has the child's own mirror `device` write -i to W0 and W1 of every page (`warps` warps), checks the child sees that, and exits the child. */
export async function childDeviceWrite(ctx: ScenarioContext, device: string, base: number, pages: number, warps: number): Promise<void> {
  const child = await ctx.fork(ctx.mm, 'child');
  // The child sees the parent's values.
  await expectPairs(ctx, child, base, pages, (p, off) => `child read of page ${p} offset ${off} after fork`);

  // The child needs its own mirror of its own mm; its device writes the buffer.
  const dev = await ctx.bindDevice(device, child);
  try {
    await dev.run(
      async (w) => {
        for (let p = w.warp; p < pages; p += warps) {
          await w.store(base + p * PAGE_SIZE + W0, 8, negPair(idx(p, W0)));
          await w.store(base + p * PAGE_SIZE + W1, 4, neg(idx(p, W1)));
        }
      },
      { warps },
    );
  } catch (err) {
    if (err instanceof DeviceFaultError) ctx.fail(`the child's device write was killed: ${err.message}`);
    throw err;
  }
  // What the device wrote (the high int at W1 is still the parent's i + 1).
  for (let p = 0; p < pages; p++) {
    ctx.expectEqual(await cpuRead64(child, base + p * PAGE_SIZE + W0), negPair(idx(p, W0)), `child read of page ${p} offset ${W0} after its device write`);
    ctx.expectEqual((await cpuRead64(child, base + p * PAGE_SIZE + W1)) & U32, neg(idx(p, W1)), `child read of page ${p} int at offset ${W1} after its device write`);
  }
  // The child exits (its mirror stays bound until teardown: the driver sees the mm go).
  await exitMm(child);
}
