/**
 * Issue 13, item 7: every answer the HTTP framework gives on its own carries the documented error
 * body, an RFC 9457 problem with `code` and `errno`: a path parameter over 100 characters (was 414
 * FST_ERR_MAX_PARAM_LENGTH), a URL that is not valid percent-encoding (was FST_ERR_BAD_URL), unknown
 * routes, wrong methods, unsupported media types, bodies too large, malformed JSON, an unsupported
 * `Expect`, a malformed HTTP request, oversized headers, a request that does not arrive in time,
 * and requests that arrive while the service stops. docs/error-codes.md lists every HTTP status the
 * service can answer, no more.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  ERRNO, HTTP_STATUS, OPERATIONS, PROBLEM_MEDIA_TYPE, TRANSPORT_STATUS, buildOpenApi, isIoasidErrorCode,
} from '../src/api/index.ts';
import { buildApp, hashToken, PasidAuthority, type ServiceApp } from '../src/service/index.ts';
import { MemoryStore } from '../src/store/index.ts';
import { forever, parseResponse, rawClient } from './helpers/raw-http.ts';

const ADMIN = 'errors-admin-token-0123456789abcdef';
const auth = { authorization: `Bearer ${ADMIN}` };

/** Statuses this file saw, to check them against docs/error-codes.md. */
const seen = new Set<number>();

/** `raw` is an RFC 9457 problem of `code` with `status`, as docs/error-codes.md describes it. */
function assertProblem(r: { status: number; headers: Record<string, string | string[] | undefined>; body: unknown }, status: number, code: string, what: string): Record<string, unknown> {
  seen.add(r.status);
  const b = r.body as Record<string, unknown> | null;
  assert.equal(r.status, status, `${what}: ${JSON.stringify(b)}`);
  assert.equal(String(r.headers['content-type'] ?? '').split(';')[0], PROBLEM_MEDIA_TYPE, what);
  assert.ok(b !== null && typeof b === 'object', `${what}: a JSON body`);
  assert.ok(isIoasidErrorCode(b['code']), `${what}: code ${String(b['code'])}`);
  assert.equal(b['code'], code, what);
  assert.equal(b['errno'], -ERRNO[code as keyof typeof ERRNO], `${what}: errno`);
  assert.equal(b['status'], status, `${what}: status member`);
  assert.equal(b['type'], `urn:ioasid:error:${code}`, what);
  assert.equal(typeof b['title'], 'string', what);
  assert.equal(b['detail'], b['message'], what);
  assert.ok(typeof b['message'] === 'string' && b['message'].length > 0, what);
  for (const k of Object.keys(b)) assert.ok(!/FST_ERR/.test(String(b[k])), `${what}: no framework error name in ${k}`);
  return b;
}

