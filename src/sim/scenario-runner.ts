/**
 * The scenario runner (docs/scenarios.md): builds the host tree a scenario declares, runs its steps one at
 * a time, compares each outcome with the step's expectation, and checks the system's invariants
 * after every step.
 *
 * Runner rules:
 *  1. A step's outcome is `ok` (with the PASID or VCMD status it produced), an IoasidError code,
 *     `UNSET` (it refers to a `$name` whose step failed), `MISMATCH` (a `check` step found other
 *     state) or `CRASH` (anything thrown that is not an IoasidError: always a failure).
 *  2. Checks: the incremental checker (`invariants-incremental.ts`) after every step, for what the
 *     step touched, and the full `checkInvariants` every `fullEvery` steps (1: every step, the
 *     default for scenario files) and once more at the end. Destroyed VMs are passed to both.
 *  3. The run stops at the first failing step (unexpected outcome or violation) unless told to go
 *     on; the report names the step by index (1-based), `name` and line.
 *  4. Steps run strictly one after another; a step's promise settles before the next one starts.
 *  5. Kernel hazards (log level `hazard`, from every guest and host at every level) are recorded
 *     with the step during which they were logged; a step that expects `hazard: kind` fails
 *     without it, one that expects `hazard: none` fails with any. Those of the setup are reported
 *     apart.
 */
import { INVALID_IOASID, IoasidError, PASID_MAX, isIoasidError, type AllocatorOps, type IoasidErrorCode, type IoasidSpace, type LogFn, type Profile } from '../core/index.ts';
import { VCMD_CMD, decodeVcrsp, encodeRangedAllocate, encodeVcmd, registerOffset, statusName } from '../vtd/index.ts';
import { Host, type HostOptions } from '../host/index.ts';
import type { Vm } from '../host/index.ts';
import type { Guest, GuestOptions } from '../host/index.ts';
import { checkInvariants, type Violation } from './invariants.ts';
import { IncrementalChecker } from './invariants-incremental.ts';
import {
  describeAction, describeExpectation,
  type Expectation, type Outcome, type StepHazard, type PasidArg, type PasidMatch, type Scenario, type ScenarioGuest, type ScenarioHost,
  type ScenarioStep, type ScenarioVm, type StateCheck, type StepAction, type StepKind,
} from './scenario.ts';

export interface RunOptions {
  /** Incremental check after every step (default true). */
  readonly incremental?: boolean;
  /** Full check every K steps (default 1: every step); 0: only at the end. */
  readonly fullEvery?: number;
  /** Stop at the first failing step (default true). */
  readonly stopOnFailure?: boolean;
  /** Keep a record of every step (default) or of failing steps only (long runs). */
  readonly record?: 'all' | 'failures';
  /** Extra options for the root host (and `wrapBackend` for nested hosts too): fault injection. */
  readonly hostOptions?: Pick<HostOptions, 'space' | 'wrapBackend' | 'log' | 'now'>;
  /** Called for every VM the runner creates (test hook: inject faults into a VM). */
  readonly onVm?: (vm: Vm, host: Host) => void;
  /** Called every `progressEvery` steps (default 1000). */
  readonly onProgress?: (done: number, total: number | null) => void;
  readonly progressEvery?: number;
  /** Most violations kept per check (default 20). */
  readonly violationLimit?: number;
  /**
   * Boot every guest with this profile instead of the scenario's: the same steps on another
   * kernel (e.g. `linux-6.x`, what replaced the design, or a Linux form of it).
   */
  readonly guestProfile?: Profile;
}

export interface CheckedViolation extends Violation {
  /** Which checker found it. */
  readonly check: 'full' | 'incremental';
}

export interface StepRecord {
  /** 1-based position in the run; 0 for the host tree's setup, total + 1 for the final check. */
  readonly index: number;
  readonly line?: number;
  readonly name?: string;
  readonly kind: StepKind | 'setup' | 'final-check';
  readonly action: string;
  readonly expected: string;
  readonly outcome: Outcome;
  /** Why the outcome is not the expected one; null when it is. */
  readonly unexpected: string | null;
  readonly violations: readonly CheckedViolation[];
  /** Kernel hazards logged while the step ran (a Linux guest doing what a real kernel got wrong). */
  readonly hazards: readonly StepHazard[];
  /** As expected and no violation. */
  readonly pass: boolean;
}

export interface KindStats {
  count: number;
  ok: number;
  errors: Record<string, number>;
}

export interface VmSummary {
  readonly host: string;
  readonly level: number;
  readonly id: string;
  readonly alive: boolean;
  readonly quota: number;
  readonly used: number;
  readonly peak: number;
  readonly bindings: number;
  readonly devices: number;
  readonly viommus: readonly number[];
  /** The guest's profile, 'off' (not booted), 'dead', or 'destroyed'. */
  readonly guest: string;
}

