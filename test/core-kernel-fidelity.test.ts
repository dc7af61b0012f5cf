/**
 * The Linux profiles against drivers/iommu/ioasid.c itself (its three forms: v5.5-v5.10,
 * v5.11-v5.17, v5.18-v6.3): each test names the kernel function and versions whose behaviour it
 * pins, and strict's own rule beside it. Where the kernel's code would corrupt memory the Linux
 * profiles log a `hazard` (details.hazard names the kind).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  CORE_HAZARDS, INVALID_IOASID, IoasidError, IoasidSpace,
  type AllocatorOps, type LogLevel, type Profile,
} from '../src/core/index.ts';

const LINUX: readonly Profile[] = ['linux-5.8', 'linux-5.11', 'linux-5.18'];

interface Logged { level: LogLevel; message: string; details: Record<string, unknown> }

function space(profile: Profile, bits?: number) {
  const logs: Logged[] = [];
  const s = new IoasidSpace({ profile, ...(bits !== undefined ? { bits } : {}), log: (level, message, details = {}) => logs.push({ level, message, details }) });
  const hazards = () => logs.filter((l) => l.level === 'hazard');
  return { s, logs, hazards };
}

const code = (c: string) => (e: unknown) => e instanceof IoasidError && e.code === c;

/** Shared functions: ops made from them form one group. */
function group(answer: (min: number, max: number) => number = () => 100) {
  const calls: { op: string; min?: number; max?: number; id?: number; pdata: unknown }[] = [];
  const alloc = (min: number, max: number, pdata: unknown): number => {
    calls.push({ op: 'alloc', min, max, pdata });
    return answer(min, max);
  };
  const free = (id: number, pdata: unknown): void => {
    calls.push({ op: 'free', id, pdata });
  };
  const ops = (pdata: unknown): AllocatorOps => ({ alloc, free, pdata });
  return { calls, ops };
}

async function release(s: IoasidSpace, id: number): Promise<void> {
  if (s.profile === 'linux-5.11') await s.put(id);
  else await s.free(id);
}

describe('ioasid_unregister_allocator (v5.5-v6.3)', () => {
  for (const p of [...LINUX, 'strict'] as const) {
    it(`ioasid_unregister_allocator (v5.5-v6.3): an ops that is not a member of a shared group of two removes nothing [${p}]`, async () => {
      const { s } = space(p);
      let n = 0;
      const g = group(() => ++n);
      const a = g.ops('a');
      const b = g.ops('b');
      s.registerAllocator(a);
      s.registerAllocator(b);
      const id = await s.alloc(null, 1, 1000, 'bound');
      // Never registered, same functions: the kernel walks the slist, finds no sops == ops.
      s.unregisterAllocator(g.ops('stranger'));
      // Had the stranger removed a member, unregistering a now would drop the whole group.
      s.unregisterAllocator(a);
      assert.equal(s.allocatorGroups, 1, 'b is still registered, so its group stays');
      assert.notEqual(s.activeAllocator(), null);
      assert.equal(s.find(null, id), 'bound', 'the outstanding ID is still tracked');
      const next = await s.alloc(null, 1, 1000);
      assert.equal(next, 2);
      // Linux keeps a's stale pdata (behaviour 32); strict re-pointed the group to b.
      assert.equal(g.calls.filter((c) => c.op === 'alloc').at(-1)?.pdata, p === 'strict' ? 'b' : 'a');
      s.unregisterAllocator(b);
      assert.equal(s.allocatorGroups, 0);
    });
  }

  for (const p of LINUX) {
    it(`ioasid_unregister_allocator (v5.5-v6.3): a group of one goes even for another ops with the same functions (list_is_singular) [${p}]`, () => {
      const { s } = space(p);
      const g = group();
      s.registerAllocator(g.ops('a'));
      s.unregisterAllocator(g.ops('stranger'));
      assert.equal(s.allocatorGroups, 0);
      assert.equal(s.activeAllocator(), null);
    });
  }
});

