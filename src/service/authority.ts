/**
 * The PASID authority: the host of DESIGN 5 made durable (DESIGN 6-7). It owns a level-0 `Host`
 * and a `Store`, and applies every change to both so that an acknowledged change is committed:
 *  1. An allocation is made in memory first (so no one else can take the PASID), then persisted;
 *     if the commit fails it is undone in memory and the caller gets the error.
 *  2. A free is validated in memory, persisted, and only then released in memory: a PASID whose
 *     delete is not yet durable can never be handed to another VM.
 *  3. Every other change (VMs, vIOMMUs, devices, bindings) is validated against the host model,
 *     persisted, then applied; a refused request changes nothing.
 *  4. VCMD commands arriving through trapped MMIO go through the same rules: the device's IP bit
 *     stays set until the allocation or free is committed, so the guest never sees a PASID that
 *     a crash could take back.
 * At start, the stored rows are replayed into the host model, which re-checks them (ownership,
 * quotas, bindings): a state that does not replay cleanly is refused.
 *  5. With a cluster coordinator (store etcd, docs/cluster.md) the host model is the whole
 *     migration domain, kept current by the coordinator; this authority serves only the VMs its
 *     host runs (others: ENODEV naming their host), and allocates through the coordinator.
 */
import {
  IoasidError, PASID_MAX, PASID_MIN, fmtId, isIoasidError, type IoasidErrorCode,
} from '../core/index.ts';
import { decodeRegister, registerOffset, type VcmdBackend, type VcmdDeviceConfig, type VcmdLogEntry } from '../vtd/index.ts';
import { Host, parseDevice, type HostEvent, type Vm, type ViommuSpec } from '../host/index.ts';
import type { Mutation, Store, StoredState, VmRow } from '../store/index.ts';
import type { ClusterCoordinator, ClusterModelPort, ClusterStatus, MigrateResult, ReclaimReport } from '../cluster/index.ts';
import type { ApiEvent, CreateVmBody, PasidInfo, VmInfo } from '../api/index.ts';
import { timingSafeEqual } from 'node:crypto';
import { hashToken, newToken, tokenMatches } from './tokens.ts';
import { eventHasPasid, stampEvent } from './events.ts';

/** The wire types (src/api) under the names the service has used. */
export type { VmInfo, PasidInfo };
/** What the service records and streams: one committed change (the contract's event). */
export type AuthorityEvent = ApiEvent;

export interface AuthorityOptions {
  readonly store: Store;
  /** Clock (ms since the epoch); injected for tests. */
  readonly now?: () => number;
  /** Events kept for PASID histories (a ring). */
  readonly historySize?: number;
  /** Cluster mode: the coordinator over the etcd store (which must be `store`). */
  readonly cluster?: ClusterCoordinator;
}

export type CreateVmRequest = CreateVmBody;

const ADMIN_HASH_KEY = 'admin.tokenHash';

export class PasidAuthority {
  readonly host: Host;
  readonly store: Store;
  /** The cluster coordinator, or null with a local store. */
  readonly cluster: ClusterCoordinator | null;
  readonly #now: () => number;
  readonly #tokens = new Map<string, string>();
  /** token hash -> VM, to tell "another VM's token" (403) from "no valid token" (401). */
  readonly #byHash = new Map<string, string>();
  readonly #created = new Map<string, number>();
  readonly #listeners = new Set<(e: AuthorityEvent) => void>();
  readonly #ring: (AuthorityEvent | undefined)[];
  #ringPos = 0;
  #seq = 0;
  #adminHash: string | null = null;
  /** Per VM: PASID operations in flight (a destroy waits for them) and whether it is going. */
  readonly #inflight = new Map<string, Set<Promise<unknown>>>();
  readonly #destroying = new Set<string>();
  /** Per-VM serialisation of structural changes (create/destroy/plug). */
  #structural: Promise<unknown> = Promise.resolve();

