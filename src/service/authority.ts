/**
 * The PASID authority: a level-0 host model made durable. What it adds to the host is what a
 * network service needs, and nothing of the host's rules:
 *  - durability: the host commits every change through a store-backed journal (store-journal.ts),
 *    so an acknowledged change, its events and the registers a guest saw are in the store; at start
 *    the host is rebuilt from the rows by its own rules (a state that breaks one is refused);
 *  - identity: the admin token, and each VM's token (the VM's credential in the host is the
 *    token's hash, so access follows the VM: a destroyed VM's token is nobody's);
 *  - the event stream and its history (the journal's events, reloaded at start);
 *  - views: VM and PASID details, the namespace, register decodes.
 * With a cluster role (store etcd, docs/cluster.md) the host commits through the cluster's
 * journal instead, and the role keeps the host current with the changes other hosts commit.
 */
import {
  IoasidError, PASID_MAX, fmtId, isCommitError, isIoasidError, type IoasidErrorCode,
} from '../core/index.ts';
import { decodeRegister, registerOffset, type AccessSize, type VcmdDeviceConfig, type VcmdLogEntry, type VcmdWriter } from '../vtd/index.ts';
import { Host, type AllocationPolicy, type Committed, type HostEventRecord, type Journal, type JournalEntry, type ViommuSpec, type Vm } from '../host/index.ts';
import type { Store } from '../store/index.ts';
import type { ClusterRole, ClusterStatus, MigrateResult, ReclaimReport } from '../cluster/index.ts';
import type { CreateVmBody, PasidInfo, VmInfo } from '../api/index.ts';
import { eventHasPasid } from './events.ts';
import { eventRecord, StoreJournal, toHostState } from './store-journal.ts';
import { TOKEN_HASH_RE, hashToken, newToken, sameHash, tokenMatches } from './tokens.ts';

/** The wire types (src/api) under the names the service has used. */
export type { VmInfo, PasidInfo };
/** What the service records and streams: the journal's events, numbered, with their commit time. */
export type AuthorityEvent = HostEventRecord;

export interface AuthorityOptions {
  readonly store: Store;
  /** Clock (ms since the epoch); injected for tests. */
  readonly now?: () => number;
  /** Events kept in memory for histories and resumption (default: those the store keeps). */
  readonly historySize?: number;
  /** Cluster mode: the role over the etcd store (which must be `store`). */
  readonly cluster?: ClusterRole;
}

export type CreateVmRequest = CreateVmBody;

const ADMIN_HASH_KEY = 'admin.tokenHash';
/** A meta row written only to learn whether the store takes commits again after one failed. */
const PROBE_KEY = 'service.readyProbe';
/** At most one such probe per this many ms (readiness probes may come much faster). */
const PROBE_INTERVAL_MS = 1000;

/** A commit's duration (seconds) and outcome, for the metrics. */
export type CommitListener = (seconds: number, ok: boolean) => void;

/**
 * The host's journal with a stopwatch: every commit's duration and outcome goes to the listeners,
 * and a commit that failed in the backend (a `CommitError`: I/O, a full disk, an unreachable
 * store) is remembered until one succeeds (readiness).
 */
class WatchedJournal implements Journal {
  readonly durable: boolean;
  readonly sync: boolean;
  readonly placement?: AllocationPolicy;
  readonly inner: Journal;
  readonly #inner: Journal;
  readonly #onCommit: (seconds: number, error: unknown) => void;

  constructor(inner: Journal, onCommit: (seconds: number, error: unknown) => void) {
    this.#inner = inner;
    this.inner = inner;
    this.#onCommit = onCommit;
    this.durable = inner.durable;
    this.sync = inner.sync;
    if (inner.placement !== undefined) this.placement = inner.placement;
  }

  commit(entry: JournalEntry): Committed | Promise<Committed> {
    const t0 = performance.now();
    const done = (error: unknown) => this.#onCommit((performance.now() - t0) / 1000, error);
    let r: Committed | Promise<Committed>;
    try {
      r = this.#inner.commit(entry);
    } catch (e) {
      done(e);
      throw e;
    }
    if (!(r instanceof Promise)) {
      done(null);
      return r;
    }
    return r.then(
      (c) => {
        done(null);
        return c;
      },
      (e: unknown) => {
        done(e);
        throw e;
      },
    );
  }
}

