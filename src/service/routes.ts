/**
 * The HTTP API, version 1, as one table: each route's method, path, who may call it, its JSON
 * schemas and its handler. The same table registers the fastify routes and generates the OpenAPI
 * document, so what is validated is what is documented.
 */
import { deflateSync } from 'node:zlib';
import { IoasidError } from '../core/index.ts';
import type { PasidAuthority } from './authority.ts';
import { encodeNamespaceMap, NAMESPACE_MAP_MEDIA_TYPE } from './namespace-map.ts';

export type Auth = 'none' | 'admin' | 'vm';

export interface RouteRequest {
  readonly params: Record<string, string>;
  readonly query: Record<string, string | undefined>;
  readonly body: unknown;
}

export interface RouteDef {
  readonly method: 'GET' | 'POST' | 'DELETE';
  readonly url: string;
  readonly auth: Auth;
  readonly summary: string;
  readonly tag: string;
  readonly operationId: string;
  readonly status?: number;
  /** Media type of a success answer when it is not JSON (the handler returns bytes). */
  readonly produces?: string;
  readonly schema: {
    readonly params?: object;
    readonly querystring?: object;
    readonly body?: object;
    readonly response: object;
  };
  readonly handler: (a: PasidAuthority, req: RouteRequest) => unknown;
}

