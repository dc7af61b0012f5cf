/**
 * The SQLite backend (better-sqlite3 12.x, synchronous), the embedded default.
 *
 * Durability: WAL journal, `synchronous=FULL` by default: a commit returns after the WAL is
 * fsynced, so an acknowledged batch survives a process crash and a power loss. `normal` keeps
 * process-crash safety (the WAL is in the OS page cache when the commit returns) but may lose
 * the last commits on power loss. Group commit pays one fsync per group, not per batch.
 *
 * Group commit: `apply` queues its batch; the queue is flushed on `setImmediate`, so every batch
 * submitted in the same turn of the event loop shares one transaction. Each batch runs inside its
 * own SAVEPOINT: a failing batch is rolled back to it and rejected alone. Callers are settled, in
 * call order, only after COMMIT has returned.
 *
 * Single writer: the connection uses `locking_mode=EXCLUSIVE`, so the file stays locked while the
 * store is open and a second process opening it gets EBUSY (two authorities on one file could hand
 * out one PASID twice). The OS drops the lock when the process dies, even on SIGKILL.
 */
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { CommitError, IoasidError, isIoasidErrorCode } from '../core/index.ts';
import type { ErrorDetails, IoasidErrorCode } from '../core/index.ts';
import { checkRetention } from './memory-store.ts';
import { applyMutation, type StateTx } from './mutation-rules.ts';
import { checkBatch } from './row-check.ts';
import {
  RESERVED_META_PREFIX,
  type Applied, type BindingRow, type DeviceRow, type MetaRow, type Mutation, type NewEventRow, type PasidRow, type Store,
  type StoreStats, type StoredState, type ViommuRow, type VmRow,
} from './rows.ts';
import {
  SCHEMA_VERSION_KEY, SQLITE_APPLICATION_ID, SQLITE_MIGRATE_V1_V2, SQLITE_SCHEMA, SQLITE_SCHEMA_VERSION,
} from './sqlite-schema.ts';
import { validateStoredState } from './state-check.ts';

type Db = Database.Database;
type Stmt<P extends unknown[] = unknown[], R = unknown> = Database.Statement<P, R>;

/** `synchronous` pragma choices; see the file comment. */
export const SQLITE_SYNC_MODES = ['full', 'normal'] as const;
export type SqliteSyncMode = (typeof SQLITE_SYNC_MODES)[number];

export interface SqliteStoreOptions {
  /** Default 'full'. */
  readonly synchronous?: SqliteSyncMode;
  /** How long `open()` waits for another process to release the file. Default 1000 ms. */
  readonly lockTimeoutMs?: number;
  /** Events kept (default 65,536); older ones are pruned as new ones come. */
  readonly eventRetention?: number;
}

/** SQLite result codes that mean the backend failed (the change may be sent again), not that a row was refused. */
const FAILURE_CODES = ['SQLITE_IOERR', 'SQLITE_FULL', 'SQLITE_BUSY', 'SQLITE_LOCKED', 'SQLITE_NOMEM', 'SQLITE_READONLY', 'SQLITE_CANTOPEN', 'SQLITE_PROTOCOL'];

/** Map a failure from SQLite or the file system to an `IoasidError`. */
function storeError(e: unknown, what: string, details: ErrorDetails): IoasidError {
  if (e instanceof IoasidError) return e;
  const raw = (e as { code?: unknown } | null)?.code;
  const code = typeof raw === 'string' ? raw : undefined;
  const message = e instanceof Error ? e.message : String(e);
  let errno: IoasidErrorCode = 'EINVAL';
  let why = message;
  if (code === undefined) errno = 'EINVAL';
  else if (isIoasidErrorCode(code)) errno = code; // node:fs errors (EACCES, ENOENT, ...)
  else if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) {
    errno = 'EBUSY';
    why = 'the database is locked (is another ioasid service using it?)';
  } else if (code === 'SQLITE_FULL') errno = 'ENOSPC';
  else if (code.startsWith('SQLITE_NOMEM')) errno = 'ENOMEM';
  else if (code.startsWith('SQLITE_READONLY') || code === 'SQLITE_PERM' || code === 'SQLITE_AUTH') errno = 'EACCES';
  else if (code === 'SQLITE_NOTADB') why = 'the file is not an SQLite database';
  else if (code.startsWith('SQLITE_CORRUPT')) why = `the database is corrupt (${message})`;
  const all = { ...details, ...(code === undefined ? {} : { sqlite: code }) };
  if (code !== undefined && FAILURE_CODES.some((c) => code.startsWith(c))) return new CommitError(errno === 'EINVAL' ? 'EIO' : errno, `${what}: ${why}`, all, { cause: e });
  return new IoasidError(errno, `${what}: ${why}`, all, { cause: e });
}

