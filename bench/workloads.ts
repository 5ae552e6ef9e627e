/** Benchmark workloads. Each returns its figure; run.ts times nothing itself. */
import { Engine } from '../src/index.js';

export interface BenchResult {
  readonly name: string;
  readonly value: number;
  readonly unit: string;
}

export interface Workload {
  readonly name: string;
  /** The target figure, for the table. */
  readonly target?: string;
  run(): Promise<{ value: number; unit: string }>;
}

/** Best of `reps` after one warm-up. */
async function best(reps: number, once: () => Promise<number>): Promise<number> {
  await once();
  let top = 0;
  for (let i = 0; i < reps; i++) top = Math.max(top, await once());
  return top;
}

export const workloads: Workload[] = [
  {
    name: 'sched.switches_per_s',
    target: '>= 5,000,000',
    async run() {
      const switches = 2_000_000;
      const value = await best(5, async () => {
        const e = new Engine({ strategy: 'fifo', maxSteps: switches * 2 });
        for (const name of ['ping', 'pong']) {
          e.spawn(name, async () => {
            for (let i = 0; i < switches / 2; i++) await e.yield();
          });
        }
        const t0 = performance.now();
        const r = await e.run();
        const dt = (performance.now() - t0) / 1000;
        if (!r.ok || r.steps < switches) throw new Error(`ping-pong failed: ${r.failure?.message ?? r.steps}`);
        return r.steps / dt;
      });
      return { value: Math.round(value), unit: 'switches/s' };
    },
  },
];
