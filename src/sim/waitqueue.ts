/**
 * Wait queues and completions (include/linux/wait.h, completion.h).
 *
 * `waitEvent(cond)` checks `cond` and, if false, queues the task and blocks, with no
 * scheduling point between the check and the queueing: a wake-up cannot be lost. Woken, it
 * rechecks. `wakeUp()` wakes every non-exclusive waiter and the first exclusive one (as
 * `__wake_up` with nr_exclusive = 1); `wakeUpAll()` wakes everyone. Waking is not a
 * scheduling point.
 */
import type { Engine, Task, Waitable } from './engine.js';
import { EINVAL, KernelError } from './errors.js';

interface Waiter {
  readonly task: Task;
  readonly exclusive: boolean;
}

/** wait_queue_head_t. */
export class WaitQueue implements Waitable {
  private waiters: Waiter[] = [];

  constructor(
    readonly engine: Engine,
    readonly name: string,
  ) {
    if (typeof name !== 'string' || name.length === 0) throw new KernelError(EINVAL, `WaitQueue: name must be a non-empty string: ${JSON.stringify(name)}`);
  }

  /** wait_event: sleeps until `cond()` is true. Returns at once (no scheduling point) if it already is. */
  async waitEvent(cond: () => boolean): Promise<void> {
    await this.wait(cond, false, undefined);
  }

  /** wait_event with an exclusive waiter: `wakeUp` wakes only the first exclusive one. */
  async waitEventExclusive(cond: () => boolean): Promise<void> {
    await this.wait(cond, true, undefined);
  }

  /**
   * wait_event_timeout: returns the remaining ns (at least 1) if `cond()` became true, or 0
   * if the timeout elapsed with `cond()` still false (as the kernel's 0 / remaining jiffies).
   */
  async waitEventTimeout(cond: () => boolean, timeoutNs: number): Promise<number> {
    if (typeof timeoutNs !== 'number' || !Number.isFinite(timeoutNs) || timeoutNs < 0) {
      throw new KernelError(EINVAL, `wait_event_timeout(${this.name}): timeout must be a finite number >= 0: ${timeoutNs}`);
    }
    return this.wait(cond, false, timeoutNs);
  }

  private async wait(cond: () => boolean, exclusive: boolean, timeoutNs: number | undefined): Promise<number> {
    const e = this.engine;
    const cur = e.mightSleep(`wait_event(${this.name})`);
    if (cur === null) return new Promise<never>(() => {});
    const deadline = timeoutNs === undefined ? Infinity : e.now + timeoutNs;
    for (;;) {
      if (cond()) return Math.max(1, deadline - e.now);
      if (deadline <= e.now) return 0;
      this.waiters.push({ task: cur, exclusive });
      const woken = await e.block(this, deadline === Infinity ? undefined : deadline - e.now);
      if (!woken) return cond() ? 1 : 0;
    }
  }

  /** wake_up: every non-exclusive waiter and the first exclusive one. */
  wakeUp(): void {
    if (this.waiters.length === 0) return;
    const keep: Waiter[] = [];
    let exclusiveWoken = false;
    for (const w of this.waiters) {
      if (w.exclusive && exclusiveWoken) keep.push(w);
      else {
        if (w.exclusive) exclusiveWoken = true;
        this.engine.wake(w.task);
      }
    }
    this.waiters = keep;
  }

  /** wake_up_all. */
  wakeUpAll(): void {
    if (this.waiters.length === 0) return;
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) this.engine.wake(w.task);
  }

  /** waitqueue_active. */
  active(): boolean {
    return this.waiters.length > 0;
  }

  describeWait(): string {
    return `wait queue "${this.name}"`;
  }

  cancelWait(task: Task): void {
    this.waiters = this.waiters.filter((w) => w.task !== task);
  }
}

/** struct completion. */
export class Completion {
  private done = 0;
  private readonly wq: WaitQueue;

  constructor(
    readonly engine: Engine,
    readonly name: string,
  ) {
    this.wq = new WaitQueue(engine, `completion ${name}`);
  }

  /** complete: lets one waiter (present or future) through. */
  complete(): void {
    if (this.done !== Infinity) this.done++;
    this.wq.wakeUp();
  }

  /** complete_all: lets every waiter through, now and later. */
  completeAll(): void {
    this.done = Infinity;
    this.wq.wakeUpAll();
  }

  /** wait_for_completion. */
  async waitForCompletion(): Promise<void> {
    await this.wq.waitEventExclusive(() => this.done > 0);
    if (this.done !== Infinity) this.done--;
  }

  /** try_wait_for_completion. */
  tryWaitForCompletion(): boolean {
    if (this.done === 0) return false;
    if (this.done !== Infinity) this.done--;
    return true;
  }

  /** completion_done. */
  isDone(): boolean {
    return this.done > 0;
  }
}
