/**
 * The guest kernel's VT-d driver, as far as PASID allocation goes (DESIGN 4.3; spec 2; edge
 * cases 37-54): it probes each vIOMMU, registers the VCMD custom allocator into the guest's
 * `IoasidSpace` as `register_pasid_allocator()` does, and implements `intel_vcmd_ioasid_alloc` /
 * `intel_vcmd_ioasid_free`.
 *
 * Rules, in the kernel's order:
 *  1. `intel_pasid_max_id` = min over PASID-capable units (scalable mode in use and ECAP.PASID) of
 *     2 << ECAP.PSS, starting at 0x100000 (an exclusive bound; edge 46).
 *  2. Registration per unit: CAP.CM clear -> nothing (bare metal, edge 37); scalable mode not in
 *     use (driver option and ECAP.SMTS) -> warning, nothing (38); ECAP.VCS clear or VCCAP.PAS
 *     clear -> nothing (39, 40; VCCAP is never read without VCS); else register this unit's own
 *     ops object with the shared functions below. A failed registration turns scalable mode off
 *     for the whole guest, so later units skip (41). All units form one shared group; the core
 *     sends every call with the pdata of its primary, i.e. through the first unit (42).
 *  3. alloc: min < 1 or max > intel_pasid_max_id -> failure without VCMD traffic (43, 44; Linux
 *     accepts max == intel_pasid_max_id, strict requires max < it); else VCMD Allocate. Linux
 *     profiles return the host's PASID unchecked (45); strict lets the core check the range (and
 *     free an out-of-range answer back), and with VCCAP.RX (our range extension, layout B) sends
 *     [min, max] with the command so the host allocates inside it.
 *  4. free: a PASID that still has private data (a device is bound) gets no VCMD Free and the log
 *     line "Cannot free active IOASID"; the Linux profiles return normally (the core forgets the
 *     ID and the host keeps it: the kernel's leak, edge 50), strict throws EBUSY and the core keeps
 *     it. Else VCMD Free (51); "invalid PASID" is only logged (52).
 *  5. Hot-unplug: the unit's ops are unregistered (`free_dmar_iommu`). In strict, unplugging the
 *     last registered unit first frees the guest's outstanding PASIDs to the host through it, and
 *     from then on allocation is ENODEV (no silent fallback to a guest-local namespace). The Linux
 *     profiles revert to the default allocator, as the kernel did (edges 30, 34).
 */
import {
  INVALID_IOASID,
  IoasidError,
  isIoasidError,
  PASID_MIN,
  type AllocatorOps,
  type IoasidSpace,
  type LogFn,
} from '../core/index.ts';
import { GuestViommu, guestRegisterMap, type PollClock, type ViommuHost } from './guest-viommu.ts';
import type { MmioAccessor } from './mmio.ts';
import type { Layout, PasBit, RegisterMap } from './registers.ts';

/** The kernel's PASID_MAX (exclusive): 20-bit PASIDs. */
export const INTEL_PASID_MAX = 0x100000;
/** DMAR_OPERATION_TIMEOUT: about 10 s. */
export const DEFAULT_VCMD_TIMEOUT_MS = 10_000;

export interface VtdGuestDriverOptions {
  /** The guest kernel's register layout ('A' v5.8-v5.14, 'B' v5.15+). */
  readonly layout: Layout;
  /** VCCAP.PAS bit the guest tests (Linux: 0). */
  readonly pasBit?: PasBit;
  /** `intel_iommu=sm_on`: the driver wants scalable mode. Default true. */
  readonly scalableMode?: boolean;
  /** Use the range extension when a unit advertises it (strict profile only). Default true. */
  readonly rangeExtension?: boolean;
  /** Deadline of one VCMD poll. Default 10 000. */
  readonly timeoutMs?: number;
  /** Pause between two VCRSP reads while IP is set. Default 1. */
  readonly pollIntervalMs?: number;
  /** Clock for the deadline. Default: the sum of the pauses taken (virtual time). */
  readonly now?: () => number;
  /** How to pause between polls. Default: `setTimeout`. */
  readonly sleep?: (ms: number) => Promise<void>;
  /** Linux v5.8-v5.11 decoded "no PASID" as status 1 in layout A (fixed in v5.12). Default false. */
  readonly legacyStatusCodes?: boolean;
  /** Where the guest kernel would printk. */
  readonly log?: LogFn;
}

