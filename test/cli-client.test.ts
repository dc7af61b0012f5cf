/**
 * The client commands against a real service: the service runs in this process on 127.0.0.1
 * (port 0). The CLI runs as `node --import tsx src/cli/main.ts ...` child processes (`spawnCli`)
 * for each command's main path, its error exits and `watch`; variants (--json, token sources,
 * more refusals) run the same command objects in process (`cli`) to keep the suite quick.
 * Exit codes: 1 refused or unreachable, 2 usage. The colour rule is checked in process (a
 * child's stdout is never a terminal).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Command } from 'commander';
import { IoasidClient } from '../src/client/index.ts';
import { startServer, type RunningServer } from '../src/service/index.ts';
import { clientCommands, pasidCommand, vmCommand, type CliIo } from '../src/cli/client-commands.ts';
import { describeEvent, runs, table } from '../src/cli/format.ts';

const MAIN = resolve(import.meta.dirname, '../src/cli/main.ts');
const TSX = import.meta.resolve('tsx');
const ADMIN = 'cli-test-admin-token-0123456789abcdef';
const ANSI = /\x1b\[/;

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Environment of a child: no inherited IOASID_* or colour settings. */
function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ['IOASID_URL', 'IOASID_TOKEN', 'NO_COLOR', 'FORCE_COLOR', 'NODE_TEST_CONTEXT']) delete env[k];
  return { ...env, ...extra };
}

function spawnCli(args: readonly string[], opts: { env?: Record<string, string>; cwd?: string } = {}): Promise<Run> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, ['--import', TSX, MAIN, ...args], { cwd: opts.cwd ?? tmp, env: childEnv(opts.env) });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', fail);
    child.on('close', (code, signal) => done({ code, signal, stdout, stderr }));
  });
}

function captureIo(over: Partial<CliIo> = {}) {
  const out: string[] = [];
  const err: string[] = [];
  let code = 0;
  const value: CliIo = {
    stdout: (s) => void out.push(s),
    stderr: (s) => void err.push(s),
    stdoutIsTTY: false,
    stderrIsTTY: false,
    env: {},
    cwd: tmp,
    exit: (c) => {
      throw Object.assign(new Error(`exit ${c}`), { exitCode: c });
    },
    setExitCode: (c) => {
      code = c;
    },
    onStop: () => () => {},
    ...over,
  };
  return { value, out: () => out.join(''), err: () => err.join(''), code: () => code };
}

/** The same commands in this process (no child start-up cost); exit codes as the CLI would end. */
async function cli(args: readonly string[], opts: { env?: Record<string, string>; cwd?: string } = {}): Promise<Run> {
  const cap = captureIo({ env: opts.env ?? {}, cwd: opts.cwd ?? tmp });
  const program = new Command('ioasid');
  for (const c of clientCommands(cap.value)) program.addCommand(c);
  let code = 0;
  try {
    await program.parseAsync(['node', 'ioasid', ...args]);
    code = cap.code();
  } catch (e) {
    if (typeof (e as { exitCode?: unknown }).exitCode !== 'number') throw e;
    code = (e as { exitCode: number }).exitCode;
  }
  return { code, signal: null, stdout: cap.out(), stderr: cap.err() };
}

async function freePort(): Promise<number> {
  return new Promise((done) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => done(typeof a === 'object' && a !== null ? a.port : 0));
    });
  });
}

let tmp = '';
let server: RunningServer;
let url = '';
let conn: string[] = [];
const admin = () => new IoasidClient({ url, token: ADMIN });

async function start(dir: string): Promise<RunningServer> {
  const tokenFile = join(dir, 'admin.token');
  writeFileSync(tokenFile, `${ADMIN}\n`);
  return startServer({ store: 'memory', host: '127.0.0.1', port: 0, adminTokenFile: tokenFile, stateDir: dir, logLevel: 'silent', say: () => {} });
}

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'ioasid-cli-'));
  server = await start(tmp);
  url = server.url;
  conn = ['--url', url, '--token', ADMIN];
});
after(async () => {
  await server.close();
  rmSync(tmp, { recursive: true, force: true });
});