const VM_ID = { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' } as const;
const PASID_PARAM = { type: 'string', pattern: '^[0-9]{1,7}$' } as const;
const SEGMENT_PARAM = { type: 'string', pattern: '^[0-9]{1,5}$' } as const;
const BDF = { type: 'string', pattern: '^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[01][0-9a-fA-F]\\.[0-7]$' } as const;
const PASID = { type: 'integer', minimum: 1, maximum: 0xfffff } as const;
const HEX64 = { type: 'string', pattern: '^0x[0-9a-fA-F]{1,16}$' } as const;
const HOST_ID = { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' } as const;

const VIOMMU_SPEC = {
  type: 'object',
  additionalProperties: false,
  required: ['segment'],
  properties: {
    segment: { type: 'integer', minimum: 0, maximum: 65535 },
    layout: { type: 'string', enum: ['A', 'B'] },
    rangeExtension: { type: 'boolean' },
  },
} as const;

const DEVICE_SPEC = {
  type: 'object',
  additionalProperties: false,
  required: ['bdf'],
  properties: { bdf: BDF, pasidBits: { type: 'integer', minimum: 1, maximum: 20 } },
} as const;

const VM_INFO = {
  type: 'object',
  required: ['id', 'quota', 'used', 'viommus', 'devices', 'bindings'],
  properties: {
    id: { type: 'string' },
    quota: { type: 'integer' },
    used: { type: 'integer' },
    createdAt: { type: 'integer' },
    viommus: { type: 'array', items: { type: 'object', properties: { segment: { type: 'integer' }, layout: { type: 'string' }, rangeExtension: { type: 'boolean' } } } },
    devices: { type: 'array', items: { type: 'object', properties: { bdf: { type: 'string' }, segment: { type: 'integer' }, pasidBits: { type: 'integer' } } } },
    bindings: { type: 'array', items: { type: 'object', properties: { bdf: { type: 'string' }, pasid: { type: 'integer' } } } },
  },
} as const;

const EVENT = { type: 'object', additionalProperties: true, properties: { type: { type: 'string' }, seq: { type: 'integer' }, at: { type: 'integer' } } } as const;

const vmParams = { type: 'object', required: ['vm'], properties: { vm: VM_ID } } as const;
const pasidParams = { type: 'object', required: ['vm', 'pasid'], properties: { vm: VM_ID, pasid: PASID_PARAM } } as const;
const segParams = { type: 'object', required: ['vm', 'segment'], properties: { vm: VM_ID, segment: SEGMENT_PARAM } } as const;

function int(s: string | undefined, what: string): number {
  const n = Number(s);
  if (s === undefined || !Number.isInteger(n)) throw new IoasidError('EINVAL', `${what} must be an integer, got ${JSON.stringify(s)}`, { [what]: s });
  return n;
}

function vmOf(req: RouteRequest): string {
  return req.params.vm as string;
}

export const ROUTES: readonly RouteDef[] = [
  {
    method: 'GET', url: '/healthz', auth: 'none', tag: 'ops', operationId: 'healthz', summary: 'Liveness: the process answers.',
    schema: { response: { type: 'object', properties: { ok: { type: 'boolean' } } } },
    handler: () => ({ ok: true }),
  },
  {
    method: 'POST', url: '/v1/vms', auth: 'admin', tag: 'vms', operationId: 'createVm', status: 201,
    summary: 'Create a VM (its IOASID set, with a quota), its vIOMMUs and devices. Returns its bearer token, once.',
    schema: {
      body: {
        type: 'object', additionalProperties: false, required: ['id'],
        properties: {
          id: VM_ID,
          quota: { type: 'integer', minimum: 0, maximum: 0xfffff },
          viommus: { type: 'array', maxItems: 64, items: VIOMMU_SPEC },
          devices: { type: 'array', maxItems: 256, items: DEVICE_SPEC },
        },
      },
      response: { type: 'object', required: ['vm', 'token'], properties: { vm: VM_INFO, token: { type: 'string' } } },
    },
    handler: (a, req) => a.createVm(req.body as Parameters<PasidAuthority['createVm']>[0]),
  },
  {
    method: 'GET', url: '/v1/vms', auth: 'admin', tag: 'vms', operationId: 'listVms', summary: 'List VMs with their PASID use, quota, vIOMMUs, devices and bindings.',
    schema: { response: { type: 'object', required: ['vms'], properties: { vms: { type: 'array', items: VM_INFO } } } },
    handler: (a) => ({ vms: a.listVms() }),
  },
  {
    method: 'GET', url: '/v1/vms/:vm', auth: 'vm', tag: 'vms', operationId: 'getVm', summary: 'Inspect one VM.',
    schema: { params: vmParams, response: VM_INFO },
    handler: (a, req) => a.vmInfo(vmOf(req)),
  },
  {
    method: 'DELETE', url: '/v1/vms/:vm', auth: 'admin', tag: 'vms', operationId: 'destroyVm',
    summary: 'Destroy a VM: unbind its devices, free every PASID it held, forget it.',
    schema: { params: vmParams, response: { type: 'object', properties: { freed: { type: 'array', items: { type: 'integer' } }, bindings: { type: 'integer' } } } },
    handler: (a, req) => a.destroyVm(vmOf(req)),
  },
  {
    method: 'POST', url: '/v1/vms/:vm/token', auth: 'admin', tag: 'vms', operationId: 'replaceToken',
    summary: "Give a VM a new bearer token (shown once); the old one stops working at once, its event subscriptions end.",
    schema: { params: vmParams, response: { type: 'object', required: ['vm', 'token'], properties: { vm: { type: 'string' }, token: { type: 'string' } } } },
    handler: (a, req) => a.replaceToken(vmOf(req)),
  },
  {
    method: 'POST', url: '/v1/vms/:vm/viommus', auth: 'admin', tag: 'vms', operationId: 'addViommu', status: 201, summary: 'Hot-plug a vIOMMU for one PCI segment.',
    schema: { params: vmParams, body: VIOMMU_SPEC, response: VM_INFO },
    handler: (a, req) => a.addViommu(vmOf(req), req.body as { segment: number }),
  },
  {
    method: 'DELETE', url: '/v1/vms/:vm/viommus/:segment', auth: 'admin', tag: 'vms', operationId: 'removeViommu', summary: 'Hot-unplug a vIOMMU (no device may sit behind it).',
    schema: { params: segParams, response: VM_INFO },
    handler: (a, req) => a.removeViommu(vmOf(req), int(req.params.segment, 'segment')),
  },
  {
    method: 'POST', url: '/v1/vms/:vm/devices', auth: 'admin', tag: 'vms', operationId: 'addDevice', status: 201, summary: 'Assign a device (behind the vIOMMU of its segment).',
    schema: { params: vmParams, body: DEVICE_SPEC, response: VM_INFO },
    handler: (a, req) => a.addDevice(vmOf(req), req.body as { bdf: string }),
  },
  {
    method: 'DELETE', url: '/v1/vms/:vm/devices/:bdf', auth: 'admin', tag: 'vms', operationId: 'removeDevice', summary: 'Remove a device (its bindings are dropped).',
    schema: { params: { type: 'object', required: ['vm', 'bdf'], properties: { vm: VM_ID, bdf: BDF } }, response: VM_INFO },
    handler: (a, req) => a.removeDevice(vmOf(req), req.params.bdf as string),
  },
  {
    method: 'POST', url: '/v1/vms/:vm/pasids', auth: 'vm', tag: 'pasids', operationId: 'allocPasids', status: 201,
    summary: 'Allocate PASIDs for the VM, lowest free in [min, max]; count > 1 is a batch, all or nothing.',
    schema: {
      params: vmParams,
      body: { type: 'object', additionalProperties: false, properties: { min: PASID, max: PASID, count: { type: 'integer', minimum: 1, maximum: 1024 } } },
      response: { type: 'object', required: ['pasids'], properties: { pasids: { type: 'array', items: { type: 'integer' } } } },
    },
    handler: async (a, req) => ({ pasids: await a.allocPasids(vmOf(req), (req.body ?? {}) as { min?: number }) }),
  },
  {
    method: 'GET', url: '/v1/vms/:vm/pasids', auth: 'vm', tag: 'pasids', operationId: 'listVmPasids', summary: "The VM's PASIDs, ascending.",
    schema: { params: vmParams, response: { type: 'object', required: ['pasids'], properties: { pasids: { type: 'array', items: { type: 'integer' } } } } },
    handler: (a, req) => ({ pasids: a.vm(vmOf(req)).pasids() }),
  },
  {
    method: 'GET', url: '/v1/vms/:vm/pasids/:pasid', auth: 'vm', tag: 'pasids', operationId: 'getVmPasid', summary: "Inspect one of the VM's PASIDs (403 if another VM's).",
    schema: { params: pasidParams, response: { type: 'object', properties: { pasid: { type: 'integer' }, owner: { type: ['string', 'null'] }, bindings: { type: 'array', items: { type: 'string' } }, history: { type: 'array', items: EVENT } } } },
    handler: (a, req) => a.vmPasidInfo(vmOf(req), int(req.params.pasid, 'pasid')),
  },
  {
    method: 'DELETE', url: '/v1/vms/:vm/pasids/:pasid', auth: 'vm', tag: 'pasids', operationId: 'freePasid', status: 204,
    summary: "Free one of the VM's PASIDs (403 another VM's, 404 unknown, 409 still bound).",
    schema: { params: pasidParams, response: { type: 'null' } },
    handler: async (a, req) => {
      await a.freePasid(vmOf(req), int(req.params.pasid, 'pasid'));
      return null;
    },
  },
  {
    method: 'POST', url: '/v1/vms/:vm/pasids/:pasid/bindings', auth: 'vm', tag: 'pasids', operationId: 'bind', status: 201,
    summary: "Bind one of the VM's devices to one of its PASIDs (within the device's PASID width).",
    schema: { params: pasidParams, body: { type: 'object', additionalProperties: false, required: ['bdf'], properties: { bdf: BDF } }, response: { type: 'object', properties: { pasid: { type: 'integer' }, bdf: { type: 'string' } } } },
    handler: async (a, req) => {
      const pasid = int(req.params.pasid, 'pasid');
      const { bdf } = req.body as { bdf: string };
      await a.bind(vmOf(req), pasid, bdf);
      return { pasid, bdf: bdf.toLowerCase() };
    },
  },
  {
    method: 'DELETE', url: '/v1/vms/:vm/pasids/:pasid/bindings/:bdf', auth: 'vm', tag: 'pasids', operationId: 'unbind', status: 204, summary: 'Unbind a device from a PASID.',
    schema: { params: { type: 'object', required: ['vm', 'pasid', 'bdf'], properties: { vm: VM_ID, pasid: PASID_PARAM, bdf: BDF } }, response: { type: 'null' } },
    handler: async (a, req) => {
      await a.unbind(vmOf(req), int(req.params.pasid, 'pasid'), req.params.bdf as string);
      return null;
    },
  },
  {
    method: 'POST', url: '/v1/vms/:vm/viommus/:segment/mmio', auth: 'vm', tag: 'vcmd', operationId: 'mmio',
    summary: 'Forward a trapped register read or write of a vIOMMU to its VCMD device model (64-bit values as hex strings).',
    schema: {
      params: segParams,
      body: {
        type: 'object', additionalProperties: false, required: ['op', 'offset', 'size'],
        properties: {
          op: { type: 'string', enum: ['read', 'write'] }, offset: { type: 'integer', minimum: 0, maximum: 0xfff }, size: { type: 'integer', enum: [4, 8] }, value: HEX64,
          // A numbered write is applied once, however often it is sent (a VMM resending after a crash).
          writer: { type: 'object', additionalProperties: false, required: ['id', 'seq'], properties: { id: { type: 'string', pattern: '^[\\x21-\\x7e]{1,64}$' }, seq: { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER } } },
        },
      },
      response: { type: 'object', properties: { value: HEX64 } },
    },
    handler: async (a, req) => {
      const b = req.body as { op: 'read' | 'write'; offset: number; size: 4 | 8; value?: string; writer?: { id: string; seq: number } };
      if (b.op === 'write' && b.value === undefined) throw new IoasidError('EINVAL', 'a write needs a value', { op: b.op });
      if (b.op === 'read' && (b.value !== undefined || b.writer !== undefined)) throw new IoasidError('EINVAL', 'a read takes no value and no writer', { op: b.op });
      const v = await a.mmio(vmOf(req), int(req.params.segment, 'segment'), {
        op: b.op, offset: b.offset, size: b.size, ...(b.value !== undefined ? { value: BigInt(b.value) } : {}), ...(b.writer !== undefined ? { writer: b.writer } : {}),
      });
      return v === null ? {} : { value: `0x${v.toString(16)}` };
    },
  },
  {
    method: 'GET', url: '/v1/vms/:vm/viommus/:segment', auth: 'vm', tag: 'vcmd', operationId: 'getViommu',
    summary: "One vIOMMU's VCMD device configuration (layout, VCCAP.PAS position, range extension, ...): what its registers decode with.",
    schema: { params: segParams, response: { type: 'object', required: ['segment', 'config'], properties: { segment: { type: 'integer' }, config: { type: 'object', additionalProperties: true, properties: { layout: { type: 'string' }, pasBit: { type: 'integer' } } } } } },
    handler: (a, req) => a.viommuConfig(vmOf(req), int(req.params.segment, 'segment')),
  },
  {
    method: 'GET', url: '/v1/vms/:vm/viommus/:segment/registers', auth: 'vm', tag: 'vcmd', operationId: 'registers',
    summary: "A vIOMMU's registers decoded field by field, and its recent commands.",
    schema: { params: segParams, response: { type: 'object', additionalProperties: true, properties: { layout: { type: 'string' } } } },
    handler: (a, req) => a.registers(vmOf(req), int(req.params.segment, 'segment')),
  },
  {
    method: 'GET', url: '/v1/pasids/:pasid', auth: 'admin', tag: 'pasids', operationId: 'getPasid', summary: 'Inspect any PASID: owner, bindings, history.',
    schema: { params: { type: 'object', required: ['pasid'], properties: { pasid: PASID_PARAM } }, response: { type: 'object', additionalProperties: true, properties: { pasid: { type: 'integer' } } } },
    handler: (a, req) => a.pasidInfo(int(req.params.pasid, 'pasid')),
  },
  {
    method: 'GET', url: '/v1/namespace', auth: 'admin', tag: 'pasids', operationId: 'namespace',
    summary: 'The whole PASID namespace, compactly: per owner, runs of consecutive PASIDs as [start, length, ...].',
    schema: { response: { type: 'object', additionalProperties: true, properties: { capacity: { type: 'integer' } } } },
    handler: (a) => a.namespace(),
  },
  {
    method: 'GET', url: '/v1/namespace/map', auth: 'admin', tag: 'pasids', operationId: 'namespaceMap', produces: NAMESPACE_MAP_MEDIA_TYPE,
    summary: 'The whole namespace as a compact binary for the dashboard: one owner index per PASID, deflated, the owner legend and event seq in the header (docs/dashboard.md).',
    schema: { response: { type: 'string', format: 'binary' } },
    handler: (a) => {
      const bytes = encodeNamespaceMap(a.namespaceMap(), (raw) => deflateSync(raw));
      return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    },
  },
  {
    method: 'GET', url: '/v1/cluster', auth: 'admin', tag: 'cluster', operationId: 'clusterStatus',
    summary: 'Cluster mode (store etcd): the migration domain as this host sees it: hosts alive or not, VMs and the host each runs on, blocks (docs/cluster.md). 400 EOPNOTSUPP with a local store.',
    schema: { response: { type: 'object', additionalProperties: true, properties: { domain: { type: 'string' }, host: { type: 'string' } } } },
    handler: (a) => a.clusterStatus(),
  },
  {
    method: 'POST', url: '/v1/vms/:vm/migrate', auth: 'admin', tag: 'cluster', operationId: 'migrateVm',
    summary: 'Live migration (cluster mode): move the VM, its set, PASIDs and bindings to host `to` in one etcd transaction; the guest keeps every PASID. Sent to the host the VM runs on.',
    schema: {
      params: vmParams,
      body: { type: 'object', additionalProperties: false, required: ['to'], properties: { to: HOST_ID } },
      response: { type: 'object', properties: { vm: { type: 'string' }, from: { type: 'string' }, to: { type: 'string' }, revision: { type: 'integer' }, pasids: { type: 'array', items: { type: 'integer' } }, bindings: { type: 'integer' } } },
    },
    handler: (a, req) => a.migrateVm(vmOf(req), (req.body as { to: string }).to),
  },
  {
    method: 'POST', url: '/v1/cluster/hosts/:host/reclaim', auth: 'admin', tag: 'cluster', operationId: 'reclaimHost',
    summary: "An operator's reclaim of a dead host (cluster mode): fence it, then free its VMs' PASIDs, bindings and blocks. 409 EBUSY while its lease is alive, unless force.",
    schema: {
      params: { type: 'object', required: ['host'], properties: { host: HOST_ID } },
      body: { type: 'object', additionalProperties: false, properties: { force: { type: 'boolean' } } },
      response: { type: 'object', additionalProperties: true, properties: { host: { type: 'string' }, fencedAt: { type: 'integer' } } },
    },
    handler: (a, req) => a.reclaimHost(req.params.host as string, (req.body ?? {}) as { force?: boolean }),
  },
  {
    method: 'GET', url: '/v1/events/recent', auth: 'admin', tag: 'events', operationId: 'recentEvents', summary: 'The most recent events (the WebSocket /v1/events streams new ones).',
    schema: { querystring: { type: 'object', additionalProperties: false, properties: { limit: { type: 'string', pattern: '^[0-9]{1,5}$' } } }, response: { type: 'object', properties: { events: { type: 'array', items: EVENT } } } },
    handler: (a, req) => ({ events: a.recentEvents({ limit: req.query.limit === undefined ? 100 : int(req.query.limit, 'limit') }) }),
  },
];
