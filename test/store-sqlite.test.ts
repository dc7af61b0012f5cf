/**
 * SQLite-only behaviour of the store: the file it makes (WAL, schema version, application id,
 * parent folders), the single-writer lock, and refusal at open of files that were tampered with
 * through a raw connection, of foreign SQLite files and of files that are not SQLite at all.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createHash } from 'node:crypto';
import Database from 'better-sqlite3';
import { IoasidError } from '../src/core/index.ts';
import { SQLITE_SCHEMA_VERSION, SqliteStore, openStore, type Mutation } from '../src/store/index.ts';
import { PasidAuthority } from '../src/service/index.ts';

const root = mkdtempSync(join(tmpdir(), 'ioasid-store-sqlite-'));
after(() => rmSync(root, { recursive: true, force: true }));
let seq = 0;
const newPath = () => join(root, `case-${++seq}`, 'state.db');

const T = 1_700_000_000_000;
const hash = (name: string): string => createHash('sha256').update(name).digest('hex');
const DEV = '0000:00:02.0';
const WORLD: Mutation[] = [
  { op: 'putVm', row: { id: 'vm1', quota: 3, tokenHash: hash('h1'), createdAt: T } },
  { op: 'putViommu', row: { vm: 'vm1', segment: 0, layout: 'A', rangeExtension: false, pasBit: 0, pss: 19, registers: null } },
  { op: 'putDevice', row: { vm: 'vm1', bdf: DEV, segment: 0, pasidBits: 20 } },
  { op: 'insertPasid', row: { pasid: 1, vm: 'vm1', allocatedAt: T } },
  { op: 'insertPasid', row: { pasid: 2, vm: 'vm1', allocatedAt: T } },
  { op: 'putBinding', row: { pasid: 1, vm: 'vm1', bdf: DEV, boundAt: T } },
  { op: 'putVm', row: { id: 'vm2', quota: 0, tokenHash: hash('h2'), createdAt: T } },
  { op: 'insertPasid', row: { pasid: 7, vm: 'vm2', allocatedAt: T } },
  { op: 'insertPasid', row: { pasid: 9, vm: null, allocatedAt: T } },
];

/** A store file holding WORLD, closed. */
async function written(path = newPath()): Promise<string> {
  const s = openStore(`sqlite:${path}`);
  await s.open();
  await s.apply(WORLD);
  await s.close();
  return path;
}

/** Edit the file behind the store's back, with the safety catches off. */
function tamper(path: string, sql: string, opts: { writableSchema?: boolean } = {}): void {
  const db = new Database(path);
  db.pragma('foreign_keys = OFF');
  db.pragma('ignore_check_constraints = ON');
  if (opts.writableSchema) {
    db.unsafeMode(true);
    db.pragma('writable_schema = ON');
  }
  db.exec(sql);
  db.close();
}

function refused(table?: string, pattern?: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof IoasidError, `expected IoasidError, got ${String(e)}`);
    assert.equal(e.code, 'EINVAL', e.message);
    if (table !== undefined) assert.equal(e.details['table'], table, e.message);
    if (pattern !== undefined) assert.match(e.message, pattern);
    assert.doesNotThrow(() => JSON.stringify(e), 'error details are JSON-safe');
    return true;
  };
}

