/**
 * The service keeps its promises across crashes (docs/store.md). The real server runs as a child
 * process (test/fixtures/crash-server.ts: `ioasid serve` on an SQLite file); 4 VMs with small
 * quotas (so EDQUOT happens) are driven by 8 concurrent HTTP clients (IoasidClient over fetch,
 * keep-alive) allocating (single and batch) and freeing their own PASIDs. After a random 50-400 ms
 * the server is SIGKILLed, restarted, and its state is checked against the clients' ledger:
 *  - every allocation acknowledged (201) and not since freed is present, for the right VM;
 *  - a PASID whose free was acknowledged is absent (unless a later allocation took it again);
 *  - requests in flight at the kill may have happened or not: an in-flight free may or may not
 *    have happened, an in-flight allocation may add at most `count` PASIDs to its VM;
 *  - no PASID is under two VMs (per-VM lists and /v1/namespace), no VM is above its quota, and
 *    GET /v1/vms agrees (used = list length <= quota).
 * While running, each 201 is checked too: no PASID handed out while another VM holds it, and a
 * VM's acknowledged PASIDs never exceed its quota. At the end, a clean SIGTERM exits 0, and copies
 * of the database that were corrupted (bytes) or tampered with (a quota below use) are refused.
 */
import { after, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdtempSync, openSync, rmSync, statSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { IoasidClient } from '../src/client/index.ts';
import { IoasidError } from '../src/core/index.ts';

const TSX = import.meta.resolve('tsx');
const serverScript = fileURLToPath(new URL('./fixtures/crash-server.ts', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'ioasid-svc-crash-'));
const ADMIN = 'crash-admin-token-0123456789abcdef';
const tokenFile = join(dir, 'admin.token');
writeFileSync(tokenFile, `${ADMIN}\n`, { mode: 0o600 });
const dbPath = join(dir, 's.db');

const KILLS = 22;
const VMS = ['vm0', 'vm1', 'vm2', 'vm3'] as const;
const QUOTA = 50;
const WORKERS_PER_VM = 2;

// ------------------------------------------------------------------ child processes

const children = new Set<ChildProcess>();
after(() => {
  for (const c of children) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

interface Server {
  readonly child: ChildProcess;
  readonly url: string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
}

/** Spawn the server; resolves once it listens and /readyz answers, rejects if it exits first. */
function startServer(db: string): Promise<Server> {
  const child = spawn(process.execPath, ['--import', TSX, serverScript, '--store', `sqlite:${db}`, '--port', '0', '--admin-token-file', tokenFile, '--log-level', 'silent'], {
    cwd: dir, stdio: ['ignore', 'ignore', 'pipe'],
  });
  children.add(child);
  let stderr = '';
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) => {
    child.on('close', (code, signal) => {
      children.delete(child);
      resolve({ code, signal, stderr });
    });
  });
  return new Promise<Server>((resolve, reject) => {
    const guard = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`server did not start in 20 s; stderr:\n${stderr}`));
    }, 20_000);
    let polling = false;
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (c: string) => {
      stderr += c;
      const m = /listening on (http:\/\/\S+)/.exec(stderr);
      if (m?.[1] === undefined || polling) return;
      polling = true;
      const url = m[1];
      void (async () => {
        for (;;) {
          try {
            const r = await fetch(`${url}/readyz`);
            if (r.status === 200) break;
          } catch {
            // not yet
          }
          await new Promise((r) => setTimeout(r, 10));
        }
        clearTimeout(guard);
        resolve({ child, url, exited });
      })();
    });
    void exited.then((x) => {
      clearTimeout(guard);
      reject(new Error(`server exited before it was ready (code ${x.code}, signal ${x.signal}); stderr:\n${x.stderr}`));
    });
  });
}

// ------------------------------------------------------------------ the clients' ledger

/** One acknowledged holding of a PASID by a VM (object identity tells reallocations apart). */
interface Holding {
  readonly pasid: number;
  readonly vm: string;
  /** 'freeing': a DELETE was sent and not yet answered. */
  state: 'held' | 'freeing';
}

class Ledger {
  /** pasid -> current holding (at most one: that is the invariant checked on every 201). */
  readonly byPasid = new Map<number, Holding>();
  /** PASIDs whose free was acknowledged since the last restart, per VM. */
  readonly freedAck = new Map<string, Set<number>>(VMS.map((v) => [v, new Set<number>()]));
  /** PASIDs asked for by allocations in flight (no answer yet), per VM. */
  readonly inflightAlloc = new Map<string, number>(VMS.map((v) => [v, 0]));
  readonly violations: string[] = [];
  acks = 0;
  ackedPasids = 0;
  frees = 0;
  edquot = 0;
  unknownAllocs = 0;
  unknownFrees = 0;

