/**
 * Group commit for the etcd backend: batches submitted while transactions are in flight are
 * merged into one etcd transaction (the etcd writes of concurrent requests share one raft entry),
 * with one journal record (`log/<name>`) holding the parts of every batch that has one.
 *
 * Rules:
 *  1. Each batch names the keys it reads and writes up front (virtual keys included, such as a
 *     VM's, so that two batches of one VM never overlap); its compares and writes are built when
 *     its transaction is formed, from what is known then. A transaction holds whole batches, at
 *     most `maxOps` compares and writes each (etcd refuses more than --max-txn-ops, 128 by
 *     default), at most SEQ_PER_REVISION events and `maxRecordBytes` of journal record, plus the
 *     compares every transaction carries: the host's fence, and the journal record's key absent.
 *  2. Per-key order: a batch waits while an earlier batch (queued or in flight) writes a key it
 *     reads or writes, or reads a key it writes; batches in one transaction never touch each
 *     other's keys, since every compare is evaluated before any write.
 *  3. A refused transaction reads every compared key in the same revision. If the journal record
 *     is there, the transaction had committed (an answer lost on the way): every batch succeeds at
 *     its revision. Otherwise batches whose compares hold are sent again at the front of the queue,
 *     the others fail with their own error, and a batch that finds its own nonce in a read was
 *     already committed and succeeds at that revision.
 *  4. A transport failure resends the same transaction, with backoff, at most `attempts` times
 *     (etcd-client.ts); then every batch of it fails with ETIMEDOUT (the outcome is unknown).
 *  5. A failed fence compare fails every batch of the transaction with the host's fencing error.
 *  6. The events of a transaction are numbered from its revision: batch j's first event gets
 *     revision * SEQ_PER_REVISION + (events of the batches before it in the record).
 */
import { IoasidError } from '../core/index.ts';
import {
  backoffMs, cmpHolds, cmpId, isTransportError, nextAttempt, sleep, unavailable,
  type Cmp, type Kv, type Op, type RetryPolicy, type TxnResult,
} from './etcd-client.ts';
import { SEQ_PER_REVISION } from './etcd-keys.ts';

export type Reads = ReadonlyMap<string, readonly Kv[]>;

/** One unit of work: it commits whole or not at all. */
export interface CommitBatch {
  /** Keys (and virtual keys) it compares or depends on. */
  readonly reads: readonly string[];
  /** Keys (and virtual keys) it writes. */
  readonly writes: readonly string[];
  /** Sequence numbers its events take. */
  readonly events: number;
  /** Its part of the journal record (JSON), or null. */
  readonly part: string | null;
  /** Its compares and writes, built when its transaction is formed; a throw fails the batch. */
  build(): { readonly compares: readonly Cmp[]; readonly ops: readonly Op[] };
  /** After a refused transaction: the revision this batch was already committed at, or null. */
  recognise(reads: Reads): number | null;
  /** The error of a batch whose compare `failed` does not hold. */
  explain(reads: Reads, failed: Cmp): IoasidError;
  /** Called synchronously when the batch fails, before its promise rejects. */
  failed?(err: unknown): void;
}

export interface JournalRecordWriter {
  /** A fresh name for a transaction's record (unique in the domain). */
  name(): string;
  /** The record's key. */
  key(name: string): string;
  /** The record's value, from the parts of its batches in order. */
  encode(parts: readonly string[]): string;
}

