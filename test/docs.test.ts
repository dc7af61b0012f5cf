/** The docs stay true: error codes and HTTP statuses, the README's library example. */
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ERRNO } from '../src/core/index.ts';
import { HTTP_STATUS } from '../src/service/index.ts';

it('docs/error-codes.md lists every code it documents with the errno and HTTP status the code uses', () => {
  const md = readFileSync(new URL('../docs/error-codes.md', import.meta.url), 'utf8');
  const rows = [...md.matchAll(/^\| `([A-Z]+)` \| (-\d+) \| (\d+) \|/gm)];
  assert.ok(rows.length >= 14);
  for (const [, code, errno, status] of rows) {
    assert.ok(code! in ERRNO, `${code} is an errno we use`);
    assert.equal(Number(errno), -ERRNO[code as keyof typeof ERRNO], `${code} errno`);
    assert.equal(Number(status), HTTP_STATUS[code as keyof typeof HTTP_STATUS], `${code} HTTP status`);
  }
});

it('the README host example runs as written', async () => {
  const md = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  const blocks = [...md.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1] as string);
  const code = blocks.find((b) => b.includes("from 'ioasid/host'"));
  assert.ok(code);
  const host = await import('../src/host/index.ts');
  const sim = await import('../src/sim/index.ts');
  const body = code.replace(/^import .*$/gm, '').replace('checkInvariants(host);', 'const v = checkInvariants(host);');
  const fn = new Function('Host', 'checkInvariants', `return (async () => { ${body}; return { pasid, v, vms: host.vms().length }; })()`);
  const r = await fn(host.Host, sim.checkInvariants);
  assert.equal(r.pasid, 1);
  assert.deepEqual(r.v, []);
  assert.equal(r.vms, 0);
});

it('the README library example runs as written', async () => {
  const md = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  const code = /```ts\n([\s\S]*?)```/.exec(md)?.[1];
  assert.ok(code);
  const { IoasidSpace, PASID_MIN, PASID_MAX, IoasidError } = await import('../src/core/index.ts');
  const logs: unknown[] = [];
  const body = code.replace(/^import .*$/m, '').replace(/console\.log/g, 'log');
  const fn = new Function('IoasidSpace', 'PASID_MIN', 'PASID_MAX', 'IoasidError', 'log', `return (async () => { ${body}; return gp; })()`);
  const gp = await fn(IoasidSpace, PASID_MIN, PASID_MAX, IoasidError, (...a: unknown[]) => logs.push(a));
  assert.equal(gp, 2);
  assert.equal((logs[0] as unknown[])[0], 'EACCES');
});

