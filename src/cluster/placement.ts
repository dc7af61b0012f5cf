/**
 * Where a host of a migration domain allocates: inside blocks of PASIDs it claimed, so that most
 * allocations touch no key another host writes (docs/cluster.md, "Blocks"). It is the host's
 * `AllocationPolicy`: the host asks it to reserve PASIDs in its space, commits, and asks again when
 * another host took one of them first (`isConflict`), at most `attempts` times.
 *
 * Rules:
 *  1. A reservation is the lowest free PASIDs in [min, max] among this host's blocks, taken in the
 *     host's space (the core's rules apply: the set's quota, EDQUOT), all or nothing.
 *  2. When its blocks are short, the host claims the lowest unclaimed blocks with room in
 *     [min, max] (create-if-absent, up to 8 at once, one ahead when allocating from the whole
 *     range), then tries again.
 *  3. When every block with room belongs to other hosts, it borrows: free PASIDs of their blocks,
 *     from a random point of the range; the PASID key's create-if-absent keeps that safe. ENOSPC
 *     means the domain, as this host sees it, has fewer free PASIDs in [min, max] than asked.
 *  4. A lost race (another host committed the PASID first) backs off, with jitter, before the
 *     next reservation of that VM: 5 ms doubling per lost race, at most 200 ms.
 *  5. Blocks that stay empty for `releaseDelayMs` go back to the domain, except `spareBlocks`.
 */
import { IoasidError, fmtId, isIoasidError, type IoasidSet, type IoasidSpace } from '../core/index.ts';
import type { AllocationPolicy } from '../host/index.ts';
import type { EtcdStore } from '../store/index.ts';

export type ClusterLogFn = (level: 'debug' | 'info' | 'warn' | 'error', message: string, details?: Record<string, unknown>) => void;

