/**
 * `ioasid serve`: the PASID authority service.
 *
 * Every start-up failure is one line on stderr, `error: CODE: message (hint: what to try)`, and
 * exit 1; a bad option (an unknown store, sync mode, log level or format) is a usage error, exit 2,
 * found before anything is opened. A start that fails writes no admin token file. `--debug` adds
 * the stack. Once started, everything the service says is a log record on stderr (JSON, or text
 * with `--log-format text`).
 */
import { userInfo } from 'node:os';
import { Command, InvalidArgumentError, Option } from 'commander';
import { isIoasidError } from '../client/index.ts';
// The one module of the CLI that reaches the service: `ioasid serve` runs it (docs/decisions.md).
import { DEFAULT_PORT, DEFAULT_STORE, DEFAULT_SYNC, LOG_FORMATS, LOG_LEVELS, serveUntilSignalled } from '../service/index.ts';
import { DESCRIPTIONS } from './descriptions.ts';
import type { EtcdSecurityOptions } from '../service/index.ts';

/** A positive integer flag value (milliseconds, counts). */
function positive(flag: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`${flag} must be a positive integer, got ${v}`);
    return n;
  };
}

function port(v: string): number {
  const n = /^\d{1,5}$/.test(v.trim()) ? Number(v) : Number.NaN;
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError(`port must be an integer in [0, 65535] (0: any free port), got ${JSON.stringify(v)}`);
  return n;
}

/** `--store`: checked before anything is opened. */
export function storeSpec(v: string): string {
  if (v === 'memory') return v;
  if (v.startsWith('sqlite:')) {
    if (v.length === 'sqlite:'.length) throw new InvalidArgumentError('sqlite: needs a file path, as in sqlite:./var/ioasid.db or sqlite:/var/lib/ioasid/state.db');
    return v;
  }
  if (/^etcds?:\/\/[^/]+$/.test(v)) return v;
  const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(v)?.[1];
  const what = scheme !== undefined && !['sqlite', 'etcd', 'etcds'].includes(scheme.toLowerCase()) ? ` (${scheme}: is not a store this service has)` : '';
  throw new InvalidArgumentError(`the store is memory, sqlite:PATH, etcd://HOST:PORT[,HOST:PORT...] or etcds://HOST:PORT[,...], got ${JSON.stringify(v)}${what}`);
}

function oneOf<T extends string>(what: string, values: readonly T[]) {
  return (v: string): T => {
    if (!(values as readonly string[]).includes(v)) throw new InvalidArgumentError(`${what} must be one of ${values.join(', ')}, got ${JSON.stringify(v)}`);
    return v as T;
  };
}

interface ServeFlags {
  store: string;
  host: string;
  port: number;
  socket?: string;
  adminTokenFile?: string;
  logLevel: string;
  logFormat: 'json' | 'text';
  sync: 'full' | 'normal';
  debug?: boolean;
  hostId?: string;
  domain?: string;
  etcdCa?: string;
  etcdCert?: string;
  etcdKey?: string;
  etcdUser?: string;
  etcdPasswordFile?: string;
  etcdPassword?: string;
  headersTimeout?: number;
  requestTimeout?: number;
  idleTimeout?: number;
  maxConnections?: number;
  shutdownGrace?: number;
  maxSubscriptions?: number;
  maxSubscriptionsPerToken?: number;
  metricsTokenFile?: string;
  metricsNoAuth?: boolean;
}

/** What a failed start carries: an IoasidError or the server's StartError (code, message, details.reason). */
interface Failure {
  readonly code: string;
  readonly message: string;
  readonly details: Readonly<Record<string, unknown>>;
}

function asFailure(e: unknown): Failure | null {
  if (isIoasidError(e)) return e;
  const f = e as { name?: unknown; code?: unknown; details?: unknown; message?: unknown } | null;
  if (f !== null && f.name === 'StartError' && typeof f.code === 'string' && typeof f.message === 'string' && typeof f.details === 'object' && f.details !== null) {
    return { code: f.code, message: f.message, details: f.details as Record<string, unknown> };
  }
  return null;
}

function whoAmI(): string {
  try {
    return `user ${userInfo().username}`;
  } catch {
    return `uid ${process.getuid?.() ?? '?'}`;
  }
}

