/**
 * Issue 13, item 8: token-hash tampering is refused at start, with a message naming the rows.
 *  - two VMs with the same token hash (one token would act as both): the state check refuses it
 *    (any backend); in SQLite the UNIQUE constraint makes it impossible to store, and a schema
 *    rewritten to drop that constraint is refused before a row is read;
 *  - a VM whose token hash is the admin's (its token would act as the admin): the authority;
 *  - an empty or malformed token hash, a VM's or the admin's: the row check, the authority.
 * Each is checked through PasidAuthority.open, and the SQLite ones through `ioasid serve`, which
 * exits 1 with one line.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { hashToken, PasidAuthority } from '../src/service/index.ts';
import { MemoryStore, openStore } from '../src/store/index.ts';
import { runCli } from './helpers/serve-process.ts';

const ADMIN = 'state-admin-token-0123456789abcdef';
const dir = mkdtempSync(join(tmpdir(), 'ioasid-state-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const adminFile = join(dir, 'admin.token');
writeFileSync(adminFile, `${ADMIN}\n`, { mode: 0o600 });
const H = (c: string) => c.repeat(64);

/** A stored state with two VMs (and the admin hash), as a backend hands it over. */
function state(vms: { id: string; tokenHash: string }[], adminHash: string | null = H('a')) {
  return {
    vms: vms.map((v) => ({ ...v, quota: 0, createdAt: 1 })),
    viommus: [], devices: [], pasids: [], bindings: [],
    meta: adminHash === null ? [] : [{ key: 'admin.tokenHash', value: adminHash }],
    events: [], lastSeq: 0,
  };
}

const refusal = (re: RegExp) => (e: unknown) => {
  assert.equal((e as { code?: string }).code, 'EINVAL', String(e));
  assert.match((e as Error).message, re);
  return true;
};

