/**
 * The HTTP API, version 1, as one table: each operation's method, path, who may call it, its
 * schemas and the error statuses it documents. The service registers its routes from it, the
 * typed client builds its requests from it, and the OpenAPI document is generated from it, so
 * what is validated, what is sent and what is documented are one thing.
 */
import type { JSONSchema } from 'json-schema-to-ts';
import { VM_ID_PATTERN } from '../core/index.ts';
import type { Wire } from './schemas.ts';
import {
  ALLOC_BODY, ANY_PASID_PARAMS, BINDING, BINDING_PARAMS, BIND_BODY, CLUSTER_STATUS, CREATED_VM, CREATE_VM_BODY, DESTROYED_VM,
  DEVICE_PARAMS, DEVICE_SPEC, NEW_TOKEN, EVENT_LIST, HEALTH, HOST_PARAMS, MIGRATE_BODY, MIGRATE_RESULT, MMIO_BODY, MMIO_RESULT, NAMESPACE_VIEW,
  PASID_INFO, PASID_LIST_BODY, PASID_PARAMS, READY, RECENT_EVENTS_QUERY, RECLAIM_BODY, RECLAIM_REPORT, REGISTERS_VIEW, SEGMENT_PARAMS,
  STREAM_MESSAGE, VIOMMU_SPEC, VIOMMU_VIEW, VM_INFO, VM_LIST, VM_PARAMS,
} from './schemas.ts';

/**
 * Who may call: anyone, the admin token, the VM's own token (or the admin's), or (`metrics`) the
 * admin token or the metrics token given at start (anyone when the service runs with
 * `--metrics-no-auth`).
 */
export type Auth = 'none' | 'admin' | 'vm' | 'metrics';

export interface OperationDef {
  readonly method: 'GET' | 'POST' | 'DELETE';
  /** OpenAPI path template: `/v1/vms/{vm}`. */
  readonly path: string;
  readonly auth: Auth;
  readonly tag: 'ops' | 'vms' | 'pasids' | 'vcmd' | 'cluster' | 'events';
  readonly summary: string;
  readonly description?: string;
  /** Status of a success. */
  readonly status: 200 | 201 | 204;
  readonly params?: JSONSchema;
  readonly query?: JSONSchema;
  readonly body?: JSONSchema;
  /** JSON answer of a success (absent: 204, or `produces`). */
  readonly response?: JSONSchema;
  /** Media type of a success answer that is not JSON. */
  readonly produces?: string;
  /**
   * Error statuses this operation documents beyond those every call of its kind may get (400 with
   * any input; 401 and 403 with a token; 404 with a path parameter; 413 with a body; 500).
   */
  readonly errors?: readonly number[];
}

export const NAMESPACE_MAP_MEDIA_TYPE = 'application/octet-stream';
export const METRICS_MEDIA_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

