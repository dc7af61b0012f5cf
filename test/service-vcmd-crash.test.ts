/**
 * A vIOMMU's registers are durable state: a guest on a remote vIOMMU and the service agree on the
 * guest's PASIDs whatever moment the service dies. The service (test/fixtures/crash-server.ts, on
 * an SQLite file and one fixed port) kills itself with SIGKILL at failpoints of a VCMD command
 * (IOASID_FAILPOINT, src/service/failpoints.ts): before the commit of an Allocate or a Free, after
 * it (before the guest's write is answered), and the test kills it after a guest has read a
 * result. The guest (test/fixtures/remote-guest-process.ts, its own process: its register accesses
 * block) goes on sending the access it was in, as a VMM reconnecting would, and reads the outcome
 * once the service is back. After each restart:
 *  - before the guest's answer: the service holds what the guest held, plus the PASID of a
 *    committed Allocate whose VCRSP the guest has not read yet, or minus the PASID of a committed
 *    Free (never anything else);
 *  - once the guest has its answer: the service holds exactly the PASIDs the guest kernel holds.
 */
import { after, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { IoasidClient } from '../src/client/index.ts';
import { openStore } from '../src/store/index.ts';
import { decodeVcrsp, type VcmdGuestState } from '../src/vtd/index.ts';

const TSX = import.meta.resolve('tsx');
const serverScript = fileURLToPath(new URL('./fixtures/crash-server.ts', import.meta.url));
const guestScript = fileURLToPath(new URL('./fixtures/remote-guest-process.ts', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'ioasid-vcmd-crash-'));
const ADMIN = 'vcmd-crash-admin-token-0123456789ab';
const tokenFile = join(dir, 'admin.token');
writeFileSync(tokenFile, `${ADMIN}\n`, { mode: 0o600 });
const db = join(dir, 's.db');

/** Each failpoint this many times, the kill after a read this many times. */
const PER_POINT = 8;
const AFTER_READ = 4;
const POINTS = ['before-commit:vcmd-alloc', 'after-commit:vcmd-alloc', 'before-commit:vcmd-free', 'after-commit:vcmd-free'] as const;

const children = new Set<ChildProcess>();
after(() => {
  for (const c of children) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

async function freePort(): Promise<number> {
  return new Promise((done) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => done(typeof a === 'object' && a !== null ? a.port : 0));
    });
  });
}

interface Server {
  readonly child: ChildProcess;
  readonly exited: Promise<NodeJS.Signals | number | null>;
}

