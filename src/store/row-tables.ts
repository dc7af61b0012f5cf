/**
 * A store's rows held in maps, with the secondary counts the integrity rules read (`StateTx`)
 * kept in step by the write primitives, and an undo list that makes a batch all-or-nothing. Both
 * in-memory holders of rows are these tables:
 *  - the memory backend (memory-store.ts) adds its event log;
 *  - the etcd backend's mirror (etcd-mirror.ts) adds where each VM runs and which host holds each
 *    host-owned PASID, and learns through `touch` which etcd keys a batch changed.
 *
 * Recording: between `begin()` and `end()` every write puts its inverse on the undo list and
 * reports what it changed to `touch`; `rollback(undo)` runs a list backwards without recording.
 * Outside a recording (loading a state, applying another host's change) writes are plain.
 */
import type { StateTx } from './mutation-rules.ts';
import type { BindingRow, DeviceRow, MetaRow, NewEventRow, PasidRow, ViommuRow, VmRow } from './rows.ts';
import { pairKey } from './state-check.ts';

/** What a write changed, as `touch` is told: the table, then the row's key (one or two parts). */
export type TouchedTable = 'vm' | 'token' | 'viommu' | 'device' | 'pasid' | 'binding' | 'meta';

/** A count in a map of counts: a count that reaches 0 goes. */
function bump<K>(m: Map<K, number>, k: K, by: number): void {
  const n = (m.get(k) ?? 0) + by;
  if (n === 0) m.delete(k);
  else m.set(k, n);
}

/** As bump, but a count that reaches 0 stays in the map (the key comes back soon: no churn). */
function count<K>(m: Map<K, number>, k: K, by: number): void {
  m.set(k, (m.get(k) ?? 0) + by);
}

export abstract class RowTables implements StateTx {
  readonly #vms = new Map<string, VmRow>();
  readonly #viommus = new Map<string, ViommuRow>();
  readonly #devices = new Map<string, DeviceRow>();
  readonly #pasids = new Map<number, PasidRow>();
  readonly #bindings = new Map<string, BindingRow>();
  readonly #meta = new Map<string, MetaRow>();
  /** PASIDs per VM; a VM's count stays at 0 while the VM exists (no churn for a VM that frees its last). */
  readonly #held = new Map<string, number>();
  readonly #devicesPerViommu = new Map<string, number>();
  readonly #bindingsPerDevice = new Map<string, number>();
  readonly #bindingsPerPasid = new Map<number, number>();
  readonly #vmByHash = new Map<string, string>();
  readonly #viommusPerVm = new Map<string, number>();
  readonly #devicesPerVm = new Map<string, number>();
  /** Inverse operations of the batch being recorded; null outside a recording and while undoing. */
  #undo: (() => void)[] | null = null;

  // ------------------------------------------------------------------ recording

  /** Start recording a batch. */
  begin(): void {
    this.#undo = [];
  }

  /** Stop recording; returns the batch's undo list. */
  endUndo(): (() => void)[] {
    const undo = this.#undo ?? [];
    this.#undo = null;
    return undo;
  }

  /** Take a batch back (its undo list, last first), without recording; a recording in progress resumes after. */
  rollbackUndo(undo: readonly (() => void)[]): void {
    const rec = this.#undo;
    this.#undo = null;
    try {
      for (let i = undo.length - 1; i >= 0; i--) (undo[i] as () => void)();
    } finally {
      this.#undo = rec;
    }
  }

  /** Whether a batch is being recorded. */
  protected get recording(): boolean {
    return this.#undo !== null;
  }

  /** Put an inverse on the undo list (a no-op outside a recording). */
  protected journal(undo: () => void): void {
    this.#undo?.push(undo);
  }

  /** Told what each write changed; nothing to do for the memory backend. */
  protected touch(_table: TouchedTable, _a: string | number, _b?: string | number): void {}

  // ------------------------------------------------------------------ reads (StateTx)

