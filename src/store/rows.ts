/**
 * The durable state of the PASID authority service (DESIGN section 6), as plain JSON-safe rows,
 * the mutations that change it, and the one `Store` interface every backend implements.
 *
 * One row per VM (its IOASID set), vIOMMU, assigned device, PASID and binding: a write touches
 * the rows it changes, never a whole bitmap (spec/lessons-from-peers.md, lesson 6).
 */

/** Backends, as a closed set. */
export const STORE_KINDS = ['memory', 'sqlite', 'etcd'] as const;
export type StoreKind = (typeof STORE_KINDS)[number];

/** VT-d VCMD register layouts: 'A' = VT-d 3.0/3.1, 'B' = VT-d 3.3 and later. */
export const VIOMMU_LAYOUTS = ['A', 'B'] as const;
export type ViommuLayout = (typeof VIOMMU_LAYOUTS)[number];

/** Bounds the store enforces; equal to core's `PASID_MIN`, `PASID_MAX`, `PASID_BITS`. */
export const STORE_LIMITS = {
  pasidMin: 1,
  pasidMax: 0xfffff,
  pasidBitsMax: 20,
  segmentMax: 0xffff,
  vmIdMaxLength: 128,
  metaKeyMaxLength: 256,
} as const;

/** Meta keys starting with this prefix belong to the store itself (schema version, ...). */
export const RESERVED_META_PREFIX = 'store.';

/** A VM and its IOASID set. `quota` 0 means unlimited. Times are milliseconds since the epoch. */
export interface VmRow {
  readonly id: string;
  readonly name: string;
  readonly quota: number;
  readonly tokenHash: string;
  readonly createdAt: number;
}

/** One vIOMMU of a VM: one per PCI segment. */
export interface ViommuRow {
  readonly vm: string;
  readonly segment: number;
  readonly layout: ViommuLayout;
  readonly rangeExtension: boolean;
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

/** Mutation names, as a closed set. */
export const MUTATION_OPS = [
  'putVm', 'deleteVm',
  'putViommu', 'deleteViommu',
  'putDevice', 'deleteDevice',
  'insertPasid', 'deletePasid',
  'putBinding', 'deleteBinding',
  'putMeta', 'deleteMeta',
] as const;
export type MutationOp = (typeof MUTATION_OPS)[number];

/**
 * One change. `put*` create or replace a row by its key; `insertPasid` only creates; every
 * `delete*` requires the row to exist. The rules each op checks are in `mutation-rules.ts`.
 */
export type Mutation =
  | { readonly op: 'putVm'; readonly row: VmRow }
  | { readonly op: 'deleteVm'; readonly id: string }
  | { readonly op: 'putViommu'; readonly row: ViommuRow }
  | { readonly op: 'deleteViommu'; readonly vm: string; readonly segment: number }
  | { readonly op: 'putDevice'; readonly row: DeviceRow }
  | { readonly op: 'deleteDevice'; readonly vm: string; readonly bdf: string }
  | { readonly op: 'insertPasid'; readonly row: PasidRow }
  | { readonly op: 'deletePasid'; readonly pasid: number; readonly vm: string | null }
  | { readonly op: 'putBinding'; readonly row: BindingRow }
  | { readonly op: 'deleteBinding'; readonly pasid: number; readonly bdf: string }
  | { readonly op: 'putMeta'; readonly row: MetaRow }
  | { readonly op: 'deleteMeta'; readonly key: string };

/**
 * Everything the store holds, in canonical order: vms by id, viommus by (vm, segment), devices
 * by (vm, bdf), pasids by pasid, bindings by (pasid, bdf), meta by key (strings compared by
 * UTF-16 code unit, as `<` does). Reserved `store.*` meta keys are not included.
 */
export interface StoredState {
  readonly vms: readonly VmRow[];
  readonly viommus: readonly ViommuRow[];
  readonly devices: readonly DeviceRow[];
  readonly pasids: readonly PasidRow[];
  readonly bindings: readonly BindingRow[];
  readonly meta: readonly MetaRow[];
}

/** Table names of `StoredState`, as a closed set. */
export const STORE_TABLES = ['vms', 'viommus', 'devices', 'pasids', 'bindings', 'meta'] as const;
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

/**
 * A durable store. Lifecycle: closed -> `open()` -> open -> `close()` -> closed (and may be opened
 * again). Every failure is an `IoasidError`.
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
  apply(batch: readonly Mutation[]): Promise<void>;
  /** Flush pending batches, then release the backend. Idempotent. */
  close(): Promise<void>;
  stats(): StoreStats;
}

/** An empty state. */
export function emptyState(): StoredState {
  return { vms: [], viommus: [], devices: [], pasids: [], bindings: [], meta: [] };
}