  private constructor(opts: AuthorityOptions) {
    this.store = opts.store;
    this.cluster = opts.cluster ?? null;
    this.#now = opts.now ?? Date.now;
    this.#ring = new Array<AuthorityEvent | undefined>(opts.historySize ?? 65536).fill(undefined);
    this.host = new Host({
      name: 'authority',
      now: this.#now,
      wrapBackend: (vm, inner) => this.#durableBackend(vm, inner),
    });
    this.host.on((e) => this.#publish(e));
  }

  /** Open the store, validate it and replay it into a fresh host. */
  static async open(opts: AuthorityOptions): Promise<PasidAuthority> {
    const a = new PasidAuthority(opts);
    const state = await opts.store.open();
    try {
      a.#replay(state);
    } catch (e) {
      await opts.store.close().catch(() => {});
      if (isIoasidError(e)) throw new IoasidError('EINVAL', `stored state does not replay: ${e.message}`, { ...e.details, cause: e.code });
      throw e;
    }
    a.cluster?.attach(a.#clusterPort());
    return a;
  }

  /** What the cluster coordinator may do to this authority's model and registries. */
  #clusterPort(): ClusterModelPort {
    return {
      host: this.host,
      hold: (fn) => this.#hold(fn),
      release: (events) => this.#release(events),
      vmUpserted: (row) => {
        const old = this.#tokens.get(row.id);
        if (old !== undefined && old !== row.tokenHash) this.#byHash.delete(old);
        this.#tokens.set(row.id, row.tokenHash);
        this.#byHash.set(row.tokenHash, row.id);
        this.#created.set(row.id, row.createdAt);
      },
      vmRemoved: (id) => {
        const h = this.#tokens.get(id);
        if (h !== undefined) this.#byHash.delete(h);
        this.#tokens.delete(id);
        this.#created.delete(id);
      },
      metaChanged: (key, value) => {
        if (key === ADMIN_HASH_KEY) this.#adminHash = value;
      },
    };
  }

  #replay(state: StoredState): void {
    for (const m of state.meta) if (m.key === ADMIN_HASH_KEY) this.#adminHash = m.value;
    for (const row of state.vms) {
      this.host.createVm({
        id: row.id,
        quota: row.quota,
        viommus: state.viommus.filter((v) => v.vm === row.id).map((v) => ({ segment: v.segment, layout: v.layout, rangeExtension: v.rangeExtension })),
        devices: state.devices.filter((d) => d.vm === row.id).map((d) => ({ bdf: d.bdf, pasidBits: d.pasidBits })),
      });
      this.#tokens.set(row.id, row.tokenHash);
      this.#byHash.set(row.tokenHash, row.id);
      this.#created.set(row.id, row.createdAt);
    }
    for (const p of state.pasids) {
      const set = p.vm === null ? null : this.host.vm(p.vm).set;
      this.host.space.allocSync(set, p.pasid, p.pasid);
    }
    for (const b of state.bindings) this.host.vm(b.vm).bind(b.bdf, b.pasid);
    this.#ring.fill(undefined);
    this.#seq = 0;
  }

  async close(): Promise<void> {
    await this.#structural.catch(() => {});
    for (const vm of this.host.vms()) for (const v of vm.viommus()) await v.device.settled();
    await this.cluster?.close();
    await this.store.close();
  }

  // ------------------------------------------------------------------ events

  on(listener: (e: AuthorityEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** While set, host events are held back (a change not yet committed must not be announced). */
  #held: HostEvent[] | null = null;

  /**
   * Run a synchronous model step with its events held back; they are published by `release`
   * once the change is committed, or dropped when it is not (a refused request announces nothing).
   */
  #hold<T>(fn: () => T): { result: T; events: HostEvent[] } {
    const outer = this.#held;
    const events: HostEvent[] = [];
    this.#held = events;
    try {
      return { result: fn(), events };
    } finally {
      this.#held = outer;
    }
  }

  /** Events of undone, never-announced changes, dropped while their undo runs. */
  #mutes: ((e: HostEvent) => boolean)[] = [];

  /**
   * Undo an uncommitted change without announcing it. The undo may await, so instead of holding
   * every event, only the ones `mute` recognises as this undo's are dropped.
   */
  async #quietly(mute: (e: HostEvent) => boolean, fn: () => Promise<unknown>): Promise<void> {
    this.#mutes.push(mute);
    try {
      await fn();
    } finally {
      this.#mutes = this.#mutes.filter((m) => m !== mute);
    }
  }

