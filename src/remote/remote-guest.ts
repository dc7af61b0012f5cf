/**
 * A remote guest: the guest kernel of a VM hosted by a PASID authority service in another process.
 * The same guest kernel as in process (src/host/guest-kernel.ts: its own `IoasidSpace`, the VT-d
 * guest driver, the SVA code), with other ports: one synchronous remote MMIO accessor per vIOMMU
 * (segments and layouts from `GET /v1/vms/:vm`) and the host's PASID-entry programming over HTTP:
 *
 *  - `svaBind(bdf, mm)`: a new address space allocates a PASID through VCMD in
 *    `[1, min(device max, intel_pasid_max_id - 1)]` (the driver: trapped VCMD write, VCRSP polled
 *    while IP is set, i.e. until the service has committed the allocation), sets the private data,
 *    then programs the device's PASID entry with `POST /v1/vms/:vm/pasids/:pasid/bindings`. An
 *    address space already bound reuses its PASID on another device (ERANGE when the device's PASID
 *    width cannot hold it; EEXIST when that device is already bound to it). If the service refuses
 *    the binding, the data is cleared and the PASID freed back through VCMD: nothing leaks.
 *  - `svaUnbind(bdf, mm)`: unbinds on the service; on the last device clears the private data and
 *    frees the PASID through VCMD ("Clear private data so that free pass check").
 *  - Operations on one address space run one at a time (two concurrent first binds of one mm get
 *    one PASID, not two).
 *
 * The guest thread blocks on each register access (see remote-mmio.ts): never run a RemoteGuest in
 * the thread that runs the service it talks to.
 */
import { IoasidError, checkProfile, fmtId } from '../core/index.ts';
import type { Layout, MmioAccessor, UnplugReport } from '../vtd/index.ts';
import { GuestFront, GuestKernel, driverOptionsOf, parseDevice, type GuestDriverOptions, type PciDevice } from '../host/index.ts';
import { IoasidClient, type VmInfo } from '../client/index.ts';
import { RemoteMmio, SyncServiceChannel, type ChannelStats } from './remote-mmio.ts';

export interface RemoteGuestOptions extends GuestDriverOptions {
  /** Base URL of the service, e.g. `http://127.0.0.1:7070`. */
  readonly url: string;
  /** The VM this guest runs in. */
  readonly vm: string;
  /** The VM's bearer token (it can touch only this VM). */
  readonly token: string;
  /** The guest driver's register layout (default: the layout of the VM's first vIOMMU, else B). */
  readonly layout?: Layout;
  /** VCMD poll deadline, wall-clock ms (default 10 000, DMAR_OPERATION_TIMEOUT). */
  readonly timeoutMs?: number;
  /**
   * Longest wait for one trapped access, ms (default 30 000). While the service cannot be reached
   * (a restart), the access is sent again until this much time has passed.
   */
  readonly mmioTimeoutMs?: number;
  /** Observe or alter the register accesses (tracing, fault injection). */
  readonly wrapMmio?: (segment: number, mmio: MmioAccessor) => MmioAccessor;
  /** fetch for the asynchronous calls (bindings, VM info); default the global one. */
  readonly fetch?: typeof fetch;
}

export class RemoteGuest extends GuestFront {
  readonly vm: string;
  /** The guest driver's register layout. */
  readonly layout: Layout;
  readonly kernel: GuestKernel;
  /** The typed client, with the VM's token (bindings, VM info). */
  readonly client: IoasidClient;
  /** The synchronous channel every vIOMMU's register accesses go through. */
  readonly channel: SyncServiceChannel;
  readonly #mmios = new Map<number, RemoteMmio>();
  readonly #devices = new Map<string, PciDevice>();
  readonly #wrap: RemoteGuestOptions['wrapMmio'];
  #closed = false;

