/**
 * Isolation benchmark (issue 13, item 1): can one tenant slow the others down through the event
 * stream? One VM ("evil") holds the most event subscriptions its token may open (the default
 * bound, 16, all on its own stream) and floods the service; meanwhile another VM ("victim")
 * allocates and frees one PASID at a time and a probe GETs /healthz every 10 ms. Reported: the
 * victim's allocation and /healthz latencies (p50, p99, max) per phase:
 *
 *   idle          nobody else: the baseline
 *   batch-nosubs  evil allocates 1,024 PASIDs per request (4 connections), no subscriber
 *   batch         the same with evil's 16 subscriptions open (one 1,024-PASID event per request)
 *   small-nosubs  evil allocates and frees one PASID per request (4 connections): one event per
 *                 request, the most events a tenant can make per second; no subscriber
 *   small         the same with the 16 subscriptions open
 *
 * Target: in `batch` and `small`, the victim's allocation p99 and /healthz p99 under 50 ms. Each
 * phase starts from an empty namespace (evil is destroyed and created again between phases,
 * unmeasured); a batch flood stops at 1,000 requests (the namespace holds 1,048,575 PASIDs), and
 * the results say whether it lasted the whole window. The server (exactly what `ioasid serve`
 * runs, log level silent), the attacker and the probe are three processes.
 *
 *   npm run bench:isolation     (node --import tsx bench/isolation.bench.ts)
 *   env: BENCH_SECONDS (5, per phase), BENCH_STORES (memory,sqlite), BENCH_SUBS (16),
 *        BENCH_ATTACK_CONCURRENCY (4)
 *
 * Writes bench/results/isolation.json.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os, { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { median, percentile, saveResult } from './util.ts';
import { buildDist } from './fixtures/built.ts';
import type { AttackResult, AttackSpec } from './fixtures/isolation-attacker.ts';
import type { ProbeResult, ProbeSpec } from './fixtures/isolation-probe.ts';

/** tsx's loader by its absolute URL: the children run in a temporary folder, not the checkout. */
const TSX = import.meta.resolve('tsx');
const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const STORES = (process.env.BENCH_STORES ?? 'memory,sqlite').split(',').map((s) => s.trim()).filter(Boolean);
const SUBS = Number(process.env.BENCH_SUBS ?? 16);
const CONCURRENCY = Number(process.env.BENCH_ATTACK_CONCURRENCY ?? 4);
const WARMUP_MS = 500;
const TARGET_MS = 50;
const MAX_BATCHES = 1000;
const ADMIN = 'isolation-bench-admin-token-0123456789abcdef';
const CLK_TCK = 100;

const dir = mkdtempSync(join(tmpdir(), 'ioasid-isolation-bench-'));
buildDist();
const tokenFile = join(dir, 'admin.token');
writeFileSync(tokenFile, `${ADMIN}\n`, { mode: 0o600 });
const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});
process.on('SIGINT', () => process.exit(130));

function child(script: string, args: string[] = [], stdio: 'ipc' | 'server' = 'ipc'): ChildProcess {
  const c = spawn(process.execPath, ['--import', TSX, script, ...args], {
    cwd: dir, stdio: stdio === 'ipc' ? ['ignore', 'inherit', 'inherit', 'ipc'] : ['ignore', 'ignore', 'pipe'],
  });
  children.add(c);
  c.on('close', () => children.delete(c));
  return c;
}

async function startServer(store: string): Promise<{ url: string; proc: ChildProcess; exited: Promise<number | null> }> {
  const spec = store === 'memory' ? 'memory' : `sqlite:${join(dir, 'isolation.db')}`;
  const proc = child(fixture('service-server.ts'), [spec, tokenFile], 'server');
  const exited = new Promise<number | null>((resolve) => proc.on('close', (code) => resolve(code)));
  let stderr = '';
  const url = await new Promise<string>((resolve, reject) => {
    proc.stderr!.setEncoding('utf8');
    proc.stderr!.on('data', (c: string) => {
      stderr += c;
      const m = /listening on (http:\/\/[^\s,)]+)/.exec(stderr);
      if (m?.[1] !== undefined) resolve(m[1]);
    });
    void exited.then((code) => reject(new Error(`server exited (${code}): ${stderr}`)));
  });
  return { url, proc, exited };
}