function refuse(path: string, reason: string, details: ErrorDetails = {}): IoasidError {
  return new IoasidError('EINVAL', `sqlite store ${path} refused: ${reason}`, { path, ...details });
}

/** The schema objects SQLite records for SQLITE_SCHEMA_V1, computed once from a scratch database. */
let expectedSchema: string | undefined;
function schemaFingerprint(db: Db): string {
  const rows = db.prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY type, name").all();
  return JSON.stringify(rows);
}
function expectedFingerprint(): string {
  if (expectedSchema === undefined) {
    const scratch = new Database(':memory:');
    try {
      for (const ddl of SQLITE_SCHEMA) scratch.exec(ddl);
      expectedSchema = schemaFingerprint(scratch);
    } finally {
      scratch.close();
    }
  }
  return expectedSchema;
}

/** Integers are read as bigints; out-of-range ones stay visible (as "123n") so the check names them. */
function num(x: unknown): unknown {
  if (typeof x !== 'bigint') return x;
  return x >= BigInt(Number.MIN_SAFE_INTEGER) && x <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(x) : `${x}n`;
}
function flag(x: unknown): unknown {
  const n = num(x);
  return n === 0 ? false : n === 1 ? true : n;
}

const SELECT = {
  vms: 'SELECT id, quota, token_hash AS tokenHash, created_at AS createdAt FROM vms',
  viommus: 'SELECT vm, segment, layout, range_extension AS rangeExtension, pas_bit AS pasBit, pss, registers FROM viommus',
  devices: 'SELECT vm, bdf, segment, pasid_bits AS pasidBits FROM devices',
  pasids: 'SELECT pasid, vm, allocated_at AS allocatedAt FROM pasids',
  bindings: 'SELECT pasid, vm, bdf, bound_at AS boundAt FROM bindings',
  meta: 'SELECT key, value FROM meta',
  events: 'SELECT seq, at, type, vm, body FROM events',
} as const;

/** Read every row (integers as bigints, so nothing is silently rounded) and validate the lot. */
function loadState(db: Db, retention: number): StoredState {
  const all = (sql: string) => db.prepare(sql).safeIntegers(true).all() as Record<string, unknown>[];
  const ints = (r: Record<string, unknown>, ...fields: string[]) => {
    for (const f of fields) r[f] = num(r[f]);
    return r;
  };
  return validateStoredState({
    vms: all(SELECT.vms).map((r) => ints(r, 'quota', 'createdAt')),
    viommus: all(SELECT.viommus).map((r) => ({ ...ints(r, 'segment', 'pasBit', 'pss'), rangeExtension: flag(r['rangeExtension']) })),
    devices: all(SELECT.devices).map((r) => ints(r, 'segment', 'pasidBits')),
    pasids: all(SELECT.pasids).map((r) => ints(r, 'pasid', 'allocatedAt')),
    bindings: all(SELECT.bindings).map((r) => ints(r, 'pasid', 'boundAt')),
    meta: all(SELECT.meta).filter((r) => !(typeof r['key'] === 'string' && r['key'].startsWith(RESERVED_META_PREFIX))),
    events: all(`SELECT * FROM (${SELECT.events} ORDER BY seq DESC LIMIT ${retention}) ORDER BY seq`).map((r) => ints(r, 'seq', 'at')),
    lastSeq: num(db.prepare('SELECT coalesce(max(seq), 0) FROM events').pluck().safeIntegers(true).get()),
  });
}

type ViommuSql = Omit<ViommuRow, 'rangeExtension'> & { rangeExtension: number };
const viommuRow = (r: ViommuSql): ViommuRow => ({ ...r, rangeExtension: r.rangeExtension === 1 });