  violate(msg: string): void {
    if (this.violations.length < 50) this.violations.push(msg);
  }

  heldBy(vm: string): Holding[] {
    return [...this.byPasid.values()].filter((h) => h.vm === vm);
  }

  onAllocAck(vm: string, pasids: readonly number[], quota: number): Holding[] {
    this.acks++;
    this.ackedPasids += pasids.length;
    const out: Holding[] = [];
    for (const p of pasids) {
      const prev = this.byPasid.get(p);
      // Another holder whose free is in flight is fine: the server releases before answering.
      if (prev !== undefined && prev.state === 'held') this.violate(`PASID ${p} acknowledged to ${vm} while ${prev.vm} holds it (its free was never sent)`);
      const h: Holding = { pasid: p, vm, state: 'held' };
      this.byPasid.set(p, h);
      this.freedAck.get(vm)!.delete(p);
      out.push(h);
    }
    // Every 'held' holding of this VM is held on the server right now (no free was sent).
    const held = this.heldBy(vm).filter((h) => h.state === 'held').length;
    if (held > quota) this.violate(`${vm} holds ${held} acknowledged PASIDs, quota ${quota}`);
    return out;
  }

  onFreeAck(h: Holding): void {
    this.frees++;
    if (this.byPasid.get(h.pasid) === h) this.byPasid.delete(h.pasid);
    this.freedAck.get(h.vm)!.add(h.pasid);
  }
}

/** A definite answer from the server (it says so with a status), as opposed to a broken connection. */
function definite(e: unknown): e is IoasidError {
  return e instanceof IoasidError && typeof e.details.status === 'number';
}

interface Epoch {
  stopped: boolean;
}

/** One client: random single and batch allocations and frees of its own PASIDs, until the epoch stops. */
async function worker(client: IoasidClient, vm: string, own: Holding[], ledger: Ledger, epoch: Epoch, rnd: () => number): Promise<void> {
  while (!epoch.stopped) {
    // Drop holdings another worker's reconciliation or a reallocation replaced.
    for (let i = own.length - 1; i >= 0; i--) if (ledger.byPasid.get(own[i]!.pasid) !== own[i]) own.splice(i, 1);
    const free = own.length > 0 && rnd() < (own.length > 20 ? 0.6 : 0.4);
    if (free) {
      const i = Math.floor(rnd() * own.length);
      const h = own[i]!;
      own.splice(i, 1);
      h.state = 'freeing';
      try {
        await client.freePasid(vm, h.pasid);
        ledger.onFreeAck(h);
      } catch (e) {
        if (!definite(e)) {
          ledger.unknownFrees++;
          return; // stays 'freeing': in flight at the kill
        }
        ledger.violate(`free of acknowledged PASID ${h.pasid} by ${vm} refused: ${e.code} ${e.message}`);
        h.state = 'held';
        own.push(h);
      }
    } else {
      const count = rnd() < 0.6 ? 1 : 2 + Math.floor(rnd() * 7);
      ledger.inflightAlloc.set(vm, ledger.inflightAlloc.get(vm)! + count);
      let pasids: number[];
      try {
        pasids = await client.allocPasids(vm, { count });
      } catch (e) {
        if (!definite(e)) {
          ledger.unknownAllocs++;
          return; // stays counted in inflightAlloc until the restart
        }
        ledger.inflightAlloc.set(vm, ledger.inflightAlloc.get(vm)! - count);
        if (e.code === 'EDQUOT') {
          ledger.edquot++;
          continue;
        }
        ledger.violate(`allocation of ${count} for ${vm} refused: ${e.code} ${e.message}`);
        continue;
      }
      ledger.inflightAlloc.set(vm, ledger.inflightAlloc.get(vm)! - count);
      if (pasids.length !== count) ledger.violate(`${vm} asked for ${count} PASIDs, got ${pasids.length}`);
      own.push(...ledger.onAllocAck(vm, pasids, QUOTA));
    }
  }
}

