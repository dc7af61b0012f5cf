/**
 * The etcd backend (docs/cluster.md): the `Store` of one host in a migration domain, shared with the
 * other hosts of the domain on one etcd cluster. Key layout in etcd-keys.ts, group commit in
 * etcd-commit.ts, retries in etcd-client.ts; design and failure semantics in docs/cluster.md.
 *
 * Rules:
 *  1. One key per allocated PASID, created only if absent; VMs (with their set), vIOMMUs,
 *     devices, bindings and blocks are keys too. Never the whole bitmap in one value.
 *  2. Every transaction of this host compares the mod revision of its fence key with the one it
 *     wrote at start: a later incarnation of the host, or an operator's reclaim, bumps it, and
 *     from then on nothing this incarnation sends commits (it is fenced: ENODEV).
 *  3. Every change to a VM's keys compares the VM key's mod revision with the one this host knows
 *     as "mine": a VM migrated away, being destroyed or reclaimed is never written by its former
 *     host, so each PASID has exactly one owner at every revision.
 *  4. The state loaded at `open()` is the whole domain (every host's VMs and PASIDs), validated
 *     like any stored state; from then on the watch streams the other hosts' changes, in revision
 *     order, to `onChanges`. This host's own commits are applied by its caller before they are
 *     sent and are skipped when they come back; a change from elsewhere to a key this host is
 *     still writing waits until that write has settled (and been undone, if it failed).
 *  5. A lease keeps `hosts/<id>` alive while the process runs; lease expiry frees nothing.
 *  6. The rules of each mutation that concern one VM (quota, bindings, bound PASIDs) are checked
 *     by the host model of the VM's host, its only writer (rule 3); etcd checks what crosses
 *     hosts: PASID and VM uniqueness, placement, fencing.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { Etcd3, IWatchResponse, Lease, Watcher } from 'etcd3';
import { IoasidError, PASID_MAX, fmtId, isIoasidError } from '../core/index.ts';
import { checkBatch } from './row-check.ts';
import type {
  Applied, BindingRow, DeviceRow, MetaRow, Mutation, PasidRow, Store, StoreStats, StoredState, ViommuRow, VmRow,
} from './rows.ts';
import { RESERVED_META_PREFIX } from './rows.ts';
import { validateStoredState } from './state-check.ts';
import {
  DEFAULT_RETRY, kvOf, readRange, sleep, backoffMs, txn, withRetry,
  type Cmp, type Kv, type Op, type RetryPolicy,
} from './etcd-client.ts';
import { checkEtcdSecurityOptions, connectEtcd, type EtcdSecurityOptions } from './etcd-security.ts';
import { CommitQueue, type CommitBatch, type Reads } from './etcd-commit.ts';
import {
  DomainKeys, checkClusterName, decodeBinding, decodeBlock, decodeConfig, decodeDevice, decodeFence, decodeHost, decodeMeta,
  decodePasid, decodeViommu, decodeVm, encodeBinding, encodeBlock, encodeConfig, encodeDevice, encodeFence, encodeHost,
  encodeMeta, encodePasid, encodeViommu, encodeVm, prefixEnd,
  type BlockRecord, type DomainConfig, type FenceRecord, type HostRecord, type PasidRecord, type VmRecord, type VmState,
} from './etcd-keys.ts';

export const DEFAULT_BLOCK_SIZE = 64;
export const DEFAULT_LEASE_TTL_SEC = 10;
/** Below etcd's default --max-txn-ops (128), leaving room for the fence compare. */
export const DEFAULT_MAX_TXN_OPS = 120;

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
  readonly log?: EtcdLogFn;
  readonly now?: () => number;
}

/** A change made by another host (or by an operator's reclaim), as the watch reports it. */
export type ClusterChange =
  | { readonly kind: 'vm'; readonly op: 'put'; readonly record: VmRecord; readonly prev: VmRecord | null }
  | { readonly kind: 'vm'; readonly op: 'delete'; readonly id: string; readonly prev: VmRecord | null }
  | { readonly kind: 'viommu'; readonly op: 'put'; readonly row: ViommuRow }
  | { readonly kind: 'viommu'; readonly op: 'delete'; readonly vm: string; readonly segment: number }
  | { readonly kind: 'device'; readonly op: 'put'; readonly row: DeviceRow }
  | { readonly kind: 'device'; readonly op: 'delete'; readonly vm: string; readonly bdf: string }
  | { readonly kind: 'pasid'; readonly op: 'put'; readonly record: PasidRecord }
  | { readonly kind: 'pasid'; readonly op: 'delete'; readonly pasid: number; readonly prev: PasidRecord | null }
  | { readonly kind: 'binding'; readonly op: 'put'; readonly row: BindingRow }
  | { readonly kind: 'binding'; readonly op: 'delete'; readonly pasid: number; readonly bdf: string; readonly prev: BindingRow | null }
  | { readonly kind: 'block'; readonly op: 'put'; readonly record: BlockRecord }
  | { readonly kind: 'block'; readonly op: 'delete'; readonly start: number; readonly prev: BlockRecord | null }
  | { readonly kind: 'host'; readonly op: 'put'; readonly record: HostRecord }
  | { readonly kind: 'host'; readonly op: 'delete'; readonly id: string }
  | { readonly kind: 'fence'; readonly op: 'put'; readonly record: FenceRecord }
  | { readonly kind: 'fence'; readonly op: 'delete'; readonly host: string }
  | { readonly kind: 'meta'; readonly op: 'put'; readonly row: MetaRow }
  | { readonly kind: 'meta'; readonly op: 'delete'; readonly key: string };

