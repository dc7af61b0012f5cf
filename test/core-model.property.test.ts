/**
 * Model-based property test of IoasidSpace: random sequences of every framework operation, in
 * every profile, run against the real space and against a small, obviously correct reference
 * model, compared step by step (result value or error code). A failure shrinks to a minimal
 * sequence. 25,000 sequences in all (5,000 per profile). The model follows the kernel where the
 * Linux profiles do (an ops that is not a member unregisters nothing; a custom allocator gets its
 * range unchecked; INVALID_IOASID is an unknown ID) and has no custom allocators in linux-6.x.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  INVALID_IOASID, IoasidError, IoasidSpace, PROFILES, PROFILE_RULES,
  type AllocatorOps, type IoasidSet, type Profile,
} from '../src/core/index.ts';

const BITS = 6; // universe [0, 63]: small enough that ranges fill up
const CAP = 1 << BITS;
const RUNS_PER_PROFILE = 5000;

type Cmd =
  | { k: 'createSet'; quota: number }
  | { k: 'destroySet'; set: number }
  | { k: 'alloc'; set: number; min: number; max: number; data: number | null; answer: number }
  | { k: 'free'; id: number; set: number; fail: boolean }
  | { k: 'get'; id: number }
  | { k: 'put'; id: number; fail: boolean }
  | { k: 'find'; set: number; id: number; getter: 0 | 1 | 2 }
  | { k: 'setData'; id: number; data: number | null }
  | { k: 'register'; ops: number }
  | { k: 'unregister'; ops: number };

// IDs mostly where allocations land (low numbers), sometimes anywhere, sometimes invalid.
const idArb = fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 0, max: 4 }) }, { weight: 3, arbitrary: fc.integer({ min: 0, max: 24 }) }, { weight: 1, arbitrary: fc.constantFrom(CAP - 1, CAP, 0xfffffffe, 0xffffffff, -1) });
const setArb = fc.integer({ min: -1, max: 3 }); // -1 = null set
const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  { weight: 2, arbitrary: fc.record({ k: fc.constant('createSet' as const), quota: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 4 }), fc.constant(CAP + 1)) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('destroySet' as const), set: fc.integer({ min: 0, max: 3 }) }) },
  {
    weight: 8,
    arbitrary: fc.record({
      k: fc.constant('alloc' as const), set: setArb, min: fc.integer({ min: 0, max: 6 }), max: fc.oneof(fc.integer({ min: 0, max: 8 }), fc.constant(CAP + 5)),
      data: fc.option(fc.integer({ min: 1, max: 9 })), answer: fc.oneof(fc.integer({ min: 0, max: 10 }), fc.constant(INVALID_IOASID)),
    }),
  },
  { weight: 5, arbitrary: fc.record({ k: fc.constant('free' as const), id: idArb, set: setArb, fail: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('get' as const), id: idArb }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('put' as const), id: idArb, fail: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('find' as const), set: setArb, id: idArb, getter: fc.constantFrom(0 as const, 1 as const, 2 as const) }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('setData' as const), id: idArb, data: fc.option(fc.integer({ min: 1, max: 9 })) }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('register' as const), ops: fc.integer({ min: 0, max: 3 }) }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('unregister' as const), ops: fc.integer({ min: 0, max: 3 }) }) },
);

type Result = { ok: unknown } | { err: string };

// ------------------------------------------------------------------ reference model

interface MRec { set: number; data: number | null; refs: number }
interface MGroup { fns: 0 | 1; primary: number; members: number[]; table: Map<number, MRec> }

class Model {
  sets: { quota: number; alive: boolean }[] = [];
  def = new Map<number, MRec>();
  groups: MGroup[] = [];
  active: MGroup | null = null;
  constructor(readonly profile: Profile) {}
  get rules() { return PROFILE_RULES[this.profile]; }
  get table(): Map<number, MRec> { return this.active ? this.active.table : this.def; }
  fnsOf(ops: number): 0 | 1 { return ops < 2 ? 0 : 1; }

  setOk(i: number): Result | null {
    if (i < 0) return null;
    if (i >= this.sets.length || !this.sets[i]!.alive) return { err: 'EINVAL' };
    return null;
  }
  idOk(id: number): Result | null {
    return id < 0 || id > 0xfffffffe ? { err: 'EINVAL' } : null;
  }
  /** Linux: INVALID_IOASID is an ID nobody holds (xa_load finds nothing). */
  unknownInvalid(id: number): boolean {
    return id === INVALID_IOASID && this.rules.invalidIsAnId;
  }

  run(c: Cmd, host: { freeFail: boolean }): Result {
    switch (c.k) {
      case 'createSet': {
        if (c.quota > CAP) return { err: 'ENOSPC' };
        this.sets.push({ quota: c.quota, alive: true });
        return { ok: this.sets.length - 1 };
      }
      case 'destroySet': {
        const e = this.setOk(c.set); if (e) return e;
        if (c.set >= this.sets.length) return { err: 'EINVAL' };
        const tables = [this.def, ...this.groups.map((g) => g.table)];
        if (tables.some((t) => [...t.values()].some((r) => r.set === c.set))) return { err: 'EBUSY' };
        this.sets[c.set]!.alive = false;
        return { ok: undefined };
      }
      case 'alloc': {
        const e = this.setOk(c.set); if (e) return e;
        const max = c.max;
        // ioasid_alloc() hands a custom allocator its range unchecked (Linux).
        if (c.min > max && (!this.active || this.rules.checkRangeBeforeCustom)) return { err: 'EINVAL' };
        const t = this.table;
        if (c.set >= 0 && this.rules.quotas) {
          const q = this.sets[c.set]!.quota;
          const n = [...t.values()].filter((r) => r.set === c.set).length;
          if (q > 0 && n >= q) return { err: 'EDQUOT' };
        }
        if (!this.active) {
          for (let id = c.min; id <= Math.min(max, CAP - 1); id++) {
            if (!t.has(id)) { t.set(id, { set: c.set, data: c.data, refs: 1 }); return { ok: id }; }
          }
          return { err: 'ENOSPC' };
        }
        const got = c.answer;
        if (got === INVALID_IOASID) return { err: 'ENOSPC' };
        if (this.rules.checkCustomRange && (got < c.min || got > max)) return { err: 'ERANGE' };
        if (t.has(got)) return { err: 'EEXIST' };
        t.set(got, { set: c.set, data: c.data, refs: 1 });
        return { ok: got };
      }
      case 'free':
      case 'put': {
        const isPut = c.k === 'put';
        if (isPut && !this.rules.refcounts) return { err: 'EOPNOTSUPP' };
        const set = c.k === 'free' ? c.set : -1;
        if (this.unknownInvalid(c.id)) return this.setOk(set) ?? { ok: isPut ? false : undefined };
        const e = this.idOk(c.id); if (e) return e;
        const se = this.setOk(set); if (se) return se;
        const t = this.table;
        const r = t.get(c.id);
        if (!r) return this.rules.reportMisuse ? { err: 'ENOENT' } : { ok: isPut ? false : undefined };
        if (set >= 0 && r.set !== set) return { err: 'EACCES' };
        if (isPut || this.profile === 'linux-5.11') {
          if (r.refs > 1) { r.refs--; return { ok: isPut ? false : undefined }; }
        } else if (r.refs > 1) return { err: 'EBUSY' };
        if (this.active && host.freeFail && this.rules.keepRecordOnFailedFree) return { err: 'EBUSY' };
        t.delete(c.id);
        return { ok: isPut ? true : undefined };
      }
      case 'get': {
        if (!this.rules.refcounts) return { err: 'EOPNOTSUPP' };
        if (this.unknownInvalid(c.id)) return { ok: undefined };
        const e = this.idOk(c.id); if (e) return e;
        const r = this.table.get(c.id);
        if (!r) return this.rules.reportMisuse ? { err: 'ENOENT' } : { ok: undefined };
        r.refs++;
        return { ok: undefined };
      }
      case 'find': {
        if (this.unknownInvalid(c.id)) return this.setOk(c.set) ?? { err: 'ENOENT' };
        const e = this.idOk(c.id); if (e) return e;
        const se = this.setOk(c.set); if (se) return se;
        const r = this.table.get(c.id);
        if (!r) return { err: 'ENOENT' };
        if (c.set >= 0 && r.set !== c.set) return { err: 'EACCES' };
        if (c.getter === 2) return { ok: null };
        return { ok: r.data };
      }
      case 'setData': {
        if (this.unknownInvalid(c.id)) return { err: 'ENOENT' };
        const e = this.idOk(c.id); if (e) return e;
        const r = this.table.get(c.id);
        if (!r) return { err: 'ENOENT' };
        r.data = c.data;
        return { ok: undefined };
      }
      case 'register': {
        if (!this.rules.customAllocators) return { err: 'EOPNOTSUPP' };
        if (this.groups.length === 0) {
          if (this.def.size > 0) return { err: 'EAGAIN' };
          const g: MGroup = { fns: this.fnsOf(c.ops), primary: c.ops, members: [c.ops], table: new Map() };
          this.groups.push(g);
          this.active = g;
          return { ok: undefined };
        }
        for (const g of this.groups) {
          if (g.primary === c.ops || (this.rules.detectSecondaryDuplicate && g.members.includes(c.ops))) return { err: 'EEXIST' };
          if (g.fns === this.fnsOf(c.ops)) { g.members.push(c.ops); return { ok: undefined }; }
        }
        this.groups.push({ fns: this.fnsOf(c.ops), primary: c.ops, members: [c.ops], table: new Map() });
        return { ok: undefined };
      }
      case 'unregister': {
        if (this.groups.length === 0) return { ok: undefined };
        const strict = this.rules.repointSharedPrimary;
        const g = this.groups.find((x) => x.fns === this.fnsOf(c.ops) && (!strict || x.members.includes(c.ops)));
        if (!g) return { ok: undefined };
        if (g.members.length === 1) {
          this.groups = this.groups.filter((x) => x !== g);
          if (this.groups.length === 0) this.active = null;
          else if (this.active === g) this.active = this.groups[0]!;
          return { ok: undefined };
        }
        // ioasid_unregister_allocator() removes only the entry whose sops == ops.
        const i = g.members.indexOf(c.ops);
        if (i < 0) return { ok: undefined };
        g.members.splice(i, 1);
        if (strict && g.primary === c.ops) g.primary = g.members[0]!;
        return { ok: undefined };
      }
    }
  }
}

