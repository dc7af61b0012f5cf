/**
 * The memory backend: maps plus the counters the rules need, and an undo journal that makes each
 * batch all-or-nothing. Nothing survives the process; it is the reference the conformance suite
 * holds every other backend to, and the store tests use.
 */
import { IoasidError } from '../core/index.ts';
import { applyMutation, type StateTx } from './mutation-rules.ts';
import { checkBatch } from './row-check.ts';
import type {
  BindingRow, DeviceRow, MetaRow, Mutation, PasidRow, Store, StoreStats, StoredState, ViommuRow, VmRow,
} from './rows.ts';
import { pairKey, sortState, validateStoredState } from './state-check.ts';

function bump<K>(m: Map<K, number>, k: K, by: number): void {
  const n = (m.get(k) ?? 0) + by;
  if (n === 0) m.delete(k);
  else m.set(k, n);
}

/** The tables, with secondary counts kept in step by the write primitives. */
class MemoryTables implements StateTx {
  readonly #vms = new Map<string, VmRow>();
  readonly #viommus = new Map<string, ViommuRow>();
  readonly #devices = new Map<string, DeviceRow>();
  readonly #pasids = new Map<number, PasidRow>();
  readonly #bindings = new Map<string, BindingRow>();
  readonly #meta = new Map<string, MetaRow>();
  readonly #held = new Map<string, number>();
  readonly #devicesPerViommu = new Map<string, number>();
  readonly #bindingsPerDevice = new Map<string, number>();
  readonly #bindingsPerPasid = new Map<number, number>();
  /** Inverse operations of the batch in progress; null outside a batch and while undoing. */
  #undo: (() => void)[] | null = null;

