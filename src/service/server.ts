/**
 * `ioasid serve`: open the store, replay it, settle the admin token, listen; on SIGTERM or SIGINT
 * stop accepting, give what is in flight the shutdown grace period (then cut it), close the store
 * and exit 0.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { IoasidError } from '../core/index.ts';
import { EtcdStore, openStore, type EtcdSecurityOptions } from '../store/index.ts';
import { EtcdClusterRole } from '../cluster/index.ts';
import { PasidAuthority } from './authority.ts';
import { toMutations } from './store-journal.ts';
import { buildApp, type ConnectionLimits, type ServiceApp } from './app.ts';
import type { EventHub, EventHubOptions } from './event-hub.ts';
import type { ServiceMetrics } from './metrics.ts';
import { registerDashboard } from './dashboard.ts';
import { hashToken, newToken, readTokenFile } from './tokens.ts';

export interface ServeOptions {
  /** `memory`, `sqlite:PATH` (default `sqlite:./var/ioasid.db`), `etcd://HOST:PORT[,...]` or `etcds://...` (TLS). */
  readonly store?: string;
  /** Cluster mode (etcd): CA, client certificate and key, etcd user and password file. */
  readonly etcdSecurity?: EtcdSecurityOptions;
  /** Cluster mode (etcd): this host's name in its migration domain (default: the hostname). */
  readonly hostId?: string;
  /** Cluster mode (etcd): the migration domain (default `default`). */
  readonly domain?: string;
  readonly host?: string;
  readonly port?: number;
  /** Listen on a Unix socket instead of TCP. */
  readonly socket?: string;
  /** Read the admin token from this file (else one is made at first start). */
  readonly adminTokenFile?: string;
  /** Where a generated admin token is written (default: beside the database, or ./var). */
  readonly stateDir?: string;
  readonly logLevel?: string;
  /**
   * SQLite durability: 'normal' (default; WAL: every acknowledged change survives a crash of the
   * service, the last ones may not survive a power loss, which also kills every VM that held them)
   * or 'full' (an fsync per commit: survives a power loss too, about 4x slower here).
   */
  readonly sync?: 'normal' | 'full';
  /** Serve the dashboard at `/` (default true). */
  readonly dashboard?: boolean;
  /** Extra routes, registered after the dashboard. */
  readonly extend?: (app: FastifyInstance) => void | Promise<void>;
  /** Bounds of the event stream (subscriptions per caller and in all, a slow consumer's buffer). */
  readonly events?: EventHubOptions;
  /** Header, request and idle timeouts, connection cap, shutdown grace (docs/security.md). */
  readonly limits?: ConnectionLimits;
  /** A token (in this file, mode 0600) that may read /metrics besides the admin token. */
  readonly metricsTokenFile?: string;
  /** /metrics without any token: for a trusted network only. */
  readonly metricsNoAuth?: boolean;
  /** Where to say what happens (default stderr). */
  readonly say?: (line: string) => void;
}

export interface RunningServer {
  readonly app: ServiceApp & { readonly metrics: ServiceMetrics; readonly events: EventHub };
  readonly authority: PasidAuthority;
  /** `http://127.0.0.1:7070` or `unix:/path`. */
  readonly url: string;
  readonly adminTokenPath: string | null;
  close(): Promise<void>;
}

export const DEFAULT_STORE = 'sqlite:./var/ioasid.db';
export const DEFAULT_PORT = 7070;

