/**
 * A flat reference model of anonymous memory for the model-based test of src/mm
 * (mm-model.test.ts): what each mm call should do, computed without page tables, frames, COW
 * or locks.
 *
 * A process is a Map from page number (vpn) to a RefPage: its protection, whether it is
 * private (its bytes, null = zeros, copied by value at fork) or a page of a shared object
 * (a store of pages by page index that fork shares between parent and child), and a VMA
 * token. The tokens are the only non-flat part, and they are needed because mremap's old
 * range must lie inside ONE VMA, and the real mm merges adjacent compatible VMAs: a VMA is a
 * maximal run of contiguous pages with the same token. Every token belongs to exactly one
 * VMA (a split gives the right part a fresh token), and the model merges at exactly the
 * boundaries where the mm's vma_merge looks (the new range's edges for mmap and mremap, every
 * piece's edges for mprotect) with the mm's rule: same protection, both private, or both
 * shared and mapping the same object contiguously. Splits that are never merged back (munmap,
 * madvise never splits; MREMAP_DONTUNMAP leaves its old piece split) stay split, as they do in
 * the mm. Like the mm, the model has no VM_ACCOUNT or anon_vma, so a DONTUNMAP remnant merges
 * again with its compatible neighbours the next time an mprotect or mmap edge touches it
 * (Linux keeps it apart: it clears VM_ACCOUNT on the old VMA).
 *
 * The model follows the mm's documented contract where it departs from Linux: a call that
 * fails changes nothing (mprotect and madvise(DONTNEED) on a range with a hole fail with
 * ENOMEM before touching anything; mremap checks its old range before unmapping the target),
 * and calls on an exited mm fail with ESRCH after argument validation.
 *
 * Where the mm picks an address (a hint-less or non-free-hint mmap, an mremap move without
 * MREMAP_FIXED), the model takes the address the mm returned and accepts it only if it is
 * page aligned, inside the user address space and free in the model; otherwise it throws
 * ModelMismatch.
 */
import { EACCES, EEXIST, EFAULT, EINVAL, ENOMEM, ESRCH, errnoName } from '../../src/sim/index.js';
import {
  MADV_DONTNEED,
  MAP_FIXED,
  MAP_FIXED_NOREPLACE,
  MAP_SHARED,
  MMAP_MIN_ADDR,
  MREMAP_DONTUNMAP,
  MREMAP_FIXED,
  MREMAP_MAYMOVE,
  PAGE_SIZE,
  PROT_EXEC,
  PROT_READ,
  PROT_WRITE,
  TASK_SIZE,
} from '../../src/mm/index.js';

const P = PAGE_SIZE;
const PROT_ALL = PROT_READ | PROT_WRITE | PROT_EXEC;

/** The result of a call: a number (0, an address, a count), bytes read, or an errno. */
export type Outcome =
  | { readonly ok: true; readonly value: number }
  | { readonly ok: true; readonly bytes: Uint8Array }
  | { readonly ok: false; readonly errno: number };

/** The model's prediction: as Outcome, but `value: null` means any number (migratePages' count). */
export type Expected =
  | { readonly ok: true; readonly value: number | null }
  | { readonly ok: true; readonly bytes: Uint8Array }
  | { readonly ok: false; readonly errno: number };

/** The real mm made a choice the model cannot accept (an address that was not free). */
export class ModelMismatch extends Error {
  override readonly name = 'ModelMismatch';
}

/** The object behind a MAP_SHARED mapping: its pages by page index (absent = zeros). */
export interface SharedObj {
  readonly id: number;
  readonly pages: Map<number, Uint8Array>;
}

/** One mapped page of one process. Byte arrays are never mutated in place: writes replace them. */
export interface RefPage {
  prot: number;
  /** VMA token: a VMA is a maximal run of contiguous pages with the same token. */
  vma: number;
  /** The shared object and the page's index in it, or null for private memory. */
  shared: SharedObj | null;
  index: number;
  /** Private contents (null = zeros); unused for shared pages. */
  bytes: Uint8Array | null;
}