/** What to try next, by the reason a start failed (the message already says what is wrong). */
function hint(e: Failure): string {
  switch (e.details.reason) {
    case 'server-certificate':
      return e.details.caFile !== null
        ? "--etcd-ca must be the CA that signed etcd's --cert-file (check: openssl verify -CAfile CA.pem SERVER.pem)"
        : "etcd's certificate is not signed by a CA Node knows: give its CA with --etcd-ca";
    case 'client-certificate':
      return "give --etcd-cert and --etcd-key, a client certificate signed by the CA in etcd's --trusted-ca-file";
    case 'tls-handshake':
      return 'etcds:// is for members started with --cert-file; a plaintext member is etcd://';
    case 'password':
      return 'check --etcd-user and the password in --etcd-password-file (try: etcdctl --user NAME endpoint health)';
    case 'no-credentials':
      return 'give --etcd-user and --etcd-password-file, or a client certificate whose CN is an etcd user';
    case 'permission':
      return "grant the user's role the domain's prefix: etcdctl role grant-permission ROLE --prefix=true readwrite PREFIX";
    case 'auth-disabled':
      return 'drop --etcd-user and --etcd-password-file, or run: etcdctl auth enable';
    case 'option':
    case 'file':
      return 'see ioasid serve --help and docs/cluster.md';
    case 'address-in-use':
      return e.details.socket !== null
        ? 'another process listens on that socket (another ioasid serve?); stop it, or remove a stale socket file, or choose another --socket'
        : `another process listens there (another ioasid serve? try: ss -ltnp 'sport = :${String(e.details.port)}'); stop it, or choose another --port (0 picks a free one)`;
    case 'listen-permission':
      return 'ports below 1024 need privileges: choose --port 1024 or above, or a --socket path this user may create';
    case 'listen-address':
      return '--host must be an address of this machine (127.0.0.1 for this machine only, 0.0.0.0 for every interface)';
    case 'state-folder-permission':
      return `ioasid serve runs as ${whoAmI()}: give it write access to ${String(e.details.folder)} (chown or chmod), or choose another --store path`;
    case 'state-folder-readonly':
      return `the file system of ${String(e.details.folder)} is mounted read-only: remount it read-write, or choose a --store path on a writable one`;
    case 'token-file':
      return 'the admin token file holds one line of at least 16 characters, e.g. made with: umask 077; openssl rand -base64 32 > FILE';
    default:
      if (e.code === 'EBUSY' && e.details.sqlite !== undefined) return 'another ioasid serve uses this database (only one may): stop it, or give this one another --store';
      if (e.code === 'EINVAL' && e.details.path !== undefined) return 'see docs/store.md, "Validation at open"; nothing was changed';
      if (e.code === 'ETIMEDOUT' && /etcd/.test(e.message)) return 'is etcd running at every endpoint of --store, and is the scheme right (etcd:// plaintext, etcds:// TLS)?';
      if (e.code === 'EOPNOTSUPP' && /cluster/.test(e.message)) return 'use --store sqlite:PATH or memory meanwhile';
      return 'run again with --debug for the stack';
  }
}

/** The one line a failed start prints (no secret: messages name files, never contents); with `debug`, the stack after it. */
export function startFailure(e: unknown, debug = false): { line: string; exitCode: number; stack: string | null } {
  const stack = debug && e instanceof Error && e.stack !== undefined ? e.stack : null;
  if (e instanceof InvalidArgumentError) return { line: `error: EINVAL: ${e.message} (hint: see ioasid serve --help)`, exitCode: 2, stack };
  const f = asFailure(e);
  if (f !== null) {
    // An option the service refused before opening anything is a usage error too.
    const usage = f.code === 'EINVAL' && typeof f.details.option === 'string';
    return { line: `error: ${f.code}: ${f.message} (hint: ${usage ? 'see ioasid serve --help' : hint(f)})`, exitCode: usage ? 2 : 1, stack };
  }
  const msg = (e instanceof Error ? e.message : String(e)).split('\n')[0] ?? '';
  const raw = (e as { code?: unknown } | null)?.code;
  const code = typeof raw === 'string' && /^E[A-Z]+$/.test(raw) ? raw : 'EFAULT';
  return { line: `error: ${code}: ${msg} (hint: run again with --debug for the stack)`, exitCode: 1, stack };
}

