/**
 * The host: the host kernel's IoasidSpace, its VMs, and their guests. A host at level 0 owns a
 * space with the default allocator; a host inside a guest (nesting) uses that guest's space, whose
 * VT-d allocator asks the level below through VCMD, so the namespace stays system-wide at every
 * depth.
 *
 * The host is the only holder of domain rules (docs/rules.md lists each with its test). Every
 * operation runs in one order: validate (throw an IoasidError, change nothing) -> the change as
 * events -> commit through the journal -> apply to the model -> publish the events, numbered by
 * the journal (journal.ts). Host rules:
 *  1. A VM is one set in the host's space, token = VM id, quota default 1000 (VFIO's default).
 *  2. A VM's vIOMMUs and requests allocate only in its set, within the host's PASID range, and free
 *     only its own PASIDs; a PASID still bound to a device on the host is not freed (EBUSY).
 *  3. Destroying a VM stops its guest (and the guest's own VMs), drops every binding, frees every
 *     PASID the VM held and destroys its set: the host is left as if the VM had never existed.
 *  4. On an asynchronous journal the operations of one VM run one at a time, in call order (a
 *     destroy waits for those before it; those after it find no VM); different VMs commit
 *     concurrently.
 */
import {
  IoasidError, IoasidSpace, PASID_MAX, PASID_MIN, checkPasid, checkVmId, fmtId, isPasid,
  type IoasidSet, type LogFn, type SpaceSnapshot,
} from '../core/index.ts';
import type { VcmdBackend, VcmdGuestState } from '../vtd/index.ts';
import { Vm, viommuAdded, deviceAssigned, type ViommuConfig, type ViommuSpec, type Viommu, type VmHostContext, type VmView } from './vm.ts';
import type { DeviceSpec, PciDevice } from './device.ts';
import { Guest, type GuestOptions } from './guest.ts';
import {
  MemoryJournal,
  type Committed, type HostEvent, type HostEventRecord, type Journal, type JournalEntry, type Outcome, type SyncJournal,
} from './journal.ts';

export const DEFAULT_VM_QUOTA = 1000;
/** Longest owner credential (e.g. a token hash) a VM may carry. */
export const CREDENTIAL_MAX_LENGTH = 256;

/** A VM's operations on an asynchronous journal run one at a time, in call order (rule 4). */
interface Lane {
  busy: boolean;
  readonly waiting: (() => void)[];
}

export interface HostOptions<J extends Journal = SyncJournal> {
  readonly name?: string;
  /** The space to allocate from; default a new strict space (level 0). */
  readonly space?: IoasidSpace;
  /** The guest this host runs in (nesting); set by Guest.startHost. */
  readonly parent?: Guest;
  /** Host PASID range handed to VMs (QEMU's VTD_HPASID_MIN/MAX): default [1, 0xFFFFF]. */
  readonly pasidMin?: number;
  readonly pasidMax?: number;
  readonly defaultQuota?: number;
  /** Clock for device logs and event times (injected; default a counter for logs, Date.now for events). */
  readonly now?: () => number;
  readonly log?: LogFn;
  /** Where changes are committed; default an in-memory journal (synchronous). */
  readonly journal?: J;
  /** Test hook: wrap each VM's VCMD backend (fault injection in the invariant tests). */
  readonly wrapBackend?: (vm: Vm<J>, backend: VcmdBackend) => VcmdBackend;
}

export interface VmSpec {
  readonly id: string;
  readonly quota?: number;
  readonly viommus?: readonly ViommuSpec[];
  readonly devices?: readonly DeviceSpec[];
  /** The VM's owner credential (opaque, e.g. a token hash): unique among the host's VMs, never published. */
  readonly credential?: string;
}

/** What a durable host is rebuilt from (`Host.restore`): plain data, checked by the host's rules. */
export interface HostState {
  readonly vms: readonly {
    readonly id: string;
    readonly quota: number;
    readonly credential: string | null;
    readonly createdAt: number;
    readonly viommus: readonly (ViommuConfig & { readonly registers?: VcmdGuestState })[];
    readonly devices: readonly { readonly bdf: string; readonly pasidBits: number }[];
    readonly pasids: readonly number[];
    readonly bindings: readonly { readonly bdf: string; readonly pasid: number }[];
  }[];
  /** PASIDs the host itself holds (no VM). */
  readonly hostPasids: readonly number[];
}

