/**
 * `src/store`: the durable state of the PASID authority service (DESIGN section 6). One `Store`
 * interface (async, backend-neutral), a memory backend (the reference) and an SQLite backend
 * (the embedded default). See docs/store.md.
 */
export {
  STORE_KINDS, STORE_TABLES, STORE_LIMITS, MUTATION_OPS, VIOMMU_LAYOUTS, RESERVED_META_PREFIX, emptyState,
} from './rows.ts';
export type {
  Store, StoreKind, StoreStats, StoreTable, StoredState, Mutation, MutationOp,
  VmRow, ViommuRow, ViommuLayout, DeviceRow, PasidRow, BindingRow, MetaRow,
} from './rows.ts';
export { validateStoredState } from './state-check.ts';
export { MemoryStore } from './memory-store.ts';
export type { MemoryStoreOptions } from './memory-store.ts';
export { SqliteStore, SQLITE_SYNC_MODES } from './sqlite-store.ts';
export type { SqliteStoreOptions, SqliteSyncMode } from './sqlite-store.ts';
export { SQLITE_SCHEMA_VERSION } from './sqlite-schema.ts';
export { openStore } from './open-store.ts';
export type { OpenStoreOptions } from './open-store.ts';
