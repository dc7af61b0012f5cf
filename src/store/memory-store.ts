/**
 * The memory backend: the row tables (row-tables.ts: maps, the counts the rules need, an undo
 * list that makes each batch all-or-nothing) and an event log. Nothing survives the process; it
 * is the reference the conformance suite holds every other backend to, and the store tests use.
 */
import { IoasidError } from '../core/index.ts';
import { applyMutation } from './mutation-rules.ts';
import { RowTables } from './row-tables.ts';
import { checkBatch } from './row-check.ts';
import {
  DEFAULT_EVENT_RETENTION,
  type Applied, type EventRow, type Mutation, type NewEventRow, type Store, type StoreStats, type StoredState,
} from './rows.ts';
import { sortState, validateStoredState } from './state-check.ts';

/** The tables (row-tables.ts) and the event log. */
class MemoryTables extends RowTables {
  /** Events kept, oldest first (the last `retention`). */
  #events: EventRow[] = [];
  #lastSeq = 0;
  readonly #retention: number;

  constructor(retention: number) {
    super();
    this.#retention = retention;
  }

  appendEvents(events: readonly NewEventRow[]): void {
    const length = this.#events.length;
    const last = this.#lastSeq;
    this.journal(() => {
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
    this.begin();
    try {
      batch.forEach((m, i) => applyMutation(this, m, i));
    } catch (e) {
      this.rollbackUndo(this.endUndo());
      throw e;
    }
    this.endUndo();
    this.#prune();
    return { seq };
  }

  /** Replace everything with a (validated) state. */
  load(s: StoredState): void {
    this.clearRows();
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
      vms: [...this.vmRows()],
      viommus: [...this.viommuRows()],
      devices: [...this.deviceRows()],
      pasids: [...this.pasidRows()],
      bindings: [...this.bindingRows()],
      meta: [...this.metaRows()],
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