export interface PlacementOptions {
  readonly store: EtcdStore;
  /** The host's own PASID range (blocks are cut to it). */
  readonly pasidMin: number;
  readonly pasidMax: number;
  /** Empty blocks a host keeps (default 1). */
  readonly spareBlocks?: number;
  /** How long a block stays empty before it goes back (default 1000 ms). */
  readonly releaseDelayMs?: number;
  /** Reservations of one allocation (lost races), default 8. */
  readonly attempts?: number;
  readonly log?: ClusterLogFn;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class BlockPlacement implements AllocationPolicy {
  readonly attempts: number;
  readonly #store: EtcdStore;
  readonly #min: number;
  readonly #max: number;
  readonly #spare: number;
  readonly #releaseDelay: number;
  readonly #log: ClusterLogFn;
  #space: IoasidSpace | null = null;
  #unsubscribe: (() => void) | null = null;
  #shift = 6;
  #bs = 64;
  /** PASIDs allocated in the host's space, per block (whoever owns them). */
  #used = new Uint16Array(0);
  /** Blocks this host holds, ascending (block indexes). */
  #own: number[] = [];
  /** Every own block below this block index is full: where lowest-free searches start. */
  #nonFullFrom = 0;
  readonly #releasing = new Set<number>();
  /** Blocks seen taken by another host in a lost claim race (and when), until the watch says more. */
  readonly #takenAt = new Map<number, number>();
  /** Free PASIDs of other hosts' blocks this host may try (rule 3). */
  readonly #allowance = new Set<number>();
  /** Lost races per VM (rule 4): how many, and when the last was. */
  readonly #lost = new Map<string, { n: number; at: number }>();
  #growing: Promise<void> | null = null;
  #releaseTimer: NodeJS.Timeout | null = null;
  readonly #emptySince = new Map<number, number>();
  #closed = false;

  constructor(o: PlacementOptions) {
    this.#store = o.store;
    this.#min = o.pasidMin;
    this.#max = o.pasidMax;
    this.#spare = o.spareBlocks ?? 1;
    this.#releaseDelay = o.releaseDelayMs ?? 1000;
    this.attempts = o.attempts ?? 8;
    this.#log = o.log ?? (() => {});
  }

  /** Start: index the blocks and the space's use of them; keep the index current. */
  attach(space: IoasidSpace): void {
    this.#space = space;
    this.#bs = this.#store.blockSize;
    this.#shift = Math.log2(this.#bs);
    this.#used = new Uint16Array((0x100000 >> this.#shift) + 1);
    for (const [id] of space.entries()) this.#used[id >> this.#shift]!++;
    this.#own = [...this.#store.blocks().values()].filter((b) => b.host === this.#store.hostId).map((b) => b.block >> this.#shift).sort((a, b) => a - b);
    this.#unsubscribe = space.subscribe((e) => {
      const b = e.id >> this.#shift;
      if (e.type === 'alloc') this.#used[b]!++;
      else if (e.type === 'free') {
        this.#used[b]!--;
        if (b < this.#nonFullFrom) this.#nonFullFrom = b;
        if (this.#used[b] === 0 && this.#isOwn(b)) this.#scheduleRelease();
      }
    }, { priority: 'cpu', types: ['alloc', 'free'] });
    this.#scheduleRelease();
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#unsubscribe?.();
    this.#unsubscribe = null;
    if (this.#releaseTimer !== null) clearTimeout(this.#releaseTimer);
    this.#releaseTimer = null;
    await this.#growing?.catch(() => {});
  }

  /** Lost a claim race for block `b` within the last 2 s (the watch will show its holder). */
  #taken(b: number): boolean {
    const at = this.#takenAt.get(b);
    if (at === undefined) return false;
    if (Date.now() - at < 2000) return true;
    this.#takenAt.delete(b);
    return false;
  }

  /** Blocks this host holds (first PASID of each), ascending. */
  ownBlocks(): number[] {
    return this.#own.map((b) => b << this.#shift);
  }

  // ------------------------------------------------------------------ AllocationPolicy

  isConflict(e: unknown): boolean {
    const lost = (isIoasidError(e, 'EEXIST') || isIoasidError(e, 'EAGAIN')) && (e.details as { conflict?: unknown }).conflict === true;
    if (!lost) return false;
    const d = e.details as { pasid?: unknown; vm?: unknown };
    if (typeof d.pasid === 'number') this.#allowance.delete(d.pasid);
    if (typeof d.vm === 'string') {
      const prev = this.#lost.get(d.vm);
      this.#lost.set(d.vm, { n: (prev !== undefined && Date.now() - prev.at < 1000 ? prev.n : 0) + 1, at: Date.now() });
    }
    return true;
  }

  reserve(space: IoasidSpace, set: IoasidSet, min: number, max: number, count: number): number[] | Promise<number[]> {
    if (!Number.isInteger(count) || count < 1) throw new IoasidError('EINVAL', `count must be a positive integer, got ${fmtId(count)}`, { count });
    const lost = this.#lost.get(set.name);
    if (lost !== undefined && Date.now() - lost.at < 1000) {
      return sleep(Math.min(200, 5 * 2 ** lost.n) * Math.random()).then(() => this.#reserve(space, set, min, max, count));
    }
    this.#lost.delete(set.name);
    const got = this.#take(space, set, min, max, count);
    if (got !== null) return got;
    return this.#reserve(space, set, min, max, count);
  }

  async #reserve(space: IoasidSpace, set: IoasidSet, min: number, max: number, count: number): Promise<number[]> {
    for (let rounds = 0; ; rounds++) {
      const got = this.#take(space, set, min, max, count);
      if (got !== null) return got;
      if (rounds >= 2 * this.attempts) break;
      await this.#grow(min, max, count);
    }
    throw new IoasidError('EAGAIN', `could not find room for ${count} PASID(s) in [${fmtId(min)}, ${fmtId(max)}] in domain ${this.#store.domain}: other hosts claimed the blocks first; retry`, { vm: set.name, min, max, count });
  }

  /** Rule 1: `count` PASIDs from this host's blocks (then its allowance), or null if short. */
  #take(space: IoasidSpace, set: IoasidSet, min: number, max: number, count: number): number[] | null {
    const got: number[] = [];
    try {
      while (got.length < count) {
        const p = this.#allocLocal(space, set, min, max);
        if (p < 0) break;
        got.push(p);
      }
    } catch (e) {
      for (const p of got) space.freeSync(p, set);
      throw e;
    }
    if (got.length === count) {
      this.#prefetch(got[got.length - 1] as number);
      return got;
    }
    for (const p of got) space.freeSync(p, set);
    return null;
  }

