/**
 * The host (DESIGN 5): the host kernel's IoasidSpace, its VMs, and their guests. A host at level 0
 * owns a space with the default allocator; a host inside a guest (nesting) uses that guest's space,
 * whose VT-d allocator asks the level below through VCMD, so the namespace stays system-wide at
 * every depth.
 *
 * Host rules:
 *  1. A VM is one set in the host's space, token = VM id, quota default 1000 (VFIO's default).
 *  2. A VM's vIOMMUs allocate only in its set, within the host's PASID range, and free only its
 *     own PASIDs; a PASID still bound to a device on the host is not freed (EBUSY).
 *  3. Destroying a VM stops its guest (and the guest's own VMs), drops every binding, frees every
 *     PASID the VM held and destroys its set: the host is left as if the VM had never existed.
 */
import {
  IoasidError, IoasidSpace, PASID_MAX, PASID_MIN, fmtId,
  type IoasidEvent, type LogFn, type SpaceSnapshot,
} from '../core/index.ts';
import { Vm, type ViommuSpec, type Viommu, type VmHostContext } from './vm.ts';
import type { DeviceSpec, PciDevice } from './device.ts';
import type { VcmdBackend } from '../vtd/index.ts';
import { Guest, type GuestOptions } from './guest.ts';

export const DEFAULT_VM_QUOTA = 1000;
const VM_ID = /^[a-z0-9][a-z0-9._-]{0,62}$/i;

export interface HostOptions {
  readonly name?: string;
  /** The space to allocate from; default a new strict space (level 0). */
  readonly space?: IoasidSpace;
  /** The guest this host runs in (nesting); set by Guest.startHost. */
  readonly parent?: Guest;
  /** Host PASID range handed to VMs (QEMU's VTD_HPASID_MIN/MAX): default [1, 0xFFFFF]. */
  readonly pasidMin?: number;
  readonly pasidMax?: number;
  readonly defaultQuota?: number;
  /** Clock for device logs (injected; default a counter). */
  readonly now?: () => number;
  readonly log?: LogFn;
  /** Test hook: wrap each VM's VCMD backend (fault injection in the invariant tests). */
  readonly wrapBackend?: (vm: Vm, backend: VcmdBackend) => VcmdBackend;
}

export interface VmSpec {
  readonly id: string;
  readonly quota?: number;
  readonly viommus?: readonly ViommuSpec[];
  readonly devices?: readonly DeviceSpec[];
}

export type HostEvent =
  | { readonly type: 'vm-created'; readonly vm: string; readonly quota: number }
  | { readonly type: 'vm-destroyed'; readonly vm: string; readonly freed: readonly number[] }
  | { readonly type: 'quota-exhausted'; readonly vm: string; readonly quota: number }
  | { readonly type: 'viommu-added' | 'viommu-removed'; readonly vm: string; readonly segment: number }
  | { readonly type: 'device-assigned' | 'device-removed'; readonly vm: string; readonly bdf: string }
  | { readonly type: 'alloc' | 'free'; readonly vm: string | null; readonly pasid: number }
  | { readonly type: 'bind' | 'unbind'; readonly vm: string; readonly pasid: number; readonly bdf: string };

export type HostListener = (event: HostEvent) => void;

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

export class Host {
  readonly name: string;
  readonly space: IoasidSpace;
  readonly level: number;
  readonly parent: Guest | null;
  readonly pasidMin: number;
  readonly pasidMax: number;
  readonly defaultQuota: number;
  readonly #now: () => number;
  readonly #log: LogFn | undefined;
  readonly #vms = new Map<string, Vm>();
  readonly #guests = new Map<Vm, Guest>();
  readonly #listeners = new Set<HostListener>();
  readonly #ctx: VmHostContext;
  #down = false;

  constructor(opts: HostOptions = {}) {
    this.name = opts.name ?? (opts.parent ? `${opts.parent.vm.id}.host` : 'host');
    this.parent = opts.parent ?? null;
    this.level = this.parent === null ? 0 : this.parent.vm.host.level + 1;
    this.space = opts.space ?? new IoasidSpace({ profile: 'strict', ...(opts.log ? { log: opts.log } : {}) });
    this.pasidMin = opts.pasidMin ?? PASID_MIN;
    this.pasidMax = opts.pasidMax ?? PASID_MAX;
    if (!Number.isInteger(this.pasidMin) || !Number.isInteger(this.pasidMax) || this.pasidMin < 1 || this.pasidMin > this.pasidMax || this.pasidMax > PASID_MAX) {
      throw new IoasidError('EINVAL', `host PASID range [${fmtId(this.pasidMin)}, ${fmtId(this.pasidMax)}] must lie within [1, 0xfffff]`, { pasidMin: this.pasidMin, pasidMax: this.pasidMax });
    }
    this.defaultQuota = opts.defaultQuota ?? DEFAULT_VM_QUOTA;
    let tick = 0;
    this.#now = opts.now ?? (() => tick++);
    this.#log = opts.log;
    const host = this;
    this.#ctx = {
      host: this,
      wrapBackend: opts.wrapBackend,
      space: this.space,
      pasidMin: this.pasidMin,
      pasidMax: this.pasidMax,
      now: this.#now,
      onViommuAdded: (vm, v) => {
        this.#guests.get(vm)?.viommuAdded(v);
        this.#emit({ type: 'viommu-added', vm: vm.id, segment: v.segment });
      },
      onViommuRemoving: async (vm, v) => {
        await this.#guests.get(vm)?.viommuRemoving(v);
        this.#emit({ type: 'viommu-removed', vm: vm.id, segment: v.segment });
      },
      onDeviceRemoving: async (vm, d) => {
        await this.#guests.get(vm)?.deviceRemoving(d);
        this.#emit({ type: 'device-removed', vm: vm.id, bdf: d.bdf });
      },
      onBind: (vm, d, pasid, bound) => {
        this.space.notify(bound ? 'bind' : 'unbind', pasid, { vm: vm.id, bdf: d.bdf });
      },
    };
    this.space.subscribe((e) => host.#onSpaceEvent(e), { priority: 'iommu' });
  }

