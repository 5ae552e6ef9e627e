/**
 * The dmirror user API: commands, the command block, snapshot codes and flags.
 *
 * Models: lib/test_hmm_uapi.h (the private UAPI of lib/test_hmm.c, as of 6.x mainline with
 * HMM_DMIRROR_FLAGS). Command numbers are the kernel's _IOWR('H', nr, struct hmm_dmirror_cmd)
 * values, so a trace or a log prints the same numbers as strace would.
 *
 * No state here: constants and the shape of `struct hmm_dmirror_cmd`.
 */

/** sizeof(struct hmm_dmirror_cmd): five __u64 fields. */
const CMD_SIZE = 40;

/** _IOWR('H', nr, struct hmm_dmirror_cmd): dir 3 << 30 | size << 16 | type << 8 | nr. */
function iowr(nr: number): number {
  return 3 * 2 ** 30 + CMD_SIZE * 2 ** 16 + 0x48 * 2 ** 8 + nr;
}

/** Read `npages` pages at `addr` through the device into `ptr` (faulting them in). */
export const HMM_DMIRROR_READ = iowr(0x00);
/** Write `ptr` to `npages` pages at `addr` through the device (faulting them in for write). */
export const HMM_DMIRROR_WRITE = iowr(0x01);
/** Migrate `npages` pages at `addr` to device memory, then read them back into `ptr`. */
export const HMM_DMIRROR_MIGRATE_TO_DEV = iowr(0x02);
/** Migrate this device's pages in [addr, addr + npages pages) back to system memory. */
export const HMM_DMIRROR_MIGRATE_TO_SYS = iowr(0x03);
/** Snapshot the CPU page table of `npages` pages (no fault): one HMM_DMIRROR_PROT_* byte per page into `ptr`. */
export const HMM_DMIRROR_SNAPSHOT = iowr(0x04);
/** Make `npages` pages exclusive to the device (make_device_exclusive), then read them into `ptr`. */
export const HMM_DMIRROR_EXCLUSIVE = iowr(0x05);
/** -EPERM if any page of the range is still mapped atomic (exclusive) by the device. */
export const HMM_DMIRROR_CHECK_EXCLUSIVE = iowr(0x06);
/** Evict all of the device's memory back to system memory (the kernel removes its chunks). */
export const HMM_DMIRROR_RELEASE = iowr(0x07);
/** Set the file's flags to `npages` (HMM_DMIRROR_FLAG_*). */
export const HMM_DMIRROR_FLAGS = iowr(0x08);

/** Fail the next device-page (or, on the way back, system-page) allocation of a migration, once. */
export const HMM_DMIRROR_FLAG_FAIL_ALLOC = 1;

/** enum hmm_dmirror_memory_type. */
export const HMM_DMIRROR_MEMORY_DEVICE_PRIVATE = 0;
export const HMM_DMIRROR_MEMORY_DEVICE_COHERENT = 1;

/**
 * Values returned by HMM_DMIRROR_SNAPSHOT, one byte per page (enum in test_hmm_uapi.h):
 * ERROR (no VMA or no access), NONE (not present), READ / WRITE (the CPU permission), PMD / PUD
 * (mapped by a huge entry: never here, no THP), ZERO (the zero page), DEV_PRIVATE_LOCAL /
 * DEV_PRIVATE_REMOTE (device-private memory of this device / another one reported as valid),
 * DEV_COHERENT_LOCAL / DEV_COHERENT_REMOTE (device-coherent memory).
 */
export const HMM_DMIRROR_PROT_ERROR = 0xff;
export const HMM_DMIRROR_PROT_NONE = 0x00;
export const HMM_DMIRROR_PROT_READ = 0x01;
export const HMM_DMIRROR_PROT_WRITE = 0x02;
export const HMM_DMIRROR_PROT_PMD = 0x04;
export const HMM_DMIRROR_PROT_PUD = 0x08;
export const HMM_DMIRROR_PROT_ZERO = 0x10;
export const HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL = 0x20;
export const HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE = 0x30;
export const HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL = 0x40;
export const HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE = 0x50;

/**
 * struct hmm_dmirror_cmd. `ptr` is the user buffer (the kernel's `__u64 ptr`): npages * 4096
 * bytes for READ, WRITE, MIGRATE_TO_DEV and EXCLUSIVE, npages bytes for SNAPSHOT. `cpages` and
 * `faults` are outputs, written back only when the command succeeds (as copy_to_user of the
 * whole block at the end of the ioctl). For HMM_DMIRROR_FLAGS, `npages` carries the flags.
 */
export interface HmmDmirrorCmd {
  /** Start address, page aligned. */
  addr: number;
  /** The user buffer. */
  ptr: Uint8Array;
  /** Pages (or the flags, for HMM_DMIRROR_FLAGS). */
  npages: number;
  /** Out: pages copied, migrated or snapshotted. */
  cpages: number;
  /** Out: device faults taken (dmirror_fault calls that succeeded). */
  faults: number;
}

/** The name of a command, for messages. */
export function hmmDmirrorCmdName(command: number): string {
  switch (command) {
    case HMM_DMIRROR_READ:
      return 'HMM_DMIRROR_READ';
    case HMM_DMIRROR_WRITE:
      return 'HMM_DMIRROR_WRITE';
    case HMM_DMIRROR_MIGRATE_TO_DEV:
      return 'HMM_DMIRROR_MIGRATE_TO_DEV';
    case HMM_DMIRROR_MIGRATE_TO_SYS:
      return 'HMM_DMIRROR_MIGRATE_TO_SYS';
    case HMM_DMIRROR_SNAPSHOT:
      return 'HMM_DMIRROR_SNAPSHOT';
    case HMM_DMIRROR_EXCLUSIVE:
      return 'HMM_DMIRROR_EXCLUSIVE';
    case HMM_DMIRROR_CHECK_EXCLUSIVE:
      return 'HMM_DMIRROR_CHECK_EXCLUSIVE';
    case HMM_DMIRROR_RELEASE:
      return 'HMM_DMIRROR_RELEASE';
    case HMM_DMIRROR_FLAGS:
      return 'HMM_DMIRROR_FLAGS';
    default:
      return `ioctl 0x${command.toString(16)}`;
  }
}
