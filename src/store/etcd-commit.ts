/**
 * Group commit for the etcd backend: batches submitted while transactions are in flight are
 * merged into one etcd transaction (the etcd writes of concurrent requests share one raft entry).
 *
 * Rules:
 *  1. Each batch brings its compares and its writes. A transaction holds whole batches, at most
 *     `maxOps` compares, writes and failure reads each (etcd refuses more than --max-txn-ops, 128 by
 *     default), and one global compare (the host's fence) added to every transaction.
 *  2. Per-key order: a batch waits while an earlier batch (queued or in flight) writes a key it
 *     reads or writes, or reads a key it writes; batches in one transaction never touch each
 *     other's keys, since every compare is evaluated before any write.
 *  3. A refused transaction reads every compared key in the same revision: batches whose compares
 *     hold are sent again at the front of the queue, the others fail with their own error, and a
 *     batch that finds its own nonce in a read was already committed (an answer lost on the
 *     way) and succeeds at that revision.
 *  4. A transport failure resends the same transaction, with backoff, at most `attempts` times
 *     (etcd-client.ts); then every batch of it fails with ETIMEDOUT (the outcome is unknown).
 *  5. A failed fence compare fails every batch of the transaction with the host's fencing error.
 */
import { IoasidError } from '../core/index.ts';
import {
  backoffMs, cmpHolds, cmpId, isTransportError, nextAttempt, opKey, sleep, unavailable,
  type Cmp, type Kv, type Op, type RetryPolicy, type TxnResult,
} from './etcd-client.ts';

export type Reads = ReadonlyMap<string, readonly Kv[]>;

/** One unit of work: it commits whole or not at all. */
export interface CommitBatch {
  readonly compares: readonly Cmp[];
  readonly ops: readonly Op[];
  /** After a refused transaction: the revision this batch was already committed at, or null. */
  recognise(reads: Reads): number | null;
  /** The error of a batch whose compare `failed` does not hold. */
  explain(reads: Reads, failed: Cmp): IoasidError;
}

export interface CommitQueueOptions {
  readonly exec: (compares: readonly Cmp[], ops: readonly Op[]) => Promise<TxnResult>;
  /** The compare added to every transaction (the fence), or null. */
  readonly fence: () => Cmp | null;
  /** The error every batch gets when the fence compare fails. */
  readonly fenced: (reads: Reads) => IoasidError;
  /** Called synchronously for a committed batch, before its promise resolves. */
  readonly committed: (batch: CommitBatch, revision: number) => void;
  readonly policy: RetryPolicy;
  readonly maxOps: number;
  readonly maxInFlight: number;
  readonly onRetry?: (e: unknown, attempt: number) => void;
}

interface Entry {
  readonly batch: CommitBatch;
  readonly reads: ReadonlySet<string>;
  readonly writes: ReadonlySet<string>;
  readonly resolve: (revision: number) => void;
  readonly reject: (e: unknown) => void;
  /** Times this batch was sent again after others' compares failed. */
  requeued: number;
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

