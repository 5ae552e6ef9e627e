/**
 * Errors of the simulation.
 *
 * Two families, as in the kernel:
 * - Error numbers a driver is expected to handle (`-EBUSY`, `-EFAULT`, ...) are returned as
 *   negative numbers, never thrown. `KernelError` carries one when a caller passes bad input
 *   across a public boundary (an unaligned address, a negative sleep): the call throws, and
 *   the state is exactly as before.
 * - Contract violations and bugs (BUG_ON, a lock-order inversion, a deadlock, sleeping in
 *   atomic context) throw a `SimError` subclass with a stable `code` and fail the run.
 */

/** Kernel error numbers (positive, as in include/uapi/asm-generic/errno-base.h). */
export const EPERM = 1;
export const ENOENT = 2;
export const ESRCH = 3;
export const EINTR = 4;
export const EIO = 5;
export const EAGAIN = 11;
export const ENOMEM = 12;
export const EACCES = 13;
export const EFAULT = 14;
export const EBUSY = 16;
export const EEXIST = 17;
export const ENODEV = 19;
export const EINVAL = 22;
export const ENOSPC = 28;
export const EDEADLK = 35;
export const EOVERFLOW = 75;
export const EOPNOTSUPP = 95;
export const ETIMEDOUT = 110;

const ERRNO_NAMES: Readonly<Record<number, string>> = {
  [EPERM]: 'EPERM',
  [ENOENT]: 'ENOENT',
  [ESRCH]: 'ESRCH',
  [EINTR]: 'EINTR',
  [EIO]: 'EIO',
  [EAGAIN]: 'EAGAIN',
  [ENOMEM]: 'ENOMEM',
  [EACCES]: 'EACCES',
  [EFAULT]: 'EFAULT',
  [EBUSY]: 'EBUSY',
  [EEXIST]: 'EEXIST',
  [ENODEV]: 'ENODEV',
  [EINVAL]: 'EINVAL',
  [ENOSPC]: 'ENOSPC',
  [EDEADLK]: 'EDEADLK',
  [EOVERFLOW]: 'EOVERFLOW',
  [EOPNOTSUPP]: 'EOPNOTSUPP',
  [ETIMEDOUT]: 'ETIMEDOUT',
};

/** The symbolic name of an error number; accepts `-EFAULT` as well as `EFAULT`. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[Math.abs(errno)] ?? `E${Math.abs(errno)}`;
}

/** True when `ret` is a negative error number (the kernel's IS_ERR_VALUE for ints). */
export function isErr(ret: number): boolean {
  return ret < 0;
}

/**
 * Bad input at a public boundary. `errno` is positive (`EINVAL`), `name` its symbol. The
 * message says what was wrong and shows the bad value. The call that threw changed nothing.
 */
export class KernelError extends Error {
  override readonly name = 'KernelError';
  readonly code: string;
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(`${errnoName(errno)}: ${message}`);
    this.code = errnoName(errno);
  }
}

/** Stable codes of the bug classes. */
export type SimErrorCode =
  | 'KERNEL_BUG'
  | 'KERNEL_WARNING'
  | 'LOCKDEP'
  | 'DEADLOCK'
  | 'SLEEP_IN_ATOMIC'
  | 'UNCONTROLLED_AWAIT'
  | 'RUNAWAY'
  | 'REPLAY_DIVERGED'
  | 'TASK_CRASHED'
  | 'COHERENCY_VIOLATION';

/** Base of the bug classes: a violated contract that fails the run. */
export abstract class SimError extends Error {
  abstract readonly code: SimErrorCode;
}

/** BUG_ON: an internal invariant or an API contract was violated. */
export class KernelBug extends SimError {
  override readonly name = 'KernelBug';
  readonly code = 'KERNEL_BUG' as const;
}

/** A WARN_ON made fatal by `EngineOptions.warnFatal`. */
export class KernelWarning extends SimError {
  override readonly name = 'KernelWarning';
  readonly code = 'KERNEL_WARNING' as const;
}

/** A lock-order inversion (even in a run that did not deadlock), recursive locking or a bad unlock. */
export class LockdepError extends SimError {
  override readonly name = 'LockdepError';
  readonly code = 'LOCKDEP' as const;
}

/** No task can run and no timer is pending, yet some tasks are blocked. */
export class DeadlockError extends SimError {
  override readonly name = 'DeadlockError';
  readonly code = 'DEADLOCK' as const;
  constructor(
    message: string,
    /** Each blocked task and what it waits on. */
    readonly blocked: ReadonlyArray<{ readonly task: string; readonly waitsOn: string }>,
  ) {
    super(message);
  }
}

/** A scheduling point (sleep, block, yield) in atomic or non-blocking context. */
export class AtomicSleepError extends SimError {
  override readonly name = 'AtomicSleepError';
  readonly code = 'SLEEP_IN_ATOMIC' as const;
}

/** A task awaited a promise, timer or I/O that the engine does not control. */
export class UncontrolledAwaitError extends SimError {
  override readonly name = 'UncontrolledAwaitError';
  readonly code = 'UNCONTROLLED_AWAIT' as const;
  constructor(
    message: string,
    readonly task: string,
  ) {
    super(message);
  }
}

/** The run exceeded its step limit (a livelock or a run-away loop). */
export class RunawayError extends SimError {
  override readonly name = 'RunawayError';
  readonly code = 'RUNAWAY' as const;
}

/** A strict replay met a decision that the recorded log cannot satisfy. */
export class ReplayDivergedError extends SimError {
  override readonly name = 'ReplayDivergedError';
  readonly code = 'REPLAY_DIVERGED' as const;
}

/** A task threw something that is not a SimError (a crash in model or driver code). */
export class TaskCrashedError extends SimError {
  override readonly name = 'TaskCrashedError';
  readonly code = 'TASK_CRASHED' as const;
  constructor(
    message: string,
    readonly task: string,
    override readonly cause: unknown,
  ) {
    super(message);
  }
}
