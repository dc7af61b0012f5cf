/**
 * `src/store`: the durable state of the PASID authority service. One `Store`
 * interface (async, backend-neutral), a memory backend (the reference), an SQLite backend
 * (the embedded default) and an etcd backend (a migration domain shared by many hosts). See
 * docs/store.md and docs/cluster.md.
 */
export {
  STORE_KINDS, STORE_TABLES, STORE_LIMITS, MUTATION_OPS, VIOMMU_LAYOUTS, RESERVED_META_PREFIX, TOKEN_HASH_PATTERN,
  DEFAULT_EVENT_RETENTION, emptyState,
} from './rows.ts';
export type {
  Applied, Store, StoreKind, StoreStats, StoreTable, StoredState, Mutation, MutationOp,
  VmRow, ViommuRow, ViommuLayout, DeviceRow, PasidRow, BindingRow, MetaRow, EventRow, NewEventRow,
} from './rows.ts';
export { validateStoredState } from './state-check.ts';
export { MemoryStore } from './memory-store.ts';
export type { MemoryStoreOptions } from './memory-store.ts';
export { SqliteStore, SQLITE_SYNC_MODES } from './sqlite-store.ts';
export type { SqliteStoreOptions, SqliteSyncMode } from './sqlite-store.ts';
export { SQLITE_SCHEMA_VERSION } from './sqlite-schema.ts';
export { checkRetention } from './memory-store.ts';
export { openStore } from './open-store.ts';
export type { OpenStoreOptions } from './open-store.ts';
export { EtcdStore, DEFAULT_BLOCK_SIZE, DEFAULT_LEASE_TTL_SEC, DEFAULT_MAX_TXN_OPS, DEFAULT_LOG_RETENTION } from './etcd-store.ts';
export type { CommittedListener, CommittedPart, EtcdStoreOptions, EtcdStoreStats, EtcdLogFn, ReclaimReport } from './etcd-store.ts';
export { DomainKeys, VM_STATES, CLUSTER_NAME_RE, SEQ_PER_REVISION } from './etcd-keys.ts';
export type { BlockRecord, FenceRecord, HostRecord, VmPlacement, VmRecord, VmState } from './etcd-keys.ts';
export { parseEtcdSpec, etcdSpecIsTls, DEFAULT_RETRY } from './etcd-client.ts';
export type { RetryPolicy } from './etcd-client.ts';
export { EtcdCredentials, ETCD_REFUSALS, checkEtcdSecurityOptions, plaintextPasswordWarning } from './etcd-security.ts';
export type { EtcdSecurityOptions, EtcdRefusal } from './etcd-security.ts';
