/**
 * The etcd store's mirror of its domain: the row tables every in-memory holder of rows shares
 * (row-tables.ts: the rows, the counts the integrity rules need, the undo list), plus where each
 * VM runs and the host of each host-owned PASID. It is a `StateTx`, so `mutation-rules.ts` checks
 * a batch against it exactly as against the memory and SQLite backends (one contract for every
 * `Store`).
 *
 * A batch is applied to the mirror when it is submitted (later batches of the same tick see it,
 * as they would in one SQLite transaction), with an undo list and the set of etcd keys it touched:
 * the keys are then written with the values the mirror holds for them, and if the transaction
 * fails the undo list takes the batch back. Changes other hosts made are applied from the watch
 * through the same write primitives, outside any batch.
 */
import { RowTables, type TouchedTable } from './row-tables.ts';
import type { NewEventRow, PasidRow, VmRow } from './rows.ts';
import type { DomainKeys, VmPlacement } from './etcd-keys.ts';

/** What one batch did to the mirror: how to take it back, and the keys to write. */
export interface Staged {
  readonly undo: readonly (() => void)[];
  readonly touched: ReadonlySet<string>;
}

export class EtcdMirror extends RowTables {
  readonly #keys: DomainKeys;
  readonly #placement = new Map<string, VmPlacement>();
  /** Host of each host-owned PASID (vm null). */
  readonly #pasidHost = new Map<number, string>();
  /** The host that owns new host-owned PASIDs (this one). */
  readonly #self: string;
  #touched: Set<string> | null = null;

  constructor(keys: DomainKeys, self: string) {
    super();
    this.#keys = keys;
    this.#self = self;
  }

  // ------------------------------------------------------------------ batches

  /** Start recording a batch (undo list, touched keys). */
  override begin(): void {
    super.begin();
    this.#touched = new Set();
  }

  /** Stop recording; returns what the batch did. */
  end(): Staged {
    const s = { undo: this.endUndo(), touched: this.#touched ?? new Set<string>() };
    this.#touched = null;
    return s;
  }

  /** Take a batch back (its undo list, last first), outside any recording. */
  rollback(s: Pick<Staged, 'undo'>): void {
    this.rollbackUndo(s.undo);
  }

  protected override touch(table: TouchedTable, a: string | number, b?: string | number): void {
    if (!this.recording || this.#touched === null) return;
    const k = this.#keys;
    switch (table) {
      case 'vm': this.#touched.add(k.vm(a as string)); return;
      case 'token': this.#touched.add(k.token(a as string)); return;
      case 'viommu': this.#touched.add(k.viommu(a as string, b as number)); return;
      case 'device': this.#touched.add(k.device(a as string, b as string)); return;
      case 'pasid': this.#touched.add(k.pasid(a as number)); return;
      case 'binding': this.#touched.add(k.binding(a as number, b as string)); return;
      case 'meta': this.#touched.add(k.meta(a as string)); return;
    }
  }

  // ------------------------------------------------------------------ placement and PASID hosts

  placement(vm: string): VmPlacement | undefined { return this.#placement.get(vm); }
  pasidHost(pasid: number): string | null { return this.#pasidHost.get(pasid) ?? null; }

  /** Where a VM runs (a migration, a destroy under way); undefined: gone. */
  setPlacement(id: string, p: VmPlacement | undefined): void {
    const prev = this.#placement.get(id);
    this.journal(() => this.#place(id, prev));
    this.touch('vm', id);
    this.#place(id, p);
  }
  #place(id: string, p: VmPlacement | undefined): void {
    if (p === undefined) this.#placement.delete(id);
    else this.#placement.set(id, p);
  }

  // ------------------------------------------------------------------ writes with placement or a host

  /** A new VM runs here unless its placement is already known (from etcd). */
  override putVm(row: VmRow): void {
    super.putVm(row);
    if (!this.#placement.has(row.id)) this.setPlacement(row.id, { host: this.#self, state: 'active' });
  }
  override deleteVm(id: string): void {
    if (this.getVm(id) === undefined) return;
    super.deleteVm(id);
    this.setPlacement(id, undefined);
  }
  /** A host-owned PASID's host: `host`, else this one. */
  override insertPasid(row: PasidRow, host?: string | null): void {
    const prevHost = this.#pasidHost.get(row.pasid);
    // Journalled before the row's own undo, so that a rollback runs it once the row is gone again.
    this.journal(() => {
      if (prevHost !== undefined) this.#pasidHost.set(row.pasid, prevHost);
    });
    super.insertPasid(row);
    if (row.vm === null) this.#pasidHost.set(row.pasid, host ?? this.#self);
  }
  override deletePasid(pasid: number): void {
    if (this.getPasid(pasid) === undefined) return;
    const host = this.#pasidHost.get(pasid);
    // Runs after the row's undo put it back (as this host's): its host is restored.
    this.journal(() => {
      if (host !== undefined) this.#pasidHost.set(pasid, host);
    });
    super.deletePasid(pasid);
    this.#pasidHost.delete(pasid);
  }

  /** Events are not rows: the store writes them into the transaction's journal record. */
  appendEvents(_events: readonly NewEventRow[]): void {}
}
