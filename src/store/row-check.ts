/**
 * Shape and range checks for rows and mutations: every value the store accepts or loads passes
 * through here, and comes out as a fresh frozen copy with exactly the known fields. A bad value
 * is an `EINVAL` whose details name where it was (`where`), the field and the value.
 */
import { IoasidError, VM_ID_SYNTAX, fmtId, isCanonicalBdf, isVmId } from '../core/index.ts';
import type { ErrorDetails } from '../core/index.ts';
import {
  MUTATION_OPS, RESERVED_META_PREFIX, STORE_LIMITS, TOKEN_HASH_PATTERN, VIOMMU_LAYOUTS,
  type BindingRow, type DeviceRow, type EventRow, type MetaRow, type Mutation, type MutationOp, type NewEventRow, type PasidRow,
  type ViommuLayout, type ViommuRow, type VmRow,
} from './rows.ts';

/** Where a value came from: a prefix for messages and the details every error carries. */
export interface Where {
  readonly label: string;
  readonly details: ErrorDetails;
}

const TOKEN_HASH_RE = new RegExp(TOKEN_HASH_PATTERN);

function bad(where: Where, field: string, value: unknown, expected: string): never {
  throw new IoasidError('EINVAL', `${where.label}: ${field} must be ${expected}, got ${fmtId(value)}`, {
    ...where.details, field, value: jsonSafe(value),
  });
}

/** Details must stay JSON-safe: bigints (from a tampered database) become strings. */
function jsonSafe(value: unknown): unknown {
  if (typeof value === 'bigint') return `${value}n`;
  if (value === undefined) return null;
  return value;
}

function record(x: unknown, where: Where, field: string, keys: readonly string[]): Record<string, unknown> {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) bad(where, field, x, 'an object');
  const rec = x as Record<string, unknown>;
  for (const k of Object.keys(rec)) {
    if (!keys.includes(k)) {
      throw new IoasidError('EINVAL', `${where.label}: unknown field ${JSON.stringify(k)} in ${field}`, {
        ...where.details, field: `${field}.${k}`,
      });
    }
  }
  return rec;
}

function int(x: unknown, lo: number, hi: number, where: Where, field: string): number {
  if (typeof x !== 'number' || !Number.isInteger(x) || x < lo || x > hi) {
    bad(where, field, x, `an integer in [${fmtId(lo)}, ${fmtId(hi)}]`);
  }
  return x;
}

function time(x: unknown, where: Where, field: string): number {
  return int(x, 0, Number.MAX_SAFE_INTEGER, where, field);
}

function str(x: unknown, where: Where, field: string): string {
  if (typeof x !== 'string') bad(where, field, x, 'a string');
  return x;
}

export function checkVmId(x: unknown, where: Where, field: string): string {
  if (!isVmId(x)) bad(where, field, x, `a VM id (${VM_ID_SYNTAX.description})`);
  return x;
}

export function checkPasid(x: unknown, where: Where, field: string): number {
  return int(x, STORE_LIMITS.pasidMin, STORE_LIMITS.pasidMax, where, field);
}

function segment(x: unknown, where: Where, field: string): number {
  return int(x, 0, STORE_LIMITS.segmentMax, where, field);
}

function bdf(x: unknown, where: Where, field: string): string {
  if (!isCanonicalBdf(x)) bad(where, field, x, 'a canonical BDF like "0000:00:02.0"');
  return x;
}

function tokenHash(x: unknown, where: Where, field: string): string {
  if (typeof x !== 'string' || !TOKEN_HASH_RE.test(x)) bad(where, field, x, 'a token hash (64 lowercase hex digits)');
  return x;
}

function text(x: unknown, max: number, where: Where, field: string): string {
  if (typeof x !== 'string' || x.length === 0 || x.length > max) bad(where, field, typeof x === 'string' ? `${x.slice(0, 40)}...` : x, `a string of 1-${max} characters`);
  return x;
}

/** JSON text of an object (a vIOMMU's registers, an event): parsed once to be sure. */
function jsonObject(x: unknown, max: number, where: Where, field: string): string {
  const t = text(x, max, where, field);
  let v: unknown;
  try {
    v = JSON.parse(t);
  } catch {
    bad(where, field, `${t.slice(0, 40)}...`, 'JSON text');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) bad(where, field, `${t.slice(0, 40)}...`, 'the JSON text of an object');
  return t;
}

