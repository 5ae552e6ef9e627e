/** The example of docs/scenarios.md, verbatim, runs as the guide says. */
import { expect, it } from 'vitest';
import { PAGE_SIZE, cpuRead64, cpuWrite64, defineScenario, deviceTask, munmap } from 'hmm-emu';
import { expectCoherent, runScenario } from 'hmm-emu/testing';
import { drivers } from '../../drivers/index.js';

const BUF = 0x10_0000_0000;

const readVsMunmap = defineScenario({
  name: 'read-vs-munmap',
  description: 'The device reads 4 pages while the CPU unmaps two of them; no read may reach a freed frame.',
  tags: ['race', 'munmap'],
  world: { frames: 128, devices: [{ name: 'gpu0', memoryFrames: 0 }] },
  drivers: 'any',
  async setup(ctx) {
    await ctx.mmap(4, { addr: BUF });
    for (let p = 0; p < 4; p++) await cpuWrite64(ctx.mm, BUF + p * PAGE_SIZE, BigInt(p + 1));
  },
  tasks: {
    gpu: deviceTask({
      killable: true, // a read of an unmapped page kills the job: legal here
      async kernel(ctx, w) {
        for (let p = 0; p < 4; p++) {
          await w.load(BUF + p * PAGE_SIZE, 8); // the oracle checks the frame and the value
          ctx.bump('read'); // publish progress for racePoint
        }
      },
    }),
    async cpu(ctx) {
      await ctx.racePoint({ counter: 'read', max: 4, until: ['gpu'] });
      ctx.expectEqual(await munmap(ctx.mm, BUF + 2 * PAGE_SIZE, 2 * PAGE_SIZE), 0, 'munmap');
    },
  },
  async check(ctx) {
    ctx.expectEqual(await cpuRead64(ctx.mm, BUF), 1n, 'page 0');
  },
});

it('the guide example is coherent on every reference driver', async () => {
  for (const driver of drivers.list('reference')) await expectCoherent(readVsMunmap, { driver, runs: 30 });
});

it('the guide example sometimes kills the device job, and logs it', async () => {
  let killed = 0;
  for (let seed = 0; seed < 30; seed++) {
    const r = await runScenario(readVsMunmap, { driver: drivers.get('dmirror'), seed });
    expect(r.verdict, r.summary).toBe('coherent');
    if (r.log.some((l) => l.message.startsWith('device task gpu killed'))) killed++;
  }
  expect(killed).toBeGreaterThan(0);
});
