/**
 * One PASID namespace across hosts, on a real 3-member etcd cluster (docs/cluster.md). Instances
 * run in process (each a PasidAuthority with its own etcd client, driven through fastify inject):
 *  - two, then three instances allocate concurrently (narrow ranges included, so blocks run out
 *    and hosts borrow): no PASID is ever acknowledged to two VMs, and afterwards every instance,
 *    etcd, and the system's invariants (docs/scenarios.md) agree;
 *  - a VM is served by its host only (others: 421 EREMOTE naming it and its URL), reads work anywhere, the
 *    namespace listing is the whole domain, VM ids are unique across the domain;
 *  - VMs migrate back and forth under load, following their host: every guest keeps its PASIDs
 *    and bindings, exactly as acknowledged;
 *  - blocks go back when empty; a host's clean stop frees nothing; an operator's reclaim fences a
 *    host and frees what it held; a second incarnation of a host id fences the first.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IoasidError } from '../src/core/index.ts';
import { openStore, parseEtcdSpec, EtcdStore } from '../src/store/index.ts';
import { startServer } from '../src/service/index.ts';
import { ETCD_SKIP } from './helpers/etcd-cluster.ts';
import { checkDomain, clusterSuite, readPasidKeys, settleAll, type Instance } from './fixtures/cluster-instances.ts';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

describe('cluster: the etcd store spec', () => {
  it('etcd://HOST:PORT[,HOST:PORT...] names every member; malformed endpoints are EINVAL', () => {
    assert.deepEqual(parseEtcdSpec('etcd://10.0.0.1:2379,10.0.0.2:2379,[::1]:2379'), ['10.0.0.1:2379', '10.0.0.2:2379', '[::1]:2379']);
    for (const bad of ['etcd://', 'etcd://host', 'etcd://h:0', 'etcd://h:99999', 'etcds://h', 'etcd://a b:1', 'etcdx://h:1']) {
      assert.throws(() => parseEtcdSpec(bad), (e) => e instanceof IoasidError && e.code === 'EINVAL', bad);
    }
    const s = openStore('etcd://127.0.0.1:1,127.0.0.1:2', { hostId: 'h1', domain: 'd1' });
    assert.equal(s.kind, 'etcd');
    assert.ok(s instanceof EtcdStore);
    assert.deepEqual(s.endpoints, ['127.0.0.1:1', '127.0.0.1:2']);
    assert.equal(s.hostId, 'h1');
    assert.throws(() => openStore('etcd://127.0.0.1:1', { hostId: 'bad host!' }), (e) => e instanceof IoasidError && e.code === 'EINVAL');
    assert.throws(() => openStore('etcd://127.0.0.1:1', { domain: '' }), (e) => e instanceof IoasidError && e.code === 'EINVAL');
  });

  it('--host-id and --domain need an etcd store; the cluster routes answer EOPNOTSUPP on a local store', async () => {
    await assert.rejects(startServer({ store: 'memory', hostId: 'h1', port: 0, logLevel: 'silent', dashboard: false, say: () => {} }), (e) => e instanceof IoasidError && e.code === 'EINVAL');
    // The admin token it creates goes to a temporary folder, not ./var of the checkout.
    const stateDir = mkdtempSync(join(tmpdir(), 'ioasid-cluster-local-'));
    const s = await startServer({ store: 'memory', port: 0, logLevel: 'silent', dashboard: false, say: () => {}, stateDir });
    try {
      assert.throws(() => s.authority.clusterStatus(), (e) => e instanceof IoasidError && e.code === 'EOPNOTSUPP');
      await assert.rejects(s.authority.migrateVm('vm1', 'h2'), (e) => e instanceof IoasidError && e.code === 'EOPNOTSUPP');
    } finally {
      await s.close();
      rmSync(stateDir, { recursive: true, force: true });
    }
  });
});

describe('cluster: one namespace across hosts on a 3-member etcd cluster', { skip: ETCD_SKIP ?? false }, () => {
  const { start, etcd } = clusterSuite();

  it('two, then three instances allocating concurrently: no PASID ever has two owners', async () => {
    const d = 'conc';
    const inst = [await start('h1', d), await start('h2', d)];
    const tokens = new Map<string, string>();
    const home = new Map<string, Instance>();
    const makeVms = async (i: Instance) => {
      for (const n of [0, 1]) {
        const id = `${i.id}-vm${n}`;
        const r = await i.call('POST', '/v1/vms', { id, quota: 0 });
        assert.equal(r.status, 201, JSON.stringify(r.body));
        tokens.set(id, r.body.token);
        home.set(id, i);
      }
    };
    for (const i of inst) await makeVms(i);
    /** pasid -> VM, for every acknowledged allocation not yet sent to be freed. */
    const held = new Map<number, string>();
    const mine = new Map<string, number[]>();
    const violations: string[] = [];
    let acks = 0;
    let lostRaces = 0;
    let stop = false;
    const worker = async (vm: string, seed: number) => {
      const i = home.get(vm) as Instance;
      const tok = tokens.get(vm) as string;
      let x = seed;
      const rnd = () => ((x = (x * 1103515245 + 12345) & 0x7fffffff), x / 0x80000000);
      const list = mine.get(vm) ?? [];
      mine.set(vm, list);
      while (!stop) {
        if (list.length > 0 && rnd() < 0.4) {
          const p = list.splice(Math.floor(rnd() * list.length), 1)[0] as number;
          held.delete(p);
          const r = await i.call('DELETE', `/v1/vms/${vm}/pasids/${p}`, undefined, tok);
          if (r.status !== 204) {
            violations.push(`free of ${p} by ${vm}: ${r.status} ${JSON.stringify(r.body)}`);
            const other = held.get(p);
            if (other !== undefined) violations.push(`PASID ${p} is held by ${other} while ${vm} failed to free it`);
            held.set(p, vm);
            list.push(p);
          }
          continue;
        }
        // A narrow range for a third of the requests: 256 PASIDs shared by every host.
        const narrow = rnd() < 0.33;
        const body = { count: rnd() < 0.3 ? 4 : 1, ...(narrow ? { min: 1, max: 255 } : {}) };
        const r = await i.call('POST', `/v1/vms/${vm}/pasids`, body, tok);
        if (r.status === 201) {
          acks++;
          for (const p of r.body.pasids as number[]) {
            const other = held.get(p);
            if (other !== undefined) violations.push(`PASID ${p} acknowledged to ${vm} while ${other} holds it`);
            if (narrow && (p < 1 || p > 255)) violations.push(`PASID ${p} outside [1, 255]`);
            held.set(p, vm);
            list.push(p);
          }
        } else if (r.status === 409 && r.body.code === 'EAGAIN') {
          // Bounded retries (docs/cluster.md): in the narrow range every host races for the same
          // 255 PASIDs, and a request that loses too many races is refused, changing nothing.
          if (!narrow) violations.push(`alloc for ${vm} outside the narrow range lost its races: ${JSON.stringify(r.body)}`);
          lostRaces++;
        } else if (!(r.status === 409 && r.body.code === 'ENOSPC')) {
          violations.push(`alloc for ${vm}: ${r.status} ${JSON.stringify(r.body)}`);
        }
      }
    };
    const run = async (ms: number) => {
      stop = false;
      const ws = [...home.keys()].flatMap((vm, k) => [worker(vm, 17 + k * 7), worker(vm, 91 + k * 13)]);
      await sleep(ms);
      stop = true;
      await Promise.all(ws);
    };
    await run(2500);
    const two = acks;
    inst.push(await start('h3', d));
    await makeVms(inst[2] as Instance);
    await run(2500);
    assert.deepEqual(violations, []);
    assert.ok(two > 100 && acks - two > 100, `allocations acknowledged: ${two} with 2 hosts, ${acks - two} with 3`);
    assert.ok(lostRaces * 20 < acks, `${lostRaces} requests lost their races, against ${acks} acknowledged`);
    await checkDomain(inst);
    // What the clients hold is exactly what the domain holds.
    const etcdNow = await readPasidKeys(inst[0]!.store);
    assert.deepEqual([...etcdNow].sort((a, b) => a[0] - b[0]), [...held].sort((a, b) => a[0] - b[0]));
    // Narrow-range allocations made every host take PASIDs in [1, 255], some in others' blocks.
    const low = [...etcdNow.entries()].filter(([p]) => p <= 255);
    assert.ok(new Set(low.map(([, vm]) => (vm as string).split('-')[0])).size >= 2, 'several hosts allocated in [1, 255]');
  });

  it('a VM is served by its host only: others answer 421 EREMOTE naming it, reads work anywhere, the namespace is the whole domain', async () => {
    const d = 'serve';
    const a = await start('ha', d);
    const b = await start('hb', d);
    await a.store.advertise('http://ha.example:7070');
    const r = await a.call('POST', '/v1/vms', { id: 'vmx', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }] });
    assert.equal(r.status, 201);
    const tok = r.body.token as string;
    assert.equal(r.body.vm.host, 'ha');
    const p = (await a.call('POST', '/v1/vms/vmx/pasids', { count: 2 }, tok)).body.pasids as number[];
    await settleAll([a, b]);
    for (const [method, url, body] of [
      ['POST', '/v1/vms/vmx/pasids', {}],
      ['DELETE', `/v1/vms/vmx/pasids/${p[0]}`, undefined],
      ['POST', `/v1/vms/vmx/pasids/${p[0]}/bindings`, { bdf: '0000:00:02.0' }],
      ['POST', '/v1/vms/vmx/viommus/0/mmio', { op: 'read', offset: 0xe00, size: 8 }],
      ['POST', '/v1/vms/vmx/migrate', { to: 'ha' }],
    ] as const) {
      const x = await b.call(method, url, body, method === 'POST' && url.endsWith('migrate') ? undefined : tok);
      assert.equal(x.status, 421, `${method} ${url}: ${JSON.stringify(x.body)}`);
      assert.equal(x.body.code, 'EREMOTE');
      assert.equal(x.body.details.host, 'ha');
      assert.equal(x.body.details.url, 'http://ha.example:7070', 'the owner\'s advertised URL');
      assert.match(x.body.message, /runs on host ha/);
    }
    assert.equal((await b.call('DELETE', '/v1/vms/vmx')).status, 421);
    // Reads: the VM, its PASIDs, the namespace (the whole domain) on every host.
    assert.deepEqual((await b.call('GET', '/v1/vms/vmx/pasids', undefined, tok)).body.pasids, p);
    assert.equal((await b.call('GET', '/v1/vms/vmx', undefined, tok)).body.host, 'ha');
    const rb = await b.call('POST', '/v1/vms', { id: 'vmy' });
    await b.call('POST', '/v1/vms/vmy/pasids', { count: 3 }, rb.body.token);
    await settleAll([a, b]);
    const na = (await a.call('GET', '/v1/namespace')).body;
    const nb = (await b.call('GET', '/v1/namespace')).body;
    assert.deepEqual(na, nb);
    assert.deepEqual(na.owners.map((o: { owner: string }) => o.owner).sort(), ['vmx', 'vmy']);
    // The cluster status: both hosts alive, each VM where it runs.
    const st = (await a.call('GET', '/v1/cluster')).body;
    assert.equal(st.host, 'ha');
    assert.deepEqual(st.hosts.map((h: { id: string; alive: boolean }) => [h.id, h.alive]), [['ha', true], ['hb', true]]);
    assert.deepEqual(st.vms.map((v: { id: string; host: string }) => [v.id, v.host]), [['vmx', 'ha'], ['vmy', 'hb']]);
    // Events: a remote allocation is announced on every host (the dashboard's map stays whole).
    const seen: number[] = [];
    const off = a.authority.on((e) => {
      if (e.type === 'alloc' && e.vm === 'vmy') seen.push(...e.pasids);
    });
    const q = (await b.call('POST', '/v1/vms/vmy/pasids', {}, rb.body.token)).body.pasids as number[];
    await settleAll([a, b]);
    off();
    assert.deepEqual(seen, q);
    await checkDomain([a, b]);
  });

  it("a guest's VCMD allocations (trapped registers) go through the cluster, and after a migration the destination's vIOMMU answers", async () => {
    const d = 'vcmd';
    const a = await start('va', d);
    const b = await start('vb', d);
    const r = await a.call('POST', '/v1/vms', { id: 'gvm', viommus: [{ segment: 0 }] });
    const tok = r.body.token as string;
    const vcmdAlloc = async (i: Instance): Promise<number> => {
      assert.equal((await i.call('POST', '/v1/vms/gvm/viommus/0/mmio', { op: 'write', offset: 0xe00, size: 8, value: '0x1' }, tok)).status, 200);
      let rsp = 1n;
      for (let n = 0; n < 200 && (rsp & 1n) === 1n; n++) {
        await sleep(2);
        rsp = BigInt((await i.call('POST', '/v1/vms/gvm/viommus/0/mmio', { op: 'read', offset: 0xe10, size: 8 }, tok)).body.value);
      }
      assert.equal((rsp >> 1n) & 0x7fn, 0n, 'VCMD success');
      return Number((rsp >> 16n) & 0xfffffn);
    };
    const p1 = await vcmdAlloc(a);
    assert.equal((await readPasidKeys(a.store)).get(p1), 'gvm', 'the PASID is in etcd before the guest sees it');
    // b refuses the VM's registers (once it has applied the VM's creation, it knows the token);
    // after the migration it serves them, and a refuses.
    await settleAll([a, b]);
    assert.equal((await b.call('POST', '/v1/vms/gvm/viommus/0/mmio', { op: 'read', offset: 0xe10, size: 8 }, tok)).status, 421);
    assert.equal((await a.call('POST', '/v1/vms/gvm/migrate', { to: 'vb' })).status, 200);
    await settleAll([a, b]);
    assert.equal((await a.call('POST', '/v1/vms/gvm/viommus/0/mmio', { op: 'read', offset: 0xe10, size: 8 }, tok)).status, 421);
    const p2 = await vcmdAlloc(b);
    assert.notEqual(p2, p1);
    await settleAll([a, b]);
    assert.deepEqual(a.authority.vm('gvm').pasids(), [p1, p2].sort((x, y) => x - y));
    await checkDomain([a, b]);
  });

  it('VM ids are unique across the domain: two hosts creating one id at once, one wins (409 EEXIST)', async () => {
    const d = 'ids';
    const a = await start('ia', d);
    const b = await start('ib', d);
    for (let k = 0; k < 5; k++) {
      const [x, y] = await Promise.all([a.call('POST', '/v1/vms', { id: `same${k}` }), b.call('POST', '/v1/vms', { id: `same${k}` })]);
      assert.deepEqual([x.status, y.status].sort(), [201, 409], JSON.stringify([x.body, y.body]));
      assert.equal((x.status === 409 ? x : y).body.code, 'EEXIST');
    }
    await checkDomain([a, b]);
    assert.equal(a.authority.listVms().length, 5);
  });

  it('migrating VMs back and forth under load: every guest keeps its PASIDs and bindings, invariants hold on every host', async () => {
    const d = 'mig';
    const inst = [await start('m1', d), await start('m2', d), await start('m3', d)];
    const byId = new Map(inst.map((i) => [i.id, i]));
    const vms = ['g0', 'g1', 'g2', 'g3'];
    const tokens = new Map<string, string>();
    const ledger = new Map<string, Set<number>>();
    const bound = new Map<string, Set<number>>();
    for (const [k, vm] of vms.entries()) {
      const i = inst[k % 3] as Instance;
      const r = await i.call('POST', '/v1/vms', { id: vm, quota: 200, viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0', pasidBits: 20 }] });
      assert.equal(r.status, 201);
      tokens.set(vm, r.body.token);
      ledger.set(vm, new Set());
      bound.set(vm, new Set());
    }
    const where = new Map(vms.map((vm, k) => [vm, inst[k % 3] as Instance]));
    const problems: string[] = [];
    let redirects = 0;
    let acks = 0;
    /** Call the VM's host; on 421 EREMOTE naming another host, follow it (a bounded number of times). */
    const onHost = async (vm: string, method: 'POST' | 'DELETE', url: string, body?: unknown) => {
      for (let n = 0; n < 6; n++) {
        const i = where.get(vm) as Instance;
        const r = await i.call(method, url, body, tokens.get(vm));
        if (r.status === 421 && r.body.code === 'EREMOTE' && typeof r.body.details?.host === 'string' && byId.has(r.body.details.host)) {
          redirects++;
          where.set(vm, byId.get(r.body.details.host) as Instance);
          continue;
        }
        return r;
      }
      throw new Error(`VM ${vm} was not served after 6 redirects`);
    };
    let stop = false;
    const busy = new Set<string>();
    const worker = async (vm: string) => {
      const mineNow = ledger.get(vm) as Set<number>;
      const b = bound.get(vm) as Set<number>;
      let k = 0;
      // The two workers of a VM never act on one PASID at once (`busy`), as one guest driver would.
      const pick = () => [...mineNow].find((p) => !b.has(p) && !busy.has(`${vm}/${p}`));
      while (!stop) {
        k++;
        const p = pick();
        if (mineNow.size > 40 && p !== undefined) {
          busy.add(`${vm}/${p}`);
          const r = await onHost(vm, 'DELETE', `/v1/vms/${vm}/pasids/${p}`);
          if (r.status === 204) mineNow.delete(p);
          else problems.push(`free ${vm}/${p}: ${r.status} ${JSON.stringify(r.body)}`);
          busy.delete(`${vm}/${p}`);
        } else if (k % 5 === 0 && p !== undefined && b.size < 8) {
          busy.add(`${vm}/${p}`);
          const r = await onHost(vm, 'POST', `/v1/vms/${vm}/pasids/${p}/bindings`, { bdf: '0000:00:02.0' });
          if (r.status === 201) b.add(p);
          else problems.push(`bind ${vm}/${p}: ${r.status} ${JSON.stringify(r.body)}`);
          busy.delete(`${vm}/${p}`);
        } else {
          const r = await onHost(vm, 'POST', `/v1/vms/${vm}/pasids`, { count: k % 3 === 0 ? 3 : 1 });
          if (r.status === 201) {
            acks++;
            for (const x of r.body.pasids as number[]) mineNow.add(x);
          } else problems.push(`alloc ${vm}: ${r.status} ${JSON.stringify(r.body)}`);
        }
      }
    };
    const migrations: string[] = [];
    const migrator = async () => {
      for (let round = 0; round < 12; round++) {
        const vm = vms[round % vms.length] as string;
        const from = where.get(vm) as Instance;
        const to = inst[(inst.indexOf(from) + 1 + (round % 2)) % 3] as Instance;
        const r = await from.call('POST', `/v1/vms/${vm}/migrate`, { to: to.id });
        if (r.status === 200) {
          migrations.push(`${vm}:${from.id}->${to.id}`);
          where.set(vm, to);
        } else if (!(r.status === 421 && r.body.code === 'EREMOTE')) problems.push(`migrate ${vm}: ${r.status} ${JSON.stringify(r.body)}`);
        await sleep(150);
      }
    };
    const ws = vms.flatMap((vm) => [worker(vm), worker(vm)]);
    await migrator();
    stop = true;
    await Promise.all(ws);
    assert.deepEqual(problems, []);
    assert.ok(migrations.length >= 10, `migrations: ${migrations.join(' ')}`);
    assert.ok(acks > 100, `allocations acknowledged during the migrations: ${acks}`);
    await checkDomain(inst);
    for (const vm of vms) {
      // Exactly what the guest was acknowledged, on every host, and served by one host only.
      for (const i of inst) {
        assert.deepEqual(i.authority.vm(vm).pasids(), [...(ledger.get(vm) as Set<number>)].sort((x, y) => x - y), `PASIDs of ${vm} on ${i.id}`);
        assert.deepEqual(i.authority.vm(vm).bindings().map(([, p]) => p).sort((x, y) => x - y), [...(bound.get(vm) as Set<number>)].sort((x, y) => x - y), `bindings of ${vm} on ${i.id}`);
      }
      assert.equal(inst.filter((i) => i.cluster.serves(vm)).length, 1, `${vm} served by exactly one host`);
    }
    // The VMs can still be destroyed by their hosts, which frees everything everywhere.
    for (const vm of vms) {
      const i = inst.find((x) => x.cluster.serves(vm)) as Instance;
      assert.equal((await i.call('DELETE', `/v1/vms/${vm}`)).status, 200);
    }
    await checkDomain(inst);
    assert.equal((await readPasidKeys(inst[0]!.store)).size, 0);
  });

  it('blocks are claimed as needed and go back when empty (one spare kept); a destroy of a big VM is chunked', async () => {
    const d = 'blocks';
    const a = await start('ba', d, { releaseDelayMs: 200 });
    const r = await a.call('POST', '/v1/vms', { id: 'big', quota: 0 });
    const tok = r.body.token as string;
    const got: number[] = [];
    for (let k = 0; k < 5; k++) got.push(...((await a.call('POST', '/v1/vms/big/pasids', { count: 60 }, tok)).body.pasids as number[]));
    assert.equal(got.length, 300);
    assert.ok(a.cluster.ownBlocks().length >= 5, `blocks held: ${a.cluster.ownBlocks().length}`);
    for (const p of got.slice(0, 200)) assert.equal((await a.call('DELETE', `/v1/vms/big/pasids/${p}`, undefined, tok)).status, 204);
    await sleep(900);
    const left = a.cluster.ownBlocks();
    const need = new Set(got.slice(200).map((p) => p >> 6));
    assert.ok(left.length <= need.size + 1, `blocks after the frees: ${left.length} for ${need.size} in use`);
    // etcd agrees with the host's own view of its blocks.
    const keys = await a.store.client.getAll().prefix(a.store.keys.blocks).keys();
    assert.equal(keys.length, left.length);
    // 100 PASIDs left: the destroy takes more than one transaction (at most 120 writes each).
    assert.equal((await a.call('DELETE', '/v1/vms/big')).status, 200);
    assert.equal((await readPasidKeys(a.store)).size, 0);
    await checkDomain([a]);
  });

  it("a host's clean stop frees nothing; an operator's reclaim fences a host and frees its VMs' PASIDs and blocks", async () => {
    const d = 'reclaim';
    const a = await start('ra', d);
    const b = await start('rb', d);
    const c = await start('rc', d);
    const rb = await b.call('POST', '/v1/vms', { id: 'onb', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:03.0' }] });
    const pb = (await b.call('POST', '/v1/vms/onb/pasids', { count: 70 }, rb.body.token)).body.pasids as number[];
    await b.call('POST', `/v1/vms/onb/pasids/${pb[0]}/bindings`, { bdf: '0000:00:03.0' }, rb.body.token);
    const rc = await c.call('POST', '/v1/vms', { id: 'onc' });
    const pc = (await c.call('POST', '/v1/vms/onc/pasids', { count: 5 }, rc.body.token)).body.pasids as number[];
    // Reclaim of a live host: refused.
    const busy = await a.call('POST', '/v1/cluster/hosts/rb/reclaim', {});
    assert.equal(busy.status, 409);
    assert.equal(busy.body.code, 'EBUSY');
    // c stops cleanly: its lease (host key) goes, its VM and PASIDs stay.
    await c.close();
    await settleAll([a, b]);
    assert.equal((await a.call('GET', '/v1/cluster')).body.hosts.find((h: { id: string }) => h.id === 'rc').alive, false);
    assert.deepEqual(a.authority.vm('onc').pasids(), pc);
    assert.deepEqual((await readPasidKeys(a.store)).get(pc[0] as number), 'onc');
    // A forced reclaim of the live host b: its lease is revoked, it is fenced, its VM freed.
    const rep = await a.call('POST', '/v1/cluster/hosts/rb/reclaim', { force: true });
    assert.equal(rep.status, 200, JSON.stringify(rep.body));
    assert.deepEqual(rep.body.vms, ['onb']);
    assert.equal(rep.body.pasids, 70);
    assert.equal(rep.body.bindings, 1);
    assert.ok(rep.body.blocks >= 2);
    // The zombie b can no longer change anything.
    const z = await b.call('POST', '/v1/vms', { id: 'zombie' });
    assert.equal(z.status, 503);
    assert.equal(z.body.code, 'ENODEV');
    assert.match(z.body.message, /fenced/);
    assert.ok(b.store.fenced !== null);
    // Reclaim of the stopped host c (no force needed), then everything it held is free.
    const rep2 = await a.call('POST', '/v1/cluster/hosts/rc/reclaim', {});
    assert.equal(rep2.status, 200, JSON.stringify(rep2.body));
    assert.deepEqual(rep2.body.vms, ['onc']);
    await settleAll([a]);
    assert.equal((await readPasidKeys(a.store)).size, 0);
    assert.deepEqual(a.authority.listVms(), []);
    await checkDomain([a]);
    // The freed PASIDs are reusable.
    const ra = await a.call('POST', '/v1/vms', { id: 'ona', quota: 0 });
    const pa = (await a.call('POST', '/v1/vms/ona/pasids', { count: 70, max: 200 }, ra.body.token)).body.pasids as number[];
    assert.equal(pa.length, 70);
  });

  it('a second incarnation of a host id restores its state from etcd and fences the first', async () => {
    const d = 'restart';
    const a1 = await start('sa', d);
    const other = await start('sb', d);
    const r = await a1.call('POST', '/v1/vms', { id: 'keep', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }] });
    const tok = r.body.token as string;
    const ps = (await a1.call('POST', '/v1/vms/keep/pasids', { count: 10 }, tok)).body.pasids as number[];
    await a1.call('POST', `/v1/vms/keep/pasids/${ps[3]}/bindings`, { bdf: '0000:00:02.0' }, tok);
    const a2 = await start('sa', d);
    assert.deepEqual(a2.authority.vm('keep').pasids(), ps);
    assert.deepEqual(a2.authority.vm('keep').bindings(), [['0000:00:02.0', ps[3]]]);
    assert.equal(a2.authority.identify(tok).vm, 'keep', 'the VM token still works');
    const more = await a2.call('POST', '/v1/vms/keep/pasids', {}, tok);
    assert.equal(more.status, 201);
    // The first incarnation is fenced: its writes fail, nothing it sends can commit.
    const old = await a1.call('POST', '/v1/vms/keep/pasids', {}, tok);
    assert.equal(old.status, 503);
    assert.match(old.body.message, /fenced/);
    await a1.close();
    await checkDomain([a2, other]);
    assert.deepEqual(other.authority.vm('keep').pasids(), [...ps, ...(more.body.pasids as number[])].sort((x, y) => x - y));
  });
});
