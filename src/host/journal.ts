/**
 * The journal: the port through which every change of a host is committed (docs/rules.md).
 *
 * Every `Host` and `Vm` operation runs in one order: validate (throw an `IoasidError`, change
 * nothing) -> the list of changes, as events -> `journal.commit(entry)` -> apply the changes to
 * the model -> publish the events, numbered by the journal. A refused or failed commit changes
 * nothing and publishes nothing, so nobody ever hears of a change that did not happen.
 *
 * The default journal is in memory and synchronous: in-process and nested hosts pay for no
 * promise. The service gives a store-backed journal (an entry becomes rows, events included, in
 * one transaction); the cluster an etcd-backed one. Because an entry's events are the journal, the
 * sequence numbers are the journal's: durable with the state.
 */
import type { IoasidSet, IoasidSpace } from '../core/index.ts';
import type { Layout, PasBit, VcmdGuestState } from '../vtd/index.ts';

/** What changed on a host, as it is committed, published and stored. */
export type HostEvent =
  | { readonly type: 'vm-created'; readonly vm: string; readonly quota: number }
  | { readonly type: 'vm-destroyed'; readonly vm: string; readonly freed: readonly number[] }
  | {
      readonly type: 'viommu-added'; readonly vm: string; readonly segment: number;
      readonly layout: Layout; readonly rangeExtension: boolean; readonly pasBit: PasBit; readonly pss: number;
    }
  | { readonly type: 'viommu-removed'; readonly vm: string; readonly segment: number }
  | { readonly type: 'device-assigned'; readonly vm: string; readonly bdf: string; readonly pasidBits: number }
  | { readonly type: 'device-removed'; readonly vm: string; readonly bdf: string }
  /** PASIDs allocated or freed together (one request, one VCMD command, a destroy). */
  | { readonly type: 'alloc' | 'free'; readonly vm: string | null; readonly pasids: readonly number[] }
  | { readonly type: 'bind' | 'unbind'; readonly vm: string; readonly pasid: number; readonly bdf: string }
  /** The allocation that filled a VM's quota: its next one will be refused. */
  | { readonly type: 'quota-exhausted'; readonly vm: string; readonly quota: number }
  /** The VM's owner credential was replaced (the credential itself is never published). */
  | { readonly type: 'credential-replaced'; readonly vm: string }
  /** Cluster mode: the VM now runs on another host of its migration domain. */
  | { readonly type: 'vm-migrated'; readonly vm: string; readonly from: string; readonly to: string };

export type HostEventType = HostEvent['type'];

export const HOST_EVENT_TYPES: readonly HostEventType[] = [
  'vm-created', 'vm-destroyed', 'viommu-added', 'viommu-removed', 'device-assigned', 'device-removed',
  'alloc', 'free', 'bind', 'unbind', 'quota-exhausted', 'credential-replaced', 'vm-migrated',
];

/** A published event: its place in the journal and when it was committed (ms). */
export type HostEventRecord = HostEvent & { readonly seq: number; readonly at: number };

/** One commit: the events in order, and what goes with them but is never published. */
export interface JournalEntry {
  readonly events: readonly HostEvent[];
  /** VMs' owner credentials (e.g. a token hash) set by this entry. */
  readonly credentials?: readonly { readonly vm: string; readonly credential: string }[];
  /** A vIOMMU's guest-visible registers, committed with the change they report. */
  readonly registers?: { readonly vm: string; readonly segment: number; readonly state: VcmdGuestState };
}

/** Where an entry landed: the sequence number of its first event, and the commit time. */
export interface Committed {
  readonly seq: number;
  readonly at: number;
}

/**
 * Where a host may allocate (cluster mode: inside the blocks of the namespace it holds). The host
 * asks it to reserve PASIDs in its space instead of taking the lowest free itself, and when a
 * commit fails because another host took one of them first (`isConflict`), gives the reservation
 * back and asks again, at most `attempts` times (then EAGAIN).
 */
export interface AllocationPolicy {
  /**
   * Reserve `count` PASIDs for `set` in [min, max] in `space`, all or nothing (the core's rules
   * apply: EDQUOT, ENOSPC). May first claim room (asynchronously).
   */
  reserve(space: IoasidSpace, set: IoasidSet, min: number, max: number, count: number): number[] | Promise<number[]>;
  isConflict(e: unknown): boolean;
  readonly attempts: number;
}

export interface Journal {
  /**
   * Commit an entry: every part of it, or nothing (then throw a `CommitError`, or another
   * `IoasidError` for an integrity refusal). A synchronous journal returns the result; an
   * asynchronous one a promise that settles once the entry is durable. The entries of one VM are
   * committed, and settle, in call order (the host calls with one VM's entries one at a time);
   * entries of different VMs may settle in another order (the cluster's settle in the order of
   * the domain's revisions).
   */
  commit(entry: JournalEntry): Committed | Promise<Committed>;
  /** True when the journal keeps what a guest can observe of a vIOMMU (its registers). */
  readonly durable: boolean;
  /** True when `commit` always returns synchronously. */
  readonly sync: boolean;
  /** Where this host may allocate; default: the lowest free PASID of the range. */
  readonly placement?: AllocationPolicy;
  /** A journal that decorates another (a stopwatch, say) names the one it commits through. */
  readonly inner?: Journal;
}

/** A journal whose commits are synchronous: the host's operations are then synchronous too. */
export interface SyncJournal extends Journal {
  commit(entry: JournalEntry): Committed;
  readonly sync: true;
}

/** The in-memory journal: numbers events from `firstSeq`, timestamps them with `now`. */
export class MemoryJournal implements SyncJournal {
  readonly durable = false;
  readonly sync = true;
  readonly #now: () => number;
  #next: number;

  constructor(opts: { readonly now?: () => number; readonly firstSeq?: number } = {}) {
    this.#now = opts.now ?? Date.now;
    this.#next = opts.firstSeq ?? 1;
  }

  commit(entry: JournalEntry): Committed {
    const seq = this.#next;
    this.#next += entry.events.length;
    return { seq, at: this.#now() };
  }

  /** The sequence number the next event will get. */
  get nextSeq(): number {
    return this.#next;
  }
}

/** A host operation's result: synchronous on a synchronous journal, a promise otherwise. */
export type Outcome<J extends Journal, T> = J extends SyncJournal ? T : Promise<T>;
