/**
 * Store conformance: one suite, run against every backend (kysely style). The memory backend is
 * the reference; the SQLite and etcd backends must behave the same, across a real restart (a new
 * store object on the same file, or on the same etcd cluster: a real 3-member one). Each test
 * names the rule it checks; where etcd cannot behave like the others, the test says why. A store keeps integrity (keys,
 * references, ranges, unique token hashes, numbered events), not policy: the quota and ownership
 * rules it used to check are the host model's now, and are tested there (test/host.test.ts,
 * test/service.test.ts).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import Database from 'better-sqlite3';
import { Etcd3 } from 'etcd3';
import { IoasidError, PASID_BITS, PASID_MAX, PASID_MIN } from '../src/core/index.ts';
import {
  DomainKeys, EtcdStore, MemoryStore, STORE_LIMITS, emptyState, openStore,
  type Mutation, type Store, type StoredState, type StoreTable,
} from '../src/store/index.ts';
import { EtcdCluster, ETCD_SKIP } from './helpers/etcd-cluster.ts';

const tmpRoot = mkdtempSync(join(tmpdir(), 'ioasid-store-conf-'));
after(() => rmSync(tmpRoot, { recursive: true, force: true }));
let seq = 0;

/** A place a store lives: `create()` makes the store object a restarted service would make. */
interface Location {
  create(): Store;
  /** Write a state as-is (no rule checked), for the "refused at open" tests. */
  seed(state: StoredState): Promise<Store>;
}

interface Backend {
  readonly name: string;
  location(): Location;
  /** Can this backend even hold a state with this defect? (SQLite's STRICT types cannot.) */
  canHold(defect: Defect): boolean;
  /**
   * Are event numbers consecutive (one per event)? etcd numbers the events of a transaction from
   * its revision (docs/cluster.md: numbers every host of a domain agrees on): they ascend, one
   * per event within a batch, with gaps between batches.
   */
  readonly denseSeq: boolean;
  /** Why the backend's tests are skipped here (etcd not installed), or false. */
  readonly skip?: string | false;
  setup?(): Promise<void>;
  teardown?(): Promise<void>;
}

const SQL_COLUMNS: Record<StoreTable, [string, string][]> = {
  vms: [['id', 'id'], ['quota', 'quota'], ['token_hash', 'tokenHash'], ['created_at', 'createdAt']],
  viommus: [['vm', 'vm'], ['segment', 'segment'], ['layout', 'layout'], ['range_extension', 'rangeExtension'], ['pas_bit', 'pasBit'], ['pss', 'pss'], ['registers', 'registers']],
  devices: [['vm', 'vm'], ['bdf', 'bdf'], ['segment', 'segment'], ['pasid_bits', 'pasidBits']],
  pasids: [['pasid', 'pasid'], ['vm', 'vm'], ['allocated_at', 'allocatedAt']],
  bindings: [['pasid', 'pasid'], ['vm', 'vm'], ['bdf', 'bdf'], ['bound_at', 'boundAt']],
  meta: [['key', 'key'], ['value', 'value']],
  events: [['seq', 'seq'], ['at', 'at'], ['type', 'type'], ['vm', 'vm'], ['body', 'body']],
};

const BACKENDS: Backend[] = [
  {
    name: 'memory',
    location() {
      const store = new MemoryStore();
      return {
        create: () => store, // restart = close and open the same object: its data outlives close()
        seed: async (state) => new MemoryStore({ initial: state }),
      };
    },
    canHold: () => true,
    denseSeq: true,
  },
  {
    name: 'sqlite',
    location() {
      const path = join(tmpRoot, `s${++seq}`, 'state.db');
      return {
        create: () => openStore(`sqlite:${path}`, { synchronous: 'normal' }),
        async seed(state) {
          const s = openStore(`sqlite:${path}`);
          await s.open();
          await s.close();
          const db = new Database(path);
          db.pragma('foreign_keys = OFF');
          db.pragma('ignore_check_constraints = ON');
          for (const [table, cols] of Object.entries(SQL_COLUMNS) as [StoreTable, [string, string][]][]) {
            const ins = db.prepare(`INSERT INTO ${table} (${cols.map((c) => c[0]).join(', ')}) VALUES (${cols.map(() => '?').join(', ')})`);
            for (const row of state[table] as readonly object[]) {
              ins.run(...cols.map(([, f]) => {
                const v = (row as unknown as Record<string, unknown>)[f];
                return typeof v === 'boolean' ? Number(v) : v;
              }));
            }
          }
          db.close();
          return openStore(`sqlite:${path}`);
        },
      };
    },
    canHold: (d) => d.sqlite !== false,
    denseSeq: true,
  },
  etcdBackend(),
];

