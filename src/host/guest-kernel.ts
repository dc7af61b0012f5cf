/**
 * A guest kernel, written once: its own IoasidSpace, the VT-d driver over the VM's vIOMMUs (its
 * VCMD allocator registered as a custom allocator), and the SVA code that binds devices to address
 * spaces. What differs between a guest in the host's process (`Guest`) and one in another process
 * talking to the PASID authority service (`RemoteGuest`) is only its ports: how a vIOMMU's
 * registers are reached (MMIO), which devices the VM has, how the host programs a device's PASID
 * entry, and the clock it polls by.
 */
import { IoasidError, IoasidSpace, fmtId, type LogFn, type Profile } from '../core/index.ts';
import { VtdGuestDriver, type GuestViommu, type Layout, type MmioAccessor, type PasBit, type UnplugReport } from '../vtd/index.ts';
import type { PciDevice } from './device.ts';
import { GuestSva } from './sva.ts';

/** What the guest kernel reaches of its VM and host. */
export interface GuestPort {
  /** The devices assigned to the VM (ENOENT for another BDF). */
  device(bdf: string): PciDevice;
  /** The host programs (or tears down) a device's PASID entry for this guest. */
  bind(bdf: string, pasid: number): void | Promise<void>;
  unbind(bdf: string, pasid: number): void | Promise<void>;
}

/** One vIOMMU as the guest finds it at boot or hot-plug. */
export interface GuestUnitSpec {
  readonly segment: number;
  readonly name: string;
  readonly mmio: MmioAccessor;
}

export interface GuestKernelOptions {
  /** The guest kernel's profile (default strict). */
  readonly profile?: Profile;
  /** The guest driver's register layout (default B). */
  readonly layout?: Layout;
  readonly pasBit?: PasBit;
  /** Use the range extension where advertised (strict only; default true). */
  readonly rangeExtension?: boolean;
  /** VCMD poll deadline (default 10 s). */
  readonly timeoutMs?: number;
  /** Pause between two VCRSP reads while IP is set. */
  readonly pollIntervalMs?: number;
  /** How a poll waits (in process: a turn of the event loop). */
  readonly sleep?: (ms: number) => Promise<void>;
  /** The clock the deadline counts (default: virtual time per poll). */
  readonly now?: () => number;
  readonly log?: LogFn;
}

/** The options every guest hands to its kernel as they are (the others each guest sets itself). */
export type GuestDriverOptions = Pick<GuestKernelOptions, 'profile' | 'pasBit' | 'rangeExtension' | 'timeoutMs' | 'pollIntervalMs' | 'log'>;

const DRIVER_OPTIONS = ['profile', 'pasBit', 'rangeExtension', 'timeoutMs', 'pollIntervalMs', 'log'] as const;

/** The driver options set in `opts` (an option given as undefined is left out, not passed on). */
export function driverOptionsOf(opts: GuestDriverOptions): GuestDriverOptions {
  const out: Record<string, unknown> = {};
  for (const k of DRIVER_OPTIONS) if (opts[k] !== undefined) out[k] = opts[k];
  return out as GuestDriverOptions;
}

export class GuestKernel {
  readonly space: IoasidSpace;
  readonly driver: VtdGuestDriver;
  readonly #units = new Map<number, GuestViommu>();
  readonly #sva: GuestSva;

