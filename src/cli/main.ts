#!/usr/bin/env node
/** The hmm-emu command: argument parsing and printing only (see cli.ts). */
import { runCli } from './cli.js';

process.exitCode = await runCli(process.argv.slice(2));