/** The etcd backend: each location is a domain of one 3-member etcd cluster, host `h1`. */
function etcdBackend(): Backend {
  let etcd: EtcdCluster | null = null;
  let n = 0;
  const endpoints = () => (etcd as EtcdCluster).endpoints;
  return {
    name: 'etcd',
    skip: ETCD_SKIP ?? false,
    denseSeq: false,
    async setup() {
      etcd = await EtcdCluster.start();
    },
    async teardown() {
      await etcd?.stop();
    },
    location() {
      const domain = `conf${++n}`;
      const create = () => new EtcdStore({ endpoints: endpoints(), hostId: 'h1', domain, leaseTtlSec: 5 });
      return {
        create,
        // Every row as a key, as the store writes them but unchecked; the events in journal records.
        async seed(state) {
          const keys = new DomainKeys(domain);
          const client = new Etcd3({ hosts: endpoints().map((e) => `http://${e}`) });
          try {
            const put = (k: string, v: unknown) => client.put(k).value(JSON.stringify(v));
            for (const v of state.vms as unknown as readonly Record<string, unknown>[]) await put(keys.vm(String(v['id'])), { ...v, host: 'h1', state: 'active' });
            for (const v of state.viommus as unknown as readonly Record<string, unknown>[]) {
              const { vm: owner, segment, ...rest } = v;
              await put(keys.viommu(String(owner), Number(segment)), rest);
            }
            for (const d of state.devices as unknown as readonly Record<string, unknown>[]) await put(keys.device(String(d['vm']), String(d['bdf'])), { segment: d['segment'], pasidBits: d['pasidBits'] });
            for (const p of state.pasids as unknown as readonly Record<string, unknown>[]) await put(keys.pasid(Number(p['pasid'])), { vm: p['vm'], at: p['allocatedAt'] });
            for (const b of state.bindings as unknown as readonly Record<string, unknown>[]) await put(keys.binding(Number(b['pasid']), String(b['bdf'])), { vm: b['vm'], at: b['boundAt'] });
            for (const m of state.meta as unknown as readonly Record<string, unknown>[]) await put(keys.meta(String(m['key'])), { value: m['value'] });
            let i = 0;
            for (const e of state.events as unknown as readonly Record<string, unknown>[]) {
              await put(keys.log(`seed.${++i}`), { v: 1, host: 'h1', parts: [{ n: `seed.${i}`, at: e['at'], events: [{ at: e['at'], type: e['type'], vm: e['vm'], body: e['body'] }] }] });
            }
          } finally {
            client.close();
          }
          return create();
        },
      };
    },
    canHold: (d) => d.etcd !== false,
  };
}

/**
 * A state's events as a backend that numbers them densely would: checks that they ascend and that
 * `lastSeq` is the last one's, then numbers them 1, 2, ... (for etcd, whose numbers have gaps).
 */
function dense(b: Backend, s: StoredState): StoredState {
  if (b.denseSeq) return s;
  s.events.forEach((e, i) => assert.ok(i === 0 || e.seq > (s.events[i - 1] as { seq: number }).seq, `event numbers ascend: ${s.events.map((x) => x.seq).join(', ')}`));
  assert.equal(s.lastSeq, s.events.length > 0 ? (s.events[s.events.length - 1] as { seq: number }).seq : 0, 'lastSeq is the last event\'s');
  return { ...s, events: s.events.map((e, i) => ({ ...e, seq: i + 1 })), lastSeq: s.events.length };
}

const T = 1_700_000_000_000;
const DEV = '0000:00:02.0';
/** A token hash per name (64 hex digits). */
const hash = (name: string): string => createHash('sha256').update(name).digest('hex');
const vm = (id: string, quota = 0): Mutation => ({ op: 'putVm', row: { id, quota, tokenHash: hash(id), createdAt: T } });
const viommu = (v: string, segment = 0): Mutation => ({ op: 'putViommu', row: { vm: v, segment, layout: 'B', rangeExtension: false, pasBit: 0, pss: 19, registers: null } });
const event = (type: string, v: string | null, at = T): Mutation => ({ op: 'appendEvents', events: [{ at, type, vm: v, body: JSON.stringify({ type, vm: v }) }] });
const REGS = JSON.stringify({ registers: { VCMD_REG: '0x1', VCMD_EO_REG: '0x0', VCRSP_REG: '0x10000' }, pendingHalves: { low: false, high: false }, writer: null });
const device = (v: string, bdf = DEV, segment = 0): Mutation => ({ op: 'putDevice', row: { vm: v, bdf, segment, pasidBits: 20 } });
const pasid = (p: number, v: string | null): Mutation => ({ op: 'insertPasid', row: { pasid: p, vm: v, allocatedAt: T + p } });
const bind = (p: number, v: string, bdf = DEV): Mutation => ({ op: 'putBinding', row: { pasid: p, vm: v, bdf, boundAt: T + 1000 + p } });
const free = (p: number, v: string | null): Mutation => ({ op: 'deletePasid', pasid: p, vm: v });
const unbind = (p: number, bdf = DEV): Mutation => ({ op: 'deleteBinding', pasid: p, bdf });

/** vm1 (quota 2) with a vIOMMU and a device, PASIDs 1 and 2, 1 bound; vm2 (unlimited); host PASID 3. */
const WORLD: Mutation[] = [
  vm('vm1', 2), viommu('vm1'), device('vm1'), pasid(1, 'vm1'), pasid(2, 'vm1'), bind(1, 'vm1'),
  vm('vm2'), viommu('vm2', 1), pasid(4, 'vm2'), pasid(3, null),
];

function code(c: string, index?: number) {
  return (e: unknown) => {
    assert.ok(e instanceof IoasidError, `expected IoasidError, got ${String(e)}`);
    assert.equal(e.code, c, e.message);
    if (index !== undefined) assert.equal(e.details['index'], index, e.message);
    return true;
  };
}

/** Open a fresh store at a new location. */
async function fresh(b: Backend, batch: Mutation[] = []) {
  const loc = b.location();
  const store = loc.create();
  await store.open();
  if (batch.length > 0) await store.apply(batch);
  return { loc, store };
}

/** What a restarted service sees: close, make the store again, open. */
async function restart(loc: Location, store: Store): Promise<{ store: Store; state: StoredState }> {
  await store.close();
  const again = loc.create();
  const state = await again.open();
  return { store: again, state };
}

/** A defect that must make `open()` refuse a state, and the table the refusal must name. */
interface Defect {
  readonly name: string;
  readonly table: StoreTable;
  edit(s: Mutable): void;
  /** false: SQLite's STRICT column types or primary keys cannot even hold it. */
  readonly sqlite?: false;
  /** false: etcd cannot hold it (one key per PASID; event numbers come from revisions). */
  readonly etcd?: false;
}
type Mutable = { -readonly [K in keyof StoredState]: Record<string, unknown>[] };

