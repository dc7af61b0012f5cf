/**
 * The OpenAPI 3.1 document, generated from the operation table and its schemas: what the service
 * validates and answers is what is documented. Schemas used in several places are named once
 * under `components.schemas` and referenced; error answers are RFC 9457 problems.
 */
import { OPERATIONS, EVENT_STREAM, type OperationDef } from './operations.ts';
import { PROBLEM_MEDIA_TYPE } from './errors.ts';
import * as S from './schemas.ts';

/** Schemas named in the document (by identity: the very objects the operations use). */
const NAMED: Readonly<Record<string, object>> = {
  VmInfo: S.VM_INFO,
  CreateVmRequest: S.CREATE_VM_BODY,
  ViommuSpec: S.VIOMMU_SPEC,
  DeviceSpec: S.DEVICE_SPEC,
  AllocRequest: S.ALLOC_BODY,
  MmioRequest: S.MMIO_BODY,
  PasidInfo: S.PASID_INFO,
  ViommuConfig: S.VIOMMU_CONFIG,
  VcmdLogEntry: S.VCMD_LOG_ENTRY,
  ClusterStatus: S.CLUSTER_STATUS,
  MigrateResult: S.MIGRATE_RESULT,
  ReclaimReport: S.RECLAIM_REPORT,
  Event: S.EVENT,
  AllocEvent: S.ALLOC_EVENT,
  VmCreatedEvent: S.VM_CREATED_EVENT,
  VmDestroyedEvent: S.VM_DESTROYED_EVENT,
  QuotaExhaustedEvent: S.QUOTA_EVENT,
  ViommuAddedEvent: S.VIOMMU_ADDED_EVENT,
  ViommuRemovedEvent: S.VIOMMU_REMOVED_EVENT,
  DeviceAssignedEvent: S.DEVICE_ASSIGNED_EVENT,
  DeviceRemovedEvent: S.DEVICE_REMOVED_EVENT,
  BindEvent: S.BIND_EVENT,
  CredentialReplacedEvent: S.CREDENTIAL_EVENT,
  VmMigratedEvent: S.MIGRATED_EVENT,
  GapMessage: S.GAP_MESSAGE,
  StreamMessage: S.STREAM_MESSAGE,
  Problem: S.PROBLEM,
};

const ERROR_TEXT: Readonly<Record<number, string>> = {
  400: 'The request is malformed or not allowed here (EINVAL, EOPNOTSUPP): nothing changed.',
  401: 'No bearer token, or one that is not valid (EPERM). The answer carries `WWW-Authenticate: Bearer`.',
  403: 'The token may not do this (EACCES): a VM token on an admin route or on another VM\'s path; with the admin token, another VM\'s PASID.',
  404: 'No such VM, PASID, vIOMMU, device or binding (ENOENT). A VM token gets 404 for a PASID that is not its own, whether free or another VM\'s.',
  409: 'The state says no (ENOSPC, EDQUOT, EEXIST, EBUSY, ERANGE, EAGAIN): nothing changed.',
  413: 'The request body is larger than the limit (EFBIG).',
  421: 'Misdirected (EREMOTE, cluster mode): another host of the domain serves this VM; `details.host` names it and `details.url` is where to send the request. Nothing changed.',
  500: 'An internal error (EFAULT): a bug or a store failure; the change was not acknowledged.',
  503: 'Unavailable (ENODEV): shutting down, or (cluster) this host is fenced or cut off; not committed (EIO, EROFS): nothing of it took effect, send it again.',
  504: 'Timed out (ETIMEDOUT): the outcome of a cluster write is unknown.',
};

const TAGS = [
  { name: 'ops', description: 'Health, readiness, metrics and this document.' },
  { name: 'vms', description: 'VMs: their IOASID set and quota, vIOMMUs and assigned devices (admin).' },
  { name: 'pasids', description: 'PASIDs: allocation, free, binding, and the namespace.' },
  { name: 'vcmd', description: 'The VT-d virtual command interface of each vIOMMU: trapped register accesses and their decoding.' },
  { name: 'cluster', description: 'Cluster mode (store etcd): status, live migration, reclaim of a dead host.' },
  { name: 'events', description: 'Committed changes, as a log and as a live stream.' },
];

/** A deep copy of `schema` in which every named schema (except `self`) is a `$ref`. */
function refs(schema: unknown, self?: object): unknown {
  if (Array.isArray(schema)) return schema.map((x) => refs(x));
  if (typeof schema !== 'object' || schema === null) return schema;
  if (schema !== self) {
    for (const [name, s] of Object.entries(NAMED)) if (s === schema) return { $ref: `#/components/schemas/${name}` };
  }
  return Object.fromEntries(Object.entries(schema).map(([k, v]) => [k, refs(v)]));
}

function problem(status: number): { $ref: string } {
  return { $ref: `#/components/responses/Problem${status}` };
}

