/**
 * Scenarios (docs/scenarios.md): a declarative description of a host tree (hosts, VMs, vIOMMUs, devices,
 * guests, nested hosts) and of the steps to run against it, each with its expected outcome. This
 * file holds the validated, normalised model; `scenario-parse.ts` turns YAML/JSON (or plain
 * objects) into it, `scenario-runner.ts` runs it, `random-workload.ts` generates steps.
 * The file format is documented in docs/scenarios.md.
 *
 * Rules of the model:
 *  1. A VM id names one VM "slot" in the whole scenario (every level): steps address VMs by id
 *     alone. A slot has a fixed parent (the VM whose guest hosts it, or none for the root host);
 *     it may be destroyed and created again.
 *  2. A PASID argument is a literal integer or `$name`, the PASID an earlier step produced with
 *     `as: name`. A name whose step failed is unset: a step that refers to it is `UNSET`.
 *  3. Every step has an expectation; none means `ok`. `any` accepts every outcome except a crash
 *     (an exception that is not an IoasidError).
 *  4. A step records the kernel hazards logged while it ran (a Linux guest doing what a real kernel
 *     would get wrong). An expectation may require some (`hazard: kind`) or none (`hazard: none`);
 *     without one, hazards are reported and do not fail the step.
 */
import { CORE_HAZARDS, type IoasidErrorCode, type Profile } from '../core/index.ts';
import { VTD_HAZARDS, type Layout, type PasBit } from '../vtd/index.ts';

/** Every kernel hazard kind a step can expect (docs/core.md and docs/vtd.md list them). */
export const HAZARD_KINDS: readonly string[] = Object.freeze([...Object.keys(CORE_HAZARDS), ...Object.keys(VTD_HAZARDS)]);

/** A kernel hazard logged during a step. */
export interface StepHazard {
  readonly kind: string;
  readonly message: string;
}

/** The hazards a step must show (each of these kinds, at least once), or `none`. */
export type HazardExpectation = 'none' | readonly string[];

/** A PASID literal, or a `$name` reference to the PASID an earlier step produced. */
export type PasidArg = number | `$${string}`;

export interface ScenarioViommu {
  readonly segment: number;
  readonly layout?: Layout;
  readonly rangeExtension?: boolean;
  readonly pasBit?: PasBit;
  readonly pss?: number;
}

export interface ScenarioDevice {
  readonly bdf: string;
  readonly pasidBits?: number;
}

/** How a VM's guest kernel boots. */
export interface ScenarioGuest {
  readonly profile?: Profile;
  readonly layout?: Layout;
  readonly pasBit?: PasBit;
  readonly rangeExtension?: boolean;
  readonly timeoutMs?: number;
}

export interface ScenarioVm {
  readonly id: string;
  readonly quota?: number;
  readonly viommus: readonly ScenarioViommu[];
  readonly devices: readonly ScenarioDevice[];
  /** null: the VM is created but its guest is not booted. */
  readonly guest: ScenarioGuest | null;
  /** The host this VM's guest runs (nesting), or null. */
  readonly host: ScenarioHost | null;
  readonly line?: number;
}

export interface ScenarioHost {
  readonly name?: string;
  readonly pasidMin?: number;
  /** Root host only: a nested host's range is its guest's. */
  readonly pasidMax?: number;
  readonly defaultQuota?: number;
  readonly vms: readonly ScenarioVm[];
}

export const STEP_KINDS = [
  'alloc', 'free', 'bind', 'unbind', 'exit',
  'addViommu', 'removeViommu', 'assignDevice', 'removeDevice',
  'createVm', 'destroyVm', 'boot', 'vcmd', 'allocator', 'check',
] as const;
export type StepKind = (typeof STEP_KINDS)[number];

export const VCMD_COMMANDS = ['allocate', 'free', 'null'] as const;
export type VcmdCommandName = (typeof VCMD_COMMANDS)[number];

/** Status names a raw VCMD command completes with (the VT-d spec tables). */
export const VCMD_STATUSES = ['success', 'undefined command', 'no PASID available', 'invalid PASID'] as const;

