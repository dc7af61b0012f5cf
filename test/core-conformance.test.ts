/**
 * Conformance of the IOASID framework to the numbered behaviours 1-36 of docs/behaviours.md (and
 * 70-76 as far as the strict profile adopts them). Each test names its behaviour and pins the
 * profiles it runs in.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  INVALID_IOASID, IOASID_PROFILES, IoasidError, IoasidSpace, PROFILES,
  type AllocatorOps, type IoasidEvent, type LogLevel, type Profile,
} from '../src/core/index.ts';

const LINUX: Profile[] = ['linux-5.8', 'linux-5.11', 'linux-5.18'];
const ALL: readonly Profile[] = PROFILES;
// The profiles with ioasid.c (custom allocators); linux-6.x has none.
const IOASID: readonly Profile[] = IOASID_PROFILES;

function space(profile: Profile, bits = 20) {
  const logs: { level: LogLevel; message: string }[] = [];
  const s = new IoasidSpace({ profile, bits, log: (level, message) => logs.push({ level, message }) });
  return { s, logs };
}

function rejectsCode(code: string) {
  return (e: unknown) => e instanceof IoasidError && e.code === code;
}

/** A custom allocator backed by a simple "host" pool, recording every call. */
function customHost(opts: { start?: number; answers?: number[] } = {}) {
  const held = new Set<number>();
  const calls: { op: 'alloc' | 'free'; id?: number; pdata: unknown; min?: number; max?: number }[] = [];
  let next = opts.start ?? 100;
  const answers = opts.answers ? [...opts.answers] : undefined;
  const alloc = (min: number, max: number, pdata: unknown): number => {
    calls.push({ op: 'alloc', min, max, pdata });
    const id = answers ? (answers.shift() ?? INVALID_IOASID) : next++;
    if (id !== INVALID_IOASID) held.add(id);
    return id;
  };
  const free = (id: number, pdata: unknown): void => {
    calls.push({ op: 'free', id, pdata });
    held.delete(id);
  };
  const ops = (pdata: unknown): AllocatorOps => ({ alloc, free, pdata });
  return { held, calls, ops };
}

async function free(s: IoasidSpace, id: number): Promise<void> {
  if (s.profile === 'linux-5.11') await s.put(id);
  else await s.free(id);
}

describe('profiles', () => {
  it('a space of an unknown profile is EINVAL naming the known ones; every known one makes a space', () => {
    for (const bad of ['linux-4.19', 'STRICT', '', 42, {}]) {
      assert.throws(() => new IoasidSpace({ profile: bad as never }), (e: unknown) => e instanceof IoasidError && e.code === 'EINVAL' && /unknown profile .*\(one of strict, linux-5\.8, linux-5\.11, linux-5\.18, linux-6\.x\)/.test(e.message));
    }
    for (const p of ALL) assert.equal(new IoasidSpace({ profile: p }).profile, p);
  });
});

