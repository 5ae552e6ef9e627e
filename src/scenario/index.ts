/** src/scenario: the scenario format, the world builder, the runner, exploration and replay. */
export { defineScenario, deviceTask, isScenario, SCENARIO_TASK } from './define.js';
export type { Scenario, ScenarioDefinition, WorldSpec, DeviceSpec, ResolvedWorld, TaskSpec, CpuTask, DeviceTask } from './define.js';
export { ScenarioExpectationError } from './context.js';
export type { ScenarioContext, ScenarioDevice, DriverInfo, LogEntry, MapOptions, RacePointOptions } from './context.js';
export { DriverRegistry, selectorRejects, describeSelector, checkScenarioDriver, DRIVER_APIS, DRIVER_KINDS, DRIVER_FEATURES, SNAPSHOT } from './driver.js';
export type { ScenarioDriver, BoundDevice, BindRequest, DriverCommands, DriverSelector, DriverApi, DriverKind, DriverFeature } from './driver.js';
export { buildWorld, bindDevices } from './world.js';
export type { ScenarioWorld, WorldDevice, BuildWorldOptions } from './world.js';
export { runScenario, replayScenario, scenarioRejects, renderResult, formatStats, scenarioResultToJSON, normalizeMmIds, mergeFaultLatency, VERDICTS } from './runner.js';
export type { ScenarioResult, ScenarioStats, FaultLatencyStats, Verdict, RunScenarioOptions, ReplayScenarioOptions, ScenarioRunOptions } from './runner.js';
export { exploreScenario, checkScenario, compareScenario } from './explore.js';
export type { ExploreScenarioOptions, ScenarioExploreResult, CheckScenarioOptions, ScenarioCheckResult, Expectation, CompareScenarioOptions, ComparisonRow, ScenarioComparison } from './explore.js';
export { TimelineRecorder, renderTimeline, TIMELINE_EVENTS } from './timeline.js';
export type { Timeline, TimelineEntry, TimelineOptions } from './timeline.js';