export class PasidAuthority {
  readonly host: Host<Journal>;
  readonly store: Store;
  /** The cluster role, or null with a local store. */
  readonly cluster: ClusterRole | null;
  readonly #now: () => number;
  readonly #listeners = new Set<(e: AuthorityEvent) => void>();
  /** The most recent events, oldest first (a ring of `historySize`). */
  readonly #ring: (AuthorityEvent | undefined)[];
  #ringPos = 0;
  #lastSeq = 0;
  /** Events numbered up to this one may have been lost (pruned by the store, or out of the ring). */
  #lostUpTo = 0;
  #adminHash: string | null = null;
  readonly #commitListeners = new Set<CommitListener>();
  /** The last commit failed in the backend (and none succeeded since): why. */
  #commitFailure: { code: string; message: string } | null = null;
  #lastProbe = 0;

  private constructor(opts: AuthorityOptions) {
    this.store = opts.store;
    this.cluster = opts.cluster ?? null;
    this.#now = opts.now ?? Date.now;
    this.#ring = new Array<AuthorityEvent | undefined>(opts.historySize ?? 65536).fill(undefined);
    this.host = new Host<Journal>({
      name: 'authority',
      now: this.#now,
      journal: new WatchedJournal(this.cluster?.journal ?? new StoreJournal(opts.store, this.#now), (seconds, error) => this.#committed(seconds, error)),
    });
    this.host.on((e) => this.#record(e));
  }

  /** Open the store, validate it and rebuild the host from it by the host's rules. */
  static async open(opts: AuthorityOptions): Promise<PasidAuthority> {
    const a = new PasidAuthority(opts);
    const state = await opts.store.open();
    try {
      a.#adminHash = state.meta.find((m) => m.key === ADMIN_HASH_KEY)?.value ?? null;
      // Identities must be distinct and well-formed (VM hashes: the state check; the admin's: here).
      if (a.#adminHash !== null && !TOKEN_HASH_RE.test(a.#adminHash)) {
        throw new IoasidError('EINVAL', `meta ${ADMIN_HASH_KEY} is not a token hash (64 lowercase hex digits), got ${JSON.stringify(a.#adminHash.slice(0, 80))}`, { table: 'meta', key: ADMIN_HASH_KEY });
      }
      const row = a.#adminHash === null ? -1 : state.vms.findIndex((v) => v.tokenHash === a.#adminHash);
      const admin = state.vms[row];
      if (admin !== undefined) {
        throw new IoasidError('EINVAL', `vms[${row}] (id ${JSON.stringify(admin.id)}) has the token hash of meta ${ADMIN_HASH_KEY}: VM ${admin.id}'s token would act as the admin`, { table: 'vms', row, vm: admin.id, key: ADMIN_HASH_KEY });
      }
      a.host.restore(toHostState(state));
      const kept = state.events.slice(-a.#ring.length);
      // Numbers are dense on a local store and sparse on etcd: anything before the oldest kept
      // event may be gone (on etcd, possibly none was: the gap message is then a false alarm).
      if (kept.length > 0 && (kept[0] as { seq: number }).seq > 1) a.#lostUpTo = (kept[0] as { seq: number }).seq - 1;
      else if (kept.length === 0) a.#lostUpTo = state.lastSeq;
      for (const row of kept) a.#remember(eventRecord(row));
      a.#lastSeq = state.lastSeq;
    } catch (e) {
      await opts.store.close().catch(() => {});
      if (isIoasidError(e)) throw new IoasidError('EINVAL', `stored state does not replay: ${e.message}`, { ...e.details, cause: e.code });
      throw e;
    }
    await a.cluster?.attach(a.host);
    return a;
  }

  async close(): Promise<void> {
    for (const vm of this.host.vms()) for (const v of vm.viommus()) await v.device.settled();
    await this.cluster?.close();
    await this.store.close();
  }

  // ------------------------------------------------------------------ commits and readiness

  #committed(seconds: number, error: unknown): void {
    if (error === null) this.#commitFailure = null;
    else if (isCommitError(error)) this.#commitFailure = { code: error.code, message: error.message };
    const ok = error === null;
    for (const l of this.#commitListeners) l(seconds, ok);
  }

  /** Be told of every commit's duration and outcome (metrics). */
  onCommit(listener: CommitListener): () => void {
    this.#commitListeners.add(listener);
    return () => this.#commitListeners.delete(listener);
  }

  /** Why the last commit failed in the backend, or null when it succeeded (or none failed). */
  get commitFailure(): { readonly code: string; readonly message: string } | null {
    return this.#commitFailure;
  }

  /**
   * Whether this service can take changes now: the cluster's own health in cluster mode; else the
   * store's, which is known from the last commit. After a failed commit, a small probe commit (at
   * most one a second) finds out whether the store takes commits again, so a service that is
   * sent no traffic while not ready still comes back once its store does.
   */
  async readiness(): Promise<{ ready: boolean; reason?: string }> {
    if (this.cluster !== null) {
      const h = this.cluster.health();
      return h.ready ? { ready: true } : { ready: false, reason: `cluster: ${h.reason ?? 'not ready'}` };
    }
    if (this.#commitFailure !== null && this.#now() - this.#lastProbe >= PROBE_INTERVAL_MS) {
      this.#lastProbe = this.#now();
      try {
        await this.store.apply([{ op: 'putMeta', row: { key: PROBE_KEY, value: String(this.#lastProbe) } }]);
        this.#commitFailure = null;
      } catch (e) {
        if (isIoasidError(e)) this.#commitFailure = { code: e.code, message: e.message };
      }
    }
    const f = this.#commitFailure;
    return f === null ? { ready: true } : { ready: false, reason: `store ${this.store.spec} cannot commit: ${f.code}: ${f.message}` };
  }

  /**
   * Cluster mode: refuse a change of a VM another host serves (EREMOTE, naming it). Without a
   * cluster, null: the caller awaits nothing (no extra turn on the hot path).
   */
  #serving(vm: string): Promise<void> | null {
    return this.cluster !== null ? this.cluster.ensureServes(vm) : null;
  }

  // ------------------------------------------------------------------ events

  on(listener: (e: AuthorityEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #remember(e: AuthorityEvent): void {
    const evicted = this.#ring[this.#ringPos];
    if (evicted !== undefined && evicted.seq > this.#lostUpTo) this.#lostUpTo = evicted.seq;
    this.#ring[this.#ringPos] = e;
    this.#ringPos = (this.#ringPos + 1) % this.#ring.length;
    if (e.seq > this.#lastSeq) this.#lastSeq = e.seq;
  }

  #record(e: AuthorityEvent): void {
    this.#remember(e);
    for (const l of this.#listeners) {
      try {
        l(e);
      } catch {
        // a slow or broken subscriber must not break the authority
      }
    }
  }

  /**
   * Recent events, oldest first: those after `since` (a seq), of one PASID or VM, the last `limit`.
   * `oldest` is the seq of the oldest event still kept (events before it are gone: a gap).
   */
  recentEvents(filter: { since?: number; pasid?: number; vm?: string; limit?: number } = {}): AuthorityEvent[] {
    const out: AuthorityEvent[] = [];
    const n = this.#ring.length;
    for (let i = 0; i < n; i++) {
      const e = this.#ring[(this.#ringPos + i) % n];
      if (e === undefined) continue;
      if (filter.since !== undefined && e.seq <= filter.since) continue;
      if (filter.pasid !== undefined && !eventHasPasid(e, filter.pasid)) continue;
      if (filter.vm !== undefined && e.vm !== filter.vm) continue;
      out.push(e);
    }
    return filter.limit !== undefined ? out.slice(-filter.limit) : out;
  }

  /** Events numbered up to this one may be gone: a subscriber resuming from before it has a gap. */
  get lostUpTo(): number {
    return this.#lostUpTo;
  }

  /** The seq of the oldest event kept (the next one's when none is kept). */
  get oldestSeq(): number {
    const e = this.#ring[this.#ringPos] ?? this.#ring.find((x) => x !== undefined);
    return e?.seq ?? this.#lastSeq + 1;
  }

  /** Sequence number of the last event (0 before any; it never goes back, across restarts). */
  get lastSeq(): number {
    return this.#lastSeq;
  }

  // ------------------------------------------------------------------ tokens

  /** The admin token: set its hash once (first start) or check one. */
  get hasAdmin(): boolean {
    return this.#adminHash !== null;
  }

  async setAdminTokenHash(hash: string): Promise<void> {
    if (!TOKEN_HASH_RE.test(hash)) throw new IoasidError('EINVAL', 'an admin token hash is 64 lowercase hex digits (hashToken)', {});
    const vm = this.host.vmByCredential(hash);
    if (vm !== null) throw new IoasidError('EEXIST', `the admin token is VM ${vm.id}'s token`, { vm: vm.id });
    await this.store.apply([{ op: 'putMeta', row: { key: ADMIN_HASH_KEY, value: hash } }]);
    this.#adminHash = hash;
  }

  isAdmin(token: string): boolean {
    return this.#adminHash !== null && tokenMatches(token, this.#adminHash);
  }

  /**
   * Who a token is, with one hash: the admin, the VM it belongs to, or nobody. The admin hash is
   * compared in constant time; VM tokens are found by the SHA-256 of the token (the VM's credential
   * in the host), which an attacker cannot steer, so the lookup leaks nothing useful.
   */
  identify(token: string): { admin: boolean; vm: string | null } {
    const h = hashToken(token);
    const admin = this.#adminHash !== null && sameHash(h, this.#adminHash);
    return { admin, vm: admin ? null : (this.host.vmByCredential(h)?.id ?? null) };
  }

  /** Give a VM a new token; the old one stops working at once. Returns the new token (shown once). */
  async replaceToken(vmId: string): Promise<{ vm: string; token: string }> {
    const serving = this.#serving(vmId);
    if (serving !== null) await serving;
    const token = newToken();
    await this.host.vm(vmId).replaceCredential(hashToken(token));
    return { vm: vmId, token };
  }

  // ------------------------------------------------------------------ VMs

  vm(id: string): Vm<Journal> {
    return this.host.vm(id);
  }

  vmInfo(id: string): VmInfo {
    const vm = this.host.vm(id);
    return {
      id: vm.id,
      quota: vm.quota,
      used: vm.used,
      createdAt: vm.createdAt,
      viommus: vm.viommuConfigs().map((v) => ({ segment: v.segment, layout: v.layout, rangeExtension: v.rangeExtension })),
      devices: vm.devices().map((d) => ({ bdf: d.bdf, segment: d.segment, pasidBits: d.pasidBits })),
      bindings: vm.bindings().map(([bdf, pasid]) => ({ bdf, pasid })),
      ...(this.cluster !== null ? { host: this.cluster.hostOf(vm.id) ?? this.cluster.hostId } : {}),
    };
  }

  listVms(): VmInfo[] {
    return this.host.vms().map((vm) => this.vmInfo(vm.id)).sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  /** Create a VM; returns its info and its bearer token (shown once, stored hashed). */
  async createVm(req: CreateVmRequest): Promise<{ vm: VmInfo; token: string }> {
    const token = newToken();
    const vm = await this.host.createVm({ ...req, credential: hashToken(token) });
    return { vm: this.vmInfo(vm.id), token };
  }

  /** Destroy a VM: unbind everything, free every PASID, forget it (one commit). */
  async destroyVm(id: string): Promise<{ freed: number[]; bindings: number }> {
    const serving = this.#serving(id);
    if (serving !== null) await serving;
    const r = await this.host.destroyVm(id);
    return { freed: r.pasids, bindings: r.bindings.length };
  }

  async addViommu(vmId: string, spec: ViommuSpec): Promise<VmInfo> {
    const serving = this.#serving(vmId);
    if (serving !== null) await serving;
    await this.host.vm(vmId).addViommu(spec);
    return this.vmInfo(vmId);
  }

  async removeViommu(vmId: string, segment: number): Promise<VmInfo> {
    const serving = this.#serving(vmId);
    if (serving !== null) await serving;
    await this.host.vm(vmId).removeViommu(segment);
    return this.vmInfo(vmId);
  }

  async addDevice(vmId: string, spec: { bdf: string; pasidBits?: number }): Promise<VmInfo> {
    const serving = this.#serving(vmId);
    if (serving !== null) await serving;
    await this.host.vm(vmId).assignDevice(spec);
    return this.vmInfo(vmId);
  }

  async removeDevice(vmId: string, bdf: string): Promise<VmInfo> {
    const serving = this.#serving(vmId);
    if (serving !== null) await serving;
    await this.host.vm(vmId).removeDevice(bdf);
    return this.vmInfo(vmId);
  }

  // ------------------------------------------------------------------ PASIDs

  /** Allocate `count` PASIDs for a VM in [min, max]; all or nothing, one commit. */
  async allocPasids(vmId: string, opts: { min?: number; max?: number; count?: number } = {}): Promise<number[]> {
    const serving = this.#serving(vmId);
    if (serving !== null) await serving;
    return this.host.vm(vmId).allocPasids(opts);
  }

  /** Free a VM's PASID: EACCES if another VM's, ENOENT if unknown, EBUSY if bound. */
  async freePasid(vmId: string, pasid: number): Promise<void> {
    const serving = this.#serving(vmId);
    if (serving !== null) await serving;
    return this.host.vm(vmId).freePasid(pasid);
  }

  async bind(vmId: string, pasid: number, bdf: string): Promise<void> {
    const serving = this.#serving(vmId);
    if (serving !== null) await serving;
    await this.host.vm(vmId).bind(bdf, pasid);
  }

  async unbind(vmId: string, pasid: number, bdf: string): Promise<void> {
    const serving = this.#serving(vmId);
    if (serving !== null) await serving;
    await this.host.vm(vmId).unbind(bdf, pasid);
  }

  /** One of a VM's PASIDs (the VM's view: ENOENT unknown, EACCES another VM's). */
  vmPasidInfo(vmId: string, pasid: number): PasidInfo {
    this.host.vm(vmId).lookup(pasid);
    const info = this.pasidInfo(pasid);
    // A VM sees its own history of the PASID, not that of the VMs that held it before.
    return { ...info, history: info.history.filter((e) => e.vm === vmId) };
  }

  pasidInfo(pasid: number): PasidInfo {
    const space = this.host.space;
    const known = space.has(pasid);
    const owner = known ? (space.ownerOf(pasid)?.name ?? null) : null;
    const history = this.recentEvents({ pasid, limit: 32 });
    if (!known && history.length === 0) throw new IoasidError('ENOENT', `PASID ${fmtId(pasid)} is not allocated and has no history`, { pasid });
    const bindings = owner === null ? [] : this.host.vm(owner).boundTo(pasid);
    return { pasid, owner, bindings, history };
  }

  /** The namespace compactly: per owner, sorted runs [start, length] (the dashboard). */
  namespace(): { capacity: number; owners: { owner: string | null; count: number; runs: number[] }[] } {
    const byOwner = new Map<string | null, number[]>();
    let prevOwner: string | null | undefined;
    let runStart = -1;
    let runLen = 0;
    const flush = () => {
      if (runLen === 0 || prevOwner === undefined) return;
      let r = byOwner.get(prevOwner);
      if (r === undefined) byOwner.set(prevOwner, (r = []));
      r.push(runStart, runLen);
    };
    for (const [id, set] of this.host.space.entries()) {
      const owner = set === null ? null : set.name;
      if (owner === prevOwner && id === runStart + runLen) {
        runLen++;
        continue;
      }
      flush();
      prevOwner = owner;
      runStart = id;
      runLen = 1;
    }
    flush();
    return {
      capacity: PASID_MAX,
      owners: [...byOwner].map(([owner, runs]) => ({ owner, count: runs.reduce((n, v, i) => (i % 2 ? n + v : n), 0), runs })),
    };
  }

  /**
   * The namespace as one owner index per PASID, for the dashboard's map (`GET /v1/namespace/map`,
   * format in namespace-map.ts): cell 0 = free, 1 = the host itself (no set), 2.. = the sets (VMs)
   * by name. Taken synchronously with `seq`, so a client applies exactly the events after it. One
   * ascending pass over the table, no object per PASID.
   */
  namespaceMap(): { seq: number; capacity: number; owners: { index: number; owner: string | null; count: number }[]; cells: Uint8Array | Uint16Array } {
    const space = this.host.space;
    const sets = space.sets().sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const capacity = PASID_MAX + 1;
    const cells = sets.length + 1 > 255 ? new Uint16Array(capacity) : new Uint8Array(capacity);
    const indexOf = new Map<object, number>(sets.map((set, i) => [set, i + 2]));
    const counts = new Array<number>(sets.length + 2).fill(0);
    for (const [id, set] of space.entries()) {
      const index = set === null ? 1 : (indexOf.get(set) ?? 1);
      cells[id] = index;
      counts[index] = (counts[index] as number) + 1;
    }
    return {
      seq: this.#lastSeq,
      capacity,
      owners: [{ index: 1, owner: null, count: counts[1] ?? 0 }, ...sets.map((set, i) => ({ index: i + 2, owner: set.name, count: counts[i + 2] ?? 0 }))],
      cells,
    };
  }

  /** The configuration of one vIOMMU's VCMD device (what the register inspector decodes with). */
  viommuConfig(vmId: string, segment: number): { segment: number; config: VcmdDeviceConfig } {
    const v = this.host.vm(vmId).viommu(segment);
    return { segment: v.segment, config: v.device.config };
  }

  // ------------------------------------------------------------------ trapped MMIO

  /**
   * A VMM forwards a trapped register read or write of one vIOMMU. A write is answered once what
   * it changed (the command it fired included) is committed with the registers the guest will
   * read; one that could not be committed is taken back and answered with the error (the VMM sends
   * it again: numbered writes are applied once).
   */
  async mmio(vmId: string, segment: number, access: { op: 'read' | 'write'; offset: number; size: AccessSize; value?: bigint; writer?: VcmdWriter }): Promise<bigint | null> {
    const v = this.host.vm(vmId).viommu(segment);
    const serving = this.#serving(vmId);
    if (serving !== null) await serving;
    if (access.op === 'read') return v.device.read(access.offset, access.size);
    await v.device.writeDurable(access.offset, access.value ?? 0n, access.size, access.writer);
    return null;
  }

  /** Registers of one vIOMMU decoded, and its recent commands (the dashboard's inspector). */
  registers(vmId: string, segment: number): { layout: 'A' | 'B'; values: Record<string, string>; decoded: Record<string, Record<string, string>>; recent: readonly VcmdLogEntry[] } {
    const v = this.host.vm(vmId).viommu(segment);
    const map = v.device.map;
    const names = ['CAP_REG', 'ECAP_REG', 'VCCAP_REG', 'VCMD_REG', ...(map.layout === 'B' ? (['VCMD_EO_REG'] as const) : []), 'VCRSP_REG'] as const;
    const values: Record<string, string> = {};
    const decoded: Record<string, Record<string, string>> = {};
    for (const name of names) {
      const offset = registerOffset(map, name);
      const value = v.device.read(offset, 8);
      values[name] = `0x${value.toString(16)}`;
      decoded[name] = Object.fromEntries(Object.entries(decodeRegister(map, name, value)).map(([k, x]) => [k, `0x${(x as bigint).toString(16)}`]));
    }
    return { layout: map.layout, values, decoded, recent: v.device.recentCommands() };
  }

  // ------------------------------------------------------------------ cluster (docs/cluster.md)

  #needCluster(): ClusterRole {
    if (this.cluster === null) throw new IoasidError('EOPNOTSUPP', `not a cluster: store ${this.store.spec} is not etcd (start with --store etcd://... --host-id NAME)`, { store: this.store.kind });
    return this.cluster;
  }

  /** The domain as this host sees it: hosts (alive or not), VMs and where they run, blocks. */
  clusterStatus(): ClusterStatus {
    return this.#needCluster().status();
  }

  /** Live migration: the VM, its sets, PASIDs and bindings move to host `to` in one commit. */
  async migrateVm(vmId: string, to: string): Promise<MigrateResult> {
    return this.#needCluster().migrate(this.host.vm(vmId), to);
  }

  /** An operator's reclaim of a dead host: fence it, free its VMs' PASIDs and its blocks. */
  async reclaimHost(hostId: string, opts: { force?: boolean } = {}): Promise<ReclaimReport> {
    return this.#needCluster().reclaim(hostId, opts);
  }
}

export type { IoasidErrorCode };
