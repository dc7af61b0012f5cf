/**
 * SQLite-only behaviour of the store: the file it makes (WAL, schema version, application id,
 * parent folders), the single-writer lock, and refusal at open of files that were tampered with
 * through a raw connection, of foreign SQLite files and of files that are not SQLite at all.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { IoasidError } from '../src/core/index.ts';
import { SQLITE_SCHEMA_VERSION, SqliteStore, openStore, type Mutation } from '../src/store/index.ts';

const root = mkdtempSync(join(tmpdir(), 'ioasid-store-sqlite-'));
after(() => rmSync(root, { recursive: true, force: true }));
let seq = 0;
const newPath = () => join(root, `case-${++seq}`, 'state.db');

const T = 1_700_000_000_000;
const DEV = '0000:00:02.0';
const WORLD: Mutation[] = [
  { op: 'putVm', row: { id: 'vm1', name: 'one', quota: 3, tokenHash: 'h1', createdAt: T } },
  { op: 'putViommu', row: { vm: 'vm1', segment: 0, layout: 'A', rangeExtension: false } },
  { op: 'putDevice', row: { vm: 'vm1', bdf: DEV, segment: 0, pasidBits: 20 } },
  { op: 'insertPasid', row: { pasid: 1, vm: 'vm1', allocatedAt: T } },
  { op: 'insertPasid', row: { pasid: 2, vm: 'vm1', allocatedAt: T } },
  { op: 'putBinding', row: { pasid: 1, vm: 'vm1', bdf: DEV, boundAt: T } },
  { op: 'putVm', row: { id: 'vm2', name: 'two', quota: 0, tokenHash: 'h2', createdAt: T } },
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
    tamper(p1, "UPDATE meta SET value = '2' WHERE key = 'store.schema'");
    await assert.rejects(openStore(`sqlite:${p1}`).open(), refused('meta', /unknown schema version "2"/));
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

  it('a VM above its quota: EINVAL naming pasids', async () => {
    const path = await written();
    tamper(path, "UPDATE vms SET quota = 1 WHERE id = 'vm1'");
    await assert.rejects(openStore(`sqlite:${path}`).open(), refused('pasids', /quota/));
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
    await s.apply([{ op: 'putVm', row: { id: 'vm1', name: 'one', quota: 0, tokenHash: 'h', createdAt: T } }]);
    await s.apply(Array.from({ length: 3000 }, (_, i): Mutation => ({ op: 'insertPasid', row: { pasid: i + 1, vm: 'vm1', allocatedAt: T } })));
    await s.close();
    const buf = readFileSync(path);
    const page = 4096;
    assert.ok(statSync(path).size >= 4 * page);
    for (let off = page; off + page <= buf.length; off += page) buf.fill(0xff, off, off + 8); // every page header but page 1
    writeFileSync(path, buf);
    await assert.rejects(openStore(`sqlite:${path}`).open(), refused(undefined, /corrupt|malformed|integrity/));
  });

  it('a truncated file: EINVAL', async () => {
    const path = newPath();
    const s = openStore(`sqlite:${path}`);
    await s.open();
    await s.apply([{ op: 'putVm', row: { id: 'vm1', name: 'one', quota: 0, tokenHash: 'h', createdAt: T } }]);
    await s.apply(Array.from({ length: 3000 }, (_, i): Mutation => ({ op: 'insertPasid', row: { pasid: i + 1, vm: 'vm1', allocatedAt: T } })));
    await s.close();
    const buf = readFileSync(path);
    writeFileSync(path, buf.subarray(0, Math.floor(buf.length / 4096 / 2) * 4096));
    await assert.rejects(openStore(`sqlite:${path}`).open(), refused());
  });
});
