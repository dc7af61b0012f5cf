/**
 * VT-d register tables and codecs (docs/vtd-registers.md). Every register and field the VCMD
 * model touches is defined once, here, with the VT-d specification's own names, offset and bit range, per
 * register layout:
 *
 * - layout A: VT-d 3.0/3.1 (Linux v5.8-v5.14, the QEMU RFCs): VCCAP 0xE00, VCMD 0xE10,
 *   VCRSP 0xE20; SC in VCRSP bits 2:1; PASID operand/result at bits 27:8.
 * - layout B: VT-d 3.3 and later (Linux >= v5.15, VT-d specification Rev 5.10, 11.4.16): VCMD 0xE00,
 *   VCMD_EO 0xE08, VCRSP 0xE10, VCCAP 0xE30; SC in bits 7:1; PASID at bits 35:16.
 *
 * The PAS bit of VCCAP is a setting: bit 0 as Linux tested it (`DMA_VCS_PAS = 1`, no NS/FPS bits),
 * bit 1 as the VT-d specification Rev 5.10 puts it (bit 0 NS, bit 1 PAS, bit 2 FPS).
 *
 * The range extension (ours, docs/decisions.md 4, layout B only): VCCAP bit 63 `RX`, reserved in the VT-d specification,
 * advertises that Allocate takes `min` in VCMD.OA bits 35:16 and `max` in VCMD_EO bits 19:0.
 *
 * Nothing outside this file decodes a register by hand: everything goes through `getField` /
 * `setField` over these tables. `docs/vtd-registers.md` documents the same tables.
 */
import { IoasidError, fmtId } from '../core/index.ts';

export const LAYOUTS = ['A', 'B'] as const;
/** VCMD register layout: 'A' = VT-d 3.0/3.1, 'B' = VT-d 3.3 and later. */
export type Layout = (typeof LAYOUTS)[number];

export const PAS_BITS = [0, 1] as const;
/** Position of VCCAP.PAS: 0 as Linux (`DMA_VCS_PAS = 1`), 1 as spec Rev 5.10. */
export type PasBit = (typeof PAS_BITS)[number];

export const REGISTER_NAMES = ['CAP_REG', 'ECAP_REG', 'VCCAP_REG', 'VCMD_REG', 'VCMD_EO_REG', 'VCRSP_REG'] as const;
export type RegisterName = (typeof REGISTER_NAMES)[number];

export type FieldAccess = 'RO' | 'RW';

/** One field: bits hi..lo inclusive of a 64-bit register. */
export interface FieldSpec {
  readonly name: string;
  readonly hi: number;
  readonly lo: number;
  readonly access: FieldAccess;
  readonly description: string;
}

export interface RegisterSpec {
  readonly name: RegisterName;
  /** Byte offset in the remapping unit's register page. */
  readonly offset: number;
  /** All VCMD-related registers are 64-bit. */
  readonly size: 8;
  readonly access: FieldAccess;
  readonly fields: readonly FieldSpec[];
  /** Bits software may write (the RW fields); everything else is RO or RsvdZ. */
  readonly writableMask: bigint;
  /** Bits that are defined at all (union of fields); the rest is RsvdZ. */
  readonly definedMask: bigint;
  readonly description: string;
}

export type Bit = 0n | 1n;

/** Field values per register, as `decodeRegister` returns them. */
export interface RegisterFields {
  readonly CAP_REG: { readonly CM: Bit };
  readonly ECAP_REG: { readonly PSS: bigint; readonly PASID: Bit; readonly SMTS: Bit; readonly VCS: Bit };
  /** NS and FPS exist only with the PAS bit at 1 (VT-d specification Rev 5.10); RX only in layout B (our extension). */
  readonly VCCAP_REG: { readonly PAS: Bit; readonly NS?: Bit; readonly FPS?: Bit; readonly RX?: Bit };
  readonly VCMD_REG: { readonly CMD: bigint; readonly OA: bigint };
  readonly VCMD_EO_REG: { readonly OB: bigint };
  readonly VCRSP_REG: { readonly IP: Bit; readonly SC: bigint; readonly RSLT: bigint };
}