/** The rules' view of the tables: prepared once per connection, reused for every mutation. */
class SqliteTables implements StateTx {
  readonly #s;

  constructor(db: Db) {
    const p = <P extends unknown[], R = unknown>(sql: string): Stmt<P, R> => db.prepare<P, R>(sql);
    this.#s = {
      getVm: p<[string], VmRow>(`${SELECT.vms} WHERE id = ?`),
      getViommu: p<[string, number], ViommuSql>(`${SELECT.viommus} WHERE vm = ? AND segment = ?`),
      getDevice: p<[string, string], DeviceRow>(`${SELECT.devices} WHERE vm = ? AND bdf = ?`),
      getPasid: p<[number], PasidRow>(`${SELECT.pasids} WHERE pasid = ?`),
      getBinding: p<[number, string], BindingRow>(`${SELECT.bindings} WHERE pasid = ? AND bdf = ?`),
      getMeta: p<[string], MetaRow>(`${SELECT.meta} WHERE key = ?`),
      vmWithTokenHash: p<[string, string], string>('SELECT id FROM vms WHERE token_hash = ? AND id <> ?').pluck(),
      countPasidsOf: p<[string], number>('SELECT count(*) FROM pasids WHERE vm = ?').pluck(),
      hasViommusOf: p<[string], number>('SELECT EXISTS (SELECT 1 FROM viommus WHERE vm = ?)').pluck(),
      hasDevicesOf: p<[string], number>('SELECT EXISTS (SELECT 1 FROM devices WHERE vm = ?)').pluck(),
      hasDevicesOn: p<[string, number], number>('SELECT EXISTS (SELECT 1 FROM devices WHERE vm = ? AND segment = ?)').pluck(),
      isDeviceBound: p<[string, string], number>('SELECT EXISTS (SELECT 1 FROM bindings WHERE vm = ? AND bdf = ?)').pluck(),
      isPasidBound: p<[number], number>('SELECT EXISTS (SELECT 1 FROM bindings WHERE pasid = ?)').pluck(),
      putVm: p<[string, number, string, number]>(
        `INSERT INTO vms (id, quota, token_hash, created_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET quota = excluded.quota,
           token_hash = excluded.token_hash, created_at = excluded.created_at`),
      deleteVm: p<[string]>('DELETE FROM vms WHERE id = ?'),
      putViommu: p<[string, number, string, number, number, number, string | null]>(
        `INSERT INTO viommus (vm, segment, layout, range_extension, pas_bit, pss, registers) VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (vm, segment) DO UPDATE SET layout = excluded.layout, range_extension = excluded.range_extension,
           pas_bit = excluded.pas_bit, pss = excluded.pss, registers = excluded.registers`),
      setRegisters: p<[string, string, number]>('UPDATE viommus SET registers = ? WHERE vm = ? AND segment = ?'),
      deleteViommu: p<[string, number]>('DELETE FROM viommus WHERE vm = ? AND segment = ?'),
      putDevice: p<[string, string, number, number]>(
        `INSERT INTO devices (vm, bdf, segment, pasid_bits) VALUES (?, ?, ?, ?)
         ON CONFLICT (vm, bdf) DO UPDATE SET segment = excluded.segment, pasid_bits = excluded.pasid_bits`),
      deleteDevice: p<[string, string]>('DELETE FROM devices WHERE vm = ? AND bdf = ?'),
      insertPasid: p<[number, string | null, number]>('INSERT INTO pasids (pasid, vm, allocated_at) VALUES (?, ?, ?)'),
      deletePasid: p<[number]>('DELETE FROM pasids WHERE pasid = ?'),
      putBinding: p<[number, string, string, number]>(
        `INSERT INTO bindings (pasid, vm, bdf, bound_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (pasid, bdf) DO UPDATE SET vm = excluded.vm, bound_at = excluded.bound_at`),
      deleteBinding: p<[number, string]>('DELETE FROM bindings WHERE pasid = ? AND bdf = ?'),
      putMeta: p<[string, string]>('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value'),
      deleteMeta: p<[string]>('DELETE FROM meta WHERE key = ?'),
      appendEvent: p<[number, number, string, string | null, string]>('INSERT INTO events (seq, at, type, vm, body) VALUES (?, ?, ?, ?, ?)'),
      pruneEvents: p<[number]>('DELETE FROM events WHERE seq <= ?'),
    };
  }

  /** The last event number given (kept in step with the rows: a rolled-back batch puts it back). */
  lastSeq = 0;

  getVm(id: string) { return this.#s.getVm.get(id); }
  getViommu(vm: string, segment: number) {
    const r = this.#s.getViommu.get(vm, segment);
    return r && viommuRow(r);
  }
  getDevice(vm: string, bdf: string) { return this.#s.getDevice.get(vm, bdf); }
  getPasid(pasid: number) { return this.#s.getPasid.get(pasid); }
  getBinding(pasid: number, bdf: string) { return this.#s.getBinding.get(pasid, bdf); }
  getMeta(key: string) { return this.#s.getMeta.get(key); }
  vmWithTokenHash(hash: string, except: string) { return this.#s.vmWithTokenHash.get(hash, except); }
  countPasidsOf(vm: string) { return this.#s.countPasidsOf.get(vm) ?? 0; }
  hasViommusOf(vm: string) { return this.#s.hasViommusOf.get(vm) === 1; }
  hasDevicesOf(vm: string) { return this.#s.hasDevicesOf.get(vm) === 1; }
  hasDevicesOn(vm: string, segment: number) { return this.#s.hasDevicesOn.get(vm, segment) === 1; }
  isDeviceBound(vm: string, bdf: string) { return this.#s.isDeviceBound.get(vm, bdf) === 1; }
  isPasidBound(pasid: number) { return this.#s.isPasidBound.get(pasid) === 1; }

  putVm(r: VmRow) { this.#s.putVm.run(r.id, r.quota, r.tokenHash, r.createdAt); }
  deleteVm(id: string) { this.#s.deleteVm.run(id); }
  putViommu(r: ViommuRow) { this.#s.putViommu.run(r.vm, r.segment, r.layout, r.rangeExtension ? 1 : 0, r.pasBit, r.pss, r.registers); }
  setRegisters(vm: string, segment: number, registers: string) { this.#s.setRegisters.run(registers, vm, segment); }
  deleteViommu(vm: string, segment: number) { this.#s.deleteViommu.run(vm, segment); }
  putDevice(r: DeviceRow) { this.#s.putDevice.run(r.vm, r.bdf, r.segment, r.pasidBits); }
  deleteDevice(vm: string, bdf: string) { this.#s.deleteDevice.run(vm, bdf); }
  insertPasid(r: PasidRow) { this.#s.insertPasid.run(r.pasid, r.vm, r.allocatedAt); }
  deletePasid(pasid: number) { this.#s.deletePasid.run(pasid); }
  putBinding(r: BindingRow) { this.#s.putBinding.run(r.pasid, r.vm, r.bdf, r.boundAt); }
  deleteBinding(pasid: number, bdf: string) { this.#s.deleteBinding.run(pasid, bdf); }
  putMeta(r: MetaRow) { this.#s.putMeta.run(r.key, r.value); }
  deleteMeta(key: string) { this.#s.deleteMeta.run(key); }
  appendEvents(events: readonly NewEventRow[]) {
    for (const e of events) this.#s.appendEvent.run(++this.lastSeq, e.at, e.type, e.vm, e.body);
  }
  /** Delete the events numbered up to `seq` (retention). */
  pruneEvents(seq: number) { this.#s.pruneEvents.run(seq); }
}

interface Pending {
  readonly batch: readonly Mutation[];
  readonly resolve: (a: Applied) => void;
  readonly reject: (e: IoasidError) => void;
}

interface Connection {
  readonly db: Db;
  readonly tables: SqliteTables;
  readonly begin: Stmt;
  readonly commit: Stmt;
  readonly rollback: Stmt;
  readonly savepoint: Stmt;
  readonly release: Stmt;
  readonly rollbackTo: Stmt;
}

/** SQLite store on one file (or ':memory:', which is not durable). */
export class SqliteStore implements Store {
  readonly kind = 'sqlite' as const;
  readonly spec: string;
  /** The database file, as given. */
  readonly path: string;
  readonly #sync: SqliteSyncMode;
  readonly #lockTimeoutMs: number;
  readonly #retention: number;
  #conn: Connection | null = null;
  /** The seq below which events were last pruned. */
  #prunedTo = 0;
  #pending: Pending[] = [];
  #scheduled = false;
  #batches = 0;
  #failed = 0;
  #commits = 0;

  constructor(path: string, opts: SqliteStoreOptions = {}) {
    if (typeof path !== 'string' || path.length === 0) {
      throw new IoasidError('EINVAL', 'sqlite store needs a file path', { path });
    }
    const sync = opts.synchronous ?? 'full';
    if (!(SQLITE_SYNC_MODES as readonly string[]).includes(sync)) {
      throw new IoasidError('EINVAL', `synchronous must be one of ${SQLITE_SYNC_MODES.join(', ')}`, { synchronous: sync });
    }
    const timeout = opts.lockTimeoutMs ?? 1000;
    if (!Number.isInteger(timeout) || timeout < 0) {
      throw new IoasidError('EINVAL', 'lockTimeoutMs must be a non-negative integer', { lockTimeoutMs: timeout });
    }
    this.path = path;
    this.spec = `sqlite:${path}`;
    this.#sync = sync;
    this.#lockTimeoutMs = timeout;
    this.#retention = checkRetention(opts.eventRetention);
  }

  async open(): Promise<StoredState> {
    if (this.#conn) throw new IoasidError('EINVAL', `store ${this.spec} is already open`, { spec: this.spec });
    const path = this.path;
    const inMemory = path === ':memory:';
    // A file that exists but is empty is not a namespace that happens to be new: its PASIDs may
    // be in use by guests. Only a missing file starts afresh (docs/store.md).
    const existed = !inMemory && existsSync(path);
    if (existed && statSync(path).isFile() && statSync(path).size === 0) {
      throw refuse(path, 'the file is empty. It holds no namespace, but it was expected to: if this is meant to be a new namespace, delete the file (or give a path that does not exist) and start again', { empty: true });
    }
    let db: Db;
    try {
      if (!inMemory) mkdirSync(dirname(resolve(path)), { recursive: true });
      db = new Database(path, { timeout: this.#lockTimeoutMs });
    } catch (e) {
      throw storeError(e, `cannot open sqlite store ${path}`, { path });
    }
    try {
      // EXCLUSIVE before WAL: the WAL index then lives in heap memory and the lock is held until close.
      db.pragma('locking_mode = EXCLUSIVE');
      db.pragma('trusted_schema = OFF');
      const mode = db.pragma('journal_mode = WAL', { simple: true });
      if (mode !== 'wal' && !inMemory) throw refuse(path, `cannot enable WAL (journal_mode is ${String(mode)})`);
      db.pragma(`synchronous = ${this.#sync.toUpperCase()}`);
      db.pragma('foreign_keys = ON');
      const state = this.#checkOrCreate(db, existed);
      const tables = new SqliteTables(db);
      tables.lastSeq = state.lastSeq;
      this.#prunedTo = state.events[0]?.seq ?? state.lastSeq;
      this.#conn = {
        db,
        tables,
        begin: db.prepare('BEGIN IMMEDIATE'),
        commit: db.prepare('COMMIT'),
        rollback: db.prepare('ROLLBACK'),
        savepoint: db.prepare('SAVEPOINT batch'),
        release: db.prepare('RELEASE batch'),
        rollbackTo: db.prepare('ROLLBACK TO batch'),
      };
      return state;
    } catch (e) {
      try {
        db.close();
      } catch {
        // already failing; the first error is the one to report
      }
      throw storeError(e, `cannot open sqlite store ${path}`, { path });
    }
  }

  /** Identity, schema version and text, every row, then the physical check; a new file gets the schema. */
  #checkOrCreate(db: Db, existed: boolean): StoredState {
    const path = this.path;
    const objects = db.prepare<[], { n: number }>("SELECT count(*) AS n FROM sqlite_schema WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'").get();
    if (objects?.n === 0 && existed && db.pragma('application_id', { simple: true }) !== SQLITE_APPLICATION_ID) {
      throw refuse(path, 'the file is an SQLite database with no tables, not an ioasid store. If this is meant to be a new namespace, delete the file (or give a path that does not exist) and start again', { empty: true });
    }
    if (objects?.n === 0) {
      db.exec('BEGIN IMMEDIATE');
      try {
        db.pragma(`application_id = ${SQLITE_APPLICATION_ID}`);
        for (const ddl of SQLITE_SCHEMA) db.exec(ddl);
        db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run(SCHEMA_VERSION_KEY, String(SQLITE_SCHEMA_VERSION));
        db.exec('COMMIT');
      } catch (e) {
        if (db.inTransaction) db.exec('ROLLBACK');
        throw e;
      }
    }
    const appId = db.pragma('application_id', { simple: true });
    if (appId !== SQLITE_APPLICATION_ID) {
      throw refuse(path, `not an ioasid store (application_id ${String(appId)}, expected ${SQLITE_APPLICATION_ID})`, { applicationId: appId });
    }
    let version: unknown;
    try {
      version = db.prepare('SELECT value FROM meta WHERE key = ?').pluck().get(SCHEMA_VERSION_KEY);
    } catch (e) {
      if (e instanceof Database.SqliteError && e.code !== 'SQLITE_ERROR') throw e; // corrupt, I/O: reported as such
      throw refuse(path, 'no readable meta table', { table: 'meta', cause: e instanceof Error ? e.message : String(e) });
    }
    if (version === '1') {
      this.#migrateV1(db);
      version = String(SQLITE_SCHEMA_VERSION);
    }
    if (version !== String(SQLITE_SCHEMA_VERSION)) {
      throw refuse(path, `unknown schema version ${JSON.stringify(version ?? null)} (this build knows ${SQLITE_SCHEMA_VERSION})`, {
        table: 'meta', key: SCHEMA_VERSION_KEY, version: version ?? null,
      });
    }
    if (schemaFingerprint(db) !== expectedFingerprint()) {
      throw refuse(path, `schema differs from version ${SQLITE_SCHEMA_VERSION} (tables, indexes or constraints were changed)`, { table: 'sqlite_schema' });
    }
    let state: StoredState;
    try {
      state = loadState(db, this.#retention);
    } catch (e) {
      if (e instanceof IoasidError) {
        throw new IoasidError(e.code, `sqlite store ${path}: ${e.message}`, { path, ...e.details });
      }
      throw e;
    }
    // Last, the physical check: pages, indexes, CHECK and NOT NULL constraints of every row.
    const problems = (db.pragma('integrity_check') as { integrity_check: string }[]).map((r) => r.integrity_check);
    if (problems.length !== 1 || problems[0] !== 'ok') {
      const table = problems.map((p) => / in (\w+)/.exec(p)?.[1]).find((t) => t !== undefined);
      throw refuse(path, `integrity check failed: ${problems.slice(0, 5).join('; ')}`, {
        ...(table === undefined ? {} : { table }), integrity: problems.slice(0, 20),
      });
    }
    return state;
  }

  /** Schema version 1 -> 2 (sqlite-schema.ts), all or nothing. */
  #migrateV1(db: Db): void {
    db.pragma('foreign_keys = OFF');
    db.exec('BEGIN IMMEDIATE');
    try {
      for (const stmt of SQLITE_MIGRATE_V1_V2) db.exec(stmt);
      const broken = db.pragma('foreign_key_check') as unknown[];
      if (broken.length > 0) throw refuse(this.path, `migration from schema version 1 left ${broken.length} rows without their parent`, { migration: '1->2' });
      db.prepare('UPDATE meta SET value = ? WHERE key = ?').run(String(SQLITE_SCHEMA_VERSION), SCHEMA_VERSION_KEY);
      db.exec('COMMIT');
    } catch (e) {
      if (db.inTransaction) db.exec('ROLLBACK');
      if (e instanceof IoasidError) throw e;
      throw refuse(this.path, `cannot migrate schema version 1 to ${SQLITE_SCHEMA_VERSION}: ${e instanceof Error ? e.message : String(e)} (the file is unchanged)`, { migration: '1->2' });
    } finally {
      db.pragma('foreign_keys = ON');
    }
  }

  apply(batch: readonly Mutation[]): Promise<Applied> {
    let checked: readonly Mutation[];
    try {
      checked = checkBatch(batch);
    } catch (e) {
      this.#failed++;
      return Promise.reject(e);
    }
    if (!this.#conn) {
      this.#failed++;
      return Promise.reject(new IoasidError('EINVAL', `store ${this.spec} is not open`, { spec: this.spec }));
    }
    return new Promise<Applied>((resolve, reject) => {
      this.#pending.push({ batch: checked, resolve, reject });
      if (!this.#scheduled) {
        this.#scheduled = true;
        setImmediate(() => {
          this.#scheduled = false;
          this.#flush();
        });
      }
    });
  }

  /** Commit every queued batch in one transaction, one savepoint each; then settle in order. */
  #flush(): void {
    const group = this.#pending;
    this.#pending = [];
    if (group.length === 0) return;
    const c = this.#conn;
    if (!c) {
      const err = new IoasidError('EINVAL', `store ${this.spec} is not open`, { spec: this.spec });
      this.#failed += group.length;
      for (const p of group) p.reject(err);
      return;
    }
    const failed: (IoasidError | undefined)[] = [];
    const seqs: number[] = [];
    const lastSeq = c.tables.lastSeq;
    let fatal: unknown;
    try {
      c.begin.run();
      for (const p of group) {
        const before = c.tables.lastSeq;
        seqs.push(before + 1);
        c.savepoint.run();
        try {
          p.batch.forEach((m, i) => {
            try {
              applyMutation(c.tables, m, i);
            } catch (e) {
              throw storeError(e, `batch[${i}] ${m.op}`, { index: i, op: m.op });
            }
          });
          c.release.run();
          failed.push(undefined);
        } catch (e) {
          // An I/O error may have rolled back the whole transaction: then every batch fails.
          if (!c.db.inTransaction) throw e;
          c.rollbackTo.run();
          c.release.run();
          c.tables.lastSeq = before;
          failed.push(storeError(e, 'batch', {}));
        }
      }
      // Retention: the oldest events go, in the same transaction (the newest is always kept).
      if (c.tables.lastSeq - this.#retention - this.#prunedTo >= 1024) {
        c.tables.pruneEvents(c.tables.lastSeq - this.#retention);
        this.#prunedTo = c.tables.lastSeq - this.#retention;
      }
      c.commit.run();
    } catch (e) {
      c.tables.lastSeq = lastSeq;
      fatal = e;
      try {
        if (c.db.inTransaction) c.rollback.run();
      } catch {
        // the commit error is the one to report
      }
    }
    if (fatal !== undefined) {
      const cause = storeError(fatal, `sqlite store ${this.path}: commit failed, nothing of this group was applied`, { path: this.path });
      const err = cause instanceof CommitError ? cause : new CommitError(cause.code === 'EINVAL' ? 'EIO' : cause.code, cause.message, cause.details, { cause: fatal });
      this.#failed += group.length;
      for (const p of group) p.reject(err);
      return;
    }
    this.#commits++;
    group.forEach((p, i) => {
      const err = failed[i];
      if (err === undefined) {
        this.#batches++;
        p.resolve({ seq: seqs[i] as number });
      } else {
        this.#failed++;
        p.reject(err);
      }
    });
  }

  stats(): StoreStats {
    return { batches: this.#batches, failedBatches: this.#failed, commits: this.#commits };
  }

  /** The durability the open connection runs with, read back from SQLite (null when closed). */
  get synchronous(): SqliteSyncMode | null {
    if (this.#conn === null) return null;
    const level = this.#conn.db.pragma('synchronous', { simple: true });
    return level === 2 ? 'full' : level === 1 ? 'normal' : null;
  }

  async close(): Promise<void> {
    const c = this.#conn;
    if (!c) return;
    this.#flush();
    this.#conn = null;
    try {
      c.db.close();
    } catch (e) {
      throw storeError(e, `cannot close sqlite store ${this.path}`, { path: this.path });
    }
  }
}
