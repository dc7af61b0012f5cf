/**
 * The HTTP service (DESIGN 7): fastify 5 around a PasidAuthority. Every request is validated
 * against the route table's schemas (no coercion, no unknown fields, bounded bodies); a refused
 * request gets a JSON error with the errno code and changes nothing. Authentication: an admin
 * bearer token manages VMs; each VM's own token acts on that VM only.
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import websocket from '@fastify/websocket';
import { IoasidBugError, IoasidError } from '../core/index.ts';
import type { PasidAuthority, AuthorityEvent } from './authority.ts';
import { ROUTES, type RouteDef } from './routes.ts';
import { ERROR_SCHEMA, httpStatusOf, type ErrorBody } from './http-errors.ts';
import { buildOpenApi } from './openapi.ts';
import { ServiceMetrics } from './metrics.ts';
import { CLOSE, EventHub, type EventHubOptions } from './event-hub.ts';

export interface AppOptions {
  readonly authority: PasidAuthority;
  /** pino options or false (tests). */
  readonly logger?: boolean | { level: string };
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

function errorBody(e: IoasidError): ErrorBody {
  return { code: e.code, errno: e.errno, message: e.message, details: e.details };
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
    bodyLimit: opts.bodyLimit ?? 64 * 1024,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false } },
    return503OnClosing: true,
    forceCloseConnections: false,
  });
  const metrics = new ServiceMetrics(authority);
  let closing = false;
  app.addHook('onClose', async () => {
    closing = true;
  });

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
        void reply.status(500).send({ code: 'EFAULT', errno: -14, message: bug ? (err as Error).message : 'internal error', details: {} });
        return;
      }
    }
    metrics.error(e.code);
    void reply.status(httpStatusOf(e)).send(errorBody(e));
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.status(404).send(errorBody(new IoasidError('ENOENT', `no route ${req.method} ${req.url.split('?')[0]}`, { method: req.method })));
  });
  app.addHook('onResponse', async (req, reply) => {
    metrics.request(req.method, req.routeOptions.url ?? 'unknown', reply.statusCode, reply.elapsedTime / 1000);
  });

  // Before the WebSocket plugin's own close hook: subscribers are told 1001 (going away).
  const hub = new EventHub(authority, opts.events ?? {});
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

  for (const def of ROUTES) {
    app.route({
      method: def.method,
      url: def.url,
      schema: {
        ...(def.schema.params ? { params: def.schema.params } : {}),
        ...(def.schema.querystring ? { querystring: def.schema.querystring } : {}),
        ...(def.schema.body ? { body: def.schema.body } : {}),
      },
      preHandler: authorize(def),
      handler: async (req: FastifyRequest, reply: FastifyReply) => {
        const op = def.operationId;
        try {
          const result = await def.handler(authority, {
            params: (req.params ?? {}) as Record<string, string>,
            query: (req.query ?? {}) as Record<string, string | undefined>,
            body: req.body,
          });
          metrics.op(op, 'ok');
          if (def.status === 204) return reply.status(204).send();
          return reply.status(def.status ?? 200).send(result);
        } catch (e) {
          if (e instanceof IoasidError) metrics.op(op, e.code);
          throw e;
        }
      },
    });
  }

  // ---------------------------------------------------------------- ops endpoints
  app.get('/readyz', async (_req, reply) => {
    if (closing) return reply.status(503).send(errorBody(new IoasidError('ENODEV', 'shutting down')));
    return { ready: true, store: authority.store.kind };
  });
  app.get('/metrics', async (_req, reply) => {
    void reply.header('content-type', metrics.contentType);
    return metrics.render();
  });
  const openapi = buildOpenApi(ROUTES, ERROR_SCHEMA);
  app.get('/openapi.json', async () => openapi);

  // ---------------------------------------------------------------- event stream (event-hub.ts)
  app.get('/v1/events', { websocket: true }, (socket, req) => {
    const token = bearer(req);
    const q = req.query as Record<string, string | undefined>;
    const since = q.since === undefined ? undefined : /^\d{1,15}$/.test(q.since) ? Number(q.since) : NaN;
    if (Number.isNaN(since)) {
      socket.close(4400, 'since must be an event sequence number');
      return;
    }
    const who = token === null ? null : authority.identify(token);
    let scope: string | null;
    if (who?.admin === true) scope = q.vm ?? null;
    else if (who !== null && who.vm !== null && q.vm !== undefined && who.vm === q.vm) scope = q.vm;
    else {
      socket.close(CLOSE.unauthorized, 'a valid token is required');
      return;
    }
    hub.subscribe(socket, { caller: who.admin ? 'admin' : (who.vm as string), vm: scope, ...(since !== undefined ? { since } : {}) });
  });

  if (opts.extend) await opts.extend(app);
  return Object.assign(app, { metrics, events: hub }) as unknown as FastifyInstance & { metrics: ServiceMetrics; events: EventHub };
}