/** Virtual commands (VCMD_REG.CMD). 3-255 are reserved: "undefined command". */
export const VCMD_CMD = { NULL: 0, ALLOCATE: 1, FREE: 2 } as const;
export type VcmdCommand = (typeof VCMD_CMD)[keyof typeof VCMD_CMD];

/** Status codes (VCRSP_REG.SC) of one layout. */
export interface StatusCodes {
  readonly SUCCESS: 0;
  readonly UNDEFINED_COMMAND: 1;
  /** Allocate: "no PASID available". 2 in layout A (Rev 3.0 10.4.45), 16 in layout B. */
  readonly NO_PASID: number;
  /** Free: "invalid PASID". Same value as NO_PASID in both layouts. */
  readonly INVALID_PASID: number;
}

/** Everything a codec needs about one register layout. Frozen; get one from `registerMap`. */
export interface RegisterMap {
  readonly layout: Layout;
  readonly pasBit: PasBit;
  readonly registers: readonly RegisterSpec[];
  readonly status: StatusCodes;
  /** The PASID operand of Free (and `min` of a ranged Allocate) inside VCMD_REG. */
  readonly operandPasid: FieldSpec;
  /** The PASID result of Allocate inside VCRSP_REG. */
  readonly resultPasid: FieldSpec;
  /** Range extension: `max` of a ranged Allocate inside VCMD_EO_REG (layout B only). */
  readonly rangeMax: FieldSpec | null;
}

const U64 = (1n << 64n) - 1n;
const PASID_WIDTH = 20;

function field(name: string, hi: number, lo: number, access: FieldAccess, description: string): FieldSpec {
  return Object.freeze({ name, hi, lo, access, description });
}

function maskOf(f: FieldSpec): bigint {
  return ((1n << BigInt(f.hi - f.lo + 1)) - 1n) << BigInt(f.lo);
}

function register(name: RegisterName, offset: number, access: FieldAccess, description: string, fields: FieldSpec[]): RegisterSpec {
  let writableMask = 0n;
  let definedMask = 0n;
  for (const f of fields) {
    const m = maskOf(f);
    if ((definedMask & m) !== 0n) throw new Error(`overlapping fields in ${name}: ${f.name}`);
    definedMask |= m;
    if (f.access === 'RW') writableMask |= m;
  }
  return Object.freeze({ name, offset, size: 8, access, fields: Object.freeze(fields), writableMask, definedMask, description });
}

// Registers common to both layouts.
const CAP_REG = register('CAP_REG', 0x08, 'RO', 'Capability Register (only the bit the VCMD path uses)', [
  field('CM', 7, 7, 'RO', 'Caching Mode: 1 = not-present entries may be cached; Linux reads it as "running under a vIOMMU"'),
]);
const ECAP_REG = register('ECAP_REG', 0x10, 'RO', 'Extended Capability Register (the bits the VCMD path uses)', [
  field('PSS', 39, 35, 'RO', 'PASID Size Supported: value N means N+1 PASID bits (Linux: pasid max = 2 << PSS)'),
  field('PASID', 40, 40, 'RO', 'PASID support'),
  field('SMTS', 43, 43, 'RO', 'Scalable Mode Translation Support'),
  field('VCS', 44, 44, 'RO', 'Virtual Command Support; VCCAP/VCMD/VCRSP are RsvdZ when clear'),
]);

function vccapFields(layout: Layout, pasBit: PasBit): FieldSpec[] {
  const out: FieldSpec[] = [];
  if (pasBit === 1) {
    out.push(field('NS', 0, 0, 'RO', 'Null Command Support (spec Rev 5.10)'));
    out.push(field('PAS', 1, 1, 'RO', 'PASID Allocation Support (spec Rev 5.10 position)'));
    out.push(field('FPS', 2, 2, 'RO', 'Free PASID Support (spec Rev 5.10)'));
  } else {
    out.push(field('PAS', 0, 0, 'RO', 'PASID Allocation Support (Linux DMA_VCS_PAS position; implies Free)'));
  }
  if (layout === 'B') {
    out.push(field('RX', 63, 63, 'RO', 'Range extension (ours, reserved in the spec): Allocate takes min in OA 35:16, max in VCMD_EO 19:0'));
  }
  return out;
}

