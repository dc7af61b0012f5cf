/**
 * The ID engine: the default allocator of the IOASID core (docs/core.md).
 *
 * Rules of the engine:
 *  1. The universe is the inclusive range [min, max], 0 <= min <= max <= 0xFFFFFFFE. 0xFFFFFFFF
 *     (INVALID_IOASID) is never an ID. Every ID of the universe is in exactly one state: free,
 *     allocated or quarantined.
 *  2. `alloc(lo, hi)` looks only at [lo, hi] ∩ [min, max]. Policy 'lowest' hands out the lowest
 *     free ID there; policy 'cyclic' hands out the first free ID after the cursor (the last ID a
 *     cyclic alloc handed out) within [lo, hi], wrapping once to lo. When nothing is free it
 *     returns -1 and changes nothing. It never throws: callers pass integers with lo <= hi.
 *  3. `reserve(id)` allocates exactly `id` when it is free, and never moves the cursor.
 *  4. `free(id)` applies to an allocated ID only; anything else returns false and changes nothing.
 *     Without quarantine the ID becomes free; with quarantine it becomes quarantined.
 *  5. A quarantined ID is handed out by neither alloc nor reserve until `release(id)` or
 *     `releaseAll()` frees it: DMA tagged with a freed PASID may still be in flight.
 *  6. The cursor is min - 1 at creation and after `clear()`; setting it is validated (EINVAL).
 *  7. Structure: a 32-way tree of Uint32Array words. Leaves hold one bit per ID, 1 meaning
 *     unavailable (allocated or quarantined). Upper bits are "full" bits: 1 iff the child word they
 *     stand for has no 0 bit. A second set of upper bits, "non-empty" (1 iff the child word has a
 *     1 bit), lets iteration skip empty regions. A search goes up from its start position and down
 *     again, finding bits with Math.clz32(x & -x): O(tree height), never a scan of words.
 *  8. The universe is cut into chunks of 2^15 IDs: 1,024 leaf words plus their two summary
 *     levels of each kind (1,090 words, 4,360 bytes). A chunk is created on first use and lives
 *     in one word arena (no per-chunk objects on the hot path) that grows by an eighth, never past
 *     the universe; a chunk not yet created is all free. A slot table maps chunk numbers to arena
 *     offsets (flat up to 2^27 IDs, lazily paged beyond). Above the chunks sit small eager
 *     directory levels of chunk "full" and "non-empty" bits; directory bits that stand for nothing
 *     are "full", so searches never descend into them. A dense 2^20 universe costs 136.4 KiB; a
 *     32-bit universe about 35 KiB of directories plus 4.3 KiB per chunk in use. Chunks are only
 *     dropped by `clear()`.
 *  9. Quarantine is a separate lazily paged bitmap with its own non-empty summaries. A quarantined
 *     ID keeps its bit set in the main tree, so allocation never looks at the quarantine.
 * 10. The engine is pure: no clock, no I/O, and no allocation on the alloc/free hot path except
 *     when a chunk is first used. Iterators read live state position by position (like
 *     xa_for_each): changes made during an iteration are safe.
 */
import { IoasidError, fmtId } from './errors.ts';
import { IOASID_MAX, checkRange } from './ids.ts';

export type AllocPolicy = 'lowest' | 'cyclic';
export const ALLOC_POLICIES = ['lowest', 'cyclic'] as const;

export interface IdEngineOptions {
  /** Lowest ID of the universe (default 0). */
  min?: number;
  /** Highest ID of the universe (at most 0xFFFFFFFE). */
  max: number;
  /** 'lowest' (default) or 'cyclic'. */
  policy?: AllocPolicy;
  /** Freed IDs wait in quarantine until released (default false). */
  quarantine?: boolean;
}

// ---- layout -------------------------------------------------------------------------------------
/**
 * Layout constants. A const enum, so that the TypeScript transform (esbuild, under tsx) writes them
 * as literals: plain module-level consts would be context loads with checks on the hot path.
 */
const enum L {
  /** 2^15 = 32,768 IDs per chunk. */
  CHUNK_SHIFT = 15,
  CHUNK_IDS = 32768,
  CHUNK_MASK = 32767,
  /** A chunk in the arena: [0,1024) leaves | [1024,1056) full-L1 | 1056 full-root | [1057,1089) ne-L1 | 1089 ne-root. */
  FULL1 = 1024,
  FULL_ROOT = 1056,
  NE1 = 1057,
  NE_ROOT = 1089,
  CHUNK_WORDS = 1090,
  /** A quarantine page: [0,1024) bits | [1024,1056) ne-L1 | 1056 ne-root. */
  Q_NE1 = 1024,
  Q_NE_ROOT = 1056,
  QPAGE_WORDS = 1057,
  /** Slot table pages: 256 chunk numbers each (a 32-bit universe has 131,072 chunks). */
  SLOT_SHIFT = 8,
  SLOT_PAGE = 256,
  SLOT_MASK = 255,
  /** Universes of up to 4,096 chunks (2^27 IDs) keep a flat slot table (at most 16 KiB). */
  FLAT_SLOTS = 4096,
}

