/**
 * `ioasid/host`: the host and its VMs, vIOMMUs, assigned devices, guests (with SVA binding and
 * nesting), the invariant checkers (full and incremental), and scenarios: the declarative format,
 * its runner, the random workload and the text report (DESIGN 5).
 */
export { Host, DEFAULT_VM_QUOTA } from './host.ts';
export type { HostEvent, HostListener, HostOptions, HostSnapshot, VmSpec } from './host.ts';
export { Vm } from './vm.ts';
export type { Viommu, ViommuSpec } from './vm.ts';
export { Guest } from './guest.ts';
export type { GuestOptions } from './guest.ts';
export { parseDevice } from './device.ts';
export { GuestSva } from './sva.ts';
export type { SvaPort } from './sva.ts';
export type { DeviceSpec, PciDevice } from './device.ts';
export { checkInvariants, INVARIANTS } from './invariants.ts';
export type { InvariantName, Violation } from './invariants.ts';
export { IncrementalChecker } from './invariants-incremental.ts';
export { STEP_KINDS, VCMD_COMMANDS, VCMD_STATUSES, EXPECT_OK, EXPECT_ANY, describeAction, describeExpectation, describeOutcome } from './scenario.ts';
export type {
  Expectation, Outcome, PasidArg, PasidMatch, Scenario, ScenarioDevice, ScenarioGuest, ScenarioHost, ScenarioStep,
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