function buildMap(layout: Layout, pasBit: PasBit): RegisterMap {
  const shift = layout === 'A' ? 8 : 16;
  const registers: RegisterSpec[] = [CAP_REG, ECAP_REG];
  if (layout === 'A') {
    registers.push(
      register('VCCAP_REG', 0xe00, 'RO', 'Virtual Command Capability Register (VT-d 3.0 10.4.42)', vccapFields(layout, pasBit)),
      register('VCMD_REG', 0xe10, 'RW', 'Virtual Command Register (VT-d 3.0 10.4.43)', [
        field('CMD', 7, 0, 'RW', 'Command: 0 Null, 1 Allocate PASID, 2 Free PASID, 3-255 reserved'),
        field('OA', 63, 8, 'RW', 'Operand: Free PASID in bits 27:8 (Linux VCMD_CMD_OPERAND(e) = e << 8)'),
      ]),
      register('VCRSP_REG', 0xe20, 'RO', 'Virtual Command Response Register (VT-d 3.0 10.4.44-45)', [
        field('IP', 0, 0, 'RO', 'In Progress: 1 while the command executes'),
        field('SC', 2, 1, 'RO', 'Status Code: 0 success, 1 undefined command, 2 no PASID available / invalid PASID'),
        field('RSLT', 63, 8, 'RO', 'Result: Allocate PASID in bits 27:8; reserved when SC != 0'),
      ]),
    );
  } else {
    registers.push(
      register('VCMD_REG', 0xe00, 'RW', 'Virtual Command Register (spec Rev 5.10 11.4.16.1)', [
        field('CMD', 7, 0, 'RW', 'Command: 0 Null, 1 Allocate PASID, 2 Free PASID, 3-255 reserved'),
        field('OA', 63, 16, 'RW', 'Operand A: Free PASID in bits 35:16 (range extension: Allocate min)'),
      ]),
      register('VCMD_EO_REG', 0xe08, 'RW', 'Virtual Command Extended Operand Register (spec Rev 5.10 11.4.16.2)', [
        field('OB', 63, 0, 'RW', 'Operand B: unused by Null/Allocate/Free (range extension: Allocate max in bits 19:0)'),
      ]),
      register('VCRSP_REG', 0xe10, 'RO', 'Virtual Command Response Register (spec Rev 5.10 11.4.16.3)', [
        field('IP', 0, 0, 'RO', 'In Progress: 1 while the command executes'),
        field('SC', 7, 1, 'RO', 'Status Code: 0 success, 1 undefined command, 2-15 reserved, 16 no PASID available / invalid PASID'),
        field('RSLT', 63, 16, 'RO', 'Result: Allocate PASID in bits 35:16; reserved when SC != 0'),
      ]),
      register('VCCAP_REG', 0xe30, 'RO', 'Virtual Command Capability Register (spec Rev 5.10 11.4.16.4)', vccapFields(layout, pasBit)),
    );
  }
  const noPasid = layout === 'A' ? 2 : 16;
  return Object.freeze({
    layout,
    pasBit,
    registers: Object.freeze(registers),
    status: Object.freeze({ SUCCESS: 0, UNDEFINED_COMMAND: 1, NO_PASID: noPasid, INVALID_PASID: noPasid } as const),
    operandPasid: field('PASID', shift + PASID_WIDTH - 1, shift, 'RW', `PASID operand inside VCMD_REG.OA (bits ${shift + PASID_WIDTH - 1}:${shift})`),
    resultPasid: field('PASID', shift + PASID_WIDTH - 1, shift, 'RO', `PASID result inside VCRSP_REG.RSLT (bits ${shift + PASID_WIDTH - 1}:${shift})`),
    rangeMax: layout === 'B' ? field('MAX', PASID_WIDTH - 1, 0, 'RW', 'Range extension: Allocate max inside VCMD_EO_REG.OB (bits 19:0)') : null,
  });
}