describe('core allocator (behaviours 1-17)', () => {
  for (const p of ALL) {
    describe(p, () => {
      it('behaviour 1: min > max fails and records nothing', async () => {
        const { s } = space(p);
        await assert.rejects(s.alloc(null, 10, 5), rejectsCode('EINVAL'));
        assert.equal(s.size, 0);
      });

      it('behaviour 2: the default allocator returns the lowest free ID in the inclusive range', async () => {
        const { s } = space(p);
        assert.equal(await s.alloc(null, 5, 9), 5);
        assert.equal(await s.alloc(null, 5, 9), 6);
        assert.equal(await s.alloc(null, 1, 9), 1);
        assert.equal(await s.alloc(null, 9, 9), 9);
      });

      it('behaviour 3: min == max returns that ID when free and fails when taken', async () => {
        const { s } = space(p);
        assert.equal(await s.alloc(null, 42, 42), 42);
        await assert.rejects(s.alloc(null, 42, 42), rejectsCode('ENOSPC'));
        assert.equal(s.size, 1);
      });

      it('behaviour 4: a full range fails and leaves state unchanged', async () => {
        const { s } = space(p);
        for (let i = 1; i <= 4; i++) await s.alloc(null, 1, 4);
        const before = JSON.stringify(s.snapshot());
        await assert.rejects(s.alloc(null, 1, 4), rejectsCode('ENOSPC'));
        assert.equal(JSON.stringify(s.snapshot()), before);
      });

      it('behaviour 5: a freed ID is reused before any higher free ID', async () => {
        const { s } = space(p);
        for (let i = 0; i < 5; i++) await s.alloc(null, 1, 100);
        await free(s, 3);
        assert.equal(await s.alloc(null, 1, 100), 3);
        assert.equal(await s.alloc(null, 1, 100), 6);
      });

      it('behaviour 8: find(null, id) on a live ID returns its data, even null', async () => {
        const { s } = space(p);
        const a = await s.alloc(null, 1, 10);
        const b = await s.alloc(null, 1, 10, { mm: 1 });
        assert.equal(s.find(null, a), null);
        assert.deepEqual(s.find(null, b), { mm: 1 });
      });

      it('behaviour 9: find on an unknown ID is ENOENT', () => {
        const { s } = space(p);
        assert.throws(() => s.find(null, 7), rejectsCode('ENOENT'));
      });

      it('behaviour 10: find with a set that does not own the ID is EACCES; find(null) ignores ownership', async () => {
        const { s } = space(p);
        const a = s.createSet({ name: 'a' });
        const b = s.createSet({ name: 'b' });
        const id = await s.alloc(a, 1, 10, 'pa');
        assert.throws(() => s.find(b, id), rejectsCode('EACCES'));
        assert.equal(s.find(a, id), 'pa');
        assert.equal(s.find(null, id), 'pa');
      });

      it('behaviour 11: a getter that refuses yields null, not an error', async () => {
        const { s } = space(p);
        const id = await s.alloc(null, 1, 10, { alive: false });
        assert.equal(s.find(null, id, (d) => (d as { alive: boolean }).alive), null);
        assert.deepEqual(s.find(null, id, () => true), { alive: false });
      });

      it('behaviour 12: the getter is never called when the lookup fails or the set does not match', async () => {
        const { s } = space(p);
        const a = s.createSet({ name: 'a' });
        const b = s.createSet({ name: 'b' });
        const id = await s.alloc(a, 1, 10, 'x');
        let called = 0;
        const getter = () => { called++; return true; };
        assert.throws(() => s.find(null, 999, getter), rejectsCode('ENOENT'));
        assert.throws(() => s.find(b, id, getter), rejectsCode('EACCES'));
        assert.equal(called, 0);
        s.find(a, id, getter);
        assert.equal(called, 1);
      });

      it('behaviour 13: setData on an unknown ID is ENOENT; on a live ID it replaces the data (null allowed)', async () => {
        const { s } = space(p);
        assert.throws(() => s.setData(3, 'x'), rejectsCode('ENOENT'));
        const id = await s.alloc(null, 1, 10, 'old');
        s.setData(id, 'new');
        assert.equal(s.find(null, id), 'new');
        s.setData(id, null);
        assert.equal(s.find(null, id), null);
      });

      it('behaviour 14: sets are compared by identity, not content', async () => {
        const { s } = space(p);
        const a = s.createSet({ name: 'same' });
        const b = s.createSet({ name: 'same' });
        const id = await s.alloc(a, 1, 10);
        assert.throws(() => s.find(b, id), rejectsCode('EACCES'));
      });

      it('a set of another space, or a destroyed set, is EINVAL and changes nothing', async () => {
        const { s } = space(p);
        const other = new IoasidSpace({ profile: p }).createSet({ name: 'foreign' });
        await assert.rejects(s.alloc(other, 1, 10), rejectsCode('EINVAL'));
        const gone = s.createSet({ name: 'gone' });
        s.destroySet(gone);
        await assert.rejects(s.alloc(gone, 1, 10), rejectsCode('EINVAL'));
        assert.equal(s.size, 0);
      });

      it('bad numbers (NaN, negative, fractional, above 0xFFFFFFFE, strings) are EINVAL naming the value', async () => {
        const { s } = space(p);
        for (const bad of [Number.NaN, -1, 1.5, 0x1_0000_0000, '3' as unknown as number, Infinity]) {
          await assert.rejects(s.alloc(null, bad, 10), (e: unknown) => e instanceof IoasidError && e.code === 'EINVAL' && /min/.test(e.message));
          assert.throws(() => s.find(null, bad), rejectsCode('EINVAL'));
        }
        assert.equal(s.size, 0);
      });
    });
  }

  for (const p of LINUX) {
    it(`behaviour 6 (${p}): freeing an unknown ID is a logged no-op`, async () => {
      const { s, logs } = space(p);
      await s.alloc(null, 1, 10);
      await s.free(5);
      assert.equal(s.size, 1);
      assert.ok(logs.some((l) => /unknown IOASID/.test(l.message)));
    });

    it(`behaviour 7 (${p}): a second free of the same ID is a no-op`, async () => {
      const { s, logs } = space(p);
      const id = await s.alloc(null, 1, 10);
      await free(s, id);
      const n = logs.length;
      await free(s, id);
      assert.equal(s.size, 0);
      assert.equal(logs.length, n + 1);
    });

    it(`behaviour 15 (${p}): a range that includes 0xFFFFFFFF never returns INVALID_IOASID`, async () => {
      const { s } = space(p, 32);
      assert.equal(await s.alloc(null, 0xfffffffe, 0xffffffff), 0xfffffffe);
      await assert.rejects(s.alloc(null, 0xfffffffe, 0xffffffff), rejectsCode('ENOSPC'));
    });
  }

  it('behaviour 6/7 (strict): freeing an unknown or already freed ID is ENOENT (misuse reported)', async () => {
    const { s } = space('strict');
    await assert.rejects(s.free(5), rejectsCode('ENOENT'));
    const id = await s.alloc(null, 1, 10);
    await s.free(id);
    await assert.rejects(s.free(id), rejectsCode('ENOENT'));
  });

  it('behaviour 15 (strict): max 0xFFFFFFFF is rejected as EINVAL; 0xFFFFFFFE is the top ID', async () => {
    const { s } = space('strict', 32);
    await assert.rejects(s.alloc(null, 1, 0xffffffff), rejectsCode('EINVAL'));
    assert.equal(await s.alloc(null, 0xfffffffe, 0xfffffffe), 0xfffffffe);
  });

  it('behaviour 16 (linux-5.11): get on unknown only warns; put returns true and frees once, on the last reference', async () => {
    const { s, logs } = space('linux-5.11');
    s.get(77);
    assert.ok(logs.some((l) => l.level === 'warn'));
    const host = customHost();
    const ops = host.ops('viommu0');
    s.registerAllocator(ops);
    const id = await s.alloc(null, 1, 1000);
    s.get(id);
    assert.equal(await s.put(id), false);
    assert.equal(host.calls.filter((c) => c.op === 'free').length, 0);
    assert.equal(await s.put(id), true);
    assert.equal(host.calls.filter((c) => c.op === 'free').length, 1);
    assert.equal(await s.put(id), false);
  });

  for (const p of ['linux-5.8', 'linux-5.18'] as const) {
    it(`behaviour 17 (${p}): there is no get, and free releases at once`, async () => {
      const { s } = space(p);
      const id = await s.alloc(null, 1, 10);
      assert.throws(() => s.get(id), rejectsCode('EOPNOTSUPP'));
      await s.free(id);
      assert.equal(s.has(id), false);
    });
  }

  it('strict: free of an ID with extra references is EBUSY; put releases on the last', async () => {
    const { s } = space('strict');
    const id = await s.alloc(null, 1, 10);
    s.get(id);
    await assert.rejects(s.free(id), rejectsCode('EBUSY'));
    assert.equal(await s.put(id), false);
    await s.free(id);
    assert.equal(s.has(id), false);
  });
});

