/**
 * Remote guests (docs/remote-guest.md): two guest kernels in two processes, each booting a RemoteGuest
 * against one service in this process, whose vIOMMU registers are served through the trapped MMIO
 * endpoint. The custom allocator's flow across processes: allocation through VCMD, SVA binds programmed on
 * the host, min/max (device PASID width, range extension), ownership at the register level, quota,
 * and the host's invariants afterwards. Also the synchronous transport on its own.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isIoasidError } from '../src/core/index.ts';
import type { VmView } from '../src/host/index.ts';
import { checkInvariants } from '../src/sim/index.ts';
import { IoasidClient } from '../src/client/index.ts';
import { RemoteGuest, RemoteMmio, SyncServiceChannel } from '../src/remote/index.ts';
import { startServer, type RunningServer } from '../src/service/index.ts';

const ADMIN = 'admin-token-for-remote-guest-tests-0123456789';
const FIXTURE = fileURLToPath(new URL('./fixtures/remote-guest-process.ts', import.meta.url));
const TSX = import.meta.resolve('tsx');
/** The guests' working folder: a temporary one, never the checkout. */
const GUEST_CWD = tmpdir();

type Line = Record<string, unknown> & { op: string; ok: boolean };

/** A guest process: its stdout as JSON lines, its stdin as a step channel. */
class GuestProcess {
  readonly child: ChildProcess;
  readonly lines: Line[] = [];
  stderr = '';
  readonly #queue: Line[] = [];
  readonly #waiters: ((l: Line | null) => void)[] = [];
  #ended = false;
  readonly exited: Promise<number | null>;

