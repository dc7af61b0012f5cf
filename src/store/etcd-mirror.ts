/**
 * The etcd store's mirror of its domain: the rows (as the memory backend holds them, with the
 * counts the integrity rules need), where each VM runs, and the host of each host-owned PASID.
 * It is a `StateTx`, so `mutation-rules.ts` checks a batch against it exactly as against the
 * memory and SQLite backends (one contract for every `Store`).
 *
 * A batch is applied to the mirror when it is submitted (later batches of the same tick see it,
 * as they would in one SQLite transaction), with an undo list and the set of etcd keys it touched:
 * the keys are then written with the values the mirror holds for them, and if the transaction
 * fails the undo list takes the batch back. Changes other hosts made are applied from the watch
 * through the same write primitives, outside any batch.
 */
import type { StateTx } from './mutation-rules.ts';
import { bump, pairKey } from './state-check.ts';
import type { BindingRow, DeviceRow, MetaRow, NewEventRow, PasidRow, ViommuRow, VmRow } from './rows.ts';
import type { DomainKeys, VmPlacement } from './etcd-keys.ts';


/** What one batch did to the mirror: how to take it back, and the keys to write. */
export interface Staged {
  readonly undo: readonly (() => void)[];
  readonly touched: ReadonlySet<string>;
}

export class EtcdMirror implements StateTx {
  readonly #keys: DomainKeys;
  readonly #vms = new Map<string, VmRow>();
  readonly #placement = new Map<string, VmPlacement>();
  readonly #viommus = new Map<string, ViommuRow>();
  readonly #devices = new Map<string, DeviceRow>();
  readonly #pasids = new Map<number, PasidRow>();
  /** Host of each host-owned PASID (vm null). */
  readonly #pasidHost = new Map<number, string>();
  readonly #bindings = new Map<string, BindingRow>();
  readonly #meta = new Map<string, MetaRow>();
  readonly #held = new Map<string, number>();
  readonly #devicesPerViommu = new Map<string, number>();
  readonly #bindingsPerDevice = new Map<string, number>();
  readonly #bindingsPerPasid = new Map<number, number>();
  readonly #vmByHash = new Map<string, string>();
  readonly #viommusPerVm = new Map<string, number>();
  readonly #devicesPerVm = new Map<string, number>();
  /** The host that owns new host-owned PASIDs (this one). */
  readonly #self: string;
  #undo: (() => void)[] | null = null;
  #touched: Set<string> | null = null;

  constructor(keys: DomainKeys, self: string) {
    this.#keys = keys;
    this.#self = self;
  }

  // ------------------------------------------------------------------ batches

  /** Start recording a batch (undo list, touched keys). */
  begin(): void {
    this.#undo = [];
    this.#touched = new Set();
  }

