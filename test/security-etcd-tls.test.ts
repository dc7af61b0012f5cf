/**
 * etcd over TLS with client certificates and etcd authentication (docs/cluster.md, "TLS and
 * authentication"; src/store/etcd-security.ts). Certificates are made at test time with openssl in
 * a temporary folder; etcd runs as one member on a free loopback port and is stopped afterwards.
 *
 *  - the options alone: etcds:// parses, TLS options with etcd:// and half pairs (key without
 *    certificate, user without password file) are EINVAL, a `user:password` is refused without
 *    being echoed, etcd options on a local store are EINVAL;
 *  - the files: missing, not PEM, a key of another certificate, a secret file group/world
 *    readable, an empty or two-line password: each a clear error naming the file, never a secret;
 *  - a real etcd with TLS, --client-cert-auth and authentication: a wrong CA, no CA file, a missing
 *    client certificate, a client certificate of another CA, a wrong password, an unknown user and
 *    a user without permission each fail the start at once with an IoasidError naming what is wrong;
 *  - the right settings work end to end: a service on etcds:// with a user allocates and frees
 *    PASIDs (also after its auth token expired), and so does a client certificate alone (its CN
 *    is the etcd user);
 *  - a plaintext etcd: a user given while authentication is off is EINVAL, none given while it is
 *    on is EPERM, etcds:// to it breaks off in the TLS handshake;
 *  - `ioasid serve`: each refusal is one line `error: CODE: message (hint: ...)` and exit 1; the
 *    right flags (password file from the environment) serve; `--etcd-password` is refused unechoed.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { inspect } from 'node:util';
import { IoasidError } from '../src/core/index.ts';
import { EtcdCredentials, EtcdStore, openStore, parseEtcdSpec, plaintextPasswordWarning, type EtcdSecurityOptions } from '../src/store/index.ts';
import { startServer } from '../src/service/index.ts';
import { EtcdCluster, ETCD_SKIP } from './helpers/etcd-cluster.ts';
import { makeTestPki, PKI_SKIP, type TestPki } from './helpers/test-pki.ts';

const MAIN = resolve(import.meta.dirname, '../src/cli/main.ts');
const TSX = import.meta.resolve('tsx');
const ADMIN = 'etcd-tls-test-admin-token-0123456789';
const PASSWORD = 'pw-Ioasid-7f3c9a1e-not-a-real-secret';
const NOBODY_PASSWORD = 'pw-Nobody-1b2c3d4e';
const SKIP = ETCD_SKIP ?? PKI_SKIP ?? false;

const tmp = mkdtempSync(join(tmpdir(), 'ioasid-etcd-tls-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** A loopback port nothing listens on (taken, then released). */
function closedPort(): Promise<number> {
  return new Promise((done, fail) => {
    const srv = createServer();
    srv.on('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => done(port));
    });
  });
}

function secretFile(name: string, content: string, mode = 0o600): string {
  const p = join(tmp, name);
  writeFileSync(p, content, { mode });
  chmodSync(p, mode);
  return p;
}

/** No secret anywhere in what an error shows. */
function assertNoSecret(e: unknown, secrets: readonly string[]): void {
  const shown = e instanceof IoasidError ? `${e.message} ${JSON.stringify(e.details)} ${inspect(e)}` : String(e);
  for (const s of secrets) assert.ok(!shown.includes(s), `a secret appears in: ${shown}`);
}

