/**
 * A guest in the host's process: the guest kernel (guest-kernel.ts) over the VM's vIOMMUs, its
 * host-side PASID entries programmed by calling the VM directly. A guest can host VMs of its own
 * (nesting): `startHost()` makes a Host whose space is this guest's space, so every L2 allocation
 * goes L2 -> L1 space -> VCMD -> L0: one namespace at every depth.
 */
import { IoasidError } from '../core/index.ts';
import type { Layout, MmioAccessor, UnplugReport } from '../vtd/index.ts';
import type { Vm, Viommu } from './vm.ts';
import type { PciDevice } from './device.ts';
import { GuestFront, GuestKernel, driverOptionsOf, type GuestDriverOptions } from './guest-kernel.ts';
import { Host, type HostOptions } from './host.ts';

/** In process the guest polls by yielding a turn, so there is no pause between polls to set. */
export interface GuestOptions extends Omit<GuestDriverOptions, 'pollIntervalMs'> {
  /** The guest driver's register layout (default: the layout of the VM's first vIOMMU, else B). */
  readonly layout?: Layout;
  /** VCMD poll deadline (default 10 s of virtual time). */
  readonly timeoutMs?: number;
  /** Observe or alter the guest's register accesses (the demo traces them; tests inject faults). */
  readonly wrapMmio?: (viommu: Viommu, mmio: MmioAccessor) => MmioAccessor;
}

export class Guest extends GuestFront {
  readonly vm: Vm;
  readonly kernel: GuestKernel;
  #host: Host | null = null;
  #dead = false;
  readonly #hostOptions: Pick<HostOptions, 'now' | 'log'>;
  readonly #mmioOf: (v: Viommu) => MmioAccessor;

  /** @internal booted by Host.boot */
  constructor(vm: Vm, opts: GuestOptions, hostOptions: Pick<HostOptions, 'now' | 'log'>) {
    super();
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
        ...driverOptionsOf(opts),
      },
    );
  }

  get dead(): boolean {
    return this.#dead;
  }

  protected get stopped(): boolean {
    return this.#dead;
  }

  protected alive(): void {
    if (this.#dead) throw new IoasidError('ENODEV', `the guest of VM ${this.vm.id} is not running`, { vm: this.vm.id });
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
    this.alive();
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