export const OPERATIONS = {
  healthz: {
    method: 'GET', path: '/healthz', auth: 'none', tag: 'ops', status: 200, summary: 'Liveness: the process answers.',
    response: HEALTH,
  },
  readyz: {
    method: 'GET', path: '/readyz', auth: 'none', tag: 'ops', status: 200,
    summary: 'Readiness: 200 when the service takes changes; 503 ENODEV (details.reason says why) while it shuts down, when its store cannot commit, or in cluster mode when this host is fenced, has lost its lease or cannot reach etcd.',
    response: READY, errors: [503],
  },
  metrics: {
    method: 'GET', path: '/metrics', auth: 'metrics', tag: 'ops', status: 200, produces: METRICS_MEDIA_TYPE,
    summary: 'Prometheus metrics: operations by kind and result (ok or the errno code), request latency, PASIDs allocated and capacity, PASIDs and quota per VM, store commit latency, event subscribers and dropped consumers, cluster health, build info.',
    description: 'Needs the admin token or the metrics token given at start (`--metrics-token-file`; Prometheus: `authorization: { credentials_file: ... }`), since it names every VM; open to anyone only when the service runs with `--metrics-no-auth`.',
  },
  openapi: {
    method: 'GET', path: '/openapi.json', auth: 'none', tag: 'ops', status: 200,
    summary: 'This document (OpenAPI 3.1).',
    response: { type: 'object', additionalProperties: true, description: 'An OpenAPI 3.1 document.' },
  },
  createVm: {
    method: 'POST', path: '/v1/vms', auth: 'admin', tag: 'vms', status: 201,
    summary: 'Create a VM (its IOASID set, with a quota), its vIOMMUs and devices. Returns its bearer token, once.',
    body: CREATE_VM_BODY, response: CREATED_VM, errors: [409],
  },
  listVms: {
    method: 'GET', path: '/v1/vms', auth: 'admin', tag: 'vms', status: 200,
    summary: 'List VMs with their PASID use, quota, vIOMMUs, devices and bindings.',
    response: VM_LIST,
  },
  getVm: {
    method: 'GET', path: '/v1/vms/{vm}', auth: 'vm', tag: 'vms', status: 200, summary: 'Inspect one VM.',
    params: VM_PARAMS, response: VM_INFO, errors: [503],
  },
  destroyVm: {
    method: 'DELETE', path: '/v1/vms/{vm}', auth: 'admin', tag: 'vms', status: 200,
    summary: 'Destroy a VM: unbind its devices, free every PASID it held, forget it.',
    params: VM_PARAMS, response: DESTROYED_VM, errors: [409, 421, 503],
  },
  replaceToken: {
    method: 'POST', path: '/v1/vms/{vm}/token', auth: 'admin', tag: 'vms', status: 200,
    summary: "Give a VM a new bearer token (shown once): the old one stops working at once, everywhere, and the event subscriptions made with it end.",
    params: VM_PARAMS, response: NEW_TOKEN, errors: [421, 503],
  },
  addViommu: {
    method: 'POST', path: '/v1/vms/{vm}/viommus', auth: 'admin', tag: 'vms', status: 201, summary: 'Hot-plug a vIOMMU for one PCI segment.',
    params: VM_PARAMS, body: VIOMMU_SPEC, response: VM_INFO, errors: [409, 421, 503],
  },
  removeViommu: {
    method: 'DELETE', path: '/v1/vms/{vm}/viommus/{segment}', auth: 'admin', tag: 'vms', status: 200,
    summary: 'Hot-unplug a vIOMMU (no device may sit behind it).',
    params: SEGMENT_PARAMS, response: VM_INFO, errors: [409, 421, 503],
  },
  addDevice: {
    method: 'POST', path: '/v1/vms/{vm}/devices', auth: 'admin', tag: 'vms', status: 201, summary: 'Assign a device (behind the vIOMMU of its segment).',
    params: VM_PARAMS, body: DEVICE_SPEC, response: VM_INFO, errors: [409, 421, 503],
  },
  removeDevice: {
    method: 'DELETE', path: '/v1/vms/{vm}/devices/{bdf}', auth: 'admin', tag: 'vms', status: 200, summary: 'Remove a device (its bindings are dropped).',
    params: DEVICE_PARAMS, response: VM_INFO, errors: [421, 503],
  },
  allocPasids: {
    method: 'POST', path: '/v1/vms/{vm}/pasids', auth: 'vm', tag: 'pasids', status: 201,
    summary: 'Allocate PASIDs for the VM, lowest free in [min, max]; count > 1 is a batch, all or nothing.',
    description: '409 ENOSPC when no PASID is free in the range, 409 EDQUOT when the VM would exceed its quota.',
    params: VM_PARAMS, body: ALLOC_BODY, response: PASID_LIST_BODY, errors: [409, 421, 503],
  },
  listVmPasids: {
    method: 'GET', path: '/v1/vms/{vm}/pasids', auth: 'vm', tag: 'pasids', status: 200, summary: "The VM's PASIDs, ascending.",
    params: VM_PARAMS, response: PASID_LIST_BODY,
  },
  getVmPasid: {
    method: 'GET', path: '/v1/vms/{vm}/pasids/{pasid}', auth: 'vm', tag: 'pasids', status: 200,
    summary: "Inspect one of the VM's PASIDs (403 if another VM's).",
    params: PASID_PARAMS, response: PASID_INFO,
  },
  freePasid: {
    method: 'DELETE', path: '/v1/vms/{vm}/pasids/{pasid}', auth: 'vm', tag: 'pasids', status: 204,
    summary: "Free one of the VM's PASIDs (403 another VM's, 404 unknown, 409 still bound).",
    params: PASID_PARAMS, errors: [409, 421, 503],
  },
  bind: {
    method: 'POST', path: '/v1/vms/{vm}/pasids/{pasid}/bindings', auth: 'vm', tag: 'pasids', status: 201,
    summary: "Bind one of the VM's devices to one of its PASIDs (within the device's PASID width).",
    params: PASID_PARAMS, body: BIND_BODY, response: BINDING, errors: [409, 421, 503],
  },
  unbind: {
    method: 'DELETE', path: '/v1/vms/{vm}/pasids/{pasid}/bindings/{bdf}', auth: 'vm', tag: 'pasids', status: 204, summary: 'Unbind a device from a PASID.',
    params: BINDING_PARAMS, errors: [421, 503],
  },
  mmio: {
    method: 'POST', path: '/v1/vms/{vm}/viommus/{segment}/mmio', auth: 'vm', tag: 'vcmd', status: 200,
    summary: 'Forward a trapped register read or write of a vIOMMU to its VCMD device model (64-bit values as hex strings).',
    params: SEGMENT_PARAMS, body: MMIO_BODY, response: MMIO_RESULT, errors: [421, 503],
  },
  getViommu: {
    method: 'GET', path: '/v1/vms/{vm}/viommus/{segment}', auth: 'vm', tag: 'vcmd', status: 200,
    summary: "One vIOMMU's VCMD device configuration (layout, VCCAP.PAS position, range extension, ...): what its registers decode with.",
    params: SEGMENT_PARAMS, response: VIOMMU_VIEW,
  },
  registers: {
    method: 'GET', path: '/v1/vms/{vm}/viommus/{segment}/registers', auth: 'vm', tag: 'vcmd', status: 200,
    summary: "A vIOMMU's registers decoded field by field, and its recent commands.",
    params: SEGMENT_PARAMS, response: REGISTERS_VIEW,
  },
  getPasid: {
    method: 'GET', path: '/v1/pasids/{pasid}', auth: 'admin', tag: 'pasids', status: 200, summary: 'Inspect any PASID: owner, bindings, history.',
    params: ANY_PASID_PARAMS, response: PASID_INFO,
  },
  namespace: {
    method: 'GET', path: '/v1/namespace', auth: 'admin', tag: 'pasids', status: 200,
    summary: 'The whole PASID namespace, compactly: per owner, runs of consecutive PASIDs as [start, length, ...].',
    response: NAMESPACE_VIEW,
  },
  namespaceMap: {
    method: 'GET', path: '/v1/namespace/map', auth: 'admin', tag: 'pasids', status: 200, produces: NAMESPACE_MAP_MEDIA_TYPE,
    summary: 'The whole namespace as a compact binary for the dashboard: one owner index per PASID, deflated, the owner legend and event seq in the header (docs/dashboard.md).',
  },
  clusterStatus: {
    method: 'GET', path: '/v1/cluster', auth: 'admin', tag: 'cluster', status: 200,
    summary: 'Cluster mode (store etcd): the migration domain as this host sees it: hosts alive or not, VMs and the host each runs on, blocks (docs/cluster.md). 400 EOPNOTSUPP with a local store.',
    response: CLUSTER_STATUS,
  },
  migrateVm: {
    method: 'POST', path: '/v1/vms/{vm}/migrate', auth: 'admin', tag: 'cluster', status: 200,
    summary: 'Live migration (cluster mode): move the VM, its set, PASIDs and bindings to host `to` in one etcd transaction; the guest keeps every PASID. Sent to the host the VM runs on.',
    params: VM_PARAMS, body: MIGRATE_BODY, response: MIGRATE_RESULT, errors: [409, 421, 503, 504],
  },
  reclaimHost: {
    method: 'POST', path: '/v1/cluster/hosts/{host}/reclaim', auth: 'admin', tag: 'cluster', status: 200,
    summary: "An operator's reclaim of a dead host (cluster mode): fence it, then free its VMs' PASIDs, bindings and blocks. 409 EBUSY while its lease is alive, unless force.",
    params: HOST_PARAMS, body: RECLAIM_BODY, response: RECLAIM_REPORT, errors: [409, 503, 504],
  },
  recentEvents: {
    method: 'GET', path: '/v1/events/recent', auth: 'admin', tag: 'events', status: 200,
    summary: 'The most recent events, oldest first (the WebSocket /v1/events streams new ones).',
    query: RECENT_EVENTS_QUERY, response: EVENT_LIST,
  },
} as const satisfies Record<string, OperationDef>;

