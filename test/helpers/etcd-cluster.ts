/**
 * A real etcd cluster for the cluster tests and the cluster benchmark: N members (default 3) of
 * `/usr/bin/etcd` on free 127.0.0.1 ports, each with its own `--data-dir` under one temporary
 * folder (on /dev/shm when it exists: the tests check behaviour, not disk latency). It waits for a
 * leader, finds the leader, kills and restarts members, and removes everything on `stop()`.
 *
 *   const etcd = await EtcdCluster.start();
 *   etcd.spec                  // 'etcd://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3'
 *   await etcd.kill(await etcd.leader());
 *   await etcd.restart(i);
 *   await etcd.stop();
 *
 * With `tls`, clients speak TLS to the members (`etcds://`, certificates from test/helpers/test-pki.ts;
 * the peers stay plaintext on loopback), and `clientCertAuth` makes the members require a client
 * certificate. `enableAuth(rootPassword)` turns etcd authentication on with a root user, and
 * `addUser(name, password, prefix)` adds a user whose role may read and write one prefix. etcdctl
 * gets its passwords through its environment or stdin, never its arguments.
 *
 * `ETCD_SKIP` is a reason to skip (etcd is not installed), or null; `.ci/run` installs it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const ETCD_BIN = process.env.IOASID_ETCD_BIN ?? '/usr/bin/etcd';
export const ETCDCTL_BIN = process.env.IOASID_ETCDCTL_BIN ?? '/usr/bin/etcdctl';

/** Why the etcd tests cannot run here, or null when they can. */
export const ETCD_SKIP: string | null = existsSync(ETCD_BIN) && existsSync(ETCDCTL_BIN)
  ? null
  : `etcd is not installed (${ETCD_BIN}, ${ETCDCTL_BIN}): install the etcd-server and etcd-client packages (.ci/run does) to run the cluster tests`;

export interface EtcdClusterOptions {
  readonly size?: number;
  /** Raft heartbeat and election timeout, ms (etcd defaults 100 / 1000). */
  readonly heartbeatMs?: number;
  readonly electionMs?: number;
  /** --quota-backend-bytes (the naive bitmap benchmark writes a lot of history). */
  readonly quotaBytes?: number;
  /** Parent folder of the data dirs (default /dev/shm when present, else os.tmpdir()). */
  readonly root?: string;
  /** Pass etcd's own log through to stderr. */
  readonly verbose?: boolean;
  /** Serve clients over TLS (the store spec becomes etcds://). */
  readonly tls?: EtcdTlsOptions;
  /** etcd --auth-token-ttl, seconds (etcd's default 300): how long an auth token lives unused. */
  readonly authTokenTtlSec?: number;
}

export interface EtcdTlsOptions {
  /** The CA that signed the members' certificate (etcdctl's --cacert; the members' --trusted-ca-file). */
  readonly caFile: string;
  /** Every member's server certificate and key (subjectAltName 127.0.0.1). */
  readonly certFile: string;
  readonly keyFile: string;
  /** Members require a client certificate signed by `caFile` (etcd --client-cert-auth). */
  readonly clientCertAuth?: boolean;
  /** etcdctl's client certificate and key (needed with `clientCertAuth`). */
  readonly ctlCertFile?: string;
  readonly ctlKeyFile?: string;
}

interface Member {
  readonly name: string;
  readonly clientPort: number;
  readonly peerPort: number;
  readonly dataDir: string;
  proc: ChildProcess | null;
  exited: Promise<void> | null;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

function run(bin: string, args: readonly string[], opts: { timeoutMs?: number; env?: Record<string, string>; input?: string } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(bin, [...args], { env: { ...process.env, ETCDCTL_API: '3', ...(opts.env ?? {}) }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 5000);
    p.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? 1, stdout, stderr });
    });
    p.stdin.end(opts.input ?? '');
  });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Members still running when this process exits (a test that died before its `after`) go too. */
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

export class EtcdCluster {
  readonly root: string;
  readonly #members: Member[];
  readonly #opts: EtcdClusterOptions;
  #stopped = false;
  /** Set once `enableAuth` ran: etcdctl then acts as root. */
  #rootPassword: string | null = null;

  private constructor(root: string, members: Member[], opts: EtcdClusterOptions) {
    this.root = root;
    this.#members = members;
    this.#opts = opts;
  }