export interface RunReport {
  readonly scenario: string;
  readonly file?: string;
  readonly ok: boolean;
  readonly steps: { readonly total: number | null; readonly run: number; readonly asExpected: number; readonly unexpected: number; readonly withViolations: number };
  readonly byKind: Readonly<Record<string, KindStats>>;
  /** Every step (record 'all') or the failing ones. */
  readonly records: readonly StepRecord[];
  /** The first failing step (or the setup, or the final check). */
  readonly failure: StepRecord | null;
  readonly checks: {
    readonly incremental: boolean;
    readonly fullEvery: number;
    readonly fullRuns: number;
    /** Time spent in full checks, in all. */
    readonly fullMs: number;
    readonly violations: number;
  };
  readonly vms: readonly VmSummary[];
  readonly durationMs: number;
  readonly stepsPerSecond: number;
  /** Kernel hazards in all (setup included), by kind; those of the setup. */
  readonly hazards: { readonly total: number; readonly byKind: Readonly<Record<string, number>>; readonly setup: readonly StepHazard[] };
  readonly random?: Readonly<Record<string, unknown>>;
}

const OK: Outcome = Object.freeze({ ok: true });
const NO_HAZARDS: readonly StepHazard[] = Object.freeze([]);

/** A `$name` whose step did not produce a PASID. */
class UnsetName extends Error {}

interface Located {
  readonly host: Host;
  readonly vm: Vm;
}

export class ScenarioRunner {
  readonly root: Host;
  /** VMs destroyed so far, for the destroyed-vm invariant. */
  readonly destroyed: { host: Host; vm: Vm }[] = [];
  readonly #incremental: boolean;
  readonly #fullEvery: number;
  readonly #stopOnFailure: boolean;
  readonly #recordAll: boolean;
  readonly #limit: number;
  readonly #onVm: ((vm: Vm, host: Host) => void) | undefined;
  readonly #onProgress: ((done: number, total: number | null) => void) | undefined;
  readonly #progressEvery: number;
  readonly #wrapBackend: HostOptions['wrapBackend'];
  readonly #guestProfile: Profile | undefined;
  /** Per guest kernel: the `allocator` steps' ops objects by name, and their functions by name. */
  readonly #driverOps = new WeakMap<IoasidSpace, { ops: Map<string, AllocatorOps>; fns: Map<string, Pick<AllocatorOps, 'alloc' | 'free'>> }>();
  /** VM id -> parent VM id (null: root host). */
  readonly #parents = new Map<string, string | null>();
  /** Every VM id ever created -> its latest VM object, in creation order. */
  readonly #vms = new Map<string, Located>();
  readonly #names = new Map<string, number>();
  /** Spaces whose bind/unbind events the runner watches (one per host). */
  readonly #watched = new WeakSet<object>();
  /** Host-side unbinds during the current step: what the incremental check must look at. */
  readonly #unbound: { host: Host; vm: Vm; pasid: number }[] = [];
  readonly #peaks = new WeakMap<Vm, number>();
  readonly #scratch: Violation[] = [];
  readonly #checker: IncrementalChecker;
  readonly #stats = new Map<string, KindStats>();
  readonly #records: StepRecord[] = [];
  #failure: StepRecord | null = null;
  #index = 0;
  #total: number | null = null;
  #asExpected = 0;
  #unexpected = 0;
  #withViolations = 0;
  #fullRuns = 0;
  #fullMs = 0;
  #violationCount = 0;
  #t0 = performance.now();
  #stopped = false;
  /** Hazards logged since the current step (or the setup) began; filled by the log sink. */
  readonly #hazardSink: StepHazard[];
  readonly #hazardsByKind = new Map<string, number>();
  #setupHazards: readonly StepHazard[] = [];