describe('default_alloc (v5.5-v6.3): the default allocator is a u32 XArray', () => {
  for (const p of LINUX) {
    it(`default_alloc (v5.5-v6.3): xa_alloc over any [min, max] below INVALID_IOASID: alloc(0x100000, 0x100010) succeeds without bits [${p}]`, async () => {
      const { s } = space(p);
      assert.equal(s.bits, 32);
      assert.equal(await s.alloc(null, 0x100000, 0x100010), 0x100000);
      assert.equal(await s.alloc(null, 0xfffffff0, 0xfffffffe), 0xfffffff0);
    });
  }

  it('strict keeps a PCIe PASID universe (20 bits): alloc(0x100000, 0x100010) is ENOSPC (ours, documented)', async () => {
    const { s } = space('strict');
    assert.equal(s.bits, 20);
    await assert.rejects(s.alloc(null, 0x100000, 0x100010), code('ENOSPC'));
  });

  it('linux-6.x: ida_alloc_range (v6.4+) stops at INT_MAX: 31 bits', async () => {
    const { s } = space('linux-6.x');
    assert.equal(s.bits, 31);
    assert.equal(await s.alloc(null, 0x100000, 0x100010), 0x100000);
    await assert.rejects(s.alloc(null, 0x80000000, 0x80000001), code('ENOSPC'));
    assert.throws(() => s.registerAllocator(group().ops(1)), code('EOPNOTSUPP'));
  });
});

describe('ioasid_alloc (v5.5-v6.3): a custom allocator gets its range unchecked', () => {
  for (const p of LINUX) {
    it(`ioasid_alloc (v5.5-v6.3): ops->alloc(101, 2) is called, and its answer (100) is the result [${p}]`, async () => {
      const { s } = space(p);
      const g = group(() => 100);
      s.registerAllocator(g.ops('c'));
      assert.equal(await s.alloc(null, 101, 2), 100);
      assert.deepEqual(g.calls, [{ op: 'alloc', min: 101, max: 2, pdata: 'c' }]);
    });

    it(`ioasid_alloc (v5.5-v6.3): a range-respecting allocator answers INVALID for (101, 2), but it was called [${p}]`, async () => {
      const { s, logs } = space(p);
      const g = group((min, max) => (min > max ? INVALID_IOASID : min));
      s.registerAllocator(g.ops('c'));
      await assert.rejects(s.alloc(null, 101, 2), code('ENOSPC'));
      assert.equal(g.calls.length, 1);
      assert.ok(logs.some((l) => l.level === 'error' && /Failed ASID allocation/.test(l.message)), 'pr_err is error');
    });

    it(`ioasid_alloc (v5.5-v6.3): max 0xFFFFFFFF reaches ops->alloc as it is; what an ioasid_t cannot carry stays EINVAL [${p}]`, async () => {
      const { s } = space(p);
      const g = group(() => 7);
      s.registerAllocator(g.ops('c'));
      assert.equal(await s.alloc(null, 0xffffffff, 0xffffffff), 7);
      assert.deepEqual(g.calls.map((c) => [c.min, c.max]), [[0xffffffff, 0xffffffff]]);
      for (const [min, max] of [[Number.NaN, 5], [-1, 5], [1.5, 5], [1, 0x100000000], [1, -3]] as const) {
        await assert.rejects(s.alloc(null, min, max), code('EINVAL'));
      }
      assert.equal(g.calls.length, 1, 'no call for arguments the kernel could not have been given');
    });

    it(`ioasid_alloc (v5.5-v6.3): the default allocator still refuses min > max (xa_alloc) [${p}]`, async () => {
      const { s } = space(p);
      await assert.rejects(s.alloc(null, 101, 2), code('EINVAL'));
    });
  }

  it('strict checks [min, max] first: alloc(101, 2) is EINVAL and the allocator is never called', async () => {
    const { s } = space('strict');
    const g = group(() => 100);
    s.registerAllocator(g.ops('c'));
    await assert.rejects(s.alloc(null, 101, 2), code('EINVAL'));
    assert.equal(g.calls.length, 0);
  });
});