/** Error statuses an operation can answer: those of its kind, then its own. */
export function errorStatuses(op: OperationDef): number[] {
  const out = new Set<number>();
  const input = op.params !== undefined || op.query !== undefined || op.body !== undefined;
  if (input) out.add(400);
  if (op.auth !== 'none') {
    out.add(401);
    out.add(403);
  }
  if (op.params !== undefined) out.add(404);
  if (op.body !== undefined) out.add(413);
  for (const s of op.errors ?? []) out.add(s);
  out.add(500);
  // Every request that arrives while the service stops is answered 503 ENODEV.
  out.add(503);
  return [...out].sort((a, b) => a - b);
}

function parameters(op: { readonly params?: unknown; readonly query?: unknown }): unknown[] {
  const props = (s: unknown): [string, unknown][] => Object.entries((s as { properties?: Record<string, unknown> } | undefined)?.properties ?? {});
  return [
    ...props(op.params).map(([name, schema]) => ({ name, in: 'path', required: true, description: (schema as { description?: string }).description, schema: refs(schema) })),
    ...props(op.query).map(([name, schema]) => ({ name, in: 'query', required: false, description: (schema as { description?: string }).description, schema: refs(schema) })),
  ].map((p) => (p.description === undefined ? { name: p.name, in: p.in, required: p.required, schema: p.schema } : p));
}

export function buildOpenApi(): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  const ops = OPERATIONS as Readonly<Record<string, OperationDef>>;
  for (const [operationId, op] of Object.entries(ops)) {
    const params = parameters(op);
    const ok = String(op.status);
    const success = op.status === 204
      ? { description: 'Done.' }
      : op.produces !== undefined
        ? { description: 'Success.', content: { [op.produces]: { schema: { type: 'string', contentMediaType: op.produces } } } }
        : { description: 'Success.', content: { 'application/json': { schema: refs(op.response) } } };
    const responses: Record<string, unknown> = { [ok]: success };
    for (const s of errorStatuses(op)) responses[String(s)] = problem(s);
    paths[op.path] = {
      ...(paths[op.path] ?? {}),
      [op.method.toLowerCase()]: {
        operationId,
        summary: op.summary,
        ...(op.description !== undefined ? { description: op.description } : {}),
        tags: [op.tag],
        ...(params.length ? { parameters: params } : {}),
        ...(op.body !== undefined ? { requestBody: { required: true, content: { 'application/json': { schema: refs(op.body) } } } } : {}),
        ...(op.auth === 'none' ? { security: [] } : {}),
        responses,
        'x-auth': op.auth,
      },
    };
  }
  paths[EVENT_STREAM.path] = {
    get: {
      operationId: 'streamEvents',
      summary: 'The live event stream (WebSocket): every committed change as it happens.',
      description: [
        'Connect with `Upgrade: websocket`. After the `101` answer each text frame carries one JSON message (`StreamMessage`): an event, or a gap',
        '(events the reader can no longer get; reload, then go on). The admin token sees every event, optionally only one VM\'s with `vm`;',
        `a VM token sees its own VM's with \`vm\`. The token goes in the \`Authorization\` header or, where headers cannot be set (browsers), as the subprotocol`,
        `\`${EVENT_STREAM.bearerProtocolPrefix}<base64url of the token>\` offered beside \`${EVENT_STREAM.protocol}\` (which the service selects); never in the URL (a \`token\` query parameter is refused with 4400).`,
        `A refused stream is accepted, then closed with code ${EVENT_STREAM.refusedCloseCode}. A reader that does not keep up loses events rather than slowing the service.`,
      ].join(' '),
      tags: ['events'],
      parameters: parameters(EVENT_STREAM),
      security: [{ bearer: [] }, {}],
      responses: {
        '101': { description: 'Switching Protocols: the stream starts. Each text frame then carries one message.', content: { 'application/json': { schema: refs(S.STREAM_MESSAGE) } } },
        '400': { ...problemResponse(400), description: 'Not a WebSocket upgrade (EINVAL): use `GET /v1/events/recent` for the log.' },
        '500': problem(500),
      },
      'x-auth': 'admin or vm',
    },
  };
  return {
    openapi: '3.1.0',
    info: {
      title: 'ioasid PASID authority',
      version: '1',
      description: 'System-wide PASID allocation for virtualised IOMMUs: VMs, vIOMMUs, devices, PASIDs, bindings and trapped VCMD registers. Errors are RFC 9457 problems with the errno name (`code`) and number (`errno`).',
      license: { name: 'MIT', identifier: 'MIT' },
    },
    servers: [{ url: '/', description: 'The service that serves this document.' }],
    tags: TAGS,
    security: [{ bearer: [] }],
    paths,
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'The admin token, or a VM token (acts on that VM only); for /metrics also the metrics token given at start.' } },
      schemas: Object.fromEntries(Object.entries(NAMED).map(([name, s]) => [name, refs(s, s)])),
      responses: Object.fromEntries(Object.keys(ERROR_TEXT).map((s) => [`Problem${s}`, problemResponse(Number(s))])),
    },
  };
}

function problemResponse(status: number): Record<string, unknown> {
  const headers = status === 401
    ? { headers: { 'WWW-Authenticate': { description: 'The Bearer challenge (RFC 6750).', schema: { type: 'string' } } } }
    : {};
  return { description: ERROR_TEXT[status] ?? 'An error.', ...headers, content: { [PROBLEM_MEDIA_TYPE]: { schema: { $ref: '#/components/schemas/Problem' } } } };
}
