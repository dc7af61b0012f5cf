/**
 * A VM on a host (DESIGN 5): one IOASID set with a quota in the host's space (the VFIO `vfio_mm`
 * of spec 4.2, quota shared by all its vIOMMUs and devices: edge 62), one vIOMMU per PCI segment,
 * assigned devices each behind the vIOMMU of its segment, and the host's record of which device is
 * bound to which PASID. The VM's vIOMMUs serve VCMD through a backend that allocates only in the
 * VM's set and frees only the VM's own PASIDs (edge 60, 61).
 */
import { IoasidError, fmtId, type IoasidSet, type IoasidSpace } from '../core/index.ts';
import { VcmdDevice, type Layout, type PasBit, type VcmdBackend } from '../vtd/index.ts';
import { parseDevice, type DeviceSpec, type PciDevice } from './device.ts';
import type { Host } from './host.ts';

export interface ViommuSpec {
  /** PCI segment (domain) this vIOMMU translates for, 0..65535. */
  readonly segment: number;
  /** Register layout: 'A' (VT-d 3.0/3.1) or 'B' (3.3+, default). */
  readonly layout?: Layout;
  /** Advertise the range extension (layout B only). */
  readonly rangeExtension?: boolean;
  /** VCCAP.PAS position: 0 as Linux (default), 1 as spec 5.10. */
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

/** What the VM's host must provide (the Host implements it). */
export interface VmHostContext {
  readonly host: Host;
  readonly space: IoasidSpace;
  /** Test hook: wrap the VCMD backend (fault injection). */
  readonly wrapBackend: ((vm: Vm, backend: VcmdBackend) => VcmdBackend) | undefined;
  readonly pasidMin: number;
  readonly pasidMax: number;
  readonly now: () => number;
  /** A vIOMMU was plugged (the guest's driver hot-adds it) or is about to go. */
  onViommuAdded(vm: Vm, viommu: Viommu): void;
  onViommuRemoving(vm: Vm, viommu: Viommu): Promise<void>;
  onDeviceRemoving(vm: Vm, device: PciDevice): Promise<void>;
  onBind(vm: Vm, device: PciDevice, pasid: number, bound: boolean): void;
}

export class Vm {
  readonly id: string;
  readonly set: IoasidSet;
  readonly #ctx: VmHostContext;
  readonly #viommus = new Map<number, Viommu>();
  readonly #devices = new Map<string, PciDevice>();
  /** Host-side bindings: device BDF -> PASIDs bound (the PASID entries the host programmed). */
  readonly #bindings = new Map<string, Set<number>>();
  /** PASID -> devices bound to it, for the free check. */
  readonly #boundDevices = new Map<number, Set<string>>();
  /**
   * Device-local bindings (a linux-6.x guest's own PASIDs, attached per device as iommufd does):
   * device BDF -> PASIDs. Not host PASIDs: no ownership, no free check, no space events.
   */
  readonly #localBindings = new Map<string, Set<number>>();
  #destroyed = false;

  /** @internal made by Host.createVm */
  constructor(ctx: VmHostContext, id: string, set: IoasidSet) {
    this.#ctx = ctx;
    this.id = id;
    this.set = set;
  }

  get host(): Host {
    return this.#ctx.host;
  }

  get quota(): number {
    return this.set.quota;
  }

  get destroyed(): boolean {
    return this.#destroyed;
  }

  /** @internal */
  markDestroyed(): void {
    this.#destroyed = true;
  }

  #alive(): void {
    if (this.#destroyed) throw new IoasidError('ENODEV', `VM ${this.id} was destroyed`, { vm: this.id });
  }

  // ------------------------------------------------------------------ vIOMMUs

