/**
 * The etcd key layout of one migration domain (docs/cluster.md), written once: every key the
 * cluster backend reads or writes is made and parsed here, and every value encoded and decoded.
 * All keys live under `/ioasid/<domain>/`; values are JSON.
 *
 *   config                   { blockSize }                       created once, by the first host
 *   vms/<vm>                 VmRow + { host, state, n }          the VM (its IOASID set) and where it runs
 *   tokens/<hash>            { vm, n }                           a VM token hash: unique in the domain
 *   viommus/<vm>/<segment>   { layout, rangeExtension, pasBit, pss, registers }
 *   devices/<vm>/<bdf>       { segment, pasidBits }
 *   pasids/<hex5>            { vm, at, n, host? }                one key per allocated PASID
 *   bindings/<hex5>/<bdf>    { vm, at }
 *   meta/<key>               { value }
 *   log/<name>               the journal record of one transaction: its changes' events, with
 *                            the credentials and registers that go with them (never a row)
 *   pending/<vm>             a destroy too big for one transaction: its journal part, until done
 *   blocks/<hex5>            { host, n }                         a block of PASIDs claimed by a host
 *   hosts/<host>             { url, startedAt, pid, n }          bound to the host's lease (liveness)
 *   fences/<host>            { by, reason, at, n }               its mod revision is the host's fence
 *   sync/<host>              a barrier: written to learn a revision of the domain, read by no one
 *
 * The owner of a PASID is (VM key's host, PASID key's VM): a migration rewrites one VM key and the
 * VM's PASIDs, sets and bindings move with it. PASIDs and block starts are five hex digits, so
 * that the keys of one block are one contiguous key range (a range compare proves a block empty).
 * `n` is the nonce of the write that made the value: after an answer was lost, a host recognises
 * its own commit instead of retrying it.
 *
 * Event numbers (docs/cluster.md, "Events"): the events of the transaction committed at etcd
 * revision R are numbered R * SEQ_PER_REVISION + i, i their index in the transaction's journal
 * record, so every host gives every event the same number and numbers only grow.
 */
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { IoasidError, PASID_MAX } from '../core/index.ts';
import type { EventRow, NewEventRow } from './rows.ts';

/** Host ids and domain names: what a VM id may be (route pattern), so they are safe in keys. */
export const CLUSTER_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/** A VM's lifecycle in the domain: served by its host, or being destroyed (served by nobody). */
export const VM_STATES = ['active', 'destroying'] as const;
export type VmState = (typeof VM_STATES)[number];

/** Events one transaction may carry: the span of sequence numbers of one etcd revision. */
export const SEQ_PER_REVISION = 4096;

/** Where a VM runs and in which state, with the VM key's mod revision (its ownership proof). */
export interface VmPlacement {
  readonly host: string;
  readonly state: VmState;
}

export interface VmRecord extends VmPlacement {
  readonly id: string;
  /** The VM key's mod revision (0 while its creation is not committed yet). */
  readonly mod: number;
}

export interface BlockRecord {
  readonly block: number;
  readonly host: string;
  readonly mod: number;
  readonly nonce: string;
}

export interface HostRecord {
  readonly id: string;
  readonly url: string | null;
  readonly startedAt: number;
  readonly pid: number;
  readonly lease: string;
  readonly mod: number;
  readonly nonce: string;
}

export interface FenceRecord {
  readonly host: string;
  readonly by: string;
  readonly reason: string;
  readonly at: number;
  readonly mod: number;
  readonly nonce: string;
}

export interface DomainConfig {
  readonly blockSize: number;
}

/** A key of the domain, parsed. */
export type ParsedKey =
  | { readonly kind: 'config' }
  | { readonly kind: 'vm'; readonly vm: string }
  | { readonly kind: 'token'; readonly hash: string }
  | { readonly kind: 'viommu'; readonly vm: string; readonly segment: number }
  | { readonly kind: 'device'; readonly vm: string; readonly bdf: string }
  | { readonly kind: 'pasid'; readonly pasid: number }
  | { readonly kind: 'binding'; readonly pasid: number; readonly bdf: string }
  | { readonly kind: 'meta'; readonly key: string }
  | { readonly kind: 'log'; readonly name: string }
  | { readonly kind: 'pending'; readonly vm: string }
  | { readonly kind: 'block'; readonly start: number }
  | { readonly kind: 'host'; readonly host: string }
  | { readonly kind: 'fence'; readonly host: string };

export type KeyKind = ParsedKey['kind'];

export function hex5(n: number): string {
  return n.toString(16).padStart(5, '0');
}

/** The end of a prefix range: the prefix with its last byte incremented (etcd's "prefix end"). */
export function prefixEnd(prefix: string): string {
  return prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1);
}

