/**
 * `IoasidSpace`: the IOASID framework of one kernel (the host's, or one guest's), after
 * drivers/iommu/ioasid.c. Nothing is global: make as many spaces as you model kernels.
 *
 * Rules (the kernel comment block of ioasid.c, and its code as it behaves; docs/behaviours.md 1-36):
 *  1. The default allocator always exists and is never registered; it hands out the lowest free
 *     ID in the inclusive [min, max] (or the next one, cyclic policy) from the ID engine.
 *  2. Custom allocators take precedence over the default: the first one registered becomes
 *     active, but only while the default allocator holds no ID (else EAGAIN).
 *  3. Ops objects with the same alloc and free functions form one shared group with one ID table;
 *     the group calls the functions with the pdata of its primary (first) member.
 *  4. Switching between members of a shared group keeps outstanding IDs; unregistering the last
 *     member of a group drops its table (its IDs are orphaned, with a warning); switching between
 *     custom and default requires an empty space, or IDs are orphaned.
 *  5. `find`, `setData`, `get`, `put` and `free` see only the active allocator's table.
 *  6. Allocator calls are serialised (the kernel's ioasid_allocator_lock): concurrent callers
 *     never receive the same ID; `find` never waits.
 *  7. Every failure throws an IoasidError that names the offending values and changes nothing.
 *     The profile decides which Linux quirks are kept (see profiles.ts).
 *  8. The Linux profiles are the kernel's code, mistakes included: a custom allocator gets its
 *     range unchecked; INVALID_IOASID given as an ID is an unknown ID; the default allocator can
 *     land on 0xFFFFFFFF and leave that XArray slot dangling; unregistering an ops that is not a
 *     member of a shared group removes nothing. Where the kernel's own code would corrupt memory,
 *     they log a `hazard` (log.ts) and do what is deterministic; strict fixes the cause.
 */
import { IoasidBugError, IoasidError, fmtId, isIoasidError } from './errors.ts';
import { INVALID_IOASID, IOASID_MAX, checkId, isIdValue, type Ioasid } from './ids.ts';
import { IdEngine, type AllocPolicy } from './id-engine.ts';
import { DenseRecordTable, SparseRecordTable, TAG_NO_SET, type RecordTable } from './record-table.ts';
import { IoasidSet, type IoasidSetOptions } from './set.ts';
import { NotifierChain, type IoasidEvent, type IoasidEventType, type IoasidListener, type SubscribeOptions } from './events.ts';
import { PROFILE_RULES, checkProfile, type Profile, type ProfileRules } from './profiles.ts';
import type { AllocatorOps } from './allocator.ts';
import { parseSnapshot, type SetSnapshot, type SpaceSnapshot, type TableSnapshot } from './snapshot.ts';
import { CORE_HAZARDS, logHazard, type LogFn } from './log.ts';

export type { LogFn, LogLevel } from './log.ts';

export interface IoasidSpaceOptions {
  /** Behaviour profile; default `strict`. */
  readonly profile?: Profile;
  /**
   * Width of the default allocator's ID universe [0, 2^bits - 1]; 1..32. Default: the profile's
   * (strict 20, a PCIe PASID; Linux 32, the kernel's u32 XArray; linux-6.x 31, the IDA).
   */
  readonly bits?: number;
  /** Default allocator policy; default `lowest`. */
  readonly policy?: AllocPolicy;
  /** Freed IDs of the default allocator wait in quarantine until `release(id)`. */
  readonly quarantine?: boolean;
  /** Where the kernel would printk. */
  readonly log?: LogFn;
}

/** One allocator and its ID table (the kernel's `struct ioasid_allocator_data`). */
interface AllocatorData {
  /** Primary ops: its pdata is what the group's functions receive. */
  ops: AllocatorOps;
  /** Every registered ops object of the group (the kernel's slist), primary first. */
  members: AllocatorOps[];
  readonly custom: boolean;
  readonly table: RecordTable;
  /** Private data of IDs whose data is not null. */
  readonly data: Map<number, unknown>;
  /** Reference counts above 1 (1 is implied by presence in the table). */
  readonly refs: Map<number, number>;
  /**
   * Linux: the kernel's slist of this group reaches freed memory (an EEXIST registration linked the
   * primary's list node into a freed allocator): walking it is a hazard.
   */
  corrupted: boolean;
}

const noop: LogFn = () => {};
const DEFAULT_OPS: AllocatorOps = Object.freeze({
  alloc: () => INVALID_IOASID,
  free: () => {},
  pdata: null,
});

function isThenable<T>(x: T | PromiseLike<T>): x is PromiseLike<T> {
  return typeof x === 'object' && x !== null && typeof (x as { then?: unknown }).then === 'function';
}

function sameOps(a: AllocatorOps, b: AllocatorOps): boolean {
  return a.alloc === b.alloc && a.free === b.free;
}

function newAllocatorData(ops: AllocatorOps, custom: boolean, maxId = IOASID_MAX): AllocatorData {
  // A custom allocator's IDs come from elsewhere (a guest's few host PASIDs, scattered over 32
  // bits): a sparse table. The default allocator's IDs fill its engine's universe: a dense one,
  // unless the universe is wider than 2^26 (then sparse too).
  const table = custom || maxId >= 1 << 26 ? new SparseRecordTable() : new DenseRecordTable(maxId);
  return { ops, members: custom ? [ops] : [], custom, table, data: new Map(), refs: new Map(), corrupted: false };
}

export class IoasidSpace {
  readonly profile: Profile;
  readonly bits: number;
  readonly #rules: ProfileRules;
  /** linux-5.11: `free` is `put` (the kernel renamed it). */
  readonly #freeIsPut: boolean;
  /** A Linux form of ioasid.c: failures print at the kernel's levels (pr_err is `error`). */
  readonly #kernelLog: boolean;
  readonly #log: LogFn;
  /**
   * Linux: the default allocator's XArray slot 0xFFFFFFFF holds an entry `ioasid_alloc()` freed
   * (the allocation that landed there). Never empty again; a lookup reads freed memory.
   */
  #danglingInvalid = false;
  #engine: IdEngine;
  #default: AllocatorData;
  /** Registered custom allocators, in registration order (the kernel's allocators_list). */
  #list: AllocatorData[] = [];
  #active: AllocatorData;
  /** Set slots: tag = slot + 2 in the record tables. */
  #sets: (IoasidSet | undefined)[] = [];
  #tokens = new Map<string, IoasidSet>();
  #chain: NotifierChain;
  /** Tail of the queue of serialised allocator calls (custom allocators). */
  #tail: Promise<unknown> = Promise.resolve();
  #queued = 0;
  /** Depth of synchronous execution inside a custom allocator callback. */
  #inCallback = 0;

