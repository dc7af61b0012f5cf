/**
 * One vIOMMU as the guest's VT-d driver sees it: the capability registers read once at probe
 * (`map_iommu()`, VCCAP only when ECAP.VCS is set: "Don't read VCCAP register unless it exists"),
 * and the virtual command protocol of drivers/iommu/intel/pasid.c (`vcmd_alloc_pasid`,
 * `vcmd_free_pasid`): write VCMD_REG, poll VCRSP_REG until IP clears, decode SC per layout.
 *
 * Commands on one vIOMMU are serialised (one command register; the kernel's register_lock).
 * Polling has a deadline (`DMAR_OPERATION_TIMEOUT`, ~10 s): the kernel panics, we fail with
 * ETIMEDOUT. A synchronous device answers on the first VCRSP read, and then no Promise is made.
 */
import { IoasidError, isIoasidError, logHazard, PASID_MAX, type LogFn, type Profile } from '../core/index.ts';
import type { MmioAccessor } from './mmio.ts';
import {
  VCMD_CMD,
  decodeRegister,
  decodeVccap,
  encodeRangedAllocate,
  pasidMaxFromEcap,
  registerMap,
  registerSpec,
  type FieldSpec,
  type Layout,
  type RegisterMap,
  type VccapCapabilities,
} from './registers.ts';
import { VTD_HAZARDS, type VtdRules } from './kernel-rules.ts';

/** Time for the poll loop: injected, never read from a global clock. */
export interface PollClock {
  now(): number;
  sleep(ms: number): Promise<void>;
}

/** What a vIOMMU needs from its driver (guest-wide state). */
export interface ViommuHost {
  readonly map: RegisterMap;
  readonly profile: Profile;
  readonly rules: VtdRules;
  readonly clock: PollClock;
  readonly timeoutMs: number;
  readonly pollIntervalMs: number;
  readonly legacyStatusCodes: boolean;
  readonly log: LogFn;
}

const IP = 1n;
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const U32 = 0xffffffffn;

/** What a unit's registers showed when probed at the other layout's VCCAP offset (strict). */
export interface LayoutMismatch {
  /** The layout the unit's registers answer as. */
  readonly layout: Layout;
  readonly offset: number;
  readonly vccap: bigint;
}

export class GuestViommu {
  readonly name: string;
  /** CAP_REG, ECAP_REG, VCCAP_REG as read at probe (VCCAP 0 when ECAP.VCS is clear: never read). */
  readonly cap: bigint;
  readonly ecap: bigint;
  readonly vccap: bigint;
  readonly caps: VccapCapabilities;
  /**
   * Strict: ECAP.VCS set but VCCAP.PAS clear at the driver's offset, while the other layout's
   * VCCAP offset shows PAS: the unit speaks the other register layout. Null otherwise (and in the
   * Linux profiles, which do not look: the kernel read VCCAP once, at its own offset).
   */
  readonly layoutMismatch: LayoutMismatch | null;

  readonly #host: ViommuHost;
  readonly #mmio: MmioAccessor;
  readonly #offVcmd: number;
  readonly #offVcmdEo: number;
  readonly #offVcrsp: number;
  readonly #scShift: bigint;
  readonly #scMask: bigint;
  readonly #resultShift: bigint;
  readonly #resultMask: bigint;
  readonly #operandShift: bigint;
  readonly #rsltReservedMask: bigint;
  /** The same fields as plain numbers, for a VCRSP value below 2^53 (every value but a corrupt one): no BigInt is made. */
  readonly #scDiv: number;
  readonly #scMod: number;
  readonly #resultDiv: number;
  readonly #resultMod: number;
  /** 2 ** (RSLT's top bit + 1) for the PASID-only result: a value at or above it has reserved bits set. */
  readonly #resultLimit: number;
  readonly #noPasid: number;

