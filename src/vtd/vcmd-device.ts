/**
 * The VCMD device: the host side of one vIOMMU's virtual command interface, as a small register
 * file (docs/vtd.md; behaviours 55-65 of docs/behaviours.md), in that order:
 *
 * 1. Registers: CAP_REG and ECAP_REG (read-only, the advertised capabilities), VCCAP_REG
 *    (read-only), VCMD_REG and VCMD_EO_REG (read-write), VCRSP_REG (read-only). Other offsets read
 *    as 0 and ignore writes. Misaligned accesses, sizes other than 4 and 8, and non-bigint values
 *    are ignored (reads return 0n): a guest can never make the device throw. With ECAP.VCS clear the
 *    VCMD registers are RsvdZ: they read 0 and ignore writes.
 * 2. A write that sets the command field clears VCRSP and sets VCRSP.IP; while IP is set, writes to
 *    VCMD_REG and VCMD_EO_REG are dropped (spec Rev 5.10 11.4.16.1).
 * 3. 32-bit accesses (behaviour 63): a pair of 32-bit writes to the low and the high dword of VCMD_REG,
 *    in either order, forms one command; it fires on the write that completes the pair. A 64-bit
 *    write fires at once (and discards a half-written pair). So a 32-bit guest may write the
 *    operand's high dword (layout B PASID bits 35:32) before or after the low dword: the command
 *    never runs on half an operand. VCMD_EO_REG halves are stored and never fire anything.
 * 4. Commands: Null (0) completes with SC 0 and a zero result when NS is advertised; Allocate (1)
 *    asks the backend for a PASID; Free (2) asks the backend to free OA's PASID; 3-255, and any
 *    command VCCAP does not advertise, complete with SC 1 "undefined command". RSLT is zero
 *    whenever SC != 0. Allocate failures give "no PASID available", Free failures "invalid
 *    PASID" (2 in layout A, 16 in layout B); PASID 0 is never freed (behaviour 60, 65).
 * 5. The backend may answer later (a Promise): IP stays set until it does. The guest-visible
 *    status is written first; an internal error (anything but an IoasidError, or a backend answer
 *    that is not a valid PASID) is then reported through `onInternalError`, never thrown into the
 *    guest's write.
 * 6. Range extension (ours, docs/decisions.md 4, layout B): with VCCAP.RX, Allocate carries min in OA
 *    bits 35:16 and max in VCMD_EO bits 19:0; min = max = 0 means "any PASID"; min 0 reads as 1.
 *
 * 7. Durable hosts (the backend has `persist`): every change a guest can observe is committed
 *    before the write that made it is complete: a command's outcome by the backend together with
 *    the allocation or free it reports (`guestStateAfter`), anything else through `persist`. A
 *    `CommitError` takes the write back (registers, halves and writer as before it arrived), and
 *    `writeDurable` rejects with it, so the writer can send it again. While such a commit is
 *    outstanding, further writes are dropped, as while IP is set.
 * 8. Numbered writes: a write may name its writer and sequence number; a write whose number is
 *    not above the last one applied from that writer is a retry of an applied write and is not
 *    applied again (a remote guest resending a write after losing the answer to a crash).
 *
 * State is a serialisable snapshot (`snapshot()` / `VcmdDevice.restore()`), refused with EBUSY
 * while a backend call is outstanding; the guest-visible part alone is `guestState()` /
 * `restoreGuestState()`.
 */
import { IoasidError, PASID_MAX, PASID_MIN, isCommitError, isIoasidError } from '../core/index.ts';
import type { AccessSize, MmioAccessor } from './mmio.ts';
import {
  VCMD_CMD,
  commandName,
  encodeRegister,
  encodeVccap,
  fieldBits,
  registerMap,
  registerSpec,
  statusName,
  type FieldSpec,
  type RegisterMap,
} from './registers.ts';
import type { VcmdBackend, VcmdCommandContext } from './vcmd-backend.ts';
import { normalizeDeviceConfig, type VcmdDeviceConfig, type VcmdDeviceConfigInput } from './vcmd-device-config.ts';
import {
  parseDeviceSnapshot, parseGuestState, parseWriter,
  type VcmdDeviceSnapshot, type VcmdGuestState, type VcmdLogEntry, type VcmdStats, type VcmdWriter,
} from './vcmd-device-snapshot.ts';