  constructor(opts: IoasidSpaceOptions = {}) {
    const profile = checkProfile(opts.profile ?? 'strict');
    this.#rules = PROFILE_RULES[profile];
    const bits = opts.bits ?? this.#rules.defaultBits;
    this.profile = profile;
    this.bits = bits;
    this.#freeIsPut = profile === 'linux-5.11';
    this.#kernelLog = this.#rules.hazards;
    this.#log = opts.log ?? noop;
    // IdEngine.forBits validates bits and policy.
    this.#engine = IdEngine.forBits(bits, {
      ...(opts.policy !== undefined ? { policy: opts.policy } : {}),
      quarantine: opts.quarantine ?? false,
    });
    this.#default = newAllocatorData(DEFAULT_OPS, false, this.#engine.max);
    this.#active = this.#default;
    this.#chain = new NotifierChain((err, event) =>
      this.#log('error', `notifier failed on ${event.type} of IOASID ${event.id}`, { error: String(err) }),
    );
  }

  // ---------------------------------------------------------------- sets

  /** Create a set (extension series `ioasid_set_alloc`, behaviour 70). */
  createSet(opts: IoasidSetOptions): IoasidSet {
    const o = opts as unknown;
    if (typeof o !== 'object' || o === null) throw new IoasidError('EINVAL', `set options must be an object, got ${fmtId(o)}`);
    const { name, quota = 0, token } = opts;
    if (typeof name !== 'string' || name.length === 0 || name.length > 256) {
      throw new IoasidError('EINVAL', `set name must be a string of 1 to 256 characters, got ${fmtId(name)}`, { name });
    }
    if (typeof quota !== 'number' || !Number.isInteger(quota) || quota < 0) {
      throw new IoasidError('EINVAL', `set quota must be a non-negative integer, got ${fmtId(quota)}`, { quota });
    }
    if (quota > this.capacity) {
      throw new IoasidError('ENOSPC', `set quota ${quota} exceeds the space's capacity ${this.capacity}`, { quota, capacity: this.capacity });
    }
    if (token !== undefined) {
      if (typeof token !== 'string' || token.length === 0 || token.length > 256) {
        throw new IoasidError('EINVAL', `set token must be a string of 1 to 256 characters, got ${fmtId(token)}`, { token });
      }
      if (this.#tokens.has(token)) throw new IoasidError('EEXIST', `a set with token ${JSON.stringify(token)} exists`, { token });
    }
    let slot = this.#sets.indexOf(undefined);
    if (slot < 0) slot = this.#sets.length;
    const set = new IoasidSet(this, slot, { name, quota, token });
    this.#sets[slot] = set;
    if (token !== undefined) this.#tokens.set(token, set);
    return set;
  }

  /** Destroy an empty set (behaviour 72: a set that still owns IDs is EBUSY). */
  destroySet(set: IoasidSet): void {
    const slot = this.#slot(set);
    if (slot < 0) throw new IoasidError('EINVAL', 'destroySet needs a set', { set: null });
    // Count every table, not only the active one: a slot is reused, and must not inherit IDs.
    let n = 0;
    for (const ad of [this.#default, ...this.#list]) n += ad.table.countOf(slot + 2);
    if (n > 0) throw new IoasidError('EBUSY', `set ${set.name} still owns ${n} IOASIDs`, { set: set.name, count: n });
    this.#sets[slot] = undefined;
    if (set.token !== undefined) this.#tokens.delete(set.token);
    IoasidSet.retire(set);
  }

  /** Live sets, by slot order. */
  sets(): IoasidSet[] {
    return this.#sets.filter((s): s is IoasidSet => s !== undefined);
  }

  setByToken(token: string): IoasidSet | undefined {
    return this.#tokens.get(token);
  }

  /** IDs the set holds in the active table. */
  setCount(set: IoasidSet): number {
    const slot = this.#slot(set);
    return slot < 0 ? this.#active.table.countOf(TAG_NO_SET) : this.#active.table.countOf(slot + 2);
  }

  /** The set's IDs in the active table, ascending; work proportional to the set (behaviour 69). */
  idsOf(set: IoasidSet | null): number[] {
    const slot = this.#slot(set);
    return this.#active.table.membersOf(slot < 0 ? TAG_NO_SET : slot + 2).sort((a, b) => a - b);
  }

  /** -1 for null; throws EINVAL for a set of another space or a destroyed set. */
  #slot(set: IoasidSet | null | undefined): number {
    if (set === null || set === undefined) return -1;
    const slot = IoasidSet.slotOf(set, this);
    if (slot >= 0 && this.#sets[slot] === set) return slot;
    if (slot === -3) throw new IoasidError('EINVAL', `not an IoasidSet: ${fmtId(set)}`, { set: String(set) });
    if (slot === -2) throw new IoasidError('EINVAL', `set ${set.name} belongs to another space`, { set: set.name });
    throw new IoasidError('EINVAL', `set ${set.name} was destroyed`, { set: set.name });
  }

  #setOfTag(tag: number): IoasidSet | null {
    return tag >= 2 ? (this.#sets[tag - 2] ?? null) : null;
  }

  // ---------------------------------------------------------------- allocation

  /** Size of the default allocator's universe. */
  get capacity(): number {
    return this.#engine.max - this.#engine.min + 1;
  }

  /** IDs in the active table. */
  get size(): number {
    return this.#active.table.size;
  }

  /** Every ID of the active table, ascending. */
  ids(): number[] {
    return [...this.#active.table.entries()].map(([id]) => id);
  }

  /** Every ID of the active table with its owning set (null: none), ascending. */
  *entries(): IterableIterator<[number, IoasidSet | null]> {
    for (const [id, tag] of this.#active.table.entries()) yield [id, this.#setOfTag(tag)];
  }

  /**
   * Validate an allocation's arguments; returns the set's slot (-1: none). `min` and the already
   * clamped `max` are checked here and used by the caller as they are (no object is made: this is
   * the host's hot path).
   */
  #checkAllocArgs(set: IoasidSet | null, min: unknown, max: unknown): number {
    const slot = this.#slot(set);
    const lo = checkId(min, 'min');
    const hi = checkId(max, 'max');
    if (lo > hi) throw new IoasidError('EINVAL', `min ${fmtId(lo)} is above max ${fmtId(hi)}`, { min: lo, max: hi });
    if (slot >= 0 && this.#rules.quotas) {
      const s = this.#sets[slot] as IoasidSet;
      const count = this.#active.table.countOf(slot + 2);
      if (s.quota > 0 && count >= s.quota) {
        throw new IoasidError('EDQUOT', `set ${s.name} is at its quota of ${s.quota}`, { set: s.name, quota: s.quota, count });
      }
    }
    return slot;
  }

  /**
   * Linux, a custom allocator active: `ioasid_alloc()` hands [min, max] to `ops->alloc` unchecked.
   * Only what an `ioasid_t` cannot carry is refused (non-integers, negatives, above 0xFFFFFFFF).
   */
  #checkU32Args(set: IoasidSet | null, min: unknown, max: unknown): number {
    const slot = this.#slot(set);
    for (const [what, v] of [['min', min], ['max', max]] as const) {
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > INVALID_IOASID) {
        throw new IoasidError('EINVAL', `${what} must be an integer in [0, 0xffffffff] (an ioasid_t), got ${fmtId(v)}`, { [what]: v });
      }
    }
    return slot;
  }

  #assertNotInCallback(what: string): void {
    if (this.#inCallback > 0) {
      throw new IoasidError('EDEADLK', `${what} called from inside an allocator callback (only find may be)`, { call: what });
    }
  }

  /**
   * Allocate an ID in [min, max] for `set` (null: no set), with private data `priv` (the kernel's
   * `ioasid_alloc`). Resolves to the ID; rejects with an IoasidError (ENOSPC, EDQUOT, EINVAL,
   * ERANGE, or what a custom allocator reported).
   */
  async alloc(set: IoasidSet | null, min: number, max: number, priv: unknown = null): Promise<Ioasid> {
    this.#assertNotInCallback('alloc');
    if (this.#queued === 0) {
      // The lock is free: run now; only a plug-in that answers later makes the call wait.
      if (!this.#active.custom) return this.allocSync(set, min, max, priv);
      return this.#holdWhile(this.#allocCustom(set, min, max, priv));
    }
    return this.#serialise(async () => (this.#active.custom ? this.#allocCustom(set, min, max, priv) : this.allocSync(set, min, max, priv)));
  }

  /** Synchronous `alloc`, for when the active allocator is the default one (the host path). */
  allocSync(set: IoasidSet | null, min: number, max: number, priv: unknown = null): Ioasid {
    this.#assertNotInCallback('allocSync');
    if (this.#active.custom) {
      throw new IoasidError('EOPNOTSUPP', 'allocSync needs the default allocator; a custom allocator is active, use alloc()');
    }
    if (max === INVALID_IOASID && this.#rules.acceptInvalidAsMax) return this.#allocToTop(set, min, priv);
    const slot = this.#checkAllocArgs(set, min, max);
    const id = this.#engine.alloc(min, max);
    if (id < 0) this.#noFreeId(min, max);
    this.#record(this.#default, id, slot, priv);
    return id as Ioasid;
  }

  /**
   * Allocate `count` IDs in [min, max] for `set`, all or nothing (a host's batch request; not a
   * kernel verb): the set's quota is checked for the whole batch first, then the IDs are taken
   * one by one, and if one cannot be had those already taken are freed again.
   */
  allocBatchSync(set: IoasidSet | null, min: number, max: number, count: number): Ioasid[] {
    this.#checkRoom(set, count);
    const got: Ioasid[] = [];
    try {
      while (got.length < count) got.push(this.allocSync(set, min, max));
    } catch (e) {
      for (const id of got) this.freeSync(id, set);
      throw e;
    }
    return got;
  }

  /** `allocBatchSync` through whichever allocator is active (a custom one may answer later). */
  async allocBatch(set: IoasidSet | null, min: number, max: number, count: number): Promise<Ioasid[]> {
    if (!this.#active.custom && this.#queued === 0) return this.allocBatchSync(set, min, max, count);
    this.#checkRoom(set, count);
    const got: Ioasid[] = [];
    try {
      while (got.length < count) got.push(await this.alloc(set, min, max));
    } catch (e) {
      for (const id of got) await this.free(id, set).catch(() => {});
      throw e;
    }
    return got;
  }

  /** A batch of `count` must fit in the set's quota (EDQUOT with the numbers). */
  #checkRoom(set: IoasidSet | null, count: unknown): void {
    if (typeof count !== 'number' || !Number.isInteger(count) || count < 1) {
      throw new IoasidError('EINVAL', `count must be a positive integer, got ${fmtId(count)}`, { count });
    }
    const slot = this.#slot(set);
    if (slot < 0 || !this.#rules.quotas) return;
    const s = this.#sets[slot] as IoasidSet;
    const inUse = this.#active.table.countOf(slot + 2);
    if (s.quota > 0 && inUse + count > s.quota) {
      const what = count === 1 ? 'one more ID' : `${count} more IDs`;
      throw new IoasidError('EDQUOT', `set ${s.name} holds ${inUse} of its quota of ${s.quota}: ${what} would exceed it`, { set: s.name, quota: s.quota, count: inUse, requested: count });
    }
  }

  #noFreeId(lo: number, hi: number): never {
    if (this.#kernelLog) {
      // default_alloc(), then ioasid_alloc() (both pr_err).
      this.#log('error', `Failed to alloc ioasid from ${lo} to ${hi}`, { min: lo, max: hi });
      this.#log('error', 'Failed ASID allocation 0', { min: lo, max: hi });
    } else this.#log('debug', 'no free IOASID in range', { min: lo, max: hi });
    throw new IoasidError('ENOSPC', `no free IOASID in [${fmtId(lo)}, ${fmtId(hi)}]`, { min: lo, max: hi });
  }

  /**
   * Linux, max = 0xFFFFFFFF: `xa_alloc(XA_LIMIT(min, 0xFFFFFFFF))`. When everything below is taken
   * (or min is 0xFFFFFFFF), the XArray stores the entry at 0xFFFFFFFF itself; `ioasid_alloc()`
   * then sees INVALID_IOASID, frees the data and fails, and the slot keeps the freed entry. We keep
   * the slot occupied (what follows deterministically) and report the hazard.
   */
  #allocToTop(set: IoasidSet | null, min: unknown, priv: unknown): Ioasid {
    const slot = this.#checkU32Args(set, min, INVALID_IOASID);
    const lo = min as number;
    if (lo <= IOASID_MAX) {
      const id = this.#engine.alloc(lo, IOASID_MAX);
      if (id >= 0) {
        this.#record(this.#default, id, slot, priv);
        return id as Ioasid;
      }
    }
    // The universe is ours: with `bits` below 32 the XArray's top slot is not modelled.
    if (this.#danglingInvalid || this.#engine.max !== IOASID_MAX) this.#noFreeId(lo, INVALID_IOASID);
    this.#danglingInvalid = true;
    this.#log('error', 'Failed ASID allocation 0', { min: lo, max: INVALID_IOASID });
    logHazard(this.#log, CORE_HAZARDS['invalid-ioasid-entry'],
      `alloc(${fmtId(lo)}, 0xffffffff) landed on 0xFFFFFFFF: the XArray keeps an entry ioasid_alloc() freed; the default allocator is never empty again`,
      { effect: 'dangling', min: lo, max: INVALID_IOASID });
    throw new IoasidError('ENOSPC', `no IOASID in [${fmtId(lo)}, 0xfffffffe]; the allocation landed on INVALID_IOASID, which now stays occupied (kernel hazard)`, { min: lo, max: INVALID_IOASID });
  }

  #record(ad: AllocatorData, id: number, slot: number, priv: unknown): void {
    ad.table.insert(id, slot < 0 ? TAG_NO_SET : slot + 2);
    if (priv !== null && priv !== undefined) ad.data.set(id, priv);
    if (!this.#chain.empty) this.#chain.emit({ type: 'alloc', id, set: slot < 0 ? null : (this.#sets[slot] as IoasidSet) });
  }

  #serialise<T>(fn: () => Promise<T>): Promise<T> {
    this.#queued++;
    const run = this.#tail.then(fn);
    this.#tail = run.then(
      () => this.#queued--,
      () => this.#queued--,
    );
    return run;
  }

  /**
   * A call that started with the lock free went asynchronous: later calls queue behind it until
   * it settles (a synchronous answer needs no queue and no promise of ours).
   */
  #holdWhile<T>(r: T | Promise<T>): T | Promise<T> {
    if (!isThenable(r)) return r;
    this.#queued++;
    const settled = Promise.resolve(r).then(
      () => this.#queued--,
      () => this.#queued--,
    );
    this.#tail = this.#tail.then(() => settled);
    return r;
  }

  /** Call into the plug-in, marking the synchronous part as "inside a callback". */
  #callCustom<T>(fn: () => T): T {
    this.#inCallback++;
    try {
      return fn();
    } finally {
      this.#inCallback--;
    }
  }

  /** Give an ID back to the plug-in; failures are only logged (the call already failed). */
  #handBack(ops: AllocatorOps, id: number, why: string): void | Promise<void> {
    try {
      const r = this.#callCustom(() => ops.free(id, ops.pdata));
      if (isThenable(r)) return Promise.resolve(r).catch((err: unknown) => this.#handBackFailed(id, why, err));
    } catch (err) {
      this.#handBackFailed(id, why, err);
    }
  }

  #handBackFailed(id: number, why: string, err: unknown): void {
    this.#log('error', `handing back IOASID ${id} failed (${why})`, { id, error: String(err) });
  }

  /** Custom allocation, synchronous unless the plug-in answers with a promise. */
  #allocCustom(set: IoasidSet | null, min: number, max: number, priv: unknown): Ioasid | Promise<Ioasid> {
    const ad = this.#active;
    const slot = this.#rules.checkRangeBeforeCustom ? this.#checkAllocArgs(set, min, max) : this.#checkU32Args(set, min, max);
    const lo = min;
    const hi = max;
    const ops = ad.ops;
    const got = this.#callCustom(() => ops.alloc(lo, hi, ops.pdata));
    if (isThenable(got)) return Promise.resolve(got).then((g) => this.#adoptCustom(ad, ops, slot, lo, hi, priv, g));
    return this.#adoptCustom(ad, ops, slot, lo, hi, priv, got);
  }

  /** Check a custom allocator's answer and record it (rule 7: a refused answer changes nothing). */
  #adoptCustom(ad: AllocatorData, ops: AllocatorOps, slot: number, lo: number, hi: number, priv: unknown, got: unknown): Ioasid | Promise<Ioasid> {
    if (got === INVALID_IOASID) {
      if (this.#kernelLog) this.#log('error', 'Failed ASID allocation 1', { min: lo, max: hi });
      return this.#refuse(ops, got, null, new IoasidError('ENOSPC', `custom allocator has no IOASID in [${fmtId(lo)}, ${fmtId(hi)}]`, { min: lo, max: hi }));
    }
    if (typeof got !== 'number' || !Number.isInteger(got) || got < 0 || got > IOASID_MAX) {
      return this.#refuse(ops, 0, null, new IoasidError('EINVAL', `custom allocator returned ${fmtId(got)}, not an IOASID`, { returned: String(got) }));
    }
    if (!this.#list.includes(ad)) {
      // Unregistered while the call was in flight: nobody tracks this ID, give it back.
      return this.#refuse(ops, got, 'allocator unregistered', new IoasidError('ENODEV', `allocator was unregistered while allocating IOASID ${got}`, { id: got }));
    }
    if (this.#rules.checkCustomRange && (got < lo || got > hi)) {
      return this.#refuse(ops, got, 'out of range', new IoasidError('ERANGE', `custom allocator returned ${fmtId(got)}, outside [${fmtId(lo)}, ${fmtId(hi)}]`, { id: got, min: lo, max: hi }));
    }
    if (ad.table.has(got)) {
      // The kernel hands the duplicate back, which releases an ID it still tracks; strict keeps it.
      this.#log('error', this.#kernelLog ? `Failed to alloc ioasid from ${got}` : `custom allocator returned IOASID ${got}, which is already tracked`, { id: got });
      return this.#refuse(ops, got, this.#rules.handBackDuplicate ? 'duplicate' : null, new IoasidError('EEXIST', `custom allocator returned ${fmtId(got)}, already allocated`, { id: got }));
    }
    this.#record(ad, got, slot, priv);
    return got as Ioasid;
  }

  /** Fail a custom allocation, first handing the answer back when `why` says so. */
  #refuse(ops: AllocatorOps, got: number, why: string | null, e: IoasidError): never | Promise<never> {
    const r = why === null ? undefined : this.#handBack(ops, got, why);
    if (isThenable(r)) {
      return Promise.resolve(r).then(() => {
        throw e;
      });
    }
    throw e;
  }

  // ---------------------------------------------------------------- free, get, put

  #lookupForFree(id: unknown, set: IoasidSet | null | undefined, verb: string): number | null {
    const ad = this.#active;
    if (!isIdValue(id)) return this.#freeOfNonId(id, set, verb);
    const n = id;
    const slot = this.#slot(set);
    const tag = ad.table.tag(n);
    if (tag === 0) {
      if (this.#rules.reportMisuse) throw new IoasidError('ENOENT', `${verb} of unknown IOASID ${fmtId(n)}`, { id: n });
      this.#log(this.#kernelLog ? 'error' : 'warn', `Trying to free unknown IOASID ${n}`, { id: n });
      return null;
    }
    if (slot >= 0 && tag !== slot + 2) {
      const owner = this.#setOfTag(tag);
      throw new IoasidError('EACCES', `IOASID ${fmtId(n)} is not owned by set ${(set as IoasidSet).name}`, { id: n, set: (set as IoasidSet).name, owner: owner?.name ?? null });
    }
    return n;
  }

  /**
   * free/put of something that is not an ID. Linux: INVALID_IOASID is an unknown ID to `xa_load`,
   * unless an allocation left the slot dangling: then `ioasid_free()` frees that entry a second
   * time (the slot is erased: what follows deterministically) and `ioasid_put()` decrements a
   * count in freed memory. Anything else is EINVAL in every profile.
   */
  #freeOfNonId(id: unknown, set: IoasidSet | null | undefined, verb: string): null {
    if (id !== INVALID_IOASID || !this.#rules.invalidIsAnId) checkId(id);
    this.#slot(set);
    if (this.#danglingInvalid && !this.#active.custom) {
      const put = verb === 'put' || this.#freeIsPut;
      if (put) {
        logHazard(this.#log, CORE_HAZARDS['invalid-ioasid-entry'], `ioasid_put(0xFFFFFFFF) decrements the refcount of the freed entry left at 0xFFFFFFFF (use after free)`, { effect: 'use-after-free', id: INVALID_IOASID });
      } else {
        this.#danglingInvalid = false;
        logHazard(this.#log, CORE_HAZARDS['invalid-ioasid-entry'], `ioasid_free(0xFFFFFFFF) erases the entry left at 0xFFFFFFFF and frees it a second time (double free)`, { effect: 'double-free', id: INVALID_IOASID });
      }
      return null;
    }
    this.#log('error', `Trying to free unknown IOASID ${INVALID_IOASID}`, { id: INVALID_IOASID });
    return null;
  }

  /** Linux, INVALID_IOASID given to a lookup: unknown, or a read of the dangling entry. */
  #lookupOfInvalid(call: string, what: string): void {
    if (this.#danglingInvalid && !this.#active.custom) {
      logHazard(this.#log, CORE_HAZARDS['invalid-ioasid-entry'], `${call}(0xFFFFFFFF) ${what} the freed entry left at 0xFFFFFFFF (use after free)`, { effect: 'use-after-free', id: INVALID_IOASID, call });
    }
  }

  /**
   * Free an ID (the kernel's `ioasid_free`; under `linux-5.11` it is `ioasid_put`). With `set`,
   * the ID must belong to it (EACCES). Unknown IDs: a logged no-op in the Linux profiles, ENOENT
   * in strict. In strict, an ID with extra references is EBUSY (drop them with `put`).
   */
  async free(id: number, set?: IoasidSet | null): Promise<void> {
    this.#assertNotInCallback('free');
    if (this.#queued === 0) {
      if (!this.#active.custom) return this.freeSync(id, set);
      const r = this.#holdWhile(this.#freeCustom(id, set, false));
      if (isThenable(r)) await r; // a synchronous plug-in costs no extra turn
      return;
    }
    await this.#serialise(async () => this.#freeActive(id, set, false));
  }

  freeSync(id: number, set?: IoasidSet | null): void {
    this.#assertNotInCallback('freeSync');
    if (this.#active.custom) throw new IoasidError('EOPNOTSUPP', 'freeSync needs the default allocator; a custom allocator is active, use free()');
    const n = this.#lookupForFree(id, set, 'free');
    if (n === null) return;
    if (this.#freeIsPut) {
      this.#putDefault(n);
      return;
    }
    this.#checkNoExtraRefs(this.#default, n);
    this.#releaseDefault(n);
  }

  #checkNoExtraRefs(ad: AllocatorData, id: number): void {
    if (ad.refs.size === 0) return;
    const refs = ad.refs.get(id);
    if (refs !== undefined) {
      throw new IoasidError('EBUSY', `IOASID ${fmtId(id)} still has ${refs} references; use put()`, { id, refs });
    }
  }

  #putDefault(id: number): boolean {
    if (this.#dropRef(this.#default, id)) return false;
    this.#releaseDefault(id);
    return true;
  }

  /** Drop one reference; true when references remain. */
  #dropRef(ad: AllocatorData, id: number): boolean {
    if (ad.refs.size === 0) return false;
    const refs = ad.refs.get(id);
    if (refs === undefined) return false;
    if (refs <= 2) ad.refs.delete(id);
    else ad.refs.set(id, refs - 1);
    return true;
  }

  #releaseDefault(id: number): void {
    const ad = this.#default;
    if (!this.#engine.free(id)) throw new IoasidBugError('default table and engine disagree', { id });
    this.#forget(ad, id);
  }

  #forget(ad: AllocatorData, id: number): void {
    const tag = ad.table.remove(id);
    if (ad.data.size > 0) ad.data.delete(id);
    if (ad.refs.size > 0) ad.refs.delete(id);
    if (!this.#chain.empty) this.#chain.emit({ type: 'free', id, set: this.#setOfTag(tag) });
  }

  /** Returns true when the ID was released (put semantics). */
  #freeActive(id: number, set: IoasidSet | null | undefined, isPut: boolean): boolean | Promise<boolean> {
    if (this.#active.custom) return this.#freeCustom(id, set, isPut);
    if (isPut) return this.putSync(id);
    this.freeSync(id, set);
    return true;
  }

  /** Custom free (or put), synchronous unless the plug-in answers with a promise. */
  #freeCustom(id: number, set: IoasidSet | null | undefined, isPut: boolean): boolean | Promise<boolean> {
    const ad = this.#active;
    const n = this.#lookupForFree(id, set, isPut ? 'put' : 'free');
    if (n === null) return false;
    if (isPut || this.#freeIsPut) {
      if (this.#dropRef(ad, n)) return false;
    } else {
      this.#checkNoExtraRefs(ad, n);
    }
    const ops = ad.ops;
    let r: void | Promise<void>;
    try {
      r = this.#callCustom(() => ops.free(n, ops.pdata));
    } catch (err) {
      return this.#freeFailed(ad, n, err);
    }
    if (isThenable(r)) return Promise.resolve(r).then(() => this.#freeDone(ad, n), (err: unknown) => this.#freeFailed(ad, n, err));
    return this.#freeDone(ad, n);
  }

  #freeDone(ad: AllocatorData, n: number): boolean {
    // The group may have lost this table meanwhile (unregistered): then there is nothing to drop.
    if (ad.table.has(n)) this.#forget(ad, n);
    return true;
  }

  #freeFailed(ad: AllocatorData, n: number, err: unknown): boolean {
    if (this.#rules.keepRecordOnFailedFree) {
      if (isIoasidError(err)) throw err;
      throw new IoasidError('ENODEV', `custom allocator failed to free IOASID ${fmtId(n)}: ${String(err)}`, { id: n }, { cause: err });
    }
    this.#log('warn', `custom free of IOASID ${n} failed; record dropped anyway`, { id: n, error: String(err) });
    return this.#freeDone(ad, n);
  }

  /** Take a reference (refcount profiles: `linux-5.11`, `strict`). */
  get(id: number): void {
    this.#needRefcounts('get');
    if (id === INVALID_IOASID && this.#rules.invalidIsAnId) {
      this.#lookupOfInvalid('ioasid_get', 'increments the refcount of');
      this.#log('warn', 'get of unknown IOASID (WARN_ON)', { id });
      return;
    }
    const n = checkId(id);
    const ad = this.#active;
    if (!ad.table.has(n)) {
      if (this.#rules.reportMisuse) throw new IoasidError('ENOENT', `get of unknown IOASID ${fmtId(n)}`, { id: n });
      this.#log('warn', 'get of unknown IOASID (WARN_ON)', { id: n });
      return;
    }
    ad.refs.set(n, (ad.refs.get(n) ?? 1) + 1);
  }

  /** Drop a reference; true when it was the last and the ID was freed. */
  async put(id: number): Promise<boolean> {
    this.#needRefcounts('put');
    this.#assertNotInCallback('put');
    if (this.#queued === 0) return this.#active.custom ? this.#holdWhile(this.#freeCustom(id, undefined, true)) : this.putSync(id);
    return this.#serialise(async () => this.#freeActive(id, undefined, true));
  }

  putSync(id: number): boolean {
    this.#needRefcounts('put');
    this.#assertNotInCallback('putSync');
    if (this.#active.custom) throw new IoasidError('EOPNOTSUPP', 'putSync needs the default allocator; a custom allocator is active, use put()');
    const n = this.#lookupForFree(id, undefined, 'put');
    if (n === null) return false;
    return this.#putDefault(n);
  }

  /** Current reference count (0 when unknown). */
  refcount(id: number): number {
    const ad = this.#active;
    return ad.table.has(id) ? (ad.refs.get(id) ?? 1) : 0;
  }

  #needRefcounts(what: string): void {
    if (!this.#rules.refcounts) {
      throw new IoasidError('EOPNOTSUPP', `${what} does not exist in profile ${this.profile} (kernel ${this.#rules.kernel})`, { profile: this.profile });
    }
  }

  /** Free every ID of a set, whatever its references (VM teardown, behaviour 64); returns the IDs. */
  freeAllSync(set: IoasidSet): number[] {
    this.#assertNotInCallback('freeAllSync');
    if (this.#active.custom) throw new IoasidError('EOPNOTSUPP', 'freeAllSync needs the default allocator; use freeAll()');
    const slot = this.#slot(set);
    if (slot < 0) throw new IoasidError('EINVAL', 'freeAll needs a set');
    const ids = this.#default.table.membersOf(slot + 2);
    for (const id of ids) this.#releaseDefault(id);
    return ids.sort((a, b) => a - b);
  }

  async freeAll(set: IoasidSet): Promise<number[]> {
    this.#assertNotInCallback('freeAll');
    if (!this.#active.custom && this.#queued === 0) return this.freeAllSync(set);
    const slot = this.#slot(set);
    if (slot < 0) throw new IoasidError('EINVAL', 'freeAll needs a set');
    return this.#serialise(async () => {
      const freed: number[] = [];
      for (const id of this.#active.table.membersOf(slot + 2)) {
        this.#active.refs.delete(id);
        if (await this.#freeActive(id, set, false)) freed.push(id);
      }
      return freed.sort((a, b) => a - b);
    });
  }

  /** Quarantine: let a freed ID be handed out again (its DMA has drained). */
  release(id: number): boolean {
    return this.#engine.release(checkId(id));
  }

  releaseAll(): number {
    return this.#engine.releaseAll();
  }

  quarantined(): number[] {
    return [...this.#engine.quarantinedIds()];
  }

  // ---------------------------------------------------------------- lookups and data

  /**
   * Look up an ID's private data (the kernel's `ioasid_find`). Throws ENOENT for an unknown ID and
   * EACCES when `set` is given and does not own it; returns null when there is no data or when the
   * getter refuses it. The getter is not called on the error paths. Never waits.
   */
  find(set: IoasidSet | null, id: number, getter?: (priv: unknown) => boolean): unknown {
    if (id === INVALID_IOASID && this.#rules.invalidIsAnId) {
      this.#slot(set);
      // Undefined in the kernel when the slot dangles; ours answers what an empty slot answers.
      this.#lookupOfInvalid('ioasid_find', 'reads');
      throw new IoasidError('ENOENT', `IOASID ${fmtId(id)} is not allocated`, { id });
    }
    const n = checkId(id);
    const slot = this.#slot(set);
    const ad = this.#active;
    const tag = ad.table.tag(n);
    if (tag === 0) throw new IoasidError('ENOENT', `IOASID ${fmtId(n)} is not allocated`, { id: n });
    if (slot >= 0 && tag !== slot + 2) {
      throw new IoasidError('EACCES', `IOASID ${fmtId(n)} is not owned by set ${(set as IoasidSet).name}`, { id: n, set: (set as IoasidSet).name });
    }
    const priv = ad.data.has(n) ? ad.data.get(n) : null;
    if (getter !== undefined && !getter(priv)) return null;
    return priv;
  }

  /** The owning set of a live ID (null: no set); ENOENT when unknown. */
  ownerOf(id: number): IoasidSet | null {
    const n = checkId(id);
    const tag = this.#active.table.tag(n);
    if (tag === 0) throw new IoasidError('ENOENT', `IOASID ${fmtId(n)} is not allocated`, { id: n });
    return this.#setOfTag(tag);
  }

  has(id: number): boolean {
    return this.#active.table.has(id);
  }

  /** Linux: the default allocator's slot 0xFFFFFFFF holds the entry an allocation left there. */
  get danglingInvalid(): boolean {
    return this.#danglingInvalid;
  }

  /** Replace an ID's private data (null allowed). With `set`, the ID must belong to it. */
  setData(id: number, data: unknown, set?: IoasidSet | null): void {
    if (id === INVALID_IOASID && this.#rules.invalidIsAnId) {
      this.#slot(set);
      this.#lookupOfInvalid('ioasid_set_data', 'writes into');
      throw new IoasidError('ENOENT', `setData of unknown IOASID ${fmtId(id)}`, { id });
    }
    const n = checkId(id);
    const slot = this.#slot(set);
    const ad = this.#active;
    const tag = ad.table.tag(n);
    if (tag === 0) throw new IoasidError('ENOENT', `setData of unknown IOASID ${fmtId(n)}`, { id: n });
    if (slot >= 0 && tag !== slot + 2) throw new IoasidError('EACCES', `IOASID ${fmtId(n)} is not owned by set ${(set as IoasidSet).name}`, { id: n });
    if (data === null || data === undefined) ad.data.delete(n);
    else ad.data.set(n, data);
  }

  // ---------------------------------------------------------------- custom allocators

  /** Register a custom allocator (the kernel's `ioasid_register_allocator`). */
  registerAllocator(ops: AllocatorOps): void {
    this.#assertNotInCallback('registerAllocator');
    const o = ops as unknown as Partial<AllocatorOps> | null;
    if (typeof o !== 'object' || o === null || typeof o.alloc !== 'function' || typeof o.free !== 'function') {
      throw new IoasidError('EINVAL', 'allocator ops need alloc and free functions', {});
    }
    if (!this.#rules.customAllocators) {
      throw new IoasidError('EOPNOTSUPP', `there are no custom IOASID allocators in profile ${this.profile} (kernel ${this.#rules.kernel}: ioasid.c is gone)`, { profile: this.profile });
    }
    if (this.#list.length === 0) {
      // xa_empty(): the slot 0xFFFFFFFF an allocation left dangling counts (Linux).
      const outstanding = this.#default.table.size + (this.#danglingInvalid ? 1 : 0);
      if (outstanding > 0) {
        this.#log('warn', 'Default allocator active with outstanding IOASID', { outstanding, danglingInvalid: this.#danglingInvalid });
        const why = this.#default.table.size > 0 ? `the default allocator holds ${this.#default.table.size} IOASIDs` : 'the default allocator\'s slot 0xFFFFFFFF holds the entry an allocation left there (kernel hazard)';
        throw new IoasidError('EAGAIN', why, { outstanding, danglingInvalid: this.#danglingInvalid });
      }
      const ad = newAllocatorData(ops, true);
      this.#list.push(ad);
      this.#active = ad;
      return;
    }
    for (const ad of this.#list) {
      if (ad.ops === ops || (this.#rules.detectSecondaryDuplicate && ad.members.includes(ops))) {
        this.#log(this.#kernelLog ? 'error' : 'warn', 'IOASID allocator already registered', {});
        if (this.#rules.hazards) {
          ad.corrupted = true;
          logHazard(this.#log, CORE_HAZARDS['allocator-list-corruption'],
            "the EEXIST path frees the new allocator data with the primary's list node linked into it: the group's list now reaches freed memory",
            { effect: 'dangling', group: this.#list.indexOf(ad) });
        }
        throw new IoasidError('EEXIST', 'this allocator ops object is already registered', {});
      }
      if (sameOps(ad.ops, ops)) {
        if (this.#rules.hazards && ad.members.includes(ops)) {
          ad.corrupted = true;
          logHazard(this.#log, CORE_HAZARDS['allocator-list-corruption'],
            'a secondary member registered again: its list node is added to the group\'s list a second time (list_add of a node already on the list)',
            { effect: 'double-add', group: this.#list.indexOf(ad) });
        }
        ad.members.push(ops);
        return;
      }
    }
    this.#list.push(newAllocatorData(ops, true));
  }

  /** Unregister a custom allocator (the kernel's `ioasid_unregister_allocator`); never fails. */
  unregisterAllocator(ops: AllocatorOps): void {
    if (this.#list.length === 0) {
      this.#log('warn', 'No custom IOASID allocators active!', {});
      return;
    }
    const strict = this.#rules.repointSharedPrimary;
    const ad = this.#list.find((a) => sameOps(a.ops, ops) && (!strict || a.members.includes(ops)));
    if (ad === undefined) return;
    // list_is_singular(): a group of one goes, even for another ops with the same functions.
    if (ad.members.length === 1) {
      this.#list = this.#list.filter((a) => a !== ad);
      if (ad.table.size > 0) {
        this.#log('warn', 'unregistering an allocator with outstanding IOASIDs: they are orphaned', { outstanding: ad.table.size });
      }
      if (this.#list.length === 0) {
        this.#log('info', 'No custom IOASID allocators, switch to default.', {});
        this.#active = this.#default;
      } else if (this.#active === ad) {
        this.#active = this.#list[0] as AllocatorData;
        this.#log('info', 'IOASID allocator changed', {});
      }
      return;
    }
    if (ad.corrupted) {
      logHazard(this.#log, CORE_HAZARDS['allocator-list-corruption'],
        "ioasid_unregister_allocator() walks the group's list, which reaches freed memory (the kernel oopses on the poisoned pointer, or loops)",
        { effect: 'freed-list-walk', group: this.#list.indexOf(ad) });
    }
    // Only the entry whose sops == ops goes; an ops that is not a member removes nothing.
    const i = ad.members.indexOf(ops);
    if (i < 0) return;
    ad.members.splice(i, 1);
    if (strict && ad.ops === ops) ad.ops = ad.members[0] as AllocatorOps;
  }

  /** The active group's primary ops, or null when the default allocator is active. */
  activeAllocator(): AllocatorOps | null {
    return this.#active.custom ? this.#active.ops : null;
  }

  /** How many custom allocator groups are registered. */
  get allocatorGroups(): number {
    return this.#list.length;
  }

  /** Resolves when every queued allocator call has finished. */
  async drain(): Promise<void> {
    while (this.#queued > 0) await this.#tail.catch(() => {});
  }

  // ---------------------------------------------------------------- events

  /** Subscribe to alloc/free/bind/unbind; returns the unsubscribe function. */
  subscribe(listener: IoasidListener, opts: SubscribeOptions = {}): () => void {
    if (opts.set !== undefined) this.#slot(opts.set);
    return this.#chain.subscribe(listener, opts);
  }

  /** Publish a bind or unbind of a live ID (the extension series' BIND/UNBIND). */
  notify(type: Extract<IoasidEventType, 'bind' | 'unbind'>, id: number, info?: unknown): void {
    if (type !== 'bind' && type !== 'unbind') throw new IoasidError('EINVAL', `notify takes bind or unbind, got ${fmtId(type)}`, { type });
    const n = checkId(id);
    const tag = this.#active.table.tag(n);
    if (tag === 0) throw new IoasidError('ENOENT', `${type} of unknown IOASID ${fmtId(n)}`, { id: n });
    const event: IoasidEvent = info === undefined ? { type, id: n, set: this.#setOfTag(tag) } : { type, id: n, set: this.#setOfTag(tag), info };
    this.#chain.emit(event);
  }

  // ---------------------------------------------------------------- snapshot and restore

  /** A plain, JSON-serialisable state. Private data (pointers in the kernel) is not included. */
  snapshot(): SpaceSnapshot {
    const slotOf = (tag: number): number => (tag >= 2 ? tag - 2 : -1);
    const table = (ad: AllocatorData): TableSnapshot['records'] =>
      [...ad.table.entries()].map(([id, tag]) => [id, slotOf(tag), ad.refs.get(id) ?? 1] as const);
    const tables: TableSnapshot[] = [{ allocator: 'default', records: table(this.#default) }];
    this.#list.forEach((ad, i) => tables.push({ allocator: i, records: table(ad) }));
    const sets: SetSnapshot[] = [];
    this.#sets.forEach((s, slot) => {
      if (s !== undefined) sets.push(s.token === undefined ? { slot, name: s.name, quota: s.quota } : { slot, name: s.name, quota: s.quota, token: s.token });
    });
    return {
      format: 'ioasid-space',
      version: 1,
      profile: this.profile,
      bits: this.bits,
      policy: this.#engine.policy,
      quarantine: this.#engine.quarantine,
      active: this.#active.custom ? this.#list.indexOf(this.#active) : 'default',
      cursor: this.#engine.cursor,
      sets,
      tables,
      quarantined: [...this.#engine.quarantinedIds()],
      ...(this.#danglingInvalid ? { danglingInvalid: true as const } : {}),
    };
  }

  /**
   * Replace this space's state with a snapshot. The input is untrusted: anything malformed or
   * inconsistent is EINVAL naming the field, and then nothing changes. Custom allocators cannot be
   * serialised: the space must have as many groups registered as the snapshot has tables. All
   * previous sets are retired; the restored sets are returned in snapshot order.
   */
  restore(state: unknown): IoasidSet[] {
    this.#assertNotInCallback('restore');
    if (this.#queued > 0) throw new IoasidError('EBUSY', 'restore while allocator calls are in flight');
    const snap = parseSnapshot(state, {
      profile: this.profile,
      bits: this.bits,
      policy: this.#engine.policy,
      quarantine: this.#engine.quarantine,
      groups: this.#list.length,
      min: this.#engine.min,
      max: this.#engine.max,
      quotas: this.#rules.quotas,
      danglingInvalid: this.#rules.invalidIsAnId && this.#engine.max === IOASID_MAX,
    });
    // Build everything new first; swap at the end so a failure changes nothing.
    const engine = new IdEngine({ min: this.#engine.min, max: this.#engine.max, policy: this.#engine.policy, quarantine: this.#engine.quarantine });
    const sets: (IoasidSet | undefined)[] = [];
    const tokens = new Map<string, IoasidSet>();
    const restored: IoasidSet[] = [];
    for (const s of snap.sets) {
      const set = new IoasidSet(this, s.slot, { name: s.name, quota: s.quota, token: s.token });
      sets[s.slot] = set;
      if (s.token !== undefined) tokens.set(s.token, set);
      restored.push(set);
    }
    const build = (t: TableSnapshot, ad: AllocatorData, isDefault: boolean): void => {
      for (const [id, slot, refs] of t.records) {
        if (isDefault && !engine.reserve(id)) throw new IoasidBugError('validated snapshot rejected by engine', { id });
        ad.table.insert(id, slot < 0 ? TAG_NO_SET : slot + 2);
        if (refs > 1) ad.refs.set(id, refs);
      }
    };
    const def = newAllocatorData(DEFAULT_OPS, false, engine.max);
    const customs = this.#list.map((old) => {
      const ad = newAllocatorData(old.ops, true);
      ad.members = [...old.members];
      return ad;
    });
    for (const t of snap.tables) {
      if (t.allocator === 'default') build(t, def, true);
      else build(t, customs[t.allocator] as AllocatorData, false);
    }
    for (const id of snap.quarantined) {
      engine.reserve(id);
      engine.free(id);
    }
    if (snap.cursor !== undefined) engine.cursor = snap.cursor;
    for (const s of this.#sets) if (s !== undefined) IoasidSet.retire(s);
    this.#engine = engine;
    this.#default = def;
    this.#list = customs;
    this.#active = snap.active === 'default' ? def : (customs[snap.active] as AllocatorData);
    this.#sets = sets;
    this.#tokens = tokens;
    this.#danglingInvalid = snap.danglingInvalid === true;
    return restored;
  }

  // ---------------------------------------------------------------- introspection

  /** Bytes of typed arrays behind the default allocator (engine index + per-ID records). */
  memoryBytes(): { engine: number; records: number } {
    return { engine: this.#engine.memoryBytes(), records: this.#default.table.memoryBytes() };
  }

  /** Check internal invariants; throws IoasidBugError on a broken one (tests call it). */
  checkInvariants(): void {
    let n = 0;
    for (const [id] of this.#default.table.entries()) {
      if (!this.#engine.isAllocated(id)) throw new IoasidBugError('record without engine bit', { id });
      n++;
    }
    if (n !== this.#engine.size) throw new IoasidBugError('engine and table sizes differ', { table: n, engine: this.#engine.size });
    for (const ad of [this.#default, ...this.#list]) {
      for (const id of ad.data.keys()) if (!ad.table.has(id)) throw new IoasidBugError('data of absent ID', { id });
      for (const id of ad.refs.keys()) if (!ad.table.has(id)) throw new IoasidBugError('refs of absent ID', { id });
    }
  }
}
