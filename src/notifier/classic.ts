/**
 * Classic mmu notifiers: struct mmu_notifier + mmu_notifier_ops, registration, and the
 * hlist side of every dispatch.
 *
 * Models: mm/mmu_notifier.c (+ the 2015 patch): __mmu_notifier_register,
 * mmu_notifier_register, mmu_notifier_unregister, mn_hlist_invalidate_range_start,
 * mn_hlist_invalidate_end, mn_hlist_release, __mmu_notifier_clear_flush_young,
 * __mmu_notifier_clear_young, __mmu_notifier_test_young,
 * __mmu_notifier_arch_invalidate_secondary_tlbs.
 *
 * The list is an hlist walked under SRCU (srcu.ts): a notifier is added at the head
 * (hlist_add_head_rcu) and unlinked with its `next` left intact (hlist_del_init_rcu), so a
 * reader standing on it, possibly asleep in its callback, walks on correctly; the notifier is
 * not reused until synchronize_srcu (in unregister) has waited for such readers.
 * List changes happen under subscriptions.lock; registration also holds mmap_lock for write
 * (and mm_take_all_locks when the mm provides it), so no invalidation is in flight then.
 *
 * Lifetime: register -> [->release from exit_mmap (mmuNotifierRelease), which unlinks it]
 * -> mmuNotifierUnregister (calls ->release unless exit_mmap already did, unlinks, waits for
 * SRCU readers). After unregister returns, no callback of the notifier runs or will run.
 */
import { EAGAIN, EEXIST, EINVAL, KernelError } from '../sim/index.js';
import { type MmuNotifierRange, mmuNotifierRangeBlockable } from './range.js';
import { notifierSrcu } from './srcu.js';
import { MmuNotifierSubscriptions, type NotifierMm, traceCallback } from './subscriptions.js';

/** struct mmu_notifier_ops. Every op is optional. */
export interface MmuNotifierOps {
  /**
   * Called by mmu_notifier_unregister, or by exit_mmap (mmuNotifierRelease) if that comes
   * first, before the mm's pages are freed: tear down every secondary mapping. May sleep.
   */
  release?(sub: MmuNotifier, mm: NotifierMm): Promise<void> | void;
  /**
   * From invalidate_range_start: stop using the range. May sleep when the range is blockable.
   * Returns 0, or -EAGAIN only when the range is not blockable (then it must not implement
   * invalidateRangeEnd: it is called on every notifier's end at once, see the dispatch).
   */
  invalidateRangeStart?(sub: MmuNotifier, range: MmuNotifierRange): Promise<number> | number;
  /** From invalidate_range_end: the CPU page table is updated; secondary mappings may be rebuilt after it. */
  invalidateRangeEnd?(sub: MmuNotifier, range: MmuNotifierRange): Promise<void> | void;
  /** Test-and-clear the accessed bit of secondary mappings of [start, end) and flush them. Cannot sleep. */
  clearFlushYoung?(sub: MmuNotifier, mm: NotifierMm, start: number, end: number): boolean | number;
  /** As clearFlushYoung without the flush. Cannot sleep. */
  clearYoung?(sub: MmuNotifier, mm: NotifierMm, start: number, end: number): boolean | number;
  /** Test the accessed bit of the secondary mapping of `address`. Cannot sleep. */
  testYoung?(sub: MmuNotifier, mm: NotifierMm, address: number): boolean | number;
  /**
   * For a secondary TLB that shares the CPU page table (IOMMU SVA): called under the PTL,
   * cannot sleep. A notifier implements this or invalidateRangeStart/End, not both.
   */
  archInvalidateSecondaryTlbs?(sub: MmuNotifier, mm: NotifierMm, start: number, end: number): void;
}

/** struct mmu_notifier. */
export class MmuNotifier {
  /** The mm it is registered on (set by register, cleared by unregister), or null. */
  mm: NotifierMm | null = null;
  /** @internal hlist link: the next (older) notifier; left intact on unlink (RCU). */
  next: MmuNotifier | null = null;
  /** @internal on the list (!hlist_unhashed). */
  hashed = false;
  /** get/put users (mmu_notifier_get); 1 after register. */
  users = 0;
  private givenName: string | undefined;