  #isOwn(b: number): boolean {
    const own = this.#own;
    return own[lowerBound(own, b)] === b;
  }

  /** PASIDs of block `b` within the host's range. */
  #cap(b: number): number {
    const first = Math.max(b << this.#shift, this.#min);
    const last = Math.min((b << this.#shift) + this.#bs - 1, this.#max);
    return last >= first ? last - first + 1 : 0;
  }

  /** The lowest free PASID of this host's blocks (then of its allowance) in [lo, hi], or -1. */
  #allocLocal(space: IoasidSpace, set: IoasidSet, lo: number, hi: number): number {
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

  /** Free PASIDs of block `b` within [lo, hi], as the host's space sees them. */
  #freeIn(b: number, lo: number, hi: number): number {
    const a = Math.max(lo, b << this.#shift);
    const z = Math.min(hi, (b << this.#shift) + this.#bs - 1);
    if (a > z) return 0;
    if (a === Math.max(b << this.#shift, this.#min) && z === Math.min((b << this.#shift) + this.#bs - 1, this.#max)) {
      return this.#cap(b) - (this.#used[b] as number);
    }
    const space = this.#space as IoasidSpace;
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
    const blocks = this.#store.blocks();
    const candidates: number[] = [];
    let room = 0;
    for (let b = lo >> this.#shift; b <= hi >> this.#shift && room < short && candidates.length < 8; b++) {
      if (blocks.has(b << this.#shift) || this.#taken(b)) continue;
      const free = this.#freeIn(b, lo, hi);
      if (free === 0) continue;
      candidates.push(b);
      room += free;
    }
    // One block ahead when allocating from the whole range, so the next requests do not wait.
    if (room < short + this.#bs && candidates.length > 0 && candidates.length < 8 && lo <= this.#min && hi >= this.#max) {
      for (let b = (candidates[candidates.length - 1] as number) + 1; b <= hi >> this.#shift; b++) {
        if (blocks.has(b << this.#shift) || this.#taken(b) || this.#freeIn(b, lo, hi) === 0) continue;
        candidates.push(b);
        break;
      }
    }
    if (candidates.length === 0) {
      this.#borrow(lo, hi, short);
      return;
    }
    // Not enough in unclaimed blocks alone: borrow the rest too (ENOSPC if the domain is short).
    if (room < short) this.#borrow(lo, hi, short - room, true);
    const results = await Promise.allSettled(candidates.map((b) => this.#store.claimBlock(b << this.#shift)));
    let failure: unknown = null;
    results.forEach((r, i) => {
      const b = candidates[i] as number;
      if (r.status === 'fulfilled') {
        this.#takenAt.delete(b);
        this.#addOwn(b);
      } else if (isIoasidError(r.reason, 'EAGAIN') && (r.reason.details as { conflict?: unknown }).conflict === true) {
        this.#takenAt.set(b, Date.now());
      } else {
        failure ??= r.reason;
      }
    });
    if (failure !== null && !results.some((r) => r.status === 'fulfilled')) throw failure;
  }

  /**
   * Rule 3: no unclaimed block has room: take free PASIDs of other hosts' blocks, from a random
   * point of the range so that hosts short of room at once do not all race for the lowest one.
   * ENOSPC when the domain (as this host sees it) has fewer than `need` free PASIDs in [lo, hi].
   */
  #borrow(lo: number, hi: number, need: number, unclaimedToo = false): void {
    const space = this.#space as IoasidSpace;
    const blocks = this.#store.blocks();
    const free = (p: number) => !space.has(p) && !this.#isOwn(p >> this.#shift) && (unclaimedToo || blocks.has((p >> this.#shift) << this.#shift) || this.#taken(p >> this.#shift));
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
      this.#takenAt.clear();
      throw new IoasidError('ENOSPC', `no ${need > 1 ? `${need} free PASIDs` : 'free PASID'} in [${fmtId(lo)}, ${fmtId(hi)}] in domain ${this.#store.domain}`, { min: lo, max: hi, domain: this.#store.domain, count: need });
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
    void this.#grow(this.#min, this.#max, this.#bs).catch((e: unknown) => this.#log('warn', 'block prefetch failed', { error: String(e) }));
  }

  #scheduleRelease(): void {
    if (this.#releaseTimer !== null || this.#closed) return;
    this.#releaseTimer = setTimeout(() => {
      this.#releaseTimer = null;
      void this.#releaseEmpty().catch((e: unknown) => this.#log('warn', 'block release failed', { error: String(e) }));
    }, Math.max(50, this.#releaseDelay / 2));
    this.#releaseTimer.unref();
  }

  /** Rule 5: return blocks that stayed empty for `releaseDelayMs`, keeping `spareBlocks`. */
  async #releaseEmpty(): Promise<void> {
    if (this.#closed || this.#store.fenced !== null || !this.#store.isOpen) return;
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
        await this.#store.releaseBlock(b << this.#shift);
        this.#removeOwn(b);
        this.#emptySince.delete(b);
      } catch (e) {
        if (!isIoasidError(e, 'EBUSY') && !isIoasidError(e, 'EAGAIN')) this.#log('warn', `release of block ${fmtId(b << this.#shift)} failed`, { error: String(e) });
      } finally {
        this.#releasing.delete(b);
      }
    }));
  }
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