/** Start the service on `port`, armed with a failpoint or not; resolves once /readyz answers. */
async function start(port: number, failpoint: string | null): Promise<Server> {
  const env = { ...process.env };
  delete env['IOASID_FAILPOINT'];
  if (failpoint !== null) env['IOASID_FAILPOINT'] = failpoint;
  const child = spawn(process.execPath, ['--import', TSX, serverScript, '--store', `sqlite:${db}`, '--port', String(port), '--admin-token-file', tokenFile, '--log-level', 'silent'], {
    cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], env,
  });
  children.add(child);
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (c: string) => { stderr += c; });
  const exited = new Promise<NodeJS.Signals | number | null>((resolve) => child.on('close', (code, signal) => {
    children.delete(child);
    resolve(signal ?? code);
  }));
  const url = `http://127.0.0.1:${port}`;
  for (const t0 = Date.now(); ;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`the service exited at start: ${stderr}`);
    try {
      if ((await fetch(`${url}/readyz`)).status === 200) return { child, exited };
    } catch {
      // not listening yet
    }
    if (Date.now() - t0 > 20_000) throw new Error(`the service did not start in 20 s: ${stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The guest process: one command line in, one JSON line per step out. */
function bootGuest(url: string, token: string) {
  const child = spawn(process.execPath, ['--import', TSX, guestScript, '--url', url, '--vm', 'g', '--plan', '[{"op":"stdin"}]'], {
    cwd: dir, stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, REMOTE_GUEST_TOKEN: token, REMOTE_GUEST_MMIO_TIMEOUT_MS: '60000', REMOTE_GUEST_TIMEOUT_MS: '60000' },
  });
  children.add(child);
  child.on('close', () => children.delete(child));
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => { stderr += c.toString(); });
  const lines: Record<string, unknown>[] = [];
  const waiters: (() => void)[] = [];
  createInterface({ input: child.stdout! }).on('line', (l) => {
    lines.push(JSON.parse(l) as Record<string, unknown>);
    for (const w of waiters.splice(0)) w();
  });
  const next = async (): Promise<Record<string, unknown>> => {
    while (lines.length === 0) {
      if (child.exitCode !== null) throw new Error(`the guest exited: ${stderr}`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 500);
      });
    }
    return lines.shift() as Record<string, unknown>;
  };
  const send = (steps: object[]): void => {
    child.stdin!.write(`${JSON.stringify(steps)}\n`);
  };
  return { child, next, send };
}

const sorted = (xs: Iterable<number>): number[] => [...xs].sort((a, b) => a - b);

it(`a remote guest and the service agree on its PASIDs after ${POINTS.length * PER_POINT + AFTER_READ} SIGKILLs at every point of VCMD Allocate and Free`, { timeout: 300_000 }, async (t) => {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const schedule: string[] = [];
  for (let k = 0; k < PER_POINT; k++) schedule.push(...POINTS);
  for (let k = 0; k < AFTER_READ; k++) schedule.splice(8 * k + 4, 0, 'after-read');
  let server = await start(port, null);
  const admin = new IoasidClient({ url, token: ADMIN });
  const { token } = await admin.createVm({ id: 'g', quota: 64, viommus: [{ segment: 0, layout: 'B' }] });
  const svc = new IoasidClient({ url, token });
  const guest = bootGuest(url, token);
  assert.equal((await guest.next()).op, 'boot');
  assert.equal((await guest.next()).op, 'stdin');

  let held: number[] = [];
  const step = async (op: { op: 'alloc' } | { op: 'free'; pasid: number }): Promise<void> => {
    guest.send([op, { op: 'state' }]);
    const r = await guest.next();
    assert.equal(r.ok, true, `guest ${op.op}: ${JSON.stringify(r)}`);
    const s = await guest.next();
    held = sorted(s.pasids as number[]);
    assert.deepEqual(sorted(await svc.listPasids('g')), held, `after the guest's ${op.op}: the service holds exactly what the guest holds`);
  };
  const pick = (rnd: number): { op: 'alloc' } | { op: 'free'; pasid: number } =>
    held.length < 3 || (held.length < 10 && rnd < 0.5) ? { op: 'alloc' } : { op: 'free', pasid: held[Math.floor(rnd * held.length)] as number };

  const stats = { kills: 0, committedUnread: 0, committedFree: 0, notCommitted: 0, afterRead: 0, steps: 0 };
  let rng = 12345;
  const rnd = () => ((rng = (rng * 1103515245 + 12345) >>> 0) / 2 ** 32);
  // Each server is started armed for the next point of the schedule, for the 2nd time the point
  // is reached: the access the guest retries after a kill may reach it once.
  const armed = (i: number): string | null => {
    const next = schedule[i];
    return next === undefined || next === 'after-read' ? null : `${next}:2`;
  };
  server.child.kill('SIGTERM');
  await server.exited;
  server = await start(port, armed(0));
  for (const [i, point] of schedule.entries()) {
    if (point === 'after-read') {
      await step(pick(rnd()));
      stats.steps++;
      server.child.kill('SIGKILL');
      assert.equal(await server.exited, 'SIGKILL');
      stats.kills++;
      stats.afterRead++;
      server = await start(port, armed(i + 1));
      assert.deepEqual(sorted(await svc.listPasids('g')), held, 'killed after the guest read its result: nothing changes');
      continue;
    }
    const wants = point.endsWith('alloc') ? 'alloc' : 'free';
    for (;;) {
      const before = held;
      let op = pick(rnd());
      if (op.op !== wants && (wants === 'alloc' || held.length > 0)) op = wants === 'alloc' ? { op: 'alloc' } : { op: 'free', pasid: held[Math.floor(rnd() * held.length)] as number };
      guest.send([op, { op: 'state' }]);
      const answered = guest.next();
      const died = await Promise.race([answered.then(() => false), server.exited.then(() => true)]);
      if (!died) {
        const r = await answered;
        assert.equal(r.ok, true, JSON.stringify(r));
        held = sorted((await guest.next()).pasids as number[]);
        stats.steps++;
        continue;
      }
      assert.equal(await server.exited, 'SIGKILL', `the service died at ${point}`);
      stats.kills++;
      // What the store holds now is what a restart serves (read before the service is back: the
      // guest retries its access and would change it as soon as the service answers). The guest's
      // access is in flight: the store holds the guest's PASIDs, plus a committed Allocate's result
      // the guest has not read, or minus a committed Free's PASID.
      const store = openStore(`sqlite:${db}`);
      const state = await store.open();
      await store.close();
      const now = sorted(state.pasids.filter((p) => p.vm === 'g').map((p) => p.pasid));
      const saved = state.viommus.find((v) => v.vm === 'g' && v.segment === 0)?.registers ?? null;
      const vcrsp = saved === null ? null : decodeVcrsp('B', BigInt((JSON.parse(saved) as VcmdGuestState).registers.VCRSP_REG));
      server = await start(port, armed(i + 1));
      const added = now.filter((p) => !before.includes(p));
      const removed = before.filter((p) => !now.includes(p));
      if (op.op === 'alloc') {
        assert.deepEqual(removed, [], `${point}: an Allocate in flight freed nothing`);
        assert.ok(added.length <= 1, `${point}: at most the one PASID of the command in flight (${added.join(', ')})`);
        if (added.length === 1) {
          assert.deepEqual([vcrsp?.ip, vcrsp?.sc, vcrsp?.pasid], [false, 0, added[0]], `${point}: the committed VCRSP reports the committed PASID`);
          stats.committedUnread++;
        } else {
          stats.notCommitted++;
        }
      } else {
        assert.deepEqual(added, [], `${point}: a Free in flight allocated nothing`);
        assert.ok(removed.length === 0 || (removed.length === 1 && removed[0] === op.pasid), `${point}: only the PASID being freed may be gone`);
        if (removed.length === 1) stats.committedFree++;
        else stats.notCommitted++;
      }
      if (point.startsWith('after-commit')) assert.equal(added.length + removed.length, 1, `${point}: the command was committed before the kill`);
      else assert.equal(added.length + removed.length, 0, `${point}: killed before the commit, nothing happened`);
      // The guest reads the outcome now, and holds exactly what the service holds.
      const r = await answered;
      assert.equal(r.ok, true, `${point}: the guest's ${op.op} completed after the restart: ${JSON.stringify(r)}`);
      held = sorted((await guest.next()).pasids as number[]);
      assert.deepEqual(sorted(await svc.listPasids('g')), held, `${point}: after the guest's answer`);
      if (op.op === 'alloc') assert.equal(held.length, before.length + 1);
      else assert.equal(held.includes(op.pasid), false);
      break;
    }
  }
  guest.child.stdin!.end();
  assert.equal((await guest.next()).op, 'done');
  server.child.kill('SIGTERM');
  await server.exited;
  t.diagnostic(JSON.stringify(stats));
  assert.equal(stats.kills, POINTS.length * PER_POINT + AFTER_READ);
  assert.equal(stats.committedUnread, PER_POINT, 'every after-commit Allocate kill left a result the guest then read');
  assert.equal(stats.committedFree, PER_POINT);
});
