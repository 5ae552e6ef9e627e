/** src/sim: the deterministic simulation engine. */
export {
  EPERM,
  ENOENT,
  ESRCH,
  EINTR,
  EIO,
  EAGAIN,
  ENOMEM,
  EACCES,
  EFAULT,
  EBUSY,
  EEXIST,
  ENODEV,
  EINVAL,
  ENOSPC,
  EDEADLK,
  EOVERFLOW,
  EOPNOTSUPP,
  ETIMEDOUT,
  errnoName,
  isErr,
  KernelError,
  SimError,
  KernelBug,
  KernelWarning,
  LockdepError,
  DeadlockError,
  AtomicSleepError,
  UncontrolledAwaitError,
  RunawayError,
  ReplayDivergedError,
  TaskCrashedError,
} from './errors.js';
export type { SimErrorCode } from './errors.js';
export { Engine, Task, runResultToJSON } from './engine.js';
export type { EngineOptions, RunResult, TaskState, Waitable } from './engine.js';
export { Rng } from './rng.js';
export { TraceBus } from './trace.js';
export type { TraceEvent, TraceEventMap, TraceEventType } from './trace.js';
export { FifoStrategy, RandomStrategy, PctStrategy, ReplayStrategy, parseStrategy, makeStrategy } from './strategy.js';
export type { Strategy, StrategySpec, SchedTask } from './strategy.js';
export { formatSchedule, parseSchedule, scheduleFromJSON, encodeDecisions, decodeDecisions } from './decision-log.js';
export type { Schedule } from './decision-log.js';
export { Lockdep, LockClass } from './lockdep.js';
export type { Lockable, HeldLock, LockdepTask } from './lockdep.js';
export { SpinLock, Mutex, RwSemaphore } from './locks.js';
export type { LockOptions } from './locks.js';
export { WaitQueue, Completion } from './waitqueue.js';
export { runProgram, explore, replay } from './run.js';
export type { Program, RunOptions, ExploreOptions, ExploreResult, ReplayOptions } from './run.js';