describe('custom allocators (behaviours 18-36)', () => {
  for (const p of IOASID) {
    describe(p, () => {
      it('behaviour 18: registering the first custom allocator while the default holds an ID is EAGAIN', async () => {
        const { s } = space(p);
        await s.alloc(null, 1, 10);
        assert.throws(() => s.registerAllocator(customHost().ops(1)), rejectsCode('EAGAIN'));
        assert.equal(s.activeAllocator(), null);
        assert.equal(s.allocatorGroups, 0);
      });

      it('behaviour 19: the first custom allocator with an empty default table becomes active at once', async () => {
        const { s } = space(p);
        const ops = customHost().ops(1);
        s.registerAllocator(ops);
        assert.equal(s.activeAllocator(), ops);
        assert.equal(await s.alloc(null, 1, 1000), 100);
      });

      it('behaviour 20: registering the same ops object twice is EEXIST', () => {
        const { s } = space(p);
        const ops = customHost().ops(1);
        s.registerAllocator(ops);
        assert.throws(() => s.registerAllocator(ops), rejectsCode('EEXIST'));
      });

      it('behaviour 21: a different ops object with the same functions joins the group and shares its IDs', async () => {
        const { s } = space(p);
        const host = customHost();
        const a = host.ops('a');
        const b = host.ops('b');
        s.registerAllocator(a);
        const id = await s.alloc(null, 1, 1000);
        s.registerAllocator(b);
        assert.equal(s.allocatorGroups, 1);
        assert.equal(s.activeAllocator(), a);
        assert.equal(s.find(null, id), null);
      });

      it('behaviour 22: an allocator with different functions registers but stays inactive', () => {
        const { s } = space(p);
        const a = customHost().ops('a');
        const b = customHost().ops('b');
        s.registerAllocator(a);
        s.registerAllocator(b);
        assert.equal(s.allocatorGroups, 2);
        assert.equal(s.activeAllocator(), a);
      });

      it('behaviour 23: custom allocation passes the primary ops pdata, whichever member asked', async () => {
        const { s } = space(p);
        const host = customHost();
        s.registerAllocator(host.ops('first'));
        s.registerAllocator(host.ops('second'));
        await s.alloc(null, 1, 1000);
        assert.equal(host.calls[0]?.pdata, 'first');
      });

      it('behaviour 24: a custom alloc returning INVALID_IOASID fails without recording', async () => {
        const { s } = space(p);
        s.registerAllocator(customHost({ answers: [INVALID_IOASID] }).ops(1));
        await assert.rejects(s.alloc(null, 1, 1000), rejectsCode('ENOSPC'));
        assert.equal(s.size, 0);
      });

      it('behaviour 27: freeing a custom ID calls free with the active pdata and drops the record even if the callback declines (Linux) ', async () => {
        const { s } = space(p);
        const calls: unknown[] = [];
        s.registerAllocator({ alloc: () => 200, free: (_id, pd) => { calls.push(pd); }, pdata: 'P' });
        const id = await s.alloc(null, 1, 1000);
        await free(s, id);
        assert.deepEqual(calls, ['P']);
        assert.equal(s.has(id), false);
      });

      it('behaviour 28: unregistering a non-shared, non-active allocator keeps the active one', () => {
        const { s } = space(p);
        const a = customHost().ops('a');
        const b = customHost().ops('b');
        s.registerAllocator(a);
        s.registerAllocator(b);
        s.unregisterAllocator(b);
        assert.equal(s.activeAllocator(), a);
        assert.equal(s.allocatorGroups, 1);
      });

      it('behaviour 29: unregistering the active allocator activates the next in order; its IDs become unknown', async () => {
        const { s, logs } = space(p);
        const a = customHost({ start: 100 }).ops('a');
        const b = customHost({ start: 500 }).ops('b');
        const c = customHost({ start: 900 }).ops('c');
        s.registerAllocator(a);
        s.registerAllocator(b);
        s.registerAllocator(c);
        const id = await s.alloc(null, 1, 1000);
        s.unregisterAllocator(a);
        assert.equal(s.activeAllocator(), b);
        assert.ok(logs.some((l) => l.level === 'warn' && /orphaned/.test(l.message)));
        assert.throws(() => s.find(null, id), rejectsCode('ENOENT'));
        assert.equal(await s.alloc(null, 1, 1000), 500);
      });

      it('behaviour 30: unregistering the last custom allocator reverts to the empty default and orphans its IDs', async () => {
        const { s } = space(p);
        const host = customHost();
        const a = host.ops('a');
        s.registerAllocator(a);
        const id = await s.alloc(null, 1, 1000);
        s.unregisterAllocator(a);
        assert.equal(s.activeAllocator(), null);
        assert.equal(s.size, 0);
        assert.ok(host.held.has(id), 'the host still holds the orphaned ID');
      });

      it('behaviour 31: unregistering one member of a shared group keeps outstanding IDs findable and freeable', async () => {
        const { s } = space(p);
        const host = customHost();
        const a = host.ops('a');
        const b = host.ops('b');
        s.registerAllocator(a);
        s.registerAllocator(b);
        const id = await s.alloc(null, 1, 1000, 'data');
        s.unregisterAllocator(b);
        assert.equal(s.find(null, id), 'data');
        await free(s, id);
        assert.equal(host.held.has(id), false);
      });

      it('behaviour 33: unregistering with none registered is a logged no-op; an unknown ops is a silent no-op', () => {
        const { s, logs } = space(p);
        s.unregisterAllocator(customHost().ops(1));
        assert.ok(logs.some((l) => /No custom IOASID allocators active/.test(l.message)));
        const a = customHost().ops('a');
        s.registerAllocator(a);
        const n = logs.length;
        s.unregisterAllocator(customHost().ops('stranger'));
        assert.equal(logs.length, n);
        assert.equal(s.activeAllocator(), a);
      });

      it('behaviour 34: after reverting to default, the default may hand out numbers that collide with orphaned host IDs', async () => {
        const { s } = space(p);
        const host = customHost({ start: 1 });
        const a = host.ops('a');
        s.registerAllocator(a);
        const orphan = await s.alloc(null, 1, 1000);
        s.unregisterAllocator(a);
        assert.equal(await s.alloc(null, 1, 1000), orphan);
        assert.ok(host.held.has(orphan));
      });

      it('behaviour 35: re-registering after reverting is EAGAIN once the default allocator handed out IDs', async () => {
        const { s } = space(p);
        const a = customHost().ops('a');
        s.registerAllocator(a);
        s.unregisterAllocator(a);
        await s.alloc(null, 1, 10);
        assert.throws(() => s.registerAllocator(a), rejectsCode('EAGAIN'));
      });

      it('behaviour 36: find, setData, get/put and free see only the active table', async () => {
        const { s } = space(p);
        const a = customHost({ start: 100 }).ops('a');
        const b = customHost({ start: 500 }).ops('b');
        s.registerAllocator(a);
        s.registerAllocator(b);
        const id = await s.alloc(null, 1, 1000, 'x');
        s.unregisterAllocator(a);
        assert.throws(() => s.find(null, id), rejectsCode('ENOENT'));
        assert.throws(() => s.setData(id, 'y'), rejectsCode('ENOENT'));
        if (s.profile === 'strict') await assert.rejects(s.free(id), rejectsCode('ENOENT'));
        else await free(s, id); // logged no-op
      });
    });
  }

  for (const p of LINUX) {
    it(`behaviour 20 (${p}): a secondary member registered again is not detected (Linux quirk)`, () => {
      const { s } = space(p);
      const host = customHost();
      s.registerAllocator(host.ops('a'));
      const b = host.ops('b');
      s.registerAllocator(b);
      assert.doesNotThrow(() => s.registerAllocator(b));
    });

    it(`behaviour 25 (${p}): a custom result already tracked is handed back through free and the call fails`, async () => {
      const { s } = space(p);
      const host = customHost({ answers: [300, 300] });
      s.registerAllocator(host.ops(1));
      await s.alloc(null, 1, 1000);
      await assert.rejects(s.alloc(null, 1, 1000), rejectsCode('EEXIST'));
      assert.deepEqual(host.calls.filter((c) => c.op === 'free').map((c) => c.id), [300]);
      assert.equal(s.size, 1);
    });

    it(`behaviour 26 (${p}): a custom result outside [min, max] is accepted`, async () => {
      const { s } = space(p);
      s.registerAllocator(customHost({ answers: [5000] }).ops(1));
      assert.equal(await s.alloc(null, 1, 1023), 5000);
    });

    it(`behaviour 27 (${p}): the record is dropped even when the custom free refuses`, async () => {
      const { s } = space(p);
      s.registerAllocator({ alloc: () => 9, free: () => { throw new IoasidError('EBUSY', 'still bound'); }, pdata: null });
      const id = await s.alloc(null, 1, 100);
      await free(s, id);
      assert.equal(s.has(id), false);
    });

    it(`behaviour 32 (${p}): unregistering the primary of a shared group keeps its stale pdata (Linux quirk)`, async () => {
      const { s } = space(p);
      const host = customHost();
      const a = host.ops('a');
      s.registerAllocator(a);
      s.registerAllocator(host.ops('b'));
      s.unregisterAllocator(a);
      await s.alloc(null, 1, 1000);
      assert.equal(host.calls.at(-1)?.pdata, 'a');
    });
  }

  describe('strict fixes', () => {
    it('behaviour 20: a secondary member registered again is EEXIST', () => {
      const { s } = space('strict');
      const host = customHost();
      s.registerAllocator(host.ops('a'));
      const b = host.ops('b');
      s.registerAllocator(b);
      assert.throws(() => s.registerAllocator(b), rejectsCode('EEXIST'));
    });

    it('behaviour 25: a custom result already tracked fails with EEXIST without releasing the tracked ID', async () => {
      const { s } = space('strict');
      const host = customHost({ answers: [300, 300] });
      s.registerAllocator(host.ops(1));
      await s.alloc(null, 1, 1000);
      await assert.rejects(s.alloc(null, 1, 1000), rejectsCode('EEXIST'));
      assert.equal(host.calls.filter((c) => c.op === 'free').length, 0);
      assert.equal(s.size, 1);
    });

    it('behaviour 26: a custom result outside [min, max] is handed back and the call fails with ERANGE', async () => {
      const { s } = space('strict');
      const host = customHost({ answers: [5000] });
      s.registerAllocator(host.ops(1));
      await assert.rejects(s.alloc(null, 1, 1023), rejectsCode('ERANGE'));
      assert.equal(host.held.size, 0);
      assert.equal(s.size, 0);
    });

    it('behaviour 27: a custom free that refuses keeps the record and reports the error', async () => {
      const { s } = space('strict');
      s.registerAllocator({ alloc: () => 9, free: () => { throw new IoasidError('EBUSY', 'still bound'); }, pdata: null });
      const id = await s.alloc(null, 1, 100);
      await assert.rejects(s.free(id), rejectsCode('EBUSY'));
      assert.equal(s.has(id), true);
    });

    it('behaviour 32: unregistering the primary of a shared group re-points to a remaining member', async () => {
      const { s } = space('strict');
      const host = customHost();
      const a = host.ops('a');
      const b = host.ops('b');
      s.registerAllocator(a);
      s.registerAllocator(b);
      const id = await s.alloc(null, 1, 1000);
      s.unregisterAllocator(a);
      assert.equal(s.activeAllocator(), b);
      await s.alloc(null, 1, 1000);
      assert.equal(host.calls.at(-1)?.pdata, 'b');
      await s.free(id);
      assert.equal(host.calls.at(-1)?.pdata, 'b');
    });

    it('a custom allocator that throws an IoasidError fails the call with its code', async () => {
      const { s } = space('strict');
      s.registerAllocator({ alloc: () => { throw new IoasidError('ETIMEDOUT', 'host did not answer'); }, free: () => {}, pdata: null });
      await assert.rejects(s.alloc(null, 1, 10), rejectsCode('ETIMEDOUT'));
      assert.equal(s.size, 0);
    });

    it('allocSync with a custom allocator active is EOPNOTSUPP', () => {
      const { s } = space('strict');
      s.registerAllocator(customHost().ops(1));
      assert.throws(() => s.allocSync(null, 1, 10), rejectsCode('EOPNOTSUPP'));
    });

    it('a core call from inside an allocator callback (other than find) is EDEADLK', async () => {
      const { s } = space('strict');
      let inner: unknown;
      s.registerAllocator({
        alloc: () => { try { s.setData(1, 1); void s.alloc(null, 1, 2); } catch (e) { inner = e; } return 50; },
        free: () => {}, pdata: null,
      });
      await s.alloc(null, 1, 100);
      // setData on an unknown ID fails first with ENOENT, which is fine; alloc must be refused.
      const { s: s2 } = space('strict');
      let refused: unknown;
      s2.registerAllocator({ alloc: () => { s2.alloc(null, 1, 2).catch((e: unknown) => { refused = e; }); return 50; }, free: () => {}, pdata: null });
      await s2.alloc(null, 1, 100);
      await new Promise((r) => setImmediate(r));
      assert.ok(inner instanceof IoasidError);
      assert.ok(refused instanceof IoasidError && refused.code === 'EDEADLK');
    });
  });
});

