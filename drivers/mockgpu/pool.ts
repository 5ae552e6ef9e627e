/**
 * The worker pool: p-queue for admission (at most `concurrency` jobs at once, higher priority
 * first, FIFO among equals), the engine for execution and for every wait.
 *
 * Models: a bounded workqueue (alloc_workqueue with max_active, queue_work, flush_workqueue),
 * as UVM services fault batches on worker threads and nouveau on a work item. Each p-queue job
 * runs as its own engine task (a kworker running one work item), so the job's work is scheduled,
 * interleaved and replayed like every other task; nobody ever awaits a p-queue promise.
 *
 * Why the handoff: p-queue is promise-driven. When a job's promise settles, p-queue frees the
 * slot and starts the next queued job a few microtasks LATER (its finally -> queueMicrotask ->
 * #next -> #tryToStartAnother -> job()). The engine does not see microtasks: if the job's task
 * simply exited and every other task were blocked (say, the fault handler in drain()), the
 * engine would declare a deadlock, or end the run, before p-queue got to start the next job. So
 * a finished job's task stays runnable, yielding, until p-queue has processed its completion
 * (p-queue's 'next' event, emitted after it started the next job, whose task is then already
 * spawned). The handoff is counted, not matched: completion k waits until k 'next' events were
 * seen, so while any completion is unprocessed the task of the latest one is still runnable:
 *
 *   job task (engine)                      p-queue (microtasks)
 *   body() returns
 *   resolve(job promise); finished = k
 *   while (settled < k) yield  ---------->  await operation -> finally -> queueMicrotask(#next)
 *     (each yield lets microtasks run)      #next: pending--, start the next queued job:
 *                                              job() -> engine.spawn(its task)
 *                                            emit('next') -> settled++
 *   outstanding--; wake drain() waiters
 *
 * p-queue is used without `interval` and `timeout`, so it starts no host timer; its job order
 * is deterministic (a stable priority queue); its jobs start either synchronously inside
 * add() (a free slot) or in #next (see above). Either way the spawn happens while some engine
 * task is running or runnable, so runs stay deterministic and the uncontrolled-await watchdog
 * never fires.
 *
 * Locks: none. `outstanding`, `finished` and `settled` change synchronously (submit, the job
 * task, p-queue's 'next' listener), atomic under the engine's one-task rule; drain() waits on
 * `idleWq` for outstanding == 0 (pairs with the wake in the job task).
 */
import PQueue from 'p-queue';
import { EINVAL, KernelBug, KernelError, WaitQueue, type Engine } from 'hmm-emu';

/** More yields than p-queue's completion path can need (it takes about three microtask hops). */
const MAX_HANDOFF_YIELDS = 256;

/** Counters of a pool. */
export interface EnginePoolStats {
  /** Jobs submitted. */
  submitted: number;
  /** Jobs whose body returned (or threw). */
  completed: number;
  /** Yields spent waiting for p-queue to process completions. */
  handoffYields: number;
  /** Most jobs outstanding (queued or running) at once. */
  maxOutstanding: number;
}

export class EnginePool {
  readonly stats: EnginePoolStats = { submitted: 0, completed: 0, handoffYields: 0, maxOutstanding: 0 };
  private readonly queue: PQueue;
  private readonly idleWq: WaitQueue;
  /** Jobs submitted and not yet handed off. */
  private outstanding = 0;
  /** Completions signalled to p-queue (job promises resolved). */
  private finished = 0;
  /** Completions p-queue has processed ('next' events). */
  private settled = 0;
  private nextId = 1;

  constructor(
    readonly engine: Engine,
    readonly name: string,
    /** Jobs running at once (p-queue's concurrency; the workqueue's max_active). */
    readonly concurrency: number,
  ) {
    if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 1024) {
      throw new KernelError(EINVAL, `EnginePool ${name}: concurrency must be an integer in [1, 1024]: ${String(concurrency)}`);
    }
    this.queue = new PQueue({ concurrency });
    this.queue.on('next', () => {
      this.settled++;
    });
    this.idleWq = new WaitQueue(engine, `${name}.idle`);
  }

  /** Jobs submitted and not yet finished (queued, running or handing off). */
  get pending(): number {
    return this.outstanding;
  }

  /**
   * queue_work: runs `body` as an engine task named `<pool>.<id>.<what>` once a slot is free,
   * higher `priority` first. Not a scheduling point. `body` must not throw (a throw is a bug
   * and fails the run, as a crashed task does).
   */
  submit(what: string, body: () => Promise<void>, priority = 0): void {
    this.outstanding++;
    this.stats.submitted++;
    if (this.outstanding > this.stats.maxOutstanding) this.stats.maxOutstanding = this.outstanding;
    const name = `${this.name}.${this.nextId++}.${what}`;
    // The add() promise settles with the job; nobody awaits it. A rejection can only be a spawn
    // after the run ended (the engine already has its verdict).
    this.queue.add(() => this.start(name, body), { priority }).catch((err: unknown) => this.engine.fail(err));
  }

  /** flush_workqueue: waits (on the engine) until every submitted job has finished and p-queue is idle. */
  async drain(): Promise<void> {
    await this.idleWq.waitEvent(() => this.outstanding === 0);
    this.engine.warnOn(this.queue.size !== 0 || this.queue.pending !== 0, `${this.name}: drained with p-queue not idle (${this.queue.size} queued, ${this.queue.pending} running)`);
  }

  /** p-queue's job: spawn the engine task; the promise settles when its body is done. */
  private start(name: string, body: () => Promise<void>): Promise<void> {
    return new Promise<void>((resolve) => {
      this.engine.spawn(name, async () => {
        try {
          await body();
        } finally {
          this.stats.completed++;
          resolve();
          await this.handoff(++this.finished);
          this.outstanding--;
          if (this.outstanding === 0) this.idleWq.wakeUpAll();
        }
      });
    });
  }

  /** Stays runnable until p-queue has processed completion `k` (see the header). */
  private async handoff(k: number): Promise<void> {
    for (let i = 0; this.settled < k; i++) {
      if (i === MAX_HANDOFF_YIELDS) this.engine.bug(new KernelBug(`BUG: ${this.name}: p-queue did not process completion ${k} within ${MAX_HANDOFF_YIELDS} yields`));
      this.stats.handoffYields++;
      await this.engine.yield();
    }
  }
}
