/**
 * The per-ID records of one allocator (the kernel's per-allocator XArray of `struct ioasid_data`),
 * in typed arrays rather than an object per ID.
 *
 *  - Per ID, one 32-bit tag: 0 = absent, 1 = no set, k + 2 = set slot k. Tags live in pages that
 *    are allocated on first use, so a 32-bit space costs memory only where IDs are.
 *  - Per set (tag), a count and, per page, how many of the set's IDs the page holds. A set's
 *    members are enumerated by visiting only the pages that hold some of them, so freeing a VM's
 *    PASIDs (behaviour 69) never walks the range, only the set's own pages; an alloc or a free touches
 *    just the ID's tag and one counter of its set (a per-set linked list would relink two random
 *    neighbours, two cache misses, on every free).
 * Two layouts behind one interface: `DenseRecordTable` (the default allocator's table, pages of
 * 1,024 IDs in an array indexed by page) and `SparseRecordTable` (a custom allocator's IDs, which
 * come from elsewhere, scattered over 32 bits: pages of 64 IDs in a Map).
 * 4 bytes per ID in a used page, plus (dense) 2 bytes per page per set that has IDs; a sparse
 * table holds few IDs, and enumerates a set by visiting its pages whole.
 */
import { IoasidBugError } from './errors.ts';

export const TAG_ABSENT = 0;
export const TAG_NO_SET = 1;

export interface RecordTable {
  readonly size: number;
  /** 0 when absent, else the tag. */
  tag(id: number): number;
  has(id: number): boolean;
  countOf(tag: number): number;
  insert(id: number, tag: number): void;
  /** Remove a record; returns its tag. */
  remove(id: number): number;
  /** Members with this tag, ascending; visits only the pages that hold some. */
  membersOf(tag: number): number[];
  /** Every record as [id, tag], ascending by id. */
  entries(): IterableIterator<[number, number]>;
  /** Bytes held in typed arrays (for the memory figure). */
  memoryBytes(): number;
}

function grown(a: Uint32Array, tag: number): Uint32Array {
  let n = a.length;
  while (n <= tag) n *= 2;
  const b = new Uint32Array(n);
  b.set(a);
  return b;
}

// Dense: 1,024 IDs a page (literal shifts: this is the host's hot path).
const D_SHIFT = 10;
const D_SIZE = 1 << D_SHIFT;
const D_MASK = D_SIZE - 1;

export class DenseRecordTable implements RecordTable {
  readonly #pages: (Uint32Array | undefined)[];
  #counts: Uint32Array = new Uint32Array(16);
  /** Per tag: how many of its IDs each page holds. */
  readonly #perPage: (Uint16Array | undefined)[] = [];
  #used = 0;
  #size = 0;

  /** `maxId`: the largest ID the table may hold (at most 2^26: the directory is an array). */
  constructor(maxId: number) {
    const pages = Math.floor(maxId / D_SIZE) + 1;
    if (pages > 1 << 16) throw new IoasidBugError('dense record table too large', { maxId });
    this.#pages = new Array<Uint32Array | undefined>(pages).fill(undefined);
  }

  get size(): number {
    return this.#size;
  }

  tag(id: number): number {
    const p = this.#pages[id >>> D_SHIFT];
    return p === undefined ? TAG_ABSENT : (p[id & D_MASK] as number);
  }

  has(id: number): boolean {
    return this.tag(id) !== TAG_ABSENT;
  }

  countOf(tag: number): number {
    return tag < this.#counts.length ? (this.#counts[tag] as number) : 0;
  }

