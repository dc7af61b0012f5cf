/**
 * The ID engine (src/core/id-engine.ts): unit tests named after behaviour, and model-based
 * property tests that run random operation sequences against the engine and against an obviously
 * correct model (a Set, or an array of states, searched linearly), comparing every result.
 *
 *   node --import tsx --test test/id-engine.test.ts
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ALLOC_POLICIES, IdEngine, type AllocPolicy, type IdEngineOptions } from '../src/core/id-engine.ts';
import { IoasidError } from '../src/core/errors.ts';

const CHUNK = 1 << 15; // the engine's chunk size, for tests that cross chunk boundaries
const U32_TOP = 0xfffffffe;

function expectEinval(fn: () => unknown, mentions: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof IoasidError, `expected IoasidError, got ${String(e)}`);
    assert.equal(e.code, 'EINVAL');
    assert.equal(e.errno, -22);
    assert.ok(e.message.includes(mentions), `message ${JSON.stringify(e.message)} should mention ${mentions}`);
    return true;
  });
}

function allocAll(e: IdEngine, lo?: number, hi?: number): number[] {
  const out: number[] = [];
  for (;;) {
    const id = e.alloc(lo, hi);
    if (id < 0) return out;
    out.push(id);
  }
}

describe('IdEngine construction', () => {
  it('rejects bad bounds with EINVAL naming the value', () => {
    expectEinval(() => new IdEngine({ max: -1 }), '-1');
    expectEinval(() => new IdEngine({ max: 0xffffffff }), '4294967295');
    expectEinval(() => new IdEngine({ max: 1.5 }), '1.5');
    expectEinval(() => new IdEngine({ min: -3, max: 10 }), '-3');
    expectEinval(() => new IdEngine({ min: 11, max: 10 }), '11');
    expectEinval(() => new IdEngine({ max: Number.NaN }), 'null'); // JSON names NaN null
    expectEinval(() => new IdEngine({ max: '7' as unknown as number }), '"7"');
    expectEinval(() => new IdEngine(undefined as unknown as IdEngineOptions), 'options');
  });

  it('rejects an unknown policy or a non-boolean quarantine', () => {
    expectEinval(() => new IdEngine({ max: 10, policy: 'random' as AllocPolicy }), '"random"');
    expectEinval(() => new IdEngine({ max: 10, quarantine: 1 as unknown as boolean }), 'quarantine');
  });

  it('applies the defaults min 0, lowest, no quarantine', () => {
    const e = new IdEngine({ max: 9 });
    assert.equal(e.min, 0);
    assert.equal(e.max, 9);
    assert.equal(e.policy, 'lowest');
    assert.equal(e.quarantine, false);
    assert.equal(e.size, 0);
    assert.equal(e.cursor, -1);
    assert.deepEqual(ALLOC_POLICIES, ['lowest', 'cyclic']);
  });

  it('forBits builds [0, 2^bits - 1], capped at 0xFFFFFFFE, and validates bits', () => {
    assert.equal(IdEngine.forBits(1).max, 1);
    assert.equal(IdEngine.forBits(20).max, 0xfffff);
    assert.equal(IdEngine.forBits(31).max, 0x7fffffff);
    assert.equal(IdEngine.forBits(32).max, U32_TOP);
    const c = IdEngine.forBits(8, { policy: 'cyclic', quarantine: true });
    assert.equal(c.min, 0);
    assert.equal(c.policy, 'cyclic');
    assert.equal(c.quarantine, true);
    expectEinval(() => IdEngine.forBits(0), '0');
    expectEinval(() => IdEngine.forBits(33), '33');
    expectEinval(() => IdEngine.forBits(2.5), '2.5');
  });

  it('validates the cursor setter', () => {
    const e = new IdEngine({ min: 5, max: 9, policy: 'cyclic' });
    e.cursor = 4;
    e.cursor = 9;
    expectEinval(() => {
      e.cursor = 3;
    }, '3');
    expectEinval(() => {
      e.cursor = 10;
    }, '10');
    expectEinval(() => {
      e.cursor = 6.5;
    }, '6.5');
  });
});

describe('IdEngine lowest-free allocation', () => {
  it('hands out the lowest free ID, starting at min', () => {
    const e = new IdEngine({ min: 3, max: 100 });
    assert.deepEqual([e.alloc(), e.alloc(), e.alloc()], [3, 4, 5]);
    assert.equal(e.size, 3);
  });

  it('honours [lo, hi] and ignores the parts outside the universe', () => {
    const e = new IdEngine({ min: 10, max: 20 });
    assert.equal(e.alloc(15, 18), 15);
    assert.equal(e.alloc(0, 12), 10); // below min ignored
    assert.equal(e.alloc(19, 1000), 19); // above max ignored
    assert.equal(e.alloc(0, 9), -1); // empty intersection
    assert.equal(e.alloc(21, 30), -1);
    assert.equal(e.alloc(15, 15), -1); // taken
    assert.equal(e.alloc(15, 16), 16);
  });

  it('serves a universe of one ID (min == max)', () => {
    const e = new IdEngine({ min: 42, max: 42 });
    assert.equal(e.alloc(), 42);
    assert.equal(e.alloc(), -1);
    assert.equal(e.free(42), true);
    assert.equal(e.alloc(42, 42), 42);
  });

  it('returns -1 on a full range and leaves the state unchanged', () => {
    const e = new IdEngine({ min: 1, max: 100 });
    const got = allocAll(e);
    assert.equal(got.length, 100);
    const before = [...e.ids()];
    assert.equal(e.alloc(), -1);
    assert.equal(e.alloc(50, 60), -1);
    assert.equal(e.size, 100);
    assert.deepEqual([...e.ids()], before);
  });

  it('reuses a freed ID before any higher one', () => {
    const e = new IdEngine({ max: 1000 });
    allocAll(e, 0, 99);
    assert.equal(e.free(37), true);
    assert.equal(e.free(12), true);
    assert.equal(e.alloc(), 12);
    assert.equal(e.alloc(), 37);
    assert.equal(e.alloc(), 100);
  });

  it('reserves exactly the requested ID, once', () => {
    const e = new IdEngine({ min: 1, max: 50 });
    assert.equal(e.reserve(1), true);
    assert.equal(e.reserve(1), false);
    assert.equal(e.reserve(0), false); // outside
    assert.equal(e.reserve(51), false);
    assert.equal(e.reserve(2.5), false);
    assert.equal(e.alloc(), 2);
    assert.equal(e.isAllocated(1), true);
    assert.equal(e.size, 2);
  });

  it('refuses to free what is not allocated', () => {
    const e = new IdEngine({ min: 1, max: 50 });
    assert.equal(e.free(3), false); // never allocated
    assert.equal(e.alloc(), 1);
    assert.equal(e.free(1), true);
    assert.equal(e.free(1), false); // double free
    assert.equal(e.free(0), false);
    assert.equal(e.free(1.5), false);
    assert.equal(e.free(-1), false);
    assert.equal(e.free(Number.NaN), false);
    assert.equal(e.size, 0);
  });

  it('crosses chunk boundaries in order', () => {
    const e = new IdEngine({ min: 7, max: 7 + 2 * CHUNK + 9 });
    const ids = allocAll(e);
    assert.equal(ids.length, 2 * CHUNK + 10);
    for (let i = 0; i < ids.length; i++) if (ids[i] !== 7 + i) assert.fail(`alloc ${i} gave ${ids[i]}`);
    assert.equal(e.free(7 + CHUNK + 3), true);
    assert.equal(e.free(7 + 2 * CHUNK + 1), true);
    assert.equal(e.alloc(), 7 + CHUNK + 3);
    assert.equal(e.alloc(7 + CHUNK + 4), 7 + 2 * CHUNK + 1);
    assert.equal(e.alloc(), -1);
  });
});

describe('IdEngine directory levels', () => {
  it('passes over, and back into, full groups of 32 chunks (two directory levels)', () => {
    const e = IdEngine.forBits(22); // 128 chunks: directory levels of 4 words and 1 word
    const group = 32 * CHUNK; // 2^20 IDs: one level-1 bit
    const n = 3 * group + 5;
    for (let i = 0; i < n; i++) if (e.alloc() !== i) assert.fail(`alloc ${i}`);
    assert.equal(e.alloc(), n); // over groups 0, 1 and 2, full
    assert.equal(e.free(2 * group + 77), true); // group 2 is no longer full
    assert.equal(e.alloc(), 2 * group + 77);
    assert.equal(e.free(12345), true);
    assert.equal(e.alloc(), 12345);
    assert.equal(e.free(group - 1), true);
    assert.equal(e.alloc(7), group - 1);
    assert.equal(e.alloc(), n + 1);
    assert.equal(e.reserve(4 * group - 1), true);
    assert.deepEqual([...e.ids()].slice(-3), [n, n + 1, 4 * group - 1]);
  });
});

describe('IdEngine cyclic allocation', () => {
  it('hands out the ID after the last one issued, not a just-freed lower one', () => {
    const e = new IdEngine({ min: 1, max: 10, policy: 'cyclic' });
    assert.deepEqual([e.alloc(), e.alloc(), e.alloc()], [1, 2, 3]);
    assert.equal(e.free(2), true);
    assert.equal(e.alloc(), 4);
    assert.equal(e.cursor, 4);
  });

  it('wraps to lo when nothing is free after the cursor', () => {
    const e = new IdEngine({ min: 1, max: 5, policy: 'cyclic' });
    assert.deepEqual(allocAll(e), [1, 2, 3, 4, 5]);
    e.free(2);
    e.free(4);
    assert.equal(e.alloc(), 2);
    assert.equal(e.alloc(), 4);
    assert.equal(e.alloc(), -1);
    assert.equal(e.cursor, 4); // a failed alloc moves nothing
  });

  it('searches within [lo, hi], wrapping to lo, and reserve does not move the cursor', () => {
    const e = new IdEngine({ min: 0, max: 100, policy: 'cyclic' });
    assert.equal(e.alloc(10, 20), 10);
    assert.equal(e.reserve(11), true);
    assert.equal(e.cursor, 10);
    assert.equal(e.alloc(10, 20), 12);
    e.cursor = 20;
    assert.equal(e.alloc(10, 20), 13); // after 20 is outside: wrap to lo
    e.cursor = 50;
    assert.equal(e.alloc(10, 20), 14);
    assert.equal(e.alloc(), 15); // after 14 in the whole universe
  });

  it('starts after a cursor that was set', () => {
    const e = new IdEngine({ min: 0, max: 3 * CHUNK, policy: 'cyclic' });
    e.cursor = 2 * CHUNK - 2;
    assert.equal(e.alloc(), 2 * CHUNK - 1);
    assert.equal(e.alloc(), 2 * CHUNK);
    e.cursor = 3 * CHUNK;
    assert.equal(e.alloc(), 0);
  });
});

describe('IdEngine quarantine', () => {
  it('keeps a freed ID out of circulation until it is released', () => {
    const e = new IdEngine({ min: 1, max: 3, quarantine: true });
    assert.deepEqual(allocAll(e), [1, 2, 3]);
    assert.equal(e.free(2), true);
    assert.equal(e.size, 2);
    assert.equal(e.quarantinedCount, 1);
    assert.equal(e.isQuarantined(2), true);
    assert.equal(e.isAllocated(2), false);
    assert.equal(e.isFree(2), false);
    assert.equal(e.alloc(), -1);
    assert.equal(e.reserve(2), false);
    assert.equal(e.free(2), false); // not allocated any more
    assert.deepEqual([...e.ids()], [1, 3]);
    assert.deepEqual([...e.quarantinedIds()], [2]);
    assert.equal(e.release(3), false); // allocated, not quarantined
    assert.equal(e.release(2), true);
    assert.equal(e.release(2), false);
    assert.equal(e.isFree(2), true);
    assert.equal(e.alloc(), 2);
  });

  it('releaseAll frees every quarantined ID and counts them', () => {
    const e = new IdEngine({ max: 3 * CHUNK, quarantine: true, policy: 'cyclic' });
    const ids = [5, CHUNK - 1, CHUNK + 1, 2 * CHUNK + 7, 3 * CHUNK - 1, 3 * CHUNK];
    for (const id of ids) assert.equal(e.reserve(id), true);
    for (const id of ids) assert.equal(e.free(id), true);
    assert.deepEqual([...e.quarantinedIds()], ids);
    assert.equal(e.releaseAll(), ids.length);
    assert.equal(e.releaseAll(), 0);
    assert.equal(e.quarantinedCount, 0);
    for (const id of ids) assert.equal(e.isFree(id), true);
    assert.deepEqual([...e.ids()], []);
  });
});

describe('IdEngine in a 32-bit universe', () => {
  it('handles sparse IDs near 0xFFFFFFFE with little memory', () => {
    const e = IdEngine.forBits(32, { quarantine: true });
    assert.equal(e.reserve(U32_TOP), true);
    assert.equal(e.alloc(U32_TOP - 5), U32_TOP - 5);
    assert.equal(e.alloc(U32_TOP - 5), U32_TOP - 4);
    assert.equal(e.alloc(), 0);
    assert.equal(e.reserve(0x80000000), true);
    assert.equal(e.alloc(0x7fffffff, 0x80000001), 0x7fffffff);
    assert.equal(e.alloc(0x7fffffff, 0x80000001), 0x80000001);
    assert.equal(e.alloc(U32_TOP - 1, U32_TOP), U32_TOP - 1);
    assert.equal(e.alloc(U32_TOP - 1, U32_TOP), -1);
    assert.equal(e.reserve(0xffffffff), false);
    assert.deepEqual(
      [...e.ids()],
      [0, 0x7fffffff, 0x80000000, 0x80000001, U32_TOP - 5, U32_TOP - 4, U32_TOP - 1, U32_TOP],
    );
    assert.equal(e.free(U32_TOP), true);
    assert.deepEqual([...e.quarantinedIds()], [U32_TOP]);
    // 33 KiB of directories, 4.3 KiB per chunk touched (4 here), slot pages, one quarantine page.
    assert.ok(e.memoryBytes() < 80 * 1024, `memoryBytes ${e.memoryBytes()}`);
    assert.equal(e.size, 7);
  });

  it('finds the lowest free ID past a long allocated run without scanning', () => {
    const e = IdEngine.forBits(32);
    for (let i = 0; i < 3 * CHUNK + 5; i++) e.alloc();
    assert.equal(e.alloc(), 3 * CHUNK + 5);
    assert.equal(e.alloc(U32_TOP - 2 * CHUNK), U32_TOP - 2 * CHUNK);
  });
});

describe('IdEngine iteration, clear and memory', () => {
  it('ids() lists allocated IDs ascending, across chunks, skipping quarantined ones', () => {
    const e = new IdEngine({ max: 1 << 22, quarantine: true });
    const want = [3 * CHUNK + 1, 0, 77, 1 << 22, CHUNK - 1, CHUNK, 100 * CHUNK + 31];
    for (const id of want) assert.equal(e.reserve(id), true);
    e.free(77);
    assert.deepEqual([...e.ids()], [0, CHUNK - 1, CHUNK, 3 * CHUNK + 1, 100 * CHUNK + 31, 1 << 22]);
    assert.deepEqual([...e.quarantinedIds()], [77]);
  });

  it('ids() tolerates frees during iteration', () => {
    const e = new IdEngine({ max: 100 });
    allocAll(e, 0, 9);
    const seen: number[] = [];
    for (const id of e.ids()) {
      seen.push(id);
      e.free(id + 1);
    }
    assert.deepEqual(seen, [0, 2, 4, 6, 8]);
  });

  it('clear() frees everything and resets the cursor', () => {
    const e = new IdEngine({ min: 1, max: 5 * CHUNK, policy: 'cyclic', quarantine: true });
    allocAll(e, 1, 2 * CHUNK);
    e.free(5);
    const empty = new IdEngine({ min: 1, max: 5 * CHUNK }).memoryBytes();
    e.clear();
    assert.equal(e.size, 0);
    assert.equal(e.quarantinedCount, 0);
    assert.equal(e.cursor, 0);
    assert.deepEqual([...e.ids()], []);
    assert.equal(e.memoryBytes(), empty);
    assert.equal(e.alloc(), 1);
  });

  it('holds a dense 2^20 universe in at most 160 KiB', () => {
    const e = IdEngine.forBits(20);
    const small = e.memoryBytes();
    assert.ok(small < 1024, `empty engine holds ${small} bytes`);
    allocAll(e);
    assert.equal(e.size, 1 << 20);
    assert.ok(e.memoryBytes() <= 160 * 1024, `memoryBytes ${e.memoryBytes()}`);
  });
});

// ---- model-based property tests ------------------------------------------------------------------

/** The obviously correct reference: two Sets and linear searches. */
class SetModel {
  readonly allocated = new Set<number>();
  readonly quarantined = new Set<number>();
  cursor: number;
  constructor(
    readonly min: number,
    readonly max: number,
    readonly policy: AllocPolicy,
    readonly quarantine: boolean,
  ) {
    this.cursor = min - 1;
  }
  isFree(x: number): boolean {
    return Number.isInteger(x) && x >= this.min && x <= this.max && !this.allocated.has(x) && !this.quarantined.has(x);
  }
  firstFree(from: number, to: number): number {
    for (let x = from; x <= to; x++) if (this.isFree(x)) return x;
    return -1;
  }
  alloc(lo: number, hi: number): number {
    const a = Math.max(lo, this.min);
    const b = Math.min(hi, this.max);
    if (a > b) return -1;
    let r: number;
    if (this.policy === 'lowest') r = this.firstFree(a, b);
    else {
      let s = this.cursor + 1;
      if (s < a || s > b) s = a;
      r = this.firstFree(s, b);
      if (r < 0 && s > a) r = this.firstFree(a, s - 1);
    }
    if (r >= 0) {
      this.allocated.add(r);
      if (this.policy === 'cyclic') this.cursor = r;
    }
    return r;
  }
  reserve(x: number): boolean {
    if (!this.isFree(x)) return false;
    this.allocated.add(x);
    return true;
  }
  free(x: number): boolean {
    if (!this.allocated.has(x)) return false;
    this.allocated.delete(x);
    if (this.quarantine) this.quarantined.add(x);
    return true;
  }
  release(x: number): boolean {
    return this.quarantined.delete(x);
  }
  releaseAll(): number {
    const n = this.quarantined.size;
    this.quarantined.clear();
    return n;
  }
  clear(): void {
    this.allocated.clear();
    this.quarantined.clear();
    this.cursor = this.min - 1;
  }
}