  /** Stop recording; returns what the batch did. */
  end(): Staged {
    const s = { undo: this.#undo ?? [], touched: this.#touched ?? new Set<string>() };
    this.#undo = null;
    this.#touched = null;
    return s;
  }

  /** Take a batch back (its undo list, last first), outside any recording. */
  rollback(s: Pick<Staged, 'undo'>): void {
    const rec = this.#undo;
    const touched = this.#touched;
    this.#undo = null;
    this.#touched = null;
    try {
      for (let i = s.undo.length - 1; i >= 0; i--) (s.undo[i] as () => void)();
    } finally {
      this.#undo = rec;
      this.#touched = touched;
    }
  }

  #journal(undo: () => void, ...keys: string[]): void {
    this.#undo?.push(undo);
    if (this.#touched !== null) for (const k of keys) this.#touched.add(k);
  }

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

  placement(vm: string): VmPlacement | undefined { return this.#placement.get(vm); }
  vmIds(): IterableIterator<string> { return this.#vms.keys(); }
  /** The VM that holds a token hash, or undefined. */
  vmOfHash(hash: string): string | undefined { return this.#vmByHash.get(hash); }
  pasidHost(pasid: number): string | null { return this.#pasidHost.get(pasid) ?? null; }
  pasidRows(): IterableIterator<PasidRow> { return this.#pasids.values(); }
  get pasidCount(): number { return this.#pasids.size; }
  bindingRows(): IterableIterator<BindingRow> { return this.#bindings.values(); }
  viommuRows(): IterableIterator<ViommuRow> { return this.#viommus.values(); }
  deviceRows(): IterableIterator<DeviceRow> { return this.#devices.values(); }
  metaRows(): IterableIterator<MetaRow> { return this.#meta.values(); }

  // ------------------------------------------------------------------ writes

  putVm(row: VmRow): void {
    const prev = this.#vms.get(row.id);
    const keys = [this.#keys.vm(row.id), this.#keys.token(row.tokenHash), ...(prev && prev.tokenHash !== row.tokenHash ? [this.#keys.token(prev.tokenHash)] : [])];
    this.#journal(prev ? () => this.putVm(prev) : () => this.deleteVm(row.id), ...keys);
    if (prev && this.#vmByHash.get(prev.tokenHash) === prev.id) this.#vmByHash.delete(prev.tokenHash);
    this.#vmByHash.set(row.tokenHash, row.id);
    this.#vms.set(row.id, row);
    if (!this.#placement.has(row.id)) this.setPlacement(row.id, { host: this.#self, state: 'active' });
  }
  deleteVm(id: string): void {
    const prev = this.#vms.get(id);
    if (!prev) return;
    this.#journal(() => this.putVm(prev), this.#keys.vm(id), this.#keys.token(prev.tokenHash));
    if (this.#vmByHash.get(prev.tokenHash) === id) this.#vmByHash.delete(prev.tokenHash);
    this.#vms.delete(id);
    this.setPlacement(id, undefined);
  }
  /** Where a VM runs (a migration, a destroy under way); undefined: gone. */
  setPlacement(id: string, p: VmPlacement | undefined): void {
    const prev = this.#placement.get(id);
    this.#journal(() => this.#place(id, prev), this.#keys.vm(id));
    this.#place(id, p);
  }
  #place(id: string, p: VmPlacement | undefined): void {
    if (p === undefined) this.#placement.delete(id);
    else this.#placement.set(id, p);
  }
  putViommu(row: ViommuRow): void {
    const k = pairKey(row.vm, row.segment);
    const prev = this.#viommus.get(k);
    this.#journal(prev ? () => this.putViommu(prev) : () => this.deleteViommu(row.vm, row.segment), this.#keys.viommu(row.vm, row.segment));
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
    this.#journal(() => this.putViommu(prev), this.#keys.viommu(vm, segment));
    bump(this.#viommusPerVm, vm, -1);
    this.#viommus.delete(k);
  }
  putDevice(row: DeviceRow): void {
    const k = pairKey(row.vm, row.bdf);
    const prev = this.#devices.get(k);
    this.#journal(prev ? () => this.putDevice(prev) : () => this.deleteDevice(row.vm, row.bdf), this.#keys.device(row.vm, row.bdf));
    if (prev) bump(this.#devicesPerViommu, pairKey(prev.vm, prev.segment), -1);
    else bump(this.#devicesPerVm, row.vm, 1);
    bump(this.#devicesPerViommu, pairKey(row.vm, row.segment), 1);
    this.#devices.set(k, row);
  }
  deleteDevice(vm: string, bdf: string): void {
    const k = pairKey(vm, bdf);
    const prev = this.#devices.get(k);
    if (!prev) return;
    this.#journal(() => this.putDevice(prev), this.#keys.device(vm, bdf));
    bump(this.#devicesPerViommu, pairKey(prev.vm, prev.segment), -1);
    bump(this.#devicesPerVm, vm, -1);
    this.#devices.delete(k);
  }
  insertPasid(row: PasidRow, host?: string | null): void {
    const prevHost = this.#pasidHost.get(row.pasid);
    this.#journal(() => {
      this.deletePasid(row.pasid);
      if (prevHost !== undefined) this.#pasidHost.set(row.pasid, prevHost);
    }, this.#keys.pasid(row.pasid));
    if (row.vm !== null) bump(this.#held, row.vm, 1);
    else this.#pasidHost.set(row.pasid, host ?? this.#self);
    this.#pasids.set(row.pasid, row);
  }
  deletePasid(pasid: number): void {
    const prev = this.#pasids.get(pasid);
    if (!prev) return;
    const host = this.#pasidHost.get(pasid) ?? null;
    this.#journal(() => this.insertPasid(prev, host), this.#keys.pasid(pasid));
    if (prev.vm !== null) bump(this.#held, prev.vm, -1);
    this.#pasidHost.delete(pasid);
    this.#pasids.delete(pasid);
  }
  putBinding(row: BindingRow): void {
    const k = pairKey(row.bdf, row.pasid);
    const prev = this.#bindings.get(k);
    this.#journal(prev ? () => this.putBinding(prev) : () => this.deleteBinding(row.pasid, row.bdf), this.#keys.binding(row.pasid, row.bdf));
    if (prev) this.#unindexBinding(prev);
    bump(this.#bindingsPerDevice, pairKey(row.vm, row.bdf), 1);
    bump(this.#bindingsPerPasid, row.pasid, 1);
    this.#bindings.set(k, row);
  }
  deleteBinding(pasid: number, bdf: string): void {
    const k = pairKey(bdf, pasid);
    const prev = this.#bindings.get(k);
    if (!prev) return;
    this.#journal(() => this.putBinding(prev), this.#keys.binding(pasid, bdf));
    this.#unindexBinding(prev);
    this.#bindings.delete(k);
  }
  #unindexBinding(b: BindingRow): void {
    bump(this.#bindingsPerDevice, pairKey(b.vm, b.bdf), -1);
    bump(this.#bindingsPerPasid, b.pasid, -1);
  }
  putMeta(row: MetaRow): void {
    const prev = this.#meta.get(row.key);
    this.#journal(prev ? () => this.putMeta(prev) : () => this.deleteMeta(row.key), this.#keys.meta(row.key));
    this.#meta.set(row.key, row);
  }
  deleteMeta(key: string): void {
    const prev = this.#meta.get(key);
    if (!prev) return;
    this.#journal(() => this.putMeta(prev), this.#keys.meta(key));
    this.#meta.delete(key);
  }
  /** Events are not rows: the store writes them into the transaction's journal record. */
  appendEvents(_events: readonly NewEventRow[]): void {}
}
