/**
 * An instance dies and comes back (docs/cluster.md, "an instance dies"). Two real `ioasid serve`
 * processes in cluster mode (test/fixtures/cluster-server.ts) share a domain on a 3-member etcd
 * cluster. Under load on both, host A is SIGKILLed and started again with the same --host-id:
 *  - it restores its state from etcd: its VMs, their PASIDs (every acknowledged one, for its VM),
 *    bindings, and the VMs' tokens; it serves them again at once;
 *  - host B never stopped serving its own VMs, and agrees with A on every PASID's owner;
 *  - while A was dead its VMs were not served by anyone (B answered 421 EREMOTE naming A), and
 *    nothing of A's was freed;
 *  - a VM migrates from the restarted A to B and back, keeping its PASIDs;
 *  - SIGTERM exits 0 and removes only the host key (B sees A as not alive; A's VMs stay).
 */
import { after, before, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { EtcdCluster, ETCD_SKIP } from './helpers/etcd-cluster.ts';

const serverScript = fileURLToPath(new URL('./fixtures/cluster-server.ts', import.meta.url));
const ADMIN = 'restart-admin-token-0123456789abcdef';
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

let etcd: EtcdCluster | undefined;
let dir = '';
const children = new Set<ChildProcess>();
before(async () => {
  if (ETCD_SKIP !== null) return;
  etcd = await EtcdCluster.start();
  dir = mkdtempSync(join(tmpdir(), 'ioasid-cluster-restart-'));
  writeFileSync(join(dir, 'admin.token'), `${ADMIN}\n`, { mode: 0o600 });
});
after(async () => {
  for (const c of children) c.kill('SIGKILL');
  await etcd?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

interface Server {
  readonly child: ChildProcess;
  readonly url: string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function startServer(hostId: string): Promise<Server> {
  const c = etcd as EtcdCluster;
  const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), serverScript, '--store', c.spec, '--host-id', hostId, '--domain', 'rs', '--port', '0', '--admin-token-file', join(dir, 'admin.token')], {
    cwd: dir, stdio: ['ignore', 'ignore', 'pipe'],
  });
  children.add(child);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => {
    children.delete(child);
    resolve({ code, signal });
  }));
  return new Promise((resolve, reject) => {
    let err = '';
    child.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /listening on (http:\/\/[^\s]+)/.exec(err);
      if (m) resolve({ child, url: (m[1] as string).replace(/[),]+$/, ''), exited });
    });
    void exited.then(() => reject(new Error(`server ${hostId} exited before listening: ${err}`)));
    setTimeout(() => reject(new Error(`server ${hostId} did not start: ${err}`)), 20_000).unref();
  });
}