function owner(x: unknown, where: Where, field: string): string | null {
  return x === null ? null : checkVmId(x, where, field);
}

function metaKey(x: unknown, where: Where, field: string, allowReserved: boolean): string {
  if (typeof x !== 'string' || x.length < 1 || x.length > STORE_LIMITS.metaKeyMaxLength) {
    bad(where, field, x, `a string of 1-${STORE_LIMITS.metaKeyMaxLength} characters`);
  }
  if (!allowReserved && x.startsWith(RESERVED_META_PREFIX)) {
    throw new IoasidError('EPERM', `${where.label}: meta key ${JSON.stringify(x)} is reserved for the store`, {
      ...where.details, field, value: x,
    });
  }
  return x;
}

function layout(x: unknown, where: Where, field: string): ViommuLayout {
  if (!(VIOMMU_LAYOUTS as readonly unknown[]).includes(x)) bad(where, field, x, `one of ${VIOMMU_LAYOUTS.join(', ')}`);
  return x as ViommuLayout;
}

function bool(x: unknown, where: Where, field: string): boolean {
  if (typeof x !== 'boolean') bad(where, field, x, 'a boolean');
  return x;
}

export function checkVmRow(x: unknown, where: Where, field = 'row'): VmRow {
  const r = record(x, where, field, ['id', 'quota', 'tokenHash', 'createdAt']);
  return Object.freeze({
    id: checkVmId(r['id'], where, `${field}.id`),
    quota: int(r['quota'], 0, STORE_LIMITS.pasidMax, where, `${field}.quota`),
    tokenHash: tokenHash(r['tokenHash'], where, `${field}.tokenHash`),
    createdAt: time(r['createdAt'], where, `${field}.createdAt`),
  });
}

export function checkViommuRow(x: unknown, where: Where, field = 'row'): ViommuRow {
  const r = record(x, where, field, ['vm', 'segment', 'layout', 'rangeExtension', 'pasBit', 'pss', 'registers']);
  return Object.freeze({
    vm: checkVmId(r['vm'], where, `${field}.vm`),
    segment: segment(r['segment'], where, `${field}.segment`),
    layout: layout(r['layout'], where, `${field}.layout`),
    rangeExtension: bool(r['rangeExtension'], where, `${field}.rangeExtension`),
    pasBit: int(r['pasBit'], 0, 1, where, `${field}.pasBit`),
    pss: int(r['pss'], 0, STORE_LIMITS.pasidBitsMax - 1, where, `${field}.pss`),
    registers: r['registers'] === null ? null : jsonObject(r['registers'], STORE_LIMITS.registersMaxLength, where, `${field}.registers`),
  });
}

function eventFields(r: Record<string, unknown>, where: Where, field: string, parse: boolean): NewEventRow {
  return {
    at: time(r['at'], where, `${field}.at`),
    type: text(r['type'], 64, where, `${field}.type`),
    vm: owner(r['vm'], where, `${field}.vm`),
    body: parse ? jsonObject(r['body'], STORE_LIMITS.eventMaxLength, where, `${field}.body`) : objectText(r['body'], STORE_LIMITS.eventMaxLength, where, `${field}.body`),
  };
}

/**
 * An event body as it is appended: the text of an object, checked by its braces only. Every
 * append would otherwise parse what the journal has just serialised; the full parse happens when a
 * state is loaded (`checkEventRow`), and SQLite's CHECK (json_valid) refuses bad JSON at once.
 */
function objectText(x: unknown, max: number, where: Where, field: string): string {
  const t = text(x, max, where, field);
  if (t.charCodeAt(0) !== 0x7b || t.charCodeAt(t.length - 1) !== 0x7d) bad(where, field, `${t.slice(0, 40)}...`, 'the JSON text of an object');
  return t;
}

export function checkNewEventRow(x: unknown, where: Where, field = 'event'): NewEventRow {
  const r = record(x, where, field, ['at', 'type', 'vm', 'body']);
  if (!('vm' in r)) bad(where, `${field}.vm`, undefined, 'a VM id or null');
  return Object.freeze(eventFields(r, where, field, false));
}

