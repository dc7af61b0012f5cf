/**
 * The wire contract's JSON schemas, written once. They validate requests (fastify's ajv), shape
 * responses (fastify's serialiser), make the OpenAPI document (openapi.ts) and, through
 * json-schema-to-ts, are the TypeScript types of the service, the typed client and the dashboard.
 * Plain data: importing this costs no library at run time (docs/decisions.md).
 *
 * Every object the service answers with is closed (`additionalProperties: false`): what is not
 * here is not sent, and the derived type is exact.
 */
import type { FromSchema, JSONSchema } from 'json-schema-to-ts';
import { BDF_PATTERN, HOST_ID_PATTERN, IOASID_ERROR_CODES, PASID_BITS, PASID_MAX, PASID_MIN, SEGMENT_MAX, VM_ID_PATTERN } from '../core/index.ts';

// ------------------------------------------------------------------ helpers

/** Readonly all the way down: what the wire carries is not the receiver's to change. */
export type DeepReadonly<T> = T extends (infer U)[]
  ? readonly DeepReadonly<U>[]
  : T extends readonly (infer U)[]
    ? readonly DeepReadonly<U>[]
    : T extends object
      ? { readonly [K in keyof T]: DeepReadonly<T[K]> }
      : T;

/** The TypeScript type of a schema of this contract. */
export type Wire<S extends JSONSchema> = DeepReadonly<FromSchema<S, { keepDefaultedPropertiesOptional: true }>>;

// ------------------------------------------------------------------ scalars

// Syntax and ranges come from their one definition (core: names.ts, ids.ts).
export const VM_ID = {
  type: 'string', pattern: VM_ID_PATTERN,
  description: 'A VM id: 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit.',
} as const;
export const HOST_ID = {
  type: 'string', pattern: HOST_ID_PATTERN,
  description: 'A host of the cluster: 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit.',
} as const;
export const PASID = { type: 'integer', minimum: PASID_MIN, maximum: PASID_MAX, description: 'A PASID, 1..0xfffff (20 bits; 0 is DMA without a PASID).' } as const;
export const SEGMENT = { type: 'integer', minimum: 0, maximum: SEGMENT_MAX, description: 'A PCI segment (one vIOMMU per segment).' } as const;
export const BDF = {
  type: 'string', pattern: BDF_PATTERN,
  description: "A device's PCI address as the guest sees it, segment:bus:device.function, e.g. 0000:00:02.0 (the segment selects the guest's vIOMMU; the host's own address of the device stays with the VMM).",
} as const;
export const HEX64 = { type: 'string', pattern: '^0x[0-9a-fA-F]{1,16}$', description: 'A 64-bit register value in hex, e.g. 0x1.' } as const;
export const LAYOUT = { type: 'string', enum: ['A', 'B'], description: 'VT-d register layout: A = VT-d 3.0/3.1, B = VT-d 3.3 and later.' } as const;
const SEQ = { type: 'integer', minimum: 1, description: 'Sequence number of the event (1, 2, ...), in commit order.' } as const;
const AT = { type: 'integer', description: 'When the event was published, ms since the epoch.' } as const;
const COUNT = { type: 'integer', minimum: 0 } as const;
const PASID_LIST = { type: 'array', items: PASID } as const;

// ------------------------------------------------------------------ request bodies

export const VIOMMU_SPEC = {
  type: 'object', additionalProperties: false, required: ['segment'],
  properties: {
    segment: SEGMENT,
    layout: LAYOUT,
    rangeExtension: { type: 'boolean', description: 'Advertise the range extension (layout B only): Allocate carries [min, max].' },
  },
} as const;

export const DEVICE_SPEC = {
  type: 'object', additionalProperties: false, required: ['bdf'],
  properties: { bdf: BDF, pasidBits: { type: 'integer', minimum: 1, maximum: 20, description: 'PASID width of the device (default 20).' } },
} as const;

export const CREATE_VM_BODY = {
  type: 'object', additionalProperties: false, required: ['id'],
  properties: {
    id: VM_ID,
    quota: { type: 'integer', minimum: 0, maximum: PASID_MAX, description: 'How many PASIDs the VM may hold (default 1000).' },
    viommus: { type: 'array', maxItems: 64, items: VIOMMU_SPEC },
    devices: { type: 'array', maxItems: 256, items: DEVICE_SPEC },
  },
} as const;