  constructor(
    readonly ops: MmuNotifierOps,
    name?: string,
  ) {
    if (typeof ops !== 'object' || ops === null) throw new KernelError(EINVAL, `MmuNotifier: ops must be an object: ${String(ops)}`);
    if (name !== undefined && (typeof name !== 'string' || name.length === 0)) throw new KernelError(EINVAL, `MmuNotifier: name must be a non-empty string: ${JSON.stringify(name)}`);
    this.givenName = name;
  }

  /** For traces: the given name, else one assigned at registration (`classic#1@mm1`). */
  get name(): string {
    return this.givenName ?? 'mmu_notifier';
  }

  /** @internal */
  nameIfUnnamed(name: string): void {
    this.givenName ??= name;
  }

  toString(): string {
    return `mmu_notifier ${this.name}`;
  }
}

function traceRegistration(mm: NotifierMm, type: 'notifier.register' | 'notifier.unregister', sub: string, kind: 'interval' | 'classic'): void {
  const t = mm.engine.trace;
  if (t.active && t.wants(type)) t.emit(type, { mm: mm.id, sub, kind });
}

/**
 * __mmu_notifier_register: the caller holds mmap_lock for write. `sub` null registers the mm
 * for interval notifiers (has_itree), as mmu_interval_notifier_insert does.
 * Returns 0, or -EINVAL (with a WARN) for a notifier that has both archInvalidateSecondaryTlbs
 * and invalidateRangeStart/End, or the error of mmTakeAllLocks.
 * Throws KernelError(EEXIST) if `sub` is already registered (the kernel would corrupt its list).
 */
export async function __mmuNotifierRegister(sub: MmuNotifier | null, mm: NotifierMm): Promise<number> {
  const e = mm.engine;
  mm.mmapLock.assertWriteLocked();
  if (sub !== null) {
    if (!(sub instanceof MmuNotifier)) throw new KernelError(EINVAL, `mmu_notifier_register: not an MmuNotifier: ${String(sub)}`);
    if (sub.mm !== null) throw new KernelError(EEXIST, `mmu_notifier_register: ${sub} is already registered on mm #${sub.mm.id}`);
    const ops = sub.ops;
    if (e.warnOn(ops.archInvalidateSecondaryTlbs !== undefined && (ops.invalidateRangeStart !== undefined || ops.invalidateRangeEnd !== undefined), `${sub}: arch_invalidate_secondary_tlbs together with invalidate_range_start/end`)) {
      return -EINVAL;
    }
  }
  // kmalloc cannot run under mm_take_all_locks; mm->notifier_subscriptions cannot change
  // while we hold mmap_lock for write.
  const created = mm.notifierSubscriptions === null ? new MmuNotifierSubscriptions(mm) : null;
  if (mm.mmTakeAllLocks !== undefined) {
    const ret = await mm.mmTakeAllLocks();
    if (ret !== 0) return ret;
  }
  if (created !== null) mm.notifierSubscriptions = created;
  const subs = mm.notifierSubscriptions!;
  if (sub !== null) {
    sub.nameIfUnnamed(subs.defaultName('classic'));
    sub.mm = mm; // pairs with the mmdrop in mmu_notifier_unregister
    sub.users = 1;
    subs.lock.lock();
    sub.next = subs.first;
    subs.first = sub;
    sub.hashed = true;
    subs.lock.unlock();
  } else {
    subs.hasItree = true;
  }
  mm.mmDropAllLocks?.();
  if (sub !== null) traceRegistration(mm, 'notifier.register', sub.name, 'classic');
  return 0;
}

/**
 * mmu_notifier_register: takes mmap_lock for write around __mmuNotifierRegister. The caller
 * must not hold mmap_lock nor any other VM lock.
 */
export async function mmuNotifierRegister(sub: MmuNotifier | null, mm: NotifierMm): Promise<number> {
  await mm.mmapLock.downWrite();
  try {
    return await __mmuNotifierRegister(sub, mm);
  } finally {
    mm.mmapLock.upWrite();
  }
}