  constructor(units: readonly GuestUnitSpec[], port: GuestPort, opts: GuestKernelOptions = {}) {
    const log = opts.log;
    this.space = new IoasidSpace({ profile: opts.profile ?? 'strict', ...(log ? { log } : {}) });
    this.driver = new VtdGuestDriver(this.space, {
      layout: opts.layout ?? 'B',
      ...(opts.sleep !== undefined ? { sleep: opts.sleep } : {}),
      ...(opts.now !== undefined ? { now: opts.now } : {}),
      ...(opts.pasBit !== undefined ? { pasBit: opts.pasBit } : {}),
      ...(opts.rangeExtension !== undefined ? { rangeExtension: opts.rangeExtension } : {}),
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
      ...(opts.pollIntervalMs !== undefined ? { pollIntervalMs: opts.pollIntervalMs } : {}),
      ...(log ? { log } : {}),
    });
    const sorted = [...units].sort((a, b) => a.segment - b.segment);
    const probed = this.driver.init(sorted.map((u) => ({ mmio: u.mmio, name: u.name })));
    sorted.forEach((u, i) => this.#units.set(u.segment, probed[i] as GuestViommu));
    this.#sva = new GuestSva(this.space, () => this.driver.pasidMaxId, port);
  }

  /** The guest's view of a vIOMMU. */
  unit(segment: number): GuestViommu {
    const u = this.#units.get(segment);
    if (u === undefined) throw new IoasidError('ENOENT', `the guest has no vIOMMU on segment ${fmtId(segment)}`, { segment });
    return u;
  }

  hasUnit(segment: number): boolean {
    return this.#units.has(segment);
  }

  /** Segments with a vIOMMU, ascending. */
  segments(): number[] {
    return [...this.#units.keys()].sort((a, b) => a - b);
  }

  /** PASIDs this guest kernel holds (its space's active table). */
  pasids(): number[] {
    return this.space.ids();
  }

  // ------------------------------------------------------------------ raw allocation

  /** Allocate a PASID with no device (e.g. for a nested VM or a test). */
  alloc(min = 1, max = this.driver.pasidMaxId - 1, data: unknown = null): Promise<number> {
    return this.space.alloc(null, min, max, data);
  }

  /** Free a PASID of this guest kernel's own; one a nested VM holds is freed through that VM (EACCES). */
  async free(pasid: number): Promise<void> {
    // An ID it does not know goes to ioasid_free() as well (Linux logs it; strict: ENOENT).
    const owner = this.space.has(pasid) ? this.space.ownerOf(pasid) : null;
    if (owner !== null) {
      throw new IoasidError('EACCES', `PASID ${pasid} belongs to nested VM ${owner.name}; it is freed through that VM`, { pasid, owner: owner.name });
    }
    await this.space.free(pasid);
  }

  // ------------------------------------------------------------------ SVA

  /** Bind a device to an address space; returns the PASID (see sva.ts). */
  svaBind(bdf: string, mm: string): Promise<number> {
    return this.#sva.bind(bdf, mm);
  }

  /** Unbind; the last device's unbind clears the data, then frees the PASID. */
  svaUnbind(bdf: string, mm: string): Promise<void> {
    return this.#sva.unbind(bdf, mm);
  }

  /** The address space exits: its devices are unbound and its PASID freed (see sva.ts). */
  mmExit(mm: string): Promise<number> {
    return this.#sva.exit(mm);
  }

  /** Address spaces bound, as { mm, pasid, devices }. */
  bindings(): { mm: string; pasid: number; devices: string[] }[] {
    return this.#sva.list();
  }

  /** Unbind every address space from one device (before the device goes away). */
  releaseDevice(bdf: string): Promise<number> {
    return this.#sva.releaseDevice(bdf);
  }

  /** Unbind every address space from every device and free every PASID (a clean shutdown). */
  async releaseAll(): Promise<{ unbound: number; freed: number[] }> {
    const unbound = await this.#sva.releaseAll();
    const freed: number[] = [];
    for (const id of this.space.ids()) {
      await this.space.free(id);
      freed.push(id);
    }
    return { unbound, freed };
  }

  // ------------------------------------------------------------------ hot-plug

  /** A vIOMMU appeared: the driver hot-adds it. */
  hotplug(unit: GuestUnitSpec): GuestViommu {
    const u = this.driver.hotplug(unit.mmio, unit.name);
    this.#units.set(unit.segment, u);
    return u;
  }

  /** A vIOMMU is going: the driver unplugs it (see the driver for what happens to PASIDs). */
  async unplug(segment: number): Promise<UnplugReport | null> {
    const u = this.#units.get(segment);
    if (u === undefined) return null;
    const report = await this.driver.unplug(u);
    this.#units.delete(segment);
    return report;
  }

  /** Wait for every vIOMMU's command queue. */
  async idle(): Promise<void> {
    for (const u of this.#units.values()) await u.idle().catch(() => {});
  }

  /** The guest died: forget its bindings (the host tears the entries down itself). */
  forget(): void {
    this.#sva.forget();
  }
}

/**
 * What a running guest offers over its kernel, written once for the in-process `Guest` and the
 * `RemoteGuest`: the guest's view of its vIOMMUs and PASIDs, allocation, SVA and the exit of an
 * address space. The two differ in how the kernel reaches its registers and in how the guest stops
 * (`alive` throws once it has; a stopped guest holds no PASIDs).
 */
export abstract class GuestFront {
  abstract readonly kernel: GuestKernel;

  /** Whether the guest has stopped. */
  protected abstract get stopped(): boolean;

  /** Throws (`ENODEV`) once the guest has stopped. */
  protected abstract alive(): void;

  get space(): IoasidSpace {
    return this.kernel.space;
  }

  get driver(): VtdGuestDriver {
    return this.kernel.driver;
  }

  /** The guest's view of a vIOMMU. */
  unit(segment: number): GuestViommu {
    return this.kernel.unit(segment);
  }

  /** PASIDs this guest kernel holds (its space's active table); none once it has stopped. */
  pasids(): number[] {
    return this.stopped ? [] : this.kernel.pasids();
  }

  /** Allocate a PASID with no device (e.g. for a nested VM or a test), through the VCMD allocator. */
  async alloc(min = 1, max = this.driver.pasidMaxId - 1, data: unknown = null): Promise<number> {
    this.alive();
    return this.kernel.alloc(min, max, data);
  }

  /** Free a PASID allocated with `alloc` (through VCMD). */
  async free(pasid: number): Promise<void> {
    this.alive();
    await this.kernel.free(pasid);
  }

  /** Bind a device to an address space; returns the PASID (see sva.ts). */
  async svaBind(bdf: string, mm: string): Promise<number> {
    this.alive();
    return this.kernel.svaBind(bdf, mm);
  }

  /** Unbind; the last device's unbind clears the data, then frees the PASID through VCMD. */
  async svaUnbind(bdf: string, mm: string): Promise<void> {
    this.alive();
    return this.kernel.svaUnbind(bdf, mm);
  }

  /** The address space exits: its devices are unbound and its PASID freed (see sva.ts). */
  async mmExit(mm: string): Promise<number> {
    this.alive();
    return this.kernel.mmExit(mm);
  }

  /** Address spaces bound, as { mm, pasid, devices }. */
  bindings(): { mm: string; pasid: number; devices: string[] }[] {
    return this.kernel.bindings();
  }
}