export const ALLOC_BODY = {
  type: 'object', additionalProperties: false,
  properties: {
    min: { ...PASID, description: 'Lowest acceptable PASID (default 1).' },
    max: { ...PASID, description: 'Highest acceptable PASID (default 0xfffff).' },
    count: { type: 'integer', minimum: 1, maximum: 1024, description: 'How many (default 1); a batch is all or nothing.' },
  },
} as const;

export const BIND_BODY = { type: 'object', additionalProperties: false, required: ['bdf'], properties: { bdf: BDF } } as const;

export const MMIO_BODY = {
  type: 'object', additionalProperties: false, required: ['op', 'offset', 'size'],
  properties: {
    op: { type: 'string', enum: ['read', 'write'] },
    offset: { type: 'integer', minimum: 0, maximum: 0xfff, description: 'Register offset in the vIOMMU page.' },
    size: { type: 'integer', enum: [4, 8], description: 'Access size, bytes.' },
    value: { ...HEX64, description: 'The value to write (a write needs one; a read takes none).' },
    writer: {
      type: 'object', additionalProperties: false, required: ['id', 'seq'],
      description: 'A numbered write (a write only): the device applies each writer\'s write once, so a VMM may send it again after losing the answer (a restart of the service).',
      properties: { id: { type: 'string', pattern: '^[\\x21-\\x7e]{1,64}$' }, seq: { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER } },
    },
  },
} as const;

export const MIGRATE_BODY = { type: 'object', additionalProperties: false, required: ['to'], properties: { to: HOST_ID } } as const;

export const RECLAIM_BODY = {
  type: 'object', additionalProperties: false,
  properties: { force: { type: 'boolean', description: 'Reclaim even while the host\'s lease is alive.' } },
} as const;

// ------------------------------------------------------------------ path and query parameters

export const VM_PARAMS = { type: 'object', additionalProperties: false, required: ['vm'], properties: { vm: VM_ID } } as const;
export const PASID_PARAMS = { type: 'object', additionalProperties: false, required: ['vm', 'pasid'], properties: { vm: VM_ID, pasid: PASID } } as const;
export const SEGMENT_PARAMS = { type: 'object', additionalProperties: false, required: ['vm', 'segment'], properties: { vm: VM_ID, segment: SEGMENT } } as const;
export const DEVICE_PARAMS = { type: 'object', additionalProperties: false, required: ['vm', 'bdf'], properties: { vm: VM_ID, bdf: BDF } } as const;
export const BINDING_PARAMS = { type: 'object', additionalProperties: false, required: ['vm', 'pasid', 'bdf'], properties: { vm: VM_ID, pasid: PASID, bdf: BDF } } as const;
export const ANY_PASID_PARAMS = { type: 'object', additionalProperties: false, required: ['pasid'], properties: { pasid: PASID } } as const;
export const HOST_PARAMS = { type: 'object', additionalProperties: false, required: ['host'], properties: { host: HOST_ID } } as const;

/** Most events `GET /v1/events/recent` returns (the event log keeps 65,536). */
export const RECENT_EVENTS_MAX = 65536;
export const RECENT_EVENTS_QUERY = {
  type: 'object', additionalProperties: false,
  properties: { limit: { type: 'integer', minimum: 1, maximum: RECENT_EVENTS_MAX, default: 100, description: 'How many of the latest events (default 100).' } },
} as const;

// ------------------------------------------------------------------ responses

export const HEALTH = { type: 'object', additionalProperties: false, required: ['ok'], properties: { ok: { type: 'boolean' } } } as const;

export const READY = {
  type: 'object', additionalProperties: false, required: ['ready', 'store'],
  properties: { ready: { type: 'boolean' }, store: { type: 'string', description: 'The store kind: memory, sqlite or etcd.' } },
} as const;

export const VM_INFO = {
  type: 'object', additionalProperties: false,
  required: ['id', 'quota', 'used', 'createdAt', 'viommus', 'devices', 'bindings'],
  properties: {
    id: VM_ID,
    quota: { type: 'integer', minimum: 0 },
    used: { type: 'integer', minimum: 0, description: 'PASIDs the VM holds.' },
    createdAt: { type: 'integer', description: 'ms since the epoch.' },
    viommus: {
      type: 'array',
      items: { type: 'object', additionalProperties: false, required: ['segment', 'layout', 'rangeExtension'], properties: { segment: SEGMENT, layout: LAYOUT, rangeExtension: { type: 'boolean' } } },
    },
    devices: {
      type: 'array',
      items: { type: 'object', additionalProperties: false, required: ['bdf', 'segment', 'pasidBits'], properties: { bdf: BDF, segment: SEGMENT, pasidBits: { type: 'integer' } } },
    },
    bindings: {
      type: 'array',
      items: { type: 'object', additionalProperties: false, required: ['bdf', 'pasid'], properties: { bdf: BDF, pasid: PASID } },
    },
    host: { ...HOST_ID, description: 'The host the VM runs on (cluster mode only).' },
  },
} as const;