it('the README client example runs as written against a running service', async () => {
  const md = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  const blocks = [...md.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1] as string);
  const code = blocks.find((b) => b.includes("from 'ioasid/client'"));
  assert.ok(code);
  const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { startServer } = await import('../src/service/index.ts');
  const { IoasidClient, isIoasidError } = await import('../src/client/index.ts');
  const dir = mkdtempSync(join(tmpdir(), 'ioasid-readme-'));
  const tokenFile = join(dir, 'admin.token');
  writeFileSync(tokenFile, 'readme-admin-token-0123456789\n');
  const server = await startServer({ store: 'memory', port: 0, stateDir: dir, adminTokenFile: tokenFile, logLevel: 'silent', dashboard: false, say: () => {} });
  try {
    const logs: unknown[][] = [];
    const env = { IOASID_URL: server.url, IOASID_TOKEN: 'readme-admin-token-0123456789' };
    const body = code.replace(/^import .*$/gm, '').replace(/console\.log/g, 'log');
    const fn = new Function('IoasidClient', 'isIoasidError', 'process', 'log', `return (async () => { ${body}; return pasids; })()`);
    const pasids = await fn(IoasidClient, isIoasidError, { env }, (...a: unknown[]) => logs.push(a));
    assert.deepEqual(pasids, [1, 2]);
    assert.deepEqual(logs, [['EDQUOT', 409]]);
    assert.deepEqual(server.authority.listVms(), [], 'the example cleans up after itself');
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

it('docs/remote-guest.md: its guest runs as written, on an empty service and on one where other VMs hold 1,100 PASIDs', async () => {
  const { mkdtempSync, readFileSync, rmSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join, resolve } = await import('node:path');
  const { spawn } = await import('node:child_process');
  const { startServer } = await import('../src/service/index.ts');
  const { IoasidClient } = await import('../src/client/index.ts');
  const md = readFileSync(new URL('../docs/remote-guest.md', import.meta.url), 'utf8');
  const body = /-d '(\{"id":"vm1"[\s\S]*?\})'/.exec(md)?.[1];
  const code = [...md.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1] as string).find((b) => b.includes('RemoteGuest.boot'));
  assert.ok(body && code);
  const dir = mkdtempSync(join(tmpdir(), 'ioasid-remote-doc-'));
  const tokenFile = join(dir, 'admin.token');
  writeFileSync(tokenFile, 'remote-doc-admin-token-0123456789\n');
  const run = async (busy: boolean): Promise<string> => {
    const server = await startServer({ store: 'memory', port: 0, stateDir: dir, adminTokenFile: tokenFile, logLevel: 'silent', dashboard: false });
    try {
      const admin = new IoasidClient({ url: server.url, token: 'remote-doc-admin-token-0123456789' });
      if (busy) {
        await admin.createVm({ id: 'others', quota: 0 });
        await admin.allocPasids('others', { count: 1024 });
        await admin.allocPasids('others', { count: 76 });
      }
      const { token } = await admin.createVm(JSON.parse(body) as never);
      const script = join(dir, 'guest.mts');
      writeFileSync(script, code
        .replace("from 'ioasid/remote'", `from ${JSON.stringify(resolve(import.meta.dirname, '../src/remote/index.ts'))}`)
        .replace("from 'ioasid/core'", `from ${JSON.stringify(resolve(import.meta.dirname, '../src/core/index.ts'))}`)
        .replace("'http://127.0.0.1:7070'", JSON.stringify(server.url)));
      const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), script], { cwd: dir, env: { ...process.env, VM_TOKEN: token } });
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      const status = await new Promise((r) => child.on('close', r));
      assert.equal(status, 0, err);
      assert.deepEqual(await admin.listPasids('vm1'), [], 'the guest freed its PASID back');
      return out.trim();
    } finally {
      await server.close();
    }
  };
  try {
    assert.equal(await run(false), '1 on both devices');
    assert.equal(await run(true), '1101 too wide for the 10-bit device');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

it('docs/cluster.md: its migrate request is well formed (a service without cluster mode refuses it as such, not as a bad request)', async () => {
  const { readFileSync, mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { execFile } = await import('node:child_process');
  const { promisify } = await import('node:util');
  const { startServer } = await import('../src/service/index.ts');
  const md = readFileSync(new URL('../docs/cluster.md', import.meta.url), 'utf8');
  const curl = /^curl -X POST [^\n]*\\\n[^\n]*\/migrate/m.exec(md)?.[0];
  assert.ok(curl, 'the curl example');
  const dir = mkdtempSync(join(tmpdir(), 'ioasid-cluster-doc-'));
  const tokenFile = join(dir, 'admin.token');
  writeFileSync(tokenFile, 'cluster-doc-admin-token-0123456789\n');
  const server = await startServer({ store: 'memory', port: 0, stateDir: dir, adminTokenFile: tokenFile, logLevel: 'silent', dashboard: false });
  try {
    await server.authority.createVm({ id: 'vm1' });
    const command = `${curl.replace('http://hostA:7070', server.url).replace(/\s+#.*$/, '')} -s`;
    // Asynchronously: the service answering it runs in this process.
    const { stdout } = await promisify(execFile)('bash', ['-c', command], { encoding: 'utf8', env: { ...process.env, ADMIN: 'cluster-doc-admin-token-0123456789' } });
    const answer = JSON.parse(stdout) as { code: string; message: string };
    assert.equal(answer.code, 'EOPNOTSUPP', JSON.stringify(answer));
    assert.match(answer.message, /not a cluster/);
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

it('the repository stands alone: no document or comment sends a reader to a file it does not hold', async () => {
  const { execFileSync } = await import('node:child_process');
  const { readFileSync } = await import('node:fs');
  const root = new URL('..', import.meta.url);
  const files = execFileSync('git', ['ls-files'], { cwd: root, encoding: 'utf8' }).split('\n')
    .filter((f) => /\.(ts|md|yaml|json|mjs|cjs|html|css|sh)$|^\.ci\//.test(f) && f !== 'package-lock.json' && f !== 'test/docs.test.ts');
  assert.ok(files.length > 100);
  const outside: [RegExp, string][] = [
    [/\bDESIGN\b/, 'a design document that is not here'],
    [/lessons[- ]from[- ]peers|peers' lesson|\blessons? \d/i, 'a list of lessons that is not here'],
    [/\bspec(ification)? section\b|\bspec \d/i, 'sections of a specification that is not here'],
    [/\.\.\/shared\b/, 'a folder outside the checkout'],
    [/\bthe brief\b/i, 'a brief that is not here'],
    [/\bthe seed\b|\bseed's\b|\bseed thread\b/i, 'a "seed" that is not here'],
    [/\bedges? (cases? )?\d/i, 'numbered edge cases: they are "behaviour N" of docs/behaviours.md'],
    [/\/work\//, 'a path of one machine'],
  ];
  const found: string[] = [];
  for (const f of files) {
    const text = readFileSync(new URL(f, root), 'utf8');
    text.split('\n').forEach((line, i) => {
      for (const [re, what] of outside) if (re.test(line)) found.push(`${f}:${i + 1}: ${what}: ${line.trim().slice(0, 100)}`);
    });
  }
  assert.deepEqual(found, []);
});

it('docs/behaviours.md writes out behaviours 1-78, and every "behaviour N" cited is one of them', async () => {
  const { execFileSync } = await import('node:child_process');
  const { readFileSync } = await import('node:fs');
  const root = new URL('..', import.meta.url);
  const md = readFileSync(new URL('docs/behaviours.md', root), 'utf8');
  const numbers = [...md.matchAll(/^(\d+)\. \S/gm)].map((m) => Number(m[1]));
  assert.deepEqual(numbers, Array.from({ length: 78 }, (_, i) => i + 1));
  const files = execFileSync('git', ['ls-files'], { cwd: root, encoding: 'utf8' }).split('\n').filter((f) => /\.(ts|md|yaml)$/.test(f));
  let cited = 0;
  for (const f of files) {
    const text = readFileSync(new URL(f, root), 'utf8');
    for (const m of text.matchAll(/\bbehaviours? (\d+)(?:\s*(?:-|,|and|\/)\s*(\d+))*/g)) {
      for (const n of m[0].match(/\d+/g) ?? []) {
        cited++;
        assert.ok(Number(n) >= 1 && Number(n) <= 78, `${f}: ${m[0]}`);
      }
    }
  }
  assert.ok(cited > 100, `${cited} citations`);
});