export type OperationId = keyof typeof OPERATIONS;
type Op<K extends OperationId> = (typeof OPERATIONS)[K];

/** Path parameters of an operation, as the service's handlers receive them (integers parsed); undefined: none. */
export type OpParams<K extends OperationId> = Op<K> extends { readonly params: infer S } ? WireOf<S> : undefined;
/** Query parameters of an operation; undefined: none. */
export type OpQuery<K extends OperationId> = Op<K> extends { readonly query: infer S } ? WireOf<S> : undefined;
/** Request body of an operation; undefined: it takes none. */
export type OpBody<K extends OperationId> = Op<K> extends { readonly body: infer S } ? WireOf<S> : undefined;
/** What a success answers: its JSON, bytes for a binary or text answer, nothing for 204. */
export type OpReply<K extends OperationId> = Op<K> extends { readonly response: infer S }
  ? WireOf<S>
  : Op<K> extends { readonly produces: string }
    ? Uint8Array
    : void;
type WireOf<S> = S extends JSONSchema ? Wire<S> : never;

/**
 * The event stream, `GET /v1/events` upgraded to a WebSocket: one JSON message per text frame
 * (an event or a gap). The token travels in the `Authorization` header or, where headers cannot be
 * set (browsers), as the subprotocol `ioasid.bearer.<base64url of the token>` offered beside
 * `ioasid.v1` (which the service selects); never in the URL. `since=N` resumes after event N (a
 * `gap` message first when some of those events are no longer kept). Close codes: 4401 no valid
 * token for the scope, 4400 a malformed query (a `token` in it included), 4403 the VM was destroyed
 * or its token replaced, 4429 too many subscriptions for the caller, 4008 the consumer did not
 * keep up, 1001 the service is stopping.
 */
