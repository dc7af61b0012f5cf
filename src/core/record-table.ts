/**
 * The per-ID records of one allocator (the kernel's per-allocator XArray of `struct ioasid_data`),
 * in typed arrays rather than an object per ID: for each ID a tag (0 = absent, 1 = no set,
 * k + 2 = set slot k) and the links of an intrusive doubly-linked list per set, so that a set's
 * members are enumerated in time proportional to their number (spec edge 69), never by scanning.
 * Pages of 1,024 IDs are allocated on first use, so a 32-bit space costs memory only where used.
 * 12 bytes per ID in a used page.
 */
import { IoasidBugError } from './errors.ts';

const PAGE_SHIFT = 10;
const PAGE_SIZE = 1 << PAGE_SHIFT;
const PAGE_MASK = PAGE_SIZE - 1;
/** Offsets of the three arrays inside one page's Uint32Array. */
const NEXT = PAGE_SIZE;
const PREV = 2 * PAGE_SIZE;
/** Null link. 0xFFFFFFFF is INVALID_IOASID, never a member. */
export const NIL = 0xffffffff;
export const TAG_ABSENT = 0;
export const TAG_NO_SET = 1;

export class RecordTable {
  #pages = new Map<number, Uint32Array>();
  #lastKey = -1;
  #lastPage: Uint32Array | undefined;
  /** Per tag (1 = no set, k + 2 = set slot k): list head and member count. */
  #heads: number[] = [];
  #counts: number[] = [];
  #size = 0;

  get size(): number {
    return this.#size;
  }

  #page(id: number): Uint32Array | undefined {
    const key = id >>> PAGE_SHIFT;
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
      p = new Uint32Array(3 * PAGE_SIZE);
      const key = id >>> PAGE_SHIFT;
      this.#pages.set(key, p);
      this.#lastKey = key;
      this.#lastPage = p;
    }
    return p;
  }

  /** 0 when absent, else the tag. */
  tag(id: number): number {
    const p = this.#page(id);
    return p === undefined ? TAG_ABSENT : (p[id & PAGE_MASK] as number);
  }

  has(id: number): boolean {
    return this.tag(id) !== TAG_ABSENT;
  }

  countOf(tag: number): number {
    return this.#counts[tag] ?? 0;
  }

  #setNext(id: number, v: number): void {
    (this.#page(id) as Uint32Array)[NEXT + (id & PAGE_MASK)] = v;
  }

  #setPrev(id: number, v: number): void {
    (this.#page(id) as Uint32Array)[PREV + (id & PAGE_MASK)] = v;
  }

  insert(id: number, tag: number): void {
    const p = this.#pageOrCreate(id);
    const o = id & PAGE_MASK;
    if (p[o] !== TAG_ABSENT) throw new IoasidBugError('record inserted twice', { id });
    const head = this.#heads[tag] ?? NIL;
    p[o] = tag;
    p[NEXT + o] = head;
    p[PREV + o] = NIL;
    if (head !== NIL) this.#setPrev(head, id);
    // #setPrev may have switched the page cache; `p` stays valid (it is the array itself).
    this.#heads[tag] = id;
    this.#counts[tag] = (this.#counts[tag] ?? 0) + 1;
    this.#size++;
  }

  /** Remove a record; returns its tag. */
  remove(id: number): number {
    const p = this.#page(id);
    const o = id & PAGE_MASK;
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
    let id = this.#heads[tag] ?? NIL;
    while (id !== NIL) {
      out.push(id);
      const p = this.#page(id) as Uint32Array;
      id = p[NEXT + (id & PAGE_MASK)] as number;
    }
    return out;
  }

  /** Every record as [id, tag], ascending by id. */
  *entries(): IterableIterator<[number, number]> {
    const keys = [...this.#pages.keys()].sort((a, b) => a - b);
    for (const key of keys) {
      const p = this.#pages.get(key) as Uint32Array;
      for (let o = 0; o < PAGE_SIZE; o++) {
        const t = p[o] as number;
        if (t !== TAG_ABSENT) yield [key * PAGE_SIZE + o, t];
      }
    }
  }

  /** Bytes held in typed arrays (for the memory figure). */
  memoryBytes(): number {
    return this.#pages.size * 3 * PAGE_SIZE * 4;
  }
}