export type HostListener = (event: HostEventRecord) => void;

/** What inspection needs of a host, whatever its journal (invariant checkers, views). */
export interface HostView {
  readonly name: string;
  readonly space: IoasidSpace;
  readonly level: number;
  readonly parent: Guest | null;
  readonly down: boolean;
  vms(): VmView[];
  vm(id: string): VmView;
  hasVm(id: string): boolean;
  guest(id: string): Guest | null;
  allHosts(): IterableIterator<HostView>;
}

/** Everything the host holds, as plain data: equal snapshots mean equal hosts. */
export interface HostSnapshot {
  readonly name: string;
  readonly space: SpaceSnapshot;
  readonly vms: readonly {
    readonly id: string;
    readonly quota: number;
    readonly viommus: readonly { segment: number; layout: string; rangeExtension: boolean }[];
    readonly devices: readonly PciDevice[];
    readonly bindings: readonly [string, number][];
    readonly pasids: readonly number[];
  }[];
}

function isU32(x: unknown): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= 0 && x <= 0xffffffff;
}

function isThenable<T>(x: T | Promise<T>): x is Promise<T> {
  return typeof x === 'object' && x !== null && typeof (x as { then?: unknown }).then === 'function';
}

export class Host<J extends Journal = SyncJournal> implements HostView {
  readonly name: string;
  /**
   * The host kernel's space. Read it freely; a change made to it directly bypasses the journal and
   * the host's rules (tests use that to inject faults).
   */
  readonly space: IoasidSpace;
  readonly level: number;
  readonly parent: Guest | null;
  readonly pasidMin: number;
  readonly pasidMax: number;
  readonly defaultQuota: number;
  readonly journal: J;
  readonly #now: () => number;
  readonly #log: LogFn | undefined;
  readonly #vms = new Map<string, Vm<J>>();
  readonly #byCredential = new Map<string, Vm<J>>();
  readonly #guests = new Map<Vm<J>, Guest>();
  readonly #listeners = new Set<HostListener>();
  /** Per VM id with an operation under way: the operations waiting for it (asynchronous journals, rule 4). */
  /** Per VM: whether an operation is under way, and those waiting. Kept while the VM exists (no map churn per call). */
  readonly #lanes = new Map<string, Lane>();
  readonly #ctx: VmHostContext<J>;
  #replaying = false;
  /** What a restored change counts as committed at (the stored creation time of a VM). */
  #replayed: Committed = { seq: 0, at: 0 };
  #down = false;