describe('security: token-hash tampering is refused at start, naming the rows', () => {
  it('two VMs with the same token hash', async () => {
    const store = new MemoryStore({ initial: state([{ id: 'alpha', tokenHash: H('1') }, { id: 'beta', tokenHash: H('1') }]) });
    await assert.rejects(PasidAuthority.open({ store }), refusal(/vms\[1\] \(id "beta"\): same token hash as VM "alpha": one token would act as both/));
  });

  it('a VM whose token hash is the admin\'s', async () => {
    const store = new MemoryStore({ initial: state([{ id: 'alpha', tokenHash: H('1') }, { id: 'beta', tokenHash: H('a') }]) });
    await assert.rejects(PasidAuthority.open({ store }), refusal(/vms\[1\] \(id "beta"\) has the token hash of meta admin\.tokenHash: VM beta's token would act as the admin/));
  });

  it('an empty or malformed token hash, a VM\'s or the admin\'s', async () => {
    for (const bad of ['', 'ABC', H('A'), H('g'), `${H('1')}0`]) {
      const vm = new MemoryStore({ initial: state([{ id: 'alpha', tokenHash: H('1') }, { id: 'beta', tokenHash: bad }]) });
      await assert.rejects(PasidAuthority.open({ store: vm }), refusal(/vms\[1\]: row\.tokenHash must be a token hash \(64 lowercase hex digits\)/), JSON.stringify(bad));
      const admin = new MemoryStore({ initial: state([{ id: 'alpha', tokenHash: H('1') }], bad) });
      await assert.rejects(PasidAuthority.open({ store: admin }), refusal(/meta admin\.tokenHash is not a token hash \(64 lowercase hex digits\)/), JSON.stringify(bad));
    }
  });

  it('the admin token cannot be set to a VM\'s, nor to something that is not a hash', async () => {
    const authority = await PasidAuthority.open({ store: new MemoryStore() });
    const { token } = await authority.createVm({ id: 'alpha' });
    await assert.rejects(authority.setAdminTokenHash(hashToken(token)), (e: unknown) => (e as { code?: string }).code === 'EEXIST');
    await assert.rejects(authority.setAdminTokenHash(''), (e: unknown) => (e as { code?: string }).code === 'EINVAL');
    await authority.close();
  });
});

describe('security: the same tampering in a SQLite file, through PasidAuthority.open and ioasid serve', () => {
  /** A database with VMs alpha and beta and the admin token, closed. */
  async function database(name: string): Promise<string> {
    const path = join(dir, `${name}.db`);
    const authority = await PasidAuthority.open({ store: openStore(`sqlite:${path}`) });
    await authority.setAdminTokenHash(hashToken(ADMIN));
    await authority.createVm({ id: 'alpha' });
    await authority.createVm({ id: 'beta' });
    await authority.close();
    return path;
  }

  /** `ioasid serve` on the file: its exit code and stderr. */
  function serve(path: string): Promise<{ code: number | null; stderr: string }> {
    const p = runCli(['serve', '--store', `sqlite:${path}`, '--port', '0', '--admin-token-file', adminFile, '--log-level', 'info'], { cwd: dir });
    // Should it start after all, stop it: the assertion below reports it.
    p.listening().then(() => p.child.kill('SIGTERM'), () => {});
    return p.exited.then(({ code }) => ({ code, stderr: p.stderr() }));
  }

  async function refusedBoth(path: string, re: RegExp): Promise<void> {
    await assert.rejects(PasidAuthority.open({ store: openStore(`sqlite:${path}`) }), refusal(re));
    const r = await serve(path);
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
    assert.match(r.stderr, /^error: EINVAL: /);
    assert.match(r.stderr, re);
  }

  it('a VM hash set to the admin\'s', async () => {
    const path = await database('admin-hash');
    const db = new Database(path);
    db.prepare("UPDATE vms SET token_hash = (SELECT value FROM meta WHERE key = 'admin.tokenHash') WHERE id = 'beta'").run();
    db.close();
    await refusedBoth(path, /vms\[1\] \(id "beta"\) has the token hash of meta admin\.tokenHash/);
  });

  it('an empty VM hash (written past the CHECK constraint)', async () => {
    const path = await database('empty-hash');
    const db = new Database(path);
    db.pragma('ignore_check_constraints = ON');
    db.prepare("UPDATE vms SET token_hash = '' WHERE id = 'alpha'").run();
    db.close();
    await refusedBoth(path, /stored state refused: vms\[0\]: row\.tokenHash must be a token hash \(64 lowercase hex digits\), got ""/);
  });

  it('an empty admin hash', async () => {
    const path = await database('empty-admin');
    const db = new Database(path);
    db.prepare("UPDATE meta SET value = '' WHERE key = 'admin.tokenHash'").run();
    db.close();
    await assert.rejects(PasidAuthority.open({ store: openStore(`sqlite:${path}`) }), refusal(/meta admin\.tokenHash is not a token hash/));
    // With --admin-token-file too: the file does not paper over a tampered row.
    const r = await serve(path);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^error: EINVAL: .*meta admin\.tokenHash is not a token hash/);
  });

  it('two VMs with the same hash cannot be stored (UNIQUE), and a schema rewritten without the constraint is refused', async () => {
    const path = await database('duplicate');
    const db = new Database(path);
    assert.throws(() => db.prepare("UPDATE vms SET token_hash = (SELECT token_hash FROM vms WHERE id = 'alpha') WHERE id = 'beta'").run(), /UNIQUE constraint failed: vms\.token_hash/);
    const ddl = (db.prepare("SELECT sql FROM sqlite_schema WHERE name = 'vms'").get() as { sql: string }).sql;
    db.pragma('foreign_keys = OFF');
    db.exec(`BEGIN; CREATE TABLE vms_copy AS SELECT * FROM vms; DROP TABLE vms; ${ddl.replace(/ UNIQUE/, '')}; INSERT INTO vms SELECT * FROM vms_copy; DROP TABLE vms_copy; COMMIT;`);
    db.prepare("UPDATE vms SET token_hash = (SELECT token_hash FROM vms WHERE id = 'alpha') WHERE id = 'beta'").run();
    db.close();
    await refusedBoth(path, /schema differs from version \d+ \(tables, indexes or constraints were changed\)/);
  });
});