/** After a restart: compare the server with the ledger, then make the ledger match the server. */
async function reconcile(url: string, tokens: Map<string, string>, ledger: Ledger): Promise<{ checked: number }> {
  const admin = new IoasidClient({ url, token: ADMIN });
  const lists = new Map<string, Set<number>>();
  for (const vm of VMS) lists.set(vm, new Set(await new IoasidClient({ url, token: tokens.get(vm)! }).listPasids(vm)));
  let checked = 0;

  // Acknowledged holdings: present, for the right VM. In-flight frees: either way.
  for (const h of [...ledger.byPasid.values()]) {
    const present = lists.get(h.vm)!.has(h.pasid);
    if (h.state === 'held') {
      checked++;
      if (!present) ledger.violate(`acknowledged PASID ${h.pasid} of ${h.vm} is missing after the restart`);
    } else if (present) {
      h.state = 'held'; // the free did not commit
    } else {
      ledger.byPasid.delete(h.pasid); // the free committed
    }
  }

  // PASIDs the ledger does not give to that VM: only in-flight allocations can explain them.
  const owner = new Map<number, string>();
  for (const vm of VMS) {
    const extra: number[] = [];
    for (const p of lists.get(vm)!) {
      const o = owner.get(p);
      if (o !== undefined) ledger.violate(`PASID ${p} is listed under both ${o} and ${vm}`);
      owner.set(p, vm);
      const h = ledger.byPasid.get(p);
      if (h?.vm === vm) continue;
      if (h !== undefined) continue; // held by another VM: reported as listed twice or missing
      extra.push(p);
    }
    const allowed = ledger.inflightAlloc.get(vm)!;
    if (extra.length > allowed) {
      const reborn = extra.filter((p) => ledger.freedAck.get(vm)!.has(p));
      ledger.violate(`${vm} has ${extra.length} PASIDs nobody acknowledged (${extra.slice(0, 10).join(', ')}), but only ${allowed} were in flight${reborn.length ? `; acknowledged-freed: ${reborn.join(', ')}` : ''}`);
    }
    // Adopt them: the store made them durable, the VM's clients now own them.
    for (const p of extra) ledger.byPasid.set(p, { pasid: p, vm, state: 'held' });
  }
  for (const h of ledger.byPasid.values()) if (owner.get(h.pasid) !== h.vm) ledger.violate(`ledger gives ${h.pasid} to ${h.vm}, the server to ${owner.get(h.pasid) ?? 'nobody'}`);

  // The namespace agrees with the per-VM lists; no PASID has two owners.
  const ns = await admin.namespace();
  const seen = new Map<number, string | null>();
  for (const o of ns.owners) {
    for (let i = 0; i + 1 < o.runs.length; i += 2) {
      for (let p = o.runs[i]!; p < o.runs[i]! + o.runs[i + 1]!; p++) {
        if (seen.has(p)) ledger.violate(`namespace: PASID ${p} under ${String(seen.get(p))} and ${String(o.owner)}`);
        seen.set(p, o.owner);
      }
    }
  }
  if (seen.size !== owner.size) ledger.violate(`namespace holds ${seen.size} PASIDs, the VM lists ${owner.size}`);
  for (const [p, vm] of owner) if (seen.get(p) !== vm) ledger.violate(`namespace gives ${p} to ${String(seen.get(p))}, ${vm}'s list has it`);

  // The service's own accounting: used = list length <= quota.
  for (const info of await admin.listVms()) {
    const n = lists.get(info.id)?.size;
    if (info.used !== n) ledger.violate(`GET /v1/vms: ${info.id} used ${info.used}, its list has ${n}`);
    if (info.used > info.quota) ledger.violate(`GET /v1/vms: ${info.id} uses ${info.used} > quota ${info.quota}`);
  }

  for (const vm of VMS) {
    ledger.inflightAlloc.set(vm, 0);
    ledger.freedAck.get(vm)!.clear();
  }
  return { checked };
}

/** xorshift32, seeded (printed, so a failing run can be replayed). */
function prng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 0x1_0000_0000;
  };
}

