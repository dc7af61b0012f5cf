/**
 * `ioasid serve`: open the store, replay it, listen, settle the admin token; on SIGTERM or SIGINT
 * stop accepting, give what is in flight the shutdown grace period (then cut it), close the store
 * and exit 0.
 *
 * A start that fails writes nothing of its own: the admin token file is written only once the
 * service listens, and never over an existing file (docs/cli.md, "The admin token").
 *
 * Logs: one stream (stderr), one format: pino's JSON lines by default, or one readable line per
 * record (`logFormat: 'text'`). Lifecycle records (listening, the admin token, shutdown) are logs
 * like any other; requests are logged at debug, one line each.
 */
import { accessSync, constants, existsSync, linkSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join, resolve } from 'node:path';
import { constants as osConstants } from 'node:os';
import type { FastifyBaseLogger, FastifyInstance } from 'fastify';
import { IoasidError, isIoasidError } from '../core/index.ts';
import { EtcdStore, openStore, type EtcdSecurityOptions, type SqliteSyncMode } from '../store/index.ts';
import { EtcdClusterRole } from '../cluster/index.ts';
import { PasidAuthority } from './authority.ts';
import { toMutations } from './store-journal.ts';
import { buildApp, type ConnectionLimits, type ServiceApp } from './app.ts';
import type { EventHub, EventHubOptions } from './event-hub.ts';
import type { ServiceMetrics } from './metrics.ts';
import { registerDashboard } from './dashboard.ts';
import { hashToken, newToken, readTokenFile } from './tokens.ts';
import { LOG_FORMATS, LOG_LEVELS, logSink, type LogFormat, type LogLevel } from './log-format.ts';

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
  /**
   * Read the admin token from this file; the store's admin token becomes this one (how a lost
   * admin token is replaced). Without it, `stateDir/admin.token` is adopted or created.
   */
  readonly adminTokenFile?: string;
  /** Where the admin token file is kept (default: beside the database, or ./var). */
  readonly stateDir?: string;
  /** pino level (default info): fatal, error, warn, info, debug, trace or silent. */
  readonly logLevel?: string;
  /** `json` (default: pino's JSON lines) or `text` (one readable line per record). */
  readonly logFormat?: LogFormat;
  /**
   * SQLite durability: 'full' (default: an fsync per commit, so an acknowledged change survives a
   * power loss too) or 'normal' (WAL without that fsync: it survives a crash of the service, but a
   * power loss can take the last acknowledged changes back, and their PASIDs can then be handed
   * out a second time while guests still use them).
   */
  readonly sync?: SqliteSyncMode;
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
  /** Where each log line goes (default: stderr). */
  readonly say?: (line: string) => void;
}

export interface RunningServer {
  readonly app: ServiceApp & { readonly metrics: ServiceMetrics; readonly events: EventHub };
  readonly authority: PasidAuthority;
  /** `http://127.0.0.1:7070` or `unix:/path`. */
  readonly url: string;
  readonly adminTokenPath: string | null;
  readonly log: FastifyBaseLogger;
  close(): Promise<void>;
}

export const DEFAULT_STORE = 'sqlite:./var/ioasid.db';
export const DEFAULT_PORT = 7070;
export const DEFAULT_SYNC: SqliteSyncMode = 'full';
/** The text of fastify's listening record, which is dropped (ours says more, later). */
const FASTIFY_LISTENING = '\u0000fastify-listening';
/** An admin token shorter than this is refused (a generated one is 43 characters). */
export const ADMIN_TOKEN_MIN_LENGTH = 16;

