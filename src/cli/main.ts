#!/usr/bin/env node
/** The hmm-emu command: argument parsing and printing only. */
import { Command, InvalidArgumentError } from 'commander';
import { runDemo } from './demo.js';

function positiveInt(v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`expected a positive integer, got ${JSON.stringify(v)}`);
  return n;
}

const program = new Command();
program.name('hmm-emu').description('Deterministic emulation of Linux HMM, mmu notifiers and mirroring devices').version('0.1.0');
program.exitOverride((err) => {
  process.exit(err.exitCode === 0 ? 0 : 2);
});

program
  .command('demo')
  .description('engine demo: an ABBA lock-order bug found by PCT, replayed, and caught by lockdep')
  .option('--schedules <n>', 'PCT schedules to explore at most', positiveInt, 1000)
  .action(async (opts: { schedules: number }) => {
    const report = await runDemo(opts.schedules);
    process.stdout.write(report.lines.join('\n') + '\n');
    process.exitCode = report.ok ? 0 : 1;
  });

await program.parseAsync(process.argv);