describe('INVALID_IOASID as an ID (v5.5-v6.3): xa_load finds nothing', () => {
  for (const p of LINUX) {
    it(`ioasid_find, ioasid_free/put, ioasid_get, ioasid_set_data (v5.5-v6.3): 0xFFFFFFFF is an unknown ID, not EINVAL [${p}]`, async () => {
      const { s, logs } = space(p);
      await s.alloc(null, 1, 10);
      assert.throws(() => s.find(null, INVALID_IOASID), code('ENOENT'));
      assert.throws(() => s.setData(INVALID_IOASID, 'x'), code('ENOENT'), 'set_data returns -ENOENT');
      await release(s, INVALID_IOASID);
      assert.ok(logs.some((l) => l.level === 'error' && l.message === 'Trying to free unknown IOASID 4294967295'), 'pr_err is error');
      if (p === 'linux-5.11') {
        s.get(INVALID_IOASID);
        assert.equal(logs.at(-1)?.level, 'warn', 'ioasid_get: WARN_ON');
        assert.equal(await s.put(INVALID_IOASID), false);
      }
      assert.equal(s.size, 1);
      assert.equal(logs.filter((l) => l.level === 'hazard').length, 0, 'an empty slot is no hazard');
    });
  }

  it('strict: INVALID_IOASID as an ID is EINVAL for each call', async () => {
    const { s } = space('strict');
    assert.throws(() => s.find(null, INVALID_IOASID), code('EINVAL'));
    assert.throws(() => s.setData(INVALID_IOASID, 'x'), code('EINVAL'));
    assert.throws(() => s.get(INVALID_IOASID), code('EINVAL'));
    await assert.rejects(s.free(INVALID_IOASID), code('EINVAL'));
    await assert.rejects(s.put(INVALID_IOASID), code('EINVAL'));
  });
});

describe('ioasid_alloc + default_alloc (v5.5-v6.3): an allocation that lands on 0xFFFFFFFF', () => {
  for (const p of LINUX) {
    it(`ioasid_alloc (v5.5-v6.3): alloc(0xFFFFFFFF, 0xFFFFFFFF) fails, the slot stays occupied, registration is EAGAIN, with a kernel-hazard warning [${p}]`, async () => {
      const { s, hazards } = space(p);
      await assert.rejects(s.alloc(null, 0xffffffff, 0xffffffff), code('ENOSPC'));
      assert.equal(s.size, 0, 'nothing handed out');
      assert.equal(s.danglingInvalid, true);
      assert.deepEqual(hazards().map((h) => [h.details.hazard, h.details.effect]), [['invalid-ioasid-entry', 'dangling']]);
      assert.match(hazards()[0]?.message ?? '', /ioasid_alloc, v5\.5-v6\.3/);
      const e = (() => {
        try {
          s.registerAllocator(group().ops('late'));
        } catch (err) {
          return err;
        }
        return null;
      })();
      assert.ok(e instanceof IoasidError && e.code === 'EAGAIN', 'Default allocator active with outstanding IOASID');
      assert.equal(s.allocatorGroups, 0);
      // xa_alloc finds the slot taken now: a plain failure, no second hazard.
      await assert.rejects(s.alloc(null, 0xffffffff, 0xffffffff), code('ENOSPC'));
      assert.equal(hazards().length, 1);
      // What follows is undefined in the kernel: reported, and answered as an empty slot.
      assert.throws(() => s.find(null, INVALID_IOASID), code('ENOENT'));
      assert.deepEqual(hazards().at(-1)?.details.effect, 'use-after-free');
      if (p === 'linux-5.11') {
        assert.equal(await s.put(INVALID_IOASID), false);
        assert.equal(hazards().at(-1)?.details.effect, 'use-after-free');
        assert.equal(s.danglingInvalid, true);
      } else {
        await s.free(INVALID_IOASID);
        assert.equal(hazards().at(-1)?.details.effect, 'double-free');
        assert.equal(s.danglingInvalid, false, 'default_free() erased the slot (then freed the entry twice)');
        s.registerAllocator(group().ops('now'));
        assert.equal(s.allocatorGroups, 1);
      }
    });

    it(`default_alloc (v5.5-v6.3): a range ending at 0xFFFFFFFF whose lower IDs are taken lands there too [${p}]`, async () => {
      const { s, hazards } = space(p);
      assert.equal(await s.alloc(null, 0xfffffffd, 0xffffffff), 0xfffffffd);
      assert.equal(await s.alloc(null, 0xfffffffd, 0xffffffff), 0xfffffffe);
      await assert.rejects(s.alloc(null, 0xfffffffd, 0xffffffff), code('ENOSPC'));
      assert.equal(hazards().length, 1);
      assert.deepEqual(s.ids(), [0xfffffffd, 0xfffffffe]);
      const snap = s.snapshot();
      assert.equal(snap.danglingInvalid, true);
      const t = space(p).s;
      t.restore(JSON.parse(JSON.stringify(snap)));
      assert.equal(t.danglingInvalid, true, 'the snapshot keeps the dangling slot');
      s.checkInvariants();
    });
  }

  it('strict: max 0xFFFFFFFF is EINVAL, nothing changes, registration still works', async () => {
    const { s, hazards } = space('strict', 32);
    await assert.rejects(s.alloc(null, 0xffffffff, 0xffffffff), code('EINVAL'));
    assert.equal(s.danglingInvalid, false);
    s.registerAllocator(group().ops('a'));
    assert.equal(hazards().length, 0);
    assert.throws(() => new IoasidSpace({ profile: 'strict' }).restore({ ...new IoasidSpace({ profile: 'strict' }).snapshot(), danglingInvalid: true }), code('EINVAL'));
  });
});

