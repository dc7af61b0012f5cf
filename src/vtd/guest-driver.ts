/**
 * The guest kernel's VT-d driver, as far as PASID allocation goes (behaviours 37-54 of
 * docs/behaviours.md): it probes each vIOMMU, registers the VCMD custom allocator into the guest's
 * `IoasidSpace` as `register_pasid_allocator()` does, and implements `intel_vcmd_ioasid_alloc` /
 * `intel_vcmd_ioasid_free`.
 *
 * Rules, in the kernel's order:
 *  1. `intel_pasid_max_id` = min over PASID-capable units (scalable mode in use and ECAP.PASID) of
 *     2 << ECAP.PSS, starting at 0x100000 (an exclusive bound; behaviour 46).
 *  2. Registration per unit: CAP.CM clear -> nothing (bare metal, behaviour 37); scalable mode not in
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
 *     ID and the host keeps it: the kernel's leak, behaviour 50), strict throws EBUSY and the core keeps
 *     it. Else VCMD Free (51); "invalid PASID" is only logged (52).
 *  5. Hot-unplug: the unit's ops are unregistered (`free_dmar_iommu`). In strict, unplugging the
 *     last registered unit first frees the guest's outstanding PASIDs to the host through it, and
 *     from then on allocation is ENODEV (no silent fallback to a guest-local namespace). The Linux
 *     profiles revert to the default allocator, as the kernel did (behaviours 30, 34).
 *  6. Hot-add (`intel_iommu_add`): the kernel probes the unit and registers nothing, nor does it
 *     lower `intel_pasid_max_id` (only `init_dmars()` does both, at boot). The Linux profiles do
 *     the same; strict registers the unit (it may take over from rule 7's refusal) and lowers the
 *     bound (ours).
 *  7. Strict: a guest under caching mode with scalable mode that obtains no VCMD allocator (VCS or
 *     PAS clear, a register layout mismatch) never hands out guest-local PASIDs: allocation is
 *     ENODEV naming the unit and what its VCCAP read showed. The Linux profiles go on with their
 *     default allocator, as the kernel did, and log the kernel hazard.
 *  8. Profiles and kernel versions (kernel-rules.ts): v5.8-v5.11 read layout A's "no PASID" as
 *     status 1; layout B's Free operand is computed in 32 bits (v5.15+); v6.x has no VCMD at all.
 */
import {
  INVALID_IOASID,
  IoasidError,
  isIoasidError,
  logHazard,
  PASID_MIN,
  type AllocatorOps,
  type IoasidSpace,
  type LogFn,
} from '../core/index.ts';
import { GuestViommu, guestRegisterMap, type PollClock, type ViommuHost } from './guest-viommu.ts';
import { VTD_HAZARDS, VTD_RULES, type VtdRules } from './kernel-rules.ts';
import type { MmioAccessor } from './mmio.ts';
import { registerSpec, type Layout, type PasBit, type RegisterMap } from './registers.ts';

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
  /**
   * Read layout A's "no PASID" as status 1, as Linux v5.8-v5.11 did (fixed in v5.12). Default:
   * what the profile's kernel did (`linux-5.8`, `linux-5.11`: true; the others false).
   */
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

/**
 * Strict, no unit can allocate through VCMD (the last one left, or none could at boot): allocation
 * is refused instead of going guest-local. The pdata is the reason.
 */
function noViommuAlloc(min: number, max: number, pdata: unknown): number {
  const why = pdata as { message: string; details: Record<string, unknown> };
  throw new IoasidError('ENODEV', `${why.message}: no PASID in [${min}, ${max}] can come from the host`, { ...why.details, min, max });
}

function noViommuFree(): void {}

const LAST_UNIT_GONE = Object.freeze({ message: 'no vIOMMU left to allocate from', details: {} });

