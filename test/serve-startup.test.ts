/**
 * `ioasid serve` as an operator starts it: the admin token file (adopted, never overwritten, and
 * how a lost one is replaced), the durability default, every start-up failure as one line with a
 * hint that writes nothing, and the log (one format, one stream). Each service runs as a child
 * process in a temporary folder.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IoasidClient } from '../src/client/index.ts';
import { SqliteStore } from '../src/store/index.ts';
import { startServer } from '../src/service/index.ts';
import { TSX, cleanEnv, runCli, unprivileged } from './helpers/serve-process.ts';

let root = '';
before(() => {
  root = mkdtempSync(join(tmpdir(), 'ioasid-serve-'));
  chmodSync(root, 0o755); // a child running as another user must reach its own folder below
});
after(() => rmSync(root, { recursive: true, force: true }));

let n = 0;
function folder(mode = 0o755): string {
  const d = join(root, `case-${++n}`);
  mkdirSync(d, { mode });
  chmodSync(d, mode);
  return d;
}

const serve = (cwd: string, ...args: string[]) => runCli(['serve', '--port', '0', ...args], { cwd });
const canList = async (url: string, token: string) => (await fetch(`${url}/v1/vms`, { headers: { authorization: `Bearer ${token}` } })).status;

describe('the admin token file', () => {
  it('a second service in the same folder adopts the first one\'s token file and never rewrites it: the token works on both', async () => {
    const cwd = folder();
    const first = serve(cwd, '--store', 'memory');
    const url1 = await first.listening();
    const file = join(cwd, 'var', 'admin.token');
    const token = readFileSync(file, 'utf8').trim();
    const stat1 = statSync(file);
    assert.equal(stat1.mode & 0o777, 0o600);
    const second = serve(cwd, '--store', 'memory');
    const url2 = await second.listening();
    assert.equal(readFileSync(file, 'utf8').trim(), token, 'the file is unchanged');
    assert.equal(statSync(file).mtimeMs, stat1.mtimeMs, 'not even rewritten');
    assert.equal(await canList(url1, token), 200, "the first service's clients still get in");
    assert.equal(await canList(url2, token), 200);
    assert.ok(second.lines().some((l) => /admin token adopted from/.test(l)), second.stderr());
    assert.deepEqual(readdirSync(join(cwd, 'var')), ['admin.token'], 'no temporary file left');
    await Promise.all([first.stop(), second.stop()]);
  });

  it('a store that has an admin keeps it: another token in the file is left as it is, and the log says so', async () => {
    const cwd = folder();
    const db = join(cwd, 'state', 'ioasid.db');
    let s = serve(cwd, '--store', `sqlite:${db}`);
    await s.listening();
    await s.stop();
    const file = join(cwd, 'state', 'admin.token');
    const original = readFileSync(file, 'utf8').trim();
    writeFileSync(file, 'someone-else-s-token-0123456789\n', { mode: 0o600 });
    s = serve(cwd, '--store', `sqlite:${db}`);
    const url = await s.listening();
    assert.equal(readFileSync(file, 'utf8'), 'someone-else-s-token-0123456789\n');
    assert.equal(await canList(url, original), 200);
    assert.equal(await canList(url, 'someone-else-s-token-0123456789'), 401);
    assert.ok(s.lines().some((l) => /is not this store's admin token: it was left unchanged/.test(l)), s.stderr());
    await s.stop();
  });

  it('a new store adopts the token file it finds (an empty namespace keeps the operators\' token)', async () => {
    const cwd = folder();
    mkdirSync(join(cwd, 'state'));
    writeFileSync(join(cwd, 'state', 'admin.token'), 'kept-from-before-0123456789\n', { mode: 0o600 });
    const s = serve(cwd, '--store', `sqlite:${join(cwd, 'state', 'ioasid.db')}`);
    const url = await s.listening();
    assert.equal(await canList(url, 'kept-from-before-0123456789'), 200);
    await s.stop();
  });

  it('a lost admin token is replaced by restarting with --admin-token-file (the old one stops working)', async () => {
    const cwd = folder();
    const db = `sqlite:${join(cwd, 'ioasid.db')}`;
    let s = serve(cwd, '--store', db);
    await s.listening();
    await s.stop();
    const lost = readFileSync(join(cwd, 'admin.token'), 'utf8').trim();
    rmSync(join(cwd, 'admin.token'));
    writeFileSync(join(cwd, 'new.token'), 'the-replacement-token-0123456789\n', { mode: 0o600 });
    s = serve(cwd, '--store', db, '--admin-token-file', join(cwd, 'new.token'));
    const url = await s.listening();
    assert.equal(await canList(url, 'the-replacement-token-0123456789'), 200);
    assert.equal(await canList(url, lost), 401);
    assert.ok(s.lines().some((l) => /admin token replaced by the one in/.test(l)), s.stderr());
    await s.stop();
  });

  it('a token file that is not a token (too short) fails the start with a hint; nothing is written', async () => {
    const cwd = folder();
    mkdirSync(join(cwd, 'var'));
    writeFileSync(join(cwd, 'var', 'admin.token'), 'short\n');
    const s = serve(cwd, '--store', 'memory');
    assert.equal((await s.exited).code, 1);
    assert.deepEqual(s.lines(), [s.lines()[0]]);
    assert.match(s.stderr(), /^error: EINVAL: the admin token in .*admin\.token .* at least 16 characters.* \(hint: .*openssl rand/);
    assert.equal(readFileSync(join(cwd, 'var', 'admin.token'), 'utf8'), 'short\n');
  });
});

describe('durability', () => {
  it('the service commits with synchronous=FULL unless told --sync normal', async () => {
    const dir = folder();
    for (const [sync, expected] of [[undefined, 'full'], ['normal', 'normal'], ['full', 'full']] as const) {
      const s = await startServer({ store: `sqlite:${join(dir, `${expected}-${sync ?? 'default'}.db`)}`, port: 0, stateDir: dir, logLevel: 'silent', dashboard: false, ...(sync !== undefined ? { sync } : {}) });
      assert.equal((s.authority.store as SqliteStore).synchronous, expected, `sync ${sync ?? '(default)'}`);
      await s.close();
    }
    const help = runCli(['serve', '--help'], { cwd: dir });
    await help.exited;
    assert.match(help.stdout().replace(/\s+/g, ' '), /--sync <mode> SQLite durability: full .*survives a power loss.* or normal .*a power loss can take back the last acknowledged changes.* \(default: "full"\)/);
  });
});

describe('start-up failures: one line, a hint, the right exit code, nothing written', () => {
  /** One failed start: its single stderr line and exit code; nothing left in the folder. */
  async function fails(cwd: string, args: string[], opts: { as?: { uid: number; gid: number } } = {}) {
    const before = readdirSync(cwd).sort();
    const s = runCli(['serve', ...args], { cwd, ...opts });
    const { code } = await s.exited;
    assert.equal(s.lines().length, 1, `one line: ${s.stderr()}`);
    assert.match(s.lines()[0] ?? '', /^error: E[A-Z]+: .+ \(hint: .+\)$/);
    assert.doesNotMatch(s.stderr(), /^\s+at /m, 'no stack without --debug');
    assert.deepEqual(readdirSync(cwd).sort(), before, 'nothing written');
    return { line: s.lines()[0] as string, code };
  }

  it('usage errors exit 2: an unknown store, sqlite: without a path, --sync, --log-level, --log-format, --port', async () => {
    const cwd = folder();
    const cases: [string[], RegExp][] = [
      [['--store', 'postgres://x'], /the store is memory, sqlite:PATH, etcd.* got "postgres:\/\/x" \(postgres: is not a store this service has\)/],
      [['--store', 'sqlite:'], /sqlite: needs a file path/],
      [['--sync', 'bogus'], /--sync must be one of full, normal, got "bogus"/],
      [['--log-level', 'loud'], /--log-level must be one of fatal, error, warn, info, debug, trace, silent, got "loud"/],
      [['--log-format', 'xml'], /--log-format must be one of json, text/],
      [['--port', 'abc'], /port must be an integer/],
      [['--bogus'], /unknown option '--bogus'/],
    ];
    const results = await Promise.all(cases.map(([args]) => fails(cwd, args)));
    results.forEach((r, i) => {
      assert.equal(r.code, 2, r.line);
      assert.match(r.line, /^error: EINVAL: /);
      assert.match(r.line, cases[i]![1]);
      assert.match(r.line, /\(hint: see ioasid serve --help\)$/);
    });
  });

  it('the port is in use: EADDRINUSE, exit 1, no token file; --debug adds the stack', async () => {
    const cwd = folder();
    const taken: Server = createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', () => r()));
    const port = String((taken.address() as { port: number }).port);
    const r = await fails(cwd, ['--store', 'memory', '--port', port]);
    assert.equal(r.code, 1);
    assert.match(r.line, new RegExp(`^error: EADDRINUSE: 127\\.0\\.0\\.1:${port} is already in use by another process \\(hint: another process listens there .*--port`));
    assert.equal(existsSync(join(cwd, 'var')), false, 'no admin token file before the start succeeded');
    const debug = runCli(['serve', '--store', 'memory', '--port', port, '--debug'], { cwd });
    assert.equal((await debug.exited).code, 1);
    assert.match(debug.lines()[0] ?? '', /^error: EADDRINUSE: /);
    assert.match(debug.stderr(), /^\s+at /m, 'the stack, with --debug');
    taken.close();
  });

  it('the database is used by another service: EBUSY, exit 1; the other service\'s token file is untouched', async () => {
    const cwd = folder();
    const db = `sqlite:${join(cwd, 'ioasid.db')}`;
    const first = serve(cwd, '--store', db);
    await first.listening();
    const token = readFileSync(join(cwd, 'admin.token'), 'utf8');
    const r = await fails(cwd, ['--store', db, '--port', '0']);
    assert.equal(r.code, 1);
    assert.match(r.line, /^error: EBUSY: .*the database is locked .*\(hint: another ioasid serve uses this database/);
    assert.equal(readFileSync(join(cwd, 'admin.token'), 'utf8'), token);
    await first.stop();
  });

  it('no permission on the data folder: EACCES naming the folder and the user, exit 1', async () => {
    const as = unprivileged();
    const cwd = folder();
    const locked = join(cwd, 'locked');
    mkdirSync(locked, { mode: as !== undefined ? 0o700 : 0o500 });
    chmodSync(locked, as !== undefined ? 0o700 : 0o500); // root's own folder for nobody, or a folder its owner may not write
    const r = await fails(cwd, ['--store', `sqlite:${join(locked, 'ioasid.db')}`, '--port', '0'], as !== undefined ? { as } : {});
    assert.equal(r.code, 1);
    assert.match(r.line, new RegExp(`^error: EACCES: no permission to write the data folder ${locked.replace(/[.]/g, '\\.')} .*\\(hint: ioasid serve runs as (user|uid) \\S+: give it write access to ${locked.replace(/[.]/g, '\\.')}`));
    chmodSync(locked, 0o700);
  });

  it('an existing database in a folder the service may not write (no WAL can be made): EACCES, exit 1', async () => {
    const as = unprivileged();
    const cwd = folder();
    const data = join(cwd, 'data');
    mkdirSync(data);
    const s = await startServer({ store: `sqlite:${join(data, 'ioasid.db')}`, port: 0, logLevel: 'silent', dashboard: false });
    await s.close();
    if (as !== undefined) for (const f of [data, ...readdirSync(data).map((x) => join(data, x))]) chownSync(f, as.uid, as.gid);
    chmodSync(data, 0o555);
    const r = await fails(cwd, ['--store', `sqlite:${join(data, 'ioasid.db')}`, '--port', '0'], as !== undefined ? { as } : {});
    assert.equal(r.code, 1);
    assert.match(r.line, /^error: EACCES: no permission to write the data folder .*\(disk I\/O error|unable to open database file|attempt to write a readonly database\)/);
    chmodSync(data, 0o755);
  });

  it('a data folder on a read-only file system: EROFS, exit 1 (needs root to mount one)', async (t) => {
    if (process.getuid?.() !== 0) return t.skip('mounting a read-only file system needs root');
    const cwd = folder();
    const mnt = join(cwd, 'ro');
    mkdirSync(mnt);
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt], { stdio: 'ignore' });
    } catch {
      return t.skip('this machine does not let the test mount a file system');
    }
    try {
      const s = await startServer({ store: `sqlite:${join(mnt, 'ioasid.db')}`, port: 0, logLevel: 'silent', dashboard: false });
      await s.close();
      execFileSync('mount', ['-o', 'remount,ro', mnt]);
      const r = await fails(cwd, ['--store', `sqlite:${join(mnt, 'ioasid.db')}`, '--port', '0']);
      assert.equal(r.code, 1);
      assert.match(r.line, new RegExp(`^error: EROFS: the data folder ${mnt.replace(/[.]/g, '\\.')} is on a read-only file system .*\\(hint: .*mounted read-only`));
    } finally {
      execFileSync('umount', [mnt]);
    }
  });
});

