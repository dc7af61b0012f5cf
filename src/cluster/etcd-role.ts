/**
 * Cluster mode (docs/cluster.md): one host of a migration domain on etcd. It gives the authority's
 * host its journal (every change one etcd transaction, allocations placed in this host's blocks),
 * keeps the host current with the changes other hosts commit, and carries out the domain's own
 * operations: migration and an operator's reclaim.
 *
 * Rules:
 *  1. The host model is the whole domain: every VM of every host is in it, with its set, vIOMMUs
 *     (and the registers its guest last saw), devices, bindings and PASIDs. Changes other hosts
 *     commit reach it as their journal records, in revision order, through `Host.applyCommitted`
 *     (the host's own apply code); nothing else writes the model.
 *  2. A VM is served only by the host its VM key names: the journal refuses every change to a VM
 *     served elsewhere with EREMOTE naming the serving host, and `ensureServes` says so before the
 *     host checks a request, after a quorum read (a VM that has just migrated here is served at
 *     once, once the watch has brought its last changes).
 *  3. Every host publishes every event of the domain with the same number (etcd-keys.ts), in that
 *     order: a host's own change is applied and published once the watch has brought every
 *     earlier change of the domain.
 *  4. A lease expiry never frees anything. Only a VM's destroy, or an operator's reclaim of a dead
 *     and fenced host (which takes its VMs over and destroys them by the host's rules), frees PASIDs.
 */
import { IoasidError, isIoasidError, type IoasidSet } from '../core/index.ts';
import {
  HOST_EVENT_TYPES,
  type Committed, type Host, type HostEvent, type Journal, type JournalEntry, type Vm,
} from '../host/index.ts';
import type { CommittedPart, EtcdStore, Mutation, NewEventRow, ReclaimReport } from '../store/index.ts';
import { BlockPlacement, type ClusterLogFn } from './placement.ts';
import type { ClusterHealth, ClusterRole, ClusterStatus, MigrateResult } from './role.ts';

/**
 * The rows an entry writes: the service's one mapping between host changes and store rows
 * (the cluster layer does not import the service, so it is handed over).
 */
export type EntryRows = (entry: JournalEntry, at: number) => readonly Mutation[];

export interface EtcdClusterRoleOptions {
  readonly store: EtcdStore;
  readonly rows: EntryRows;
  /** The host's PASID range (default the whole range). */
  readonly pasidMin?: number;
  readonly pasidMax?: number;
  /** Empty blocks a host keeps (default 1). */
  readonly spareBlocks?: number;
  /** How long a block stays empty before it goes back (default 1000 ms). */
  readonly releaseDelayMs?: number;
  /** Reservations of one allocation lost to other hosts before EAGAIN (default 8). */
  readonly allocAttempts?: number;
  readonly now?: () => number;
  readonly log?: ClusterLogFn;
}

/** The etcd-backed journal (rules 2 and 3): an entry is one transaction of the store. */
class EtcdJournal implements Journal {
  readonly durable = true;
  readonly sync = false;
  readonly placement: BlockPlacement;
  readonly #store: EtcdStore;
  readonly #rows: EntryRows;
  readonly #now: () => number;

  constructor(store: EtcdStore, rows: EntryRows, placement: BlockPlacement, now: () => number) {
    this.#store = store;
    this.#rows = rows;
    this.placement = placement;
    this.#now = now;
  }

  async commit(entry: JournalEntry): Promise<Committed> {
    const at = this.#now();
    try {
      const { seq } = await this.#store.commit(this.#rows(entry, at));
      return { seq, at };
    } catch (e) {
      // A lost race names the VM, so that the placement backs off for that VM (placement.ts).
      const vm = entry.events[0]?.vm;
      if (isIoasidError(e) && (e.details as { conflict?: unknown }).conflict === true && typeof vm === 'string') {
        throw new IoasidError(e.code, e.message, { ...e.details, vm }, { cause: e });
      }
      throw e;
    }
  }
}

export class EtcdClusterRole implements ClusterRole {
  readonly store: EtcdStore;
  readonly journal: EtcdJournal;
  readonly #rows: EntryRows;
  readonly #placement: BlockPlacement;
  readonly #now: () => number;
  readonly #log: ClusterLogFn;
  #host: Host<Journal> | null = null;
  /** Changes received before the host was attached (after the state it was rebuilt from). */
  #early: CommittedPart[] = [];
  #inconsistencies = 0;

