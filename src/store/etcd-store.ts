/**
 * The etcd backend: the `Store` of one host in a migration domain, shared with the other hosts of
 * the domain on one etcd cluster. Key layout in etcd-keys.ts, the mirror in etcd-mirror.ts, group
 * commit in etcd-commit.ts, retries in etcd-client.ts; design and failure semantics in
 * docs/cluster.md.
 *
 * Rules:
 *  1. The same contract as every `Store` (test/store-conformance.test.ts): a batch is checked by
 *     the integrity rules of mutation-rules.ts against the mirror of the domain, then written in
 *     one etcd transaction (group commit may share it with other batches). One key per row: a VM
 *     (its set), a token hash, a vIOMMU (its registers), a device, a PASID, a binding.
 *  2. Every transaction of this host compares the mod revision of its fence key with the one it
 *     wrote at start: a later incarnation of the host, or an operator's reclaim, bumps it, and
 *     from then on nothing this incarnation sends commits (it is fenced: ENODEV).
 *  3. Every key a batch writes is compared with what this host knows of it (its mod revision, or
 *     absent: a PASID, a VM id, a token hash are created only if absent), and every VM the batch
 *     changes is compared (its key's mod revision, naming this host, active): a VM migrated away,
 *     being destroyed or reclaimed is never written by its former host, so each PASID has exactly
 *     one owner at every revision. Meta keys are last-writer-wins.
 *  4. Each transaction writes one journal record (`log/<name>`): the events of its batches, with
 *     the credentials and registers that go with them. Its events are numbered from the revision
 *     (etcd-keys.ts), so every host numbers them alike, and other hosts apply exactly them
 *     (`onCommitted`). The records of the last `logRetention` transactions are kept; `open()`
 *     returns the last `eventRetention` events of them.
 *  5. The state loaded at `open()` is the whole domain (every host's VMs and PASIDs), validated
 *     like any stored state; from then on the watch streams every change, in revision order,
 *     into the mirror, and the journal records of other hosts to the listener. A change from
 *     elsewhere to a key this host is still writing waits until that write has settled (and been
 *     undone, if it failed).
 *  6. `apply` settles in call order (the Store contract). `commit` (the cluster journal's) settles
 *     in revision order, once the watch has brought every earlier change of the domain, so a
 *     host applies and publishes the domain's changes in one order, its own included.
 *  7. A lease keeps `hosts/<id>` alive while the process runs; lease expiry frees nothing.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { Etcd3, IWatchResponse, Lease, Watcher } from 'etcd3';
import { IoasidError, PASID_MAX, fmtId, isIoasidError } from '../core/index.ts';
import { applyMutation } from './mutation-rules.ts';
import { checkBatch, checkBindingRow, checkDeviceRow, checkMetaRow, checkNewEventRow, checkPasidRow, checkViommuRow, checkVmRow, type Where } from './row-check.ts';
import {
  DEFAULT_EVENT_RETENTION,
  type Applied, type EventRow, type Mutation, type NewEventRow, type PasidRow, type Store, type StoreStats, type StoredState, type VmRow,
} from './rows.ts';
import { validateStoredState } from './state-check.ts';
import { checkRetention } from './memory-store.ts';
import {
  DEFAULT_RETRY, kvOf, readRange, sleep, backoffMs, txn, withRetry,
  type Cmp, type Kv, type Op, type RetryPolicy,
} from './etcd-client.ts';
import { checkEtcdSecurityOptions, connectEtcd, type EtcdSecurityOptions } from './etcd-security.ts';
import { CommitQueue, type CommitBatch, type Reads } from './etcd-commit.ts';
import { EtcdMirror, type Staged } from './etcd-mirror.ts';
import {
  DomainKeys, SEQ_PER_REVISION, checkClusterName, decodeBinding, decodeBlock, decodeConfig, decodeDevice, decodeFence, decodeHost,
  decodeLogRecord, decodeMeta, decodePasid, decodeViommu, decodeVm, encodeBinding, encodeBlock, encodeConfig, encodeDevice,
  encodeFence, encodeHost, encodeLogRecord, encodeMeta, encodePasid, encodeToken, encodeViommu, encodeVm, jsonObject,
  numberedEvents, prefixEnd,
  type BlockRecord, type DomainConfig, type FenceRecord, type HostRecord, type LogPart, type ParsedKey, type VmPlacement,
  type VmRecord, type VmState,
} from './etcd-keys.ts';

export const DEFAULT_BLOCK_SIZE = 64;
export const DEFAULT_LEASE_TTL_SEC = 10;
/** Below etcd's default --max-txn-ops (128), leaving room for the compares every transaction has. */
export const DEFAULT_MAX_TXN_OPS = 120;
/** Journal records (transactions) the domain keeps. */
export const DEFAULT_LOG_RETENTION = 16_384;
/** Largest journal record of one transaction (etcd refuses requests above 1.5 MiB by default). */
const MAX_RECORD_CHARS = 1024 * 1024;

export type EtcdLogFn = (level: 'debug' | 'info' | 'warn' | 'error', message: string, details?: Record<string, unknown>) => void;

export interface EtcdStoreOptions {
  /** `HOST:PORT` of every etcd member. */
  readonly endpoints: readonly string[];
  /** As given to openStore (default built from the endpoints). */
  readonly spec?: string;
  /** TLS to every member (`etcds://`). */
  readonly tls?: boolean;
  /** CA, client certificate and key, etcd user and password file (etcd-security.ts). */
  readonly etcdSecurity?: EtcdSecurityOptions;
  /** This host's name in the domain (default: the machine's hostname). */
  readonly hostId?: string;
  /** The migration domain (default `default`). */
  readonly domain?: string;
  /** PASIDs per block, used when this host creates the domain (else the domain's own). */
  readonly blockSize?: number;
  readonly leaseTtlSec?: number;
  /** Deadline of each etcd call, ms (default 2000). */
  readonly callTimeoutMs?: number;
  readonly retry?: Partial<RetryPolicy>;
  readonly maxTxnOps?: number;
  /** Transactions in flight at once (default 4). */
  readonly maxInFlight?: number;
  /** Events `open()` returns at most (default 65,536, as the other stores keep). */
  readonly eventRetention?: number;
  /** Journal records (one per transaction) the domain keeps (default 16,384). */
  readonly logRetention?: number;
  readonly log?: EtcdLogFn;
  readonly now?: () => number;
}

/** One change of the domain as its journal record holds it, numbered (`onCommitted`). */
export interface CommittedPart {
  readonly revision: number;
  /** Sequence number of its first event (the next one when it has none). */
  readonly seq: number;
  readonly at: number;
  /** The host that committed it. */
  readonly host: string;
  readonly events: readonly EventRow[];
  readonly credentials: readonly { readonly vm: string; readonly tokenHash: string }[];
  readonly registers: readonly { readonly vm: string; readonly segment: number; readonly registers: string }[];
}

/**
 * Called in revision order with the changes of one revision that this host's model has not
 * applied itself: every change of other hosts, and this host's own changes made by the store
 * (a migration, a takeover, a reclaim) or by a plain `apply`.
 */
export type CommittedListener = (parts: readonly CommittedPart[]) => void;

export interface ReclaimReport {
  readonly host: string;
  /** Revision of the fence write. */
  readonly fencedAt: number;
  readonly vms: readonly string[];
  readonly pasids: number;
  readonly bindings: number;
  readonly blocks: number;
}

export interface EtcdStoreStats extends StoreStats {
  readonly txns: number;
  readonly refusedTxns: number;
  readonly retries: number;
  readonly watchEvents: number;
  readonly resyncs: number;
  readonly appliedRevision: number;
  /** Values from etcd this host could not read (0 unless something is wrong). */
  readonly unreadable: number;
}

/** Canonical order of the changes of one revision: leaves go before roots, roots come first. */
const DELETE_ORDER: readonly ParsedKey['kind'][] = ['binding', 'pasid', 'device', 'viommu', 'vm', 'token', 'pending', 'block', 'host', 'fence', 'meta', 'log', 'config'];
const PUT_ORDER: readonly ParsedKey['kind'][] = ['config', 'fence', 'host', 'vm', 'token', 'viommu', 'device', 'pasid', 'binding', 'block', 'meta', 'pending', 'log'];

interface WatchItem {
  readonly rev: number;
  readonly events: { readonly type: 'put' | 'delete'; readonly kv: Kv }[];
}

/** A batch of this host on its way to etcd. */
interface Planned extends CommitBatch {
  readonly nonce: string;
  /** Keys it writes, with the value each gets (null: deleted), fixed when it was staged. */
  readonly final: ReadonlyMap<string, string | null>;
  /** Its mirror changes (null: it changes no row, e.g. a block claim). */
  readonly staged: Staged | null;
  /** The host's model applies it itself (a journal commit): not handed to the listener. */
  readonly hostApplied: boolean;
  /** Set when an earlier batch it depended on failed: it fails too. */
  cancelled: unknown;
  /** Resolves the `commit` caller once the watch reached its revision. */
  onApplied?: (r: { seq: number; revision: number }) => void;
  /** VMs it changes. */
  readonly vmCount?: number;
  /** It destroys a VM (which may need more than one transaction). */
  readonly destroying?: Destroying;
  /** What the mirror learns when it commits (a store-level change: where a VM runs). */
  readonly onCommit?: () => void;
}

/** A VM a batch destroys: its row, and its state when the batch was staged. */
interface Destroying {
  readonly vm: string;
  readonly row: VmRow;
  readonly state: VmState;
}

const VIRTUAL = '\u0000vm:';

/** Destroys whose VM is marked `destroying` in etcd (they may have failed after that). */
const marked = new WeakSet<object>();
/** Batches taken back from the mirror (a batch is taken back once). */
const undone = new WeakSet<object>();

