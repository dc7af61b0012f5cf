/**
 * The cluster coordinator: what a PASID authority does differently when its store is etcd and it
 * shares one PASID namespace (a migration domain) with other hosts (docs/cluster.md).
 *
 * Rules:
 *  1. The local host model is the whole domain: every VM of every host exists in it (with its set,
 *     vIOMMUs, devices and bindings), and every PASID of another host's VM is allocated locally
 *     under that VM's set. The etcd watch keeps it current, in revision order.
 *  2. A VM is served (allocate, free, bind, unbind, plug, destroy, migrate, VCMD) only by the host
 *     its VM key names; another host answers ENODEV naming the right host. Before refusing, a host
 *     reads the VM key from etcd (a quorum read), so a VM that just migrated here is served at once.
 *  3. A host allocates only inside blocks it claimed (lowest free PASID of its blocks in
 *     [min, max]), claiming more blocks (create-if-absent) when its blocks run short. When no
 *     unclaimed block has room in [min, max], it borrows a free PASID of another host's block: the
 *     PASID key's create-if-absent still guarantees one owner. ENOSPC means the domain has no free
 *     PASID in [min, max].
 *  4. An allocation is made in the local model first, then committed; a PASID another host took
 *     first is undone and another one tried, at most `allocAttempts` times with backoff.
 *  5. Empty blocks go back to the domain (after `releaseDelayMs`), except `spareBlocks` of them.
 *  6. A lease expiry never frees anything. Only a VM's destroy or an operator's reclaim of a dead,
 *     fenced host frees PASIDs.
 */
import { IoasidError, PASID_MAX, PASID_MIN, fmtId, isIoasidError, type IoasidSet } from '../core/index.ts';
import type { Host, HostEvent, Vm } from '../host/index.ts';
import type { ClusterChange, EtcdStore, ReclaimReport, VmRow } from '../store/index.ts';

/** What the authority lends the coordinator to keep its model and registries current. */
export interface ClusterModelPort {
  readonly host: Host;
  /** Run a model step with its events held back (announced by `release` once committed). */
  hold<T>(fn: () => T): { result: T; events: HostEvent[] };
  release(events: readonly HostEvent[]): void;
  /** A VM row appeared (or changed) elsewhere: register its token. */
  vmUpserted(row: VmRow): void;
  /** A VM is gone from the domain: forget its token. */
  vmRemoved(id: string): void;
  /** A meta row changed elsewhere (the admin token hash). */
  metaChanged(key: string, value: string | null): void;
}

export type ClusterLogFn = (level: 'debug' | 'info' | 'warn' | 'error', message: string, details?: Record<string, unknown>) => void;

export interface ClusterOptions {
  readonly store: EtcdStore;
  /** Empty blocks a host keeps (default 1). */
  readonly spareBlocks?: number;
  /** How long a block stays empty before it goes back (default 1000 ms). */
  readonly releaseDelayMs?: number;
  /** Attempts of one allocation (block claims and lost races), default 8. */
  readonly allocAttempts?: number;
  readonly log?: ClusterLogFn;
}

export interface MigrateResult {
  readonly vm: string;
  readonly from: string;
  readonly to: string;
  /** etcd revision of the move. */
  readonly revision: number;
  readonly pasids: readonly number[];
  readonly bindings: number;
}