export function checkEventRow(x: unknown, where: Where, field = 'row'): EventRow {
  const r = record(x, where, field, ['seq', 'at', 'type', 'vm', 'body']);
  if (!('vm' in r)) bad(where, `${field}.vm`, undefined, 'a VM id or null');
  return Object.freeze({ seq: int(r['seq'], 1, Number.MAX_SAFE_INTEGER, where, `${field}.seq`), ...eventFields(r, where, field, true) });
}

export function checkDeviceRow(x: unknown, where: Where, field = 'row'): DeviceRow {
  const r = record(x, where, field, ['vm', 'bdf', 'segment', 'pasidBits']);
  return Object.freeze({
    vm: checkVmId(r['vm'], where, `${field}.vm`),
    bdf: bdf(r['bdf'], where, `${field}.bdf`),
    segment: segment(r['segment'], where, `${field}.segment`),
    pasidBits: int(r['pasidBits'], 1, STORE_LIMITS.pasidBitsMax, where, `${field}.pasidBits`),
  });
}

export function checkPasidRow(x: unknown, where: Where, field = 'row'): PasidRow {
  const r = record(x, where, field, ['pasid', 'vm', 'allocatedAt']);
  if (!('vm' in r)) bad(where, `${field}.vm`, undefined, 'a VM id or null (host-owned)');
  return Object.freeze({
    pasid: checkPasid(r['pasid'], where, `${field}.pasid`),
    vm: owner(r['vm'], where, `${field}.vm`),
    allocatedAt: time(r['allocatedAt'], where, `${field}.allocatedAt`),
  });
}

export function checkBindingRow(x: unknown, where: Where, field = 'row'): BindingRow {
  const r = record(x, where, field, ['pasid', 'vm', 'bdf', 'boundAt']);
  return Object.freeze({
    pasid: checkPasid(r['pasid'], where, `${field}.pasid`),
    vm: checkVmId(r['vm'], where, `${field}.vm`),
    bdf: bdf(r['bdf'], where, `${field}.bdf`),
    boundAt: time(r['boundAt'], where, `${field}.boundAt`),
  });
}

export function checkMetaRow(x: unknown, where: Where, field = 'row', allowReserved = false): MetaRow {
  const r = record(x, where, field, ['key', 'value']);
  return Object.freeze({
    key: metaKey(r['key'], where, `${field}.key`, allowReserved),
    value: str(r['value'], where, `${field}.value`),
  });
}

/** A mutation's place in its batch, for messages: the text is made only when an error needs it. */
class BatchPlace implements Where {
  readonly #index: number;
  readonly #op: MutationOp | null;
  constructor(index: number, op: MutationOp | null) {
    this.#index = index;
    this.#op = op;
  }
  get label(): string {
    return this.#op === null ? `batch[${this.#index}]` : `batch[${this.#index}] ${this.#op}`;
  }
  get details(): ErrorDetails {
    return this.#op === null ? { index: this.#index } : { index: this.#index, op: this.#op };
  }
}

/** The fields a mutation of each kind may have. */
const KEYS_ROW: readonly string[] = ['op', 'row'];
const KEYS_ID: readonly string[] = ['op', 'id'];
const KEYS_VM_TOKENHASH: readonly string[] = ['op', 'vm', 'tokenHash'];
const KEYS_VM_SEGMENT_REGISTERS: readonly string[] = ['op', 'vm', 'segment', 'registers'];
const KEYS_EVENTS: readonly string[] = ['op', 'events'];
const KEYS_VM_SEGMENT: readonly string[] = ['op', 'vm', 'segment'];
const KEYS_VM_BDF: readonly string[] = ['op', 'vm', 'bdf'];
const KEYS_PASID_VM: readonly string[] = ['op', 'pasid', 'vm'];
const KEYS_PASID_BDF: readonly string[] = ['op', 'pasid', 'bdf'];
const KEYS_KEY: readonly string[] = ['op', 'key'];
/** `events[i]` for the first events of a batch, made once. */
const EVENT_FIELDS: readonly string[] = Array.from({ length: 64 }, (_, i) => `events[${i}]`);