/** Checks of the options that need no I/O: a bad one is a usage error, found before anything is opened. */
export function checkServeOptions(opts: ServeOptions): void {
  const spec = opts.store ?? DEFAULT_STORE;
  if (opts.logLevel !== undefined && !(LOG_LEVELS as readonly string[]).includes(opts.logLevel)) {
    throw new IoasidError('EINVAL', `log level must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(opts.logLevel)}`, { option: 'logLevel', value: opts.logLevel });
  }
  if (opts.logFormat !== undefined && !(LOG_FORMATS as readonly string[]).includes(opts.logFormat)) {
    throw new IoasidError('EINVAL', `log format must be one of ${LOG_FORMATS.join(', ')}, got ${JSON.stringify(opts.logFormat)}`, { option: 'logFormat', value: opts.logFormat });
  }
  if (opts.sync !== undefined && opts.sync !== 'full' && opts.sync !== 'normal') {
    throw new IoasidError('EINVAL', `sync must be full or normal, got ${JSON.stringify(opts.sync)}`, { option: 'sync', value: opts.sync });
  }
  if ((opts.hostId !== undefined || opts.domain !== undefined) && !spec.startsWith('etcd')) {
    throw new IoasidError('EINVAL', `--host-id and --domain need an etcd store (--store etcd://HOST:PORT,...), not ${spec}`, { store: spec, option: 'hostId' });
  }
  if (opts.metricsNoAuth === true && opts.metricsTokenFile !== undefined) {
    throw new IoasidError('EINVAL', '--metrics-no-auth and --metrics-token-file contradict each other: choose one', { option: 'metricsNoAuth' });
  }
}