  getVm(id: string) { return this.#vms.get(id); }
  getViommu(vm: string, segment: number) { return this.#viommus.get(pairKey(vm, segment)); }
  getDevice(vm: string, bdf: string) { return this.#devices.get(pairKey(vm, bdf)); }
  getPasid(pasid: number) { return this.#pasids.get(pasid); }
  getBinding(pasid: number, bdf: string) { return this.#bindings.get(pairKey(bdf, pasid)); }
  getMeta(key: string) { return this.#meta.get(key); }
  countPasidsOf(vm: string) { return this.#held.get(vm) ?? 0; }
  viommusOf(vm: string) { return [...this.#viommus.values()].filter((v) => v.vm === vm); }
  devicesOf(vm: string) { return [...this.#devices.values()].filter((d) => d.vm === vm); }
  hasDevicesOn(vm: string, segment: number) { return this.#devicesPerViommu.has(pairKey(vm, segment)); }
  isDeviceBound(vm: string, bdf: string) { return this.#bindingsPerDevice.has(pairKey(vm, bdf)); }
  isPasidBound(pasid: number) { return this.#bindingsPerPasid.has(pasid); }

  #journal(undo: () => void): void {
    this.#undo?.push(undo);
  }

  putVm(row: VmRow): void {
    const prev = this.#vms.get(row.id);
    this.#journal(prev ? () => this.putVm(prev) : () => this.deleteVm(row.id));
    this.#vms.set(row.id, row);
  }
  deleteVm(id: string): void {
    const prev = this.#vms.get(id);
    if (!prev) return;
    this.#journal(() => this.putVm(prev));
    this.#vms.delete(id);
  }
  putViommu(row: ViommuRow): void {
    const k = pairKey(row.vm, row.segment);
    const prev = this.#viommus.get(k);
    this.#journal(prev ? () => this.putViommu(prev) : () => this.deleteViommu(row.vm, row.segment));
    this.#viommus.set(k, row);
  }
  deleteViommu(vm: string, segment: number): void {
    const k = pairKey(vm, segment);
    const prev = this.#viommus.get(k);
    if (!prev) return;
    this.#journal(() => this.putViommu(prev));
    this.#viommus.delete(k);
  }
  putDevice(row: DeviceRow): void {
    const k = pairKey(row.vm, row.bdf);
    const prev = this.#devices.get(k);
    this.#journal(prev ? () => this.putDevice(prev) : () => this.deleteDevice(row.vm, row.bdf));
    if (prev) bump(this.#devicesPerViommu, pairKey(prev.vm, prev.segment), -1);
    bump(this.#devicesPerViommu, pairKey(row.vm, row.segment), 1);
    this.#devices.set(k, row);
  }
  deleteDevice(vm: string, bdf: string): void {
    const k = pairKey(vm, bdf);
    const prev = this.#devices.get(k);
    if (!prev) return;
    this.#journal(() => this.putDevice(prev));
    bump(this.#devicesPerViommu, pairKey(prev.vm, prev.segment), -1);
    this.#devices.delete(k);
  }
  insertPasid(row: PasidRow): void {
    this.#journal(() => this.deletePasid(row.pasid));
    if (row.vm !== null) bump(this.#held, row.vm, 1);
    this.#pasids.set(row.pasid, row);
  }
  deletePasid(pasid: number): void {
    const prev = this.#pasids.get(pasid);
    if (!prev) return;
    this.#journal(() => this.insertPasid(prev));
    if (prev.vm !== null) bump(this.#held, prev.vm, -1);
    this.#pasids.delete(pasid);
  }
  putBinding(row: BindingRow): void {
    const k = pairKey(row.bdf, row.pasid);
    const prev = this.#bindings.get(k);
    this.#journal(prev ? () => this.putBinding(prev) : () => this.deleteBinding(row.pasid, row.bdf));
    if (prev) this.#unindexBinding(prev);
    bump(this.#bindingsPerDevice, pairKey(row.vm, row.bdf), 1);
    bump(this.#bindingsPerPasid, row.pasid, 1);
    this.#bindings.set(k, row);
  }
  deleteBinding(pasid: number, bdf: string): void {
    const k = pairKey(bdf, pasid);
    const prev = this.#bindings.get(k);
    if (!prev) return;
    this.#journal(() => this.putBinding(prev));
    this.#unindexBinding(prev);
    this.#bindings.delete(k);
  }
  #unindexBinding(b: BindingRow): void {
    bump(this.#bindingsPerDevice, pairKey(b.vm, b.bdf), -1);
    bump(this.#bindingsPerPasid, b.pasid, -1);
  }
  putMeta(row: MetaRow): void {
    const prev = this.#meta.get(row.key);
    this.#journal(prev ? () => this.putMeta(prev) : () => this.deleteMeta(row.key));
    this.#meta.set(row.key, row);
  }
  deleteMeta(key: string): void {
    const prev = this.#meta.get(key);
    if (!prev) return;
    this.#journal(() => this.putMeta(prev));
    this.#meta.delete(key);
  }

  /** Apply a batch all-or-nothing. */
  applyBatch(batch: readonly Mutation[]): void {
    const undo: (() => void)[] = [];
    this.#undo = undo;
    try {
      batch.forEach((m, i) => applyMutation(this, m, i));
    } catch (e) {
      this.#undo = null;
      for (let i = undo.length - 1; i >= 0; i--) undo[i]!();
      throw e;
    } finally {
      this.#undo = null;
    }
  }

  /** Replace everything with a (validated) state. */
  load(s: StoredState): void {
    for (const m of [this.#vms, this.#viommus, this.#devices, this.#pasids, this.#bindings, this.#meta,
      this.#held, this.#devicesPerViommu, this.#bindingsPerDevice, this.#bindingsPerPasid]) m.clear();
    s.vms.forEach((r) => this.putVm(r));
    s.viommus.forEach((r) => this.putViommu(r));
    s.devices.forEach((r) => this.putDevice(r));
    s.pasids.forEach((r) => this.insertPasid(r));
    s.bindings.forEach((r) => this.putBinding(r));
    s.meta.forEach((r) => this.putMeta(r));
  }

  snapshot(): StoredState {
    return sortState({
      vms: [...this.#vms.values()],
      viommus: [...this.#viommus.values()],
      devices: [...this.#devices.values()],
      pasids: [...this.#pasids.values()],
      bindings: [...this.#bindings.values()],
      meta: [...this.#meta.values()],
    });
  }
}

export interface MemoryStoreOptions {
  /** State to start from; validated by the first `open()` like a stored one. */
  readonly initial?: unknown;
}

/**
 * In-memory store. Its data outlives `close()`, so closing and opening the same object again is
 * this backend's "restart" (and revalidates the state).
 */
export class MemoryStore implements Store {
  readonly kind = 'memory' as const;
  readonly spec = 'memory';
  readonly #tables = new MemoryTables();
  #initial: unknown;
  #open = false;
  #batches = 0;
  #failed = 0;

  constructor(opts: MemoryStoreOptions = {}) {
    this.#initial = opts.initial;
  }

  async open(): Promise<StoredState> {
    if (this.#open) throw new IoasidError('EINVAL', 'store memory is already open', { spec: this.spec });
    const state = validateStoredState(this.#initial ?? this.#tables.snapshot());
    this.#tables.load(state);
    this.#initial = undefined;
    this.#open = true;
    return state;
  }

  async apply(batch: readonly Mutation[]): Promise<void> {
    try {
      const checked = checkBatch(batch);
      if (!this.#open) throw new IoasidError('EINVAL', 'store memory is not open', { spec: this.spec });
      this.#tables.applyBatch(checked);
    } catch (e) {
      this.#failed++;
      throw e;
    }
    this.#batches++;
  }

  stats(): StoreStats {
    return { batches: this.#batches, failedBatches: this.#failed, commits: this.#batches };
  }

  async close(): Promise<void> {
    this.#open = false;
  }

  /** The current state, in canonical order (works open or closed). */
  snapshot(): StoredState {
    return this.#tables.snapshot();
  }
}
