/**
 * A VM on a host: one IOASID set with a quota in the host's space (the VFIO `vfio_mm`: the quota is
 * per VM, shared by all its vIOMMUs and devices), one vIOMMU per PCI segment, assigned devices each
 * behind the vIOMMU of its segment, and the host's record of which device is bound to which PASID.
 * The VM's vIOMMUs serve VCMD through a backend that allocates only in the VM's set and frees only
 * the VM's own PASIDs.
 *
 * Every change runs in the host's one order (journal.ts): validate -> events -> commit -> apply ->
 * publish. The rules each method checks are listed in docs/rules.md; this file and host.ts are
 * where they live, and nothing above the host checks them again.
 */
import { IoasidError, IoasidBugError, PASID_MAX, PASID_MIN, checkPasid, checkSegment, fmtId, type IoasidSet, type IoasidSpace } from '../core/index.ts';
import {
  VcmdDevice, normalizeDeviceConfig,
  type Layout, type PasBit, type VcmdBackend, type VcmdCommandContext, type VcmdGuestState,
} from '../vtd/index.ts';
import { parseDevice, type DeviceSpec, type PciDevice } from './device.ts';
import type { Host } from './host.ts';
import type { Committed, HostEvent, Journal, JournalEntry, Outcome, SyncJournal } from './journal.ts';

export interface ViommuSpec {
  /** PCI segment (domain) this vIOMMU translates for, 0..65535. */
  readonly segment: number;
  /** Register layout: 'A' (VT-d 3.0/3.1) or 'B' (3.3+, default). */
  readonly layout?: Layout;
  /** Advertise the range extension (layout B only). */
  readonly rangeExtension?: boolean;
  /** VCCAP.PAS position: 0 as Linux (default), 1 as the VT-d specification Rev 5.10. */
  readonly pasBit?: PasBit;
  /** ECAP.PSS: PASID width - 1 (default 19). */
  readonly pss?: number;
}

/** One vIOMMU of a VM: its register file is the VCMD device model. */
export interface Viommu {
  readonly segment: number;
  readonly name: string;
  readonly device: VcmdDevice;
}

/** A vIOMMU spec, validated: what the `viommu-added` event and a stored row carry. */
export interface ViommuConfig {
  readonly segment: number;
  readonly layout: Layout;
  readonly rangeExtension: boolean;
  readonly pasBit: PasBit;
  readonly pss: number;
}

/** Validate a vIOMMU spec (EINVAL naming the field); the device's own checks included. */
export function parseViommuSpec(spec: ViommuSpec): ViommuConfig {
  if (typeof spec !== 'object' || spec === null) throw new IoasidError('EINVAL', `vIOMMU spec must be an object, got ${fmtId(spec)}`);
  const segment = checkSegment(spec.segment, 'vIOMMU segment');
  const cfg = normalizeDeviceConfig({
    layout: spec.layout ?? 'B',
    ...(spec.pasBit !== undefined ? { pasBit: spec.pasBit } : {}),
    ...(spec.rangeExtension !== undefined ? { rangeExtension: spec.rangeExtension } : {}),
    ...(spec.pss !== undefined ? { pss: spec.pss } : {}),
  });
  return { segment, layout: cfg.layout, rangeExtension: cfg.rangeExtension, pasBit: cfg.pasBit, pss: cfg.pss };
}

/** What a VM needs of its host (the Host implements it). @internal */
export interface VmHostContext<J extends Journal> {
  readonly host: Host<J>;
  readonly space: IoasidSpace;
  readonly journal: J;
  /** Test hook: wrap the VCMD backend (fault injection). */
  readonly wrapBackend: ((vm: Vm<J>, backend: VcmdBackend) => VcmdBackend) | undefined;
  readonly now: () => number;
  /** The allocation range rule, shared by REST-style and VCMD allocation. */
  range(min: unknown, max: unknown): { min: number; max: number };
  /** Run `fn` after the VM's earlier operations (asynchronous journals); now otherwise. */
  run<T>(vm: string, fn: () => T | Promise<T>): T | Promise<T>;
  /** Commit `entry`, then `apply`, then publish; `undo` releases reservations if the commit fails. */
  commit<T>(entry: JournalEntry, apply: (c: Committed) => T | Promise<T>, undo?: () => void): T | Promise<T>;
  /** As `run`, typed for the journal: the result is a promise unless the journal is synchronous. */
  outcome<T>(vm: string, fn: () => T | Promise<T>): Outcome<J, T>;
  /** As `run`, always a promise (a refusal is a rejection). */
  later<T>(vm: string, fn: () => T | Promise<T>): Promise<T>;
  /** The in-process guest's hot-plug callbacks (none for a remote guest). */
  viommuAdded(vm: Vm<J>, v: Viommu): void;
  viommuRemoving(vm: Vm<J>, v: Viommu): Promise<void>;
  deviceRemoving(vm: Vm<J>, d: PciDevice): Promise<void>;
}

