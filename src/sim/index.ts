/**
 * `ioasid/sim`: simulation tooling over the host model: the invariant checkers (full and
 * incremental), the declarative scenario format, its runner, the random workload and the text
 * report (docs/scenarios.md).
 */
export { checkInvariants, INVARIANTS } from './invariants.ts';
/** Kernel profiles a scenario's guests (and `simulate --guest-profile`) may take. */
export { PROFILES, isProfile } from '../core/index.ts';
export type { Profile } from '../core/index.ts';
export type { InvariantName, Violation } from './invariants.ts';
export { IncrementalChecker } from './invariants-incremental.ts';
export { STEP_KINDS, VCMD_COMMANDS, VCMD_STATUSES, EXPECT_OK, EXPECT_ANY, HAZARD_KINDS, describeAction, describeExpectation, describeOutcome } from './scenario.ts';
export type {
  Expectation, HazardExpectation, StepHazard, Outcome, PasidArg, PasidMatch, Scenario, ScenarioDevice, ScenarioGuest, ScenarioHost, ScenarioStep,
  ScenarioViommu, ScenarioVm, StateCheck, StepAction, StepKind, VcmdCommandName,
} from './scenario.ts';
export { parseScenario, validateScenario, ScenarioFormatError, formatIssue } from './scenario-parse.ts';
export type { ScenarioIssue } from './scenario-parse.ts';
export { ScenarioRunner, runScenario } from './scenario-runner.ts';
export type { CheckedViolation, KindStats, RunOptions, RunReport, StepRecord, VmSummary } from './scenario-runner.ts';
export { RandomWorkload, Prng, runRandom } from './random-workload.ts';
export type { RandomOptions } from './random-workload.ts';
export { formatReport, progressLine } from './scenario-report.ts';
export type { FormatOptions } from './scenario-report.ts';