type PageDir = Array<Array<Uint32Array | undefined> | undefined>;

/** Index of the lowest set bit of a non-zero word. */
function ctz(x: number): number {
  return 31 - Math.clz32(x & -x);
}

/**
 * Local position of the first 1 leaf bit at local position >= q of a bitmap at base b of `a`
 * whose non-empty summaries sit at b + ne1 (32 words) and b + neRoot, or -1.
 */
function nextSetIn(a: Uint32Array, b: number, q: number, ne1: number, neRoot: number): number {
  let w = q >>> 5;
  let bits = a[b + w]! & (-1 << (q & 31));
  if (bits !== 0) return (w << 5) | ctz(bits);
  let w1 = w >>> 5;
  bits = a[b + ne1 + w1]! & (-2 << (w & 31));
  if (bits === 0) {
    bits = a[b + neRoot]! & (-2 << w1);
    if (bits === 0) return -1;
    w1 = ctz(bits);
    bits = a[b + ne1 + w1]!;
  }
  w = (w1 << 5) | ctz(bits);
  return (w << 5) | ctz(a[b + w]!);
}

function newPageDir(nChunks: number): PageDir {
  const n = ((nChunks - 1) >>> L.SLOT_SHIFT) + 1;
  const dir: PageDir = [];
  for (let i = 0; i < n; i++) dir.push(undefined);
  return dir;
}

export class IdEngine {
  readonly min: number;
  readonly max: number;
  readonly policy: AllocPolicy;
  readonly quarantine: boolean;

  /** max - min: the highest offset. IDs are handled as offsets from min inside. */
  private readonly last: number;
  private readonly cyclic: boolean;
  private readonly nChunks: number;
  /** Directory levels over chunk bits: level 0 has one bit per chunk; the top level is one word. */
  private readonly dirLevels: number;
  private readonly dirOff: Int32Array;
  private readonly dirWords: Int32Array;
  /** Chunk "full" bits; bits standing for no chunk (or no word) are 1. */
  private readonly dirFull: Uint32Array;
  /** Chunk "non-empty" bits. */
  private readonly dirNe: Uint32Array;
  /** All chunks, L.CHUNK_WORDS each, in creation order. */
  private arena: Uint32Array;
  private arenaChunks: number;
  private usedChunks: number;
  /**
   * Up to FLAT_SLOTS chunks (2^27 IDs), `slots[c]` is chunk c's base in `arena`, or -1 (one load
   * on the hot path). Beyond, slots are paged: slotTop[c >>> L.SLOT_SHIFT] is the start of chunk
   * c's page in `slots` (or -1), and slots[page + (c & L.SLOT_MASK)] its base (or -1).
   */
  private readonly flatSlots: boolean;
  private readonly slotTop: Int32Array;
  private slots: Int32Array;
  private slotsUsed: number;
  /** Base in `arena` of the chunk holding the offset findFree last returned (-1: not created). */
  private foundBase: number;
  private qpages: PageDir;
  /** Chunk numbers that have a quarantine page, in creation order. */
  private qChunkList: number[];
  private qBytes: number;
  private _size: number;
  private qCount: number;
  private _cursor: number;

