/**
 * `ioasid serve`: the PASID authority service.
 *
 * A start that fails prints one line, `error: CODE: message (hint)`, on stderr and exits 1; a bad
 * flag value exits 2, as the client commands do.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { isIoasidError, type IoasidError } from '../client/index.ts';
// The one module of the CLI that reaches the service: `ioasid serve` runs it (docs/decisions.md).
import { DEFAULT_PORT, DEFAULT_STORE, serveUntilSignalled } from '../service/index.ts';
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
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError(`port must be an integer in [0, 65535], got ${v}`);
  return n;
}

interface ServeFlags {
  store: string;
  host: string;
  port: number;
  socket?: string;
  adminTokenFile?: string;
  logLevel: string;
  sync: string;
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

/** What to try next, by the reason a start failed (the message already says what is wrong). */
function hint(e: IoasidError): string {
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
    default:
      if (e.code === 'ETIMEDOUT' && /etcd/.test(e.message)) return 'is etcd running at every endpoint of --store, and is the scheme right (etcd:// plaintext, etcds:// TLS)?';
      return '';
  }
}

/** The one line a failed start prints (no stack, no secret: messages name files, never contents). */
export function startFailure(e: unknown): { line: string; exitCode: number } {
  if (e instanceof InvalidArgumentError) return { line: `error: EINVAL: ${e.message}`, exitCode: 2 };
  if (isIoasidError(e)) {
    const h = hint(e);
    return { line: `error: ${e.code}: ${e.message}${h !== '' ? ` (hint: ${h})` : ''}`, exitCode: 1 };
  }
  const msg = (e instanceof Error ? e.message : String(e)).split('\n')[0] ?? '';
  const code = typeof (e as { code?: unknown } | null)?.code === 'string' && /^E[A-Z]+$/.test((e as { code: string }).code) ? (e as { code: string }).code : 'EFAULT';
  return { line: `error: ${code}: ${msg}`, exitCode: 1 };
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
    .option('--store <spec>', 'memory, sqlite:PATH, etcd://HOST:PORT[,HOST:PORT...] (cluster mode: every etcd member) or etcds://... (the same over TLS)', DEFAULT_STORE)
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
    .option('--port <port>', 'TCP port', port, DEFAULT_PORT)
    .option('--socket <path>', 'listen on a Unix socket instead of TCP')
    .option('--admin-token-file <path>', 'read the admin token from this file (else one is created at first start)')
    .option('--sync <mode>', "SQLite durability: normal (survives a crash of the service) or full (an fsync per commit: survives a power loss)", 'normal')
    .option('--log-level <level>', 'pino log level', 'info')
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
    .addHelpText('after', '\nCluster mode over TLS with an etcd user (docs/cluster.md):\n  ioasid serve --store etcds://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379 --host-id hostA --domain rack7 \\\n    --etcd-ca /etc/ioasid/etcd-ca.pem --etcd-cert /etc/ioasid/etcd-client.pem --etcd-key /etc/ioasid/etcd-client.key \\\n    --etcd-user ioasid --etcd-password-file /etc/ioasid/etcd.password')
    .action(async (o: ServeFlags) => {
      try {
        if (o.etcdPassword !== undefined) {
          throw new InvalidArgumentError('--etcd-password is not accepted: a password in the arguments is visible to every user of this machine (ps, /proc); put it in a file only you can read (chmod 600) and pass --etcd-password-file');
        }
        if (o.sync !== 'normal' && o.sync !== 'full') throw new InvalidArgumentError(`--sync must be normal or full, got ${o.sync}`);
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
          sync: o.sync,
          ...(Object.keys(etcdSecurity).length > 0 ? { etcdSecurity } : {}),
          ...(o.socket !== undefined ? { socket: o.socket } : {}),
          ...(o.adminTokenFile !== undefined ? { adminTokenFile: o.adminTokenFile } : {}),
          ...(o.hostId !== undefined ? { hostId: o.hostId } : {}),
          ...(o.domain !== undefined ? { domain: o.domain } : {}),
        });
      } catch (e) {
        const { line, exitCode } = startFailure(e);
        process.stderr.write(`${line}\n`);
        // Exit now: a half-started service may hold handles (a listening socket, etcd channels).
        process.exit(exitCode);
      }
    });
}
