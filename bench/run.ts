/**
 * `npm run bench`: runs the benchmark workloads with plain Node (no test runner), prints a
 * table and writes bench/results.json as [{ name, value, unit }]. Each workload reports the
 * best of several repetitions, after a warm-up, to keep one-off GC pauses out of the figure.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Table from 'cli-table3';
import { workloads, type BenchResult } from './workloads.js';

const only = process.argv.slice(2);
const results: BenchResult[] = [];
const table = new Table({ head: ['benchmark', 'value', 'unit', 'target'] });
for (const w of workloads) {
  if (only.length > 0 && !only.some((o) => w.name.includes(o))) continue;
  const r = await w.run();
  results.push({ name: w.name, value: r.value, unit: r.unit });
  table.push([w.name, r.value.toLocaleString('en-US', { maximumFractionDigits: 1 }), r.unit, w.target ?? '']);
}
process.stdout.write(table.toString() + '\n');
// Results land in the source tree's bench/ (this file runs from dist/bench/ when built).
const here = dirname(fileURLToPath(import.meta.url));
const out = here.includes(`${join('dist', 'bench')}`) ? join(here, '..', '..', 'bench', 'results.json') : join(here, 'results.json');
// A filtered run (npm run bench -- name) updates its entries and keeps the others.
const previous: BenchResult[] = only.length > 0 && existsSync(out) ? (JSON.parse(readFileSync(out, 'utf8')) as BenchResult[]) : [];
const merged = [...previous.filter((p) => !results.some((r) => r.name === p.name)), ...results];
writeFileSync(out, JSON.stringify(merged, null, 2) + '\n');
process.stdout.write(`wrote ${out}\n`);