describe('serialised allocator calls (docs/core.md)', () => {
  it('concurrent callers of an asynchronous allocator never receive the same ID', async () => {
    const s = new IoasidSpace({ profile: 'strict' });
    const hostHeld = new Set<number>();
    let next = 1;
    let inFlight = 0;
    let maxInFlight = 0;
    s.registerAllocator({
      alloc: async () => {
        inFlight++; maxInFlight = Math.max(maxInFlight, inFlight);
        await new Promise((r) => setTimeout(r, Math.random() * 2));
        // A racy host that would hand out the same number to overlapping requests.
        const id = next;
        await new Promise((r) => setImmediate(r));
        next = id + 1;
        hostHeld.add(id);
        inFlight--;
        return id;
      },
      free: async (id) => { hostHeld.delete(id); },
      pdata: null,
    });
    const ids = await Promise.all(Array.from({ length: 50 }, () => s.alloc(null, 1, 1000)));
    assert.equal(new Set(ids).size, 50);
    assert.equal(maxInFlight, 1);
  });

  it('a free racing an alloc is well defined: both complete in call order', async () => {
    const s = new IoasidSpace({ profile: 'strict' });
    const log: string[] = [];
    s.registerAllocator({
      alloc: async () => { log.push('alloc'); await new Promise((r) => setTimeout(r, 1)); return 7; },
      free: async (id) => { log.push(`free ${id}`); },
      pdata: null,
    });
    const a = s.alloc(null, 1, 100);
    const id = await a;
    const f = s.free(id);
    const b = s.alloc(null, 1, 100);
    await f;
    assert.equal(await b, 7);
    assert.deepEqual(log, ['alloc', 'free 7', 'alloc']);
  });

  it('find never waits for a pending allocator call', async () => {
    const s = new IoasidSpace({ profile: 'strict' });
    let release!: () => void;
    s.registerAllocator({ alloc: () => new Promise<number>((r) => { release = () => r(5); }), free: () => {}, pdata: null });
    const pending = s.alloc(null, 1, 10, 'd');
    await new Promise((r) => setImmediate(r));
    assert.throws(() => s.find(null, 5), rejectsCode('ENOENT'));
    release();
    assert.equal(await pending, 5);
    assert.equal(s.find(null, 5), 'd');
  });

  it('an allocator unregistered while its call is in flight gets the ID handed back; the call fails ENODEV', async () => {
    const s = new IoasidSpace({ profile: 'strict' });
    const held = new Set<number>();
    let release!: () => void;
    const ops: AllocatorOps = {
      alloc: () => new Promise<number>((r) => { release = () => { held.add(5); r(5); }; }),
      free: (id) => { held.delete(id); },
      pdata: null,
    };
    s.registerAllocator(ops);
    const pending = s.alloc(null, 1, 10);
    await new Promise((r) => setImmediate(r));
    s.unregisterAllocator(ops);
    release();
    await assert.rejects(pending, rejectsCode('ENODEV'));
    assert.equal(held.size, 0);
  });
});

