/**
 * The durable state of the PASID authority service, as plain JSON-safe rows, the mutations that
 * change it, and the one `Store` interface every backend implements.
 *
 * One row per VM (its IOASID set), vIOMMU, assigned device, PASID, binding and event: a write
 * touches the rows it changes, never a whole bitmap (a bitmap rewritten per allocation is what ran
 * Kubernetes' service-IP allocator out of etcd space). A store keeps integrity (unique keys,
 * references, ranges, unique token hashes), not policy: quotas, ownership and the other domain
 * rules belong to the host model, which checks them before anything reaches the store.
 */
import { BDF_LENGTH, PASID_BITS, PASID_MAX, PASID_MIN, SEGMENT_MAX, VM_ID_SYNTAX } from '../core/index.ts';

/** Backends, as a closed set. */
export const STORE_KINDS = ['memory', 'sqlite', 'etcd'] as const;
export type StoreKind = (typeof STORE_KINDS)[number];

/** VT-d VCMD register layouts: 'A' = VT-d 3.0/3.1, 'B' = VT-d 3.3 and later. */
export const VIOMMU_LAYOUTS = ['A', 'B'] as const;
export type ViommuLayout = (typeof VIOMMU_LAYOUTS)[number];

/** Bounds the store enforces, taken from the core's definitions. */
export const STORE_LIMITS = {
  pasidMin: PASID_MIN,
  pasidMax: PASID_MAX,
  pasidBitsMax: PASID_BITS,
  segmentMax: SEGMENT_MAX,
  vmIdMaxLength: VM_ID_SYNTAX.maxLength,
  bdfLength: BDF_LENGTH,
  metaKeyMaxLength: 256,
  /** A vIOMMU's saved registers (JSON text). */
  registersMaxLength: 1024,
  /** One event's JSON text (a destroy's free event lists every PASID the VM held). */
  eventMaxLength: 16 * 1024 * 1024,
} as const;

/** A VM token hash: SHA-256, lowercase hex. */
export const TOKEN_HASH_PATTERN = '^[0-9a-f]{64}$';

/** Meta keys starting with this prefix belong to the store itself (schema version, ...). */
export const RESERVED_META_PREFIX = 'store.';

/**
 * A VM and its IOASID set. `quota` 0 means unlimited. `tokenHash` is unique among VMs. Times are
 * milliseconds since the epoch.
 */
export interface VmRow {
  readonly id: string;
  readonly quota: number;
  readonly tokenHash: string;
  readonly createdAt: number;
}

/**
 * One vIOMMU of a VM (one per PCI segment): how it was made, and the registers its guest last
 * saw (`registers`: JSON text of the device's guest-visible state, null before the first
 * command), committed with the change they report.
 */
export interface ViommuRow {
  readonly vm: string;
  readonly segment: number;
  readonly layout: ViommuLayout;
  readonly rangeExtension: boolean;
  /** VCCAP.PAS position (0 or 1). */
  readonly pasBit: number;
  /** ECAP.PSS (PASID width - 1, 0..19). */
  readonly pss: number;
  readonly registers: string | null;
}

/** A device assigned to a VM, behind the vIOMMU of `segment`. `bdf` is canonical `0000:00:02.0`. */
export interface DeviceRow {
  readonly vm: string;
  readonly bdf: string;
  readonly segment: number;
  readonly pasidBits: number;
}

/** An allocated PASID. `vm` null = owned by the host itself. */
export interface PasidRow {
  readonly pasid: number;
  readonly vm: string | null;
  readonly allocatedAt: number;
}

/** A device bound to a PASID; `vm` is the PASID's owner and the device's VM. */
export interface BindingRow {
  readonly pasid: number;
  readonly vm: string;
  readonly bdf: string;
  readonly boundAt: number;
}

/** Free-form settings of the service (admin token hash, ...). Keys `store.*` are reserved. */
export interface MetaRow {
  readonly key: string;
  readonly value: string;
}

/**
 * One event of the journal, numbered by the store when its batch commits (`seq` increases by one
 * per event and never goes back, across restarts). `body` is the event as JSON text; `type` and
 * `vm` repeat two of its fields for queries.
 */
export interface EventRow {
  readonly seq: number;
  readonly at: number;
  readonly type: string;
  readonly vm: string | null;
  readonly body: string;
}

/** An event as appended: the store gives it its `seq`. */
export type NewEventRow = Omit<EventRow, 'seq'>;

/** Mutation names, as a closed set. */
export const MUTATION_OPS = [
  'putVm', 'setTokenHash', 'deleteVm',
  'putViommu', 'setRegisters', 'deleteViommu',
  'putDevice', 'deleteDevice',
  'insertPasid', 'deletePasid',
  'putBinding', 'deleteBinding',
  'putMeta', 'deleteMeta',
  'appendEvents',
] as const;
export type MutationOp = (typeof MUTATION_OPS)[number];