  constructor(opts: IdEngineOptions) {
    if (opts === null || typeof opts !== 'object') {
      throw new IoasidError('EINVAL', `IdEngine options must be an object, got ${fmtId(opts)}`, { opts });
    }
    const { min, max } = checkRange(opts.min === undefined ? 0 : opts.min, opts.max);
    const policy: unknown = opts.policy === undefined ? 'lowest' : opts.policy;
    if (policy !== 'lowest' && policy !== 'cyclic') {
      throw new IoasidError(
        'EINVAL',
        `unknown allocation policy ${fmtId(policy)}; expected one of ${ALLOC_POLICIES.join(', ')}`,
        { policy },
      );
    }
    const quarantine: unknown = opts.quarantine === undefined ? false : opts.quarantine;
    if (typeof quarantine !== 'boolean') {
      throw new IoasidError('EINVAL', `quarantine must be a boolean, got ${fmtId(quarantine)}`, { quarantine });
    }
    this.min = min;
    this.max = max;
    this.policy = policy;
    this.quarantine = quarantine;
    this.cyclic = policy === 'cyclic';
    this.last = max - min;
    this.nChunks = (this.last >>> L.CHUNK_SHIFT) + 1;

    const words: number[] = [];
    const offs: number[] = [];
    let n = this.nChunks;
    let total = 0;
    for (;;) {
      const w = ((n - 1) >>> 5) + 1;
      offs.push(total);
      words.push(w);
      total += w;
      if (w === 1) break;
      n = w;
    }
    this.dirLevels = words.length;
    this.dirOff = Int32Array.from(offs);
    this.dirWords = Int32Array.from(words);
    this.dirFull = new Uint32Array(total);
    this.dirNe = new Uint32Array(total);
    this.flatSlots = this.nChunks <= L.FLAT_SLOTS;
    this.slotTop = new Int32Array(this.flatSlots ? 0 : ((this.nChunks - 1) >>> L.SLOT_SHIFT) + 1);
    this.arena = new Uint32Array(0);
    this.arenaChunks = 0;
    this.usedChunks = 0;
    this.slots = new Int32Array(0);
    this.slotsUsed = 0;
    this.foundBase = -1;
    this.qpages = newPageDir(this.nChunks);
    this.qChunkList = [];
    this.qBytes = 0;
    this._size = 0;
    this.qCount = 0;
    this._cursor = min - 1;
    this.resetTree();
  }

  /** An engine over [0, min(2^bits - 1, 0xFFFFFFFE)]; bits is an integer in [1, 32]. */
  static forBits(bits: number, opts?: Omit<IdEngineOptions, 'max' | 'min'>): IdEngine {
    if (typeof bits !== 'number' || !Number.isInteger(bits) || bits < 1 || bits > 32) {
      throw new IoasidError('EINVAL', `bits must be an integer in [1, 32], got ${fmtId(bits)}`, { bits });
    }
    const max = bits === 32 ? IOASID_MAX : 2 ** bits - 1;
    return new IdEngine({ ...opts, min: 0, max });
  }

  /** Number of allocated IDs (quarantined ones not counted). */
  get size(): number {
    return this._size;
  }

  get quarantinedCount(): number {
    return this.qCount;
  }

  /** Last ID handed out by a cyclic alloc; min - 1 initially. */
  get cursor(): number {
    return this._cursor;
  }