function isErr(code: string, re: RegExp, reason?: string) {
  return (e: unknown) => {
    assert.ok(e instanceof IoasidError, `not an IoasidError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.match(e.message, re);
    if (reason !== undefined) assert.equal(e.details.reason, reason, e.message);
    return true;
  };
}

describe('etcd TLS and authentication: the options', () => {
  it('etcds:// names every member over TLS; TLS options with plaintext etcd:// are EINVAL', () => {
    assert.deepEqual(parseEtcdSpec('etcds://10.0.0.1:2379,10.0.0.2:2379'), ['10.0.0.1:2379', '10.0.0.2:2379']);
    for (const bad of ['etcds://', 'etcds://h', 'etcds://h:0']) assert.throws(() => parseEtcdSpec(bad), isErr('EINVAL', /endpoint|etcds:\/\//), bad);
    const s = openStore('etcds://127.0.0.1:1', { hostId: 'h1', etcdSecurity: { caFile: '/nonexistent/ca.pem' } });
    assert.ok(s instanceof EtcdStore);
    assert.equal(s.spec, 'etcds://127.0.0.1:1');
    assert.equal(new EtcdStore({ endpoints: ['127.0.0.1:1'], tls: true, hostId: 'h1' }).spec, 'etcds://127.0.0.1:1');
    for (const sec of [{ caFile: 'ca.pem' }, { certFile: 'c.pem', keyFile: 'c.key' }]) {
      assert.throws(() => openStore('etcd://127.0.0.1:1', { hostId: 'h1', etcdSecurity: sec }), isErr('EINVAL', /plaintext etcd:\/\/.*use etcds:\/\//, 'option'));
    }
  });

  it('a client key needs its certificate and the reverse; a user needs a password file and the reverse', () => {
    const spec = 'etcds://127.0.0.1:1';
    assert.throws(() => openStore(spec, { etcdSecurity: { keyFile: '/k.key' } }), isErr('EINVAL', /key \(\/k\.key\) needs its certificate/));
    assert.throws(() => openStore(spec, { etcdSecurity: { certFile: '/c.pem' } }), isErr('EINVAL', /certificate \(\/c\.pem\) needs its private key/));
    assert.throws(() => openStore(spec, { etcdSecurity: { user: 'ioasid' } }), isErr('EINVAL', /user "ioasid" needs a password file/));
    assert.throws(() => openStore(spec, { etcdSecurity: { passwordFile: '/pw' } }), isErr('EINVAL', /password file \(\/pw\) needs the etcd user/));
    assert.throws(() => openStore(spec, { etcdSecurity: { user: '', passwordFile: '/pw' } }), isErr('EINVAL', /non-empty name/));
    assert.throws(() => openStore(spec, { etcdSecurity: { user: 'a b', passwordFile: '/pw' } }), isErr('EINVAL', /without spaces/));
    // A user given the etcdctl way, name:password: refused without echoing either part.
    let caught: unknown;
    try {
      openStore(spec, { etcdSecurity: { user: 'ioasid:hunter2-secret', passwordFile: '/pw' } });
    } catch (e) {
      caught = e;
    }
    assert.ok(isErr('EINVAL', /without ":".*password file/)(caught));
    assertNoSecret(caught, ['hunter2-secret', 'ioasid:']);
    // Plaintext etcd:// takes a user (its password travels in clear: warned about at open).
    assert.ok(openStore('etcd://127.0.0.1:1', { etcdSecurity: { user: 'ioasid', passwordFile: '/pw' } }) instanceof EtcdStore);
  });

  it('no member answering at start is ETIMEDOUT after the retry budget, naming the members; nothing written', async () => {
    const dead = await closedPort();
    const store = openStore(`etcds://127.0.0.1:${dead}`, { hostId: 'h1', retry: { totalMs: 600 } });
    await assert.rejects(store.open(), isErr('ETIMEDOUT', new RegExp(`no etcd member answered \\(127\\.0\\.0\\.1:${dead}\\) after \\d+ attempts \\(connect ECONNREFUSED`)));
  });

  it('etcd options on a memory or SQLite store are EINVAL, not silently unused', async () => {
    for (const spec of ['memory', `sqlite:${join(tmp, 'x.db')}`]) {
      assert.throws(() => openStore(spec, { etcdSecurity: { caFile: 'ca.pem' } }), isErr('EINVAL', /need an etcd store/), spec);
    }
    await assert.rejects(
      startServer({ store: 'memory', etcdSecurity: { user: 'u', passwordFile: '/pw' }, port: 0, logLevel: 'silent', dashboard: false, say: () => {} }),
      isErr('EINVAL', /need an etcd store/),
    );
  });
});

