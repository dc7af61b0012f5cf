/**
 * The etcd store as one host of a domain (what the conformance suite, with one host, cannot show),
 * on a real 3-member etcd cluster:
 *  - only the host serving a VM may change its rows (EREMOTE naming that host), whatever the
 *    integrity rules say, and a second incarnation of a host id fences the first;
 *  - another host's store sees the same rows and gets each change's journal part with the same
 *    event numbers;
 *  - a batch that etcd refuses takes back the batches staged on top of it in the same tick (they
 *    fail too), and etcd and the mirror keep neither.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { IoasidError } from '../src/core/index.ts';
import { EtcdStore, type CommittedPart, type Mutation } from '../src/store/index.ts';
import { EtcdCluster, ETCD_SKIP } from './helpers/etcd-cluster.ts';

const T = 1_700_000_000_000;
const DEV = '0000:00:02.0';
const hash = (name: string): string => createHash('sha256').update(name).digest('hex');
const vm = (id: string): Mutation => ({ op: 'putVm', row: { id, quota: 0, tokenHash: hash(id), createdAt: T } });
const pasid = (p: number, v: string | null): Mutation => ({ op: 'insertPasid', row: { pasid: p, vm: v, allocatedAt: T } });
const event = (type: string, v: string | null, body: object): Mutation => ({ op: 'appendEvents', events: [{ at: T, type, vm: v, body: JSON.stringify(body) }] });

function code(c: string) {
  return (e: unknown) => {
    assert.ok(e instanceof IoasidError, `expected IoasidError, got ${String(e)}`);
    assert.equal(e.code, c, e.message);
    return true;
  };
}

describe('the etcd store: one host of a domain', { skip: ETCD_SKIP ?? false }, () => {
  let etcd: EtcdCluster;
  const stores: EtcdStore[] = [];
  const open = async (hostId: string, domain: string) => {
    const s = new EtcdStore({ endpoints: etcd.endpoints, hostId, domain, leaseTtlSec: 5 });
    stores.push(s);
    const state = await s.open();
    return { s, state };
  };
  before(async () => {
    etcd = await EtcdCluster.start();
  });
  after(async () => {
    for (const s of stores) await s.close().catch(() => {});
    await etcd?.stop();
  });

  it("only the VM's host changes its rows (EREMOTE naming it); another host sees them, with the same event numbers", async () => {
    const { s: a } = await open('sa', 'serve');
    const { s: b } = await open('sb', 'serve');
    const parts: CommittedPart[] = [];
    b.onCommitted((p) => parts.push(...p));
    const r = await a.apply([vm('v1'), { op: 'putViommu', row: { vm: 'v1', segment: 0, layout: 'B', rangeExtension: false, pasBit: 0, pss: 19, registers: null } }, pasid(5, 'v1'), event('alloc', 'v1', { type: 'alloc', vm: 'v1', pasids: [5] })]);
    await b.waitApplied(await a.barrier());
    assert.deepEqual(b.pasidRows(), [{ pasid: 5, vm: 'v1', allocatedAt: T }]);
    assert.deepEqual(b.vm('v1') && { host: b.vm('v1')?.host, state: b.vm('v1')?.state }, { host: 'sa', state: 'active' });
    assert.deepEqual(parts.map((p) => [p.seq, p.host, p.events.map((e) => [e.seq, e.type])]), [[r.seq, 'sa', [[r.seq, 'alloc']]]]);
    assert.deepEqual(parts[0]!.credentials, [{ vm: 'v1', tokenHash: hash('v1') }], 'the new VM\'s token hash travels with it');
    // b may not change a's VM, even where the integrity rules would allow it.
    for (const batch of [[pasid(6, 'v1')], [{ op: 'deletePasid', pasid: 5, vm: 'v1' }], [{ op: 'setTokenHash', vm: 'v1', tokenHash: hash('other') }], [{ op: 'setRegisters', vm: 'v1', segment: 0, registers: '{}' }]] as Mutation[][]) {
      await assert.rejects(b.apply(batch), (e) => code('EREMOTE')(e) && (e as IoasidError).details['host'] === 'sa' && /runs on host sa/.test((e as IoasidError).message), JSON.stringify(batch));
    }
    // Nor create a VM id or a token hash the domain has (create-if-absent, checked by etcd too).
    await assert.rejects(b.apply([vm('v1')]), code('EREMOTE'));
    await assert.rejects(b.apply([{ op: 'putVm', row: { id: 'v2', quota: 0, tokenHash: hash('v1'), createdAt: T } }]), code('EEXIST'));
    // A second incarnation of sa fences the first: nothing the first sends commits.
    const { s: a2, state } = await open('sa', 'serve');
    assert.deepEqual(state.pasids.map((p) => p.pasid), [5]);
    await assert.rejects(a.apply([pasid(7, 'v1')]), (e) => code('ENODEV')(e) && /fenced/.test((e as IoasidError).message));
    await a2.apply([pasid(7, 'v1')]);
    await b.waitApplied(await a2.barrier());
    assert.deepEqual(b.pasidRows().map((p) => p.pasid).sort((x, y) => x - y), [5, 7]);
  });

  it('a batch etcd refuses takes back the batches of the same tick staged on top of it; etcd and the mirror keep neither', async () => {
    const { s: a } = await open('ca', 'cascade');
    const { s: b } = await open('cb', 'cascade');
    // Devices of different BDFs: the two bindings are different keys (only the cascade relates them).
    const bdf = (v: string) => (v === 'va' ? DEV : '0000:00:03.0');
    const setup = (v: string): Mutation[] => [vm(v), { op: 'putViommu', row: { vm: v, segment: 0, layout: 'B', rangeExtension: false, pasBit: 0, pss: 19, registers: null } }, { op: 'putDevice', row: { vm: v, bdf: bdf(v), segment: 0, pasidBits: 20 } }];
    await a.apply(setup('va'));
    await b.apply(setup('vb'));
    await a.waitApplied(await b.barrier());
    // Both hosts take PASID 77 in the same tick, each with a binding made on it: etcd lets one
    // insert commit; the other host's insert is refused, and its binding is taken back with it.
    const bind = (v: string): Mutation[] => [{ op: 'putBinding', row: { pasid: 77, vm: v, bdf: bdf(v), boundAt: T } }];
    const settle = (p: Promise<unknown>) => p.then(() => 'ok', (e: IoasidError) => e);
    const out = await Promise.all([
      settle(a.apply([pasid(77, 'va')])), settle(a.apply(bind('va'))), settle(a.apply([{ op: 'putMeta', row: { key: 'k', value: 'v' } }])),
      settle(b.apply([pasid(77, 'vb')])), settle(b.apply(bind('vb'))),
    ]);
    const [aIns, aBind, aMeta, bIns, bBind] = out;
    assert.equal(aMeta, 'ok', 'an unrelated batch of the same tick commits');
    assert.equal([aIns, bIns].filter((x) => x === 'ok').length, 1, `one insert wins: ${String(aIns)} / ${String(bIns)}`);
    const [winner, lost, lostBind, wonBind] = aIns === 'ok' ? ['va', bIns, bBind, aBind] : ['vb', aIns, aBind, bBind];
    assert.ok(lost instanceof IoasidError && lost.code === 'EEXIST' && lost.details['conflict'] === true, String(lost));
    assert.ok(lostBind instanceof IoasidError && lostBind.code === 'EAGAIN', `the binding made on it fails too: ${String(lostBind)}`);
    assert.equal(wonBind, 'ok');
    await a.waitApplied(await a.barrier());
    await b.waitApplied(await a.barrier());
    for (const s of [a, b]) assert.deepEqual(s.pasidRows(), [{ pasid: 77, vm: winner, allocatedAt: T }], `${s.hostId}'s mirror has what etcd has`);
    await a.close();
    await b.close();
    const { state } = await open('ca', 'cascade');
    assert.deepEqual(state.pasids, [{ pasid: 77, vm: winner, allocatedAt: T }]);
    assert.deepEqual(state.bindings, [{ pasid: 77, vm: winner, bdf: bdf(winner), boundAt: T }]);
    assert.deepEqual(state.meta, [{ key: 'k', value: 'v' }]);
  });
});
