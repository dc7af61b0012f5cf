/**
 * Every request is validated; a bad request gets a JSON error with the errno code and an HTTP
 * status, and changes nothing (docs/api.md). The service runs in process (fastify inject) with two VMs
 * holding PASIDs and bindings; then several hundred bad requests, generated route by route from
 * the route table and its JSON schemas, are sent one at a time. After each: a 4xx status, an RFC
 * 9457 `application/problem+json` body (`type`, `title`, `status`, `detail`) with `{ code, errno,
 * message }` whose code is an errno name, whose errno is its negative Linux
 * number and whose status is the one docs/error-codes.md gives it; and the whole state (host model,
 * store rows, VM list, each vIOMMU's registers and command log, the event log) deep-equal to
 * before. Finally the valid requests the bad ones were mutated from are sent and must succeed, so
 * each refusal is due to the mutation and not to a broken base.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ERRNO, isIoasidErrorCode } from '../src/core/index.ts';
import { buildApp, hashToken, HTTP_STATUS, PasidAuthority, ROUTES } from '../src/service/index.ts';
import { MemoryStore } from '../src/store/index.ts';

const ADMIN = 'admin-token-for-bad-requests-0123456789';
const BAD_TOKEN = 'this-token-belongs-to-nobody-0123456789';

type Method = 'GET' | 'POST' | 'DELETE' | 'PUT' | 'PATCH';

interface BadRequest {
  /** What is wrong with it, for the report. */
  readonly why: string;
  readonly method: Method;
  readonly url: string;
  /** Bearer token; null sends no Authorization header. */
  readonly token: string | null;
  readonly headers?: Record<string, string>;
  /** Raw body, sent as is (content-type application/json unless `headers` says otherwise). */
  readonly payload?: string;
}

interface Fixture {
  app: Awaited<ReturnType<typeof buildApp>>;
  authority: PasidAuthority;
  store: MemoryStore;
  tokens: Record<string, string>;
}