export function checkClusterName(what: string, name: unknown): string {
  if (typeof name !== 'string' || !CLUSTER_NAME_RE.test(name)) {
    throw new IoasidError('EINVAL', `${what} must be 1-63 letters, digits, '.', '_' or '-' (starting with a letter or digit), got ${JSON.stringify(name)}`, { [what.replace(/\s+/g, '')]: String(name) });
  }
  return name;
}

/** The keys of one domain. */
export class DomainKeys {
  readonly domain: string;
  readonly prefix: string;

  constructor(domain: string) {
    this.domain = checkClusterName('domain', domain);
    this.prefix = `/ioasid/${domain}/`;
  }

  get config(): string { return `${this.prefix}config`; }
  vm(id: string): string { return `${this.prefix}vms/${id}`; }
  get vms(): string { return `${this.prefix}vms/`; }
  token(hash: string): string { return `${this.prefix}tokens/${hash}`; }
  viommu(vm: string, segment: number): string { return `${this.prefix}viommus/${vm}/${segment}`; }
  viommusOf(vm: string): string { return `${this.prefix}viommus/${vm}/`; }
  device(vm: string, bdf: string): string { return `${this.prefix}devices/${vm}/${bdf}`; }
  devicesOf(vm: string): string { return `${this.prefix}devices/${vm}/`; }
  pasid(p: number): string { return `${this.prefix}pasids/${hex5(p)}`; }
  get pasids(): string { return `${this.prefix}pasids/`; }
  binding(p: number, bdf: string): string { return `${this.prefix}bindings/${hex5(p)}/${bdf}`; }
  get bindings(): string { return `${this.prefix}bindings/`; }
  meta(key: string): string { return `${this.prefix}meta/${key}`; }
  log(name: string): string { return `${this.prefix}log/${name}`; }
  get logs(): string { return `${this.prefix}log/`; }
  pending(vm: string): string { return `${this.prefix}pending/${vm}`; }
  block(start: number): string { return `${this.prefix}blocks/${hex5(start)}`; }
  get blocks(): string { return `${this.prefix}blocks/`; }
  host(id: string): string { return `${this.prefix}hosts/${id}`; }
  get hosts(): string { return `${this.prefix}hosts/`; }
  fence(id: string): string { return `${this.prefix}fences/${id}`; }
  sync(id: string): string { return `${this.prefix}sync/${id}`; }

  /** [first, end) of the PASID keys of [start, start + size): one contiguous range. */
  pasidRange(start: number, size: number): { key: string; end: string } {
    const last = Math.min(start + size, PASID_MAX + 1);
    return { key: this.pasid(start), end: last > PASID_MAX ? prefixEnd(this.pasids) : this.pasid(last) };
  }

  /** Parse a key of this domain; null for a key that is not ours or not understood. */
  parse(key: string): ParsedKey | null {
    if (!key.startsWith(this.prefix)) return null;
    const rest = key.slice(this.prefix.length);
    if (rest === 'config') return { kind: 'config' };
    const slash = rest.indexOf('/');
    if (slash < 0) return null;
    const kind = rest.slice(0, slash);
    const tail = rest.slice(slash + 1);
    const two = (): [string, string] | null => {
      const i = tail.indexOf('/');
      return i < 0 ? null : [tail.slice(0, i), tail.slice(i + 1)];
    };
    switch (kind) {
      case 'vms': return tail.length > 0 ? { kind: 'vm', vm: tail } : null;
      case 'tokens': return tail.length > 0 ? { kind: 'token', hash: tail } : null;
      case 'viommus': {
        const t = two();
        if (t === null || !/^[0-9]{1,6}$/.test(t[1])) return null;
        return { kind: 'viommu', vm: t[0], segment: Number(t[1]) };
      }
      case 'devices': {
        const t = two();
        return t === null ? null : { kind: 'device', vm: t[0], bdf: t[1] };
      }
      case 'pasids': return /^[0-9a-f]{5,6}$/.test(tail) ? { kind: 'pasid', pasid: parseInt(tail, 16) } : null;
      case 'bindings': {
        const t = two();
        if (t === null || !/^[0-9a-f]{5,6}$/.test(t[0])) return null;
        return { kind: 'binding', pasid: parseInt(t[0], 16), bdf: t[1] };
      }
      case 'meta': return tail.length > 0 ? { kind: 'meta', key: tail } : null;
      case 'log': return tail.length > 0 ? { kind: 'log', name: tail } : null;
      case 'pending': return tail.length > 0 ? { kind: 'pending', vm: tail } : null;
      case 'blocks': return /^[0-9a-f]{5}$/.test(tail) ? { kind: 'block', start: parseInt(tail, 16) } : null;
      case 'hosts': return tail.length > 0 ? { kind: 'host', host: tail } : null;
      case 'fences': return tail.length > 0 ? { kind: 'fence', host: tail } : null;
      default: return null;
    }
  }
}

