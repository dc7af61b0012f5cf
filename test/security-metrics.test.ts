/**
 * Issue 13, item 4: `/metrics` names every VM and its use, so it needs a bearer token: the admin
 * token, or a metrics token given at start (what Prometheus scrapes with); `--metrics-no-auth`
 * opens it explicitly, for a trusted network. The metrics token is good for /metrics only, must be
 * nobody else's token, and comes from a file only its owner can read.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildApp, hashToken, PasidAuthority, startServer } from '../src/service/index.ts';
import { MemoryStore } from '../src/store/index.ts';
import { runCli } from './helpers/serve-process.ts';

const ADMIN = 'metrics-admin-token-0123456789abcdef';
const SCRAPER = 'prometheus-scrape-token-0123456789abcdef';
const dir = mkdtempSync(join(tmpdir(), 'ioasid-metrics-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const adminFile = join(dir, 'admin.token');
writeFileSync(adminFile, `${ADMIN}\n`, { mode: 0o600 });
const scraperFile = join(dir, 'metrics.token');
writeFileSync(scraperFile, `${SCRAPER}\n`, { mode: 0o600 });

async function app(metrics?: { token?: string; open?: boolean }) {
  const authority = await PasidAuthority.open({ store: new MemoryStore() });
  await authority.setAdminTokenHash(hashToken(ADMIN));
  const { token: vmToken } = await authority.createVm({ id: 'tenant-a', quota: 7 });
  await authority.allocPasids('tenant-a', { count: 3 });
  const a = await buildApp({ authority, ...(metrics !== undefined ? { metrics } : {}) });
  const get = (token: string | null, url = '/metrics') => a.inject({ method: 'GET', url, headers: token === null ? {} : { authorization: `Bearer ${token}` } });
  return { a, vmToken, get };
}

describe('security: /metrics', () => {
  it('needs the admin token by default: 401 without one (with the Bearer challenge), 403 with a VM token', async () => {
    const { a, vmToken, get } = await app();
    const none = await get(null);
    assert.equal(none.statusCode, 401);
    assert.equal(none.json().code, 'EPERM');
    assert.equal(none.headers['www-authenticate'], 'Bearer realm="ioasid"');
    assert.ok(!none.body.includes('tenant-a'), 'nothing of the VMs in the refusal');
    const vm = await get(vmToken);
    assert.equal(vm.statusCode, 403);
    assert.equal(vm.json().code, 'EACCES');
    assert.match(vm.json().message, /\/metrics needs the admin token or the metrics token/);
    assert.equal((await get('not-a-token-of-this-service')).statusCode, 401);
    const ok = await get(ADMIN);
    assert.equal(ok.statusCode, 200);
    assert.match(ok.body, /ioasid_vm_pasids\{vm="tenant-a"\} 3/);
    assert.match(ok.body, /ioasid_vm_quota\{vm="tenant-a"\} 7/);
    await a.close();
  });

  it('takes a metrics token given at start, which is good for /metrics only', async () => {
    const { a, get } = await app({ token: SCRAPER });
    const ok = await get(SCRAPER);
    assert.equal(ok.statusCode, 200);
    assert.match(ok.body, /ioasid_vm_pasids\{vm="tenant-a"\} 3/);
    assert.equal((await get(ADMIN)).statusCode, 200, 'the admin token still reads it');
    for (const url of ['/v1/vms', '/v1/vms/tenant-a', '/v1/events/recent', '/v1/namespace']) {
      const r = await get(SCRAPER, url);
      assert.equal(r.statusCode, 401, `${url} with the metrics token`);
    }
    assert.equal((await get(null)).statusCode, 401);
    await a.close();
  });

  it('is open to anyone only when asked for explicitly (--metrics-no-auth)', async () => {
    const { a, get } = await app({ open: true });
    const r = await get(null);
    assert.equal(r.statusCode, 200);
    assert.match(r.body, /ioasid_vm_pasids\{vm="tenant-a"\} 3/);
    assert.equal((await get(null, '/v1/vms')).statusCode, 401, 'nothing else opens');
    await a.close();
  });

  it('refuses a metrics token that is the admin\'s or a VM\'s, from a file others can read, short, or with --metrics-no-auth', async () => {
    const authority = await PasidAuthority.open({ store: new MemoryStore() });
    await authority.setAdminTokenHash(hashToken(ADMIN));
    const { token: vmToken } = await authority.createVm({ id: 'vm1' });
    await assert.rejects(buildApp({ authority, metrics: { token: ADMIN } }), /the metrics token is the admin token: give Prometheus a token of its own/);
    await assert.rejects(buildApp({ authority, metrics: { token: vmToken } }), /the metrics token is VM vm1's token/);
    await authority.close();

    const serve = (o: Record<string, unknown>) => startServer({ store: 'memory', port: 0, adminTokenFile: adminFile, stateDir: dir, logLevel: 'silent', dashboard: false, say: () => {}, ...o });
    const open = join(dir, 'open.token');
    writeFileSync(open, `${SCRAPER}\n`);
    chmodSync(open, 0o644);
    await assert.rejects(serve({ metricsTokenFile: open }), (e: unknown) => (e as { code?: string }).code === 'EINVAL' && /readable or writable by group or others \(mode 0644\): chmod 600 it/.test((e as Error).message));
    const short = join(dir, 'short.token');
    writeFileSync(short, 'abc\n', { mode: 0o600 });
    await assert.rejects(serve({ metricsTokenFile: short }), /must hold a token of at least 16 characters/);
    await assert.rejects(serve({ metricsTokenFile: join(dir, 'missing.token') }), (e: unknown) => (e as { code?: string }).code === 'ENOENT');
    await assert.rejects(serve({ metricsTokenFile: scraperFile, metricsNoAuth: true }), /contradict each other/);
    for (const f of [open, short]) assert.ok(!String(f).includes(SCRAPER));
  });

  it('ioasid serve --metrics-token-file: Prometheus scrapes with its token; the token is never printed', async () => {
    const serve = runCli(['serve', '--store', 'memory', '--port', '0', '--admin-token-file', adminFile, '--metrics-token-file', scraperFile], { cwd: dir });
    const child = serve.child;
    const exited = serve.exited.then((r) => r.code);
    try {
      const url = await serve.listening();
      assert.equal((await fetch(`${url}/metrics`)).status, 401);
      const r = await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${SCRAPER}` } });
      assert.equal(r.status, 200);
      assert.match(await r.text(), /ioasid_pasids_allocated 0/);
      child.kill('SIGTERM');
      assert.equal(await exited, 0);
      assert.ok(!`${serve.stdout()}${serve.stderr()}`.includes(SCRAPER), 'the metrics token is in no output (logs at info)');
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
  });
});