  set cursor(v: number) {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < this.min - 1 || v > this.max) {
      throw new IoasidError(
        'EINVAL',
        `cursor must be an integer in [min - 1, max] = [${this.min - 1}, ${fmtId(this.max)}], got ${fmtId(v)}`,
        { cursor: v, min: this.min, max: this.max },
      );
    }
    this._cursor = v;
  }

  // ---- hot path ---------------------------------------------------------------------------------

  /**
   * Lowest free ID in [lo, hi] ∩ [min, max] (policy 'lowest'), or for 'cyclic' the first free ID
   * after the cursor within [lo, hi], wrapping to lo. Returns -1 when there is none (never throws;
   * lo and hi are trusted integers with lo <= hi). Marks the ID allocated; cyclic moves the cursor.
   */
  alloc(lo?: number, hi?: number): number {
    const min = this.min;
    const p = lo === undefined || lo <= min ? 0 : lo - min;
    const h = hi === undefined || hi >= this.max ? this.last : hi - min;
    if (h < p) return -1;
    let s = p;
    if (this.cyclic) {
      s = this._cursor + 1 - min;
      if (s < p || s > h) s = p;
    }
    // The first free offset in [s, h]: findFree written out in place, this being the hot path.
    const a = this.arena;
    let c = s >>> L.CHUNK_SHIFT;
    let b = -1;
    let off = -1;
    let bits: number;
    let w: number;
    let w1: number;
    const q = s & L.CHUNK_MASK;
    if (q !== 0) {
      b = this.chunkBase(c);
      if (b < 0) off = s;
      else {
        w = q >>> 5;
        bits = ~a[b + w]! & (-1 << (q & 31));
        if (bits !== 0) off = s - (q & 31) + 31 - Math.clz32(bits & -bits);
        else {
          w1 = w >>> 5;
          bits = ~a[b + L.FULL1 + w1]! & (-2 << (w & 31));
          if (bits === 0) {
            bits = ~a[b + L.FULL_ROOT]! & (-2 << w1);
            if (bits !== 0) {
              w1 = 31 - Math.clz32(bits & -bits);
              bits = ~a[b + L.FULL1 + w1]!;
            }
          }
          if (bits !== 0) {
            w = (w1 << 5) | (31 - Math.clz32(bits & -bits));
            bits = ~a[b + w]!;
            off = c * L.CHUNK_IDS + ((w << 5) | (31 - Math.clz32(bits & -bits)));
          } else c++;
        }
      }
    }
    if (off < 0 && c <= h >>> L.CHUNK_SHIFT) {
      bits = ~this.dirFull[c >>> 5]! & (-1 << (c & 31));
      if (bits !== 0) c = (c & ~31) | (31 - Math.clz32(bits & -bits));
      else c = this.dirLevels === 1 ? -1 : this.dirNextNonFull(((c >>> 5) + 1) << 5);
      if (c >= 0) {
        b = this.chunkBase(c);
        off = c * L.CHUNK_IDS;
        if (b >= 0) {
          bits = ~a[b + L.FULL_ROOT]!;
          w1 = 31 - Math.clz32(bits & -bits);
          bits = ~a[b + L.FULL1 + w1]!;
          w = (w1 << 5) | (31 - Math.clz32(bits & -bits));
          bits = ~a[b + w]!;
          off += (w << 5) | (31 - Math.clz32(bits & -bits));
        }
      }
    }
    if (off > h) off = -1;
    if (off < 0) {
      if (s === p) return -1;
      off = this.findFree(p, s - 1); // cyclic: wrap to lo
      if (off < 0) return -1;
      b = this.foundBase;
    }
    this.setBit(b < 0 ? this.makeChunk(off >>> L.CHUNK_SHIFT) : b, off);
    this._size++;
    if (this.cyclic) this._cursor = off + min;
    return off + min;
  }

  /** Allocate exactly `id`; false if it is outside the universe, allocated or quarantined. */
  reserve(id: number): boolean {
    if (id >>> 0 !== id || id < this.min || id > this.max) return false;
    const off = id - this.min;
    const c = off >>> L.CHUNK_SHIFT;
    let b = this.chunkBase(c);
    if (b < 0) b = this.makeChunk(c);
    else if ((this.arena[b + ((off & L.CHUNK_MASK) >>> 5)]! & (1 << (off & 31))) !== 0) return false;
    this.setBit(b, off);
    this._size++;
    return true;
  }

  /** Free an allocated ID (into quarantine when quarantine is on); false if `id` is not allocated. */
  free(id: number): boolean {
    if (id >>> 0 !== id || id < this.min || id > this.max) return false;
    const off = id - this.min;
    const c = off >>> L.CHUNK_SHIFT;
    const b = this.chunkBase(c);
    if (b < 0) return false;
    const a = this.arena;
    const w = (off & L.CHUNK_MASK) >>> 5;
    const m = 1 << (off & 31);
    const old = a[b + w]!;
    if ((old & m) === 0) return false;
    if (this.qCount !== 0 && this.qBit(off)) return false;
    this._size--;
    if (this.quarantine) {
      this.setQBit(off);
      this.qCount++;
      return true;
    }
    const nw = old & ~m;
    a[b + w] = nw;
    if (old === 0xffffffff) {
      // The leaf word was full: clear its full-L1 bit, and the full-root bit if that word was full.
      const i1 = b + L.FULL1 + (w >>> 5);
      const o1 = a[i1]!;
      a[i1] = o1 & ~(1 << (w & 31));
      if (o1 === 0xffffffff) {
        const r = a[b + L.FULL_ROOT]!;
        a[b + L.FULL_ROOT] = r & ~(1 << (w >>> 5));
        if (r === 0xffffffff) {
          // The chunk was full: clear its directory bit (level 0 inline, upper levels if need be).
          const d = this.dirFull;
          const o = d[c >>> 5]!;
          d[c >>> 5] = o & ~(1 << (c & 31));
          if (o === 0xffffffff) this.dirClearFull(1, c >>> 5);
        }
      }
    }
    if (nw === 0) this.unNe(a, b, c, w);
    return true;
  }

  /** Quarantined -> free; false if `id` is not quarantined. */
  release(id: number): boolean {
    if (id >>> 0 !== id || id < this.min || id > this.max || this.qCount === 0) return false;
    const off = id - this.min;
    if (!this.qBit(off)) return false;
    this.clearQBit(off);
    this.clearBit(off);
    this.qCount--;
    return true;
  }

  /** Release every quarantined ID; returns how many. */
  releaseAll(): number {
    const n = this.qCount;
    if (n === 0) return 0;
    const list = this.qChunkList;
    for (let i = 0; i < list.length; i++) {
      const c = list[i]!;
      const qp = this.qPage(c);
      if (qp === undefined) continue;
      const base = c * L.CHUNK_IDS;
      let r = nextSetIn(qp, 0, 0, L.Q_NE1, L.Q_NE_ROOT);
      while (r >= 0) {
        this.clearBit(base + r);
        if (r === L.CHUNK_MASK) break;
        r = nextSetIn(qp, 0, r + 1, L.Q_NE1, L.Q_NE_ROOT);
      }
    }
    this.qpages = newPageDir(this.nChunks);
    this.qChunkList = [];
    this.qBytes = 0;
    this.qCount = 0;
    return n;
  }

  isAllocated(id: number): boolean {
    if (id >>> 0 !== id || id < this.min || id > this.max) return false;
    const off = id - this.min;
    return this.mainBit(off) && !(this.qCount !== 0 && this.qBit(off));
  }

  isQuarantined(id: number): boolean {
    if (id >>> 0 !== id || id < this.min || id > this.max || this.qCount === 0) return false;
    return this.qBit(id - this.min);
  }

  /** In the universe, and neither allocated nor quarantined. */
  isFree(id: number): boolean {
    if (id >>> 0 !== id || id < this.min || id > this.max) return false;
    return !this.mainBit(id - this.min);
  }

  /** Allocated IDs, ascending. Skips empty regions through the non-empty summaries. */
  *ids(): IterableIterator<number> {
    let p = 0;
    const last = this.last;
    while (p <= last) {
      const off = this.nextUsed(p);
      if (off < 0) return;
      p = off + 1;
      if (this.qCount !== 0 && this.qBit(off)) continue;
      yield off + this.min;
    }
  }

  /** Quarantined IDs, ascending. */
  *quarantinedIds(): IterableIterator<number> {
    let p = 0;
    const last = this.last;
    while (p <= last) {
      const off = this.nextQuarantined(p);
      if (off < 0) return;
      p = off + 1;
      yield off + this.min;
    }
  }

  /** Everything free, cursor back to min - 1, all chunks and quarantine pages dropped. */
  clear(): void {
    this.qpages = newPageDir(this.nChunks);
    this.qChunkList = [];
    this.qBytes = 0;
    this._size = 0;
    this.qCount = 0;
    this._cursor = this.min - 1;
    this.resetTree();
  }

  /** Bytes held in typed arrays: directories, slot table, chunk arena, quarantine pages. */
  memoryBytes(): number {
    return (
      this.dirFull.byteLength +
      this.dirNe.byteLength +
      this.dirOff.byteLength +
      this.dirWords.byteLength +
      this.slotTop.byteLength +
      this.slots.byteLength +
      this.arena.byteLength +
      this.qBytes
    );
  }

  // ---- internals --------------------------------------------------------------------------------

  private resetTree(): void {
    this.arena = new Uint32Array(0);
    this.arenaChunks = 0;
    this.usedChunks = 0;
    this.slots = this.flatSlots ? new Int32Array(this.nChunks).fill(-1) : new Int32Array(0);
    this.slotsUsed = 0;
    this.slotTop.fill(-1);
    this.foundBase = -1;
    const df = this.dirFull;
    df.fill(0);
    this.dirNe.fill(0);
    // Bits standing for children that do not exist are "full", so searches never descend there.
    let n = this.nChunks;
    for (let l = 0; l < this.dirLevels; l++) {
      const w = this.dirWords[l]!;
      const used = n - (w - 1) * 32; // bits in use in the last word, 1..32
      if (used < 32) df[this.dirOff[l]! + w - 1] = (-1 << used) >>> 0;
      n = w;
    }
  }

  /** Arena base of chunk c, or -1 when it has not been created. */
  private chunkBase(c: number): number {
    if (this.flatSlots) return this.slots[c]!;
    const t = this.slotTop[c >>> L.SLOT_SHIFT]!;
    return t < 0 ? -1 : this.slots[t + (c & L.SLOT_MASK)]!;
  }

  /** Create chunk c (all free) and return its arena base. */
  private makeChunk(c: number): number {
    if (this.usedChunks === this.arenaChunks) {
      // Grow by an eighth (at least one chunk), never past the universe: a dense universe holds
      // exactly its chunks, and copies stay amortised O(1) per chunk.
      const cap = Math.min(this.nChunks, this.arenaChunks + Math.max(1, this.arenaChunks >>> 3));
      const next = new Uint32Array(cap * L.CHUNK_WORDS);
      next.set(this.arena);
      this.arena = next;
      this.arenaChunks = cap;
    }
    const base = this.usedChunks * L.CHUNK_WORDS;
    this.usedChunks++;
    if (this.flatSlots) {
      this.slots[c] = base;
      return base;
    }
    const pi = c >>> L.SLOT_SHIFT;
    let t = this.slotTop[pi]!;
    if (t < 0) {
      const next = new Int32Array(this.slotsUsed + L.SLOT_PAGE);
      next.set(this.slots);
      next.fill(-1, this.slotsUsed);
      t = this.slotsUsed;
      this.slots = next;
      this.slotsUsed += L.SLOT_PAGE;
      this.slotTop[pi] = t;
    }
    this.slots[t + (c & L.SLOT_MASK)] = base;
    return base;
  }

  private qPage(c: number): Uint32Array | undefined {
    const page = this.qpages[c >>> L.SLOT_SHIFT];
    return page === undefined ? undefined : page[c & L.SLOT_MASK];
  }

  private mainBit(off: number): boolean {
    const b = this.chunkBase(off >>> L.CHUNK_SHIFT);
    return b >= 0 && (this.arena[b + ((off & L.CHUNK_MASK) >>> 5)]! & (1 << (off & 31))) !== 0;
  }

  private qBit(off: number): boolean {
    const qp = this.qPage(off >>> L.CHUNK_SHIFT);
    return qp !== undefined && (qp[(off & L.CHUNK_MASK) >>> 5]! & (1 << (off & 31))) !== 0;
  }

  /**
   * First free offset in [p, h] (0 <= p <= h <= last), or -1. Leaves the base of its chunk in
   * `foundBase` (-1 when that chunk has not been created yet). The hot path: bit searches are
   * written out in place (x & -x isolates the lowest set bit, 31 - clz32 gives its index).
   */
  private findFree(p: number, h: number): number {
    const a = this.arena;
    let c = p >>> L.CHUNK_SHIFT;
    let b: number;
    let bits: number;
    let w: number;
    let w1: number;
    const q = p & L.CHUNK_MASK;
    if (q !== 0) {
      // Up from p inside its chunk: leaf word, then full-L1 word, then full-root.
      b = this.chunkBase(c);
      this.foundBase = b;
      if (b < 0) return p;
      w = q >>> 5;
      bits = ~a[b + w]! & (-1 << (q & 31));
      if (bits !== 0) {
        const off = p - (q & 31) + 31 - Math.clz32(bits & -bits);
        return off <= h ? off : -1;
      }
      w1 = w >>> 5;
      bits = ~a[b + L.FULL1 + w1]! & (-2 << (w & 31));
      if (bits === 0) {
        bits = ~a[b + L.FULL_ROOT]! & (-2 << w1);
        if (bits !== 0) {
          w1 = 31 - Math.clz32(bits & -bits);
          bits = ~a[b + L.FULL1 + w1]!;
        }
      }
      if (bits !== 0) {
        w = (w1 << 5) | (31 - Math.clz32(bits & -bits));
        bits = ~a[b + w]!;
        const off = c * L.CHUNK_IDS + ((w << 5) | (31 - Math.clz32(bits & -bits)));
        return off <= h ? off : -1;
      }
      c++; // chunk c is full from p on: on to the directory
    }
    // The first chunk >= c that is not full: directory level 0 first, upper levels if need be.
    const hc = h >>> L.CHUNK_SHIFT;
    if (c > hc) return -1;
    bits = ~this.dirFull[c >>> 5]! & (-1 << (c & 31));
    if (bits !== 0) c = (c & ~31) | (31 - Math.clz32(bits & -bits));
    else c = this.dirLevels === 1 ? -1 : this.dirNextNonFull(((c >>> 5) + 1) << 5);
    if (c < 0 || c > hc) return -1;
    // Down inside chunk c from its full-root.
    b = this.chunkBase(c);
    this.foundBase = b;
    let off = c * L.CHUNK_IDS;
    if (b >= 0) {
      bits = ~a[b + L.FULL_ROOT]!;
      w1 = 31 - Math.clz32(bits & -bits);
      bits = ~a[b + L.FULL1 + w1]!;
      w = (w1 << 5) | (31 - Math.clz32(bits & -bits));
      bits = ~a[b + w]!;
      off += (w << 5) | (31 - Math.clz32(bits & -bits));
    }
    return off <= h ? off : -1;
  }

  /** First chunk number >= x that is not full, or -1. */
  private dirNextNonFull(x: number): number {
    const d = this.dirFull;
    const offs = this.dirOff;
    const words = this.dirWords;
    const levels = this.dirLevels;
    let idx = x;
    for (let l = 0; l < levels; l++) {
      const w = idx >>> 5;
      if (w >= words[l]!) return -1;
      const bits = ~d[offs[l]! + w]! & (-1 << (idx & 31));
      if (bits !== 0) {
        idx = (w << 5) | ctz(bits);
        while (l > 0) {
          l--;
          idx = (idx << 5) | ctz(~d[offs[l]! + idx]!);
        }
        return idx;
      }
      idx = w + 1;
    }
    return -1;
  }

  /** First chunk number >= x that is not empty, or -1. */
  private dirNextNe(x: number): number {
    const d = this.dirNe;
    const offs = this.dirOff;
    const words = this.dirWords;
    const levels = this.dirLevels;
    let idx = x;
    for (let l = 0; l < levels; l++) {
      const w = idx >>> 5;
      if (w >= words[l]!) return -1;
      const bits = d[offs[l]! + w]! & (-1 << (idx & 31));
      if (bits !== 0) {
        idx = (w << 5) | ctz(bits);
        while (l > 0) {
          l--;
          idx = (idx << 5) | ctz(d[offs[l]! + idx]!);
        }
        return idx;
      }
      idx = w + 1;
    }
    return -1;
  }

  /** First unavailable (allocated or quarantined) offset >= p, or -1. */
  private nextUsed(p: number): number {
    let c = p >>> L.CHUNK_SHIFT;
    if (c >= this.nChunks) return -1;
    let b = this.chunkBase(c);
    if (b >= 0) {
      const r = nextSetIn(this.arena, b, p & L.CHUNK_MASK, L.NE1, L.NE_ROOT);
      if (r >= 0) return c * L.CHUNK_IDS + r;
    }
    c = this.dirNextNe(c + 1);
    if (c < 0) return -1;
    b = this.chunkBase(c);
    if (b < 0) return -1; // unreachable: a non-empty chunk exists
    return c * L.CHUNK_IDS + nextSetIn(this.arena, b, 0, L.NE1, L.NE_ROOT);
  }

  /** First quarantined offset >= p, or -1. Quarantined IDs are set in the main tree too. */
  private nextQuarantined(p: number): number {
    let c = p >>> L.CHUNK_SHIFT;
    let q = p & L.CHUNK_MASK;
    while (c < this.nChunks) {
      const qp = this.qPage(c);
      if (qp !== undefined) {
        const r = nextSetIn(qp, 0, q, L.Q_NE1, L.Q_NE_ROOT);
        if (r >= 0) return c * L.CHUNK_IDS + r;
      }
      c = this.dirNextNe(c + 1);
      if (c < 0) return -1;
      q = 0;
    }
    return -1;
  }

  /** Mark offset `off` unavailable in the chunk at base b (the bit must be 0). */
  private setBit(b: number, off: number): void {
    const a = this.arena;
    const w = (off & L.CHUNK_MASK) >>> 5;
    const old = a[b + w]!;
    const nw = old | (1 << (off & 31));
    a[b + w] = nw;
    if (old === 0) {
      const w1 = w >>> 5;
      const o1 = a[b + L.NE1 + w1]!;
      a[b + L.NE1 + w1] = o1 | (1 << (w & 31));
      if (o1 === 0) {
        const r = a[b + L.NE_ROOT]!;
        a[b + L.NE_ROOT] = r | (1 << w1);
        if (r === 0) this.dirSetNe(0, off >>> L.CHUNK_SHIFT);
      }
    }
    if (nw === -1) {
      const w1 = w >>> 5;
      const f1 = a[b + L.FULL1 + w1]! | (1 << (w & 31));
      a[b + L.FULL1 + w1] = f1;
      if (f1 === -1) {
        const r = a[b + L.FULL_ROOT]! | (1 << w1);
        a[b + L.FULL_ROOT] = r;
        if (r === -1) {
          // The chunk became full: set its directory bit (level 0 inline, upper levels if need be).
          const c = off >>> L.CHUNK_SHIFT;
          const d = this.dirFull;
          const v = d[c >>> 5]! | (1 << (c & 31));
          d[c >>> 5] = v;
          if (v === -1) this.dirSetFull(1, c >>> 5);
        }
      }
    }
  }

  /** Mark offset `off` free (used by release; the bit must be 1). */
  private clearBit(off: number): void {
    const c = off >>> L.CHUNK_SHIFT;
    const b = this.chunkBase(c);
    if (b < 0) return;
    const a = this.arena;
    const w = (off & L.CHUNK_MASK) >>> 5;
    const old = a[b + w]!;
    const nw = old & ~(1 << (off & 31));
    a[b + w] = nw;
    if (old === 0xffffffff) this.unfull(a, b, c, w);
    if (nw === 0) this.unNe(a, b, c, w);
  }

  /** Leaf word w of chunk c (base b) was full and is no longer. */
  private unfull(a: Uint32Array, b: number, c: number, w: number): void {
    const w1 = w >>> 5;
    const o1 = a[b + L.FULL1 + w1]!;
    a[b + L.FULL1 + w1] = o1 & ~(1 << (w & 31));
    if (o1 === 0xffffffff) {
      const r = a[b + L.FULL_ROOT]!;
      a[b + L.FULL_ROOT] = r & ~(1 << w1);
      if (r === 0xffffffff) this.dirClearFull(0, c);
    }
  }

  /** Leaf word w of chunk c (base b) became empty. */
  private unNe(a: Uint32Array, b: number, c: number, w: number): void {
    const w1 = w >>> 5;
    const o1 = a[b + L.NE1 + w1]! & ~(1 << (w & 31));
    a[b + L.NE1 + w1] = o1;
    if (o1 === 0) {
      const r = a[b + L.NE_ROOT]! & ~(1 << w1);
      a[b + L.NE_ROOT] = r;
      if (r === 0) this.dirClearNe(0, c);
    }
  }

  // Directory updates from level `l` up, for bit `idx` of that level (a chunk number at level 0).

  /** A child became full: set its bit, and the parent's bit whenever a word becomes all ones. */
  private dirSetFull(l: number, idx: number): void {
    const d = this.dirFull;
    for (; l < this.dirLevels; l++) {
      const i = this.dirOff[l]! + (idx >>> 5);
      const nw = d[i]! | (1 << (idx & 31));
      d[i] = nw;
      if (nw !== -1) return;
      idx >>>= 5;
    }
  }

  /** A child is no longer full: clear its bit, and the parent's bit whenever a word was all ones. */
  private dirClearFull(l: number, idx: number): void {
    const d = this.dirFull;
    for (; l < this.dirLevels; l++) {
      const i = this.dirOff[l]! + (idx >>> 5);
      const old = d[i]!;
      d[i] = old & ~(1 << (idx & 31));
      if (old !== 0xffffffff) return;
      idx >>>= 5;
    }
  }

  /** A child became non-empty: set its bit, and the parent's bit whenever a word was zero. */
  private dirSetNe(l: number, idx: number): void {
    const d = this.dirNe;
    for (; l < this.dirLevels; l++) {
      const i = this.dirOff[l]! + (idx >>> 5);
      const old = d[i]!;
      d[i] = old | (1 << (idx & 31));
      if (old !== 0) return;
      idx >>>= 5;
    }
  }

  /** A child became empty: clear its bit, and the parent's bit whenever a word becomes zero. */
  private dirClearNe(l: number, idx: number): void {
    const d = this.dirNe;
    for (; l < this.dirLevels; l++) {
      const i = this.dirOff[l]! + (idx >>> 5);
      const nw = d[i]! & ~(1 << (idx & 31));
      d[i] = nw;
      if (nw !== 0) return;
      idx >>>= 5;
    }
  }

  private setQBit(off: number): void {
    const c = off >>> L.CHUNK_SHIFT;
    let qp = this.qPage(c);
    if (qp === undefined) {
      const pi = c >>> L.SLOT_SHIFT;
      let page = this.qpages[pi];
      if (page === undefined) {
        page = [];
        for (let i = 0; i < L.SLOT_PAGE; i++) page.push(undefined);
        this.qpages[pi] = page;
      }
      qp = new Uint32Array(L.QPAGE_WORDS);
      page[c & L.SLOT_MASK] = qp;
      this.qBytes += qp.byteLength;
      this.qChunkList.push(c);
    }
    const w = (off & L.CHUNK_MASK) >>> 5;
    const old = qp[w]!;
    qp[w] = old | (1 << (off & 31));
    if (old === 0) {
      const w1 = w >>> 5;
      const o1 = qp[L.Q_NE1 + w1]!;
      qp[L.Q_NE1 + w1] = o1 | (1 << (w & 31));
      if (o1 === 0) qp[L.Q_NE_ROOT] = qp[L.Q_NE_ROOT]! | (1 << w1);
    }
  }

  private clearQBit(off: number): void {
    const qp = this.qPage(off >>> L.CHUNK_SHIFT);
    if (qp === undefined) return;
    const w = (off & L.CHUNK_MASK) >>> 5;
    const nw = qp[w]! & ~(1 << (off & 31));
    qp[w] = nw;
    if (nw === 0) {
      const w1 = w >>> 5;
      const o1 = qp[L.Q_NE1 + w1]! & ~(1 << (w & 31));
      qp[L.Q_NE1 + w1] = o1;
      if (o1 === 0) qp[L.Q_NE_ROOT] = qp[L.Q_NE_ROOT]! & ~(1 << w1);
    }
  }
}
