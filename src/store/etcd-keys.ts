/**
 * The etcd key layout of one migration domain (docs/cluster.md), written once: every key the
 * cluster backend reads or writes is made and parsed here. All keys live under
 * `/ioasid/<domain>/`; values are JSON.
 *
 *   config                   { blockSize }                       created once, by the first host
 *   vms/<vm>                 VmRow + { host, state, n }          the VM and its IOASID set
 *   viommus/<vm>/<segment>   { layout, rangeExtension }
 *   devices/<vm>/<bdf>       { segment, pasidBits }
 *   pasids/<hex5>            { vm, at, n, host? }                one key per allocated PASID
 *   bindings/<hex5>/<bdf>    { vm, at }
 *   blocks/<hex5>            { host, n }                         a block of PASIDs claimed by a host
 *   hosts/<host>             { url, startedAt, pid, n }          bound to the host's lease (liveness)
 *   fences/<host>            { by, reason, at, n }               its mod revision is the host's fence
 *   meta/<key>               { value }
 *   sync/<host>              a barrier: written to learn a revision of the domain, read by no one
 *
 * The owner of a PASID is (VM key's host, PASID key's VM): a migration rewrites one VM key and the
 * VM's PASIDs, sets and bindings move with it. PASIDs and block starts are five hex digits, so
 * that the keys of one block are one contiguous key range (a range compare proves a block empty).
 * `n` is the nonce of the write that made the value: after an answer was lost, a host recognises
 * its own commit instead of retrying it.
 */
import { IoasidError, PASID_MAX } from '../core/index.ts';
import { VIOMMU_LAYOUTS, type BindingRow, type DeviceRow, type MetaRow, type PasidRow, type ViommuLayout, type ViommuRow, type VmRow } from './rows.ts';

/** Host ids and domain names: what a VM id may be (route pattern), so they are safe in keys. */
export const CLUSTER_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/** A VM's lifecycle in the domain: served by its host, or on its way out (not served). */
export const VM_STATES = ['active', 'destroying', 'reclaiming'] as const;
export type VmState = (typeof VM_STATES)[number];

/** Where a VM runs and in which state, with the VM key's mod revision (its ownership proof). */
export interface VmPlacement {
  readonly host: string;
  readonly state: VmState;
  /** The VM key's mod revision. */
  readonly mod: number;
  readonly nonce: string;
  readonly by?: string;
}

export interface VmRecord extends VmPlacement {
  readonly row: VmRow;
}

export interface PasidRecord {
  readonly row: PasidRow;
  /** Host of a host-owned PASID (vm null); null for VM-owned ones. */
  readonly host: string | null;
  readonly mod: number;
  readonly nonce: string;
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
  | { readonly kind: 'viommu'; readonly vm: string; readonly segment: number }
  | { readonly kind: 'device'; readonly vm: string; readonly bdf: string }
  | { readonly kind: 'pasid'; readonly pasid: number }
  | { readonly kind: 'binding'; readonly pasid: number; readonly bdf: string }
  | { readonly kind: 'block'; readonly start: number }
  | { readonly kind: 'host'; readonly host: string }
  | { readonly kind: 'fence'; readonly host: string }
  | { readonly kind: 'meta'; readonly key: string };

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
  viommu(vm: string, segment: number): string { return `${this.prefix}viommus/${vm}/${segment}`; }
  viommusOf(vm: string): string { return `${this.prefix}viommus/${vm}/`; }
  device(vm: string, bdf: string): string { return `${this.prefix}devices/${vm}/${bdf}`; }
  devicesOf(vm: string): string { return `${this.prefix}devices/${vm}/`; }
  pasid(p: number): string { return `${this.prefix}pasids/${hex5(p)}`; }
  get pasids(): string { return `${this.prefix}pasids/`; }
  binding(p: number, bdf: string): string { return `${this.prefix}bindings/${hex5(p)}/${bdf}`; }
  get bindings(): string { return `${this.prefix}bindings/`; }
  block(start: number): string { return `${this.prefix}blocks/${hex5(start)}`; }
  get blocks(): string { return `${this.prefix}blocks/`; }
  host(id: string): string { return `${this.prefix}hosts/${id}`; }
  get hosts(): string { return `${this.prefix}hosts/`; }
  fence(id: string): string { return `${this.prefix}fences/${id}`; }
  meta(key: string): string { return `${this.prefix}meta/${key}`; }

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
      case 'viommus': {
        const t = two();
        if (t === null || !/^[0-9]{1,5}$/.test(t[1])) return null;
        return { kind: 'viommu', vm: t[0], segment: Number(t[1]) };
      }
      case 'devices': {
        const t = two();
        return t === null ? null : { kind: 'device', vm: t[0], bdf: t[1] };
      }
      case 'pasids': return /^[0-9a-f]{5}$/.test(tail) ? { kind: 'pasid', pasid: parseInt(tail, 16) } : null;
      case 'bindings': {
        const t = two();
        if (t === null || !/^[0-9a-f]{5}$/.test(t[0])) return null;
        return { kind: 'binding', pasid: parseInt(t[0], 16), bdf: t[1] };
      }
      case 'blocks': return /^[0-9a-f]{5}$/.test(tail) ? { kind: 'block', start: parseInt(tail, 16) } : null;
      case 'hosts': return tail.length > 0 ? { kind: 'host', host: tail } : null;
      case 'fences': return tail.length > 0 ? { kind: 'fence', host: tail } : null;
      case 'meta': return tail.length > 0 ? { kind: 'meta', key: tail } : null;
      default: return null;
    }
  }
}

// ------------------------------------------------------------------ values