describe('sqlite store: the file', () => {
  it('creates missing parent folders, WAL mode, schema version and application id', async () => {
    const path = join(root, 'deep', 'er', 'still', 'state.db');
    const s = openStore(`sqlite:${path}`);
    assert.equal(s.kind, 'sqlite');
    assert.equal(s.spec, `sqlite:${path}`);
    assert.equal(existsSync(path), false, 'nothing is touched before open()');
    await s.open();
    await s.apply(WORLD);
    await s.close();
    const db = new Database(path, { readonly: true });
    assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
    assert.equal(db.pragma('application_id', { simple: true }), 0x696f6173);
    assert.equal(db.prepare("SELECT value FROM meta WHERE key = 'store.schema'").pluck().get(), String(SQLITE_SCHEMA_VERSION));
    assert.equal(db.prepare('SELECT count(*) FROM pasids').pluck().get(), 4, 'one row per PASID');
    db.close();
  });

  it('the store-owned meta rows are not part of the state', async () => {
    const path = await written();
    const s = openStore(`sqlite:${path}`);
    const state = await s.open();
    assert.deepEqual(state.meta, []);
    await s.close();
  });

  it('sqlite::memory: works but is not durable', async () => {
    const s = openStore('sqlite::memory:');
    await s.open();
    await s.apply(WORLD);
    await s.close();
    const again = openStore('sqlite::memory:');
    assert.deepEqual((await again.open()).pasids, []);
    await again.close();
  });

  it('one writer: a second store on an open file gets EBUSY; it opens once the first is closed', async () => {
    const path = await written();
    const a = openStore(`sqlite:${path}`);
    await a.open();
    const b = openStore(`sqlite:${path}`, { lockTimeoutMs: 0 });
    await assert.rejects(b.open(), (e) => e instanceof IoasidError && e.code === 'EBUSY' && /another ioasid service/.test(e.message));
    const raw = new Database(path, { timeout: 0 });
    assert.throws(() => raw.prepare('SELECT count(*) FROM pasids').get(), /locked/);
    raw.close();
    await a.close();
    const state = await b.open();
    assert.equal(state.pasids.length, 4);
    await b.close();
  });

  it('rejects bad options and specs', () => {
    assert.throws(() => openStore('sqlite:'), /needs a path/);
    assert.equal(openStore('etcd://127.0.0.1:2379', { hostId: 'h1' } as never).kind, 'etcd');
    assert.equal(openStore('etcds://127.0.0.1:2379', { hostId: 'h1' } as never).kind, 'etcd');
    assert.throws(() => openStore('etcds://'), (e) => e instanceof IoasidError && e.code === 'EINVAL');
    assert.throws(() => openStore('postgres://x'), (e) => e instanceof IoasidError && e.code === 'EINVAL');
    assert.throws(() => new SqliteStore('x.db', { synchronous: 'off' as 'full' }), (e) => e instanceof IoasidError && e.code === 'EINVAL');
    assert.throws(() => new SqliteStore('x.db', { lockTimeoutMs: -1 }), (e) => e instanceof IoasidError && e.code === 'EINVAL');
  });
});