  constructor(o: EtcdClusterRoleOptions) {
    this.store = o.store;
    this.#rows = o.rows;
    this.#now = o.now ?? Date.now;
    this.#log = o.log ?? (() => {});
    this.#placement = new BlockPlacement({
      store: o.store,
      pasidMin: o.pasidMin ?? 1,
      pasidMax: o.pasidMax ?? 0xfffff,
      ...(o.spareBlocks !== undefined ? { spareBlocks: o.spareBlocks } : {}),
      ...(o.releaseDelayMs !== undefined ? { releaseDelayMs: o.releaseDelayMs } : {}),
      ...(o.allocAttempts !== undefined ? { attempts: o.allocAttempts } : {}),
      log: this.#log,
    });
    this.journal = new EtcdJournal(o.store, o.rows, this.#placement, this.#now);
    // Set before the store opens: nothing the watch brings after the loaded state is missed.
    o.store.onCommitted((parts) => this.#receive(parts));
  }

  get hostId(): string {
    return this.store.hostId;
  }

  get domain(): string {
    return this.store.domain;
  }

  /** Changes from elsewhere the model could not apply (0 unless something is wrong). */
  get inconsistencies(): number {
    return this.#inconsistencies;
  }

  /** Rule 1: follow the domain (the host was rebuilt from the store's state first). */
  attach(host: Host<Journal>): void {
    let j: Journal | undefined = host.journal;
    while (j !== undefined && j !== this.journal) j = j.inner;
    if (j === undefined) throw new IoasidError('EINVAL', 'the cluster role follows a host that commits through its journal', {});
    this.#host = host;
    this.#placement.attach(host.space);
    const early = this.#early;
    this.#early = [];
    this.#apply(early);
  }

  async close(): Promise<void> {
    await this.#placement.close();
    this.store.onCommitted(null);
    this.#host = null;
  }

  #receive(parts: readonly CommittedPart[]): void {
    if (this.#host === null) this.#early.push(...parts);
    else this.#apply(parts);
  }

  /** Apply changes committed elsewhere through the host's own apply code, then it publishes them. */
  #apply(parts: readonly CommittedPart[]): void {
    const host = this.#host as Host<Journal>;
    for (const part of parts) {
      try {
        host.applyCommitted(entryOf(part), { seq: part.seq, at: part.at });
      } catch (e) {
        this.#inconsistencies++;
        this.#log('error', `could not apply a change of host ${part.host} (revision ${part.revision}) to the model`, { error: String(e).slice(0, 300), events: part.events.map((x) => x.type) });
      }
    }
  }

  // ------------------------------------------------------------------ serving (rule 2)

  serves(vm: string): boolean {
    return this.store.serves(vm);
  }

  hostOf(vm: string): string | null {
    return this.store.vm(vm)?.host ?? null;
  }

  health(): ClusterHealth {
    const store = this.store;
    const { lease, watching } = store.health;
    const f = store.fenced;
    const reason = !store.isOpen ? 'not open'
      : f !== null ? `fenced by ${f.by} (${f.reason})`
      : !lease.held ? 'lease lost'
      : !watching ? 'etcd watch down'
      : null;
    return {
      ready: reason === null,
      ...(reason !== null ? { reason } : {}),
      fenced: f !== null,
      lease,
      blocksHeld: this.#placement.ownBlocks().length,
    };
  }

  async ensureServes(vm: string): Promise<void> {
    const store = this.store;
    if (store.serves(vm)) return;
    if (store.fenced !== null) throw store.notServed(vm);
    const rec = await store.readVm(vm);
    if (rec !== null && rec.host === this.hostId && rec.state === 'active') {
      await store.waitApplied(rec.mod, 5000).catch(() => {});
      if (store.serves(vm)) return;
    }
    throw store.notServed(vm);
  }

  /** Blocks this host holds (first PASID of each), ascending. */
  ownBlocks(): number[] {
    return this.#placement.ownBlocks();
  }

  /** Resolves once this host has applied every change committed in the domain so far. */
  async settle(timeoutMs = 10_000): Promise<number> {
    const rev = await this.store.barrier();
    await this.store.waitApplied(rev, timeoutMs);
    return rev;
  }

  // ------------------------------------------------------------------ migration and reclaim

  /** The event rows of a change the store makes itself, by the service's one mapping. */
  #events(events: readonly HostEvent[], at: number): NewEventRow[] {
    return this.#rows({ events }, at).flatMap((m) => (m.op === 'appendEvents' ? m.events : []));
  }

  /**
   * Move a VM this host serves to host `to`: in-flight VCMD commands settle first, then one etcd
   * transaction rewrites the VM key, with a vm-migrated event every host publishes. The guest
   * keeps every PASID and binding; the VM's registers are in every host's model already (each
   * commit carries them). From the commit on, this host refuses the VM and `to` serves it.
   */
  async migrate(vm: Vm<Journal>, to: string): Promise<MigrateResult> {
    await this.ensureServes(vm.id);
    if (to === this.hostId) throw new IoasidError('EINVAL', `VM ${vm.id} already runs on host ${to}`, { vm: vm.id, to });
    if (this.store.host(to) === undefined) {
      throw new IoasidError('ENODEV', `host ${to} is not alive in domain ${this.domain}`, { host: to, domain: this.domain });
    }
    for (const v of vm.viommus()) await v.device.settled();
    const from = this.hostId;
    const revision = await this.store.migrate(vm.id, to, this.#events([{ type: 'vm-migrated', vm: vm.id, from, to }], this.#now()));
    return { vm: vm.id, from, to, revision, pasids: vm.pasids(), bindings: vm.bindings().length };
  }

  /**
   * An operator's reclaim of a dead host: fence it (nothing its incarnation sends commits from
   * then on), take each of its VMs over (a vm-migrated event) and destroy it here by the host's
   * rules (its events published by every host), free its own PASIDs, delete its blocks.
   * Refused (EBUSY) while its lease is alive, unless `force`. Run it again to finish one that
   * was interrupted.
   */
  async reclaim(hostId: string, opts: { force?: boolean } = {}): Promise<ReclaimReport> {
    const host = this.#host;
    if (host === null) throw new IoasidError('ENODEV', 'the cluster role is not attached', {});
    const fencedAt = await this.store.fenceHost(hostId, opts);
    await this.store.waitApplied(fencedAt, 10_000);
    const vms: string[] = [];
    let pasids = 0;
    let bindings = 0;
    for (const rec of this.store.vmRecords().filter((r) => r.host === hostId).sort((a, b) => (a.id < b.id ? -1 : 1))) {
      try {
        await this.store.takeOver(rec.id, hostId, fencedAt, this.#events([{ type: 'vm-migrated', vm: rec.id, from: hostId, to: this.hostId }], this.#now()));
        const r = await host.destroyVm(rec.id);
        vms.push(rec.id);
        pasids += r.pasids.length;
        bindings += r.bindings.length;
      } catch (e) {
        // The VM moved or went meanwhile (its host came back, or another reclaim): skip it.
        if (!isIoasidError(e, 'ENODEV') && !isIoasidError(e, 'EAGAIN') && !isIoasidError(e, 'ENOENT')) throw e;
        this.#log('warn', `reclaim of ${hostId}: VM ${rec.id} skipped`, { error: String(e) });
      }
    }
    const own = this.store.pasidRows().filter((p) => p.vm === null && this.store.pasidHost(p.pasid) === hostId).map((p) => p.pasid);
    if (own.length > 0) await this.store.freeHostPasids(own, this.#events([{ type: 'free', vm: null, pasids: own }], this.#now()));
    pasids += own.length;
    const blocks = await this.store.releaseBlocksOf(hostId);
    return { host: hostId, fencedAt, vms, pasids, bindings, blocks };
  }

  status(): ClusterStatus {
    const space = this.#host?.space ?? null;
    const count = (id: string) => {
      const set: IoasidSet | undefined = space?.setByToken(id);
      return space !== null && set !== undefined ? space.setCount(set) : 0;
    };
    const vms = this.store.vmRecords().map((r) => ({ id: r.id, host: r.host, state: r.state, pasids: count(r.id) }));
    const ids = new Set<string>([this.hostId, ...this.store.hosts().map((h) => h.id), ...this.store.fences().map((f) => f.host), ...vms.map((v) => v.host)]);
    const blocksBy = new Map<string, number>();
    for (const b of this.store.blocks().values()) blocksBy.set(b.host, (blocksBy.get(b.host) ?? 0) + 1);
    const f = this.store.fenced;
    return {
      domain: this.domain,
      host: this.hostId,
      fenced: f === null ? null : { by: f.by, reason: f.reason, revision: f.mod },
      blockSize: this.store.blockSize,
      revision: this.store.appliedRevision,
      hosts: [...ids].sort().map((id) => {
        const h = this.store.host(id);
        return { id, alive: h !== undefined, url: h?.url ?? null, startedAt: h?.startedAt ?? null, vms: vms.filter((v) => v.host === id).length, blocks: blocksBy.get(id) ?? 0 };
      }),
      vms: vms.sort((a, b) => (a.id < b.id ? -1 : 1)),
      blocks: { own: this.#placement.ownBlocks().length, total: this.store.blocks().size },
      pasids: this.store.pasidCount(),
      inconsistencies: this.#inconsistencies + this.store.stats().unreadable,
    };
  }
}

/** A change as its journal record holds it, as the host applies it. */
function entryOf(part: CommittedPart): JournalEntry {
  const events = part.events.map((e) => {
    const ev = JSON.parse(e.body) as HostEvent;
    if (typeof ev !== 'object' || ev === null || !(HOST_EVENT_TYPES as readonly string[]).includes(ev.type)) {
      throw new IoasidError('EINVAL', `event ${e.seq} of revision ${part.revision} is not a host event (${String((ev as { type?: unknown } | null)?.type)})`, { seq: e.seq });
    }
    return ev;
  });
  const r = part.registers[part.registers.length - 1];
  return {
    events,
    ...(part.credentials.length > 0 ? { credentials: part.credentials.map((c) => ({ vm: c.vm, credential: c.tokenHash })) } : {}),
    ...(r !== undefined ? { registers: { vm: r.vm, segment: r.segment, state: JSON.parse(r.registers) as NonNullable<JournalEntry['registers']>['state'] } } : {}),
  };
}