  #release(events: readonly HostEvent[]): void {
    for (const e of events) this.#publish(e);
  }

  #publish(e: HostEvent): void {
    if (this.#held !== null) {
      this.#held.push(e);
      return;
    }
    if (this.#mutes.length > 0 && this.#mutes.some((m) => m(e))) return;
    const ev = stampEvent(e, ++this.#seq, this.#now());
    this.#ring[this.#ringPos] = ev;
    this.#ringPos = (this.#ringPos + 1) % this.#ring.length;
    for (const l of this.#listeners) {
      try {
        l(ev);
      } catch {
        // a slow or broken subscriber must not break the authority
      }
    }
  }

  /** Recent events, oldest first, optionally only those of one PASID or VM. */
  recentEvents(filter: { pasid?: number; vm?: string; limit?: number } = {}): AuthorityEvent[] {
    const out: AuthorityEvent[] = [];
    const n = this.#ring.length;
    for (let i = 0; i < n; i++) {
      const e = this.#ring[(this.#ringPos + i) % n];
      if (e === undefined) continue;
      if (filter.pasid !== undefined && !eventHasPasid(e, filter.pasid)) continue;
      if (filter.vm !== undefined && e.vm !== filter.vm) continue;
      out.push(e);
    }
    return filter.limit !== undefined ? out.slice(-filter.limit) : out;
  }

  // ------------------------------------------------------------------ tokens

  /** The admin token: set its hash once (first start) or check one. */
  get hasAdmin(): boolean {
    return this.#adminHash !== null;
  }

  async setAdminTokenHash(hash: string): Promise<void> {
    await this.store.apply([{ op: 'putMeta', row: { key: ADMIN_HASH_KEY, value: hash } }]);
    this.#adminHash = hash;
  }

  isAdmin(token: string): boolean {
    return this.#adminHash !== null && tokenMatches(token, this.#adminHash);
  }

  /**
   * Who a token is, with one hash: the admin, the VM it belongs to, or nobody. The admin hash is
   * compared in constant time; VM tokens are found by the SHA-256 of the token, which an attacker
   * cannot steer, so the lookup leaks nothing useful about any token.
   */
  identify(token: string): { admin: boolean; vm: string | null } {
    const h = hashToken(token);
    const admin = this.#adminHash !== null && h.length === this.#adminHash.length && timingSafeEqual(Buffer.from(h, 'hex'), Buffer.from(this.#adminHash, 'hex'));
    return { admin, vm: admin ? null : (this.#byHash.get(h) ?? null) };
  }

  // ------------------------------------------------------------------ serialisation

  /** Structural changes run one at a time (they await the store and guest callbacks). */
  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#structural.then(fn, fn);
    this.#structural = run.catch(() => {});
    return run;
  }

  /**
   * Run a PASID operation of one VM, tracked so that a destroy of that VM waits for it (rule 2
   * keeps a PASID in memory until its delete is durable; a destroy must not list it again).
   */
  #vmOp<T>(vmId: string, fn: () => Promise<T>): Promise<T> {
    if (this.#destroying.has(vmId)) return Promise.reject(new IoasidError('EBUSY', `VM ${vmId} is being destroyed`, { vm: vmId }));
    let set = this.#inflight.get(vmId);
    if (set === undefined) this.#inflight.set(vmId, (set = new Set()));
    const run = fn();
    const tracked = run.catch(() => {});
    set.add(tracked);
    void tracked.then(() => {
      set.delete(tracked);
      if (set.size === 0 && this.#inflight.get(vmId) === set) this.#inflight.delete(vmId);
    });
    return run;
  }

  // ------------------------------------------------------------------ VMs

  vm(id: string): Vm {
    return this.host.vm(id);
  }

  vmInfo(id: string): VmInfo {
    const vm = this.host.vm(id);
    return {
      id: vm.id,
      quota: vm.quota,
      used: this.host.space.setCount(vm.set),
      createdAt: this.#created.get(vm.id) ?? 0,
      viommus: vm.viommus().map((v) => ({ segment: v.segment, layout: v.device.config.layout, rangeExtension: v.device.config.rangeExtension })),
      devices: vm.devices().map((d) => ({ bdf: d.bdf, segment: d.segment, pasidBits: d.pasidBits })),
      bindings: vm.bindings().map(([bdf, pasid]) => ({ bdf, pasid })),
      ...(this.cluster !== null ? { host: this.cluster.hostOf(vm.id) ?? this.cluster.hostId } : {}),
    };
  }

  listVms(): VmInfo[] {
    return this.host.vms().map((vm) => this.vmInfo(vm.id)).sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  /** Create a VM; returns its info and its bearer token (shown once, stored hashed). */
  createVm(req: CreateVmRequest): Promise<{ vm: VmInfo; token: string }> {
    return this.#serial(async () => {
      // Validate by building it in the model first; undo if the commit fails.
      const { result: vm, events } = this.#hold(() => this.host.createVm({
        id: req.id,
        ...(req.quota !== undefined ? { quota: req.quota } : {}),
        viommus: req.viommus ?? [],
        devices: req.devices ?? [],
      }));
      const token = newToken();
      const at = this.#now();
      const row: VmRow = { id: vm.id, name: vm.id, quota: vm.quota, tokenHash: hashToken(token), createdAt: at };
      const batch: Mutation[] = [
        { op: 'putVm', row },
        ...vm.viommus().map((v): Mutation => ({ op: 'putViommu', row: { vm: vm.id, segment: v.segment, layout: v.device.config.layout, rangeExtension: v.device.config.rangeExtension } })),
        ...vm.devices().map((d): Mutation => ({ op: 'putDevice', row: { vm: vm.id, bdf: d.bdf, segment: d.segment, pasidBits: d.pasidBits } })),
      ];
      try {
        await this.store.apply(batch);
      } catch (e) {
        // The VM was never announced: none of its events are.
        await this.#quietly((ev) => ev.vm === vm.id, () => this.host.destroyVm(vm.id));
        throw e;
      }
      this.#release(events);
      this.#tokens.set(vm.id, row.tokenHash);
      this.#byHash.set(row.tokenHash, vm.id);
      this.#created.set(vm.id, at);
      return { vm: this.vmInfo(vm.id), token };
    });
  }

  /** Destroy a VM: unbind everything, free every PASID, forget it (one commit). */
  destroyVm(id: string): Promise<{ freed: number[]; bindings: number }> {
    return this.#serial(async () => {
      const vm = this.host.vm(id);
      await this.cluster?.ensureServes(id, { forDestroy: true });
      this.#destroying.add(id);
      try {
        return await this.#destroy(vm, id);
      } finally {
        this.#destroying.delete(id);
      }
    });
  }

  async #destroy(vm: Vm, id: string): Promise<{ freed: number[]; bindings: number }> {
    {
      // Let PASID operations already started finish (new ones are refused meanwhile).
      for (let set = this.#inflight.get(id); set !== undefined && set.size > 0; set = this.#inflight.get(id)) await Promise.all(set);
      for (const v of vm.viommus()) await v.device.settled();
      const batch: Mutation[] = [
        ...vm.bindings().map(([bdf, pasid]): Mutation => ({ op: 'deleteBinding', pasid, bdf })),
        ...vm.pasids().map((pasid): Mutation => ({ op: 'deletePasid', pasid, vm: id })),
        ...vm.devices().map((d): Mutation => ({ op: 'deleteDevice', vm: id, bdf: d.bdf })),
        ...vm.viommus().map((v): Mutation => ({ op: 'deleteViommu', vm: id, segment: v.segment })),
        { op: 'deleteVm', id },
      ];
      await this.store.apply(batch);
      const r = await this.host.destroyVm(id);
      const h = this.#tokens.get(id);
      if (h !== undefined) this.#byHash.delete(h);
      this.#tokens.delete(id);
      this.#created.delete(id);
      return { freed: r.pasids, bindings: r.bindings.length };
    }
  }

  addViommu(vmId: string, spec: ViommuSpec): Promise<VmInfo> {
    return this.#serial(async () => {
      const vm = this.host.vm(vmId);
      await this.cluster?.ensureServes(vmId);
      const { result: v, events } = this.#hold(() => vm.addViommu(spec));
      try {
        await this.store.apply([{ op: 'putViommu', row: { vm: vmId, segment: v.segment, layout: v.device.config.layout, rangeExtension: v.device.config.rangeExtension } }]);
      } catch (e) {
        await this.#quietly((ev) => ev.type === 'viommu-removed' && ev.vm === vmId && ev.segment === v.segment, () => vm.removeViommu(v.segment));
        throw e;
      }
      this.#release(events);
      return this.vmInfo(vmId);
    });
  }

  removeViommu(vmId: string, segment: number): Promise<VmInfo> {
    return this.#serial(async () => {
      const vm = this.host.vm(vmId);
      vm.viommu(segment);
      await this.cluster?.ensureServes(vmId);
      const behind = vm.devices().filter((d) => d.segment === segment);
      if (behind.length > 0) {
        throw new IoasidError('EBUSY', `vIOMMU on segment ${segment} still translates for ${behind.map((d) => d.bdf).join(', ')}`, { vm: vmId, segment });
      }
      await this.store.apply([{ op: 'deleteViommu', vm: vmId, segment }]);
      await vm.removeViommu(segment);
      return this.vmInfo(vmId);
    });
  }

  addDevice(vmId: string, spec: { bdf: string; pasidBits?: number }): Promise<VmInfo> {
    return this.#serial(async () => {
      const vm = this.host.vm(vmId);
      await this.cluster?.ensureServes(vmId);
      const { result: d, events } = this.#hold(() => vm.assignDevice(spec));
      try {
        await this.store.apply([{ op: 'putDevice', row: { vm: vmId, bdf: d.bdf, segment: d.segment, pasidBits: d.pasidBits } }]);
      } catch (e) {
        await this.#quietly((ev) => ev.type === 'device-removed' && ev.vm === vmId && ev.bdf === d.bdf, () => vm.removeDevice(d.bdf));
        throw e;
      }
      this.#release(events);
      return this.vmInfo(vmId);
    });
  }

  removeDevice(vmId: string, bdf: string): Promise<VmInfo> {
    return this.#serial(async () => {
      const vm = this.host.vm(vmId);
      const d = vm.device(bdf);
      await this.cluster?.ensureServes(vmId);
      const bound = vm.bindings().filter(([b]) => b === d.bdf);
      await this.store.apply([
        ...bound.map(([b, pasid]): Mutation => ({ op: 'deleteBinding', pasid, bdf: b })),
        { op: 'deleteDevice', vm: vmId, bdf: d.bdf },
      ]);
      await vm.removeDevice(d.bdf);
      return this.vmInfo(vmId);
    });
  }

  // ------------------------------------------------------------------ PASIDs

  /** Allocate `count` PASIDs for a VM in [min, max]; all or nothing, one commit. */
  allocPasids(vmId: string, opts: { min?: number; max?: number; count?: number } = {}): Promise<number[]> {
    return this.#vmOp(vmId, () => this.#allocPasidsNow(vmId, opts));
  }

  async #allocPasidsNow(vmId: string, opts: { min?: number; max?: number; count?: number } = {}): Promise<number[]> {
    const vm = this.host.vm(vmId);
    const min = opts.min ?? PASID_MIN;
    const max = opts.max ?? PASID_MAX;
    const count = opts.count ?? 1;
    if (min < PASID_MIN || max > PASID_MAX || min > max) {
      throw new IoasidError('EINVAL', `PASID range [${fmtId(min)}, ${fmtId(max)}] must lie within [1, 0xfffff] with min <= max`, { min, max });
    }
    if (this.cluster !== null) return this.cluster.allocPasids(vm, min, max, count, this.#now());
    const got: number[] = [];
    const { events } = this.#hold(() => {
      try {
        for (let i = 0; i < count; i++) got.push(this.host.space.allocSync(vm.set, min, max));
      } catch (e) {
        for (const p of got) this.host.space.freeSync(p, vm.set);
        throw e;
      }
    });
    const at = this.#now();
    try {
      await this.store.apply(got.map((pasid): Mutation => ({ op: 'insertPasid', row: { pasid, vm: vmId, allocatedAt: at } })));
    } catch (e) {
      this.#hold(() => {
        for (const p of got) if (!vm.destroyed) this.host.space.freeSync(p, vm.set);
      });
      throw e;
    }
    this.#release(events);
    return got;
  }

  /** Free a VM's PASID: EACCES if another VM's, ENOENT if unknown, EBUSY if bound. */
  freePasid(vmId: string, pasid: number): Promise<void> {
    return this.#vmOp(vmId, () => this.#freePasidNow(vmId, pasid));
  }

  async #freePasidNow(vmId: string, pasid: number): Promise<void> {
    const vm = this.host.vm(vmId);
    this.#checkFree(vm, pasid);
    await this.cluster?.ensureServes(vmId);
    await this.store.apply([{ op: 'deletePasid', pasid, vm: vmId }]);
    this.host.space.freeSync(pasid, vm.set);
  }

  #checkFree(vm: Vm, pasid: number): void {
    this.host.space.find(vm.set, pasid); // ENOENT / EACCES
    const bound = vm.bindings().filter(([, p]) => p === pasid).map(([b]) => b);
    if (bound.length > 0) throw new IoasidError('EBUSY', `PASID ${pasid} is still bound to ${bound.join(', ')}`, { pasid, devices: bound });
  }

  bind(vmId: string, pasid: number, bdf: string): Promise<void> {
    return this.#vmOp(vmId, () => this.#bindNow(vmId, pasid, bdf));
  }

  async #bindNow(vmId: string, pasid: number, bdf: string): Promise<void> {
    const vm = this.host.vm(vmId);
    const d = parseDevice({ bdf });
    await this.cluster?.ensureServes(vmId);
    const { events } = this.#hold(() => vm.bind(d.bdf, pasid));
    try {
      await this.store.apply([{ op: 'putBinding', row: { pasid, vm: vmId, bdf: d.bdf, boundAt: this.#now() } }]);
    } catch (e) {
      if (!vm.destroyed) this.#hold(() => vm.unbind(d.bdf, pasid));
      throw e;
    }
    this.#release(events);
  }

  unbind(vmId: string, pasid: number, bdf: string): Promise<void> {
    return this.#vmOp(vmId, () => this.#unbindNow(vmId, pasid, bdf));
  }

  async #unbindNow(vmId: string, pasid: number, bdf: string): Promise<void> {
    const vm = this.host.vm(vmId);
    const d = parseDevice({ bdf });
    if (!vm.bindings().some(([b, p]) => b === d.bdf && p === pasid)) {
      this.host.space.find(vm.set, pasid);
      throw new IoasidError('ENOENT', `device ${d.bdf} is not bound to PASID ${pasid}`, { bdf: d.bdf, pasid });
    }
    await this.cluster?.ensureServes(vmId);
    await this.store.apply([{ op: 'deleteBinding', pasid, bdf: d.bdf }]);
    vm.unbind(d.bdf, pasid);
  }

  pasidInfo(pasid: number): PasidInfo {
    let owner: string | null = null;
    let known = true;
    try {
      owner = this.host.space.ownerOf(pasid)?.name ?? null;
    } catch (e) {
      if (!isIoasidError(e, 'ENOENT')) throw e;
      known = false;
    }
    const history = this.recentEvents({ pasid, limit: 32 });
    if (!known && history.length === 0) throw new IoasidError('ENOENT', `PASID ${fmtId(pasid)} is not allocated and has no history`, { pasid });
    const bindings = owner === null || !known ? [] : this.host.vm(owner).bindings().filter(([, p]) => p === pasid).map(([b]) => b);
    return { pasid, owner: known ? owner : null, bindings, history };
  }

  /** The namespace compactly: per owner, sorted runs [start, length] (DESIGN 7, dashboard). */
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

  /** Sequence number of the last published event (0 before any). */
  get lastSeq(): number {
    return this.#seq;
  }

  /**
   * The namespace as one owner index per PASID, for the dashboard's map (`GET /v1/namespace/map`,
   * format in namespace-map.ts): cell 0 = free, 1 = the host itself (no set), 2.. = the sets (VMs)
   * by name. Taken synchronously with `seq`, so a client applies exactly the events after it. One
   * ascending pass over the table, no object per PASID (~50-90 ms for 1,000,000 PASIDs).
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
      seq: this.#seq,
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

  /** A VMM forwards a trapped register read or write of one vIOMMU. */
  mmio(vmId: string, segment: number, access: { op: 'read' | 'write'; offset: number; size: 4 | 8; value?: bigint }): bigint | null {
    const v = this.host.vm(vmId).viommu(segment);
    this.cluster?.assertServes(vmId);
    if (access.op === 'read') return v.device.read(access.offset, access.size);
    v.device.write(access.offset, access.value ?? 0n, access.size);
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

  #needCluster(): ClusterCoordinator {
    if (this.cluster === null) throw new IoasidError('EOPNOTSUPP', `not a cluster: store ${this.store.spec} is not etcd (start with --store etcd://... --host-id NAME)`, { store: this.store.kind });
    return this.cluster;
  }

  /** The domain as this host sees it: hosts (alive or not), VMs and where they run, blocks. */
  clusterStatus(): ClusterStatus {
    return this.#needCluster().status();
  }

  /** Live migration: the VM, its sets, PASIDs and bindings move to host `to` in one commit. */
  async migrateVm(vmId: string, to: string): Promise<MigrateResult> {
    const cluster = this.#needCluster();
    return this.#serial(async () => {
      const vm = this.host.vm(vmId);
      if (this.#destroying.has(vmId)) throw new IoasidError('EBUSY', `VM ${vmId} is being destroyed`, { vm: vmId });
      // PASID operations already started finish first; those that commit later fail (ENODEV).
      for (let set = this.#inflight.get(vmId); set !== undefined && set.size > 0; set = this.#inflight.get(vmId)) await Promise.all(set);
      return cluster.migrate(vm, to);
    });
  }

  /** An operator's reclaim of a dead host: fence it, free its VMs' PASIDs and its blocks. */
  async reclaimHost(hostId: string, opts: { force?: boolean } = {}): Promise<ReclaimReport> {
    return this.#needCluster().reclaim(hostId, opts);
  }

  /** The VCMD backend of a VM's vIOMMUs, made durable (rule 4). */
  #durableBackend(vm: Vm, inner: VcmdBackend): VcmdBackend {
    return {
      allocate: async (range) => {
        if (this.cluster !== null) {
          const [p] = await this.cluster.allocPasids(vm, range?.min ?? this.host.pasidMin, range?.max ?? this.host.pasidMax, 1, this.#now());
          return p as number;
        }
        // The host's backend is synchronous (level 0): its events are held until the commit.
        const { result, events } = this.#hold(() => inner.allocate(range));
        const p = await result;
        try {
          await this.store.apply([{ op: 'insertPasid', row: { pasid: p, vm: vm.id, allocatedAt: this.#now() } }]);
        } catch (e) {
          if (!vm.destroyed) this.#hold(() => this.host.space.freeSync(p, vm.set));
          throw e;
        }
        this.#release(events);
        return p;
      },
      free: async (pasid) => {
        this.#checkFree(vm, pasid);
        await this.cluster?.ensureServes(vm.id);
        await this.store.apply([{ op: 'deletePasid', pasid, vm: vm.id }]);
        await inner.free(pasid);
      },
    };
  }
}

export type { IoasidErrorCode };