interface Win {
  lo: number;
  hi: number;
}

/** Abstract operations: u and v pick positions inside windows when the configuration is known. */
type Op =
  | { k: 'alloc'; u: number; v: number; win: boolean; spill: boolean }
  | { k: 'reserve'; u: number; v: number; outside: boolean }
  | { k: 'free'; u: number; v: number; live: boolean }
  | { k: 'release'; u: number; v: number; live: boolean }
  | { k: 'releaseAll' }
  | { k: 'fill'; u: number; v: number; len: number }
  | { k: 'freeRun'; u: number; v: number; len: number }
  | { k: 'cursor'; u: number; v: number }
  | { k: 'probe'; u: number; v: number }
  | { k: 'clear' };

const n = fc.nat();
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 10, arbitrary: fc.record({ k: fc.constant('alloc' as const), u: n, v: n, win: fc.boolean(), spill: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('reserve' as const), u: n, v: n, outside: fc.boolean() }) },
  { weight: 6, arbitrary: fc.record({ k: fc.constant('free' as const), u: n, v: n, live: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('release' as const), u: n, v: n, live: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('releaseAll' as const) }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('fill' as const), u: n, v: n, len: fc.integer({ min: 1, max: 400 }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('freeRun' as const), u: n, v: n, len: fc.integer({ min: 1, max: 400 }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('cursor' as const), u: n, v: n }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('probe' as const), u: n, v: n }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('clear' as const) }) },
);