/** Validate one mutation and return a frozen copy. */
export function checkMutation(x: unknown, index: number): Mutation {
  const pre: Where = new BatchPlace(index, null);
  if (typeof x !== 'object' || x === null || Array.isArray(x)) bad(pre, 'mutation', x, 'an object');
  const op = (x as { op?: unknown }).op;
  if (typeof op !== 'string' || !(MUTATION_OPS as readonly string[]).includes(op)) {
    bad(pre, 'op', op, `one of ${MUTATION_OPS.join(', ')}`);
  }
  const o = op as MutationOp;
  const where: Where = new BatchPlace(index, o);
  switch (o) {
    case 'putVm': return Object.freeze({ op: o, row: checkVmRow(record(x, where, 'mutation', KEYS_ROW)['row'], where) });
    case 'putViommu': return Object.freeze({ op: o, row: checkViommuRow(record(x, where, 'mutation', KEYS_ROW)['row'], where) });
    case 'putDevice': return Object.freeze({ op: o, row: checkDeviceRow(record(x, where, 'mutation', KEYS_ROW)['row'], where) });
    case 'insertPasid': return Object.freeze({ op: o, row: checkPasidRow(record(x, where, 'mutation', KEYS_ROW)['row'], where) });
    case 'putBinding': return Object.freeze({ op: o, row: checkBindingRow(record(x, where, 'mutation', KEYS_ROW)['row'], where) });
    case 'putMeta': return Object.freeze({ op: o, row: checkMetaRow(record(x, where, 'mutation', KEYS_ROW)['row'], where) });
    case 'deleteVm': {
      const r = record(x, where, 'mutation', KEYS_ID);
      return Object.freeze({ op: o, id: checkVmId(r['id'], where, 'id') });
    }
    case 'setTokenHash': {
      const r = record(x, where, 'mutation', KEYS_VM_TOKENHASH);
      return Object.freeze({ op: o, vm: checkVmId(r['vm'], where, 'vm'), tokenHash: tokenHash(r['tokenHash'], where, 'tokenHash') });
    }
    case 'setRegisters': {
      const r = record(x, where, 'mutation', KEYS_VM_SEGMENT_REGISTERS);
      return Object.freeze({
        op: o, vm: checkVmId(r['vm'], where, 'vm'), segment: segment(r['segment'], where, 'segment'),
        registers: jsonObject(r['registers'], STORE_LIMITS.registersMaxLength, where, 'registers'),
      });
    }
    case 'appendEvents': {
      const r = record(x, where, 'mutation', KEYS_EVENTS);
      const events = r['events'];
      if (!Array.isArray(events) || events.length === 0) bad(where, 'events', events, 'a non-empty array of events');
      return Object.freeze({ op: o, events: Object.freeze(events.map((e, i) => checkNewEventRow(e, where, EVENT_FIELDS[i] ?? `events[${i}]`))) });
    }
    case 'deleteViommu': {
      const r = record(x, where, 'mutation', KEYS_VM_SEGMENT);
      return Object.freeze({ op: o, vm: checkVmId(r['vm'], where, 'vm'), segment: segment(r['segment'], where, 'segment') });
    }
    case 'deleteDevice': {
      const r = record(x, where, 'mutation', KEYS_VM_BDF);
      return Object.freeze({ op: o, vm: checkVmId(r['vm'], where, 'vm'), bdf: bdf(r['bdf'], where, 'bdf') });
    }
    case 'deletePasid': {
      const r = record(x, where, 'mutation', KEYS_PASID_VM);
      if (!('vm' in r)) bad(where, 'vm', undefined, 'a VM id or null (host-owned)');
      return Object.freeze({ op: o, pasid: checkPasid(r['pasid'], where, 'pasid'), vm: owner(r['vm'], where, 'vm') });
    }
    case 'deleteBinding': {
      const r = record(x, where, 'mutation', KEYS_PASID_BDF);
      return Object.freeze({ op: o, pasid: checkPasid(r['pasid'], where, 'pasid'), bdf: bdf(r['bdf'], where, 'bdf') });
    }
    case 'deleteMeta': {
      const r = record(x, where, 'mutation', KEYS_KEY);
      return Object.freeze({ op: o, key: metaKey(r['key'], where, 'key', false) });
    }
  }
}

/** Validate a whole batch up front (before it joins a commit) and return frozen copies. */
export function checkBatch(batch: unknown): readonly Mutation[] {
  if (!Array.isArray(batch)) {
    throw new IoasidError('EINVAL', `batch must be an array of mutations, got ${fmtId(batch)}`, { field: 'batch' });
  }
  return Object.freeze(Array.from(batch as unknown[], (m, i) => checkMutation(m, i)));
}