export const CREATED_VM = { type: 'object', additionalProperties: false, required: ['vm', 'token'], properties: { vm: VM_INFO, token: { type: 'string', description: "The VM's bearer token, shown once (the service keeps its hash)." } } } as const;
export const VM_LIST = { type: 'object', additionalProperties: false, required: ['vms'], properties: { vms: { type: 'array', items: VM_INFO } } } as const;
export const DESTROYED_VM = {
  type: 'object', additionalProperties: false, required: ['freed', 'bindings'],
  properties: { freed: { ...PASID_LIST, description: 'The PASIDs the VM held, now free.' }, bindings: { ...COUNT, description: 'Bindings dropped.' } },
} as const;
export const PASID_LIST_BODY = { type: 'object', additionalProperties: false, required: ['pasids'], properties: { pasids: PASID_LIST } } as const;
export const BINDING = { type: 'object', additionalProperties: false, required: ['pasid', 'bdf'], properties: { pasid: PASID, bdf: BDF } } as const;
export const NEW_TOKEN = {
  type: 'object', additionalProperties: false, required: ['vm', 'token'],
  properties: { vm: VM_ID, token: { type: 'string', description: 'The VM\'s new bearer token: shown once, stored hashed.' } },
} as const;

export const MMIO_RESULT = { type: 'object', additionalProperties: false, properties: { value: { ...HEX64, description: 'The value read (absent after a write).' } } } as const;

/** One vIOMMU's VCMD device configuration: what its registers decode with. */
export const VIOMMU_CONFIG = {
  type: 'object', additionalProperties: false,
  required: ['layout', 'pasBit', 'pasidAllocation', 'freeCommand', 'nullCommand', 'rangeExtension', 'pss', 'cachingMode', 'scalableMode', 'pasidSupport', 'virtualCommands', 'logSize'],
  properties: {
    layout: LAYOUT,
    pasBit: { type: 'integer', enum: [0, 1], description: 'VCCAP.PAS position: 0 as Linux, 1 as the VT-d specification Rev 5.10.' },
    pasidAllocation: { type: 'boolean', description: 'VCCAP.PAS: Allocate is supported.' },
    freeCommand: { type: 'boolean', description: 'Free is supported.' },
    nullCommand: { type: 'boolean', description: 'VCCAP.NS: the Null command is supported.' },
    rangeExtension: { type: 'boolean', description: 'VCCAP.RX (ours, layout B): Allocate carries [min, max].' },
    pss: { type: 'integer', minimum: 0, maximum: 19, description: 'ECAP.PSS: PASIDs have pss + 1 bits.' },
    cachingMode: { type: 'boolean', description: 'CAP.CM.' },
    scalableMode: { type: 'boolean', description: 'ECAP.SMTS.' },
    pasidSupport: { type: 'boolean', description: 'ECAP.PASID.' },
    virtualCommands: { type: 'boolean', description: 'ECAP.VCS.' },
    logSize: { type: 'integer', minimum: 0, maximum: 1024, description: 'Entries kept in the recent-commands log.' },
  },
} as const;

export const VIOMMU_VIEW = { type: 'object', additionalProperties: false, required: ['segment', 'config'], properties: { segment: SEGMENT, config: VIOMMU_CONFIG } } as const;

/** One command of a vIOMMU's recent-commands log. */
export const VCMD_LOG_ENTRY = {
  type: 'object', additionalProperties: false,
  required: ['seq', 'cmd', 'command', 'operand', 'range', 'status', 'statusName', 'result', 'issuedAt', 'completedAt', 'error'],
  properties: {
    seq: { type: 'integer' },
    cmd: { type: 'integer', description: 'VCMD_REG.CMD as written.' },
    command: { type: 'string' },
    operand: { type: ['integer', 'null'], description: "Free's PASID operand." },
    range: {
      anyOf: [
        { type: 'object', additionalProperties: false, required: ['min', 'max'], properties: { min: { type: 'integer' }, max: { type: 'integer' } } },
        { type: 'null' },
      ],
      description: 'The range a ranged Allocate carried (range extension).',
    },
    status: { type: ['integer', 'null'], description: 'VCRSP_REG.SC, null while in progress.' },
    statusName: { type: ['string', 'null'] },
    result: { type: ['integer', 'null'], description: 'The PASID a successful Allocate returned.' },
    issuedAt: { type: 'number' },
    completedAt: { type: ['number', 'null'] },
    error: { type: ['string', 'null'], description: 'Why the backend refused, or the internal error reported.' },
  },
} as const;