describe('ioasid vm', () => {
  let vm1Token = '';

  it('vm create prints the VM and its token once, and says so', async () => {
    const r = await spawnCli(['vm', 'create', 'vm1', '--quota', '4', '--viommu', '0', '--viommu', '1:A', '--device', '0000:00:02.0:10', ...conn]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /created VM vm1/);
    assert.match(r.stdout, /0 of quota 4/);
    assert.match(r.stdout, /segment 1 \(layout A\)/);
    assert.match(r.stdout, /0000:00:02\.0 \(segment 0, 10 PASID bits\)/);
    const m = /^token\s+(\S+)$/m.exec(r.stdout);
    assert.ok(m, r.stdout);
    vm1Token = m[1] as string;
    assert.match(r.stdout, /shown once/);
    assert.doesNotMatch(r.stdout, ANSI, 'no colour when stdout is not a terminal');
    assert.deepEqual(await new IoasidClient({ url, token: vm1Token }).listPasids('vm1'), [], 'the printed token is the VM\'s');
  });

  it('vm create --json prints the service\'s answer', async () => {
    const r = await spawnCli(['vm', 'create', 'vm2', '--viommu', '0:B:rx', '--json', ...conn]);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.vm.id, 'vm2');
    assert.deepEqual(j.vm.viommus, [{ segment: 0, layout: 'B', rangeExtension: true }]);
    assert.equal(typeof j.token, 'string');
  });

  it('vm list is a table; --json is { vms }', async () => {
    await admin().allocPasids('vm1', { count: 2 });
    await admin().bind('vm1', 1, '0000:00:02.0');
    const r = await spawnCli(['vm', 'list', ...conn]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n');
    assert.match(lines[0] ?? '', /^ID\s+USED\/QUOTA\s+USE\s+VIOMMUS\s+DEVICES\s+BINDINGS$/);
    assert.match(lines[1] ?? '', /^vm1\s+2\/4\s+50%\s+0:B 1:A\s+0000:00:02\.0\s+1$/);
    assert.match(lines[2] ?? '', /^vm2\s+0\/\d+\s+0%\s+0:B:rx\s+-\s+0$/);
    const j = JSON.parse((await cli(['vm', 'list', '--json', ...conn])).stdout);
    assert.deepEqual(j.vms.map((v: { id: string; used: number }) => [v.id, v.used]), [['vm1', 2], ['vm2', 0]]);
  });

  it('vm show with the VM\'s own token', async () => {
    const r = await cli(['vm', 'show', 'vm1', '--url', url, '--token', vm1Token]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /bindings\s+0000:00:02\.0 -> PASID 1 \(0x1\)/);
  });

  it('vm destroy frees the VM\'s PASIDs and drops its bindings', async () => {
    await admin().createVm({ id: 'doomed', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:05.0' }] });
    await admin().allocPasids('doomed', { count: 3 });
    await admin().bind('doomed', 3, '0000:00:05.0');
    const r = await spawnCli(['vm', 'destroy', 'doomed', ...conn]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /destroyed VM doomed: freed 3 PASIDs \(3-5\), dropped 1 binding$/m);
    assert.deepEqual((await admin().listVms()).map((v) => v.id), ['vm1', 'vm2']);
    const again = await cli(['vm', 'destroy', 'doomed', '--json', ...conn]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /^error: ENOENT: /);
    assert.equal(again.stdout, '');
  });
});

describe('ioasid pasid', () => {
  it('alloc, list, show, bind, unbind and free, human and --json', async () => {
    const a = await spawnCli(['pasid', 'alloc', 'vm2', '--count', '3', '--min', '0x100', ...conn]);
    assert.equal(a.code, 0, a.stderr);
    assert.match(a.stdout, /^allocated 3 PASIDs to VM vm2: 256-258$/m);
    const one = JSON.parse((await cli(['pasid', 'alloc', 'vm2', '--min', '0x100', '--max', '0x200', '--json', ...conn])).stdout);
    assert.deepEqual(one, { vm: 'vm2', pasids: [259] });
    const single = await cli(['pasid', 'alloc', 'vm2', '--min', '1000', ...conn]);
    assert.match(single.stdout, /^allocated PASID 1000 \(0x3e8\) to VM vm2$/m);

    const list = await spawnCli(['pasid', 'list', 'vm2', ...conn]);
    assert.match(list.stdout, /^VM vm2 holds 5 PASIDs: 256-259, 1000$/m);
    assert.deepEqual(JSON.parse((await cli(['pasid', 'list', 'vm2', '--json', ...conn])).stdout).pasids, [256, 257, 258, 259, 1000]);

    const free = await spawnCli(['pasid', 'free', 'vm2', '0x3e8', ...conn]);
    assert.equal(free.code, 0, free.stderr);
    assert.match(free.stdout, /^freed PASID 1000 \(0x3e8\) of VM vm2$/m);
    assert.deepEqual(await admin().listPasids('vm2'), [256, 257, 258, 259]);

    const show = await spawnCli(['pasid', 'show', '1', ...conn]);
    assert.equal(show.code, 0, show.stderr);
    assert.match(show.stdout, /^PASID 1 \(0x1\)$/m);
    assert.match(show.stdout, /owner\s+vm1/);
    assert.match(show.stdout, /bindings\s+0000:00:02\.0/);
    // The batch of two that held PASID 1 is one event (one commit, one line).
    assert.match(show.stdout, /#\d+\s+alloc\s+2 PASIDs \(1-2\) allocated to VM vm1/);
    assert.match(show.stdout, /#\d+\s+bind\s+device 0000:00:02\.0 of VM vm1 bound to PASID 1 \(0x1\)/);
    const showJson = JSON.parse((await cli(['pasid', 'show', '1', '--json', ...conn])).stdout);
    assert.equal(showJson.owner, 'vm1');
    assert.deepEqual(showJson.history.map((e: { type: string }) => e.type), ['alloc', 'bind']);

    const bind = await cli(['pasid', 'bind', 'vm1', '2', '0000:00:02.0', ...conn]);
    assert.equal(bind.code, 0, bind.stderr);
    const busy = await cli(['pasid', 'free', 'vm1', '2', ...conn]);
    assert.equal(busy.code, 1);
    assert.match(busy.stderr, /^error: EBUSY: PASID 2 (\(0x2\) )?is still bound to 0000:00:02\.0/);
    assert.equal((await cli(['pasid', 'unbind', 'vm1', '2', '0000:00:02.0', ...conn])).code, 0);
    assert.equal((await cli(['pasid', 'free', 'vm1', '2', '--json', ...conn])).code, 0);
    assert.deepEqual(await admin().listPasids('vm1'), [1]);
  });

  it('a VM\'s token works for its own PASIDs only: show --vm, 404 for another VM\'s (as for a free one)', async () => {
    const { token } = await admin().createVm({ id: 'vm3' });
    const [p] = await admin().allocPasids('vm3');
    const mine = await cli(['pasid', 'show', String(p), '--vm', 'vm3', '--url', url, '--token', token]);
    assert.equal(mine.code, 0, mine.stderr);
    assert.match(mine.stdout, /owner\s+vm3/);
    const theirs = await cli(['pasid', 'show', '1', '--vm', 'vm3', '--url', url, '--token', token]);
    assert.equal(theirs.code, 1);
    // A VM's token is not told whose a PASID is (docs/security.md): the same answer as a free one.
    assert.match(theirs.stderr, /^error: ENOENT: VM vm3 holds no PASID 1 \(0x1\)/);
    const free = await cli(['pasid', 'show', '999', '--vm', 'vm3', '--url', url, '--token', token]);
    assert.equal(free.stderr.replace('999 (0x3e7)', '1 (0x1)'), theirs.stderr);
    const otherVm = await cli(['pasid', 'alloc', 'vm1', '--url', url, '--token', token]);
    assert.equal(otherVm.code, 1);
    assert.match(otherVm.stderr, /^error: EACCES: the token of VM vm3 cannot act on VM vm1/);
    const adminOnly = await cli(['pasid', 'show', '1', '--url', url, '--token', token]);
    assert.equal(adminOnly.code, 1);
    assert.match(adminOnly.stderr, /^error: EACCES: this operation needs the admin token \(token from --token\)/);
    await admin().destroyVm('vm3');
  });
});

describe('ioasid status', () => {
  it('health, store, VM and PASID counts, top VMs by use', async () => {
    const r = await spawnCli(['status', ...conn]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^service\\s+${url.replace(/[.]/g, '\\.')}: healthy$`, 'm'));
    assert.match(r.stdout, /^store\s+memory$/m);
    assert.match(r.stdout, /^VMs\s+2$/m);
    assert.match(r.stdout, /^PASIDs\s+5 allocated \(5 by VMs\) of 1048575$/m);
    assert.match(r.stdout, /^\s+vm2\s+4\/\d+\n\s+vm1\s+1\/4$/m, 'sorted by use');
    const j = JSON.parse((await cli(['status', '--json', '--top', '1', ...conn])).stdout);
    assert.equal(j.healthy, true);
    assert.equal(j.ready, true);
    assert.equal(j.store, 'memory');
    assert.equal(j.vms, 2);
    assert.deepEqual(j.pasids, { allocated: 5, byVms: 5, capacity: 0xfffff });
    assert.deepEqual(j.top.map((v: { id: string }) => v.id), ['vm2']);
  });
});

describe('errors and token sources', () => {
  it('an unknown VM is error: ENOENT on stderr, exit 1', async () => {
    const [show, alloc] = await Promise.all([spawnCli(['vm', 'show', 'nope', ...conn]), spawnCli(['pasid', 'alloc', 'nope', ...conn])]);
    for (const r of [show, alloc]) {
      assert.equal(r.code, 1);
      assert.match(r.stderr, /^error: ENOENT: no VM "nope"/);
      assert.equal(r.stdout, '');
    }
  });

  it('a bad or missing token is EPERM, exit 1; the hint says where tokens come from', async () => {
    const empty = mkdtempSync(join(tmp, 'empty-'));
    const [bad, none] = await Promise.all([
      spawnCli(['vm', 'list', '--url', url, '--token', 'not-a-token']),
      spawnCli(['vm', 'list', '--url', url], { cwd: empty }),
    ]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^error: EPERM: the bearer token is not valid \(token from --token\)$/m);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /^error: EPERM: a bearer token is required.*no token given: pass --token or --token-file, set IOASID_TOKEN/m);
  });

  it('an unreachable service says so, exit 1 (every command, watch too)', async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const runsOut = await Promise.all([
      spawnCli(['vm', 'list', '--url', dead, '--token', ADMIN]),
      spawnCli(['status', '--url', dead, '--token', ADMIN, '--json']),
      spawnCli(['watch', '--url', dead, '--token', ADMIN]),
    ]);
    for (const r of runsOut) {
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, new RegExp(`^error: ENODEV: the service at ${dead.replace(/[.]/g, '\\.')} is unreachable: connection refused \\(is \`ioasid serve\` running there\\?`, 'm'));
    }
  });

  it('usage errors exit 2 with error: EINVAL', async () => {
    const cases = await Promise.all([
      spawnCli(['pasid', 'alloc', 'vm1', '--count', 'many', ...conn]),
      cli(['vm', 'create', 'x', '--viommu', '0:C', ...conn]),
      cli(['vm', 'create', 'x', '--device', '00:02.0', ...conn]),
      cli(['vm', 'create', ...conn]),
      cli(['pasid', 'free', 'vm1', ...conn]),
      spawnCli(['vm', 'frobnicate']),
      cli(['vm', 'list', '--url', 'ftp://example.com', '--token', ADMIN]),
      cli(['vm', 'list', '--bogus', ...conn]),
    ]);
    for (const r of cases) {
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /^error: EINVAL: /m);
    }
    assert.deepEqual((await admin().listVms()).map((v) => v.id), ['vm1', 'vm2'], 'nothing was created');
  });

  it('the service refusing a request (quota, a taken range) is exit 1 with its errno code', async () => {
    const [quota, range] = await Promise.all([
      cli(['pasid', 'alloc', 'vm1', '--count', '10', ...conn]),
      cli(['pasid', 'alloc', 'vm1', '--min', '1', '--max', '1', ...conn]),
    ]);
    assert.equal(quota.code, 1);
    assert.match(quota.stderr, /^error: EDQUOT: /);
    assert.equal(range.code, 1);
    assert.match(range.stderr, /^error: ENOSPC: /);
  });

  it('IOASID_URL and IOASID_TOKEN, and ./var/admin.token as the last resort', async () => {
    const env = await spawnCli(['vm', 'list', '--json'], { env: { IOASID_URL: url, IOASID_TOKEN: ADMIN } });
    assert.equal(env.code, 0, env.stderr);
    assert.equal(JSON.parse(env.stdout).vms.length, 2);
    const cwd = mkdtempSync(join(tmp, 'cwd-'));
    mkdirSync(join(cwd, 'var'));
    writeFileSync(join(cwd, 'var', 'admin.token'), `${ADMIN}\n`);
    const file = await spawnCli(['vm', 'list', '--json', '--url', url], { cwd });
    assert.equal(file.code, 0, file.stderr);
    const explicit = await cli(['vm', 'list', '--json', '--url', url, '--token-file', join(tmp, 'admin.token')], { env: { IOASID_TOKEN: 'wrong' } });
    assert.equal(explicit.code, 0, '--token-file wins over IOASID_TOKEN');
    const missing = await cli(['vm', 'list', '--url', url, '--token-file', join(tmp, 'no-such-file')]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^error: ENOENT: cannot read the token file/);
  });
});

describe('ioasid watch', () => {
  /** Spawn `watch`, wait until it says it is watching. */
  function watch(args: string[]) {
    const child = spawn(process.execPath, ['--import', TSX, MAIN, 'watch', ...args], { cwd: tmp, env: childEnv() });
    let stdout = '';
    let stderr = '';
    const waiters: (() => void)[] = [];
    const poke = () => waiters.splice(0).forEach((w) => w());
    child.stdout.on('data', (d: Buffer) => ((stdout += d.toString()), poke()));
    child.stderr.on('data', (d: Buffer) => ((stderr += d.toString()), poke()));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) => child.on('close', (code, signal) => done({ code, signal })));
    const until = async (what: () => boolean, label: string, ms = 15_000) => {
      const deadline = Date.now() + ms;
      while (!what()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${label}; stdout=${stdout} stderr=${stderr}`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 200);
        });
      }
    };
    return { child, exited, until, out: () => stdout, err: () => stderr };
  }

  it('watch --json prints one JSON object per event; Ctrl-C ends it with status 0', async () => {
    const w = watch(['--json', ...conn]);
    await w.until(() => w.err().includes('watching all events'), 'the stream to open');
    const [p] = await admin().allocPasids('vm1');
    await w.until(() => w.out().includes('"alloc"'), 'the alloc event');
    const lines = w.out().trimEnd().split('\n');
    const ev = JSON.parse(lines[0] as string);
    assert.equal(ev.type, 'alloc');
    assert.equal(ev.vm, 'vm1');
    assert.deepEqual(ev.pasids, [p]);
    assert.equal(typeof ev.seq, 'number');
    w.child.kill('SIGINT');
    assert.deepEqual(await w.exited, { code: 0, signal: null });
    assert.doesNotMatch(w.err(), /error:/);
    await admin().freePasid('vm1', p as number);
  });

  it('watch --vm, human: one line per event of that VM only', async () => {
    const { token } = await admin().createVm({ id: 'watched' });
    const w = watch(['--vm', 'watched', '--url', url, '--token', token]);
    await w.until(() => w.err().includes("watching VM watched's events"), 'the stream to open');
    await admin().allocPasids('vm2');
    const [p] = await admin().allocPasids('watched');
    await w.until(() => /allocated to VM watched/.test(w.out()), 'the alloc line');
    const lines = w.out().trimEnd().split('\n');
    assert.equal(lines.length, 1, w.out());
    assert.match(lines[0] ?? '', new RegExp(`^\\d{4}-\\d\\d-\\d\\dT\\S+Z\\s+#\\d+\\s+alloc\\s+PASID ${p} \\(0x${(p as number).toString(16)}\\) allocated to VM watched$`));
    w.child.kill('SIGINT');
    assert.equal((await w.exited).code, 0);
    await admin().destroyVm('watched');
  });

  it('watch reports a dropped connection and exits 1', async () => {
    const dir = mkdtempSync(join(tmp, 'srv-'));
    const other = await start(dir);
    const w = watch(['--json', '--url', other.url, '--token', ADMIN]);
    await w.until(() => w.err().includes('watching'), 'the stream to open');
    await other.close();
    const r = await w.exited;
    assert.equal(r.code, 1, w.err());
    assert.match(w.err(), /error: ENODEV: the connection to http:\/\/127\.0\.0\.1:\d+ dropped/);
  });

  it('watch with a bad token or an unknown VM is refused before streaming', async () => {
    const [bad, unknown] = await Promise.all([
      spawnCli(['watch', '--url', url, '--token', 'nope']),
      cli(['watch', '--vm', 'nope', ...conn]),
    ]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^error: EPERM: /m);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /^error: ENOENT: /m);
    const vmToken = (await admin().createVm({ id: 'lonely' })).token;
    const all = await cli(['watch', '--url', url, '--token', vmToken]);
    assert.equal(all.code, 1);
    assert.match(all.stderr, /^error: EACCES: .*a VM's token can watch its own VM with --vm VM/m);
    await admin().destroyVm('lonely');
  });
});

describe('client commands in process: colour and output helpers', () => {
  const run = (cmd: Command, args: string[]) => new Command('ioasid').addCommand(cmd).parseAsync(['node', 'ioasid', ...args]);

  it('colours a terminal, never with NO_COLOR or into a pipe', async () => {
    const tty = captureIo({ stdoutIsTTY: true });
    await run(vmCommand(tty.value), ['vm', 'list', ...conn]);
    assert.match(tty.out(), ANSI);
    const noColor = captureIo({ stdoutIsTTY: true, env: { NO_COLOR: '1' } });
    await run(vmCommand(noColor.value), ['vm', 'list', ...conn]);
    assert.doesNotMatch(noColor.out(), ANSI);
    assert.equal(noColor.out(), (await spawnCli(['vm', 'list', ...conn])).stdout, 'same text as a pipe gets');
    const flag = captureIo({ stdoutIsTTY: true });
    await run(vmCommand(flag.value), ['vm', 'list', '--no-color', ...conn]);
    assert.equal(flag.out(), noColor.out());
  });

  it('usage errors go through exit(2); refusals set exit code 1', async () => {
    const u = captureIo();
    await assert.rejects(run(pasidCommand(u.value), ['pasid', 'alloc', 'vm1', '--count', 'x', ...conn]), { exitCode: 2 });
    assert.match(u.err(), /^error: EINVAL: option '--count <n>' argument 'x' is invalid/);
    const r = captureIo();
    await run(pasidCommand(r.value), ['pasid', 'list', 'nope', ...conn]);
    assert.equal(r.code(), 1);
    assert.match(r.err(), /^error: ENOENT: /);
    const h = captureIo();
    await assert.rejects(run(vmCommand(h.value), ['vm', 'create', '--help']), { exitCode: 0 });
    assert.match(h.out(), /--viommu <spec>/);
  });

  it('format helpers: runs, tables, event lines', () => {
    assert.equal(runs([7, 1, 2, 3, 9, 10]), '1-3, 7, 9-10');
    assert.equal(runs([]), '');
    assert.equal(table(['A', 'BB'], [['xyz', '1'], ['q', '22']]), 'A    BB\nxyz  1\nq    22');
    assert.equal(describeEvent({ type: 'free', vm: null, pasids: [16], seq: 1, at: 0 }), 'PASID 16 (0x10) freed by the host');
    assert.equal(describeEvent({ type: 'alloc', vm: 'vm1', pasids: [1, 2, 3, 7], seq: 2, at: 0 }), '4 PASIDs (1-3, 7) allocated to VM vm1');
    assert.equal(describeEvent({ type: 'alloc', vm: 'vm1', pasids: [5, 7, 6], seq: 2, at: 0 }), '3 PASIDs (5-7) allocated to VM vm1');
    assert.equal(describeEvent({ type: 'mystery', x: 1, seq: 1, at: 0 } as never), 'mystery {"x":1}');
  });
});

describe('exit codes and messages', () => {
  it('an unknown command or option, and no command at all, are usage errors: exit 2 with error: EINVAL', async () => {
    const [unknown, bogus, bare, steps] = await Promise.all([
      spawnCli(['frobnicate']),
      spawnCli(['--bogus']),
      spawnCli([]),
      spawnCli(['simulate', '--random', '--steps', 'abc']),
    ]);
    for (const r of [unknown, bogus, bare, steps]) assert.equal(r.code, 2, r.stderr);
    assert.match(unknown.stderr, /^error: EINVAL: unknown command 'frobnicate' \(hint: see ioasid --help\)$/m);
    assert.match(bogus.stderr, /^error: EINVAL: unknown option '--bogus' \(hint: see ioasid --help\)$/m);
    assert.match(bare.stderr, /^Usage: ioasid /m, 'the help, on stderr');
    assert.match(bare.stderr, /^error: EINVAL: ioasid needs a command \(listed above\)$/m);
    assert.equal(bare.stdout, '');
    assert.match(steps.stderr, /^error: EINVAL: option '--steps <n>' argument 'abc' is invalid\. --steps must be an integer >= 0, got "abc"/m);
  });

  it('arguments are checked against the contract\'s limits first: exit 2, said in words, nothing sent', async () => {
    const before = server.authority.lastSeq;
    const cases = await Promise.all([
      cli(['pasid', 'free', 'vm1', '0x100000', ...conn]),
      cli(['pasid', 'bind', 'vm1', '1', '00:02.0', ...conn]),
      cli(['pasid', 'alloc', 'vm1', '--count', '0', ...conn]),
      cli(['pasid', 'alloc', 'vm1', '--count', '1025', ...conn]),
      cli(['pasid', 'alloc', 'vm1', '--min', '0x20', '--max', '0x10', ...conn]),
      cli(['vm', 'create', 'bad id', ...conn]),
      cli(['vm', 'create', 'x', '--quota', '0x100000', ...conn]),
      cli(['vm', 'create', 'x', '--device', '0000:00:02.0:21', ...conn]),
      cli(['vm', 'create', 'x', '--viommu', '0x10000', ...conn]),
    ]);
    for (const r of cases) {
      assert.equal(r.code, 2, r.stderr);
      assert.doesNotMatch(r.stderr, /pattern|params\/|body\//, 'no schema jargon');
    }
    const [free, bind, zero, many, range, id, quota, bits, segment] = cases.map((r) => r.stderr);
    assert.match(free!, /^error: EINVAL: .*a PASID must be in \[1 \(0x1\), 1048575 \(0xfffff\)\], got "0x100000" \(0x100000\): a PASID is 20 bits, and 0 means no PASID/);
    assert.match(bind!, /a device is a PCI address segment:bus:device\.function in hex, e\.g\. 0000:00:02\.0 .*got "00:02\.0" \(give the segment too: 0000:00:02\.0\)/);
    assert.match(zero!, /--count must be in \[1, 1024\], got "0"/);
    assert.match(many!, /--count must be in \[1, 1024\], got "1025"/);
    assert.match(range!, /^error: EINVAL: --min 32 \(0x20\) is above --max 16 \(0x10\)$/m);
    assert.match(id!, /a VM id is 1-63 letters, digits, "\.", "_" or "-", starting with a letter or digit, got "bad id"/);
    assert.match(quota!, /--quota must be in \[0, 1048575\]/);
    assert.match(bits!, /the PASID width \(BITS\) must be in \[1, 20\]/);
    assert.match(segment!, /a segment must be in \[0, 65535\]/);
    assert.equal(server.authority.lastSeq, before, 'nothing reached the service');
  });

  it('the limits are the service\'s: what the CLI accepts the service accepts, and one more it refuses', async () => {
    await admin().createVm({ id: 'limits', quota: 0 });
    const ok = await cli(['pasid', 'alloc', 'limits', '--count', '1024', '--json', ...conn]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(JSON.parse(ok.stdout).pasids.length, 1024);
    await assert.rejects(admin().allocPasids('limits', { count: 1025 }), (e: unknown) => (e as { code?: string }).code === 'EINVAL');
    await admin().destroyVm('limits');
  });

  it('a quota refusal speaks of the VM\'s PASIDs, with the numbers', async () => {
    await admin().createVm({ id: 'q', quota: 4 });
    await admin().allocPasids('q', { count: 2 });
    const r = await cli(['pasid', 'alloc', 'q', '--count', '5', ...conn]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, 'error: EDQUOT: VM q holds 2 PASIDs of its quota of 4: 5 more would exceed it (2 left)\n');
    await admin().allocPasids('q', { count: 2 });
    const full = await cli(['pasid', 'alloc', 'q', ...conn]);
    assert.equal(full.stderr, 'error: EDQUOT: VM q holds 4 PASIDs of its quota of 4: 1 more would exceed it (0 left)\n');
    await admin().destroyVm('q');
  });

  it('the service\'s own schema refusals are rephrased in the command line\'s words', async () => {
    const { humanMessage } = await import('../src/cli/client-commands.ts');
    const { IoasidError } = await import('../src/client/index.ts');
    const refusal = async (p: Promise<unknown>) => {
      try {
        await p;
      } catch (e) {
        if (e instanceof IoasidError) return e;
        throw e;
      }
      throw new Error('the service accepted it');
    };
    const a = admin();
    const bdf = await refusal(a.bind('vm1', 1, '00:02.0'));
    assert.match(bdf.message, /pattern/, 'the service says it in schema terms');
    assert.equal(humanMessage(bdf), 'a device is a PCI address segment:bus:device.function in hex, e.g. 0000:00:02.0 (device 00-1f, function 0-7)');
    assert.equal(humanMessage(await refusal(a.allocPasids('vm1', { count: 0 }))), '--count must be at least 1');
    assert.equal(humanMessage(await refusal(a.freePasid('vm1', 0x100000))), 'the PASID must be at most 1048575 (0xfffff)');
    assert.equal(humanMessage(await refusal(a.createVm({ id: 'bad id' }))), 'a VM id is 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit');
    assert.equal(humanMessage(await refusal(a.call('createVm', { body: { id: 'x', colour: 'red' } as never }))), 'the request has a field the service does not know');
  });
});

describe('--timeout, unix: URLs and the environment', () => {
  it('a service that never answers: --timeout, IOASID_TIMEOUT, and 10 s by default', async () => {
    const hung = createServer(() => {}); // accepts, never answers
    await new Promise<void>((r) => hung.listen(0, '127.0.0.1', () => r()));
    const dead = `http://127.0.0.1:${(hung.address() as { port: number }).port}`;
    const timed = async (args: string[], env: Record<string, string> = {}) => {
      const t0 = Date.now();
      const r = await spawnCli(args, { env });
      return { ...r, seconds: (Date.now() - t0) / 1000 };
    };
    const [flag, env, byDefault, bad] = await Promise.all([
      timed(['vm', 'list', '--url', dead, '--token', ADMIN, '--timeout', '300ms']),
      timed(['status', '--url', dead, '--token', ADMIN], { IOASID_TIMEOUT: '0.5' }),
      timed(['pasid', 'list', 'vm1', '--url', dead, '--token', ADMIN]),
      timed(['vm', 'list', '--url', dead, '--timeout', 'soon']),
    ]);
    hung.close();
    assert.equal(flag.code, 1);
    assert.match(flag.stderr, new RegExp(`^error: ENODEV: the service at ${dead.replace(/[.]/g, '\\.')} is unreachable: no answer within 0\\.3 s`, 'm'));
    assert.equal(env.code, 1);
    assert.match(env.stderr, /no answer within 0\.5 s/);
    assert.equal(byDefault.code, 1);
    assert.match(byDefault.stderr, /no answer within 10 s/);
    assert.ok(byDefault.seconds >= 9.5 && byDefault.seconds < 30, `gave up after ${byDefault.seconds} s`);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /^error: EINVAL: option '--timeout <duration>' argument 'soon' is invalid\. a timeout is a duration/m);
  });

  it('watch: an event stream that does not open within --timeout is reported as such', async () => {
    const { createServer: createHttpServer } = await import('node:http');
    // Answers the checks watch makes over HTTP, and never the WebSocket upgrade.
    const mute = createHttpServer((req, res) => {
      if (req.url?.startsWith('/v1/events/recent')) res.writeHead(200, { 'content-type': 'application/json' }).end('{"events":[]}');
    });
    mute.on('upgrade', () => {});
    await new Promise<void>((r) => mute.listen(0, '127.0.0.1', () => r()));
    const at = `http://127.0.0.1:${(mute.address() as { port: number }).port}`;
    const t0 = Date.now();
    const r = await spawnCli(['watch', '--url', at, '--token', ADMIN, '--timeout', '500ms']);
    mute.closeAllConnections();
    mute.close();
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^error: ENODEV: the service at http:\/\/127\.0\.0\.1:\d+ is unreachable: the event stream did not open within 0\.5 s/m);
    assert.ok(Date.now() - t0 < 10_000);
  });

  it('unix:PATH reaches a service on a Unix socket (requests and the event stream); IOASID_URL and IOASID_TOKEN_FILE too', async () => {
    const dir = mkdtempSync(join(tmp, 'sock-'));
    const tokenFile = join(dir, 'admin.token');
    writeFileSync(tokenFile, `${ADMIN}\n`);
    const s = await startServer({ store: 'memory', socket: join(dir, 'ioasid.sock'), adminTokenFile: tokenFile, stateDir: dir, logLevel: 'silent', say: () => {} });
    try {
      const created = await spawnCli(['vm', 'create', 'onsock', '--json', '--url', `unix:${join(dir, 'ioasid.sock')}`, '--token', ADMIN]);
      assert.equal(created.code, 0, created.stderr);
      const viaEnv = await spawnCli(['vm', 'list', '--json'], { cwd: dir, env: { IOASID_URL: 'unix:ioasid.sock', IOASID_TOKEN_FILE: 'admin.token' } });
      assert.equal(viaEnv.code, 0, viaEnv.stderr);
      assert.deepEqual(JSON.parse(viaEnv.stdout).vms.map((v: { id: string }) => v.id), ['onsock']);
      const w = spawn(process.execPath, ['--import', TSX, MAIN, 'watch', '--json', '--url', `unix:${join(dir, 'ioasid.sock')}`, '--token', ADMIN], { cwd: tmp, env: childEnv() });
      let out = '';
      let err = '';
      w.stdout.on('data', (d: Buffer) => (out += d.toString()));
      w.stderr.on('data', (d: Buffer) => (err += d.toString()));
      for (let i = 0; i < 150 && !err.includes('watching'); i++) await new Promise((r) => setTimeout(r, 100));
      assert.match(err, /watching all events at unix:/);
      await s.authority.allocPasids('onsock');
      for (let i = 0; i < 100 && !out.includes('"alloc"'); i++) await new Promise((r) => setTimeout(r, 50));
      assert.equal(JSON.parse(out.trim().split('\n')[0] ?? '{}').type, 'alloc');
      w.kill('SIGINT');
      await new Promise((r) => w.on('close', r));
      const missing = await cli(['vm', 'list', '--url', `unix:${join(dir, 'nope.sock')}`, '--token', ADMIN]);
      assert.equal(missing.code, 1);
      assert.match(missing.stderr, /^error: ENODEV: the service at unix:\S+nope\.sock is unreachable: no such socket/);
    } finally {
      await s.close();
    }
  });
});

describe('commands for the rest of the API', () => {
  it('vm add-viommu, add-device, remove-device, remove-viommu', async () => {
    await admin().createVm({ id: 'plug', viommus: [{ segment: 0 }] });
    const steps = [
      await cli(['vm', 'add-viommu', 'plug', '1:A', ...conn]),
      await cli(['vm', 'add-device', 'plug', '0001:00:03.0:10', ...conn]),
    ];
    for (const r of steps) assert.equal(r.code, 0, r.stderr);
    assert.match(steps[0]!.stdout, /^added a vIOMMU on segment 1 to VM plug$/m);
    assert.match(steps[1]!.stdout, /0001:00:03\.0 \(segment 1, 10 PASID bits\)/);
    const busy = await cli(['vm', 'remove-viommu', 'plug', '1', ...conn]);
    assert.equal(busy.code, 1, 'a device sits behind it');
    assert.match(busy.stderr, /^error: EBUSY: /);
    assert.equal((await cli(['vm', 'remove-device', 'plug', '0001:00:03.0', ...conn])).code, 0);
    const removed = await cli(['vm', 'remove-viommu', 'plug', '1', '--json', ...conn]);
    assert.equal(removed.code, 0, removed.stderr);
    assert.deepEqual(JSON.parse(removed.stdout).viommus.map((v: { segment: number }) => v.segment), [0]);
    await admin().destroyVm('plug');
  });

  it('vm rotate-token prints the new token once; the old one is refused at once', async () => {
    const { token } = await admin().createVm({ id: 'rot' });
    const r = await cli(['vm', 'rotate-token', 'rot', ...conn]);
    assert.equal(r.code, 0, r.stderr);
    const fresh = /^token\s+(\S+)$/m.exec(r.stdout)?.[1];
    assert.ok(fresh, r.stdout);
    assert.match(r.stdout, /shown once/);
    const old = await cli(['pasid', 'list', 'rot', '--url', url, '--token', token]);
    assert.equal(old.code, 1);
    assert.match(old.stderr, /^error: EPERM: /);
    assert.equal((await cli(['pasid', 'list', 'rot', '--url', url, '--token', fresh])).code, 0);
    await admin().destroyVm('rot');
  });

  it('vm migrate and cluster status/reclaim on a service without cluster mode: EOPNOTSUPP, exit 1', async () => {
    const rs = await Promise.all([
      cli(['vm', 'migrate', 'vm1', '--to', 'hostB', ...conn]),
      cli(['cluster', 'status', ...conn]),
      cli(['cluster', 'reclaim', 'hostB', ...conn]),
    ]);
    for (const r of rs) {
      assert.equal(r.code, 1);
      assert.match(r.stderr, /^error: EOPNOTSUPP: not a cluster/);
    }
    const usage = await cli(['vm', 'migrate', 'vm1', ...conn]);
    assert.equal(usage.code, 2, 'migrate needs --to');
  });

  it('against a cluster: status, migrate, reclaim; a VM another host serves names where to send it', async () => {
    const { fakeCluster } = await import('./helpers/fake-cluster.ts');
    const { MemoryStore } = await import('../src/store/index.ts');
    const { PasidAuthority, buildApp, hashToken } = await import('../src/service/index.ts');
    const store = new MemoryStore();
    const c = fakeCluster(store);
    const authority = await PasidAuthority.open({ store, cluster: c.role });
    await authority.setAdminTokenHash(hashToken(ADMIN));
    const app = await buildApp({ authority });
    const at = await app.listen({ host: '127.0.0.1', port: 0 });
    try {
      const on = ['--url', at, '--token', ADMIN];
      const status = await cli(['cluster', 'status', ...on]);
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, /^domain\s+rack7 \(this host: hostA, etcd revision 42\)$/m);
      assert.match(status.stdout, /^\s+hostB\s+no\s+1\s+1\s+http:\/\/10\.0\.0\.2:7070$/m);
      await authority.createVm({ id: 'mover' });
      await authority.allocPasids('mover', { count: 2 });
      const moved = await cli(['vm', 'migrate', 'mover', '--to', 'hostB', ...on]);
      assert.equal(moved.code, 0, moved.stderr);
      assert.match(moved.stdout, /^migrated VM mover from hostA to hostB with 2 PASIDs \(1-2\) and 0 bindings \(etcd revision 44\)$/m);
      const reclaimed = await cli(['cluster', 'reclaim', 'hostB', '--force', '--json', ...on]);
      assert.equal(JSON.parse(reclaimed.stdout).pasids, 2);
      c.moveAway('mover');
      const elsewhere = await cli(['pasid', 'alloc', 'mover', ...on]);
      assert.equal(elsewhere.code, 1);
      assert.equal(elsewhere.stderr, 'error: EREMOTE: VM mover runs on host hostB (send it to http://10.0.0.2:7070: --url http://10.0.0.2:7070)\n');
    } finally {
      await app.close();
    }
  });
});

