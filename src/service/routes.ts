/**
 * The HTTP API's handlers, one per operation of the contract (`src/api`, which holds each route's
 * method, path, auth and schemas). The table below must name every operation, and each handler
 * gets the parameters, query and body its schemas describe and must answer what its response
 * schema says: TypeScript checks both against the contract, so no handler casts its input.
 */
import { deflateSync } from 'node:zlib';
import type { JSONSchema } from 'json-schema-to-ts';
import {
  OPERATIONS, encodeNamespaceMap, type Auth, type OperationDef, type OperationId, type OpBody, type OpParams, type OpQuery, type OpReply,
} from '../api/index.ts';
import { IoasidError } from '../core/index.ts';
import type { PasidAuthority } from './authority.ts';
import type { ServiceMetrics } from './metrics.ts';

export type { Auth };

/** A request as a handler sees it: validated, integers of the path and query parsed. */
export interface RouteRequest<K extends OperationId> {
  readonly params: OpParams<K>;
  readonly query: OpQuery<K>;
  readonly body: OpBody<K>;
}

/** What the app lends the handlers of its own endpoints. */
export interface ServiceContext {
  /** True once the app is closing (readiness answers 503). */
  readonly closing: () => boolean;
  readonly metrics: ServiceMetrics;
  readonly openapi: Record<string, unknown>;
}

/** A success answer: the contract's JSON; bytes or text where the operation produces another type. */
export type HandlerReply<K extends OperationId> = OpReply<K> extends Uint8Array ? Uint8Array | string : OpReply<K>;

export type Handler<K extends OperationId> = (a: PasidAuthority, req: RouteRequest<K>, ctx: ServiceContext) => HandlerReply<K> | Promise<HandlerReply<K>>;

export const HANDLERS: { readonly [K in OperationId]: Handler<K> } = {
  healthz: () => ({ ok: true }),
  // Not ready (503 ENODEV, `details.reason` says why) while shutting down, when the store cannot
  // commit, or, in cluster mode, when this host is fenced, has lost its lease or cannot reach etcd.
  readyz: async (a, _req, ctx) => {
    if (ctx.closing()) throw new IoasidError('ENODEV', 'not ready: shutting down', { reason: 'shutting down' });
    const r = await a.readiness();
    if (!r.ready) throw new IoasidError('ENODEV', `not ready: ${r.reason ?? 'unknown'}`, { reason: r.reason ?? null });
    return { ready: true, store: a.store.kind };
  },
  metrics: (_a, _req, ctx) => ctx.metrics.render(),
  openapi: (_a, _req, ctx) => ctx.openapi,
  createVm: (a, req) => a.createVm(req.body),
  listVms: (a) => ({ vms: a.listVms() }),
  getVm: (a, req) => a.vmInfo(req.params.vm),
  destroyVm: (a, req) => a.destroyVm(req.params.vm),
  replaceToken: (a, req) => a.replaceToken(req.params.vm),
  addViommu: (a, req) => a.addViommu(req.params.vm, req.body),
  removeViommu: (a, req) => a.removeViommu(req.params.vm, req.params.segment),
  addDevice: (a, req) => a.addDevice(req.params.vm, req.body),
  removeDevice: (a, req) => a.removeDevice(req.params.vm, req.params.bdf),
  allocPasids: async (a, req) => ({ pasids: await a.allocPasids(req.params.vm, req.body ?? {}) }),
  listVmPasids: (a, req) => ({ pasids: a.vm(req.params.vm).pasids() }),
  getVmPasid: (a, req) => a.vmPasidInfo(req.params.vm, req.params.pasid),
  freePasid: async (a, req) => {
    await a.freePasid(req.params.vm, req.params.pasid);
  },
  bind: async (a, req) => {
    const { pasid } = req.params;
    const { bdf } = req.body;
    await a.bind(req.params.vm, pasid, bdf);
    return { pasid, bdf: bdf.toLowerCase() };
  },
  unbind: async (a, req) => {
    await a.unbind(req.params.vm, req.params.pasid, req.params.bdf);
  },
  mmio: async (a, req) => {
    const b = req.body;
    if (b.op === 'write' && b.value === undefined) throw new IoasidError('EINVAL', 'a write needs a value', { op: b.op });
    if (b.op === 'read' && (b.value !== undefined || b.writer !== undefined)) throw new IoasidError('EINVAL', 'a read takes no value and no writer', { op: b.op });
    const v = await a.mmio(req.params.vm, req.params.segment, {
      op: b.op, offset: b.offset, size: b.size, ...(b.value !== undefined ? { value: BigInt(b.value) } : {}), ...(b.writer !== undefined ? { writer: b.writer } : {}),
    });
    return v === null ? {} : { value: `0x${v.toString(16)}` };
  },
  getViommu: (a, req) => a.viommuConfig(req.params.vm, req.params.segment),
  registers: (a, req) => a.registers(req.params.vm, req.params.segment),
  getPasid: (a, req) => a.pasidInfo(req.params.pasid),
  namespace: (a) => a.namespace(),
  namespaceMap: (a) => {
    const bytes = encodeNamespaceMap(a.namespaceMap(), (raw) => deflateSync(raw));
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  },
  clusterStatus: (a) => a.clusterStatus(),
  migrateVm: (a, req) => a.migrateVm(req.params.vm, req.body.to),
  reclaimHost: (a, req) => a.reclaimHost(req.params.host, req.body ?? {}),
  recentEvents: (a, req) => ({ events: a.recentEvents({ limit: req.query.limit ?? 100 }) }),
};

/** One route as fastify registers it: the contract's operation, in fastify's terms, and its handler. */
export interface RouteDef {
  readonly operationId: OperationId;
  readonly method: OperationDef['method'];
  /** fastify's path syntax: `/v1/vms/:vm`. */
  readonly url: string;
  readonly auth: Auth;
  readonly status: OperationDef['status'];
  readonly produces?: string;
  readonly schema: { readonly params?: JSONSchema; readonly querystring?: JSONSchema; readonly body?: JSONSchema; readonly response?: JSONSchema };
  readonly handler: (a: PasidAuthority, req: { params: unknown; query: unknown; body: unknown }, ctx: ServiceContext) => unknown;
}

/** Every operation of the contract with its handler, in the contract's order. */
export const ROUTES: readonly RouteDef[] = (Object.entries(OPERATIONS) as [OperationId, OperationDef][]).map(([operationId, op]) => ({
  operationId,
  method: op.method,
  url: op.path.replace(/\{([A-Za-z]+)\}/g, ':$1'),
  auth: op.auth,
  status: op.status,
  ...(op.produces !== undefined ? { produces: op.produces } : {}),
  schema: {
    ...(op.params !== undefined ? { params: op.params } : {}),
    ...(op.query !== undefined ? { querystring: op.query } : {}),
    ...(op.body !== undefined ? { body: op.body } : {}),
    ...(op.response !== undefined ? { response: op.response } : {}),
  },
  // Fastify has validated the request against these very schemas before the handler runs.
  handler: HANDLERS[operationId] as RouteDef['handler'],
}));