async function call(s: Server, method: string, path: string, body?: unknown, token = ADMIN): Promise<{ status: number; body: any }> {
  const res = await fetch(`${s.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

it('an instance killed under load restores its state from etcd when it restarts', { skip: ETCD_SKIP ?? false, timeout: 120_000 }, async (t) => {
  let a = await startServer('ha');
  const b = await startServer('hb');
  const tokens = new Map<string, string>();
  for (const [s, id] of [[a, 'va'], [a, 'va2'], [b, 'vb']] as const) {
    const r = await call(s, 'POST', '/v1/vms', { id, quota: 0, viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }] });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    tokens.set(id, r.body.token);
  }
  const bound = (await call(a, 'POST', '/v1/vms/va/pasids', { count: 2 }, tokens.get('va'))).body.pasids as number[];
  assert.equal((await call(a, 'POST', `/v1/vms/va/pasids/${bound[0]}/bindings`, { bdf: '0000:00:02.0' }, tokens.get('va'))).status, 201);

  // Load on both hosts; the ledger keeps what was acknowledged and what was in flight.
  const acked = new Map<string, Set<number>>([['va', new Set(bound)], ['va2', new Set()], ['vb', new Set()]]);
  let inFlightAllocs = 0;
  let stop = false;
  const worker = async (vm: string, host: () => Server) => {
    const mine = acked.get(vm) as Set<number>;
    for (let k = 0; !stop; k++) {
      const s = host();
      try {
        if (mine.size > 30 && k % 3 === 0) {
          const p = [...mine].find((x) => !bound.includes(x)) as number;
          mine.delete(p);
          const r = await call(s, 'DELETE', `/v1/vms/${vm}/pasids/${p}`, undefined, tokens.get(vm));
          if (r.status !== 204) mine.add(p);
        } else {
          inFlightAllocs++;
          const r = await call(s, 'POST', `/v1/vms/${vm}/pasids`, { count: 2 }, tokens.get(vm));
          if (r.status === 201) {
            inFlightAllocs--;
            for (const p of r.body.pasids as number[]) mine.add(p);
          }
        }
      } catch (e) {
        // The connection died with the killed process: outcome unknown, counted as in flight.
        if (!s.child.killed && s.child.exitCode === null) throw new Error(`request of ${vm} failed while its host lived: ${String(e)}`);
        await sleep(50);
      }
    }
  };
  const ws = [worker('va', () => a), worker('va2', () => a), worker('vb', () => b), worker('vb', () => b)];
  t.after(() => {
    stop = true;
  });
  await sleep(800);
  a.child.kill('SIGKILL');
  await a.exited;
  // While A is dead: B serves its own VM, refuses A's (naming A), and A's PASIDs stay.
  await sleep(300);
  const refused = await call(b, 'POST', '/v1/vms/va/pasids', {}, tokens.get('va'));
  assert.equal(refused.status, 421);
  assert.equal(refused.body.code, 'EREMOTE');
  assert.equal(refused.body.details.host, 'ha');
  const bNs = await call(b, 'GET', '/v1/vms/va/pasids', undefined, tokens.get('va'));
  for (const p of acked.get('va') as Set<number>) assert.ok((bNs.body.pasids as number[]).includes(p), `acknowledged PASID ${p} of va still held while ha is dead`);
  // A comes back under the same host id.
  a = await startServer('ha');
  await sleep(600);
  stop = true;
  await Promise.all(ws);

  // A restored everything: VMs, PASIDs (all acknowledged ones), bindings, tokens.
  for (const vm of ['va', 'va2']) {
    const r = await call(a, 'GET', `/v1/vms/${vm}/pasids`, undefined, tokens.get(vm));
    assert.equal(r.status, 200, 'the VM token still works after the restart');
    const have = new Set(r.body.pasids as number[]);
    for (const p of acked.get(vm) as Set<number>) assert.ok(have.has(p), `acknowledged PASID ${p} of ${vm} restored`);
    assert.ok(have.size - (acked.get(vm) as Set<number>).size <= 2 * inFlightAllocs + 2, `${vm}: ${have.size} held, ${(acked.get(vm) as Set<number>).size} acknowledged`);
  }
  assert.deepEqual((await call(a, 'GET', '/v1/vms/va', undefined, tokens.get('va'))).body.bindings, [{ bdf: '0000:00:02.0', pasid: bound[0] }]);
  // Both hosts agree on the whole namespace and on where VMs run.
  await sleep(300);
  assert.deepEqual((await call(a, 'GET', '/v1/namespace')).body, (await call(b, 'GET', '/v1/namespace')).body);
  const st = (await call(b, 'GET', '/v1/cluster')).body;
  assert.deepEqual(st.vms.map((v: { id: string; host: string }) => `${v.id}@${v.host}`), ['va@ha', 'va2@ha', 'vb@hb']);
  assert.equal(st.inconsistencies, 0);

  // Migration from the restarted A to B and back: the guest keeps every PASID.
  const before = (await call(a, 'GET', '/v1/vms/va/pasids', undefined, tokens.get('va'))).body.pasids as number[];
  const m1 = await call(a, 'POST', '/v1/vms/va/migrate', { to: 'hb' });
  assert.equal(m1.status, 200, JSON.stringify(m1.body));
  assert.equal((await call(a, 'POST', '/v1/vms/va/pasids', {}, tokens.get('va'))).status, 421);
  const onB = await call(b, 'POST', '/v1/vms/va/pasids', {}, tokens.get('va'));
  assert.equal(onB.status, 201, 'B serves the VM right after the migration');
  const m2 = await call(b, 'POST', '/v1/vms/va/migrate', { to: 'ha' });
  assert.equal(m2.status, 200);
  const after = (await call(a, 'GET', '/v1/vms/va/pasids', undefined, tokens.get('va'))).body.pasids as number[];
  assert.deepEqual(after, [...before, ...(onB.body.pasids as number[])].sort((x, y) => x - y));

  // SIGTERM: exit 0; the host key goes, the VMs stay.
  a.child.kill('SIGTERM');
  assert.deepEqual(await a.exited, { code: 0, signal: null });
  await sleep(300);
  const st2 = (await call(b, 'GET', '/v1/cluster')).body;
  assert.equal(st2.hosts.find((h: { id: string }) => h.id === 'ha').alive, false);
  assert.deepEqual((await call(b, 'GET', '/v1/vms/va/pasids', undefined, tokens.get('va'))).body.pasids, after);
  b.child.kill('SIGTERM');
  assert.deepEqual(await b.exited, { code: 0, signal: null });
  t.diagnostic(`acknowledged: va ${acked.get('va')?.size}, va2 ${acked.get('va2')?.size}, vb ${acked.get('vb')?.size}; in flight at the kill ${inFlightAllocs}`);
});
