/**
 * The wire contract (src/api) is what the service does: the OpenAPI document lints clean with
 * Redocly's recommended rules and documents every endpoint; every answer of a session through the
 * typed client validates against its contract schema; answers are shaped by their schemas (a field
 * the contract lacks is not sent); path and query integers are strict; errors are RFC 9457
 * problems and a 401 carries the Bearer challenge. The type-level half (handlers and client typed
 * by the contract) is checked by `tsc` on this file: see the `@ts-expect-error` lines.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Ajv } from 'ajv';
import {
  EVENT_STREAM, OPERATIONS, PROBLEM, PROBLEM_MEDIA_TYPE, STREAM_MESSAGE, buildOpenApi, errorStatuses, type OperationDef, type OperationId,
} from '../src/api/index.ts';
import { IoasidClient } from '../src/client/index.ts';
import { buildApp, hashToken, PasidAuthority, type Handler } from '../src/service/index.ts';
import { MemoryStore } from '../src/store/index.ts';
import { lintOpenApi } from '../scripts/lint-openapi.ts';

const ADMIN = 'admin-token-for-the-contract-0123456789';
const OPS = OPERATIONS as Readonly<Record<OperationId, OperationDef>>;

// ------------------------------------------------------------------ types (checked by tsc)

// @ts-expect-error a handler must answer what the contract says
export const wrongReply: Handler<'healthz'> = () => ({ ok: 'yes' });
// @ts-expect-error a handler sees only the body fields the contract has
export const wrongBody: Handler<'allocPasids'> = async (a, req) => ({ pasids: await a.allocPasids(req.params.vm, { count: req.body.number }) });
// @ts-expect-error path integers arrive as numbers: a string is not a PASID
export const wrongParam: Handler<'freePasid'> = async (a, req) => a.freePasid(req.params.vm, `${req.params.pasid}`);
export const client = new IoasidClient({ url: 'http://x' });
// @ts-expect-error the client takes the contract's bodies only
export const wrongCall = () => client.call('createVm', { body: { id: 'vm1', quota: 'many' } });

// ------------------------------------------------------------------ behaviour

async function fixture() {
  const store = new MemoryStore();
  const authority = await PasidAuthority.open({ store });
  await authority.setAdminTokenHash(hashToken(ADMIN));
  const app = await buildApp({ authority });
  const fetchIn: typeof fetch = async (input, init) => {
    const u = new URL(String(input));
    const res = await app.inject({
      method: (init?.method ?? 'GET') as 'GET',
      url: `${u.pathname}${u.search}`,
      headers: init?.headers as Record<string, string>,
      ...(init?.body !== undefined ? { payload: String(init.body) } : {}),
    });
    return new Response(res.statusCode === 204 ? null : new Uint8Array(res.rawPayload), { status: res.statusCode, headers: { 'content-type': String(res.headers['content-type'] ?? '') } });
  };
  return { app, authority, fetchIn };
}

describe('the API contract', () => {
  let f: Awaited<ReturnType<typeof fixture>>;
  before(async () => {
    f = await fixture();
  });
  after(() => f.app.close());

  it('the OpenAPI document lints with Redocly recommended rules: 0 errors, 0 warnings beyond the 4 ruled out with reasons', async () => {
    const served = await f.app.inject({ method: 'GET', url: '/openapi.json' });
    assert.equal(served.statusCode, 200);
    const doc = served.json();
    assert.deepEqual(doc, buildOpenApi(), 'the service serves the document the contract builds');
    const r = await lintOpenApi(doc);
    assert.deepEqual(r.problems, [], r.report);
    assert.equal(r.errors, 0);
    assert.equal(r.warnings, 0);
    assert.equal(r.ignored, 4, 'the places ruled out in .redocly.lint-ignore.yaml, no more');
    process.stdout.write(`# openapi lint (redocly recommended): ${r.errors} errors, ${r.warnings} warnings, ${r.ignored} ruled out in .redocly.lint-ignore.yaml\n`);
  });

  it('documents /readyz, /metrics, the event WebSocket, an integer limit, and problem answers with a Bearer challenge on 401', () => {
    const doc = buildOpenApi() as { paths: Record<string, Record<string, { parameters?: { name: string; schema: { type: string } }[]; responses: Record<string, unknown> }>>; components: { responses: Record<string, { headers?: Record<string, unknown>; content: Record<string, unknown> }> }; servers: unknown[] };
    assert.ok(doc.paths['/readyz']?.get?.responses['503']);
    assert.ok(doc.paths['/metrics']?.get);
    assert.ok(doc.paths['/v1/events']?.get?.responses['101'], 'the WebSocket upgrade');
    assert.deepEqual(doc.paths['/v1/events']?.get?.responses['101'], { description: 'Switching Protocols: the stream starts. Each text frame then carries one message.', content: { 'application/json': { schema: { $ref: '#/components/schemas/StreamMessage' } } } });
    const limit = doc.paths['/v1/events/recent']?.get?.parameters?.find((x) => x.name === 'limit');
    assert.equal(limit?.schema.type, 'integer');
    assert.ok(doc.servers.length > 0);
    assert.ok(doc.components.responses.Problem401?.headers?.['WWW-Authenticate']);
    for (const r of Object.values(doc.components.responses)) assert.deepEqual(Object.keys(r.content), [PROBLEM_MEDIA_TYPE]);
    for (const [id, op] of Object.entries(OPS)) {
      const documented = Object.keys(doc.paths[op.path]?.[op.method.toLowerCase()]?.responses ?? {});
      assert.deepEqual(documented, [String(op.status), ...errorStatuses(op).map(String)], id);
      if (op.auth !== 'none') assert.ok(documented.includes('401') && documented.includes('403'), `${id} documents 401 and 403`);
    }
  });

  it('every answer of a session through the typed client validates against its contract schema', async () => {
    const ajv = new Ajv({ strict: false, allErrors: true });
    const checked = new Set<string>();
    const validating: typeof fetch = async (input, init) => {
      const res = await f.fetchIn(input, init);
      const u = new URL(String(input));
      const method = init?.method ?? 'GET';
      const entry = Object.entries(OPS).find(([, op]) => op.method === method && new RegExp(`^${op.path.replace(/\{[A-Za-z]+\}/g, '[^/]+')}$`).test(u.pathname));
      assert.ok(entry, `${method} ${u.pathname} is an operation of the contract`);
      const [id, op] = entry;
      const body = res.status === 204 ? null : new Uint8Array(await res.arrayBuffer());
      if (res.ok && op.response !== undefined) {
        const json = JSON.parse(new TextDecoder().decode(body as Uint8Array)) as unknown;
        assert.ok(ajv.validate(op.response as object, json), `${id}: ${ajv.errorsText()} in ${JSON.stringify(json).slice(0, 400)}`);
        checked.add(id);
      }
      if (!res.ok) {
        assert.equal(res.headers.get('content-type')?.split(';')[0], PROBLEM_MEDIA_TYPE);
        const json = JSON.parse(new TextDecoder().decode(body as Uint8Array)) as unknown;
        assert.ok(ajv.validate(PROBLEM, json), `${id} error: ${ajv.errorsText()}`);
        checked.add(`${id}:error`);
      }
      return new Response(body, { status: res.status, headers: res.headers });
    };
    const admin = new IoasidClient({ url: 'http://in-process', token: ADMIN, fetch: validating });
    assert.equal((await admin.health()).ok, true);
    assert.deepEqual(await admin.ready(), { ready: true, store: 'memory' });
    const { vm, token } = await admin.createVm({ id: 'vm1', quota: 4, viommus: [{ segment: 0 }, { segment: 1, layout: 'A' }], devices: [{ bdf: '0000:00:02.0', pasidBits: 10 }] });
    const guest = new IoasidClient({ url: 'http://in-process', token, fetch: validating });
    assert.equal(vm.id, 'vm1');
    await admin.addViommu('vm1', { segment: 2, layout: 'B', rangeExtension: true });
    await admin.addDevice('vm1', { bdf: '0002:00:01.0' });
    await admin.removeDevice('vm1', '0002:00:01.0');
    await admin.removeViommu('vm1', 2);
    const [p, q] = await guest.allocPasids('vm1', { count: 2 });
    await guest.bind('vm1', p as number, '0000:00:02.0');
    await guest.getVmPasid('vm1', p as number);
    await guest.unbind('vm1', p as number, '0000:00:02.0');
    await guest.freePasid('vm1', q as number);
    await guest.listPasids('vm1');
    await guest.mmioWrite('vm1', 0, 0xe00, 1n, 8);
    await guest.mmioRead('vm1', 0, 0xe10, 8);
    await guest.getViommu('vm1', 0);
    await guest.registers('vm1', 0);
    await admin.getVm('vm1');
    await admin.listVms();
    await admin.getPasid(p as number);
    await admin.namespace();
    await admin.namespaceMap();
    const events = await admin.recentEvents(1000);
    assert.ok(events.some((e) => e.type === 'alloc') && events.some((e) => e.type === 'bind') && events.some((e) => e.type === 'device-removed'));
    await assert.rejects(admin.clusterStatus(), { code: 'EOPNOTSUPP' });
    await assert.rejects(guest.allocPasids('vm1', { count: 10 }), { code: 'EDQUOT' });
    const fresh = await admin.replaceToken('vm1');
    assert.equal(fresh.vm, 'vm1');
    await assert.rejects(guest.listPasids('vm1'), { code: 'EPERM' });
    await admin.destroyVm('vm1');
    const answered = [...checked].filter((c) => !c.includes(':'));
    const untested = Object.entries(OPS).filter(([id, op]) => op.response !== undefined && !answered.includes(id) && !['clusterStatus', 'migrateVm', 'reclaimHost', 'openapi'].includes(id)).map(([id]) => id);
    assert.deepEqual(untested, [], 'every local operation with a JSON answer was validated');
  });

  it('answers are shaped by their response schemas: a field the contract lacks is not sent', async () => {
    await f.authority.createVm({ id: 'shaped' });
    const real = f.authority.vmInfo.bind(f.authority);
    f.authority.vmInfo = (id: string) => ({ ...real(id), secret: 'must not leave the service' });
    try {
      const res = await f.app.inject({ method: 'GET', url: '/v1/vms/shaped', headers: { authorization: `Bearer ${ADMIN}` } });
      assert.equal(res.statusCode, 200);
      assert.equal(res.json().id, 'shaped');
      assert.ok(!('secret' in res.json()), res.body);
    } finally {
      f.authority.vmInfo = real;
      await f.authority.destroyVm('shaped');
    }
  });

  it('limit on /v1/events/recent is an integer: decimal digits only, within [1, 65536]', async () => {
    await f.authority.createVm({ id: 'lim' });
    await f.authority.allocPasids('lim', { count: 3 });
    const get = (q: string) => f.app.inject({ method: 'GET', url: `/v1/events/recent?${q}`, headers: { authorization: `Bearer ${ADMIN}` } });
    const two = await get('limit=2');
    assert.equal(two.statusCode, 200);
    assert.equal(two.json().events.length, 2);
    for (const bad of ['limit=0', 'limit=0x2', 'limit=1e1', 'limit=%202', 'limit=2.0', 'limit=65537', 'limit=2&limit=3', 'limit=']) {
      const r = await get(bad);
      assert.equal(r.statusCode, 400, bad);
      assert.equal(r.json().code, 'EINVAL', bad);
    }
    await f.authority.destroyVm('lim');
  });

  it('401 answers carry WWW-Authenticate: Bearer (with error="invalid_token" when a token was sent)', async () => {
    const none = await f.app.inject({ method: 'GET', url: '/v1/vms' });
    assert.equal(none.statusCode, 401);
    assert.equal(none.headers['www-authenticate'], 'Bearer realm="ioasid"');
    const bad = await f.app.inject({ method: 'GET', url: '/v1/vms', headers: { authorization: 'Bearer nope' } });
    assert.equal(bad.statusCode, 401);
    assert.equal(bad.headers['www-authenticate'], 'Bearer realm="ioasid", error="invalid_token"');
    const body = bad.json();
    assert.deepEqual({ type: body.type, title: body.title, status: body.status, instance: body.instance, code: body.code, errno: body.errno }, { type: 'urn:ioasid:error:EPERM', title: 'Not authenticated', status: 401, instance: '/v1/vms', code: 'EPERM', errno: -1 });
    const forbidden = await f.app.inject({ method: 'GET', url: '/v1/namespace', headers: { authorization: 'Bearer nope' } });
    assert.equal(forbidden.statusCode, 401);
    const ok = await f.app.inject({ method: 'GET', url: '/v1/vms', headers: { authorization: `Bearer ${ADMIN}` } });
    assert.equal(ok.headers['www-authenticate'], undefined);
  });

  it('the event stream path answers a plain GET with a problem naming the WebSocket; its messages are in the contract', async () => {
    const r = await f.app.inject({ method: 'GET', url: EVENT_STREAM.path, headers: { authorization: `Bearer ${ADMIN}` } });
    assert.equal(r.statusCode, 400);
    assert.equal(String(r.headers['content-type']).split(';')[0], PROBLEM_MEDIA_TYPE);
    assert.match(r.json().detail, /WebSocket/);
    const ajv = new Ajv({ strict: false });
    assert.ok(ajv.validate(STREAM_MESSAGE, { type: 'alloc', vm: 'vm1', pasids: [1, 2], seq: 3, at: 1700000000000 }));
    assert.ok(ajv.validate(STREAM_MESSAGE, { type: 'gap', since: 4, next: 90 }));
    assert.ok(!ajv.validate(STREAM_MESSAGE, { type: 'alloc', vm: 'vm1', pasid: 1, seq: 3, at: 0 }), 'one PASID per event is the old shape');
  });
});