export type { VcmdLogEntry, VcmdStats, VcmdDeviceSnapshot, VcmdGuestState, VcmdWriter } from './vcmd-device-snapshot.ts';

/** The guest-visible state before a write, kept to take the write back if it cannot be committed. */
interface Saved {
  readonly vcmd: bigint;
  readonly vcmdEo: bigint;
  readonly vcrsp: bigint;
  readonly halfLow: boolean;
  readonly halfHigh: boolean;
  readonly writerId: string | null;
  readonly writerSeq: number;
}

const noop = (): void => {};

/** How the device reports an internal error (after the guest-visible status is written). */
export type InternalErrorHandler = (error: unknown, entry: VcmdLogEntry) => void;

export interface VcmdDeviceHooks {
  /** Clock for log timestamps (ms or any unit). Default: a counter of commands. */
  readonly now?: () => number;
  readonly onInternalError?: InternalErrorHandler;
}

export type VcmdDeviceOptions = VcmdDeviceConfigInput & VcmdDeviceHooks & { readonly backend: VcmdBackend };

const MASK32 = 0xffffffffn;
const HIGH32 = MASK32 << 32n;
const IP = 1n;

interface MutableEntry {
  seq: number;
  cmd: number;
  command: string;
  operand: number | null;
  range: { min: number; max: number } | null;
  status: number | null;
  statusName: string | null;
  result: number | null;
  issuedAt: number;
  completedAt: number | null;
  error: string | null;
}

function isThenable(x: unknown): x is PromiseLike<unknown> {
  return (typeof x === 'object' || typeof x === 'function') && x !== null && typeof (x as { then?: unknown }).then === 'function';
}