// ------------------------------------------------------------------ values

/**
 * A value as a JSON object, or EINVAL naming the key (and the table, for the rows a stored state
 * is made of, so that a refused start says which table is wrong).
 */
export function jsonObject(raw: string, key: string, table?: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    throw new IoasidError('EINVAL', `etcd key ${key} does not hold JSON`, { key, ...(table !== undefined ? { table } : {}) });
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new IoasidError('EINVAL', `etcd key ${key} does not hold a JSON object`, { key, ...(table !== undefined ? { table } : {}) });
  }
  return v as Record<string, unknown>;
}

function str(o: Record<string, unknown>, f: string, key: string): string {
  const v = o[f];
  if (typeof v !== 'string') throw new IoasidError('EINVAL', `etcd key ${key}: ${f} must be a string`, { key, field: f });
  return v;
}

function int(o: Record<string, unknown>, f: string, key: string): number {
  const v = o[f];
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new IoasidError('EINVAL', `etcd key ${key}: ${f} must be an integer`, { key, field: f });
  return v;
}

function optStr(o: Record<string, unknown>, f: string): string {
  const v = o[f];
  return typeof v === 'string' ? v : '';
}

/*
 * Rows. Decoding takes the fields as they are (a key's own parts, such as the VM id of vms/<vm>,
 * from the key): the row checks of row-check.ts judge them, at load (validateStoredState) and for
 * every change another host made, so an etcd value and an SQLite row are held to the same rules.
 */

export function encodeVm(row: { id: string; quota: number; tokenHash: string; createdAt: number }, p: VmPlacement, nonce: string): string {
  return JSON.stringify({ id: row.id, quota: row.quota, tokenHash: row.tokenHash, createdAt: row.createdAt, host: p.host, state: p.state, n: nonce });
}

/** A VM key: its row (fields as stored) and its placement. */
export function decodeVm(raw: string, key: string, id: string): { row: Record<string, unknown>; placement: VmPlacement } {
  const o = jsonObject(raw, key, 'vms');
  const host = o.host;
  const state = o.state;
  if (typeof host !== 'string' || !(VM_STATES as readonly unknown[]).includes(state)) {
    throw new IoasidError('EINVAL', `etcd key ${key}: a VM needs a host and a state (${VM_STATES.join(' or ')})`, { key, table: 'vms', host: String(host), state: String(state) });
  }
  return { row: { id, quota: o.quota, tokenHash: o.tokenHash, createdAt: o.createdAt }, placement: { host, state: state as VmState } };
}

export function encodeToken(vm: string, nonce: string): string {
  return JSON.stringify({ vm, n: nonce });
}

export function encodeViommu(row: { layout: string; rangeExtension: boolean; pasBit: number; pss: number; registers: string | null }): string {
  return JSON.stringify({ layout: row.layout, rangeExtension: row.rangeExtension, pasBit: row.pasBit, pss: row.pss, registers: row.registers });
}

export function decodeViommu(raw: string, key: string, vm: string, segment: number): Record<string, unknown> {
  const o = jsonObject(raw, key, 'viommus');
  return { vm, segment, layout: o.layout, rangeExtension: o.rangeExtension, pasBit: o.pasBit, pss: o.pss, registers: o.registers };
}

export function encodeDevice(row: { segment: number; pasidBits: number }): string {
  return JSON.stringify({ segment: row.segment, pasidBits: row.pasidBits });
}

export function decodeDevice(raw: string, key: string, vm: string, bdf: string): Record<string, unknown> {
  const o = jsonObject(raw, key, 'devices');
  return { vm, bdf, segment: o.segment, pasidBits: o.pasidBits };
}

export function encodePasid(row: { vm: string | null; allocatedAt: number }, nonce: string, host: string | null): string {
  return JSON.stringify({ vm: row.vm, at: row.allocatedAt, n: nonce, ...(row.vm === null && host !== null ? { host } : {}) });
}

/** A PASID key: its row, and the host of a host-owned PASID (vm null). */
export function decodePasid(raw: string, key: string, pasid: number): { row: Record<string, unknown>; host: string | null } {
  const o = jsonObject(raw, key, 'pasids');
  return { row: { pasid, vm: o.vm, allocatedAt: o.at }, host: o.vm === null ? optStr(o, 'host') || null : null };
}

export function encodeBinding(row: { vm: string; boundAt: number }): string {
  return JSON.stringify({ vm: row.vm, at: row.boundAt });
}

export function decodeBinding(raw: string, key: string, pasid: number, bdf: string): Record<string, unknown> {
  const o = jsonObject(raw, key, 'bindings');
  return { pasid, vm: o.vm, bdf, boundAt: o.at };
}