describe('shell completion', () => {
  it('bash: commands, subcommands, options and option values, from the command tree', async () => {
    const script = await spawnCli(['completion', 'bash']);
    assert.equal(script.code, 0, script.stderr);
    const file = join(tmp, 'ioasid.bash');
    writeFileSync(file, script.stdout);
    const complete = (...words: string[]) => {
      const r = spawnSync('bash', ['-c', `source ${file}; COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _ioasid; printf '%s\\n' "\${COMPREPLY[@]}"`], { encoding: 'utf8', cwd: tmp });
      assert.equal(r.status, 0, r.stderr);
      return r.stdout.split('\n').filter((l) => l !== '');
    };
    assert.deepEqual(complete('ioasid', 'pa'), ['pasid']);
    assert.deepEqual(complete('ioasid', 'c'), ['cluster', 'completion']);
    assert.deepEqual(complete('ioasid', 'vm', 'r'), ['remove-viommu', 'remove-device', 'rotate-token']);
    assert.ok(complete('ioasid', 'pasid', 'alloc', 'vm1', '--').includes('--timeout'));
    assert.deepEqual(complete('ioasid', 'serve', '--sync', ''), ['full', 'normal']);
    assert.deepEqual(complete('ioasid', 'serve', '--log-format', ''), ['json', 'text']);
    assert.ok(complete('ioasid', 'simulate', 'ioasid.b').includes('ioasid.bash'), 'a file where a file is wanted');
  });

  it('zsh: the same candidates, described (zsh missing: skipped)', async (t) => {
    if (spawnSync('zsh', ['--version']).status !== 0) return t.skip('zsh is not installed');
    const script = await spawnCli(['completion', 'zsh']);
    assert.equal(script.code, 0, script.stderr);
    const file = join(tmp, '_ioasid');
    writeFileSync(file, script.stdout);
    assert.match(script.stdout, /^#compdef ioasid$/m);
    // The completion system's own functions are stubbed: what _ioasid hands them is what zsh offers.
    const complete = (...words: string[]) => {
      const r = spawnSync('zsh', ['-f', '-c', `source ${file}; _describe() { shift 3; print -rl -- \${(P)1} }; _files() { print -r -- FILES }; words=(${words.map((w) => `'${w}'`).join(' ')}); CURRENT=${words.length}; _ioasid`], { encoding: 'utf8', cwd: tmp });
      assert.equal(r.status, 0, r.stderr);
      return r.stdout.split('\n').filter((l) => l !== '');
    };
    assert.ok(complete('ioasid', '').includes('pasid:allocate, free, list and inspect PASIDs (the VM\'s token or admin)'));
    assert.deepEqual(complete('ioasid', 'serve', '--sync', ''), ['full:', 'normal:']);
    assert.deepEqual(complete('ioasid', 'simulate', 'x'), ['FILES']);
    assert.ok(complete('ioasid', 'vm', 'create', 'v', '--').some((l) => l.startsWith('--device:')));
  });
});
