import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  Engine,
  Mutex,
  ReplayDivergedError,
  TaskCrashedError,
  UncontrolledAwaitError,
  WaitQueue,
  decodeDecisions,
  encodeDecisions,
  explore,
  formatSchedule,
  parseSchedule,
  replay,
  runProgram,
  scheduleFromJSON,
  type Program,
  type RunResult,
} from '../../src/sim/index.js';

/** A program with locks, a wait queue, sleeps and model choices; it records a trace hash. */
function busyProgram(out: { hash: string; order: string[] }): Program {
  return (e) => {
    const h = createHash('sha256');
    e.trace.onAny((ev) => {
      h.update(JSON.stringify(ev));
      if (ev.type === 'run.end') out.hash = h.digest('hex');
    });
    out.order = [];
    const m = new Mutex(e, 'm');
    const wq = new WaitQueue(e, 'wq');
    let produced = 0;
    for (const n of ['p1', 'p2', 'p3']) {
      e.spawn(n, async () => {
        for (let i = 0; i < 5; i++) {
          await m.lock();
          out.order.push(n);
          produced++;
          if (e.choose(3, 'delay') === 0) await e.sleep(10);
          m.unlock();
          wq.wakeUp();
          await e.yield();
        }
      });
    }
    e.spawn('consumer', async () => {
      await wq.waitEvent(() => produced === 15);
      out.order.push('done');
    });
  };
}

/** Two tasks increment a counter with a read-modify-write split by a yield: lost updates fail. */
const lostUpdate: Program = (e) => {
  let x = 0;
  const workers = ['a', 'b'].map((n) =>
    e.spawn(n, async () => {
      for (let i = 0; i < 3; i++) {
        const v = x;
        await e.yield();
        x = v + 1;
      }
    }),
  );
  e.spawn('checker', async () => {
    for (const w of workers) await w.join();
    if (x !== 6) throw new Error(`lost update: x = ${x}`);
  });
};

describe('determinism', () => {
  it('the same seed and strategy give an identical trace', async () => {
    for (const strategy of ['random', 'pct:3', 'fifo']) {
      const a = { hash: '', order: [] as string[] };
      const b = { hash: '', order: [] as string[] };
      const ra = await runProgram(busyProgram(a), { seed: 1234, strategy });
      const rb = await runProgram(busyProgram(b), { seed: 1234, strategy });
      expect(ra.ok).toBe(true);
      expect(a.hash).toHaveLength(64);
      expect(a.hash).toBe(b.hash);
      expect(ra.decisions).toEqual(rb.decisions);
      expect(ra.schedule).toBe(rb.schedule);
    }
  });

  it('different seeds give different interleavings', async () => {
    const hashes = new Set<string>();
    const orders = new Set<string>();
    for (let seed = 0; seed < 20; seed++) {
      const o = { hash: '', order: [] as string[] };
      await runProgram(busyProgram(o), { seed, strategy: 'random' });
      hashes.add(o.hash);
      orders.add(o.order.join(','));
    }
    expect(hashes.size).toBe(20);
    expect(orders.size).toBeGreaterThan(15);
  });

  it('replaying a failing run reproduces it exactly, failure included', async () => {
    const found = await explore(lostUpdate, { strategy: 'random', seed: 0, runs: 100 });
    const fail = found.firstFailure;
    expect(fail).not.toBeNull();
    expect(fail!.failure).toBeInstanceOf(TaskCrashedError);

    const again = await replay(lostUpdate, fail!.schedule);
    expect(again.ok).toBe(false);
    expect(again.failure?.message).toBe(fail!.failure?.message);
    expect(again.decisions).toEqual(fail!.decisions);
    expect(again.steps).toBe(fail!.steps);
    expect(again.schedule).toBe(fail!.schedule);

    // And from the JSON form.
    const json = JSON.parse(JSON.stringify({ seed: fail!.seed, strategy: fail!.strategy, decisions: fail!.decisions })) as unknown;
    const fromJson = await replay(lostUpdate, scheduleFromJSON(json));
    expect(fromJson.failure?.message).toBe(fail!.failure?.message);

    // And by rerunning its seed and strategy.
    const rerun = await runProgram(lostUpdate, { seed: fail!.seed, strategy: fail!.strategy });
    expect(rerun.failure?.message).toBe(fail!.failure?.message);
  });

  it('a strict replay that meets a decision it cannot make fails with ReplayDivergedError', async () => {
    const bad = { seed: 0, strategy: 'random', decisions: [99] };
    const r = await replay(lostUpdate, bad);
    expect(r.failure).toBeInstanceOf(ReplayDivergedError);
    expect(r.failure?.message).toContain('recorded task #99 is not runnable');
  });

  it('a lenient replay of a truncated log falls back to default choices and completes', async () => {
    const r = await replay(lostUpdate, { seed: 0, strategy: 'random', decisions: [2] }, { strict: false });
    expect(r.steps).toBeGreaterThan(1);
    const strict = await replay(lostUpdate, { seed: 0, strategy: 'random', decisions: [2] });
    expect(strict.failure?.message).toContain('ran out of decisions');
  });
});