  insert(id: number, tag: number): void {
    const key = id >>> D_SHIFT;
    let p = this.#pages[key];
    if (p === undefined) {
      if (key >= this.#pages.length) throw new IoasidBugError('record beyond the table', { id });
      p = new Uint32Array(D_SIZE);
      this.#pages[key] = p;
      this.#used++;
    }
    const o = id & D_MASK;
    if (p[o] !== TAG_ABSENT) throw new IoasidBugError('record inserted twice', { id });
    if (tag >= this.#counts.length) this.#counts = grown(this.#counts, tag);
    p[o] = tag;
    this.#counts[tag] = (this.#counts[tag] as number) + 1;
    let pp = this.#perPage[tag];
    if (pp === undefined) {
      pp = new Uint16Array(this.#pages.length);
      this.#perPage[tag] = pp;
    }
    pp[key] = (pp[key] as number) + 1;
    this.#size++;
  }

  remove(id: number): number {
    const key = id >>> D_SHIFT;
    const p = this.#pages[key];
    const o = id & D_MASK;
    const tag = p === undefined ? TAG_ABSENT : (p[o] as number);
    if (p === undefined || tag === TAG_ABSENT) throw new IoasidBugError('removing an absent record', { id });
    p[o] = TAG_ABSENT;
    this.#counts[tag] = (this.#counts[tag] as number) - 1;
    const pp = this.#perPage[tag] as Uint16Array;
    pp[key] = (pp[key] as number) - 1;
    this.#size--;
    return tag;
  }

  membersOf(tag: number): number[] {
    const out: number[] = [];
    const pp = this.#perPage[tag];
    if (pp === undefined || this.countOf(tag) === 0) return out;
    for (let key = 0; key < pp.length; key++) {
      if (pp[key] === 0) continue;
      const p = this.#pages[key] as Uint32Array;
      const base = key * D_SIZE;
      for (let o = 0; o < D_SIZE; o++) if (p[o] === tag) out.push(base + o);
    }
    return out;
  }

  *entries(): IterableIterator<[number, number]> {
    for (let key = 0; key < this.#pages.length; key++) {
      const p = this.#pages[key];
      if (p === undefined) continue;
      for (let o = 0; o < D_SIZE; o++) {
        const t = p[o] as number;
        if (t !== TAG_ABSENT) yield [key * D_SIZE + o, t];
      }
    }
  }

  memoryBytes(): number {
    let perPage = 0;
    for (const pp of this.#perPage) if (pp !== undefined) perPage += pp.byteLength;
    return this.#used * D_SIZE * 4 + perPage + this.#counts.byteLength;
  }
}

// Sparse: 64 IDs a page, pages in a Map (any 32-bit ID).
const S_SHIFT = 6;
const S_SIZE = 1 << S_SHIFT;
const S_MASK = S_SIZE - 1;

export class SparseRecordTable implements RecordTable {
  readonly #pages = new Map<number, Uint32Array>();
  #lastKey = -1;
  #lastPage: Uint32Array | undefined;
  #counts: Uint32Array = new Uint32Array(16);
  #size = 0;

  get size(): number {
    return this.#size;
  }

  #page(key: number): Uint32Array | undefined {
    if (key === this.#lastKey) return this.#lastPage;
    const p = this.#pages.get(key);
    if (p !== undefined) {
      this.#lastKey = key;
      this.#lastPage = p;
    }
    return p;
  }

  tag(id: number): number {
    const p = this.#page(id >>> S_SHIFT);
    return p === undefined ? TAG_ABSENT : (p[id & S_MASK] as number);
  }

  has(id: number): boolean {
    return this.tag(id) !== TAG_ABSENT;
  }

  countOf(tag: number): number {
    return tag < this.#counts.length ? (this.#counts[tag] as number) : 0;
  }

  insert(id: number, tag: number): void {
    const key = id >>> S_SHIFT;
    let p = this.#page(key);
    if (p === undefined) {
      p = new Uint32Array(S_SIZE);
      this.#pages.set(key, p);
      this.#lastKey = key;
      this.#lastPage = p;
    }
    const o = id & S_MASK;
    if (p[o] !== TAG_ABSENT) throw new IoasidBugError('record inserted twice', { id });
    if (tag >= this.#counts.length) this.#counts = grown(this.#counts, tag);
    p[o] = tag;
    this.#counts[tag] = (this.#counts[tag] as number) + 1;
    this.#size++;
  }

  remove(id: number): number {
    const key = id >>> S_SHIFT;
    const p = this.#page(key);
    const o = id & S_MASK;
    const tag = p === undefined ? TAG_ABSENT : (p[o] as number);
    if (p === undefined || tag === TAG_ABSENT) throw new IoasidBugError('removing an absent record', { id });
    p[o] = TAG_ABSENT;
    this.#counts[tag] = (this.#counts[tag] as number) - 1;
    this.#size--;
    return tag;
  }

  /** A sparse table holds few IDs per page: its pages are visited whole (work ~ the table's IDs). */
  membersOf(tag: number): number[] {
    const out: number[] = [];
    if (this.countOf(tag) === 0) return out;
    for (const [id, t] of this.entries()) if (t === tag) out.push(id);
    return out;
  }

  *entries(): IterableIterator<[number, number]> {
    for (const key of [...this.#pages.keys()].sort((a, b) => a - b)) {
      const p = this.#pages.get(key) as Uint32Array;
      for (let o = 0; o < S_SIZE; o++) {
        const t = p[o] as number;
        if (t !== TAG_ABSENT) yield [key * S_SIZE + o, t];
      }
    }
  }

  memoryBytes(): number {
    return this.#pages.size * S_SIZE * 4 + this.#counts.byteLength;
  }
}
