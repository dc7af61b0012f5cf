/**
 * What an operator sees of a running service: `/readyz` (not ready while shutting down, when the
 * store cannot commit, when the cluster role says so), 421 for a VM another host serves, the
 * `/metrics` content, and the order of the events a subscriber receives.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { CommitError } from '../src/core/index.ts';
import type { ClusterRole } from '../src/cluster/index.ts';
import { MemoryStore } from '../src/store/index.ts';
import { PasidAuthority, buildApp, hashToken, startServer } from '../src/service/index.ts';
import { fakeCluster } from './helpers/fake-cluster.ts';
import { IoasidClient, eventStreamProtocols } from '../src/client/index.ts';

const ADMIN = 'operations-admin-token-0123456789';

async function makeApp(opts: { store?: MemoryStore; cluster?: ClusterRole; now?: () => number } = {}) {
  const store = opts.store ?? new MemoryStore();
  const authority = await PasidAuthority.open({ store, ...(opts.cluster !== undefined ? { cluster: opts.cluster } : {}), ...(opts.now !== undefined ? { now: opts.now } : {}) });
  await authority.setAdminTokenHash(hashToken(ADMIN));
  const app = await buildApp({ authority });
  const call = async (method: 'GET' | 'POST' | 'DELETE', url: string, body?: unknown, token: string | null = ADMIN) => {
    const res = await app.inject({
      method, url,
      headers: { ...(token !== null ? { authorization: `Bearer ${token}` } : {}), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { payload: JSON.stringify(body) } : {}),
    });
    return { status: res.statusCode, body: res.headers['content-type']?.toString().includes('json') ? JSON.parse(res.body) : res.body, headers: res.headers };
  };
  const metrics = async () => (await app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${ADMIN}` } })).body;
  return { store, authority, app, call, metrics };
}

describe('readiness', () => {
  it('a store that cannot commit makes /readyz 503 with the reason, until a probe commit succeeds again', async () => {
    let now = 1_000_000;
    const { store, call, metrics, app } = await makeApp({ now: () => now });
    assert.deepEqual((await call('GET', '/readyz', undefined, null)).body, { ready: true, store: 'memory' });
    await call('POST', '/v1/vms', { id: 'vm1' });
    const real = store.apply.bind(store);
    store.apply = async () => {
      throw new CommitError('EIO', 'disk I/O error', {});
    };
    const failed = await call('POST', '/v1/vms/vm1/pasids', {});
    assert.equal(failed.status, 503);
    const r = await call('GET', '/readyz', undefined, null);
    assert.equal(r.status, 503);
    assert.equal(r.body.code, 'ENODEV');
    assert.match(r.body.details.reason, /store memory cannot commit: EIO: disk I\/O error/);
    assert.match(await metrics(), /^ioasid_store_commit_failing 1$/m);
    // The disk is back: the next probe (at most one a second) finds it, with no other traffic.
    store.apply = real;
    assert.equal((await call('GET', '/readyz', undefined, null)).status, 503, 'no probe within the same second');
    now += 1000;
    assert.equal((await call('GET', '/readyz', undefined, null)).status, 200);
    assert.match(await metrics(), /^ioasid_store_commit_failing 0$/m);
    await app.close();
  });

  it('a refusal by a rule (not a store failure) leaves the service ready', async () => {
    const { call, app } = await makeApp();
    await call('POST', '/v1/vms', { id: 'vm1', quota: 1 });
    await call('POST', '/v1/vms/vm1/pasids', {});
    assert.equal((await call('POST', '/v1/vms/vm1/pasids', {})).status, 409);
    assert.equal((await call('GET', '/readyz', undefined, null)).status, 200);
    await app.close();
  });

  it('cluster mode: fenced or without its lease is not ready, with the role\'s reason; the cluster gauges say why', async () => {
    const store = new MemoryStore();
    const c = fakeCluster(store);
    const { call, metrics, app } = await makeApp({ store, cluster: c.role });
    assert.equal((await call('GET', '/readyz', undefined, null)).status, 200);
    let m = await metrics();
    assert.match(m, /^ioasid_cluster_ready 1$/m);
    assert.match(m, /^ioasid_cluster_lease_held 1$/m);
    assert.match(m, /^ioasid_cluster_lease_ttl_seconds 9$/m);
    assert.match(m, /^ioasid_cluster_blocks_held 3$/m);
    assert.match(m, /^ioasid_cluster_fenced 0$/m);
    c.setHealth({ ready: false, reason: 'fenced by hostB (reclaimed)', fenced: true, lease: { held: false, ttlSeconds: null }, blocksHeld: 0 });
    const r = await call('GET', '/readyz', undefined, null);
    assert.equal(r.status, 503);
    assert.equal(r.body.details.reason, 'cluster: fenced by hostB (reclaimed)');
    m = await metrics();
    assert.match(m, /^ioasid_cluster_ready 0$/m);
    assert.match(m, /^ioasid_cluster_fenced 1$/m);
    assert.match(m, /^ioasid_cluster_lease_held 0$/m);
    assert.match(m, /^ioasid_cluster_lease_ttl_seconds -1$/m);
    await app.close();
  });

  it('while shutting down, a request on an open connection is answered 503, the routes added beside the API too (a load balancer stops sending)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ioasid-ops-'));
    const tokenFile = join(dir, 'admin.token');
    writeFileSync(tokenFile, `${ADMIN}\n`);
    let release = () => {};
    const held = new Promise<void>((r) => (release = r));
    const server = await startServer({
      store: 'memory', port: 0, stateDir: dir, adminTokenFile: tokenFile, logLevel: 'silent', dashboard: false,
      extend: (f) => {
        f.get('/test/slow', async () => {
          await held;
          return { done: true };
        });
        f.get('/test/other', async () => ({ other: true }));
      },
    });
    // A connection busy with a request when the shutdown begins stays open; a readiness probe
    // sent on it during the shutdown is answered 503, and so is a route added beside the API (as
    // the dashboard's are), on a second such connection.
    const u = new URL(server.url);
    const open = () => {
      const sock = connect(Number(u.port), u.hostname);
      let raw = '';
      sock.on('data', (d: Buffer) => (raw += d.toString()));
      const ended = new Promise<void>((r) => sock.on('close', () => r()));
      sock.write('GET /test/slow HTTP/1.1\r\nHost: x\r\n\r\n');
      return { sock, ended, statuses: () => [...raw.matchAll(/HTTP\/1\.1 (\d+)/g)].map((m) => Number(m[1])), raw: () => raw };
    };
    const probe = open();
    const page = open();
    await new Promise((r) => setTimeout(r, 100));
    const closing = server.close();
    await new Promise((r) => setTimeout(r, 50));
    probe.sock.write('GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n');
    page.sock.write('GET /test/other HTTP/1.1\r\nHost: x\r\n\r\n');
    await new Promise((r) => setTimeout(r, 50));
    release();
    await closing;
    await Promise.all([probe.ended, page.ended]);
    assert.deepEqual(probe.statuses(), [200, 503], probe.raw());
    assert.deepEqual(page.statuses(), [200, 503], page.raw());
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('cluster mode: a VM another host serves', () => {
  it('is answered 421 Misdirected Request (EREMOTE) naming the owner and its URL; nothing changes', async () => {
    const store = new MemoryStore();
    const c = fakeCluster(store);
    const { call, authority, app } = await makeApp({ store, cluster: c.role });
    await call('POST', '/v1/vms', { id: 'vm1', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }] });
    await call('POST', '/v1/vms/vm1/pasids', {});
    c.moveAway('vm1');
    const before = authority.host.snapshot();
    for (const [m, url, body] of [
      ['POST', '/v1/vms/vm1/pasids', {}], ['DELETE', '/v1/vms/vm1/pasids/1', undefined], ['POST', '/v1/vms/vm1/pasids/1/bindings', { bdf: '0000:00:02.0' }],
      ['DELETE', '/v1/vms/vm1', undefined], ['POST', '/v1/vms/vm1/token', undefined], ['POST', '/v1/vms/vm1/devices', { bdf: '0000:00:03.0' }],
      ['POST', '/v1/vms/vm1/viommus/0/mmio', { op: 'read', offset: 0xe10, size: 8 }],
    ] as const) {
      const r = await call(m, url, body);
      assert.equal(r.status, 421, `${m} ${url}`);
      assert.equal(r.body.code, 'EREMOTE');
      assert.equal(r.body.title, 'Served by another host');
      assert.deepEqual(r.body.details, { vm: 'vm1', host: 'hostB', url: 'http://10.0.0.2:7070' });
    }
    assert.deepEqual(authority.host.snapshot(), before);
    assert.equal((await call('GET', '/readyz', undefined, null)).status, 200, 'a misdirected request says nothing about this host\'s health');
    await app.close();
  });
});

describe('/metrics', () => {
  it('build info, capacity, an unlimited quota as +Inf, commit latency (failures at 0), refusals of every stage under operations_total, no errors_total', async () => {
    const { call, metrics, app } = await makeApp();
    await call('POST', '/v1/vms', { id: 'capped', quota: 4 });
    await call('POST', '/v1/vms', { id: 'free', quota: 0 });
    await call('POST', '/v1/vms/capped/pasids', { count: 2 });
    assert.equal((await call('POST', '/v1/vms/capped/pasids', {}, 'not-a-token')).status, 401); // authentication
    assert.equal((await call('POST', '/v1/vms/capped/pasids', { count: 0 })).status, 400); // validation
    assert.equal((await call('DELETE', '/v1/vms/capped/pasids/77')).status, 404); // the operation
    assert.equal((await call('GET', '/v1/nowhere')).status, 404); // no route
    const m = await metrics();
    const version = (JSON.parse((await import('node:fs')).readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
    assert.match(m, new RegExp(`^ioasid_build_info\\{version="${version.replace(/\./g, '\\.')}",node="${process.versions.node.replace(/\./g, '\\.')}",store="memory"\\} 1$`, 'm'));
    assert.match(m, /^ioasid_pasid_capacity 1048575$/m);
    assert.match(m, /^ioasid_pasids_allocated 2$/m);
    assert.match(m, /^ioasid_vm_quota\{vm="capped"\} 4$/m);
    assert.match(m, /^ioasid_vm_quota\{vm="free"\} \+Inf$/m, 'an unlimited quota is not 0');
    assert.match(m, /^ioasid_vm_pasids\{vm="capped"\} 2$/m);
    assert.match(m, /^ioasid_store_commit_duration_seconds_count\{result="ok"\} 3$/m, 'two creates and one allocation committed');
    assert.match(m, /^ioasid_store_commit_duration_seconds_count\{result="failed"\} 0$/m, 'the failures series exists before the first failure');
    assert.match(m, /^ioasid_operations_total\{op="allocPasids",result="EPERM"\} 1$/m);
    assert.match(m, /^ioasid_operations_total\{op="allocPasids",result="EINVAL"\} 1$/m);
    assert.match(m, /^ioasid_operations_total\{op="freePasid",result="ENOENT"\} 1$/m);
    assert.match(m, /^ioasid_operations_total\{op="allocPasids",result="ok"\} 1$/m);
    assert.doesNotMatch(m, /ioasid_errors_total/);
    await app.close();
  });

  it('event subscribers connected, subscriptions refused, and consumers dropped for not keeping up', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ioasid-ops-'));
    const tokenFile = join(dir, 'admin.token');
    writeFileSync(tokenFile, `${ADMIN}\n`);
    const server = await startServer({ store: 'memory', port: 0, stateDir: dir, adminTokenFile: tokenFile, logLevel: 'silent', dashboard: false, events: { perCaller: 1 } });
    const scrape = async () => (await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN}` } })).text();
    const open = () => new WebSocket(`${server.url.replace(/^http/, 'ws')}/v1/events`, eventStreamProtocols(ADMIN));
    const ws = open();
    await new Promise((r) => ws.once('open', r));
    const second = open();
    assert.equal(await new Promise((r) => second.once('close', (code) => r(code))), 4429);
    let m = await scrape();
    assert.match(m, /^ioasid_event_subscribers 1$/m);
    assert.match(m, /^ioasid_event_subscriptions_refused_total 1$/m);
    assert.match(m, /^ioasid_event_consumers_dropped_total 0$/m);
    // The hub's own test drops a slow consumer (service-events.test.ts); here, its count reaches /metrics.
    const real = server.app.events.stats.bind(server.app.events);
    server.app.metrics.watchEvents({ stats: () => ({ ...real(), dropped: 5 }) });
    m = await scrape();
    assert.match(m, /^ioasid_event_consumers_dropped_total 5$/m);
    ws.close();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('events through the service', () => {
  it('a VM\'s creation and its destruction each arrive as one commit, in a natural order', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ioasid-ops-'));
    const tokenFile = join(dir, 'admin.token');
    writeFileSync(tokenFile, `${ADMIN}\n`);
    const server = await startServer({ store: 'memory', port: 0, stateDir: dir, adminTokenFile: tokenFile, logLevel: 'silent', dashboard: false });
    const messages: { type: string; seq: number; at: number; [k: string]: unknown }[] = [];
    const ws = new WebSocket(`${server.url.replace(/^http/, 'ws')}/v1/events`, eventStreamProtocols(ADMIN));
    ws.on('message', (d) => messages.push(JSON.parse(d.toString())));
    await new Promise((r) => ws.once('open', r));
    const admin = new IoasidClient({ url: server.url, token: ADMIN });
    await admin.createVm({ id: 'vm1', viommus: [{ segment: 0 }, { segment: 1 }], devices: [{ bdf: '0000:00:02.0' }, { bdf: '0001:00:03.0' }] });
    await admin.allocPasids('vm1', { count: 3 });
    await admin.bind('vm1', 2, '0001:00:03.0');
    await admin.destroyVm('vm1');
    for (let i = 0; i < 100 && !messages.some((m) => m.type === 'vm-destroyed'); i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(messages.map((m) => [m.type, m.segment ?? m.pasid ?? m.bdf ?? m.pasids ?? null]), [
      ['vm-created', null], ['viommu-added', 0], ['viommu-added', 1], ['device-assigned', '0000:00:02.0'], ['device-assigned', '0001:00:03.0'],
      ['alloc', [1, 2, 3]],
      ['bind', 2],
      ['unbind', 2], ['free', [1, 2, 3]], ['device-removed', '0000:00:02.0'], ['device-removed', '0001:00:03.0'], ['viommu-removed', 0], ['viommu-removed', 1], ['vm-destroyed', null],
    ]);
    assert.deepEqual(messages.map((m) => m.seq), messages.map((_, i) => i + 1), 'numbered in order, no gap');
    const creation = messages.slice(0, 5);
    const destruction = messages.slice(7);
    assert.equal(new Set(creation.map((m) => m.at)).size, 1, 'the creation is one commit');
    assert.equal(new Set(destruction.map((m) => m.at)).size, 1, 'the destruction is one commit');
    const closed = new Promise<number>((r) => ws.once('close', (code) => r(code)));
    await server.close();
    assert.equal(await closed, 1001);
    rmSync(dir, { recursive: true, force: true });
  });
});
