/**
 * The serialisable state of an `IoasidSpace` and its validating parser. A snapshot may come from
 * disk or the network: the parser trusts nothing, names the first bad field, and never throws
 * anything but an IoasidError.
 */
import { IoasidError, fmtId } from './errors.ts';
import type { Profile } from './profiles.ts';
import type { AllocPolicy } from './id-engine.ts';

export interface SetSnapshot {
  readonly slot: number;
  readonly name: string;
  readonly quota: number;
  readonly token?: string;
}

export interface TableSnapshot {
  /** 'default', or the index of the custom group in registration order. */
  readonly allocator: 'default' | number;
  /** [id, set slot (-1 = no set), reference count]. */
  readonly records: readonly (readonly [number, number, number])[];
}

export interface SpaceSnapshot {
  readonly format: 'ioasid-space';
  readonly version: 1;
  readonly profile: Profile;
  readonly bits: number;
  readonly policy: AllocPolicy;
  readonly quarantine: boolean;
  readonly active: 'default' | number;
  readonly cursor?: number;
  readonly sets: readonly SetSnapshot[];
  readonly tables: readonly TableSnapshot[];
  readonly quarantined: readonly number[];
  /** Linux: the default allocator's slot 0xFFFFFFFF holds the entry an allocation left there. */
  readonly danglingInvalid?: true;
}

export interface SnapshotExpectations {
  readonly profile: Profile;
  readonly bits: number;
  readonly policy: AllocPolicy;
  readonly quarantine: boolean;
  readonly groups: number;
  readonly min: number;
  readonly max: number;
  readonly quotas: boolean;
  /** The space can have a dangling slot 0xFFFFFFFF (Linux profiles with a 32-bit universe). */
  readonly danglingInvalid: boolean;
}

const MAX_NAME = 256;

function bad(path: string, why: string, value?: unknown): never {
  const shown = value === undefined ? '' : `: got ${fmtId(typeof value === 'object' && value !== null ? (Array.isArray(value) ? 'array' : 'object') : value)}`;
  throw new IoasidError('EINVAL', `invalid snapshot: ${path} ${why}${shown}`, { path });
}

function isObj(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function int(x: unknown, path: string, lo: number, hi: number): number {
  if (typeof x !== 'number' || !Number.isInteger(x) || x < lo || x > hi) bad(path, `must be an integer in [${lo}, ${hi}]`, x);
  return x;
}

function onlyKeys(o: Record<string, unknown>, path: string, keys: readonly string[]): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) bad(`${path}.${k}`, 'is not a known field');
}