  /** Queue a batch; resolves to the revision it committed at. */
  submit(batch: CommitBatch): Promise<number> {
    if (this.#closed) return Promise.reject(new IoasidError('ENODEV', 'the etcd store is closed', {}));
    const writes = new Set(batch.ops.map(opKey));
    if (writes.size !== batch.ops.length) return Promise.reject(new IoasidError('EINVAL', 'a batch writes one etcd key twice', { keys: batch.ops.map(opKey) }));
    if (batch.ops.length > this.#o.maxOps || batch.compares.length + 1 > this.#o.maxOps) {
      return Promise.reject(new IoasidError('EINVAL', `a batch of ${batch.ops.length} writes and ${batch.compares.length} compares exceeds one etcd transaction (${this.#o.maxOps})`, { ops: batch.ops.length, compares: batch.compares.length }));
    }
    this.#stats.submitted++;
    return new Promise<number>((resolve, reject) => {
      this.#queue.push({ batch, reads: new Set(batch.compares.map((c) => c.key)), writes, resolve, reject, requeued: 0 });
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
      this.#inFlight.add(group);
      void this.#run(group).finally(() => {
        this.#inFlight.delete(group);
        if (this.#queue.length > 0) this.#pump();
        if (!this.busy) for (const r of this.#idle.splice(0)) r();
      });
    }
  }

  /** Take a group of non-conflicting batches off the queue, in order. */
  #form(): Entry[] {
    const blockedR = new Set<string>();
    const blockedW = new Set<string>();
    for (const g of this.#inFlight) for (const e of g) {
      for (const k of e.reads) blockedR.add(k);
      for (const k of e.writes) blockedW.add(k);
    }
    const group: Entry[] = [];
    const rest: Entry[] = [];
    let ops = 0;
    const cmps = new Set<string>();
    let full = false;
    for (const e of this.#queue) {
      let conflict = full;
      if (!conflict) {
        for (const k of e.writes) if (blockedR.has(k) || blockedW.has(k)) { conflict = true; break; }
      }
      if (!conflict) {
        for (const k of e.reads) if (blockedW.has(k)) { conflict = true; break; }
      }
      if (!conflict) {
        const newCmps = e.batch.compares.filter((c) => !cmps.has(cmpSig(c)));
        if (ops + e.batch.ops.length > this.#o.maxOps || cmps.size + newCmps.length + 1 > this.#o.maxOps) {
          conflict = true;
          full = true;
        } else {
          group.push(e);
          ops += e.batch.ops.length;
          for (const c of newCmps) cmps.add(cmpSig(c));
        }
      }
      // Whatever is in the group or waits behind an earlier batch blocks later batches on its keys.
      for (const k of e.reads) blockedR.add(k);
      for (const k of e.writes) blockedW.add(k);
      if (conflict) rest.push(e);
    }
    this.#queue = rest;
    return group;
  }

  async #run(group: Entry[]): Promise<void> {
    let attempt = 0;
    const started = Date.now();
    for (;;) {
      const fence = this.#o.fence();
      const seen = new Set<string>();
      const compares: Cmp[] = [];
      if (fence !== null) {
        compares.push(fence);
        seen.add(cmpSig(fence));
      }
      for (const e of group) for (const c of e.batch.compares) {
        const s = cmpSig(c);
        if (!seen.has(s)) {
          seen.add(s);
          compares.push(c);
        }
      }
      const ops = group.flatMap((e) => e.batch.ops);
      let res: TxnResult;
      try {
        this.#stats.txns++;
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
        for (const x of group) this.#fail(x, err);
        return;
      }
      if (res.succeeded) {
        for (const x of group) this.#commit(x, res.revision);
        return;
      }
      this.#stats.refusedTxns++;
      if (fence !== null && !cmpHolds(fence, res.reads.get(cmpId(fence)) ?? [])) {
        const err = this.#o.fenced(res.reads);
        for (const x of group) this.#fail(x, err);
        return;
      }
      const again: Entry[] = [];
      for (const x of group) {
        const rev = x.batch.recognise(res.reads);
        if (rev !== null) {
          this.#commit(x, rev);
          continue;
        }
        const failed = x.batch.compares.find((c) => !cmpHolds(c, res.reads.get(cmpId(c)) ?? []));
        if (failed !== undefined) this.#fail(x, x.batch.explain(res.reads, failed));
        else if (++x.requeued > MAX_REQUEUE) this.#fail(x, new IoasidError('EAGAIN', `an etcd transaction was refused ${MAX_REQUEUE} times because of other requests; retry`, {}));
        else again.push(x);
      }
      if (again.length === group.length) {
        // Every compare holds on the reads, yet etcd refused: nothing to learn, count it as a retry.
        if (++attempt >= this.#o.policy.attempts) {
          for (const x of group) this.#fail(x, new IoasidError('EAGAIN', 'etcd refused a transaction whose compares hold when read back; retry', {}));
          return;
        }
        await sleep(backoffMs(this.#o.policy, attempt));
        continue;
      }
      // The batches that were not at fault go first in the queue again, in their order.
      if (again.length > 0) {
        this.#queue = [...again, ...this.#queue];
      }
      return;
    }
  }

  #commit(e: Entry, revision: number): void {
    this.#stats.committed++;
    try {
      this.#o.committed(e.batch, revision);
    } finally {
      e.resolve(revision);
    }
  }

  #fail(e: Entry, err: unknown): void {
    this.#stats.failed++;
    e.reject(err);
  }
}

function cmpSig(c: Cmp): string {
  return `${cmpId(c)}\u0001${c.target}\u0001${c.result}\u0001${String(c.value)}`;
}
