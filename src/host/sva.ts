/**
 * The guest kernel's SVA code (intel-svm / iommu-sva), shared by the in-process `Guest` and the
 * service's `RemoteGuest`; only the way the host programs a device's PASID entry differs (a port).
 * Two lifetimes of an address space's PASID, by the guest space's profile:
 *  - v5.8-v5.17 (`strict`, `linux-5.8`, `linux-5.11`), below: the last unbind frees it.
 *  - v5.18 and later (`linux-5.18`, `linux-6.x`; "iommu/sva: Assign a PASID to mm on PASID
 *    allocation and free it on mm exit", 701fac40384f): one PASID per mm, kept for the mm's
 *    lifetime; the last unbind keeps it, `exit(mm)` (`mm_pasid_drop`) frees it. Its private data
 *    is the mm all along, so under the VT-d VCMD allocator (v5.18-v6.3) that free is the kernel's
 *    "Cannot free active IOASID": the host keeps the PASID. A bound mm's PASID that a device is too
 *    narrow for is EOVERFLOW (`iommu_sva_alloc_pasid`; v5.18-v6.5 refused the device's top PASID
 *    too, `mm->pasid >= max`; v6.6's `>= max_pasids` is exact).
 * The v5.8-v5.17 path:
 *  - `svaBind(device, mm)` allocates a PASID in the range the device supports
 *    (`ioasid_alloc(NULL, PASID_MIN, pasid_max - 1, svm)` with `pasid_max = min(device,
 *    intel_pasid_max_id)`), sets the private data, programs the device's PASID entry, raises a bind
 *    event. The same address space bound to a second device reuses its PASID; a device whose
 *    PASID width cannot hold that PASID is ERANGE (the 6.x check, behaviour 78).
 *  - `svaUnbind(device, mm)` unbinds; on the last device it clears the private data, then frees
 *    ("Clear private data so that free pass check", as the VT-d driver's comment says).
 *  - Operations on one address space run one at a time: two concurrent first binds of one mm get
 *    one PASID (the kernel held `pasid_mutex`).
 */
import { IoasidError, fmtId, type IoasidSpace, type Profile } from '../core/index.ts';
import type { PciDevice } from './device.ts';

/** How the host programs (or tears down) a device's PASID entry for this guest. */
export interface SvaPort {
  device(bdf: string): PciDevice;
  bind(bdf: string, pasid: number): void | Promise<void>;
  unbind(bdf: string, pasid: number): void | Promise<void>;
}

/** The SVA state of one address space (the kernel's `struct intel_svm` per mm). */
interface MmBinding {
  readonly mm: string;
  readonly pasid: number;
  readonly devices: Set<string>;
}

/** The profiles whose SVA keeps one PASID per mm for the mm's lifetime (v5.18+). */
const PASID_PER_MM: ReadonlySet<Profile> = new Set<Profile>(['linux-5.18', 'linux-6.x']);

export class GuestSva {
  readonly #space: IoasidSpace;
  readonly #pasidLimit: () => number;
  readonly #port: SvaPort;
  readonly #mms = new Map<string, MmBinding>();
  readonly #queues = new Map<string, Promise<unknown>>();
  readonly #perMm: boolean;

  /** `pasidLimit`: the driver's `intel_pasid_max_id` (exclusive). */
  constructor(space: IoasidSpace, pasidLimit: () => number, port: SvaPort) {
    this.#space = space;
    this.#pasidLimit = pasidLimit;
    this.#port = port;
    this.#perMm = PASID_PER_MM.has(space.profile);
  }

