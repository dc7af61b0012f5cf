/**
 * Cluster mode's journal on a real 3-member etcd cluster (docs/cluster.md, "Events"): in-process
 * instances, as in test/cluster.test.ts.
 *  - every host publishes every event of the domain, with the same numbers, in ascending order;
 *  - history (recent events, a PASID's history) survives a restart and numbers never go back;
 *  - a replaced token is refused by every host, the new one accepted;
 *  - a migration is one event every host publishes, and the vIOMMU registers travel with the VM
 *    (a result the guest has not read yet, a pending 32-bit half);
 *  - an operator's reclaim frees the dead host's VMs through the journal (events on every host);
 *  - a destroy too big for one transaction is done in chunks; one left half done by a crash is
 *    finished when its host starts again, and the other hosts apply it.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Etcd3 } from 'etcd3';
import type { AuthorityEvent } from '../src/service/index.ts';
import { ETCD_SKIP } from './helpers/etcd-cluster.ts';
import { checkDomain, clusterSuite, readPasidKeys, settleAll, type Instance } from './fixtures/cluster-instances.ts';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const BDF = '0000:00:02.0';

describe('cluster: the journal of a domain', { skip: ETCD_SKIP ?? false }, () => {
  const { start, etcd } = clusterSuite();
  /** Every event an instance publishes from now on, as [seq, type, vm]. */
  const record = (i: Instance) => {
    const seen: AuthorityEvent[] = [];
    const off = i.authority.on((e) => seen.push(e));
    return { seen, off, keys: () => seen.map((e) => `${e.seq} ${e.type} ${e.vm}`) };
  };

  it('every host publishes every event of the domain with the same seq, in ascending order', async () => {
    const d = 'events';
    const inst = [await start('e1', d), await start('e2', d), await start('e3', d)];
    const logs = inst.map(record);
    const tokens = new Map<string, string>();
    for (const [k, i] of inst.entries()) {
      const r = await i.call('POST', '/v1/vms', { id: `ev${k}`, quota: 0, viommus: [{ segment: 0 }], devices: [{ bdf: BDF }] });
      assert.equal(r.status, 201);
      tokens.set(`ev${k}`, r.body.token);
    }
    // Concurrent changes on the three hosts: allocations, frees, bindings, a migration.
    await Promise.all(inst.map(async (i, k) => {
      const vm = `ev${k}`;
      const tok = tokens.get(vm) as string;
      for (let n = 0; n < 15; n++) {
        const got = (await i.call('POST', `/v1/vms/${vm}/pasids`, { count: 1 + (n % 3) }, tok)).body.pasids as number[];
        if (n % 4 === 0) assert.equal((await i.call('POST', `/v1/vms/${vm}/pasids/${got[0]}/bindings`, { bdf: BDF }, tok)).status, 201);
        else assert.equal((await i.call('DELETE', `/v1/vms/${vm}/pasids/${got[0]}`, undefined, tok)).status, 204);
      }
    }));
    assert.equal((await inst[0]!.call('POST', '/v1/vms/ev0/migrate', { to: 'e2' })).status, 200);
    assert.equal((await inst[2]!.call('DELETE', '/v1/vms/ev2')).status, 200);
    await settleAll(inst);
    for (const l of logs) l.off();
    const ref = logs[0]!.keys();
    assert.ok(ref.length > 100, `events published: ${ref.length}`);
    for (const [k, l] of logs.entries()) {
      assert.deepEqual(l.keys(), ref, `host e${k + 1} published the same events with the same numbers`);
      l.seen.forEach((e, n) => assert.ok(n === 0 || e.seq > l.seen[n - 1]!.seq, `e${k + 1}: seq ${e.seq} after ${l.seen[n - 1]?.seq}`));
    }
    // Each host's own and the others' changes, once each.
    const migrated = logs[1]!.seen.filter((e) => e.type === 'vm-migrated');
    assert.deepEqual(migrated.map((e) => [e.vm, (e as { from?: string }).from, (e as { to?: string }).to]), [['ev0', 'e1', 'e2']]);
    assert.equal(logs[0]!.seen.filter((e) => e.type === 'vm-destroyed' && e.vm === 'ev2').length, 1);
    // The history every host keeps agrees too.
    const tail = (i: Instance) => i.authority.recentEvents({ limit: 50 }).map((e) => `${e.seq} ${e.type} ${e.vm}`);
    assert.deepEqual(tail(inst[1]!), tail(inst[0]!));
    assert.deepEqual(tail(inst[2]!), tail(inst[0]!));
    await checkDomain(inst);
  });

  it('history survives a restart (recent events, a PASID\'s history), and numbers never go back', async () => {
    const d = 'history';
    const a = await start('h1', d);
    const b = await start('h2', d);
    const r = await a.call('POST', '/v1/vms', { id: 'hv', viommus: [{ segment: 0 }], devices: [{ bdf: BDF }] });
    const tok = r.body.token as string;
    const [p] = (await a.call('POST', '/v1/vms/hv/pasids', {}, tok)).body.pasids as number[];
    await a.call('POST', `/v1/vms/hv/pasids/${p}/bindings`, { bdf: BDF }, tok);
    await a.call('DELETE', `/v1/vms/hv/pasids/${p}/bindings/${BDF}`, undefined, tok);
    await a.call('DELETE', `/v1/vms/hv/pasids/${p}`, undefined, tok);
    const rb = await b.call('POST', '/v1/vms', { id: 'hw' });
    await b.call('POST', '/v1/vms/hw/pasids', { count: 2 }, rb.body.token);
    await settleAll([a, b]);
    const before = (await a.call('GET', '/v1/events/recent?limit=100')).body.events as AuthorityEvent[];
    const historyBefore = (await a.call('GET', `/v1/pasids/${p}`)).body.history as AuthorityEvent[];
    assert.deepEqual(historyBefore.map((e) => e.type), ['alloc', 'bind', 'unbind', 'free']);
    const lastBefore = a.authority.lastSeq;
    assert.equal(lastBefore, before[before.length - 1]!.seq);
    // Restart h1: a new store object and authority on the same etcd.
    await a.close();
    const a2 = await start('h1', d);
    const after = (await a2.call('GET', '/v1/events/recent?limit=100')).body.events as AuthorityEvent[];
    assert.deepEqual(after, before, 'the same events, with the same numbers and times');
    assert.deepEqual((await a2.call('GET', `/v1/pasids/${p}`)).body.history, historyBefore);
    assert.equal(a2.authority.lastSeq, lastBefore);
    // A host that joins later has the history too.
    const c = await start('h3', d);
    assert.deepEqual((await c.call('GET', '/v1/events/recent?limit=100')).body.events, before);
    // New events get higher numbers, whichever host commits them.
    const seen = record(c);
    await b.call('POST', '/v1/vms/hw/pasids', {}, rb.body.token);
    await a2.call('POST', '/v1/vms/hv/pasids', {}, tok);
    await settleAll([a2, b, c]);
    seen.off();
    assert.equal(seen.seen.length, 2);
    assert.ok(seen.seen[0]!.seq > lastBefore && seen.seen[1]!.seq > seen.seen[0]!.seq, seen.keys().join(', '));
  });

  it('the journal keeps the last logRetention records: older events are gone after a restart, numbers go on', async () => {
    const d = 'retention';
    const a = await start('j1', d, { logRetention: 16 });
    const r = await a.call('POST', '/v1/vms', { id: 'jv', quota: 0 });
    const tok = r.body.token as string;
    // One transaction each (awaited one by one): 60 journal records.
    for (let k = 0; k < 60; k++) assert.equal((await a.call('POST', '/v1/vms/jv/pasids', {}, tok)).status, 201);
    const all = a.authority.recentEvents({ vm: 'jv' });
    assert.equal(all.length, 61);
    const logKeys = async () => (await a.store.client.getAll().prefix(a.store.keys.logs).keys()).length;
    const before = await logKeys();
    assert.ok(before >= 61, `${before} journal records`);
    assert.equal(await a.store.pruneJournal(), before - 16);
    assert.equal(await logKeys(), 16);
    assert.equal(await a.store.pruneJournal(), 0, 'nothing more to prune');
    await a.close();
    const a2 = await start('j1', d, { logRetention: 16 });
    const kept = a2.authority.recentEvents({ vm: 'jv' });
    assert.deepEqual(kept, all.slice(-16), 'the newest 16 records, as they were');
    assert.equal(a2.authority.lastSeq, all[all.length - 1]!.seq);
    const next = (await a2.call('POST', '/v1/vms/jv/pasids', {}, tok)).body.pasids as number[];
    assert.equal(next.length, 1);
    assert.ok(a2.authority.recentEvents({ limit: 1 })[0]!.seq > all[all.length - 1]!.seq);
  });

  it('a replaced token is refused by every host at once, and the new one accepted', async () => {
    const d = 'tokens';
    const inst = [await start('t1', d), await start('t2', d), await start('t3', d)];
    const r = await inst[0]!.call('POST', '/v1/vms', { id: 'tv' });
    const old = r.body.token as string;
    await settleAll(inst);
    for (const i of inst) assert.equal((await i.call('GET', '/v1/vms/tv', undefined, old)).status, 200, `${i.id} knows the token`);
    const seen = record(inst[2]!);
    const { token } = await inst[0]!.authority.replaceToken('tv');
    // The replacement returns once the domain's watch has brought it here; the others follow it.
    await settleAll(inst);
    seen.off();
    for (const i of inst) {
      assert.equal((await i.call('GET', '/v1/vms/tv', undefined, old)).status, 401, `${i.id} refuses the old token`);
      assert.equal((await i.call('GET', '/v1/vms/tv', undefined, token)).status, 200, `${i.id} accepts the new one`);
      assert.equal(i.authority.identify(token).vm, 'tv');
    }
    assert.deepEqual(seen.seen.map((e) => e.type), ['credential-replaced']);
    assert.ok(!JSON.stringify(seen.seen).includes(token.slice(0, 16)), 'the credential is never published');
    // The new token works after a restart too (it is in etcd).
    await inst[1]!.close();
    const again = await start('t2', d);
    assert.equal((await again.call('GET', '/v1/vms/tv', undefined, token)).status, 200);
  });

  it("a migration is one event on every host, and the guest's registers travel with the VM", async () => {
    const d = 'regs';
    const a = await start('r1', d);
    const b = await start('r2', d);
    const r = await a.call('POST', '/v1/vms', { id: 'rv', viommus: [{ segment: 0 }] });
    const tok = r.body.token as string;
    const mmio = (i: Instance, body: object) => i.call('POST', '/v1/vms/rv/viommus/0/mmio', body, tok);
    const vcrsp = async (i: Instance) => {
      const x = await mmio(i, { op: 'read', offset: 0xe10, size: 8 });
      assert.equal(x.status, 200, JSON.stringify(x.body));
      return BigInt(x.body.value);
    };
    // An Allocate completes on r1; the guest migrates before it reads VCRSP.
    assert.equal((await mmio(a, { op: 'write', offset: 0xe00, size: 8, value: '0x1' })).status, 200);
    const done = await vcrsp(a);
    assert.equal(done & 1n, 0n, 'complete');
    // Every host has applied the Allocate before the recording starts, so only the migration is seen.
    await settleAll([a, b]);
    const seenA = record(a);
    const seenB = record(b);
    const m = await a.call('POST', '/v1/vms/rv/migrate', { to: 'r2' });
    assert.equal(m.status, 200, JSON.stringify(m.body));
    await settleAll([a, b]);
    seenA.off();
    seenB.off();
    assert.deepEqual(seenA.keys(), seenB.keys());
    assert.deepEqual(seenB.seen.map((e) => [e.type, e.vm, (e as { from?: string }).from, (e as { to?: string }).to]), [['vm-migrated', 'rv', 'r1', 'r2']]);
    assert.equal(await vcrsp(b), done, 'r2 answers the result the guest had not read yet');
    const p1 = Number((done >> 16n) & 0xfffffn);
    // A 32-bit guest: the low half of an Allocate on r2, then it migrates back, the high half on r1.
    assert.equal((await mmio(b, { op: 'write', offset: 0xe00, size: 4, value: '0x1' })).status, 200);
    assert.equal(await vcrsp(b), done, 'half a command fires nothing');
    assert.equal((await b.call('POST', '/v1/vms/rv/migrate', { to: 'r1' })).status, 200);
    assert.equal((await mmio(a, { op: 'write', offset: 0xe04, size: 4, value: '0x0' })).status, 200);
    let rsp = 1n;
    for (let n = 0; n < 200 && (rsp & 1n) === 1n; n++) rsp = await vcrsp(a);
    assert.equal((rsp >> 1n) & 0x7fn, 0n, `the command fired on r1 with the half written on r2 (VCRSP 0x${rsp.toString(16)})`);
    const p2 = Number((rsp >> 16n) & 0xfffffn);
    await settleAll([a, b]);
    assert.deepEqual(b.authority.vm('rv').pasids(), [p1, p2].sort((x, y) => x - y));
    assert.deepEqual((await readPasidKeys(a.store)).get(p2), 'rv');
    await checkDomain([a, b]);
  });

  it("an operator's reclaim frees the dead host's VMs through the journal: every host publishes it", async () => {
    const d = 'reclaimev';
    const a = await start('c1', d);
    const b = await start('c2', d);
    const c = await start('c3', d);
    const r = await c.call('POST', '/v1/vms', { id: 'cv', viommus: [{ segment: 0 }], devices: [{ bdf: BDF }] });
    const held = (await c.call('POST', '/v1/vms/cv/pasids', { count: 5 }, r.body.token)).body.pasids as number[];
    await c.call('POST', `/v1/vms/cv/pasids/${held[1]}/bindings`, { bdf: BDF }, r.body.token);
    await c.close();
    await settleAll([a, b]);
    const seenA = record(a);
    const seenB = record(b);
    const rep = await a.call('POST', '/v1/cluster/hosts/c3/reclaim', {});
    assert.equal(rep.status, 200, JSON.stringify(rep.body));
    assert.deepEqual([rep.body.vms, rep.body.pasids, rep.body.bindings], [['cv'], 5, 1]);
    await settleAll([a, b]);
    seenA.off();
    seenB.off();
    assert.deepEqual(seenA.keys(), seenB.keys(), 'both hosts published the reclaim alike');
    assert.deepEqual(seenB.seen.map((e) => e.type), ['vm-migrated', 'unbind', 'free', 'device-removed', 'viommu-removed', 'vm-destroyed']);
    const free = seenB.seen.find((e) => e.type === 'free') as unknown as { pasids: number[] };
    assert.deepEqual(free.pasids, held);
    assert.equal(b.authority.host.hasVm('cv'), false);
    assert.equal((await readPasidKeys(a.store)).size, 0);
    await checkDomain([a, b]);
  });

  it('an allocation too big for one transaction is refused with EINVAL and changes nothing; one that fits commits whole', async () => {
    const d = 'bigalloc';
    const a = await start('b1', d);
    const r = await a.call('POST', '/v1/vms', { id: 'ba', quota: 0 });
    const tok = r.body.token as string;
    const no = await a.call('POST', '/v1/vms/ba/pasids', { count: 200 }, tok);
    assert.equal(no.status, 400, JSON.stringify(no.body));
    assert.equal(no.body.code, 'EINVAL');
    assert.match(no.body.message, /exceeds one etcd transaction/);
    assert.deepEqual(a.authority.vm('ba').pasids(), []);
    assert.equal((await readPasidKeys(a.store)).size, 0);
    const yes = await a.call('POST', '/v1/vms/ba/pasids', { count: 100 }, tok);
    assert.equal(yes.status, 201, JSON.stringify(yes.body));
    assert.equal((await readPasidKeys(a.store)).size, 100);
    await checkDomain([a]);
  });

  it('a destroy too big for one transaction is done in chunks; one left half done is finished when its host starts again', async () => {
    const d = 'chunks';
    // At most 24 writes per transaction: a VM of 60 PASIDs takes several.
    const a = await start('k1', d, { maxTxnOps: 24 });
    const b = await start('k2', d, { maxTxnOps: 24 });
    const r = await a.call('POST', '/v1/vms', { id: 'big', quota: 0 });
    const tok = r.body.token as string;
    const got: number[] = [];
    for (let k = 0; k < 6; k++) got.push(...((await a.call('POST', '/v1/vms/big/pasids', { count: 10 }, tok)).body.pasids as number[]));
    await settleAll([a, b]);
    const seen = record(b);
    const txns = a.store.stats().txns;
    assert.equal((await a.call('DELETE', '/v1/vms/big')).status, 200);
    await settleAll([a, b]);
    seen.off();
    assert.ok(a.store.stats().txns - txns >= 4, `the destroy took ${a.store.stats().txns - txns} transactions`);
    assert.deepEqual(seen.seen.map((e) => e.type), ['free', 'vm-destroyed']);
    assert.deepEqual((seen.seen[0] as unknown as { pasids: number[] }).pasids, [...got].sort((x, y) => x - y));
    assert.equal((await readPasidKeys(a.store)).size, 0);
    const left = await a.store.client.getAll().prefix(a.store.keys.prefix).keys();
    assert.deepEqual(left.filter((k) => /\/(vms|tokens|pending)\//.test(k)), [], 'nothing of the VM is left');
    await checkDomain([a, b]);

    // A crash after the mark: the VM is `destroying` with its journal part kept, keys not yet deleted.
    const r2 = await a.call('POST', '/v1/vms', { id: 'half', quota: 0 });
    const held = (await a.call('POST', '/v1/vms/half/pasids', { count: 5 }, r2.body.token)).body.pasids as number[];
    await a.close();
    const raw = new Etcd3({ hosts: etcd().endpoints.map((e) => `http://${e}`) });
    try {
      const key = a.store.keys.vm('half');
      const vmValue = JSON.parse((await raw.get(key).string()) as string) as Record<string, unknown>;
      const at = Date.now();
      const events = [
        { at, type: 'free', vm: 'half', body: JSON.stringify({ type: 'free', vm: 'half', pasids: held }) },
        { at, type: 'vm-destroyed', vm: 'half', body: JSON.stringify({ type: 'vm-destroyed', vm: 'half', freed: held }) },
      ];
      await raw.put(a.store.keys.pending('half')).value(JSON.stringify({ n: 'k1.crashed.1', at, events }));
      await raw.put(key).value(JSON.stringify({ ...vmValue, state: 'destroying' }));
    } finally {
      raw.close();
    }
    await settleAll([b]);
    assert.equal((await b.call('POST', '/v1/vms/half/pasids', {}, r2.body.token)).body.code, 'ENODEV', 'a VM being destroyed is served by nobody');
    const seen2 = record(b);
    const a2 = await start('k1', d, { maxTxnOps: 24 });
    assert.equal(a2.authority.host.hasVm('half'), false, 'the restarted host finished the destroy');
    await settleAll([a2, b]);
    seen2.off();
    assert.deepEqual(seen2.seen.map((e) => e.type), ['free', 'vm-destroyed'], 'the other host applied and published it');
    assert.equal(b.authority.host.hasVm('half'), false);
    assert.equal((await readPasidKeys(a2.store)).size, 0);
    assert.deepEqual(a2.authority.recentEvents({ vm: 'half' }).slice(-2).map((e) => e.type), ['free', 'vm-destroyed'], 'and its own history has it');
    await checkDomain([a2, b]);
    await sleep(10);
  });
});
