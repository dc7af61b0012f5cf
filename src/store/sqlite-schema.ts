/**
 * SQLite schema, version 2. STRICT tables (column types enforced), CHECK constraints for every
 * range and syntax the row checks enforce (generated from the core's definitions, so they are the
 * same), UNIQUE token hashes, and foreign keys with ON DELETE RESTRICT, so the database itself
 * refuses broken states; validation at open (state-check.ts) covers the rest.
 *
 * The store compares `sqlite_schema` with this text at open, so a schema whose constraints were
 * edited away is refused too. A version 1 file is migrated at open (`SQLITE_MIGRATE_V1_V2`).
 */
import { BDF_LENGTH, BDF_SQL_GLOB, PASID_BITS, PASID_MAX, PASID_MIN, SEGMENT_MAX, VM_ID_SYNTAX, nameSqlCheck } from '../core/index.ts';
import { STORE_LIMITS } from './rows.ts';

/** Version written to meta key `store.schema`. */
export const SQLITE_SCHEMA_VERSION = 2;
export const SCHEMA_VERSION_KEY = 'store.schema';
/** `PRAGMA application_id`: 'ioas'. Marks the file as an ioasid store. */
export const SQLITE_APPLICATION_ID = 0x696f6173;

const VM_ID_CHECK = nameSqlCheck('id', VM_ID_SYNTAX);
const SEGMENT_CHECK = `segment BETWEEN 0 AND ${SEGMENT_MAX}`;
const BDF_CHECK = `length(bdf) = ${BDF_LENGTH} AND bdf GLOB '${BDF_SQL_GLOB}'`;

export const SQLITE_SCHEMA: readonly string[] = [
  `CREATE TABLE meta (
  key TEXT NOT NULL PRIMARY KEY CHECK (length(key) BETWEEN 1 AND ${STORE_LIMITS.metaKeyMaxLength}),
  value TEXT NOT NULL
) STRICT, WITHOUT ROWID`,
  `CREATE TABLE vms (
  id TEXT NOT NULL PRIMARY KEY CHECK (${VM_ID_CHECK}),
  quota INTEGER NOT NULL CHECK (quota BETWEEN 0 AND ${PASID_MAX}),
  token_hash TEXT NOT NULL UNIQUE CHECK (length(token_hash) = 64 AND token_hash NOT GLOB '*[^0-9a-f]*'),
  created_at INTEGER NOT NULL CHECK (created_at >= 0)
) STRICT, WITHOUT ROWID`,
  `CREATE TABLE viommus (
  vm TEXT NOT NULL REFERENCES vms (id) ON DELETE RESTRICT,
  segment INTEGER NOT NULL CHECK (${SEGMENT_CHECK}),
  layout TEXT NOT NULL CHECK (layout IN ('A', 'B')),
  range_extension INTEGER NOT NULL CHECK (range_extension IN (0, 1)),
  pas_bit INTEGER NOT NULL CHECK (pas_bit IN (0, 1)),
  pss INTEGER NOT NULL CHECK (pss BETWEEN 0 AND ${PASID_BITS - 1}),
  registers TEXT CHECK (registers IS NULL OR (length(registers) BETWEEN 2 AND ${STORE_LIMITS.registersMaxLength} AND json_valid(registers))),
  PRIMARY KEY (vm, segment)
) STRICT, WITHOUT ROWID`,
  `CREATE TABLE devices (
  vm TEXT NOT NULL,
  bdf TEXT NOT NULL CHECK (${BDF_CHECK}),
  segment INTEGER NOT NULL CHECK (${SEGMENT_CHECK}),
  pasid_bits INTEGER NOT NULL CHECK (pasid_bits BETWEEN 1 AND ${PASID_BITS}),
  PRIMARY KEY (vm, bdf),
  FOREIGN KEY (vm, segment) REFERENCES viommus (vm, segment) ON DELETE RESTRICT
) STRICT, WITHOUT ROWID`,
  `CREATE INDEX devices_by_viommu ON devices (vm, segment)`,
  // One row per PASID; the rowid is the PASID, so "exists?" and create-if-absent are one B-tree probe.
  `CREATE TABLE pasids (
  pasid INTEGER PRIMARY KEY CHECK (pasid BETWEEN ${PASID_MIN} AND ${PASID_MAX}),
  vm TEXT REFERENCES vms (id) ON DELETE RESTRICT,
  allocated_at INTEGER NOT NULL CHECK (allocated_at >= 0)
) STRICT`,
  // The parent key of bindings (pasid, vm): a binding's VM is its PASID's owner.
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
  // The journal's events; the newest is never pruned, so max(seq) is the last seq ever given.
  `CREATE TABLE events (
  seq INTEGER PRIMARY KEY CHECK (seq >= 1),
  at INTEGER NOT NULL CHECK (at >= 0),
  type TEXT NOT NULL CHECK (length(type) BETWEEN 1 AND 64),
  vm TEXT,
  body TEXT NOT NULL CHECK (json_valid(body))
) STRICT`,
];

/**
 * Version 1 -> 2, run in one transaction with foreign keys off: the old tables are renamed, the
 * new ones made with the statements above, the rows copied (every CHECK applies to them), the old
 * tables dropped. New columns: a vIOMMU's PAS bit (0), PSS (19) and registers (none yet); VMs lose
 * `name` (it always equalled `id`); an empty events table.
 */
export const SQLITE_MIGRATE_V1_V2: readonly string[] = [
  'ALTER TABLE bindings RENAME TO bindings_v1',
  'ALTER TABLE pasids RENAME TO pasids_v1',
  'ALTER TABLE devices RENAME TO devices_v1',
  'ALTER TABLE viommus RENAME TO viommus_v1',
  'ALTER TABLE vms RENAME TO vms_v1',
  'DROP INDEX devices_by_viommu',
  'DROP INDEX pasids_by_vm',
  'DROP INDEX bindings_by_device',
  ...SQLITE_SCHEMA.filter((ddl) => !ddl.startsWith('CREATE TABLE meta')),
  'INSERT INTO vms (id, quota, token_hash, created_at) SELECT id, quota, token_hash, created_at FROM vms_v1',
  `INSERT INTO viommus (vm, segment, layout, range_extension, pas_bit, pss, registers) SELECT vm, segment, layout, range_extension, 0, ${PASID_BITS - 1}, NULL FROM viommus_v1`,
  'INSERT INTO devices (vm, bdf, segment, pasid_bits) SELECT vm, bdf, segment, pasid_bits FROM devices_v1',
  'INSERT INTO pasids (pasid, vm, allocated_at) SELECT pasid, vm, allocated_at FROM pasids_v1',
  'INSERT INTO bindings (pasid, vm, bdf, bound_at) SELECT pasid, vm, bdf, bound_at FROM bindings_v1',
  'DROP TABLE bindings_v1',
  'DROP TABLE pasids_v1',
  'DROP TABLE devices_v1',
  'DROP TABLE viommus_v1',
  'DROP TABLE vms_v1',
];