const BASE: StoredState = {
  vms: [
    { id: 'vm1', quota: 2, tokenHash: hash('one'), createdAt: T },
    { id: 'vm2', quota: 0, tokenHash: hash('two'), createdAt: T },
  ],
  viommus: [{ vm: 'vm1', segment: 0, layout: 'A', rangeExtension: true, pasBit: 0, pss: 19, registers: REGS }],
  devices: [{ vm: 'vm1', bdf: DEV, segment: 0, pasidBits: 20 }],
  pasids: [{ pasid: 1, vm: 'vm1', allocatedAt: T }, { pasid: 2, vm: 'vm1', allocatedAt: T }, { pasid: 3, vm: null, allocatedAt: T }, { pasid: 4, vm: 'vm2', allocatedAt: T }],
  bindings: [{ pasid: 1, vm: 'vm1', bdf: DEV, boundAt: T }],
  meta: [{ key: 'admin.tokenHash', value: 'x' }],
  events: [{ seq: 6, at: T, type: 'alloc', vm: 'vm1', body: '{"type":"alloc","vm":"vm1","pasids":[1,2]}' }, { seq: 7, at: T, type: 'bind', vm: 'vm1', body: '{}' }],
  lastSeq: 7,
};

const DEFECTS: Defect[] = [
  { name: 'PASID 0', table: 'pasids', edit: (s) => { s.pasids.push({ pasid: 0, vm: 'vm2', allocatedAt: T }); } },
  { name: 'PASID above 0xFFFFF', table: 'pasids', edit: (s) => { s.pasids.push({ pasid: 0x100000, vm: 'vm2', allocatedAt: T }); } },
  { name: 'PASID owned by an unknown VM', table: 'pasids', edit: (s) => { s.pasids.push({ pasid: 9, vm: 'ghost', allocatedAt: T }); } },
  { name: 'two VMs with the same token hash', table: 'vms', sqlite: false, edit: (s) => { s.vms[1]!['tokenHash'] = s.vms[0]!['tokenHash']; } },
  { name: 'an empty token hash', table: 'vms', edit: (s) => { s.vms[1]!['tokenHash'] = ''; } },
  { name: 'vIOMMU registers that are not JSON', table: 'viommus', edit: (s) => { s.viommus[0]!['registers'] = '{not json'; } },
  { name: 'vIOMMU PSS 20', table: 'viommus', edit: (s) => { s.viommus[0]!['pss'] = 20; } },
  { name: 'an event whose body is not JSON', table: 'events', edit: (s) => { s.events[0]!['body'] = 'nope'; } },
  { name: 'event seq 0', table: 'events', etcd: false, edit: (s) => { s.events.unshift({ seq: 0, at: T, type: 'alloc', vm: null, body: '{}' }); } },
  { name: 'duplicate PASID', table: 'pasids', sqlite: false, etcd: false, edit: (s) => { s.pasids.push({ pasid: 4, vm: 'vm1', allocatedAt: T }); } },
  { name: 'allocation time not an integer', table: 'pasids', sqlite: false, edit: (s) => { s.pasids[0]!['allocatedAt'] = 1.5; } },
  { name: 'binding to an unknown PASID', table: 'bindings', edit: (s) => { s.bindings.push({ pasid: 77, vm: 'vm1', bdf: DEV, boundAt: T }); } },
  { name: "binding whose VM is not the PASID's owner", table: 'bindings', edit: (s) => { s.bindings.push({ pasid: 4, vm: 'vm1', bdf: DEV, boundAt: T }); } },
  { name: 'binding to a host-owned PASID', table: 'bindings', edit: (s) => { s.bindings.push({ pasid: 3, vm: 'vm1', bdf: DEV, boundAt: T }); } },
  { name: 'binding to an unknown device', table: 'bindings', edit: (s) => { s.bindings.push({ pasid: 2, vm: 'vm1', bdf: '0000:00:03.0', boundAt: T }); } },
  { name: 'device on a segment without a vIOMMU', table: 'devices', edit: (s) => { s.devices.push({ vm: 'vm1', bdf: '0000:00:04.0', segment: 5, pasidBits: 8 }); } },
  { name: 'device with a malformed BDF', table: 'devices', edit: (s) => { s.devices.push({ vm: 'vm1', bdf: '0000:00:2.0', segment: 0, pasidBits: 8 }); } },
  { name: 'device with 21 PASID bits', table: 'devices', edit: (s) => { s.devices[0]!['pasidBits'] = 21; } },
  { name: 'vIOMMU of an unknown VM', table: 'viommus', edit: (s) => { s.viommus.push({ vm: 'ghost', segment: 1, layout: 'A', rangeExtension: false, pasBit: 0, pss: 19, registers: null }); } },
  { name: 'vIOMMU layout C', table: 'viommus', edit: (s) => { s.viommus[0]!['layout'] = 'C'; } },
  { name: 'vIOMMU segment 65536', table: 'viommus', edit: (s) => { s.viommus.push({ vm: 'vm2', segment: 65536, layout: 'A', rangeExtension: false, pasBit: 0, pss: 19, registers: null }); } },
  { name: 'rangeExtension neither true nor false', table: 'viommus', edit: (s) => { s.viommus[0]!['rangeExtension'] = 2; } },
  { name: 'negative quota', table: 'vms', edit: (s) => { s.vms[1]!['quota'] = -1; } },
  { name: 'VM id with a space', table: 'vms', edit: (s) => { s.vms.push({ id: 'vm 3', quota: 0, tokenHash: hash('3'), createdAt: T }); } },
  { name: 'VM id of 64 characters', table: 'vms', edit: (s) => { s.vms.push({ id: 'v'.repeat(64), quota: 0, tokenHash: hash('4'), createdAt: T }); } },
  { name: 'reserved meta key', table: 'meta', sqlite: false, edit: (s) => { s.meta.push({ key: 'store.schema', value: '1' }); } },
];