describe('ioasid_register_allocator (v5.5-v6.3): EEXIST that corrupts the list', () => {
  for (const p of LINUX) {
    it(`ioasid_register_allocator (v5.5-v6.3): the same primary registered twice is EEXIST with a kernel-hazard warning; a later unregister walks freed memory (hazard) [${p}]`, () => {
      const { s, logs, hazards } = space(p);
      const g = group();
      const a = g.ops('a');
      const b = g.ops('b');
      s.registerAllocator(a);
      s.registerAllocator(b);
      assert.throws(() => s.registerAllocator(a), code('EEXIST'));
      assert.equal(logs.find((l) => /already registered/.test(l.message))?.level, 'error', 'pr_err is error');
      assert.deepEqual(hazards().map((h) => [h.details.hazard, h.details.effect]), [['allocator-list-corruption', 'dangling']]);
      assert.equal(s.allocatorGroups, 1, 'our state stays consistent');
      s.unregisterAllocator(b);
      assert.deepEqual(hazards().at(-1)?.details.effect, 'freed-list-walk');
      s.unregisterAllocator(a);
      assert.equal(s.allocatorGroups, 0);
    });

    it(`ioasid_register_allocator (v5.5-v6.3): a secondary member registered again is added to the list twice (hazard) [${p}]`, () => {
      const { s, hazards } = space(p);
      const g = group();
      s.registerAllocator(g.ops('a'));
      const b = g.ops('b');
      s.registerAllocator(b);
      s.registerAllocator(b);
      assert.deepEqual(hazards().map((h) => h.details.effect), ['double-add']);
      assert.equal(hazards()[0]?.details.hazard, CORE_HAZARDS['allocator-list-corruption'].kind);
    });
  }

  it('strict: the same primary, or a secondary, registered twice is EEXIST and no hazard', () => {
    const { s, hazards } = space('strict');
    const g = group();
    const a = g.ops('a');
    const b = g.ops('b');
    s.registerAllocator(a);
    s.registerAllocator(b);
    assert.throws(() => s.registerAllocator(a), code('EEXIST'));
    assert.throws(() => s.registerAllocator(b), code('EEXIST'));
    s.unregisterAllocator(b);
    assert.equal(hazards().length, 0);
  });
});