async function admin(url: string, method: string, path: string, body?: unknown): Promise<Record<string, unknown>> {
  const res = await fetch(`${url}${path}`, {
    method, headers: { authorization: `Bearer ${ADMIN}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  if (res.status >= 400 && !(method === 'DELETE' && res.status === 404)) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? (JSON.parse(text) as Record<string, unknown>) : {};
}

function procCpuUs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1e6) / CLK_TCK;
}

interface Phase {
  readonly name: string;
  readonly mode: AttackSpec['mode'] | null;
  readonly subscriptions: number;
}
const PHASES: readonly Phase[] = [
  { name: 'idle', mode: null, subscriptions: 0 },
  { name: 'batch-nosubs', mode: 'batch', subscriptions: 0 },
  { name: 'batch', mode: 'batch', subscriptions: SUBS },
  { name: 'small-nosubs', mode: 'small', subscriptions: 0 },
  { name: 'small', mode: 'small', subscriptions: SUBS },
];

function ipc<T>(c: ChildProcess): Promise<T> {
  return new Promise((resolve, reject) => {
    c.once('message', (m) => resolve(m as T));
    c.once('close', (code) => reject(new Error(`child exited (${code}) before it answered`)));
  });
}

async function runPhase(url: string, pid: number, phase: Phase, victimToken: string): Promise<Record<string, unknown>> {
  // A fresh tenant each phase: an empty namespace, and a token of its own.
  await admin(url, 'DELETE', '/v1/vms/evil');
  const evilToken = (await admin(url, 'POST', '/v1/vms', { id: 'evil', quota: 0 }))['token'] as string;
  const attacker = phase.mode === null ? null : child(fixture('isolation-attacker.ts'));
  const probe = child(fixture('isolation-probe.ts'));
  if (attacker !== null) {
    const ready = ipc<string>(attacker);
    attacker.send({ url, vm: 'evil', token: evilToken, subscriptions: phase.subscriptions, mode: phase.mode ?? 'none', concurrency: CONCURRENCY, maxBatches: MAX_BATCHES } satisfies AttackSpec);
    await ready;
  }
  const probeReady = ipc<string>(probe);
  probe.send({ url, vm: 'victim', token: victimToken } satisfies ProbeSpec);
  await probeReady;
  const now = Date.now();
  const window = { measureFrom: now + WARMUP_MS, stopAt: now + WARMUP_MS + SECONDS * 1000 };
  const attackDone = attacker === null ? Promise.resolve(null) : ipc<AttackResult>(attacker);
  const probeDone = ipc<ProbeResult>(probe);
  attacker?.send({ stopAt: window.stopAt });
  probe.send(window);
  await new Promise((r) => setTimeout(r, window.measureFrom - Date.now()));
  const cpu0 = procCpuUs(pid);
  await new Promise((r) => setTimeout(r, window.stopAt - Date.now()));
  const cpu1 = procCpuUs(pid);
  const attackStarted = Date.now();
  const [a, p] = await Promise.all([attackDone, probeDone]);
  const ms = (x: number) => +x.toFixed(2);
  const stats = (xs: number[]) => ({ n: xs.length, p50Ms: ms(percentile(xs, 50)), p99Ms: ms(percentile(xs, 99)), maxMs: ms(xs.reduce((m, x) => (x > m ? x : m), 0)) });
  const out: Record<string, unknown> = {
    victimAlloc: stats(p.allocMs),
    healthz: stats(p.healthzMs),
    probeErrors: p.errors,
    ...(p.firstError !== null ? { probeFirstError: p.firstError } : {}),
    serverCpu: +((cpu1 - cpu0) / (SECONDS * 1e6)).toFixed(2),
  };
  if (a !== null) {
    out['attacker'] = {
      requestsPerSec: Math.round(a.requests / SECONDS),
      requests: a.requests,
      errors: a.errors,
      ...(a.firstError !== null ? { firstError: a.firstError } : {}),
      pasidsAllocated: a.pasidsAllocated,
      // A batch flood stops at MAX_BATCHES: did it last the measured window?
      ...(phase.mode === 'batch' ? { floodLastedWindow: a.requests < MAX_BATCHES } : {}),
      subscriptionsOpened: a.subscriptionsOpened,
      messagesPerSubscriber: a.messages.length > 0 ? median(a.messages) : 0,
      eventBytesReceived: a.bytes,
      subscriberCloses: a.closes,
    };
  }
  void attackStarted;
  return out;
}

const loadBefore = os.loadavg().map((x) => +x.toFixed(2));
const results: Record<string, Record<string, unknown>> = {};
const verdicts: Record<string, unknown> = {};
for (const store of STORES) {
  const server = await startServer(store);
  const victimToken = (await admin(server.url, 'POST', '/v1/vms', { id: 'victim', quota: 8 }))['token'] as string;
  results[store] = {};
  for (const phase of PHASES) {
    const r = await runPhase(server.url, server.proc.pid!, phase, victimToken);
    results[store]![phase.name] = r;
    const v = r['victimAlloc'] as { p99Ms: number; n: number };
    const h = r['healthz'] as { p99Ms: number; n: number };
    const at = r['attacker'] as { requestsPerSec: number; floodLastedWindow?: boolean; subscriberCloses: Record<string, number> } | undefined;
    process.stderr.write(`${store.padEnd(7)} ${phase.name.padEnd(13)} victim alloc p99 ${v.p99Ms} ms (n ${v.n}), /healthz p99 ${h.p99Ms} ms (n ${h.n}), server CPU ${r['serverCpu']}${at ? `, attacker ${at.requestsPerSec} req/s${at.floodLastedWindow === false ? ' (flood ended early)' : ''}, closes ${JSON.stringify(at.subscriberCloses)}` : ''}\n`);
  }
  server.proc.kill('SIGTERM');
  const code = await server.exited;
  if (code !== 0) throw new Error(`${store} server exited with ${code} on SIGTERM`);
  for (const phase of ['batch', 'small']) {
    const r = results[store]![phase] as { victimAlloc: { p99Ms: number }; healthz: { p99Ms: number } };
    verdicts[`${store}/${phase}`] = {
      victimAllocP99Ms: r.victimAlloc.p99Ms,
      healthzP99Ms: r.healthz.p99Ms,
      target: `< ${TARGET_MS} ms`,
      result: r.victimAlloc.p99Ms < TARGET_MS && r.healthz.p99Ms < TARGET_MS ? 'pass' : 'FAIL',
    };
  }
}

const path = saveResult('isolation', {
  setup: {
    what: 'one tenant (evil) with SUBS event subscriptions on its own stream floods the service; another VM allocates and frees one PASID at a time, a probe GETs /healthz every 10 ms; their latencies per phase',
    subscriptions: SUBS,
    attackConcurrency: CONCURRENCY,
    secondsPerPhase: SECONDS,
    warmupMs: WARMUP_MS,
    maxBatches: MAX_BATCHES,
    server: 'bench/fixtures/service-server.ts (serveUntilSignalled from dist/, built first, log level silent, default bounds: 16 subscriptions per token); SQLite with the default --sync normal',
    transport: 'HTTP/1.1 keep-alive over loopback; subscriptions over WebSocket with the token as subprotocol',
    loadAverage: { before: loadBefore, after: os.loadavg().map((x) => +x.toFixed(2)), cores: os.cpus().length },
  },
  targets: verdicts,
  results,
});
process.stderr.write(`${JSON.stringify(verdicts, null, 2)}\nwrote ${path}\n`);