/** One allocation under way (what a retry needs). */
interface Allocation<T> {
  readonly min: number;
  readonly max: number;
  readonly count: number;
  readonly registers: (pasids: readonly number[]) => JournalEntry['registers'];
  readonly result: (pasids: number[]) => T;
  readonly attempt: number;
}

function isThenable<T>(x: T | Promise<T>): x is Promise<T> {
  return typeof x === 'object' && x !== null && typeof (x as { then?: unknown }).then === 'function';
}

/** What inspection needs of a VM, whatever its host's journal (invariant checkers, views). */
export interface VmView {
  readonly id: string;
  readonly set: IoasidSet;
  readonly quota: number;
  readonly destroyed: boolean;
  readonly credential: string | null;
  readonly used: number;
  viommus(): Viommu[];
  viommuConfigs(): ViommuConfig[];
  viommu(segment: number): Viommu;
  devices(): PciDevice[];
  device(bdf: string): PciDevice;
  bindings(): [string, number][];
  localBindings(): [string, number][];
  boundTo(pasid: number): string[];
  pasids(): number[];
}

export class Vm<J extends Journal = SyncJournal> implements VmView {
  readonly id: string;
  readonly set: IoasidSet;
  readonly #ctx: VmHostContext<J>;
  readonly #viommus = new Map<number, Viommu>();
  readonly #configs = new Map<number, ViommuConfig>();
  readonly #devices = new Map<string, PciDevice>();
  /** Host-side bindings: device BDF -> PASIDs bound (the PASID entries the host programmed). */
  readonly #bindings = new Map<string, Set<number>>();
  /** PASID -> devices bound to it, for the free check. */
  readonly #boundDevices = new Map<number, Set<string>>();
  /**
   * Device-local bindings (a linux-6.x guest's own PASIDs, attached per device as iommufd does):
   * device BDF -> PASIDs. Not host PASIDs: no ownership, no free check, no host event.
   */
  readonly #localBindings = new Map<string, Set<number>>();
  #credential: string | null;
  #createdAt: number;
  /** PASIDs reserved by an allocation whose commit is under way. */
  readonly #pending = new Set<number>();
  #destroyed = false;

  /** @internal made by Host.createVm */
  constructor(ctx: VmHostContext<J>, id: string, set: IoasidSet, credential: string | null, createdAt: number) {
    this.#ctx = ctx;
    this.id = id;
    this.set = set;
    this.#credential = credential;
    this.#createdAt = createdAt;
  }

  /** When the VM was created (the commit time of its creation, ms). */
  get createdAt(): number {
    return this.#createdAt;
  }

  get host(): Host<J> {
    return this.#ctx.host;
  }

  get quota(): number {
    return this.set.quota;
  }

  get destroyed(): boolean {
    return this.#destroyed;
  }

  /** The VM's owner credential (an opaque string, e.g. a token hash), or null. Never published. */
  get credential(): string | null {
    return this.#credential;
  }

  /** @internal */
  markDestroyed(): void {
    this.#destroyed = true;
  }

  /** Rule: a destroyed VM does nothing (ENODEV). */
  #alive(): void {
    if (this.#destroyed) throw new IoasidError('ENODEV', `VM ${this.id} was destroyed`, { vm: this.id });
  }

  // ------------------------------------------------------------------ vIOMMUs