  constructor(url: string, vm: string, token: string, plan: unknown[]) {
    this.child = spawn(process.execPath, ['--import', TSX, FIXTURE, '--url', url, '--vm', vm, '--plan', JSON.stringify(plan)], {
      cwd: GUEST_CWD,
      env: { ...process.env, REMOTE_GUEST_TOKEN: token },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.exited = new Promise((resolve) => this.child.once('exit', (code) => resolve(code)));
    this.child.stderr?.on('data', (d: Buffer) => {
      this.stderr += d.toString();
    });
    const rl = createInterface({ input: this.child.stdout as NodeJS.ReadableStream });
    rl.on('line', (text) => {
      const l = JSON.parse(text) as Line;
      this.lines.push(l);
      const w = this.#waiters.shift();
      if (w !== undefined) w(l);
      else this.#queue.push(l);
    });
    rl.on('close', () => {
      this.#ended = true;
      for (const w of this.#waiters.splice(0)) w(null);
    });
  }

  /** The next result line (fails if the process ends first). */
  async next(): Promise<Line> {
    const l = this.#queue.shift() ?? (this.#ended ? null : await new Promise<Line | null>((r) => this.#waiters.push(r)));
    if (l === null) throw new Error(`guest process ended early (exit ${this.child.exitCode}); stderr:\n${this.stderr}`);
    return l;
  }

  /** Lines up to and including the first with this op. */
  async until(op: string): Promise<Line[]> {
    const out: Line[] = [];
    for (;;) {
      const l = await this.next();
      out.push(l);
      if (l.op === op) return out;
    }
  }

  /** Run one step through stdin; its result line. */
  async run(step: Record<string, unknown>): Promise<Line> {
    this.child.stdin?.write(`${JSON.stringify(step)}\n`);
    const l = await this.next();
    assert.equal(l.op, step.op, `result of ${JSON.stringify(step)}: ${JSON.stringify(l)}`);
    return l;
  }

  /** Close stdin: the plan ends, the process prints "done" and exits. */
  async finish(): Promise<{ done: Line; code: number | null }> {
    this.child.stdin?.end();
    const rest = await this.until('done');
    const code = await this.exited;
    return { done: rest.at(-1) as Line, code };
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

const pairs = (bindings: { pasid: number; devices: string[] }[]): [string, number][] =>
  bindings.flatMap((b) => b.devices.map((d): [string, number] => [d, b.pasid])).sort((x, y) => (x[0] === y[0] ? x[1] - y[1] : x[0] < y[0] ? -1 : 1));

describe('remote guests: two guest processes against one service', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ioasid-remote-guest-'));
  let server: RunningServer;
  let admin: IoasidClient;
  const tokens: Record<string, string> = {};
  const procs: GuestProcess[] = [];

  before(async () => {
    writeFileSync(join(dir, 'admin.token'), `${ADMIN}\n`, { mode: 0o600 });
    server = await startServer({ store: 'memory', port: 0, adminTokenFile: join(dir, 'admin.token'), stateDir: dir, logLevel: 'silent', say: () => {} });
    admin = new IoasidClient({ url: server.url, token: ADMIN });
    // vm-a: range extension on its primary vIOMMU (segment 0); a 5-bit device behind it.
    tokens['vm-a'] = (await admin.createVm({
      id: 'vm-a', quota: 64,
      viommus: [{ segment: 0, layout: 'B', rangeExtension: true }, { segment: 1, layout: 'B' }],
      devices: [{ bdf: '0000:00:02.0' }, { bdf: '0000:00:03.0', pasidBits: 5 }, { bdf: '0001:00:02.0' }],
    })).token;
    // vm-b: no range extension; a 5-bit device; quota 40.
    tokens['vm-b'] = (await admin.createVm({
      id: 'vm-b', quota: 40,
      viommus: [{ segment: 0, layout: 'B' }, { segment: 1, layout: 'B' }],
      devices: [{ bdf: '0000:00:02.0' }, { bdf: '0000:00:04.0', pasidBits: 5 }, { bdf: '0001:00:05.0' }, { bdf: '0001:00:06.0' }],
    })).token;
  });

  after(async () => {
    for (const p of procs) p.kill();
    await Promise.all(procs.map((p) => p.exited));
    await server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('binds, shares, honours widths and ownership, hits the quota as ENOSPC; the host stays consistent', { timeout: 60_000 }, async (t) => {
    const vmClient = (vm: string) => new IoasidClient({ url: server.url, token: tokens[vm] as string });
    const a = new GuestProcess(server.url, 'vm-a', tokens['vm-a'] as string, [
      { op: 'time', reads: 300 },
      { op: 'bindMany', prefix: 'a', count: 24, devices: ['0000:00:02.0', '0001:00:02.0'], concurrency: 4 },
      { op: 'stdin' },
    ]);
    const b = new GuestProcess(server.url, 'vm-b', tokens['vm-b'] as string, [
      { op: 'bindMany', prefix: 'b', count: 24, devices: ['0000:00:02.0', '0001:00:05.0'], concurrency: 4 },
      { op: 'stdin' },
    ]);
    procs.push(a, b);

    // Phase 1, concurrently: both guests boot (probing their vIOMMUs through trapped reads) and
    // bind 24 address spaces each through VCMD.
    const [la, lb] = await Promise.all([a.until('stdin'), b.until('stdin')]);
    const bootA = la.find((l) => l.op === 'boot') as Line;
    assert.deepEqual(bootA.segments, [0, 1]);
    assert.deepEqual(bootA.registered, [true, true], 'both vIOMMUs registered the VCMD allocator (one shared group)');
    const timing = la.find((l) => l.op === 'time') as Line;
    const boundA = (la.find((l) => l.op === 'bindMany') as Line).bound as { mm: string; bdf: string; pasid: number }[];
    const boundB = (lb.find((l) => l.op === 'bindMany') as Line).bound as { mm: string; bdf: string; pasid: number }[];
    assert.equal(boundA.length, 24);
    assert.equal(boundB.length, 24);
    const setA = new Set(boundA.map((x) => x.pasid));
    const setB = new Set(boundB.map((x) => x.pasid));
    assert.equal(setA.size, 24);
    assert.equal(setB.size, 24);
    assert.deepEqual([...setA].filter((p) => setB.has(p)), [], 'the two guests never got the same PASID');
    assert.deepEqual(await vmClient('vm-a').listPasids('vm-a'), [...setA].sort((x, y) => x - y));
    assert.deepEqual(await vmClient('vm-b').listPasids('vm-b'), [...setB].sort((x, y) => x - y));
    // No frees yet, lowest-free host allocator: the namespace is exactly 1..48.
    assert.deepEqual([...setA, ...setB].sort((x, y) => x - y), Array.from({ length: 48 }, (_, i) => i + 1));

    // Phase 2, step by step.
    // Same address space on a second device: same PASID, programmed on the host.
    const a1 = boundA.find((x) => x.mm === 'a1') as { bdf: string; pasid: number };
    assert.equal(a1.bdf, '0001:00:02.0');
    const share = await a.run({ op: 'bind', bdf: '0000:00:02.0', mm: 'a1' });
    assert.equal(share.ok, true);
    assert.equal(share.pasid, a1.pasid);
    // Two devices bound to one new address space at the same time: one PASID for both.
    const both = await a.run({ op: 'bindConcurrent', mm: 'both', bdfs: ['0000:00:02.0', '0001:00:02.0'] });
    const bothResults = both.results as { pasid?: number }[];
    assert.equal(bothResults.length, 2);
    assert.ok(bothResults[0]?.pasid !== undefined && bothResults[0].pasid === bothResults[1]?.pasid, JSON.stringify(both));
    // ... but not on a device too narrow for it (checked by the guest, nothing sent to the host).
    const high = boundA.reduce((m, x) => (x.pasid > m.pasid ? x : m));
    assert.ok(high.pasid > 31);
    const narrowShare = await a.run({ op: 'bind', bdf: '0000:00:03.0', mm: high.mm });
    assert.equal(narrowShare.code, 'ERANGE');

    // A 5-bit device, no range extension: the host answers 50, the guest hands it back: ERANGE.
    const usedB = (await admin.getVm('vm-b')).used;
    const narrowB = await b.run({ op: 'bind', bdf: '0000:00:04.0', mm: 'narrow-b' });
    assert.equal(narrowB.ok, false);
    assert.equal(narrowB.code, 'ERANGE');
    assert.equal((await admin.getVm('vm-b')).used, usedB, 'nothing leaked on the host');
    assert.deepEqual((await b.run({ op: 'state' })).pasids, [...setB].sort((x, y) => x - y), 'nothing leaked in the guest');
    // With the range extension the host allocates inside [1, 31]: all taken, so "no PASID".
    const usedA = (await admin.getVm('vm-a')).used;
    const narrowA = await a.run({ op: 'bind', bdf: '0000:00:03.0', mm: 'narrow-a' });
    assert.equal(narrowA.code, 'ENOSPC');
    assert.equal((await admin.getVm('vm-a')).used, usedA);

    // The host refuses the PASID entry (the device was removed behind the guest's back): the
    // guest frees the PASID it just got back through VCMD, so nothing leaks.
    await admin.removeDevice('vm-b', '0001:00:06.0');
    const ghost = await b.run({ op: 'bind', bdf: '0001:00:06.0', mm: 'ghost' });
    assert.deepEqual([ghost.ok, ghost.code], [false, 'ENOENT']);
    assert.equal((await admin.getVm('vm-b')).used, usedB);
    assert.deepEqual((await b.run({ op: 'state' })).pasids, [...setB].sort((x, y) => x - y));
    const refreshed = await b.run({ op: 'refresh' });
    assert.deepEqual(refreshed.devices, ['0000:00:02.0', '0000:00:04.0', '0001:00:05.0']);

    // Free some (unbind every 4th / 5th address space from all its devices), then the narrow
    // device of vm-a gets a PASID it can emit.
    const freedA = (await a.run({ op: 'unbindEvery', prefix: 'a', every: 4 })).freed as number[];
    const freedB = (await b.run({ op: 'unbindEvery', prefix: 'b', every: 5 })).freed as number[];
    assert.equal(freedA.length, 6);
    assert.equal(freedB.length, 5);
    const narrowA2 = await a.run({ op: 'bind', bdf: '0000:00:03.0', mm: 'narrow-a' });
    assert.equal(narrowA2.ok, true, JSON.stringify(narrowA2));
    assert.ok((narrowA2.pasid as number) <= 31);

    // Ownership at the register level: vm-a's guest frees one of vm-b's PASIDs through each of its
    // own vIOMMUs: "invalid PASID" (SC 16 in layout B), and vm-b keeps it.
    const victim = [...setB].filter((p) => !freedB.includes(p))[0] as number;
    for (const segment of [0, 1]) {
      const r = await a.run({ op: 'vcmdFree', segment, pasid: victim });
      assert.equal(r.ok, true);
      assert.equal(r.sc, 16);
      assert.equal(r.status, 'invalid PASID');
      assert.deepEqual(r.log, [`IOMMU: vm-a/dmar${segment}: Invalid PASID`]);
    }
    assert.equal((await admin.getPasid(victim)).owner, 'vm-b');
    assert.ok((await vmClient('vm-b').listPasids('vm-b')).includes(victim));

    // Service errors reach the guest thread as IoasidErrors.
    const noUnit = await a.run({ op: 'probe', segment: 7 });
    assert.deepEqual([noUnit.ok, noUnit.code], [false, 'ENOENT']);
    const badToken = await a.run({ op: 'probe', segment: 0, token: 'not-a-token' });
    assert.deepEqual([badToken.ok, badToken.code], [false, 'EPERM']);
    const otherVm = await b.run({ op: 'probe', segment: 0, token: tokens['vm-a'] });
    assert.deepEqual([otherVm.ok, otherVm.code], [false, 'EACCES']);

    // Quota: vm-b allocates until the host refuses; the guest sees ENOSPC ("no PASID available").
    const heldB = (await admin.getVm('vm-b')).used;
    const full = await b.run({ op: 'allocUntilFull' });
    assert.equal(full.stoppedBy, 'ENOSPC');
    assert.equal((full.pasids as number[]).length, 40 - heldB);
    assert.equal((await admin.getVm('vm-b')).used, 40);

    // Time raw allocations and frees through VCMD.
    const allocTiming = await a.run({ op: 'timeAlloc', count: 20 });
    assert.equal(allocTiming.ok, true);

    // Both guests stop.
    const [endA, endB] = await Promise.all([a.finish(), b.finish()]);
    assert.equal(endA.code, 0, a.stderr);
    assert.equal(endB.code, 0, b.stderr);

    // Every PASID each guest holds is that VM's on the service, and only those; disjoint.
    const heldA = endA.done.pasids as number[];
    const heldBFinal = endB.done.pasids as number[];
    assert.deepEqual(await vmClient('vm-a').listPasids('vm-a'), heldA);
    assert.deepEqual(await vmClient('vm-b').listPasids('vm-b'), heldBFinal);
    assert.deepEqual(heldA.filter((p) => heldBFinal.includes(p)), []);
    // Bindings match the host's record.
    const bindingsA = endA.done.bindings as { mm: string; pasid: number; devices: string[] }[];
    const bindingsB = endB.done.bindings as { mm: string; pasid: number; devices: string[] }[];
    assert.deepEqual(pairs(bindingsA), (await admin.getVm('vm-a')).bindings.map((x) => [x.bdf, x.pasid]));
    assert.deepEqual(pairs(bindingsB), (await admin.getVm('vm-b')).bindings.map((x) => [x.bdf, x.pasid]));
    assert.ok(bindingsA.some((x) => x.mm === 'a1' && x.devices.length === 2));
    // Every PASID a guest ever reported was allocated to its VM on the host.
    const allocatedTo = new Map<number, Set<string>>();
    for (const e of server.authority.recentEvents()) {
      if (e.type !== 'alloc' || e.vm === null) continue;
      for (const p of e.pasids) {
        let s = allocatedTo.get(p);
        if (s === undefined) allocatedTo.set(p, (s = new Set()));
        s.add(e.vm);
      }
    }
    const reported = (lines: Line[], vm: string) => {
      for (const l of lines) {
        const ps = [...((l.bound as { pasid: number }[] | undefined) ?? []).map((x) => x.pasid), ...((l.pasids as number[] | undefined) ?? []), ...(typeof l.pasid === 'number' && l.op === 'bind' && l.ok ? [l.pasid] : [])];
        for (const p of ps) assert.ok(allocatedTo.get(p)?.has(vm), `PASID ${p} reported by the guest of ${vm} was allocated to it on the host`);
      }
    };
    reported(a.lines, 'vm-a');
    reported(b.lines, 'vm-b');
    // The host's invariants.
    assert.deepEqual(checkInvariants(server.authority.host), []);

    // Destroying the VMs leaves nothing.
    const vms: VmView[] = [server.authority.vm('vm-a'), server.authority.vm('vm-b')];
    await admin.destroyVm('vm-a');
    await admin.destroyVm('vm-b');
    assert.deepEqual(checkInvariants(server.authority.host, { destroyed: vms.map((vm) => ({ host: server.authority.host, vm })) }), []);
    assert.deepEqual((await admin.namespace()).owners, []);

    const mmio = endA.done.mmio as { p50Us: number; meanUs: number; requests: number };
    const fb = endA.done.firstBinds as { msPerBind: number };
    t.diagnostic(`MMIO round trip (300 VCRSP reads): ${(timing.usPerRead as number).toFixed(0)} us mean, p50 ${(timing.p50Us as number).toFixed(0)} us, p99 ${(timing.p99Us as number).toFixed(0)} us`);
    t.diagnostic(`guest A overall: ${mmio.requests} accesses, mean ${mmio.meanUs.toFixed(0)} us, p50 ${mmio.p50Us.toFixed(0)} us`);
    t.diagnostic(`remote alloc through VCMD: ${(allocTiming.msPerAlloc as number).toFixed(2)} ms (${allocTiming.accessesPerAlloc} accesses), free ${(allocTiming.msPerFree as number).toFixed(2)} ms (${allocTiming.accessesPerFree} accesses); first bind (alloc + host bind, 4 in flight) ${fb.msPerBind.toFixed(2)} ms`);
  });
});

describe('remote guests: the synchronous MMIO channel', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ioasid-remote-channel-'));
  let server: RunningServer;
  let token = '';
  before(async () => {
    writeFileSync(join(dir, 'admin.token'), `${ADMIN}\n`, { mode: 0o600 });
    server = await startServer({ store: 'memory', port: 0, adminTokenFile: join(dir, 'admin.token'), stateDir: dir, logLevel: 'silent', say: () => {} });
    token = (await new IoasidClient({ url: server.url, token: ADMIN }).createVm({ id: 'vm', viommus: [{ segment: 0 }] })).token;
  });
  after(async () => {
    await server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('called from the thread that runs the service, it fails with ETIMEDOUT instead of hanging', async () => {
    const ch = new SyncServiceChannel({ url: server.url, token, timeoutMs: 300 });
    try {
      const t0 = performance.now();
      assert.throws(() => new RemoteMmio(ch, 'vm', 0).read(0x8, 8), (e: unknown) => isIoasidError(e, 'ETIMEDOUT'));
      assert.ok(performance.now() - t0 < 5000);
      assert.equal(ch.stats().timeouts, 1);
    } finally {
      await ch.close();
    }
    assert.throws(() => new RemoteMmio(ch, 'vm', 0).read(0x8, 8), (e: unknown) => isIoasidError(e, 'ENODEV'));
  });

  it('a linux-6.x guest (no VCMD, device-local PASIDs) is refused at boot (EOPNOTSUPP), and an unknown profile is EINVAL, before the service is asked anything', async () => {
    const asked: string[] = [];
    const fetchSpy: typeof fetch = async (input) => {
      asked.push(String(input));
      return new Response('{}', { status: 500 });
    };
    await assert.rejects(RemoteGuest.boot({ url: server.url, vm: 'vm', token, profile: 'linux-6.x', fetch: fetchSpy }),
      (e: unknown) => isIoasidError(e, 'EOPNOTSUPP') && /no VCMD/.test((e as Error).message) && /system-wide PASIDs only/.test((e as Error).message));
    await assert.rejects(RemoteGuest.boot({ url: server.url, vm: 'vm', token, profile: 'linux-9' as never, fetch: fetchSpy }),
      (e: unknown) => isIoasidError(e, 'EINVAL') && /unknown profile .*linux-9.*\(one of strict, /.test((e as Error).message));
    assert.deepEqual(asked, [], 'no request reached the service');
  });

  it('an unreachable service is ENODEV; a bad URL or token is EINVAL', async () => {
    // A port that was just free: nothing listens there.
    const probe = await startServer({ store: 'memory', port: 0, adminTokenFile: join(dir, 'admin.token'), stateDir: dir, logLevel: 'silent', say: () => {} });
    const deadUrl = probe.url;
    await probe.close();
    const ch = new SyncServiceChannel({ url: deadUrl, token, timeoutMs: 5000 });
    try {
      assert.throws(() => new RemoteMmio(ch, 'vm', 0).write(0xe00, 1n, 8), (e: unknown) => isIoasidError(e, 'ENODEV') && /unreachable/.test((e as Error).message));
    } finally {
      await ch.close();
    }
    assert.throws(() => new SyncServiceChannel({ url: 'ftp://x', token }), (e: unknown) => isIoasidError(e, 'EINVAL'));
    assert.throws(() => new SyncServiceChannel({ url: server.url, token: '' }), (e: unknown) => isIoasidError(e, 'EINVAL'));
  });
});