const MAPS: Record<`${Layout}${PasBit}`, RegisterMap> = {
  A0: buildMap('A', 0),
  A1: buildMap('A', 1),
  B0: buildMap('B', 0),
  B1: buildMap('B', 1),
};

/** The register map of a layout and PAS-bit setting (default PAS bit 0, as Linux). */
export function registerMap(layout: Layout, pasBit: PasBit = 0): RegisterMap {
  if (layout !== 'A' && layout !== 'B') {
    throw new IoasidError('EINVAL', `layout must be 'A' or 'B', got ${fmtId(layout)}`, { layout });
  }
  if (pasBit !== 0 && pasBit !== 1) {
    throw new IoasidError('EINVAL', `pasBit must be 0 or 1, got ${fmtId(pasBit)}`, { pasBit });
  }
  return MAPS[`${layout}${pasBit}`];
}

/** A map, or a layout name meaning that layout with the Linux PAS bit (0). */
export type MapLike = RegisterMap | Layout;

function toMap(m: MapLike): RegisterMap {
  return typeof m === 'string' ? registerMap(m) : m;
}

/** The spec of a register in a layout; EINVAL for VCMD_EO_REG in layout A. */
export function registerSpec(map: MapLike, name: RegisterName): RegisterSpec {
  const m = toMap(map);
  for (const r of m.registers) if (r.name === name) return r;
  throw new IoasidError('EINVAL', `register ${name} does not exist in layout ${m.layout}`, { register: name, layout: m.layout });
}

/** The register whose 8 bytes contain `offset`, or null. */
export function registerAt(map: MapLike, offset: number): RegisterSpec | null {
  const m = toMap(map);
  for (const r of m.registers) if (offset >= r.offset && offset < r.offset + r.size) return r;
  return null;
}

/** Offset of a register in a layout. */
export function registerOffset(map: MapLike, name: RegisterName): number {
  return registerSpec(map, name).offset;
}

/** A field's shift and (unshifted) mask as bigints, for hot paths that decode the same field often. */
export function fieldBits(f: FieldSpec): { readonly shift: bigint; readonly mask: bigint } {
  return { shift: BigInt(f.lo), mask: (1n << BigInt(f.hi - f.lo + 1)) - 1n };
}

/** The field's value inside a register value. */
export function getField(f: FieldSpec, value: bigint): bigint {
  return (value >> BigInt(f.lo)) & ((1n << BigInt(f.hi - f.lo + 1)) - 1n);
}

/** `value` with the field replaced; EINVAL when the field value does not fit. */
export function setField(f: FieldSpec, value: bigint, fieldValue: bigint | number): bigint {
  const v = typeof fieldValue === 'number' ? toBig(fieldValue, f.name) : fieldValue;
  const width = BigInt(f.hi - f.lo + 1);
  if (v < 0n || v >> width !== 0n) {
    throw new IoasidError('EINVAL', `${f.name} = ${fmtId(v)} does not fit in bits ${f.hi}:${f.lo}`, {
      field: f.name, value: `0x${v.toString(16)}`, hi: f.hi, lo: f.lo,
    });
  }
  return (value & ~maskOf(f) & U64) | (v << BigInt(f.lo));
}

function toBig(n: number, what: string): bigint {
  if (!Number.isSafeInteger(n)) throw new IoasidError('EINVAL', `${what} must be a safe integer, got ${fmtId(n)}`, { [what]: n });
  return BigInt(n);
}

function fieldOf(spec: RegisterSpec, name: string): FieldSpec | undefined {
  for (const f of spec.fields) if (f.name === name) return f;
  return undefined;
}

/**
 * Decode a 64-bit register value into its named fields.
 * @example decodeRegister('B', 'VCRSP_REG', 0x50020n) // { IP: 0n, SC: 16n, RSLT: 5n }
 */