  constructor(opts: HostOptions<J> = {}) {
    this.name = opts.name ?? (opts.parent ? `${opts.parent.vm.id}.host` : 'host');
    this.parent = opts.parent ?? null;
    this.level = this.parent === null ? 0 : this.parent.vm.host.level + 1;
    this.space = opts.space ?? new IoasidSpace({ profile: 'strict', ...(opts.log ? { log: opts.log } : {}) });
    this.pasidMin = opts.pasidMin ?? PASID_MIN;
    this.pasidMax = opts.pasidMax ?? PASID_MAX;
    if (!isPasid(this.pasidMin) || !isPasid(this.pasidMax) || this.pasidMin > this.pasidMax) {
      throw new IoasidError('EINVAL', `host PASID range [${fmtId(this.pasidMin)}, ${fmtId(this.pasidMax)}] must lie within [1, 0xfffff]`, { pasidMin: this.pasidMin, pasidMax: this.pasidMax });
    }
    this.defaultQuota = opts.defaultQuota ?? DEFAULT_VM_QUOTA;
    let tick = 0;
    this.#now = opts.now ?? (() => tick++);
    this.#log = opts.log;
    this.journal = opts.journal ?? (new MemoryJournal(opts.now ? { now: opts.now } : {}) as unknown as J);
    const wrap = opts.wrapBackend;
    this.#ctx = {
      host: this,
      space: this.space,
      journal: this.journal,
      wrapBackend: wrap,
      now: this.#now,
      range: (min, max) => this.#range(min, max),
      run: (vm, fn) => this.#run(vm, fn),
      commit: (entry, apply, undo) => this.#commit(entry, apply, undo),
      outcome: <T>(vm: string, fn: () => T | Promise<T>) => this.#outcome(vm, fn),
      later: (vm, fn) => this.#later(vm, fn),
      viommuAdded: (vm, v) => this.#guests.get(vm)?.viommuAdded(v),
      viommuRemoving: async (vm, v) => {
        await this.#guests.get(vm)?.viommuRemoving(v);
      },
      deviceRemoving: async (vm, d) => {
        await this.#guests.get(vm)?.deviceRemoving(d);
      },
    };
  }

  // ------------------------------------------------------------------ the one order

  /**
   * The allocation range rule, one for every path (a request's [min, max], a ranged VCMD Allocate,
   * VFIO's PASID request, the whole range): [min, max] must be IDs (unsigned 32-bit integers, as
   * the kernel's) with min <= max (EINVAL); the host allocates in its intersection with its own
   * PASID range, and an empty intersection has no PASID (ENOSPC).
   */
  #range(min: unknown, max: unknown): { min: number; max: number } {
    if (!isU32(min) || !isU32(max) || min > max) {
      throw new IoasidError('EINVAL', `PASID range [${fmtId(min)}, ${fmtId(max)}] must be integers in [0, 0xffffffff] with min <= max`, { min: min as number, max: max as number });
    }
    const lo = Math.max(min, this.pasidMin);
    const hi = Math.min(max, this.pasidMax);
    if (lo > hi) {
      throw new IoasidError('ENOSPC', `no host PASID in [${fmtId(min)}, ${fmtId(max)}]: host ${this.name} allocates in [${fmtId(this.pasidMin)}, ${fmtId(this.pasidMax)}]`, { min, max, hostMin: this.pasidMin, hostMax: this.pasidMax });
    }
    return { min: lo, max: hi };
  }

  /**
   * Rule 4: on an asynchronous journal, run after the VM's earlier operations. A VM with nothing
   * under way runs `fn` at once (no promise of ours); the others wait in its lane, in call order.
   */
  #run<T>(vm: string, fn: () => T | Promise<T>): T | Promise<T> {
    if (this.journal.sync || this.#replaying) return fn();
    let lane = this.#lanes.get(vm);
    if (lane === undefined) {
      lane = { busy: false, waiting: [] };
      this.#lanes.set(vm, lane);
    }
    if (!lane.busy) {
      lane.busy = true;
      return this.#start(vm, lane, fn);
    }
    const l = lane;
    return new Promise<T>((resolve, reject) => {
      l.waiting.push(() => {
        try {
          Promise.resolve(this.#start(vm, l, fn)).then(resolve, reject);
        } catch (e) {
          reject(e);
        }
      });
    });
  }

  #start<T>(vm: string, lane: Lane, fn: () => T | Promise<T>): T | Promise<T> {
    let r: T | Promise<T>;
    try {
      r = fn();
    } catch (e) {
      this.#next(vm, lane);
      throw e;
    }
    if (!isThenable(r)) {
      this.#next(vm, lane);
      return r;
    }
    return r.then((v) => {
      this.#next(vm, lane);
      return v;
    }, (e: unknown) => {
      this.#next(vm, lane);
      throw e;
    });
  }

  /** The VM's operation ended: start the next one waiting, or mark the lane idle (dropped once the VM is gone). */
  #next(vm: string, lane: Lane): void {
    const waiting = lane.waiting.shift();
    if (waiting !== undefined) {
      waiting();
      return;
    }
    lane.busy = false;
    if (!this.#vms.has(vm) && this.#lanes.get(vm) === lane) this.#lanes.delete(vm);
  }

  #outcome<T>(vm: string, fn: () => T | Promise<T>): Outcome<J, T> {
    if (this.journal.sync || this.#replaying) return fn() as Outcome<J, T>;
    return this.#later(vm, fn) as Outcome<J, T>;
  }

  #later<T>(vm: string, fn: () => T | Promise<T>): Promise<T> {
    try {
      return Promise.resolve(this.#run(vm, fn));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Commit, apply, publish; a commit that fails runs `undo` (reservations) and changes nothing. */
  #commit<T>(entry: JournalEntry, apply: (c: Committed) => T | Promise<T>, undo?: () => void): T | Promise<T> {
    if (this.#replaying) return apply(this.#replayed);
    let c: Committed | Promise<Committed>;
    try {
      c = this.journal.commit(entry);
    } catch (e) {
      undo?.();
      throw e;
    }
    if (isThenable(c)) {
      return c.then((done) => this.#applied(entry, done, apply), (e: unknown) => {
        undo?.();
        throw e;
      });
    }
    return this.#applied(entry, c, apply);
  }

  #applied<T>(entry: JournalEntry, c: Committed, apply: (c: Committed) => T | Promise<T>): T | Promise<T> {
    const r = apply(c);
    if (isThenable(r)) return r.then((v) => { this.#publish(entry.events, c); return v; });
    this.#publish(entry.events, c);
    return r;
  }

  #publish(events: readonly HostEvent[], c: Committed): void {
    if (this.#listeners.size === 0 || events.length === 0) return;
    // A plain loop and Object.assign: this runs for every change, and a spread of the event's
    // union type took more time than the rest of the publication (measured).
    for (let i = 0; i < events.length; i++) {
      const e = events[i]!;
      const rec = Object.assign({}, e, { seq: c.seq + i, at: c.at }) as HostEventRecord;
      for (const l of this.#listeners) {
        try {
          l(rec);
        } catch (err) {
          this.#log?.('error', `host listener failed on ${e.type}`, { error: String(err) });
        }
      }
    }
  }

  /** Listen to the committed changes, as numbered events; returns the unsubscribe function. */
  on(listener: HostListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #alive(): void {
    if (this.#down) throw new IoasidError('ENODEV', `host ${this.name} is shut down`, { host: this.name });
  }

  // ------------------------------------------------------------------ VMs

  /**
   * Create a VM with its vIOMMUs and devices in one change. Rules: a valid VM id (EINVAL), not in
   * use (EEXIST), a valid quota (EINVAL; above the space's capacity ENOSPC), valid vIOMMUs and
   * devices (vm.ts), a credential unique among the VMs (EEXIST).
   */
  createVm(spec: VmSpec): Outcome<J, Vm<J>> {
    const id = typeof spec === 'object' && spec !== null ? spec.id : undefined;
    return this.#outcome(typeof id === 'string' ? id : '', () => {
      this.#alive();
      if (typeof spec !== 'object' || spec === null) throw new IoasidError('EINVAL', `VM spec must be an object, got ${fmtId(spec)}`);
      checkVmId(spec.id);
      if (this.#vms.has(spec.id)) throw new IoasidError('EEXIST', `VM ${spec.id} exists`, { vm: spec.id });
      const quota = spec.quota ?? this.defaultQuota;
      const viommus = spec.viommus ?? [];
      const devices = spec.devices ?? [];
      if (!Array.isArray(viommus) || !Array.isArray(devices)) throw new IoasidError('EINVAL', 'viommus and devices must be arrays', { vm: spec.id });
      const parts = Vm.checkParts(spec.id, viommus, devices);
      const credential = spec.credential ?? null;
      if (credential !== null) this.checkCredential(credential, null);
      // The set is the reservation of the id in the space (its quota checked by the core).
      const set = this.space.createSet({ name: spec.id, quota, token: spec.id });
      const entry: JournalEntry = {
        events: [
          { type: 'vm-created', vm: spec.id, quota },
          ...parts.viommus.map((v) => viommuAdded(spec.id, v)),
          ...parts.devices.map((d) => deviceAssigned(spec.id, d)),
        ],
        ...(credential !== null ? { credentials: [{ vm: spec.id, credential }] } : {}),
      };
      return this.#commit(entry, (c) => {
        const vm = new Vm<J>(this.#ctx, spec.id, set, credential, c.at);
        for (const v of parts.viommus) vm.plugViommu(v);
        for (const d of parts.devices) vm.plugDevice(d);
        this.#vms.set(spec.id, vm);
        if (credential !== null) this.#byCredential.set(credential, vm);
        return vm;
      }, () => this.space.destroySet(set));
    });
  }

  vm(id: string): Vm<J> {
    const vm = this.#vms.get(id);
    if (vm === undefined) throw new IoasidError('ENOENT', `no VM ${fmtId(id)} on host ${this.name}`, { vm: id });
    return vm;
  }

  hasVm(id: string): boolean {
    return this.#vms.has(id);
  }

  vms(): Vm<J>[] {
    return [...this.#vms.values()];
  }

  /** The VM whose set this is, or null. */
  vmBySet(set: IoasidSet): Vm<J> | null {
    const vm = this.#vms.get(set.token ?? set.name);
    return vm !== undefined && vm.set === set ? vm : null;
  }

  /** The VM whose owner credential this is, or null. */
  vmByCredential(credential: string): Vm<J> | null {
    return this.#byCredential.get(credential) ?? null;
  }

  /** Rule: a credential is a non-empty string, unique among the host's VMs (EEXIST). @internal */
  checkCredential(credential: unknown, vm: string | null): void {
    if (typeof credential !== 'string' || credential.length === 0 || credential.length > CREDENTIAL_MAX_LENGTH) {
      throw new IoasidError('EINVAL', `a VM credential must be a string of 1-${CREDENTIAL_MAX_LENGTH} characters`, { vm });
    }
    const holder = this.#byCredential.get(credential);
    if (holder !== undefined && holder.id !== vm) throw new IoasidError('EEXIST', `the credential is already VM ${holder.id}'s`, { vm, holder: holder.id });
  }

  /** @internal a VM's credential changed (Vm.replaceCredential) */
  credentialChanged(vm: Vm<J>, from: string | null, to: string): void {
    if (from !== null && this.#byCredential.get(from) === vm) this.#byCredential.delete(from);
    this.#byCredential.set(to, vm);
  }

  /** Boot the VM's guest kernel (its VT-d driver probes the VM's vIOMMUs). */
  boot(vmId: string, opts: GuestOptions = {}): Guest {
    this.#alive();
    const vm = this.vm(vmId);
    if (this.#guests.has(vm)) throw new IoasidError('EEXIST', `VM ${vmId} is already running`, { vm: vmId });
    const guest = new Guest(vm as unknown as Vm<SyncJournal>, { ...(this.#log ? { log: this.#log } : {}), ...opts }, { now: this.#now, ...(this.#log ? { log: this.#log } : {}) });
    this.#guests.set(vm, guest);
    return guest;
  }

  guest(vmId: string): Guest | null {
    return this.#guests.get(this.vm(vmId)) ?? null;
  }

  /**
   * Destroy a VM (rule 3): stop its guest and the guest's own VMs, drop every binding (the host
   * tears the PASID entries down), free every PASID it held, destroy its set. One change: the
   * unbinds, the free, the removals and the end are committed together.
   */
  destroyVm(id: string): Promise<{ pasids: number[]; bindings: [string, number][] }> {
    return this.#later(id, async () => {
      this.#alive();
      const vm = this.vm(id);
      const guest = this.#guests.get(vm);
      if (guest !== undefined) await guest.kill();
      for (const v of vm.viommus()) await v.device.settled();
      const events = vm.teardownEvents();
      return this.#commit({ events }, async () => {
        const bindings = vm.dropAllBindings();
        const pasids = this.space.activeAllocator() === null ? this.space.freeAllSync(vm.set) : await this.space.freeAll(vm.set);
        this.space.destroySet(vm.set);
        vm.dropAll();
        vm.markDestroyed();
        this.#guests.delete(vm);
        this.#vms.delete(id);
        if (vm.credential !== null && this.#byCredential.get(vm.credential) === vm) this.#byCredential.delete(vm.credential);
        return { pasids, bindings };
      });
    });
  }

  /** @internal the guest this host runs in is going away: every VM goes with it */
  async shutdown(): Promise<void> {
    for (const id of [...this.#vms.keys()]) await this.destroyVm(id);
    this.#down = true;
  }

  get down(): boolean {
    return this.#down;
  }

  // ------------------------------------------------------------------ durable state

  /**
   * Rebuild a fresh level-0 host from durable state, every part checked by the same rules as when
   * it was first made (a state that breaks one is refused with that rule's error): VMs, vIOMMUs
   * with the registers their guests last saw, devices, PASIDs, bindings. Nothing is committed or
   * published.
   */
  restore(state: HostState): void {
    if (this.#vms.size > 0 || this.space.size > 0) throw new IoasidError('EBUSY', `host ${this.name} is not empty: restore needs a fresh host`, { host: this.name });
    if (this.space.activeAllocator() !== null) throw new IoasidError('EOPNOTSUPP', 'restore needs a host with the default allocator (level 0)', { host: this.name });
    this.#replaying = true;
    try {
      for (const p of state.hostPasids) this.space.allocSync(null, this.#range(checkPasid(p), p).min, p);
      for (const v of state.vms) {
        this.#replayed = { seq: 0, at: v.createdAt };
        const vm = this.createVm({ id: v.id, quota: v.quota, viommus: v.viommus, devices: v.devices, ...(v.credential !== null ? { credential: v.credential } : {}) }) as Vm<J>;
        for (const r of v.viommus) if (r.registers !== undefined) vm.viommu(r.segment).device.restoreGuestState(r.registers);
        for (const p of v.pasids) {
          const { min } = this.#range(checkPasid(p), p);
          this.space.allocSync(vm.set, min, min);
        }
        for (const b of v.bindings) vm.bind(b.bdf, b.pasid);
      }
    } catch (e) {
      for (const id of [...this.#vms.keys()]) this.#forget(id);
      for (const id of this.space.ids()) this.space.freeSync(id, this.space.ownerOf(id));
      throw e;
    } finally {
      this.#replaying = false;
    }
  }

  /**
   * Apply an entry another host committed (cluster mode: the etcd journal's watch), through the
   * same apply code as a local commit, then publish its events with the committer's numbers. Its
   * rules were checked where it was made; what cannot be applied here is an inconsistency (thrown
   * as an IoasidError naming it; the caller counts and reports it).
   */
  applyCommitted(entry: JournalEntry, c: Committed): void {
    const credentialOf = (vm: string): string | null => entry.credentials?.find((x) => x.vm === vm)?.credential ?? null;
    for (const e of entry.events) {
      switch (e.type) {
        case 'vm-created': {
          if (this.#vms.has(e.vm)) throw new IoasidError('EEXIST', `VM ${e.vm} created elsewhere already exists here`, { vm: e.vm });
          const credential = credentialOf(e.vm);
          const vm = new Vm<J>(this.#ctx, e.vm, this.space.createSet({ name: e.vm, quota: e.quota, token: e.vm }), credential, c.at);
          this.#vms.set(e.vm, vm);
          if (credential !== null) this.#byCredential.set(credential, vm);
          break;
        }
        case 'vm-destroyed':
          this.#forget(e.vm);
          break;
        case 'credential-replaced': {
          const credential = credentialOf(e.vm);
          if (credential !== null) this.vm(e.vm).setCredential(credential);
          break;
        }
        case 'quota-exhausted':
        case 'vm-migrated':
          break;
        default:
          if (e.vm === null) {
            // PASIDs of the host itself (only alloc and free have no VM).
            if (e.type !== 'alloc' && e.type !== 'free') break;
            for (const p of e.pasids) {
              if (e.type === 'alloc' && !this.space.has(p)) this.space.allocSync(null, p, p);
              else if (e.type === 'free' && this.space.has(p) && this.space.ownerOf(p) === null) this.space.freeSync(p, null);
            }
          } else {
            this.vm(e.vm).applyCommitted(e);
          }
      }
    }
    const r = entry.registers;
    if (r !== undefined && this.#vms.has(r.vm)) {
      const vm = this.vm(r.vm);
      if (vm.viommus().some((v) => v.segment === r.segment)) vm.viommu(r.segment).device.restoreGuestState(r.state);
    }
    this.#publish(entry.events, c);
  }

  /** Drop a VM from the model without a change (a restore that failed half way; a destroy elsewhere). */
  #forget(id: string): void {
    const vm = this.#vms.get(id);
    if (vm === undefined) return;
    vm.dropAllBindings();
    this.space.freeAllSync(vm.set);
    this.space.destroySet(vm.set);
    vm.dropAll();
    vm.markDestroyed();
    this.#vms.delete(id);
    if (vm.credential !== null) this.#byCredential.delete(vm.credential);
  }

  // ------------------------------------------------------------------ inspection

  snapshot(): HostSnapshot {
    return {
      name: this.name,
      space: this.space.snapshot(),
      vms: this.vms().map((vm) => ({
        id: vm.id,
        quota: vm.quota,
        viommus: vm.viommus().map((v) => ({ segment: v.segment, layout: v.device.config.layout, rangeExtension: v.device.config.rangeExtension })),
        devices: vm.devices(),
        bindings: vm.bindings(),
        pasids: vm.pasids(),
      })),
    };
  }

  /** The host and every nested host below it, depth first. */
  *allHosts(): IterableIterator<HostView> {
    yield this;
    for (const g of this.#guests.values()) {
      const h = g.nestedHost;
      if (h !== null && !h.down) yield* h.allHosts();
    }
  }
}

export type { Viommu, ViommuSpec, PciDevice, DeviceSpec };
