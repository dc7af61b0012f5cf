/**
 * Validation of a whole stored state, run by every backend at `open()` before anything is handed
 * to the service. It checks exactly the rules `apply` enforces (mutation-rules.ts), so whatever
 * `apply` accepted, `open` accepts, and a tampered or corrupt state is refused with `EINVAL`
 * (details: `table`, `row` index, `key`, `reason`) instead of handing a PASID out twice.
 *
 * Rules (integrity only: the domain rules, quotas among them, are checked again by the host model
 * when the service rebuilds it from these rows):
 *  1. every row is well-typed and in range (row-check.ts); no unknown fields or tables;
 *  2. keys are unique: vm id, (vm, segment), (vm, bdf), pasid, (pasid, bdf), meta key, event seq;
 *  3. a vIOMMU's and a device's VM exists; a device's segment has a vIOMMU in its VM;
 *  4. a PASID is host-owned (vm null) or owned by an existing VM;
 *  5. token hashes are unique among VMs (one token must never act as two VMs);
 *  6. a binding's PASID exists and is owned by the binding's VM; its device exists in that VM;
 *  7. no meta key is reserved (`store.*`: those belong to the backend and are not in the state);
 *  8. events are in ascending `seq`, none above `lastSeq`.
 */
import { IoasidError, fmtId } from '../core/index.ts';
import {
  checkBindingRow, checkDeviceRow, checkEventRow, checkMetaRow, checkPasidRow, checkViommuRow, checkVmRow, type Where,
} from './row-check.ts';
import {
  RESERVED_META_PREFIX, STORE_TABLES,
  type BindingRow, type DeviceRow, type EventRow, type MetaRow, type PasidRow, type StoreTable, type StoredState,
  type ViommuRow, type VmRow,
} from './rows.ts';

/** Key of a (vm, x) pair in maps; VM ids are printable ASCII, so NUL cannot occur in them. */
export function pairKey(vm: string, x: string | number): string {
  return `${vm}\u0000${x}`;
}