export async function startServer(opts: ServeOptions = {}): Promise<RunningServer> {
  const say = opts.say ?? ((l: string) => process.stderr.write(`${l}\n`));
  const spec = opts.store ?? DEFAULT_STORE;
  // Before the store is opened: a wrong flag touches nothing.
  if (opts.metricsNoAuth === true && opts.metricsTokenFile !== undefined) {
    throw new IoasidError('EINVAL', '--metrics-no-auth and --metrics-token-file contradict each other: choose one', {});
  }
  const metricsToken = opts.metricsTokenFile !== undefined ? readTokenFile(opts.metricsTokenFile, 'metrics token file') : undefined;
  if ((opts.hostId !== undefined || opts.domain !== undefined) && !spec.startsWith('etcd')) {
    throw new IoasidError('EINVAL', `--host-id and --domain need an etcd store (--store etcd://HOST:PORT,...), not ${spec}`, { store: spec });
  }
  // Cluster mode's warnings (lease lost, fenced, watch restarted) go where the lifecycle lines go.
  const clusterLog = (level: string, message: string, details?: Record<string, unknown>) => {
    if (opts.logLevel !== 'silent' && (level === 'warn' || level === 'error')) say(`cluster ${level}: ${message}${details ? ` ${JSON.stringify(details)}` : ''}`);
  };
  const store = openStore(spec, {
    synchronous: opts.sync ?? 'normal',
    ...(opts.hostId !== undefined ? { hostId: opts.hostId } : {}),
    ...(opts.domain !== undefined ? { domain: opts.domain } : {}),
    ...(opts.etcdSecurity !== undefined ? { etcdSecurity: opts.etcdSecurity } : {}),
    ...(spec.startsWith('etcd') ? { log: clusterLog } : {}),
  });
  // Cluster mode (docs/cluster.md): the host commits through the domain's etcd journal.
  const cluster = store instanceof EtcdStore ? new EtcdClusterRole({ store, rows: toMutations, log: clusterLog }) : undefined;
  const authority = await PasidAuthority.open({ store, ...(cluster !== undefined ? { cluster } : {}) });
  const stateDir = resolve(opts.stateDir ?? (spec.startsWith('sqlite:') ? dirname(spec.slice('sqlite:'.length)) : './var'));

  let adminTokenPath: string | null = null;
  if (opts.adminTokenFile !== undefined) {
    const token = readFileSync(opts.adminTokenFile, 'utf8').trim();
    if (token.length < 16) throw new IoasidError('EINVAL', `admin token in ${opts.adminTokenFile} is shorter than 16 characters`, { file: opts.adminTokenFile });
    if (!authority.isAdmin(token)) await authority.setAdminTokenHash(hashToken(token));
    adminTokenPath = resolve(opts.adminTokenFile);
  } else {
    adminTokenPath = join(stateDir, 'admin.token');
    if (!authority.hasAdmin) {
      const token = newToken();
      mkdirSync(stateDir, { recursive: true });
      writeFileSync(adminTokenPath, `${token}\n`, { mode: 0o600 });
      chmodSync(adminTokenPath, 0o600);
      await authority.setAdminTokenHash(hashToken(token));
      say(`admin token created: ${adminTokenPath} (stored hashed; keep the file private)`);
    } else if (!existsSync(adminTokenPath)) {
      adminTokenPath = null;
      say('admin token: set at first start (its file is not in the state folder; pass --admin-token-file to replace it)');
    }
  }

  const app = await buildApp({
    authority,
    ...(opts.events !== undefined ? { events: opts.events } : {}),
    ...(opts.limits !== undefined ? { limits: opts.limits } : {}),
    ...(metricsToken !== undefined || opts.metricsNoAuth === true ? { metrics: { ...(metricsToken !== undefined ? { token: metricsToken } : {}), open: opts.metricsNoAuth === true } } : {}),
    logger: opts.logLevel === 'silent' ? false : { level: opts.logLevel ?? 'info' },
    extend: async (f: FastifyInstance) => {
      if (opts.dashboard !== false) await registerDashboard(f);
      if (opts.extend) await opts.extend(f);
    },
  });
  let url: string;
  if (opts.socket !== undefined) {
    await app.listen({ path: opts.socket });
    url = `unix:${resolve(opts.socket)}`;
  } else {
    const address = await app.listen({ host: opts.host ?? '127.0.0.1', port: opts.port ?? DEFAULT_PORT });
    url = address;
  }
  if (store instanceof EtcdStore) await store.advertise(url);
  const where = store instanceof EtcdStore ? `, host ${store.hostId} in domain ${store.domain}` : '';
  say(`ioasid serve: listening on ${url} (store ${store.spec}${where}${adminTokenPath ? `, admin token in ${adminTokenPath}` : ''})`);

  let closed: Promise<void> | null = null;
  const close = (): Promise<void> => {
    closed ??= (async () => {
      await app.shutdown(); // stops accepting; requests in flight get the grace period, then are cut
      await authority.close(); // waits for VCMD commands in flight, closes the store
    })();
    return closed;
  };
  return { app, authority, url, adminTokenPath, close };
}

/** Run until SIGTERM/SIGINT, then shut down cleanly and exit 0. */
export async function serveUntilSignalled(opts: ServeOptions = {}): Promise<void> {
  const server = await startServer(opts);
  const stop = (signal: string) => {
    (opts.say ?? ((l: string) => process.stderr.write(`${l}\n`)))(`${signal}: finishing requests in flight and closing the store`);
    server.close().then(
      () => process.exit(0),
      (e: unknown) => {
        process.stderr.write(`shutdown failed: ${String(e)}\n`);
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
}
