/** Benchmark workloads. Each returns its figure; run.ts prints and saves them. */
import { deviceWorkload } from './device-bench.js';
import { migrateWorkload } from './migrate-bench.js';
import {
  Engine,
  MAP_ANONYMOUS,
  MAP_PRIVATE,
  MmuIntervalNotifier,
  MmuNotifier,
  PAGE_SIZE,
  PROT_READ,
  PROT_WRITE,
  PhysMem,
  createMm,
  cpuWrite64,
  mmap,
  mmuIntervalNotifierInsert,
  mmuIntervalSetSeq,
  mmuNotifierRegister,
  mprotect,
  munmap,
  type MmStruct,
} from '../src/index.js';

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

const MM_PAGES = 1_000_000;

/** Runs `body` as the only task of a fresh engine with physical memory for MM_PAGES pages. */
async function inWorld(body: (e: Engine, phys: PhysMem, mm: MmStruct) => Promise<void>): Promise<void> {
  const e = new Engine({ strategy: 'fifo', maxSteps: 100_000_000 });
  const phys = new PhysMem(e, { frames: MM_PAGES + 4096, maxDeviceFrames: 0 });
  const mm = createMm(e, phys);
  e.spawn('cpu0', () => body(e, phys, mm));
  const r = await e.run();
  if (!r.ok) throw r.failure;
}

/** First-touch writes of one 8-byte word to each of MM_PAGES pages; returns the mapping. */
async function touchAll(mm: MmStruct): Promise<number> {
  const a = await mmap(mm, 0, MM_PAGES * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
  for (let i = 0; i < MM_PAGES; i++) await cpuWrite64(mm, a + i * PAGE_SIZE + (i & 511) * 8, BigInt(i + 1));
  return a;
}

/** Two interval notifiers and one classic notifier over [a, a + len), with driver-like callbacks. */
async function registerNotifiers(mm: MmStruct, a: number, len: number): Promise<void> {
  for (const name of ['itv0', 'itv1']) {
    await mmuIntervalNotifierInsert(new MmuIntervalNotifier(name), mm, a, len, {
      invalidate(sub, _range, cur) {
        mmuIntervalSetSeq(sub, cur);
        return true;
      },
    });
  }
  await mmuNotifierRegister(new MmuNotifier({ invalidateRangeStart: () => 0, invalidateRangeEnd: () => {} }, 'classic'), mm);
}

async function timedPagesPerSecond(reps: number, op: (mm: MmStruct, a: number) => Promise<void>, setup: (mm: MmStruct, a: number) => Promise<void>): Promise<number> {
  return best(reps, async () => {
    let rate = 0;
    await inWorld(async (_e, _phys, mm) => {
      const a = await touchAll(mm);
      await setup(mm, a);
      const t0 = performance.now();
      await op(mm, a);
      rate = MM_PAGES / ((performance.now() - t0) / 1000);
    });
    return rate;
  });
}

workloads.push(
  {
    name: 'mm.fault_pages_per_s',
    target: '>= 2,000,000',
    async run() {
      const value = await best(3, async () => {
        let rate = 0;
        await inWorld(async (_e, _phys, mm) => {
          const t0 = performance.now();
          await touchAll(mm);
          rate = MM_PAGES / ((performance.now() - t0) / 1000);
        });
        return rate;
      });
      return { value: Math.round(value), unit: 'pages/s' };
    },
  },
  {
    name: 'mm.mprotect_pages_per_s',
    target: '>= 5,000,000',
    async run() {
      const value = await timedPagesPerSecond(
        3,
        async (mm, a) => {
          await mprotect(mm, a, MM_PAGES * PAGE_SIZE, PROT_READ);
        },
        (mm, a) => registerNotifiers(mm, a, MM_PAGES * PAGE_SIZE),
      );
      return { value: Math.round(value), unit: 'pages/s' };
    },
  },
  {
    name: 'mm.munmap_pages_per_s',
    target: '>= 3,000,000',
    async run() {
      const value = await timedPagesPerSecond(
        3,
        async (mm, a) => {
          await munmap(mm, a, MM_PAGES * PAGE_SIZE);
        },
        (mm, a) => registerNotifiers(mm, a, MM_PAGES * PAGE_SIZE),
      );
      return { value: Math.round(value), unit: 'pages/s' };
    },
  },
  {
    name: 'mm.bytes_per_page',
    target: '<= 64',
    async run() {
      const gc = (globalThis as { gc?: () => void }).gc;
      if (gc === undefined) throw new Error('mm.bytes_per_page needs node --expose-gc');
      const used = (): number => {
        gc();
        gc();
        const m = process.memoryUsage();
        return m.heapUsed + m.arrayBuffers;
      };
      let perPage = 0;
      await inWorld(async (_e, phys, mm) => {
        const a = await mmap(mm, 0, MM_PAGES * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
        const before = used();
        for (let i = 0; i < MM_PAGES; i++) await cpuWrite64(mm, a + i * PAGE_SIZE, BigInt(i + 1));
        perPage = (used() - before) / MM_PAGES;
        if (phys.usedSystemFrames() < MM_PAGES) throw new Error('bytes_per_page: pages were not resident');
      });
      return { value: Math.round(perPage * 10) / 10, unit: 'bytes/page' };
    },
  },
);

workloads.push(migrateWorkload, deviceWorkload);
