/**
 * Issue 13, items 5 and 6: where a token may travel, and that it never reaches a log.
 *  - The Bearer scheme is matched case-insensitively (RFC 7235), over HTTP and on the event stream.
 *  - The event stream takes its token in the Authorization header or as the WebSocket subprotocol
 *    `ioasid.bearer.<base64url>` (what the client and the dashboard send); a token in the URL is
 *    refused (4400), however the parameter is spelled or encoded; two different tokens are refused.
 *  - No credential appears in any log line, whatever the request: the service's pino output is
 *    captured at level trace while tokens are sent in the header (any case), the subprotocol, the
 *    query (`token=`, `TOKEN=`, `%74oken=`, `to%6Ben=`, `access_token=`, bare, percent-encoded,
 *    double-encoded), the path, a malformed URL, an over-long parameter, a malformed request and
 *    oversized headers; every line is searched for the token raw, percent-decoded (repeatedly),
 *    and in base64, base64url, hex and as a Buffer's bytes.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import WebSocket from 'ws';
import { buildApp, hashToken, PasidAuthority, redactToken, tokenMatches, type ServiceApp } from '../src/service/index.ts';
import { sameHash } from '../src/service/tokens.ts';
import { EVENT_STREAM, IoasidClient, eventStreamProtocols, type ApiEvent } from '../src/client/index.ts';
import { MemoryStore } from '../src/store/index.ts';
import { parseResponse, rawClient } from './helpers/raw-http.ts';

const sha256 = (t: string) => createHash('sha256').update(t, 'utf8').digest('hex');

// Characters that URL, base64 and JSON encodings all treat differently, around a random core.
const CORE = randomBytes(12).toString('hex');
const ADMIN = `Adm+in/Tok=en~"${CORE}`;

interface Ctx {
  app: ServiceApp;
  authority: PasidAuthority;
  url: string;
  port: number;
  vmToken: string;
  lines: string[];
}

async function start(): Promise<Ctx> {
  const lines: string[] = [];
  const authority = await PasidAuthority.open({ store: new MemoryStore() });
  await authority.setAdminTokenHash(hashToken(ADMIN));
  const { token: vmToken } = await authority.createVm({ id: 'vm1' });
  const app = await buildApp({
    authority,
    logger: { level: 'trace', stream: { write: (l: string) => void lines.push(l) } },
    limits: { headersTimeoutMs: 2000, requestTimeoutMs: 2000, shutdownGraceMs: 500 },
  });
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  return { app, authority, url, port: Number(new URL(url).port), vmToken, lines };
}

/** Open a stream; resolves with how it was closed (or 'open' once it is open, with the socket). */
function stream(url: string, opts: { query?: string; protocols?: string[]; headers?: Record<string, string> }): Promise<{ ws: WebSocket; outcome: 'open' | { code: number; reason: string } }> {
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}${EVENT_STREAM.path}${opts.query ?? ''}`, opts.protocols ?? [], { headers: opts.headers ?? {} });
  return new Promise((resolve, reject) => {
    // A refused stream is opened, then closed at once: wait a moment to see which it is.
    ws.once('open', () => setTimeout(() => resolve({ ws, outcome: ws.readyState === WebSocket.OPEN ? 'open' : { code: -1, reason: 'closing' } }), 100));
    ws.once('close', (code, reason) => resolve({ ws, outcome: { code, reason: reason.toString() } }));
    ws.once('error', reject);
  });
}

describe('security: token hashes', () => {
  it('a token matches its SHA-256 only; hashes compare equal only when every digit is', () => {
    const h = hashToken(ADMIN);
    assert.match(h, /^[0-9a-f]{64}$/);
    assert.equal(h, sha256(ADMIN), 'the SHA-256 of the UTF-8 bytes, in hex');
    assert.ok(tokenMatches(ADMIN, h));
    assert.ok(!tokenMatches(`${ADMIN} `, h));
    assert.ok(!tokenMatches(ADMIN.toLowerCase(), h));
    assert.ok(sameHash(h, `${h}`));
    for (const i of [0, 1, 31, 62, 63]) {
      const other = h.slice(0, i) + (h[i] === '0' ? '1' : '0') + h.slice(i + 1);
      assert.ok(!sameHash(h, other), `a difference at digit ${i} is seen`);
    }
    assert.ok(!sameHash(h, h.slice(0, 63)), 'a shorter hash is not equal');
    assert.ok(!sameHash(h, `${h}0`), 'a longer one neither');
  });
});

describe('security: the Bearer scheme (RFC 7235)', () => {
  let c: Ctx;
  before(async () => {
    c = await start();
  });
  after(() => c.app.close());

  it('is matched in any case, with one or more spaces, over HTTP', async () => {
    for (const scheme of ['Bearer', 'bearer', 'BEARER', 'bEaReR']) {
      for (const gap of [' ', '   ']) {
        const r = await c.app.inject({ method: 'GET', url: '/v1/vms', headers: { authorization: `${scheme}${gap}${ADMIN}` } });
        assert.equal(r.statusCode, 200, `${JSON.stringify(scheme + gap)}: ${r.body}`);
      }
    }
    const vm = await c.app.inject({ method: 'GET', url: '/v1/vms/vm1/pasids', headers: { authorization: `bearer ${c.vmToken}` } });
    assert.equal(vm.statusCode, 200);
    for (const bad of [`Basic ${ADMIN}`, `Bearer${ADMIN}`, `Bearer-${ADMIN}`, `Token ${ADMIN}`, ADMIN, 'bearer', 'Bearer ']) {
      const r = await c.app.inject({ method: 'GET', url: '/v1/vms', headers: { authorization: bad } });
      assert.equal(r.statusCode, 401, JSON.stringify(bad));
      assert.equal(r.json().code, 'EPERM');
    }
  });

  it('is matched in any case on the event stream too', async () => {
    const s = await stream(c.url, { headers: { authorization: `bEARER ${ADMIN}` } });
    assert.equal(s.outcome, 'open');
    s.ws.close();
  });
});

describe('security: the event stream\'s token', () => {
  let c: Ctx;
  before(async () => {
    c = await start();
  });
  after(() => c.app.close());

  it('travels as the subprotocol ioasid.bearer.<base64url> beside ioasid.v1, which the service selects (what the client sends)', async () => {
    const protocols = eventStreamProtocols(ADMIN);
    assert.deepEqual(protocols, ['ioasid.v1', `ioasid.bearer.${Buffer.from(ADMIN).toString('base64url')}`]);
    const s = await stream(c.url, { protocols });
    assert.equal(s.outcome, 'open');
    assert.equal(s.ws.protocol, 'ioasid.v1', 'the token is never echoed back as the selected protocol');
    s.ws.close();
    // The typed client, with a VM token, on its own VM.
    const got: ApiEvent[] = [];
    let opened!: () => void;
    const open = new Promise<void>((r) => (opened = r));
    const stop = new IoasidClient({ url: c.url, token: c.vmToken, WebSocket: WebSocket as never }).events((e) => got.push(e), { vm: 'vm1', onOpen: () => opened() });
    await open;
    await c.authority.allocPasids('vm1', { count: 2 });
    for (let i = 0; i < 100 && got.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    stop();
    assert.deepEqual(got.map((e) => e.type), ['alloc']);
  });

  it('travels in the Authorization header (non-browser clients)', async () => {
    const s = await stream(c.url, { headers: { authorization: `Bearer ${c.vmToken}` }, query: '?vm=vm1' });
    assert.equal(s.outcome, 'open');
    s.ws.close();
  });

  it('is refused in the URL (4400), however the parameter is spelled or encoded, even when it is valid', async () => {
    const e = encodeURIComponent(ADMIN);
    for (const q of [`?token=${e}`, `?TOKEN=${e}`, `?%74oken=${e}`, `?%54OKEN=${e}`, `?to%6Ben=${e}`, `?access_token=${e}`, `?${e}`, `?vm=vm1&token=${c.vmToken}`]) {
      const s = await stream(c.url, { query: q });
      assert.notEqual(s.outcome, 'open', q);
      assert.equal((s.outcome as { code: number }).code, 4400, q);
      assert.ok(!(s.outcome as { reason: string }).reason.includes(CORE), 'the reason does not echo it');
    }
  });

  it('is refused (4401) when missing, unknown, another VM\'s scope, malformed, or two different tokens', async () => {
    const cases: [string, Parameters<typeof stream>[1]][] = [
      ['no token', {}],
      ['unknown token', { protocols: eventStreamProtocols('not-a-token-of-this-service') }],
      ['a VM token without vm=', { protocols: eventStreamProtocols(c.vmToken) }],
      ['a VM token on another VM', { protocols: eventStreamProtocols(c.vmToken), query: '?vm=vm2' }],
      ['malformed subprotocol', { protocols: ['ioasid.v1', 'ioasid.bearer.not*base64'] }],
      ['two different tokens', { protocols: eventStreamProtocols(ADMIN), headers: { authorization: `Bearer ${c.vmToken}` } }],
      ['two different subprotocol tokens', { protocols: [...eventStreamProtocols(ADMIN), eventStreamProtocols(c.vmToken)[1] as string] }],
      ['Basic', { headers: { authorization: `Basic ${Buffer.from(`admin:${ADMIN}`).toString('base64')}` } }],
    ];
    for (const [why, o] of cases) {
      const s = await stream(c.url, o);
      assert.deepEqual(s.outcome, { code: 4401, reason: 'a valid token is required' }, why);
    }
    // The same token in both places is one token.
    const same = await stream(c.url, { protocols: eventStreamProtocols(ADMIN), headers: { authorization: `Bearer ${ADMIN}` } });
    assert.equal(same.outcome, 'open');
    same.ws.close();
  });
});

describe('security: no credential in any log line', () => {
  let c: Ctx;
  before(async () => {
    c = await start();
  });
  after(() => c.app.close());

  /** Every form of `secret` a log line could carry it in. */
  function leaks(line: string, secret: string): string | null {
    let decoded = line;
    for (let i = 0; i < 4; i++) decoded = decoded.replace(/%([0-9a-f]{2})/gi, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
    const unescaped = decoded.replace(/\\(["\\/])/g, '$1').replace(/\\u([0-9a-f]{4})/gi, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
    const core = secret === ADMIN ? CORE : secret;
    for (const [form, text] of [['raw', line], ['percent-decoded', decoded], ['JSON-unescaped', unescaped]] as const) {
      if (text.includes(core)) return form;
    }
    const b = Buffer.from(secret);
    // A Buffer, as pino writes one: {"type":"Buffer","data":[65,100,...]}.
    if (line.replace(/\s/g, '').includes(`${[...Buffer.from(core)].join(',')}`)) return 'bytes';
    for (const [form, enc] of [['base64', b.toString('base64')], ['base64url', b.toString('base64url')], ['hex', b.toString('hex')]] as const) {
      if (line.includes(enc) || line.toLowerCase().includes(enc.toLowerCase().slice(0, 24))) return form;
    }
    return null;
  }

  it('whatever the request carries a token in, the captured pino output holds no form of it', async () => {
    const e = encodeURIComponent(ADMIN);
    const everyChar = [...Buffer.from(ADMIN)].map((x) => `%${x.toString(16).padStart(2, '0')}`).join('');
    const queries = [
      `token=${e}`, `TOKEN=${e}`, `%74oken=${e}`, `to%6Ben=${e}`, `access_token=${e}`, `${e}`, `token=${everyChar}`, `token=${everyChar.toUpperCase()}`,
      `token=${encodeURIComponent(e)}`, `x=${e}`, `vm=${c.vmToken}`, `vm=vm1&token=${c.vmToken}`, `token=${c.vmToken}`, `since=${e}`, `limit=${e}`,
    ];
    const requests: { method: string; url: string; headers?: Record<string, string> }[] = [];
    for (const q of queries) {
      requests.push({ method: 'GET', url: `/v1/vms?${q}` }, { method: 'GET', url: `/v1/events/recent?${q}` }, { method: 'GET', url: `/v1/events?${q}` }, { method: 'GET', url: `/nowhere?${q}` });
    }
    for (const scheme of ['Bearer', 'bearer', 'Basic']) requests.push({ method: 'GET', url: '/v1/vms', headers: { authorization: `${scheme} ${ADMIN}` } });
    requests.push(
      { method: 'GET', url: `/v1/vms/${c.vmToken}` },
      { method: 'GET', url: `/v1/vms/${c.vmToken}/pasids`, headers: { authorization: `Bearer ${c.vmToken}` } },
      { method: 'GET', url: `/v1/vms/${e}` },
      { method: 'GET', url: `/v1/vms/${everyChar}/pasids` },
      { method: 'GET', url: `/v1/vms/%ZZ?token=${e}` },
      { method: 'GET', url: `/v1/vms/${'a'.repeat(120)}?token=${e}` },
      { method: 'POST', url: `/v1/vms?token=${e}`, headers: { 'content-type': 'text/plain' } },
      { method: 'GET', url: '/v1/vms', headers: { authorization: `Bearer ${ADMIN}`, 'x-forwarded-for': ADMIN, cookie: `token=${e}` } },
    );
    // Over a real connection, so that the server's own request logging runs.
    for (const r of requests) {
      const res = await fetch(`${c.url}${r.url}`, { method: r.method, headers: r.headers ?? {}, ...(r.method === 'POST' ? { body: 'x' } : {}) });
      await res.arrayBuffer();
    }
    // Event streams: subprotocol, header, query.
    for (const o of [{ protocols: eventStreamProtocols(ADMIN) }, { headers: { authorization: `bearer ${ADMIN}` } }, { query: `?%74oken=${e}` }, { protocols: eventStreamProtocols(c.vmToken), query: '?vm=vm1' }, { protocols: eventStreamProtocols(ADMIN), headers: { authorization: `Bearer ${c.vmToken}` } }]) {
      const s = await stream(c.url, o);
      s.ws.close();
    }
    // What fastify never sees: a malformed request, oversized headers, a request that times out.
    const raw = async (text: string, wait = 3000) => {
      const r = await rawClient(c.port);
      r.write(text);
      await Promise.race([r.closed, new Promise((res) => setTimeout(res, wait))]);
      r.socket.destroy();
      return parseResponse(r.received());
    };
    assert.equal((await raw(`GET /v1/vms?token=${e} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN}\r\nBad Header Line\r\n\r\n`)).status, 400);
    assert.equal((await raw(`GET /v1/vms?token=${e} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN}\r\nX-Pad: ${'y'.repeat(20_000)}\r\n\r\n`)).status, 431);
    assert.equal((await raw(`GET /v1/vms?token=${e} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN}\r\n`)).status, 408);
    await new Promise((r) => setTimeout(r, 100));

    const lines = c.lines;
    // One line per request, when it completes (app.ts, OneLinePerRequest).
    const incoming = lines.filter((l) => l.includes('"request completed"') || l.includes('"request failed"'));
    assert.ok(incoming.length >= requests.length, `${incoming.length} request log lines for ${requests.length} requests: the logger was on`);
    assert.ok(lines.some((l) => l.includes('token=[redacted]')), 'query tokens are logged as redacted');
    assert.ok(lines.some((l) => l.includes('/v1/vms/[redacted]')), 'a token in the path is logged as redacted');
    assert.ok(lines.some((l) => l.includes('"client error"')), 'connection errors are logged');
    const found: string[] = [];
    for (const l of lines) {
      for (const [who, secret] of [['admin', ADMIN], ['vm1', c.vmToken]] as const) {
        const form = leaks(l, secret);
        if (form !== null) found.push(`${who} token (${form}) in: ${l.slice(0, 300)}`);
      }
    }
    assert.deepEqual(found, [], `${found.length} of ${lines.length} log lines leak a token`);
    process.stdout.write(`# ${lines.length} log lines (level trace) from ${requests.length + 8} requests and streams: no token in any form\n`);
  });

  it('redactToken keeps what is safe and readable: the path, since, limit, a VM id', () => {
    assert.equal(redactToken('/v1/events?vm=vm1&since=42'), '/v1/events?vm=vm1&since=42');
    assert.equal(redactToken('/v1/events/recent?limit=5'), '/v1/events/recent?limit=5');
    assert.equal(redactToken('/v1/events?token=s3cret&vm=a'), '/v1/events?token=[redacted]&vm=a');
    assert.equal(redactToken('/v1/events?%74oken=s3cret'), '/v1/events?token=[redacted]');
    assert.equal(redactToken('/v1/events?s3cretvalue'), '/v1/events?[redacted]');
    assert.equal(redactToken('/v1/events?vm=not%20an%20id'), '/v1/events?vm=[redacted]');
    assert.equal(redactToken(`/v1/vms/${c.vmToken}`, (x) => x === c.vmToken), '/v1/vms/[redacted]');
    assert.equal(redactToken(`/v1/events?vm=${c.vmToken}`, (x) => x === c.vmToken), '/v1/events?vm=[redacted]');
  });
});