export async function startServer(opts: ServeOptions = {}): Promise<RunningServer> {
  checkServeOptions(opts);
  const spec = opts.store ?? DEFAULT_STORE;
  // Read before the store is opened: a wrong file touches nothing.
  const metricsToken = opts.metricsTokenFile !== undefined ? readTokenFile(opts.metricsTokenFile, 'metrics token file') : undefined;
  const level = (opts.logLevel ?? 'info') as LogLevel;
  const sink = opts.say ?? ((l: string) => void process.stderr.write(`${l}\n`));
  // Records made before the app's logger exists (cluster mode's, while the store opens) wait for it.
  const early: { level: 'warn' | 'error'; message: string; details?: Record<string, unknown> }[] = [];
  let log: FastifyBaseLogger | null = null;
  const clusterLog = (lvl: string, message: string, details?: Record<string, unknown>) => {
    if (lvl !== 'warn' && lvl !== 'error') return;
    if (log === null) early.push({ level: lvl, message, ...(details !== undefined ? { details } : {}) });
    else log[lvl]({ cluster: true, ...details }, message);
  };
  const store = openStore(spec, {
    synchronous: opts.sync ?? DEFAULT_SYNC,
    ...(opts.hostId !== undefined ? { hostId: opts.hostId } : {}),
    ...(opts.domain !== undefined ? { domain: opts.domain } : {}),
    ...(opts.etcdSecurity !== undefined ? { etcdSecurity: opts.etcdSecurity } : {}),
    ...(spec.startsWith('etcd') ? { log: clusterLog } : {}),
  });
  const stateDir = resolve(opts.stateDir ?? (spec.startsWith('sqlite:') ? dirname(spec.slice('sqlite:'.length)) : './var'));
  // The given admin token file is read before anything is opened: a missing one fails the start early.
  const given = opts.adminTokenFile !== undefined ? readAdminToken(opts.adminTokenFile, '--admin-token-file') : null;

  // Cluster mode (docs/cluster.md): the host commits through the domain's etcd journal.
  const cluster = store instanceof EtcdStore ? new EtcdClusterRole({ store, rows: toMutations, log: clusterLog }) : undefined;
  const authority = await PasidAuthority.open({ store, ...(cluster !== undefined ? { cluster } : {}) }).catch((e: unknown) => {
    throw diagnoseStoreFolder(e, spec);
  });
  let app: Awaited<ReturnType<typeof buildApp>> | null = null;
  try {
    app = await buildApp({
      authority,
      ...(opts.events !== undefined ? { events: opts.events } : {}),
      ...(opts.limits !== undefined ? { limits: opts.limits } : {}),
      ...(metricsToken !== undefined || opts.metricsNoAuth === true ? { metrics: { ...(metricsToken !== undefined ? { token: metricsToken } : {}), open: opts.metricsNoAuth === true } } : {}),
      logger: level === 'silent' ? false : {
        level,
        stream: logSink(opts.logFormat ?? 'json', sink),
        // fastify's own "Server listening at" record is replaced by ours, written once the admin
        // token is settled (its text is set to a marker below, so that no wording of it leaks).
        hooks: {
          logMethod(this: unknown, args: unknown[], method: (...a: unknown[]) => void) {
            if (args[0] !== FASTIFY_LISTENING) method.apply(this, args);
          },
        },
      },
      extend: async (f: FastifyInstance) => {
        if (opts.dashboard !== false) await registerDashboard(f);
        if (opts.extend) await opts.extend(f);
      },
    });
    log = app.log;
    for (const r of early.splice(0)) log[r.level]({ cluster: true, ...r.details }, r.message);
    let url: string;
    try {
      const listenTextResolver = () => FASTIFY_LISTENING;
      url = opts.socket !== undefined
        ? (await app.listen({ path: opts.socket, listenTextResolver }), `unix:${resolve(opts.socket)}`)
        : await app.listen({ host: opts.host ?? '127.0.0.1', port: opts.port ?? DEFAULT_PORT, listenTextResolver });
    } catch (e) {
      throw listenError(e, opts);
    }
    // Only now, with the service listening, is the admin token settled and its file written.
    const adminTokenPath = given !== null
      ? await adoptGiven(authority, given, log)
      : await settleDefaultToken(authority, join(stateDir, 'admin.token'), log);
    if (store instanceof EtcdStore) await store.advertise(url);
    const where = store instanceof EtcdStore ? { host: store.hostId, domain: store.domain } : {};
    log.info({ url, store: store.spec, ...(store.kind === 'sqlite' ? { sync: opts.sync ?? DEFAULT_SYNC } : {}), ...where, adminTokenFile: adminTokenPath }, `listening on ${url}`);
    if (opts.dashboard !== false && url.startsWith('http')) {
      log.info({ dashboard: `${url}/` }, `dashboard: ${url}/${adminTokenPath !== null ? ` (sign in with the token in ${adminTokenPath})` : ''}`);
    }
    const tryNext = `ioasid status${url !== `http://127.0.0.1:${DEFAULT_PORT}` ? ` --url ${url}` : ''}${adminTokenPath !== null && adminTokenPath !== resolve('var/admin.token') ? ` --token-file ${adminTokenPath}` : ''}`;
    log.info({ next: tryNext }, `next, in another terminal: ${tryNext}`);

    const running = app;
    let closed: Promise<void> | null = null;
    const close = (): Promise<void> => {
      closed ??= (async () => {
        await running.shutdown(); // stops accepting; requests in flight get the grace period, then are cut
        await authority.close(); // waits for VCMD commands in flight, closes the store
      })();
      return closed;
    };
    return { app: running, authority, url, adminTokenPath, log, close };
  } catch (e) {
    await app?.close().catch(() => {});
    await authority.close().catch(() => {});
    throw e;
  }
}

/**
 * Run until SIGTERM/SIGINT, then shut down cleanly and exit 0. The handlers are in place before
 * the start begins: a signal that arrives while the service starts (even just after its
 * "listening on" line, which a supervisor may be waiting for) is not the default action that kills
 * the process mid-write, but a clean stop as soon as the start is over. A second signal during the
 * start exits at once (128 + the signal's number), for a start that waits on an unreachable store.
 */
