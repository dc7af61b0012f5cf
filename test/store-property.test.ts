/**
 * Differential property test: random sequences of batches (most of them breaking some rule) are
 * applied to the memory backend (the reference) and to the SQLite backend in step. Both must give
 * the same outcome for every batch (resolved, or the same errno at the same mutation index), the
 * same state after a restart, and every state `apply` produces must be one `open` accepts.
 */
import { after, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { IoasidError } from '../src/core/index.ts';
import { MemoryStore, SqliteStore, validateStoredState, type Mutation } from '../src/store/index.ts';

const dir = mkdtempSync(join(tmpdir(), 'ioasid-store-prop-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let seq = 0;

// A small universe, so that batches collide often.
const vmId = fc.constantFrom('a', 'b', 'c');
const owner = fc.oneof({ weight: 4, arbitrary: vmId }, { weight: 1, arbitrary: fc.constant(null) });
const segment = fc.constantFrom(0, 1, 2);
const bdf = fc.constantFrom('0000:00:01.0', '0000:00:02.0', '0001:00:03.1');
const pasid = fc.integer({ min: 1, max: 8 });
const time = fc.integer({ min: 0, max: 5 });
const tokenHash = fc.constantFrom('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 'cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc');

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 2, arbitrary: fc.record({ op: fc.constant('putVm' as const), row: fc.record({ id: vmId, quota: fc.constantFrom(0, 1, 2, 3), tokenHash: tokenHash, createdAt: time }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('setTokenHash' as const), vm: vmId, tokenHash }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('deleteVm' as const), id: vmId }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('putViommu' as const), row: fc.record({ vm: vmId, segment, layout: fc.constantFrom('A' as const, 'B' as const), rangeExtension: fc.boolean(), pasBit: fc.constantFrom(0, 1), pss: fc.constantFrom(9, 19), registers: fc.constantFrom(null, '{"r":1}') }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('setRegisters' as const), vm: vmId, segment, registers: fc.constantFrom('{"r":2}', '{}') }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('deleteViommu' as const), vm: vmId, segment }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('putDevice' as const), row: fc.record({ vm: vmId, bdf, segment, pasidBits: fc.constantFrom(1, 20) }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('deleteDevice' as const), vm: vmId, bdf }) },
  { weight: 5, arbitrary: fc.record({ op: fc.constant('insertPasid' as const), row: fc.record({ pasid, vm: owner, allocatedAt: time }) }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('deletePasid' as const), pasid, vm: owner }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('putBinding' as const), row: fc.record({ pasid, vm: vmId, bdf, boundAt: time }) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('deleteBinding' as const), pasid, bdf }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('putMeta' as const), row: fc.record({ key: fc.constantFrom('k1', 'k2'), value: fc.constantFrom('', 'v') }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('deleteMeta' as const), key: fc.constantFrom('k1', 'k2') }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('appendEvents' as const), events: fc.array(fc.record({ at: time, type: fc.constantFrom('alloc', 'free'), vm: owner, body: fc.constant('{}') }), { minLength: 1, maxLength: 3 }) }) },
);
const batch = fc.oneof({ weight: 3, arbitrary: fc.tuple(mutation) }, { weight: 1, arbitrary: fc.array(mutation, { minLength: 2, maxLength: 4 }) });
const batches = fc.array(batch, { minLength: 1, maxLength: 60, size: 'medium' });

/** Each run starts from two VMs with a vIOMMU and a device each, so that most ops can succeed. */
const PRELUDE: Mutation[] = [
  { op: 'putVm', row: { id: 'a', quota: 3, tokenHash: 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', createdAt: 0 } },
  { op: 'putVm', row: { id: 'b', quota: 0, tokenHash: 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', createdAt: 0 } },
  { op: 'putViommu', row: { vm: 'a', segment: 0, layout: 'A', rangeExtension: false, pasBit: 0, pss: 19, registers: null } },
  { op: 'putViommu', row: { vm: 'b', segment: 1, layout: 'B', rangeExtension: true, pasBit: 0, pss: 19, registers: null } },
  { op: 'putDevice', row: { vm: 'a', bdf: '0000:00:01.0', segment: 0, pasidBits: 20 } },
  { op: 'putDevice', row: { vm: 'b', bdf: '0000:00:02.0', segment: 1, pasidBits: 20 } },
];

function outcome(e: unknown): string {
  if (!(e instanceof IoasidError)) throw e;
  return `${e.code}@${String(e.details['index'])}`;
}

it('memory and SQLite agree on every batch, and apply never produces a state open would refuse', { timeout: 60_000 }, async () => {
  let applied = 0;
  let refused = 0;
  await fc.assert(
    fc.asyncProperty(batches, async (bs) => {
      const mem = new MemoryStore();
      const path = join(dir, `p${++seq}.db`);
      const sql = new SqliteStore(path, { synchronous: 'normal' });
      await mem.open();
      await sql.open();
      await mem.apply(PRELUDE);
      await sql.apply(PRELUDE);
      // Submit all batches in one tick to SQLite (one group commit) and one by one to memory.
      const sqlOutcomes = bs.map((b) => sql.apply(b).then((a) => `ok@${a.seq}`, outcome));
      const memOutcomes: string[] = [];
      for (const b of bs) {
        memOutcomes.push(await mem.apply(b).then((a) => `ok@${a.seq}`, outcome));
        validateStoredState(mem.snapshot()); // throws if apply let a broken state through
      }
      assert.deepEqual(await Promise.all(sqlOutcomes), memOutcomes);
      applied += memOutcomes.filter((o) => o.startsWith('ok')).length;
      refused += memOutcomes.filter((o) => !o.startsWith('ok')).length;
      await sql.close();
      const reopened = new SqliteStore(path);
      assert.deepEqual(await reopened.open(), mem.snapshot());
      await reopened.close();
      await mem.close();
      rmSync(path, { force: true });
      rmSync(`${path}-wal`, { force: true });
    }),
    { numRuns: 200 },
  );
  assert.ok(applied > 200 && refused > 200, `the generator must exercise both paths (${applied} applied, ${refused} refused)`);
});
