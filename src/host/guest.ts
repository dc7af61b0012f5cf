/**
 * A guest kernel: its own IoasidSpace with the VT-d driver over the VM's vIOMMUs, and the SVA code
 * that binds devices to address spaces (the kernel's intel-svm / iommu-sva of v5.8-v5.17):
 *  - `svaBind(device, mm)` allocates a PASID in the range the device supports (`ioasid_alloc(NULL,
 *    PASID_MIN, pasid_max - 1, svm)` with `pasid_max = min(device, intel_pasid_max_id)`), sets the
 *    private data, programs the device's PASID entry (the host's bind), raises a bind event. The
 *    same address space bound to a second device reuses its PASID; a device whose PASID width
 *    cannot hold that PASID is ERANGE (the 6.x check, edge 78).
 *  - `svaUnbind(device, mm)` unbinds; on the last device it clears the private data, then frees
 *    ("Clear private data so that free pass check", spec 2.4).
 * A guest can host VMs of its own (nesting): `startHost()` makes a Host whose space is this
 * guest's space, so every L2 allocation goes L2 -> L1 space -> VCMD -> L0: one namespace at every
 * depth.
 */
import { IoasidError, fmtId, isIoasidError, type IoasidSpace, type LogFn, type Profile } from '../core/index.ts';
import { IoasidSpace as Space } from '../core/index.ts';
import { VtdGuestDriver, type GuestViommu, type Layout, type MmioAccessor, type PasBit, type UnplugReport } from '../vtd/index.ts';
import type { Vm, Viommu } from './vm.ts';
import type { PciDevice } from './device.ts';
import { Host, type HostOptions } from './host.ts';

export interface GuestOptions {
  /** The guest kernel's profile (default strict). */
  readonly profile?: Profile;
  /** The guest driver's register layout (default: the layout of the VM's first vIOMMU, else B). */
  readonly layout?: Layout;
  readonly pasBit?: PasBit;
  /** Use the range extension where advertised (strict only; default true). */
  readonly rangeExtension?: boolean;
  /** VCMD poll deadline (default 10 s of virtual time). */
  readonly timeoutMs?: number;
  readonly log?: LogFn;
  /** Observe or alter the guest's register accesses (the demo traces them; tests inject faults). */
  readonly wrapMmio?: (viommu: Viommu, mmio: MmioAccessor) => MmioAccessor;
}

/** The SVA state of one address space (the kernel's `struct intel_svm` per mm). */
interface MmBinding {
  readonly mm: string;
  readonly pasid: number;
  readonly devices: Set<string>;
}

export class Guest {
  readonly vm: Vm;
  readonly space: IoasidSpace;
  readonly driver: VtdGuestDriver;
  readonly #units = new Map<number, GuestViommu>();
  readonly #mms = new Map<string, MmBinding>();
  #host: Host | null = null;
  #dead = false;
  readonly #hostOptions: Pick<HostOptions, 'now' | 'log'>;
  readonly #mmioOf: (v: Viommu) => MmioAccessor;