export type StepAction =
  /** `count` > 1: that many allocations, stopping at the first failure; the outcome's PASID is the last. */
  | { readonly kind: 'alloc'; readonly vm: string; readonly min?: number; readonly max?: number; readonly count?: number }
  | { readonly kind: 'free'; readonly vm: string; readonly pasid: PasidArg }
  | { readonly kind: 'bind'; readonly vm: string; readonly device: string; readonly mm: string }
  | { readonly kind: 'unbind'; readonly vm: string; readonly device: string; readonly mm: string }
  /** The address space exits: its devices are unbound and its PASID freed (`Guest.mmExit`). */
  | { readonly kind: 'exit'; readonly vm: string; readonly mm: string }
  | { readonly kind: 'addViommu'; readonly vm: string; readonly viommu: ScenarioViommu }
  | { readonly kind: 'removeViommu'; readonly vm: string; readonly segment: number }
  | { readonly kind: 'assignDevice'; readonly vm: string; readonly device: ScenarioDevice }
  | { readonly kind: 'removeDevice'; readonly vm: string; readonly device: string }
  /** `on`: the VM whose guest hosts the new VM (null: the root host). */
  | { readonly kind: 'createVm'; readonly on: string | null; readonly spec: ScenarioVm }
  | { readonly kind: 'destroyVm'; readonly vm: string }
  | { readonly kind: 'boot'; readonly vm: string; readonly guest: ScenarioGuest }
  | {
      readonly kind: 'vcmd';
      readonly vm: string;
      /** null: the VM's lowest segment. */
      readonly segment: number | null;
      readonly command: VcmdCommandName;
      readonly pasid?: PasidArg;
      readonly min?: number;
      readonly max?: number;
    }
  /**
   * Another driver of the guest kernel registers (or unregisters) a custom allocator of its own,
   * `ops` by name; ops with the same `functions` name share their functions (one group). Its
   * allocator has no PASIDs to give (INVALID_IOASID).
   */
  | { readonly kind: 'allocator'; readonly vm: string; readonly call: 'register' | 'unregister'; readonly ops: string; readonly functions: string }
  | { readonly kind: 'check'; readonly check: StateCheck };

/** A `check` step: compare state with what the scenario says. Omitted fields are not compared. */
export interface StateCheck {
  /** null: the root host (only `pasids` applies). */
  readonly vm: string | null;
  readonly alive?: boolean;
  /** A count, or the exact list (order ignored). */
  readonly pasids?: number | readonly PasidArg[];
  readonly guestPasids?: number | readonly PasidArg[];
  readonly bindings?: number;
  readonly devices?: readonly string[];
  readonly viommus?: readonly number[];
}

export type PasidMatch =
  | { readonly eq: PasidArg }
  | { readonly min?: number; readonly max?: number; readonly not?: readonly PasidArg[] };

export type Expectation =
  | { readonly type: 'ok'; readonly pasid?: PasidMatch; readonly status?: string; readonly hazard?: HazardExpectation }
  | { readonly type: 'error'; readonly codes: readonly IoasidErrorCode[]; readonly hazard?: HazardExpectation }
  | { readonly type: 'any' };

export const EXPECT_OK: Expectation = Object.freeze({ type: 'ok' });
export const EXPECT_ANY: Expectation = Object.freeze({ type: 'any' });

export interface ScenarioStep {
  readonly action: StepAction;
  readonly name?: string;
  readonly expect: Expectation;
  /** Name the PASID this step produces (alloc, bind, vcmd allocate). */
  readonly as?: string;
  /** 1-based line in the scenario file. */
  readonly line?: number;
}

export interface Scenario {
  readonly name: string;
  readonly description?: string;
  readonly file?: string;
  readonly host: ScenarioHost;
  readonly steps: readonly ScenarioStep[];
}

/** What a step did. `CRASH`: an exception that is not an IoasidError (always a failure). */
export type Outcome =
  | { readonly ok: true; readonly pasid?: number; readonly status?: string }
  | { readonly ok: false; readonly code: IoasidErrorCode | 'CRASH' | 'UNSET' | 'MISMATCH'; readonly message: string };