  /** Start a new cluster and wait until it has a leader and every member answers. */
  static async start(opts: EtcdClusterOptions = {}): Promise<EtcdCluster> {
    if (ETCD_SKIP !== null) throw new Error(ETCD_SKIP);
    const size = opts.size ?? 3;
    const parent = opts.root ?? (existsSync('/dev/shm') ? '/dev/shm' : tmpdir());
    const root = mkdtempSync(join(parent, 'ioasid-etcd-'));
    const members: Member[] = [];
    const used = new Set<number>();
    const port = async () => {
      for (;;) {
        const p = await freePort();
        if (!used.has(p)) {
          used.add(p);
          return p;
        }
      }
    };
    for (let i = 0; i < size; i++) {
      const dataDir = join(root, `m${i}`);
      mkdirSync(dataDir, { recursive: true });
      members.push({ name: `m${i}`, clientPort: await port(), peerPort: await port(), dataDir, proc: null, exited: null });
    }
    const c = new EtcdCluster(root, members, opts);
    for (let i = 0; i < size; i++) c.#spawn(i, 'new');
    try {
      await c.waitHealthy(20_000);
    } catch (e) {
      await c.stop();
      throw e;
    }
    return c;
  }

  get size(): number {
    return this.#members.length;
  }

  /** `127.0.0.1:PORT` of every member, in member order. */
  get endpoints(): string[] {
    return this.#members.map((m) => `127.0.0.1:${m.clientPort}`);
  }

  /** The store spec the service takes: `etcd://` (or `etcds://` with TLS) and every endpoint. */
  get spec(): string {
    return `${this.#opts.tls !== undefined ? 'etcds' : 'etcd'}://${this.endpoints.join(',')}`;
  }

  endpoint(i: number): string {
    return `127.0.0.1:${this.#member(i).clientPort}`;
  }

  isRunning(i: number): boolean {
    return this.#member(i).proc !== null;
  }

