/**
 * The per-ID records of one allocator (the kernel's per-allocator XArray of `struct ioasid_data`),
 * in typed arrays rather than an object per ID: for each ID a tag (0 = absent, 1 = no set,
 * k + 2 = set slot k) and the links of an intrusive doubly-linked list per set, so that a set's
 * members are enumerated in time proportional to their number (spec edge 69), never by scanning.
 * Pages are allocated on first use, so a 32-bit space costs memory only where used.
 * 12 bytes per ID in a used page, the three words of a record side by side.
 */
import { IoasidBugError } from './errors.ts';

/** Pages of 1,024 IDs for dense tables; sparse ones (a guest's few PASIDs spread over 2^20) use 64. */
export const DENSE_PAGE_SHIFT = 10;
export const SPARSE_PAGE_SHIFT = 6;
/** A record is three words side by side (tag, next, prev), so one ID's record shares a cache line. */
const STRIDE = 3;
const NEXT = 1;
const PREV = 2;
/** Null link. 0xFFFFFFFF is INVALID_IOASID, never a member. */
export const NIL = 0xffffffff;
export const TAG_ABSENT = 0;
export const TAG_NO_SET = 1;

export class RecordTable {
  /** Page directory: a dense array for universes up to 2^26 IDs, else a Map (32-bit spaces). */
  #dense: (Uint32Array | undefined)[] | null;
  #pages = new Map<number, Uint32Array>();
  #lastKey = -1;
  #lastPage: Uint32Array | undefined;

  readonly #shift: number;
  readonly #pageSize: number;
  readonly #mask: number;

  /**
   * `maxId`: the largest ID this table may hold (sizes the page directory); `pageShift`: log2 of
   * the IDs per page (small pages for sparse tables cost less per scattered ID).
   */
  constructor(maxId = 0xfffffffe, pageShift = DENSE_PAGE_SHIFT) {
    this.#shift = pageShift;
    this.#pageSize = 1 << pageShift;
    this.#mask = this.#pageSize - 1;
    const pages = Math.floor(maxId / this.#pageSize) + 1;
    this.#dense = pages <= 1 << 16 ? new Array<Uint32Array | undefined>(pages).fill(undefined) : null;
  }
  /** Per tag (1 = no set, k + 2 = set slot k): list head and member count. */
  #heads = new Uint32Array(16).fill(NIL);
  #counts = new Uint32Array(16);
  #size = 0;

  get size(): number {
    return this.#size;
  }

  #page(id: number): Uint32Array | undefined {
    const key = id >>> this.#shift;
    if (this.#dense !== null) return this.#dense[key];
    if (key === this.#lastKey) return this.#lastPage;
    const p = this.#pages.get(key);
    if (p !== undefined) {
      this.#lastKey = key;
      this.#lastPage = p;
    }
    return p;
  }

  #pageOrCreate(id: number): Uint32Array {
    let p = this.#page(id);
    if (p === undefined) {
      p = new Uint32Array(STRIDE * this.#pageSize);
      const key = id >>> this.#shift;
      if (this.#dense !== null) {
        if (key >= this.#dense.length) throw new IoasidBugError('record beyond the table', { id });
        this.#dense[key] = p;
      }
      this.#pages.set(key, p);
      this.#lastKey = key;
      this.#lastPage = p;
    }
    return p;
  }

  /** 0 when absent, else the tag. */
  tag(id: number): number {
    const p = this.#page(id);
    return p === undefined ? TAG_ABSENT : (p[(id & this.#mask) * STRIDE] as number);
  }

  has(id: number): boolean {
    return this.tag(id) !== TAG_ABSENT;
  }

  countOf(tag: number): number {
    return tag < this.#counts.length ? (this.#counts[tag] as number) : 0;
  }

  #grow(tag: number): void {
    let n = this.#heads.length;
    while (n <= tag) n *= 2;
    const heads = new Uint32Array(n).fill(NIL);
    heads.set(this.#heads);
    const counts = new Uint32Array(n);
    counts.set(this.#counts);
    this.#heads = heads;
    this.#counts = counts;
  }

  #setNext(id: number, v: number): void {
    (this.#page(id) as Uint32Array)[(id & this.#mask) * STRIDE + NEXT] = v;
  }

  #setPrev(id: number, v: number): void {
    (this.#page(id) as Uint32Array)[(id & this.#mask) * STRIDE + PREV] = v;
  }

  insert(id: number, tag: number): void {
    const p = this.#pageOrCreate(id);
    const o = (id & this.#mask) * STRIDE;
    if (p[o] !== TAG_ABSENT) throw new IoasidBugError('record inserted twice', { id });
    if (tag >= this.#heads.length) this.#grow(tag);
    const head = this.#heads[tag] as number;
    p[o] = tag;
    p[NEXT + o] = head;
    p[PREV + o] = NIL;
    if (head !== NIL) this.#setPrev(head, id);
    // #setPrev may have switched the page cache; `p` stays valid (it is the array itself).
    this.#heads[tag] = id;
    this.#counts[tag] = (this.#counts[tag] as number) + 1;
    this.#size++;
  }

  /** Remove a record; returns its tag. */
  remove(id: number): number {
    const p = this.#page(id);
    const o = (id & this.#mask) * STRIDE;
    const tag = p === undefined ? TAG_ABSENT : (p[o] as number);
    if (p === undefined || tag === TAG_ABSENT) throw new IoasidBugError('removing an absent record', { id });
    const next = p[NEXT + o] as number;
    const prev = p[PREV + o] as number;
    p[o] = TAG_ABSENT;
    if (prev === NIL) this.#heads[tag] = next;
    else this.#setNext(prev, next);
    if (next !== NIL) this.#setPrev(next, prev);
    this.#counts[tag] = (this.#counts[tag] as number) - 1;
    this.#size--;
    return tag;
  }

  /** Members with this tag, most recently inserted first. */
  membersOf(tag: number): number[] {
    const out: number[] = [];
    let id = tag < this.#heads.length ? (this.#heads[tag] as number) : NIL;
    while (id !== NIL) {
      out.push(id);
      const p = this.#page(id) as Uint32Array;
      id = p[(id & this.#mask) * STRIDE + NEXT] as number;
    }
    return out;
  }

  /** Every record as [id, tag], ascending by id. */
  *entries(): IterableIterator<[number, number]> {
    const keys = [...this.#pages.keys()].sort((a, b) => a - b);
    for (const key of keys) {
      const p = this.#pages.get(key) as Uint32Array;
      for (let o = 0; o < this.#pageSize; o++) {
        const t = p[o * STRIDE] as number;
        if (t !== TAG_ABSENT) yield [key * this.#pageSize + o, t];
      }
    }
  }

  /** Bytes held in typed arrays (for the memory figure). */
  memoryBytes(): number {
    return this.#pages.size * STRIDE * this.#pageSize * 4;
  }
}