describe('etcd TLS and authentication: the files', { skip: PKI_SKIP ?? false }, () => {
  let pki: TestPki;
  let keyPem: string;
  before(() => {
    pki = makeTestPki(join(tmp, 'pki-files'), { clients: ['ioasid'] });
    keyPem = readFileSync(pki.client('ioasid').key, 'utf8');
  });
  const keyBody = () => keyPem.split('\n')[1] ?? 'x';

  it('the right files load; what prints of them is the file names and the user, never a secret', () => {
    const pw = secretFile('good.pw', `${PASSWORD}\n`);
    const c = EtcdCredentials.load(true, { caFile: pki.ca, certFile: pki.client('ioasid').cert, keyFile: pki.client('ioasid').key, user: 'ioasid', passwordFile: pw });
    assert.equal(c.active, true);
    assert.equal(c.hasClientCertificate, true);
    const opts = c.clientOptions();
    assert.equal(opts.auth?.password, PASSWORD, 'the final newline is not part of the password');
    assert.equal(opts.auth?.username, 'ioasid');
    assert.ok(opts.credentials?.privateKey?.toString().includes(keyBody()));
    for (const shown of [JSON.stringify(c), inspect(c), c.describe(), JSON.stringify({ c })]) {
      assert.ok(!shown.includes(PASSWORD) && !shown.includes(keyBody()), shown);
      assert.match(shown, /ioasid/);
    }
    // No CA file: Node's CA list (rootCertificate null); plaintext with a user: no TLS credentials.
    assert.equal(EtcdCredentials.load(true, {}).clientOptions().credentials?.rootCertificate, null);
    assert.equal(EtcdCredentials.load(false, { user: 'ioasid', passwordFile: pw }).clientOptions().credentials, undefined);
    assert.equal(EtcdCredentials.load(false, {}).active, false);
  });

  it('a user over plaintext etcd:// to a member off this machine is warned about (its password travels in clear); loopback and TLS are not', () => {
    const pw = secretFile('warn.pw', `${PASSWORD}\n`);
    const plain = EtcdCredentials.load(false, { user: 'ioasid', passwordFile: pw });
    const w = plaintextPasswordWarning(plain, ['127.0.0.1:2379', '10.0.0.2:2379', '[::1]:2379', 'etcd-b.example:2379']);
    assert.match(w ?? '', /etcd user ioasid over plaintext etcd:\/\/: the password crosses the network in clear to 10\.0\.0\.2:2379, etcd-b\.example:2379; use etcds:\/\//);
    assert.ok(!(w ?? '').includes(PASSWORD));
    assert.equal(plaintextPasswordWarning(plain, ['127.0.0.1:2379', 'localhost:2379', '[::1]:2379']), null);
    assert.equal(plaintextPasswordWarning(EtcdCredentials.load(true, { user: 'ioasid', passwordFile: pw }), ['10.0.0.2:2379']), null);
    assert.equal(plaintextPasswordWarning(EtcdCredentials.load(false, {}), ['10.0.0.2:2379']), null);
  });

  it('a missing file is ENOENT, a file that is not PEM or holds another key is EINVAL, each naming the file', () => {
    const cl = pki.client('ioasid');
    assert.throws(() => EtcdCredentials.load(true, { caFile: join(tmp, 'nope.pem') }), isErr('ENOENT', /CA file .*nope\.pem does not exist/, 'file'));
    const notPem = secretFile('not-pem.pem', 'hello\n', 0o644);
    assert.throws(() => EtcdCredentials.load(true, { caFile: notPem }), isErr('EINVAL', /CA file .*not-pem\.pem holds no PEM certificate/, 'file'));
    assert.throws(() => EtcdCredentials.load(true, { caFile: tmp }), isErr('EINVAL', /is not a regular file/, 'file'));
    // The key of the other client certificate: caught here, not as an opaque TLS failure later.
    assert.throws(
      () => EtcdCredentials.load(true, { caFile: pki.ca, certFile: cl.cert, keyFile: pki.otherClient.key }),
      isErr('EINVAL', /other-client\.key is not the key of the certificate in .*client-ioasid\.pem/, 'file'),
    );
    const garbageKey = secretFile('garbage.key', 'not a key\n');
    assert.throws(() => EtcdCredentials.load(true, { certFile: cl.cert, keyFile: garbageKey }), isErr('EINVAL', /garbage\.key holds no PEM private key/, 'file'));
  });

  it('a password or key file readable by group or others is refused (chmod 600), and so is an empty or two-line password; no error shows a secret', () => {
    const cl = pki.client('ioasid');
    const errors: unknown[] = [];
    const expect = (fn: () => unknown, check: (e: unknown) => boolean) => {
      try {
        fn();
        assert.fail('no error');
      } catch (e) {
        assert.ok(check(e));
        errors.push(e);
      }
    };
    for (const mode of [0o644, 0o640, 0o604, 0o620]) {
      const pw = secretFile(`open-${mode.toString(8)}.pw`, `${PASSWORD}\n`, mode);
      expect(() => EtcdCredentials.load(true, { user: 'ioasid', passwordFile: pw }), isErr('EINVAL', new RegExp(`open-${mode.toString(8)}\\.pw is readable or writable by group or others \\(mode 0${mode.toString(8)}\\): chmod 600`), 'file'));
    }
    const openKey = secretFile('open.key', keyPem, 0o644);
    expect(() => EtcdCredentials.load(true, { certFile: cl.cert, keyFile: openKey }), isErr('EINVAL', /open\.key is readable or writable by group or others/, 'file'));
    // The CA and the certificate are public: their mode does not matter.
    chmodSync(cl.cert, 0o644);
    assert.ok(EtcdCredentials.load(true, { caFile: pki.ca, certFile: cl.cert, keyFile: cl.key }).hasClientCertificate);
    for (const [name, content, re] of [
      ['empty.pw', '', /empty\.pw is empty/],
      ['newline.pw', '\n', /newline\.pw is empty/],
      ['two.pw', `${PASSWORD}\nsecond-line-secret\n`, /two\.pw holds more than one line/],
    ] as const) {
      const pw = secretFile(name, content);
      expect(() => EtcdCredentials.load(true, { user: 'ioasid', passwordFile: pw }), isErr('EINVAL', re, 'file'));
    }
    const big = secretFile('big.pw', 'x'.repeat(5000));
    expect(() => EtcdCredentials.load(true, { user: 'ioasid', passwordFile: big }), isErr('EINVAL', /big\.pw is 5000 bytes, more than 4096/, 'file'));
    expect(() => EtcdCredentials.load(true, { user: 'ioasid', passwordFile: join(tmp, 'missing.pw') }), isErr('ENOENT', /missing\.pw does not exist/, 'file'));
    for (const e of errors) assertNoSecret(e, [PASSWORD, 'second-line-secret', keyBody()]);
  });
});

describe('etcd over TLS with --client-cert-auth and authentication: a real etcd', { skip: SKIP }, () => {
  let pki: TestPki;
  let etcd: EtcdCluster;
  let pw: string;
  let badPw: string;
  let nobodyPw: string;
  let keyBody: string;
  const servers: { close(): Promise<void> }[] = [];

  before(async () => {
    pki = makeTestPki(join(tmp, 'pki'), { clients: ['ioasid', 'root'] });
    keyBody = readFileSync(pki.client('ioasid').key, 'utf8').split('\n')[1] ?? 'x';
    // Auth tokens live 2 s unused here (etcd's default is 300 s): the service must renew them.
    etcd = await EtcdCluster.start({
      size: 1,
      authTokenTtlSec: 2,
      tls: { caFile: pki.ca, certFile: pki.server.cert, keyFile: pki.server.key, clientCertAuth: true, ctlCertFile: pki.client('root').cert, ctlKeyFile: pki.client('root').key },
    });
    await etcd.enableAuth('root-pw-0a1b2c3d');
    await etcd.addUser('ioasid', PASSWORD, '/ioasid/');
    await etcd.addUser('nobody', NOBODY_PASSWORD);
    await etcd.addUser('reader', NOBODY_PASSWORD, '/ioasid/', 'read');
    pw = secretFile('etcd.pw', `${PASSWORD}\n`);
    badPw = secretFile('wrong.pw', 'wrong-password-5e6f\n');
    nobodyPw = secretFile('nobody.pw', `${NOBODY_PASSWORD}\n`);
  });
  after(async () => {
    for (const s of servers) await s.close().catch(() => {});
    await etcd?.stop();
  });

  const full = (): EtcdSecurityOptions => ({ caFile: pki.ca, certFile: pki.client('ioasid').cert, keyFile: pki.client('ioasid').key, user: 'ioasid', passwordFile: pw });

  /** Open a store with these settings: it must fail; returns the error. */
  const refused = async (sec: EtcdSecurityOptions, domain: string): Promise<IoasidError> => {
    const store = openStore(etcd.spec, { hostId: 'h1', domain, etcdSecurity: sec });
    try {
      await store.open();
    } catch (e) {
      assertNoSecret(e, [PASSWORD, NOBODY_PASSWORD, 'wrong-password-5e6f', keyBody]);
      assert.ok(e instanceof IoasidError, `not an IoasidError: ${String(e)}`);
      return e;
    }
    await store.close();
    assert.fail('the store opened');
  };

  it('a wrong CA: EACCES naming the member and the CA file, at once (no retry can fix it)', async () => {
    const e = await refused({ ...full(), caFile: pki.otherCa }, 'wrongca');
    assert.ok(isErr('EACCES', /etcd member 127\.0\.0\.1:\d+ presented a certificate this host does not trust \(.*\); it was checked against the CA in .*other-ca\.pem/, 'server-certificate')(e));
    assert.equal(e.details.endpoint, etcd.endpoint(0));
  });

  it("no CA file: etcd's certificate is checked against Node's CA list, which does not know the test CA", async () => {
    const { caFile: _ca, ...rest } = full();
    const e = await refused(rest, 'noca');
    assert.ok(isErr('EACCES', /does not trust .*Node's default CA list \(no CA file was given\)/, 'server-certificate')(e));
  });

  it('a missing client certificate: EACCES saying etcd requires one', async () => {
    const e = await refused({ caFile: pki.ca, user: 'ioasid', passwordFile: pw }, 'nocert');
    assert.ok(isErr('EACCES', /etcd member 127\.0\.0\.1:\d+ requires a client certificate and none was given \(TLS alert: .*\)/, 'client-certificate')(e));
  });

  it('a client certificate of another CA: EACCES naming the certificate file', async () => {
    const e = await refused({ ...full(), certFile: pki.otherClient.cert, keyFile: pki.otherClient.key }, 'othercert');
    assert.ok(isErr('EACCES', /refused the client certificate in .*other-client\.pem/, 'client-certificate')(e));
  });

  it('a wrong password, or an unknown user: EPERM naming the user and the password file, never the password', async () => {
    const e = await refused({ ...full(), passwordFile: badPw }, 'wrongpw');
    assert.ok(isErr('EPERM', /refused etcd user "ioasid": wrong password or no such user \(password read from .*wrong\.pw\)/, 'password')(e));
    assert.equal(e.details.user, 'ioasid');
    const u = await refused({ ...full(), user: 'ghost' }, 'ghost');
    assert.ok(isErr('EPERM', /refused etcd user "ghost"/, 'password')(u));
  });

  it("a user without permission (or with read only) on the domain's keys: EACCES naming the user and the prefix", async () => {
    const e = await refused({ ...full(), user: 'nobody', passwordFile: nobodyPw }, 'noperm');
    assert.ok(isErr('EACCES', /denied etcd user "nobody" access to the domain's keys \(\/ioasid\/noperm\/, read and write\)/, 'permission')(e));
    // Read alone is not enough, and is found at start, before anything is written.
    const r = await refused({ ...full(), user: 'reader', passwordFile: nobodyPw }, 'readonly');
    assert.ok(isErr('EACCES', /denied etcd user "reader" access/, 'permission')(r));
    assert.equal((await etcd.etcdctl(['get', '--prefix', '--keys-only', '/ioasid/readonly/'])).stdout.trim(), '', 'nothing written');
  });

  it('the right settings: a service on etcds:// with a user allocates and frees PASIDs, also after its auth token expired', async () => {
    const say: string[] = [];
    const adminFile = secretFile('admin.token', `${ADMIN}\n`);
    const s = await startServer({
      store: etcd.spec, hostId: 'tls1', domain: 'tlsok', etcdSecurity: full(),
      port: 0, logLevel: 'info', dashboard: false, adminTokenFile: adminFile, say: (l) => say.push(l),
    });
    servers.push(s);
    const call = async (method: string, path: string, body?: unknown, token = ADMIN) => {
      const r = await fetch(`${s.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
      const text = await r.text();
      return { status: r.status, body: text.length > 0 ? JSON.parse(text) : undefined };
    };
    const pasidKeys = async () => {
      const r = await etcd.etcdctl(['get', '--prefix', '--keys-only', '/ioasid/tlsok/pasids/']);
      assert.equal(r.code, 0, r.stderr);
      return r.stdout.split('\n').filter((l) => l.length > 0).map((k) => Number.parseInt(k.split('/').pop() ?? '', 16)).sort((a, b) => a - b);
    };
    const vm = await call('POST', '/v1/vms', { id: 'vm1' });
    assert.equal(vm.status, 201, JSON.stringify(vm.body));
    const tok = vm.body.token as string;
    const a = await call('POST', '/v1/vms/vm1/pasids', { count: 3 }, tok);
    assert.equal(a.status, 201, JSON.stringify(a.body));
    const got = a.body.pasids as number[];
    assert.equal(got.length, 3);
    assert.deepEqual(await pasidKeys(), [...got].sort((x, y) => x - y), 'the PASIDs are in etcd');
    // Past the token's 2 s: the next calls authenticate again by themselves.
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal((await call('DELETE', `/v1/vms/vm1/pasids/${got[0]}`, undefined, tok)).status, 204);
    const b = await call('POST', '/v1/vms/vm1/pasids', { count: 1 }, tok);
    assert.equal(b.status, 201, JSON.stringify(b.body));
    const held = [...got.slice(1), ...(b.body.pasids as number[])].sort((x, y) => x - y);
    assert.deepEqual((await call('GET', '/v1/vms/vm1/pasids', undefined, tok)).body.pasids, held);
    assert.deepEqual(await pasidKeys(), held, 'the freed PASID left etcd, the new one is there');
    for (const p of held) assert.equal((await call('DELETE', `/v1/vms/vm1/pasids/${p}`, undefined, tok)).status, 204);
    assert.deepEqual(await pasidKeys(), []);
    const records = say.map((l) => JSON.parse(l) as { level: number; msg: string; store?: string; cluster?: boolean });
    assert.ok(records.some((r) => r.msg.startsWith('listening on ') && r.store?.startsWith('etcds://') === true), say.join('\n'));
    assert.ok(!records.some((r) => r.cluster === true && r.level >= 40), `no cluster warning: ${say.join('\n')}`);
    for (const l of say) assert.ok(!l.includes(PASSWORD), l);
    await s.close();
  });

  it('a client certificate alone (no password): etcd takes its CN as the user, and the store works', async () => {
    const cl = pki.client('ioasid');
    const store = openStore(etcd.spec, { hostId: 'cn1', domain: 'cnonly', etcdSecurity: { caFile: pki.ca, certFile: cl.cert, keyFile: cl.key } });
    servers.push(store);
    await store.open();
    await store.close();
    const r = await etcd.etcdctl(['get', '--prefix', '--keys-only', '/ioasid/cnonly/config']);
    assert.match(r.stdout, /\/ioasid\/cnonly\/config/);
  });

  describe('ioasid serve', () => {
    const children = new Set<ChildProcess>();
    after(() => {
      for (const c of children) c.kill('SIGKILL');
    });
    const serve = (args: readonly string[], env: Record<string, string> = {}) => {
      const base: NodeJS.ProcessEnv = { ...process.env };
      for (const k of Object.keys(base)) if (k.startsWith('IOASID_') || k === 'NODE_TEST_CONTEXT') delete base[k];
      const child = spawn(process.execPath, ['--import', TSX, MAIN, 'serve', '--port', '0', '--log-format', 'text', ...args], { cwd: tmp, env: { ...base, ...env } });
      children.add(child);
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const exited = new Promise<{ code: number | null; stderr: string }>((done) => child.once('close', (code) => {
        children.delete(child);
        done({ code, stderr });
      }));
      return { child, exited, stderr: () => stderr };
    };
    const failLine = (stderr: string) => {
      const lines = stderr.split('\n').filter((l) => l.length > 0);
      assert.equal(lines.length, 1, `one line: ${stderr}`);
      assert.ok(!/\bat .*\.ts:\d+/.test(stderr), `no stack: ${stderr}`);
      for (const s of [PASSWORD, 'wrong-password-5e6f', keyBody]) assert.ok(!stderr.includes(s), `no secret: ${stderr}`);
      return lines[0] ?? '';
    };

    it('a wrong CA, a missing client certificate, a wrong password: one line error: CODE: message (hint: ...), exit 1', async () => {
      const cl = pki.client('ioasid');
      const common = ['--store', etcd.spec, '--host-id', 'cli1', '--domain', 'cli', '--admin-token-file', secretFile('cli-admin.token', `${ADMIN}\n`)];
      const [ca, cert, pass] = await Promise.all([
        serve([...common, '--etcd-ca', pki.otherCa, '--etcd-cert', cl.cert, '--etcd-key', cl.key, '--etcd-user', 'ioasid', '--etcd-password-file', pw]).exited,
        serve([...common, '--etcd-ca', pki.ca, '--etcd-user', 'ioasid', '--etcd-password-file', pw]).exited,
        serve([...common, '--etcd-ca', pki.ca, '--etcd-cert', cl.cert, '--etcd-key', cl.key, '--etcd-user', 'ioasid', '--etcd-password-file', badPw]).exited,
      ]);
      assert.equal(ca.code, 1, ca.stderr);
      assert.match(failLine(ca.stderr), /^error: EACCES: etcd member 127\.0\.0\.1:\d+ presented a certificate this host does not trust .*other-ca\.pem \(hint: --etcd-ca must be the CA that signed etcd's --cert-file/);
      assert.equal(cert.code, 1, cert.stderr);
      assert.match(failLine(cert.stderr), /^error: EACCES: etcd member .* requires a client certificate and none was given .*\(hint: give --etcd-cert and --etcd-key/);
      assert.equal(pass.code, 1, pass.stderr);
      assert.match(failLine(pass.stderr), /^error: EPERM: etcd member .* refused etcd user "ioasid": wrong password or no such user \(password read from .*wrong\.pw\) \(hint: check --etcd-user and the password in --etcd-password-file/);
    });

    it('a bad combination or an unsafe password file is one line and exit 1; --etcd-password is refused without echoing it', async () => {
      const open = secretFile('cli-open.pw', `${PASSWORD}\n`, 0o644);
      const [combo, mode, pwFlag] = await Promise.all([
        serve(['--store', etcd.spec.replace('etcds://', 'etcd://'), '--etcd-ca', pki.ca]).exited,
        serve(['--store', etcd.spec, '--etcd-ca', pki.ca, '--etcd-user', 'ioasid', '--etcd-password-file', open]).exited,
        serve(['--store', etcd.spec, '--etcd-user', 'ioasid', '--etcd-password', 'on-the-command-line-secret']).exited,
      ]);
      assert.equal(combo.code, 1, combo.stderr);
      assert.match(failLine(combo.stderr), /^error: EINVAL: store etcd:\/\/.* is plaintext etcd:\/\/, yet a CA file was given: use etcds:\/\/.*\(hint: see ioasid serve --help/);
      assert.equal(mode.code, 1, mode.stderr);
      assert.match(failLine(mode.stderr), /^error: EINVAL: etcd password file .*cli-open\.pw is readable or writable by group or others \(mode 0644\): chmod 600/);
      assert.equal(pwFlag.code, 2, pwFlag.stderr);
      assert.match(failLine(pwFlag.stderr), /^error: EINVAL: --etcd-password is not accepted/);
      assert.ok(!pwFlag.stderr.includes('on-the-command-line-secret'), pwFlag.stderr);
    });

    it('the right flags (password file and user from the environment) serve PASIDs over etcds://; SIGTERM exits 0', async () => {
      const cl = pki.client('ioasid');
      const s = serve(
        ['--store', etcd.spec, '--host-id', 'cli2', '--domain', 'cliok', '--admin-token-file', secretFile('cli2-admin.token', `${ADMIN}\n`), '--etcd-ca', pki.ca, '--etcd-cert', cl.cert, '--etcd-key', cl.key],
        { IOASID_ETCD_USER: 'ioasid', IOASID_ETCD_PASSWORD_FILE: pw },
      );
      const url = await new Promise<string>((done, fail) => {
        const timer = setTimeout(() => fail(new Error(`no listening line: ${s.stderr()}`)), 30_000);
        s.child.stderr.on('data', () => {
          const m = /listening on (http:\/\/[^ ]+)/.exec(s.stderr());
          if (m?.[1] !== undefined) {
            clearTimeout(timer);
            done(m[1]);
          }
        });
        void s.exited.then((r) => fail(new Error(`exited ${r.code}: ${r.stderr}`)));
      });
      const h = { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' };
      const vm = await fetch(`${url}/v1/vms`, { method: 'POST', headers: h, body: JSON.stringify({ id: 'cvm' }) });
      assert.equal(vm.status, 201);
      const tok = ((await vm.json()) as { token: string }).token;
      const vh = { authorization: `Bearer ${tok}`, 'content-type': 'application/json' };
      const a = await fetch(`${url}/v1/vms/cvm/pasids`, { method: 'POST', headers: vh, body: JSON.stringify({ count: 2 }) });
      assert.equal(a.status, 201);
      const got = ((await a.json()) as { pasids: number[] }).pasids;
      assert.equal((await fetch(`${url}/v1/vms/cvm/pasids/${got[0]}`, { method: 'DELETE', headers: { authorization: `Bearer ${tok}` } })).status, 204);
      const keys = await etcd.etcdctl(['get', '--prefix', '--keys-only', '/ioasid/cliok/pasids/']);
      assert.equal(keys.stdout.split('\n').filter((l) => l.length > 0).length, 1, keys.stdout);
      s.child.kill('SIGTERM');
      const r = await s.exited;
      assert.equal(r.code, 0, r.stderr);
      assert.ok(!/DeprecationWarning|error:/.test(r.stderr), r.stderr);
      assert.ok(!r.stderr.includes(PASSWORD));
    });
  });
});

describe('a plaintext etcd and authentication', { skip: ETCD_SKIP ?? false }, () => {
  let etcd: EtcdCluster;
  before(async () => {
    etcd = await EtcdCluster.start({ size: 1 });
  });
  after(async () => {
    await etcd?.stop();
  });

  it('a user given while authentication is off is EINVAL; once it is on, none given is EPERM and the right one works; etcds:// to it breaks off in the handshake', async () => {
    const pw = secretFile('plain.pw', `${PASSWORD}\n`);
    const open = async (spec: string, sec: EtcdSecurityOptions | undefined, domain: string) => {
      const store = openStore(spec, { hostId: 'p1', domain, retry: { totalMs: 1500 }, ...(sec !== undefined ? { etcdSecurity: sec } : {}) });
      await store.open();
      await store.close();
    };
    await assert.rejects(open(etcd.spec, { user: 'ioasid', passwordFile: pw }, 'p1'), isErr('EINVAL', /has authentication disabled, yet etcd user "ioasid" was given/, 'auth-disabled'));
    await assert.rejects(open(etcd.spec.replace('etcd://', 'etcds://'), {}, 'p2'), isErr('EACCES', /broke off the TLS handshake .*a plaintext member is etcd:\/\//, 'tls-handshake'));
    await etcd.enableAuth('root-pw-9f8e7d6c');
    await etcd.addUser('ioasid', PASSWORD, '/ioasid/');
    await assert.rejects(open(etcd.spec, undefined, 'p3'), isErr('EPERM', /etcd member 127\.0\.0\.1:\d+ has authentication enabled and this host gave no etcd user/, 'no-credentials'));
    await assert.rejects(open(etcd.spec, { user: 'ioasid', passwordFile: secretFile('plain-bad.pw', 'nope\n') }, 'p4'), isErr('EPERM', /wrong password/, 'password'));
    await open(etcd.spec, { user: 'ioasid', passwordFile: pw }, 'p5');
    const r = await etcd.etcdctl(['get', '--prefix', '--keys-only', '/ioasid/p5/config']);
    assert.match(r.stdout, /\/ioasid\/p5\/config/);
  });
});