interface Cfg {
  bits: number;
  maxCut: number; // 0: max = 2^bits - 1; else max lowered by maxCut % size
  minSel: number; // 0: min 0; 1: min 1; else a random min
  policy: AllocPolicy;
  quarantine: boolean;
  wins: Array<{ kind: 'start' | 'end' | 'chunk' | 'any'; pos: number; len: number }>;
}

const cfgArb: fc.Arbitrary<Cfg> = fc.record({
  bits: fc.oneof(fc.integer({ min: 1, max: 12 }), fc.integer({ min: 13, max: 32 }), fc.constantFrom(15, 16, 17, 32)),
  maxCut: fc.oneof(fc.constant(0), n),
  minSel: fc.oneof(fc.constant(0), fc.constant(1), n),
  policy: fc.constantFrom<AllocPolicy>('lowest', 'cyclic'),
  quarantine: fc.boolean(),
  wins: fc.array(
    fc.record({
      kind: fc.constantFrom<'start' | 'end' | 'chunk' | 'any'>('start', 'end', 'chunk', 'any'),
      pos: n,
      len: fc.integer({ min: 1, max: 600 }),
    }),
    { minLength: 1, maxLength: 3 },
  ),
});

function universeOf(cfg: Cfg): { min: number; max: number; wins: Win[] } {
  const top = cfg.bits === 32 ? U32_TOP : 2 ** cfg.bits - 1;
  const max = cfg.maxCut === 0 ? top : top - (cfg.maxCut % Math.min(top + 1, 1 << 20));
  const min = cfg.minSel <= 1 ? Math.min(cfg.minSel, max) : cfg.minSel % (max + 1);
  const size = max - min + 1;
  if (cfg.bits <= 12) return { min, max, wins: [{ lo: min, hi: max }] };
  const wins: Win[] = [];
  for (const w of cfg.wins) {
    const len = Math.min(w.len, size);
    let lo: number;
    if (w.kind === 'start') lo = min;
    else if (w.kind === 'end') lo = max - len + 1;
    else if (w.kind === 'chunk') {
      const chunks = Math.floor((size - 1) / CHUNK);
      lo = chunks === 0 ? min : min + (1 + (w.pos % chunks)) * CHUNK - Math.floor(len / 2);
    } else lo = min + (w.pos % size);
    lo = Math.max(min, Math.min(lo, max - len + 1));
    wins.push({ lo, hi: lo + len - 1 });
  }
  return { min, max, wins };
}

