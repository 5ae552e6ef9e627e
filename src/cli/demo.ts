/**
 * The engine demo that `npm start` runs until bundled scenarios exist: an ABBA lock-order bug
 * that deadlocks only under one kind of interleaving, found by PCT, replayed exactly from its
 * schedule string, and then caught by lockdep in a run that did not deadlock at all.
 */
import { DeadlockError, LockdepError, Mutex, explore, replay, runProgram, type Program, type RunResult } from '../sim/index.js';

/**
 * Two CPU threads. `munmap` takes mmap_lock then the driver's mutex; `driver` does setup work,
 * then takes its mutex and, while holding it, mmap_lock (the bug: the kernel's order is
 * mmap_lock -> driver lock). They deadlock only if the driver takes its mutex in the short
 * window after munmap took mmap_lock and before munmap reached the driver mutex.
 */
export function abbaProgram(opts: { sequential: boolean }): Program {
  return (e) => {
    const mmapLock = new Mutex(e, 'mmap_lock');
    const driverLock = new Mutex(e, 'driver.mutex');
    const munmap = e.spawn('munmap', async () => {
      for (let i = 0; i < 8; i++) await e.yield(); // page-table walk before the notifier
      await mmapLock.lock();
      await e.yield();
      await driverLock.lock(); // invalidate callback
      driverLock.unlock();
      mmapLock.unlock();
    });
    e.spawn('driver', async () => {
      if (opts.sequential) await munmap.join();
      for (let i = 0; i < 8; i++) await e.yield(); // fault batch setup
      await driverLock.lock();
      await e.yield();
      await mmapLock.lock(); // BUG: mmap_lock taken under the driver lock
      mmapLock.unlock();
      driverLock.unlock();
    });
  };
}

export interface DemoReport {
  readonly lines: string[];
  readonly ok: boolean;
}

export async function runDemo(schedules = 1000): Promise<DemoReport> {
  const lines: string[] = [];
  const say = (s = ''): void => {
    lines.push(s);
  };
  say('hmm-emu engine demo: an ABBA lock-order bug (mmap_lock vs a driver mutex)');
  say();
  say(`1. Explore up to ${schedules} PCT (depth 2) schedules with lockdep off, looking for a real deadlock.`);
  const found = await explore(abbaProgram({ sequential: false }), { strategy: 'pct:2', seed: 1, runs: schedules, lockdep: false });
  const fail: RunResult | null = found.firstFailure;
  if (fail === null || !(fail.failure instanceof DeadlockError)) {
    say(`   not found in ${found.runs} schedules`);
    return { lines, ok: false };
  }
  say(`   found after ${found.firstFailureAt} schedule(s): seed ${fail.seed}, strategy ${fail.strategy}, ${fail.steps} steps`);
  for (const b of fail.failure.blocked) say(`     ${b.task} blocked on ${b.waitsOn}`);
  say(`   schedule: ${fail.schedule}`);
  const rnd = await explore(abbaProgram({ sequential: false }), { strategy: 'random', seed: 1, runs: schedules, lockdep: false });
  say(`   (a random walk, for comparison: ${rnd.firstFailureAt === null ? `not found in ${rnd.runs}` : `found after ${rnd.firstFailureAt}`} schedules)`);
  say();
  say('2. Replay that schedule string.');
  const again = await replay(abbaProgram({ sequential: false }), fail.schedule, { lockdep: false });
  const same = again.failure?.message === fail.failure.message && again.steps === fail.steps;
  say(`   ${same ? 'identical deadlock reproduced' : 'MISMATCH'}: ${again.failure?.name} after ${again.steps} steps`);
  say();
  say('3. One fifo run with lockdep on, the threads strictly one after the other (no deadlock possible).');
  const seq = await runProgram(abbaProgram({ sequential: true }), { strategy: 'fifo' });
  const caught = seq.failure instanceof LockdepError;
  say(`   ${caught ? 'lockdep reports the inversion anyway:' : 'NOT CAUGHT'}`);
  for (const l of (seq.failure?.message ?? '').split('\n')) say(`     ${l}`);
  return { lines, ok: same && caught };
}
