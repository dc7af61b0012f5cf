/**
 * Issue 13, items 1 and 2, what test/service-events.test.ts does not already pin:
 *  - the subscription bounds are what `ioasid serve` is told (`--max-subscriptions-per-token`,
 *    `--max-subscriptions`), per token: one tenant at its bound does not stop another;
 *  - a subscriber whose peer is gone without closing (it answers no ping) loses its slot after a
 *    missed heartbeat, and is counted; one that answers keeps it;
 *  - a batch of 1,024 PASIDs is one message per subscriber.
 * The latency bound under load (another VM's allocation and /healthz p99 under 50 ms with one
 * tenant at its subscription bound allocating 1,024 PASIDs per request) is a benchmark, not a
 * timed test: `npm run bench:isolation` (bench/isolation.bench.ts).
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { IoasidClient, eventStreamProtocols } from '../src/client/index.ts';
import { startServer } from '../src/service/index.ts';
import { runCli } from './helpers/serve-process.ts';

const ADMIN = 'events-sec-admin-token-0123456789abcdef';
const dir = mkdtempSync(join(tmpdir(), 'ioasid-sec-events-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const adminFile = join(dir, 'admin.token');
writeFileSync(adminFile, `${ADMIN}\n`, { mode: 0o600 });

function open(url: string, token: string, vm: string | null, opts: WebSocket.ClientOptions = {}) {
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/v1/events${vm !== null ? `?vm=${vm}` : ''}`, eventStreamProtocols(token), opts);
  const messages: string[] = [];
  ws.on('message', (d) => messages.push(d.toString()));
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  const opened = new Promise<boolean>((resolve) => {
    ws.once('open', () => resolve(true));
    ws.once('error', () => resolve(false));
  });
  return { ws, messages, closed, opened };
}

describe('security: event stream bounds', () => {
  it('ioasid serve --max-subscriptions-per-token and --max-subscriptions bound the streams, per token', async () => {
    const serve = runCli(['serve', '--store', 'memory', '--port', '0', '--admin-token-file', adminFile, '--log-level', 'info', '--max-subscriptions-per-token', '2', '--max-subscriptions', '5'], { cwd: dir });
    const child = serve.child;
    const exited = serve.exited.then((r) => r.code);
    try {
      const url = await serve.listening();
      const admin = new IoasidClient({ url, token: ADMIN });
      const evil = (await admin.createVm({ id: 'evil' })).token;
      const good = (await admin.createVm({ id: 'good' })).token;
      const mine = [open(url, evil, 'evil'), open(url, evil, 'evil')];
      assert.deepEqual(await Promise.all(mine.map((s) => s.opened)), [true, true]);
      const third = open(url, evil, 'evil');
      assert.deepEqual(await third.closed, { code: 4429, reason: 'at most 2 subscriptions per caller' });
      const theirs = [open(url, good, 'good'), open(url, good, 'good')];
      assert.deepEqual(await Promise.all(theirs.map((s) => s.opened)), [true, true], 'another tenant is not affected');
      const adminSub = open(url, ADMIN, null);
      assert.equal(await adminSub.opened, true);
      const sixth = open(url, ADMIN, null);
      assert.deepEqual(await sixth.closed, { code: 4429, reason: 'too many subscriptions' });
      for (const s of [...mine, ...theirs, adminSub]) s.ws.close();
      child.kill('SIGTERM');
      assert.equal(await exited, 0);
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
  });

  it('a subscriber that answers no ping loses its slot after one missed heartbeat, and is counted; one that answers stays', async () => {
    const s = await startServer({ store: 'memory', port: 0, adminTokenFile: adminFile, stateDir: dir, logLevel: 'silent', dashboard: false, say: () => {}, events: { heartbeatMs: 150, perCaller: 1 }, limits: { shutdownGraceMs: 300 } });
    try {
      const admin = new IoasidClient({ url: s.url, token: ADMIN });
      const { token } = await admin.createVm({ id: 'vm1' });
      // A peer that vanished: its socket stays open but nothing answers.
      const gone = open(s.url, token, 'vm1', { autoPong: false });
      assert.equal(await gone.opened, true);
      const alive = open(s.url, ADMIN, null);
      assert.equal(await alive.opened, true);
      const closed = await Promise.race([gone.closed, new Promise<null>((r) => setTimeout(() => r(null), 3000))]);
      assert.ok(closed !== null, 'the silent subscriber was cut');
      assert.equal(closed.code, 1006, 'cut, not closed: its peer would not answer a close either');
      assert.equal(s.app.events.stats().dead, 1);
      const m = (await s.app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `Bearer ${ADMIN}` } })).body;
      assert.match(m, /^ioasid_event_subscribers_dead_total 1$/m, 'an operator sees it in /metrics');
      // Its slot is free again (perCaller 1), and the one that answers pings is still there.
      const again = open(s.url, token, 'vm1');
      assert.equal(await again.opened, true);
      await new Promise((r) => setTimeout(r, 400));
      assert.equal(alive.ws.readyState, WebSocket.OPEN);
      assert.equal(again.ws.readyState, WebSocket.OPEN);
      assert.equal(s.app.events.stats().subscribers, 2);
      alive.ws.close();
      again.ws.close();
    } finally {
      await s.close();
    }
  });

  it('a batch of 1,024 PASIDs reaches each of 16 subscribers as one message', async () => {
    const s = await startServer({ store: 'memory', port: 0, adminTokenFile: adminFile, stateDir: dir, logLevel: 'silent', dashboard: false, say: () => {}, limits: { shutdownGraceMs: 300 } });
    try {
      const admin = new IoasidClient({ url: s.url, token: ADMIN });
      const { token } = await admin.createVm({ id: 'vm1', quota: 2048 });
      const subs = Array.from({ length: 16 }, () => open(s.url, token, 'vm1'));
      assert.ok((await Promise.all(subs.map((x) => x.opened))).every(Boolean));
      const pasids = await new IoasidClient({ url: s.url, token }).allocPasids('vm1', { count: 1024 });
      for (let i = 0; i < 200 && subs.some((x) => x.messages.length === 0); i++) await new Promise((r) => setTimeout(r, 10));
      for (const x of subs) {
        assert.equal(x.messages.length, 1);
        assert.deepEqual((JSON.parse(x.messages[0] as string) as { pasids: number[] }).pasids, pasids);
      }
      await new Promise((r) => setTimeout(r, 100));
      assert.ok(subs.every((x) => x.messages.length === 1), 'and nothing more');
      for (const x of subs) x.ws.close();
    } finally {
      await s.close();
    }
  });
});