function pos(wins: Win[], u: number, v: number): number {
  const w = wins[u % wins.length]!;
  return w.lo + (v % (w.hi - w.lo + 1));
}

function sorted(s: Set<number>): number[] {
  return [...s].sort((a, b) => a - b);
}

function runSequence(cfg: Cfg, ops: Op[]): void {
  const { min, max, wins } = universeOf(cfg);
  const e = new IdEngine({ min, max, policy: cfg.policy, quarantine: cfg.quarantine });
  const m = new SetModel(min, max, cfg.policy, cfg.quarantine);
  const pick = (set: Set<number>, u: number): number | undefined => {
    if (set.size === 0) return undefined;
    const arr = sorted(set);
    return arr[u % arr.length];
  };
  for (let step = 0; step < ops.length; step++) {
    const op = ops[step]!;
    const at = `step ${step} ${JSON.stringify(op)}`;
    switch (op.k) {
      case 'alloc': {
        if (!op.win) {
          assert.equal(e.alloc(), m.alloc(min, max), at);
          break;
        }
        const a = pos(wins, op.u, op.v);
        const w = wins[op.u % wins.length]!;
        let b = a + ((op.v >>> 3) % (w.hi - a + 1));
        let lo = a;
        if (op.spill) {
          lo = Math.max(0, lo - 3);
          b = Math.min(U32_TOP, b + 3);
        }
        assert.equal(e.alloc(lo, b), m.alloc(lo, b), `${at} alloc(${lo}, ${b})`);
        break;
      }
      case 'reserve': {
        let x = pos(wins, op.u, op.v);
        if (op.outside) x = op.v % 2 === 0 ? min - 1 : max + 1;
        assert.equal(e.reserve(x), m.reserve(x), `${at} reserve(${x})`);
        break;
      }
      case 'free': {
        const x = (op.live ? pick(m.allocated, op.u) : undefined) ?? pos(wins, op.u, op.v);
        assert.equal(e.free(x), m.free(x), `${at} free(${x})`);
        break;
      }
      case 'release': {
        const x = (op.live ? pick(m.quarantined, op.u) : undefined) ?? pos(wins, op.u, op.v);
        assert.equal(e.release(x), m.release(x), `${at} release(${x})`);
        break;
      }
      case 'releaseAll':
        assert.equal(e.releaseAll(), m.releaseAll(), at);
        break;
      case 'fill':
      case 'freeRun': {
        const a = pos(wins, op.u, op.v);
        const w = wins[op.u % wins.length]!;
        const b = Math.min(w.hi, a + op.len - 1);
        for (let x = a; x <= b; x++) {
          if (op.k === 'fill') assert.equal(e.reserve(x), m.reserve(x), `${at} reserve(${x})`);
          else assert.equal(e.free(x), m.free(x), `${at} free(${x})`);
        }
        break;
      }
      case 'cursor': {
        const x = op.v % 5 === 0 ? min - 1 : pos(wins, op.u, op.v);
        e.cursor = x;
        m.cursor = x;
        break;
      }
      case 'probe': {
        const x = pos(wins, op.u, op.v);
        assert.equal(e.isAllocated(x), m.allocated.has(x), `${at} isAllocated(${x})`);
        assert.equal(e.isQuarantined(x), m.quarantined.has(x), `${at} isQuarantined(${x})`);
        assert.equal(e.isFree(x), m.isFree(x), `${at} isFree(${x})`);
        break;
      }
      case 'clear':
        e.clear();
        m.clear();
        break;
    }
    assert.equal(e.size, m.allocated.size, `${at}: size`);
    assert.equal(e.quarantinedCount, m.quarantined.size, `${at}: quarantinedCount`);
    assert.equal(e.cursor, m.cursor, `${at}: cursor`);
  }
  assert.deepEqual([...e.ids()], sorted(m.allocated), 'ids()');
  assert.deepEqual([...e.quarantinedIds()], sorted(m.quarantined), 'quarantinedIds()');
}