describe('security: the framework\'s own answers are problems', () => {
  let app: ServiceApp;
  let port = 0;
  before(async () => {
    const authority = await PasidAuthority.open({ store: new MemoryStore() });
    await authority.setAdminTokenHash(hashToken(ADMIN));
    await authority.createVm({ id: 'vm1' });
    app = await buildApp({ authority, limits: { headersTimeoutMs: 300, requestTimeoutMs: 600, shutdownGraceMs: 500 } });
    port = Number(new URL(await app.listen({ host: '127.0.0.1', port: 0 })).port);
  });
  after(() => app.close());

  const inject = async (o: { method?: string; url: string; headers?: Record<string, string>; payload?: string }) => {
    const r = await app.inject({ method: (o.method ?? 'GET') as 'GET', url: o.url, headers: o.headers ?? {}, ...(o.payload !== undefined ? { payload: o.payload } : {}) });
    let body: unknown = null;
    try {
      body = JSON.parse(r.body);
    } catch {
      body = null;
    }
    return { status: r.statusCode, headers: r.headers as Record<string, string | undefined>, body };
  };

  it('a path parameter over 100 characters: 400 EINVAL (was 414 FST_ERR_MAX_PARAM_LENGTH without errno), with or without a token', async () => {
    for (const headers of [auth, {}]) {
      const b = assertProblem(await inject({ url: `/v1/vms/${'a'.repeat(101)}`, headers }), 400, 'EINVAL', 'long parameter');
      assert.match(String(b['message']), /path parameter is longer than 100 characters/);
    }
    assertProblem(await inject({ method: 'DELETE', url: `/v1/vms/vm1/pasids/${'9'.repeat(150)}`, headers: auth }), 400, 'EINVAL', 'long PASID');
  });

  it('a URL that is not valid percent-encoding: 400 EINVAL (was FST_ERR_BAD_URL)', async () => {
    for (const url of ['/v1/vms/%ZZ', '/v1/vms/vm1/pasids/%E0%A4%A', '/v1/nope/%']) {
      const b = assertProblem(await inject({ url, headers: auth }), 400, 'EINVAL', url);
      assert.match(String(b['message']), /not valid percent-encoding/);
    }
  });

  it('unknown routes: 404 ENOENT; a wrong method: 404 ENOENT naming the methods the path has', async () => {
    assertProblem(await inject({ url: '/v1/nope', headers: auth }), 404, 'ENOENT', 'unknown route');
    assertProblem(await inject({ url: '/v1/nope' }), 404, 'ENOENT', 'unknown route, no token');
    const put = assertProblem(await inject({ method: 'PUT', url: '/v1/vms', headers: auth }), 404, 'ENOENT', 'PUT /v1/vms');
    assert.deepEqual((put['details'] as Record<string, unknown>)['allowed'], ['POST', 'GET']);
    assert.match(String(put['message']), /no route PUT \/v1\/vms \(it answers POST, GET\)/);
    const patch = assertProblem(await inject({ method: 'PATCH', url: '/v1/vms/vm1/pasids/3' }), 404, 'ENOENT', 'PATCH a PASID');
    assert.deepEqual((patch['details'] as Record<string, unknown>)['allowed'], ['GET', 'DELETE']);
    assertProblem(await inject({ method: 'OPTIONS', url: '/v1/vms' }), 404, 'ENOENT', 'OPTIONS');
  });

  it('unsupported media types: 400 EINVAL naming the type; a body too large: 413 EFBIG; malformed or empty JSON: 400 EINVAL', async () => {
    for (const type of ['text/plain', 'application/xml', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x']) {
      const b = assertProblem(await inject({ method: 'POST', url: '/v1/vms', headers: { ...auth, 'content-type': type }, payload: 'id=vm2' }), 400, 'EINVAL', type);
      assert.match(String(b['message']), /is not accepted: send application\/json/);
    }
    assertProblem(await inject({ method: 'POST', url: '/v1/vms', headers: { ...auth, 'content-type': 'application/json' }, payload: JSON.stringify({ id: 'vm2', pad: 'x'.repeat(70_000) }) }), 413, 'EFBIG', 'too large');
    assertProblem(await inject({ method: 'POST', url: '/v1/vms', headers: { ...auth, 'content-type': 'application/json' }, payload: '{"id":' }), 400, 'EINVAL', 'malformed JSON');
    assertProblem(await inject({ method: 'POST', url: '/v1/vms', headers: { ...auth, 'content-type': 'application/json' }, payload: '' }), 400, 'EINVAL', 'empty JSON');
    assertProblem(await inject({ method: 'POST', url: '/v1/vms', headers: { ...auth, 'content-type': 'application/json' }, payload: '{"__proto__":{"x":1}}' }), 400, 'EINVAL', 'prototype poisoning');
  });

  it('the connection\'s own answers: a malformed request 400, oversized headers 431, an unsupported Expect 400, a late request 408, all problems', async () => {
    const raw = async (text: string, trickle?: string) => {
      const c = await rawClient(port);
      c.write(text);
      const stop = trickle !== undefined ? c.trickle(forever(trickle), 50) : () => {};
      await Promise.race([c.closed, new Promise((r) => setTimeout(r, 3000))]);
      stop();
      c.socket.destroy();
      const r = parseResponse(c.received());
      return { status: r.status, headers: r.headers, body: r.body };
    };
    assertProblem(await raw('GET /healthz HTTP/1.1\r\nHost: x\r\nNot A Header\r\n\r\n'), 400, 'EINVAL', 'malformed header line');
    assertProblem(await raw('BREW /coffee HTCPCP/1.0\r\n\r\n'), 400, 'EINVAL', 'not HTTP');
    assertProblem(await raw(`GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ${'y'.repeat(20_000)}\r\n\r\n`), TRANSPORT_STATUS.headersTooLarge, 'EFBIG', 'oversized headers');
    assertProblem(await raw('POST /v1/vms HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n{}'), 400, 'EINVAL', 'Expect');
    assertProblem(await raw('GET /healthz HTTP/1.1\r\nHost: x\r\n', 'X-Pad: y\r\n'), TRANSPORT_STATUS.requestTimeout, 'ETIMEDOUT', 'late headers');
  });

  it('a request that arrives while the service stops: 503 ENODEV, a problem (not fastify\'s own body)', async () => {
    const authority = await PasidAuthority.open({ store: new MemoryStore() });
    await authority.setAdminTokenHash(hashToken(ADMIN));
    const a = await buildApp({ authority, limits: { shutdownGraceMs: 2000 } });
    const p = Number(new URL(await a.listen({ host: '127.0.0.1', port: 0 })).port);
    const c = await rawClient(p);
    // A request in flight keeps the connection through the shutdown; a second one is pipelined after it.
    c.write(`POST /v1/vms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN}\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"id"`);
    await new Promise((r) => setTimeout(r, 100));
    const stopped = a.shutdown();
    await new Promise((r) => setTimeout(r, 100));
    c.write(':"v9"}GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    await Promise.race([c.closed, new Promise((r) => setTimeout(r, 3000))]);
    await stopped;
    const text = c.received();
    const second = text.slice(text.indexOf('HTTP/1.1', 10));
    assert.equal(parseResponse(text).status, 201, 'the request in flight finished');
    const r = parseResponse(second);
    const b = assertProblem({ status: r.status, headers: r.headers, body: r.body }, 503, 'ENODEV', 'while stopping');
    assert.match(String(b['message']), /the service is stopping/);
    assert.equal(r.headers['connection'], 'close');
    await authority.close();
  });
});

describe('security: docs/error-codes.md lists every HTTP status the service answers', () => {
  it('exactly those of the OpenAPI document, the code table and the connection, and every one this file saw', () => {
    const md = readFileSync(new URL('../docs/error-codes.md', import.meta.url), 'utf8');
    const section = md.slice(md.indexOf('## Every HTTP status the service answers'));
    const listed = new Set([...section.matchAll(/^\| (\d{3}) \|/gm)].map((m) => Number(m[1])));
    const doc = buildOpenApi() as { paths: Record<string, Record<string, { responses: Record<string, unknown> }>> };
    const answerable = new Set<number>([
      ...Object.values(doc.paths).flatMap((p) => Object.values(p).flatMap((op) => Object.keys(op.responses).map(Number))),
      ...Object.values(HTTP_STATUS),
      ...Object.values(TRANSPORT_STATUS),
      ...Object.values(OPERATIONS).map((o) => o.status),
    ]);
    assert.deepEqual([...listed].sort(), [...answerable].sort(), 'the table and what the service can answer');
    for (const s of seen) assert.ok(listed.has(s), `status ${s} seen in this file is listed`);
    assert.deepEqual([...seen].sort(), [400, 404, 408, 413, 431, 503], 'the framework\'s statuses this file made the service answer');
  });
});