  viommus(): Viommu[] {
    return [...this.#viommus.values()].sort((a, b) => a.segment - b.segment);
  }

  viommu(segment: number): Viommu {
    const v = this.#viommus.get(segment);
    if (v === undefined) throw new IoasidError('ENOENT', `VM ${this.id} has no vIOMMU on segment ${fmtId(segment)}`, { vm: this.id, segment });
    return v;
  }

  /** Plug a vIOMMU for one PCI segment (hot-plug when the guest runs). */
  addViommu(spec: ViommuSpec): Viommu {
    this.#alive();
    const segment = spec.segment;
    if (typeof segment !== 'number' || !Number.isInteger(segment) || segment < 0 || segment > 0xffff) {
      throw new IoasidError('EINVAL', `vIOMMU segment must be an integer in [0, 65535], got ${fmtId(segment)}`, { segment });
    }
    if (this.#viommus.has(segment)) throw new IoasidError('EEXIST', `VM ${this.id} already has a vIOMMU on segment ${segment}`, { vm: this.id, segment });
    const device = new VcmdDevice({
      layout: spec.layout ?? 'B',
      ...(spec.pasBit !== undefined ? { pasBit: spec.pasBit } : {}),
      ...(spec.rangeExtension !== undefined ? { rangeExtension: spec.rangeExtension } : {}),
      ...(spec.pss !== undefined ? { pss: spec.pss } : {}),
      backend: this.#ctx.wrapBackend ? this.#ctx.wrapBackend(this, this.#backend()) : this.#backend(),
      now: this.#ctx.now,
    });
    const v: Viommu = Object.freeze({ segment, name: `${this.id}/dmar${segment}`, device });
    this.#viommus.set(segment, v);
    this.#ctx.onViommuAdded(this, v);
    return v;
  }

  /** Hot-unplug a vIOMMU; devices behind it must be removed first (EBUSY). */
  async removeViommu(segment: number): Promise<void> {
    this.#alive();
    const v = this.viommu(segment);
    const behind = [...this.#devices.values()].filter((d) => d.segment === segment).map((d) => d.bdf);
    if (behind.length > 0) {
      throw new IoasidError('EBUSY', `vIOMMU ${v.name} still translates for ${behind.join(', ')}; remove them first`, { vm: this.id, segment, devices: behind });
    }
    await this.#ctx.onViommuRemoving(this, v);
    await v.device.settled();
    this.#viommus.delete(segment);
  }

  /** The backend of this VM's VCMD devices: the VM's set on the host, nothing else. */
  #backend(): VcmdBackend {
    return { allocate: (r) => this.allocPasid(r), free: (pasid) => this.freePasid(pasid) };
  }

  /**
   * Allocate one host PASID for this VM (what its vIOMMUs and VFIO's PASID request do): in the
   * VM's set, within the host's PASID range (and `r`, the range extension's or VFIO's [min, max]).
   */
  allocPasid(r?: { min: number; max: number }): number | Promise<number> {
    this.#alive();
    const ctx = this.#ctx;
    const space = ctx.space;
    let min = ctx.pasidMin;
    let max = ctx.pasidMax;
    if (r !== undefined) {
      min = Math.max(r.min, ctx.pasidMin);
      max = Math.min(r.max, ctx.pasidMax);
      if (min > max) throw new IoasidError('ENOSPC', `no host PASID in [${r.min}, ${r.max}]`, { min: r.min, max: r.max });
    }
    return space.activeAllocator() === null ? space.allocSync(this.set, min, max) : space.alloc(this.set, min, max);
  }

  /** Free a host PASID of this VM: EACCES another VM's, ENOENT unknown, EBUSY still bound. */
  freePasid(pasid: number): void | Promise<void> {
    this.#alive();
    const space = this.#ctx.space;
    const bound = this.#boundDevices.get(pasid);
    if (bound !== undefined && bound.size > 0) {
      throw new IoasidError('EBUSY', `PASID ${pasid} is still bound to ${[...bound].join(', ')}`, { pasid, devices: [...bound] });
    }
    return space.activeAllocator() === null ? space.freeSync(pasid, this.set) : space.free(pasid, this.set);
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

  /** Assign a device; it sits behind the vIOMMU of its segment, which must exist. */
  assignDevice(spec: DeviceSpec): PciDevice {
    this.#alive();
    const d = parseDevice(spec);
    if (this.#devices.has(d.bdf)) throw new IoasidError('EEXIST', `device ${d.bdf} is already assigned to VM ${this.id}`, { vm: this.id, bdf: d.bdf });
    if (!this.#viommus.has(d.segment)) {
      throw new IoasidError('EINVAL', `VM ${this.id} has no vIOMMU for segment ${d.segment} (device ${d.bdf}): add the vIOMMU first`, { vm: this.id, bdf: d.bdf, segment: d.segment });
    }
    this.#devices.set(d.bdf, d);
    return d;
  }

  /** Hot-unplug a device: the guest unbinds it first, then the host drops any binding left. */
  async removeDevice(bdf: string): Promise<void> {
    this.#alive();
    const d = this.device(bdf);
    await this.#ctx.onDeviceRemoving(this, d);
    for (const pasid of [...(this.#bindings.get(d.bdf) ?? [])]) this.unbind(d.bdf, pasid);
    this.#devices.delete(d.bdf);
  }

  // ------------------------------------------------------------------ bindings (host side)

  /**
   * The guest programs `device`'s PASID entry for `pasid` (VFIO's bind of a guest page table):
   * the device must be assigned to this VM, the PASID owned by this VM and within the device's
   * PASID width.
   */
  bind(bdf: string, pasid: number, opts: { readonly deviceLocal?: boolean } = {}): void {
    this.#alive();
    const d = this.device(bdf);
    // find() with the VM's set: ENOENT unknown, EACCES another VM's. A device-local PASID (a
    // linux-6.x guest: iommufd attaches the guest's own PASID to the device) is not the host's.
    const local = opts.deviceLocal === true;
    if (local) {
      if (!Number.isInteger(pasid) || pasid < 1) throw new IoasidError('EINVAL', `PASID must be a positive integer, got ${fmtId(pasid)}`, { pasid });
    } else this.#ctx.space.find(this.set, pasid);
    if (pasid > d.maxPasid) {
      throw new IoasidError('ERANGE', `PASID ${pasid} is beyond device ${d.bdf}'s ${d.pasidBits}-bit PASID width`, { pasid, bdf: d.bdf, pasidBits: d.pasidBits });
    }
    if (this.#bindings.get(d.bdf)?.has(pasid) === true || this.#localBindings.get(d.bdf)?.has(pasid) === true) {
      throw new IoasidError('EEXIST', `device ${d.bdf} is already bound to PASID ${pasid}`, { bdf: d.bdf, pasid });
    }
    if (local) {
      let l = this.#localBindings.get(d.bdf);
      if (l === undefined) this.#localBindings.set(d.bdf, (l = new Set()));
      l.add(pasid);
      return;
    }
    let s = this.#bindings.get(d.bdf);
    if (s === undefined) this.#bindings.set(d.bdf, (s = new Set()));
    s.add(pasid);
    let b = this.#boundDevices.get(pasid);
    if (b === undefined) this.#boundDevices.set(pasid, (b = new Set()));
    b.add(d.bdf);
    this.#ctx.onBind(this, d, pasid, true);
  }

  unbind(bdf: string, pasid: number): void {
    this.#alive();
    const d = this.device(bdf);
    const l = this.#localBindings.get(d.bdf);
    if (l?.delete(pasid) === true) {
      if (l.size === 0) this.#localBindings.delete(d.bdf);
      return;
    }
    const s = this.#bindings.get(d.bdf);
    if (s === undefined || !s.has(pasid)) throw new IoasidError('ENOENT', `device ${d.bdf} is not bound to PASID ${fmtId(pasid)}`, { bdf: d.bdf, pasid });
    s.delete(pasid);
    if (s.size === 0) this.#bindings.delete(d.bdf);
    const b = this.#boundDevices.get(pasid) as Set<string>;
    b.delete(d.bdf);
    if (b.size === 0) this.#boundDevices.delete(pasid);
    this.#ctx.onBind(this, d, pasid, false);
  }

  /** Host-side bindings as [bdf, pasid] pairs, sorted (device-local ones included). */
  bindings(): [string, number][] {
    const out: [string, number][] = [];
    for (const [bdf, s] of this.#bindings) for (const p of s) out.push([bdf, p]);
    for (const [bdf, s] of this.#localBindings) for (const p of s) out.push([bdf, p]);
    return out.sort((a, b) => (a[0] === b[0] ? a[1] - b[1] : a[0] < b[0] ? -1 : 1));
  }

  /** The device-local bindings only (a linux-6.x guest's), as [bdf, pasid] pairs, sorted. */
  localBindings(): [string, number][] {
    const out: [string, number][] = [];
    for (const [bdf, s] of this.#localBindings) for (const p of s) out.push([bdf, p]);
    return out.sort((a, b) => (a[0] === b[0] ? a[1] - b[1] : a[0] < b[0] ? -1 : 1));
  }

  /** PASIDs this VM holds on the host, ascending. */
  pasids(): number[] {
    return this.#destroyed ? [] : this.#ctx.space.idsOf(this.set);
  }

  /** @internal Teardown: forget every binding (the host tears the PASID entries down). */
  dropAllBindings(): [string, number][] {
    const all = this.bindings();
    for (const [bdf, pasid] of all) {
      if (this.#localBindings.get(bdf)?.has(pasid) === true && this.#bindings.get(bdf)?.has(pasid) !== true) continue; // no host event
      this.#bindings.get(bdf)?.delete(pasid);
      this.#boundDevices.get(pasid)?.delete(bdf);
      const d = this.#devices.get(bdf);
      if (d !== undefined) this.#ctx.onBind(this, d, pasid, false);
    }
    this.#bindings.clear();
    this.#boundDevices.clear();
    this.#localBindings.clear();
    return all;
  }

  /** @internal */
  dropAll(): void {
    this.#devices.clear();
    this.#viommus.clear();
  }
}

