/**
 * The interval tree of interval notifiers (the kernel's interval_tree on rb_root_cached).
 *
 * Models: include/linux/interval_tree.h (interval_tree_insert/remove/iter_first/iter_next).
 * Intervals are [start, last], both inclusive, as the kernel's `struct interval_tree_node`.
 *
 * Backed by @flatten-js/interval-tree (a red-black tree augmented with the subtree max): O(log n)
 * insert and remove, O(log n + k) search. Equal intervals share one node with a bucket of
 * values, and remove(key, value) removes that value only (compared with ===), so two notifiers
 * on the same interval are two entries keyed by the notifier object. The package's type
 * declarations do not resolve under NodeNext, so this file gives it a typed face.
 */
import { IntervalTree as FlattenIntervalTree } from '@flatten-js/interval-tree';

/** What we use of the library, typed. */
interface RawTree<V> {
  insert(key: [number, number], value: V): unknown;
  remove(key: [number, number], value: V): unknown;
  exist(key: [number, number], value: V): boolean;
  search(interval: [number, number]): V[];
  isEmpty(): boolean;
  readonly size: number;
  readonly values: V[];
}

/** An interval tree of values keyed by inclusive [start, last] intervals. */
export class IntervalTree<V extends object> {
  private readonly tree: RawTree<V> = new FlattenIntervalTree() as RawTree<V>;
  private count = 0;

  /** interval_tree_insert. */
  insert(start: number, last: number, value: V): void {
    this.tree.insert([start, last], value);
    this.count++;
  }

  /** interval_tree_remove. False if `value` was not there under [start, last]. */
  remove(start: number, last: number, value: V): boolean {
    const removed = this.tree.remove([start, last], value) !== undefined;
    if (removed) this.count--;
    return removed;
  }

  /** True if `value` is in the tree under [start, last]. */
  has(start: number, last: number, value: V): boolean {
    return this.count > 0 && this.tree.exist([start, last], value);
  }

  /**
   * Every value whose interval intersects [start, last] (inclusive), in (start, last) order,
   * then insertion order: interval_tree_iter_first + iter_next as one list.
   */
  search(start: number, last: number): readonly V[] {
    if (this.count === 0) return EMPTY;
    return this.tree.search([start, last]);
  }

  /** Number of values. */
  get size(): number {
    return this.count;
  }

  /** Every value, in interval order. */
  values(): V[] {
    return this.tree.values;
  }
}

const EMPTY: readonly never[] = Object.freeze([]);
