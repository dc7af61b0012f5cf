/**
 * Issue 13, item 3: unauthenticated slow clients cannot hold the service. Real slow clients on
 * loopback (raw TCP, test/helpers/raw-http.ts) against a real server:
 *  - the request line and headers must arrive within the headers timeout, the whole request within
 *    the request timeout: a client that trickles either is answered 408 (a problem, ETIMEDOUT) and
 *    cut;
 *  - the token is checked before the body is read: a request without one is answered 401 at once
 *    and its connection closed, however slowly its body comes;
 *  - a kept-alive connection without a request is closed after the idle timeout;
 *  - the connection cap turns away one connection more, and the service serves again as soon as
 *    connections go;
 *  - `ioasid serve` stops on SIGTERM within its grace period whatever its clients do (a body that
 *    never ends, a WebSocket that never answers the close, headers that never end).
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, type ConnectionLimits, type RunningServer } from '../src/service/index.ts';
import { forever, parseResponse, rawClient } from './helpers/raw-http.ts';
import { runCli } from './helpers/serve-process.ts';

const ADMIN = 'limits-admin-token-0123456789abcdef';
const dir = mkdtempSync(join(tmpdir(), 'ioasid-limits-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const tokenFile = join(dir, 'admin.token');
writeFileSync(tokenFile, `${ADMIN}\n`, { mode: 0o600 });

function serve(limits: ConnectionLimits): Promise<RunningServer> {
  return startServer({ store: 'memory', host: '127.0.0.1', port: 0, adminTokenFile: tokenFile, stateDir: dir, logLevel: 'silent', dashboard: false, say: () => {}, limits: { shutdownGraceMs: 300, ...limits } });
}

/** Run `fn` against a server with these limits; the server is closed (its clients cut) whatever happens. */
async function withServer(limits: ConnectionLimits, fn: (s: RunningServer, port: number) => Promise<void>): Promise<void> {
  const s = await serve(limits);
  try {
    await fn(s, Number(new URL(s.url).port));
  } finally {
    await s.close();
  }
}