export type ChangeListener = (changes: readonly ClusterChange[], revision: number) => void | Promise<void>;

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
}

/** Canonical order of the changes of one revision: leaves go before roots, roots come first. */
const DELETE_ORDER = ['binding', 'pasid', 'device', 'viommu', 'vm', 'block', 'host', 'fence', 'meta'] as const;
const PUT_ORDER = ['fence', 'host', 'vm', 'viommu', 'device', 'pasid', 'binding', 'block', 'meta'] as const;

function rank(c: ClusterChange): number {
  return c.op === 'delete' ? DELETE_ORDER.indexOf(c.kind) : 100 + PUT_ORDER.indexOf(c.kind);
}

interface WatchItem {
  readonly rev: number;
  readonly events: { readonly type: 'put' | 'delete'; readonly kv: Kv }[];
}

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
  #url: string | null = null;
  #startedAt = 0;

  // The mirror: the domain as this host knows it (loaded, own commits, watched changes).
  readonly #mods = new Map<string, number>();
  readonly #vms = new Map<string, VmRecord>();
  readonly #viommus = new Map<string, ViommuRow>();
  readonly #devices = new Map<string, DeviceRow>();
  readonly #pasids = new Map<number, PasidRecord>();
  readonly #bindings = new Map<string, BindingRow>();
  readonly #blocks = new Map<number, BlockRecord>();
  readonly #hosts = new Map<string, HostRecord>();
  readonly #fences = new Map<string, FenceRecord>();
  readonly #meta = new Map<string, MetaRow>();

  /** Keys written by this host's batches in flight (count of batches). */
  readonly #pending = new Map<string, number>();
  #settleWaiters: (() => void)[] = [];
  /** Highest revision at which this host wrote each key (own commits, until the watch passes it). */
  readonly #ownWrites = new Map<string, number>();

  #watcher: Watcher | null = null;
  #watchGen = 0;
  #watchFailures = 0;
  #incoming: WatchItem[] = [];
  #lastReceived = 0;
  #applied = 0;
  #lastCommitted = 0;
  #processing = false;
  #appliedWaiters: { rev: number; resolve: () => void }[] = [];
  #listener: ChangeListener | null = null;
  #leaseLoop: Promise<void> | null = null;

  #batches = 0;
  #failedBatches = 0;
  #watchEvents = 0;
  #resyncs = 0;

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
    const bs = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
    if (!Number.isInteger(bs) || bs < 1 || bs > 4096 || (bs & (bs - 1)) !== 0) throw new IoasidError('EINVAL', `block size must be a power of two in [1, 4096], got ${fmtId(bs)}`, { blockSize: bs });
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
    const client = await connectEtcd(this.endpoints, {
      tls: this.#o.tls === true, security: this.#o.etcdSecurity, spec: this.spec, policy: this.#policy, callTimeoutMs: this.#o.callTimeoutMs,
      probe: { prefix: this.keys.prefix, prefixEnd: prefixEnd(this.keys.prefix), writeKey: `${this.keys.prefix}sync/${this.hostId}` },
      warn: (m, d) => this.#log('warn', m, d),
    });
    this.#client = client;
    try {
      this.#queue = new CommitQueue({
        exec: (c, o) => txn(client, c, o),
        fence: () => (this.#fenceRev > 0 ? { key: this.keys.fence(this.hostId), target: 'Mod', result: 'Equal', value: this.#fenceRev } : null),
        fenced: (reads) => this.#onFenced(reads.get(this.keys.fence(this.hostId))?.[0] ?? null),
        committed: (b, rev) => this.#committed(b as PlannedBatch, rev),
        policy: this.#policy,
        maxOps: this.#o.maxTxnOps ?? DEFAULT_MAX_TXN_OPS,
        maxInFlight: this.#o.maxInFlight ?? 4,
        onRetry: (e, n) => this.#log('warn', `etcd transaction retry ${n}`, { error: String(e).slice(0, 200) }),
      });
      await this.#loadConfig();
      await this.#register();
      const rev = await this.#load();
      this.#open = true;
      this.#startWatch(rev + 1);
      // A destroy this host left half done (crash between its transactions) is finished first.
      for (const rec of [...this.#vms.values()]) {
        if (rec.host === this.hostId && rec.state === 'destroying') await this.finishDestroy(rec.row.id);
      }
      return this.#state();
    } catch (e) {
      this.#open = false;
      await this.#teardown();
      throw e;
    }
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
    this.#ownWrites.set(fenceKey, r.revision);
    this.#ownWrites.set(this.keys.host(this.hostId), r.revision);
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
      try {
        const id = await lease.grant();
        this.#lease = lease;
        this.#leaseId = id;
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
          if (!r.succeeded) {
            this.#onFenced(r.reads.get(this.keys.fence(this.hostId))?.[0] ?? null);
            return;
          }
          this.#noteOwnWrite(this.keys.host(this.hostId), r.revision);
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
    this.#noteOwnWrite(this.keys.host(this.hostId), r.revision);
    this.#mirrorPut({ key: this.keys.host(this.hostId), value: this.#hostValue(), create: r.revision, mod: r.revision, version: 1, lease: this.#leaseId });
  }

  /** Read the whole domain into the mirror; returns the revision read. */
  async #load(): Promise<number> {
    const { kvs, revision } = await withRetry('the domain state', this.#policy, () => readRange(this.client, this.keys.prefix, prefixEnd(this.keys.prefix)));
    for (const kv of kvs) this.#mirrorPut(kv);
    this.#applied = revision;
    this.#lastReceived = revision;
    return revision;
  }

  #state(): StoredState {
    const vms: VmRow[] = [...this.#vms.values()].map((v) => v.row);
    return validateStoredState({
      vms,
      viommus: [...this.#viommus.values()],
      devices: [...this.#devices.values()],
      pasids: [...this.#pasids.values()].map((p) => p.row),
      bindings: [...this.#bindings.values()],
      meta: [...this.#meta.values()].filter((m) => !m.key.startsWith(RESERVED_META_PREFIX)),
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
    // Clean exit: the host key goes now (its lease), everything else stays for the next start.
    const lease = this.#lease;
    this.#lease = null;
    if (lease !== null) await Promise.race([lease.revoke().catch(() => {}), sleep(2000)]);
    await this.#teardown();
  }

  async #teardown(): Promise<void> {
    this.#watchGen++;
    const w = this.#watcher;
    this.#watcher = null;
    if (w !== null) await Promise.race([w.cancel().catch(() => {}), sleep(500)]);
    this.#lease?.release();
    this.#lease = null;
    this.#client?.close();
    this.#client = null;
    for (const w2 of this.#appliedWaiters.splice(0)) w2.resolve();
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
    };
  }

  // ------------------------------------------------------------------ the domain as known here

  vm(id: string): VmRecord | undefined {
    return this.#vms.get(id);
  }

  vmRecords(): VmRecord[] {
    return [...this.#vms.values()];
  }

  /** Does this host serve the VM (its host, active)? */
  serves(id: string): boolean {
    const r = this.#vms.get(id);
    return r !== undefined && r.host === this.hostId && r.state === 'active' && this.#fenced === null;
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

  pasid(p: number): PasidRecord | undefined {
    return this.#pasids.get(p);
  }

  pasidCount(): number {
    return this.#pasids.size;
  }

  /** Every PASID key, as known here (for cross-instance checks). */
  pasidRecords(): PasidRecord[] {
    return [...this.#pasids.values()];
  }

  /** The error a host gives for a VM it does not serve. */
  notServed(id: string): IoasidError {
    if (this.#fenced !== null) return this.#fencedError(this.#fenced);
    const r = this.#vms.get(id);
    if (r === undefined) return new IoasidError('ENOENT', `no VM ${fmtId(id)} in domain ${this.domain}`, { vm: id, domain: this.domain });
    if (r.state !== 'active') return new IoasidError('ENODEV', `VM ${id} is being ${r.state === 'destroying' ? 'destroyed' : `reclaimed${r.by !== undefined ? ` by host ${r.by}` : ''}`}`, { vm: id, state: r.state, host: r.host });
    const url = this.#hosts.get(r.host)?.url ?? null;
    return new IoasidError('ENODEV', `VM ${id} runs on host ${r.host}${url !== null ? ` (${url})` : ''}, not on ${this.hostId}: send its requests there`, { vm: id, host: r.host, url, here: this.hostId });
  }

  /** A linearizable read of a VM key (quorum), with retries. */
  async readVm(id: string): Promise<VmRecord | null> {
    const key = this.keys.vm(id);
    const r = await withRetry('a VM key', this.#policy, () => this.client.kv.range({ key: Buffer.from(key) }));
    const k = r.kvs[0];
    if (k === undefined) return null;
    const kv = kvOf(k);
    return decodeVm(kv.value, key, kv.mod);
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
    const key = `${this.keys.prefix}sync/${this.hostId}`;
    const r = await withRetry('a barrier', this.#policy, () => this.client.kv.put({ key: Buffer.from(key), value: Buffer.from(String(this.#now())) }));
    return Number(r.header.revision);
  }

  /** Listen to other hosts' changes (one listener: the cluster coordinator). */
  onChanges(listener: ChangeListener | null): void {
    this.#listener = listener;
    if (listener !== null) this.#kick();
  }

  // ------------------------------------------------------------------ Store.apply

  // Interim: events, registers and token replacement are not kept in etcd yet (cluster journal rework).
  async apply(batch: readonly Mutation[]): Promise<Applied> {
    let ok = false;
    try {
      const checked = checkBatch(batch);
      if (!this.#open) throw new IoasidError('EINVAL', `store ${this.spec} is not open`, { spec: this.spec });
      if (this.#fenced !== null) throw this.#fencedError(this.#fenced);
      const del = checked.find((m) => m.op === 'deleteVm');
      if (del !== undefined && del.op === 'deleteVm') await this.#destroy(del.id, checked);
      else if (checked.length > 0) await this.#submit(this.#plan(checked));
      ok = true;
    } finally {
      if (ok) this.#batches++;
      else this.#failedBatches++;
    }
    return { seq: 0 };
  }

  /** The revision of the VM key this host may write under, or the error why not. */
  #servedRev(vm: string, allow: readonly VmState[] = ['active']): number {
    const r = this.#vms.get(vm);
    if (r === undefined || r.host !== this.hostId || !allow.includes(r.state)) throw this.notServed(vm);
    return r.mod;
  }

  #vmCmp(vm: string, rev: number): Cmp {
    return { key: this.keys.vm(vm), target: 'Mod', result: 'Equal', value: rev };
  }

  #plan(batch: readonly Mutation[]): PlannedBatch {
    const nonce = this.#nonce();
    const compares = new Map<string, Cmp>();
    const ops: Op[] = [];
    const created = new Set<string>();
    const mine: string[] = [];
    const vmCmp = (vm: string) => {
      if (created.has(vm) || compares.has(`vm:${vm}`)) return;
      compares.set(`vm:${vm}`, this.#vmCmp(vm, this.#servedRev(vm)));
    };
    for (const m of batch) {
      switch (m.op) {
        case 'putVm': {
          const key = this.keys.vm(m.row.id);
          const have = this.#vms.get(m.row.id);
          if (have === undefined) {
            compares.set(`vm:${m.row.id}`, { key, target: 'Create', result: 'Equal', value: 0 });
            ops.push({ put: key, value: encodeVm(m.row, { host: this.hostId, state: 'active', nonce }) });
            created.add(m.row.id);
          } else {
            const rev = this.#servedRev(m.row.id);
            compares.set(`vm:${m.row.id}`, this.#vmCmp(m.row.id, rev));
            ops.push({ put: key, value: encodeVm(m.row, { host: this.hostId, state: have.state, nonce }) });
          }
          mine.push(key);
          break;
        }
        case 'deleteVm':
          throw new IoasidError('EINVAL', 'deleteVm goes through the destroy protocol', {});
        case 'putViommu':
          vmCmp(m.row.vm);
          ops.push({ put: this.keys.viommu(m.row.vm, m.row.segment), value: encodeViommu(m.row) });
          break;
        case 'deleteViommu':
          vmCmp(m.vm);
          ops.push({ del: this.keys.viommu(m.vm, m.segment) });
          break;
        case 'putDevice':
          vmCmp(m.row.vm);
          ops.push({ put: this.keys.device(m.row.vm, m.row.bdf), value: encodeDevice(m.row) });
          break;
        case 'deleteDevice':
          vmCmp(m.vm);
          ops.push({ del: this.keys.device(m.vm, m.bdf) });
          break;
        case 'insertPasid': {
          if (m.row.vm !== null) vmCmp(m.row.vm);
          const key = this.keys.pasid(m.row.pasid);
          compares.set(key, { key, target: 'Create', result: 'Equal', value: 0 });
          ops.push({ put: key, value: encodePasid(m.row, nonce, this.hostId) });
          mine.push(key);
          break;
        }
        case 'deletePasid':
          if (m.vm !== null) vmCmp(m.vm);
          ops.push({ del: this.keys.pasid(m.pasid) });
          break;
        case 'putBinding':
          vmCmp(m.row.vm);
          ops.push({ put: this.keys.binding(m.row.pasid, m.row.bdf), value: encodeBinding(m.row) });
          break;
        case 'deleteBinding': {
          const vm = this.#bindings.get(this.keys.binding(m.pasid, m.bdf))?.vm ?? this.#pasids.get(m.pasid)?.row.vm ?? null;
          if (vm !== null) vmCmp(vm);
          ops.push({ del: this.keys.binding(m.pasid, m.bdf) });
          break;
        }
        case 'putMeta':
          ops.push({ put: this.keys.meta(m.row.key), value: encodeMeta(m.row) });
          break;
        case 'deleteMeta':
          ops.push({ del: this.keys.meta(m.key) });
          break;
      }
    }
    return this.#batch([...compares.values()], ops, nonce, mine);
  }

  /**
   * A batch whose creates and rewrites carry `nonce`, recognised in `mine` after a lost answer.
   * `own` batches are applied to the model by their caller (the watch skips them when they come
   * back); the others (a reclaim) reach the model through the watch, like another host's.
   */
  #batch(compares: Cmp[], ops: Op[], nonce: string, mine: readonly string[], explain?: ((reads: Reads, failed: Cmp) => IoasidError | null) | null, own = true): PlannedBatch {
    return {
      own,
      compares,
      ops,
      recognise: (reads) => {
        for (const key of mine) {
          const kv = reads.get(key)?.[0];
          if (kv !== undefined && kv.value.includes(`"n":"${nonce}"`)) return kv.mod;
        }
        return null;
      },
      explain: (reads, failed) => explain?.(reads, failed) ?? this.#explain(reads, failed),
    };
  }

  /** Why a compare failed, in the service's terms. */
  #explain(reads: Reads, failed: Cmp): IoasidError {
    const kv = reads.get(failed.key)?.[0];
    const p = this.keys.parse(failed.key);
    if (p?.kind === 'vm') {
      if (failed.target === 'Create') {
        const host = kv !== undefined ? safe(() => decodeVm(kv.value, failed.key, kv.mod).host) : null;
        return new IoasidError('EEXIST', `VM ${p.vm} exists${host !== null ? ` (on host ${host})` : ''}`, { vm: p.vm, host });
      }
      if (kv === undefined) return new IoasidError('ENODEV', `VM ${p.vm} no longer exists (destroyed or reclaimed)`, { vm: p.vm });
      const rec = safe(() => decodeVm(kv.value, failed.key, kv.mod));
      if (rec !== null && rec.host !== this.hostId) return new IoasidError('ENODEV', `VM ${p.vm} has migrated to host ${rec.host}`, { vm: p.vm, host: rec.host });
      if (rec !== null && rec.state !== 'active') return new IoasidError('ENODEV', `VM ${p.vm} is being ${rec.state === 'destroying' ? 'destroyed' : 'reclaimed'}`, { vm: p.vm, state: rec.state });
      return new IoasidError('EAGAIN', `VM ${p.vm} changed while this request was in flight; retry`, { vm: p.vm });
    }
    if (p?.kind === 'pasid') {
      const owner = kv !== undefined ? safe(() => decodePasid(kv.value, failed.key, p.pasid, kv.mod).row.vm) : null;
      return new IoasidError('EEXIST', `PASID ${fmtId(p.pasid)} was taken by ${owner === null ? 'another host' : `VM ${owner}`} first`, { pasid: p.pasid, owner, conflict: true });
    }
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
    this.#fenced ??= f ?? { host: this.hostId, by: 'unknown', reason: 'fence key removed', at: this.#now(), mod: kv?.mod ?? 0, nonce: '' };
    this.#log('error', `host ${this.hostId} is fenced`, { by: this.#fenced.by, reason: this.#fenced.reason });
    return this.#fencedError(this.#fenced);
  }

  async #submit(b: PlannedBatch): Promise<number> {
    const queue = this.#queue;
    if (queue === null) throw new IoasidError('ENODEV', 'the etcd store is not open', {});
    const keys = b.ops.map((o) => ('put' in o ? o.put : o.del));
    for (const k of keys) this.#pending.set(k, (this.#pending.get(k) ?? 0) + 1);
    try {
      return await queue.submit(b);
    } finally {
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
  }

  #committed(b: PlannedBatch, rev: number): void {
    if (rev > this.#lastCommitted) this.#lastCommitted = rev;
    if (!b.own) return;
    for (const op of b.ops) {
      if ('put' in op) {
        this.#noteOwnWrite(op.put, rev);
        this.#mirrorPut({ key: op.put, value: op.value, create: this.#mods.has(op.put) ? 0 : rev, mod: rev, version: 1, lease: op.lease ?? '0' });
      } else if (op.rangeEnd !== undefined) {
        for (const k of [...this.#mods.keys()]) {
          if (k >= op.del && k < op.rangeEnd) {
            this.#noteOwnWrite(k, rev);
            this.#mirrorDelete(k);
          }
        }
      } else {
        this.#noteOwnWrite(op.del, rev);
        this.#mirrorDelete(op.del);
      }
    }
  }

  #noteOwnWrite(key: string, rev: number): void {
    if ((this.#ownWrites.get(key) ?? 0) < rev) this.#ownWrites.set(key, rev);
  }

  // ------------------------------------------------------------------ destroy, migrate, blocks, reclaim

  /**
   * Destroy a VM: one transaction when it fits, else mark the VM `destroying` (nothing more can
   * be allocated for it), delete its keys in chunks, and delete the VM key last. A crash in
   * between leaves it `destroying`, and the next start of this host finishes it.
   */
  async #destroy(vm: string, batch: readonly Mutation[]): Promise<void> {
    const rev = this.#servedRev(vm, ['active', 'destroying']);
    if (this.#vms.get(vm)?.state !== 'active') {
      await this.finishDestroy(vm);
      return;
    }
    // The batch lists every key of the VM (its host is the only writer): at most a superset.
    const rest = batch.filter((m) => m.op !== 'deleteVm');
    const ops = (rest.length > 0 ? this.#plan(rest).ops : []).filter((o) => 'del' in o && (o.del.startsWith(this.keys.pasids) || o.del.startsWith(this.keys.bindings)));
    const max = (this.#o.maxTxnOps ?? DEFAULT_MAX_TXN_OPS) - 4;
    if (ops.length + 3 <= max) {
      await this.#submit(this.#batch([this.#vmCmp(vm, rev)], [...ops, ...this.#vmTail(vm)], this.#nonce(), []));
      return;
    }
    const bindings = ops.map((o) => opKeyOf(o)).filter((k) => k.startsWith(this.keys.bindings));
    const pasids = ops.map((o) => opKeyOf(o)).filter((k) => k.startsWith(this.keys.pasids));
    await this.finishDestroy(vm, { keys: [...bindings, ...pasids] });
  }

  /** The last writes of a destroy: the VM's vIOMMUs and devices (prefix ranges) and its key. */
  #vmTail(vm: string): Op[] {
    return [
      { del: this.keys.viommusOf(vm), rangeEnd: prefixEnd(this.keys.viommusOf(vm)) },
      { del: this.keys.devicesOf(vm), rangeEnd: prefixEnd(this.keys.devicesOf(vm)) },
      { del: this.keys.vm(vm) },
    ];
  }

  /**
   * Finish destroying (or reclaiming) a VM: mark it (nothing can be added to it after the mark),
   * delete its bindings and PASIDs in chunks, then its vIOMMUs, devices and key. The keys come
   * from `keys` (the serving host's model), this host's mirror (its own VM at start), or a read
   * of etcd after the mark (a reclaim).
   */
  async finishDestroy(vm: string, opts: { as?: 'destroying' | 'reclaiming'; keys?: readonly string[]; host?: string } = {}): Promise<{ pasids: number; bindings: number }> {
    const as = opts.as ?? 'destroying';
    const own = as === 'destroying';
    const key = this.keys.vm(vm);
    let rec = this.#vms.get(vm) ?? null;
    if (as === 'reclaiming') rec = await this.readVm(vm);
    if (rec === null) return { pasids: 0, bindings: 0 };
    if (opts.host !== undefined && rec.host !== opts.host) throw new IoasidError('ENODEV', `VM ${vm} moved to host ${rec.host}`, { vm, host: rec.host });
    let rev = rec.mod;
    if (rec.state !== as || (as === 'reclaiming' && rec.by !== this.hostId)) {
      const nonce = this.#nonce();
      const row = rec.row;
      const host = rec.host;
      rev = await this.#submit(this.#batch([this.#vmCmp(vm, rec.mod)], [{ put: key, value: encodeVm(row, { host, state: as, nonce, ...(as === 'reclaiming' ? { by: this.hostId } : {}) }) }], nonce, [key], null, own));
    }
    // From `rev` on, nobody can add to this VM (every write for it compares the VM key).
    let at: { pasids: string[]; bindings: string[] };
    if (opts.keys !== undefined) {
      at = { pasids: opts.keys.filter((k) => k.startsWith(this.keys.pasids)), bindings: opts.keys.filter((k) => k.startsWith(this.keys.bindings)) };
    } else if (as === 'destroying') {
      at = {
        pasids: [...this.#pasids.values()].filter((p) => p.row.vm === vm).map((p) => this.keys.pasid(p.row.pasid)),
        bindings: [...this.#bindings.values()].filter((b) => b.vm === vm).map((b) => this.keys.binding(b.pasid, b.bdf)),
      };
    } else {
      at = await this.#readVmKeys(vm, rev);
    }
    const max = (this.#o.maxTxnOps ?? DEFAULT_MAX_TXN_OPS) - 4;
    const dels = [...at.bindings, ...at.pasids];
    for (let i = 0; i < dels.length; i += max) {
      const chunk = dels.slice(i, i + max).map((k): Op => ({ del: k }));
      await this.#submit(this.#batch([this.#vmCmp(vm, rev)], chunk, this.#nonce(), [], null, own));
    }
    await this.#submit(this.#batch([this.#vmCmp(vm, rev)], this.#vmTail(vm), this.#nonce(), [], null, own));
    return { pasids: at.pasids.length, bindings: at.bindings.length };
  }

  /** The binding and PASID keys of a VM, read from etcd at (or after) `rev`. */
  async #readVmKeys(vm: string, rev: number): Promise<{ pasids: string[]; bindings: string[] }> {
    const client = this.client;
    const read = (prefix: string) => withRetry('the keys of a VM', this.#policy, () => readRange(client, prefix, prefixEnd(prefix)));
    const [p, b] = await Promise.all([read(this.keys.pasids), read(this.keys.bindings)]);
    if (p.revision < rev || b.revision < rev) throw new IoasidError('EAGAIN', `etcd answered at revision ${Math.min(p.revision, b.revision)}, before ${rev}`, {});
    const pasids = p.kvs.filter((kv) => safe(() => JSON.parse(kv.value) as { vm?: unknown })?.vm === vm).map((kv) => kv.key);
    const bindings = b.kvs.filter((kv) => safe(() => JSON.parse(kv.value) as { vm?: unknown })?.vm === vm).map((kv) => kv.key);
    return { pasids, bindings };
  }

  /**
   * Live migration: one transaction moves the VM key to `to`. Its sets, PASIDs and bindings
   * follow (they name the VM, not the host). Compares: this host's fence, the VM key (still
   * mine, unchanged), and the destination's host key (alive).
   */
  async migrate(vm: string, to: string): Promise<number> {
    checkClusterName('destination host', to);
    if (this.#fenced !== null) throw this.#fencedError(this.#fenced);
    const rec = this.#vms.get(vm);
    const rev = this.#servedRev(vm);
    if (rec === undefined) throw this.notServed(vm);
    if (to === this.hostId) throw new IoasidError('EINVAL', `VM ${vm} already runs on host ${to}`, { vm, to });
    const nonce = this.#nonce();
    const key = this.keys.vm(vm);
    const hostKey = this.keys.host(to);
    return this.#submit(this.#batch(
      [this.#vmCmp(vm, rev), { key: hostKey, target: 'Create', result: 'Greater', value: 0 }],
      [{ put: key, value: encodeVm(rec.row, { host: to, state: 'active', nonce }) }],
      nonce, [key],
      (reads, failed) => (failed.key === hostKey ? new IoasidError('ENODEV', `host ${to} is not alive in domain ${this.domain} (no host key: never started, stopped, or its lease expired)`, { host: to }) : null),
    ));
  }

  /** Claim a block of PASIDs for this host (create-if-absent); EAGAIN if another host has it. */
  async claimBlock(start: number): Promise<number> {
    this.#checkBlock(start);
    const key = this.keys.block(start);
    const nonce = this.#nonce();
    return this.#submit(this.#batch([{ key, target: 'Create', result: 'Equal', value: 0 }], [{ put: key, value: encodeBlock(this.hostId, nonce) }], nonce, [key]));
  }

  /** Return an empty block of this host; EBUSY if a PASID of it exists in etcd. */
  async releaseBlock(start: number): Promise<number> {
    this.#checkBlock(start);
    const key = this.keys.block(start);
    const rec = this.#blocks.get(start);
    if (rec === undefined || rec.host !== this.hostId) throw new IoasidError('ENOENT', `block ${fmtId(start)} is not held by host ${this.hostId}`, { block: start });
    const range = this.keys.pasidRange(start, this.blockSize);
    return this.#submit(this.#batch(
      [{ key, target: 'Mod', result: 'Equal', value: rec.mod }, { key: range.key, rangeEnd: range.end, target: 'Create', result: 'Equal', value: 0 }],
      [{ del: key }],
      this.#nonce(), [],
      (reads, failed) => (failed.rangeEnd !== undefined ? new IoasidError('EBUSY', `block ${fmtId(start)} still holds PASIDs`, { block: start }) : null),
    ));
  }

  #checkBlock(start: number): void {
    if (!Number.isInteger(start) || start < 0 || start > PASID_MAX || start % this.blockSize !== 0) {
      throw new IoasidError('EINVAL', `${fmtId(start)} is not the start of a block of ${this.blockSize}`, { block: start });
    }
  }

  /**
   * An operator's reclaim of a dead host: fence it (every transaction of its incarnation fails
   * from then on), then free what it held: its VMs (each marked `reclaiming` first, so a restart
   * of that host racing the reclaim loses the VM cleanly), their PASIDs and bindings, its
   * host-owned PASIDs and its blocks. Refused while the host's lease is alive, unless `force`
   * (which revokes the lease: the operator asserts the host is dead). Idempotent: run it again to
   * finish an interrupted reclaim.
   */
  async reclaim(host: string, opts: { force?: boolean } = {}): Promise<ReclaimReport> {
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
    const fencedAt = await this.#submit(this.#batch(
      [{ key: hostKey, target: 'Create', result: 'Equal', value: 0 }],
      [{ put: fenceKey, value: encodeFence({ by: this.hostId, reason: 'reclaim', at: this.#now(), nonce }) }],
      nonce, [fenceKey],
      (reads, failed) => (failed.key === hostKey ? new IoasidError('EBUSY', `host ${host} came back alive during the reclaim`, { host }) : null),
      false,
    ));
    const { kvs: vmKvs } = await withRetry('the VM keys', this.#policy, () => readRange(client, this.keys.vms, prefixEnd(this.keys.vms), { revision: fencedAt }));
    const vms: string[] = [];
    let pasids = 0;
    let bindings = 0;
    for (const kv of vmKvs) {
      const rec = safe(() => decodeVm(kv.value, kv.key, kv.mod));
      if (rec === null || rec.host !== host) continue;
      try {
        const r = await this.finishDestroy(rec.row.id, { as: 'reclaiming', host });
        vms.push(rec.row.id);
        pasids += r.pasids;
        bindings += r.bindings;
      } catch (e) {
        // The VM moved or went meanwhile (its host is fenced, so someone else did it): skip it.
        if (!isIoasidError(e, 'ENODEV') && !isIoasidError(e, 'EAGAIN')) throw e;
        this.#log('warn', `reclaim of ${host}: VM ${rec.row.id} skipped`, { error: String(e) });
      }
    }
    // Host-owned PASIDs of the dead host, and its blocks.
    const { kvs: pk } = await withRetry('the PASID keys', this.#policy, () => readRange(client, this.keys.pasids, prefixEnd(this.keys.pasids)));
    const hostOwned = pk.filter((kv) => {
      const v = safe(() => JSON.parse(kv.value) as { vm?: unknown; host?: unknown });
      return v !== null && v.vm === null && v.host === host;
    });
    const { kvs: bk } = await withRetry('the block keys', this.#policy, () => readRange(client, this.keys.blocks, prefixEnd(this.keys.blocks)));
    const blocks = bk.filter((kv) => safe(() => JSON.parse(kv.value) as { host?: unknown })?.host === host);
    const max = (this.#o.maxTxnOps ?? DEFAULT_MAX_TXN_OPS) - 4;
    const dels: { key: string; mod: number }[] = [...hostOwned, ...blocks].map((kv) => ({ key: kv.key, mod: kv.mod }));
    for (let i = 0; i < dels.length; i += max) {
      const chunk = dels.slice(i, i + max);
      await this.#submit(this.#batch(
        chunk.map((d): Cmp => ({ key: d.key, target: 'Mod', result: 'Equal', value: d.mod })),
        chunk.map((d): Op => ({ del: d.key })),
        this.#nonce(), [], null, false,
      )).catch((e: unknown) => {
        if (!isIoasidError(e, 'EAGAIN')) throw e;
      });
    }
    pasids += hostOwned.length;
    return { host, fencedAt, vms, pasids, bindings, blocks: blocks.length };
  }

  // ------------------------------------------------------------------ the mirror

  /** Update the mirror from a kv; returns the change it makes (with the previous record). */
  #mirrorPut(kv: Kv): ClusterChange | null {
    const p = this.keys.parse(kv.key);
    if (p === null) return null;
    this.#mods.set(kv.key, kv.mod);
    try {
      switch (p.kind) {
        case 'config':
          this.#config = decodeConfig(kv.value, kv.key);
          return null;
        case 'vm': {
          const prev = this.#vms.get(p.vm) ?? null;
          const record = decodeVm(kv.value, kv.key, kv.mod);
          this.#vms.set(p.vm, record);
          return { kind: 'vm', op: 'put', record, prev };
        }
        case 'viommu': {
          const row = decodeViommu(kv.value, kv.key, p.vm, p.segment);
          this.#viommus.set(kv.key, row);
          return { kind: 'viommu', op: 'put', row };
        }
        case 'device': {
          const row = decodeDevice(kv.value, kv.key, p.vm, p.bdf);
          this.#devices.set(kv.key, row);
          return { kind: 'device', op: 'put', row };
        }
        case 'pasid': {
          const record = decodePasid(kv.value, kv.key, p.pasid, kv.mod);
          this.#pasids.set(p.pasid, record);
          return { kind: 'pasid', op: 'put', record };
        }
        case 'binding': {
          const row = decodeBinding(kv.value, kv.key, p.pasid, p.bdf);
          this.#bindings.set(kv.key, row);
          return { kind: 'binding', op: 'put', row };
        }
        case 'block': {
          const record = decodeBlock(kv.value, kv.key, p.start, kv.mod);
          this.#blocks.set(p.start, record);
          return { kind: 'block', op: 'put', record };
        }
        case 'host': {
          const record = decodeHost(kv.value, kv.key, p.host, kv.lease, kv.mod);
          this.#hosts.set(p.host, record);
          return { kind: 'host', op: 'put', record };
        }
        case 'fence': {
          const record = decodeFence(kv.value, kv.key, p.host, kv.mod);
          this.#fences.set(p.host, record);
          if (p.host === this.hostId && this.#fenceRev > 0 && kv.mod !== this.#fenceRev && this.#fenced === null) this.#onFenced(kv);
          return { kind: 'fence', op: 'put', record };
        }
        case 'meta': {
          const row = decodeMeta(kv.value, kv.key, p.key);
          this.#meta.set(p.key, row);
          return { kind: 'meta', op: 'put', row };
        }
      }
    } catch (e) {
      this.#log('error', `etcd key ${kv.key} holds a value this version cannot read; ignored`, { error: String(e) });
      this.#mods.delete(kv.key);
      return null;
    }
  }

  #mirrorDelete(key: string): ClusterChange | null {
    const p = this.keys.parse(key);
    this.#mods.delete(key);
    if (p === null) return null;
    switch (p.kind) {
      case 'config': return null;
      case 'vm': {
        const prev = this.#vms.get(p.vm) ?? null;
        this.#vms.delete(p.vm);
        return { kind: 'vm', op: 'delete', id: p.vm, prev };
      }
      case 'viommu':
        this.#viommus.delete(key);
        return { kind: 'viommu', op: 'delete', vm: p.vm, segment: p.segment };
      case 'device':
        this.#devices.delete(key);
        return { kind: 'device', op: 'delete', vm: p.vm, bdf: p.bdf };
      case 'pasid': {
        const prev = this.#pasids.get(p.pasid) ?? null;
        this.#pasids.delete(p.pasid);
        return { kind: 'pasid', op: 'delete', pasid: p.pasid, prev };
      }
      case 'binding': {
        const prev = this.#bindings.get(key) ?? null;
        this.#bindings.delete(key);
        return { kind: 'binding', op: 'delete', pasid: p.pasid, bdf: p.bdf, prev };
      }
      case 'block': {
        const prev = this.#blocks.get(p.start) ?? null;
        this.#blocks.delete(p.start);
        return { kind: 'block', op: 'delete', start: p.start, prev };
      }
      case 'host':
        this.#hosts.delete(p.host);
        return { kind: 'host', op: 'delete', id: p.host };
      case 'fence':
        this.#fences.delete(p.host);
        if (p.host === this.hostId && this.#fenceRev > 0 && this.#fenced === null) this.#onFenced(null);
        return { kind: 'fence', op: 'delete', host: p.host };
      case 'meta':
        this.#meta.delete(p.key);
        return { kind: 'meta', op: 'delete', key: p.key };
    }
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
    if (this.#processing || this.#incoming.length === 0 || this.#listener === null) return;
    this.#processing = true;
    void this.#process().finally(() => {
      this.#processing = false;
      if (this.#incoming.length > 0 && this.#listener !== null) this.#kick();
    });
  }

  async #process(): Promise<void> {
    while (this.#incoming.length > 0 && this.#listener !== null) {
      const head = this.#incoming[0] as WatchItem;
      const events = head.events.filter((e) => (this.#ownWrites.get(e.kv.key) ?? 0) < head.rev);
      if (events.some((e) => this.#pending.has(e.kv.key))) {
        // A key this host is writing: wait until that write settles (and is undone if it failed).
        await new Promise<void>((r) => this.#settleWaiters.push(r));
        continue;
      }
      if (this.#incoming[0] !== head) continue; // a resync replaced the queue meanwhile
      this.#incoming.shift();
      const changes: ClusterChange[] = [];
      for (const e of events) {
        const c = e.type === 'put' ? this.#mirrorPut(e.kv) : this.#mirrorDelete(e.kv.key);
        if (c !== null) changes.push(c);
      }
      changes.sort((a, b) => rank(a) - rank(b));
      if (changes.length > 0) {
        try {
          await this.#listener(changes, head.rev);
        } catch (e) {
          this.#log('error', `applying the changes of revision ${head.rev} failed`, { error: String(e) });
        }
      }
      this.#advance(head.rev);
    }
  }

  #advance(rev: number): void {
    if (rev <= this.#applied) return;
    this.#applied = rev;
    if (this.#ownWrites.size > 256) {
      for (const [k, r] of this.#ownWrites) if (r <= rev) this.#ownWrites.delete(k);
    }
    if (this.#appliedWaiters.length > 0) {
      const ready = this.#appliedWaiters.filter((w) => w.rev <= rev);
      this.#appliedWaiters = this.#appliedWaiters.filter((w) => w.rev > rev);
      for (const w of ready) w.resolve();
    }
  }

  /** After a cancelled watch (compaction): read the domain again and apply the difference. */
  async #resync(): Promise<void> {
    this.#resyncs++;
    for (let n = 1; this.#open; n++) {
      try {
        const { kvs, revision } = await readRange(this.client, this.keys.prefix, prefixEnd(this.keys.prefix));
        const seen = new Set<string>();
        const events: WatchItem['events'][number][] = [];
        for (const kv of kvs) {
          seen.add(kv.key);
          const mod = this.#mods.get(kv.key);
          if (mod === undefined || kv.mod > mod) events.push({ type: 'put', kv });
        }
        for (const [key, mod] of this.#mods) {
          if (!seen.has(key) && mod <= revision) events.push({ type: 'delete', kv: { key, value: '', create: 0, mod: revision, version: 0, lease: '0' } });
        }
        // Everything received before is older than this read and contained in the difference.
        this.#incoming = events.length > 0 ? [{ rev: revision, events }] : [];
        this.#lastReceived = revision;
        this.#kick();
        if (events.length === 0) this.#advance(revision);
        this.#startWatch(revision + 1);
        return;
      } catch (e) {
        this.#log('warn', 'resync failed; retrying', { error: String(e).slice(0, 200) });
        await sleep(backoffMs(this.#policy, Math.min(n, 6)));
      }
    }
  }
}

type PlannedBatch = CommitBatch & { readonly own: boolean };

function safe<T>(fn: () => T): T | null {
  try {
    return fn();
  } catch {
    return null;
  }
}

function opKeyOf(o: Op): string {
  return 'put' in o ? o.put : o.del;
}

function sanitizeHost(h: string): string {
  const s = h.replace(/[^A-Za-z0-9._-]/g, '-').replace(/^[^A-Za-z0-9]+/, '').slice(0, 63);
  return s.length > 0 ? s : 'host';
}