function cmpStr(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

const ORDER = {
  vms: (a: VmRow, b: VmRow) => cmpStr(a.id, b.id),
  viommus: (a: ViommuRow, b: ViommuRow) => cmpStr(a.vm, b.vm) || a.segment - b.segment,
  devices: (a: DeviceRow, b: DeviceRow) => cmpStr(a.vm, b.vm) || cmpStr(a.bdf, b.bdf),
  pasids: (a: PasidRow, b: PasidRow) => a.pasid - b.pasid,
  bindings: (a: BindingRow, b: BindingRow) => a.pasid - b.pasid || cmpStr(a.bdf, b.bdf),
  meta: (a: MetaRow, b: MetaRow) => cmpStr(a.key, b.key),
  events: (a: EventRow, b: EventRow) => a.seq - b.seq,
} as const;

/** Put rows in canonical order (see `StoredState`), freezing the arrays. */
export function sortState(s: StoredState): StoredState {
  return Object.freeze({
    vms: Object.freeze([...s.vms].sort(ORDER.vms)),
    viommus: Object.freeze([...s.viommus].sort(ORDER.viommus)),
    devices: Object.freeze([...s.devices].sort(ORDER.devices)),
    pasids: Object.freeze([...s.pasids].sort(ORDER.pasids)),
    bindings: Object.freeze([...s.bindings].sort(ORDER.bindings)),
    meta: Object.freeze([...s.meta].sort(ORDER.meta)),
    events: Object.freeze([...s.events].sort(ORDER.events)),
    lastSeq: s.lastSeq,
  });
}

function refuse(table: StoreTable, row: number, key: Record<string, unknown>, reason: string): never {
  const k = Object.entries(key).map(([n, v]) => `${n} ${fmtId(v)}`).join(', ');
  throw new IoasidError('EINVAL', `stored state refused: ${table}[${row}] (${k}): ${reason}`, { table, row, key, reason });
}

function rowsOf(x: Record<string, unknown>, table: StoreTable): readonly unknown[] {
  const rows = x[table];
  if (!Array.isArray(rows)) {
    throw new IoasidError('EINVAL', `stored state refused: table ${table} must be an array, got ${fmtId(rows)}`, { table });
  }
  return rows;
}

/**
 * Validate an untrusted state (rules 1-7 above) and return it as fresh frozen rows in canonical
 * order. Throws `IoasidError` `EINVAL` on the first violation, naming table, row and reason.
 */
export function validateStoredState(x: unknown): StoredState {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) {
    throw new IoasidError('EINVAL', `stored state refused: must be an object with tables ${STORE_TABLES.join(', ')}`, {});
  }
  const rec = x as Record<string, unknown>;
  for (const k of Object.keys(rec)) {
    if (!(STORE_TABLES as readonly string[]).includes(k) && k !== 'lastSeq') {
      throw new IoasidError('EINVAL', `stored state refused: unknown table ${JSON.stringify(k)}`, { table: k });
    }
  }
  const at = (table: StoreTable, row: number): Where => ({
    label: `stored state refused: ${table}[${row}]`, details: { table, row },
  });
  const parse = <R>(table: StoreTable, check: (r: unknown, w: Where) => R): R[] =>
    rowsOf(rec, table).map((r, i) => check(r, at(table, i)));

  const vms = parse('vms', (r, w) => checkVmRow(r, w));
  const viommus = parse('viommus', (r, w) => checkViommuRow(r, w));
  const devices = parse('devices', (r, w) => checkDeviceRow(r, w));
  const pasids = parse('pasids', (r, w) => checkPasidRow(r, w));
  const bindings = parse('bindings', (r, w) => checkBindingRow(r, w));
  const meta = parse('meta', (r, w) => checkMetaRow(r, w, 'row', true));
  const events = parse('events', (r, w) => checkEventRow(r, w));
  const lastSeq = rec['lastSeq'];
  if (typeof lastSeq !== 'number' || !Number.isSafeInteger(lastSeq) || lastSeq < 0) {
    throw new IoasidError('EINVAL', `stored state refused: lastSeq must be a non-negative integer, got ${fmtId(lastSeq)}`, { table: 'events' });
  }

  const vmById = new Map<string, VmRow>();
  const vmByHash = new Map<string, string>();
  vms.forEach((v, i) => {
    if (vmById.has(v.id)) refuse('vms', i, { id: v.id }, 'duplicate VM id');
    const other = vmByHash.get(v.tokenHash);
    if (other !== undefined) refuse('vms', i, { id: v.id }, `same token hash as VM ${JSON.stringify(other)}: one token would act as both`);
    vmById.set(v.id, v);
    vmByHash.set(v.tokenHash, v.id);
  });

  const viommuKeys = new Set<string>();
  viommus.forEach((v, i) => {
    const key = { vm: v.vm, segment: v.segment };
    const k = pairKey(v.vm, v.segment);
    if (viommuKeys.has(k)) refuse('viommus', i, key, 'duplicate vIOMMU for this segment');
    if (!vmById.has(v.vm)) refuse('viommus', i, key, `VM ${JSON.stringify(v.vm)} does not exist`);
    viommuKeys.add(k);
  });

  const deviceKeys = new Set<string>();
  devices.forEach((d, i) => {
    const key = { vm: d.vm, bdf: d.bdf };
    const k = pairKey(d.vm, d.bdf);
    if (deviceKeys.has(k)) refuse('devices', i, key, 'duplicate device');
    if (!vmById.has(d.vm)) refuse('devices', i, key, `VM ${JSON.stringify(d.vm)} does not exist`);
    if (!viommuKeys.has(pairKey(d.vm, d.segment))) {
      refuse('devices', i, key, `segment ${d.segment} has no vIOMMU in VM ${JSON.stringify(d.vm)}`);
    }
    deviceKeys.add(k);
  });

  const ownerOf = new Map<number, string | null>();
  pasids.forEach((p, i) => {
    const key = { pasid: p.pasid };
    if (ownerOf.has(p.pasid)) refuse('pasids', i, key, 'duplicate PASID');
    if (p.vm !== null && !vmById.has(p.vm)) refuse('pasids', i, key, `owner VM ${JSON.stringify(p.vm)} does not exist`);
    ownerOf.set(p.pasid, p.vm);
  });

  const bindingKeys = new Set<string>();
  bindings.forEach((b, i) => {
    const key = { pasid: b.pasid, bdf: b.bdf };
    const k = pairKey(b.bdf, b.pasid);
    if (bindingKeys.has(k)) refuse('bindings', i, key, 'duplicate binding');
    if (!ownerOf.has(b.pasid)) refuse('bindings', i, key, 'PASID does not exist');
    const owner = ownerOf.get(b.pasid);
    if (owner !== b.vm) {
      refuse('bindings', i, key, `PASID is owned by ${owner === null ? 'the host' : JSON.stringify(owner)}, not by VM ${JSON.stringify(b.vm)}`);
    }
    if (!deviceKeys.has(pairKey(b.vm, b.bdf))) refuse('bindings', i, key, `device does not exist in VM ${JSON.stringify(b.vm)}`);
    bindingKeys.add(k);
  });

  const metaKeys = new Set<string>();
  meta.forEach((m, i) => {
    if (metaKeys.has(m.key)) refuse('meta', i, { key: m.key }, 'duplicate meta key');
    if (m.key.startsWith(RESERVED_META_PREFIX)) refuse('meta', i, { key: m.key }, 'meta key is reserved for the store');
    metaKeys.add(m.key);
  });

  let prev = 0;
  events.forEach((e, i) => {
    if (e.seq <= prev) refuse('events', i, { seq: e.seq }, `seq must ascend (follows ${prev})`);
    if (e.seq > lastSeq) refuse('events', i, { seq: e.seq }, `seq is above lastSeq ${lastSeq}`);
    prev = e.seq;
  });

  return sortState({ vms, viommus, devices, pasids, bindings, meta, events, lastSeq });
}