/** A VMA as the model sees it (for comparing layouts). */
export interface RefVma {
  readonly start: number;
  readonly end: number;
  readonly prot: number;
  readonly shared: boolean;
}

export class RefProcess {
  readonly pages = new Map<number, RefPage>();
  alive = true;
  constructor(readonly pid: number) {}

  /** Mapped page numbers, ascending. */
  vpns(): number[] {
    return [...this.pages.keys()].sort((a, b) => a - b);
  }

  /** The VMAs: maximal runs of contiguous pages with the same token. */
  vmas(): RefVma[] {
    const out: RefVma[] = [];
    let cur: { start: number; end: number; prot: number; shared: boolean; vma: number } | null = null;
    for (const vpn of this.vpns()) {
      const pg = this.pages.get(vpn)!;
      if (cur !== null && cur.end === vpn * P && cur.vma === pg.vma) {
        cur.end += P;
        continue;
      }
      if (cur !== null) out.push({ start: cur.start, end: cur.end, prot: cur.prot, shared: cur.shared });
      cur = { start: vpn * P, end: (vpn + 1) * P, prot: pg.prot, shared: pg.shared !== null, vma: pg.vma };
    }
    if (cur !== null) out.push({ start: cur.start, end: cur.end, prot: cur.prot, shared: cur.shared });
    return out;
  }
}

/** The bytes a page holds (null = all zeros). */
export function pageContents(pg: RefPage): Uint8Array | null {
  return pg.shared !== null ? (pg.shared.pages.get(pg.index) ?? null) : pg.bytes;
}

const ok = (value: number | null): Expected => ({ ok: true, value });
const err = (errno: number): Expected => ({ ok: false, errno });