describe('the log: one format, one stream', () => {
  it('JSON by default: every line a record; no request line at info, one per request at debug', async () => {
    const cwd = folder();
    const s = serve(cwd, '--store', 'memory');
    const url = await s.listening();
    const token = readFileSync(join(cwd, 'var', 'admin.token'), 'utf8').trim();
    const admin = new IoasidClient({ url, token });
    await admin.createVm({ id: 'vm1' });
    await admin.allocPasids('vm1');
    await s.stop();
    const records = s.lines().map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(records.map((r) => r.msg), [
      `admin token created in ${join(cwd, 'var', 'admin.token')} (mode 0600; the store keeps only its hash)`,
      `listening on ${url}`,
      `dashboard: ${url}/ (sign in with the token in ${join(cwd, 'var', 'admin.token')})`,
      `next, in another terminal: ioasid status --url ${url}`,
      'SIGTERM: finishing requests in flight and closing the store',
      'stopped',
    ]);
    assert.equal(records[1]?.url, url);
    assert.equal(records[1]?.store, 'memory');
    assert.equal(s.stdout(), '', 'nothing on stdout');

    const d = serve(cwd, '--store', 'memory', '--log-level', 'debug');
    const durl = await d.listening();
    await new IoasidClient({ url: durl, token }).createVm({ id: 'vm2' });
    await fetch(`${durl}/healthz`);
    await d.stop();
    const requests = d.lines().map((l) => JSON.parse(l) as { msg?: string; req?: { method: string; url: string }; status?: number }).filter((r) => r.msg === 'request completed');
    assert.deepEqual(requests.map((r) => [r.req?.method, r.req?.url, r.status]), [['POST', '/v1/vms', 201], ['GET', '/healthz', 200]], 'one line per request');
  });

  it('--log-format text: readable lines; the banner ends with the dashboard URL and the next command; npm start uses it', async () => {
    const cwd = folder();
    const s = serve(cwd, '--store', 'memory', '--log-format', 'text');
    const url = await s.listening();
    await s.stop();
    const lines = s.lines();
    for (const l of lines) assert.match(l, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARN) {1,2}\S/);
    const banner = lines.slice(0, 4).map((l) => l.replace(/^\S+ \S+\s+/, ''));
    assert.match(banner[1] ?? '', new RegExp(`^listening on ${url.replace(/[.]/g, '\\.')} store=memory adminTokenFile=\\S+$`), 'the URL once: a field the message says is left out');
    assert.match(banner[2] ?? '', new RegExp(`^dashboard: ${url.replace(/[.]/g, '\\.')}/ \\(sign in with the token in `));
    assert.match(banner[3] ?? '', /^next, in another terminal: ioasid status --url http/);
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { scripts: { start: string } };
    assert.equal(pkg.scripts.start, 'node bin/ioasid.js serve --log-format text');
  });
});