export const REGISTERS_VIEW = {
  type: 'object', additionalProperties: false, required: ['layout', 'values', 'decoded', 'recent'],
  properties: {
    layout: LAYOUT,
    values: { type: 'object', additionalProperties: HEX64, description: 'Register name to its 64-bit value.' },
    decoded: { type: 'object', additionalProperties: { type: 'object', additionalProperties: HEX64 }, description: 'Register name to its fields, each in hex.' },
    recent: { type: 'array', items: VCMD_LOG_ENTRY },
  },
} as const;

export const NAMESPACE_VIEW = {
  type: 'object', additionalProperties: false, required: ['capacity', 'owners'],
  properties: {
    capacity: { type: 'integer', description: 'The highest PASID.' },
    owners: {
      type: 'array',
      items: {
        type: 'object', additionalProperties: false, required: ['owner', 'count', 'runs'],
        properties: {
          owner: { type: ['string', 'null'], description: 'VM id, or null for the host itself.' },
          count: COUNT,
          runs: { type: 'array', items: { type: 'integer' }, description: 'Runs of consecutive PASIDs, flat: [start, length, start, length, ...].' },
        },
      },
    },
  },
} as const;

export const CLUSTER_STATUS = {
  type: 'object', additionalProperties: false,
  required: ['domain', 'host', 'fenced', 'blockSize', 'revision', 'hosts', 'vms', 'blocks', 'pasids', 'inconsistencies'],
  properties: {
    domain: { type: 'string' },
    host: HOST_ID,
    fenced: {
      anyOf: [
        { type: 'object', additionalProperties: false, required: ['by', 'reason', 'revision'], properties: { by: { type: 'string' }, reason: { type: 'string' }, revision: { type: 'integer' } } },
        { type: 'null' },
      ],
      description: 'Set when another host reclaimed this one.',
    },
    blockSize: { type: 'integer' },
    revision: { type: 'integer', description: 'etcd revision of this view.' },
    hosts: {
      type: 'array',
      items: {
        type: 'object', additionalProperties: false, required: ['id', 'alive', 'url', 'startedAt', 'vms', 'blocks'],
        properties: { id: HOST_ID, alive: { type: 'boolean' }, url: { type: ['string', 'null'] }, startedAt: { type: ['integer', 'null'] }, vms: COUNT, blocks: COUNT },
      },
    },
    vms: {
      type: 'array',
      items: { type: 'object', additionalProperties: false, required: ['id', 'host', 'state', 'pasids'], properties: { id: VM_ID, host: HOST_ID, state: { type: 'string' }, pasids: COUNT } },
    },
    blocks: { type: 'object', additionalProperties: false, required: ['own', 'total'], properties: { own: COUNT, total: COUNT } },
    pasids: COUNT,
    inconsistencies: COUNT,
  },
} as const;

export const MIGRATE_RESULT = {
  type: 'object', additionalProperties: false, required: ['vm', 'from', 'to', 'revision', 'pasids', 'bindings'],
  properties: { vm: VM_ID, from: HOST_ID, to: HOST_ID, revision: { type: 'integer', description: 'etcd revision of the move.' }, pasids: PASID_LIST, bindings: COUNT },
} as const;

export const RECLAIM_REPORT = {
  type: 'object', additionalProperties: false, required: ['host', 'fencedAt', 'vms', 'pasids', 'bindings', 'blocks'],
  properties: {
    host: HOST_ID,
    fencedAt: { type: 'integer', description: 'etcd revision of the fence.' },
    vms: { type: 'array', items: VM_ID },
    pasids: COUNT,
    bindings: COUNT,
    blocks: COUNT,
  },
} as const;

// ------------------------------------------------------------------ events

