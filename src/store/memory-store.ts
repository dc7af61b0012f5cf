/**
 * The memory backend: maps plus the counters the rules need, and an undo journal that makes each
 * batch all-or-nothing. Nothing survives the process; it is the reference the conformance suite
 * holds every other backend to, and the store tests use.
 */
import { IoasidError } from '../core/index.ts';
import { applyMutation, type StateTx } from './mutation-rules.ts';
import { checkBatch } from './row-check.ts';
import {
  DEFAULT_EVENT_RETENTION,
  type Applied, type BindingRow, type DeviceRow, type EventRow, type MetaRow, type Mutation, type NewEventRow, type PasidRow, type Store,
  type StoreStats, type StoredState, type ViommuRow, type VmRow,
} from './rows.ts';
import { bump, pairKey, sortState, validateStoredState } from './state-check.ts';

/** As bump, but a count that reaches 0 stays in the map (the key comes back soon: no churn). */
function count<K>(m: Map<K, number>, k: K, by: number): void {
  m.set(k, (m.get(k) ?? 0) + by);
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
  readonly #vmByHash = new Map<string, string>();
  readonly #viommusPerVm = new Map<string, number>();
  readonly #devicesPerVm = new Map<string, number>();
  /** Events kept, oldest first (the last `retention`). */
  #events: EventRow[] = [];
  #lastSeq = 0;
  readonly #retention: number;
  /** Inverse operations of the batch in progress; null outside a batch and while undoing. */
  #undo: (() => void)[] | null = null;

  constructor(retention: number) {
    this.#retention = retention;
  }

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
  get lastSeq(): number { return this.#lastSeq; }
  hasDevicesOn(vm: string, segment: number) { return this.#devicesPerViommu.has(pairKey(vm, segment)); }
  isDeviceBound(vm: string, bdf: string) { return this.#bindingsPerDevice.has(pairKey(vm, bdf)); }
  isPasidBound(pasid: number) { return this.#bindingsPerPasid.has(pasid); }

  #journal(undo: () => void): void {
    this.#undo?.push(undo);
  }

  putVm(row: VmRow): void {
    const prev = this.#vms.get(row.id);
    this.#journal(prev ? () => this.putVm(prev) : () => this.deleteVm(row.id));
    if (prev) this.#vmByHash.delete(prev.tokenHash);
    this.#vmByHash.set(row.tokenHash, row.id);
    this.#vms.set(row.id, row);
  }
  deleteVm(id: string): void {
    const prev = this.#vms.get(id);
    if (!prev) return;
    this.#journal(() => this.putVm(prev));
    this.#vmByHash.delete(prev.tokenHash);
    this.#vms.delete(id);
    if (this.#held.get(id) === 0) this.#held.delete(id);
  }
  putViommu(row: ViommuRow): void {
    const k = pairKey(row.vm, row.segment);
    const prev = this.#viommus.get(k);
    this.#journal(prev ? () => this.putViommu(prev) : () => this.deleteViommu(row.vm, row.segment));
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
    this.#journal(() => this.putViommu(prev));
    bump(this.#viommusPerVm, vm, -1);
    this.#viommus.delete(k);
  }
  putDevice(row: DeviceRow): void {
    const k = pairKey(row.vm, row.bdf);
    const prev = this.#devices.get(k);
    this.#journal(prev ? () => this.putDevice(prev) : () => this.deleteDevice(row.vm, row.bdf));
    if (prev) bump(this.#devicesPerViommu, pairKey(prev.vm, prev.segment), -1);
    else bump(this.#devicesPerVm, row.vm, 1);
    bump(this.#devicesPerViommu, pairKey(row.vm, row.segment), 1);
    this.#devices.set(k, row);
  }
  deleteDevice(vm: string, bdf: string): void {
    const k = pairKey(vm, bdf);
    const prev = this.#devices.get(k);
    if (!prev) return;
    this.#journal(() => this.putDevice(prev));
    bump(this.#devicesPerViommu, pairKey(prev.vm, prev.segment), -1);
    bump(this.#devicesPerVm, vm, -1);
    this.#devices.delete(k);
  }
  insertPasid(row: PasidRow): void {
    this.#journal(() => this.deletePasid(row.pasid));
    if (row.vm !== null) count(this.#held, row.vm, 1);
    this.#pasids.set(row.pasid, row);
  }
  deletePasid(pasid: number): void {
    const prev = this.#pasids.get(pasid);
    if (!prev) return;
    this.#journal(() => this.insertPasid(prev));
    if (prev.vm !== null) count(this.#held, prev.vm, -1);
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
  appendEvents(events: readonly NewEventRow[]): void {
    const length = this.#events.length;
    const last = this.#lastSeq;
    this.#journal(() => {
      this.#events.length = length;
      this.#lastSeq = last;
    });
    events.forEach((e, i) => this.#events.push({ seq: last + 1 + i, ...e }));
    this.#lastSeq = last + events.length;
  }

  /** Drop events beyond the retention (between batches: an undo never needs them back). */
  #prune(): void {
    const extra = this.#events.length - this.#retention;
    if (extra > Math.max(1024, this.#retention >> 3)) this.#events.splice(0, extra);
  }

  /** Apply a batch all-or-nothing; returns the seq its first event got (or the next one). */
  applyBatch(batch: readonly Mutation[]): Applied {
    const seq = this.#lastSeq + 1;
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
    this.#prune();
    return { seq };
  }

  /** Replace everything with a (validated) state. */
  load(s: StoredState): void {
    for (const m of [this.#vms, this.#viommus, this.#devices, this.#pasids, this.#bindings, this.#meta,
      this.#held, this.#devicesPerViommu, this.#bindingsPerDevice, this.#bindingsPerPasid,
      this.#vmByHash, this.#viommusPerVm, this.#devicesPerVm]) m.clear();
    this.#events = s.events.slice(-this.#retention);
    this.#lastSeq = s.lastSeq;
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
      events: this.#events.slice(-this.#retention),
      lastSeq: this.#lastSeq,
    });
  }
}

export interface MemoryStoreOptions {
  /** State to start from; validated by the first `open()` like a stored one. */
  readonly initial?: unknown;
  /** Events kept (default 65,536). */
  readonly eventRetention?: number;
}

/**
 * In-memory store. Its data outlives `close()`, so closing and opening the same object again is
 * this backend's "restart" (and revalidates the state).
 */
export class MemoryStore implements Store {
  readonly kind = 'memory' as const;
  readonly spec = 'memory';
  readonly #tables: MemoryTables;
  #initial: unknown;
  #open = false;
  #batches = 0;
  #failed = 0;

  constructor(opts: MemoryStoreOptions = {}) {
    this.#initial = opts.initial;
    this.#tables = new MemoryTables(checkRetention(opts.eventRetention));
  }

  async open(): Promise<StoredState> {
    if (this.#open) throw new IoasidError('EINVAL', 'store memory is already open', { spec: this.spec });
    const state = validateStoredState(this.#initial ?? this.#tables.snapshot());
    this.#tables.load(state);
    this.#initial = undefined;
    this.#open = true;
    return state;
  }

  async apply(batch: readonly Mutation[]): Promise<Applied> {
    let applied: Applied;
    try {
      const checked = checkBatch(batch);
      if (!this.#open) throw new IoasidError('EINVAL', 'store memory is not open', { spec: this.spec });
      applied = this.#tables.applyBatch(checked);
    } catch (e) {
      this.#failed++;
      throw e;
    }
    this.#batches++;
    return applied;
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

/** Validate an event-retention option (events a store keeps): an integer of at least 1. */
export function checkRetention(x: unknown): number {
  if (x === undefined) return DEFAULT_EVENT_RETENTION;
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 1) {
    throw new IoasidError('EINVAL', `eventRetention must be a positive integer, got ${String(x)}`, { eventRetention: x });
  }
  return x;
}
