/**
 * What the dashboard needs from the service, in process (no browser): the compact namespace map
 * (format round trip, admin only, consistent with the authority and its event seq, under 1 MiB
 * for 1,000,000 PASIDs of 100 VMs interleaved at random, 2-byte cells past 255 owners), the
 * vIOMMU configuration route, and the page's own routes (bundle, headers, gzip, ETag, default
 * registration by startServer).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deflateSync, gunzipSync } from 'node:zlib';
import { buildApp, PasidAuthority, hashToken, startServer } from '../src/service/index.ts';
import { registerDashboard } from '../src/service/dashboard.ts';
import { decodeNamespaceMap, encodeNamespaceMap } from '../src/api/index.ts';
import { IoasidClient } from '../src/client/index.ts';
import { openStore } from '../src/store/index.ts';
import { XorShift32 } from '../bench/util.ts';

const ADMIN = 'admin-token-for-dashboard-map-0123456789';
const MiB = 1 << 20;

async function makeApp(opts: { dashboard?: boolean } = {}) {
  const authority = await PasidAuthority.open({ store: openStore('memory') });
  await authority.setAdminTokenHash(hashToken(ADMIN));
  const app = await buildApp({ authority, ...(opts.dashboard ? { extend: (a) => registerDashboard(a) } : {}) });
  return { app, authority };
}

async function getMap(app: Awaited<ReturnType<typeof makeApp>>['app'], token: string | null = ADMIN) {
  const res = await app.inject({ method: 'GET', url: '/v1/namespace/map', headers: token ? { authorization: `Bearer ${token}` } : {} });
  return { status: res.statusCode, type: res.headers['content-type'], bytes: new Uint8Array(res.rawPayload), json: res.statusCode >= 400 ? res.json() : null };
}

/** A fetch that answers from the app in process (GET only). */
function injectFetch(app: Awaited<ReturnType<typeof makeApp>>['app']): typeof fetch {
  return async (url, init) => {
    const res = await app.inject({ method: 'GET', url: new URL(String(url)).pathname, headers: init?.headers as Record<string, string> });
    return new Response(new Uint8Array(res.rawPayload), { status: res.statusCode, headers: { 'content-type': String(res.headers['content-type']) } });
  };
}

describe('namespace map format', () => {
  it('round-trips owners, counts, seq and every cell, 1- and 2-byte wide', async () => {
    for (const width of [1, 2] as const) {
      const capacity = 1 << 20;
      const cells = width === 1 ? new Uint8Array(capacity) : new Uint16Array(capacity);
      const rnd = new XorShift32(width);
      for (let i = 1; i < capacity; i += 1 + rnd.below(3)) cells[i] = 1 + rnd.below(width === 1 ? 200 : 400);
      const owners = Array.from({ length: width === 1 ? 200 : 400 }, (_, i) => ({ index: i + 1, owner: i === 0 ? null : `vm-${i}`, count: 0 }));
      for (const c of cells) if (c > 0) (owners[c - 1] as { count: number }).count++;
      const bytes = encodeNamespaceMap({ seq: 42, capacity, owners, cells }, (raw) => deflateSync(raw));
      const back = await decodeNamespaceMap(bytes);
      assert.equal(back.seq, 42);
      assert.equal(back.capacity, capacity);
      assert.deepEqual(back.owners, owners);
      assert.equal(back.cells.constructor, cells.constructor);
      assert.deepEqual(back.cells, cells);
    }
  });

  it('refuses what is not a map, naming why', async () => {
    await assert.rejects(decodeNamespaceMap(new Uint8Array(4)), /shorter than the header/);
    await assert.rejects(decodeNamespaceMap(new TextEncoder().encode('{"not":"a map at all"}')), /wrong magic/);
    const ok = encodeNamespaceMap({ seq: 0, capacity: 16, owners: [], cells: new Uint8Array(16) }, (raw) => deflateSync(raw));
    await assert.rejects(decodeNamespaceMap(ok.subarray(0, ok.length - 4)), /.+/);
  });
});