export class EtcdStore implements Store {
  readonly kind = 'etcd' as const;
  readonly spec: string;
  readonly hostId: string;
  readonly keys: DomainKeys;
  readonly endpoints: readonly string[];
  readonly #o: EtcdStoreOptions;
  readonly #policy: RetryPolicy;
  readonly #log: EtcdLogFn;
  readonly #now: () => number;
  readonly #eventRetention: number;
  readonly #logRetention: number;
  readonly #maxOps: number;
  readonly #incarnation = randomBytes(6).toString('hex');
  #nonceSeq = 0;
  #client: Etcd3 | null = null;
  #queue: CommitQueue | null = null;
  #open = false;
  #config: DomainConfig = { blockSize: DEFAULT_BLOCK_SIZE };
  #fenceRev = 0;
  #fenced: FenceRecord | null = null;
  #lease: Lease | null = null;
  #leaseId = '0';
  /** Seconds left on the lease at its last grant or keep-alive. */
  #leaseTtl: number | null = null;
  #url: string | null = null;
  #startedAt = 0;

  // The domain as this host knows it.
  #mirror: EtcdMirror;
  /** Mod revision of every key of the domain known here (absent: the key does not exist). */
  readonly #mods = new Map<string, number>();
  readonly #blocks = new Map<number, BlockRecord>();
  readonly #hosts = new Map<string, HostRecord>();
  readonly #fences = new Map<string, FenceRecord>();

  /** Keys of this host's batches not settled yet (count of batches). */
  readonly #pending = new Map<string, number>();
  /** Batches staged and not settled, in staging order (for the cascade of a failure). */
  #staged: Planned[] = [];
  #settleWaiters: (() => void)[] = [];
  /**
   * Revisions this host committed, with what waits for the watch to reach them, and whether their
   * journal record holds a part the host's model did not apply itself (for the listener).
   */
  readonly #own = new Map<number, { waiters: (() => void)[]; deliver: boolean; applied: Set<string> }>();
  /** Tail of `apply` calls: they settle in call order. */
  #applyTail: Promise<unknown> = Promise.resolve();

  #watcher: Watcher | null = null;
  #watchGen = 0;
  #watchFailures = 0;
  #incoming: WatchItem[] = [];
  #lastReceived = 0;
  #applied = 0;
  #lastCommitted = 0;
  #processing = false;
  #appliedWaiters: { rev: number; resolve: () => void }[] = [];
  #listener: CommittedListener | null = null;
  #leaseLoop: Promise<void> | null = null;
  #janitor: NodeJS.Timeout | null = null;
  #pruning = false;
  /** Transactions committed since the journal was last pruned. */
  #sincePrune = 0;

  #batches = 0;
  #failedBatches = 0;
  #watchEvents = 0;
  #resyncs = 0;
  #unreadable = 0;