export interface CommitQueueOptions {
  readonly exec: (compares: readonly Cmp[], ops: readonly Op[]) => Promise<TxnResult>;
  /** The compare added to every transaction (the fence), or null. */
  readonly fence: () => Cmp | null;
  /** The error every batch gets when the fence compare fails. */
  readonly fenced: (reads: Reads) => IoasidError;
  /** Called synchronously for a committed batch, before its promise resolves. */
  readonly committed: (batch: CommitBatch, revision: number, seq: number) => void;
  /** Called synchronously when a transaction is first sent, and when it is done, with its keys. */
  readonly sending?: (keys: readonly string[]) => void;
  readonly done?: (keys: readonly string[]) => void;
  readonly record: JournalRecordWriter;
  readonly policy: RetryPolicy;
  readonly maxOps: number;
  /** Largest journal record of one transaction, in characters of its parts. */
  readonly maxRecordBytes: number;
  readonly maxInFlight: number;
  readonly onRetry?: (e: unknown, attempt: number) => void;
}

interface Entry {
  readonly batch: CommitBatch;
  readonly reads: ReadonlySet<string>;
  readonly writes: ReadonlySet<string>;
  readonly resolve: (r: { revision: number; seq: number }) => void;
  readonly reject: (e: unknown) => void;
  /** Times this batch was sent again after others' compares failed. */
  requeued: number;
}

interface Formed {
  readonly entry: Entry;
  readonly compares: readonly Cmp[];
  readonly ops: readonly Op[];
  /** Index of its first event in the record. */
  readonly offset: number;
}

export interface CommitStats {
  readonly submitted: number;
  readonly committed: number;
  readonly failed: number;
  readonly txns: number;
  readonly refusedTxns: number;
  readonly retries: number;
}

const MAX_REQUEUE = 32;

export class CommitQueue {
  readonly #o: CommitQueueOptions;
  #queue: Entry[] = [];
  readonly #inFlight = new Set<Entry[]>();
  #scheduled = false;
  #closed = false;
  #idle: (() => void)[] = [];
  #stats = { submitted: 0, committed: 0, failed: 0, txns: 0, refusedTxns: 0, retries: 0 };

  constructor(o: CommitQueueOptions) {
    this.#o = o;
  }