describe('GET /v1/namespace/map', () => {
  let ctx: Awaited<ReturnType<typeof makeApp>>;
  let tokA = '';
  before(async () => {
    ctx = await makeApp();
    tokA = (await ctx.authority.createVm({ id: 'vm-a', quota: 0 })).token;
    await ctx.authority.createVm({ id: 'vm-b', quota: 0 });
    await ctx.authority.allocPasids('vm-a', { count: 3 });
    await ctx.authority.allocPasids('vm-b', { count: 2, min: 100 });
    await ctx.authority.allocPasids('vm-a', { min: 0xfffff, max: 0xfffff });
    ctx.authority.host.space.allocSync(null, 500, 500);
  });
  after(() => ctx.app.close());

  it('is for the admin only', async () => {
    assert.equal((await getMap(ctx.app, null)).status, 401);
    const vm = await getMap(ctx.app, tokA);
    assert.equal(vm.status, 403);
    assert.equal((vm.json as { code: string }).code, 'EACCES');
  });

  it('gives every PASID its owner, with the legend and the seq of the last event in it', async () => {
    const r = await getMap(ctx.app);
    assert.equal(r.status, 200);
    assert.equal(r.type, 'application/octet-stream');
    const map = await decodeNamespaceMap(r.bytes);
    assert.equal(map.seq, ctx.authority.lastSeq);
    assert.deepEqual(map.owners, [{ index: 1, owner: null, count: 1 }, { index: 2, owner: 'vm-a', count: 4 }, { index: 3, owner: 'vm-b', count: 2 }]);
    const owned = [...map.cells.entries()].filter(([, v]) => v !== 0);
    assert.deepEqual(owned, [[1, 2], [2, 2], [3, 2], [100, 3], [101, 3], [500, 1], [0xfffff, 2]]);
    assert.ok(r.bytes.length < 4096, `${r.bytes.length} bytes for a sparse namespace`);
  });

  it('the typed client decodes it, and events after its seq are exactly the later changes', async () => {
    const client = new IoasidClient({ url: 'http://in-process', token: ADMIN, fetch: injectFetch(ctx.app) });
    const before = await client.namespaceMap();
    const [p] = await ctx.authority.allocPasids('vm-b');
    const later = ctx.authority.recentEvents().filter((e) => e.seq > before.seq);
    assert.deepEqual(later.map((e) => [e.type, 'pasids' in e ? e.pasids : null]), [['alloc', [p]]]);
    assert.equal(before.cells[p as number], 0);
    assert.equal((await client.namespaceMap()).cells[p as number], 3);
    const wrong = new IoasidClient({ url: 'http://in-process', token: 'not-a-token', fetch: injectFetch(ctx.app) });
    await assert.rejects(wrong.namespaceMap(), (e: unknown) => (e as { code?: string }).code === 'EPERM');
  });
});

describe('namespace map size', () => {
  it('stays under 1 MiB for 1,000,000 PASIDs of 100 VMs interleaved at random', async () => {
    const { app, authority } = await makeApp();
    const sets = [];
    for (let i = 0; i < 100; i++) {
      await authority.createVm({ id: `vm-${String(i).padStart(3, '0')}`, quota: 0 });
      sets.push(authority.vm(`vm-${String(i).padStart(3, '0')}`).set);
    }
    const rnd = new XorShift32(7);
    const space = authority.host.space;
    for (let i = 0; i < 1_000_000; i++) space.allocSync(sets[rnd.below(100)] ?? null, 1, 0xfffff);
    const r = await getMap(app);
    assert.equal(r.status, 200);
    assert.ok(r.bytes.length < MiB, `${r.bytes.length} bytes`);
    const map = await decodeNamespaceMap(r.bytes);
    assert.equal(map.owners.reduce((n, o) => n + o.count, 0), 1_000_000);
    assert.equal(map.owners.length, 101);
    await app.close();
  });

  it('uses 2-byte cells past 255 owners', async () => {
    const { app, authority } = await makeApp();
    for (let i = 0; i < 300; i++) {
      await authority.createVm({ id: `v${i}`, quota: 0 });
      await authority.allocPasids(`v${i}`);
    }
    const map = await decodeNamespaceMap((await getMap(app)).bytes);
    assert.ok(map.cells instanceof Uint16Array);
    assert.equal(map.owners.length, 301);
    for (let p = 1; p <= 300; p++) assert.equal(map.owners.find((o) => o.index === map.cells[p])?.owner, `v${p - 1}`);
    await app.close();
  });
});

