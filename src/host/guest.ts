/**
 * A guest in the host's process: the guest kernel (guest-kernel.ts) over the VM's vIOMMUs, its
 * host-side PASID entries programmed by calling the VM directly. A guest can host VMs of its own
 * (nesting): `startHost()` makes a Host whose space is this guest's space, so every L2 allocation
 * goes L2 -> L1 space -> VCMD -> L0: one namespace at every depth.
 */
import { IoasidError, type IoasidSpace, type LogFn, type Profile } from '../core/index.ts';
import type { GuestViommu, Layout, MmioAccessor, PasBit, UnplugReport, VtdGuestDriver } from '../vtd/index.ts';
import type { Vm, Viommu } from './vm.ts';
import type { PciDevice } from './device.ts';
import { GuestKernel } from './guest-kernel.ts';
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

export class Guest {
  readonly vm: Vm;
  readonly kernel: GuestKernel;
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
    this.kernel = new GuestKernel(
      vm.viommus().map((v) => ({ segment: v.segment, name: v.name, mmio: this.#mmioOf(v) })),
      {
        device: (bdf) => vm.device(bdf),
        // linux-6.x: no VCMD; iommufd attaches the guest's own PASID to the device (device-local).
        bind: (bdf, pasid) => vm.bind(bdf, pasid, { deviceLocal: opts.profile === 'linux-6.x' }),
        unbind: (bdf, pasid) => vm.unbind(bdf, pasid),
      },
      {
        layout: opts.layout ?? vm.viommus()[0]?.device.config.layout ?? 'B',
        // In process, the host answers within a few turns of the event loop: poll by yielding, not
        // with a 1 ms timer (the deadline still counts virtual time per poll).
        sleep: () => new Promise<void>((resolve) => setImmediate(resolve)),
        ...(opts.profile !== undefined ? { profile: opts.profile } : {}),
        ...(opts.pasBit !== undefined ? { pasBit: opts.pasBit } : {}),
        ...(opts.rangeExtension !== undefined ? { rangeExtension: opts.rangeExtension } : {}),
        ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
        ...(opts.log ? { log: opts.log } : {}),
      },
    );
  }

  get space(): IoasidSpace {
    return this.kernel.space;
  }

  get driver(): VtdGuestDriver {
    return this.kernel.driver;
  }

  get dead(): boolean {
    return this.#dead;
  }

  #alive(): void {
    if (this.#dead) throw new IoasidError('ENODEV', `the guest of VM ${this.vm.id} is not running`, { vm: this.vm.id });
  }

  /** The guest's view of a vIOMMU. */
  unit(segment: number): GuestViommu {
    return this.kernel.unit(segment);
  }

  /** PASIDs this guest kernel holds (its space's active table). */
  pasids(): number[] {
    return this.#dead ? [] : this.kernel.pasids();
  }

  /** Allocate a PASID with no device (e.g. for a nested VM or a test). */
  async alloc(min = 1, max = this.driver.pasidMaxId - 1, data: unknown = null): Promise<number> {
    this.#alive();
    return this.kernel.alloc(min, max, data);
  }

  async free(pasid: number): Promise<void> {
    this.#alive();
    await this.kernel.free(pasid);
  }

  /** Bind a device to an address space; returns the PASID (see sva.ts). */
  async svaBind(bdf: string, mm: string): Promise<number> {
    this.#alive();
    return this.kernel.svaBind(bdf, mm);
  }

  /** Unbind; the last device's unbind clears the data, then frees the PASID. */
  async svaUnbind(bdf: string, mm: string): Promise<void> {
    this.#alive();
    return this.kernel.svaUnbind(bdf, mm);
  }

  /** Address spaces bound, as { mm, pasid, devices }. */
  bindings(): { mm: string; pasid: number; devices: string[] }[] {
    return this.kernel.bindings();
  }

  /** The address space exits: its devices are unbound and its PASID freed (see sva.ts). */
  async mmExit(mm: string): Promise<number> {
    this.#alive();
    return this.kernel.mmExit(mm);
  }

  // ------------------------------------------------------------------ hot-plug, as the host tells it

  /** @internal the host plugged a vIOMMU */
  viommuAdded(v: Viommu): void {
    if (this.#dead) return;
    this.kernel.hotplug({ segment: v.segment, name: v.name, mmio: this.#mmioOf(v) });
  }

  /** @internal the host is about to remove a vIOMMU */
  async viommuRemoving(v: Viommu): Promise<UnplugReport | null> {
    if (this.#dead || !this.kernel.hasUnit(v.segment)) return null;
    const u = this.kernel.unit(v.segment);
    // The last vIOMMU is this guest's only way to the host: while nested VMs hold PASIDs through
    // it, it cannot go (their guests would keep PASIDs the host had taken back).
    const others = this.driver.units.filter((x) => x !== u && x.registered);
    const nested = this.#host?.vms().filter((vm) => vm.pasids().length > 0).map((vm) => vm.id) ?? [];
    if (u.registered && others.length === 0 && nested.length > 0) {
      throw new IoasidError('EBUSY', `vIOMMU ${v.name} is the last way to the host for nested VMs ${nested.join(', ')}, which hold PASIDs`, { viommu: v.name, nested });
    }
    return this.kernel.unplug(v.segment);
  }

  /** @internal the host is about to remove a device: unbind every address space from it */
  async deviceRemoving(device: PciDevice): Promise<void> {
    if (this.#dead) return;
    await this.kernel.releaseDevice(device.bdf);
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
    this.kernel.forget();
  }
}