  private constructor(root: Host, opts: RunOptions, sink: StepHazard[]) {
    this.root = root;
    this.#hazardSink = sink;
    this.#incremental = opts.incremental ?? true;
    this.#fullEvery = opts.fullEvery ?? 1;
    this.#stopOnFailure = opts.stopOnFailure ?? true;
    this.#recordAll = (opts.record ?? 'all') === 'all';
    this.#limit = opts.violationLimit ?? 20;
    this.#onVm = opts.onVm;
    this.#onProgress = opts.onProgress;
    this.#progressEvery = Math.max(1, opts.progressEvery ?? 1000);
    this.#wrapBackend = opts.hostOptions?.wrapBackend;
    this.#guestProfile = opts.guestProfile;
    this.#checker = new IncrementalChecker(this.#scratch, this.#limit);
    if (!Number.isInteger(this.#fullEvery) || this.#fullEvery < 0) throw new IoasidError('EINVAL', `fullEvery must be a non-negative integer, got ${this.#fullEvery}`, { fullEvery: this.#fullEvery });
  }

  /**
   * Build the declared host tree. A tree that cannot be built (e.g. a quota above the host's
   * capacity) is a failure of the setup, recorded as step 0; the runner is then stopped.
   */
  static async create(decl: ScenarioHost, opts: RunOptions = {}): Promise<ScenarioRunner> {
    // Every kernel of the tree logs through the root host's log (guests and nested hosts inherit it).
    const sink: StepHazard[] = [];
    const userLog = opts.hostOptions?.log;
    const log: LogFn = (level, message, details) => {
      if (level === 'hazard') sink.push({ kind: typeof details?.hazard === 'string' ? details.hazard : 'unknown', message });
      userLog?.(level, message, details);
    };
    const root = new Host({
      ...(opts.hostOptions ?? {}),
      log,
      ...(decl.name !== undefined ? { name: decl.name } : {}),
      ...(decl.pasidMin !== undefined ? { pasidMin: decl.pasidMin } : {}),
      ...(decl.pasidMax !== undefined ? { pasidMax: decl.pasidMax } : {}),
      ...(decl.defaultQuota !== undefined ? { defaultQuota: decl.defaultQuota } : {}),
    });
    const r = new ScenarioRunner(root, opts, sink);
    r.#watch(root);
    let outcome: Outcome = OK;
    try {
      for (const vm of decl.vms) r.#build(root, null, vm, null);
    } catch (e) {
      outcome = toOutcome(e);
    }
    r.#afterSetup(outcome);
    return r;
  }

  get stopped(): boolean {
    return this.#stopped;
  }

  get failure(): StepRecord | null {
    return this.#failure;
  }

  /** The total shown in progress reports (null: unknown). */
  set total(n: number | null) {
    this.#total = n;
  }

  // ------------------------------------------------------------------ building the tree

  #build(host: Host, parent: string | null, decl: ScenarioVm, built: Located[] | null): Vm {
    this.#parents.set(decl.id, parent);
    const vm = host.createVm({
      id: decl.id,
      ...(decl.quota !== undefined ? { quota: decl.quota } : {}),
      viommus: decl.viommus,
      devices: decl.devices,
    });
    this.#vms.set(decl.id, { host, vm });
    built?.push({ host, vm });
    this.#onVm?.(vm, host);
    if (decl.guest !== null) {
      const guest = host.boot(decl.id, this.#guestOptions(decl.guest));
      if (decl.host !== null) {
        const nested = guest.startHost({
          ...(decl.host.name !== undefined ? { name: decl.host.name } : {}),
          ...(decl.host.pasidMin !== undefined ? { pasidMin: decl.host.pasidMin } : {}),
          ...(decl.host.defaultQuota !== undefined ? { defaultQuota: decl.host.defaultQuota } : {}),
          ...(this.#wrapBackend !== undefined ? { wrapBackend: this.#wrapBackend } : {}),
        });
        this.#watch(nested);
        for (const child of decl.host.vms) this.#build(nested, decl.id, child, built);
      }
    }
    return vm;
  }

  /**
   * Follow the host's bindings through its space's bind/unbind events (the VM's `onBind`): the
   * incremental checker's count of devices bound per PASID is exactly the host's, and an unbind
   * tells which PASID a step touched, wherever it happened (unbind, device removal, teardown).
   */
  #watch(host: Host): void {
    if (this.#watched.has(host.space)) return;
    this.#watched.add(host.space);
    host.space.subscribe((e) => {
      const info = e.info as { vm?: unknown } | undefined;
      if (info === undefined || typeof info.vm !== 'string') return;
      const at = this.#vms.get(info.vm);
      if (at === undefined || at.host !== host) return;
      this.#checker.noteBinding(at.vm, e.id, e.type === 'bind' ? 1 : -1);
      if (e.type === 'unbind') this.#unbound.push({ host, vm: at.vm, pasid: e.id });
    }, { types: ['bind', 'unbind'], priority: 'device' });
  }

  #afterSetup(outcome: Outcome): void {
    this.#setupHazards = this.#takeHazards();
    const violations: CheckedViolation[] = [];
    if (outcome.ok) {
      if (this.#incremental) {
        this.#scratch.length = 0;
        for (const { host, vm } of this.#vms.values()) this.#checker.vm(host, vm, host.guest(vm.id));
        for (const v of this.#scratch) violations.push({ ...v, check: 'incremental' });
      }
      if (this.#fullEvery > 0) {
        for (const v of this.#full()) violations.push({ ...v, check: 'full' });
      }
    }
    if (outcome.ok && violations.length === 0) return;
    const rec: StepRecord = {
      index: 0, kind: 'setup', action: 'build the host tree', expected: 'ok', outcome,
      unexpected: outcome.ok ? null : `the host tree could not be built: ${outcome.code}: ${outcome.message}`,
      violations, hazards: this.#setupHazards, pass: false,
    };
    this.#violationCount += violations.length;
    this.#records.push(rec);
    this.#failure = rec;
    this.#stopped = true;
  }

  // ------------------------------------------------------------------ steps

  #guestOptions(g: ScenarioGuest): GuestOptions {
    return guestOptions(g, this.#guestProfile);
  }

  /** Run one step; returns its outcome. */
  async step(step: ScenarioStep): Promise<Outcome> {
    if (this.#stopped) throw new IoasidError('EINVAL', 'the runner has stopped (a step failed)', {});
    const index = ++this.#index;
    this.#scratch.length = 0;
    this.#unbound.length = 0;
    this.#hazardSink.length = 0;
    const a = step.action;
    let outcome: Outcome;
    try {
      outcome = await this.#act(a);
    } catch (e) {
      outcome = toOutcome(e);
    }
    if (outcome.ok && step.as !== undefined && outcome.pasid !== undefined) this.#names.set(step.as, outcome.pasid);
    if (this.#incremental) {
      for (const u of this.#unbound) if (!u.vm.destroyed) this.#checker.pasid(u.host, u.vm, u.host.guest(u.vm.id), u.pasid);
    }
    const hazards = this.#takeHazards();
    const unexpected = this.#mismatch(step.expect, outcome) ?? this.#hazardMismatch(step.expect, hazards);

    let violations: CheckedViolation[] | null = null;
    if (this.#scratch.length > 0) violations = this.#scratch.map((v) => ({ ...v, check: 'incremental' as const }));
    if (this.#fullEvery > 0 && index % this.#fullEvery === 0) {
      const full = this.#full();
      if (full.length > 0) (violations ??= []).push(...full.map((v) => ({ ...v, check: 'full' as const })));
    }

    let s = this.#stats.get(a.kind);
    if (s === undefined) this.#stats.set(a.kind, (s = { count: 0, ok: 0, errors: {} }));
    s.count++;
    if (outcome.ok) s.ok++;
    else s.errors[outcome.code] = (s.errors[outcome.code] ?? 0) + 1;
    if (unexpected === null) this.#asExpected++;
    else this.#unexpected++;
    const pass = unexpected === null && violations === null;
    if (violations !== null) {
      this.#withViolations++;
      this.#violationCount += violations.length;
    }
    if (!pass || this.#recordAll) {
      const rec: StepRecord = {
        index,
        ...(step.line !== undefined ? { line: step.line } : {}),
        ...(step.name !== undefined ? { name: step.name } : {}),
        kind: a.kind,
        action: describeAction(a),
        expected: describeExpectation(step.expect),
        outcome,
        unexpected,
        violations: violations ?? [],
        hazards,
        pass,
      };
      this.#records.push(rec);
      if (!pass && this.#failure === null) this.#failure = rec;
    }
    if (!pass && this.#stopOnFailure) this.#stopped = true;
    if (this.#onProgress !== undefined && index % this.#progressEvery === 0) this.#onProgress(index, this.#total);
    return outcome;
  }

  /** The hazards logged since the last call, counted by kind. */
  #takeHazards(): readonly StepHazard[] {
    if (this.#hazardSink.length === 0) return NO_HAZARDS;
    const out = [...this.#hazardSink];
    this.#hazardSink.length = 0;
    for (const h of out) this.#hazardsByKind.set(h.kind, (this.#hazardsByKind.get(h.kind) ?? 0) + 1);
    return out;
  }

  /** null when the step's hazards are what it expects; else why not. */
  #hazardMismatch(e: Expectation, hazards: readonly StepHazard[]): string | null {
    if (e.type === 'any' || e.hazard === undefined) return null;
    const got = hazards.length === 0 ? 'none' : [...new Set(hazards.map((h) => h.kind))].join(', ');
    if (e.hazard === 'none') return hazards.length === 0 ? null : `expected no kernel hazard, got ${got}: ${hazards[0]?.message ?? ''}`;
    const missing = e.hazard.filter((k) => !hazards.some((h) => h.kind === k));
    return missing.length === 0 ? null : `expected kernel hazard ${missing.join(', ')}, got ${got}`;
  }

  #full(): Violation[] {
    const t = performance.now();
    this.#fullRuns++;
    const v = checkInvariants(this.root, { destroyed: this.destroyed, limit: this.#limit });
    this.#fullMs += performance.now() - t;
    return v;
  }

  /** Where VM `id` lives now: its host (ENODEV when the host above is gone) and the VM (ENOENT). */
  #hostOf(id: string): Host {
    const parent = this.#parents.get(id);
    if (parent === undefined) throw new IoasidError('ENOENT', `no VM ${id} in this scenario`, { vm: id });
    if (parent === null) return this.root;
    const ph = this.#hostOf(parent);
    if (!ph.vms().some((v) => v.id === parent)) throw new IoasidError('ENOENT', `no VM ${id}: VM ${parent}, whose guest hosted it, does not exist`, { vm: id, parent });
    const pg = ph.guest(parent);
    const nested = pg === null || pg.dead ? null : pg.nestedHost;
    if (nested === null || nested.down) throw new IoasidError('ENODEV', `VM ${parent}'s guest runs no host for ${id}`, { vm: id, parent });
    return nested;
  }

  #guestOf(host: Host, vm: Vm): Guest {
    const g = host.guest(vm.id);
    if (g === null) throw new IoasidError('ENODEV', `the guest of VM ${vm.id} is not booted`, { vm: vm.id });
    return g;
  }

  #pasid(arg: PasidArg): number {
    if (typeof arg === 'number') return arg;
    const v = this.#names.get(arg.slice(1));
    if (v === undefined) throw new UnsetName(`${arg} is unset: the step that names it did not produce a PASID`);
    return v;
  }

  #peak(host: Host, vm: Vm): void {
    const n = host.space.setCount(vm.set);
    if (n > (this.#peaks.get(vm) ?? 0)) this.#peaks.set(vm, n);
  }

  /** After a step that changes a VM wholesale: check all of it (O(its PASIDs)). */
  #scopeVm(host: Host, vm: Vm): void {
    if (vm.destroyed) return;
    this.#peak(host, vm);
    if (this.#incremental) this.#checker.vm(host, vm, host.guest(vm.id));
  }

  async #act(a: StepAction): Promise<Outcome> {
    const inc = this.#incremental;
    switch (a.kind) {
      case 'alloc': {
        const host = this.#hostOf(a.vm);
        const vm = host.vm(a.vm);
        const guest = this.#guestOf(host, vm);
        const count = a.count ?? 1;
        let p = -1;
        for (let i = 0; i < count; i++) {
          p = -1;
          try {
            p = await guest.alloc(a.min ?? 1, a.max);
          } catch (e) {
            if (i > 0 && isIoasidError(e)) throw new IoasidError(e.code, `allocation ${i + 1} of ${count} failed: ${e.message}`, e.details);
            throw e;
          } finally {
            if (inc) {
              if (p >= 0) this.#checker.pasid(host, vm, guest, p);
              else this.#checker.quota(host, vm);
            }
          }
        }
        this.#peak(host, vm);
        return { ok: true, pasid: p };
      }
      case 'free': {
        const host = this.#hostOf(a.vm);
        const vm = host.vm(a.vm);
        const guest = this.#guestOf(host, vm);
        const p = this.#pasid(a.pasid);
        try {
          await guest.free(p);
          return OK;
        } finally {
          if (inc) this.#checker.pasid(host, vm, guest, p);
        }
      }
      case 'bind': {
        const host = this.#hostOf(a.vm);
        const vm = host.vm(a.vm);
        const guest = this.#guestOf(host, vm);
        let p = -1;
        try {
          p = await guest.svaBind(a.device, a.mm);
          this.#peak(host, vm);
          return { ok: true, pasid: p };
        } finally {
          if (inc) {
            if (p >= 0) {
              this.#checker.pasid(host, vm, guest, p);
              this.#checker.binding(host, vm, a.device, p);
            } else this.#checker.quota(host, vm);
          }
        }
      }
      case 'unbind': {
        // What it touched comes from the host's unbind events (see #watch).
        const host = this.#hostOf(a.vm);
        await this.#guestOf(host, host.vm(a.vm)).svaUnbind(a.device, a.mm);
        return OK;
      }
      case 'exit': {
        // The unbinds come through the host's events; the freed PASID is checked here.
        const host = this.#hostOf(a.vm);
        const vm = host.vm(a.vm);
        const guest = this.#guestOf(host, vm);
        let p = -1;
        try {
          p = await guest.mmExit(a.mm);
          return OK;
        } finally {
          if (inc) {
            if (p >= 0) this.#checker.pasid(host, vm, guest, p);
            else this.#checker.quota(host, vm);
          }
        }
      }
      case 'addViommu': {
        // Plugging a vIOMMU or a device changes no PASID and no binding.
        const host = this.#hostOf(a.vm);
        const vm = host.vm(a.vm);
        try {
          vm.addViommu(a.viommu);
          return OK;
        } finally {
          if (inc) this.#checker.quota(host, vm);
        }
      }
      case 'removeViommu': {
        const host = this.#hostOf(a.vm);
        const vm = host.vm(a.vm);
        try {
          await vm.removeViommu(a.segment);
          return OK;
        } finally {
          this.#scopeVm(host, vm);
        }
      }
      case 'assignDevice': {
        const host = this.#hostOf(a.vm);
        const vm = host.vm(a.vm);
        try {
          vm.assignDevice(a.device);
          return OK;
        } finally {
          if (inc) this.#checker.quota(host, vm);
        }
      }
      case 'removeDevice': {
        // The guest unbinds the device from every address space and the host drops what is left:
        // the unbind events name the PASIDs touched (checked in step()).
        const host = this.#hostOf(a.vm);
        const vm = host.vm(a.vm);
        try {
          await vm.removeDevice(a.device);
          return OK;
        } finally {
          if (inc) this.#checker.quota(host, vm);
        }
      }
      case 'createVm': {
        let host: Host;
        if (a.on === null) host = this.root;
        else {
          const ph = this.#hostOf(a.on);
          const pvm = ph.vm(a.on);
          host = this.#guestOf(ph, pvm).startHost(this.#wrapBackend !== undefined ? { wrapBackend: this.#wrapBackend } : {});
          this.#watch(host);
        }
        const built: Located[] = [];
        try {
          this.#build(host, a.on, a.spec, built);
          return OK;
        } finally {
          for (const l of built) this.#scopeVm(l.host, l.vm);
        }
      }
      case 'destroyVm': {
        const host = this.#hostOf(a.vm);
        const vm = host.vm(a.vm);
        const guest = host.guest(a.vm);
        try {
          await host.destroyVm(a.vm);
          this.destroyed.push({ host, vm });
          return OK;
        } finally {
          if (vm.destroyed) {
            if (inc) this.#checker.destroyed(host, vm, guest);
          } else this.#scopeVm(host, vm);
        }
      }
      case 'boot': {
        const host = this.#hostOf(a.vm);
        const vm = host.vm(a.vm);
        try {
          host.boot(a.vm, this.#guestOptions(a.guest));
          return OK;
        } finally {
          this.#scopeVm(host, vm);
        }
      }
      case 'vcmd': {
        // A raw command touches one PASID: Free's operand, or what Allocate answered.
        const host = this.#hostOf(a.vm);
        const vm = host.vm(a.vm);
        let p = a.command === 'free' && a.pasid !== undefined ? this.#pasid(a.pasid) : -1;
        try {
          const o = await this.#vcmd(vm, a);
          if (o.ok && o.pasid !== undefined) p = o.pasid;
          return o;
        } finally {
          this.#peak(host, vm);
          if (inc) {
            if (p >= 0) this.#checker.pasid(host, vm, host.guest(vm.id), p);
            else this.#checker.quota(host, vm);
          }
        }
      }
      case 'allocator': {
        const host = this.#hostOf(a.vm);
        const vm = host.vm(a.vm);
        const space = this.#guestOf(host, vm).space;
        try {
          const ops = this.#opsOf(space, a.ops, a.functions);
          if (a.call === 'register') space.registerAllocator(ops);
          else space.unregisterAllocator(ops);
          return OK;
        } finally {
          this.#scopeVm(host, vm);
        }
      }
      case 'check':
        return this.#check(a.check);
    }
  }

  /** The `allocator` steps' ops named `name` in a guest kernel (made on first use). */
  #opsOf(space: IoasidSpace, name: string, functions: string): AllocatorOps {
    let d = this.#driverOps.get(space);
    if (d === undefined) this.#driverOps.set(space, (d = { ops: new Map(), fns: new Map() }));
    const known = d.ops.get(name);
    if (known !== undefined) return known;
    let fns = d.fns.get(functions);
    if (fns === undefined) d.fns.set(functions, (fns = { alloc: () => INVALID_IOASID, free: () => {} }));
    const ops: AllocatorOps = Object.freeze({ ...fns, pdata: name });
    d.ops.set(name, ops);
    return ops;
  }

  /** A raw VCMD command written by the VMM straight into a vIOMMU's registers. */
  async #vcmd(vm: Vm, a: Extract<StepAction, { kind: 'vcmd' }>): Promise<Outcome> {
    let v;
    if (a.segment === null) {
      v = vm.viommus()[0];
      if (v === undefined) throw new IoasidError('ENODEV', `VM ${vm.id} has no vIOMMU`, { vm: vm.id });
    } else v = vm.viommu(a.segment);
    const dev = v.device;
    await dev.settled();
    const map = dev.map;
    const cmd = a.command === 'allocate' ? VCMD_CMD.ALLOCATE : a.command === 'free' ? VCMD_CMD.FREE : VCMD_CMD.NULL;
    const offVcmd = registerOffset(map, 'VCMD_REG');
    if (cmd === VCMD_CMD.ALLOCATE && (a.min !== undefined || a.max !== undefined)) {
      const { vcmd, vcmdEo } = encodeRangedAllocate(map, a.min ?? 1, a.max ?? PASID_MAX);
      dev.write(registerOffset(map, 'VCMD_EO_REG'), vcmdEo, 8);
      dev.write(offVcmd, vcmd, 8);
    } else {
      dev.write(offVcmd, encodeVcmd(map, cmd, a.pasid === undefined ? 0 : this.#pasid(a.pasid)), 8);
    }
    await dev.settled();
    const rsp = decodeVcrsp(map, dev.read(registerOffset(map, 'VCRSP_REG'), 8));
    if (rsp.ip) throw new IoasidError('ETIMEDOUT', `vIOMMU ${v.name} is still busy (VCRSP.IP set)`, { vm: vm.id });
    const status = statusName(map, cmd, rsp.sc);
    return cmd === VCMD_CMD.ALLOCATE && rsp.sc === 0 ? { ok: true, status, pasid: rsp.pasid } : { ok: true, status };
  }

  #check(c: StateCheck): Outcome {
    const diffs: string[] = [];
    const cmp = (what: string, got: number[], want: number | readonly PasidArg[]): void => {
      if (typeof want === 'number') {
        if (got.length !== want) diffs.push(`${what}: ${got.length} (${fmtIds(got)}), expected ${want}`);
        return;
      }
      const w = want.map((x) => this.#pasid(x)).sort((x, y) => x - y);
      const g = [...got].sort((x, y) => x - y);
      if (w.length !== g.length || w.some((x, i) => x !== g[i])) diffs.push(`${what}: [${g.join(', ')}], expected [${w.join(', ')}]`);
    };
    if (c.vm === null) {
      if (c.pasids !== undefined) cmp(`host ${this.root.name} pasids`, this.root.space.ids(), c.pasids);
    } else {
      let host: Host | null = null;
      let vm: Vm | null = null;
      try {
        host = this.#hostOf(c.vm);
        vm = host.vm(c.vm);
      } catch (e) {
        if (!isIoasidError(e)) throw e;
      }
      if (host === null || vm === null) {
        if (c.alive !== false) diffs.push(`VM ${c.vm} does not exist`);
      } else {
        if (c.alive === false) diffs.push(`VM ${c.vm} exists, expected it gone`);
        if (c.pasids !== undefined) cmp(`${c.vm} pasids on ${host.name}`, vm.pasids(), c.pasids);
        if (c.guestPasids !== undefined) {
          const g = host.guest(c.vm);
          cmp(`${c.vm} guest pasids`, g === null ? [] : g.pasids(), c.guestPasids);
        }
        if (c.bindings !== undefined) {
          const b = vm.bindings();
          if (b.length !== c.bindings) diffs.push(`${c.vm} bindings: ${b.length} (${b.map(([d, p]) => `${d}->${p}`).join(', ') || 'none'}), expected ${c.bindings}`);
        }
        if (c.devices !== undefined) {
          const got = vm.devices().map((d) => d.bdf).sort();
          const want = [...c.devices].sort();
          if (got.join() !== want.join()) diffs.push(`${c.vm} devices: [${got.join(', ')}], expected [${want.join(', ')}]`);
        }
        if (c.viommus !== undefined) {
          const got = vm.viommus().map((v) => v.segment);
          const want = [...c.viommus].sort((x, y) => x - y);
          if (got.join() !== want.join()) diffs.push(`${c.vm} vIOMMU segments: [${got.join(', ')}], expected [${want.join(', ')}]`);
        }
      }
    }
    return diffs.length === 0 ? OK : { ok: false, code: 'MISMATCH', message: diffs.join('; ') };
  }

  // ------------------------------------------------------------------ expectations

  /** null when the outcome is what the step expects; else why not. */
  #mismatch(e: Expectation, o: Outcome): string | null {
    if (!o.ok && o.code === 'CRASH') return `crashed: ${o.message}`;
    if (e.type === 'any') return null;
    if (!o.ok && o.code === 'MISMATCH') return o.message;
    if (e.type === 'error') {
      if (!o.ok && (e.codes as readonly string[]).includes(o.code)) return null;
      return `expected ${e.codes.join(' or ')}, got ${o.ok ? describeOk(o) : `${o.code}: ${o.message}`}`;
    }
    if (!o.ok) return `expected ${describeExpectation(e)}, got ${o.code}: ${o.message}`;
    const wantStatus = e.status ?? (o.status !== undefined ? 'success' : undefined);
    if (wantStatus !== undefined && o.status !== wantStatus) return `expected VCMD status "${wantStatus}", got "${o.status ?? 'none'}"`;
    if (e.pasid !== undefined) {
      if (o.pasid === undefined) return `expected ${describeExpectation(e)}, got no PASID`;
      const why = this.#pasidMismatch(e.pasid, o.pasid);
      if (why !== null) return why;
    }
    return null;
  }

  #pasidMismatch(m: PasidMatch, p: number): string | null {
    try {
      if ('eq' in m) {
        const want = this.#pasid(m.eq);
        return p === want ? null : `expected PASID ${m.eq}${typeof m.eq === 'string' ? ` (${want})` : ''}, got ${p}`;
      }
      if (m.min !== undefined && p < m.min) return `expected a PASID >= ${m.min}, got ${p}`;
      if (m.max !== undefined && p > m.max) return `expected a PASID <= ${m.max}, got ${p}`;
      for (const n of m.not ?? []) {
        if (this.#pasid(n) === p) return `expected a PASID other than ${n}, got ${p}`;
      }
      return null;
    } catch (e) {
      if (e instanceof UnsetName) return e.message;
      throw e;
    }
  }

  // ------------------------------------------------------------------ the end

  /** Final full check and the report. */
  finish(meta: { scenario: string; file?: string; random?: Record<string, unknown> }): RunReport {
    if (this.#failure === null || !this.#stopOnFailure) {
      // The final full check (unless the last step had one, or the run stopped on a failure).
      const last = this.#fullEvery > 0 && this.#index % this.#fullEvery === 0 && this.#index > 0;
      if (!last && !(this.#failure?.kind === 'setup')) {
        const full = this.#full();
        if (full.length > 0) {
          const rec: StepRecord = {
            index: this.#index + 1, kind: 'final-check', action: 'final full check', expected: 'no violation', outcome: OK,
            unexpected: null, violations: full.map((v) => ({ ...v, check: 'full' as const })), hazards: NO_HAZARDS, pass: false,
          };
          this.#violationCount += full.length;
          this.#records.push(rec);
          this.#failure ??= rec;
        }
      }
    }
    const durationMs = performance.now() - this.#t0;
    const byKind: Record<string, KindStats> = {};
    for (const [k, s] of this.#stats) byKind[k] = s;
    return {
      scenario: meta.scenario,
      ...(meta.file !== undefined ? { file: meta.file } : {}),
      ok: this.#failure === null,
      steps: { total: this.#total, run: this.#index, asExpected: this.#asExpected, unexpected: this.#unexpected, withViolations: this.#withViolations },
      byKind,
      records: this.#records,
      failure: this.#failure,
      checks: { incremental: this.#incremental, fullEvery: this.#fullEvery, fullRuns: this.#fullRuns, fullMs: this.#fullMs, violations: this.#violationCount },
      vms: this.vmSummaries(),
      durationMs,
      stepsPerSecond: durationMs > 0 ? (this.#index * 1000) / durationMs : 0,
      hazards: {
        total: [...this.#hazardsByKind.values()].reduce((a, n) => a + n, 0),
        byKind: Object.fromEntries(this.#hazardsByKind),
        setup: this.#setupHazards,
      },
      ...(meta.random !== undefined ? { random: meta.random } : {}),
    };
  }

  /** Every VM the run created, in creation order, with its use of PASIDs against its quota. */
  vmSummaries(): VmSummary[] {
    const out: VmSummary[] = [];
    for (const [id, { host, vm }] of this.#vms) {
      const alive = !vm.destroyed && !host.down;
      if (!alive) {
        out.push({ host: host.name, level: host.level, id, alive, quota: vm.quota, used: 0, peak: this.#peaks.get(vm) ?? 0, bindings: 0, devices: 0, viommus: [], guest: 'destroyed' });
        continue;
      }
      const g = host.guest(id);
      out.push({
        host: host.name,
        level: host.level,
        id,
        alive,
        quota: vm.quota,
        used: host.space.setCount(vm.set),
        peak: this.#peaks.get(vm) ?? 0,
        bindings: vm.bindings().length,
        devices: vm.devices().length,
        viommus: vm.viommus().map((v) => v.segment),
        guest: g === null ? 'off' : g.dead ? 'dead' : g.space.profile,
      });
    }
    return out;
  }

  /** Test and generator access: the VM `id` if it exists now, with its host and guest. */
  locate(id: string): { host: Host; vm: Vm; guest: Guest | null } | null {
    try {
      const host = this.#hostOf(id);
      const vm = host.vm(id);
      return { host, vm, guest: host.guest(id) };
    } catch (e) {
      if (isIoasidError(e)) return null;
      throw e;
    }
  }
}

/** Run a whole scenario. */
export async function runScenario(scenario: Scenario, opts: RunOptions = {}): Promise<RunReport> {
  const runner = await ScenarioRunner.create(scenario.host, opts);
  runner.total = scenario.steps.length;
  for (const s of scenario.steps) {
    if (runner.stopped) break;
    await runner.step(s);
  }
  return runner.finish({ scenario: scenario.name, ...(scenario.file !== undefined ? { file: scenario.file } : {}) });
}

function guestOptions(g: ScenarioGuest, profile?: Profile): GuestOptions {
  const p = profile ?? g.profile;
  return {
    ...(p !== undefined ? { profile: p } : {}),
    ...(g.layout !== undefined ? { layout: g.layout } : {}),
    ...(g.pasBit !== undefined ? { pasBit: g.pasBit } : {}),
    ...(g.rangeExtension !== undefined ? { rangeExtension: g.rangeExtension } : {}),
    ...(g.timeoutMs !== undefined ? { timeoutMs: g.timeoutMs } : {}),
  };
}

function toOutcome(e: unknown): Outcome {
  if (e instanceof UnsetName) return { ok: false, code: 'UNSET', message: e.message };
  if (isIoasidError(e)) return { ok: false, code: e.code as IoasidErrorCode, message: e.message };
  const message = e instanceof Error ? `${e.name}: ${e.message}${e.stack ? `\n${e.stack.split('\n').slice(1, 6).join('\n')}` : ''}` : String(e);
  return { ok: false, code: 'CRASH', message };
}

function describeOk(o: Extract<Outcome, { ok: true }>): string {
  if (o.pasid !== undefined) return `success (PASID ${o.pasid})`;
  if (o.status !== undefined) return `status "${o.status}"`;
  return 'success';
}

function fmtIds(ids: number[]): string {
  const s = [...ids].sort((a, b) => a - b);
  return s.length > 8 ? `${s.slice(0, 8).join(', ')}, ...` : s.join(', ');
}