export async function serveUntilSignalled(opts: ServeOptions = {}): Promise<RunningServer> {
  let server: RunningServer | null = null;
  let pending: NodeJS.Signals | null = null;
  const say = opts.say ?? ((l: string) => void process.stderr.write(`${l}\n`));
  const stop = (s: RunningServer, signal: string) => {
    s.log.info({ signal }, `${signal}: finishing requests in flight and closing the store`);
    s.close().then(
      () => {
        s.log.info('stopped');
        process.exit(0);
      },
      (e: unknown) => {
        s.log.error({ err: e }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  const onSignal = (signal: NodeJS.Signals) => {
    if (server !== null) {
      process.removeListener('SIGTERM', onSignal);
      process.removeListener('SIGINT', onSignal);
      stop(server, signal);
    } else if (pending === null) {
      pending = signal;
    } else {
      say(`${signal} again while starting: exiting now`);
      process.exit(128 + (osConstants.signals[signal] ?? 15));
    }
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    server = await startServer(opts);
  } catch (e) {
    process.removeListener('SIGTERM', onSignal);
    process.removeListener('SIGINT', onSignal);
    throw e;
  }
  if (pending !== null) onSignal(pending);
  return server;
}

// ------------------------------------------------------------------ the admin token

/** An admin token file: one line, at least 16 characters. */
function readAdminToken(path: string, what: string): { path: string; token: string } {
  const file = resolve(path);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
    throw new IoasidError(code === 'ENOENT' ? 'ENOENT' : code === 'EACCES' || code === 'EPERM' ? 'EACCES' : 'EINVAL', `cannot read the admin token file ${file} (${what}): ${code}`, { file, reason: 'token-file', cause: code });
  }
  const token = text.trim();
  if (token.length < ADMIN_TOKEN_MIN_LENGTH || /\s/.test(token)) {
    throw new IoasidError('EINVAL', `the admin token in ${file} (${what}) must be one line of at least ${ADMIN_TOKEN_MIN_LENGTH} characters without spaces`, { file, reason: 'token-file' });
  }
  return { path: file, token };
}

/** `--admin-token-file`: its token becomes the admin token (replacing a lost one). */
async function adoptGiven(authority: PasidAuthority, given: { path: string; token: string }, log: FastifyBaseLogger): Promise<string> {
  if (!authority.isAdmin(given.token)) {
    const replaced = authority.hasAdmin;
    await authority.setAdminTokenHash(hashToken(given.token));
    log.warn({ adminTokenFile: given.path, replaced }, replaced ? `admin token replaced by the one in ${given.path}: the previous admin token no longer works` : `admin token set from ${given.path}`);
  }
  return given.path;
}

/**
 * Without `--admin-token-file`: the store's admin token stays; a store without one adopts the
 * token of an existing file (another service in the same folder, a file kept from an earlier
 * store) or gets a new one, written to a new file. An existing file is never written.
 */
async function settleDefaultToken(authority: PasidAuthority, path: string, log: FastifyBaseLogger): Promise<string | null> {
  const exists = existsSync(path);
  if (authority.hasAdmin) {
    if (!exists) {
      log.warn({ adminTokenFile: path }, `the admin token was set at this store's first start and its file is not at ${path}; if it is lost, restart with --admin-token-file FILE holding a new one (docs/cli.md)`);
      return null;
    }
    const { token } = readAdminToken(path, 'the state folder\'s admin token file');
    if (!authority.isAdmin(token)) {
      log.warn({ adminTokenFile: path }, `the token in ${path} is not this store's admin token: it was left unchanged; to make it the admin token, restart with --admin-token-file ${path}`);
    }
    return path;
  }
  if (exists) {
    const { token } = readAdminToken(path, 'the state folder\'s admin token file');
    await authority.setAdminTokenHash(hashToken(token));
    log.info({ adminTokenFile: path }, `admin token adopted from ${path} (the store had none)`);
    return path;
  }
  const token = newToken();
  const written = writeNewFile(path, `${token}\n`);
  if (!written) return settleDefaultToken(authority, path, log); // another service wrote it first: adopt it
  try {
    await authority.setAdminTokenHash(hashToken(token));
  } catch (e) {
    unlinkSync(path);
    throw e;
  }
  log.info({ adminTokenFile: path }, `admin token created in ${path} (mode 0600; the store keeps only its hash)`);
  return path;
}

/**
 * Create a file with its whole content, mode 0600, only if none exists at `path` (a hard link of
 * a finished temporary file: a reader never sees it half written, and a racing writer loses
 * cleanly). Returns false when a file was already there.
 */
function writeNewFile(path: string, content: string): boolean {
  const dir = dirname(path);
  try {
    mkdirSync(dir, { recursive: true });
    const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}`);
    writeFileSync(tmp, content, { mode: 0o600, flag: 'wx' });
    try {
      linkSync(tmp, path);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw e;
    } finally {
      unlinkSync(tmp);
    }
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
    const errno = code === 'EACCES' || code === 'EPERM' ? 'EACCES' : code === 'EROFS' ? 'EROFS' : 'EIO';
    const reason = errno === 'EROFS' ? 'state-folder-readonly' : errno === 'EACCES' ? 'state-folder-permission' : 'state-folder';
    throw new IoasidError(errno, `cannot write the admin token file ${path}: ${code}`, { file: path, folder: dir, reason, cause: code }, { cause: e });
  }
}

/**
 * A store that could not be opened for want of a writable folder or file: say which, and why
 * (SQLite only says "unable to open database file" or "disk I/O error").
 */
function diagnoseStoreFolder(e: unknown, spec: string): unknown {
  if (!spec.startsWith('sqlite:') || !isIoasidError(e) || !['EIO', 'EACCES', 'ENOENT'].includes(e.code)) return e;
  const file = resolve(spec.slice('sqlite:'.length));
  let folder = dirname(file);
  while (!existsSync(folder) && dirname(folder) !== folder) folder = dirname(folder);
  const check = (path: string, mode: number): string | null => {
    try {
      accessSync(path, mode);
      return null;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code ?? 'EIO';
    }
  };
  const onFolder = check(folder, constants.W_OK | constants.X_OK);
  const onFile = onFolder === null && existsSync(file) ? check(file, constants.R_OK | constants.W_OK) : null;
  const code = onFolder ?? onFile;
  const what = onFolder !== null ? `the data folder ${folder}` : `the database file ${file}`;
  if (code === 'EROFS') return new IoasidError('EROFS', `${what} is on a read-only file system (${e.message})`, { ...e.details, reason: 'state-folder-readonly', folder }, { cause: e });
  if (code === 'EACCES' || code === 'EPERM') return new IoasidError('EACCES', `no permission to write ${what} (${e.message})`, { ...e.details, reason: 'state-folder-permission', folder }, { cause: e });
  return e;
}

/**
 * A start-up failure whose errno is not one the API answers with (EADDRINUSE, ...): the same
 * shape as an IoasidError (code, message, details.reason) for the CLI's one line and its hint.
 */
export class StartError extends Error {
  override readonly name = 'StartError';
  readonly code: string;
  readonly details: Readonly<Record<string, unknown>>;
  constructor(code: string, message: string, details: Readonly<Record<string, unknown>>, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.details = details;
  }
}

/** A listen that failed, as the operator would say it. */
function listenError(e: unknown, opts: ServeOptions): unknown {
  const code = (e as NodeJS.ErrnoException).code;
  const socket = opts.socket !== undefined ? resolve(opts.socket) : null;
  const where = socket !== null ? `the socket ${socket}` : `${opts.host ?? '127.0.0.1'}:${opts.port ?? DEFAULT_PORT}`;
  const details = { socket, host: opts.host ?? '127.0.0.1', port: opts.port ?? DEFAULT_PORT };
  if (code === 'EADDRINUSE') return new StartError('EADDRINUSE', `${where} is already in use by another process`, { ...details, reason: 'address-in-use' }, { cause: e });
  if (code === 'EACCES' || code === 'EPERM') return new StartError('EACCES', `no permission to listen on ${where}`, { ...details, reason: 'listen-permission' }, { cause: e });
  if (code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND' || code === 'EAI_AGAIN') return new StartError('EADDRNOTAVAIL', `cannot listen on ${where}: not an address of this machine`, { ...details, reason: 'listen-address' }, { cause: e });
  return e;
}
