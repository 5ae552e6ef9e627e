/**
 * Run-time loading for the CLI. src/ may not import drivers/ or scenarios/ at compile time
 * (layering: they sit above the package), so the command loads the bundled scenario catalogue
 * and the driver registry by path relative to the package root when it runs, and loads user
 * scenario files (.ts through tsx's ESM API, .js/.mjs with import()).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { type DriverRegistry, type Scenario, type ScenarioDriver, checkScenarioDriver, isScenario } from '../scenario/index.js';

/** What the CLI needs from scenarios/ and drivers/. */
export interface Bundled {
  readonly scenarios: readonly Scenario[];
  readonly registry: DriverRegistry;
}

/** Imports one module file by absolute path (the indirection tests replace). */
export type ModuleImporter = (absPath: string) => Promise<Record<string, unknown>>;

/** A problem with the user's input (exit code 2). */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** Imports a module by absolute path: .ts through tsx, anything else with import(). */
export const defaultImporter: ModuleImporter = async (absPath) => {
  if (/\.[cm]?ts$/.test(absPath)) {
    const { tsImport } = await import('tsx/esm/api');
    return (await tsImport(pathToFileURL(absPath).href, import.meta.url)) as Record<string, unknown>;
  }
  return (await import(pathToFileURL(absPath).href)) as Record<string, unknown>;
};

/**
 * The package root's copy of `rel` (e.g. 'scenarios/index'): dist/scenarios/index.js when this
 * file runs from dist/src/cli, or scenarios/index.ts when it runs from the source tree.
 */
export function bundledPath(rel: string): string {
  const here = fileURLToPath(import.meta.url);
  const ext = here.endsWith('.ts') ? '.ts' : '.js';
  return path.resolve(path.dirname(here), '..', '..', rel + ext);
}

function isRegistry(v: unknown): v is DriverRegistry {
  return v !== null && typeof v === 'object' && typeof (v as { get?: unknown }).get === 'function' && typeof (v as { list?: unknown }).list === 'function';
}

/** Builds the Bundled of the two catalogue modules' namespaces. */
export function bundledFrom(scenariosModule: Record<string, unknown>, driversModule: Record<string, unknown>): Bundled {
  const scenarios = scenariosModule['SCENARIOS'];
  const registry = driversModule['drivers'];
  if (!Array.isArray(scenarios) || !scenarios.every(isScenario)) throw new Error('the bundled scenarios module does not export SCENARIOS');
  if (!isRegistry(registry)) throw new Error('the bundled drivers module does not export the drivers registry');
  return { scenarios: scenarios as Scenario[], registry };
}

/** Loads the bundled catalogue from the package root (the default `loadBundled`). */
export async function loadBundledFromPackage(importer: ModuleImporter = defaultImporter): Promise<Bundled> {
  const s = bundledPath('scenarios/index');
  const d = bundledPath('drivers/index');
  for (const p of [s, d]) if (!existsSync(p)) throw new Error(`cannot find ${p}: is the package built (npm run build)?`);
  return bundledFrom(await importer(s), await importer(d));
}

/** True if `spec` names a scenario file rather than a bundled scenario. */
export function isScenarioFile(spec: string): boolean {
  return /\.[cm]?[jt]s(#.*)?$/.test(spec) || spec.includes('/') || spec.includes(path.sep);
}

/**
 * The scenarios a file exports. `spec` is `path` or `path#name` (to pick one of several).
 * UsageError naming the file if it cannot be read, fails to load, or exports no scenario.
 */
export async function loadScenarioFile(spec: string, cwd: string, importer: ModuleImporter): Promise<{ file: string; scenario: Scenario }> {
  const hash = spec.lastIndexOf('#');
  const file = path.resolve(cwd, hash >= 0 ? spec.slice(0, hash) : spec);
  const pick = hash >= 0 ? spec.slice(hash + 1) : undefined;
  if (!existsSync(file)) throw new UsageError(`scenario file ${file} does not exist`);
  let mod: Record<string, unknown>;
  try {
    mod = await importer(file);
  } catch (e) {
    throw new UsageError(`scenario file ${file} failed to load: ${e instanceof Error ? e.message : String(e)}`);
  }
  const found = new Map<string, Scenario>();
  for (const v of Object.values(mod)) if (isScenario(v)) found.set(v.name, v);
  if (found.size === 0) throw new UsageError(`scenario file ${file} is malformed: it exports no scenario (a value returned by defineScenario)`);
  if (pick !== undefined) {
    const s = found.get(pick);
    if (s === undefined) throw new UsageError(`scenario file ${file} exports no scenario named ${JSON.stringify(pick)} (it exports: ${[...found.keys()].join(', ')})`);
    return { file, scenario: s };
  }
  if (found.size > 1) throw new UsageError(`scenario file ${file} exports ${found.size} scenarios (${[...found.keys()].join(', ')}): pick one with ${file}#<name>`);
  return { file, scenario: [...found.values()][0]! };
}

/** True if the value looks like a driver adapter (then checkScenarioDriver says what is wrong with it). */
function looksLikeDriver(v: unknown): boolean {
  return v !== null && typeof v === 'object' && typeof (v as { bind?: unknown }).bind === 'function' && typeof (v as { name?: unknown }).name === 'string';
}

/**
 * The driver adapters (ScenarioDriver objects) a user's driver file exports. `spec` is `path`
 * or `path#name`. UsageError naming the file if it cannot be read, fails to load, exports no
 * driver, or exports a malformed one (with checkScenarioDriver's message).
 */
export async function loadDriverFile(spec: string, cwd: string, importer: ModuleImporter): Promise<{ file: string; driver: ScenarioDriver }> {
  const hash = spec.lastIndexOf('#');
  const file = path.resolve(cwd, hash >= 0 ? spec.slice(0, hash) : spec);
  const pick = hash >= 0 ? spec.slice(hash + 1) : undefined;
  if (!existsSync(file)) throw new UsageError(`driver file ${file} does not exist`);
  let mod: Record<string, unknown>;
  try {
    mod = await importer(file);
  } catch (e) {
    throw new UsageError(`driver file ${file} failed to load: ${e instanceof Error ? e.message : String(e)}`);
  }
  const found = new Map<string, ScenarioDriver>();
  for (const [k, v] of Object.entries(mod)) {
    if (!looksLikeDriver(v)) continue;
    try {
      const d = checkScenarioDriver(v, `driver file ${file}: export ${k}`);
      found.set(d.name, d);
    } catch (e) {
      throw new UsageError(`driver file ${file} is malformed: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  if (found.size === 0) throw new UsageError(`driver file ${file} is malformed: it exports no driver (a ScenarioDriver object: name, description, api, kind, features, bind)`);
  if (pick !== undefined) {
    const d = found.get(pick);
    if (d === undefined) throw new UsageError(`driver file ${file} exports no driver named ${JSON.stringify(pick)} (it exports: ${[...found.keys()].join(', ')})`);
    return { file, driver: d };
  }
  if (found.size > 1) throw new UsageError(`driver file ${file} exports ${found.size} drivers (${[...found.keys()].join(', ')}): pick one with ${file}#<name>`);
  return { file, driver: [...found.values()][0]! };
}
