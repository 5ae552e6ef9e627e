#!/usr/bin/env node
/** The hmm-emu command: argument parsing and printing only (see cli.ts). */
import { runCli } from './cli.js';

// `hmm-emu list | head`: the reader went away; stop quietly, as Unix tools do.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw e;
  });
}

process.exitCode = await runCli(process.argv.slice(2));