/** PAGE_ALIGN for the small lengths the test uses. */
function pageAlign(len: number): number {
  return Math.ceil(len / P) * P;
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

export class RefModel {
  readonly procs: RefProcess[] = [new RefProcess(0)];
  private nextToken = 1;
  private nextObj = 1;

  private proc(pid: number): RefProcess {
    const p = this.procs[pid];
    if (p === undefined) throw new Error(`model: no process ${pid}`);
    return p;
  }

  // ---- VMA structure ----

  /** True if no page of [start, end) is mapped. */
  isFree(p: RefProcess, start: number, end: number): boolean {
    for (let v = start / P; v < end / P; v++) if (p.pages.has(v)) return false;
    return true;
  }

  /** True if every page of [start, end) is mapped. */
  covers(p: RefProcess, start: number, end: number): boolean {
    for (let v = start / P; v < end / P; v++) if (!p.pages.has(v)) return false;
    return true;
  }

  /** Gives the run of token-equal pages from vpn onwards the token `to`. */
  private relabel(p: RefProcess, vpn: number, to: number): void {
    const from = p.pages.get(vpn)?.vma;
    if (from === undefined) return;
    for (let v = vpn; ; v++) {
      const pg = p.pages.get(v);
      if (pg === undefined || pg.vma !== from) break;
      pg.vma = to;
    }
  }

  /** split_vma: makes `addr` a VMA boundary (the right part gets a fresh token). */
  private split(p: RefProcess, addr: number): void {
    const a = p.pages.get(addr / P - 1);
    const b = p.pages.get(addr / P);
    if (a !== undefined && b !== undefined && a.vma === b.vma) this.relabel(p, addr / P, this.nextToken++);
  }

  /** vma_merge at one boundary: merges the VMAs that meet at `addr` if they are compatible. */
  private mergeAt(p: RefProcess, addr: number): void {
    const a = p.pages.get(addr / P - 1);
    const b = p.pages.get(addr / P);
    if (a === undefined || b === undefined || a.vma === b.vma) return;
    if (a.prot !== b.prot || a.shared !== b.shared) return;
    if (a.shared !== null && a.index + 1 !== b.index) return;
    this.relabel(p, addr / P, a.vma);
  }

  /** The VMA containing `addr`: [start, end) and its token, or null. */
  private vmaAt(p: RefProcess, addr: number): { start: number; end: number; token: number } | null {
    const pg = p.pages.get(addr / P);
    if (pg === undefined) return null;
    let s = addr / P;
    while (p.pages.get(s - 1)?.vma === pg.vma) s--;
    let e = addr / P + 1;
    while (p.pages.get(e)?.vma === pg.vma) e++;
    return { start: s * P, end: e * P, token: pg.vma };
  }

  /** Removes [start, end) (unmap_region: splits at the edges, never merges). */
  private unmapRange(p: RefProcess, start: number, end: number): void {
    this.split(p, start);
    this.split(p, end);
    for (let v = start / P; v < end / P; v++) p.pages.delete(v);
  }

  /** Accepts an address the mm chose for `len` bytes, or throws ModelMismatch. */
  private acceptPlacement(p: RefProcess, what: string, actual: Outcome, len: number): number {
    if (!actual.ok || !('value' in actual)) throw new ModelMismatch(`${what}: expected success at an address of the mm's choosing, got ${describeOutcome(actual)}`);
    const a = actual.value;
    if (!Number.isSafeInteger(a) || a % P !== 0 || a < MMAP_MIN_ADDR || a + len > TASK_SIZE) {
      throw new ModelMismatch(`${what}: the mm chose ${hex(a)}, which is not a page-aligned user address for ${hex(len)} bytes`);
    }
    if (!this.isFree(p, a, a + len)) throw new ModelMismatch(`${what}: the mm chose [${hex(a)}, ${hex(a + len)}), which overlaps a mapping`);
    return a;
  }

  // ---- the calls ----

  /** mmap(addr, length, prot, flags) of anonymous memory. `actual` is the mm's answer (used only when the mm picks the address). */
  mmap(pid: number, addr: number, length: number, prot: number, flags: number, actual: Outcome): Expected {
    const p = this.proc(pid);
    if (length === 0) return err(EINVAL);
    const len = pageAlign(length);
    if (prot & ~PROT_ALL) return err(EINVAL);
    const fixed = (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) !== 0;
    if (fixed && addr % P !== 0) return err(EINVAL);
    if (!p.alive) return err(ESRCH);
    let start: number;
    if (fixed) {
      start = addr;
      if (!this.isFree(p, start, start + len)) {
        if (flags & MAP_FIXED_NOREPLACE) return err(EEXIST);
        this.unmapRange(p, start, start + len);
      }
    } else {
      const hint = Math.floor(addr / P) * P;
      if (hint >= MMAP_MIN_ADDR && hint + len <= TASK_SIZE && this.isFree(p, hint, hint + len)) start = hint;
      else start = this.acceptPlacement(p, 'mmap', actual, len);
    }
    const token = this.nextToken++;
    const obj: SharedObj | null = flags & MAP_SHARED ? { id: this.nextObj++, pages: new Map() } : null;
    for (let i = 0; i < len / P; i++) p.pages.set(start / P + i, { prot, vma: token, shared: obj, index: i, bytes: null });
    this.mergeAt(p, start);
    this.mergeAt(p, start + len);
    return ok(start);
  }

  munmap(pid: number, addr: number, length: number): Expected {
    const p = this.proc(pid);
    if (addr % P !== 0 || length === 0) return err(EINVAL);
    if (!p.alive) return err(ESRCH);
    this.unmapRange(p, addr, addr + pageAlign(length));
    return ok(0);
  }

  mprotect(pid: number, addr: number, length: number, prot: number): Expected {
    const p = this.proc(pid);
    if (addr % P !== 0 || prot & ~PROT_ALL) return err(EINVAL);
    if (length === 0) return ok(0);
    if (!p.alive) return err(ESRCH);
    const end = addr + pageAlign(length);
    // Our documented deviation from Linux: a hole fails the call before anything changes.
    if (!this.covers(p, addr, end)) return err(ENOMEM);
    this.split(p, addr);
    this.split(p, end);
    for (let v = addr / P; v < end / P; v++) p.pages.get(v)!.prot = prot;
    for (let a = addr; a <= end; a += P) this.mergeAt(p, a);
    return ok(0);
  }

  madvise(pid: number, addr: number, length: number, advice: number): Expected {
    const p = this.proc(pid);
    if (addr % P !== 0 || advice !== MADV_DONTNEED) return err(EINVAL);
    if (length === 0) return ok(0);
    if (!p.alive) return err(ESRCH);
    const end = addr + pageAlign(length);
    if (!this.covers(p, addr, end)) return err(ENOMEM);
    // Private pages are dropped (zero-fill on the next touch); shared ones keep their object's page.
    for (let v = addr / P; v < end / P; v++) {
      const pg = p.pages.get(v)!;
      if (pg.shared === null) pg.bytes = null;
    }
    return ok(0);
  }

  /** mremap(oldAddr, oldLen, newLen, flags, newAddr). `actual` is used only when the mm picks the target. */
  mremap(pid: number, oldAddr: number, oldLen: number, newLen: number, flags: number, newAddr: number, actual: Outcome): Expected {
    const p = this.proc(pid);
    if (oldAddr % P !== 0) return err(EINVAL);
    const mayMove = (flags & MREMAP_MAYMOVE) !== 0;
    const fixed = (flags & MREMAP_FIXED) !== 0;
    const dontunmap = (flags & MREMAP_DONTUNMAP) !== 0;
    if (fixed && !mayMove) return err(EINVAL);
    if (oldLen === 0 || newLen === 0) return err(EINVAL);
    const olen = pageAlign(oldLen);
    const nlen = pageAlign(newLen);
    if (dontunmap && (!mayMove || olen !== nlen)) return err(EINVAL);
    if (fixed) {
      if (newAddr % P !== 0 || newAddr < MMAP_MIN_ADDR || newAddr + nlen > TASK_SIZE) return err(EINVAL);
      if (newAddr < oldAddr + olen && oldAddr < newAddr + nlen) return err(EINVAL);
    }
    if (!p.alive) return err(ESRCH);
    const vma = this.vmaAt(p, oldAddr);
    if (vma === null || oldAddr + olen > vma.end) return err(EFAULT);
    const first = p.pages.get(oldAddr / P)!;
    if (dontunmap && first.shared !== null) return err(EINVAL);

    const mustMove = fixed || dontunmap;
    if (!mustMove && nlen <= olen) {
      if (nlen < olen) this.unmapRange(p, oldAddr + nlen, oldAddr + olen);
      return ok(oldAddr);
    }
    if (!mustMove && oldAddr + olen === vma.end && this.isFree(p, vma.end, oldAddr + nlen)) {
      const last = p.pages.get(vma.end / P - 1)!;
      for (let v = vma.end / P, k = 1; v < (oldAddr + nlen) / P; v++, k++) {
        p.pages.set(v, { prot: last.prot, vma: vma.token, shared: last.shared, index: last.index + k, bytes: null });
      }
      this.mergeAt(p, vma.start);
      this.mergeAt(p, oldAddr + nlen);
      return ok(oldAddr);
    }
    if (!mayMove) return err(ENOMEM);

    let moveLen = olen;
    if (fixed && nlen < olen) {
      this.unmapRange(p, oldAddr + nlen, oldAddr + olen);
      moveLen = nlen;
    }
    let target: number;
    if (fixed) {
      target = newAddr;
      this.unmapRange(p, target, target + nlen);
    } else {
      target = this.acceptPlacement(p, 'mremap', actual, nlen);
    }
    this.split(p, oldAddr);
    this.split(p, oldAddr + moveLen);
    const token = this.nextToken++;
    const moved: RefPage[] = [];
    for (let i = 0; i < nlen / P; i++) {
      // The pages move with their contents; growth beyond the old length is new memory
      // (private: zeros; shared: the object's next indices).
      const src = i < moveLen / P ? p.pages.get(oldAddr / P + i)! : null;
      moved.push({
        prot: first.prot,
        vma: token,
        shared: first.shared,
        index: first.index + i,
        bytes: src !== null && first.shared === null ? src.bytes : null,
      });
    }
    for (let v = oldAddr / P; v < (oldAddr + moveLen) / P; v++) {
      // MREMAP_DONTUNMAP: the old range stays mapped (still its own VMA) but its pages left with the move.
      if (dontunmap) p.pages.get(v)!.bytes = null;
      else p.pages.delete(v);
    }
    moved.forEach((pg, i) => p.pages.set(target / P + i, pg));
    this.mergeAt(p, target);
    this.mergeAt(p, target + nlen);
    return ok(target);
  }

  /** fork: returns the child's pid. Private pages are copied by value; shared objects are shared. */
  fork(pid: number): Expected {
    const p = this.proc(pid);
    if (!p.alive) return err(ESRCH);
    const child = new RefProcess(this.procs.length);
    for (const [vpn, pg] of p.pages) child.pages.set(vpn, { ...pg });
    this.procs.push(child);
    return ok(child.pid);
  }

  exit(pid: number): Expected {
    const p = this.proc(pid);
    if (!p.alive) return err(ESRCH);
    p.alive = false;
    p.pages.clear();
    return ok(0);
  }

  /** cpuRead: page by page in address order; the first page that faults decides the error. */
  read(pid: number, addr: number, len: number): Expected {
    const p = this.proc(pid);
    const out = new Uint8Array(len);
    for (let done = 0; done < len; ) {
      const a = addr + done;
      const off = a % P;
      const n = Math.min(len - done, P - off);
      const pg = p.pages.get(Math.floor(a / P));
      if (pg === undefined) return err(EFAULT);
      // access_error: a read needs any of read, write, exec.
      if ((pg.prot & PROT_ALL) === 0) return err(EACCES);
      const src = pageContents(pg);
      if (src !== null) out.set(src.subarray(off, off + n), done);
      done += n;
    }
    return { ok: true, bytes: out };
  }

  /** cpuWrite: page by page; pages before a faulting one have already been written. */
  write(pid: number, addr: number, data: Uint8Array): Expected {
    const p = this.proc(pid);
    for (let done = 0; done < data.length; ) {
      const a = addr + done;
      const off = a % P;
      const n = Math.min(data.length - done, P - off);
      const pg = p.pages.get(Math.floor(a / P));
      if (pg === undefined) return err(EFAULT);
      if (!(pg.prot & PROT_WRITE)) return err(EACCES);
      const next = new Uint8Array(P);
      const old = pageContents(pg);
      if (old !== null) next.set(old);
      next.set(data.subarray(done, done + n), off);
      if (pg.shared !== null) pg.shared.pages.set(pg.index, next);
      else pg.bytes = next;
      done += n;
    }
    return ok(null);
  }

  /** migratePages: no visible effect; the count is not predicted. */
  migrate(pid: number, start: number, end: number): Expected {
    const p = this.proc(pid);
    if (start % P !== 0 || end % P !== 0 || end <= start || end > TASK_SIZE) return err(EINVAL);
    if (!p.alive) return err(ESRCH);
    return ok(null);
  }
}

/** Printable form of an outcome or expectation. */
export function describeOutcome(o: Outcome | Expected): string {
  if (!o.ok) return errnoName(o.errno);
  if ('bytes' in o) return `bytes [${[...o.bytes].join(',')}]`;
  return o.value === null ? 'ok (any value)' : `ok ${o.value >= 0x10000 ? hex(o.value) : String(o.value)}`;
}

/** True if the mm's outcome is what the model expected. */
export function outcomeMatches(expected: Expected, actual: Outcome): boolean {
  if (expected.ok !== actual.ok) return false;
  if (!expected.ok) return !actual.ok && actual.errno === expected.errno;
  if ('bytes' in expected) {
    if (!('bytes' in actual) || actual.bytes.length !== expected.bytes.length) return false;
    return expected.bytes.every((b, i) => actual.bytes[i] === b);
  }
  if (expected.value === null) return true;
  return 'value' in actual && actual.value === expected.value;
}