  #onSpaceEvent(e: IoasidEvent): void {
    if (this.#listeners.size === 0) return;
    const token = e.set?.token;
    const vm = token !== undefined && this.#vms.has(token) ? token : null;
    if (e.type === 'alloc' || e.type === 'free') {
      this.#emit({ type: e.type, vm, pasid: e.id });
      // The allocation that fills a VM's quota: the next one will be refused (EDQUOT).
      const set = e.set;
      if (e.type === 'alloc' && vm !== null && set !== null && set.quota > 0 && this.space.setCount(set) >= set.quota) {
        this.#emit({ type: 'quota-exhausted', vm, quota: set.quota });
      }
    }
    else {
      const info = e.info as { vm?: string; bdf?: string } | undefined;
      if (info?.vm !== undefined && info.bdf !== undefined) this.#emit({ type: e.type, vm: info.vm, pasid: e.id, bdf: info.bdf });
    }
  }

  /** Listen to VM lifecycle and PASID events; returns the unsubscribe function. */
  on(listener: HostListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #emit(e: HostEvent): void {
    for (const l of this.#listeners) {
      try {
        l(e);
      } catch (err) {
        this.#log?.('error', `host listener failed on ${e.type}`, { error: String(err) });
      }
    }
  }

  #alive(): void {
    if (this.#down) throw new IoasidError('ENODEV', `host ${this.name} is shut down`, { host: this.name });
  }

  // ------------------------------------------------------------------ VMs

  createVm(spec: VmSpec): Vm {
    this.#alive();
    if (typeof spec !== 'object' || spec === null) throw new IoasidError('EINVAL', `VM spec must be an object, got ${fmtId(spec)}`);
    const { id } = spec;
    if (typeof id !== 'string' || !VM_ID.test(id)) {
      throw new IoasidError('EINVAL', `VM id must be 1-63 letters, digits, '.', '_' or '-', got ${fmtId(id)}`, { id });
    }
    if (this.#vms.has(id)) throw new IoasidError('EEXIST', `VM ${id} exists`, { vm: id });
    const quota = spec.quota ?? this.defaultQuota;
    const viommus = spec.viommus ?? [];
    const devices = spec.devices ?? [];
    if (!Array.isArray(viommus) || !Array.isArray(devices)) throw new IoasidError('EINVAL', 'viommus and devices must be arrays', { vm: id });
    const set = this.space.createSet({ name: id, quota, token: id });
    const vm = new Vm(this.#ctx, id, set);
    try {
      for (const v of viommus) vm.addViommu(v);
      for (const d of devices) vm.assignDevice(d);
    } catch (e) {
      this.space.destroySet(set);
      vm.markDestroyed();
      throw e;
    }
    this.#vms.set(id, vm);
    this.#emit({ type: 'vm-created', vm: id, quota });
    return vm;
  }

  vm(id: string): Vm {
    const vm = this.#vms.get(id);
    if (vm === undefined) throw new IoasidError('ENOENT', `no VM ${fmtId(id)} on host ${this.name}`, { vm: id });
    return vm;
  }

  vms(): Vm[] {
    return [...this.#vms.values()];
  }

  /** Boot the VM's guest kernel (its VT-d driver probes the VM's vIOMMUs). */
  boot(vmId: string, opts: GuestOptions = {}): Guest {
    this.#alive();
    const vm = this.vm(vmId);
    if (this.#guests.has(vm)) throw new IoasidError('EEXIST', `VM ${vmId} is already running`, { vm: vmId });
    const guest = new Guest(vm, { ...(this.#log ? { log: this.#log } : {}), ...opts }, { now: this.#now, ...(this.#log ? { log: this.#log } : {}) });
    this.#guests.set(vm, guest);
    return guest;
  }

  guest(vmId: string): Guest | null {
    return this.#guests.get(this.vm(vmId)) ?? null;
  }

  /**
   * Destroy a VM (edge 64): stop its guest and the guest's own VMs, drop every binding (the host
   * tears the PASID entries down), free every PASID it held, destroy its set.
   */
  async destroyVm(id: string): Promise<{ pasids: number[]; bindings: [string, number][] }> {
    this.#alive();
    const vm = this.vm(id);
    const guest = this.#guests.get(vm);
    if (guest !== undefined) await guest.kill();
    for (const v of vm.viommus()) await v.device.settled();
    const bindings = vm.dropAllBindings();
    const pasids = this.space.activeAllocator() === null ? this.space.freeAllSync(vm.set) : await this.space.freeAll(vm.set);
    this.space.destroySet(vm.set);
    vm.dropAll();
    vm.markDestroyed();
    this.#guests.delete(vm);
    this.#vms.delete(id);
    this.#emit({ type: 'vm-destroyed', vm: id, freed: pasids });
    return { pasids, bindings };
  }

  /** @internal the guest this host runs in is going away: every VM goes with it */
  async shutdown(): Promise<void> {
    for (const id of [...this.#vms.keys()]) await this.destroyVm(id);
    this.#down = true;
  }

  get down(): boolean {
    return this.#down;
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
  *allHosts(): IterableIterator<Host> {
    yield this;
    for (const g of this.#guests.values()) {
      const h = g.nestedHost;
      if (h !== null && !h.down) yield* h.allHosts();
    }
  }
}

export type { Viommu, ViommuSpec, PciDevice, DeviceSpec };