/** GET /healthz on a fresh connection: status and milliseconds taken. */
function healthz(port: number): Promise<{ status: number; ms: number }> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/healthz', agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: Date.now() - t0 }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** /metrics as the admin scrapes it. */
async function scrape(s: RunningServer): Promise<string> {
  return (await s.app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${ADMIN}` } })).body;
}

const within = (ms: number, p: Promise<number>) => Promise.race([p, new Promise<number>((r) => setTimeout(() => r(-1), ms))]);

function assertTimeoutProblem(raw: string, what: string): void {
  const r = parseResponse(raw);
  assert.equal(r.status, 408, `${what}: ${raw.slice(0, 300)}`);
  assert.equal(r.headers['content-type'], 'application/problem+json', what);
  assert.equal(r.body?.['code'], 'ETIMEDOUT', what);
  assert.equal(r.body?.['errno'], -110, what);
  assert.equal(r.body?.['status'], 408, what);
}

describe('security: timeouts', () => {
  it('headers that never end, and a connection that never sends a byte, are answered 408 ETIMEDOUT and cut at the headers timeout', async () => {
    await withServer({ headersTimeoutMs: 300, requestTimeoutMs: 5000 }, async (s, port) => {
            const silent = await rawClient(port);
      const slow = await rawClient(port);
      slow.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
      const stop = slow.trickle(forever('X-Pad: y\r\n'), 40);
      const [a, b] = await Promise.all([within(3000, silent.closed), within(3000, slow.closed)]);
      stop();
      for (const [t, c, what] of [[a, silent, 'silent'], [b, slow, 'slow headers']] as const) {
        assert.ok(t >= 250 && t < 1500, `${what} cut after ${t} ms (headers timeout 300 ms)`);
        assertTimeoutProblem(c.received(), what);
      }
      assert.equal(s.app.connectionStats().timedOut, 2);
      assert.match(await scrape(s), /^ioasid_http_requests_timed_out_total 2$/m, 'an operator sees them in /metrics');
    });
  });

  it('without a token, a request is answered 401 before its body is read, and its connection closed while the body still trickles', async () => {
    await withServer({ headersTimeoutMs: 5000, requestTimeoutMs: 10_000 }, async (s, port) => {
      const c = await rawClient(port);
      c.write('POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{');
      const stop = c.trickle(forever(' '), 20);
      const t = await within(3000, c.closed);
      stop();
      assert.ok(t >= 0 && t < 1000, `closed after ${t} ms, long before the 10 s request timeout`);
      const r = parseResponse(c.received());
      assert.equal(r.status, 401);
      assert.equal(r.body?.['code'], 'EPERM');
      assert.equal(r.headers['connection'], 'close');
      assert.match(r.headers['www-authenticate'] ?? '', /^Bearer realm="ioasid"$/);
      assert.deepEqual(s.authority.listVms(), [], 'nothing was created');
    });
  });

  it('with a valid token, a body that does not arrive within the request timeout is answered 408 and changes nothing', async () => {
    await withServer({ headersTimeoutMs: 200, requestTimeoutMs: 600 }, async (s, port) => {
      const c = await rawClient(port);
      c.write(`POST /v1/vms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"id":"vm1"`);
      const stop = c.trickle(forever(' '), 40);
      const t = await within(4000, c.closed);
      stop();
      assert.ok(t >= 550 && t < 2500, `cut after ${t} ms (request timeout 600 ms)`);
      assertTimeoutProblem(c.received(), 'slow body');
      assert.deepEqual(s.authority.listVms(), []);
    });
  });

  it('a kept-alive connection without a request is closed after the idle timeout (plus Node\'s 1 s margin)', async () => {
    await withServer({ idleTimeoutMs: 300, headersTimeoutMs: 5000, requestTimeoutMs: 5000 }, async (s, port) => {
      const c = await rawClient(port);
      c.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
      const t = await within(5000, c.closed);
      assert.equal(parseResponse(c.received()).status, 200);
      assert.ok(t >= 250 && t < 2500, `idle connection closed after ${t} ms`);
    });
  });

  it('hundreds of slow clients without a token are all gone within the timeouts, and /healthz answers meanwhile', async () => {
    await withServer({ headersTimeoutMs: 500, requestTimeoutMs: 2000 }, async (s, port) => {
            const N = 150;
      const stops: (() => void)[] = [];
      const clients = await Promise.all(Array.from({ length: 2 * N }, () => rawClient(port)));
      clients.forEach((c, i) => {
        if (i % 2 === 0) {
          // Headers that never end.
          c.write('GET /v1/vms HTTP/1.1\r\nHost: x\r\n');
          stops.push(c.trickle(forever('X-Pad: y\r\n'), 50));
        } else {
          // A body, trickled, without a token.
          c.write('POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n');
          stops.push(c.trickle(forever(' '), 50));
        }
      });
      const probes: number[] = [];
      for (let i = 0; i < 5; i++) {
        const h = await healthz(port);
        assert.equal(h.status, 200);
        probes.push(h.ms);
        await new Promise((r) => setTimeout(r, 50));
      }
      const closedAt = await Promise.all(clients.map((c) => within(5000, c.closed)));
      for (const stop of stops) stop();
      assert.ok(closedAt.every((t) => t >= 0), `${closedAt.filter((t) => t < 0).length} slow clients still connected after 5 s`);
      const statuses = clients.map((c) => parseResponse(c.received()).status);
      assert.deepEqual(new Set(statuses.filter((_, i) => i % 2 === 0)), new Set([408]));
      assert.deepEqual(new Set(statuses.filter((_, i) => i % 2 === 1)), new Set([401]));
      assert.ok(Math.max(...probes) < 1000, `/healthz took ${probes.join(', ')} ms among ${2 * N} slow clients`);
    });
  });
});

describe('security: connection cap', () => {
  it('one connection beyond the cap is closed at once; the service serves again when connections go', async () => {
    await withServer({ maxConnections: 10, headersTimeoutMs: 10_000, requestTimeoutMs: 10_000 }, async (s, port) => {
            const holders = await Promise.all(Array.from({ length: 10 }, () => rawClient(port)));
      await new Promise((r) => setTimeout(r, 50));
      const extra = await rawClient(port);
      extra.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
      const t = await within(2000, extra.closed);
      assert.ok(t >= 0, 'the eleventh connection was closed');
      assert.equal(extra.received(), '', 'and answered nothing');
      assert.ok(s.app.connectionStats().refused >= 1);
      const m = await scrape(s);
      const read = (name: string) => Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(m)?.[1] ?? NaN);
      assert.ok(read('ioasid_http_connections_refused_total') >= 1, 'an operator sees the refusal in /metrics');
      assert.equal(read('ioasid_http_connections_open'), 10, 'and the ten connections held');
      for (const h of holders.slice(0, 3)) h.socket.destroy();
      await new Promise((r) => setTimeout(r, 50));
      assert.equal((await healthz(port)).status, 200);
      for (const h of holders) h.socket.destroy();
    });
  });

  it('the limits are checked: the headers timeout may not exceed the request timeout, and each is a positive integer', async () => {
    await assert.rejects(serve({ headersTimeoutMs: 2000, requestTimeoutMs: 1000 }), (e: unknown) => (e as { code?: string }).code === 'EINVAL' && /headers timeout \(2000 ms\) must not exceed the request timeout \(1000 ms\)/.test((e as Error).message));
    await assert.rejects(serve({ maxConnections: 0 }), (e: unknown) => (e as { code?: string }).code === 'EINVAL' && /maxConnections must be a positive integer, got 0/.test((e as Error).message));
  });
});

describe('security: shutdown', () => {
  it('ioasid serve stops on SIGTERM within its grace period, whatever its clients do', async () => {
    const serve = runCli([
      'serve', '--store', 'memory', '--port', '0', '--admin-token-file', tokenFile, '--log-level', 'info',
      '--shutdown-grace', '700', '--headers-timeout', '30000', '--request-timeout', '30000',
    ], { cwd: dir });
    const child = serve.child;
    const exited = serve.exited.then((r) => r.code);
    try {
      const url = await serve.listening();
      const port = Number(new URL(url).port);
      // A request in flight whose body never ends.
      const body = await rawClient(port);
      body.write(`POST /v1/vms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN}\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{`);
      const stopBody = body.trickle(forever(' '), 50);
      // A subscriber that never answers the service's close frame (nor anything else).
      const ws = await rawClient(port);
      ws.write(`GET /v1/events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nAuthorization: Bearer ${ADMIN}\r\n\r\n`);
      // Headers that never end.
      const head = await rawClient(port);
      head.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
      const stopHead = head.trickle(forever('X-Pad: y\r\n'), 50);
      for (let i = 0; i < 100 && !ws.received().includes('101 Switching Protocols'); i++) await new Promise((r) => setTimeout(r, 20));
      assert.match(ws.received(), /^HTTP\/1\.1 101 /);
      await new Promise((r) => setTimeout(r, 200));
      const t0 = Date.now();
      child.kill('SIGTERM');
      const code = await within(10_000, exited.then((c) => c ?? -2));
      const took = Date.now() - t0;
      stopBody();
      stopHead();
      assert.equal(code, 0, `exit code (${serve.stderr()})`);
      assert.ok(took < 700 + 2000, `stopped ${took} ms after SIGTERM (grace 700 ms)`);
      assert.ok(took >= 600, `the clients had their grace period (${took} ms)`);
      for (const c of [body, ws, head]) assert.ok((await within(1000, c.closed)) >= 0, 'every client was cut');
      assert.ok(ws.received().includes('\x88\x19\x03\xe9the service is stopping'), 'the subscriber was sent a close frame, 1001 (going away), first');
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
  });
});