/** Dense model for universes of a few chunks: one state per ID, linear search. */
function runDense(size: number, min: number, policy: AllocPolicy, quarantine: boolean, ops: DenseOp[]): void {
  const max = min + size - 1;
  const e = new IdEngine({ min, max, policy, quarantine });
  const st = new Uint8Array(size); // 0 free, 1 allocated, 2 quarantined
  let cursor = min - 1;
  let allocated = 0;
  let quarantined = 0;
  const first = (a: number, b: number): number => {
    for (let x = a; x <= b; x++) if (st[x - min] === 0) return x;
    return -1;
  };
  for (let step = 0; step < ops.length; step++) {
    const op = ops[step]!;
    const at = `step ${step} ${JSON.stringify(op)}`;
    // Aligned operations start on a chunk boundary (or at min), where whole chunks fill up.
    const a = op.al ? min + Math.min(op.u % 4, Math.floor((size - 1) / CHUNK)) * CHUNK : min + (op.u % size);
    const b = Math.min(max, a + op.len - 1);
    if (op.k === 'fill') {
      for (let x = a; x <= b; x++) {
        const want = st[x - min] === 0;
        if (want) {
          st[x - min] = 1;
          allocated++;
        }
        if (e.reserve(x) !== want) assert.fail(`${at} reserve(${x})`);
      }
    } else if (op.k === 'freeRun' || op.k === 'freeSparse') {
      const stride = op.k === 'freeRun' ? 1 : 1 + (op.u % 97);
      for (let x = a; x <= b; x += stride) {
        const want = st[x - min] === 1;
        if (want) {
          st[x - min] = quarantine ? 2 : 0;
          allocated--;
          if (quarantine) quarantined++;
        }
        if (e.free(x) !== want) assert.fail(`${at} free(${x})`);
      }
    } else if (op.k === 'releaseAll') {
      for (let i = 0; i < size; i++) if (st[i] === 2) st[i] = 0;
      assert.equal(e.releaseAll(), quarantined, at);
      quarantined = 0;
    } else if (op.k === 'alloc') {
      // a burst of allocations in [a, b]
      for (let k = 0; k < op.count; k++) {
        let r: number;
        if (policy === 'lowest') r = first(a, b);
        else {
          let s = cursor + 1;
          if (s < a || s > b) s = a;
          r = first(s, b);
          if (r < 0 && s > a) r = first(a, s - 1);
        }
        if (r >= 0) {
          st[r - min] = 1;
          allocated++;
          if (policy === 'cyclic') cursor = r;
        }
        const got = e.alloc(a, b);
        if (got !== r) assert.fail(`${at} alloc #${k}(${a}, ${b}) gave ${got}, model ${r}`);
      }
    }
    assert.equal(e.size, allocated, `${at}: size`);
    assert.equal(e.quarantinedCount, quarantined, `${at}: quarantinedCount`);
  }
  const want: number[] = [];
  const wantQ: number[] = [];
  for (let i = 0; i < size; i++) {
    if (st[i] === 1) want.push(min + i);
    else if (st[i] === 2) wantQ.push(min + i);
  }
  assert.deepEqual([...e.ids()], want, 'ids()');
  assert.deepEqual([...e.quarantinedIds()], wantQ, 'quarantinedIds()');
}

