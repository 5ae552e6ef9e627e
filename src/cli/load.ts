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
  /** The catalogue's own lookup (scenarios/index.ts findScenario: hmm-tests spellings too). */
  readonly findScenario: (name: string) => Scenario | undefined;
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
  const find = scenariosModule['findScenario'];
  if (typeof find !== 'function') throw new Error('the bundled scenarios module does not export findScenario');
  return { scenarios: scenarios as Scenario[], registry, findScenario: find as Bundled['findScenario'] };
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
 * The values of kind `what` a user's file exports, by name, picked by `spec` (`path` or
 * `path#name`). UsageError naming the file if it does not exist, fails to load, exports none,
 * exports several and `spec` picks none, or picks a name it does not export. `collect` returns
 * the value's name if an export is one (throwing to say it is malformed), else null.
 */
async function loadFromFile<T>(what: string, spec: string, cwd: string, importer: ModuleImporter, collect: (key: string, v: unknown, file: string) => [string, T] | null): Promise<{ file: string; value: T }> {
  const hash = spec.lastIndexOf('#');
  const file = path.resolve(cwd, hash >= 0 ? spec.slice(0, hash) : spec);
  const pick = hash >= 0 ? spec.slice(hash + 1) : undefined;
  if (!existsSync(file)) throw new UsageError(`${what} file ${file} does not exist`);
  let mod: Record<string, unknown>;
  try {
    mod = await importer(file);
  } catch (e) {
    throw new UsageError(`${what} file ${file} failed to load: ${e instanceof Error ? e.message : String(e)}`);
  }
  const found = new Map<string, T>();
  for (const [k, v] of Object.entries(mod)) {
    const got = collect(k, v, file);
    if (got !== null) found.set(got[0], got[1]);
  }
  if (found.size === 0) throw new UsageError(`${what} file ${file} is malformed: it exports no ${what} (${what === 'scenario' ? 'a value returned by defineScenario' : 'a ScenarioDriver object: name, description, api, kind, features, bind'})`);
  if (pick !== undefined) {
    const v = found.get(pick);
    if (v === undefined) throw new UsageError(`${what} file ${file} exports no ${what} named ${JSON.stringify(pick)} (it exports: ${[...found.keys()].join(', ')})`);
    return { file, value: v };
  }
  if (found.size > 1) throw new UsageError(`${what} file ${file} exports ${found.size} ${what}s (${[...found.keys()].join(', ')}): pick one with ${file}#<name>`);
  return { file, value: [...found.values()][0]! };
}

/** The scenario a user's scenario file exports (`path`, or `path#name` to pick one of several). */
export async function loadScenarioFile(spec: string, cwd: string, importer: ModuleImporter): Promise<{ file: string; scenario: Scenario }> {
  const { file, value } = await loadFromFile<Scenario>('scenario', spec, cwd, importer, (_k, v) => (isScenario(v) ? [v.name, v] : null));
  return { file, scenario: value };
}

/** True if the value looks like a driver adapter (then checkScenarioDriver says what is wrong with it). */
function looksLikeDriver(v: unknown): boolean {
  return v !== null && typeof v === 'object' && typeof (v as { bind?: unknown }).bind === 'function' && typeof (v as { name?: unknown }).name === 'string';
}

/** The driver adapter (ScenarioDriver) a user's driver file exports; a malformed one is named with checkScenarioDriver's message. */
export async function loadDriverFile(spec: string, cwd: string, importer: ModuleImporter): Promise<{ file: string; driver: ScenarioDriver }> {
  const { file, value } = await loadFromFile<ScenarioDriver>('driver', spec, cwd, importer, (k, v, f) => {
    if (!looksLikeDriver(v)) return null;
    try {
      const d = checkScenarioDriver(v, `driver file ${f}: export ${k}`);
      return [d.name, d];
    } catch (e) {
      throw new UsageError(`driver file ${f} is malformed: ${e instanceof Error ? e.message : String(e)}`);
    }
  });
  return { file, driver: value };
}
