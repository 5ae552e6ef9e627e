/** src/notifier: mmu notifiers (classic ops, the 2015 active-range tracking, interval notifiers). */
export {
  MMU_NOTIFY_UNMAP,
  MMU_NOTIFY_CLEAR,
  MMU_NOTIFY_PROTECTION_VMA,
  MMU_NOTIFY_PROTECTION_PAGE,
  MMU_NOTIFY_SOFT_DIRTY,
  MMU_NOTIFY_RELEASE,
  MMU_NOTIFY_MIGRATE,
  MMU_NOTIFY_EXCLUSIVE,
  MMU_NOTIFIER_RANGE_BLOCKABLE,
  ULONG_MAX_ADDR,
  MmuNotifierRange,
  mmuNotifierEventName,
  mmuNotifierRangeInit,
  mmuNotifierRangeInitOwner,
  mmuNotifierRangeBlockable,
} from './range.js';
export type { MmuNotifierEvent } from './range.js';
export { MmuNotifierSubscriptions, mmHasNotifiers } from './subscriptions.js';
export type { NotifierMm } from './subscriptions.js';
export type { IntervalTree } from './itree.js';
export { MmuNotifier, mmuNotifierRegister, __mmuNotifierRegister, mmuNotifierUnregister } from './classic.js';
export type { MmuNotifierOps } from './classic.js';
export {
  MmuIntervalNotifier,
  mmuIntervalNotifierInsert,
  mmuIntervalNotifierInsertLocked,
  mmuIntervalNotifierRemove,
  mmuIntervalReadBegin,
  mmuIntervalReadRetry,
  mmuIntervalCheckRetry,
  mmuIntervalSetSeq,
} from './interval.js';
export type { MmuIntervalNotifierOps } from './interval.js';
export { mmuNotifierRangeIsValidLocked, mmuNotifierRangeIsValid, mmuNotifierRangeWaitValid } from './ranges2015.js';
export {
  mmuNotifierInvalidateRangeStart,
  mmuNotifierInvalidateRangeStartNonblock,
  mmuNotifierInvalidateRangeEnd,
  mmuNotifierRelease,
  mmuNotifierClearFlushYoung,
  mmuNotifierClearYoung,
  mmuNotifierTestYoung,
  mmuNotifierArchInvalidateSecondaryTlbs,
  mmuNotifierSubscriptionsDestroy,
} from './dispatch.js';