describe('PCT', () => {
  /**
   * The planted bug needs exactly one preemption: A must run its 10 setup steps without B
   * running (B's single check would pass early), then B must run while A is in its 40-step
   * window. PCT (d = 2) finds it whenever A has the higher priority and the change point lands
   * in the window; a random walk must first avoid B for 11 picks in a row.
   */
  const planted: Program = (e) => {
    let inWindow = false;
    e.spawn('A', async () => {
      for (let i = 0; i < 10; i++) await e.yield();
      inWindow = true;
      for (let i = 0; i < 40; i++) await e.yield();
      inWindow = false;
    });
    e.spawn('B', async () => {
      if (inWindow) throw new Error('B ran inside A\'s window');
    });
  };

  it('PCT d=2 finds a one-preemption bug in >= 20% of 200 seeds; random walk far less often', async () => {
    const pct = await explore(planted, { strategy: 'pct:2', seed: 0, runs: 200, stopOnFailure: false });
    const rnd = await explore(planted, { strategy: 'random', seed: 0, runs: 200, stopOnFailure: false });
    const pctFound = pct.failures.length;
    const rndFound = rnd.failures.length;
    expect(pctFound).toBeGreaterThanOrEqual(40);
    expect(rndFound * 4).toBeLessThan(pctFound);
    // Each PCT failure replays from its own schedule.
    const first = pct.firstFailure!;
    expect((await replay(planted, first.schedule)).failure?.message).toBe(first.failure?.message);
  });

  it('PCT with depth 1 never finds it (it needs a preemption)', async () => {
    const r = await explore(planted, { strategy: 'pct:1', seed: 0, runs: 100, stopOnFailure: false });
    expect(r.failures).toHaveLength(0);
  });

  it('a PCT spec without k is completed with an estimate, recorded in the result', async () => {
    const r = await runProgram(planted, { seed: 3, strategy: 'pct:2' });
    expect(r.strategy).toMatch(/^pct:2:k=\d+$/);
  });
});

describe('uncontrolled awaits', () => {
  it('awaiting a raw promise that never settles is reported with the task name, not a hang', async () => {
    const e = new Engine();
    e.spawn('driver-worker', async () => {
      await new Promise<void>(() => {});
    });
    e.spawn('other', async () => {
      await e.yield();
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(UncontrolledAwaitError);
    expect((r.failure as UncontrolledAwaitError).task).toBe('driver-worker');
  });

  it('awaiting a host timer is reported', async () => {
    const e = new Engine();
    e.spawn('sleeper', async () => {
      await new Promise((res) => setTimeout(res, 0));
    });
    const r = await e.run();
    expect(r.failure).toBeInstanceOf(UncontrolledAwaitError);
    expect(r.failure?.message).toContain('task sleeper awaited something the engine does not control');
  });

  it('awaiting an already-settled promise or a plain async helper is fine', async () => {
    const e = new Engine();
    const helper = async (): Promise<number> => 5;
    e.spawn('t', async () => {
      await Promise.resolve();
      expect(await helper()).toBe(5);
      await e.sleep(1);
    });
    expect((await e.run()).ok).toBe(true);
  });
});

describe('schedule strings', () => {
  it('decision encoding round-trips', () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(fc.nat(5), fc.nat(1_000_000)), { maxLength: 300 }), (ds) => {
        expect(decodeDecisions(encodeDecisions(ds))).toEqual(ds);
      }),
    );
  });

  it('schedule strings round-trip and are short for repetitive logs', () => {
    const s = { seed: 77, strategy: 'pct:2:k=51', decisions: [...Array(1000).fill(1), 2, 2, 1] as number[] };
    const text = formatSchedule(s);
    expect(text.length).toBeLessThan(40);
    expect(parseSchedule(text)).toEqual(s);
  });

  it('malformed schedule strings are EINVAL naming the problem', () => {
    expect(() => parseSchedule('nope')).toThrow(/not a schedule string/);
    expect(() => parseSchedule('hmm1;random;-3;AA')).toThrow(/seed/);
    expect(() => parseSchedule('hmm1;random;1;!!')).toThrow(/base64url/);
    expect(() => parseSchedule('hmm1;random;1;gA')).toThrow(/truncated/);
    expect(() => scheduleFromJSON({ seed: 1, strategy: 'random', decisions: [-1] })).toThrow(/non-negative/);
  });

  it('a run result exposes its schedule lazily and it matches its decisions', async () => {
    const r: RunResult = await runProgram(lostUpdate, { seed: 5, strategy: 'random' });
    expect(parseSchedule(r.schedule).decisions).toEqual(r.decisions);
  });
});

describe('host resources', () => {
  it('a finished run leaves no host timer armed, so runs explored back to back do not keep their worlds alive', async () => {
    // Regression: the uncontrolled-await watchdog stayed armed after each run; an exploration
    // never yields to the host, so every run's engine (and world) stayed reachable: 4 GB of
    // RSS for `hmm-emu check`.
    const armed = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Immediate' || r === 'Timeout').length;
    const before = armed();
    const r = await explore(
      (engine) => {
        engine.spawn('a', async () => {
          await engine.sleep(10);
        });
      },
      { runs: 20, strategy: 'random' },
    );
    expect(r.runs).toBe(20);
    expect(armed()).toBe(before);
  });
});
