/**
 * Bug 4: zaps the device page table but not the device TLB.
 *
 * dmirrorIntervalInvalidate's blocking path with the shootdown left out: the entries of the
 * range leave the device page table, but a translation the device TLB already holds survives
 * the callback, so the device keeps reaching the frame after the CPU unmapped (and freed) it.
 * The oracle sees it the moment the callback returns (its contract: "the device must complete
 * the update before the driver callback returns").
 *
 * Seen in the real world: the contract of mmu_notifier.h ("flush any secondary tlb before
 * doing the final free on the page") and hmm.rst; the reference drivers here carry the same
 * broken variant as a harness sanity check (hmm2015's NoShootdownDriver, dmirror's README:
 * "the harness's frame oracle fails at once if tlbFlush is skipped").
 */
import { DEVICE_VA_LIMIT, type MmuIntervalNotifier, type MmuNotifierRange, PAGE_SIZE, mmuIntervalSetSeq, mmuNotifierRangeBlockable } from 'hmm-emu';
import type { Dmirror } from '../dmirror/index.js';
import { DmirrorVariant } from './dmirror-variant.js';

export class NoTlbFlushDmirror extends DmirrorVariant {
  protected override invalidate(dmirror: Dmirror, mni: MmuIntervalNotifier, range: MmuNotifierRange, curSeq: number): boolean | Promise<boolean> {
    // Non-blockable ranges and own events: the reference (it erases nothing there without a flush).
    if (!mmuNotifierRangeBlockable(range) || (range.owner !== null && range.owner === dmirror.mdevice.owner)) return super.invalidate(dmirror, mni, range, curSeq);
    return eraseWithoutFlush(dmirror, mni, range, curSeq);
  }
}

/** dmirrorInvalidateBlocking + dmirrorDoUpdate, without the TLB invalidation. */
async function eraseWithoutFlush(dmirror: Dmirror, mni: MmuIntervalNotifier, range: MmuNotifierRange, curSeq: number): Promise<boolean> {
  await dmirror.mutex.lock();
  try {
    mmuIntervalSetSeq(mni, curSeq);
    dmirror.lastNonOwnSeq = curSeq;
    const v0 = Math.floor(range.start / PAGE_SIZE);
    const v1 = Math.min(Math.floor(range.end / PAGE_SIZE) + 1, DEVICE_VA_LIMIT / PAGE_SIZE);
    // BUG: no `await dmirror.tlbFlush(v0 * PAGE_SIZE, v1 * PAGE_SIZE)` after the erase.
    if (v0 < v1) dmirror.ptErase(v0, v1);
  } finally {
    dmirror.mutex.unlock();
  }
  return true;
}