it(`acknowledged allocations survive ${KILLS} SIGKILLs of the service; no double owner, no quota overrun`, { timeout: 150_000 }, async (t) => {
  const seed = Number(process.env.CRASH_SEED ?? Date.now() % 0x7fffffff);
  const rnd = prng(seed);
  const ledger = new Ledger();
  const tokens = new Map<string, string>();
  let server = await startServer(dbPath);
  {
    const admin = new IoasidClient({ url: server.url, token: ADMIN });
    for (const vm of VMS) tokens.set(vm, (await admin.createVm({ id: vm, quota: QUOTA })).token);
  }
  let checked = 0;
  const started = Date.now();
  const runs: number[] = [];
  for (let k = 0; k < KILLS; k++) {
    const epoch: Epoch = { stopped: false };
    const workers: Promise<void>[] = [];
    for (const vm of VMS) {
      // Each client frees only its own PASIDs: deal the VM's holdings out among its clients.
      const held = ledger.heldBy(vm);
      for (let w = 0; w < WORKERS_PER_VM; w++) {
        const own = held.filter((_, i) => i % WORKERS_PER_VM === w);
        const client = new IoasidClient({ url: server.url, token: tokens.get(vm)! });
        workers.push(worker(client, vm, own, ledger, epoch, rnd));
      }
    }
    const runMs = 50 + Math.floor(rnd() * 351);
    runs.push(runMs);
    await new Promise((r) => setTimeout(r, runMs));
    epoch.stopped = true; // no new request from here: whatever is unanswered was in flight at the kill
    server.child.kill('SIGKILL');
    const x = await server.exited;
    assert.equal(x.signal, 'SIGKILL', `kill ${k}: the server died on its own: ${x.stderr}`);
    await Promise.all(workers);
    server = await startServer(dbPath);
    checked += (await reconcile(server.url, tokens, ledger)).checked;
    assert.deepEqual(ledger.violations, [], `after kill ${k + 1} (seed ${seed})`);
  }

  // A clean stop exits 0 and keeps everything.
  server.child.kill('SIGTERM');
  const clean = await server.exited;
  assert.equal(clean.code, 0, `SIGTERM: ${clean.stderr}`);
  server = await startServer(dbPath);
  checked += (await reconcile(server.url, tokens, ledger)).checked;
  server.child.kill('SIGTERM');
  await server.exited;
  assert.deepEqual(ledger.violations, []);

  const summary = {
    seed, kills: KILLS, ms: Date.now() - started, runMs: runs,
    allocAcks: ledger.acks, ackedPasids: ledger.ackedPasids, freeAcks: ledger.frees, edquot: ledger.edquot,
    inFlightAtKill: { allocs: ledger.unknownAllocs, frees: ledger.unknownFrees }, acknowledgedHoldingsChecked: checked,
    finallyHeld: ledger.byPasid.size,
  };
  t.diagnostic(JSON.stringify(summary));
  assert.ok(ledger.acks > KILLS * 5, `too little work: ${JSON.stringify(summary)}`);
  assert.ok(ledger.edquot > 0, 'quota pressure never happened');
  assert.ok(ledger.unknownAllocs + ledger.unknownFrees > 0, 'no kill caught a request in flight');
});

it('refuses a corrupted or tampered copy of the database with a clear error', { timeout: 60_000 }, async () => {
  // The first test stopped the server with SIGTERM: the database is checkpointed and closed.
  assert.ok(statSync(dbPath).size > 0);

  // Bytes: garbage over the second half of the file (table and index pages).
  const bytes = join(dir, 'corrupt.db');
  copyFileSync(dbPath, bytes);
  const size = statSync(bytes).size;
  const fd = openSync(bytes, 'r+');
  const junk = Buffer.alloc(Math.max(4096, size >> 1), 0xa5);
  writeSync(fd, junk, 0, junk.length, 4096);
  closeSync(fd);
  await assert.rejects(startServer(bytes), (e: Error) => {
    assert.match(e.message, /exited before it was ready \(code 1/);
    assert.match(e.message, /sqlite store .*corrupt\.db.*(corrupt|malformed|integrity|not an SQLite database|refused)/i);
    return true;
  });

  // Rows: a quota below what the VM holds (a tampered file, physically sound).
  const tampered = join(dir, 'tampered.db');
  copyFileSync(dbPath, tampered);
  const db = new Database(tampered);
  const busiest = db.prepare('SELECT vm, count(*) AS n FROM pasids GROUP BY vm ORDER BY n DESC LIMIT 1').get() as { vm: string; n: number } | undefined;
  assert.ok(busiest !== undefined && busiest.n >= 2, 'the crash test left PASIDs behind');
  db.prepare('UPDATE vms SET quota = ? WHERE id = ?').run(busiest.n - 1, busiest.vm);
  db.close();
  await assert.rejects(startServer(tampered), (e: Error) => {
    assert.match(e.message, /exited before it was ready \(code 1/);
    assert.match(e.message, /quota/i);
    return true;
  });
});