export const EVENT_STREAM = {
  path: '/v1/events',
  query: {
    type: 'object', additionalProperties: false,
    properties: {
      vm: { type: 'string', pattern: VM_ID_PATTERN, description: 'Only this VM\'s events (required with a VM token).' },
      since: { type: 'integer', minimum: 0, description: 'Resume after this event seq: first the kept events after it (a gap message for those no longer kept), then the live ones.' },
    },
  },
  message: STREAM_MESSAGE,
  /** The subprotocol the service selects. */
  protocol: 'ioasid.v1',
  /** Prefix of the subprotocol that carries the token (base64url, no padding). */
  bearerProtocolPrefix: 'ioasid.bearer.',
  /** WebSocket close code of a refused stream (no valid token for the scope asked). */
  refusedCloseCode: 4401,
} as const;

/**
 * The subprotocols that carry `token` to the event stream: `ioasid.v1` and
 * `ioasid.bearer.<base64url>` (a subprotocol is an RFC 7230 token, so the token is encoded).
 * Browser-safe (TextEncoder, btoa).
 */
export function eventStreamProtocols(token: string | undefined): string[] {
  if (token === undefined) return [EVENT_STREAM.protocol];
  let bin = '';
  for (const b of new TextEncoder().encode(token)) bin += String.fromCharCode(b);
  const b64 = btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  return [EVENT_STREAM.protocol, `${EVENT_STREAM.bearerProtocolPrefix}${b64}`];
}