  #member(i: number): Member {
    const m = this.#members[i];
    if (m === undefined) throw new Error(`no etcd member ${i}`);
    return m;
  }

  #spawn(i: number, state: 'new' | 'existing'): void {
    const m = this.#member(i);
    const cluster = this.#members.map((x) => `${x.name}=http://127.0.0.1:${x.peerPort}`).join(',');
    const tls = this.#opts.tls;
    const scheme = tls !== undefined ? 'https' : 'http';
    const args = [
      '--name', m.name,
      '--data-dir', m.dataDir,
      '--listen-client-urls', `${scheme}://127.0.0.1:${m.clientPort}`,
      '--advertise-client-urls', `${scheme}://127.0.0.1:${m.clientPort}`,
      ...(tls !== undefined ? ['--cert-file', tls.certFile, '--key-file', tls.keyFile, '--trusted-ca-file', tls.caFile] : []),
      ...(tls?.clientCertAuth === true ? ['--client-cert-auth'] : []),
      ...(this.#opts.authTokenTtlSec !== undefined ? ['--auth-token-ttl', String(this.#opts.authTokenTtlSec)] : []),
      '--listen-peer-urls', `http://127.0.0.1:${m.peerPort}`,
      '--initial-advertise-peer-urls', `http://127.0.0.1:${m.peerPort}`,
      '--initial-cluster', cluster,
      '--initial-cluster-state', state,
      '--initial-cluster-token', `ioasid-test-${this.root.split('-').pop() ?? 'x'}`,
      '--heartbeat-interval', String(this.#opts.heartbeatMs ?? 100),
      '--election-timeout', String(this.#opts.electionMs ?? 1000),
      '--logger', 'zap',
      '--log-level', this.#opts.verbose ? 'info' : 'error',
      ...(this.#opts.quotaBytes !== undefined ? ['--quota-backend-bytes', String(this.#opts.quotaBytes)] : []),
    ];
    const proc = spawn(ETCD_BIN, args, { stdio: ['ignore', 'ignore', this.#opts.verbose ? 'inherit' : 'ignore'] });
    m.proc = proc;
    live.add(proc);
    m.exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    proc.once('exit', () => {
      live.delete(proc);
      if (m.proc === proc) m.proc = null;
    });
  }

  /** etcdctl against some members (default: the running ones); as root once auth is enabled. */
  async etcdctl(args: readonly string[], members?: readonly number[], input?: string): Promise<{ code: number; stdout: string; stderr: string }> {
    const tls = this.#opts.tls;
    const eps = (members ?? this.#members.map((_, i) => i).filter((i) => this.isRunning(i))).map((i) => `${tls !== undefined ? 'https' : 'http'}://${this.endpoint(i)}`);
    // etcdctl reads ETCDCTL_<FLAG> for each global flag: the password stays out of argv.
    const env: Record<string, string> = {
      ...(tls !== undefined ? { ETCDCTL_CACERT: tls.caFile } : {}),
      ...(tls?.ctlCertFile !== undefined && tls.ctlKeyFile !== undefined ? { ETCDCTL_CERT: tls.ctlCertFile, ETCDCTL_KEY: tls.ctlKeyFile } : {}),
      ...(this.#rootPassword !== null ? { ETCDCTL_USER: 'root', ETCDCTL_PASSWORD: this.#rootPassword } : {}),
    };
    return run(ETCDCTL_BIN, [`--endpoints=${eps.join(',')}`, '--dial-timeout=1s', '--command-timeout=2s', ...args], { env, ...(input !== undefined ? { input } : {}) });
  }

  async #ctl(args: readonly string[], input?: string): Promise<string> {
    const r = await this.etcdctl(args, undefined, input);
    if (r.code !== 0) throw new Error(`etcdctl ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
    return r.stdout;
  }

  /** Turn etcd authentication on, with a root user of this password (etcdctl acts as it from now). */
  async enableAuth(rootPassword: string): Promise<void> {
    await this.#ctl(['user', 'add', 'root', '--interactive=false'], `${rootPassword}\n`);
    await this.#ctl(['user', 'grant-role', 'root', 'root']);
    await this.#ctl(['auth', 'enable']);
    this.#rootPassword = rootPassword;
  }

  /**
   * Add a user (password null: no password, client-certificate CN only) with a role that may read
   * and write (or only read) keys under `prefix` (none: a user without any permission).
   */
  async addUser(name: string, password: string | null, prefix?: string, perm: 'readwrite' | 'read' = 'readwrite'): Promise<void> {
    if (password === null) await this.#ctl(['user', 'add', name, '--no-password']);
    else await this.#ctl(['user', 'add', name, '--interactive=false'], `${password}\n`);
    if (prefix !== undefined) {
      await this.#ctl(['role', 'add', `${name}-role`]);
      await this.#ctl(['role', 'grant-permission', `${name}-role`, '--prefix=true', perm, prefix]);
      await this.#ctl(['user', 'grant-role', name, `${name}-role`]);
    }
  }

  /** Per running member: its member id and the leader id it reports (etcdctl endpoint status). */
  async status(): Promise<{ index: number; memberId: string; leaderId: string; raftTerm: number }[]> {
    const running = this.#members.map((_, i) => i).filter((i) => this.isRunning(i));
    const out: { index: number; memberId: string; leaderId: string; raftTerm: number }[] = [];
    for (const i of running) {
      const r = await this.etcdctl(['endpoint', 'status', '-w', 'json'], [i]);
      if (r.code !== 0) continue;
      try {
        const [s] = JSON.parse(r.stdout) as { Status: { header: { member_id: number | string }; leader: number | string; raft_term: number } }[];
        if (s === undefined) continue;
        out.push({ index: i, memberId: BigInt(s.Status.header.member_id).toString(16), leaderId: BigInt(s.Status.leader).toString(16), raftTerm: s.Status.raft_term });
      } catch {
        // a member mid-restart may print nothing useful
      }
    }
    return out;
  }

  /** Index of the member that is the leader (as the running members agree), waiting for one. */
  async leader(timeoutMs = 10_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const st = await this.status();
      const leaderIds = new Set(st.map((s) => s.leaderId).filter((l) => l !== '0'));
      if (leaderIds.size === 1) {
        const [id] = leaderIds;
        const m = st.find((s) => s.memberId === id);
        if (m !== undefined) return m.index;
      }
      if (Date.now() > deadline) throw new Error(`etcd has no leader after ${timeoutMs} ms: ${JSON.stringify(st)}`);
      await sleep(100);
    }
  }

  /** Wait until every running member answers and they agree on a leader. */
  async waitHealthy(timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const running = this.#members.map((_, i) => i).filter((i) => this.isRunning(i));
      const st = await this.status();
      if (st.length === running.length && running.length > 0) {
        const leaders = new Set(st.map((s) => s.leaderId));
        if (leaders.size === 1 && !leaders.has('0')) {
          const h = await this.etcdctl(['endpoint', 'health']);
          if (h.code === 0) return;
        }
      }
      if (Date.now() > deadline) throw new Error(`etcd cluster not healthy after ${timeoutMs} ms (running: ${running.join(',')}, status: ${JSON.stringify(st)})`);
      await sleep(100);
    }
  }

  /** Kill one member (SIGKILL by default) and wait until it has exited. */
  async kill(i: number, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const m = this.#member(i);
    if (m.proc === null) return;
    const exited = m.exited;
    m.proc.kill(signal);
    await exited;
    m.proc = null;
  }

  /** Start a killed member again on its data dir and wait until the cluster is healthy. */
  async restart(i: number, timeoutMs = 15_000): Promise<void> {
    if (this.isRunning(i)) return;
    this.#spawn(i, 'existing');
    await this.waitHealthy(timeoutMs);
  }

  /** Kill every member and remove the data. Idempotent. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await Promise.all(this.#members.map((_, i) => this.kill(i)));
    rmSync(this.root, { recursive: true, force: true });
  }
}