export const ALLOC_EVENT = {
  type: 'object', additionalProperties: false, required: ['type', 'vm', 'pasids', 'seq', 'at'],
  description: 'PASIDs allocated to, or freed by, a VM (vm null: the host itself); one event per committed batch.',
  properties: { type: { type: 'string', enum: ['alloc', 'free'] }, vm: { type: ['string', 'null'] }, pasids: { ...PASID_LIST, minItems: 1 }, seq: SEQ, at: AT },
} as const;
export const VM_CREATED_EVENT = {
  type: 'object', additionalProperties: false, required: ['type', 'vm', 'quota', 'seq', 'at'],
  properties: { type: { type: 'string', const: 'vm-created' }, vm: VM_ID, quota: COUNT, seq: SEQ, at: AT },
} as const;
export const VM_DESTROYED_EVENT = {
  type: 'object', additionalProperties: false, required: ['type', 'vm', 'freed', 'seq', 'at'],
  properties: { type: { type: 'string', const: 'vm-destroyed' }, vm: VM_ID, freed: PASID_LIST, seq: SEQ, at: AT },
} as const;
export const QUOTA_EVENT = {
  type: 'object', additionalProperties: false, required: ['type', 'vm', 'quota', 'seq', 'at'],
  description: 'A VM asked for a PASID beyond its quota.',
  properties: { type: { type: 'string', const: 'quota-exhausted' }, vm: VM_ID, quota: COUNT, seq: SEQ, at: AT },
} as const;
export const VIOMMU_ADDED_EVENT = {
  type: 'object', additionalProperties: false, required: ['type', 'vm', 'segment', 'layout', 'rangeExtension', 'pasBit', 'pss', 'seq', 'at'],
  properties: {
    type: { type: 'string', const: 'viommu-added' }, vm: VM_ID, segment: SEGMENT, layout: LAYOUT, rangeExtension: { type: 'boolean' },
    pasBit: { type: 'integer', enum: [0, 1] }, pss: { type: 'integer', minimum: 0, maximum: PASID_BITS - 1 }, seq: SEQ, at: AT,
  },
} as const;
export const VIOMMU_REMOVED_EVENT = {
  type: 'object', additionalProperties: false, required: ['type', 'vm', 'segment', 'seq', 'at'],
  properties: { type: { type: 'string', const: 'viommu-removed' }, vm: VM_ID, segment: SEGMENT, seq: SEQ, at: AT },
} as const;
export const DEVICE_ASSIGNED_EVENT = {
  type: 'object', additionalProperties: false, required: ['type', 'vm', 'bdf', 'pasidBits', 'seq', 'at'],
  properties: { type: { type: 'string', const: 'device-assigned' }, vm: VM_ID, bdf: BDF, pasidBits: { type: 'integer', minimum: 1, maximum: PASID_BITS }, seq: SEQ, at: AT },
} as const;
export const DEVICE_REMOVED_EVENT = {
  type: 'object', additionalProperties: false, required: ['type', 'vm', 'bdf', 'seq', 'at'],
  properties: { type: { type: 'string', const: 'device-removed' }, vm: VM_ID, bdf: BDF, seq: SEQ, at: AT },
} as const;
export const CREDENTIAL_EVENT = {
  type: 'object', additionalProperties: false, required: ['type', 'vm', 'seq', 'at'],
  description: 'The VM\'s token was replaced (the old one stopped working; the new one is never in an event).',
  properties: { type: { type: 'string', const: 'credential-replaced' }, vm: VM_ID, seq: SEQ, at: AT },
} as const;
export const MIGRATED_EVENT = {
  type: 'object', additionalProperties: false, required: ['type', 'vm', 'from', 'to', 'seq', 'at'],
  description: 'Cluster mode: the VM now runs on another host of its migration domain.',
  properties: { type: { type: 'string', const: 'vm-migrated' }, vm: VM_ID, from: HOST_ID, to: HOST_ID, seq: SEQ, at: AT },
} as const;
export const BIND_EVENT = {
  type: 'object', additionalProperties: false, required: ['type', 'vm', 'pasid', 'bdf', 'seq', 'at'],
  properties: { type: { type: 'string', enum: ['bind', 'unbind'] }, vm: VM_ID, pasid: PASID, bdf: BDF, seq: SEQ, at: AT },
} as const;
/** What the service records and streams: one committed change. */
export const EVENT = {
  oneOf: [ALLOC_EVENT, VM_CREATED_EVENT, VM_DESTROYED_EVENT, QUOTA_EVENT, VIOMMU_ADDED_EVENT, VIOMMU_REMOVED_EVENT, DEVICE_ASSIGNED_EVENT, DEVICE_REMOVED_EVENT, BIND_EVENT, CREDENTIAL_EVENT, MIGRATED_EVENT],
  description: 'One committed change, in commit order (seq).',
} as const;