/** What `unplug` did. */
export interface UnplugReport {
  readonly unit: string;
  /** The unit's ops were unregistered. */
  readonly unregistered: boolean;
  /** PASIDs freed to the host before the last unit went (strict). */
  readonly drained: readonly number[];
  /** PASIDs that could not be freed back (they stay recorded in strict). */
  readonly failed: readonly { id: number; code: string; message: string }[];
}

const noop: LogFn = () => {};


/** The driver that probed this unit, or null (the kernel's `if (!iommu)`). No object per call. */
function driverOf(unit: unknown): VtdGuestDriver | null {
  if (!(unit instanceof GuestViommu)) return null;
  const driver = unit.owner;
  return driver instanceof VtdGuestDriver ? driver : null;
}

/** `intel_vcmd_ioasid_alloc`: one function for every unit (the shared-ops group key). */
function intelVcmdIoasidAlloc(min: number, max: number, pdata: unknown): number | Promise<number> {
  const driver = driverOf(pdata);
  if (driver === null) return INVALID_IOASID;
  return driver.vcmdAlloc(min, max, pdata as GuestViommu);
}

/** `intel_vcmd_ioasid_free`. */
function intelVcmdIoasidFree(id: number, pdata: unknown): void | Promise<void> {
  const driver = driverOf(pdata);
  if (driver === null) return;
  return driver.vcmdFree(id, pdata as GuestViommu);
}

/** Strict after the last unit left: allocation is refused instead of going guest-local. */
function noViommuAlloc(min: number, max: number): number {
  throw new IoasidError('ENODEV', `no vIOMMU left to allocate a PASID in [${min}, ${max}] from the host`, { min, max });
}

function noViommuFree(): void {}

export class VtdGuestDriver {
  readonly space: IoasidSpace;
  readonly #host: ViommuHost;
  readonly #map: RegisterMap;
  readonly #useRange: boolean;
  #sm: boolean;
  #pasidMaxId = INTEL_PASID_MAX;
  #units: GuestViommu[] = [];
  #ops = new Map<GuestViommu, AllocatorOps>();
  /** PASIDs being drained by the last unit's unplug: freed whatever their private data. */
  #draining = new Set<number>();
  #tombstone: AllocatorOps | null = null;
  #nextName = 0;

