/**
 * mmu notifier events and ranges.
 *
 * Models: include/linux/mmu_notifier.h (enum mmu_notifier_event, struct mmu_notifier_range,
 * mmu_notifier_range_init, mmu_notifier_range_init_owner, mmu_notifier_range_blockable).
 *
 * A range is [start, end) with `end` exclusive, as the kernel's. Addresses are JS numbers;
 * ULONG_MAX_ADDR stands for the kernel's ULONG_MAX (the mm-teardown range ends there) and is
 * the largest exactly representable integer, so every address arithmetic here is exact.
 *
 * `flags` is written by the dispatch: mmu_notifier_invalidate_range_start() sets
 * MMU_NOTIFIER_RANGE_BLOCKABLE and the _nonblock() variant clears it, whatever the caller
 * passed to the init (as the kernel's inline wrappers do).
 */
import { EINVAL, type Engine, KernelError } from '../sim/index.js';
import type { NotifierMm } from './subscriptions.js';

/** enum mmu_notifier_event, in the kernel's order. */
export const MMU_NOTIFY_UNMAP = 0;
export const MMU_NOTIFY_CLEAR = 1;
export const MMU_NOTIFY_PROTECTION_VMA = 2;
export const MMU_NOTIFY_PROTECTION_PAGE = 3;
export const MMU_NOTIFY_SOFT_DIRTY = 4;
export const MMU_NOTIFY_RELEASE = 5;
export const MMU_NOTIFY_MIGRATE = 6;
export const MMU_NOTIFY_EXCLUSIVE = 7;

export type MmuNotifierEvent =
  | typeof MMU_NOTIFY_UNMAP
  | typeof MMU_NOTIFY_CLEAR
  | typeof MMU_NOTIFY_PROTECTION_VMA
  | typeof MMU_NOTIFY_PROTECTION_PAGE
  | typeof MMU_NOTIFY_SOFT_DIRTY
  | typeof MMU_NOTIFY_RELEASE
  | typeof MMU_NOTIFY_MIGRATE
  | typeof MMU_NOTIFY_EXCLUSIVE;

const EVENT_NAMES = [
  'MMU_NOTIFY_UNMAP',
  'MMU_NOTIFY_CLEAR',
  'MMU_NOTIFY_PROTECTION_VMA',
  'MMU_NOTIFY_PROTECTION_PAGE',
  'MMU_NOTIFY_SOFT_DIRTY',
  'MMU_NOTIFY_RELEASE',
  'MMU_NOTIFY_MIGRATE',
  'MMU_NOTIFY_EXCLUSIVE',
] as const;

/** The symbolic name of an event (`MMU_NOTIFY_UNMAP`), or `MMU_NOTIFY_<n>` for an unknown one. */
export function mmuNotifierEventName(event: number): string {
  return EVENT_NAMES[event] ?? `MMU_NOTIFY_${event}`;
}

/** range->flags: the callbacks may sleep. */
export const MMU_NOTIFIER_RANGE_BLOCKABLE = 1;

/**
 * The kernel's ULONG_MAX as an address: the end of the release range [0, ULONG_MAX) and the
 * largest `last` an interval notifier may have. 2^53 - 1, so that address arithmetic stays
 * exact in a double (user addresses are below TASK_SIZE = 2^47 anyway).
 */
export const ULONG_MAX_ADDR = Number.MAX_SAFE_INTEGER;


const nextRangeId = new WeakMap<Engine, number>();

/** struct mmu_notifier_range: one invalidation, [start, end). */
export class MmuNotifierRange {
  /** Unique per engine (per run), for traces. */
  readonly id: number;
  /**
   * @internal The 2015 active-range list membership: true from invalidate_range_start (when
   * the mm had subscriptions) until the range left `ranges`. Catches an end without a start.
   */
  published = false;
  /** @internal the itree side was started (active_invalidate_ranges++) and not yet ended. */
  itreeActive = false;

  event: MmuNotifierEvent;

  /** Throws KernelError(EINVAL) for an empty or out-of-range span, an unknown event or bad flags. */
  constructor(
    readonly mm: NotifierMm,
    public start: number,
    public end: number,
    event: number,
    public flags: number,
    public owner: unknown,
  ) {
    checkRange(start, end, event, flags);
    this.event = event as MmuNotifierEvent;
    const e = mm.engine;
    const id = (nextRangeId.get(e) ?? 0) + 1;
    nextRangeId.set(e, id);
    this.id = id;
  }

  toString(): string {
    return `range #${this.id} [${hex(this.start)}, ${hex(this.end)}) ${mmuNotifierEventName(this.event)}`;
  }
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function checkRange(start: number, end: number, event: number, flags: number): void {
  if (!Number.isSafeInteger(start) || start < 0) throw new KernelError(EINVAL, `mmu_notifier_range: start must be an integer >= 0: ${start}`);
  if (!Number.isSafeInteger(end) || end > ULONG_MAX_ADDR) throw new KernelError(EINVAL, `mmu_notifier_range: end must be an integer <= ULONG_MAX_ADDR: ${end}`);
  if (start >= end) throw new KernelError(EINVAL, `mmu_notifier_range: start must be below end: [${hex(start)}, ${hex(end)})`);
  if (!Number.isInteger(event) || event < MMU_NOTIFY_UNMAP || event > MMU_NOTIFY_EXCLUSIVE) throw new KernelError(EINVAL, `mmu_notifier_range: unknown event ${event}`);
  if (!Number.isInteger(flags) || flags < 0) throw new KernelError(EINVAL, `mmu_notifier_range: flags must be an integer >= 0: ${flags}`);
}

/** mmu_notifier_range_init: a new range (the kernel fills a caller's struct; we return one). */
export function mmuNotifierRangeInit(event: number, flags: number, mm: NotifierMm, start: number, end: number): MmuNotifierRange {
  return new MmuNotifierRange(mm, start, end, event, flags, null);
}

/** mmu_notifier_range_init_owner: as mmuNotifierRangeInit, with `owner` (MIGRATE, EXCLUSIVE). */
export function mmuNotifierRangeInitOwner(
  event: number,
  flags: number,
  mm: NotifierMm,
  start: number,
  end: number,
  owner: unknown,
): MmuNotifierRange {
  return new MmuNotifierRange(mm, start, end, event, flags, owner);
}

/** mmu_notifier_range_blockable: the callbacks may sleep. */
export function mmuNotifierRangeBlockable(range: MmuNotifierRange): boolean {
  return (range.flags & MMU_NOTIFIER_RANGE_BLOCKABLE) !== 0;
}