  constructor(opts: EtcdStoreOptions) {
    if (!Array.isArray(opts.endpoints) || opts.endpoints.length === 0) throw new IoasidError('EINVAL', 'the etcd store needs at least one endpoint', {});
    this.#o = opts;
    this.endpoints = [...opts.endpoints];
    this.spec = opts.spec ?? `${opts.tls === true ? 'etcds' : 'etcd'}://${this.endpoints.join(',')}`;
    checkEtcdSecurityOptions(opts.tls === true, opts.etcdSecurity, this.spec);
    this.hostId = checkClusterName('host id', opts.hostId ?? sanitizeHost(hostname()));
    this.keys = new DomainKeys(opts.domain ?? 'default');
    this.#policy = { ...DEFAULT_RETRY, ...(opts.retry ?? {}) };
    this.#log = opts.log ?? (() => {});
    this.#now = opts.now ?? Date.now;
    this.#eventRetention = checkRetention(opts.eventRetention);
    this.#logRetention = checkRetention(opts.logRetention ?? DEFAULT_LOG_RETENTION);
    this.#maxOps = opts.maxTxnOps ?? DEFAULT_MAX_TXN_OPS;
    if (!Number.isInteger(this.#maxOps) || this.#maxOps < 8) throw new IoasidError('EINVAL', `maxTxnOps must be an integer of at least 8, got ${fmtId(this.#maxOps)}`, { maxTxnOps: this.#maxOps });
    const bs = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
    if (!Number.isInteger(bs) || bs < 1 || bs > 4096 || (bs & (bs - 1)) !== 0) throw new IoasidError('EINVAL', `block size must be a power of two in [1, 4096], got ${fmtId(bs)}`, { blockSize: bs });
    this.#mirror = new EtcdMirror(this.keys, this.hostId);
  }

  get domain(): string {
    return this.keys.domain;
  }

  get blockSize(): number {
    return this.#config.blockSize;
  }

  /** The fence this incarnation carries (mod revision of fences/<host> at start). */
  get fenceRevision(): number {
    return this.#fenceRev;
  }

  /** Set once this incarnation is fenced (by a restart elsewhere or an operator's reclaim). */
  get fenced(): FenceRecord | null {
    return this.#fenced;
  }

  get isOpen(): boolean {
    return this.#open;
  }

  /**
   * What this store knows of its own health without a round trip: its lease (kept alive, and
   * the seconds left on it at its last keep-alive) and whether its watch of the domain is up.
   */
  get health(): { readonly lease: { readonly held: boolean; readonly ttlSeconds: number | null }; readonly watching: boolean } {
    const held = this.#open && this.#lease !== null && this.#leaseLoop === null;
    return { lease: { held, ttlSeconds: this.#lease !== null ? this.#leaseTtl : null }, watching: this.#open && this.#watcher !== null };
  }

  /** Revision up to which the watch has applied the domain's changes. */
  get appliedRevision(): number {
    return this.#applied;
  }

  /** Highest revision this host committed at. */
  get committedRevision(): number {
    return this.#lastCommitted;
  }

  /** The etcd client (tests and the benchmark reuse it). */
  get client(): Etcd3 {
    if (this.#client === null) throw new IoasidError('ENODEV', 'the etcd store is not open', { spec: this.spec });
    return this.#client;
  }

  #nonce(): string {
    return `${this.hostId}.${this.#incarnation}.${(++this.#nonceSeq).toString(36)}`;
  }

  // ------------------------------------------------------------------ lifecycle

  async open(): Promise<StoredState> {
    if (this.#open) throw new IoasidError('EINVAL', `store ${this.spec} is already open`, { spec: this.spec });
    this.#reset();
    const client = await connectEtcd(this.endpoints, {
      tls: this.#o.tls === true, security: this.#o.etcdSecurity, spec: this.spec, policy: this.#policy, callTimeoutMs: this.#o.callTimeoutMs,
      probe: { prefix: this.keys.prefix, prefixEnd: prefixEnd(this.keys.prefix), writeKey: this.keys.sync(this.hostId) },
      warn: (m, d) => this.#log('warn', m, d),
    });
    this.#client = client;
    try {
      let seq = 0;
      this.#queue = new CommitQueue({
        exec: (c, o) => txn(client, c, o),
        fence: () => (this.#fenceRev > 0 ? { key: this.keys.fence(this.hostId), target: 'Mod', result: 'Equal', value: this.#fenceRev } : null),
        fenced: (reads) => this.#onFenced(reads.get(this.keys.fence(this.hostId))?.[0] ?? null),
        committed: (b, rev, s) => this.#committed(b as Planned, rev, s),
        sending: (keys) => this.#hold(keys),
        done: (keys) => this.#release(keys),
        record: {
          name: () => `${this.hostId}.${this.#incarnation}.${(++seq).toString(36)}`,
          key: (name) => this.keys.log(name),
          encode: (parts) => encodeLogRecord(this.hostId, parts),
        },
        policy: this.#policy,
        maxOps: this.#maxOps,
        maxRecordBytes: MAX_RECORD_CHARS,
        maxInFlight: this.#o.maxInFlight ?? 4,
        onRetry: (e, n) => this.#log('warn', `etcd transaction retry ${n}`, { error: String(e).slice(0, 200) }),
      });
      await this.#loadConfig();
      await this.#register();
      const { revision, events } = await this.#load();
      this.#open = true;
      this.#startWatch(revision + 1);
      // A destroy this host left half done (crash between its transactions) is finished first.
      for (const id of [...this.#mirror.vmIds()]) {
        const p = this.#mirror.placement(id);
        if (p?.host === this.hostId && p.state === 'destroying') events.push(...(await this.#finishDestroy(id)));
      }
      this.#janitor = setInterval(() => this.#pruneSoon(), 30_000);
      this.#janitor.unref();
      this.#pruneSoon();
      return this.#state(events);
    } catch (e) {
      this.#open = false;
      await this.#teardown();
      throw e;
    }
  }

  /** Forget what an earlier opening of this object knew (a store may be opened again). */
  #reset(): void {
    this.#mirror = new EtcdMirror(this.keys, this.hostId);
    for (const m of [this.#mods, this.#blocks, this.#hosts, this.#fences, this.#pending, this.#own]) m.clear();
    this.#staged = [];
    this.#incoming = [];
    this.#fenced = null;
    this.#fenceRev = 0;
    this.#applied = 0;
    this.#lastReceived = 0;
  }

  async #loadConfig(): Promise<void> {
    const client = this.client;
    const key = this.keys.config;
    const want = encodeConfig({ blockSize: this.#o.blockSize ?? DEFAULT_BLOCK_SIZE });
    const r = await withRetry('the domain config', this.#policy, () => txn(client, [{ key, target: 'Create', result: 'Equal', value: 0 }], [{ put: key, value: want }]));
    const raw = r.succeeded ? want : (r.reads.get(key)?.[0]?.value ?? want);
    this.#config = decodeConfig(raw, key);
  }

  /** Take over the host id (fence any earlier incarnation) and announce this one under a lease. */
  async #register(): Promise<void> {
    const client = this.client;
    this.#startedAt = this.#now();
    const leaseId = await this.#grantLease();
    const fenceKey = this.keys.fence(this.hostId);
    const r = await withRetry('the host registration', this.#policy, () => txn(client, [], [
      { put: fenceKey, value: encodeFence({ by: this.hostId, reason: 'start', at: this.#now(), nonce: this.#nonce() }) },
      { put: this.keys.host(this.hostId), value: this.#hostValue(), lease: leaseId },
    ]));
    this.#fenceRev = r.revision;
  }

  #hostValue(): string {
    return encodeHost({ url: this.#url, startedAt: this.#startedAt, pid: process.pid, nonce: this.#incarnation });
  }

  async #grantLease(): Promise<string> {
    const client = this.client;
    const ttl = this.#o.leaseTtlSec ?? DEFAULT_LEASE_TTL_SEC;
    return withRetry('a lease', this.#policy, async () => {
      const lease = client.lease(ttl);
      lease.on('lost', () => this.#leaseLost(lease));
      lease.on('keepaliveSucceeded', (res: { TTL?: string }) => {
        if (lease === this.#lease && res.TTL !== undefined) this.#leaseTtl = Number(res.TTL);
      });
      try {
        const id = await lease.grant();
        this.#lease = lease;
        this.#leaseId = id;
        this.#leaseTtl = ttl;
        return id;
      } catch (e) {
        lease.release();
        throw e;
      }
    });
  }

  #leaseLost(lease: Lease): void {
    if (lease !== this.#lease || !this.#open || this.#leaseLoop !== null) return;
    this.#log('warn', `lease of host ${this.hostId} lost; renewing (no PASID is freed by this)`, {});
    this.#leaseLoop = (async () => {
      for (let n = 1; this.#open && this.#fenced === null; n++) {
        try {
          const id = await this.#grantLease();
          const r = await txn(this.client, [{ key: this.keys.fence(this.hostId), target: 'Mod', result: 'Equal', value: this.#fenceRev }], [
            { put: this.keys.host(this.hostId), value: this.#hostValue(), lease: id },
          ]);
          if (!r.succeeded) this.#onFenced(r.reads.get(this.keys.fence(this.hostId))?.[0] ?? null);
          return;
        } catch (e) {
          this.#log('warn', 'lease renewal failed', { error: String(e).slice(0, 200), attempt: n });
          await sleep(backoffMs(this.#policy, Math.min(n, 6)));
        }
      }
    })().finally(() => {
      this.#leaseLoop = null;
    });
  }

  /** Publish this host's URL in its host key (for the error that points elsewhere). */
  async advertise(url: string): Promise<void> {
    this.#url = url;
    const r = await withRetry('the host key', this.#policy, () => txn(this.client, [{ key: this.keys.fence(this.hostId), target: 'Mod', result: 'Equal', value: this.#fenceRev }], [
      { put: this.keys.host(this.hostId), value: this.#hostValue(), lease: this.#leaseId },
    ]));
    if (!r.succeeded) throw this.#onFenced(r.reads.get(this.keys.fence(this.hostId))?.[0] ?? null);
    this.#hosts.set(this.hostId, decodeHost(this.#hostValue(), this.keys.host(this.hostId), this.hostId, this.#leaseId, r.revision));
  }

  /**
   * Read the whole domain at one revision into the mirror, validated as a stored state (a value
   * that breaks a rule refuses the start, naming its table); returns the revision and the events
   * of the journal records kept.
   */
  async #load(): Promise<{ revision: number; events: EventRow[] }> {
    const { kvs, revision } = await withRetry('the domain state', this.#policy, () => readRange(this.client, this.keys.prefix, prefixEnd(this.keys.prefix)));
    const raw = { vms: [] as unknown[], viommus: [] as unknown[], devices: [] as unknown[], pasids: [] as unknown[], bindings: [] as unknown[], meta: [] as unknown[] };
    const placement = new Map<string, VmPlacement>();
    const pasidHost = new Map<number, string>();
    const records: { mod: number; parts: LogPart[] }[] = [];
    for (const kv of kvs) {
      const p = this.keys.parse(kv.key);
      if (p === null) continue;
      this.#mods.set(kv.key, kv.mod);
      switch (p.kind) {
        case 'vm': {
          const v = decodeVm(kv.value, kv.key, p.vm);
          raw.vms.push(v.row);
          placement.set(p.vm, v.placement);
          break;
        }
        case 'viommu': raw.viommus.push(decodeViommu(kv.value, kv.key, p.vm, p.segment)); break;
        case 'device': raw.devices.push(decodeDevice(kv.value, kv.key, p.vm, p.bdf)); break;
        case 'pasid': {
          const x = decodePasid(kv.value, kv.key, p.pasid);
          raw.pasids.push(x.row);
          if (x.host !== null) pasidHost.set(p.pasid, x.host);
          break;
        }
        case 'binding': raw.bindings.push(decodeBinding(kv.value, kv.key, p.pasid, p.bdf)); break;
        case 'meta': raw.meta.push(decodeMeta(kv.value, kv.key, p.key)); break;
        case 'log': records.push({ mod: kv.mod, parts: decodeLogRecord(kv.value, kv.key).parts }); break;
        default: this.#record(p, kv);
      }
    }
    const events = eventsOf(records);
    const lastSeq = events.length > 0 ? (events[events.length - 1] as EventRow).seq : 0;
    const state = validateStoredState({ ...raw, events: events.slice(-this.#eventRetention), lastSeq });
    const m = this.#mirror;
    for (const v of state.vms) {
      m.setPlacement(v.id, placement.get(v.id) as VmPlacement);
      m.putVm(v);
    }
    for (const r of state.viommus) m.putViommu(r);
    for (const r of state.devices) m.putDevice(r);
    for (const r of state.pasids) m.insertPasid(r, r.vm === null ? (pasidHost.get(r.pasid) ?? null) : null);
    for (const r of state.bindings) m.putBinding(r);
    for (const r of state.meta) m.putMeta(r);
    this.#applied = revision;
    this.#lastReceived = revision;
    return { revision, events: [...state.events] };
  }

  /** The state `open()` returns: the mirror's rows (the whole domain) and the events kept. */
  #state(events: readonly EventRow[]): StoredState {
    const m = this.#mirror;
    const kept = [...events].sort((a, b) => a.seq - b.seq).slice(-this.#eventRetention);
    const lastSeq = kept.length > 0 ? (kept[kept.length - 1] as EventRow).seq : 0;
    return validateStoredState({
      vms: [...m.vmIds()].map((id) => m.getVm(id)),
      viommus: [...m.viommuRows()],
      devices: [...m.deviceRows()],
      pasids: [...m.pasidRows()],
      bindings: [...m.bindingRows()],
      meta: [...m.metaRows()],
      events: kept,
      lastSeq,
    });
  }

  async close(): Promise<void> {
    if (!this.#open) {
      await this.#teardown();
      return;
    }
    this.#open = false;
    this.#queue?.close();
    await Promise.race([this.#queue?.drained(), sleep(5000)]);
    await Promise.race([this.#applyTail, sleep(1000)]);
    // Clean exit: the host key goes now (its lease), everything else stays for the next start.
    const lease = this.#lease;
    this.#lease = null;
    if (lease !== null) await Promise.race([lease.revoke().catch(() => {}), sleep(2000)]);
    await this.#teardown();
  }

  async #teardown(): Promise<void> {
    this.#watchGen++;
    if (this.#janitor !== null) clearInterval(this.#janitor);
    this.#janitor = null;
    const w = this.#watcher;
    this.#watcher = null;
    if (w !== null) await Promise.race([w.cancel().catch(() => {}), sleep(500)]);
    this.#lease?.release();
    this.#lease = null;
    this.#client?.close();
    this.#client = null;
    // What committed is committed: callers waiting for the watch to reach it are answered.
    for (const rev of [...this.#own.keys()].sort((a, b) => a - b)) for (const w2 of this.#own.get(rev)?.waiters ?? []) w2();
    this.#own.clear();
    for (const w2 of this.#appliedWaiters.splice(0)) w2.resolve();
    for (const w2 of this.#settleWaiters.splice(0)) w2();
  }

  stats(): EtcdStoreStats {
    const q = this.#queue?.stats;
    return {
      batches: this.#batches,
      failedBatches: this.#failedBatches,
      commits: q?.txns ?? 0,
      txns: q?.txns ?? 0,
      refusedTxns: q?.refusedTxns ?? 0,
      retries: q?.retries ?? 0,
      watchEvents: this.#watchEvents,
      resyncs: this.#resyncs,
      appliedRevision: this.#applied,
      unreadable: this.#unreadable,
    };
  }

  // ------------------------------------------------------------------ the domain as known here

  /** Where a VM runs, as known here. */
  vm(id: string): VmRecord | undefined {
    const p = this.#mirror.placement(id);
    return p === undefined ? undefined : { id, host: p.host, state: p.state, mod: this.#mods.get(this.keys.vm(id)) ?? 0 };
  }

  vmRecords(): VmRecord[] {
    return [...this.#mirror.vmIds()].map((id) => this.vm(id) as VmRecord);
  }

  /** Does this host serve the VM (its host, active, not fenced)? */
  serves(id: string): boolean {
    const p = this.#mirror.placement(id);
    return p !== undefined && p.host === this.hostId && p.state === 'active' && this.#fenced === null;
  }

  hosts(): HostRecord[] {
    return [...this.#hosts.values()];
  }

  host(id: string): HostRecord | undefined {
    return this.#hosts.get(id);
  }

  fences(): FenceRecord[] {
    return [...this.#fences.values()];
  }

  blocks(): ReadonlyMap<number, BlockRecord> {
    return this.#blocks;
  }

  /** Every PASID row, as known here (whoever owns it). */
  pasidRows(): PasidRow[] {
    return [...this.#mirror.pasidRows()];
  }

  pasidCount(): number {
    return this.#mirror.pasidCount;
  }

  /** The host of a host-owned PASID, or null. */
  pasidHost(p: number): string | null {
    return this.#mirror.pasidHost(p);
  }

  /** The error a host gives for a VM it does not serve. */
  notServed(id: string): IoasidError {
    if (this.#fenced !== null) return this.#fencedError(this.#fenced);
    const p = this.#mirror.placement(id);
    if (p === undefined) return new IoasidError('ENOENT', `no VM ${fmtId(id)} in domain ${this.domain}`, { vm: id, domain: this.domain });
    if (p.state !== 'active') return new IoasidError('ENODEV', `VM ${id} is being destroyed by host ${p.host}`, { vm: id, state: p.state, host: p.host });
    const url = this.#hosts.get(p.host)?.url ?? null;
    return new IoasidError('EREMOTE', `VM ${id} runs on host ${p.host}${url !== null ? ` (${url})` : ''}, not on ${this.hostId}: send its requests there`, { vm: id, host: p.host, url, here: this.hostId });
  }

  /** A linearizable read of a VM key (quorum), with retries: where it runs, and the key's revision. */
  async readVm(id: string): Promise<VmRecord | null> {
    const key = this.keys.vm(id);
    const r = await withRetry('a VM key', this.#policy, () => this.client.kv.range({ key: Buffer.from(key) }));
    const k = r.kvs[0];
    if (k === undefined) return null;
    const kv = kvOf(k);
    const { placement } = decodeVm(kv.value, key, id);
    return { id, ...placement, mod: kv.mod };
  }

  /** Resolves once the watch has applied every change up to `rev` (ETIMEDOUT after `timeoutMs`). */
  waitApplied(rev: number, timeoutMs = 5000): Promise<void> {
    if (this.#applied >= rev || !this.#open) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const w = { rev, resolve: () => { clearTimeout(t); resolve(); } };
      const t = setTimeout(() => {
        this.#appliedWaiters = this.#appliedWaiters.filter((x) => x !== w);
        reject(new IoasidError('ETIMEDOUT', `the etcd watch did not reach revision ${rev} within ${timeoutMs} ms (at ${this.#applied})`, { revision: rev, applied: this.#applied }));
      }, timeoutMs);
      this.#appliedWaiters.push(w);
    });
  }

  /**
   * A revision of this domain after everything committed so far: writes `sync/<host>` (a key no
   * model reads). Every host that has applied it has applied all the domain's earlier changes.
   */
  async barrier(): Promise<number> {
    const key = this.keys.sync(this.hostId);
    const r = await withRetry('a barrier', this.#policy, () => this.client.kv.put({ key: Buffer.from(key), value: Buffer.from(String(this.#now())) }));
    return Number(r.header.revision);
  }

  /** Listen to the domain's changes this host's model did not apply itself (one listener). */
  onCommitted(listener: CommittedListener | null): void {
    this.#listener = listener;
  }

  // ------------------------------------------------------------------ apply and commit

  /** The Store contract: one batch, atomically; settles in call order. */
  apply(batch: readonly Mutation[]): Promise<Applied> {
    let work: Promise<Applied>;
    try {
      const planned = this.#plan(checkBatch(batch), false);
      work = this.#send(planned).then((r) => ({ seq: r.seq }));
    } catch (e) {
      this.#failedBatches++;
      work = Promise.reject(e);
    }
    // Handled here already (it is answered in call order, after the calls before it).
    work.catch(() => {});
    const settled = this.#applyTail.then(() => work, () => work);
    this.#applyTail = settled.catch(() => {});
    return settled;
  }

  /**
   * The cluster journal's commit: as `apply`, but the host's model applies the change itself (its
   * journal record is not handed to the listener), and it settles in revision order, once the
   * watch has brought every earlier change of the domain (rule 6).
   */
  commit(batch: readonly Mutation[]): Promise<{ seq: number; revision: number }> {
    let planned: Planned;
    try {
      planned = this.#plan(checkBatch(batch), true);
    } catch (e) {
      this.#failedBatches++;
      return Promise.reject(e);
    }
    return new Promise((resolve, reject) => {
      planned.onApplied = resolve;
      this.#send(planned).catch(reject);
    });
  }

  /** The VM a mutation changes (null: a host-owned PASID or a meta row). */
  #vmOf(m: Mutation): string | null {
    switch (m.op) {
      case 'putVm': return m.row.id;
      case 'setTokenHash': case 'setRegisters': case 'deleteViommu': case 'deleteDevice': return m.vm;
      case 'deleteVm': return m.id;
      case 'putViommu': case 'putDevice': case 'putBinding': case 'insertPasid': return m.row.vm;
      case 'deletePasid': return m.vm;
      case 'deleteBinding': return this.#mirror.getBinding(m.pasid, m.bdf)?.vm ?? null;
      case 'putMeta': case 'deleteMeta': case 'appendEvents': return null;
    }
  }

  /**
   * Check a batch against the mirror by the integrity rules and apply it there (rule 1), taking
   * the values its keys get; refuses what this host may not change (a VM it does not serve, a
   * PASID another host owns). Nothing is sent yet.
   */
  #plan(batch: readonly Mutation[], hostApplied: boolean): Planned {
    if (!this.#open) throw new IoasidError('EINVAL', `store ${this.spec} is not open`, { spec: this.spec });
    if (this.#fenced !== null) throw this.#fencedError(this.#fenced);
    const m = this.#mirror;
    const events: NewEventRow[] = [];
    const credentials: { vm: string; tokenHash: string }[] = [];
    const registers: { vm: string; segment: number; registers: string }[] = [];
    const vms = new Set<string>();
    const created = new Set<string>();
    // A VM being destroyed (a destroy resumed after a failure) may only be finished.
    const destroys = new Set(batch.flatMap((x) => (x.op === 'deleteVm' ? [x.id] : [])));
    let destroying: Destroying | undefined;
    m.begin();
    let staged: Staged;
    try {
      batch.forEach((x, i) => {
        if (x.op === 'appendEvents') {
          events.push(...x.events);
          return;
        }
        const vm = this.#vmOf(x);
        if (vm !== null) {
          const p = m.placement(vm);
          if (p !== undefined && (p.host !== this.hostId || (p.state !== 'active' && !destroys.has(vm)))) throw this.notServed(vm);
          if (x.op === 'putVm' && m.getVm(vm) === undefined) created.add(vm);
          if (x.op === 'deleteVm') {
            const row = m.getVm(vm);
            if (row !== undefined && p !== undefined) destroying = { vm, row, state: p.state };
          }
          vms.add(vm);
        } else if (x.op === 'deletePasid') {
          const h = m.pasidHost(x.pasid);
          if (h !== null && h !== this.hostId && m.getPasid(x.pasid)?.vm === null) {
            throw new IoasidError('ENODEV', `PASID ${fmtId(x.pasid)} is held by host ${h}, not by ${this.hostId}`, { pasid: x.pasid, host: h, index: i });
          }
        }
        const before = x.op === 'putVm' ? m.getVm(x.row.id)?.tokenHash : undefined;
        applyMutation(m, x, i);
        if (x.op === 'putVm' && before !== x.row.tokenHash) credentials.push({ vm: x.row.id, tokenHash: x.row.tokenHash });
        if (x.op === 'setTokenHash') credentials.push({ vm: x.vm, tokenHash: x.tokenHash });
        if (x.op === 'setRegisters') registers.push({ vm: x.vm, segment: x.segment, registers: x.registers });
        if (x.op === 'putViommu' && x.row.registers !== null) registers.push({ vm: x.row.vm, segment: x.row.segment, registers: x.row.registers });
      });
    } catch (e) {
      m.rollback(m.end());
      throw e;
    }
    staged = m.end();
    const nonce = this.#nonce();
    const final = new Map<string, string | null>();
    for (const k of staged.touched) final.set(k, this.#valueOf(k, nonce));
    const part = events.length > 0 || credentials.length > 0 || registers.length > 0
      ? JSON.stringify({
        n: nonce, at: events[0]?.at ?? this.#now(), events,
        ...(credentials.length > 0 ? { credentials } : {}), ...(registers.length > 0 ? { registers } : {}),
      } satisfies LogPart)
      : null;
    return this.#planned({ nonce, final, staged, part, events: events.length, hostApplied, vms, created, destroying });
  }

  /** The value a key gets from the mirror (null: the key goes). */
  #valueOf(key: string, nonce: string): string | null {
    const p = this.keys.parse(key);
    const m = this.#mirror;
    switch (p?.kind) {
      case 'vm': {
        const row = m.getVm(p.vm);
        const pl = m.placement(p.vm);
        return row === undefined || pl === undefined ? null : encodeVm(row, pl, nonce);
      }
      case 'token': {
        const vm = m.vmOfHash(p.hash);
        return vm === undefined ? null : encodeToken(vm, nonce);
      }
      case 'viommu': {
        const r = m.getViommu(p.vm, p.segment);
        return r === undefined ? null : encodeViommu(r);
      }
      case 'device': {
        const r = m.getDevice(p.vm, p.bdf);
        return r === undefined ? null : encodeDevice(r);
      }
      case 'pasid': {
        const r = m.getPasid(p.pasid);
        return r === undefined ? null : encodePasid(r, nonce, m.pasidHost(p.pasid));
      }
      case 'binding': {
        const r = m.getBinding(p.pasid, p.bdf);
        return r === undefined ? null : encodeBinding(r);
      }
      case 'meta': {
        const r = m.getMeta(p.key);
        return r === undefined ? null : encodeMeta(r.value);
      }
      default:
        throw new IoasidError('EINVAL', `the etcd store does not write key ${key} from rows`, { key });
    }
  }

  /** A staged batch as the commit queue takes it (rule 3's compares, built when it is sent). */
  #planned(o: {
    nonce: string; final: Map<string, string | null>; staged: Staged; part: string | null; events: number; hostApplied: boolean;
    vms: ReadonlySet<string>; created: ReadonlySet<string>; destroying: Destroying | undefined;
  }): Planned {
    const vmKeys = [...o.vms].map((v) => this.keys.vm(v));
    const keys = [...o.final.keys()];
    const planned: Planned = {
      nonce: o.nonce,
      final: o.final,
      staged: o.staged,
      hostApplied: o.hostApplied,
      cancelled: null,
      part: o.part,
      events: o.events,
      reads: [...keys, ...vmKeys],
      writes: [...keys, ...[...o.vms].map((v) => `${VIRTUAL}${v}`)],
      vmCount: o.vms.size,
      ...(o.destroying !== undefined ? { destroying: o.destroying } : {}),
      build: () => {
        if (planned.cancelled !== null) throw planned.cancelled;
        if (this.#fenced !== null) throw this.#fencedError(this.#fenced);
        const compares: Cmp[] = [];
        for (const vm of o.vms) {
          if (o.created.has(vm)) continue;
          // Still mine (a migration or a reclaim since the batch was staged refuses it).
          const p = this.#mirror.placement(vm);
          if (p !== undefined && p.host !== this.hostId) throw this.notServed(vm);
          if (!o.final.has(this.keys.vm(vm))) compares.push(this.#known(this.keys.vm(vm)));
        }
        for (const k of keys) if (this.keys.parse(k)?.kind !== 'meta') compares.push(this.#known(k));
        const ops: Op[] = keys.map((k) => {
          const v = o.final.get(k) as string | null;
          return v === null ? { del: k } : { put: k, value: v };
        });
        return { compares, ops };
      },
      recognise: (reads) => {
        for (const [k, v] of o.final) {
          if (v === null || !v.includes(`"n":"${o.nonce}"`)) continue;
          const kv = reads.get(k)?.[0];
          if (kv !== undefined && kv.value.includes(`"n":"${o.nonce}"`)) return kv.mod;
        }
        return null;
      },
      explain: (reads, failed) => this.#explain(reads, failed),
      failed: (err) => this.#cascade(planned, err),
    };
    return planned;
  }

  /** The compare "this key is as I know it": its mod revision, or absent. */
  #known(key: string): Cmp {
    const mod = this.#mods.get(key);
    return mod === undefined ? { key, target: 'Create', result: 'Equal', value: 0 } : { key, target: 'Mod', result: 'Equal', value: mod };
  }

  /** Send a planned batch (chunked when it is a destroy too big for one transaction). */
  #send(planned: Planned): Promise<{ seq: number; revision: number }> {
    this.#staged.push(planned);
    // Compares: one per key written and per VM, plus the fence and the record's.
    const d = planned.destroying;
    const big = d !== undefined && (d.state === 'destroying' || planned.final.size + (planned.vmCount ?? 0) + 3 > this.#maxOps);
    // (A destroy in chunks holds the keys of each of its transactions in turn.)
    if (!big) this.#hold(planned.writes);
    const work = big ? this.#destroyInChunks(planned, d) : (this.#queue as CommitQueue).submit(planned);
    return work.then((r) => {
      this.#batches++;
      this.#settle(planned, !big);
      return r;
    }, (e: unknown) => {
      this.#failedBatches++;
      if (big) {
        this.#cascade(planned, e);
        // Marked `destroying` in etcd: it stays so here too (nothing may be added; a DELETE resumes it).
        if (marked.has(planned) && d !== undefined && this.#mirror.getVm(d.vm) !== undefined) this.#mirror.setPlacement(d.vm, { host: this.hostId, state: 'destroying' });
      }
      this.#settle(planned, !big);
      throw e;
    });
  }

  /**
   * A batch failed: every later batch that touched one of its keys or VMs was staged on top of it
   * and fails too; all of them are taken back from the mirror, last staged first.
   */
  #cascade(planned: Planned, err: unknown): void {
    const i = this.#staged.indexOf(planned);
    if (i < 0 || planned.staged === null || undone.has(planned)) return;
    const tainted = new Set<string>(planned.writes);
    const victims: Planned[] = [];
    for (const later of this.#staged.slice(i + 1)) {
      if (later.cancelled !== null || !later.writes.some((k) => tainted.has(k))) continue;
      for (const k of later.writes) tainted.add(k);
      victims.push(later);
    }
    for (const v of victims.reverse()) {
      v.cancelled = new IoasidError('EAGAIN', `an earlier change it was made on failed (${err instanceof Error ? err.message : String(err)}); retry`, {});
      if (v.staged !== null) this.#mirror.rollback(v.staged);
      undone.add(v);
    }
    this.#mirror.rollback(planned.staged);
    undone.add(planned);
    planned.cancelled = err;
  }

  #settle(planned: Planned, held = true): void {
    const i = this.#staged.indexOf(planned);
    if (i >= 0) this.#staged.splice(i, 1);
    if (held) this.#release(planned.writes);
  }

  #hold(keys: readonly string[]): void {
    for (const k of keys) this.#pending.set(k, (this.#pending.get(k) ?? 0) + 1);
  }

  #release(keys: readonly string[]): void {
    for (const k of keys) {
      const n = (this.#pending.get(k) ?? 1) - 1;
      if (n <= 0) this.#pending.delete(k);
      else this.#pending.set(k, n);
    }
    // Changes held back for these keys go once the caller has undone a failed write.
    setImmediate(() => {
      for (const w of this.#settleWaiters.splice(0)) w();
    });
  }

  /** A batch committed (rule 4): the keys' revisions; the revision is this host's own. */
  #committed(b: Planned, rev: number, seq: number): void {
    if (rev > this.#lastCommitted) {
      this.#lastCommitted = rev;
      if (++this.#sincePrune >= 1024) {
        this.#sincePrune = 0;
        this.#pruneSoon();
      }
    }
    for (const [k, v] of b.final) {
      if (v === null) this.#mods.delete(k);
      else this.#mods.set(k, rev);
    }
    b.onCommit?.();
    let own = this.#own.get(rev);
    if (own === undefined) this.#own.set(rev, (own = { waiters: [], deliver: false, applied: new Set() }));
    if (b.part !== null && !b.hostApplied) own.deliver = true;
    if (b.hostApplied) own.applied.add(b.nonce);
    const done = b.onApplied;
    if (done !== undefined) {
      if (this.#applied >= rev) done({ seq, revision: rev });
      else own.waiters.push(() => done({ seq, revision: rev }));
    }
  }

  /** Why a compare failed, in the service's terms. */
  #explain(reads: Reads, failed: Cmp): IoasidError {
    const kv = reads.get(failed.key)?.[0];
    const p = this.keys.parse(failed.key);
    if (p?.kind === 'vm') {
      if (failed.target === 'Create') {
        const host = kv !== undefined ? safe(() => decodeVm(kv.value, failed.key, p.vm).placement.host) : null;
        return new IoasidError('EEXIST', `VM ${p.vm} exists${host !== null ? ` (on host ${host})` : ''}`, { vm: p.vm, host });
      }
      if (kv === undefined) return new IoasidError('ENODEV', `VM ${p.vm} no longer exists (destroyed or reclaimed)`, { vm: p.vm });
      const rec = safe(() => decodeVm(kv.value, failed.key, p.vm).placement);
      if (rec !== null && rec.host !== this.hostId) {
        const url = this.#hosts.get(rec.host)?.url ?? null;
        return new IoasidError('EREMOTE', `VM ${p.vm} has migrated to host ${rec.host}${url !== null ? ` (${url})` : ''}: send its requests there`, { vm: p.vm, host: rec.host, url, here: this.hostId });
      }
      if (rec !== null && rec.state !== 'active') return new IoasidError('ENODEV', `VM ${p.vm} is being destroyed`, { vm: p.vm, state: rec.state });
      return new IoasidError('EAGAIN', `VM ${p.vm} changed while this request was in flight; retry`, { vm: p.vm });
    }
    if (p?.kind === 'pasid') {
      const owner = kv !== undefined ? safe(() => decodePasid(kv.value, failed.key, p.pasid).row.vm as string | null) : null;
      return new IoasidError('EEXIST', `PASID ${fmtId(p.pasid)} was taken by ${owner === null ? 'another host' : `VM ${owner}`} first`, { pasid: p.pasid, owner, conflict: true });
    }
    if (p?.kind === 'token') return new IoasidError('EEXIST', 'the token hash is already another VM\'s', { conflict: true });
    if (p?.kind === 'block') {
      const host = kv !== undefined ? safe(() => decodeBlock(kv.value, failed.key, p.start, kv.mod).host) : null;
      return new IoasidError('EAGAIN', `block ${fmtId(p.start)} is ${host === null ? 'no longer ours' : `held by host ${host}`}`, { block: p.start, host, conflict: true });
    }
    if (p?.kind === 'host') return new IoasidError('ENODEV', `host ${p.host} is not alive (no lease)`, { host: p.host });
    return new IoasidError('EAGAIN', `etcd key ${failed.key} changed concurrently; retry`, { key: failed.key });
  }

  #fencedError(f: FenceRecord): IoasidError {
    return new IoasidError('ENODEV', `host ${this.hostId} was fenced (${f.reason} by ${f.by} at revision ${f.mod}): this incarnation may no longer change the domain; restart it to rejoin`, { host: this.hostId, by: f.by, reason: f.reason, revision: f.mod });
  }

  #onFenced(kv: Kv | null): IoasidError {
    const key = this.keys.fence(this.hostId);
    const f = kv !== null ? safe(() => decodeFence(kv.value, key, this.hostId, kv.mod)) : null;
    if (this.#fenced === null) {
      this.#fenced = f ?? { host: this.hostId, by: 'unknown', reason: 'fence key removed', at: this.#now(), mod: kv?.mod ?? 0, nonce: '' };
      this.#log('error', `host ${this.hostId} is fenced`, { by: this.#fenced.by, reason: this.#fenced.reason });
    }
    return this.#fencedError(this.#fenced);
  }

  // ------------------------------------------------------------------ store-level operations

  /**
   * A batch of this host's own making (no rows: blocks, placements, a journal part of the
   * store's). `hostApplied` false: its part reaches the listener on every host, this one too.
   */
  #op(o: {
    compares: () => Cmp[];
    final: Map<string, string | null>;
    part?: { events: readonly NewEventRow[]; at: number } | null;
    explain?: (reads: Reads, failed: Cmp) => IoasidError | null;
    reads?: readonly string[];
    vms?: readonly string[];
    follow?: boolean;
    onCommit?: () => void;
    /** The part is a change the host's model applies itself (not handed to the listener). */
    hostApplied?: { readonly nonce: string };
  }): Promise<{ seq: number; revision: number }> {
    if (this.#client === null) return Promise.reject(new IoasidError('EINVAL', `store ${this.spec} is not open`, { spec: this.spec }));
    if (this.#fenced !== null) return Promise.reject(this.#fencedError(this.#fenced));
    const nonce = o.hostApplied?.nonce ?? this.#nonce();
    const keys = [...o.final.keys()];
    const part = o.part === undefined || o.part === null ? null : JSON.stringify({ n: nonce, at: o.part.at, events: o.part.events } satisfies LogPart);
    const planned: Planned = {
      nonce, final: o.final, staged: null, hostApplied: o.hostApplied !== undefined, cancelled: null, part, events: o.part?.events.length ?? 0,
      reads: [...keys, ...(o.reads ?? [])],
      writes: [...keys, ...(o.vms ?? []).map((v) => `${VIRTUAL}${v}`)],
      ...(o.onCommit !== undefined ? { onCommit: o.onCommit } : {}),
      build: () => {
        if (this.#fenced !== null) throw this.#fencedError(this.#fenced);
        return { compares: o.compares(), ops: keys.map((k) => { const v = o.final.get(k) as string | null; return v === null ? { del: k } : { put: k, value: v }; }) };
      },
      recognise: (reads) => {
        for (const [k, v] of o.final) {
          if (v === null || !v.includes(`"n":"${nonce}"`)) continue;
          const kv = reads.get(k)?.[0];
          if (kv !== undefined && kv.value.includes(`"n":"${nonce}"`)) return kv.mod;
        }
        return null;
      },
      explain: (reads, failed) => o.explain?.(reads, failed) ?? this.#explain(reads, failed),
    };
    this.#hold(planned.writes);
    let applied: Promise<{ seq: number; revision: number }> | null = null;
    if (o.follow === true) applied = new Promise((resolve) => { planned.onApplied = resolve; });
    // Its keys are held until it settles, not until the watch brings it (which waits for them).
    const settled = (this.#queue as CommitQueue).submit(planned).finally(() => this.#release(planned.writes));
    return applied === null ? settled : settled.then(() => applied);
  }

  /**
   * Live migration: one transaction moves the VM key to `to`, with the migration's journal part
   * (`events`, e.g. a vm-migrated event). Its rows follow (they name the VM, not the host).
   * Compares: this host's fence, the VM key (still mine, unchanged), and the destination's host
   * key (alive). Settles once the watch has brought it back (every host then publishes it alike).
   */
  async migrate(vm: string, to: string, events: readonly NewEventRow[]): Promise<number> {
    checkClusterName('destination host', to);
    if (this.#fenced !== null) throw this.#fencedError(this.#fenced);
    if (!this.serves(vm)) throw this.notServed(vm);
    if (to === this.hostId) throw new IoasidError('EINVAL', `VM ${vm} already runs on host ${to}`, { vm, to });
    return this.#move(vm, this.hostId, to, events, { key: this.keys.host(to), target: 'Create', result: 'Greater', value: 0 }, (reads, failed) => (failed.key === this.keys.host(to) ? new IoasidError('ENODEV', `host ${to} is not alive in domain ${this.domain} (no host key: never started, stopped, or its lease expired)`, { host: to }) : null));
  }

  /**
   * Reclaim: take over a VM of a fenced host (`from`), so that this host can destroy it by the
   * host's rules. Compares the VM key (still `from`'s, unchanged) and `from`'s fence (`fencedAt`).
   */
  async takeOver(vm: string, from: string, fencedAt: number, events: readonly NewEventRow[]): Promise<number> {
    const p = this.#mirror.placement(vm);
    if (p === undefined) throw new IoasidError('ENOENT', `no VM ${fmtId(vm)} in domain ${this.domain}`, { vm });
    if (p.host !== from) throw new IoasidError('ENODEV', `VM ${vm} runs on host ${p.host}, not on ${from}`, { vm, host: p.host });
    const fence = this.keys.fence(from);
    return this.#move(vm, from, this.hostId, events, { key: fence, target: 'Mod', result: 'Equal', value: fencedAt }, (reads, failed) => (failed.key === fence ? new IoasidError('EAGAIN', `host ${from} was fenced again meanwhile`, { host: from }) : null));
  }

  async #move(vm: string, from: string, to: string, events: readonly NewEventRow[], extra: Cmp, explain: (reads: Reads, failed: Cmp) => IoasidError | null): Promise<number> {
    const row = this.#mirror.getVm(vm);
    const p = this.#mirror.placement(vm);
    if (row === undefined || p === undefined) throw this.notServed(vm);
    const key = this.keys.vm(vm);
    const nonceHolder = this.#nonce();
    const final = new Map<string, string | null>([[key, encodeVm(row, { host: to, state: 'active' }, nonceHolder)]]);
    const r = await this.#op({
      final,
      reads: [extra.key],
      vms: [vm],
      compares: () => {
        const now = this.#mirror.placement(vm);
        if (now === undefined || now.host !== from) throw now === undefined ? this.notServed(vm) : new IoasidError('ENODEV', `VM ${vm} runs on host ${now.host}`, { vm, host: now.host });
        return [this.#known(key), extra];
      },
      part: { events, at: events[0]?.at ?? this.#now() },
      explain,
      onCommit: () => this.#mirror.setPlacement(vm, { host: to, state: 'active' }),
      follow: true,
    });
    return r.revision;
  }

  /** Claim a block of PASIDs for this host (create-if-absent); EAGAIN if another host has it. */
  async claimBlock(start: number): Promise<number> {
    this.#checkBlock(start);
    const key = this.keys.block(start);
    const nonce = this.#nonce();
    const value = encodeBlock(this.hostId, nonce);
    const r = await this.#op({ final: new Map([[key, value]]), compares: () => [{ key, target: 'Create', result: 'Equal', value: 0 }] });
    this.#blocks.set(start, { block: start, host: this.hostId, mod: r.revision, nonce });
    return r.revision;
  }

  /** Return an empty block of this host; EBUSY if a PASID of it exists in etcd. */
  async releaseBlock(start: number): Promise<number> {
    this.#checkBlock(start);
    const key = this.keys.block(start);
    const rec = this.#blocks.get(start);
    if (rec === undefined || rec.host !== this.hostId) throw new IoasidError('ENOENT', `block ${fmtId(start)} is not held by host ${this.hostId}`, { block: start });
    const range = this.keys.pasidRange(start, this.blockSize);
    const r = await this.#op({
      final: new Map([[key, null]]),
      compares: () => [{ key, target: 'Mod', result: 'Equal', value: rec.mod }, { key: range.key, rangeEnd: range.end, target: 'Create', result: 'Equal', value: 0 }],
      explain: (reads, failed) => (failed.rangeEnd !== undefined ? new IoasidError('EBUSY', `block ${fmtId(start)} still holds PASIDs`, { block: start }) : null),
    });
    if (this.#blocks.get(start) === rec) this.#blocks.delete(start);
    return r.revision;
  }

  #checkBlock(start: number): void {
    if (!Number.isInteger(start) || start < 0 || start > PASID_MAX || start % this.blockSize !== 0) {
      throw new IoasidError('EINVAL', `${fmtId(start)} is not the start of a block of ${this.blockSize}`, { block: start });
    }
  }

  /**
   * Fence a dead host (an operator's reclaim): from the returned revision on, nothing its
   * incarnation sends commits. Refused (EBUSY) while its lease is alive, unless `force`, which
   * revokes the lease (the operator asserts the host is dead).
   */
  async fenceHost(host: string, opts: { force?: boolean } = {}): Promise<number> {
    checkClusterName('host id', host);
    if (host === this.hostId) throw new IoasidError('EINVAL', `host ${host} cannot reclaim itself`, { host });
    if (this.#fenced !== null) throw this.#fencedError(this.#fenced);
    const client = this.client;
    const hostKey = this.keys.host(host);
    const live = await withRetry('a host key', this.#policy, () => client.kv.range({ key: Buffer.from(hostKey) }));
    const lk = live.kvs[0];
    if (lk !== undefined) {
      if (opts.force !== true) {
        throw new IoasidError('EBUSY', `host ${host} is alive (its lease ${String(lk.lease)} is kept alive): stop it, wait for its lease to expire, or reclaim with force`, { host, lease: String(lk.lease) });
      }
      await withRetry('a lease revoke', this.#policy, () => client.leaseClient.leaseRevoke({ ID: lk.lease })).catch((e: unknown) => {
        if (!/not found/i.test(String(e))) throw e;
      });
    }
    const fenceKey = this.keys.fence(host);
    const nonce = this.#nonce();
    const r = await this.#op({
      final: new Map([[fenceKey, encodeFence({ by: this.hostId, reason: 'reclaim', at: this.#now(), nonce })]]),
      compares: () => [{ key: hostKey, target: 'Create', result: 'Equal', value: 0 }],
      explain: (reads, failed) => (failed.key === hostKey ? new IoasidError('EBUSY', `host ${host} came back alive during the reclaim`, { host }) : null),
      follow: true,
    });
    return r.revision;
  }

  /** Free PASIDs a fenced host owned itself (no VM), with the journal part that announces it. */
  async freeHostPasids(pasids: readonly number[], events: readonly NewEventRow[]): Promise<void> {
    const room = this.#maxOps - 8;
    for (let i = 0; i < pasids.length; i += room) {
      const chunk = pasids.slice(i, i + room);
      const last = i + room >= pasids.length;
      await this.#op({
        final: new Map(chunk.map((p) => [this.keys.pasid(p), null])),
        compares: () => chunk.map((p) => this.#known(this.keys.pasid(p))),
        ...(last ? { part: { events, at: events[0]?.at ?? this.#now() } } : {}),
        follow: true,
      });
    }
  }

  /** Delete the blocks a fenced host held; returns how many. */
  async releaseBlocksOf(host: string): Promise<number> {
    const mine = [...this.#blocks.values()].filter((b) => b.host === host);
    const room = this.#maxOps - 8;
    for (let i = 0; i < mine.length; i += room) {
      const chunk = mine.slice(i, i + room);
      await this.#op({
        final: new Map(chunk.map((b) => [this.keys.block(b.block), null])),
        compares: () => chunk.map((b) => ({ key: this.keys.block(b.block), target: 'Mod', result: 'Equal', value: b.mod }) as Cmp),
      }).catch((e: unknown) => {
        if (!isIoasidError(e, 'EAGAIN')) throw e;
      });
      for (const b of chunk) if (this.#blocks.get(b.block) === b) this.#blocks.delete(b.block);
    }
    return mine.length;
  }

  // ------------------------------------------------------------------ destroy in chunks

  /**
   * A destroy too big for one transaction: the VM is marked `destroying` with its journal part
   * kept in `pending/<vm>` (from then on nobody can add to it, and nobody serves it), its keys
   * are deleted in chunks, and the last transaction deletes the VM key and writes the journal
   * record. A crash in between leaves it `destroying`: this host finishes it when it starts again.
   */
  async #destroyInChunks(planned: Planned, d: Destroying): Promise<{ seq: number; revision: number }> {
    const vmKey = this.keys.vm(d.vm);
    const pendingKey = this.keys.pending(d.vm);
    if (d.state !== 'destroying') {
      const nonce = this.#nonce();
      await this.#op({
        final: new Map<string, string | null>([
          [vmKey, encodeVm(d.row, { host: this.hostId, state: 'destroying' }, nonce)],
          [pendingKey, planned.part ?? JSON.stringify({ n: planned.nonce, at: this.#now(), events: [] } satisfies LogPart)],
        ]),
        compares: () => [this.#known(vmKey)],
        vms: [d.vm],
      });
    }
    marked.add(planned);
    const rest = [...planned.final.keys()].filter((k) => k !== vmKey && k !== this.keys.token(d.row.tokenHash));
    const r = await this.#finishChunks(d.vm, d.row.tokenHash, rest, planned.part, planned.hostApplied ? planned.nonce : null);
    // The last transaction's record holds the destroy's events, numbered from its revision.
    planned.onApplied?.(r);
    return r;
  }

  /** Delete a `destroying` VM's keys in chunks, then its key, with the destroy's journal part. */
  async #finishChunks(vm: string, tokenHash: string, keys: readonly string[], part: string | null, hostApplied: string | null): Promise<{ seq: number; revision: number }> {
    const vmKey = this.keys.vm(vm);
    const room = this.#maxOps - 8;
    for (let i = 0; i < keys.length; i += room) {
      const chunk = keys.slice(i, i + room);
      await this.#op({ final: new Map(chunk.map((k) => [k, null])), compares: () => [this.#known(vmKey)], vms: [vm] });
    }
    const parsed = part === null ? null : (JSON.parse(part) as LogPart);
    return this.#op({
      final: new Map<string, string | null>([[vmKey, null], [this.keys.token(tokenHash), null], [this.keys.pending(vm), null]]),
      compares: () => [this.#known(vmKey)],
      vms: [vm],
      ...(parsed !== null ? { part: { events: parsed.events, at: parsed.at } } : {}),
      ...(hostApplied !== null ? { hostApplied: { nonce: hostApplied } } : {}),
      follow: true,
    });
  }

  /** At start: finish a destroy this host left half done; returns the events it committed. */
  async #finishDestroy(vm: string): Promise<EventRow[]> {
    const row = this.#mirror.getVm(vm);
    if (row === undefined) return [];
    const pendingKey = this.keys.pending(vm);
    const r = await withRetry('a pending destroy', this.#policy, () => this.client.kv.range({ key: Buffer.from(pendingKey) }));
    const raw = r.kvs[0]?.value.toString() ?? null;
    const part = raw === null ? null : safe(() => JSON.stringify(jsonObject(raw, pendingKey)));
    const m = this.#mirror;
    const bindings = [...m.bindingRows()].filter((b) => b.vm === vm);
    const pasids = [...m.pasidRows()].filter((p) => p.vm === vm);
    const devices = [...m.deviceRows()].filter((x) => x.vm === vm);
    const viommus = [...m.viommuRows()].filter((x) => x.vm === vm);
    const keys = [
      ...bindings.map((b) => this.keys.binding(b.pasid, b.bdf)),
      ...pasids.map((p) => this.keys.pasid(p.pasid)),
      ...devices.map((x) => this.keys.device(x.vm, x.bdf)),
      ...viommus.map((x) => this.keys.viommu(x.vm, x.segment)),
    ];
    // The model is rebuilt without the VM: the destroy's record is this host's own (not replayed).
    const done = await this.#finishChunks(vm, row.tokenHash, keys, part, part === null ? null : (JSON.parse(part) as LogPart).n);
    for (const b of bindings) m.deleteBinding(b.pasid, b.bdf);
    for (const p of pasids) m.deletePasid(p.pasid);
    for (const x of devices) m.deleteDevice(x.vm, x.bdf);
    for (const x of viommus) m.deleteViommu(x.vm, x.segment);
    m.deleteVm(vm);
    this.#log('info', `finished destroying VM ${vm} (left half done by an earlier incarnation)`, { vm });
    return part === null ? [] : numberedEvents(JSON.parse(part) as LogPart, done.seq);
  }

  // ------------------------------------------------------------------ the journal's retention

  #pruneSoon(): void {
    if (this.#pruning) return;
    this.#pruning = true;
    void this.pruneJournal()
      .catch((e: unknown) => {
        if (this.#open) this.#log('warn', 'pruning the journal failed', { error: String(e).slice(0, 200) });
      })
      .finally(() => {
        this.#pruning = false;
      });
  }

  /**
   * Delete the oldest journal records beyond the retention (rule 4), once they exceed it by a
   * sixteenth (at least 16); returns how many went. Every host runs it at start, every 30 s and
   * every 1,024 of its transactions; running it twice at once deletes the same records.
   */
  async pruneJournal(): Promise<number> {
    if (!this.#open) return 0;
    const client = this.client;
    const end = prefixEnd(this.keys.logs);
    const count = await client.kv.range({ key: Buffer.from(this.keys.logs), range_end: Buffer.from(end), count_only: true });
    const excess = Number(count.count) - this.#logRetention;
    if (excess <= Math.max(16, this.#logRetention >> 4)) return 0;
    // The oldest by creation revision (names are not ordered across hosts).
    const old = await client.kv.range({ key: Buffer.from(this.keys.logs), range_end: Buffer.from(end), keys_only: true, sort_target: 'Create', sort_order: 'Ascend', limit: excess });
    const keys = old.kvs.map((k) => k.key.toString());
    for (let i = 0; i < keys.length; i += this.#maxOps) {
      await withRetry('pruning the journal', this.#policy, () => txn(client, [], keys.slice(i, i + this.#maxOps).map((k) => ({ del: k }))));
    }
    return keys.length;
  }

  // ------------------------------------------------------------------ the watch

  #startWatch(from: number): void {
    const gen = ++this.#watchGen;
    const w = this.client.watch().prefix(this.keys.prefix).startRevision(String(from)).watcher();
    this.#watcher = w;
    w.on('data', (res: IWatchResponse) => {
      if (gen !== this.#watchGen) return;
      this.#watchFailures = 0;
      this.#received(res);
    });
    w.on('disconnected', () => {
      if (gen !== this.#watchGen || !this.#open) return;
      // Resume from what this host has received, not from the client's idea of it.
      this.#watchGen++;
      this.#watcher = null;
      void w.cancel().catch(() => {});
      const wait = backoffMs(this.#policy, Math.min(++this.#watchFailures, 6));
      setTimeout(() => {
        if (this.#open && this.#watcher === null) this.#startWatch(this.#lastReceived + 1);
      }, wait);
    });
    w.on('error', (e: unknown) => {
      if (gen !== this.#watchGen || !this.#open) return;
      this.#log('warn', 'etcd watch cancelled; reading the domain again', { error: String(e).slice(0, 200) });
      this.#watchGen++;
      this.#watcher = null;
      void w.cancel().catch(() => {});
      void this.#resync();
    });
  }

  #received(res: IWatchResponse): void {
    for (const ev of res.events) {
      const kv = kvOf(ev.kv);
      if (kv.mod <= this.#lastReceived) continue;
      this.#watchEvents++;
      const last = this.#incoming[this.#incoming.length - 1];
      const item = last !== undefined && last.rev === kv.mod ? last : null;
      const e = { type: ev.type === 'Delete' ? ('delete' as const) : ('put' as const), kv };
      if (item !== null) item.events.push(e);
      else this.#incoming.push({ rev: kv.mod, events: [e] });
    }
    // One response holds whole revisions, in order.
    const top = this.#incoming[this.#incoming.length - 1];
    if (top !== undefined && top.rev > this.#lastReceived) this.#lastReceived = top.rev;
    this.#kick();
  }

  #kick(): void {
    if (this.#processing || this.#incoming.length === 0) return;
    this.#processing = true;
    void this.#process().finally(() => {
      this.#processing = false;
      if (this.#incoming.length > 0) this.#kick();
    });
  }

  async #process(): Promise<void> {
    while (this.#incoming.length > 0 && this.#client !== null) {
      const head = this.#incoming[0] as WatchItem;
      if (head.events.some((e) => this.#pending.has(e.kv.key))) {
        // A key this host is writing: wait until that write settles (and is undone if it failed).
        await new Promise<void>((r) => this.#settleWaiters.push(r));
        continue;
      }
      if (this.#incoming[0] !== head) continue; // a resync replaced the queue meanwhile
      this.#incoming.shift();
      const own = this.#own.get(head.rev);
      if (own !== undefined) {
        // This host's own transaction: the mirror has it. The store's own changes (a migration,
        // a reclaim) and plain `apply`s go to the listener; then its callers go on, in order.
        this.#own.delete(head.rev);
        const parts = own.deliver ? this.#ownRevision(head, own.applied) : this.#ownRevision(head, null);
        this.#advance(head.rev);
        if (parts.length > 0) this.#deliver(parts);
        for (const w of own.waiters) w();
        // Let them apply and publish it before anything later is applied (rule 6).
        if (own.waiters.length > 0) await new Promise<void>((r) => setImmediate(r));
        continue;
      }
      const parts = this.#foreign(head);
      this.#advance(head.rev);
      if (parts.length > 0) this.#deliver(parts);
    }
  }

  /** An own revision: the cluster records it changed, and its journal parts for the listener. */
  #ownRevision(item: WatchItem, applied: ReadonlySet<string> | null): CommittedPart[] {
    const parts: CommittedPart[] = [];
    for (const e of item.events) {
      const p = this.keys.parse(e.kv.key);
      if (p === null) continue;
      try {
        if (p.kind === 'log' && e.type === 'put' && applied !== null) parts.push(...this.#parts(e.kv, item.rev, applied));
        else if (p.kind === 'block' || p.kind === 'host' || p.kind === 'fence') {
          if (e.type === 'put') this.#record(p, e.kv);
          else this.#forget(p);
        }
      } catch (err) {
        this.#unreadable++;
        this.#log('error', `etcd key ${e.kv.key} holds a value this host cannot apply; ignored`, { error: String(err).slice(0, 300) });
      }
    }
    return parts;
  }

  #deliver(parts: readonly CommittedPart[]): void {
    const l = this.#listener;
    if (l === null) return;
    try {
      l(parts);
    } catch (e) {
      this.#log('error', `applying the changes of revision ${parts[0]?.revision} failed`, { error: String(e) });
    }
  }

  /** Apply a revision made elsewhere to the mirror; returns its journal parts for the listener. */
  #foreign(item: WatchItem): CommittedPart[] {
    const changes = item.events
      .map((e) => ({ e, p: this.keys.parse(e.kv.key) }))
      .filter((x): x is { e: WatchItem['events'][number]; p: ParsedKey } => x.p !== null)
      .sort((a, b) => rankOf(a.e.type, a.p.kind) - rankOf(b.e.type, b.p.kind));
    const parts: CommittedPart[] = [];
    for (const { e, p } of changes) {
      const kv = e.kv;
      try {
        if (e.type === 'delete') {
          this.#mods.delete(kv.key);
          this.#forget(p);
        } else {
          this.#mods.set(kv.key, kv.mod);
          if (p.kind === 'log') parts.push(...this.#parts(kv, item.rev));
          else this.#take(p, kv);
        }
      } catch (err) {
        this.#unreadable++;
        this.#log('error', `etcd key ${kv.key} holds a value this host cannot apply; ignored`, { error: String(err).slice(0, 300) });
      }
    }
    return parts;
  }

  /** The parts of a journal record for the listener (those the host applied itself left out). */
  #parts(kv: Kv, rev: number, applied?: ReadonlySet<string>): CommittedPart[] {
    const rec = decodeLogRecord(kv.value, kv.key);
    const out: CommittedPart[] = [];
    let offset = 0;
    for (const part of rec.parts) {
      const seq = rev * SEQ_PER_REVISION + offset;
      offset += part.events.length;
      if (applied?.has(part.n) === true) continue;
      const where = (i: number): Where => ({ label: `journal record ${kv.key} event ${i}`, details: { key: kv.key } });
      const events = part.events.map((ev, i) => Object.freeze({ seq: seq + i, ...checkNewEventRow(ev, where(i)) }));
      out.push({
        revision: rev, seq, at: typeof part.at === 'number' ? part.at : 0, host: rec.host, events,
        credentials: Array.isArray(part.credentials) ? part.credentials : [],
        registers: Array.isArray(part.registers) ? part.registers : [],
      });
    }
    return out;
  }

  /** A key put elsewhere, into the mirror. */
  #take(p: ParsedKey, kv: Kv): void {
    const m = this.#mirror;
    const where: Where = { label: `etcd key ${kv.key}`, details: { key: kv.key } };
    switch (p.kind) {
      case 'vm': {
        const v = decodeVm(kv.value, kv.key, p.vm);
        const row = checkVmRow(v.row, where);
        m.setPlacement(p.vm, v.placement);
        m.putVm(row);
        return;
      }
      case 'viommu': m.putViommu(checkViommuRow(decodeViommu(kv.value, kv.key, p.vm, p.segment), where)); return;
      case 'device': m.putDevice(checkDeviceRow(decodeDevice(kv.value, kv.key, p.vm, p.bdf), where)); return;
      case 'pasid': {
        const x = decodePasid(kv.value, kv.key, p.pasid);
        const row = checkPasidRow(x.row, where);
        m.deletePasid(p.pasid);
        m.insertPasid(row, x.host);
        return;
      }
      case 'binding': m.putBinding(checkBindingRow(decodeBinding(kv.value, kv.key, p.pasid, p.bdf), where)); return;
      case 'meta': m.putMeta(checkMetaRow(decodeMeta(kv.value, kv.key, p.key), where)); return;
      default: this.#record(p, kv);
    }
  }

  /** A key deleted elsewhere, out of the mirror. */
  #forget(p: ParsedKey): void {
    const m = this.#mirror;
    switch (p.kind) {
      case 'vm': m.deleteVm(p.vm); return;
      case 'viommu': m.deleteViommu(p.vm, p.segment); return;
      case 'device': m.deleteDevice(p.vm, p.bdf); return;
      case 'pasid': m.deletePasid(p.pasid); return;
      case 'binding': m.deleteBinding(p.pasid, p.bdf); return;
      case 'meta': m.deleteMeta(p.key); return;
      case 'block': this.#blocks.delete(p.start); return;
      case 'host': this.#hosts.delete(p.host); return;
      case 'fence':
        this.#fences.delete(p.host);
        if (p.host === this.hostId && this.#fenceRev > 0 && this.#fenced === null) this.#onFenced(null);
        return;
      default: return;
    }
  }

  /** The cluster's own records: blocks, hosts, fences (config is read once, at start). */
  #record(p: ParsedKey, kv: Kv): void {
    switch (p.kind) {
      case 'block': this.#blocks.set(p.start, decodeBlock(kv.value, kv.key, p.start, kv.mod)); return;
      case 'host': this.#hosts.set(p.host, decodeHost(kv.value, kv.key, p.host, kv.lease, kv.mod)); return;
      case 'fence': {
        const f = decodeFence(kv.value, kv.key, p.host, kv.mod);
        this.#fences.set(p.host, f);
        if (p.host === this.hostId && this.#fenceRev > 0 && kv.mod !== this.#fenceRev && this.#fenced === null) this.#onFenced(kv);
        return;
      }
      default: return;
    }
  }

  #advance(rev: number): void {
    if (rev <= this.#applied) return;
    this.#applied = rev;
    if (this.#appliedWaiters.length > 0) {
      const ready = this.#appliedWaiters.filter((w) => w.rev <= rev);
      this.#appliedWaiters = this.#appliedWaiters.filter((w) => w.rev > rev);
      for (const w of ready) w.resolve();
    }
  }

  /**
   * After a cancelled watch (compaction): read the domain again, apply the difference to the
   * mirror, hand over the journal records committed meanwhile (those still kept), in order.
   */
  async #resync(): Promise<void> {
    this.#resyncs++;
    for (let n = 1; this.#open; n++) {
      try {
        const { kvs, revision } = await readRange(this.client, this.keys.prefix, prefixEnd(this.keys.prefix));
        const seen = new Set<string>();
        const events: WatchItem['events'][number][] = [];
        const records: Kv[] = [];
        for (const kv of kvs) {
          seen.add(kv.key);
          const mod = this.#mods.get(kv.key);
          if (this.keys.parse(kv.key)?.kind === 'log') {
            if (kv.mod > this.#applied && this.#own.get(kv.mod)?.deliver !== false) records.push(kv);
            continue;
          }
          if (mod === undefined || kv.mod > mod) events.push({ type: 'put', kv });
        }
        for (const [key, mod] of this.#mods) {
          if (!seen.has(key) && mod <= revision && this.keys.parse(key)?.kind !== 'log') events.push({ type: 'delete', kv: { key, value: '', create: 0, mod: revision, version: 0, lease: '0' } });
        }
        // Everything received before is older than this read and contained in the difference.
        this.#incoming = [];
        this.#lastReceived = revision;
        this.#foreign({ rev: revision, events });
        const parts = records.sort((a, b) => a.mod - b.mod).flatMap((kv) => this.#parts(kv, kv.mod, this.#own.get(kv.mod)?.applied));
        for (const rev of [...this.#own.keys()].filter((r) => r <= revision).sort((a, b) => a - b)) {
          for (const w of this.#own.get(rev)?.waiters ?? []) w();
          this.#own.delete(rev);
        }
        this.#advance(revision);
        if (parts.length > 0) this.#deliver(parts);
        this.#startWatch(revision + 1);
        return;
      } catch (e) {
        this.#log('warn', 'resync failed; retrying', { error: String(e).slice(0, 200) });
        await sleep(backoffMs(this.#policy, Math.min(n, 6)));
      }
    }
  }
}

function rankOf(type: 'put' | 'delete', kind: ParsedKey['kind']): number {
  return type === 'delete' ? DELETE_ORDER.indexOf(kind) : 100 + PUT_ORDER.indexOf(kind);
}

/** The events of journal records, numbered and in order. */
function eventsOf(records: readonly { mod: number; parts: readonly LogPart[] }[]): EventRow[] {
  const out: EventRow[] = [];
  for (const r of [...records].sort((a, b) => a.mod - b.mod)) {
    let offset = 0;
    for (const part of r.parts) {
      out.push(...numberedEvents(part, r.mod * SEQ_PER_REVISION + offset));
      offset += part.events.length;
    }
  }
  return out;
}

function safe<T>(fn: () => T): T | null {
  try {
    return fn();
  } catch {
    return null;
  }
}

function sanitizeHost(h: string): string {
  const s = h.replace(/[^A-Za-z0-9._-]/g, '-').replace(/^[^A-Za-z0-9]+/, '').slice(0, 63);
  return s.length > 0 ? s : 'host';
}

export type { VmState };