export class VtdGuestDriver {
  readonly space: IoasidSpace;
  readonly #host: ViommuHost;
  readonly #rules: VtdRules;
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
    this.#rules = VTD_RULES[space.profile];
    this.#host = {
      map: this.#map,
      profile: space.profile,
      rules: this.#rules,
      clock: makeClock(options.now, options.sleep),
      timeoutMs,
      pollIntervalMs,
      legacyStatusCodes: options.legacyStatusCodes ?? this.#rules.legacyStatusCodes,
      log: options.log ?? noop,
    };
  }

  /** The status codes read as "no PASID" / "invalid PASID" in layout A: 1 (v5.8-v5.11) or 2. */
  get legacyStatusCodes(): boolean {
    return this.#host.legacyStatusCodes;
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
    if (this.#ops.size === 0) this.#noVcmdAllocator(units);
    return units;
  }

  /**
   * Hot-add a unit (`dmar_iommu_hotplug` -> `intel_iommu_add`). The kernel probes it and does no
   * more for PASIDs: no `register_pasid_allocator()`, `intel_pasid_max_id` untouched (Linux
   * profiles). Strict lowers the bound and registers the unit, which takes over from a refusing
   * allocator (ours).
   */
  hotplug(mmio: MmioAccessor, name?: string): GuestViommu {
    const u = this.#probe(name === undefined ? mmio : { mmio, name });
    if (!this.#rules.hotplugRegisters) {
      if (this.#rules.vcmd && u.cachingMode && this.#smSupported(u) && u.caps.allocate && this.space.activeAllocator() === null) {
        logHazard(this.#host.log, VTD_HAZARDS['guest-local-pasids'],
          `hot-added ${u.name} has VCCAP.PAS, but intel_iommu_add() registers no allocator: the guest goes on with PASIDs of its own`,
          { iommu: u.name });
      }
      return u;
    }
    this.#lowerPasidMax(u);
    this.#register(u);
    if (u.registered && this.#tombstone !== null) {
      // A unit is back: it takes over from the refusing allocator (which holds no IDs).
      const t = this.#tombstone;
      this.#tombstone = null;
      this.space.unregisterAllocator(t);
    }
    return u;
  }

  /**
   * After boot, no unit registered the VCMD allocator. A guest under caching mode with scalable
   * mode then has no way to host PASIDs: strict refuses allocation (ENODEV, naming the unit and
   * its VCCAP read); the Linux profiles go on with guest-local PASIDs, as the kernel did.
   */
  #noVcmdAllocator(units: readonly GuestViommu[]): void {
    if (!this.#rules.vcmd) return; // v6.x: guest PASIDs are the guest's own by design
    const u = units.find((x) => x.cachingMode && this.#smSupported(x));
    if (u === undefined) return;
    const why = this.#whyNoVcmd(u);
    if (!this.#rules.noGuestLocalPasids) {
      logHazard(this.#host.log, VTD_HAZARDS['guest-local-pasids'], `${why.message}: the guest allocates PASIDs of its own, unknown to the host`, why.details);
      return;
    }
    if (why.details.layoutMismatch !== undefined) this.#host.log('error', why.message, why.details);
    this.#refuseFromNowOn(why);
  }

  /** What the unit's probe showed, for the refusal: VCS, the VCCAP read, a layout mismatch. */
  #whyNoVcmd(u: GuestViommu): { message: string; details: Record<string, unknown> } {
    const off = registerSpec(this.#map, 'VCCAP_REG').offset;
    const hex = (n: number | bigint) => `0x${n.toString(16)}`;
    const details: Record<string, unknown> = { iommu: u.name, layout: this.#map.layout, VCCAP_REG: hex(u.vccap), offset: hex(off) };
    if (u.ecapFields.VCS !== 1n) {
      return { message: `no VCMD allocator: ${u.name} runs under caching mode with scalable mode, but ECAP.VCS is clear (no virtual command interface; VCCAP_REG not read)`, details };
    }
    let message = `no VCMD allocator: ${u.name} runs under caching mode with scalable mode, but VCCAP_REG (${hex(off)}, layout ${this.#map.layout}) read ${hex(u.vccap)}: PAS clear`;
    const m = u.layoutMismatch;
    if (m !== null) {
      message += `; its registers answer as layout ${m.layout} (VCCAP_REG at ${hex(m.offset)} = ${hex(m.vccap)}): a guest/host register layout mismatch`;
      details.layoutMismatch = { layout: m.layout, offset: hex(m.offset), VCCAP_REG: hex(m.vccap) };
    }
    return { message, details };
  }

  /** Strict: register the refusing allocator (waits behind an active group, if any). */
  #refuseFromNowOn(why: { message: string; details: Record<string, unknown> }): void {
    if (this.#tombstone !== null) return;
    const t: AllocatorOps = Object.freeze({ alloc: noViommuAlloc, free: noViommuFree, pdata: why });
    try {
      this.space.registerAllocator(t);
    } catch (e) {
      // The default allocator already handed out IDs: the kernel's EAGAIN; nothing to refuse with.
      this.#host.log('error', `${why.message}; cannot refuse guest-local PASIDs: ${isIoasidError(e) ? e.message : String(e)}`, why.details);
      return;
    }
    this.#tombstone = t;
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
    if (!this.#rules.vcmd) return; // removed in v6.4
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
    if (!strict && !unit.present) this.#freedUnit(unit, 'intel_vcmd_ioasid_alloc');
    // The kernel's bound is exclusive but it only rejects max > intel_pasid_max_id (off by one).
    const tooHigh = strict ? max >= this.#pasidMaxId : max > this.#pasidMaxId;
    if (min < PASID_MIN || tooHigh) {
      if (!strict) return INVALID_IOASID;
      throw new IoasidError('EINVAL', `PASID range [${min}, ${max}] is outside [${PASID_MIN}, ${this.#pasidMaxId - 1}]`, { min, max, pasidMaxId: this.#pasidMaxId });
    }
    if (strict) {
      if (this.#useRange && unit.caps.rangeExtension && this.#map.layout === 'B') return unit.allocate({ min, max });
      return unit.allocate();
    }
    // The host's answer goes back unchecked (behaviour 45); a narrower device may get a PASID it cannot emit.
    const r = unit.allocate();
    if (typeof r === 'number') return this.#unchecked(r, min, max, unit);
    return r.then((p) => this.#unchecked(p, min, max, unit));
  }

  #unchecked(pasid: number, min: number, max: number, unit: GuestViommu): number {
    if (pasid < min || pasid > max) {
      logHazard(this.#host.log, VTD_HAZARDS['range-ignored'], `${unit.name}: the host answered PASID ${pasid} for [${min}, ${max}]; it is returned unchecked`, { iommu: unit.name, pasid, min, max });
    }
    return pasid;
  }

  /** Linux: the group's ops still point at a hot-removed unit (the kernel's freed intel_iommu). */
  #freedUnit(unit: GuestViommu, fn: string): void {
    logHazard(this.#host.log, VTD_HAZARDS['freed-iommu-ops'], `${fn}() is called with the pdata of ${unit.name}, whose struct intel_iommu free_dmar_iommu() freed`, { iommu: unit.name });
  }

  /** @internal `intel_vcmd_ioasid_free` body. */
  vcmdFree(id: number, unit: GuestViommu): void | Promise<void> {
    const strict = this.space.profile === 'strict';
    if (!strict && !unit.present) this.#freedUnit(unit, 'intel_vcmd_ioasid_free');
    if (!this.#draining.has(id)) {
      // ioasid_find(NULL, id, NULL): its data, or ERR_PTR(-ENOENT) for an ID the core does not track.
      let priv: unknown = null;
      let tracked = true;
      try {
        priv = this.space.find(null, id);
      } catch (e) {
        if (!isIoasidError(e, 'ENOENT')) throw e;
        tracked = false;
      }
      // Strict: an untracked ID is an answer being handed back (out of range): nothing is bound.
      if ((priv !== null && priv !== undefined) || (!tracked && !strict)) {
        this.#host.log('error', `Cannot free active IOASID ${id}`, { id });
        if (strict) {
          throw new IoasidError('EBUSY', `PASID ${id} still has a device bound (private data set); unbind before freeing`, { id });
        }
        logHazard(this.#host.log, VTD_HAZARDS['pasid-leak'],
          `${tracked ? `PASID ${id} still has private data` : `ioasid_find(${id}) is ERR_PTR(-ENOENT), not NULL`}: no VCMD Free is sent and the host keeps PASID ${id}`,
          { id, iommu: unit.name, tracked });
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
        this.#tombstone = Object.freeze({ alloc: noViommuAlloc, free: noViommuFree, pdata: LAST_UNIT_GONE });
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
    const outstanding = this.space.size;
    this.space.unregisterAllocator(ops);
    if (!strict && last && this.space.activeAllocator() === null && this.#rules.vcmd) {
      logHazard(this.#host.log, VTD_HAZARDS['guest-local-pasids'],
        `${unit.name} was the last unit: ioasid_unregister_allocator() switched to the default allocator, orphaning ${outstanding} host PASID(s); the guest's next PASIDs are its own, unknown to the host`,
        { iommu: unit.name, orphaned: outstanding });
    }
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
