/**
 * The HTTP service: fastify 5 around a PasidAuthority, its routes registered from the contract's
 * operation table (`src/api`). Every request is validated against the contract's schemas (no
 * coercion but the integers of paths and queries, no unknown fields, bounded bodies) and every
 * answer is serialised by its response schema; a refused request gets an RFC 9457 problem with
 * the errno code and changes nothing, whoever refuses it: a handler, the router (unknown route,
 * wrong method, malformed URL, over-long parameter), the body parser (media type, size, JSON) or
 * the connection itself (timeouts, oversized headers, malformed HTTP).
 *
 * Authentication (docs/security.md): an admin bearer token manages VMs; each VM's own token acts on
 * that VM only; `/metrics` takes the admin token or the metrics token given at start. The token is
 * checked in `onRequest`, before the body is read, and a refused request that still has a body
 * coming closes its connection. A 401 carries `WWW-Authenticate: Bearer`.
 *
 * Bounds (docs/security.md): headers, whole-request and idle timeouts, a connection cap, and a
 * shutdown that cuts whatever is still connected after a grace period.
 */
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import Fastify, { LogController, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import websocket from '@fastify/websocket';
import {
  EVENT_STREAM, PROBLEM_MEDIA_TYPE, TRANSPORT_STATUS, buildOpenApi, httpStatusOf, toProblem, type OperationId,
} from '../api/index.ts';
import { IoasidBugError, IoasidError, VM_ID_PATTERN } from '../core/index.ts';
import type { PasidAuthority } from './authority.ts';
import { ROUTES, type RouteDef, type ServiceContext } from './routes.ts';
import { ServiceMetrics } from './metrics.ts';
import { CLOSE, EventHub, type EventHubOptions } from './event-hub.ts';
import { bearerOfHeader, bearerOfProtocols, hashToken, tokenMatches } from './tokens.ts';
import { tenantError, tenantRegisters } from './tenant-view.ts';

/** Timeouts and the connection cap (docs/security.md); every field has a default. */
export interface ConnectionLimits {
  /** The request line and headers must arrive within this (ms, default 10 s). */
  readonly headersTimeoutMs?: number;
  /**
   * The whole request, body included, must arrive within this (ms, default 30 s); a connection
   * with nothing moving either way for 1 s more is closed too.
   */
  readonly requestTimeoutMs?: number;
  /** A kept-alive connection without a request is closed after this (ms, default 5 s). */
  readonly idleTimeoutMs?: number;
  /** Open connections at most, event streams included; one more is closed at once (default 4096). */
  readonly maxConnections?: number;
  /**
   * `shutdown()`: requests in flight and event subscribers get this long (ms, default 10 s) to
   * finish before every connection still open is cut.
   */
  readonly shutdownGraceMs?: number;
}

export const DEFAULT_LIMITS: Readonly<Required<ConnectionLimits>> = Object.freeze({
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  idleTimeoutMs: 5_000,
  maxConnections: 4096,
  shutdownGraceMs: 10_000,
});

/** Who may read `/metrics`: the admin token, a dedicated metrics token, or (open) anyone. */
export interface MetricsAccess {
  /** The metrics token given at start (kept hashed). */
  readonly token?: string;
  /** No token needed: for a trusted network only (`--metrics-no-auth`). */
  readonly open?: boolean;
}

export interface AppOptions {
  readonly authority: PasidAuthority;
  /** pino options (level, where the lines go, its hooks) or false (tests). */
  readonly logger?: boolean | { level: string; stream?: { write(line: string): void }; hooks?: { logMethod?: (this: unknown, args: unknown[], method: (...a: unknown[]) => void, level: number) => void } };
  /** Largest request body, bytes (default 64 KiB). */
  readonly bodyLimit?: number;
  /** Extra routes (e.g. the dashboard's static files) registered after the API. */
  readonly extend?: (app: FastifyInstance) => void | Promise<void>;
  /** Bounds of the event stream (event-hub.ts). */
  readonly events?: EventHubOptions;
  /** Timeouts, connection cap, shutdown grace. */
  readonly limits?: ConnectionLimits;
  /** Who may read /metrics (default: the admin token only). */
  readonly metrics?: MetricsAccess;
}

/** Connections the server holds, and those it turned away or timed out. */
export interface ConnectionStats {
  readonly open: number;
  /** Closed at once: the connection cap was reached. */
  readonly refused: number;
  /** Closed because a request did not arrive in time (headers or whole request). */
  readonly timedOut: number;
}

export type ServiceApp = FastifyInstance & {
  readonly metrics: ServiceMetrics;
  readonly events: EventHub;
  readonly limits: Readonly<Required<ConnectionLimits>>;
  connectionStats(): ConnectionStats;
  /**
   * Stop: refuse new requests (503), let those in flight and the event subscribers finish for at
   * most the grace period, then cut every connection still open. Resolves when the server is closed.
   */
  shutdown(graceMs?: number): Promise<void>;
};

declare module 'fastify' {
  interface FastifyRequest {
    /** Who is calling: 'admin', the VM whose token this is, or the metrics token's holder. */
    caller?: { kind: 'admin' } | { kind: 'vm'; vm: string } | { kind: 'metrics' };
  }
}

const REALM = 'ioasid';

/** Query parameters whose values are logged, and the shape a value must have to be. */
const LOGGED_QUERY: Readonly<Record<string, RegExp>> = { vm: new RegExp(VM_ID_PATTERN), since: /^\d{1,15}$/, limit: /^\d{1,10}$/ };

/**
 * Request logs: one line per request, when it completes, at debug (fastify writes two at info,
 * which at the default level doubled every request in the log); a failed one at error.
 */
class OneLinePerRequest extends LogController {
  override incomingRequest(): void {}

  override requestCompleted(error: Error | null | undefined, req: FastifyRequest, reply: FastifyReply): void {
    const log = reply.log as FastifyReply['log'] & { isLevelEnabled?: (level: string) => boolean };
    if (!error && log.isLevelEnabled?.('debug') !== true) return; // nothing to build at the default level
    const fields = { req, status: reply.statusCode, ms: +reply.elapsedTime.toFixed(3) };
    if (error) log.error({ ...fields, err: error }, 'request failed');
    else log.debug(fields, 'request completed');
  }
}

function decodePart(s: string): string | null {
  try {
    return decodeURIComponent(s.replace(/\+/g, ' '));
  } catch {
    return null;
  }
}

/**
 * A URL as it may be logged. Of the query, only `vm`, `since` and `limit` keep their values (when
 * they have their shape); any other parameter is logged by its decoded name, if that is a plain
 * short name, with its value `[redacted]`, else as `[redacted]` whole: so no credential reaches a
 * log however the query spells or encodes it (`token=`, `TOKEN=`, `%74oken=`, `access_token=`, a
 * bare value). With `isToken` (the service's own tokens), a path segment or a `vm` value that is a
 * token someone put in the wrong place is `[redacted]` too.
 */
export function redactToken(url: string, isToken: (s: string) => boolean = () => false): string {
  const q = url.indexOf('?');
  const rawPath = q < 0 ? url : url.slice(0, q);
  // Tokens are at least 16 characters: shorter segments are never hashed.
  const secret = (x: string) => x.length >= 16 && (isToken(x) || isToken(decodePart(x) ?? x));
  const path = rawPath.split('/').map((seg) => (secret(seg) ? '[redacted]' : seg)).join('/');
  if (q < 0) return path;
  const parts = url.slice(q + 1).split('&').filter((p) => p !== '').map((p) => {
    const eq = p.indexOf('=');
    const name = decodePart(eq < 0 ? p : p.slice(0, eq));
    if (eq < 0 || name === null || !/^[A-Za-z_][A-Za-z0-9_.-]{0,31}$/.test(name)) return '[redacted]';
    const value = decodePart(p.slice(eq + 1));
    const shape = LOGGED_QUERY[name];
    return shape !== undefined && value !== null && shape.test(value) && !secret(value) ? `${name}=${value}` : `${name}=[redacted]`;
  });
  return `${path}?${parts.join('&')}`;
}

/** The request path, never its query (which may hold a token). */
function pathOf(req: FastifyRequest): string {
  return req.url.split('?')[0] ?? '/';
}

/** Send an error as an RFC 9457 problem; a 401 also gets the Bearer challenge (RFC 6750). */
function sendProblem(req: FastifyRequest, reply: FastifyReply, e: IoasidError): FastifyReply {
  const status = httpStatusOf(e);
  if (status === 401) {
    // No error code when no credentials were sent at all (RFC 6750 section 3.1).
    const sent = req.headers.authorization !== undefined;
    void reply.header('www-authenticate', sent ? `Bearer realm="${REALM}", error="invalid_token"` : `Bearer realm="${REALM}"`);
  }
  // Refused before its body arrived (no token, say): do not wait for the rest of it.
  if (req.raw.complete === false) void reply.header('connection', 'close');
  return reply.status(status).type(PROBLEM_MEDIA_TYPE).send(toProblem(e, pathOf(req)));
}

/** A problem written on a raw socket (the connection's own answers: no request object exists). */
function rawProblem(socket: Socket, status: number, e: IoasidError): void {
  const body = JSON.stringify(toProblem(e, undefined, status));
  const head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\nContent-Type: ${PROBLEM_MEDIA_TYPE}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n`;
  // Closed once written, whether or not the client ever reads or closes its side.
  socket.end(`${head}${body}`, () => socket.destroy());
}

/**
 * Path and query values arrive as text. The contract types some as integers; a value of plain
 * decimal digits becomes a number before validation, anything else ('0x2', '1e3', ' 5', '1.5',
 * a repeated key) stays as it came and fails the schema's integer type. Stricter than ajv's own
 * coercion, which would take '0x2' and '1e3'.
 */
function integersOf(schema: unknown): readonly string[] {
  const props = (schema as { properties?: Record<string, { type?: unknown }> } | undefined)?.properties ?? {};
  return Object.entries(props).filter(([, s]) => s.type === 'integer').map(([k]) => k);
}

function parseIntegers(values: unknown, keys: readonly string[]): void {
  if (typeof values !== 'object' || values === null) return;
  const v = values as Record<string, unknown>;
  for (const k of keys) {
    const x = v[k];
    if (typeof x === 'string' && /^[0-9]{1,10}$/.test(x)) v[k] = Number(x);
  }
}

/** Which methods a path has (for the 404 of a wrong method): from the contract's routes. */
const PATHS: readonly { re: RegExp; method: string }[] = [
  ...ROUTES.map((r) => ({ re: new RegExp(`^${r.url.replace(/:[A-Za-z]+/g, '[^/]+')}$`), method: r.method })),
  { re: new RegExp(`^${EVENT_STREAM.path}$`), method: 'GET' },
];

function checkLimits(l: Required<ConnectionLimits>): void {
  for (const [k, v] of Object.entries(l)) {
    if (!Number.isSafeInteger(v) || v < 1) throw new IoasidError('EINVAL', `${k} must be a positive integer, got ${String(v)}`, { [k]: v });
  }
  if (l.headersTimeoutMs > l.requestTimeoutMs) {
    throw new IoasidError('EINVAL', `the headers timeout (${l.headersTimeoutMs} ms) must not exceed the request timeout (${l.requestTimeoutMs} ms)`, { headersTimeoutMs: l.headersTimeoutMs, requestTimeoutMs: l.requestTimeoutMs });
  }
}

export async function buildApp(opts: AppOptions): Promise<ServiceApp> {
  const authority = opts.authority;
  const limits: Required<ConnectionLimits> = { ...DEFAULT_LIMITS, ...opts.limits };
  checkLimits(limits);
  const metricsHash = opts.metrics?.token !== undefined ? hashToken(opts.metrics.token) : null;
  if (opts.metrics?.token !== undefined) {
    const who = authority.identify(opts.metrics.token);
    if (who.admin || who.vm !== null) {
      throw new IoasidError('EINVAL', `the metrics token is ${who.admin ? 'the admin token' : `VM ${who.vm}'s token`}: give Prometheus a token of its own`, { holder: who.admin ? 'admin' : who.vm });
    }
  }
  const metricsOpen = opts.metrics?.open === true;
  const isToken = (x: string): boolean => {
    const who = authority.identify(x);
    return who.admin || who.vm !== null || (metricsHash !== null && tokenMatches(x, metricsHash));
  };

  let timedOut = 0;
  const app = Fastify({
    logger: typeof opts.logger === 'object'
      ? {
          level: opts.logger.level,
          ...(opts.logger.stream !== undefined ? { stream: opts.logger.stream } : {}),
          ...(opts.logger.hooks !== undefined ? { hooks: opts.logger.hooks } : {}),
          // Neither headers (Authorization, the WebSocket subprotocol) nor query values are
          // logged: see redactToken.
          serializers: {
            req: (req: FastifyRequest) => ({ method: req.method, url: redactToken(req.url, isToken), remoteAddress: req.ip }),
          },
        }
      : (opts.logger ?? false),
    logController: new OneLinePerRequest(),
    bodyLimit: opts.bodyLimit ?? 64 * 1024,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false } },
    // Requests that arrive while closing get our 503 problem (below), not fastify's own body.
    return503OnClosing: false,
    forceCloseConnections: false,
    requestTimeout: limits.requestTimeoutMs,
    // A connection with nothing moving either way (a client that stopped reading its answer): a
    // little later than the request timeout, so that a slow request is answered 408 first.
    connectionTimeout: limits.requestTimeoutMs + 1000,
    keepAliveTimeout: limits.idleTimeoutMs,
    http: {
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      // How often Node checks those two deadlines (its default, 30 s, would blur them).
      connectionsCheckingInterval: Math.max(25, Math.min(1000, Math.floor(limits.headersTimeoutMs / 4))),
    },
    // The router's own refusals, as problems.
    frameworkErrors: (err, req, reply) => {
      const fe = err as { code?: string };
      const e = fe.code === 'FST_ERR_BAD_URL'
        ? new IoasidError('EINVAL', 'the URL path is not valid percent-encoding', { path: pathOf(req) })
        : fe.code === 'FST_ERR_MAX_PARAM_LENGTH'
          ? new IoasidError('EINVAL', 'a path parameter is longer than 100 characters (no identifier of the API is)', { limit: 100 })
          : new IoasidError('EFAULT', 'internal error', {});
      void sendProblem(req, reply, e);
      // Fastify ends these without its request-completed hook: their one log line is written here.
      const log = reply.log as FastifyReply['log'] & { isLevelEnabled?: (level: string) => boolean };
      if (log.isLevelEnabled?.('debug') === true) log.debug({ req, status: reply.statusCode }, 'request completed');
    },
    // The connection's own refusals (before any request exists), as problems; the raw packet, which
    // holds the headers and so the token, is never logged.
    clientErrorHandler(err: Error & { code?: string }, socket: Socket) {
      if (err.code === 'ECONNRESET' || socket.destroyed) return;
      app.log.debug({ code: err.code ?? null }, 'client error');
      const started = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent === true;
      if (!socket.writable || started) {
        socket.destroy();
        return;
      }
      if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
        timedOut++;
        rawProblem(socket, TRANSPORT_STATUS.requestTimeout, new IoasidError('ETIMEDOUT', `the request did not arrive in time (headers within ${limits.headersTimeoutMs} ms, the whole request within ${limits.requestTimeoutMs} ms)`, { headersTimeoutMs: limits.headersTimeoutMs, requestTimeoutMs: limits.requestTimeoutMs }));
      } else if (err.code === 'HPE_HEADER_OVERFLOW') {
        rawProblem(socket, TRANSPORT_STATUS.headersTooLarge, new IoasidError('EFBIG', 'the request headers are too large', {}));
      } else {
        rawProblem(socket, 400, new IoasidError('EINVAL', `malformed HTTP request (${err.code ?? 'parse error'})`, { reason: err.code ?? null }));
      }
    },
  });
  const server = app.server;
  server.maxConnections = limits.maxConnections;
  // Every socket, to cut them at the end of a shutdown's grace period (WebSockets included: the
  // HTTP server forgets a socket once it is upgraded).
  const sockets = new Set<Socket>();
  let refused = 0;
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  server.on('drop', () => {
    refused++;
  });
  // `Expect:` other than 100-continue: Node would answer 417 with no body.
  server.on('checkExpectation', (req, res) => {
    const body = JSON.stringify(toProblem(new IoasidError('EINVAL', 'the Expect header is not supported (only 100-continue)', {}), (req.url ?? '/').split('?')[0]));
    res.writeHead(400, { 'content-type': PROBLEM_MEDIA_TYPE, 'content-length': Buffer.byteLength(body), connection: 'close' });
    res.end(body);
  });
  // The only parser is JSON: a text/plain body is an unsupported media type, not a string.
  app.removeContentTypeParser('text/plain');

  const metrics = new ServiceMetrics(authority);
  metrics.watchConnections(() => ({ open: sockets.size, refused, timedOut }));
  let closing = false;
  const stopping = () => new IoasidError('ENODEV', 'the service is stopping', {});
  const ctx: ServiceContext = { closing: () => closing, metrics, openapi: buildOpenApi() };

  app.setErrorHandler((err: unknown, req, reply) => {
    let e: IoasidError;
    if (err instanceof IoasidError) e = err;
    else {
      const fe = err as { validation?: unknown; statusCode?: number; code?: string; message?: string; validationContext?: string };
      if (fe.validation !== undefined) e = new IoasidError('EINVAL', `request ${fe.validationContext ?? ''} ${fe.message ?? 'is invalid'}`.replace(/\s+/g, ' ').trim(), { where: fe.validationContext ?? null });
      else if (fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE') e = new IoasidError('EFBIG', `request body is larger than ${app.initialConfig.bodyLimit} bytes`, { limit: app.initialConfig.bodyLimit });
      else if (fe.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
        const type = String(req.headers['content-type'] ?? '').slice(0, 100);
        e = new IoasidError('EINVAL', `a request body of type ${JSON.stringify(type)} is not accepted: send application/json`, { contentType: type });
      } else if (fe.statusCode !== undefined && fe.statusCode >= 400 && fe.statusCode < 500) e = new IoasidError('EINVAL', fe.message ?? 'bad request', { fastify: fe.code ?? null });
      else {
        req.log.error({ err }, 'internal error');
        const bug = err instanceof IoasidBugError;
        metrics.refused(req.method, req.routeOptions.url, 'EFAULT');
        return sendProblem(req, reply, new IoasidError('EFAULT', bug ? (err as Error).message : 'internal error', {}));
      }
    }
    metrics.refused(req.method, req.routeOptions.url, e.code);
    return sendProblem(req, reply, e);
  });
  app.setNotFoundHandler((req, reply) => {
    if (closing) return sendProblem(req, reply, stopping());
    const path = pathOf(req);
    const allowed = [...new Set(PATHS.filter((p) => p.re.test(path)).map((p) => p.method))];
    const e = allowed.length > 0
      ? new IoasidError('ENOENT', `no route ${req.method} ${path} (it answers ${allowed.join(', ')})`, { method: req.method, allowed })
      : new IoasidError('ENOENT', `no route ${req.method} ${path}`, { method: req.method });
    return sendProblem(req, reply, e);
  });
  // Hooks on every request take fastify's callback form: no promise per hook and request.
  app.addHook('onResponse', (req, reply, done) => {
    metrics.request(req.method, req.routeOptions.url ?? 'unknown', reply.statusCode, reply.elapsedTime / 1000);
    done();
  });

  // Before the WebSocket plugin's own close hook: subscribers are told 1001 (going away).
  const hub = new EventHub(authority, opts.events ?? {});
  metrics.watchEvents(hub);
  app.addHook('preClose', async () => {
    closing = true;
    hub.close();
  });
  await app.register(websocket, {
    options: {
      maxPayload: 1024,
      // Select our protocol, never echo the one that carries the token.
      handleProtocols: (offered: Set<string>) => (offered.has(EVENT_STREAM.protocol) ? EVENT_STREAM.protocol : false),
    },
  });

  // ---------------------------------------------------------------- authentication
  const authorize = (def: RouteDef) => (req: FastifyRequest, _reply: FastifyReply, done: (err?: Error) => void): void => {
    try {
      authenticate(def, req);
    } catch (e) {
      done(e as Error);
      return;
    }
    done();
  };
  const authenticate = (def: RouteDef, req: FastifyRequest): void => {
    if (closing) throw stopping();
    if (def.auth === 'none' || (def.auth === 'metrics' && metricsOpen)) return;
    const token = bearerOfHeader(req.headers.authorization);
    if (token === null) throw new IoasidError('EPERM', 'a bearer token is required (Authorization: Bearer ...)', {});
    if (def.auth === 'metrics' && metricsHash !== null && tokenMatches(token, metricsHash)) {
      req.caller = { kind: 'metrics' };
      return;
    }
    const who = authority.identify(token);
    if (who.admin) {
      req.caller = { kind: 'admin' };
      return;
    }
    const vm = (req.params as Record<string, string> | undefined)?.vm;
    if (def.auth === 'vm' && vm !== undefined && who.vm === vm) {
      req.caller = { kind: 'vm', vm };
      return;
    }
    if (who.vm === null) throw new IoasidError('EPERM', 'the bearer token is not valid', {});
    const needs = def.auth === 'admin' ? 'this operation needs the admin token'
      : def.auth === 'metrics' ? '/metrics needs the admin token or the metrics token'
        : `the token of VM ${who.vm} cannot act on VM ${vm ?? '(none)'}`;
    throw new IoasidError('EACCES', needs, { vm: vm ?? null });
  };

  // ---------------------------------------------------------------- the contract's operations
  // An answer completed in the event-loop turn its request arrived in is written at the end of
  // that turn, with the answers of every other request completed in it (as Redis writes its
  // replies before it polls again). The change is committed and applied when the handler returns;
  // only the socket write waits, for the rest of the turn at most. Answers written together wake a
  // client that multiplexes connections once per turn rather than once per answer, and that wake-up,
  // not the write, was most of a write's cost. An answer completed in a later turn (a SQLite group
  // commit, an etcd transaction) is written at once: what completed it already answers its batch
  // together. docs/decisions.md 57 has the figures.
  interface Turn { readonly done: Promise<void>; over: boolean }
  let turn: Turn | null = null;
  const thisTurn = (): Turn => {
    if (turn !== null) return turn;
    let resolve!: () => void;
    const t: Turn = { done: new Promise<void>((r) => (resolve = r)), over: false };
    turn = t;
    setImmediate(() => {
      t.over = true;
      turn = null;
      resolve();
    });
    return t;
  };
  for (const def of ROUTES) {
    const ints = { params: integersOf(def.schema.params), query: integersOf(def.schema.querystring) };
    const op: OperationId = def.operationId;
    app.route({
      method: def.method,
      url: def.url,
      schema: {
        ...(def.schema.params !== undefined ? { params: def.schema.params } : {}),
        ...(def.schema.querystring !== undefined ? { querystring: def.schema.querystring } : {}),
        ...(def.schema.body !== undefined ? { body: def.schema.body } : {}),
        ...(def.schema.response !== undefined ? { response: { [def.status]: def.schema.response } } : {}),
      },
      // Authentication first, before the body is read: a caller without a valid token learns
      // nothing about the request and cannot make the service wait for a body.
      onRequest: authorize(def),
      preValidation: (req, _reply, done) => {
        try {
          parseIntegers(req.params, ints.params);
          parseIntegers(req.query, ints.query);
        } catch (e) {
          done(e as Error);
          return;
        }
        done();
      },
      handler: async (req: FastifyRequest, reply: FastifyReply) => {
        const caller = req.caller;
        try {
          const arrived = thisTurn();
          let result = await def.handler(authority, { params: req.params ?? {}, query: req.query ?? {}, body: req.body }, ctx);
          if (!arrived.over) await arrived.done;
          metrics.op(op, 'ok');
          if (op === 'registers' && caller?.kind === 'vm') result = tenantRegisters(caller.vm, result as Parameters<typeof tenantRegisters>[1]);
          if (def.status === 204) return reply.status(204).send();
          if (def.produces !== undefined) void reply.type(def.produces);
          return reply.status(def.status).send(result);
        } catch (e) {
          if (!(e instanceof IoasidError)) throw e;
          // A VM's own token does not learn whose a PASID is (tenant-view.ts). The refusal is
          // counted by the error handler, with those of authentication and validation.
          throw caller?.kind === 'vm' ? tenantError(op, caller.vm, e) : e;
        }
      },
    });
  }

  // ---------------------------------------------------------------- event stream
  app.route({
    method: 'GET',
    url: EVENT_STREAM.path,
    onRequest: async () => {
      if (closing) throw stopping();
    },
    handler: async () => {
      throw new IoasidError('EINVAL', `${EVENT_STREAM.path} is a WebSocket: connect with Upgrade: websocket (the log is GET /v1/events/recent)`, { path: EVENT_STREAM.path });
    },
    wsHandler: (socket, req) => {
      const q = req.query as Record<string, unknown>;
      // Never a token in the URL (it would be in every log and proxy on the way); never echo a
      // parameter's name either (a bare token would be one).
      for (const k of Object.keys(q)) {
        if (/token/i.test(k)) {
          socket.close(CLOSE.badRequest, `no token in the URL: send it in the Authorization header or as the subprotocol ${EVENT_STREAM.bearerProtocolPrefix}<base64url>`);
          return;
        }
        if (k !== 'vm' && k !== 'since') {
          socket.close(CLOSE.badRequest, 'unknown query parameter (vm and since are known)');
          return;
        }
      }
      const vmQ = q.vm;
      const sinceQ = q.since;
      if ((vmQ !== undefined && (typeof vmQ !== 'string' || !new RegExp(VM_ID_PATTERN).test(vmQ))) || (sinceQ !== undefined && (typeof sinceQ !== 'string' || !/^\d{1,15}$/.test(sinceQ)))) {
        socket.close(CLOSE.badRequest, vmQ !== undefined && typeof vmQ !== 'string' ? 'vm must be a VM id' : sinceQ !== undefined ? 'since must be an event sequence number' : 'vm must be a VM id');
        return;
      }
      const since = sinceQ === undefined ? undefined : Number(sinceQ);
      const fromHeader = bearerOfHeader(req.headers.authorization);
      const fromProtocol = bearerOfProtocols(req.headers['sec-websocket-protocol']);
      const token = fromProtocol === undefined || (fromHeader !== null && fromProtocol !== null && fromHeader !== fromProtocol) ? null : (fromHeader ?? fromProtocol);
      const who = token === null ? null : authority.identify(token);
      let scope: string | null;
      if (who?.admin === true) scope = vmQ ?? null;
      else if (who !== null && who.vm !== null && vmQ !== undefined && who.vm === vmQ) scope = vmQ;
      else {
        socket.close(EVENT_STREAM.refusedCloseCode, 'a valid token is required');
        return;
      }
      hub.subscribe(socket, { caller: who.admin ? 'admin' : (who.vm as string), vm: scope, ...(since !== undefined ? { since } : {}) });
    },
  });

  // Routes added by `extend` (the dashboard's page and files) stop with the API: 503 while closing.
  const extend = opts.extend;
  if (extend) {
    await app.register(async (child) => {
      child.addHook('onRequest', (_req, _reply, done) => done(closing ? stopping() : undefined));
      await extend(child);
    });
  }

  let shut: Promise<void> | null = null;
  const shutdown = (graceMs = limits.shutdownGraceMs): Promise<void> => {
    shut ??= (async () => {
      const cut = setTimeout(() => {
        for (const s of sockets) s.destroy();
      }, graceMs);
      try {
        await app.close();
      } finally {
        clearTimeout(cut);
      }
    })();
    return shut;
  };
  return Object.assign(app, {
    metrics,
    events: hub,
    limits: Object.freeze(limits),
    connectionStats: (): ConnectionStats => ({ open: sockets.size, refused, timedOut }),
    shutdown,
  }) as unknown as ServiceApp;
}
