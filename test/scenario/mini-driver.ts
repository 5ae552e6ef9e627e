/**
 * A small modern-API driver behind the scenario driver interface, for the runner's own tests:
 * an interval notifier over the whole mm, a fault worker that services each record with the
 * hmm_range_fault loop (docs/driver-guide.md), and a switch that breaks it on purpose:
 *
 *   'correct'   zap the page table and the TLB (waiting for the fence) under the update lock
 *   'skip-zap'  the callback sets the sequence and returns without zapping anything
 *   'no-retry'  commits the snapshot without mmu_interval_read_retry (bug class 1)
 *   'no-tlb'    zaps the page table but never invalidates the TLB (bug class 5)
 *   'no-fault'  snapshots only (no HMM_PFN_REQ_FAULT): a pte-none page cannot be mapped
 *   'read-only-fault'  never asks for write access, and maps every page writable anyway
 *   'cpu-pte'   maps straight from a present CPU pte (a fast path before hmm_range_fault),
 *               taking a PROT_NONE entry (present, protnone) for a readable one
 *
 * Locks: `lock` (the update lock) protects the device page table and the TLB and pairs
 * set_seq with read_retry. The worker never holds it across hmm_range_fault.
 */
import {
  type BoundDevice,
  DEV_PTE_ATOMIC,
  DEV_PTE_WRITE,
  Device,
  EBUSY,
  EFAULT,
  HMM_PFN_REQ_FAULT,
  HMM_PFN_REQ_WRITE,
  HMM_PFN_VALID,
  HMM_PFN_WRITE,
  HmmRange,
  MmuIntervalNotifier,
  Mutex,
  PAGE_SIZE,
  PTE_PRESENT,
  PTE_WRITE,
  type ScenarioDriver,
  ULONG_MAX_ADDR,
  hmmPfnToPfn,
  hmmRangeFault,
  mmuIntervalNotifierInsert,
  mmuIntervalNotifierRemove,
  mmuIntervalReadBegin,
  mmuIntervalReadRetry,
  mmuIntervalSetSeq,
  mmuNotifierRangeBlockable,
} from 'hmm-emu';

export type MiniMode = 'correct' | 'skip-zap' | 'no-retry' | 'no-tlb' | 'no-fault' | 'read-only-fault' | 'cpu-pte';

const VA_END = 2 ** 48;