// ------------------------------------------------------------------ the real thing

async function runReal(s: IoasidSpace, sets: IoasidSet[], ops: AllocatorOps[], host: { answer: number; freeFail: boolean }, c: Cmd): Promise<Result> {
  const setOf = (i: number): IoasidSet | null => (i < 0 ? null : (sets[i] ?? null));
  try {
    switch (c.k) {
      case 'createSet': {
        const set = s.createSet({ name: `s${sets.length}`, quota: c.quota });
        sets.push(set);
        return { ok: sets.length - 1 };
      }
      case 'destroySet': {
        const set = sets[c.set];
        if (!set) return { err: 'EINVAL' };
        s.destroySet(set);
        return { ok: undefined };
      }
      case 'alloc':
        if (c.set >= sets.length) return { err: 'EINVAL' };
        host.answer = c.answer;
        return { ok: await s.alloc(setOf(c.set), c.min, c.max, c.data) };
      case 'free':
        if (c.set >= sets.length) return { err: 'EINVAL' };
        host.freeFail = c.fail;
        return { ok: await s.free(c.id, setOf(c.set)) };
      case 'get':
        return { ok: s.get(c.id) };
      case 'put':
        host.freeFail = c.fail;
        return { ok: await s.put(c.id) };
      case 'find':
        if (c.set >= sets.length) return { err: 'EINVAL' };
        return { ok: s.find(setOf(c.set), c.id, c.getter === 0 ? undefined : () => c.getter === 1) };
      case 'setData':
        return { ok: s.setData(c.id, c.data) };
      case 'register':
        return { ok: s.registerAllocator(ops[c.ops]!) };
      case 'unregister':
        return { ok: s.unregisterAllocator(ops[c.ops]!) };
    }
  } catch (e) {
    if (e instanceof IoasidError) return { err: e.code };
    throw e;
  }
}