  /** Run `fn` after every earlier operation on address space `mm`. */
  #onMm<T>(mm: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#queues.get(mm) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail: Promise<unknown> = run.then(
      () => this.#dequeue(mm, tail),
      () => this.#dequeue(mm, tail),
    );
    this.#queues.set(mm, tail);
    return run;
  }

  #dequeue(mm: string, tail: Promise<unknown>): void {
    if (this.#queues.get(mm) === tail) this.#queues.delete(mm);
  }

  /** Bind a device to an address space; returns the PASID. */
  async bind(bdf: string, mm: string): Promise<number> {
    if (typeof mm !== 'string' || mm.length === 0) throw new IoasidError('EINVAL', `address space must be a non-empty string, got ${fmtId(mm)}`, { mm });
    const device = this.#port.device(bdf);
    return this.#onMm(mm, () => this.#bind(device, mm));
  }

  async #bind(device: PciDevice, mm: string): Promise<number> {
    const existing = this.#mms.get(mm);
    if (existing !== undefined) {
      if (existing.devices.has(device.bdf)) throw new IoasidError('EEXIST', `device ${device.bdf} is already bound to ${mm}`, { bdf: device.bdf, mm });
      if (this.#perMm) {
        // iommu_sva_alloc_pasid(mm, 1, max): v5.18-v6.5 test mm->pasid >= max (the device's top
        // PASID refused too); v6.6, mm->pasid >= max_pasids.
        const max = Math.min(device.maxPasid, this.#pasidLimit() - 1);
        const over = this.#space.profile === 'linux-5.18' ? existing.pasid >= max : existing.pasid > max;
        if (over) throw new IoasidError('EOVERFLOW', `${mm} has PASID ${existing.pasid}, which does not fit device ${device.bdf} (PASIDs below ${max + 1})`, { mm, pasid: existing.pasid, bdf: device.bdf });
      } else if (existing.pasid > device.maxPasid) {
        throw new IoasidError('ERANGE', `${mm} has PASID ${existing.pasid}, beyond device ${device.bdf}'s ${device.pasidBits}-bit width`, { mm, pasid: existing.pasid, bdf: device.bdf });
      }
      await this.#port.bind(device.bdf, existing.pasid);
      existing.devices.add(device.bdf);
      this.#space.notify('bind', existing.pasid, { bdf: device.bdf, mm });
      return existing.pasid;
    }
    const max = Math.min(device.maxPasid, this.#pasidLimit() - 1);
    // Private data is set from the start: a free racing this bind is refused (EBUSY).
    const pending: MmBinding = { mm, pasid: -1, devices: new Set() };
    const pasid = await this.#space.alloc(null, 1, max, pending);
    try {
      await this.#port.bind(device.bdf, pasid);
    } catch (e) {
      // The host refused the PASID entry (e.g. beyond the device's width in a Linux profile, which
      // ignored min/max): undo in the kernel's order.
      this.#space.setData(pasid, null);
      await this.#space.free(pasid).catch(() => {});
      throw e;
    }
    const done: MmBinding = { mm, pasid, devices: new Set([device.bdf]) };
    this.#space.setData(pasid, done);
    this.#mms.set(mm, done);
    this.#space.notify('bind', pasid, { bdf: device.bdf, mm });
    return pasid;
  }

  /** Unbind; the last device's unbind clears the data, then frees the PASID. */
  async unbind(bdf: string, mm: string): Promise<void> {
    const device = this.#port.device(bdf);
    return this.#onMm(mm, () => this.#unbind(device, mm));
  }

  async #unbind(device: PciDevice, mm: string): Promise<void> {
    const b = this.#mms.get(mm);
    if (b === undefined || !b.devices.has(device.bdf)) throw new IoasidError('ENOENT', `device ${device.bdf} is not bound to ${fmtId(mm)}`, { bdf: device.bdf, mm });
    await this.#port.unbind(device.bdf, b.pasid);
    b.devices.delete(device.bdf);
    // Linux profiles may have forgotten the PASID already (a free while bound: the kernel's leak);
    // the unbind still completes, and the host keeps the PASID until teardown.
    const known = this.#space.has(b.pasid);
    if (known) this.#space.notify('unbind', b.pasid, { bdf: device.bdf, mm });
    if (b.devices.size > 0) return;
    if (this.#perMm && known) return; // v5.18+: the mm keeps its PASID until it exits
    this.#mms.delete(mm);
    if (!known) return;
    this.#space.setData(b.pasid, null);
    await this.#space.free(b.pasid);
  }

  /**
   * The address space exits: every device still bound is unbound, then its PASID is freed
   * (v5.18+: `mm_pasid_drop` -> `ioasid_free`, with the mm still its private data; before: the
   * last unbind freed it). ENOENT for an address space that holds no PASID.
   */
  async exit(mm: string): Promise<number> {
    if (typeof mm !== 'string' || mm.length === 0) throw new IoasidError('EINVAL', `address space must be a non-empty string, got ${fmtId(mm)}`, { mm });
    return this.#onMm(mm, async () => {
      const b = this.#mms.get(mm);
      if (b === undefined) throw new IoasidError('ENOENT', `address space ${fmtId(mm)} holds no PASID`, { mm });
      for (const bdf of [...b.devices].sort()) await this.#unbind(this.#port.device(bdf), mm);
      if (this.#perMm && this.#mms.get(mm) === b) {
        this.#mms.delete(mm);
        if (this.#space.has(b.pasid)) await this.#space.free(b.pasid);
      }
      return b.pasid;
    });
  }

  /** Unbind every address space from one device (before the device goes away). */
  async releaseDevice(bdf: string): Promise<number> {
    let n = 0;
    for (const b of [...this.#mms.values()]) {
      if (b.devices.has(bdf)) {
        await this.unbind(bdf, b.mm);
        n++;
      }
    }
    return n;
  }

  /** Unbind everything (a clean guest shutdown); returns how many bindings were undone. */
  async releaseAll(): Promise<number> {
    let n = 0;
    for (const b of [...this.#mms.values()]) {
      for (const bdf of [...b.devices].sort()) {
        await this.unbind(bdf, b.mm);
        n++;
      }
    }
    return n;
  }

  /** Address spaces bound to at least one device, as { mm, pasid, devices }. */
  list(): { mm: string; pasid: number; devices: string[] }[] {
    return [...this.#mms.values()].filter((b) => b.devices.size > 0).map((b) => ({ mm: b.mm, pasid: b.pasid, devices: [...b.devices].sort() }));
  }

  /** Every address space holding a PASID (v5.18+: bound or not), as { mm, pasid }. */
  pasids(): { mm: string; pasid: number }[] {
    return [...this.#mms.values()].map((b) => ({ mm: b.mm, pasid: b.pasid }));
  }

  /** Forget everything (the guest died; the host tears the entries down itself). */
  forget(): void {
    this.#mms.clear();
  }
}