export function encodeMeta(value: string): string {
  return JSON.stringify({ value });
}

export function decodeMeta(raw: string, key: string, k: string): Record<string, unknown> {
  return { key: k, value: jsonObject(raw, key, 'meta').value };
}

// ------------------------------------------------------------------ cluster records

export function encodeBlock(host: string, nonce: string): string {
  return JSON.stringify({ host, n: nonce });
}

export function decodeBlock(raw: string, key: string, start: number, mod: number): BlockRecord {
  const o = jsonObject(raw, key);
  return { block: start, host: str(o, 'host', key), mod, nonce: optStr(o, 'n') };
}

export function encodeHost(h: { url: string | null; startedAt: number; pid: number; nonce: string }): string {
  return JSON.stringify({ url: h.url, startedAt: h.startedAt, pid: h.pid, n: h.nonce });
}

export function decodeHost(raw: string, key: string, id: string, lease: string, mod: number): HostRecord {
  const o = jsonObject(raw, key);
  return { id, url: typeof o.url === 'string' ? o.url : null, startedAt: int(o, 'startedAt', key), pid: int(o, 'pid', key), lease, mod, nonce: optStr(o, 'n') };
}

export function encodeFence(f: { by: string; reason: string; at: number; nonce: string }): string {
  return JSON.stringify({ by: f.by, reason: f.reason, at: f.at, n: f.nonce });
}

export function decodeFence(raw: string, key: string, host: string, mod: number): FenceRecord {
  const o = jsonObject(raw, key);
  return { host, by: str(o, 'by', key), reason: str(o, 'reason', key), at: int(o, 'at', key), mod, nonce: optStr(o, 'n') };
}

export function encodeConfig(c: DomainConfig): string {
  return JSON.stringify({ blockSize: c.blockSize });
}

export function decodeConfig(raw: string, key: string): DomainConfig {
  const blockSize = int(jsonObject(raw, key), 'blockSize', key);
  if (blockSize < 1 || blockSize > 4096 || (blockSize & (blockSize - 1)) !== 0) {
    throw new IoasidError('EINVAL', `etcd key ${key}: blockSize must be a power of two in [1, 4096], got ${blockSize}`, { key, blockSize });
  }
  return { blockSize };
}

// ------------------------------------------------------------------ the journal record

/**
 * One change's part of a journal record: its events (numbered when read, from the record's
 * revision), and what goes with them but is not an event: the VM credentials (token hashes) it
 * set and the vIOMMU registers it committed. Another host applies exactly this.
 */
export interface LogPart {
  /** Nonce of the change (the host that made it recognises its own). */
  readonly n: string;
  readonly at: number;
  readonly events: readonly NewEventRow[];
  readonly credentials?: readonly { readonly vm: string; readonly tokenHash: string }[];
  readonly registers?: readonly { readonly vm: string; readonly segment: number; readonly registers: string }[];
}

/** A record's value above this many characters is stored deflated (`z:` + base64). */
const DEFLATE_ABOVE = 32 * 1024;

/** The value of `log/<name>`: the parts (each already JSON) of one transaction, in order. */
export function encodeLogRecord(host: string, parts: readonly string[]): string {
  const json = `{"v":1,"host":${JSON.stringify(host)},"parts":[${parts.join(',')}]}`;
  return json.length > DEFLATE_ABOVE ? `z:${deflateRawSync(json).toString('base64')}` : json;
}

/** A journal record as stored (parts as they are; events are checked where they are used). */
export function decodeLogRecord(raw: string, key: string): { host: string; parts: LogPart[] } {
  let text = raw;
  if (raw.startsWith('z:')) {
    try {
      text = inflateRawSync(Buffer.from(raw.slice(2), 'base64')).toString();
    } catch {
      throw new IoasidError('EINVAL', `etcd key ${key}: a deflated journal record that does not inflate`, { key, table: 'events' });
    }
  }
  const o = jsonObject(text, key, 'events');
  if (!Array.isArray(o.parts)) throw new IoasidError('EINVAL', `etcd key ${key}: a journal record needs parts`, { key, table: 'events' });
  const parts = o.parts.map((p: unknown, i: number) => {
    if (typeof p !== 'object' || p === null || !Array.isArray((p as { events?: unknown }).events)) {
      throw new IoasidError('EINVAL', `etcd key ${key}: part ${i} of a journal record needs events`, { key, table: 'events' });
    }
    return p as LogPart;
  });
  return { host: typeof o.host === 'string' ? o.host : '', parts };
}

/** A part's events as rows, numbered from `seq` (fields as stored: the caller checks them). */
export function numberedEvents(part: LogPart, seq: number): EventRow[] {
  return part.events.map((e, i) => ({ seq: seq + i, at: e.at, type: e.type, vm: e.vm, body: e.body }) as EventRow);
}
