/**
 * The copy engine: DMA of whole pages between any two frames (system RAM <-> device memory,
 * or within either), the data mover behind migration to and from the device.
 *
 * Models: a GPU copy engine as HMM drivers use it (lib/test_hmm.c copies with the CPU; nouveau's
 * nouveau_dmem_copy_one and NVIDIA UVM's uvm_push of CE memcopies use the copy engine). It works
 * on physical frames, so it never faults. Operations run one at a time in issue order (one
 * channel): an operation starts when the previous one ends and takes copyLatencyNs plus its
 * bytes at copyBandwidthGBps; a batch pays the latency once. The bytes land at completion, all
 * at once: until then the destination is unchanged, and the source is read at that instant, so
 * the caller must keep the source stable for the whole copy (migrate_vma's page locks do).
 *
 * What protects what: `busyUntil` and the copies change only synchronously (a copy is queued
 * before its issuer sleeps, and done when it wakes), atomic under the engine's one-task rule.
 *
 * Simplification: one copy channel; no partial-page or strided copies.
 */
import { EINVAL, KernelError } from '../sim/index.js';
import { ZERO_PFN } from '../mm/index.js';
import type { Device } from './device.js';

export class CopyEngine {
  private busyUntil = 0;

  constructor(private readonly device: Device) {}

  /** Virtual time at which the copy engine becomes idle (now or earlier: idle). */
  get idleAt(): number {
    return this.busyUntil;
  }

  /** Copies frame `src` to frame `dst`; resolves when the bytes have landed. */
  async copyPage(dst: number, src: number): Promise<void> {
    this.checkPair('copyPage', dst, src);
    await this.run(1);
    this.copyOne(dst, src);
  }

  /**
   * Copies `src[i]` to `dst[i]` for every i, as one operation (one latency); resolves when all
   * bytes have landed. Every argument is checked before anything happens; an empty batch
   * returns at once.
   */
  async copyPages(dst: ArrayLike<number>, src: ArrayLike<number>): Promise<void> {
    if (dst === null || typeof dst !== 'object' || typeof dst.length !== 'number') throw new KernelError(EINVAL, `copyPages: dst must be an array of frame numbers: ${String(dst)}`);
    if (src === null || typeof src !== 'object' || typeof src.length !== 'number') throw new KernelError(EINVAL, `copyPages: src must be an array of frame numbers: ${String(src)}`);
    const n = dst.length;
    if (src.length !== n) throw new KernelError(EINVAL, `copyPages: dst and src differ in length: ${n} vs ${src.length}`);
    for (let i = 0; i < n; i++) this.checkPair('copyPages', dst[i]!, src[i]!);
    if (n === 0) return;
    await this.run(n);
    for (let i = 0; i < n; i++) this.copyOne(dst[i]!, src[i]!);
  }

  /** Queues an operation of `pages` pages behind the ones in flight and sleeps until it ends. */
  private async run(pages: number): Promise<void> {
    const dev = this.device;
    const e = dev.engine;
    const start = Math.max(e.now, this.busyUntil);
    const end = start + dev.cost.copyNs(pages);
    this.busyUntil = end;
    dev.stats.copies++;
    await e.sleep(end - e.now);
  }

  private copyOne(dst: number, src: number): void {
    const dev = this.device;
    dev.phys.copyPage(dst, src);
    dev.stats.pagesCopied++;
    const t = dev.engine.trace;
    if (t.active && t.wants('device.copy')) t.emit('device.copy', { device: dev.name, dst, src });
  }

  private checkPair(what: string, dst: number, src: number): void {
    const end = this.device.phys.deviceFramesEnd;
    if (!Number.isInteger(dst) || dst < 0 || dst >= end) throw new KernelError(EINVAL, `${what}: dst must be a registered frame in [0, ${end}): ${String(dst)}`);
    if (dst === ZERO_PFN) throw new KernelError(EINVAL, `${what}: dst is the zero page (pfn ${ZERO_PFN})`);
    if (!Number.isInteger(src) || src < 0 || src >= end) throw new KernelError(EINVAL, `${what}: src must be a registered frame in [0, ${end}): ${String(src)}`);
  }
}