describe('signals while the service starts', () => {
  const fixture = new URL('./fixtures/signal-during-start.ts', import.meta.url).pathname;
  const run = (signals: string[]) => {
    const cwd = folder();
    return new Promise<{ code: number | null; signal: NodeJS.Signals | null; msgs: string[]; stderr: string }>((done, fail) => {
      const c = spawn(process.execPath, ['--import', TSX, fixture, join(cwd, 'state'), ...signals], { cwd, env: cleanEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      c.stderr.on('data', (d: Buffer) => (err += d.toString()));
      const kill = setTimeout(() => c.kill('SIGKILL'), 20_000);
      c.on('error', fail);
      c.on('close', (code, signal) => {
        clearTimeout(kill);
        const msgs = err.split('\n').filter((l) => l.startsWith('{')).map((l) => (JSON.parse(l) as { msg: string }).msg);
        done({ code, signal, msgs, stderr: err });
      });
    });
  };

  it('a SIGTERM that arrives before the service listens is a clean stop once the start is over, not a kill mid-write', async () => {
    const r = await run(['SIGTERM']);
    assert.equal(r.signal, null, `the process was not killed by the signal: ${r.stderr}`);
    assert.equal(r.code, 0, r.stderr);
    const at = r.msgs.findIndex((m) => m.startsWith('listening on '));
    assert.ok(at >= 0, `it finished starting: ${r.stderr}`);
    assert.deepEqual(r.msgs.slice(-2), ['SIGTERM: finishing requests in flight and closing the store', 'stopped']);
  });

  it('a second signal while starting exits at once, with 128 + its number', async () => {
    const r = await run(['SIGTERM', 'SIGINT']);
    assert.equal(r.signal, null, r.stderr);
    assert.equal(r.code, 130, r.stderr);
    assert.match(r.stderr, /^SIGINT again while starting: exiting now$/m);
    assert.ok(!r.msgs.includes('stopped'), r.stderr);
  });
});
