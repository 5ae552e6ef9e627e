/**
 * The device's error: a killed context ("GPU segfault"), what a CUDA program sees as an
 * illegal-address error after the driver cancels its faults (nouveau_svm.c cancels a fault group
 * it cannot service, which kills the channel; UVM pushes a cancel targeting the instance).
 */
import { EFAULT, KernelError } from '../sim/index.js';
import type { FaultAccess } from './fault-buffer.js';

/**
 * A device job (context) was killed by a cancel: every pending and later access of it fails with
 * this error, and joining the job throws it. errno EFAULT, code 'EFAULT'.
 */
export class DeviceFaultError extends KernelError {
  constructor(
    /** The device's name. */
    readonly device: string,
    readonly asid: number,
    /** The killed job's id. */
    readonly job: number,
    /** The faulting address: the stalled access's exact address if the job had one, else the cancelled record's. */
    readonly address: number,
    readonly access: FaultAccess,
  ) {
    super(EFAULT, `GPU segfault: ${access} fault at 0x${address.toString(16)} on device ${device} (asid ${asid}, job ${job}): context killed by cancel`);
  }
}