async function fixture(): Promise<Fixture> {
  const store = new MemoryStore();
  const authority = await PasidAuthority.open({ store });
  await authority.setAdminTokenHash(hashToken(ADMIN));
  const app = await buildApp({ authority });
  const vm1 = await authority.createVm({
    id: 'vm1', quota: 5,
    viommus: [{ segment: 0, layout: 'B' }, { segment: 1, layout: 'A' }],
    devices: [{ bdf: '0000:00:02.0', pasidBits: 10 }, { bdf: '0001:00:03.0' }],
  });
  const vm2 = await authority.createVm({ id: 'vm2', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:04.0' }] });
  assert.deepEqual(await authority.allocPasids('vm1', { count: 3 }), [1, 2, 3]);
  assert.deepEqual(await authority.allocPasids('vm2', { count: 2 }), [4, 5]);
  assert.deepEqual(await authority.allocPasids('vm1', { min: 2000 }), [2000]);
  await authority.bind('vm1', 1, '0000:00:02.0');
  await authority.bind('vm1', 3, '0001:00:03.0');
  await authority.bind('vm2', 4, '0000:00:04.0');
  return { app, authority, store, tokens: { vm1: vm1.token, vm2: vm2.token } };
}

/** Everything a request could change. */
function state(f: Fixture): unknown {
  const a = f.authority;
  return {
    host: a.host.snapshot(),
    store: f.store.snapshot(),
    vms: a.listVms(),
    registers: a.listVms().flatMap((vm) => vm.viommus.map((v) => ({ vm: vm.id, segment: v.segment, ...a.registers(vm.id, v.segment) }))),
    events: a.recentEvents(),
  };
}

// ------------------------------------------------------------------ generation

/** Valid parameters of each route, and the valid body each bad body is mutated from. */
const VALID_PARAMS: Record<string, string> = { vm: 'vm1', pasid: '2', segment: '0', bdf: '0000:00:02.0' };
const VALID_BODY: Record<string, Record<string, unknown>> = {
  createVm: { id: 'vm9', quota: 5, viommus: [{ segment: 0, layout: 'A', rangeExtension: false }], devices: [{ bdf: '0000:00:0b.0', pasidBits: 8 }] },
  addViommu: { segment: 7, layout: 'B', rangeExtension: true },
  addDevice: { bdf: '0000:00:09.0', pasidBits: 12 },
  allocPasids: { min: 100, max: 200, count: 1 },
  bind: { bdf: '0000:00:02.0' },
  mmio: { op: 'read', offset: 0, size: 8 },
};

function path(url: string, params: Record<string, string>): string {
  return url.replace(/:([a-z]+)/g, (_, k: string) => encodeURIComponent(params[k] ?? VALID_PARAMS[k] ?? 'x'));
}

interface Schema {
  type?: string | string[];
  properties?: Record<string, Schema>;
  required?: string[];
  additionalProperties?: boolean;
  minimum?: number;
  maximum?: number;
  pattern?: string;
  enum?: unknown[];
  maxItems?: number;
  items?: Schema;
}

/** Values that break `s`: wrong JSON types, out of range, not matching, too many items. */
function invalidValues(s: Schema): { why: string; value: unknown }[] {
  const out: { why: string; value: unknown }[] = [];
  const type = Array.isArray(s.type) ? s.type[0] : s.type;
  const wrong: Record<string, unknown[]> = {
    integer: ['1', 1.5, true, null, [], {}],
    string: [1, true, null, [], {}],
    boolean: ['true', 1, null],
    array: [{}, 'x', 1, null],
    object: [[], 'x', 1, null],
  };
  for (const value of wrong[type ?? ''] ?? []) out.push({ why: `wrong type ${JSON.stringify(value)}`, value });
  if (type === 'integer') {
    if (s.minimum !== undefined) out.push({ why: `below minimum ${s.minimum}`, value: s.minimum - 1 });
    if (s.maximum !== undefined) out.push({ why: `above maximum ${s.maximum}`, value: s.maximum + 1 });
    if (s.enum !== undefined) out.push({ why: 'not in enum', value: 3 });
    out.push({ why: 'not finite (1e400 parses as Infinity)', value: { raw: '1e400' } });
  }
  if (type === 'string') {
    if (s.enum !== undefined) out.push({ why: 'not in enum', value: 'C' }, { why: 'enum, wrong case', value: String(s.enum[0]).toLowerCase() === s.enum[0] ? String(s.enum[0]).toUpperCase() : String(s.enum[0]).toLowerCase() });
    if (s.pattern !== undefined) out.push({ why: 'empty string', value: '' }, { why: 'pattern mismatch', value: 'not valid!' }, { why: 'too long', value: 'a'.repeat(300) });
  }
  if (type === 'array' && s.items !== undefined) {
    if (s.maxItems !== undefined) {
      // Each item valid on its own (distinct segments or addresses): only the count is wrong.
      const item = (i: number) => (s.items?.properties?.segment ? { segment: i } : { bdf: `0000:${(i >> 8).toString(16).padStart(2, '0')}:${((i >> 3) & 31).toString(16).padStart(2, '0')}.${i & 7}` });
      out.push({ why: `more than ${s.maxItems} items`, value: Array.from({ length: s.maxItems + 1 }, (_, i) => item(i)) });
    }
    for (const bad of invalidValues(s.items).slice(0, 4)) out.push({ why: `item: ${bad.why}`, value: [bad.value] });
    if (s.items.required) for (const r of s.items.required) out.push({ why: `item without ${r}`, value: [{}] });
    if (s.items.additionalProperties === false) out.push({ why: 'item with an unknown field', value: [{ ...(s.items.properties?.segment ? { segment: 3 } : { bdf: '0000:00:0a.0' }), evil: 1 }] });
  }
  return out;
}

/** JSON text of a body whose `field` is `value` (`{ raw }` is spliced in verbatim). */
function bodyText(base: Record<string, unknown>, field: string, value: unknown): string {
  const marker = '"__RAW__"';
  if (typeof value === 'object' && value !== null && 'raw' in value && Object.keys(value).length === 1) {
    return JSON.stringify({ ...base, [field]: '__RAW__' }).replace(marker, String((value as { raw: string }).raw));
  }
  return JSON.stringify({ ...base, [field]: value });
}

function generate(tokens: Record<string, string>): BadRequest[] {
  const out: BadRequest[] = [];
  const vm1 = tokens.vm1 as string;
  const vm2 = tokens.vm2 as string;
  const own = (auth: string) => (auth === 'admin' ? ADMIN : vm1);

  for (const r of ROUTES) {
    if (r.auth === 'none') continue;
    const url = path(r.url, {});
    const base = VALID_BODY[r.operationId];
    const payload = base !== undefined ? JSON.stringify(base) : undefined;
    const withBody = (x: Omit<BadRequest, 'method' | 'url'> & { url?: string }): BadRequest => ({ method: r.method, url, ...(payload !== undefined ? { payload } : {}), ...x });

    // Authentication: none, unknown, malformed, and the wrong party's.
    out.push(withBody({ why: `${r.operationId}: no token`, token: null }));
    out.push(withBody({ why: `${r.operationId}: unknown token`, token: BAD_TOKEN }));
    out.push(withBody({ why: `${r.operationId}: Basic instead of Bearer`, token: null, headers: { authorization: `Basic ${Buffer.from(`admin:${ADMIN}`).toString('base64')}` } }));
    out.push(withBody({ why: `${r.operationId}: empty Bearer`, token: null, headers: { authorization: 'Bearer ' } }));
    out.push(withBody({ why: `${r.operationId}: admin token with a suffix`, token: `${ADMIN}x` }));
    if (r.auth === 'admin') out.push(withBody({ why: `${r.operationId}: a VM token on an admin route`, token: vm1 }));
    if (r.auth === 'vm') out.push(withBody({ why: `${r.operationId}: another VM's token`, token: vm2 }));

    // Path parameters: malformed, and well-formed but unknown.
    const params = [...r.url.matchAll(/:([a-z]+)/g)].map((m) => m[1] as string);
    const malformed: Record<string, string[]> = {
      vm: ['bad id!', '-leading-dash', 'x'.repeat(64), '.'],
      pasid: ['abc', '-1', '1.5', '0x2', '12345678'],
      segment: ['abc', '-1', '123456', '0x0'],
      bdf: ['zz', '0000:00:02', '0000:00:02.8', '00:02.0'],
    };
    const unknown: Record<string, string> = { vm: 'nope', pasid: '999', segment: '9', bdf: '0000:00:1f.7' };
    for (const p of params) {
      for (const v of malformed[p] ?? []) out.push(withBody({ why: `${r.operationId}: malformed :${p} ${JSON.stringify(v)}`, url: path(r.url, { [p]: v }), token: ADMIN }));
      const u = unknown[p];
      if (u !== undefined) out.push(withBody({ why: `${r.operationId}: unknown :${p} ${u}`, url: path(r.url, { [p]: u }), token: p === 'vm' ? ADMIN : own(r.auth) }));
      if (p === 'pasid' && params.includes('vm')) {
        out.push(withBody({ why: `${r.operationId}: another VM's PASID, own token`, url: path(r.url, { pasid: '4' }), token: vm1 }));
        out.push(withBody({ why: `${r.operationId}: another VM's PASID, admin token`, url: path(r.url, { pasid: '5' }), token: ADMIN }));
      }
      if (p === 'pasid') {
        out.push(withBody({ why: `${r.operationId}: PASID 0`, url: path(r.url, { pasid: '0' }), token: own(r.auth) }));
        out.push(withBody({ why: `${r.operationId}: PASID above 0xfffff`, url: path(r.url, { pasid: '1048576' }), token: own(r.auth) }));
      }
    }

    // Bodies: every field broken in every way its schema allows, then the body as a whole.
    const bodySchema = r.schema.body as Schema | undefined;
    if (bodySchema !== undefined && base !== undefined) {
      const send = (why: string, text: string, headers?: Record<string, string>): void => {
        out.push({ why: `${r.operationId}: ${why}`, method: r.method, url, token: own(r.auth), payload: text, ...(headers ? { headers } : {}) });
      };
      for (const [field, fs] of Object.entries(bodySchema.properties ?? {})) {
        for (const bad of invalidValues(fs)) send(`${field} ${bad.why}`, bodyText(base, field, bad.value));
      }
      for (const req of bodySchema.required ?? []) {
        const { [req]: _, ...rest } = base;
        send(`missing required ${req}`, JSON.stringify(rest));
      }
      send('unknown field', JSON.stringify({ ...base, evil: true }));
      send('unknown field only', JSON.stringify({ nope: 1 }));
      send('field name differs in case', JSON.stringify(Object.fromEntries(Object.entries(base).map(([k, v]) => [k.toUpperCase(), v]))));
      for (const text of ['{', '{"count":', "{'count':1}", '{"count":1,}', 'nul', '[1,', '{"a":1}}', '\u0000', '{"__proto__":{"admin":true}}', '{"constructor":{"prototype":{"x":1}}}']) {
        send(`malformed JSON ${JSON.stringify(text)}`, text);
      }
      for (const text of ['[]', '1', '"string"', 'null', 'true', `[${payload}]`]) send(`body is ${text.slice(0, 20)}`, text);
      send('oversized body (70 KB)', JSON.stringify({ ...base, pad: 'x'.repeat(70_000) }));
      send('text/plain body', payload as string, { 'content-type': 'text/plain' });
      send('form-encoded body', 'count=1', { 'content-type': 'application/x-www-form-urlencoded' });
      send('empty JSON body', '', { 'content-type': 'application/json' });
      send('duplicate key, last one wrong', `${(payload as string).slice(0, -1)},${JSON.stringify(Object.keys(base)[0])}:{}}`);
    }
  }

  // Query strings.
  for (const q of ['limit=abc', 'limit=-1', 'limit=123456', 'limit=1.5', 'foo=1', 'limit=1&limit=2', 'limit=']) {
    out.push({ why: `recentEvents: ?${q}`, method: 'GET', url: `/v1/events/recent?${q}`, token: ADMIN });
  }

  // What only the handlers can refuse: the request is well-formed but the state says no.
  const t = ADMIN;
  const sem = (why: string, method: Method, url: string, body?: unknown, token: string = t): BadRequest => ({ why, method, url, token, ...(body !== undefined ? { payload: JSON.stringify(body) } : {}) });
  out.push(
    sem('createVm: the id exists', 'POST', '/v1/vms', { id: 'vm1' }),
    sem('createVm: a device with no vIOMMU on its segment', 'POST', '/v1/vms', { id: 'vm9', viommus: [{ segment: 0 }], devices: [{ bdf: '0002:00:02.0' }] }),
    sem('createVm: two vIOMMUs on one segment', 'POST', '/v1/vms', { id: 'vm9', viommus: [{ segment: 0 }, { segment: 0 }] }),
    sem('createVm: one device twice', 'POST', '/v1/vms', { id: 'vm9', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }, { bdf: '0000:00:02.0' }] }),
    sem('createVm: the same device, differently cased', 'POST', '/v1/vms', { id: 'vm9', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:0A.0' }, { bdf: '0000:00:0a.0' }] }),
    sem('createVm: range extension on layout A', 'POST', '/v1/vms', { id: 'vm9', viommus: [{ segment: 0, layout: 'A', rangeExtension: true }] }),
    sem('addViommu: segment taken', 'POST', '/v1/vms/vm1/viommus', { segment: 0 }),
    sem('addViommu: range extension on layout A', 'POST', '/v1/vms/vm1/viommus', { segment: 5, layout: 'A', rangeExtension: true }),
    sem('removeViommu: a device sits behind it', 'DELETE', '/v1/vms/vm1/viommus/1'),
    sem('addDevice: already assigned', 'POST', '/v1/vms/vm1/devices', { bdf: '0000:00:02.0' }),
    sem('addDevice: no vIOMMU on its segment', 'POST', '/v1/vms/vm1/devices', { bdf: '0005:00:02.0' }),
    sem('removeDevice: another VM\'s device', 'DELETE', `/v1/vms/vm1/devices/${encodeURIComponent('0000:00:04.0')}`),
    sem('allocPasids: min > max', 'POST', '/v1/vms/vm1/pasids', { min: 10, max: 5 }, tokens.vm1),
    sem('allocPasids: over quota (batch all or nothing)', 'POST', '/v1/vms/vm1/pasids', { count: 2 }, tokens.vm1),
    sem('allocPasids: over quota, admin token', 'POST', '/v1/vms/vm1/pasids', { count: 1024 }),
    sem('allocPasids: range fully taken', 'POST', '/v1/vms/vm1/pasids', { min: 1, max: 5 }, tokens.vm1),
    sem('freePasid: still bound', 'DELETE', '/v1/vms/vm1/pasids/1', undefined, tokens.vm1),
    sem('freePasid: the host range', 'DELETE', '/v1/vms/vm1/pasids/1048575', undefined, tokens.vm1),
    sem('bind: already bound', 'POST', '/v1/vms/vm1/pasids/1/bindings', { bdf: '0000:00:02.0' }, tokens.vm1),
    sem('bind: PASID beyond the device\'s width (10 bits)', 'POST', '/v1/vms/vm1/pasids/2000/bindings', { bdf: '0000:00:02.0' }, tokens.vm1),
    sem('bind: another VM\'s device', 'POST', '/v1/vms/vm1/pasids/2/bindings', { bdf: '0000:00:04.0' }, tokens.vm1),
    sem('bind: unknown device', 'POST', '/v1/vms/vm1/pasids/2/bindings', { bdf: '0000:00:1f.0' }, tokens.vm1),
    sem('bind: another VM\'s PASID', 'POST', '/v1/vms/vm1/pasids/5/bindings', { bdf: '0000:00:02.0' }, tokens.vm1),
    sem('unbind: not bound', 'DELETE', `/v1/vms/vm1/pasids/2/bindings/${encodeURIComponent('0000:00:02.0')}`, undefined, tokens.vm1),
    sem('unbind: bound to another PASID', 'DELETE', `/v1/vms/vm1/pasids/3/bindings/${encodeURIComponent('0000:00:02.0')}`, undefined, tokens.vm1),
    sem('unbind: another VM\'s binding', 'DELETE', `/v1/vms/vm1/pasids/4/bindings/${encodeURIComponent('0000:00:04.0')}`, undefined, tokens.vm1),
    sem('mmio: write without value', 'POST', '/v1/vms/vm1/viommus/0/mmio', { op: 'write', offset: 0xe00, size: 8 }, tokens.vm1),
    sem('mmio: read with a value', 'POST', '/v1/vms/vm1/viommus/0/mmio', { op: 'read', offset: 0xe00, size: 8, value: '0x1' }, tokens.vm1),
    sem('mmio: unknown segment', 'POST', '/v1/vms/vm1/viommus/9/mmio', { op: 'read', offset: 0, size: 8 }, tokens.vm1),
    sem('getPasid: never allocated, no history', 'GET', '/v1/pasids/77777'),
    sem('unknown route', 'GET', '/v1/nope'),
    sem('unknown route under a VM', 'GET', '/v1/vms/vm1/nope', undefined, tokens.vm1),
    sem('PUT on a known path', 'PUT', '/v1/vms/vm1', { id: 'vm1' }),
    sem('PATCH on a known path', 'PATCH', '/v1/vms', { id: 'vm9' }),
    sem('DELETE the collection', 'DELETE', '/v1/vms'),
  );

  // Randomised: bodies that are objects with at least one key no schema has (fast-check).
  const post = ROUTES.filter((r) => r.method === 'POST' && VALID_BODY[r.operationId] !== undefined);
  const extra = fc.dictionary(fc.string({ minLength: 1, maxLength: 8 }).filter((k) => k !== '__proto__'), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4 });
  fc.sample(fc.tuple(fc.constantFrom(...post), extra, fc.jsonValue({ maxDepth: 2 })), { numRuns: 40, seed: 7 }).forEach(([r, rest, v], i) => {
    out.push({ why: `${r.operationId}: random body #${i} with an unknown key`, method: r.method, url: path(r.url, {}), token: r.auth === 'admin' ? ADMIN : vm1, payload: JSON.stringify({ ...VALID_BODY[r.operationId], ...rest, ['zz-unknown']: v }) });
  });
  // Randomised: VM ids that break the id pattern, on every VM route.
  const vmRoutes = ROUTES.filter((r) => r.url.includes(':vm'));
  const badId = fc.string({ minLength: 1, maxLength: 80 }).filter((s) => !/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(s) && s !== '.' && s !== '..');
  fc.sample(fc.tuple(fc.constantFrom(...vmRoutes), badId), { numRuns: 30, seed: 11 }).forEach(([r, id], i) => {
    const base = VALID_BODY[r.operationId];
    out.push({ why: `${r.operationId}: random bad VM id #${i} ${JSON.stringify(id)}`, method: r.method, url: path(r.url, { vm: id }), token: ADMIN, ...(base !== undefined ? { payload: JSON.stringify(base) } : {}) });
  });
  return out;
}



// ------------------------------------------------------------------ the test

describe('service: 200+ generated bad requests are refused and change nothing', () => {
  let f: Fixture;
  before(async () => {
    f = await fixture();
  });
  after(() => f.app.close());


  it('each gets a 4xx problem+json errno error (401s with a Bearer challenge) and leaves the whole state as it was', async () => {
    const requests = generate(f.tokens);
    assert.ok(requests.length >= 200, `only ${requests.length} bad requests generated`);
    const allProblems: string[] = [];
    const before0 = state(f);
    for (const r of requests) {
      const problems = allProblems;
      const snapshotBefore = state(f);
      const headers: Record<string, string> = {
        ...(r.payload !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(r.token !== null ? { authorization: `Bearer ${r.token}` } : {}),
        ...r.headers,
      };
      const res = await f.app.inject({ method: r.method, url: r.url, headers, ...(r.payload !== undefined ? { payload: r.payload } : {}) });
      // Let anything the request set off (a VCMD command, a commit) run before looking.
      await new Promise((resolve) => setImmediate(resolve));
      const where = `${r.why}\n    ${r.method} ${r.url}${r.payload !== undefined ? ` body=${JSON.stringify(r.payload.slice(0, 120))}` : ''}${r.headers ? ` headers=${JSON.stringify(r.headers)}` : ''}\n    -> ${res.statusCode} ${res.headers['content-type'] ?? ''} ${res.body.slice(0, 200)}`;
      let body: { code?: unknown; errno?: unknown; message?: unknown; type?: unknown; title?: unknown; status?: unknown; detail?: unknown } | undefined;
      try {
        body = JSON.parse(res.body) as typeof body;
      } catch {
        body = undefined;
      }
      if (res.statusCode < 400 || res.statusCode > 499) problems.push(`status not 4xx: ${where}`);
      else if (String(res.headers['content-type'] ?? '').split(';')[0] !== 'application/problem+json' || body === undefined) problems.push(`not an RFC 9457 problem+json error: ${where}`);
      else if (!isIoasidErrorCode(body.code)) problems.push(`code not an errno name: ${where}`);
      else if (body.errno !== -ERRNO[body.code]) problems.push(`errno does not match the code: ${where}`);
      else if (HTTP_STATUS[body.code] !== res.statusCode) problems.push(`status is not the code's (${HTTP_STATUS[body.code]}): ${where}`);
      else if (typeof body.message !== 'string' || body.message.length === 0) problems.push(`no message: ${where}`);
      else if (body.status !== res.statusCode || body.type !== `urn:ioasid:error:${body.code}` || typeof body.title !== 'string' || body.detail !== body.message) problems.push(`problem members (type, title, status, detail) do not match: ${where}`);
      else if (res.statusCode === 401 && !/^Bearer realm="ioasid"/.test(String(res.headers['www-authenticate'] ?? ''))) problems.push(`401 without WWW-Authenticate: Bearer: ${where}`);
      const after1 = state(f) as Record<string, unknown>;
      const before1 = snapshotBefore as Record<string, unknown>;
      for (const k of Object.keys(before1)) {
        try {
          assert.deepEqual(after1[k], before1[k]);
        } catch {
          problems.push(`${k.toUpperCase()} CHANGED: ${where}`);
        }
      }
    }
    assert.deepEqual(allProblems, [], `${allProblems.length} of ${requests.length} bad requests misbehaved:\n${allProblems.join('\n')}`);
    const durable = (x: unknown) => ({ ...(x as Record<string, unknown>), events: undefined });
    assert.deepEqual(durable(state(f)), durable(before0));
    assert.deepEqual(state(f), before0);
    // Every API route was exercised.
    const apiRoutes = ROUTES.filter((r) => r.auth !== 'none');
    assert.ok(apiRoutes.every((r) => requests.some((q) => q.method === r.method && new RegExp(`^${r.url.replace(/:[a-z]+/g, '[^/]+')}(\\?|$)`).test(q.url))));
    // Reported to whoever runs the suite.
    process.stdout.write(`# ${requests.length} bad requests across ${apiRoutes.length} API routes, all refused, state unchanged after each\n`);
  });

  it('the valid requests the bad bodies were mutated from are accepted (the refusals were the mutations)', async () => {
    const ok = async (method: 'POST' | 'DELETE', url: string, body: unknown, token: string) => {
      const res = await f.app.inject({ method, url, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, payload: JSON.stringify(body) });
      assert.ok(res.statusCode >= 200 && res.statusCode < 300, `${method} ${url} ${JSON.stringify(body)} -> ${res.statusCode} ${res.body}`);
    };
    await ok('POST', '/v1/vms/vm1/viommus/0/mmio', VALID_BODY.mmio, f.tokens.vm1 as string);
    await ok('POST', '/v1/vms/vm1/pasids/2/bindings', VALID_BODY.bind, f.tokens.vm1 as string);
    await ok('POST', '/v1/vms/vm1/pasids', VALID_BODY.allocPasids, f.tokens.vm1 as string);
    await ok('POST', '/v1/vms/vm1/devices', VALID_BODY.addDevice, ADMIN);
    await ok('POST', '/v1/vms/vm1/viommus', VALID_BODY.addViommu, ADMIN);
    await ok('POST', '/v1/vms', VALID_BODY.createVm, ADMIN);
  });
});
