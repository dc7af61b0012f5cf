/**
 * The event stream: events are the journal's, numbered durably (seq never goes back across a
 * restart, history survives it); a subscriber resumes with `since` and is told of a gap;
 * subscriptions are bounded and follow the VM (they end when it is destroyed or its token is
 * replaced); slow consumers are dropped and counted; delivery happens after the request that made
 * the event was answered; a stopping service closes its subscribers with 1001.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { PasidAuthority, startServer, type AuthorityEvent, type RunningServer } from '../src/service/index.ts';
import { IoasidClient, eventStreamProtocols } from '../src/client/index.ts';
import { EventHub, type HubSocket } from '../src/service/event-hub.ts';
import { MemoryStore } from '../src/store/index.ts';

const ADMIN = 'events-admin-token-0123456789abcdef';
const dir = mkdtempSync(join(tmpdir(), 'ioasid-events-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const tokenFile = join(dir, 'admin.token');
writeFileSync(tokenFile, `${ADMIN}\n`, { mode: 0o600 });

function serve(store: string, extra: Partial<Parameters<typeof startServer>[0]> = {}): Promise<RunningServer> {
  return startServer({ store, host: '127.0.0.1', port: 0, adminTokenFile: tokenFile, stateDir: dir, logLevel: 'silent', dashboard: false, say: () => {}, ...extra });
}

/** A subscriber (the token as the client sends it: a WebSocket subprotocol): its messages, and how it was closed. */
function subscribe(url: string, token: string, query: Record<string, string> = {}) {
  const q = new URLSearchParams(query);
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/v1/events?${q.toString()}`, eventStreamProtocols(token));
  const messages: Record<string, unknown>[] = [];
  const opened = new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  ws.on('message', (d) => messages.push(JSON.parse(d.toString()) as Record<string, unknown>));
  const until = async (pred: () => boolean, what: string) => {
    for (let i = 0; i < 200 && !pred(); i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(pred(), `timed out waiting for ${what}: ${JSON.stringify(messages)}`);
  };
  return { ws, messages, opened, closed, until };
}

describe('events: durable numbering and resumption', () => {
  it('seq goes on after a restart, history survives it, and since=N resumes exactly where the subscriber left', async () => {
    const db = `sqlite:${join(dir, 'events.db')}`;
    let s = await serve(db);
    const admin = () => new IoasidClient({ url: s.url, token: ADMIN });
    await admin().createVm({ id: 'vm1', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }] });
    const [p] = await admin().allocPasids('vm1', { count: 2 });
    await admin().bind('vm1', p as number, '0000:00:02.0');
    const before = s.authority.lastSeq;
    assert.equal(before, 5, 'vm-created, viommu-added, device-assigned, the alloc of two, bind: numbered from 1');
    await s.close();

    s = await serve(db);
    assert.equal(s.authority.lastSeq, before, 'the number survives the restart');
    const history = (await admin().getPasid(p as number)).history.map((e) => e.type);
    assert.deepEqual(history, ['alloc', 'bind'], 'pasid show has its history after a restart');
    await admin().freePasid('vm1', 2);
    assert.equal(s.authority.lastSeq, before + 1, 'the next event is numbered after the last one before the restart');

    const sub = subscribe(s.url, ADMIN, { since: '3' });
    await sub.opened;
    await sub.until(() => sub.messages.length === 3, 'the events after seq 3');
    await admin().allocPasids('vm1');
    await sub.until(() => sub.messages.length === 4, 'the live event');
    assert.deepEqual(sub.messages.map((m) => m['seq']), [4, 5, 6, 7], 'no hole, no repeat');
    assert.deepEqual(sub.messages.map((m) => m['type']), ['alloc', 'bind', 'free', 'alloc']);
    sub.ws.close();
    await s.close();
  });

  it('a subscriber older than the retention is told of the gap, then gets what is kept', async () => {
    const store = new MemoryStore({ eventRetention: 3 });
    const authority = await PasidAuthority.open({ store, historySize: 3 });
    const hub = new EventHub(authority);
    await authority.createVm({ id: 'vm1' });
    for (let i = 0; i < 5; i++) await authority.allocPasids('vm1');
    const sock = fakeSocket();
    hub.subscribe(sock, { caller: 'admin', vm: null, since: 1 });
    assert.deepEqual(sock.sent.map((m) => JSON.parse(m)), [
      { type: 'gap', since: 1, next: 4 },
      ...authority.recentEvents().map((e) => JSON.parse(JSON.stringify(e)) as unknown),
    ]);
    assert.deepEqual(authority.recentEvents().map((e) => e.seq), [4, 5, 6]);
    hub.close();
    await authority.close();
  });

  it('since must be a number: anything else closes the stream with 4400', async () => {
    const s = await serve('memory');
    const sub = subscribe(s.url, ADMIN, { since: 'yesterday' });
    assert.equal((await sub.closed).code, 4400);
    await s.close();
  });
});

describe('events: access follows the VM', () => {
  it('a VM\'s subscription ends (4403) when the VM is destroyed, and never sees a new VM of the same name', async () => {
    const s = await serve('memory');
    const admin = new IoasidClient({ url: s.url, token: ADMIN });
    const { token } = await admin.createVm({ id: 'vm1' });
    const sub = subscribe(s.url, token, { vm: 'vm1' });
    await sub.opened;
    await admin.allocPasids('vm1');
    await admin.destroyVm('vm1');
    const closed = await sub.closed;
    assert.equal(closed.code, 4403);
    assert.match(closed.reason, /VM vm1 was destroyed/);
    assert.deepEqual(sub.messages.map((m) => m['type']), ['alloc', 'free', 'vm-destroyed']);
    await admin.createVm({ id: 'vm1' });
    await admin.allocPasids('vm1');
    assert.equal(sub.messages.length, 3);
    await s.close();
  });

  it('replacing a VM\'s token ends the subscriptions made with the old one, and the old token is refused at once', async () => {
    const s = await serve('memory');
    const admin = new IoasidClient({ url: s.url, token: ADMIN });
    const { token } = await admin.createVm({ id: 'vm1' });
    const sub = subscribe(s.url, token, { vm: 'vm1' });
    await sub.opened;
    const watcher = subscribe(s.url, ADMIN, { vm: 'vm1' });
    await watcher.opened;
    const { token: fresh } = await admin.replaceToken('vm1');
    assert.notEqual(fresh, token);
    assert.equal((await sub.closed).code, 4403);
    await assert.rejects(new IoasidClient({ url: s.url, token }).listPasids('vm1'), (e: unknown) => (e as { details?: { status?: number } }).details?.status === 401);
    assert.deepEqual(await new IoasidClient({ url: s.url, token: fresh }).listPasids('vm1'), []);
    await watcher.until(() => watcher.messages.some((m) => m['type'] === 'credential-replaced'), 'the admin\'s view of the replacement');
    assert.equal(JSON.stringify(watcher.messages).includes(fresh), false, 'the new token is never in an event');
    watcher.ws.close();
    await s.close();
  });
});

describe('events: bounded and off the request path', () => {
  it('at most perCaller subscriptions per caller (4429); others are not affected', async () => {
    const s = await serve('memory', { events: { perCaller: 3 } });
    const admin = new IoasidClient({ url: s.url, token: ADMIN });
    const { token } = await admin.createVm({ id: 'vm1' });
    const subs = [0, 1, 2].map(() => subscribe(s.url, token, { vm: 'vm1' }));
    await Promise.all(subs.map((x) => x.opened));
    const extra = subscribe(s.url, token, { vm: 'vm1' });
    assert.equal((await extra.closed).code, 4429);
    const mine = subscribe(s.url, ADMIN);
    await mine.opened;
    assert.equal(s.app.events.stats().subscribers, 4);
    assert.equal(s.app.events.stats().refused, 1);
    subs[0]?.ws.close();
    await subs[0]?.closed;
    await new Promise((r) => setTimeout(r, 50));
    const again = subscribe(s.url, token, { vm: 'vm1' });
    await again.opened;
    await s.close();
  });

  it('a stopping service closes its subscribers with 1001', async () => {
    const s = await serve('memory');
    const sub = subscribe(s.url, ADMIN);
    await sub.opened;
    const closing = s.close();
    assert.equal((await sub.closed).code, 1001);
    await closing;
  });

  it('each event is sent after the change is answered, serialised once, and a consumer that does not keep up is dropped (4008) and counted', async () => {
    const authority = await PasidAuthority.open({ store: new MemoryStore() });
    const hub = new EventHub(authority, { maxBuffered: 100 });
    const fast = fakeSocket();
    const slow = fakeSocket(1000);
    hub.subscribe(fast, { caller: 'admin', vm: null });
    hub.subscribe(slow, { caller: 'vm1', vm: null });
    await authority.createVm({ id: 'vm1' });
    assert.equal(fast.sent.length, 0, 'nothing is sent inside the request');
    await new Promise((r) => setImmediate(r));
    assert.equal(fast.sent.length, 1);
    assert.deepEqual(slow.closedWith, { code: 4008, reason: 'the consumer does not keep up' });
    assert.deepEqual(hub.stats(), { subscribers: 1, dropped: 1, refused: 0, dead: 0 });
    hub.close();
    await authority.close();
  });
});

function fakeSocket(buffered = 0): HubSocket & { sent: string[]; closedWith: { code: number; reason: string } | null } {
  const listeners: (() => void)[] = [];
  const s = {
    bufferedAmount: buffered,
    sent: [] as string[],
    closedWith: null as { code: number; reason: string } | null,
    send(d: string) {
      s.sent.push(d);
    },
    close(code: number, reason: string) {
      s.closedWith = { code, reason };
      for (const l of listeners) l();
    },
    on(_e: 'close' | 'error', l: () => void) {
      listeners.push(l);
      return s;
    },
  };
  return s;
}

export type { AuthorityEvent };
