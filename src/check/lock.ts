/**
 * Rule 5, lock discipline: lock-order inversions (lockdep), sleeping in atomic or
 * non-blockable context, deadlocks. The engine detects all three and fails the run with a
 * LockdepError, an AtomicSleepError or a DeadlockError; the oracle only classifies them, so
 * that a run's verdict reads the same whichever rule it broke.
 */
import { AtomicSleepError, DeadlockError, type Engine, LockdepError } from '../sim/index.js';
import { CoherencyViolation, ViolationReport } from './report.js';

/**
 * The report of a failed run's error: a CoherencyViolation's own report, a lock-discipline
 * report for the engine's lock errors, null for anything else (a crash, a KernelBug, ...).
 */
export function classifyFailure(engine: Engine, err: unknown): ViolationReport | null {
  if (err instanceof CoherencyViolation) return err.report;
  let check: 'lockdep' | 'deadlock' | 'sleep-in-atomic';
  const details: string[] = [];
  if (err instanceof LockdepError) check = 'lockdep';
  else if (err instanceof AtomicSleepError) check = 'sleep-in-atomic';
  else if (err instanceof DeadlockError) {
    check = 'deadlock';
    for (const b of err.blocked) details.push(`${b.task} waits on ${b.waitsOn}`);
  } else return null;
  return new ViolationReport(engine, { rule: 'lock', check, message: err.message.split('\n')[0]!, details });
}
