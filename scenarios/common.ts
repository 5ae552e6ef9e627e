/**
 * Pieces shared by the bundled race scenarios: a buffer filled with known words, and a pair of
 * device jobs that sweep it in opposite directions, each loading a word and storing it plus 100.
 * Scenario files stay readable on their own; only what two or more of them repeat lives here.
 */
import { PAGE_SIZE, type DeviceTask, type ScenarioContext, type WarpContext, cpuWrite64, deviceTask } from 'hmm-emu';

/** The word first written at (page, word) of a swept buffer. */
export const initWord = (page: number, word: number): bigint => BigInt(0x1000 * (page + 1) + word);

/** Writes initWord(p, w) to words 0 and 1 of each of `pages` pages at `base`. */
export async function fillTwoWords(ctx: ScenarioContext, base: number, pages: number): Promise<void> {
  for (let p = 0; p < pages; p++) for (let w = 0; w < 2; w++) await cpuWrite64(ctx.mm, base + p * PAGE_SIZE + 8 * w, initWord(p, w));
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