function makeOps(host: { answer: number; freeFail: boolean }): AllocatorOps[] {
  // Two function pairs: ops 0 and 1 share the first, ops 2 and 3 the second.
  const pairs = [0, 1].map(() => ({
    alloc: (): number => host.answer,
    free: (): void => {
      if (host.freeFail) throw new IoasidError('EBUSY', 'host refuses');
    },
  }));
  return [0, 1, 2, 3].map((i) => ({ ...pairs[i < 2 ? 0 : 1]!, pdata: i }));
}

describe('IoasidSpace against a reference model', () => {
  for (const profile of PROFILES) {
    it(`${profile}: ${RUNS_PER_PROFILE} random operation sequences agree step by step`, async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(cmdArb, { minLength: 1, maxLength: 60, size: 'max' }), async (cmds) => {
          const s = new IoasidSpace({ profile, bits: BITS });
          const host = { answer: 0, freeFail: false };
          const ops = makeOps(host);
          const sets: IoasidSet[] = [];
          const m = new Model(profile);
          for (const [i, c] of cmds.entries()) {
            const want = m.run(c, { freeFail: c.k === 'free' || c.k === 'put' ? c.fail : false });
            const got = await runReal(s, sets, ops, host, c);
            assert.deepEqual(got, want, `step ${i}: ${JSON.stringify(c)}`);
            assert.deepEqual(s.ids(), [...m.table.keys()].sort((a, b) => a - b), `ids after step ${i}`);
          }
          s.checkInvariants();
        }),
        { numRuns: RUNS_PER_PROFILE },
      );
    });
  }
});