/**
 * grpc-js sends an IP address as the TLS server name; Node warns once (DEP0123). The certificate
 * is still checked against the address (its IP subjectAltName), so the warning only alarms.
 */
function quietIpServernameWarning(): void {
  const emit = process.emitWarning.bind(process);
  process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
    const code = typeof rest[0] === 'object' && rest[0] !== null ? (rest[0] as { code?: unknown }).code : rest[1];
    if (code === 'DEP0123') return;
    (emit as (...a: unknown[]) => void)(warning, ...rest);
  }) as typeof process.emitWarning;
}

export function serveCommand(): Command {
  return new Command('serve')
    .description(DESCRIPTIONS.serve)
    .addOption(new Option('--store <spec>', 'memory, sqlite:PATH, etcd://HOST:PORT[,HOST:PORT...] (cluster mode: every etcd member) or etcds://... (the same over TLS)').default(DEFAULT_STORE).argParser(storeSpec))
    .option('--host-id <name>', "cluster mode: this host's name in the migration domain (default: the hostname)")
    .option('--domain <name>', 'cluster mode: the migration domain (one PASID namespace) to join (default: default)')
    .addOption(new Option('--etcd-ca <file>', "etcds://: PEM file of the CA that signed the etcd members' certificates (default: Node's CA list)").env('IOASID_ETCD_CA'))
    .addOption(new Option('--etcd-cert <file>', 'etcds://: PEM client certificate for etcd (with --etcd-key)').env('IOASID_ETCD_CERT'))
    .addOption(new Option('--etcd-key <file>', "etcds://: PEM private key of --etcd-cert (mode 0600)").env('IOASID_ETCD_KEY'))
    .addOption(new Option('--etcd-user <name>', 'etcd user (with --etcd-password-file)').env('IOASID_ETCD_USER'))
    .addOption(new Option('--etcd-password-file <file>', "file holding the etcd user's password on one line (mode 0600); never give the password itself").env('IOASID_ETCD_PASSWORD_FILE'))
    // Only to refuse it, without echoing the value (a mistyped flag would be echoed by commander).
    .addOption(new Option('--etcd-password <password>').hideHelp())
    .option('--host <address>', 'address to listen on', '127.0.0.1')
    .option('--port <port>', 'TCP port (0: any free port)', port, DEFAULT_PORT)
    .option('--socket <path>', 'listen on a Unix socket instead of TCP (clients: --url unix:PATH)')
    .option('--admin-token-file <path>', "the admin token (one line, 16+ characters); it replaces the store's if it differs (how a lost one is replaced). Without it: the state folder's admin.token is adopted, or created at first start, never overwritten")
    .addOption(new Option('--sync <mode>', 'SQLite durability: full (an fsync per commit: an acknowledged change survives a power loss) or normal (faster; survives a crash of the service, but a power loss can take back the last acknowledged changes, and their PASIDs may then be handed out twice)').default(DEFAULT_SYNC).argParser(oneOf('--sync', ['full', 'normal'] as const)))
    .addOption(new Option('--log-level <level>', 'least severe log records written').default('info').argParser(oneOf('--log-level', LOG_LEVELS)))
    .addOption(new Option('--log-format <format>', 'json (one pino record per line) or text (readable lines); either way on stderr').default('json').argParser(oneOf('--log-format', LOG_FORMATS)))
    .option('--debug', 'on a failed start, print the stack after the error line')
    // Bounds and access (docs/security.md).
    .option('--headers-timeout <ms>', 'a request line and headers must arrive within this (default 10000)', positive('--headers-timeout'))
    .option('--request-timeout <ms>', 'a whole request, body included, must arrive within this (default 30000)', positive('--request-timeout'))
    .option('--idle-timeout <ms>', 'a kept-alive connection without a request is closed after this (default 5000)', positive('--idle-timeout'))
    .option('--max-connections <n>', 'open connections at most, event streams included (default 4096; keep it below ulimit -n)', positive('--max-connections'))
    .option('--shutdown-grace <ms>', 'on SIGTERM, requests in flight and subscribers get this long before their connections are cut (default 10000)', positive('--shutdown-grace'))
    .option('--max-subscriptions <n>', 'event stream subscriptions in all (default 1024)', positive('--max-subscriptions'))
    .option('--max-subscriptions-per-token <n>', 'event stream subscriptions one token may hold (default 16)', positive('--max-subscriptions-per-token'))
    .addOption(new Option('--metrics-token-file <path>', 'a token (one line, mode 0600) that may read /metrics besides the admin token: the one Prometheus scrapes with').env('IOASID_METRICS_TOKEN_FILE'))
    .option('--metrics-no-auth', '/metrics without any token: only on a network where every client may see every VM\'s use')
    .addHelpText('after', `
Every start-up failure prints one line, error: CODE: message (hint: ...), and exits 1 (2 for a bad
option); it writes no admin token file. See docs/cli.md.

Cluster mode over TLS with an etcd user (docs/cluster.md):
  ioasid serve --store etcds://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379 --host-id hostA --domain rack7 \\
    --etcd-ca /etc/ioasid/etcd-ca.pem --etcd-cert /etc/ioasid/etcd-client.pem --etcd-key /etc/ioasid/etcd-client.key \\
    --etcd-user ioasid --etcd-password-file /etc/ioasid/etcd.password`)
    .action(async (o: ServeFlags) => {
      try {
        if (o.etcdPassword !== undefined) {
          throw new InvalidArgumentError('--etcd-password is not accepted: a password in the arguments is visible to every user of this machine (ps, /proc); put it in a file only you can read (chmod 600) and pass --etcd-password-file');
        }
        const etcdSecurity: EtcdSecurityOptions = {
          ...(o.etcdCa !== undefined ? { caFile: o.etcdCa } : {}),
          ...(o.etcdCert !== undefined ? { certFile: o.etcdCert } : {}),
          ...(o.etcdKey !== undefined ? { keyFile: o.etcdKey } : {}),
          ...(o.etcdUser !== undefined ? { user: o.etcdUser } : {}),
          ...(o.etcdPasswordFile !== undefined ? { passwordFile: o.etcdPasswordFile } : {}),
        };
        if (o.store.startsWith('etcds://')) quietIpServernameWarning();
        const limits = {
          ...(o.headersTimeout !== undefined ? { headersTimeoutMs: o.headersTimeout } : {}),
          ...(o.requestTimeout !== undefined ? { requestTimeoutMs: o.requestTimeout } : {}),
          ...(o.idleTimeout !== undefined ? { idleTimeoutMs: o.idleTimeout } : {}),
          ...(o.maxConnections !== undefined ? { maxConnections: o.maxConnections } : {}),
          ...(o.shutdownGrace !== undefined ? { shutdownGraceMs: o.shutdownGrace } : {}),
        };
        const events = {
          ...(o.maxSubscriptions !== undefined ? { total: o.maxSubscriptions } : {}),
          ...(o.maxSubscriptionsPerToken !== undefined ? { perCaller: o.maxSubscriptionsPerToken } : {}),
        };
        await serveUntilSignalled({
          limits,
          events,
          ...(o.metricsTokenFile !== undefined ? { metricsTokenFile: o.metricsTokenFile } : {}),
          ...(o.metricsNoAuth === true ? { metricsNoAuth: true } : {}),
          store: o.store,
          host: o.host,
          port: o.port,
          logLevel: o.logLevel,
          logFormat: o.logFormat,
          sync: o.sync,
          ...(Object.keys(etcdSecurity).length > 0 ? { etcdSecurity } : {}),
          ...(o.socket !== undefined ? { socket: o.socket } : {}),
          ...(o.adminTokenFile !== undefined ? { adminTokenFile: o.adminTokenFile } : {}),
          ...(o.hostId !== undefined ? { hostId: o.hostId } : {}),
          ...(o.domain !== undefined ? { domain: o.domain } : {}),
        });
      } catch (e) {
        const { line, exitCode, stack } = startFailure(e, o.debug === true);
        process.stderr.write(`${line}\n${stack !== null ? `${stack}\n` : ''}`);
        // Exit now: a half-started service may hold handles (a listening socket, etcd channels).
        process.exit(exitCode);
      }
    });
}