describe('sqlite store: refusal at open', () => {
  it('a file that is not SQLite at all: EINVAL naming the problem, and the file is left alone', async () => {
    const path = newPath();
    const s0 = openStore(`sqlite:${path}`);
    await s0.open();
    await s0.close();
    const garbage = Buffer.alloc(8192);
    for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 7919 + 13) & 0xff;
    writeFileSync(path, garbage);
    rmSync(`${path}-wal`, { force: true });
    const s = openStore(`sqlite:${path}`);
    await assert.rejects(s.open(), (e) => refused(undefined, /not an SQLite database/)(e) && (e as IoasidError).details['sqlite'] === 'SQLITE_NOTADB');
    assert.deepEqual(readFileSync(path), garbage);
    await assert.rejects(s.apply(WORLD), refused());
  });

  it('a text file: EINVAL', async () => {
    const path = newPath();
    await written(path);
    writeFileSync(path, 'pasid,vm\n1,vm1\n'.repeat(100));
    await assert.rejects(openStore(`sqlite:${path}`).open(), refused(undefined, /not an SQLite database/));
  });

  it('a foreign SQLite database (other tables, no ioasid application id): EINVAL', async () => {
    const path = newPath();
    await written(path);
    rmSync(path);
    const db = new Database(path);
    db.exec('CREATE TABLE pasids (pasid INTEGER PRIMARY KEY, owner TEXT)');
    db.close();
    await assert.rejects(openStore(`sqlite:${path}`).open(), refused(undefined, /not an ioasid store/));
  });

  it('a wrong or missing schema version: EINVAL naming meta', async () => {
    const p1 = await written();
    tamper(p1, "UPDATE meta SET value = '3' WHERE key = 'store.schema'");
    await assert.rejects(openStore(`sqlite:${p1}`).open(), refused('meta', /unknown schema version "3"/));
    const p2 = await written();
    tamper(p2, "DELETE FROM meta WHERE key = 'store.schema'");
    await assert.rejects(openStore(`sqlite:${p2}`).open(), refused('meta', /unknown schema version null/));
  });

  it('a schema whose constraints were edited away: EINVAL', async () => {
    const path = await written();
    tamper(path, `UPDATE sqlite_schema SET sql = replace(sql, 'CHECK (pasid BETWEEN 1 AND 1048575)', '') WHERE name = 'pasids'`, { writableSchema: true });
    await assert.rejects(openStore(`sqlite:${path}`).open(), refused('sqlite_schema', /schema differs/));
    const p2 = await written();
    tamper(p2, 'DROP INDEX bindings_by_device');
    await assert.rejects(openStore(`sqlite:${p2}`).open(), refused('sqlite_schema'));
  });

  it('PASID 0 (CHECK bypassed): EINVAL naming pasids', async () => {
    const path = await written();
    tamper(path, 'UPDATE pasids SET pasid = 0 WHERE pasid = 2');
    await assert.rejects(openStore(`sqlite:${path}`).open(), refused('pasids', /pasid must be an integer in \[1/));
  });

  it('a PASID owned by a VM that does not exist (foreign keys off): EINVAL naming pasids', async () => {
    const path = await written();
    tamper(path, "DELETE FROM vms WHERE id = 'vm2'");
    await assert.rejects(openStore(`sqlite:${path}`).open(), refused('pasids', /owner VM "vm2" does not exist/));
  });

  // Quotas are the host's rule, not the store's: the rows are consistent, and the service, which
  // rebuilds its host from them by the host's rules, refuses them at start.
  it('a VM above its quota: the store opens it, the service refuses to start on it (EINVAL, the quota named)', async () => {
    const path = await written();
    tamper(path, "UPDATE vms SET quota = 1 WHERE id = 'vm1'");
    const s = openStore(`sqlite:${path}`);
    assert.equal((await s.open()).pasids.length, 4);
    await s.close();
    await assert.rejects(PasidAuthority.open({ store: openStore(`sqlite:${path}`) }), refused(undefined, /quota of 1/));
  });

  it("a binding moved to another VM's PASID (foreign keys off): EINVAL naming bindings", async () => {
    const path = await written();
    tamper(path, 'UPDATE bindings SET pasid = 7 WHERE pasid = 1');
    await assert.rejects(openStore(`sqlite:${path}`).open(), refused('bindings', /owned by "vm2"/));
  });

  it('a device whose vIOMMU was removed (foreign keys off): EINVAL naming devices', async () => {
    const path = await written();
    tamper(path, 'DELETE FROM viommus');
    await assert.rejects(openStore(`sqlite:${path}`).open(), refused('devices', /no vIOMMU/));
  });

  it('an integer beyond 2^53 is reported, not rounded: EINVAL naming vms', async () => {
    const path = await written();
    tamper(path, "UPDATE vms SET created_at = 9007199254740993 WHERE id = 'vm1'");
    await assert.rejects(openStore(`sqlite:${path}`).open(), refused('vms', /9007199254740993n/));
  });

  it('damaged pages: EINVAL, never a crash', async () => {
    const path = newPath();
    const s = openStore(`sqlite:${path}`);
    await s.open();
    await s.apply([{ op: 'putVm', row: { id: 'vm1', quota: 0, tokenHash: hash('h'), createdAt: T } }]);
    await s.apply(Array.from({ length: 3000 }, (_, i): Mutation => ({ op: 'insertPasid', row: { pasid: i + 1, vm: 'vm1', allocatedAt: T } })));
    await s.close();
    const buf = readFileSync(path);
    const page = 4096;
    assert.ok(statSync(path).size >= 4 * page);
    for (let off = page; off + page <= buf.length; off += page) buf.fill(0xff, off, off + 8); // every page header but page 1
    writeFileSync(path, buf);
    await assert.rejects(openStore(`sqlite:${path}`).open(), refused(undefined, /corrupt|malformed|integrity/));
  });

  it('an empty file (0 bytes) is refused, not taken for a new namespace, and is left alone', async () => {
    const path = await written();
    writeFileSync(path, '');
    rmSync(`${path}-wal`, { force: true });
    await assert.rejects(openStore(`sqlite:${path}`).open(), refused(undefined, /empty.*delete the file/s));
    assert.equal(statSync(path).size, 0);
  });

  it('an SQLite database with no tables is refused (not an ioasid store)', async () => {
    const path = newPath();
    const s0 = openStore(`sqlite:${path}`);
    await s0.open();
    await s0.close();
    rmSync(path);
    const db = new Database(path);
    db.pragma('user_version = 1');
    db.close();
    await assert.rejects(openStore(`sqlite:${path}`).open(), refused(undefined, /no tables/));
  });

  it('a truncated file: EINVAL', async () => {
    const path = newPath();
    const s = openStore(`sqlite:${path}`);
    await s.open();
    await s.apply([{ op: 'putVm', row: { id: 'vm1', quota: 0, tokenHash: hash('h'), createdAt: T } }]);
    await s.apply(Array.from({ length: 3000 }, (_, i): Mutation => ({ op: 'insertPasid', row: { pasid: i + 1, vm: 'vm1', allocatedAt: T } })));
    await s.close();
    const buf = readFileSync(path);
    writeFileSync(path, buf.subarray(0, Math.floor(buf.length / 4096 / 2) * 4096));
    await assert.rejects(openStore(`sqlite:${path}`).open(), refused());
  });
});