  private constructor(opts: RemoteGuestOptions, info: VmInfo, client: IoasidClient, channel: SyncServiceChannel) {
    super();
    this.vm = opts.vm;
    this.client = client;
    this.channel = channel;
    this.#wrap = opts.wrapMmio;
    const layout = opts.layout ?? info.viommus[0]?.layout ?? 'B';
    this.layout = layout;
    this.#learnDevices(info);
    this.kernel = new GuestKernel(
      info.viommus.map((v) => ({ segment: v.segment, name: `${this.vm}/dmar${v.segment}`, mmio: this.#mmioFor(v.segment) })),
      {
        device: (bdf) => this.device(bdf),
        bind: async (bdf, pasid) => {
          await this.client.bind(this.vm, pasid, bdf);
        },
        unbind: (bdf, pasid) => this.client.unbind(this.vm, pasid, bdf),
      },
      {
        layout,
        // The deadline is wall-clock time: each poll costs a round trip, not only the pause.
        now: () => performance.now(),
        ...driverOptionsOf(opts),
      },
    );
  }

  /**
   * Boot the guest kernel of VM `opts.vm`: read the VM's vIOMMUs and devices with its token, start
   * the MMIO channel, probe every vIOMMU (trapped reads of CAP/ECAP/VCCAP) and register the VCMD
   * allocator.
   */
  static async boot(opts: RemoteGuestOptions): Promise<RemoteGuest> {
    if (typeof opts !== 'object' || opts === null) throw new IoasidError('EINVAL', 'RemoteGuest.boot needs options', {});
    if (typeof opts.vm !== 'string' || opts.vm.length === 0) throw new IoasidError('EINVAL', `VM id must be a non-empty string, got ${fmtId(opts.vm)}`, { vm: opts.vm });
    if (opts.profile !== undefined) checkProfile(opts.profile);
    // A v6.x guest has no VCMD allocator: its PASIDs are its own, attached to each device by
    // iommufd, and the service keeps system-wide PASIDs only. Refused before the service is asked.
    if (opts.profile === 'linux-6.x') {
      throw new IoasidError('EOPNOTSUPP', `a linux-6.x guest allocates its PASIDs itself (no VCMD) and attaches them per device; the PASID authority service keeps system-wide PASIDs only: boot VM ${opts.vm}'s remote guest with a profile that uses VCMD (strict, linux-5.8, linux-5.11, linux-5.18)`, { vm: opts.vm, profile: opts.profile });
    }
    const client = new IoasidClient({ url: opts.url, token: opts.token, ...(opts.fetch ? { fetch: opts.fetch } : {}) });
    const info = await client.getVm(opts.vm);
    const channel = new SyncServiceChannel({ url: opts.url, token: opts.token, ...(opts.mmioTimeoutMs !== undefined ? { timeoutMs: opts.mmioTimeoutMs } : {}) });
    try {
      return new RemoteGuest(opts, info, client, channel);
    } catch (e) {
      await channel.close();
      throw e;
    }
  }

  #mmioFor(segment: number): MmioAccessor {
    const m = new RemoteMmio(this.channel, this.vm, segment);
    this.#mmios.set(segment, m);
    return this.#wrap === undefined ? m : this.#wrap(segment, m);
  }

  #learnDevices(info: VmInfo): void {
    this.#devices.clear();
    for (const d of info.devices) {
      const dev = parseDevice({ bdf: d.bdf, pasidBits: d.pasidBits });
      this.#devices.set(dev.bdf, dev);
    }
  }

  protected alive(): void {
    if (this.#closed) throw new IoasidError('ENODEV', `the remote guest of VM ${this.vm} is closed`, { vm: this.vm });
  }

  protected get stopped(): boolean {
    return this.#closed;
  }

  get closed(): boolean {
    return this.#closed;
  }

  // ------------------------------------------------------------------ what the guest sees

  /** The raw register page of a vIOMMU (unwrapped): for tracing and register-level tests. */
  mmio(segment: number): RemoteMmio {
    const m = this.#mmios.get(segment);
    if (m === undefined) throw new IoasidError('ENOENT', `guest of VM ${this.vm} has no vIOMMU on segment ${fmtId(segment)}`, { segment });
    return m;
  }

  /** Segments with a vIOMMU, ascending. */
  segments(): number[] {
    return this.kernel.segments();
  }

  devices(): PciDevice[] {
    return [...this.#devices.values()].sort((a, b) => (a.bdf < b.bdf ? -1 : 1));
  }

  device(bdf: string): PciDevice {
    const d = this.#devices.get(typeof bdf === 'string' ? bdf.toLowerCase() : bdf);
    if (d === undefined) throw new IoasidError('ENOENT', `VM ${this.vm} has no device ${fmtId(bdf)}`, { vm: this.vm, bdf });
    return d;
  }

  /** Round-trip figures of the trapped register accesses. */
  mmioStats(): ChannelStats {
    return this.channel.stats();
  }

  /**
   * Re-read the VM from the service: devices assigned or removed since boot, and vIOMMUs plugged
   * since boot (hot-added to the driver). A vIOMMU the service no longer has is unplugged from the
   * driver (in strict, the last one first frees the guest's PASIDs, which fails if the service
   * already removed it: see the report).
   */
  async refresh(): Promise<{ added: number[]; removed: UnplugReport[] }> {
    this.alive();
    const info = await this.client.getVm(this.vm);
    this.#learnDevices(info);
    const now = new Set(info.viommus.map((v) => v.segment));
    const added: number[] = [];
    const removed: UnplugReport[] = [];
    for (const s of [...now].sort((a, b) => a - b)) {
      if (this.kernel.hasUnit(s)) continue;
      this.kernel.hotplug({ segment: s, name: `${this.vm}/dmar${s}`, mmio: this.#mmioFor(s) });
      added.push(s);
    }
    for (const s of this.kernel.segments()) {
      if (now.has(s)) continue;
      const report = await this.kernel.unplug(s);
      if (report !== null) removed.push(report);
      this.#mmios.delete(s);
    }
    return { added, removed };
  }

  // ------------------------------------------------------------------ allocation and SVA: GuestFront

  /** Unbind every address space from every device and free every PASID (a clean guest shutdown). */
  async releaseAll(): Promise<{ unbound: number; freed: number[] }> {
    this.alive();
    return this.kernel.releaseAll();
  }

  /**
   * Stop: wait for the vIOMMUs' command queues, then end the MMIO channel. The VM's PASIDs stay
   * the VM's on the service (as when a guest kernel stops); `releaseAll()` first gives them back.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.kernel.idle();
    await this.channel.close();
  }
}