/**
 * Sent on the event stream in place of events the service no longer holds (a slow or resuming
 * reader): the events after `since` and before `next` are lost; reload the state, then go on.
 */
export const GAP_MESSAGE = {
  type: 'object', additionalProperties: false, required: ['type', 'since', 'next'],
  properties: {
    type: { type: 'string', const: 'gap' },
    since: { type: 'integer', minimum: 0, description: 'The last seq the reader had.' },
    next: { type: 'integer', minimum: 1, description: 'The seq the stream goes on with.' },
  },
} as const;

/** One message of the WebSocket `/v1/events`: an event, or a gap. */
export const STREAM_MESSAGE = { oneOf: [...EVENT.oneOf, GAP_MESSAGE] } as const;

export const EVENT_LIST = { type: 'object', additionalProperties: false, required: ['events'], properties: { events: { type: 'array', items: EVENT } } } as const;

export const PASID_INFO = {
  type: 'object', additionalProperties: false, required: ['pasid', 'owner', 'bindings', 'history'],
  properties: {
    pasid: PASID,
    owner: { type: ['string', 'null'], description: 'The VM that holds it; null if free or held by the host.' },
    bindings: { type: 'array', items: BDF, description: 'Devices bound to it.' },
    history: { type: 'array', items: EVENT, description: 'Its latest events (up to 32), oldest first.' },
  },
} as const;

// ------------------------------------------------------------------ errors (RFC 9457)

export const PROBLEM = {
  type: 'object', required: ['type', 'title', 'status', 'detail', 'code', 'errno', 'message', 'details'],
  description: 'An error (RFC 9457 problem details, `application/problem+json`), with the errno name and number the caller can act on.',
  properties: {
    type: { type: 'string', description: 'URI naming the problem type: urn:ioasid:error:CODE.' },
    title: { type: 'string', description: 'Short summary of the problem type (the same for every occurrence of a code).' },
    status: { type: 'integer', minimum: 400, maximum: 599, description: 'The HTTP status.' },
    detail: { type: 'string', description: 'What went wrong this time, naming the offending values.' },
    instance: { type: 'string', description: 'The request path (no query string).' },
    code: { type: 'string', enum: IOASID_ERROR_CODES, description: 'The errno name (docs/error-codes.md).' },
    errno: { type: 'integer', maximum: -1, description: 'The negative Linux errno of the code.' },
    message: { type: 'string', description: 'Same text as detail (the member clients read before RFC 9457 bodies).' },
    details: { type: 'object', additionalProperties: true, description: 'The offending values, by name.' },
  },
} as const;

// ------------------------------------------------------------------ the derived types

export type VmId = Wire<typeof VM_ID>;
export type Bdf = Wire<typeof BDF>;
export type ViommuSpecBody = Wire<typeof VIOMMU_SPEC>;
export type DeviceSpecBody = Wire<typeof DEVICE_SPEC>;
export type CreateVmBody = Wire<typeof CREATE_VM_BODY>;
export type AllocBody = Wire<typeof ALLOC_BODY>;
export type MmioBody = Wire<typeof MMIO_BODY>;
export type ReclaimBody = Wire<typeof RECLAIM_BODY>;
export type Health = Wire<typeof HEALTH>;
export type Ready = Wire<typeof READY>;
export type VmInfo = Wire<typeof VM_INFO>;
export type CreatedVm = Wire<typeof CREATED_VM>;
export type DestroyedVm = Wire<typeof DESTROYED_VM>;
export type Binding = Wire<typeof BINDING>;
export type ViommuConfig = Wire<typeof VIOMMU_CONFIG>;
export type ViommuView = Wire<typeof VIOMMU_VIEW>;
export type VcmdLogEntryView = Wire<typeof VCMD_LOG_ENTRY>;
export type RegistersView = Wire<typeof REGISTERS_VIEW>;
export type NamespaceView = Wire<typeof NAMESPACE_VIEW>;
export type ClusterStatusView = Wire<typeof CLUSTER_STATUS>;
export type MigrateResultView = Wire<typeof MIGRATE_RESULT>;
export type ReclaimReportView = Wire<typeof RECLAIM_REPORT>;
/** One committed change, as the service records and streams it. */
export type ApiEvent = Wire<typeof EVENT>;
export type ApiEventType = ApiEvent['type'];
export type GapMessage = Wire<typeof GAP_MESSAGE>;
/** One message of the event stream. */
export type StreamMessage = ApiEvent | GapMessage;
export type PasidInfo = Wire<typeof PASID_INFO>;
export type Problem = Wire<typeof PROBLEM>;