function errorText(e: unknown): string {
  if (e instanceof Error) return isIoasidError(e) ? `${e.code}: ${e.message}` : `${e.name}: ${e.message}`;
  return String(e);
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

interface FieldBits {
  readonly shift: bigint;
  readonly mask: bigint;
  readonly div: number;
  readonly mod: number;
}

function fieldOf(f: FieldSpec): FieldBits {
  const b = fieldBits(f);
  return { shift: b.shift, mask: b.mask, div: 2 ** f.lo, mod: 2 ** (f.hi - f.lo + 1) };
}

/** A field of a register value; number arithmetic when the value is below 2^53 (no BigInt made). */
function bits(value: bigint, f: { readonly shift: bigint; readonly mask: bigint; readonly div: number; readonly mod: number }): number {
  if (value <= MAX_SAFE) return Math.floor(Number(value) / f.div) % f.mod;
  return Number((value >> f.shift) & f.mask);
}

function blankEntry(): MutableEntry {
  return { seq: 0, cmd: 0, command: '', operand: null, range: null, status: null, statusName: null, result: null, issuedAt: 0, completedAt: null, error: null };
}

function freezeEntry(e: MutableEntry): VcmdLogEntry {
  return Object.freeze({ ...e, range: e.range === null ? null : Object.freeze({ ...e.range }) });
}

export class VcmdDevice implements MmioAccessor, VcmdCommandContext {
  readonly config: VcmdDeviceConfig;
  readonly map: RegisterMap;
  /** CAP_REG, ECAP_REG and VCCAP_REG as advertised (VCCAP reads as 0 when ECAP.VCS is clear). */
  readonly cap: bigint;
  readonly ecap: bigint;
  readonly vccap: bigint;

  #backend: VcmdBackend;
  #now: () => number;
  #onInternalError: InternalErrorHandler | undefined;

  // Offsets and field constants, taken from the register tables once.
  #offCap: number;
  #offEcap: number;
  #offVccap: number;
  #offVcmd: number;
  #offVcmdEo: number;
  #offVcrsp: number;
  #vcmdWritable: bigint;
  #cmd: FieldBits;
  #operand: FieldBits;
  #rangeMax: { readonly shift: bigint; readonly mask: bigint } | null;
  #resultScale: number;
  #scScale: number;
  #advertised: readonly boolean[];
  #rangeAdvertised: boolean;

  // Register state.
  #vcmd = 0n;
  #vcmdEo = 0n;
  #vcrsp = 0n;
  #halfLow = false;
  #halfHigh = false;
  #writerId: string | null = null;
  #writerSeq = 0;
  /** Durable backend: guest-visible changes are committed (rule 7). */
  readonly #durable: boolean;
  /** The commit failure that took back the last write (for `writeDurable`). */
  #failure: unknown = null;

  #seq = 0;
  /** Ring of the last `logSize` entries: #logStart is the oldest, #log.length <= logSize. */
  #log: MutableEntry[] = [];
  #logStart = 0;
  #stats: { commands: number; droppedWrites: number; undefinedCommands: number; internalErrors: number };
  #pending: Promise<void> | null = null;

  constructor(options: VcmdDeviceOptions) {
    if (typeof options !== 'object' || options === null) throw new IoasidError('EINVAL', 'VcmdDevice needs an options object', {});
    const { backend, now, onInternalError, ...rest } = options;
    this.config = normalizeDeviceConfig(rest);
    this.#backend = checkBackend(backend);
    this.#durable = typeof this.#backend.persist === 'function';
    this.#now = now ?? (() => this.#seq);
    this.#onInternalError = onInternalError;
    this.#stats = { commands: 0, droppedWrites: 0, undefinedCommands: 0, internalErrors: 0 };

    const cfg = this.config;
    const map = registerMap(cfg.layout, cfg.pasBit);
    this.map = map;
    this.cap = encodeRegister(map, 'CAP_REG', { CM: cfg.cachingMode ? 1n : 0n });
    this.ecap = encodeRegister(map, 'ECAP_REG', {
      PSS: BigInt(cfg.pss),
      PASID: cfg.pasidSupport ? 1n : 0n,
      SMTS: cfg.scalableMode ? 1n : 0n,
      VCS: cfg.virtualCommands ? 1n : 0n,
    });
    // Spec Rev 5.10: PAS/FPS read clear when ECAP.PASID is clear; everything is RsvdZ without VCS.
    const pas = cfg.pasidAllocation && cfg.pasidSupport;
    const caps = {
      allocate: pas,
      free: cfg.pasBit === 1 ? cfg.freeCommand && cfg.pasidSupport : pas,
      nullCommand: cfg.nullCommand,
      rangeExtension: cfg.rangeExtension && pas,
    };
    this.vccap = cfg.virtualCommands ? encodeVccap(map, caps) : 0n;
    const adv: boolean[] = [];
    adv[VCMD_CMD.NULL] = cfg.virtualCommands && caps.nullCommand;
    adv[VCMD_CMD.ALLOCATE] = cfg.virtualCommands && caps.allocate;
    adv[VCMD_CMD.FREE] = cfg.virtualCommands && caps.free;
    this.#advertised = adv;
    this.#rangeAdvertised = (this.vccap >> 63n) === 1n;

    this.#offCap = registerSpec(map, 'CAP_REG').offset;
    this.#offEcap = registerSpec(map, 'ECAP_REG').offset;
    this.#offVccap = registerSpec(map, 'VCCAP_REG').offset;
    const vcmdSpec = registerSpec(map, 'VCMD_REG');
    this.#offVcmd = vcmdSpec.offset;
    this.#vcmdWritable = vcmdSpec.writableMask;
    this.#cmd = fieldOf(vcmdSpec.fields.find((f) => f.name === 'CMD') as FieldSpec);
    this.#offVcmdEo = cfg.layout === 'B' ? registerSpec(map, 'VCMD_EO_REG').offset : -1;
    const vcrspSpec = registerSpec(map, 'VCRSP_REG');
    this.#offVcrsp = vcrspSpec.offset;
    this.#scScale = 2 ** (vcrspSpec.fields.find((f) => f.name === 'SC') as FieldSpec).lo;
    this.#operand = fieldOf(map.operandPasid);
    this.#resultScale = 2 ** map.resultPasid.lo;
    this.#rangeMax = map.rangeMax === null ? null : fieldBits(map.rangeMax);
  }

  /** Restore a device from `snapshot()` output (untrusted input: EINVAL on anything malformed). */
  static restore(snapshot: unknown, backend: VcmdBackend, hooks: VcmdDeviceHooks = {}): VcmdDevice {
    const s = parseDeviceSnapshot(snapshot);
    const dev = new VcmdDevice({ ...s.config, backend, ...hooks });
    dev.#setGuestState(s, 'snapshot');
    dev.#seq = s.nextSeq;
    const kept = dev.config.logSize === 0 ? [] : s.log.slice(-dev.config.logSize);
    dev.#log = kept.map((e) => ({ ...e, range: e.range === null ? null : { ...e.range } }));
    dev.#stats = { ...s.stats };
    return dev;
  }

  /** The guest-visible state (rule 7): what a durable host commits. */
  guestState(): VcmdGuestState {
    return this.#stateOf(this.#vcrsp);
  }

  /**
   * Put back the guest-visible state a durable host committed (untrusted input: EINVAL on anything
   * malformed or not possible for this device's layout; EBUSY while a command is outstanding).
   */
  restoreGuestState(state: unknown): void {
    if (this.busy || this.#pending !== null) throw new IoasidError('EBUSY', 'cannot restore the registers of a VCMD device while a command is in progress', {});
    this.#setGuestState(parseGuestState(state), 'state');
  }

  #setGuestState(s: Pick<VcmdGuestState, 'registers' | 'pendingHalves'> & { readonly writer?: VcmdWriter | null }, what: string): void {
    const vcrsp = BigInt(s.registers.VCRSP_REG);
    if ((vcrsp & IP) !== 0n) {
      throw new IoasidError('EINVAL', `${what} VCRSP_REG has IP set: a command cannot be in progress in a ${what}`, { VCRSP_REG: s.registers.VCRSP_REG });
    }
    if ((vcrsp & ~registerSpec(this.map, 'VCRSP_REG').definedMask) !== 0n) {
      throw new IoasidError('EINVAL', `${what} VCRSP_REG has reserved bits set`, { VCRSP_REG: s.registers.VCRSP_REG });
    }
    if ((BigInt(s.registers.VCMD_REG) & ~this.#vcmdWritable) !== 0n) {
      throw new IoasidError('EINVAL', `${what} VCMD_REG has reserved bits set`, { VCMD_REG: s.registers.VCMD_REG });
    }
    if (this.#offVcmdEo < 0 && s.registers.VCMD_EO_REG !== '0x0') {
      throw new IoasidError('EINVAL', `layout A has no VCMD_EO_REG, but the ${what} gives it a value`, { VCMD_EO_REG: s.registers.VCMD_EO_REG });
    }
    this.#vcmd = BigInt(s.registers.VCMD_REG);
    this.#vcmdEo = this.#offVcmdEo < 0 ? 0n : BigInt(s.registers.VCMD_EO_REG);
    this.#vcrsp = vcrsp;
    this.#halfLow = s.pendingHalves.low;
    this.#halfHigh = s.pendingHalves.high;
    this.#writerId = s.writer?.id ?? null;
    this.#writerSeq = s.writer?.seq ?? 0;
  }

  #stateOf(vcrsp: bigint): VcmdGuestState {
    return {
      registers: { VCMD_REG: hex(this.#vcmd), VCMD_EO_REG: hex(this.#vcmdEo), VCRSP_REG: hex(vcrsp) },
      pendingHalves: { low: this.#halfLow, high: this.#halfHigh },
      writer: this.#writerId === null ? null : { id: this.#writerId, seq: this.#writerSeq },
    };
  }

  /**
   * The command in progress, as a backend sees it (rule 7): the guest-visible state once it
   * completes with `result` (a PASID or anything for success, `null` for its failure status).
   */
  guestStateAfter(result: number | null): VcmdGuestState {
    const cmd = bits(this.#vcmd, this.#cmd);
    const sc = result === null ? (cmd === VCMD_CMD.ALLOCATE ? this.map.status.NO_PASID : this.map.status.INVALID_PASID) : this.map.status.SUCCESS;
    // The command fired (its halves are clear); only VCRSP will differ from now.
    return this.#stateOf(this.#vcrspFor(sc, cmd === VCMD_CMD.ALLOCATE && result !== null ? result : 0));
  }

  /**
   * Write, then wait until the write and the command it fires are complete and (on a durable host)
   * committed. Rejects with the commit failure when the write was taken back (rule 7).
   */
  async writeDurable(offset: number, value: bigint, size: AccessSize, writer?: VcmdWriter): Promise<void> {
    this.#failure = null;
    this.write(offset, value, size, writer);
    await this.settled();
    const f = this.#failure;
    this.#failure = null;
    if (f !== null) throw f;
  }

  /** True while a command is in progress (VCRSP.IP set). */
  get busy(): boolean {
    return this.#inProgress();
  }

  /** Resolves when no backend call is outstanding. */
  async settled(): Promise<void> {
    while (this.#pending !== null) await this.#pending;
  }

  /** Counters since creation (carried through snapshots). */
  get stats(): VcmdStats {
    return { ...this.#stats };
  }

  /** The recent-commands log, oldest first (bounded by `logSize`). */
  recentCommands(): readonly VcmdLogEntry[] {
    return this.#ordered().map(freezeEntry);
  }

  // -------------------------------------------------------------------------------------------
  // MMIO

  read(offset: number, size: AccessSize): bigint {
    const base = alignedBase(offset, size);
    if (base < 0) return 0n;
    const v = this.#reg64(base);
    if (size === 8) return v;
    return (offset & 4) !== 0 ? v >> 32n : v & MASK32;
  }

  write(offset: number, value: bigint, size: AccessSize, writer?: VcmdWriter): void {
    if (typeof value !== 'bigint') return;
    const base = alignedBase(offset, size);
    if (base < 0 || !this.config.virtualCommands) return;
    const isVcmd = base === this.#offVcmd;
    if (!isVcmd && base !== this.#offVcmdEo) return; // read-only or unknown: ignored
    const w = writer === undefined ? null : parseWriter(writer);
    if (w !== null && w.id === this.#writerId && w.seq <= this.#writerSeq) return; // a retry of an applied write (rule 8)
    if (this.#inProgress() || (this.#durable && this.#pending !== null)) {
      this.#stats.droppedWrites++;
      return;
    }
    const before = this.#durable ? this.#save() : null;
    if (w !== null) {
      this.#writerId = w.id;
      this.#writerSeq = w.seq;
    }
    if (!isVcmd) {
      if (size === 8) this.#vcmdEo = BigInt.asUintN(64, value);
      else if ((offset & 4) === 0) this.#vcmdEo = (this.#vcmdEo & HIGH32) | BigInt.asUintN(32, value);
      else this.#vcmdEo = (this.#vcmdEo & MASK32) | (BigInt.asUintN(32, value) << 32n);
      this.#persist(before, null);
      return;
    }
    if (size === 8) {
      this.#vcmd = value & this.#vcmdWritable;
      this.#halfLow = false;
      this.#halfHigh = false;
      this.#fire(before);
      return;
    }
    const v32 = BigInt.asUintN(32, value);
    if ((offset & 4) === 0) {
      this.#vcmd = ((this.#vcmd & HIGH32) | v32) & this.#vcmdWritable;
      this.#halfLow = true;
    } else {
      this.#vcmd = ((this.#vcmd & MASK32) | (v32 << 32n)) & this.#vcmdWritable;
      this.#halfHigh = true;
    }
    if (this.#halfLow && this.#halfHigh) {
      this.#halfLow = false;
      this.#halfHigh = false;
      this.#fire(before);
    } else {
      this.#persist(before, null);
    }
  }

  #save(): Saved {
    return { vcmd: this.#vcmd, vcmdEo: this.#vcmdEo, vcrsp: this.#vcrsp, halfLow: this.#halfLow, halfHigh: this.#halfHigh, writerId: this.#writerId, writerSeq: this.#writerSeq };
  }

  /** Commit a guest-visible change no backend call reported (rule 7); take it back on failure. */
  #persist(before: Saved | null, entry: MutableEntry | null): void {
    if (before === null) return;
    let r: void | Promise<void>;
    try {
      r = (this.#backend.persist as (state: VcmdGuestState) => void | Promise<void>).call(this.#backend, this.guestState());
    } catch (e) {
      this.#takeBack(before, entry, e);
      return;
    }
    if (isThenable(r)) this.#wait(Promise.resolve(r).then(noop, (e: unknown) => this.#takeBack(before, entry, e)));
  }

  /** The write could not be committed: the device is as before it arrived (rule 7). */
  #takeBack(before: Saved, entry: MutableEntry | null, e: unknown): void {
    this.#vcmd = before.vcmd;
    this.#vcmdEo = before.vcmdEo;
    this.#vcrsp = before.vcrsp;
    this.#halfLow = before.halfLow;
    this.#halfHigh = before.halfHigh;
    this.#writerId = before.writerId;
    this.#writerSeq = before.writerSeq;
    this.#failure = e;
    if (entry !== null) {
      entry.status = null;
      entry.statusName = null;
      entry.result = null;
      entry.completedAt = this.#now();
      entry.error = `not committed, taken back: ${errorText(e)}`;
    }
    if (!isCommitError(e)) this.#internalError(entry ?? blankEntry(), e);
  }

  #reg64(base: number): bigint {
    if (base === this.#offCap) return this.cap;
    if (base === this.#offEcap) return this.ecap;
    if (!this.config.virtualCommands) return 0n;
    if (base === this.#offVcrsp) return this.#vcrsp;
    if (base === this.#offVcmd) return this.#vcmd;
    if (base === this.#offVccap) return this.vccap;
    if (base === this.#offVcmdEo) return this.#vcmdEo;
    return 0n;
  }

  // -------------------------------------------------------------------------------------------
  // Commands

  #inProgress(): boolean {
    return this.#vcrsp <= MAX_SAFE ? Number(this.#vcrsp) % 2 === 1 : (this.#vcrsp & IP) !== 0n;
  }

  #fire(before: Saved | null): void {
    this.#vcrsp = IP; // clears VCRSP and sets IP (behaviour 56)
    this.#stats.commands++;
    const cmd = bits(this.#vcmd, this.#cmd);
    const entry = this.#newEntry();
    entry.seq = this.#seq++;
    entry.cmd = cmd;
    entry.command = commandName(cmd);
    entry.operand = null;
    entry.range = null;
    entry.status = null;
    entry.statusName = null;
    entry.result = null;
    entry.issuedAt = this.#now();
    entry.completedAt = null;
    entry.error = null;
    if (this.#advertised[cmd] !== true) {
      this.#stats.undefinedCommands++;
      this.#complete(entry, this.map.status.UNDEFINED_COMMAND, 0);
      this.#persist(before, entry);
      return;
    }
    if (cmd === VCMD_CMD.NULL) {
      this.#complete(entry, this.map.status.SUCCESS, 0);
      this.#persist(before, entry);
    } else if (cmd === VCMD_CMD.ALLOCATE) {
      this.#allocate(entry, before);
    } else {
      this.#free(entry, before);
    }
  }

  /**
   * The log entry of a new command: once the ring is full its oldest entry is reused (its fields
   * are all rewritten), so a command costs no allocation. The entry of the command in flight is
   * never the oldest: while IP is set no other command starts. Readers get copies.
   */
  #newEntry(): MutableEntry {
    const size = this.config.logSize;
    if (size === 0) return blankEntry();
    if (this.#log.length < size) {
      const e = blankEntry();
      this.#log.push(e);
      return e;
    }
    const e = this.#log[this.#logStart] as MutableEntry;
    this.#logStart = (this.#logStart + 1) % size;
    return e;
  }

  /** The log, oldest first. */
  #ordered(): MutableEntry[] {
    return this.#logStart === 0 ? this.#log : [...this.#log.slice(this.#logStart), ...this.#log.slice(0, this.#logStart)];
  }

  #allocate(entry: MutableEntry, before: Saved | null): void {
    let range: { min: number; max: number } | undefined;
    if (this.#rangeMax !== null && this.#rangeAdvertised) {
      const min = bits(this.#vcmd, this.#operand);
      const max = Number((this.#vcmdEo >> this.#rangeMax.shift) & this.#rangeMax.mask);
      if (min !== 0 || max !== 0) {
        range = { min: Math.max(min, PASID_MIN), max };
        entry.range = { ...range };
        if (range.min > range.max) {
          this.#complete(entry, this.map.status.NO_PASID, 0);
          this.#persist(before, entry);
          return;
        }
      }
    }
    let r: number | Promise<number>;
    try {
      r = this.#backend.allocate(range, this);
    } catch (e) {
      this.#allocateFailed(entry, e, before);
      return;
    }
    if (isThenable(r)) {
      this.#wait(Promise.resolve(r).then((v) => this.#allocated(entry, v, range, before), (e: unknown) => this.#allocateFailed(entry, e, before)));
    } else {
      this.#allocated(entry, r, range, before);
    }
  }

  #allocated(entry: MutableEntry, v: unknown, range: { min: number; max: number } | undefined, before: Saved | null): void {
    const lo = range?.min ?? PASID_MIN;
    const hi = range?.max ?? PASID_MAX;
    if (typeof v === 'number' && Number.isInteger(v) && v >= lo && v <= hi && v <= PASID_MAX) {
      this.#complete(entry, this.map.status.SUCCESS, v);
      return;
    }
    // A backend bug: the guest sees "no PASID available"; a real PASID is handed back.
    this.#complete(entry, this.map.status.NO_PASID, 0);
    this.#persist(before, entry);
    const err = new IoasidError('ERANGE', `VCMD backend returned ${String(v)} for Allocate, outside [${lo}, ${hi}]`, { result: typeof v === 'number' ? v : String(v), min: lo, max: hi });
    this.#internalError(entry, err);
    if (typeof v === 'number' && Number.isInteger(v) && v >= PASID_MIN && v <= PASID_MAX) {
      try {
        const f = this.#backend.free(v, this);
        if (isThenable(f)) Promise.resolve(f).catch((e: unknown) => this.#internalError(entry, e));
      } catch (e) {
        this.#internalError(entry, e);
      }
    }
  }

  #allocateFailed(entry: MutableEntry, e: unknown, before: Saved | null): void {
    if (before !== null && isCommitError(e)) {
      this.#takeBack(before, entry, e);
      return;
    }
    this.#complete(entry, this.map.status.NO_PASID, 0);
    this.#persist(before, entry);
    if (!isIoasidError(e)) this.#internalError(entry, e);
    else entry.error = errorText(e);
  }

  #free(entry: MutableEntry, before: Saved | null): void {
    const pasid = bits(this.#vcmd, this.#operand);
    entry.operand = pasid;
    if (pasid < PASID_MIN) {
      entry.error = 'EINVAL: PASID 0 is reserved for requests without PASID';
      this.#complete(entry, this.map.status.INVALID_PASID, 0);
      this.#persist(before, entry);
      return;
    }
    let r: void | Promise<void>;
    try {
      r = this.#backend.free(pasid, this);
    } catch (e) {
      this.#freeFailed(entry, e, before);
      return;
    }
    if (isThenable(r)) {
      this.#wait(Promise.resolve(r).then(() => this.#complete(entry, this.map.status.SUCCESS, 0), (e: unknown) => this.#freeFailed(entry, e, before)));
    } else {
      this.#complete(entry, this.map.status.SUCCESS, 0);
    }
  }

  #freeFailed(entry: MutableEntry, e: unknown, before: Saved | null): void {
    if (before !== null && isCommitError(e)) {
      this.#takeBack(before, entry, e);
      return;
    }
    this.#complete(entry, this.map.status.INVALID_PASID, 0);
    this.#persist(before, entry);
    if (!isIoasidError(e)) this.#internalError(entry, e);
    else entry.error = errorText(e);
  }

  #wait(p: Promise<void>): void {
    const tracked: Promise<void> = p.finally(() => {
      if (this.#pending === tracked) this.#pending = null;
    });
    this.#pending = tracked;
  }

  /** Write the guest-visible status: RSLT only on success, IP cleared. */
  #complete(entry: MutableEntry, sc: number, pasid: number): void {
    this.#vcrsp = this.#vcrspFor(sc, pasid);
    entry.status = sc;
    entry.statusName = statusName(this.map, entry.cmd, sc);
    entry.result = sc === 0 && entry.cmd === VCMD_CMD.ALLOCATE ? pasid : null;
    entry.completedAt = this.#now();
  }

  /** VCRSP once a command completes: RSLT only on success, IP clear. */
  #vcrspFor(sc: number, pasid: number): bigint {
    // One BigInt per completion: the status or result is placed with number arithmetic (< 2^53).
    return sc === 0 ? (pasid === 0 ? 0n : BigInt(pasid * this.#resultScale)) : BigInt(sc * this.#scScale);
  }

  #internalError(entry: MutableEntry, e: unknown): void {
    this.#stats.internalErrors++;
    entry.error = errorText(e);
    const h = this.#onInternalError;
    if (h === undefined) return;
    try {
      h(e, freezeEntry(entry));
    } catch {
      // The reporter must not break the guest's access.
    }
  }

  // -------------------------------------------------------------------------------------------
  // Snapshot

  /** Plain JSON-safe state (bigints as hex strings). EBUSY while a backend call is outstanding. */
  snapshot(): VcmdDeviceSnapshot {
    if (this.busy || this.#pending !== null) {
      throw new IoasidError('EBUSY', 'cannot snapshot a VCMD device while a command is in progress (VCRSP.IP = 1)', { VCRSP_REG: hex(this.#vcrsp) });
    }
    return {
      kind: 'ioasid/vcmd-device',
      version: 2,
      config: { ...this.config },
      registers: { VCMD_REG: hex(this.#vcmd), VCMD_EO_REG: hex(this.#vcmdEo), VCRSP_REG: hex(this.#vcrsp) },
      pendingHalves: { low: this.#halfLow, high: this.#halfHigh },
      writer: this.#writerId === null ? null : { id: this.#writerId, seq: this.#writerSeq },
      nextSeq: this.#seq,
      log: this.#ordered().map((e) => ({ ...e, range: e.range === null ? null : { ...e.range } })),
      stats: { ...this.#stats },
    };
  }
}

function hex(v: bigint): string {
  return `0x${v.toString(16)}`;
}

/** The 8-byte-aligned base of a valid access, or -1 for one the device ignores. */
function alignedBase(offset: number, size: number): number {
  if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0) return -1;
  if (size === 8) return offset % 8 === 0 ? offset : -1;
  if (size === 4) return offset % 4 === 0 ? offset - (offset % 8) : -1;
  return -1;
}

function checkBackend(b: unknown): VcmdBackend {
  if (typeof b !== 'object' || b === null || typeof (b as VcmdBackend).allocate !== 'function' || typeof (b as VcmdBackend).free !== 'function') {
    throw new IoasidError('EINVAL', 'VcmdDevice needs a backend with allocate() and free()', {});
  }
  return b as VcmdBackend;
}