  constructor(space: IoasidSpace, options: VtdGuestDriverOptions) {
    if (typeof options !== 'object' || options === null) throw new IoasidError('EINVAL', 'VtdGuestDriver needs options', {});
    this.space = space;
    this.#map = guestRegisterMap(options.layout, options.pasBit);
    const timeoutMs = options.timeoutMs ?? DEFAULT_VCMD_TIMEOUT_MS;
    const pollIntervalMs = options.pollIntervalMs ?? 1;
    if (!(timeoutMs > 0) || !Number.isFinite(timeoutMs)) throw new IoasidError('EINVAL', `timeoutMs must be a positive number, got ${timeoutMs}`, { timeoutMs });
    if (!(pollIntervalMs >= 0) || !Number.isFinite(pollIntervalMs)) throw new IoasidError('EINVAL', `pollIntervalMs must be a non-negative number, got ${pollIntervalMs}`, { pollIntervalMs });
    this.#sm = options.scalableMode ?? true;
    this.#useRange = options.rangeExtension ?? true;
    this.#host = {
      map: this.#map,
      profile: space.profile,
      clock: makeClock(options.now, options.sleep),
      timeoutMs,
      pollIntervalMs,
      legacyStatusCodes: options.legacyStatusCodes ?? false,
      log: options.log ?? noop,
    };
  }

  /** `intel_pasid_max_id` (exclusive). */
  get pasidMaxId(): number {
    return this.#pasidMaxId;
  }

  /** Scalable mode still in use (a failed registration turns it off for the whole guest). */
  get scalableMode(): boolean {
    return this.#sm;
  }

  /** Units probed and still present, in probe order. */
  get units(): readonly GuestViommu[] {
    return this.#units.filter((u) => u.present);
  }

  /** The ops object a unit registered (tests compare it with `space.activeAllocator()`). */
  opsOf(unit: GuestViommu): AllocatorOps | null {
    return this.#ops.get(unit) ?? null;
  }

  /**
   * Boot (`init_dmars`): probe every unit, compute `intel_pasid_max_id` over all of them, then
   * register each unit's allocator in order. Returns the units.
   */
  init(mmios: readonly (MmioAccessor | { readonly mmio: MmioAccessor; readonly name: string })[]): GuestViommu[] {
    const units = mmios.map((m) => this.#probe(m));
    for (const u of units) this.#lowerPasidMax(u);
    for (const u of units) this.#register(u);
    return units;
  }

  /** Hot-add a unit (`dmar_iommu_hotplug`): probe, lower the PASID bound, register. */
  hotplug(mmio: MmioAccessor, name?: string): GuestViommu {
    const u = this.#probe(name === undefined ? mmio : { mmio, name });
    this.#lowerPasidMax(u);
    this.#register(u);
    if (u.registered && this.#tombstone !== null) {
      // A unit is back: it takes over from the "no vIOMMU" allocator (which holds no IDs).
      const t = this.#tombstone;
      this.#tombstone = null;
      this.space.unregisterAllocator(t);
    }
    return u;
  }

  #probe(m: MmioAccessor | { readonly mmio: MmioAccessor; readonly name: string }): GuestViommu {
    const named = typeof m === 'object' && m !== null && 'mmio' in m && 'name' in m;
    const mmio = named ? m.mmio : m;
    const name = named ? m.name : `dmar${this.#nextName}`;
    this.#nextName++;
    const unit = new GuestViommu(this.#host, mmio, name);
    unit.owner = this;
    this.#units.push(unit);
    return unit;
  }

  /** `sm_supported(iommu)`: the driver wants scalable mode and the unit has SMTS. */
  #smSupported(u: GuestViommu): boolean {
    return this.#sm && u.ecapFields.SMTS === 1n;
  }

  #lowerPasidMax(u: GuestViommu): void {
    if (this.#smSupported(u) && u.ecapFields.PASID === 1n) {
      this.#pasidMaxId = Math.min(this.#pasidMaxId, u.pasidMax);
    }
  }

  /** `register_pasid_allocator(iommu)`. */
  #register(u: GuestViommu): void {
    const log = this.#host.log;
    if (!u.cachingMode) return;
    if (!this.#smSupported(u)) {
      log('warn', 'VT-d Scalable Mode not enabled, no PASID allocation', { iommu: u.name });
      return;
    }
    if (u.ecapFields.VCS !== 1n || !u.caps.allocate) return;
    log('info', 'Register custom PASID allocator', { iommu: u.name });
    const ops: AllocatorOps = Object.freeze({ alloc: intelVcmdIoasidAlloc, free: intelVcmdIoasidFree, pdata: u });
    try {
      this.space.registerAllocator(ops);
    } catch (e) {
      log('warn', 'Custom PASID allocator failed, scalable mode disabled', { iommu: u.name, error: isIoasidError(e) ? e.code : String(e) });
      this.#sm = false;
      return;
    }
    this.#ops.set(u, ops);
    u.setRegistered(true);
  }

  // ------------------------------------------------------------------- the allocator callbacks

  /** @internal `intel_vcmd_ioasid_alloc` body. */
  vcmdAlloc(min: number, max: number, unit: GuestViommu): number | Promise<number> {
    const strict = this.space.profile === 'strict';
    // The kernel's bound is exclusive but it only rejects max > intel_pasid_max_id (off by one).
    const tooHigh = strict ? max >= this.#pasidMaxId : max > this.#pasidMaxId;
    if (min < PASID_MIN || tooHigh) {
      if (!strict) return INVALID_IOASID;
      throw new IoasidError('EINVAL', `PASID range [${min}, ${max}] is outside [${PASID_MIN}, ${this.#pasidMaxId - 1}]`, { min, max, pasidMaxId: this.#pasidMaxId });
    }
    if (strict && this.#useRange && unit.caps.rangeExtension && this.#map.layout === 'B') {
      return unit.allocate({ min, max });
    }
    return unit.allocate();
  }

  /** @internal `intel_vcmd_ioasid_free` body. */
  vcmdFree(id: number, unit: GuestViommu): void | Promise<void> {
    if (!this.#draining.has(id)) {
      let priv: unknown = null;
      try {
        priv = this.space.find(null, id);
      } catch (e) {
        // Unknown to the core (an out-of-range answer being handed back): nothing is bound.
        if (!isIoasidError(e, 'ENOENT')) throw e;
      }
      if (priv !== null && priv !== undefined) {
        this.#host.log('error', `Cannot free active IOASID ${id}`, { id });
        if (this.space.profile === 'strict') {
          throw new IoasidError('EBUSY', `PASID ${id} still has a device bound (private data set); unbind before freeing`, { id });
        }
        return;
      }
    }
    return unit.free(id);
  }

  // ------------------------------------------------------------------- hot-unplug

  /**
   * Hot-remove a unit (`free_dmar_iommu`). Waits for the unit's in-flight command, unregisters its
   * ops; the core keeps the other units serving the same group. In strict, the last registered
   * unit first frees the guest's outstanding PASIDs to the host, and the guest then refuses
   * allocation with ENODEV.
   */
  async unplug(unit: GuestViommu): Promise<UnplugReport> {
    if (!this.#units.includes(unit) || !unit.present) {
      throw new IoasidError('ENOENT', `vIOMMU ${String(unit?.name)} is not plugged into this guest`, { iommu: unit?.name ?? null });
    }
    const ops = this.#ops.get(unit);
    const drained: number[] = [];
    const failed: { id: number; code: string; message: string }[] = [];
    if (ops === undefined) {
      await unit.idle();
      unit.markRemoved();
      this.#units = this.#units.filter((u) => u !== unit);
      return { unit: unit.name, unregistered: false, drained, failed };
    }
    const strict = this.space.profile === 'strict';
    const last = [...this.#ops.keys()].every((u) => u === unit);
    if (strict && last) {
      if (this.#tombstone === null) {
        // Registered now, while our group is active: it waits (inactive) behind it.
        this.#tombstone = Object.freeze({ alloc: noViommuAlloc, free: noViommuFree, pdata: null });
        this.space.registerAllocator(this.#tombstone);
      }
      if (this.space.activeAllocator()?.alloc === intelVcmdIoasidAlloc) {
        await this.space.drain();
        for (const id of this.space.ids()) {
          this.#draining.add(id);
          try {
            while (this.space.has(id)) {
              if (this.space.refcount(id) > 1) await this.space.put(id);
              else await this.space.free(id);
            }
            drained.push(id);
          } catch (e) {
            failed.push({ id, code: isIoasidError(e) ? e.code : 'EIO', message: e instanceof Error ? e.message : String(e) });
            this.#host.log('error', `could not free PASID ${id} to the host before removing the last vIOMMU`, { id, iommu: unit.name });
          } finally {
            this.#draining.delete(id);
          }
        }
      }
    }
    await unit.idle();
    this.space.unregisterAllocator(ops);
    this.#ops.delete(unit);
    unit.setRegistered(false);
    unit.markRemoved();
    this.#units = this.#units.filter((u) => u !== unit);
    return { unit: unit.name, unregistered: true, drained, failed };
  }
}

function makeClock(now: (() => number) | undefined, sleep: ((ms: number) => Promise<void>) | undefined): PollClock {
  if (now !== undefined && typeof now !== 'function') throw new IoasidError('EINVAL', 'now must be a function', {});
  if (sleep !== undefined && typeof sleep !== 'function') throw new IoasidError('EINVAL', 'sleep must be a function', {});
  const pause = sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  if (now !== undefined) return { now, sleep: pause };
  // Virtual time: the deadline counts the pauses taken, so no clock is ever read.
  let t = 0;
  return {
    now: () => t,
    sleep: async (ms: number) => {
      t += Math.max(ms, 1);
      await pause(ms);
    },
  };
}