type DenseOp =
  | { k: 'fill' | 'freeRun' | 'freeSparse'; u: number; len: number; al: boolean }
  | { k: 'alloc'; u: number; len: number; al: boolean; count: number }
  | { k: 'releaseAll'; u: number; len: number; al: boolean };

const lenArb = fc.integer({ min: 1, max: 4 * CHUNK });
const denseOpArb: fc.Arbitrary<DenseOp> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ k: fc.constantFrom<'fill' | 'freeRun' | 'freeSparse'>('fill', 'freeRun', 'freeSparse'), u: n, len: lenArb, al: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('alloc' as const), u: n, len: lenArb, al: fc.boolean(), count: fc.integer({ min: 1, max: 40 }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('releaseAll' as const), u: n, len: fc.constant(1), al: fc.constant(false) }) },
);

describe('IdEngine against a reference model (fast-check)', () => {
  it('matches a Set model step by step for random widths, windows, policies and quarantine', () => {
    fc.assert(
      fc.property(cfgArb, fc.array(opArb, { maxLength: 80, size: 'max' }), (cfg, ops) => runSequence(cfg, ops)),
      { numRuns: 1000 },
    );
  });

  it('matches a dense state-array model across chunk boundaries and full chunks', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3 * CHUNK + 100 }),
        fc.oneof(fc.constant(0), fc.integer({ min: 0, max: U32_TOP - 3 * CHUNK - 100 })),
        fc.constantFrom<AllocPolicy>('lowest', 'cyclic'),
        fc.boolean(),
        fc.array(denseOpArb, { maxLength: 30, size: 'max' }),
        (size, min, policy, quarantine, ops) => runDense(size, min, policy, quarantine, ops),
      ),
      { numRuns: 100 },
    );
  });
});