  /** Tail of this vIOMMU's command queue; null when idle. */
  #queue: Promise<unknown> | null = null;
  /** A command that timed out: its late answer must be consumed before the next command. */
  #stale: { cmd: number } | null = null;
  #present = true;
  #registered = false;
  /** @internal The driver that probed this unit (read by the shared allocator functions). */
  owner: unknown = null;
  #commands = 0;

  constructor(host: ViommuHost, mmio: MmioAccessor, name: string) {
    if (typeof mmio !== 'object' || mmio === null || typeof mmio.read !== 'function' || typeof mmio.write !== 'function') {
      throw new IoasidError('EINVAL', `vIOMMU ${name} needs an MMIO accessor with read() and write()`, { name });
    }
    this.#host = host;
    this.#mmio = mmio;
    this.name = name;
    const map = host.map;
    this.cap = mmio.read(registerSpec(map, 'CAP_REG').offset, 8);
    this.ecap = mmio.read(registerSpec(map, 'ECAP_REG').offset, 8);
    this.vccap = decodeRegister(map, 'ECAP_REG', this.ecap).VCS === 1n ? mmio.read(registerSpec(map, 'VCCAP_REG').offset, 8) : 0n;
    this.caps = Object.freeze(decodeVccap(map, this.vccap));
    this.layoutMismatch = null;
    if (host.rules.noGuestLocalPasids && !this.caps.allocate && decodeRegister(map, 'ECAP_REG', this.ecap).VCS === 1n) {
      // One more read, at probe only: does the unit answer as the other register layout?
      const other = registerMap(map.layout === 'A' ? 'B' : 'A', map.pasBit);
      const offset = registerSpec(other, 'VCCAP_REG').offset;
      const vccap = mmio.read(offset, 8);
      if (decodeVccap(other, vccap).allocate) this.layoutMismatch = Object.freeze({ layout: other.layout, offset, vccap });
    }

    this.#offVcmd = registerSpec(map, 'VCMD_REG').offset;
    this.#offVcmdEo = map.layout === 'B' ? registerSpec(map, 'VCMD_EO_REG').offset : -1;
    const vcrsp = registerSpec(map, 'VCRSP_REG');
    this.#offVcrsp = vcrsp.offset;
    const sc = vcrsp.fields.find((f) => f.name === 'SC') as FieldSpec;
    const rslt = vcrsp.fields.find((f) => f.name === 'RSLT') as FieldSpec;
    // Linux: VCMD_VRSP_SC(e) = ((e) >> 1) & 0x3 (layout A), ((e) & 0xff) >> 1 (layout B).
    this.#scShift = BigInt(sc.lo);
    this.#scMask = (1n << BigInt(sc.hi - sc.lo + 1)) - 1n;
    this.#resultShift = BigInt(map.resultPasid.lo);
    // VCMD_VRSP_RESULT_PASID(e) = ((e) >> shift) & 0xfffff: the PASID sub-field of RSLT.
    this.#resultMask = (1n << BigInt(map.resultPasid.hi - map.resultPasid.lo + 1)) - 1n;
    this.#operandShift = BigInt(map.operandPasid.lo);
    const rsltMask = ((1n << BigInt(rslt.hi - rslt.lo + 1)) - 1n) << BigInt(rslt.lo);
    const pasidMask = ((1n << BigInt(map.resultPasid.hi - map.resultPasid.lo + 1)) - 1n) << this.#resultShift;
    this.#rsltReservedMask = rsltMask & ~pasidMask;
    this.#scDiv = 2 ** sc.lo;
    this.#scMod = 2 ** (sc.hi - sc.lo + 1);
    this.#resultDiv = 2 ** map.resultPasid.lo;
    this.#resultMod = 2 ** (map.resultPasid.hi - map.resultPasid.lo + 1);
    this.#resultLimit = 2 ** (map.resultPasid.hi + 1);
    // Linux v5.8-v5.11 decoded "no PASID" as 1 in layout A (fixed in v5.12 by Zenghui Yu).
    this.#noPasid = host.legacyStatusCodes && map.layout === 'A' ? 1 : map.status.NO_PASID;
  }