function obj(raw: string, key: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    throw new IoasidError('EINVAL', `etcd key ${key} does not hold JSON`, { key });
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new IoasidError('EINVAL', `etcd key ${key} does not hold a JSON object`, { key });
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

export function encodeVm(row: VmRow, p: { host: string; state: VmState; nonce: string; by?: string }): string {
  return JSON.stringify({ ...row, host: p.host, state: p.state, n: p.nonce, ...(p.by !== undefined ? { by: p.by } : {}) });
}

export function decodeVm(raw: string, key: string, mod: number): VmRecord {
  const o = obj(raw, key);
  const state = str(o, 'state', key);
  if (!(VM_STATES as readonly string[]).includes(state)) throw new IoasidError('EINVAL', `etcd key ${key}: unknown VM state ${JSON.stringify(state)}`, { key, state });
  const row: VmRow = { id: str(o, 'id', key), quota: int(o, 'quota', key), tokenHash: str(o, 'tokenHash', key), createdAt: int(o, 'createdAt', key) };
  const by = o.by;
  return { row, host: str(o, 'host', key), state: state as VmState, mod, nonce: optStr(o, 'n'), ...(typeof by === 'string' ? { by } : {}) };
}

export function encodeViommu(row: ViommuRow): string {
  return JSON.stringify({ layout: row.layout, rangeExtension: row.rangeExtension, pasBit: row.pasBit, pss: row.pss, registers: row.registers });
}

export function decodeViommu(raw: string, key: string, vm: string, segment: number): ViommuRow {
  const o = obj(raw, key);
  const layout = str(o, 'layout', key);
  if (!(VIOMMU_LAYOUTS as readonly string[]).includes(layout)) throw new IoasidError('EINVAL', `etcd key ${key}: unknown layout`, { key });
  return {
    vm, segment, layout: layout as ViommuLayout, rangeExtension: o.rangeExtension === true,
    pasBit: o.pasBit === 1 ? 1 : 0, pss: typeof o.pss === 'number' ? o.pss : 19, registers: typeof o.registers === 'string' ? o.registers : null,
  };
}

export function encodeDevice(row: DeviceRow): string {
  return JSON.stringify({ segment: row.segment, pasidBits: row.pasidBits });
}

export function decodeDevice(raw: string, key: string, vm: string, bdf: string): DeviceRow {
  const o = obj(raw, key);
  return { vm, bdf, segment: int(o, 'segment', key), pasidBits: int(o, 'pasidBits', key) };
}

export function encodePasid(row: PasidRow, nonce: string, host: string | null): string {
  return JSON.stringify({ vm: row.vm, at: row.allocatedAt, n: nonce, ...(row.vm === null && host !== null ? { host } : {}) });
}

export function decodePasid(raw: string, key: string, pasid: number, mod: number): PasidRecord {
  const o = obj(raw, key);
  const vm = o.vm === null ? null : str(o, 'vm', key);
  return { row: { pasid, vm, allocatedAt: int(o, 'at', key) }, host: vm === null ? optStr(o, 'host') || null : null, mod, nonce: optStr(o, 'n') };
}

export function encodeBinding(row: BindingRow): string {
  return JSON.stringify({ vm: row.vm, at: row.boundAt });
}

export function decodeBinding(raw: string, key: string, pasid: number, bdf: string): BindingRow {
  const o = obj(raw, key);
  return { pasid, bdf, vm: str(o, 'vm', key), boundAt: int(o, 'at', key) };
}

export function encodeBlock(host: string, nonce: string): string {
  return JSON.stringify({ host, n: nonce });
}

export function decodeBlock(raw: string, key: string, start: number, mod: number): BlockRecord {
  const o = obj(raw, key);
  return { block: start, host: str(o, 'host', key), mod, nonce: optStr(o, 'n') };
}

export function encodeHost(h: { url: string | null; startedAt: number; pid: number; nonce: string }): string {
  return JSON.stringify({ url: h.url, startedAt: h.startedAt, pid: h.pid, n: h.nonce });
}

export function decodeHost(raw: string, key: string, id: string, lease: string, mod: number): HostRecord {
  const o = obj(raw, key);
  return { id, url: typeof o.url === 'string' ? o.url : null, startedAt: int(o, 'startedAt', key), pid: int(o, 'pid', key), lease, mod, nonce: optStr(o, 'n') };
}

export function encodeFence(f: { by: string; reason: string; at: number; nonce: string }): string {
  return JSON.stringify({ by: f.by, reason: f.reason, at: f.at, n: f.nonce });
}

export function decodeFence(raw: string, key: string, host: string, mod: number): FenceRecord {
  const o = obj(raw, key);
  return { host, by: str(o, 'by', key), reason: str(o, 'reason', key), at: int(o, 'at', key), mod, nonce: optStr(o, 'n') };
}

export function encodeMeta(row: MetaRow): string {
  return JSON.stringify({ value: row.value });
}

export function decodeMeta(raw: string, key: string, k: string): MetaRow {
  return { key: k, value: str(obj(raw, key), 'value', key) };
}

export function encodeConfig(c: DomainConfig): string {
  return JSON.stringify({ blockSize: c.blockSize });
}

export function decodeConfig(raw: string, key: string): DomainConfig {
  const blockSize = int(obj(raw, key), 'blockSize', key);
  if (blockSize < 1 || blockSize > 4096 || (blockSize & (blockSize - 1)) !== 0) {
    throw new IoasidError('EINVAL', `etcd key ${key}: blockSize must be a power of two in [1, 4096], got ${blockSize}`, { key, blockSize });
  }
  return { blockSize };
}
