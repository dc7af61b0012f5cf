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