  viommus(): Viommu[] {
    return [...this.#viommus.values()].sort((a, b) => a.segment - b.segment);
  }

  /** The validated specs of the VM's vIOMMUs, by segment. */
  viommuConfigs(): ViommuConfig[] {
    return [...this.#configs.values()].sort((a, b) => a.segment - b.segment);
  }

  viommu(segment: number): Viommu {
    const v = this.#viommus.get(segment);
    if (v === undefined) throw new IoasidError('ENOENT', `VM ${this.id} has no vIOMMU on segment ${fmtId(segment)}`, { vm: this.id, segment });
    return v;
  }

  /** Rules: a valid spec (EINVAL); one vIOMMU per segment (EEXIST). */
  #checkViommu(spec: ViommuSpec): ViommuConfig {
    const cfg = parseViommuSpec(spec);
    if (this.#viommus.has(cfg.segment)) throw new IoasidError('EEXIST', `VM ${this.id} already has a vIOMMU on segment ${cfg.segment}`, { vm: this.id, segment: cfg.segment });
    return cfg;
  }

  /** Plug a vIOMMU for one PCI segment (hot-plug when the guest runs). */
  addViommu(spec: ViommuSpec): Outcome<J, Viommu> {
    return this.#ctx.outcome(this.id, () => {
      this.#alive();
      const cfg = this.#checkViommu(spec);
      return this.#ctx.commit({ events: [viommuAdded(this.id, cfg)] }, () => {
        const v = this.plugViommu(cfg);
        this.#ctx.viommuAdded(this, v);
        return v;
      });
    });
  }

  /** @internal Apply a committed `viommu-added` (validated before its commit). */
  plugViommu(cfg: ViommuConfig, registers?: VcmdGuestState): Viommu {
    const backend = this.#backend(cfg.segment);
    const device = new VcmdDevice({
      layout: cfg.layout,
      pasBit: cfg.pasBit,
      rangeExtension: cfg.rangeExtension,
      pss: cfg.pss,
      backend: this.#ctx.wrapBackend ? this.#ctx.wrapBackend(this, backend) : backend,
      now: this.#ctx.now,
    });
    if (registers !== undefined) device.restoreGuestState(registers);
    const v: Viommu = Object.freeze({ segment: cfg.segment, name: `${this.id}/dmar${cfg.segment}`, device });
    this.#viommus.set(cfg.segment, v);
    this.#configs.set(cfg.segment, cfg);
    return v;
  }

  /** Hot-unplug a vIOMMU. Rule: no device may sit behind it (EBUSY). */
  removeViommu(segment: number): Promise<void> {
    return this.#ctx.later(this.id, async () => {
      this.#alive();
      const v = this.viommu(segment);
      const behind = this.devices().filter((d) => d.segment === segment).map((d) => d.bdf);
      if (behind.length > 0) {
        throw new IoasidError('EBUSY', `vIOMMU ${v.name} still translates for ${behind.join(', ')}; remove them first`, { vm: this.id, segment, devices: behind });
      }
      await this.#ctx.viommuRemoving(this, v);
      await v.device.settled();
      await this.#ctx.commit({ events: [{ type: 'viommu-removed', vm: this.id, segment }] }, () => {
        this.#viommus.delete(segment);
        this.#configs.delete(segment);
      });
    });
  }

  // ------------------------------------------------------------------ the VCMD backend

  /**
   * The backend of one of this VM's VCMD devices: the VM's set on the host, nothing else. On a
   * durable journal each command's outcome is committed with the registers that report it, and
   * every other guest-visible change through `persist`.
   */
  #backend(segment: number): VcmdBackend {
    const registers = (command: VcmdCommandContext | undefined, result: number | null): JournalEntry['registers'] => {
      if (!this.#ctx.journal.durable) return undefined;
      if (command === undefined) throw new IoasidBugError(`a VCMD command of ${this.id}/dmar${segment} reached a durable host without its context`, { vm: this.id, segment });
      return { vm: this.id, segment, state: command.guestStateAfter(result) };
    };
    const backend: VcmdBackend = {
      allocate: (r, command) => this.#ctx.run(this.id, () => {
        this.#alive();
        const { min, max } = this.#ctx.range(r?.min ?? PASID_MIN, r?.max ?? PASID_MAX);
        return this.#allocate(min, max, 1, (pasids) => registers(command, pasids[0] as number), (pasids) => pasids[0] as number);
      }),
      free: (pasid, command) => this.#ctx.run(this.id, () => {
        this.#alive();
        return this.#free(pasid, registers(command, 0));
      }),
    };
    if (this.#ctx.journal.durable) {
      backend.persist = (state) => this.#ctx.run(this.id, () => this.#ctx.commit({ events: [], registers: { vm: this.id, segment, state } }, () => {}));
    }
    return backend;
  }

  // ------------------------------------------------------------------ PASIDs

  /**
   * Allocate `count` PASIDs for this VM, lowest free in [min, max] within the host's range, all or
   * nothing. Rules: the range (host.ts), the VM's quota for the whole batch (EDQUOT, the set's
   * rule in the core), a free PASID for each (ENOSPC).
   */
  allocPasids(opts: { readonly min?: number; readonly max?: number; readonly count?: number } = {}): Promise<number[]> {
    return this.#ctx.later(this.id, () => {
      this.#alive();
      const { min, max } = this.#ctx.range(opts.min ?? PASID_MIN, opts.max ?? PASID_MAX);
      return this.#allocate(min, max, opts.count ?? 1, () => undefined, (pasids) => pasids);
    });
  }

  /**
   * Reserve in the space (the reservation is the allocation: nobody else can take those PASIDs),
   * commit, publish; give the reservation back if the commit fails. With a placement policy
   * (cluster), a commit lost to another host is retried with a new reservation.
   */
  #allocate<T>(min: number, max: number, count: number, registers: (pasids: readonly number[]) => JournalEntry['registers'], result: (pasids: number[]) => T, attempt = 1): T | Promise<T> {
    const space = this.#ctx.space;
    const placement = this.#ctx.journal.placement;
    const reserved = placement !== undefined
      ? placement.reserve(space, this.set, min, max, count)
      : space.activeAllocator() === null ? space.allocBatchSync(this.set, min, max, count) : space.allocBatch(this.set, min, max, count);
    const a: Allocation<T> = { min, max, count, registers, result, attempt };
    return isThenable(reserved) ? reserved.then((pasids) => this.#reserved(a, pasids)) : this.#reserved(a, reserved);
  }

  /** The PASIDs of an allocation are reserved: commit them (no closure is made per call: a hot path). */
  #reserved<T>(a: Allocation<T>, pasids: number[]): T | Promise<T> {
    if (this.#destroyed) {
      // The VM went while a nested allocation was in flight: nothing to commit.
      throw new IoasidError('ENODEV', `VM ${this.id} was destroyed`, { vm: this.id });
    }
    const space = this.#ctx.space;
    const events: HostEvent[] = [{ type: 'alloc', vm: this.id, pasids }];
    if (this.set.quota > 0 && space.setCount(this.set) >= this.set.quota) events.push({ type: 'quota-exhausted', vm: this.id, quota: this.set.quota });
    const regs = a.registers(pasids);
    const entry: JournalEntry = regs === undefined ? { events } : { events, registers: regs };
    for (const p of pasids) this.#pending.add(p);
    let r: T | Promise<T>;
    try {
      r = this.#ctx.commit(entry, () => {
        this.#settle(pasids);
        return a.result(pasids);
      }, () => {
        this.#settle(pasids);
        this.#release(pasids);
      });
    } catch (e) {
      return this.#retry(a, e);
    }
    return isThenable(r) ? r.catch((e: unknown) => this.#retry(a, e)) : r;
  }

  #settle(pasids: readonly number[]): void {
    for (const p of pasids) this.#pending.delete(p);
  }

  /** A commit lost to another host (placement's conflict) is tried again, `attempts` times in all. */
  #retry<T>(a: Allocation<T>, e: unknown): T | Promise<T> {
    const placement = this.#ctx.journal.placement;
    if (placement === undefined || !placement.isConflict(e)) throw e;
    if (a.attempt < placement.attempts) return this.#allocate(a.min, a.max, a.count, a.registers, a.result, a.attempt + 1);
    throw new IoasidError('EAGAIN', `could not allocate ${a.count} PASID(s) in [${fmtId(a.min)}, ${fmtId(a.max)}] for VM ${this.id}: other hosts took them first ${a.attempt} times; retry`, { vm: this.id, min: a.min, max: a.max, count: a.count, attempts: a.attempt }, { cause: e });
  }

  /** Give back reserved PASIDs whose commit failed (unless another host's commit took one since). */
  #release(pasids: readonly number[]): void {
    const space = this.#ctx.space;
    for (const p of pasids) {
      if (!space.has(p) || space.ownerOf(p) !== this.set) continue;
      if (space.activeAllocator() === null) space.freeSync(p, this.set);
      else void space.free(p, this.set).catch(() => {});
    }
  }

  /**
   * Free one of this VM's PASIDs. Rules: ownership (ENOENT unknown, EACCES another's: the core's
   * `find`), not bound to a device on the host (EBUSY).
   */
  freePasid(pasid: number): Promise<void> {
    return this.#ctx.later(this.id, () => {
      this.#alive();
      return this.#free(pasid, undefined);
    });
  }

  #free(pasid: number, registers: JournalEntry['registers']): void | Promise<void> {
    this.lookup(pasid);
    const bound = this.#boundDevices.get(pasid);
    if (bound !== undefined && bound.size > 0) {
      throw new IoasidError('EBUSY', `PASID ${fmtId(pasid)} is still bound to ${[...bound].join(', ')}`, { pasid, devices: [...bound] });
    }
    const events: HostEvent[] = [{ type: 'free', vm: this.id, pasids: [pasid] }];
    const space = this.#ctx.space;
    return this.#ctx.commit(registers === undefined ? { events } : { events, registers }, () =>
      space.activeAllocator() === null ? space.freeSync(pasid, this.set) : space.free(pasid, this.set));
  }

  /**
   * One of this VM's PASIDs: its private data on the host. Rule (ownership, the core's `find`):
   * ENOENT if nobody holds it, EACCES if another VM does.
   */
  lookup(pasid: number): unknown {
    checkPasid(pasid);
    const space = this.#ctx.space;
    const owner = space.has(pasid) ? space.ownerOf(pasid) : undefined;
    if (owner === undefined) throw new IoasidError('ENOENT', `PASID ${fmtId(pasid)} is not allocated`, { pasid, vm: this.id });
    if (owner !== this.set) throw new IoasidError('EACCES', `PASID ${fmtId(pasid)} is not VM ${this.id}'s`, { pasid, vm: this.id });
    return space.find(this.set, pasid);
  }

  /** PASIDs this VM holds on the host, ascending. */
  pasids(): number[] {
    return this.#destroyed ? [] : this.#ctx.space.idsOf(this.set);
  }

  /** How many PASIDs this VM holds. */
  get used(): number {
    return this.#destroyed ? 0 : this.#ctx.space.setCount(this.set);
  }

  // ------------------------------------------------------------------ devices

  devices(): PciDevice[] {
    return [...this.#devices.values()].sort((a, b) => (a.bdf < b.bdf ? -1 : 1));
  }

  device(bdf: string): PciDevice {
    const d = this.#devices.get(typeof bdf === 'string' ? bdf.toLowerCase() : bdf);
    if (d === undefined) throw new IoasidError('ENOENT', `VM ${this.id} has no device ${fmtId(bdf)}`, { vm: this.id, bdf });
    return d;
  }

  /**
   * Rules: a valid device (EINVAL), assigned once (EEXIST), behind a vIOMMU of its segment that
   * exists or comes in the same change (EINVAL: add the vIOMMU first).
   */
  #checkDevice(spec: DeviceSpec, segments: ReadonlySet<number>): PciDevice {
    const d = parseDevice(spec);
    if (this.#devices.has(d.bdf)) throw new IoasidError('EEXIST', `device ${d.bdf} is already assigned to VM ${this.id}`, { vm: this.id, bdf: d.bdf });
    if (!this.#viommus.has(d.segment) && !segments.has(d.segment)) {
      throw new IoasidError('EINVAL', `VM ${this.id} has no vIOMMU for segment ${d.segment} (device ${d.bdf}): add the vIOMMU first`, { vm: this.id, bdf: d.bdf, segment: d.segment });
    }
    return d;
  }

  /** Assign a device; it sits behind the vIOMMU of its segment, which must exist. */
  assignDevice(spec: DeviceSpec): Outcome<J, PciDevice> {
    return this.#ctx.outcome(this.id, () => {
      this.#alive();
      const d = this.#checkDevice(spec, new Set());
      return this.#ctx.commit({ events: [deviceAssigned(this.id, d)] }, () => this.plugDevice(d));
    });
  }

  /** @internal Apply a committed `device-assigned`. */
  plugDevice(d: PciDevice): PciDevice {
    this.#devices.set(d.bdf, d);
    return d;
  }

  /** Hot-unplug a device: the guest unbinds it first, then the host drops any binding left. */
  removeDevice(bdf: string): Promise<void> {
    return this.#ctx.later(this.id, async () => {
      this.#alive();
      const d = this.device(bdf);
      await this.#ctx.deviceRemoving(this, d);
      const left = [...(this.#bindings.get(d.bdf) ?? [])].sort((a, b) => a - b);
      const events: HostEvent[] = [...left.map((pasid): HostEvent => ({ type: 'unbind', vm: this.id, pasid, bdf: d.bdf })), { type: 'device-removed', vm: this.id, bdf: d.bdf }];
      await this.#ctx.commit({ events }, () => {
        for (const pasid of left) this.#unbindNow(d, pasid);
        this.#localBindings.delete(d.bdf);
        this.#devices.delete(d.bdf);
      });
    });
  }

  // ------------------------------------------------------------------ bindings (host side)

  /**
   * The guest programs `device`'s PASID entry for `pasid` (VFIO's bind of a guest page table).
   * Rules: the device is assigned to this VM (ENOENT), the PASID is this VM's (ENOENT / EACCES),
   * within the device's PASID width (ERANGE), not bound to that device already (EEXIST).
   */
  bind(bdf: string, pasid: number, opts: { readonly deviceLocal?: boolean } = {}): Outcome<J, void> {
    return this.#ctx.outcome(this.id, () => {
      this.#alive();
      const d = this.device(bdf);
      // A device-local PASID (a linux-6.x guest: iommufd attaches the guest's own PASID to the
      // device) is not the host's: no ownership, and nothing a durable host could keep.
      const local = opts.deviceLocal === true;
      if (local) {
        if (this.#ctx.journal.durable) throw new IoasidError('EOPNOTSUPP', `device-local PASIDs (linux-6.x guests) are not kept by a durable host (VM ${this.id})`, { vm: this.id, bdf: d.bdf });
        checkPasid(pasid);
      } else this.lookup(pasid);
      if (pasid > d.maxPasid) {
        throw new IoasidError('ERANGE', `PASID ${fmtId(pasid)} is beyond device ${d.bdf}'s ${d.pasidBits}-bit PASID width`, { pasid, bdf: d.bdf, pasidBits: d.pasidBits });
      }
      if (this.#bindings.get(d.bdf)?.has(pasid) === true || this.#localBindings.get(d.bdf)?.has(pasid) === true) {
        throw new IoasidError('EEXIST', `device ${d.bdf} is already bound to PASID ${fmtId(pasid)}`, { bdf: d.bdf, pasid });
      }
      if (local) {
        return this.#ctx.commit({ events: [] }, () => {
          let l = this.#localBindings.get(d.bdf);
          if (l === undefined) this.#localBindings.set(d.bdf, (l = new Set()));
          l.add(pasid);
        });
      }
      return this.#ctx.commit({ events: [{ type: 'bind', vm: this.id, pasid, bdf: d.bdf }] }, () => this.#bindNow(d, pasid));
    });
  }

  #bindNow(d: PciDevice, pasid: number): void {
    let s = this.#bindings.get(d.bdf);
    if (s === undefined) this.#bindings.set(d.bdf, (s = new Set()));
    s.add(pasid);
    let b = this.#boundDevices.get(pasid);
    if (b === undefined) this.#boundDevices.set(pasid, (b = new Set()));
    b.add(d.bdf);
    this.#ctx.space.notify('bind', pasid, { vm: this.id, bdf: d.bdf });
  }

  /**
   * Tear a device's PASID entry down. Rules: the device is assigned (ENOENT); the PASID is this
   * VM's (ENOENT / EACCES); it is bound to that device (ENOENT).
   */
  unbind(bdf: string, pasid: number): Outcome<J, void> {
    return this.#ctx.outcome(this.id, () => {
      this.#alive();
      const d = this.device(bdf);
      const l = this.#localBindings.get(d.bdf);
      if (l?.has(pasid) === true) {
        return this.#ctx.commit({ events: [] }, () => {
          l.delete(pasid);
          if (l.size === 0) this.#localBindings.delete(d.bdf);
        });
      }
      if (this.#bindings.get(d.bdf)?.has(pasid) !== true) {
        this.lookup(pasid);
        throw new IoasidError('ENOENT', `device ${d.bdf} is not bound to PASID ${fmtId(pasid)}`, { bdf: d.bdf, pasid });
      }
      return this.#ctx.commit({ events: [{ type: 'unbind', vm: this.id, pasid, bdf: d.bdf }] }, () => this.#unbindNow(d, pasid));
    });
  }

  #unbindNow(d: PciDevice, pasid: number): void {
    const s = this.#bindings.get(d.bdf);
    if (s === undefined || !s.has(pasid)) return;
    s.delete(pasid);
    if (s.size === 0) this.#bindings.delete(d.bdf);
    const b = this.#boundDevices.get(pasid) as Set<string>;
    b.delete(d.bdf);
    if (b.size === 0) this.#boundDevices.delete(pasid);
    this.#ctx.space.notify('unbind', pasid, { vm: this.id, bdf: d.bdf });
  }

  /** Host-side bindings as [bdf, pasid] pairs, sorted (device-local ones included). */
  bindings(): [string, number][] {
    return sortPairs([...pairs(this.#bindings), ...pairs(this.#localBindings)]);
  }

  /** The device-local bindings only (a linux-6.x guest's), as [bdf, pasid] pairs, sorted. */
  localBindings(): [string, number][] {
    return sortPairs(pairs(this.#localBindings));
  }

  /** Devices bound to one PASID, sorted. */
  boundTo(pasid: number): string[] {
    return [...(this.#boundDevices.get(pasid) ?? [])].sort();
  }

  // ------------------------------------------------------------------ credential

  /** Replace the VM's owner credential. Rule: credentials are unique among VMs (EEXIST; host.ts). */
  replaceCredential(credential: string): Outcome<J, void> {
    return this.#ctx.outcome(this.id, () => {
      this.#alive();
      this.#ctx.host.checkCredential(credential, this.id);
      return this.#ctx.commit({ events: [{ type: 'credential-replaced', vm: this.id }], credentials: [{ vm: this.id, credential }] }, () => this.setCredential(credential));
    });
  }

  // ------------------------------------------------------------------ changes committed elsewhere

  /**
   * @internal Apply an event another host committed (cluster mode, host.ts `applyCommitted`). Its
   * rules were checked where it was made; what cannot be applied is an inconsistency (thrown).
   */
  applyCommitted(e: HostEvent): void {
    const space = this.#ctx.space;
    switch (e.type) {
      case 'viommu-added':
        if (!this.#viommus.has(e.segment)) this.plugViommu({ segment: e.segment, layout: e.layout, rangeExtension: e.rangeExtension, pasBit: e.pasBit, pss: e.pss });
        return;
      case 'viommu-removed':
        this.#viommus.delete(e.segment);
        this.#configs.delete(e.segment);
        return;
      case 'device-assigned':
        this.plugDevice(parseDevice({ bdf: e.bdf, pasidBits: e.pasidBits }));
        return;
      case 'device-removed':
        this.#devices.delete(e.bdf);
        return;
      case 'alloc':
        for (const p of e.pasids) {
          if (space.has(p)) {
            const owner = space.ownerOf(p);
            if (owner === this.set) continue;
            // Another host won the race for a PASID this host reserved but has not committed:
            // the reservation is lost (its commit fails as a conflict), the PASID is theirs.
            const holder = owner === null ? null : this.#ctx.host.vmBySet(owner);
            if (holder === null || !holder.#pending.has(p)) {
              throw new IoasidError('EEXIST', `PASID ${fmtId(p)} committed for VM ${this.id} elsewhere is held here by ${owner?.name ?? 'the host'}`, { pasid: p, vm: this.id });
            }
            holder.#pending.delete(p);
            space.freeSync(p, owner);
          }
          space.allocSync(this.set, p, p);
        }
        return;
      case 'free':
        for (const p of e.pasids) {
          for (const bdf of this.boundTo(p)) this.#unbindNow(this.device(bdf), p);
          if (space.has(p) && space.ownerOf(p) === this.set) space.freeSync(p, this.set);
        }
        return;
      case 'bind':
        this.#bindNow(this.device(e.bdf), e.pasid);
        return;
      case 'unbind':
        if (this.#devices.has(e.bdf)) this.#unbindNow(this.device(e.bdf), e.pasid);
        return;
      default:
        return;
    }
  }

  /** @internal apply a committed credential (cluster mode) */
  setCredential(credential: string): void {
    this.#ctx.host.credentialChanged(this, this.#credential, credential);
    this.#credential = credential;
  }

  // ------------------------------------------------------------------ teardown (host.ts)

  /** @internal The events of this VM's destruction, in order: unbinds, the free, removals, the end. */
  teardownEvents(): HostEvent[] {
    const pasids = this.pasids();
    return [
      ...sortPairs(pairs(this.#bindings)).map(([bdf, pasid]): HostEvent => ({ type: 'unbind', vm: this.id, pasid, bdf })),
      ...(pasids.length > 0 ? [{ type: 'free', vm: this.id, pasids } as HostEvent] : []),
      ...this.devices().map((d): HostEvent => ({ type: 'device-removed', vm: this.id, bdf: d.bdf })),
      ...this.viommus().map((v): HostEvent => ({ type: 'viommu-removed', vm: this.id, segment: v.segment })),
      { type: 'vm-destroyed', vm: this.id, freed: pasids },
    ];
  }

  /** @internal Teardown: forget every binding (the host tears the PASID entries down). */
  dropAllBindings(): [string, number][] {
    const all = this.bindings();
    this.#localBindings.clear();
    for (const [bdf, pasid] of sortPairs(pairs(this.#bindings))) {
      const d = this.#devices.get(bdf);
      if (d !== undefined) this.#unbindNow(d, pasid);
    }
    this.#bindings.clear();
    this.#boundDevices.clear();
    return all;
  }

  /** @internal */
  dropAll(): void {
    this.#devices.clear();
    this.#viommus.clear();
    this.#configs.clear();
  }

  /** @internal The checks of a whole new VM's vIOMMUs and devices (Host.createVm). */
  static checkParts(id: string, viommus: readonly ViommuSpec[], devices: readonly DeviceSpec[]): { viommus: ViommuConfig[]; devices: PciDevice[] } {
    const cfgs: ViommuConfig[] = [];
    const segments = new Set<number>();
    for (const v of viommus) {
      const cfg = parseViommuSpec(v);
      if (segments.has(cfg.segment)) throw new IoasidError('EEXIST', `VM ${id} already has a vIOMMU on segment ${cfg.segment}`, { vm: id, segment: cfg.segment });
      segments.add(cfg.segment);
      cfgs.push(cfg);
    }
    const devs: PciDevice[] = [];
    const bdfs = new Set<string>();
    for (const spec of devices) {
      const d = parseDevice(spec);
      if (bdfs.has(d.bdf)) throw new IoasidError('EEXIST', `device ${d.bdf} is already assigned to VM ${id}`, { vm: id, bdf: d.bdf });
      if (!segments.has(d.segment)) {
        throw new IoasidError('EINVAL', `VM ${id} has no vIOMMU for segment ${d.segment} (device ${d.bdf}): add the vIOMMU first`, { vm: id, bdf: d.bdf, segment: d.segment });
      }
      bdfs.add(d.bdf);
      devs.push(d);
    }
    return { viommus: cfgs, devices: devs };
  }
}

function pairs(m: ReadonlyMap<string, ReadonlySet<number>>): [string, number][] {
  const out: [string, number][] = [];
  for (const [bdf, s] of m) for (const p of s) out.push([bdf, p]);
  return out;
}

function sortPairs(out: [string, number][]): [string, number][] {
  return out.sort((a, b) => (a[0] === b[0] ? a[1] - b[1] : a[0] < b[0] ? -1 : 1));
}

export function viommuAdded(vm: string, cfg: ViommuConfig): HostEvent {
  return { type: 'viommu-added', vm, segment: cfg.segment, layout: cfg.layout, rangeExtension: cfg.rangeExtension, pasBit: cfg.pasBit, pss: cfg.pss };
}

export function deviceAssigned(vm: string, d: PciDevice): HostEvent {
  return { type: 'device-assigned', vm, bdf: d.bdf, pasidBits: d.pasidBits };
}