export interface ClusterStatus {
  readonly domain: string;
  readonly host: string;
  readonly fenced: { readonly by: string; readonly reason: string; readonly revision: number } | null;
  readonly blockSize: number;
  readonly revision: number;
  readonly hosts: readonly { id: string; alive: boolean; url: string | null; startedAt: number | null; vms: number; blocks: number }[];
  readonly vms: readonly { id: string; host: string; state: string; pasids: number }[];
  readonly blocks: { readonly own: number; readonly total: number };
  readonly pasids: number;
  readonly inconsistencies: number;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class ClusterCoordinator {
  readonly store: EtcdStore;
  readonly #spare: number;
  readonly #releaseDelay: number;
  readonly #attempts: number;
  readonly #log: ClusterLogFn;
  #port: ClusterModelPort | null = null;
  #unsubscribe: (() => void) | null = null;
  #shift = 6;
  #bs = 64;
  /** PASIDs allocated in the local model, per block (whoever owns them). */
  #used = new Uint16Array(0);
  /** Blocks this host holds, ascending (block indexes). */
  #own: number[] = [];
  /** Every own block below this block index is full: where lowest-free searches start. */
  #nonFullFrom = 0;
  readonly #releasing = new Set<number>();
  /** Blocks seen taken by another host in a lost claim race, until the watch says more. */
  readonly #taken = new Set<number>();
  /** Free PASIDs of other hosts' blocks this host may try (rule 3). */
  readonly #allowance = new Set<number>();
  #growing: Promise<void> | null = null;
  #releaseTimer: NodeJS.Timeout | null = null;
  #emptySince = new Map<number, number>();
  #inconsistencies = 0;
  #closed = false;

  constructor(opts: ClusterOptions) {
    this.store = opts.store;
    this.#spare = opts.spareBlocks ?? 1;
    this.#releaseDelay = opts.releaseDelayMs ?? 1000;
    this.#attempts = opts.allocAttempts ?? 8;
    this.#log = opts.log ?? (() => {});
  }

  get hostId(): string {
    return this.store.hostId;
  }

  get domain(): string {
    return this.store.domain;
  }

  get inconsistencies(): number {
    return this.#inconsistencies;
  }

  #host(): Host {
    if (this.#port === null) throw new IoasidError('ENODEV', 'the cluster coordinator is not attached', {});
    return this.#port.host;
  }

  /** Start: index blocks and usage, then follow the domain through the store's watch. */
  attach(port: ClusterModelPort): void {
    this.#port = port;
    const host = port.host;
    this.#bs = this.store.blockSize;
    this.#shift = Math.log2(this.#bs);
    this.#used = new Uint16Array(((PASID_MAX + 1) >> this.#shift) + 1);
    for (const [id] of host.space.entries()) this.#used[id >> this.#shift]!++;
    this.#own = [...this.store.blocks().values()].filter((b) => b.host === this.hostId).map((b) => b.block >> this.#shift).sort((a, b) => a - b);
    this.#unsubscribe = host.space.subscribe((e) => {
      if (e.type === 'alloc') this.#used[e.id >> this.#shift]!++;
      else if (e.type === 'free') {
        const b = e.id >> this.#shift;
        this.#used[b]!--;
        if (b < this.#nonFullFrom) this.#nonFullFrom = b;
        if (this.#used[b] === 0 && this.#isOwn(b)) this.#scheduleRelease();
      }
    }, { priority: 'cpu', types: ['alloc', 'free'] });
    this.store.onChanges((changes) => this.#apply(changes));
    this.#scheduleRelease();
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.store.onChanges(null);
    this.#unsubscribe?.();
    this.#unsubscribe = null;
    if (this.#releaseTimer !== null) clearTimeout(this.#releaseTimer);
    this.#releaseTimer = null;
    await this.#growing?.catch(() => {});
  }

  // ------------------------------------------------------------------ serving

  serves(vm: string): boolean {
    return this.store.serves(vm);
  }

  hostOf(vm: string): string | null {
    return this.store.vm(vm)?.host ?? null;
  }

  /** Synchronous check (trapped MMIO): ENODEV if another host serves the VM. */
  assertServes(vm: string): void {
    if (!this.store.serves(vm)) throw this.store.notServed(vm);
  }

  /**
   * ENODEV unless this host serves the VM; a VM this host does not know as its own is read from
   * etcd first (it may have just migrated here). `destroying` VMs of this host may be destroyed.
   */
  async ensureServes(vm: string, opts: { forDestroy?: boolean } = {}): Promise<void> {
    if (this.store.serves(vm)) return;
    const mine = this.store.vm(vm);
    if (opts.forDestroy === true && mine !== undefined && mine.host === this.hostId && mine.state === 'destroying' && this.store.fenced === null) return;
    if (this.store.fenced !== null) throw this.store.notServed(vm);
    const rec = await this.store.readVm(vm);
    if (rec !== null && rec.host === this.hostId && rec.state === 'active') {
      await this.store.waitApplied(rec.mod, 5000).catch(() => {});
      if (this.store.serves(vm)) return;
    }
    throw this.store.notServed(vm);
  }

  // ------------------------------------------------------------------ allocation

  /** Allocate `count` PASIDs in [min, max] for a VM this host serves: all or nothing. */
  async allocPasids(vm: Vm, min: number, max: number, count: number, at: number): Promise<number[]> {
    await this.ensureServes(vm.id);
    const host = this.#host();
    const space = host.space;
    const port = this.#port as ClusterModelPort;
    const lo = Math.max(min, host.pasidMin, PASID_MIN);
    const hi = Math.min(max, host.pasidMax, PASID_MAX);
    if (lo > hi) throw new IoasidError('ENOSPC', `no host PASID in [${fmtId(min)}, ${fmtId(max)}]`, { min, max });
    let conflicts = 0;
    let grows = 0;
    let last: unknown = null;
    for (;;) {
      if (vm.destroyed) throw new IoasidError('ENODEV', `VM ${vm.id} was destroyed`, { vm: vm.id });
      if (vm.quota > 0 && space.setCount(vm.set) + count > vm.quota) {
        throw new IoasidError('EDQUOT', `set ${vm.set.name} is at its quota of ${vm.quota}`, { set: vm.set.name, quota: vm.quota, count: space.setCount(vm.set) });
      }
      const got: number[] = [];
      // Events of a change not yet committed are held back; an undone change announces nothing.
      const { events } = port.hold(() => {
        try {
          while (got.length < count) {
            const p = this.#allocLocal(vm.set, lo, hi);
            if (p < 0) break;
            got.push(p);
          }
        } catch (e) {
          this.#undo(vm, got);
          throw e;
        }
      });
      if (got.length < count) {
        port.hold(() => this.#undo(vm, got));
        if (++grows > 2 * this.#attempts) break;
        await this.#grow(lo, hi, count);
        continue;
      }
      try {
        await this.store.apply(got.map((pasid) => ({ op: 'insertPasid' as const, row: { pasid, vm: vm.id, allocatedAt: at } })));
      } catch (e) {
        port.hold(() => this.#undo(vm, got));
        if (!isConflict(e)) throw e;
        last = e;
        for (const p of got) this.#allowance.delete(p);
        if (++conflicts >= this.#attempts) break;
        await sleep(Math.min(200, 5 * 2 ** conflicts) * Math.random());
        continue;
      }
      port.release(events);
      this.#prefetch(got[got.length - 1] as number);
      return got;
    }
    throw new IoasidError('EAGAIN', `could not allocate ${count} PASID(s) in [${fmtId(lo)}, ${fmtId(hi)}]: other hosts took them first (${conflicts} lost races, ${grows} block claims); retry`, { vm: vm.id, min: lo, max: hi, count, last: last instanceof Error ? last.message : null });
  }

  #undo(vm: Vm, got: readonly number[]): void {
    const space = this.#host().space;
    for (const p of got) {
      if (!vm.destroyed && space.has(p) && space.ownerOf(p) === vm.set) space.freeSync(p, vm.set);
    }
  }

  #isOwn(b: number): boolean {
    const own = this.#own;
    const i = lowerBound(own, b);
    return own[i] === b;
  }

  #cap(b: number): number {
    const host = this.#host();
    const first = Math.max(b << this.#shift, host.pasidMin);
    const last = Math.min((b << this.#shift) + this.#bs - 1, host.pasidMax);
    return last >= first ? last - first + 1 : 0;
  }

  /** The lowest free PASID of this host's blocks (then of its allowance) in [lo, hi], or -1. */
  #allocLocal(set: IoasidSet, lo: number, hi: number): number {
    const space = this.#host().space;
    const own = this.#own;
    const last = hi >> this.#shift;
    const first = lo >> this.#shift;
    // Own blocks below #nonFullFrom are full: a search from below it starts there, and moves it.
    const fromHint = first <= this.#nonFullFrom;
    let seenFree = false;
    for (let i = lowerBound(own, fromHint ? this.#nonFullFrom : first); i < own.length; i++) {
      const b = own[i] as number;
      if (b > last) break;
      const full = (this.#used[b] as number) >= this.#cap(b);
      if (fromHint && !seenFree && full) this.#nonFullFrom = b + 1;
      if (!full) seenFree = true;
      if (this.#releasing.has(b) || full) continue;
      const a = Math.max(lo, b << this.#shift);
      const z = Math.min(hi, (b << this.#shift) + this.#bs - 1);
      try {
        return space.allocSync(set, a, z);
      } catch (e) {
        if (!isIoasidError(e, 'ENOSPC')) throw e;
      }
    }
    for (const p of this.#allowance) {
      if (p < lo || p > hi) continue;
      this.#allowance.delete(p);
      if (space.has(p)) continue;
      return space.allocSync(set, p, p);
    }
    return -1;
  }

  /** Free PASIDs of block `b` within [lo, hi], as the local model sees them. */
  #freeIn(b: number, lo: number, hi: number): number {
    const a = Math.max(lo, b << this.#shift);
    const z = Math.min(hi, (b << this.#shift) + this.#bs - 1);
    if (a > z) return 0;
    if (a === Math.max(b << this.#shift, this.#host().pasidMin) && z === Math.min((b << this.#shift) + this.#bs - 1, this.#host().pasidMax)) {
      return this.#cap(b) - (this.#used[b] as number);
    }
    const space = this.#host().space;
    let n = 0;
    for (let p = a; p <= z; p++) if (!space.has(p)) n++;
    return n;
  }

  /** Get room for `need` more PASIDs in [lo, hi]: claim blocks, or borrow free PASIDs. */
  async #grow(lo: number, hi: number, need: number): Promise<void> {
    if (this.#growing !== null) {
      await this.#growing.catch(() => {});
      return;
    }
    this.#growing = this.#doGrow(lo, hi, need);
    try {
      await this.#growing;
    } finally {
      this.#growing = null;
    }
  }

  async #doGrow(lo: number, hi: number, need: number): Promise<void> {
    let short = need;
    for (let i = lowerBound(this.#own, lo >> this.#shift); i < this.#own.length && (this.#own[i] as number) <= hi >> this.#shift; i++) {
      const b = this.#own[i] as number;
      if (!this.#releasing.has(b)) short -= this.#freeIn(b, lo, hi);
    }
    if (short <= 0) return; // this host's blocks have room again (a free, or a race lost)
    const blocks = this.store.blocks();
    const candidates: number[] = [];
    let room = 0;
    for (let b = lo >> this.#shift; b <= hi >> this.#shift && room < short && candidates.length < 8; b++) {
      if (blocks.has(b << this.#shift) || this.#taken.has(b)) continue;
      const free = this.#freeIn(b, lo, hi);
      if (free === 0) continue;
      candidates.push(b);
      room += free;
    }
    // One block ahead when allocating from the whole range, so the next requests do not wait.
    if (room < short + this.#bs && candidates.length > 0 && candidates.length < 8 && lo <= this.#host().pasidMin && hi >= this.#host().pasidMax) {
      for (let b = (candidates[candidates.length - 1] as number) + 1; b <= hi >> this.#shift; b++) {
        if (blocks.has(b << this.#shift) || this.#taken.has(b) || this.#freeIn(b, lo, hi) === 0) continue;
        candidates.push(b);
        break;
      }
    }
    if (candidates.length === 0) {
      this.#borrow(lo, hi, short);
      return;
    }
    if (room < short) {
      // Not enough in unclaimed blocks alone: borrow the rest too (ENOSPC if the domain is short).
      this.#borrow(lo, hi, short - room, true);
    }
    const results = await Promise.allSettled(candidates.map((b) => this.store.claimBlock(b << this.#shift)));
    let failure: unknown = null;
    results.forEach((r, i) => {
      const b = candidates[i] as number;
      if (r.status === 'fulfilled') {
        this.#taken.delete(b);
        this.#addOwn(b);
      } else if (isConflict(r.reason)) {
        this.#taken.add(b);
      } else {
        failure ??= r.reason;
      }
    });
    if (failure !== null && !results.some((r) => r.status === 'fulfilled')) throw failure;
  }

  /**
   * No unclaimed block has room: take free PASIDs of other hosts' blocks (rule 3), from a random
   * point of the range so that hosts short of room at once do not all race for the lowest one.
   * ENOSPC when the domain (as this host sees it) has fewer than `need` free PASIDs in [lo, hi].
   */
  #borrow(lo: number, hi: number, need: number, unclaimedToo = false): void {
    const space = this.#host().space;
    const blocks = this.store.blocks();
    const free = (p: number) => !space.has(p) && !this.#isOwn(p >> this.#shift) && (unclaimedToo || blocks.has((p >> this.#shift) << this.#shift) || this.#taken.has(p >> this.#shift));
    let have = 0;
    for (const p of this.#allowance) {
      if (p < lo || p > hi) continue;
      if (space.has(p)) this.#allowance.delete(p);
      else have++;
    }
    const n = hi - lo + 1;
    const start = Math.floor(Math.random() * n);
    for (let k = 0; k < n && have < need; k++) {
      const p = lo + ((start + k) % n);
      if (this.#allowance.has(p) || !free(p)) continue;
      this.#allowance.add(p);
      have++;
    }
    if (have < need) {
      this.#taken.clear();
      throw new IoasidError('ENOSPC', `no ${need > 1 ? `${need} free PASIDs` : 'free PASID'} in [${fmtId(lo)}, ${fmtId(hi)}] in domain ${this.domain}`, { min: lo, max: hi, domain: this.domain, count: need });
    }
  }

  #addOwn(b: number): void {
    const i = lowerBound(this.#own, b);
    if (this.#own[i] !== b) this.#own.splice(i, 0, b);
    if (b < this.#nonFullFrom) this.#nonFullFrom = b;
    this.#scheduleRelease();
  }

  #removeOwn(b: number): void {
    const i = lowerBound(this.#own, b);
    if (this.#own[i] === b) this.#own.splice(i, 1);
  }

  /** Keep one block's worth of room ahead of demand, in the background. */
  #prefetch(lastAllocated: number): void {
    const b = lastAllocated >> this.#shift;
    if ((this.#used[b] as number) < this.#cap(b) || this.#growing !== null || this.#closed) return;
    let free = 0;
    for (const x of this.#own) if (!this.#releasing.has(x)) free += this.#cap(x) - (this.#used[x] as number);
    if (free >= this.#bs / 2) return;
    const host = this.#host();
    void this.#grow(host.pasidMin, host.pasidMax, this.#bs).catch((e: unknown) => this.#log('warn', 'block prefetch failed', { error: String(e) }));
  }

  #scheduleRelease(): void {
    if (this.#releaseTimer !== null || this.#closed) return;
    this.#releaseTimer = setTimeout(() => {
      this.#releaseTimer = null;
      void this.#releaseEmpty().catch((e: unknown) => this.#log('warn', 'block release failed', { error: String(e) }));
    }, Math.max(50, this.#releaseDelay / 2));
    this.#releaseTimer.unref();
  }

  /** Return blocks that stayed empty for `releaseDelayMs`, keeping `spareBlocks` of them. */
  async #releaseEmpty(): Promise<void> {
    if (this.#closed || this.store.fenced !== null || !this.store.isOpen) return;
    const now = Date.now();
    const empty = this.#own.filter((b) => this.#used[b] === 0 && !this.#releasing.has(b));
    for (const b of [...this.#emptySince.keys()]) if (!empty.includes(b)) this.#emptySince.delete(b);
    const due: number[] = [];
    empty.forEach((b, i) => {
      if (i < this.#spare) return;
      const since = this.#emptySince.get(b);
      if (since === undefined) this.#emptySince.set(b, now);
      else if (now - since >= this.#releaseDelay) due.push(b);
    });
    if (due.length < empty.length - this.#spare || due.length > 0) this.#scheduleRelease();
    await Promise.all(due.map(async (b) => {
      this.#releasing.add(b);
      try {
        await this.store.releaseBlock(b << this.#shift);
        this.#removeOwn(b);
        this.#emptySince.delete(b);
      } catch (e) {
        if (!isIoasidError(e, 'EBUSY') && !isIoasidError(e, 'EAGAIN')) this.#log('warn', `release of block ${fmtId(b << this.#shift)} failed`, { error: String(e) });
      } finally {
        this.#releasing.delete(b);
      }
    }));
  }

  /** Blocks this host holds (first PASID of each), ascending. */
  ownBlocks(): number[] {
    return this.#own.map((b) => b << this.#shift);
  }

  // ------------------------------------------------------------------ migration and reclaim

  /**
   * Move a VM this host serves to host `to`: in-flight VCMD commands settle first, then one etcd
   * transaction rewrites the VM key. The guest keeps every PASID; from the commit on, this host
   * refuses the VM and `to` serves it.
   */
  async migrate(vm: Vm, to: string): Promise<MigrateResult> {
    await this.ensureServes(vm.id);
    if (to === this.hostId) throw new IoasidError('EINVAL', `VM ${vm.id} already runs on host ${to}`, { vm: vm.id, to });
    if (this.store.host(to) === undefined) {
      throw new IoasidError('ENODEV', `host ${to} is not alive in domain ${this.domain}`, { host: to, domain: this.domain });
    }
    for (const v of vm.viommus()) await v.device.settled();
    const revision = await this.store.migrate(vm.id, to);
    return { vm: vm.id, from: this.hostId, to, revision, pasids: vm.pasids(), bindings: vm.bindings().length };
  }

  /** An operator's reclaim of a dead host (fence, then free its VMs, PASIDs and blocks). */
  async reclaim(host: string, opts: { force?: boolean } = {}): Promise<ReclaimReport> {
    const r = await this.store.reclaim(host, opts);
    // The reclaim's deletes reach this host's model through the watch, like any other host's.
    await this.store.waitApplied(this.store.committedRevision, 10_000).catch(() => {});
    return r;
  }

  /** Resolves once this host has applied every change committed in the domain so far. */
  async settle(timeoutMs = 10_000): Promise<number> {
    const rev = await this.store.barrier();
    await this.store.waitApplied(rev, timeoutMs);
    return rev;
  }

  status(): ClusterStatus {
    const space = this.#port?.host.space ?? null;
    const vms = this.store.vmRecords().map((r) => ({ id: r.row.id, host: r.host, state: r.state, pasids: space?.setByToken(r.row.id) !== undefined ? space.setCount(space.setByToken(r.row.id) as IoasidSet) : 0 }));
    const ids = new Set<string>([this.hostId, ...this.store.hosts().map((h) => h.id), ...this.store.fences().map((f) => f.host), ...vms.map((v) => v.host)]);
    const blocksBy = new Map<string, number>();
    for (const b of this.store.blocks().values()) blocksBy.set(b.host, (blocksBy.get(b.host) ?? 0) + 1);
    const f = this.store.fenced;
    return {
      domain: this.domain,
      host: this.hostId,
      fenced: f === null ? null : { by: f.by, reason: f.reason, revision: f.mod },
      blockSize: this.#bs,
      revision: this.store.appliedRevision,
      hosts: [...ids].sort().map((id) => {
        const h = this.store.host(id);
        return { id, alive: h !== undefined, url: h?.url ?? null, startedAt: h?.startedAt ?? null, vms: vms.filter((v) => v.host === id).length, blocks: blocksBy.get(id) ?? 0 };
      }),
      vms: vms.sort((a, b) => (a.id < b.id ? -1 : 1)),
      blocks: { own: this.#own.length, total: this.store.blocks().size },
      pasids: this.store.pasidCount(),
      inconsistencies: this.#inconsistencies,
    };
  }

  // ------------------------------------------------------------------ other hosts' changes

  async #apply(changes: readonly ClusterChange[]): Promise<void> {
    const port = this.#port;
    if (port === null) return;
    for (const c of changes) {
      try {
        await this.#applyOne(port, c);
      } catch (e) {
        this.#inconsistencies++;
        this.#log('error', `could not apply a ${c.kind} ${c.op} from etcd to the local model`, { change: describe(c), error: String(e) });
      }
    }
  }

  async #applyOne(port: ClusterModelPort, c: ClusterChange): Promise<void> {
    const host = port.host;
    const vmOf = (id: string): Vm | null => (host.vms().some((v) => v.id === id) ? host.vm(id) : null);
    switch (c.kind) {
      case 'vm': {
        if (c.op === 'put') {
          if (vmOf(c.record.row.id) === null) host.createVm({ id: c.record.row.id, quota: c.record.row.quota, viommus: [], devices: [] });
          port.vmUpserted(c.record.row);
          if (c.prev?.host !== c.record.host) this.#log('info', `VM ${c.record.row.id} is now on host ${c.record.host}`, { vm: c.record.row.id, from: c.prev?.host ?? null, to: c.record.host });
        } else {
          const vm = vmOf(c.id);
          if (vm !== null) await host.destroyVm(c.id);
          port.vmRemoved(c.id);
        }
        return;
      }
      case 'viommu': {
        const vm = vmOf(c.op === 'put' ? c.row.vm : c.vm);
        if (vm === null) return;
        if (c.op === 'put') {
          if (!vm.viommus().some((v) => v.segment === c.row.segment)) vm.addViommu({ segment: c.row.segment, layout: c.row.layout, rangeExtension: c.row.rangeExtension });
        } else if (vm.viommus().some((v) => v.segment === c.segment)) {
          for (const d of vm.devices().filter((x) => x.segment === c.segment)) await vm.removeDevice(d.bdf);
          await vm.removeViommu(c.segment);
        }
        return;
      }
      case 'device': {
        const vm = vmOf(c.op === 'put' ? c.row.vm : c.vm);
        if (vm === null) return;
        if (c.op === 'put') {
          if (!vm.devices().some((d) => d.bdf === c.row.bdf)) vm.assignDevice({ bdf: c.row.bdf, pasidBits: c.row.pasidBits });
        } else if (vm.devices().some((d) => d.bdf === c.bdf)) {
          await vm.removeDevice(c.bdf);
        }
        return;
      }
      case 'pasid': {
        const space = host.space;
        if (c.op === 'put') {
          const owner = c.record.row.vm;
          const vm = owner === null ? null : vmOf(owner);
          if (owner !== null && vm === null) throw new IoasidError('ENOENT', `PASID ${c.record.row.pasid} names unknown VM ${owner}`, { pasid: c.record.row.pasid, vm: owner });
          const set = vm === null ? null : vm.set;
          if (space.has(c.record.row.pasid)) {
            if (space.ownerOf(c.record.row.pasid) !== set) throw new IoasidError('EEXIST', `PASID ${c.record.row.pasid} is held locally by another owner than etcd's ${owner ?? 'host'}`, { pasid: c.record.row.pasid });
            return;
          }
          space.allocSync(set, c.record.row.pasid, c.record.row.pasid);
        } else if (space.has(c.pasid)) {
          const set = space.ownerOf(c.pasid);
          const vm = set === null ? null : vmOf(set.name);
          if (vm !== null) for (const [bdf, p] of vm.bindings()) if (p === c.pasid) vm.unbind(bdf, p);
          space.freeSync(c.pasid, set);
        }
        return;
      }
      case 'binding': {
        const vm = vmOf(c.op === 'put' ? c.row.vm : (c.prev?.vm ?? ''));
        if (c.op === 'put') {
          if (vm === null) return;
          if (!vm.bindings().some(([b, p]) => b === c.row.bdf && p === c.row.pasid)) vm.bind(c.row.bdf, c.row.pasid);
        } else {
          const owner = vm ?? this.#bindingOwner(host, c.pasid, c.bdf);
          if (owner !== null && owner.bindings().some(([b, p]) => b === c.bdf && p === c.pasid)) owner.unbind(c.bdf, c.pasid);
        }
        return;
      }
      case 'block': {
        if (c.op === 'put') {
          this.#taken.delete(c.record.block >> this.#shift);
          if (c.record.host === this.hostId) this.#addOwn(c.record.block >> this.#shift);
          else this.#removeOwn(c.record.block >> this.#shift);
        } else {
          this.#taken.delete(c.start >> this.#shift);
          this.#removeOwn(c.start >> this.#shift);
        }
        return;
      }
      case 'meta':
        port.metaChanged(c.op === 'put' ? c.row.key : c.key, c.op === 'put' ? c.row.value : null);
        return;
      case 'host':
      case 'fence':
        return;
    }
  }

  #bindingOwner(host: Host, pasid: number, bdf: string): Vm | null {
    for (const vm of host.vms()) if (vm.bindings().some(([b, p]) => b === bdf && p === pasid)) return vm;
    return null;
  }
}

function isConflict(e: unknown): boolean {
  return (isIoasidError(e, 'EEXIST') && (e.details as { conflict?: unknown }).conflict === true) || isIoasidError(e, 'EAGAIN');
}

function lowerBound(a: readonly number[], x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if ((a[mid] as number) < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function describe(c: ClusterChange): string {
  return JSON.stringify(c).slice(0, 200);
}