  get stats(): CommitStats {
    return { ...this.#stats };
  }

  get busy(): boolean {
    return this.#queue.length > 0 || this.#inFlight.size > 0;
  }

  /** Queue a batch; resolves to the revision it committed at and the seq of its first event. */
  submit(batch: CommitBatch): Promise<{ revision: number; seq: number }> {
    if (this.#closed) return Promise.reject(new IoasidError('ENODEV', 'the etcd store is closed', {}));
    if (batch.events > SEQ_PER_REVISION) {
      return Promise.reject(new IoasidError('EINVAL', `a change of ${batch.events} events exceeds one etcd transaction (${SEQ_PER_REVISION})`, { events: batch.events }));
    }
    if (batch.part !== null && batch.part.length > this.#o.maxRecordBytes) {
      return Promise.reject(new IoasidError('EINVAL', `a change whose journal record takes ${batch.part.length} characters exceeds one etcd transaction (${this.#o.maxRecordBytes})`, { size: batch.part.length }));
    }
    this.#stats.submitted++;
    return new Promise((resolve, reject) => {
      this.#queue.push({ batch, reads: new Set(batch.reads), writes: new Set(batch.writes), resolve, reject, requeued: 0 });
      this.#schedule();
    });
  }

  /** Resolves once nothing is queued or in flight. */
  drained(): Promise<void> {
    if (!this.busy) return Promise.resolve();
    return new Promise((r) => this.#idle.push(r));
  }

  /** Refuse new batches (queued ones still run). */
  close(): void {
    this.#closed = true;
  }

  #schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    // setImmediate, not a microtask: requests that arrived in the same I/O phase share a txn.
    setImmediate(() => {
      this.#scheduled = false;
      this.#pump();
    });
  }

  #pump(): void {
    while (this.#inFlight.size < this.#o.maxInFlight && this.#queue.length > 0) {
      const group = this.#form();
      if (group.length === 0) break;
      const entries = group.map((f) => f.entry);
      this.#inFlight.add(entries);
      void this.#run(group).finally(() => {
        this.#inFlight.delete(entries);
        if (this.#queue.length > 0) this.#pump();
        if (!this.busy) for (const r of this.#idle.splice(0)) r();
      });
    }
    if (!this.busy) for (const r of this.#idle.splice(0)) r();
  }

  /**
   * Take a group of non-conflicting batches off the queue, in order, and build them. Virtual keys
   * (starting with NUL: a VM's) keep batches out of concurrent transactions, not out of one
   * transaction: in one, they commit together or not at all.
   */
  #form(): Formed[] {
    const flightR = new Set<string>();
    const flightW = new Set<string>();
    for (const g of this.#inFlight) for (const e of g) {
      for (const k of e.reads) flightR.add(k);
      for (const k of e.writes) flightW.add(k);
    }
    // Keys of the batches left behind in this round, and of those taken into the group.
    const waitR = new Set<string>();
    const waitW = new Set<string>();
    const groupR = new Set<string>();
    const groupW = new Set<string>();
    const clash = (k: string, r: ReadonlySet<string>, w: ReadonlySet<string>, group: boolean): boolean =>
      !(group && k.charCodeAt(0) === 0) && (r.has(k) || w.has(k));
    const group: Formed[] = [];
    const rest: Entry[] = [];
    const max = this.#o.maxOps;
    // Every transaction also carries the fence and the record's compare, and the record's put.
    let ops = 1;
    let events = 0;
    let bytes = 0;
    const cmps = new Set<string>(['fence', 'record']);
    let full = false;
    for (const e of this.#queue) {
      let conflict = full;
      if (!conflict) {
        for (const k of e.writes) {
          if (clash(k, flightR, flightW, false) || clash(k, waitR, waitW, false) || clash(k, groupR, groupW, true)) { conflict = true; break; }
        }
      }
      if (!conflict) {
        for (const k of e.reads) {
          if (flightW.has(k) || waitW.has(k) || (groupW.has(k) && k.charCodeAt(0) !== 0)) { conflict = true; break; }
        }
      }
      if (!conflict) {
        let built: ReturnType<CommitBatch['build']>;
        try {
          built = e.batch.build();
        } catch (err) {
          this.#fail(e, err);
          continue; // it touches nothing: later batches do not wait for it
        }
        const newCmps = built.compares.filter((c) => !cmps.has(cmpSig(c)));
        const size = e.batch.part?.length ?? 0;
        const fits = ops + built.ops.length <= max && cmps.size + newCmps.length <= max
          && events + e.batch.events <= SEQ_PER_REVISION && bytes + size <= this.#o.maxRecordBytes;
        if (!fits && group.length === 0) {
          this.#fail(e, new IoasidError('EINVAL', `a change of ${built.ops.length} writes and ${built.compares.length} compares exceeds one etcd transaction (${max - 2})`, { ops: built.ops.length, compares: built.compares.length }));
          continue;
        }
        if (!fits) {
          conflict = true;
          full = true;
        } else {
          group.push({ entry: e, compares: built.compares, ops: built.ops, offset: events });
          ops += built.ops.length;
          events += e.batch.events;
          bytes += size;
          for (const c of newCmps) cmps.add(cmpSig(c));
          for (const k of e.reads) groupR.add(k);
          for (const k of e.writes) groupW.add(k);
        }
      }
      if (conflict) {
        // Whatever waits behind an earlier batch blocks later batches on its keys.
        for (const k of e.reads) waitR.add(k);
        for (const k of e.writes) waitW.add(k);
        rest.push(e);
      }
    }
    this.#queue = rest;
    return group;
  }

  async #run(group: Formed[]): Promise<void> {
    const keys: string[] = [];
    try {
      await this.#send(group, keys);
    } finally {
      if (keys.length > 0) this.#o.done?.(keys);
    }
  }

