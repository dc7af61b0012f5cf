/**
 * When an operation's answer is written (src/service/app.ts, docs/decisions.md 57): an answer
 * completed in the event-loop turn its request arrived in waits for the end of that turn, so the
 * answers of requests that arrived together leave together; an answer completed in a later turn
 * (SQLite's group commit) is written at once. Both are observed on real sockets: two requests are
 * written on two connections before the service's loop polls, so one poll reads both.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildApp, hashToken, PasidAuthority } from '../src/service/index.ts';
import { openStore, type Store } from '../src/store/index.ts';

const ADMIN = 'answers-admin-token-0123456789abcdef';
const dir = mkdtempSync(join(tmpdir(), 'ioasid-answers-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/**
 * What happened, in order: `commit vmN` (the alloc event, published in the commit), `answer vmN`
 * (the response finished), `next turn` (an immediate set when vm2's commit was published).
 */
async function twoAllocationsTogether(store: Store): Promise<string[]> {
  const authority = await PasidAuthority.open({ store });
  await authority.setAdminTokenHash(hashToken(ADMIN));
  const tokens = [(await authority.createVm({ id: 'vm1' })).token, (await authority.createVm({ id: 'vm2' })).token];
  const app = await buildApp({ authority });
  const order: string[] = [];
  authority.on((e) => {
    if (e.type !== 'alloc') return;
    order.push(`commit ${e.vm}`);
    if (e.vm === 'vm2') setImmediate(() => order.push('next turn'));
  });
  let accepted = 0;
  app.server.on('connection', () => void (accepted += 1));
  app.server.on('request', (req, res) => {
    const vm = /\/v1\/vms\/([^/]+)\/pasids/.exec(req.url ?? '')?.[1];
    res.on('finish', () => order.push(`answer ${vm}`));
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const port = (app.server.address() as net.AddressInfo).port;
  try {
    const sockets = await Promise.all([0, 1].map(() => new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(s));
      s.on('error', reject);
    })));
    // The service has accepted both (a client's connect may complete before the accept).
    while (accepted < 2) await new Promise((r) => setImmediate(r));
    const answered = sockets.map((s) => new Promise<string>((resolve) => {
      let text = '';
      s.setEncoding('latin1');
      s.on('data', (c: string) => {
        text += c;
        if (/\r\n\r\n\{.*\}$/s.test(text)) resolve(text);
      });
    }));
    // Both requests are in the kernel before the service's loop (this process's) polls again.
    sockets.forEach((s, i) => s.write(
      `POST /v1/vms/vm${i + 1}/pasids HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${tokens[i]}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`,
    ));
    for (const text of await Promise.all(answered)) assert.match(text, /^HTTP\/1\.1 201 /);
    for (const s of sockets) s.destroy();
  } finally {
    await app.close();
  }
  while (!order.includes('next turn')) await new Promise((r) => setImmediate(r));
  return order;
}

describe('service: when answers are written', () => {
  it('memory store: two allocations that arrive in one turn are both committed before either answer is written', async () => {
    assert.deepEqual(await twoAllocationsTogether(openStore('memory')), ['commit vm1', 'commit vm2', 'answer vm1', 'answer vm2', 'next turn']);
  });

  it('SQLite: the group commit that completes both answers them at once (no further turn)', async () => {
    const order = await twoAllocationsTogether(openStore(`sqlite:${join(dir, 'answers.db')}`, { synchronous: 'normal' }));
    assert.deepEqual(order, ['commit vm1', 'commit vm2', 'answer vm1', 'answer vm2', 'next turn']);
  });
});
