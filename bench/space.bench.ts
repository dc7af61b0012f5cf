/**
 * IoasidSpace benchmark (issue: core). A 2^20 PASID space with one set:
 *  - the synchronous path: alloc+free pairs at 50 % occupancy (free a random live ID, allocate
 *    one), target at most 150 ns per pair;
 *  - the asynchronous path (`alloc`/`free` returning promises) on the same workload, reported;
 *  - memory of the per-ID records for 1,000,000 allocated IDs with sets and no private data,
 *    target at most 16 bytes per ID (typed arrays, not an object per ID).
 * Each figure is the median of 3 repetitions, each the median of 10 equal blocks after 2,000,000
 * untimed warm-up pairs (the JIT settles after about a million; the machine is shared and noisy). Writes bench/results/space.json.
 *
 *   node --import tsx bench/space.bench.ts
 */
import { IoasidSpace, PASID_MAX, PASID_MIN } from '../src/core/index.ts';
import { XorShift32, median, nowNs, saveResult } from './util.ts';

const PAIRS = 2_000_000;
const ASYNC_PAIRS = 500_000;
const REPS = 3;
const TARGETS = { syncNsPerPair: 150, recordBytesPerId: 16 };

function filled(occupancy: number): { space: IoasidSpace; live: Uint32Array; n: number; set: ReturnType<IoasidSpace['createSet']> } {
  const space = new IoasidSpace({ profile: 'strict' });
  const set = space.createSet({ name: 'vm' });
  const n = Math.floor((PASID_MAX - PASID_MIN + 1) * occupancy);
  const live = new Uint32Array(n);
  for (let i = 0; i < n; i++) live[i] = space.allocSync(set, PASID_MIN, PASID_MAX);
  return { space, live, n, set };
}

const BLOCKS = 10;
const WARMUP = 2_000_000;

/** ns per pair: the median of BLOCKS equal blocks (robust to a noisy, shared machine). */
function syncChurn(seed: number): number {
  const { space, live, n, set } = filled(0.5);
  const rng = new XorShift32(seed);
  const per = PAIRS / BLOCKS;
  // Warm up (untimed): the JIT settles after about a million pairs; a host runs for days.
  for (let i = 0; i < WARMUP; i++) {
    const k = rng.below(n);
    space.freeSync(live[k] as number, set);
    live[k] = space.allocSync(set, PASID_MIN, PASID_MAX);
  }
  const blocks: number[] = [];
  for (let b = 0; b < BLOCKS; b++) {
    const t0 = nowNs();
    for (let i = 0; i < per; i++) {
      const k = rng.below(n);
      space.freeSync(live[k] as number, set);
      live[k] = space.allocSync(set, PASID_MIN, PASID_MAX);
    }
    blocks.push(Number(nowNs() - t0) / per);
  }
  return median(blocks);
}

async function asyncChurn(seed: number): Promise<number> {
  const { space, live, n, set } = filled(0.5);
  const rng = new XorShift32(seed);
  const t0 = nowNs();
  for (let i = 0; i < ASYNC_PAIRS; i++) {
    const k = rng.below(n);
    await space.free(live[k] as number, set);
    live[k] = await space.alloc(set, PASID_MIN, PASID_MAX);
  }
  return Number(nowNs() - t0) / ASYNC_PAIRS;
}

function memory(): { recordBytesPerId: number; engineKiB: number } {
  const space = new IoasidSpace({ profile: 'strict' });
  const sets = Array.from({ length: 100 }, (_, i) => space.createSet({ name: `vm${i}` }));
  const N = 1_000_000;
  for (let i = 0; i < N; i++) space.allocSync(sets[i % 100] ?? null, PASID_MIN, PASID_MAX);
  const m = space.memoryBytes();
  return { recordBytesPerId: m.records / N, engineKiB: m.engine / 1024 };
}

const sync = median(Array.from({ length: REPS }, (_, r) => syncChurn(0x1234 + r)));
const asyncs: number[] = [];
for (let r = 0; r < REPS; r++) asyncs.push(await asyncChurn(0x5678 + r));
const asyncNs = median(asyncs);
const mem = memory();

const result = {
  workload: { universe: PASID_MAX - PASID_MIN + 1, occupancy: 0.5, pairs: PAIRS, asyncPairs: ASYNC_PAIRS, reps: REPS },
  syncNsPerPair: Number(sync.toFixed(1)),
  asyncNsPerPair: Number(asyncNs.toFixed(1)),
  asyncOverSync: Number((asyncNs / sync).toFixed(2)),
  recordBytesPerId: Number(mem.recordBytesPerId.toFixed(2)),
  engineKiBFor1MIds: Number(mem.engineKiB.toFixed(1)),
  targets: TARGETS,
  pass: { syncNsPerPair: sync <= TARGETS.syncNsPerPair, recordBytesPerId: mem.recordBytesPerId <= TARGETS.recordBytesPerId },
};
console.log('IoasidSpace, 2^20 PASIDs, one set, 50 % occupancy (median of 3)');
console.log(`  sync  alloc+free pair : ${result.syncNsPerPair} ns   (target <= ${TARGETS.syncNsPerPair})`);
console.log(`  async alloc+free pair : ${result.asyncNsPerPair} ns   (${result.asyncOverSync}x sync)`);
console.log(`  per-ID records, 1M IDs: ${result.recordBytesPerId} bytes/ID (target <= ${TARGETS.recordBytesPerId}); engine ${result.engineKiBFor1MIds} KiB`);
console.log(`saved ${saveResult('space', result)}`);