describe('sets, quotas and events (behaviours 70-76, strict)', () => {
  it('behaviour 70: createSet rejects bad quotas (EINVAL), quotas above capacity (ENOSPC), duplicate tokens (EEXIST); 0 means no limit', async () => {
    const s = new IoasidSpace({ profile: 'strict', bits: 4 });
    assert.throws(() => s.createSet({ name: 'x', quota: -1 }), rejectsCode('EINVAL'));
    assert.throws(() => s.createSet({ name: 'x', quota: 1.5 }), rejectsCode('EINVAL'));
    assert.throws(() => s.createSet({ name: '' }), rejectsCode('EINVAL'));
    assert.throws(() => s.createSet({ name: 'x', quota: 17 }), rejectsCode('ENOSPC'));
    s.createSet({ name: 'vm1', token: 'mm-1' });
    assert.throws(() => s.createSet({ name: 'vm1 again', token: 'mm-1' }), rejectsCode('EEXIST'));
    const unlimited = s.createSet({ name: 'all', quota: 0 });
    for (let i = 0; i < 16; i++) s.allocSync(unlimited, 0, 15);
    assert.equal(s.setCount(unlimited), 16);
  });

  it('behaviour 71: alloc in a set at its quota fails with EDQUOT and changes nothing', () => {
    const s = new IoasidSpace({ profile: 'strict' });
    const vm = s.createSet({ name: 'vm', quota: 2 });
    s.allocSync(vm, 1, 100);
    s.allocSync(vm, 1, 100);
    assert.throws(() => s.allocSync(vm, 1, 100), rejectsCode('EDQUOT'));
    assert.equal(s.size, 2);
    s.freeSync(1, vm);
    assert.equal(s.allocSync(vm, 1, 100), 1);
  });

  it('quotas are not enforced by the Linux profiles (the kernel core had none)', () => {
    const s = new IoasidSpace({ profile: 'linux-5.8' });
    const vm = s.createSet({ name: 'vm', quota: 1 });
    s.allocSync(vm, 1, 100);
    assert.doesNotThrow(() => s.allocSync(vm, 1, 100));
  });

  it('behaviour 72: destroying a set that still owns IDs is EBUSY', () => {
    const s = new IoasidSpace({ profile: 'strict' });
    const vm = s.createSet({ name: 'vm' });
    const id = s.allocSync(vm, 1, 100);
    assert.throws(() => s.destroySet(vm), rejectsCode('EBUSY'));
    s.freeSync(id);
    s.destroySet(vm);
    assert.equal(vm.destroyed, true);
  });

  it('freeing through the wrong set is EACCES and keeps the ID', () => {
    const s = new IoasidSpace({ profile: 'strict' });
    const a = s.createSet({ name: 'a' });
    const b = s.createSet({ name: 'b' });
    const id = s.allocSync(a, 1, 100);
    assert.throws(() => s.freeSync(id, b), rejectsCode('EACCES'));
    assert.equal(s.ownerOf(id), a);
  });

  it('freeAll of a set frees only its members, with work proportional to them (behaviour 69)', () => {
    const s = new IoasidSpace({ profile: 'strict' });
    const a = s.createSet({ name: 'a' });
    const b = s.createSet({ name: 'b' });
    const mine = [s.allocSync(a, 1, 100), s.allocSync(b, 1, 100), s.allocSync(a, 1, 100)];
    assert.deepEqual(s.freeAllSync(a), [mine[0], mine[2]]);
    assert.deepEqual(s.idsOf(b), [mine[1]]);
  });

  it('behaviour 75: notifiers run cpu, then iommu, then device, whatever the subscription order', () => {
    const s = new IoasidSpace({ profile: 'strict' });
    const order: string[] = [];
    s.subscribe(() => order.push('device'), { priority: 'device' });
    s.subscribe(() => order.push('iommu'), { priority: 'iommu' });
    s.subscribe(() => order.push('cpu'), { priority: 'cpu' });
    s.subscribe(() => order.push('iommu2'), { priority: 'iommu' });
    s.allocSync(null, 1, 10);
    assert.deepEqual(order, ['cpu', 'iommu', 'iommu2', 'device']);
  });

  it('events: alloc, bind, unbind, free with the owning set; set-scoped subscribers see only their set', () => {
    const s = new IoasidSpace({ profile: 'strict' });
    const a = s.createSet({ name: 'a' });
    const b = s.createSet({ name: 'b' });
    const all: IoasidEvent[] = [];
    const onlyA: IoasidEvent[] = [];
    s.subscribe((e) => all.push(e));
    s.subscribe((e) => onlyA.push(e), { set: a });
    const id = s.allocSync(a, 1, 10);
    s.allocSync(b, 1, 10);
    s.notify('bind', id, { device: '0000:00:02.0' });
    s.notify('unbind', id);
    s.freeSync(id);
    assert.deepEqual(all.map((e) => e.type), ['alloc', 'alloc', 'bind', 'unbind', 'free']);
    assert.deepEqual(onlyA.map((e) => `${e.type}:${e.id}`), ['alloc:1', 'bind:1', 'unbind:1', 'free:1']);
    assert.throws(() => s.notify('bind', 99), rejectsCode('ENOENT'));
  });

  it('a throwing subscriber is logged and does not undo the change', () => {
    const logs: string[] = [];
    const s = new IoasidSpace({ profile: 'strict', log: (_l, m) => logs.push(m) });
    s.subscribe(() => { throw new Error('boom'); });
    const id = s.allocSync(null, 1, 10);
    assert.equal(s.has(id), true);
    assert.ok(logs.some((m) => /notifier failed/.test(m)));
  });

  it('behaviour 73/74/76 are not adopted: documented in docs/core.md', () => {
    // SPIDs (73) belong to the host layer (guest PASID == host PASID here); strict refuses to free
    // a referenced ID (EBUSY) instead of a FREE_PENDING state (74); set-scoped subscriptions need
    // the set to exist (76). This test pins the refusal of a subscription to a destroyed set.
    const s = new IoasidSpace({ profile: 'strict' });
    const gone = s.createSet({ name: 'gone' });
    s.destroySet(gone);
    assert.throws(() => s.subscribe(() => {}, { set: gone }), rejectsCode('EINVAL'));
  });
});