  async #send(group: Formed[], sent: string[]): Promise<void> {
    let attempt = 0;
    const started = Date.now();
    const name = this.#o.record.name();
    const recordKey = this.#o.record.key(name);
    const parts = group.map((f) => f.entry.batch.part).filter((p): p is string => p !== null);
    const recordCmp: Cmp = { key: recordKey, target: 'Create', result: 'Equal', value: 0 };
    for (;;) {
      const fence = this.#o.fence();
      const seen = new Set<string>();
      const compares: Cmp[] = [];
      for (const c of [...(fence !== null ? [fence] : []), ...(parts.length > 0 ? [recordCmp] : []), ...group.flatMap((f) => f.compares)]) {
        const s = cmpSig(c);
        if (!seen.has(s)) {
          seen.add(s);
          compares.push(c);
        }
      }
      const ops: Op[] = group.flatMap((f) => f.ops);
      if (parts.length > 0) ops.push({ put: recordKey, value: this.#o.record.encode(parts) });
      let res: TxnResult;
      try {
        this.#stats.txns++;
        if (sent.length === 0) {
          sent.push(...ops.map((o) => ('put' in o ? o.put : o.del)));
          this.#o.sending?.(sent);
        }
        res = await this.#o.exec(compares, ops);
      } catch (e) {
        const wait = isTransportError(e) ? nextAttempt(this.#o.policy, ++attempt, started) : -1;
        if (wait >= 0) {
          this.#stats.retries++;
          this.#o.onRetry?.(e, attempt);
          await sleep(wait);
          continue;
        }
        const err = isTransportError(e) ? unavailable('a transaction', attempt, e) : e;
        for (const f of group) this.#fail(f.entry, err);
        return;
      }
      if (res.succeeded) {
        for (const f of group) this.#commit(f, res.revision);
        return;
      }
      this.#stats.refusedTxns++;
      const rec = parts.length > 0 ? res.reads.get(cmpId(recordCmp))?.[0] : undefined;
      if (rec !== undefined) {
        // Our record is there: an earlier attempt of this transaction committed (rule 3).
        for (const f of group) this.#commit(f, rec.mod);
        return;
      }
      if (fence !== null && !cmpHolds(fence, res.reads.get(cmpId(fence)) ?? [])) {
        const err = this.#o.fenced(res.reads);
        for (const f of group) this.#fail(f.entry, err);
        return;
      }
      const again: Entry[] = [];
      for (const f of group) {
        const x = f.entry;
        const rev = x.batch.recognise(res.reads);
        if (rev !== null) {
          this.#commit(f, rev);
          continue;
        }
        const failed = f.compares.find((c) => !cmpHolds(c, res.reads.get(cmpId(c)) ?? []));
        if (failed !== undefined) this.#fail(x, x.batch.explain(res.reads, failed));
        else if (++x.requeued > MAX_REQUEUE) this.#fail(x, new IoasidError('EAGAIN', `an etcd transaction was refused ${MAX_REQUEUE} times because of other requests; retry`, {}));
        else again.push(x);
      }
      if (again.length === group.length) {
        // Every compare holds on the reads, yet etcd refused (a key changed between the two):
        // back off before the batches are built and sent again (bounded by MAX_REQUEUE).
        await sleep(backoffMs(this.#o.policy, Math.min(6, (again[0] as Entry).requeued)));
      }
      // The batches that were not at fault go first in the queue again, in their order.
      if (again.length > 0) this.#queue = [...again, ...this.#queue];
      return;
    }
  }

  #commit(f: Formed, revision: number): void {
    this.#stats.committed++;
    const seq = revision * SEQ_PER_REVISION + f.offset;
    try {
      this.#o.committed(f.entry.batch, revision, seq);
    } finally {
      f.entry.resolve({ revision, seq });
    }
  }

  #fail(e: Entry, err: unknown): void {
    this.#stats.failed++;
    e.batch.failed?.(err);
    e.reject(err);
  }
}

function cmpSig(c: Cmp): string {
  return `${cmpId(c)}\u0001${c.target}\u0001${c.result}\u0001${String(c.value)}`;
}