/** Unlinks `sub` from the list, leaving sub.next intact for SRCU readers. Caller holds subs.lock. */
function hlistDelInitRcu(subs: MmuNotifierSubscriptions, sub: MmuNotifier): void {
  if (!sub.hashed) return;
  if (subs.first === sub) subs.first = sub.next;
  else {
    let p = subs.first;
    while (p !== null && p.next !== sub) p = p.next;
    if (p !== null) p.next = sub.next;
  }
  sub.hashed = false;
}

/**
 * mmu_notifier_unregister: calls ->release unless exit_mmap already did, unlinks `sub`, then
 * waits (synchronize_srcu) for every callback of it that may still run. On return no callback
 * of `sub` runs or will run. It sleeps: calling it from a callback deadlocks, as in the kernel.
 * Throws KernelError(EINVAL) if `sub` is not registered on `mm`.
 */
export async function mmuNotifierUnregister(sub: MmuNotifier, mm: NotifierMm): Promise<void> {
  if (!(sub instanceof MmuNotifier) || sub.mm !== mm) {
    throw new KernelError(EINVAL, `mmu_notifier_unregister: ${String(sub)} is not registered on mm #${mm.id}`);
  }
  const e = mm.engine;
  e.mightSleep('mmu_notifier_unregister');
  const subs = mm.notifierSubscriptions!;
  const srcu = notifierSrcu(e);
  if (sub.hashed) {
    // SRCU here makes exit_mmap (mn_hlist_release's synchronize_srcu) wait for ->release.
    const idx = srcu.readLock();
    try {
      const release = sub.ops.release;
      if (release !== undefined) {
        await e.yield();
        await release.call(sub.ops, sub, mm);
        traceCallback(mm, 0, sub.name, 'classic', 'release', null);
      }
    } finally {
      srcu.readUnlock(idx);
    }
    subs.lock.lock();
    // Not list_del_rcu: mn_hlist_release may have unlinked it before we took the lock.
    hlistDelInitRcu(subs, sub);
    subs.lock.unlock();
  }
  // Wait for any running method, including ->release run by mmu_notifier_release.
  await srcu.synchronize();
  sub.mm = null;
  sub.users = 0;
  sub.next = null;
  traceRegistration(mm, 'notifier.unregister', sub.name, 'classic');
}

/**
 * mn_hlist_invalidate_range_start. Every notifier's start is called even after one fails
 * ("there is no way for a notifier to know if its start method failed"); if any failed, the
 * end of every notifier that has one is called at once, since the caller of a failed
 * non-blockable start does not call invalidate_range_end. A failure on a blockable range, or
 * other than -EAGAIN, is a WARN (and still takes that path, as the kernel does).
 * For a non-blockable range the caller runs this in non-blocking context.
 */
export async function mnHlistInvalidateRangeStart(subs: MmuNotifierSubscriptions, range: MmuNotifierRange): Promise<number> {
  const mm = subs.mm;
  const e = mm.engine;
  const blockable = mmuNotifierRangeBlockable(range);
  const srcu = notifierSrcu(e);
  const idx = srcu.readLock();
  let ret = 0;
  try {
    for (let sub = subs.first; sub !== null; sub = sub.next) {
      const ops = sub.ops;
      const start = ops.invalidateRangeStart;
      if (start === undefined) continue;
      if (blockable) await e.yield();
      const r = await start.call(ops, sub, range);
      traceCallback(mm, range.id, sub.name, 'classic', 'start', r);
      if (r !== 0) {
        e.warnOn(blockable || r !== -EAGAIN, `${sub}: invalidate_range_start failed with ${r} in ${blockable ? '' : 'non-'}blockable context`);
        // A start that can fail cannot also have an end: nothing tells it its start failed.
        e.warnOn(ops.invalidateRangeEnd !== undefined, `${sub}: invalidate_range_start failed but the notifier has invalidate_range_end`);
        ret = r;
      }
    }
    if (ret !== 0) {
      // Must be non-blocking to get here (else WARNed above). Notifiers that succeeded start
      // expect their end: call every end now.
      await callEnds(subs, range, blockable);
    }
  } finally {
    srcu.readUnlock(idx);
  }
  return ret;
}