  getVm(id: string) { return this.#vms.get(id); }
  getViommu(vm: string, segment: number) { return this.#viommus.get(pairKey(vm, segment)); }
  getDevice(vm: string, bdf: string) { return this.#devices.get(pairKey(vm, bdf)); }
  getPasid(pasid: number) { return this.#pasids.get(pasid); }
  getBinding(pasid: number, bdf: string) { return this.#bindings.get(pairKey(bdf, pasid)); }
  getMeta(key: string) { return this.#meta.get(key); }
  vmWithTokenHash(hash: string, except: string) {
    const vm = this.#vmByHash.get(hash);
    return vm === except ? undefined : vm;
  }
  countPasidsOf(vm: string) { return this.#held.get(vm) ?? 0; }
  hasViommusOf(vm: string) { return this.#viommusPerVm.has(vm); }
  hasDevicesOf(vm: string) { return this.#devicesPerVm.has(vm); }
  hasDevicesOn(vm: string, segment: number) { return this.#devicesPerViommu.has(pairKey(vm, segment)); }
  isDeviceBound(vm: string, bdf: string) { return this.#bindingsPerDevice.has(pairKey(vm, bdf)); }
  isPasidBound(pasid: number) { return this.#bindingsPerPasid.has(pasid); }

  /** The VM that holds a token hash, or undefined. */
  vmOfHash(hash: string): string | undefined { return this.#vmByHash.get(hash); }
  vmIds(): IterableIterator<string> { return this.#vms.keys(); }
  vmRows(): IterableIterator<VmRow> { return this.#vms.values(); }
  viommuRows(): IterableIterator<ViommuRow> { return this.#viommus.values(); }
  deviceRows(): IterableIterator<DeviceRow> { return this.#devices.values(); }
  pasidRows(): IterableIterator<PasidRow> { return this.#pasids.values(); }
  get pasidCount(): number { return this.#pasids.size; }
  bindingRows(): IterableIterator<BindingRow> { return this.#bindings.values(); }
  metaRows(): IterableIterator<MetaRow> { return this.#meta.values(); }

  /** Empty every table (not recorded). */
  protected clearRows(): void {
    for (const m of [this.#vms, this.#viommus, this.#devices, this.#pasids, this.#bindings, this.#meta,
      this.#held, this.#devicesPerViommu, this.#bindingsPerDevice, this.#bindingsPerPasid,
      this.#vmByHash, this.#viommusPerVm, this.#devicesPerVm]) m.clear();
  }

  // ------------------------------------------------------------------ writes

  putVm(row: VmRow): void {
    const prev = this.#vms.get(row.id);
    this.journal(prev ? () => this.putVm(prev) : () => this.deleteVm(row.id));
    this.touch('vm', row.id);
    this.touch('token', row.tokenHash);
    if (prev && prev.tokenHash !== row.tokenHash) this.touch('token', prev.tokenHash);
    if (prev && this.#vmByHash.get(prev.tokenHash) === prev.id) this.#vmByHash.delete(prev.tokenHash);
    this.#vmByHash.set(row.tokenHash, row.id);
    this.#vms.set(row.id, row);
  }
  deleteVm(id: string): void {
    const prev = this.#vms.get(id);
    if (!prev) return;
    this.journal(() => this.putVm(prev));
    this.touch('vm', id);
    this.touch('token', prev.tokenHash);
    if (this.#vmByHash.get(prev.tokenHash) === id) this.#vmByHash.delete(prev.tokenHash);
    this.#vms.delete(id);
    if (this.#held.get(id) === 0) this.#held.delete(id);
  }
  putViommu(row: ViommuRow): void {
    const k = pairKey(row.vm, row.segment);
    const prev = this.#viommus.get(k);
    this.journal(prev ? () => this.putViommu(prev) : () => this.deleteViommu(row.vm, row.segment));
    this.touch('viommu', row.vm, row.segment);
    if (!prev) bump(this.#viommusPerVm, row.vm, 1);
    this.#viommus.set(k, row);
  }
  setRegisters(vm: string, segment: number, registers: string): void {
    const prev = this.#viommus.get(pairKey(vm, segment));
    if (prev) this.putViommu({ ...prev, registers });
  }
  deleteViommu(vm: string, segment: number): void {
    const k = pairKey(vm, segment);
    const prev = this.#viommus.get(k);
    if (!prev) return;
    this.journal(() => this.putViommu(prev));
    this.touch('viommu', vm, segment);
    bump(this.#viommusPerVm, vm, -1);
    this.#viommus.delete(k);
  }
  putDevice(row: DeviceRow): void {
    const k = pairKey(row.vm, row.bdf);
    const prev = this.#devices.get(k);
    this.journal(prev ? () => this.putDevice(prev) : () => this.deleteDevice(row.vm, row.bdf));
    this.touch('device', row.vm, row.bdf);
    if (prev) bump(this.#devicesPerViommu, pairKey(prev.vm, prev.segment), -1);
    else bump(this.#devicesPerVm, row.vm, 1);
    bump(this.#devicesPerViommu, pairKey(row.vm, row.segment), 1);
    this.#devices.set(k, row);
  }
  deleteDevice(vm: string, bdf: string): void {
    const k = pairKey(vm, bdf);
    const prev = this.#devices.get(k);
    if (!prev) return;
    this.journal(() => this.putDevice(prev));
    this.touch('device', vm, bdf);
    bump(this.#devicesPerViommu, pairKey(prev.vm, prev.segment), -1);
    bump(this.#devicesPerVm, vm, -1);
    this.#devices.delete(k);
  }
  /** Insert a PASID row (the rules check it is absent). */
  insertPasid(row: PasidRow): void {
    this.journal(() => this.deletePasid(row.pasid));
    this.touch('pasid', row.pasid);
    if (row.vm !== null) count(this.#held, row.vm, 1);
    this.#pasids.set(row.pasid, row);
  }
  deletePasid(pasid: number): void {
    const prev = this.#pasids.get(pasid);
    if (!prev) return;
    this.journal(() => this.insertPasid(prev));
    this.touch('pasid', pasid);
    if (prev.vm !== null) count(this.#held, prev.vm, -1);
    this.#pasids.delete(pasid);
  }
  putBinding(row: BindingRow): void {
    const k = pairKey(row.bdf, row.pasid);
    const prev = this.#bindings.get(k);
    this.journal(prev ? () => this.putBinding(prev) : () => this.deleteBinding(row.pasid, row.bdf));
    this.touch('binding', row.pasid, row.bdf);
    if (prev) this.#unindexBinding(prev);
    bump(this.#bindingsPerDevice, pairKey(row.vm, row.bdf), 1);
    bump(this.#bindingsPerPasid, row.pasid, 1);
    this.#bindings.set(k, row);
  }
  deleteBinding(pasid: number, bdf: string): void {
    const k = pairKey(bdf, pasid);
    const prev = this.#bindings.get(k);
    if (!prev) return;
    this.journal(() => this.putBinding(prev));
    this.touch('binding', pasid, bdf);
    this.#unindexBinding(prev);
    this.#bindings.delete(k);
  }
  #unindexBinding(b: BindingRow): void {
    bump(this.#bindingsPerDevice, pairKey(b.vm, b.bdf), -1);
    bump(this.#bindingsPerPasid, b.pasid, -1);
  }
  putMeta(row: MetaRow): void {
    const prev = this.#meta.get(row.key);
    this.journal(prev ? () => this.putMeta(prev) : () => this.deleteMeta(row.key));
    this.touch('meta', row.key);
    this.#meta.set(row.key, row);
  }
  deleteMeta(key: string): void {
    const prev = this.#meta.get(key);
    if (!prev) return;
    this.journal(() => this.putMeta(prev));
    this.touch('meta', key);
    this.#meta.delete(key);
  }

  abstract appendEvents(events: readonly NewEventRow[]): void;
}