describe('quarantine and policies through the space', () => {
  it('a freed ID waits in quarantine until released', () => {
    const s = new IoasidSpace({ profile: 'strict', quarantine: true });
    const id = s.allocSync(null, 1, 10);
    s.freeSync(id);
    assert.notEqual(s.allocSync(null, 1, 10), id);
    assert.deepEqual(s.quarantined(), [id]);
    assert.equal(s.release(id), true);
    assert.equal(s.allocSync(null, 1, 10), id);
  });

  it('cyclic policy hands out the next ID after the last issued', () => {
    const s = new IoasidSpace({ profile: 'strict', policy: 'cyclic' });
    const a = s.allocSync(null, 1, 10);
    s.freeSync(a);
    assert.equal(s.allocSync(null, 1, 10), a + 1);
  });
});

describe('snapshot and restore', () => {
  it('round-trips sets, records, refs, quarantine and cursor', () => {
    const s = new IoasidSpace({ profile: 'strict', quarantine: true, policy: 'cyclic' });
    const vm = s.createSet({ name: 'vm', quota: 5, token: 'vm-1' });
    const a = s.allocSync(vm, 1, 100);
    s.allocSync(null, 1, 100);
    s.get(a);
    const c = s.allocSync(vm, 1, 100);
    s.freeSync(c);
    const snap = JSON.parse(JSON.stringify(s.snapshot()));
    const t = new IoasidSpace({ profile: 'strict', quarantine: true, policy: 'cyclic' });
    const [vm2] = t.restore(snap);
    assert.deepEqual(t.snapshot(), s.snapshot());
    assert.equal(t.ownerOf(a), vm2);
    assert.equal(t.refcount(a), 2);
    assert.equal(t.allocSync(null, 1, 100), s.allocSync(null, 1, 100));
    t.checkInvariants();
  });

  it('a space that never allocated cyclically (cursor min - 1 = -1) restores its own snapshot', () => {
    const s = new IoasidSpace({ profile: 'strict' });
    s.allocSync(s.createSet({ name: 'vm' }), 1, 100);
    assert.equal(s.snapshot().cursor, -1);
    const t = new IoasidSpace({ profile: 'strict' });
    t.restore(JSON.parse(JSON.stringify(s.snapshot())));
    assert.deepEqual(t.snapshot(), s.snapshot());
  });

  it('rejects malformed or inconsistent input with EINVAL naming the field, and changes nothing', () => {
    const s = new IoasidSpace({ profile: 'strict' });
    const vm = s.createSet({ name: 'vm', quota: 1 });
    s.allocSync(vm, 1, 100);
    const good = s.snapshot();
    const t = new IoasidSpace({ profile: 'strict' });
    const keep = t.createSet({ name: 'keep' });
    t.allocSync(keep, 1, 10);
    const before = JSON.stringify(t.snapshot());
    const mutations: [string, (x: any) => unknown][] = [
      ['null', () => null],
      ['format', (x) => ({ ...x, format: 'other' })],
      ['profile', (x) => ({ ...x, profile: 'linux-5.8' })],
      ['sets', (x) => ({ ...x, sets: 'no' })],
      ['duplicate id', (x) => ({ ...x, tables: [{ allocator: 'default', records: [[1, 0, 1], [1, 0, 1]] }] })],
      ['unknown set', (x) => ({ ...x, tables: [{ allocator: 'default', records: [[1, 9, 1]] }] })],
      ['over quota', (x) => ({ ...x, tables: [{ allocator: 'default', records: [[1, 0, 1], [2, 0, 1]] }] })],
      ['id out of range', (x) => ({ ...x, tables: [{ allocator: 'default', records: [[0x100000, -1, 1]] }] })],
      ['refs zero', (x) => ({ ...x, tables: [{ allocator: 'default', records: [[1, -1, 0]] }] })],
      ['extra field', (x) => ({ ...x, evil: true })],
      ['custom table without allocator', (x) => ({ ...x, tables: [...x.tables, { allocator: 0, records: [] }] })],
      ['quarantine when off', (x) => ({ ...x, quarantined: [5] })],
      ['proto pollution', () => JSON.parse('{"__proto__": {"x": 1}, "format": "ioasid-space"}')],
    ];
    for (const [what, mutate] of mutations) {
      assert.throws(() => t.restore(mutate(structuredClone(good))), (e: unknown) => e instanceof IoasidError && e.code === 'EINVAL', what);
      assert.equal(JSON.stringify(t.snapshot()), before, what);
    }
    assert.equal(t.ownerOf(1), keep);
  });
});
