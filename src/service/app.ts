/**
 * The HTTP service: fastify 5 around a PasidAuthority, its routes registered from the contract's
 * operation table (`src/api`). Every request is validated against the contract's schemas (no
 * coercion but the integers of paths and queries, no unknown fields, bounded bodies) and every
 * answer is serialised by its response schema; a refused request gets an RFC 9457 problem with
 * the errno code and changes nothing. Authentication: an admin bearer token manages VMs; each
 * VM's own token acts on that VM only; a 401 carries `WWW-Authenticate: Bearer`.
 */
import Fastify, { LogController, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import websocket from '@fastify/websocket';
import { EVENT_STREAM, PROBLEM_MEDIA_TYPE, buildOpenApi, httpStatusOf, toProblem } from '../api/index.ts';
import { IoasidBugError, IoasidError } from '../core/index.ts';
import type { PasidAuthority, AuthorityEvent } from './authority.ts';
import { ROUTES, type RouteDef, type ServiceContext } from './routes.ts';
import { ServiceMetrics } from './metrics.ts';
import { CLOSE, EventHub, type EventHubOptions } from './event-hub.ts';

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
}

declare module 'fastify' {
  interface FastifyRequest {
    /** Who is calling: 'admin', or the VM whose token this is. */
    caller?: { kind: 'admin' } | { kind: 'vm'; vm: string };
  }
}

const REALM = 'ioasid';

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

function bearer(req: FastifyRequest): string | null {
  const h = req.headers.authorization;
  if (typeof h === 'string' && h.startsWith('Bearer ')) return h.slice(7).trim();
  const q = (req.query as Record<string, unknown> | undefined)?.token;
  return typeof q === 'string' && req.url.startsWith('/v1/events') ? q : null;
}