function defective(d: Defect): StoredState {
  const s = structuredClone(BASE) as unknown as Mutable;
  d.edit(s);
  return s as unknown as StoredState;
}

for (const b of BACKENDS) {
  describe(`store conformance: ${b.name}`, { skip: b.skip ?? false }, () => {
    if (b.setup !== undefined) before(() => b.setup?.());
    if (b.teardown !== undefined) after(() => b.teardown?.());

    it('a new store opens empty, and its kind is named', async () => {
      const { loc, store } = await fresh(b);
      assert.equal(store.kind, b.name);
      const { store: again, state } = await restart(loc, store);
      assert.deepEqual(state, emptyState());
      await again.close();
    });

    it("the store's PASID bounds are core's (1..0xFFFFF, 20 bits)", () => {
      assert.equal(STORE_LIMITS.pasidMin, PASID_MIN);
      assert.equal(STORE_LIMITS.pasidMax, PASID_MAX);
      assert.equal(STORE_LIMITS.pasidBitsMax, PASID_BITS);
    });

    it('every row kind round-trips across close and open, replaced rows included', async () => {
      const { loc, store } = await fresh(b, WORLD);
      await store.apply([
        { op: 'putViommu', row: { vm: 'vm1', segment: 0x12, layout: 'A', rangeExtension: true, pasBit: 1, pss: 9, registers: null } },
        { op: 'putDevice', row: { vm: 'vm1', bdf: 'ffff:ff:1f.7', segment: 0x12, pasidBits: 1 } },
        { op: 'putMeta', row: { key: 'admin.tokenHash', value: 'sha256:ab' } },
        { op: 'putMeta', row: { key: 'ünïcödé ✓', value: 'value with\nnewline and emoji 🦀' } },
        { op: 'insertPasid', row: { pasid: PASID_MAX, vm: 'vm2', allocatedAt: 0 } },
        { op: 'putBinding', row: { pasid: 2, vm: 'vm1', bdf: 'ffff:ff:1f.7', boundAt: Number.MAX_SAFE_INTEGER } },
      ]);
      // replace: a VM's quota/token, a vIOMMU's layout and registers, a device's bits, a binding's time, a meta value
      await store.apply([
        { op: 'putVm', row: { id: 'vm2', quota: 5, tokenHash: hash('rotated'), createdAt: T + 1 } },
        { op: 'putViommu', row: { vm: 'vm2', segment: 1, layout: 'A', rangeExtension: true, pasBit: 0, pss: 19, registers: null } },
        { op: 'setRegisters', vm: 'vm1', segment: 0x12, registers: REGS },
        { op: 'setTokenHash', vm: 'vm1', tokenHash: hash('vm1 again') },
        { op: 'appendEvents', events: [{ at: T, type: 'alloc', vm: 'vm2', body: '{"type":"alloc","vm":"vm2","pasids":[1048575]}' }, { at: T + 1, type: 'free', vm: null, body: '{"type":"free","vm":null,"pasids":[3]}' }] },
        { op: 'putDevice', row: { vm: 'vm1', bdf: DEV, segment: 0, pasidBits: 8 } },
        { op: 'putBinding', row: { pasid: 1, vm: 'vm1', bdf: DEV, boundAt: 42 } },
        { op: 'putMeta', row: { key: 'admin.tokenHash', value: 'sha256:cd' } },
      ]);
      const { store: again, state } = await restart(loc, store);
      assert.deepEqual(dense(b, state), {
        vms: [
          { id: 'vm1', quota: 2, tokenHash: hash('vm1 again'), createdAt: T },
          { id: 'vm2', quota: 5, tokenHash: hash('rotated'), createdAt: T + 1 },
        ],
        viommus: [
          { vm: 'vm1', segment: 0, layout: 'B', rangeExtension: false, pasBit: 0, pss: 19, registers: null },
          { vm: 'vm1', segment: 0x12, layout: 'A', rangeExtension: true, pasBit: 1, pss: 9, registers: REGS },
          { vm: 'vm2', segment: 1, layout: 'A', rangeExtension: true, pasBit: 0, pss: 19, registers: null },
        ],
        devices: [
          { vm: 'vm1', bdf: DEV, segment: 0, pasidBits: 8 },
          { vm: 'vm1', bdf: 'ffff:ff:1f.7', segment: 0x12, pasidBits: 1 },
        ],
        pasids: [
          { pasid: 1, vm: 'vm1', allocatedAt: T + 1 },
          { pasid: 2, vm: 'vm1', allocatedAt: T + 2 },
          { pasid: 3, vm: null, allocatedAt: T + 3 },
          { pasid: 4, vm: 'vm2', allocatedAt: T + 4 },
          { pasid: PASID_MAX, vm: 'vm2', allocatedAt: 0 },
        ],
        bindings: [
          { pasid: 1, vm: 'vm1', bdf: DEV, boundAt: 42 },
          { pasid: 2, vm: 'vm1', bdf: 'ffff:ff:1f.7', boundAt: Number.MAX_SAFE_INTEGER },
        ],
        meta: [
          { key: 'admin.tokenHash', value: 'sha256:cd' },
          { key: 'ünïcödé ✓', value: 'value with\nnewline and emoji 🦀' },
        ],
        events: [
          { seq: 1, at: T, type: 'alloc', vm: 'vm2', body: '{"type":"alloc","vm":"vm2","pasids":[1048575]}' },
          { seq: 2, at: T + 1, type: 'free', vm: null, body: '{"type":"free","vm":null,"pasids":[3]}' },
        ],
        lastSeq: 2,
      });
      assert.ok(Object.isFrozen(state.pasids) && Object.isFrozen(state.pasids[0]), 'the loaded state is read-only');
      await again.close();
    });

    it('a batch whose third mutation fails leaves nothing of it (creates and deletes undone)', async () => {
      const { loc, store } = await fresh(b, WORLD);
      const before = (await restart(loc, store));
      const s = before.store;
      await assert.rejects(s.apply([pasid(10, 'vm2'), { op: 'putMeta', row: { key: 'k', value: 'v' } }, pasid(1, 'vm2'), pasid(11, 'vm2')]), code('EEXIST', 2));
      await assert.rejects(s.apply([unbind(1), free(1, 'vm1'), free(99, 'vm1')]), code('ENOENT', 2));
      await assert.rejects(s.apply([free(4, 'vm2'), { op: 'deleteViommu', vm: 'vm2', segment: 1 }, { op: 'deleteViommu', vm: 'vm2', segment: 1 }]), code('ENOENT', 2));
      await assert.rejects(s.apply([free(4, 'vm2'), { op: 'deleteViommu', vm: 'vm2', segment: 1 }, { op: 'deleteVm', id: 'vm2' }, pasid(4, 'vm2')]), code('ENOENT', 3));
      await assert.rejects(s.apply([vm('vm1', 7), { op: 'putMeta', row: { key: 'admin.tokenHash', value: 'new' } }, { op: 'deleteMeta', key: 'nope' }]), code('ENOENT', 2));
      await assert.rejects(s.apply([event('alloc', 'vm2'), { op: 'setRegisters', vm: 'vm1', segment: 0, registers: REGS }, { op: 'setRegisters', vm: 'vm1', segment: 9, registers: REGS }]), code('ENOENT', 2));
      await assert.rejects(s.apply([vm('vm3'), viommu('vm3'), device('vm3', DEV), pasid(12, 'vm3'), bind(12, 'vm3'), bind(12, 'vm3', '0000:00:09.0')]), code('ENOENT', 5));
      const { store: again, state } = await restart(loc, s);
      assert.deepEqual(state, before.state);
      // and the rows the failed batches touched behave as if they had never been
      await again.apply([pasid(10, 'vm2'), pasid(11, 'vm2'), vm('vm3')]);
      await again.close();
    });

    it('insertPasid is create-if-absent: EEXIST whoever owns it, also twice in one batch', async () => {
      const { loc, store } = await fresh(b, WORLD);
      await assert.rejects(store.apply([pasid(1, 'vm1')]), code('EEXIST', 0));
      await assert.rejects(store.apply([pasid(1, 'vm2')]), (e) => code('EEXIST')(e) && (e as IoasidError).details['owner'] === 'vm1');
      await assert.rejects(store.apply([pasid(3, null)]), code('EEXIST'));
      await assert.rejects(store.apply([pasid(20, 'vm2'), pasid(20, 'vm2')]), code('EEXIST', 1));
      const { store: again, state } = await restart(loc, store);
      assert.deepEqual(state.pasids.map((p) => [p.pasid, p.vm]), [[1, 'vm1'], [2, 'vm1'], [3, null], [4, 'vm2']]);
      await again.close();
    });

    // The row is named by PASID and owner: a delete that names another owner finds no row. (Who
    // may free which PASID is the host's ownership rule, EACCES there.)
    it('deletePasid: ENOENT unless that PASID with that owner (host = null) exists, EBUSY while bound', async () => {
      const { loc, store } = await fresh(b, WORLD);
      await assert.rejects(store.apply([free(50, 'vm1')]), code('ENOENT'));
      await assert.rejects(store.apply([free(2, 'vm2')]), (e) => code('ENOENT')(e) && (e as IoasidError).details['owner'] === 'vm1');
      await assert.rejects(store.apply([free(2, null)]), code('ENOENT'));
      await assert.rejects(store.apply([free(3, 'vm1')]), code('ENOENT'));
      await assert.rejects(store.apply([free(1, 'vm1')]), code('EBUSY'));
      await store.apply([free(2, 'vm1'), free(3, null), unbind(1), free(1, 'vm1')]);
      const { store: again, state } = await restart(loc, store);
      assert.deepEqual(state.pasids.map((p) => p.pasid), [4]);
      assert.deepEqual(state.bindings, []);
      await again.close();
    });

    it('a VM that PASID, device or vIOMMU rows refer to cannot be deleted (EBUSY): children go first', async () => {
      const { loc, store } = await fresh(b, WORLD);
      await assert.rejects(store.apply([{ op: 'deleteVm', id: 'vm1' }]), code('EBUSY'));
      await assert.rejects(store.apply([{ op: 'deleteVm', id: 'nope' }]), code('ENOENT'));
      await assert.rejects(store.apply([unbind(1), free(1, 'vm1'), { op: 'deleteVm', id: 'vm1' }]), code('EBUSY', 2));
      await assert.rejects(store.apply([unbind(1), free(1, 'vm1'), free(2, 'vm1'), { op: 'deleteVm', id: 'vm1' }]), code('EBUSY', 3));
      await assert.rejects(store.apply([unbind(1), free(1, 'vm1'), free(2, 'vm1'), { op: 'deleteDevice', vm: 'vm1', bdf: DEV }, { op: 'deleteVm', id: 'vm1' }]), code('EBUSY', 4));
      await store.apply([unbind(1), free(1, 'vm1'), free(2, 'vm1'), { op: 'deleteDevice', vm: 'vm1', bdf: DEV }, { op: 'deleteViommu', vm: 'vm1', segment: 0 }, { op: 'deleteVm', id: 'vm1' }]);
      const { store: again, state } = await restart(loc, store);
      assert.deepEqual(state.vms.map((v) => v.id), ['vm2']);
      assert.deepEqual(state.viommus.map((v) => v.vm), ['vm2']);
      assert.deepEqual(state.devices, []);
      await again.apply([vm('vm1'), pasid(1, 'vm1')]); // the id can be reused
      await again.close();
    });

    it('references are checked: ENOENT for missing parents (a binding\'s PASID must be its VM\'s), EBUSY for children', async () => {
      const { store } = await fresh(b, WORLD);
      const cases: [Mutation[], string][] = [
        [[pasid(30, 'ghost')], 'ENOENT'],
        [[viommu('ghost')], 'ENOENT'],
        [[device('ghost')], 'ENOENT'],
        [[device('vm1', '0000:00:05.0', 7)], 'ENOENT'],
        [[bind(31, 'vm1')], 'ENOENT'],
        [[bind(4, 'vm1')], 'ENOENT'],
        [[bind(3, 'vm1')], 'ENOENT'],
        [[bind(2, 'vm1', '0000:00:07.0')], 'ENOENT'],
        [[bind(4, 'vm2')], 'ENOENT'],
        [[{ op: 'deleteDevice', vm: 'vm1', bdf: DEV }], 'EBUSY'],
        [[{ op: 'deleteDevice', vm: 'vm2', bdf: DEV }], 'ENOENT'],
        [[{ op: 'deleteViommu', vm: 'vm1', segment: 0 }], 'EBUSY'],
        [[{ op: 'deleteViommu', vm: 'vm1', segment: 9 }], 'ENOENT'],
        [[unbind(2)], 'ENOENT'],
        [[{ op: 'deleteMeta', key: 'absent' }], 'ENOENT'],
      ];
      for (const [batch, c] of cases) await assert.rejects(store.apply(batch), code(c, 0), JSON.stringify(batch));
      await store.apply([unbind(1), { op: 'deleteDevice', vm: 'vm1', bdf: DEV }, { op: 'deleteViommu', vm: 'vm1', segment: 0 }]);
      await store.close();
    });

    it('token hashes are unique: a token never acts as two VMs (EEXIST), on create and on replace', async () => {
      const { loc, store } = await fresh(b, WORLD);
      await assert.rejects(store.apply([{ op: 'putVm', row: { id: 'vm3', quota: 0, tokenHash: hash('vm1'), createdAt: T } }]), (e) => code('EEXIST', 0)(e) && (e as IoasidError).details['other'] === 'vm1');
      await assert.rejects(store.apply([{ op: 'setTokenHash', vm: 'vm2', tokenHash: hash('vm1') }]), code('EEXIST', 0));
      await assert.rejects(store.apply([{ op: 'setTokenHash', vm: 'ghost', tokenHash: hash('ghost') }]), code('ENOENT', 0));
      // Replacing a VM's own hash, and taking a hash its owner just gave up, in one batch.
      await store.apply([{ op: 'setTokenHash', vm: 'vm1', tokenHash: hash('new1') }, { op: 'setTokenHash', vm: 'vm2', tokenHash: hash('vm1') }]);
      await assert.rejects(store.apply([vm('vm1', 2)]), code('EEXIST'), 'vm2 holds vm1\'s old hash now');
      const { store: again, state } = await restart(loc, store);
      assert.deepEqual(state.vms.map((v) => [v.id, v.tokenHash]), [['vm1', hash('new1')], ['vm2', hash('vm1')]]);
      await again.close();
    });

    it('quotas are not the store\'s: rows beyond a VM\'s quota commit (the host refuses them before)', async () => {
      const { loc, store } = await fresh(b, WORLD);
      await store.apply([pasid(5, 'vm1'), pasid(6, 'vm1')]);
      const { store: again, state } = await restart(loc, store);
      assert.equal(state.pasids.filter((p) => p.vm === 'vm1').length, 4);
      await again.close();
    });

    it('events are numbered by the store: one seq per event, in commit order, none for a failed batch, never going back', async () => {
      const { loc, store } = await fresh(b, [vm('vm1')]);
      if (!b.denseSeq) {
        // etcd numbers a batch's events from its transaction's revision (docs/cluster.md), so the
        // numbers are those of the other backends' rule with gaps between batches: they ascend,
        // one per event within a batch, a failed batch takes none, and they go on after a restart.
        const a = await store.apply([event('a', 'vm1'), { op: 'appendEvents', events: [{ at: T, type: 'b', vm: null, body: '{}' }, { at: T, type: 'c', vm: null, body: '{}' }] }]);
        const none = await store.apply([pasid(1, 'vm1')]);
        assert.ok(none.seq >= a.seq + 3, `a batch without events gets a number after the last event (${none.seq} after ${a.seq} + 2)`);
        await assert.rejects(store.apply([event('lost', 'vm1'), pasid(1, 'vm1')]), code('EEXIST', 1));
        const same = await Promise.all([store.apply([event('d', 'vm1')]), store.apply([event('e', null), pasid(1, 'vm1')]).catch((e: IoasidError) => e.code), store.apply([event('f', null)])]);
        assert.equal(same[1], 'EEXIST');
        const [d, , f] = same as [{ seq: number }, string, { seq: number }];
        assert.ok(d.seq > none.seq && f.seq > d.seq, `same-tick batches are numbered in commit order: ${d.seq}, ${f.seq}`);
        const { store: again, state } = await restart(loc, store);
        assert.deepEqual(state.events.map((e) => [e.seq, e.type]), [[a.seq, 'a'], [a.seq + 1, 'b'], [a.seq + 2, 'c'], [d.seq, 'd'], [f.seq, 'f']]);
        assert.equal(state.lastSeq, f.seq);
        const g = await again.apply([event('g', null)]);
        assert.ok(g.seq > f.seq, 'numbering goes on after a restart');
        await again.close();
        return;
      }
      assert.deepEqual(await store.apply([event('a', 'vm1'), { op: 'appendEvents', events: [{ at: T, type: 'b', vm: null, body: '{}' }, { at: T, type: 'c', vm: null, body: '{}' }] }]), { seq: 1 });
      assert.deepEqual(await store.apply([pasid(1, 'vm1')]), { seq: 4 }, 'a batch without events gets the next seq');
      await assert.rejects(store.apply([event('lost', 'vm1'), pasid(1, 'vm1')]), code('EEXIST', 1));
      const same = await Promise.all([store.apply([event('d', 'vm1')]), store.apply([event('e', null), pasid(1, 'vm1')]).catch((e: IoasidError) => e.code), store.apply([event('f', null)])]);
      assert.deepEqual(same, [{ seq: 4 }, 'EEXIST', { seq: 5 }], 'same-tick batches: the failed one takes no number');
      const { store: again, state } = await restart(loc, store);
      assert.deepEqual(state.events.map((e) => [e.seq, e.type]), [[1, 'a'], [2, 'b'], [3, 'c'], [4, 'd'], [5, 'f']]);
      assert.equal(state.lastSeq, 5);
      assert.deepEqual(await again.apply([event('g', null)]), { seq: 6 }, 'numbering goes on after a restart');
      await again.close();
    });

    it('malformed events and registers are refused with EINVAL', async () => {
      const { store } = await fresh(b, WORLD);
      const bad: unknown[] = [
        [{ op: 'appendEvents', events: [] }],
        [{ op: 'appendEvents', events: [{ at: T, type: 'x', vm: 'vm1', body: 'not json' }] }],
        [{ op: 'appendEvents', events: [{ at: T, type: 'x', vm: 'vm1', body: '[1]' }] }],
        [{ op: 'appendEvents', events: [{ at: T, type: '', vm: 'vm1', body: '{}' }] }],
        [{ op: 'appendEvents', events: [{ at: -1, type: 'x', vm: 'vm1', body: '{}' }] }],
        [{ op: 'appendEvents', events: [{ seq: 9, at: T, type: 'x', vm: 'vm1', body: '{}' }] }],
        [{ op: 'setRegisters', vm: 'vm1', segment: 0, registers: '{' }],
        [{ op: 'setRegisters', vm: 'vm1', segment: 0, registers: `{"x":"${'y'.repeat(2000)}"}` }],
        [{ op: 'setTokenHash', vm: 'vm1', tokenHash: 'ABC' }],
        [{ op: 'putViommu', row: { vm: 'vm1', segment: 3, layout: 'B', rangeExtension: false, pasBit: 2, pss: 19, registers: null } }],
      ];
      for (const batch of bad) await assert.rejects(store.apply(batch as Mutation[]), code('EINVAL'), JSON.stringify(batch).slice(0, 120));
      await store.close();
    });

    it('malformed mutations are refused with EINVAL (reserved meta keys: EPERM) before anything is applied', async () => {
      const { loc, store } = await fresh(b, WORLD);
      const bad: [unknown, string][] = [
        [[pasid(0, 'vm1')], 'EINVAL'],
        [[pasid(0x100000, 'vm1')], 'EINVAL'],
        [[pasid(1.5, 'vm1')], 'EINVAL'],
        [[{ op: 'insertPasid', row: { pasid: 8, allocatedAt: T } }], 'EINVAL'],
        [[{ op: 'insertPasid', row: { pasid: 8, vm: 'vm1', allocatedAt: T, extra: 1 } }], 'EINVAL'],
        [[{ op: 'deletePasid', pasid: 8 }], 'EINVAL'],
        [[vm('vm 1')], 'EINVAL'],
        [[vm('')], 'EINVAL'],
        [[vm('x'.repeat(64))], 'EINVAL'],
        [[vm('-x')], 'EINVAL'],
        [[vm('vm9', -1)], 'EINVAL'],
        [[{ op: 'putVm', row: { id: 'vm9', quota: 0, tokenHash: hash('9'), createdAt: -1 } }], 'EINVAL'],
        [[{ op: 'putVm', row: { id: 'vm9', quota: 0, tokenHash: 'h', createdAt: T } }], 'EINVAL'],
        [[{ op: 'putVm', row: { id: 'vm9', name: 'n', quota: 0, tokenHash: hash('9'), createdAt: T } }], 'EINVAL'],
        [[{ op: 'putViommu', row: { vm: 'vm1', segment: 65536, layout: 'A', rangeExtension: false, pasBit: 0, pss: 19, registers: null } }], 'EINVAL'],
        [[{ op: 'putViommu', row: { vm: 'vm1', segment: 1, layout: 'C', rangeExtension: false, pasBit: 0, pss: 19, registers: null } }], 'EINVAL'],
        [[{ op: 'putViommu', row: { vm: 'vm1', segment: 1, layout: 'A', rangeExtension: 1, pasBit: 0, pss: 19, registers: null } }], 'EINVAL'],
        [[{ op: 'putViommu', row: { vm: 'vm1', segment: 1, layout: 'A', rangeExtension: false } }], 'EINVAL'],
        [[{ op: 'putDevice', row: { vm: 'vm1', bdf: '0000:00:02.0', segment: 0, pasidBits: 21 } }], 'EINVAL'],
        [[{ op: 'putDevice', row: { vm: 'vm1', bdf: '0000:00:02.0', segment: 0, pasidBits: 0 } }], 'EINVAL'],
        [[device('vm1', '0000:00:20.0')], 'EINVAL'],
        [[device('vm1', '0000:00:02.8')], 'EINVAL'],
        [[device('vm1', '0000:00:0A.0')], 'EINVAL'],
        [[device('vm1', '00:02.0')], 'EINVAL'],
        [[{ op: 'putMeta', row: { key: '', value: 'v' } }], 'EINVAL'],
        [[{ op: 'putMeta', row: { key: 'k', value: 5 } }], 'EINVAL'],
        [[{ op: 'putMeta', row: { key: 'store.schema', value: '9' } }], 'EPERM'],
        [[{ op: 'deleteMeta', key: 'store.schema' }], 'EPERM'],
        [[{ op: 'dropTable' }], 'EINVAL'],
        [[null], 'EINVAL'],
        [[pasid(9, 'vm2'), 'putVm'], 'EINVAL'],
        [{ op: 'putVm' }, 'EINVAL'],
        [undefined, 'EINVAL'],
      ];
      for (const [batch, c] of bad) {
        await assert.rejects(store.apply(batch as Mutation[]), code(c), JSON.stringify(batch));
      }
      const { store: again, state } = await restart(loc, store);
      assert.deepEqual(state.pasids.map((p) => p.pasid), [1, 2, 3, 4]);
      assert.equal(state.vms.length, 2);
      await again.close();
    });

    it('batches are copied when applied: changing the caller\'s objects later changes nothing', async () => {
      const { loc, store } = await fresh(b, [vm('vm1')]);
      const row = { pasid: 7, vm: 'vm1', allocatedAt: T };
      const batch: Mutation[] = [{ op: 'insertPasid', row }];
      const done = store.apply(batch);
      row.pasid = 8;
      batch.push(pasid(9, 'vm1'));
      await done;
      const { store: again, state } = await restart(loc, store);
      assert.deepEqual(state.pasids.map((p) => p.pasid), [7]);
      await again.close();
    });

    it('group commit: concurrent batches each commit or fail alone, settle in call order, and are durable', async () => {
      const { loc, store } = await fresh(b, [vm('vm1', 0), vm('vm2', 10)]);
      const order: number[] = [];
      const calls = Array.from({ length: 64 }, (_, i) => {
        // call 17 fails on its second mutation (PASID 1000 exists by then); call 40 on its last (no PASID 9)
        const batch = i === 17 ? [pasid(2000, 'vm1'), pasid(1000, 'vm1')]
          : i === 40 ? [...Array.from({ length: 11 }, (_, j) => pasid(3000 + j, 'vm2')), free(9, 'vm2')]
            : [pasid(1000 + i, 'vm1'), { op: 'putMeta', row: { key: `k${i}`, value: String(i) } } as Mutation];
        return store.apply(batch).then(() => { order.push(i); return 'ok'; }, (e: unknown) => { order.push(i); return (e as IoasidError).code; });
      });
      const outcomes = await Promise.all(calls);
      assert.deepEqual(order, [...Array(64).keys()], 'promises settle in call order');
      assert.equal(outcomes[17], 'EEXIST');
      assert.equal(outcomes[40], 'ENOENT');
      assert.equal(outcomes.filter((o) => o === 'ok').length, 62);
      const stats = store.stats();
      assert.equal(stats.batches, 63); // 62 + the setup batch
      assert.ok(stats.failedBatches >= 2);
      if (b.name === 'sqlite') assert.ok(stats.commits < 10, `64 same-tick applies took ${stats.commits} commits`);
      const { store: again, state } = await restart(loc, store);
      const want = [...Array(64).keys()].filter((i) => i !== 17 && i !== 40).map((i) => 1000 + i);
      assert.deepEqual(state.pasids.map((p) => p.pasid), want);
      assert.equal(state.meta.length, 62);
      await again.close();
    });

    it('lifecycle: apply only while open; open twice is EINVAL; close is idempotent and flushes', async () => {
      const loc = b.location();
      const store = loc.create();
      await assert.rejects(store.apply([vm('vm1')]), code('EINVAL'));
      await store.open();
      await assert.rejects(store.open(), code('EINVAL'));
      const pending = store.apply([vm('vm1'), pasid(1, 'vm1')]);
      await store.close(); // without awaiting the apply first
      await pending;
      await store.close();
      await assert.rejects(store.apply([pasid(2, 'vm1')]), code('EINVAL'));
      const again = loc.create();
      const state = await again.open();
      assert.deepEqual(state.pasids.map((p) => p.pasid), [1]);
      await again.close();
    });

    it('the valid base state opens (positive control for the refusals below)', async () => {
      const s = await b.location().seed(BASE);
      const state = await s.open();
      assert.deepEqual(dense(b, state), dense(b, structuredClone(BASE)));
      await s.close();
    });

    // (SQLite cannot even hold a duplicate PASID, a fractional time or a reserved meta row in the state.)
    for (const d of DEFECTS.filter((x) => b.canHold(x))) {
      it(`a stored state with ${d.name} is refused at open with EINVAL naming table ${d.table}`, async () => {
        const s = await b.location().seed(defective(d));
        await assert.rejects(s.open(), (e) => code('EINVAL')(e) && (e as IoasidError).details['table'] === d.table);
        await assert.rejects(s.apply([vm('vm9')]), code('EINVAL'), 'a refused store stays closed');
      });
    }
  });
}