/**
 * One change. `put*` create or replace a row by its key; `insertPasid` only creates; every
 * `delete*` requires the row (with the given owner, for a PASID) to exist. The integrity rules
 * each op checks are in `mutation-rules.ts`.
 */
export type Mutation =
  | { readonly op: 'putVm'; readonly row: VmRow }
  | { readonly op: 'setTokenHash'; readonly vm: string; readonly tokenHash: string }
  | { readonly op: 'deleteVm'; readonly id: string }
  | { readonly op: 'putViommu'; readonly row: ViommuRow }
  | { readonly op: 'setRegisters'; readonly vm: string; readonly segment: number; readonly registers: string }
  | { readonly op: 'deleteViommu'; readonly vm: string; readonly segment: number }
  | { readonly op: 'putDevice'; readonly row: DeviceRow }
  | { readonly op: 'deleteDevice'; readonly vm: string; readonly bdf: string }
  | { readonly op: 'insertPasid'; readonly row: PasidRow }
  | { readonly op: 'deletePasid'; readonly pasid: number; readonly vm: string | null }
  | { readonly op: 'putBinding'; readonly row: BindingRow }
  | { readonly op: 'deleteBinding'; readonly pasid: number; readonly bdf: string }
  | { readonly op: 'putMeta'; readonly row: MetaRow }
  | { readonly op: 'deleteMeta'; readonly key: string }
  | { readonly op: 'appendEvents'; readonly events: readonly NewEventRow[] };

/**
 * Everything the store holds, in canonical order: vms by id, viommus by (vm, segment), devices
 * by (vm, bdf), pasids by pasid, bindings by (pasid, bdf), meta by key (strings compared by
 * UTF-16 code unit, as `<` does), events by seq (those kept: the most recent `eventRetention`).
 * Reserved `store.*` meta keys are not included. `lastSeq` is the number of the last event ever
 * appended (0 before any), whether or not it is still kept.
 */
export interface StoredState {
  readonly vms: readonly VmRow[];
  readonly viommus: readonly ViommuRow[];
  readonly devices: readonly DeviceRow[];
  readonly pasids: readonly PasidRow[];
  readonly bindings: readonly BindingRow[];
  readonly meta: readonly MetaRow[];
  readonly events: readonly EventRow[];
  readonly lastSeq: number;
}

/** Table names of `StoredState`, as a closed set. */
export const STORE_TABLES = ['vms', 'viommus', 'devices', 'pasids', 'bindings', 'meta', 'events'] as const;
export type StoreTable = (typeof STORE_TABLES)[number];

/** Counters since the store object was made (for metrics). */
export interface StoreStats {
  /** Batches applied (committed). */
  readonly batches: number;
  /** Batches rejected, for any reason. */
  readonly failedBatches: number;
  /** Durable commits; below `batches` when group commit merged batches. */
  readonly commits: number;
}

/** What a committed batch got: the `seq` of its first appended event (the next one if it appended none). */
export interface Applied {
  readonly seq: number;
}

/** Events a store keeps by default (older ones are pruned as new ones come). */
export const DEFAULT_EVENT_RETENTION = 65_536;

/**
 * A durable store. Lifecycle: closed -> `open()` -> open -> `close()` -> closed (and may be opened
 * again). Every failure is an `IoasidError`; one that leaves the outcome undone because the backend
 * failed (not because a rule refused) is a `CommitError`, and may be sent again.
 */
export interface Store {
  readonly kind: StoreKind;
  /** Where the state lives, as given to `openStore` (e.g. `sqlite:/var/lib/ioasid/state.db`). */
  readonly spec: string;
  /**
   * Load and validate everything. A state that breaks any rule `apply` enforces is refused with
   * `EINVAL` (details name the table and row) rather than risk handing out a PASID twice.
   */
  open(): Promise<StoredState>;
  /**
   * Apply one batch atomically, in order (later mutations see earlier ones). Resolves only once
   * the batch is durable; on failure nothing of it is applied and the promise rejects. Promises
   * settle in call order. Calls in the same tick may share one commit (group commit).
   */
  apply(batch: readonly Mutation[]): Promise<Applied>;
  /** Flush pending batches, then release the backend. Idempotent. */
  close(): Promise<void>;
  stats(): StoreStats;
}

/** An empty state. */
export function emptyState(): StoredState {
  return { vms: [], viommus: [], devices: [], pasids: [], bindings: [], meta: [], events: [], lastSeq: 0 };
}