  /** @internal booted by Host.boot */
  constructor(vm: Vm, opts: GuestOptions, hostOptions: Pick<HostOptions, 'now' | 'log'>) {
    this.vm = vm;
    this.#hostOptions = hostOptions;
    const wrap = opts.wrapMmio;
    this.#mmioOf = wrap === undefined ? (v) => v.device : (v) => wrap(v, v.device);
    const log = opts.log;
    this.space = new Space({ profile: opts.profile ?? 'strict', ...(log ? { log } : {}) });
    const layout = opts.layout ?? vm.viommus()[0]?.device.config.layout ?? 'B';
    this.driver = new VtdGuestDriver(this.space, {
      layout,
      ...(opts.pasBit !== undefined ? { pasBit: opts.pasBit } : {}),
      ...(opts.rangeExtension !== undefined ? { rangeExtension: opts.rangeExtension } : {}),
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
      ...(log ? { log } : {}),
    });
    const viommus = vm.viommus();
    const units = this.driver.init(viommus.map((v) => ({ mmio: this.#mmioOf(v), name: v.name })));
    viommus.forEach((v, i) => this.#units.set(v.segment, units[i] as GuestViommu));
  }

  get dead(): boolean {
    return this.#dead;
  }

  #alive(): void {
    if (this.#dead) throw new IoasidError('ENODEV', `the guest of VM ${this.vm.id} is not running`, { vm: this.vm.id });
  }

  /** The guest's view of a vIOMMU. */
  unit(segment: number): GuestViommu {
    const u = this.#units.get(segment);
    if (u === undefined) throw new IoasidError('ENOENT', `guest of VM ${this.vm.id} has no vIOMMU on segment ${fmtId(segment)}`, { segment });
    return u;
  }

  /** PASIDs this guest kernel holds (its space's active table). */
  pasids(): number[] {
    return this.#dead ? [] : this.space.ids();
  }

  // ------------------------------------------------------------------ raw allocation

  /** Allocate a PASID with no device (e.g. for a nested VM or a test). */
  async alloc(min = 1, max = this.driver.pasidMaxId - 1, data: unknown = null): Promise<number> {
    this.#alive();
    return this.space.alloc(null, min, max, data);
  }

  async free(pasid: number): Promise<void> {
    this.#alive();
    await this.space.free(pasid);
  }

  // ------------------------------------------------------------------ SVA

  /** Bind a device to an address space; returns the PASID. */
  async svaBind(bdf: string, mm: string): Promise<number> {
    this.#alive();
    if (typeof mm !== 'string' || mm.length === 0) throw new IoasidError('EINVAL', `address space must be a non-empty string, got ${fmtId(mm)}`, { mm });
    const device = this.vm.device(bdf);
    const existing = this.#mms.get(mm);
    if (existing !== undefined) {
      if (existing.devices.has(device.bdf)) throw new IoasidError('EEXIST', `device ${device.bdf} is already bound to ${mm}`, { bdf: device.bdf, mm });
      if (existing.pasid > device.maxPasid) {
        throw new IoasidError('ERANGE', `${mm} has PASID ${existing.pasid}, beyond device ${device.bdf}'s ${device.pasidBits}-bit width`, { mm, pasid: existing.pasid, bdf: device.bdf });
      }
      this.#program(device, existing.pasid, mm);
      existing.devices.add(device.bdf);
      return existing.pasid;
    }
    const max = Math.min(device.maxPasid, this.driver.pasidMaxId - 1);
    const binding: MmBinding = { mm, pasid: -1, devices: new Set() };
    const pasid = await this.space.alloc(null, 1, max, binding);
    try {
      this.#program(device, pasid, mm);
    } catch (e) {
      // Could not program the entry (e.g. the host refuses a PASID beyond the device's width in a
      // Linux profile, which ignored min/max): undo in the kernel's order.
      this.space.setData(pasid, null);
      await this.space.free(pasid).catch(() => {});
      throw e;
    }
    const done: MmBinding = { mm, pasid, devices: new Set([device.bdf]) };
    this.space.setData(pasid, done);
    this.#mms.set(mm, done);
    return pasid;
  }

  #program(device: PciDevice, pasid: number, mm: string): void {
    this.vm.bind(device.bdf, pasid);
    this.space.notify('bind', pasid, { bdf: device.bdf, mm });
  }

  /** Unbind; the last device's unbind clears the data, then frees the PASID. */
  async svaUnbind(bdf: string, mm: string): Promise<void> {
    this.#alive();
    const device = this.vm.device(bdf);
    const b = this.#mms.get(mm);
    if (b === undefined || !b.devices.has(device.bdf)) throw new IoasidError('ENOENT', `device ${device.bdf} is not bound to ${fmtId(mm)}`, { bdf: device.bdf, mm });
    this.vm.unbind(device.bdf, b.pasid);
    this.space.notify('unbind', b.pasid, { bdf: device.bdf, mm });
    b.devices.delete(device.bdf);
    if (b.devices.size > 0) return;
    this.#mms.delete(mm);
    this.space.setData(b.pasid, null);
    await this.space.free(b.pasid);
  }

  /** Address spaces bound, as { mm, pasid, devices }. */
  bindings(): { mm: string; pasid: number; devices: string[] }[] {
    return [...this.#mms.values()].map((b) => ({ mm: b.mm, pasid: b.pasid, devices: [...b.devices].sort() }));
  }

  // ------------------------------------------------------------------ hot-plug, as the host tells it

  /** @internal the host plugged a vIOMMU */
  viommuAdded(v: Viommu): void {
    if (this.#dead) return;
    this.#units.set(v.segment, this.driver.hotplug(this.#mmioOf(v), v.name));
  }

  /** @internal the host is about to remove a vIOMMU */
  async viommuRemoving(v: Viommu): Promise<UnplugReport | null> {
    if (this.#dead) return null;
    const u = this.#units.get(v.segment);
    if (u === undefined) return null;
    const report = await this.driver.unplug(u);
    this.#units.delete(v.segment);
    return report;
  }

  /** @internal the host is about to remove a device: unbind every address space from it */
  async deviceRemoving(device: PciDevice): Promise<void> {
    if (this.#dead) return;
    for (const b of [...this.#mms.values()]) {
      if (b.devices.has(device.bdf)) await this.svaUnbind(device.bdf, b.mm);
    }
  }

  // ------------------------------------------------------------------ nesting

  /** This guest as a host for its own VMs (L1 -> L2); one per guest. */
  startHost(opts: Omit<HostOptions, 'space' | 'parent' | 'pasidMax'> = {}): Host {
    this.#alive();
    if (this.#host !== null) return this.#host;
    this.#host = new Host({ ...this.#hostOptions, ...opts, space: this.space, parent: this, pasidMax: this.driver.pasidMaxId - 1 });
    return this.#host;
  }

  get nestedHost(): Host | null {
    return this.#host;
  }

  /** @internal the VM is being destroyed: the guest stops, its nested VMs go with it */
  async kill(): Promise<void> {
    if (this.#dead) return;
    if (this.#host !== null) await this.#host.shutdown();
    this.#dead = true;
    this.#mms.clear();
  }
}

export function isGuestGone(e: unknown): boolean {
  return isIoasidError(e, 'ENODEV');
}
