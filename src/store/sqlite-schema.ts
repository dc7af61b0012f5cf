/**
 * SQLite schema, version 1. STRICT tables (column types enforced), CHECK constraints for every
 * range the row checks enforce, and foreign keys with ON DELETE RESTRICT, so the database itself
 * refuses most broken states; validation at open (state-check.ts) covers the rest (quotas).
 *
 * The store compares `sqlite_schema` with this text at open, so a schema whose constraints were
 * edited away is refused too.
 */

/** Version written to meta key `store.schema`. */
export const SQLITE_SCHEMA_VERSION = 1;
export const SCHEMA_VERSION_KEY = 'store.schema';
/** `PRAGMA application_id`: 'ioas'. Marks the file as an ioasid store. */
export const SQLITE_APPLICATION_ID = 0x696f6173;

export const SQLITE_SCHEMA_V1: readonly string[] = [
  `CREATE TABLE meta (
  key TEXT NOT NULL PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 256),
  value TEXT NOT NULL
) STRICT, WITHOUT ROWID`,
  `CREATE TABLE vms (
  id TEXT NOT NULL PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128 AND id NOT GLOB '*[^!-~]*'),
  name TEXT NOT NULL,
  quota INTEGER NOT NULL CHECK (quota >= 0),
  token_hash TEXT NOT NULL,
  created_at INTEGER NOT NULL CHECK (created_at >= 0)
) STRICT, WITHOUT ROWID`,
  `CREATE TABLE viommus (
  vm TEXT NOT NULL REFERENCES vms (id) ON DELETE RESTRICT,
  segment INTEGER NOT NULL CHECK (segment BETWEEN 0 AND 65535),
  layout TEXT NOT NULL CHECK (layout IN ('A', 'B')),
  range_extension INTEGER NOT NULL CHECK (range_extension IN (0, 1)),
  PRIMARY KEY (vm, segment)
) STRICT, WITHOUT ROWID`,
  `CREATE TABLE devices (
  vm TEXT NOT NULL,
  bdf TEXT NOT NULL CHECK (length(bdf) = 12 AND bdf GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[01][0-9a-f].[0-7]'),
  segment INTEGER NOT NULL CHECK (segment BETWEEN 0 AND 65535),
  pasid_bits INTEGER NOT NULL CHECK (pasid_bits BETWEEN 1 AND 20),
  PRIMARY KEY (vm, bdf),
  FOREIGN KEY (vm, segment) REFERENCES viommus (vm, segment) ON DELETE RESTRICT
) STRICT, WITHOUT ROWID`,
  `CREATE INDEX devices_by_viommu ON devices (vm, segment)`,
  // One row per PASID; the rowid is the PASID, so "exists?" and create-if-absent are one B-tree probe.
  `CREATE TABLE pasids (
  pasid INTEGER PRIMARY KEY CHECK (pasid BETWEEN 1 AND 1048575),
  vm TEXT REFERENCES vms (id) ON DELETE RESTRICT,
  allocated_at INTEGER NOT NULL CHECK (allocated_at >= 0)
) STRICT`,
  // Counts per VM (quota) and the parent key of bindings (pasid, vm): a binding's VM is its PASID's owner.
  `CREATE UNIQUE INDEX pasids_by_vm ON pasids (vm, pasid)`,
  `CREATE TABLE bindings (
  pasid INTEGER NOT NULL,
  vm TEXT NOT NULL,
  bdf TEXT NOT NULL,
  bound_at INTEGER NOT NULL CHECK (bound_at >= 0),
  PRIMARY KEY (pasid, bdf),
  FOREIGN KEY (pasid, vm) REFERENCES pasids (pasid, vm) ON DELETE RESTRICT,
  FOREIGN KEY (vm, bdf) REFERENCES devices (vm, bdf) ON DELETE RESTRICT
) STRICT, WITHOUT ROWID`,
  `CREATE INDEX bindings_by_device ON bindings (vm, bdf)`,
];
