/**
 * The service in process (fastify inject): auth, validation, PASID lifecycle, trapped VCMD
 * registers, OpenAPI, metrics, and persistence across a restart on SQLite.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildApp, PasidAuthority, hashToken } from '../src/service/index.ts';
import { MemoryStore, openStore } from '../src/store/index.ts';

const ADMIN = 'admin-token-for-tests-0123456789';

async function makeApp(store = openStore('memory')) {
  const authority = await PasidAuthority.open({ store });
  await authority.setAdminTokenHash(hashToken(ADMIN));
  const app = await buildApp({ authority });
  const call = async (method: 'GET' | 'POST' | 'DELETE', url: string, body?: unknown, token: string | null = ADMIN) => {
    const res = await app.inject({
      method, url,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { payload: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
    });
    return { status: res.statusCode, body: res.body ? JSON.parse(res.body) : undefined };
  };
  return { app, authority, call };
}

describe('service: VMs, PASIDs and tokens', () => {
  let ctx: Awaited<ReturnType<typeof makeApp>>;
  let tok1 = '';
  let tok2 = '';
  before(async () => {
    ctx = await makeApp();
    const r1 = await ctx.call('POST', '/v1/vms', { id: 'vm1', quota: 3, viommus: [{ segment: 0, layout: 'B' }], devices: [{ bdf: '0000:00:02.0', pasidBits: 10 }] });
    assert.equal(r1.status, 201);
    tok1 = r1.body.token;
    const r2 = await ctx.call('POST', '/v1/vms', { id: 'vm2', viommus: [{ segment: 0 }] });
    tok2 = r2.body.token;
  });
  after(() => ctx.app.close());

  it('a VM allocates, binds, unbinds and frees its PASIDs with its own token', async () => {
    const a = await ctx.call('POST', '/v1/vms/vm1/pasids', { count: 2 }, tok1);
    assert.equal(a.status, 201);
    assert.deepEqual(a.body.pasids, [1, 2]);
    assert.equal((await ctx.call('POST', '/v1/vms/vm1/pasids/1/bindings', { bdf: '0000:00:02.0' }, tok1)).status, 201);
    const busy = await ctx.call('DELETE', '/v1/vms/vm1/pasids/1', undefined, tok1);
    assert.equal(busy.status, 409);
    assert.equal(busy.body.code, 'EBUSY');
    assert.equal((await ctx.call('DELETE', '/v1/vms/vm1/pasids/1/bindings/0000:00:02.0', undefined, tok1)).status, 204);
    assert.equal((await ctx.call('DELETE', '/v1/vms/vm1/pasids/1', undefined, tok1)).status, 204);
    assert.deepEqual((await ctx.call('GET', '/v1/vms/vm1/pasids', undefined, tok1)).body.pasids, [2]);
  });

  it('401 without a valid token, 403 with another VM\'s token, 404 for another VM\'s PASID through a VM\'s own path (403 for the admin); nothing changes', async () => {
    const before = ctx.authority.host.snapshot();
    assert.equal((await ctx.call('POST', '/v1/vms/vm1/pasids', {}, null)).status, 401);
    assert.equal((await ctx.call('POST', '/v1/vms/vm1/pasids', {}, 'nonsense')).status, 401);
    const other = await ctx.call('POST', '/v1/vms/vm1/pasids', {}, tok2);
    assert.equal(other.status, 403);
    assert.equal(other.body.code, 'EACCES');
    const p = (await ctx.call('POST', '/v1/vms/vm2/pasids', {}, tok2)).body.pasids[0] as number;
    const after1 = ctx.authority.host.snapshot();
    // A VM's own token does not learn whose the PASID is (docs/security.md); the admin does.
    const foreign = await ctx.call('DELETE', `/v1/vms/vm1/pasids/${p}`, undefined, tok1);
    assert.equal(foreign.status, 404);
    assert.equal(foreign.body.code, 'ENOENT');
    assert.equal((await ctx.call('GET', `/v1/vms/vm1/pasids/${p}`, undefined, tok1)).status, 404);
    const asAdmin = await ctx.call('DELETE', `/v1/vms/vm1/pasids/${p}`);
    assert.equal(asAdmin.status, 403);
    assert.equal(asAdmin.body.code, 'EACCES');
    assert.equal((await ctx.call('POST', '/v1/vms', { id: 'vm3' }, tok1)).status, 403);
    assert.deepEqual(ctx.authority.host.snapshot(), after1);
    assert.notDeepEqual(before, after1);
    assert.equal((await ctx.call('DELETE', `/v1/vms/vm2/pasids/${p}`, undefined, tok2)).status, 204);
  });

  it('quota exhaustion is a 409 EDQUOT; a batch is all or nothing', async () => {
    const r = await ctx.call('POST', '/v1/vms/vm1/pasids', { count: 5 }, tok1);
    assert.equal(r.status, 409);
    assert.equal(r.body.code, 'EDQUOT');
    assert.deepEqual((await ctx.call('GET', '/v1/vms/vm1/pasids', undefined, tok1)).body.pasids, [2]);
  });

  it('bad requests get a JSON error with an errno code', async () => {
    const cases: [string, string, unknown, number][] = [
      ['POST', '/v1/vms/vm1/pasids', '{not json', 400],
      ['POST', '/v1/vms/vm1/pasids', { count: '2' }, 400],
      ['POST', '/v1/vms/vm1/pasids', { count: 0 }, 400],
      ['POST', '/v1/vms/vm1/pasids', { min: 0 }, 400],
      ['POST', '/v1/vms/vm1/pasids', { max: 0x100000 }, 400],
      ['POST', '/v1/vms/vm1/pasids', { evil: 1 }, 400],
      ['POST', '/v1/vms', { id: 'bad id' }, 400],
      ['POST', '/v1/vms', { id: 'x', quota: -1 }, 400],
      ['GET', '/v1/vms/nope', undefined, 404],
      ['DELETE', '/v1/vms/vm1/pasids/99999', undefined, 404],
      ['POST', '/v1/vms/vm1/pasids', { pad: 'x'.repeat(70_000) }, 413],
    ];
    for (const [m, url, body, status] of cases) {
      const r = await ctx.call(m as 'POST', url, body, tok1 && url.startsWith('/v1/vms/vm1') ? tok1 : ADMIN);
      assert.equal(r.status, status, `${m} ${url} ${JSON.stringify(body)?.slice(0, 40)}`);
      assert.equal(typeof r.body.code, 'string');
      assert.equal(typeof r.body.errno, 'number');
    }
  });

  it('trapped VCMD register accesses reach the device model; IP rules hold across requests', async () => {
    const write = await ctx.call('POST', '/v1/vms/vm1/viommus/0/mmio', { op: 'write', offset: 0xe00, size: 8, value: '0x1' }, tok1);
    assert.equal(write.status, 200);
    let rsp = BigInt((await ctx.call('POST', '/v1/vms/vm1/viommus/0/mmio', { op: 'read', offset: 0xe10, size: 8 }, tok1)).body.value);
    for (let i = 0; i < 100 && (rsp & 1n) === 1n; i++) {
      await new Promise((r) => setTimeout(r, 1));
      rsp = BigInt((await ctx.call('POST', '/v1/vms/vm1/viommus/0/mmio', { op: 'read', offset: 0xe10, size: 8 }, tok1)).body.value);
    }
    assert.equal((rsp >> 1n) & 0x7fn, 0n, 'success');
    const pasid = Number((rsp >> 16n) & 0xfffffn);
    assert.ok((await ctx.call('GET', '/v1/vms/vm1/pasids', undefined, tok1)).body.pasids.includes(pasid));
    const regs = await ctx.call('GET', '/v1/vms/vm1/viommus/0/registers', undefined, tok1);
    assert.equal(regs.body.decoded.VCRSP_REG.IP, '0x0');
    assert.equal(regs.body.recent.at(-1).command, 'Allocate PASID');
  });

  it('serves OpenAPI generated from the route schemas, health and metrics', async () => {
    const doc = await ctx.call('GET', '/openapi.json', undefined, null);
    assert.equal(doc.status, 200);
    assert.equal(doc.body.openapi, '3.1.0');
    assert.ok(doc.body.paths['/v1/vms/{vm}/pasids'].post.requestBody);
    assert.equal((await ctx.call('GET', '/healthz', undefined, null)).body.ok, true);
    // /metrics names every VM: it needs a token (issue 13; test/security-metrics.test.ts).
    assert.equal((await ctx.app.inject({ method: 'GET', url: '/metrics' })).statusCode, 401);
    const m = await ctx.app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${ADMIN}` } });
    assert.match(m.body, /ioasid_operations_total\{op="allocPasids",result="ok"\}/);
    assert.match(m.body, /ioasid_vm_quota\{vm="vm1"\} 3/);
    assert.match(m.body, /ioasid_http_request_duration_seconds_bucket/);
  });
});

describe('service: durable state', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ioasid-svc-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('a restart on SQLite restores exactly the acknowledged state', async () => {
    const spec = `sqlite:${join(dir, 'state.db')}`;
    const a = await makeApp(openStore(spec));
    const { token } = (await a.call('POST', '/v1/vms', { id: 'vm', quota: 10, viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }] })).body;
    const pasids = (await a.call('POST', '/v1/vms/vm/pasids', { count: 4 }, token)).body.pasids as number[];
    await a.call('POST', `/v1/vms/vm/pasids/${pasids[1]}/bindings`, { bdf: '0000:00:02.0' }, token);
    await a.call('DELETE', `/v1/vms/vm/pasids/${pasids[0]}`, undefined, token);
    const before = a.authority.host.snapshot();
    await a.app.close();
    await a.authority.close();
    const b = await makeApp(openStore(spec));
    assert.deepEqual(b.authority.host.snapshot(), before);
    assert.equal((await b.call('GET', '/v1/vms/vm/pasids', undefined, token)).status, 200, 'the VM token survives the restart');
    await b.app.close();
    await b.authority.close();
  });

  it('a free racing a VM destroy: both succeed, the destroy waits for the free (SQLite)', async () => {
    const store = openStore(`sqlite:${join(dir, 'race.db')}`);
    const authority = await PasidAuthority.open({ store });
    await authority.createVm({ id: 'vm', quota: 4 });
    const [p] = await authority.allocPasids('vm');
    const [f, d] = await Promise.allSettled([authority.freePasid('vm', p as number), authority.destroyVm('vm')]);
    assert.equal(f.status, 'fulfilled');
    assert.equal(d.status, 'fulfilled');
    assert.deepEqual(authority.listVms(), []);
    await assert.rejects(authority.allocPasids('vm'), (e: unknown) => (e as { code?: string }).code === 'ENOENT');
    await authority.close();
  });

  it('a commit failure is reported and leaves memory as it was', async () => {
    const store = new MemoryStore();
    const a = await makeApp(store);
    const { token } = (await a.call('POST', '/v1/vms', { id: 'vm' })).body;
    const real = store.apply.bind(store);
    store.apply = async () => { throw new Error('disk on fire'); };
    const r = await a.call('POST', '/v1/vms/vm/pasids', {}, token);
    assert.equal(r.status, 500);
    assert.deepEqual(a.authority.vm('vm').pasids(), []);
    store.apply = real;
    assert.equal((await a.call('POST', '/v1/vms/vm/pasids', {}, token)).body.pasids[0], 1);
    await a.app.close();
  });
});

describe('service: logs', () => {
  it('never log a token passed in the URL', async () => {
    const { redactToken } = await import('../src/service/index.ts');
    assert.equal(redactToken('/v1/events?token=s3cret&vm=a'), '/v1/events?token=[redacted]&vm=a');
    assert.equal(redactToken('/v1/events?vm=a&TOKEN=s3cret'), '/v1/events?vm=a&TOKEN=[redacted]');
  });
});

describe('service: listening on a Unix socket', () => {
  it('serves the API on a socket path and stops cleanly', async () => {
    const { startServer } = await import('../src/service/index.ts');
    const { request } = await import('node:http');
    const dir = mkdtempSync(join(tmpdir(), 'ioasid-sock-'));
    const socket = join(dir, 'ioasid.sock');
    const s = await startServer({ store: 'memory', socket, stateDir: dir, logLevel: 'silent', dashboard: false, say: () => {} });
    assert.equal(s.url, `unix:${socket}`);
    const body = await new Promise<string>((resolve, reject) => {
      const req = request({ socketPath: socket, path: '/healthz' }, (res) => {
        let b = '';
        res.on('data', (c: Buffer) => { b += c.toString(); });
        res.on('end', () => resolve(b));
      });
      req.on('error', reject);
      req.end();
    });
    assert.deepEqual(JSON.parse(body), { ok: true });
    await s.close();
    rmSync(dir, { recursive: true, force: true });
  });
});