/** Every classic ->invalidate_range_end, newest first (caller holds the SRCU read side). */
async function callEnds(subs: MmuNotifierSubscriptions, range: MmuNotifierRange, blockable: boolean): Promise<void> {
  const mm = subs.mm;
  for (let sub = subs.first; sub !== null; sub = sub.next) {
    const end = sub.ops.invalidateRangeEnd;
    if (end === undefined) continue;
    if (blockable) await mm.engine.yield();
    await end.call(sub.ops, sub, range);
    traceCallback(mm, range.id, sub.name, 'classic', 'end', null);
  }
}

/** mn_hlist_invalidate_end. For a non-blockable range the caller runs it in non-blocking context. */
export async function mnHlistInvalidateEnd(subs: MmuNotifierSubscriptions, range: MmuNotifierRange): Promise<void> {
  const srcu = notifierSrcu(subs.mm.engine);
  const idx = srcu.readLock();
  try {
    await callEnds(subs, range, mmuNotifierRangeBlockable(range));
  } finally {
    srcu.readUnlock(idx);
  }
}

/**
 * mn_hlist_release: ->release of every notifier, then unlink them all (unregister will then
 * only wait), then synchronize_srcu so that exit_mmap does not free pages before a ->release
 * run by a concurrent unregister returns. `rangeId` tags the trace (the release range).
 */
export async function mnHlistRelease(subs: MmuNotifierSubscriptions, mm: NotifierMm, rangeId: number): Promise<void> {
  const e = mm.engine;
  const srcu = notifierSrcu(e);
  const idx = srcu.readLock();
  try {
    for (let sub = subs.first; sub !== null; sub = sub.next) {
      const release = sub.ops.release;
      if (release === undefined) continue;
      await e.yield();
      await release.call(sub.ops, sub, mm);
      traceCallback(mm, rangeId, sub.name, 'classic', 'release', null);
    }
    subs.lock.lock();
    while (subs.first !== null) hlistDelInitRcu(subs, subs.first);
    subs.lock.unlock();
  } finally {
    srcu.readUnlock(idx);
  }
  await srcu.synchronize();
}

/** OR of one of the clear-young callbacks over every notifier (every one is asked). Cannot sleep. */
function orClearYoung(subs: MmuNotifierSubscriptions, op: 'clearFlushYoung' | 'clearYoung', start: number, end: number): boolean {
  const srcu = notifierSrcu(subs.mm.engine);
  const idx = srcu.readLock();
  let young = false;
  for (let sub = subs.first; sub !== null; sub = sub.next) {
    const f = sub.ops[op];
    if (f !== undefined && f.call(sub.ops, sub, subs.mm, start, end)) young = true;
  }
  srcu.readUnlock(idx);
  return young;
}

/** __mmu_notifier_clear_flush_young: OR over the notifiers. Cannot sleep. */
export function mnHlistClearFlushYoung(subs: MmuNotifierSubscriptions, start: number, end: number): boolean {
  return orClearYoung(subs, 'clearFlushYoung', start, end);
}

/** __mmu_notifier_clear_young: OR over the notifiers. Cannot sleep. */
export function mnHlistClearYoung(subs: MmuNotifierSubscriptions, start: number, end: number): boolean {
  return orClearYoung(subs, 'clearYoung', start, end);
}

/** __mmu_notifier_test_young: true at the first notifier that says young (the rest are not asked). */
export function mnHlistTestYoung(subs: MmuNotifierSubscriptions, address: number): boolean {
  const srcu = notifierSrcu(subs.mm.engine);
  const idx = srcu.readLock();
  let young = false;
  for (let sub = subs.first; sub !== null; sub = sub.next) {
    const f = sub.ops.testYoung;
    if (f !== undefined && f.call(sub.ops, sub, subs.mm, address)) {
      young = true;
      break;
    }
  }
  srcu.readUnlock(idx);
  return young;
}

/** __mmu_notifier_arch_invalidate_secondary_tlbs. Cannot sleep (runs under the PTL). */
export function mnHlistArchInvalidateSecondaryTlbs(subs: MmuNotifierSubscriptions, start: number, end: number): void {
  const srcu = notifierSrcu(subs.mm.engine);
  const idx = srcu.readLock();
  for (let sub = subs.first; sub !== null; sub = sub.next) {
    const f = sub.ops.archInvalidateSecondaryTlbs;
    if (f !== undefined) f.call(sub.ops, sub, subs.mm, start, end);
  }
  srcu.readUnlock(idx);
}