describe('sqlite store: schema version 1', () => {
  /** The version 1 schema as it was shipped (kept here verbatim to make old files). */
  const V1 = [
    `CREATE TABLE meta (
  key TEXT NOT NULL PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 256),
  value TEXT NOT NULL
) STRICT, WITHOUT ROWID`,
    `CREATE TABLE vms (
  id TEXT NOT NULL PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128 AND id NOT GLOB '*[^!-~]*'),
  name TEXT NOT NULL,
  quota INTEGER NOT NULL CHECK (quota >= 0),
  token_hash TEXT NOT NULL,
  created_at INTEGER NOT NULL CHECK (created_at >= 0)
) STRICT, WITHOUT ROWID`,
    `CREATE TABLE viommus (
  vm TEXT NOT NULL REFERENCES vms (id) ON DELETE RESTRICT,
  segment INTEGER NOT NULL CHECK (segment BETWEEN 0 AND 65535),
  layout TEXT NOT NULL CHECK (layout IN ('A', 'B')),
  range_extension INTEGER NOT NULL CHECK (range_extension IN (0, 1)),
  PRIMARY KEY (vm, segment)
) STRICT, WITHOUT ROWID`,
    `CREATE TABLE devices (
  vm TEXT NOT NULL,
  bdf TEXT NOT NULL CHECK (length(bdf) = 12 AND bdf GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[01][0-9a-f].[0-7]'),
  segment INTEGER NOT NULL CHECK (segment BETWEEN 0 AND 65535),
  pasid_bits INTEGER NOT NULL CHECK (pasid_bits BETWEEN 1 AND 20),
  PRIMARY KEY (vm, bdf),
  FOREIGN KEY (vm, segment) REFERENCES viommus (vm, segment) ON DELETE RESTRICT
) STRICT, WITHOUT ROWID`,
    `CREATE INDEX devices_by_viommu ON devices (vm, segment)`,
  // One row per PASID; the rowid is the PASID, so "exists?" and create-if-absent are one B-tree probe.
    `CREATE TABLE pasids (
  pasid INTEGER PRIMARY KEY CHECK (pasid BETWEEN 1 AND 1048575),
  vm TEXT REFERENCES vms (id) ON DELETE RESTRICT,
  allocated_at INTEGER NOT NULL CHECK (allocated_at >= 0)
) STRICT`,
  // Counts per VM (quota) and the parent key of bindings (pasid, vm): a binding's VM is its PASID's owner.
    `CREATE UNIQUE INDEX pasids_by_vm ON pasids (vm, pasid)`,
    `CREATE TABLE bindings (
  pasid INTEGER NOT NULL,
  vm TEXT NOT NULL,
  bdf TEXT NOT NULL,
  bound_at INTEGER NOT NULL CHECK (bound_at >= 0),
  PRIMARY KEY (pasid, bdf),
  FOREIGN KEY (pasid, vm) REFERENCES pasids (pasid, vm) ON DELETE RESTRICT,
  FOREIGN KEY (vm, bdf) REFERENCES devices (vm, bdf) ON DELETE RESTRICT
) STRICT, WITHOUT ROWID`,
    `CREATE INDEX bindings_by_device ON bindings (vm, bdf)`,
  ];

  function v1File(rows: string[]): string {
    const path = newPath();
    mkdirSync(dirname(path), { recursive: true });
    const db = new Database(path);
    db.pragma('journal_mode = WAL');
    db.pragma('application_id = 1768907123');
    for (const ddl of V1) db.exec(ddl);
    db.exec("INSERT INTO meta VALUES ('store.schema', '1'), ('admin.tokenHash', 'x')");
    for (const r of rows) db.exec(r);
    db.close();
    return path;
  }

  it('a version 1 file is migrated at open: every row kept, new columns at their defaults, then it is version 2', async () => {
    const path = v1File([
      `INSERT INTO vms VALUES ('vm1', 'vm1', 4, '${hash('a')}', ${T})`,
      `INSERT INTO viommus VALUES ('vm1', 0, 'A', 1)`,
      `INSERT INTO devices VALUES ('vm1', '${DEV}', 0, 10)`,
      `INSERT INTO pasids VALUES (5, 'vm1', ${T}), (6, NULL, ${T})`,
      `INSERT INTO bindings VALUES (5, 'vm1', '${DEV}', ${T})`,
    ]);
    const s = openStore(`sqlite:${path}`);
    const state = await s.open();
    assert.deepEqual(state.vms, [{ id: 'vm1', quota: 4, tokenHash: hash('a'), createdAt: T }]);
    assert.deepEqual(state.viommus, [{ vm: 'vm1', segment: 0, layout: 'A', rangeExtension: true, pasBit: 0, pss: 19, registers: null }]);
    assert.deepEqual(state.pasids.map((p) => [p.pasid, p.vm]), [[5, 'vm1'], [6, null]]);
    assert.equal(state.bindings.length, 1);
    assert.deepEqual(state.meta, [{ key: 'admin.tokenHash', value: 'x' }]);
    assert.deepEqual([state.events, state.lastSeq], [[], 0]);
    await s.apply([{ op: 'appendEvents', events: [{ at: T, type: 'x', vm: null, body: '{}' }] }]);
    await s.close();
    const db = new Database(path, { readonly: true });
    assert.equal(db.prepare("SELECT value FROM meta WHERE key = 'store.schema'").pluck().get(), '2');
    db.close();
    const again = openStore(`sqlite:${path}`);
    assert.equal((await again.open()).lastSeq, 1, 'the migrated file opens as version 2');
    await again.close();
  });

  it('a version 1 row the version 2 rules refuse stops the migration, and the file is left as it was', async () => {
    // '-vm1' was a valid id in version 1 (printable ASCII) but is not in version 2 (starts with '-').
    const path = v1File([`INSERT INTO vms VALUES ('-vm1', '-vm1', 4, '${hash('a')}', ${T})`]);
    await assert.rejects(openStore(`sqlite:${path}`).open(), refused(undefined, /cannot migrate schema version 1.*unchanged/s));
    const db = new Database(path, { readonly: true });
    assert.equal(db.prepare("SELECT value FROM meta WHERE key = 'store.schema'").pluck().get(), '1');
    assert.equal(db.prepare('SELECT count(*) FROM vms').pluck().get(), 1);
    db.close();
  });
});

describe('sqlite store: event retention', () => {
  it('keeps the newest events within the retention, prunes the rest as it goes, and never loses count', async () => {
    const path = newPath();
    const s = openStore(`sqlite:${path}`, { eventRetention: 10 });
    await s.open();
    for (let i = 0; i < 30; i++) {
      await s.apply([{ op: 'appendEvents', events: Array.from({ length: 100 }, (_, j) => ({ at: T, type: 't', vm: null, body: `{"n":${i * 100 + j}}` })) }]);
    }
    await s.close();
    const db = new Database(path, { readonly: true });
    const kept = db.prepare('SELECT count(*) FROM events').pluck().get() as number;
    db.close();
    assert.ok(kept < 2000, `pruned as it went: ${kept} rows kept of 3000`);
    const again = openStore(`sqlite:${path}`, { eventRetention: 10 });
    const state = await again.open();
    assert.deepEqual(state.events.map((e) => e.seq), Array.from({ length: 10 }, (_, i) => 2991 + i));
    assert.equal(state.lastSeq, 3000);
    assert.deepEqual(await again.apply([{ op: 'appendEvents', events: [{ at: T, type: 't', vm: null, body: '{}' }] }]), { seq: 3001 });
    await again.close();
  });
});