/** A URL with any `token=` query parameter replaced, for logs. */
export function redactToken(url: string): string {
  return url.replace(/([?&]token=)[^&#]*/gi, '$1[redacted]');
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
    void reply.header('www-authenticate', bearer(req) === null ? `Bearer realm="${REALM}"` : `Bearer realm="${REALM}", error="invalid_token"`);
  }
  return reply.status(status).type(PROBLEM_MEDIA_TYPE).send(toProblem(e, pathOf(req)));
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

export async function buildApp(opts: AppOptions): Promise<FastifyInstance & { metrics: ServiceMetrics; events: EventHub }> {
  const authority = opts.authority;
  const app = Fastify({
    logger: typeof opts.logger === 'object'
      ? {
          ...opts.logger,
          // The event stream takes its token in the URL (browsers cannot set WebSocket headers):
          // never let a token reach the logs.
          serializers: {
            req: (req: FastifyRequest) => ({ method: req.method, url: redactToken(req.url), remoteAddress: req.ip }),
          },
        }
      : (opts.logger ?? false),
    logController: new OneLinePerRequest(),
    bodyLimit: opts.bodyLimit ?? 64 * 1024,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false } },
    return503OnClosing: true,
    forceCloseConnections: false,
  });
  const metrics = new ServiceMetrics(authority);
  let closing = false;
  // Readiness fails from the first moment of a shutdown, while requests in flight finish.
  app.addHook('preClose', async () => {
    closing = true;
  });
  const ctx: ServiceContext = { closing: () => closing, metrics, openapi: buildOpenApi() };

  app.setErrorHandler((err: unknown, req, reply) => {
    let e: IoasidError;
    if (err instanceof IoasidError) e = err;
    else {
      const fe = err as { validation?: unknown; statusCode?: number; code?: string; message?: string; validationContext?: string };
      if (fe.validation !== undefined) e = new IoasidError('EINVAL', `request ${fe.validationContext ?? ''} ${fe.message ?? 'is invalid'}`.replace(/\s+/g, ' ').trim(), { where: fe.validationContext ?? null });
      else if (fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE') e = new IoasidError('EFBIG', `request body is larger than ${app.initialConfig.bodyLimit} bytes`, { limit: app.initialConfig.bodyLimit });
      else if (fe.statusCode !== undefined && fe.statusCode >= 400 && fe.statusCode < 500) e = new IoasidError('EINVAL', fe.message ?? 'bad request', { fastify: fe.code ?? null });
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
    void sendProblem(req, reply, new IoasidError('ENOENT', `no route ${req.method} ${pathOf(req)}`, { method: req.method }));
  });
  app.addHook('onResponse', async (req, reply) => {
    metrics.request(req.method, req.routeOptions.url ?? 'unknown', reply.statusCode, reply.elapsedTime / 1000);
  });

  // Before the WebSocket plugin's own close hook: subscribers are told 1001 (going away).
  const hub = new EventHub(authority, opts.events ?? {});
  metrics.watchEvents(hub);
  app.addHook('preClose', async () => hub.close());
  await app.register(websocket, { options: { maxPayload: 1024 } });

  // ---------------------------------------------------------------- authentication
  const authorize = (def: RouteDef) => async (req: FastifyRequest): Promise<void> => {
    if (def.auth === 'none') return;
    const token = bearer(req);
    if (token === null) throw new IoasidError('EPERM', 'a bearer token is required (Authorization: Bearer ...)', {});
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
    throw new IoasidError('EACCES', def.auth === 'admin' ? 'this operation needs the admin token' : `the token of VM ${who.vm} cannot act on VM ${vm ?? '(none)'}`, { vm: vm ?? null });
  };

  // ---------------------------------------------------------------- the contract's operations
  for (const def of ROUTES) {
    const ints = { params: integersOf(def.schema.params), query: integersOf(def.schema.querystring) };
    app.route({
      method: def.method,
      url: def.url,
      schema: {
        ...(def.schema.params !== undefined ? { params: def.schema.params } : {}),
        ...(def.schema.querystring !== undefined ? { querystring: def.schema.querystring } : {}),
        ...(def.schema.body !== undefined ? { body: def.schema.body } : {}),
        ...(def.schema.response !== undefined ? { response: { [def.status]: def.schema.response } } : {}),
      },
      // Authentication first: a caller without a valid token learns nothing about the request.
      onRequest: authorize(def),
      preValidation: async (req) => {
        parseIntegers(req.params, ints.params);
        parseIntegers(req.query, ints.query);
      },
      handler: async (req: FastifyRequest, reply: FastifyReply) => {
        const op = def.operationId;
        // A refusal is counted by the error handler, with those of authentication and validation.
        const result = await def.handler(authority, { params: req.params ?? {}, query: req.query ?? {}, body: req.body }, ctx);
        metrics.op(op, 'ok');
        if (def.status === 204) return reply.status(204).send();
        if (def.produces !== undefined) void reply.type(def.produces);
        return reply.status(def.status).send(result);
      },
    });
  }

  // ---------------------------------------------------------------- event stream
  app.route({
    method: 'GET',
    url: EVENT_STREAM.path,
    handler: async () => {
      throw new IoasidError('EINVAL', `${EVENT_STREAM.path} is a WebSocket: connect with Upgrade: websocket (the log is GET /v1/events/recent)`, { path: EVENT_STREAM.path });
    },
    wsHandler: (socket, req) => {
      const token = bearer(req);
      const q = req.query as Record<string, string | undefined>;
      const since = q.since === undefined ? undefined : /^\d{1,15}$/.test(q.since) ? Number(q.since) : NaN;
      if (Number.isNaN(since)) {
        socket.close(CLOSE.badRequest, 'since must be an event sequence number');
        return;
      }
      const who = token === null ? null : authority.identify(token);
      let scope: string | null;
      if (who?.admin === true) scope = q.vm ?? null;
      else if (who !== null && who.vm !== null && q.vm !== undefined && who.vm === q.vm) scope = q.vm;
      else {
        socket.close(EVENT_STREAM.refusedCloseCode, 'a valid token is required');
        return;
      }
      hub.subscribe(socket, { caller: who.admin ? 'admin' : (who.vm as string), vm: scope, ...(since !== undefined ? { since } : {}) });
    },
  });

  if (opts.extend) await opts.extend(app);
  return Object.assign(app, { metrics, events: hub }) as unknown as FastifyInstance & { metrics: ServiceMetrics; events: EventHub };
}
