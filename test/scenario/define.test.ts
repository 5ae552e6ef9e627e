/** defineScenario: defaults, and KernelError(EINVAL) naming the field of a malformed definition. */
import { describe, expect, it } from 'vitest';
import { EINVAL, KernelError } from 'hmm-emu';
import { type ScenarioDefinition, defineScenario, deviceTask, isScenario } from 'hmm-emu/testing';

const ok: ScenarioDefinition = { name: 'ok', description: 'fine', drivers: 'any', tasks: { cpu: async () => {} } };

/** defineScenario({ ...ok, ...patch }) must throw KernelError(EINVAL) whose message matches `re`. */
function rejects(patch: Record<string, unknown>, re: RegExp): void {
  let err: unknown = null;
  try {
    defineScenario({ ...ok, ...patch } as unknown as ScenarioDefinition);
  } catch (e) {
    err = e;
  }
  expect(err, `no error for ${JSON.stringify(Object.keys(patch))}`).toBeInstanceOf(KernelError);
  expect((err as KernelError).errno).toBe(EINVAL);
  expect((err as KernelError).message).toMatch(re);
}

describe('defineScenario', () => {
  it('fills in the defaults of the world and freezes the scenario', () => {
    const s = defineScenario(ok);
    expect(isScenario(s)).toBe(true);
    expect(s.world).toEqual({ frames: 1024, mms: ['proc'], devices: [{ name: 'gpu0', mm: 'proc', memoryFrames: 64, hardware: {}, driverOptions: {}, deferred: false }] });
    expect(s.origin).toBe('');
    expect(s.tags).toEqual([]);
    expect(s.tasks.map((t) => t.name)).toEqual(['cpu']);
    expect(s.maxSteps).toBe(1_000_000);
    expect(s.state()).toEqual({});
    expect(Object.isFrozen(s)).toBe(true);
  });

  it('keeps tasks in definition order and device tasks as specs', () => {
    const s = defineScenario({ ...ok, tasks: { b: async () => {}, a: deviceTask({ warps: 2, kernel: async () => {} }) } });
    expect(s.tasks.map((t) => t.name)).toEqual(['b', 'a']);
    expect(typeof s.tasks[1]!.spec).toBe('object');
  });

  it('rejects a bad name or a missing description, naming the field', () => {
    rejects({ name: 'Bad Name' }, /defineScenario\(Bad Name\): name must be kebab-case/);
    rejects({ name: '' }, /name must be a non-empty string/);
    rejects({ description: undefined }, /defineScenario\(ok\): description must be a non-empty string/);
  });

  it('rejects an unknown field (a typo), naming it', () => {
    rejects({ taks: {} }, /taks is not a field/);
  });

  it('rejects tasks that are missing, empty, badly named, reserved or of the wrong kind', () => {
    rejects({ tasks: undefined }, /tasks must be an object with at least one task/);
    rejects({ tasks: {} }, /tasks must be an object with at least one task/);
    rejects({ tasks: { 'a b': async () => {} } }, /tasks\.a b has a bad name/);
    rejects({ tasks: { scenario: async () => {} } }, /tasks\.scenario is reserved/);
    rejects({ tasks: { gpu: 42 } }, /tasks\.gpu must be an async function/);
    rejects({ tasks: { gpu: { kernel: async () => {} } } }, /tasks\.gpu\.kind must be 'device'/);
  });

  it('rejects a device task with bad warps, an unknown device or no kernel', () => {
    rejects({ tasks: { gpu: deviceTask({ warps: 0, kernel: async () => {} }) } }, /tasks\.gpu\.warps must be an integer in \[1, 65536\]: 0/);
    rejects({ tasks: { gpu: deviceTask({ device: 'gpu7', kernel: async () => {} }) } }, /tasks\.gpu\.device must name a world device \(gpu0\): "gpu7"/);
    rejects({ tasks: { gpu: { kind: 'device' } } }, /tasks\.gpu\.kernel must be a function/);
    rejects({ tasks: { gpu: deviceTask({ killable: 'yes' as unknown as boolean, kernel: async () => {} }) } }, /tasks\.gpu\.killable must be a boolean/);
  });

  it('rejects a malformed world, naming the field', () => {
    rejects({ world: { frames: 3 } }, /world\.frames must be an integer in \[16, 67108864\]: 3/);
    rejects({ world: { mms: [] } }, /world\.mms must be a non-empty array/);
    rejects({ world: { mms: ['a', 'a'] } }, /world\.mms\[1\] is a duplicate mm name/);
    rejects({ world: { devices: [{ name: 'g', mm: 'other' }] } }, /world\.devices\[0\]\.mm must name one of world\.mms \(proc\): "other"/);
    rejects({ world: { devices: [{ name: 'g' }, { name: 'g' }] } }, /world\.devices\[1\]\.name is a duplicate device name/);
    rejects({ world: { devices: [{ name: 'g', memoryFrames: -1 }] } }, /world\.devices\[0\]\.memoryFrames must be an integer/);
    rejects({ world: { devices: [{ name: 'g', hardware: { name: 'x' } }] } }, /world\.devices\[0\]\.hardware must not set name or memory/);
    rejects({ world: { devices: [{ name: 'g', colour: 'red' }] } }, /world\.devices\[0\]\.colour is not a field/);
  });

  it('rejects a malformed driver selector, naming the field', () => {
    rejects({ drivers: undefined }, /drivers is required/);
    rejects({ drivers: [] }, /drivers must not be empty/);
    rejects({ drivers: 'all' }, /drivers must be 'any', a list of driver names, or \{ api, features \}/);
    rejects({ drivers: { api: '2016' } }, /drivers\.api must be '2015', 'modern'/);
    rejects({ drivers: { features: ['teleport'] } }, /drivers\.features\[0\] must be one of device-migration, migrate-to-system, snapshot, exclusive, release, oversubscription: "teleport"/);
    rejects({ drivers: { owner: 'me' } }, /drivers\.owner is not a field/);
  });

  it('rejects non-function state, setup or check and a bad maxSteps', () => {
    rejects({ state: {} }, /state must be a function/);
    rejects({ setup: 'go' }, /setup must be a function/);
    rejects({ check: 1 }, /check must be a function/);
    rejects({ maxSteps: 0 }, /maxSteps must be an integer/);
    rejects({ tags: ['ok', ''] }, /tags\[1\] must be a non-empty string/);
  });
});