  // ------------------------------------------------------------------- capability predicates

  /** CAP.CM: caching mode, Linux's "running under a vIOMMU" hint. */
  get cachingMode(): boolean {
    return decodeRegister(this.#host.map, 'CAP_REG', this.cap).CM === 1n;
  }

  get ecapFields(): { PSS: bigint; PASID: 0n | 1n; SMTS: 0n | 1n; VCS: 0n | 1n } {
    return { ...decodeRegister(this.#host.map, 'ECAP_REG', this.ecap) };
  }

  /** This unit's contribution to `intel_pasid_max_id` (2 << ECAP.PSS). */
  get pasidMax(): number {
    return pasidMaxFromEcap(this.ecap);
  }

  /** Still plugged in. */
  get present(): boolean {
    return this.#present;
  }

  /** Its allocator ops are registered in the guest's space. */
  get registered(): boolean {
    return this.#registered;
  }

  /** Virtual commands issued through this unit. */
  get commands(): number {
    return this.#commands;
  }

  /** @internal driver bookkeeping */
  setRegistered(v: boolean): void {
    this.#registered = v;
  }

  /** @internal marks the unit removed; later commands fail with ENODEV. */
  markRemoved(): void {
    this.#present = false;
  }

  /** Resolves when this unit's command queue is idle. */
  async idle(): Promise<void> {
    while (this.#queue !== null) await this.#queue.catch(() => {});
  }

  // ------------------------------------------------------------------- commands

  /**
   * VCMD Allocate (`vcmd_alloc_pasid`). With `range` (range extension, layout B) min goes in OA
   * and max in VCMD_EO. Returns the PASID; throws ENOSPC ("no PASID available"), ENODEV (any other
   * status; in strict also a zero or malformed result), ETIMEDOUT.
   */
  allocate(range?: { min: number; max: number }): number | Promise<number> {
    let vcmd = 1n; // VCMD_CMD_ALLOC, no operand
    let vcmdEo: bigint | null = null;
    if (range !== undefined) {
      const enc = encodeRangedAllocate(this.#host.map, range.min, range.max);
      vcmd = enc.vcmd;
      vcmdEo = enc.vcmdEo;
    }
    const rsp = this.#run(VCMD_CMD.ALLOCATE, vcmd, vcmdEo);
    return typeof rsp === 'bigint' ? this.#allocResult(rsp) : rsp.then((r) => this.#allocResult(r));
  }

  /**
   * VCMD Free (`vcmd_free_pasid`). "Invalid PASID" is only logged (behaviour 52). Any other
   * unexpected status is logged; in strict it is also ENODEV so the caller keeps the PASID.
   */
  free(pasid: number): void | Promise<void> {
    if (!Number.isInteger(pasid) || pasid < 0 || pasid > PASID_MAX) {
      throw new IoasidError('EINVAL', `PASID ${pasid} does not fit the VCMD operand (20 bits)`, { pasid });
    }
    // VCMD_CMD_OPERAND(pasid) | VCMD_CMD_FREE, with the operand shift of this layout's table.
    let operand = BigInt(pasid) << this.#operandShift;
    if (this.#host.rules.truncatedFreeOperand && operand > U32) {
      // The kernel shifts a u32: bits 31:16 keep PASID bits 15:0, the rest is lost.
      operand &= U32;
      const sent = Number(operand >> this.#operandShift);
      logHazard(this.#host.log, VTD_HAZARDS['vcmd-free-truncated'],
        `${this.name}: Free of PASID 0x${pasid.toString(16)} writes VCMD_REG 0x${(operand | 2n).toString(16)}, a Free of PASID 0x${sent.toString(16)}; PASID 0x${pasid.toString(16)} leaks on the host`,
        { iommu: this.name, pasid, sent, VCMD_REG: `0x${(operand | 2n).toString(16)}` });
    }
    const rsp = this.#run(VCMD_CMD.FREE, operand | 2n, null);
    if (typeof rsp === 'bigint') {
      this.#freeResult(rsp, pasid);
      return;
    }
    return rsp.then((r) => this.#freeResult(r, pasid));
  }

  #sc(rsp: bigint): number {
    if (rsp <= MAX_SAFE) return Math.floor(Number(rsp) / this.#scDiv) % this.#scMod;
    return Number((rsp >> this.#scShift) & this.#scMask);
  }

  #pasidOf(rsp: bigint): number {
    if (rsp <= MAX_SAFE) return Math.floor(Number(rsp) / this.#resultDiv) % this.#resultMod;
    return Number((rsp >> this.#resultShift) & this.#resultMask);
  }

  /** RSLT bits outside the PASID field are set (reserved: RsvdZ on a success). */
  #reservedSet(rsp: bigint): boolean {
    if (rsp <= MAX_SAFE && Number(rsp) < this.#resultLimit) return false; // nothing above the PASID
    return (rsp & this.#rsltReservedMask) !== 0n;
  }

  #allocResult(rsp: bigint): number {
    const sc = this.#sc(rsp);
    if (sc === 0) {
      const pasid = this.#pasidOf(rsp);
      if (this.#host.profile === 'strict' && (pasid === 0 || this.#reservedSet(rsp))) {
        this.#host.log('warn', `IOMMU: ${this.name}: Unexpected result 0x${rsp.toString(16)}`, { iommu: this.name, VCRSP_REG: `0x${rsp.toString(16)}` });
        throw new IoasidError('ENODEV', `vIOMMU ${this.name} answered Allocate with an invalid result (VCRSP_REG 0x${rsp.toString(16)})`, { iommu: this.name, VCRSP_REG: `0x${rsp.toString(16)}` });
      }
      return pasid;
    }
    if (sc === this.#noPasid) {
      this.#host.log('info', `IOMMU: ${this.name}: No PASID available`, { iommu: this.name });
      throw new IoasidError('ENOSPC', `vIOMMU ${this.name}: no PASID available`, { iommu: this.name, status: sc });
    }
    this.#host.log('warn', `IOMMU: ${this.name}: Unexpected error code ${sc}`, { iommu: this.name, status: sc });
    throw new IoasidError('ENODEV', `vIOMMU ${this.name} answered Allocate with unexpected status ${sc}`, { iommu: this.name, status: sc });
  }

  #freeResult(rsp: bigint, pasid: number): void {
    const sc = this.#sc(rsp);
    if (sc === 0) return;
    if (sc === this.#noPasid) {
      this.#host.log('info', `IOMMU: ${this.name}: Invalid PASID`, { iommu: this.name, pasid });
      return;
    }
    this.#host.log('warn', `IOMMU: ${this.name}: Unexpected error code ${sc}`, { iommu: this.name, status: sc, pasid });
    if (this.#host.profile === 'strict') {
      throw new IoasidError('ENODEV', `vIOMMU ${this.name} answered Free of PASID ${pasid} with unexpected status ${sc}`, { iommu: this.name, status: sc, pasid });
    }
  }

  /**
   * Serialise one command on this unit and return VCRSP once IP is clear: synchronously when the
   * unit is idle and the device answers at once (one VCRSP read, no Promise), else a Promise.
   */
  #run(cmd: number, vcmd: bigint, vcmdEo: bigint | null): bigint | Promise<bigint> {
    if (!this.#present) {
      throw new IoasidError('ENODEV', `vIOMMU ${this.name} has been removed`, { iommu: this.name });
    }
    if (this.#queue === null && this.#stale === null) {
      this.#commands++;
      this.#write(vcmd, vcmdEo);
      const rsp = this.#read();
      if (rsp <= MAX_SAFE ? Number(rsp) % 2 === 0 : (rsp & IP) === 0n) return rsp;
      return this.#enqueue(() => this.#poll(cmd));
    }
    return this.#enqueue(async () => {
      if (!this.#present) throw new IoasidError('ENODEV', `vIOMMU ${this.name} has been removed`, { iommu: this.name });
      if (this.#stale !== null) await this.#recover();
      this.#commands++;
      this.#write(vcmd, vcmdEo);
      return this.#poll(cmd);
    });
  }

  /** Write the command (and VCMD_EO first, when given); a transport failure is ENODEV. */
  #write(vcmd: bigint, vcmdEo: bigint | null): void {
    try {
      if (vcmdEo !== null) this.#mmio.write(this.#offVcmdEo, vcmdEo, 8);
      this.#mmio.write(this.#offVcmd, vcmd, 8);
    } catch (e) {
      throw this.#transportError(e);
    }
  }

  #read(): bigint {
    try {
      return this.#mmio.read(this.#offVcrsp, 8);
    } catch (e) {
      throw this.#transportError(e);
    }
  }

  #transportError(e: unknown): unknown {
    if (isIoasidError(e)) return e;
    return new IoasidError('ENODEV', `MMIO access to vIOMMU ${this.name} failed: ${String(e)}`, { iommu: this.name }, { cause: e });
  }

  #enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const prev = this.#queue ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail: Promise<unknown> = run.then(
      () => { if (this.#queue === tail) this.#queue = null; },
      () => { if (this.#queue === tail) this.#queue = null; },
    );
    this.#queue = tail;
    return run;
  }

  /** Poll VCRSP until IP clears (IOMMU_WAIT_OP), with the deadline. */
  async #poll(cmd: number): Promise<bigint> {
    const { clock, timeoutMs, pollIntervalMs } = this.#host;
    const start = clock.now();
    for (;;) {
      const rsp = this.#read();
      if (rsp <= MAX_SAFE ? Number(rsp) % 2 === 0 : (rsp & IP) === 0n) return rsp;
      if (clock.now() - start >= timeoutMs) {
        this.#stale = { cmd };
        this.#host.log('error', `IOMMU: ${this.name}: VCMD timed out (DMAR hardware is malfunctioning)`, { iommu: this.name, cmd, timeoutMs });
        throw new IoasidError('ETIMEDOUT', `vIOMMU ${this.name} did not complete VCMD ${cmd} within ${timeoutMs} ms (VCRSP.IP still set)`, { iommu: this.name, cmd, timeoutMs });
      }
      await clock.sleep(pollIntervalMs);
    }
  }

  /**
   * A previous command timed out: wait for its late answer before writing a new command (a write
   * while IP is set would be dropped and the old answer read as the new one). In strict, a late
   * successful Allocate is freed back to the host, since nobody recorded that PASID.
   */
  async #recover(): Promise<void> {
    const stale = this.#stale as { cmd: number };
    const rsp = await this.#poll(stale.cmd);
    this.#stale = null;
    if (stale.cmd !== VCMD_CMD.ALLOCATE || this.#sc(rsp) !== 0) return;
    const pasid = this.#pasidOf(rsp);
    this.#host.log('warn', `IOMMU: ${this.name}: late answer to a timed-out Allocate: PASID ${pasid}`, { iommu: this.name, pasid });
    if (this.#host.profile !== 'strict' || pasid === 0 || pasid > PASID_MAX) return;
    this.#commands++;
    this.#write((BigInt(pasid) << this.#operandShift) | 2n, null);
    this.#freeResult(await this.#poll(VCMD_CMD.FREE), pasid);
  }
}

/** Validate the guest driver's layout settings once. */
export function guestRegisterMap(layout: unknown, pasBit: unknown): RegisterMap {
  return registerMap(layout as 'A' | 'B', (pasBit ?? 0) as 0 | 1);
}
