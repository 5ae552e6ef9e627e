/**
 * Many CPU threads faulting one device page at once: two pages are migrated to device-private
 * memory, then four CPU threads write and read them together (each CPU touch of a
 * device-private entry is a do_swap_page -> migrate_to_ram: one thread wins the page lock and
 * migrates, the others wait for it or retry on the new entry), while the device increments its
 * own counter on the pages and the driver migrates them back to device memory at two chosen
 * moments, so the pile-up happens again in the middle of the threads' work.
 *
 * Each thread writes only its own word (thread t: page t % 2, word 2 + t / 2) and reads every
 * other thread's, and all four increment a shared counter (page 0, word 0) under a scenario
 * mutex, a user-space lock: every increment is a read and a write that a lost migration would
 * undo. A correct driver copies the page once, under the page lock, before the CPU entry
 * points at the new frame, frees the device page only when its last reference goes, and never
 * maps a page it no longer owns. A migrate_to_ram that copies a stale page, runs twice for one
 * page or drops the device page while another thread still uses it loses a write or reads
 * freed memory: the oracle flags it (data, use after free, translation), and the check finds
 * the counter short or a thread's word not its last value. A device page whose reference is
 * dropped once too often or never is a teardown audit failure (freed while mapped, leaked).
 */
import { Mutex, PAGE_SIZE, type ScenarioContext, type WarpContext, cpuRead64, cpuWrite64, defineScenario, deviceTask } from 'hmm-emu';

const PAGES = 2;
const THREADS = 4;
const ROUNDS = 3;
const DEVICE_ROUNDS = 4;
const MIGRATIONS = 2;
/** Virtual ns each thread works between rounds (the threads stay in step: they fault together). */
const THINK_NS = 1500;
/** Virtual ns the device works between its rounds. */
const DEVICE_PAUSE_NS = 500;
const BUF = 0x10_0000_0000;
const addr = (page: number, word: number): number => BUF + page * PAGE_SIZE + 8 * word;
/** Thread t's own word. */
const ownWord = (t: number): number => addr(t % PAGES, 2 + Math.floor(t / PAGES));
const thrVal = (t: number, round: number): bigint => BigInt(0x7000 + t * 0x100 + round);
/** The shared counter (under the scenario mutex) and the device's counter (its atomics only). */
const COUNTER = addr(0, 0);
const DEV_COUNTER = addr(1, 0);

interface State {
  /** The user-space lock of the shared counter (made in setup: it needs the run's engine). */
  lock: Mutex | null;
}

/** One CPU thread: own word, every other word, the shared counter; ROUNDS times. */
function cpuThread(t: number) {
  return async (ctx: ScenarioContext<State>): Promise<void> => {
    const lock = ctx.state.lock!;
    for (let r = 1; r <= ROUNDS; r++) {
      await cpuWrite64(ctx.mm, ownWord(t), thrVal(t, r));
      // The oracle checks each read returns the last write of that word.
      for (let o = 0; o < THREADS; o++) if (o !== t) await cpuRead64(ctx.mm, ownWord(o));
      await lock.lock();
      try {
        const n = await cpuRead64(ctx.mm, COUNTER);
        await cpuWrite64(ctx.mm, COUNTER, n + 1n);
      } finally {
        lock.unlock();
      }
      // Our own word must still hold what we wrote: nobody else writes it.
      ctx.expectEqual(await cpuRead64(ctx.mm, ownWord(t)), thrVal(t, r), `thread ${t} round ${r}: own word`);
      ctx.bump('cpu');
      await ctx.sleep(THINK_NS);
    }
  };
}

async function deviceSide(ctx: ScenarioContext<State>, w: WarpContext): Promise<void> {
  for (let r = 0; r < DEVICE_ROUNDS; r++) {
    await w.atomicAdd(DEV_COUNTER, 8, 1);
    ctx.bump('device');
    await w.load(ownWord(r % THREADS), 8); // a thread's word: the oracle checks the value
    await w.load(COUNTER, 8);
    await ctx.sleep(DEVICE_PAUSE_NS);
  }
}

export const manyCpuThreadsOneDevicePage = defineScenario<State>({
  name: 'many-cpu-threads-one-device-page',
  description:
    'Four CPU threads fault the same device-private pages at once (each a migrate_to_ram) while the device increments a counter there and the driver migrates the pages back to device memory at chosen moments; every read must see the last write and no thread may lose one.',
  origin:
    'bug class 9 (linux-hmm.md §8): device-private fault races, many CPU threads faulting one device page in do_swap_page -> migrate_to_ram (page lock, refcount of device pages, the fixes to their locking)',
  tags: ['race', 'migration', 'device-private', 'migrate_to_ram', 'threads'],
  world: { frames: 128, devices: [{ name: 'gpu0', memoryFrames: 8 }] },
  drivers: { features: ['device-migration'] },
  state: (): State => ({ lock: null }),
  async setup(ctx) {
    ctx.state.lock = new Mutex(ctx.engine, 'scenario.counter');
    await ctx.mmap(PAGES, { addr: BUF });
    for (let t = 0; t < THREADS; t++) await cpuWrite64(ctx.mm, ownWord(t), thrVal(t, 0));
    await cpuWrite64(ctx.mm, COUNTER, 0n);
    await cpuWrite64(ctx.mm, DEV_COUNTER, 0n);
    const ret = await ctx.device().migrateToDevice(BUF, PAGES);
    ctx.expect(ret >= 0, `migrate to device: ${ret}`);
  },
  tasks: {
    ...Object.fromEntries(Array.from({ length: THREADS }, (_, t) => [`cpu${t}`, cpuThread(t)])),
    gpu: deviceTask({ kernel: deviceSide }),
    async migrator(ctx) {
      for (let i = 0; i < MIGRATIONS; i++) {
        await ctx.racePoint({ counter: 'cpu', max: THREADS * ROUNDS, until: Array.from({ length: THREADS }, (_, t) => `cpu${t}`), jitterNs: 200, label: `migration ${i}` });
        // Best effort: a page a CPU thread holds locked right now stays where it is (dmirror
        // then reports -ENOENT for the pages it could not read back), so no result is asserted.
        ctx.log(`migrate to device ${i}: ${await ctx.device().migrateToDevice(BUF, PAGES)}`);
      }
    },
  },
  async check(ctx) {
    ctx.expectEqual(await cpuRead64(ctx.mm, COUNTER), BigInt(THREADS * ROUNDS), 'shared counter (increments under the mutex)');
    ctx.expectEqual(await cpuRead64(ctx.mm, DEV_COUNTER), BigInt(DEVICE_ROUNDS), 'device counter');
    for (let t = 0; t < THREADS; t++) ctx.expectEqual(await cpuRead64(ctx.mm, ownWord(t)), thrVal(t, ROUNDS), `thread ${t}: own word`);
  },
});
