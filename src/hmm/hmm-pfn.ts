/**
 * The hmm_pfns encoding of hmm_range_fault: one 64-bit word per page, flags in the high bits
 * and the pfn in the low bits.
 *
 * Models: include/linux/hmm.h (enum hmm_pfn_flags, hmm_pfn_to_page, hmm_pfn_to_map_order) and
 * the HMM_PFN_INOUT_FLAGS enum of mm/hmm.c. BITS_PER_LONG is 64, so HMM_PFN_ORDER_SHIFT is
 * 64 - 11 = 53 and HMM_PFN_FLAGS covers bits 53..63.
 *
 * On output: 0 = not present but faultable; VALID (+ WRITE) = the low bits are a pfn the CPU
 * may read (and write); ERROR = no access is possible (no vma, special or forbidden vma). On
 * input: REQ_FAULT (= VALID) = the output must be VALID or the call fails; REQ_WRITE (= WRITE)
 * = the output must be WRITE (only with REQ_FAULT). DMA_MAPPED, P2PDMA and P2PDMA_BUS are
 * "sticky": hmm_range_fault carries them from input to output untouched.
 *
 * Our pfns are below 2**32 (PhysMem), so bits 32..52 of an entry are always 0.
 */
import { EINVAL, KernelError } from '../sim/index.js';

/** The pfn field points to a valid pfn, at least readable. */
export const HMM_PFN_VALID = 1n << 63n;
/** The CPU page table allows writes (requires VALID). */
export const HMM_PFN_WRITE = 1n << 62n;
/** Accessing the pfn is impossible: the device should fail the access. */
export const HMM_PFN_ERROR = 1n << 61n;
/** Sticky: the page is already DMA mapped (carried from input to output). */
export const HMM_PFN_DMA_MAPPED = 1n << 60n;
/** Sticky: a P2P page. */
export const HMM_PFN_P2PDMA = 1n << 59n;
/** Sticky: a bus-mapped P2P transfer. */
export const HMM_PFN_P2PDMA_BUS = 1n << 58n;
/** Low bit of the 5-bit map-order field (BITS_PER_LONG - 11). */
export const HMM_PFN_ORDER_SHIFT = 53n;
/** Input: fault the page in if it is not valid. */
export const HMM_PFN_REQ_FAULT = HMM_PFN_VALID;
/** Input: fault the page in for write if it is not writable. */
export const HMM_PFN_REQ_WRITE = HMM_PFN_WRITE;
/** Every flag bit: ~((1 << HMM_PFN_ORDER_SHIFT) - 1) as an unsigned 64-bit value. */
export const HMM_PFN_FLAGS = BigInt.asUintN(64, ~((1n << HMM_PFN_ORDER_SHIFT) - 1n));
/** mm/hmm.c: the flags hmm_range_fault carries from input to output. */
export const HMM_PFN_INOUT_FLAGS = HMM_PFN_DMA_MAPPED | HMM_PFN_P2PDMA | HMM_PFN_P2PDMA_BUS;

const U64_LIMIT = 1n << 64n;

function needEntry(what: string, hmmPfn: bigint): void {
  if (typeof hmmPfn !== 'bigint' || hmmPfn < 0n || hmmPfn >= U64_LIMIT) {
    throw new KernelError(EINVAL, `${what}: need a 64-bit unsigned bigint: ${String(hmmPfn)}`);
  }
}

/**
 * hmm_pfn_to_page: the pfn of an entry (the caller has tested HMM_PFN_VALID, under its update
 * lock after a successful mmu_interval_read_begin / read_retry).
 */
export function hmmPfnToPfn(hmmPfn: bigint): number {
  needEntry('hmm_pfn_to_page', hmmPfn);
  return Number(hmmPfn & ~HMM_PFN_FLAGS);
}

/**
 * hmm_pfn_to_map_order: log2 of the CPU mapping size in pages (always 0 here: no THP). Every
 * pfn of a higher-order mapping carries the same flags and order.
 */
export function hmmPfnToMapOrder(hmmPfn: bigint): number {
  needEntry('hmm_pfn_to_map_order', hmmPfn);
  return Number((hmmPfn >> HMM_PFN_ORDER_SHIFT) & 0x1fn);
}

/**
 * An entry for `pfn` with `flags` (e.g. HMM_PFN_VALID | HMM_PFN_WRITE): what hmm_range_fault
 * writes for a mapped page. Not a kernel function; for tests, mock devices and oracles.
 */
export function hmmPfnFromPfn(pfn: number, flags = 0n): bigint {
  if (!Number.isInteger(pfn) || pfn < 0 || pfn >= 2 ** 32) throw new KernelError(EINVAL, `hmmPfnFromPfn: pfn must be an integer in [0, 2**32): ${String(pfn)}`);
  if (typeof flags !== 'bigint' || (flags & ~HMM_PFN_FLAGS) !== 0n || flags < 0n) {
    throw new KernelError(EINVAL, `hmmPfnFromPfn: flags must be HMM_PFN_* bits: ${String(flags)}`);
  }
  return BigInt(pfn) | flags;
}