/** Short text of a step's action, for reports: `bind vm1 0000:00:02.0 mm=a`. */
export function describeAction(a: StepAction): string {
  switch (a.kind) {
    case 'alloc':
      return `alloc ${a.vm}${a.count !== undefined && a.count !== 1 ? ` x${a.count}` : ''}${a.min !== undefined || a.max !== undefined ? ` [${a.min ?? 1}, ${a.max ?? 'max'}]` : ''}`;
    case 'free':
      return `free ${a.vm} ${a.pasid}`;
    case 'bind':
    case 'unbind':
      return `${a.kind} ${a.vm} ${a.device} mm=${a.mm}`;
    case 'exit':
      return `exit ${a.vm} mm=${a.mm}`;
    case 'addViommu':
      return `addViommu ${a.vm} seg ${a.viommu.segment}${a.viommu.layout === 'A' ? ' layout A' : ''}${a.viommu.rangeExtension === true ? ' +range' : ''}`;
    case 'removeViommu':
      return `removeViommu ${a.vm} seg ${a.segment}`;
    case 'assignDevice':
      return `assignDevice ${a.vm} ${a.device.bdf}${a.device.pasidBits !== undefined ? ` (${a.device.pasidBits}-bit)` : ''}`;
    case 'removeDevice':
      return `removeDevice ${a.vm} ${a.device}`;
    case 'createVm':
      return `createVm ${a.spec.id}${a.on !== null ? ` on ${a.on}` : ''}`;
    case 'destroyVm':
      return `destroyVm ${a.vm}`;
    case 'boot':
      return `boot ${a.vm}${a.guest.profile !== undefined ? ` (${a.guest.profile})` : ''}`;
    case 'vcmd':
      return `vcmd ${a.vm}${a.segment !== null ? ` seg ${a.segment}` : ''} ${a.command}${a.pasid !== undefined ? ` ${a.pasid}` : ''}${a.min !== undefined || a.max !== undefined ? ` [${a.min ?? 1}, ${a.max ?? 'max'}]` : ''}`;
    case 'allocator':
      return `allocator ${a.vm} ${a.call} ${a.ops}${a.functions !== a.ops ? ` (functions of ${a.functions})` : ''}`;
    case 'check': {
      const c = a.check;
      const parts: string[] = [];
      if (c.alive !== undefined) parts.push(c.alive ? 'alive' : 'gone');
      if (c.pasids !== undefined) parts.push(`pasids ${fmtList(c.pasids)}`);
      if (c.guestPasids !== undefined) parts.push(`guest ${fmtList(c.guestPasids)}`);
      if (c.bindings !== undefined) parts.push(`bindings ${c.bindings}`);
      if (c.devices !== undefined) parts.push(`devices [${c.devices.join(', ')}]`);
      if (c.viommus !== undefined) parts.push(`viommus [${c.viommus.join(', ')}]`);
      return `check ${c.vm ?? 'host'}: ${parts.join(', ')}`;
    }
  }
}

function fmtList(x: number | readonly PasidArg[]): string {
  return typeof x === 'number' ? String(x) : `[${x.join(', ')}]`;
}

/** Short text of an expectation: `ok`, `ENOSPC`, `pasid 1..1023`. */
export function describeExpectation(e: Expectation): string {
  if (e.type === 'any') return 'any';
  const h = e.hazard === undefined ? '' : e.hazard === 'none' ? ', no hazard' : `, hazard ${e.hazard.join('+')}`;
  if (e.type === 'error') return `${e.codes.join('|')}${h}`;
  return `${describeOk(e)}${h}`;
}

function describeOk(e: Extract<Expectation, { type: 'ok' }>): string {
  const parts: string[] = [];
  if (e.pasid !== undefined) {
    const m = e.pasid;
    if ('eq' in m) parts.push(`pasid ${m.eq}`);
    else {
      parts.push(`pasid ${m.min ?? ''}..${m.max ?? ''}`);
      if (m.not !== undefined && m.not.length > 0) parts.push(`not ${m.not.join(',')}`);
    }
  }
  if (e.status !== undefined) parts.push(`"${e.status}"`);
  return parts.length === 0 ? 'ok' : parts.join(' ');
}

/** Short text of an outcome: `pasid 5`, `ok`, `ENOSPC`. */
export function describeOutcome(o: Outcome): string {
  if (!o.ok) return o.code;
  const parts: string[] = [];
  if (o.status !== undefined) parts.push(`"${o.status}"`);
  if (o.pasid !== undefined) parts.push(`pasid ${o.pasid}`);
  return parts.length === 0 ? 'ok' : parts.join(' ');
}
