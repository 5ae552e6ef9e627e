/**
 * The seeded PRNG: xoroshiro128+ from pure-rand. The only source of randomness in a run;
 * every value drawn for a nondeterministic decision is also written to the decision log.
 */
import { uniformInt } from 'pure-rand/distribution/uniformInt';
import { xoroshiro128plus } from 'pure-rand/generator/xoroshiro128plus';
import type { RandomGenerator } from 'pure-rand/types/RandomGenerator';

export class Rng {
  private readonly gen: RandomGenerator;
  constructor(readonly seed: number) {
    this.gen = xoroshiro128plus(seed | 0);
  }
  /** A uniform integer in [0, n). `n` must be a positive integer. */
  int(n: number): number {
    return n <= 1 ? 0 : uniformInt(this.gen, 0, n - 1);
  }
}