describe('vIOMMU configuration route', () => {
  it('gives the layout and VCCAP.PAS position the registers decode with', async () => {
    const { app, authority } = await makeApp();
    const { token } = await authority.createVm({ id: 'vm', viommus: [{ segment: 2, layout: 'B', rangeExtension: true }] });
    const res = await app.inject({ method: 'GET', url: '/v1/vms/vm/viommus/2', headers: { authorization: `Bearer ${token}` } });
    assert.equal(res.statusCode, 200);
    const body = res.json() as { segment: number; config: { layout: string; pasBit: number; rangeExtension: boolean } };
    assert.equal(body.segment, 2);
    assert.deepEqual([body.config.layout, body.config.pasBit, body.config.rangeExtension], ['B', 0, true]);
    assert.equal((await app.inject({ method: 'GET', url: '/v1/vms/vm/viommus/3', headers: { authorization: `Bearer ${token}` } })).statusCode, 404);
    await app.close();
  });
});

describe('dashboard routes', () => {
  let ctx: Awaited<ReturnType<typeof makeApp>>;
  before(async () => {
    ctx = await makeApp({ dashboard: true });
  });
  after(() => ctx.app.close());

  it('serves the page, its bundle and stylesheet with a strict CSP, gzip when accepted, 304 on a matching ETag', async () => {
    const page = await ctx.app.inject({ method: 'GET', url: '/' });
    assert.equal(page.statusCode, 200);
    assert.match(String(page.headers['content-type']), /^text\/html/);
    assert.match(page.body, /<script type="module" src="\/dashboard\/app\.js">/);
    const csp = String(page.headers['content-security-policy']);
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'self'/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
    assert.equal(page.headers['x-content-type-options'], 'nosniff');

    const js = await ctx.app.inject({ method: 'GET', url: '/dashboard/app.js', headers: { 'accept-encoding': 'gzip, br' } });
    assert.equal(js.statusCode, 200);
    assert.equal(js.headers['content-encoding'], 'gzip');
    assert.match(String(js.headers['content-type']), /^text\/javascript/);
    const source = gunzipSync(js.rawPayload).toString('utf8');
    assert.match(source, /VCRSP_REG/, 'the VT-d register tables are bundled');
    assert.doesNotMatch(source, /node:/, 'nothing of Node in the page');
    assert.ok(js.rawPayload.length < 64 * 1024, `bundle is ${js.rawPayload.length} bytes gzipped`);
    const again = await ctx.app.inject({ method: 'GET', url: '/dashboard/app.js', headers: { 'if-none-match': String(js.headers.etag) } });
    assert.equal(again.statusCode, 304);

    const css = await ctx.app.inject({ method: 'GET', url: '/dashboard/app.css' });
    assert.equal(css.statusCode, 200);
    assert.equal(css.headers['content-encoding'], undefined);
    assert.match(css.body, /:focus-visible/);
  });

  it('startServer serves the dashboard by default, and not with dashboard: false', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ioasid-dash-serve-'));
    try {
      writeFileSync(join(dir, 'admin.token'), ADMIN);
      for (const dashboard of [true, false]) {
        const s = await startServer({ store: 'memory', host: '127.0.0.1', port: 0, adminTokenFile: join(dir, 'admin.token'), logLevel: 'silent', say: () => {}, dashboard });
        try {
          const res = await fetch(`${s.url}/`);
          assert.equal(res.status, dashboard ? 200 : 404);
        } finally {
          await s.close();
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