/** The mini driver in `mode`, named `mini-<mode>`. */
export function miniDriver(mode: MiniMode): ScenarioDriver {
  return {
    name: `mini-${mode}`,
    description: `a minimal interval-notifier driver (${mode})`,
    api: 'modern',
    kind: mode === 'correct' ? 'reference' : 'buggy',
    features: [],
    ...(mode === 'correct' ? {} : { base: 'mini', bug: mode }),
    async bind(req): Promise<BoundDevice> {
      const e = req.engine;
      const dev = new Device(e, req.phys, { ...req.hardware, name: req.name, memory: { frames: 0 } });
      const as = dev.createAddressSpace();
      const lock = new Mutex(e, `${req.name}.update`, { lockClass: 'mini.update' });
      const sub = new MmuIntervalNotifier(`${req.name}.mini`);
      const stats = { faults: 0, retries: 0, zaps: 0 };
      await mmuIntervalNotifierInsert(sub, req.mm, 0, ULONG_MAX_ADDR, {
        async invalidate(s, range, curSeq) {
          const blockable = mmuNotifierRangeBlockable(range);
          if (blockable) await lock.lock();
          else if (!lock.trylock()) return false;
          const end = Math.min(range.end, VA_END);
          let held = false;
          as.pageTable.forEach(() => (held = true), Math.floor(range.start / PAGE_SIZE), Math.ceil(end / PAGE_SIZE));
          if (held && !blockable && mode !== 'skip-zap') {
            // Zapping needs a shootdown whose fence cannot be awaited without sleeping.
            lock.unlock();
            return false;
          }
          mmuIntervalSetSeq(s, curSeq);
          if (held && mode !== 'skip-zap') {
            as.unmap(range.start, end);
            stats.zaps++;
            if (mode !== 'no-tlb') await dev.tlbInvalidate(as, range.start, end).wait();
          }
          lock.unlock();
          return true;
        },
      });
      const perm = (write: boolean): number => (write ? DEV_PTE_WRITE | DEV_PTE_ATOMIC : 0);
      const mm = req.mm;
      const fault = async (addr: number, write: boolean): Promise<number> => {
        const flags = mode === 'no-fault' ? 0n : mode === 'read-only-fault' || !write ? HMM_PFN_REQ_FAULT : HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE;
        const range = new HmmRange({ notifier: sub, start: addr, end: addr + PAGE_SIZE, defaultFlags: flags });
        const vpn = addr / PAGE_SIZE;
        for (;;) {
          if (mm.state !== 'live') return -EFAULT; // the mm exited: nothing to mirror
          range.notifierSeq = await mmuIntervalReadBegin(sub);
          await mm.mmapLock.downRead();
          if (mm.state !== 'live') {
            mm.mmapLock.upRead();
            return -EFAULT;
          }
          // BUG ('cpu-pte'): a present CPU entry is taken as it stands, PROT_NONE or not.
          const bits = mm.pgtable.bitsAt(vpn);
          const fast = mode === 'cpu-pte' && (bits & PTE_PRESENT) !== 0 && (!write || (bits & PTE_WRITE) !== 0);
          const fastPfn = fast ? mm.pgtable.pfnAt(vpn) : -1;
          const ret = fast ? 0 : await hmmRangeFault(range);
          mm.mmapLock.upRead();
          if (ret === -EBUSY) {
            stats.retries++;
            continue;
          }
          if (ret < 0) return ret;
          const p = range.hmmPfns[0]!;
          // BUG ('no-fault'): a snapshot without fault requests leaves pte-none pages invalid.
          if (!fast && (p & HMM_PFN_VALID) === 0n) return -EFAULT;
          if (!fast && write && mode !== 'read-only-fault' && (p & HMM_PFN_WRITE) === 0n) return -EFAULT;
          await e.sleep(300); // programming the device takes time: the CPU runs meanwhile
          await lock.lock();
          if (mode !== 'no-retry' && mmuIntervalReadRetry(sub, range.notifierSeq)) {
            lock.unlock();
            stats.retries++;
            continue;
          }
          if (fast) as.map(addr, fastPfn, perm(write));
          // BUG ('read-only-fault'): mapped writable though only read access was faulted in.
          else as.map(addr, hmmPfnToPfn(p), perm(mode === 'read-only-fault' || (p & HMM_PFN_WRITE) !== 0n));
          lock.unlock();
          return 0;
        }
      };
      const worker = e.spawn(`${req.name}.mini_worker`, async () => {
        while (await dev.waitForInterrupt()) {
          const fb = dev.faultBuffer;
          if (fb.overflow) fb.clearOverflow();
          for (const rec of fb.drain()) {
            stats.faults++;
            const addr = rec.address - (rec.address % PAGE_SIZE);
            if ((await fault(addr, rec.access === 'write' || rec.access === 'atomic')) < 0) dev.cancelFault(rec);
          }
          dev.replay(as.asid);
        }
      });
      return {
        device: dev,
        as,
        notifierSubs: [sub],
        launch: (opts, kernel) => dev.launch(as, opts, kernel),
        commands: {},
        stats: () => ({ ...stats }),
        async unbind() {
          // Stop the fault worker before removing the notifier: a fault of a killed job may
          // still be in service, and hmm_range_fault needs the notifier inserted.
          dev.stop();
          await worker.join();
          await mmuIntervalNotifierRemove(sub);
          await lock.lock();
          as.unmap(0, VA_END);
          lock.unlock();
          await dev.tlbInvalidateAll(as).wait();
          dev.destroyAddressSpace(as);
        },
      };
    },
  };
}