/** Validate an untrusted snapshot against the space it is restored into. */
export function parseSnapshot(x: unknown, want: SnapshotExpectations): SpaceSnapshot {
  if (!isObj(x)) bad('snapshot', 'must be an object', x);
  onlyKeys(x, 'snapshot', ['format', 'version', 'profile', 'bits', 'policy', 'quarantine', 'active', 'cursor', 'sets', 'tables', 'quarantined', 'danglingInvalid']);
  if (x.danglingInvalid !== undefined) {
    if (x.danglingInvalid !== true) bad('danglingInvalid', 'must be true when present', x.danglingInvalid);
    if (!want.danglingInvalid) bad('danglingInvalid', 'exists only in a Linux profile with a 32-bit universe');
  }
  if (x.format !== 'ioasid-space') bad('format', 'must be "ioasid-space"', x.format);
  if (x.version !== 1) bad('version', 'must be 1', x.version);
  if (x.profile !== want.profile) bad('profile', `must be ${want.profile} (the space's profile)`, x.profile);
  if (x.bits !== want.bits) bad('bits', `must be ${want.bits} (the space's width)`, x.bits);
  if (x.policy !== want.policy) bad('policy', `must be ${want.policy}`, x.policy);
  if (x.quarantine !== want.quarantine) bad('quarantine', `must be ${want.quarantine}`, x.quarantine);
  const active = x.active === 'default' ? 'default' : int(x.active, 'active', 0, Math.max(0, want.groups - 1));
  if (active !== 'default' && want.groups === 0) bad('active', 'names a custom allocator but none is registered', x.active);
  // min - 1 (possibly -1) is the cursor of an engine that never allocated cyclically.
  const cursor = x.cursor === undefined ? undefined : int(x.cursor, 'cursor', want.min - 1, want.max);

  if (!Array.isArray(x.sets)) bad('sets', 'must be an array', x.sets);
  const sets: SetSnapshot[] = [];
  const slots = new Map<number, SetSnapshot>();
  const tokens = new Set<string>();
  x.sets.forEach((s: unknown, i: number) => {
    const p = `sets[${i}]`;
    if (!isObj(s)) bad(p, 'must be an object', s);
    onlyKeys(s, p, ['slot', 'name', 'quota', 'token']);
    const slot = int(s.slot, `${p}.slot`, 0, 0xffffff);
    if (slots.has(slot)) bad(`${p}.slot`, 'is used twice', slot);
    if (typeof s.name !== 'string' || s.name.length === 0 || s.name.length > MAX_NAME) bad(`${p}.name`, `must be a string of 1 to ${MAX_NAME} characters`, s.name);
    const quota = int(s.quota, `${p}.quota`, 0, want.max - want.min + 1);
    let token: string | undefined;
    if (s.token !== undefined) {
      if (typeof s.token !== 'string' || s.token.length === 0 || s.token.length > MAX_NAME) bad(`${p}.token`, 'must be a non-empty string', s.token);
      if (tokens.has(s.token)) bad(`${p}.token`, 'is used twice', s.token);
      tokens.add(s.token);
      token = s.token;
    }
    const set: SetSnapshot = token === undefined ? { slot, name: s.name, quota } : { slot, name: s.name, quota, token };
    slots.set(slot, set);
    sets.push(set);
  });

  if (!Array.isArray(x.tables)) bad('tables', 'must be an array', x.tables);
  if (x.tables.length !== want.groups + 1) bad('tables', `must hold ${want.groups + 1} tables (default + registered custom groups)`, x.tables.length);
  const seenTables = new Set<string | number>();
  const defaultIds = new Set<number>();
  const tables: TableSnapshot[] = x.tables.map((t: unknown, i: number) => {
    const p = `tables[${i}]`;
    if (!isObj(t)) bad(p, 'must be an object', t);
    onlyKeys(t, p, ['allocator', 'records']);
    const allocator = t.allocator === 'default' ? 'default' : int(t.allocator, `${p}.allocator`, 0, want.groups - 1);
    if (seenTables.has(allocator)) bad(`${p}.allocator`, 'appears twice', allocator);
    seenTables.add(allocator);
    if (!Array.isArray(t.records)) bad(`${p}.records`, 'must be an array', t.records);
    const ids = new Set<number>();
    const counts = new Map<number, number>();
    const lo = allocator === 'default' ? want.min : 0;
    const hi = allocator === 'default' ? want.max : 0xfffffffe;
    const records = t.records.map((r: unknown, j: number) => {
      const q = `${p}.records[${j}]`;
      if (!Array.isArray(r) || r.length !== 3) bad(q, 'must be [id, setSlot, refs]', r);
      const id = int(r[0], `${q}[0]`, lo, hi);
      if (ids.has(id)) bad(`${q}[0]`, 'is allocated twice', id);
      ids.add(id);
      const slot = int(r[1], `${q}[1]`, -1, 0xffffff);
      if (slot >= 0 && !slots.has(slot)) bad(`${q}[1]`, 'names no set', slot);
      const refs = int(r[2], `${q}[2]`, 1, 0x7fffffff);
      if (slot >= 0) counts.set(slot, (counts.get(slot) ?? 0) + 1);
      return [id, slot, refs] as const;
    });
    if (want.quotas) {
      for (const [slot, n] of counts) {
        const s = slots.get(slot) as SetSnapshot;
        if (s.quota > 0 && n > s.quota) bad(`${p}.records`, `give set ${s.name} ${n} IDs, over its quota of ${s.quota}`);
      }
    }
    if (allocator === 'default') for (const id of ids) defaultIds.add(id);
    return { allocator, records };
  });
  if (!seenTables.has('default')) bad('tables', 'lack the default table');

  if (!Array.isArray(x.quarantined)) bad('quarantined', 'must be an array', x.quarantined);
  if (!want.quarantine && x.quarantined.length > 0) bad('quarantined', 'must be empty when quarantine is off');
  const q = new Set<number>();
  const quarantined = x.quarantined.map((v: unknown, i: number) => {
    const id = int(v, `quarantined[${i}]`, want.min, want.max);
    if (q.has(id) || defaultIds.has(id)) bad(`quarantined[${i}]`, 'is also allocated or listed twice', id);
    q.add(id);
    return id;
  });

  const snap: SpaceSnapshot = {
    format: 'ioasid-space', version: 1, profile: want.profile, bits: want.bits, policy: want.policy,
    quarantine: want.quarantine, active, sets, tables, quarantined,
    ...(cursor === undefined ? {} : { cursor }),
    ...(x.danglingInvalid === true ? { danglingInvalid: true as const } : {}),
  };
  return snap;
}