export function decodeRegister<R extends RegisterName>(map: MapLike, name: R, value: bigint): RegisterFields[R] {
  const spec = registerSpec(map, name);
  const out: Record<string, bigint> = {};
  for (const f of spec.fields) out[f.name] = getField(f, value);
  return out as unknown as RegisterFields[R];
}

/**
 * Encode named fields into a 64-bit register value (missing fields are 0). EINVAL for a field the
 * layout does not have or a value that does not fit.
 * @example encodeRegister('A', 'VCRSP_REG', { SC: 2n, RSLT: 5n }) // 0x504n
 */
export function encodeRegister<R extends RegisterName>(map: MapLike, name: R, fields: Partial<RegisterFields[R]>): bigint {
  const spec = registerSpec(map, name);
  let v = 0n;
  for (const [k, x] of Object.entries(fields as Record<string, bigint | undefined>)) {
    if (x === undefined) continue;
    const f = fieldOf(spec, k);
    if (f === undefined) {
      throw new IoasidError('EINVAL', `${name} has no field ${k} in layout ${spec.name === 'VCCAP_REG' ? `${toMap(map).layout} (PAS bit ${toMap(map).pasBit})` : toMap(map).layout}`, { register: name, field: k });
    }
    v = setField(f, v, x);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// Convenience helpers over the tables.

/** A decoded VCMD_REG write: the command and the PASID operand. */
export interface VcmdValue {
  readonly cmd: number;
  /** VCMD_REG.OA's PASID sub-field (Free's PASID; the range extension's min). */
  readonly pasid: number;
}

/** Encode a command with an optional PASID operand (Free; ranged Allocate's min). */
export function encodeVcmd(map: MapLike, cmd: number, pasid = 0): bigint {
  const m = toMap(map);
  const spec = registerSpec(m, 'VCMD_REG');
  const cmdField = spec.fields[0] as FieldSpec;
  return setField(m.operandPasid, setField(cmdField, 0n, cmd), pasid);
}

export function decodeVcmd(map: MapLike, value: bigint): VcmdValue {
  const m = toMap(map);
  const cmdField = registerSpec(m, 'VCMD_REG').fields[0] as FieldSpec;
  return { cmd: Number(getField(cmdField, value)), pasid: Number(getField(m.operandPasid, value)) };
}

/** A decoded VCRSP_REG value. */
export interface VcrspValue {
  readonly ip: boolean;
  readonly sc: number;
  /** The whole RSLT field (reserved when sc != 0). */
  readonly result: bigint;
  /** The PASID sub-field of RSLT (Allocate's result). */
  readonly pasid: number;
}

export function decodeVcrsp(map: MapLike, value: bigint): VcrspValue {
  const m = toMap(map);
  const spec = registerSpec(m, 'VCRSP_REG');
  const [ip, sc, rslt] = spec.fields as [FieldSpec, FieldSpec, FieldSpec];
  return {
    ip: getField(ip, value) === 1n,
    sc: Number(getField(sc, value)),
    result: getField(rslt, value),
    pasid: Number(getField(m.resultPasid, value)),
  };
}

export function encodeVcrsp(map: MapLike, v: { ip?: boolean; sc?: number; pasid?: number }): bigint {
  const m = toMap(map);
  const spec = registerSpec(m, 'VCRSP_REG');
  const [ip, sc] = spec.fields as [FieldSpec, FieldSpec, FieldSpec];
  let out = setField(ip, 0n, v.ip === true ? 1n : 0n);
  out = setField(sc, out, v.sc ?? 0);
  return setField(m.resultPasid, out, v.pasid ?? 0);
}

/** Range extension: the VCMD_REG and VCMD_EO_REG values of Allocate within [min, max]. */
export function encodeRangedAllocate(map: MapLike, min: number, max: number): { vcmd: bigint; vcmdEo: bigint } {
  const m = toMap(map);
  if (m.rangeMax === null) {
    throw new IoasidError('EINVAL', `the range extension needs layout B, not ${m.layout}`, { layout: m.layout });
  }
  return { vcmd: encodeVcmd(m, VCMD_CMD.ALLOCATE, min), vcmdEo: setField(m.rangeMax, 0n, max) };
}

/** Range extension: the [min, max] an Allocate carries (layout B). */
export function decodeRangedAllocate(map: MapLike, vcmd: bigint, vcmdEo: bigint): { min: number; max: number } {
  const m = toMap(map);
  if (m.rangeMax === null) {
    throw new IoasidError('EINVAL', `the range extension needs layout B, not ${m.layout}`, { layout: m.layout });
  }
  return { min: Number(getField(m.operandPasid, vcmd)), max: Number(getField(m.rangeMax, vcmdEo)) };
}

/** What a VCCAP value advertises, in a layout. With PAS at bit 0 (Linux), Free is implied by PAS. */
export interface VccapCapabilities {
  readonly nullCommand: boolean;
  readonly allocate: boolean;
  readonly free: boolean;
  readonly rangeExtension: boolean;
}

export function decodeVccap(map: MapLike, vccap: bigint): VccapCapabilities {
  const m = toMap(map);
  const f = decodeRegister(m, 'VCCAP_REG', vccap);
  const pas = f.PAS === 1n;
  return {
    nullCommand: f.NS === 1n,
    allocate: pas,
    free: m.pasBit === 1 ? f.FPS === 1n : pas,
    rangeExtension: f.RX === 1n,
  };
}

export function encodeVccap(map: MapLike, caps: Partial<VccapCapabilities>): bigint {
  const m = toMap(map);
  const fields: { PAS: Bit; NS?: Bit; FPS?: Bit; RX?: Bit } = { PAS: caps.allocate === true ? 1n : 0n };
  if (m.pasBit === 1) {
    fields.NS = caps.nullCommand === true ? 1n : 0n;
    fields.FPS = caps.free === true ? 1n : 0n;
  } else if (caps.nullCommand === true || (caps.free === true && caps.allocate !== true)) {
    throw new IoasidError('EINVAL', 'with PAS at bit 0 (Linux layout) VCCAP has no NS bit and Free is implied by PAS', { pasBit: 0, ...caps });
  }
  if (caps.rangeExtension === true) {
    if (m.layout !== 'B') throw new IoasidError('EINVAL', 'the range extension needs layout B', { layout: m.layout });
    fields.RX = 1n;
  }
  return encodeRegister(m, 'VCCAP_REG', fields);
}

/** `intel_pasid_max_id` contribution of one IOMMU: 2 << ECAP.PSS (an exclusive bound). */
export function pasidMaxFromEcap(ecap: bigint): number {
  const pss = Number(decodeRegister('A', 'ECAP_REG', ecap).PSS);
  return 2 ** (pss + 1);
}

export function commandName(cmd: number): string {
  switch (cmd) {
    case VCMD_CMD.NULL: return 'Null';
    case VCMD_CMD.ALLOCATE: return 'Allocate PASID';
    case VCMD_CMD.FREE: return 'Free PASID';
    default: return `reserved command ${cmd}`;
  }
}

/** Human name of a status code for a command in a layout (spec tables). */
export function statusName(map: MapLike, cmd: number, sc: number): string {
  const s = toMap(map).status;
  if (sc === s.SUCCESS) return 'success';
  if (sc === s.UNDEFINED_COMMAND) return 'undefined command';
  if (sc === s.NO_PASID && cmd === VCMD_CMD.ALLOCATE) return 'no PASID available';
  if (sc === s.INVALID_PASID && cmd === VCMD_CMD.FREE) return 'invalid PASID';
  return `unexpected status ${sc}`;
}

/** One line for logs and the dashboard: `VCRSP_REG=0x50020 IP=0 SC=16 RSLT=0x5`. */
export function describeRegister(map: MapLike, name: RegisterName, value: bigint): string {
  const spec = registerSpec(map, name);
  const parts = spec.fields.map((f) => {
    const v = getField(f, value);
    return `${f.name}=${v > 9n ? `0x${v.toString(16)}` : v.toString()}`;
  });
  return `${name}=0x${value.toString(16)} ${parts.join(' ')}`;
}
