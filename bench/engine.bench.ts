/**
 * ID engine benchmark (DESIGN 3.5, workload from spec/lessons-from-peers.md).
 *
 * Universe 2^20 (IDs [1, 0xFFFFF]). Fill with 1,000,000 allocations (ns/alloc); then 5,000,000
 * pairs "free a random live ID, allocate one" at 95 % and at 50 % occupancy (ns/pair). Engine
 * lowest-free and cyclic, and number-allocator 1.0.14 on the same workload (fewer pairs: it is
 * slow). Engine figures are the median of 3 repetitions. Writes bench/results/engine.json.
 *
 *   node --import tsx bench/engine.bench.ts
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NumberAllocator } from 'number-allocator';
import { IdEngine, type AllocPolicy } from '../src/core/id-engine.ts';

const MIN = 1;
const MAX = 0xfffff;
const UNIVERSE = MAX - MIN + 1;
const FILL = 1_000_000;
const PAIRS = 5_000_000;
const NA_PAIRS = 500_000;
const REPS = 3;
const SEED = 0x9e3779b9;

const TARGETS = {
  fillNsPerAlloc: 40,
  churnNsPerPair: 60,
  speedupVsNumberAllocator: 8,
  kibPer2e20: 160,
};

/** The operations the workload needs; both the engine and number-allocator fit it. */
interface Subject {
  alloc(): number;
  free(id: number): void;
}

/** xorshift32, seeded. */
class XorShift {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 1;
  }
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s;
  }
  /** Uniform-enough integer in [0, n). */
  below(n: number): number {
    return this.next() % n;
  }
}

interface RunResult {
  fillNs: number;
  churn95Ns: number;
  churn50Ns: number;
  bytesAfterFill: number;
  bytesAfterChurn50: number;
}

function nowNs(): bigint {
  return process.hrtime.bigint();
}

function fill(s: Subject, live: Uint32Array, n: number): number {
  const t0 = nowNs();
  for (let i = 0; i < n; i++) {
    const id = s.alloc();
    if (id < 0) throw new Error(`fill: allocation ${i} failed`);
    live[i] = id;
  }
  return Number(nowNs() - t0) / n;
}

/** Free random live IDs (swap-remove) until `target` remain. */
function shrink(s: Subject, live: Uint32Array, count: number, target: number, rng: XorShift): number {
  let n = count;
  while (n > target) {
    const i = rng.below(n);
    s.free(live[i]!);
    n--;
    live[i] = live[n]!;
  }
  return n;
}

function churn(s: Subject, live: Uint32Array, n: number, pairs: number, rng: XorShift): number {
  const t0 = nowNs();
  for (let k = 0; k < pairs; k++) {
    const i = rng.below(n);
    s.free(live[i]!);
    const id = s.alloc();
    if (id < 0) throw new Error(`churn: allocation ${k} failed`);
    live[i] = id;
  }
  return Number(nowNs() - t0) / pairs;
}

function runWorkload(make: () => Subject & { memoryBytes?: () => number }, pairs: number): RunResult {
  const s = make();
  const rng = new XorShift(SEED);
  const live = new Uint32Array(UNIVERSE);
  const fillNs = fill(s, live, FILL);
  const bytesAfterFill = s.memoryBytes ? s.memoryBytes() : NaN;
  let n = shrink(s, live, FILL, Math.floor(UNIVERSE * 0.95), rng);
  const churn95Ns = churn(s, live, n, pairs, rng);
  n = shrink(s, live, n, Math.floor(UNIVERSE * 0.5), rng);
  const churn50Ns = churn(s, live, n, pairs, rng);
  const bytesAfterChurn50 = s.memoryBytes ? s.memoryBytes() : NaN;
  return { fillNs, churn95Ns, churn50Ns, bytesAfterFill, bytesAfterChurn50 };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function medianRuns(runs: RunResult[]): RunResult {
  return {
    fillNs: median(runs.map((r) => r.fillNs)),
    churn95Ns: median(runs.map((r) => r.churn95Ns)),
    churn50Ns: median(runs.map((r) => r.churn50Ns)),
    bytesAfterFill: median(runs.map((r) => r.bytesAfterFill)),
    bytesAfterChurn50: median(runs.map((r) => r.bytesAfterChurn50)),
  };
}

function engineSubject(policy: AllocPolicy): IdEngine {
  return new IdEngine({ min: MIN, max: MAX, policy });
}

function numberAllocatorSubject(): Subject {
  const na = new NumberAllocator(MIN, MAX);
  return {
    alloc(): number {
      const id = na.alloc();
      return id === null ? -1 : id;
    },
    free(id: number): void {
      na.free(id);
    },
  };
}

function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

// Warm-up: let the JIT see every path once on a smaller run.
{
  for (const policy of ['lowest', 'cyclic'] as const) {
    const e = engineSubject(policy);
    const live = new Uint32Array(UNIVERSE);
    const rng = new XorShift(1);
    fill(e, live, FILL);
    churn(e, live, shrink(e, live, FILL, UNIVERSE >>> 1, rng), 200_000, rng);
  }
}

const lowestRuns: RunResult[] = [];
const cyclicRuns: RunResult[] = [];
for (let r = 0; r < REPS; r++) {
  lowestRuns.push(runWorkload(() => engineSubject('lowest'), PAIRS));
  cyclicRuns.push(runWorkload(() => engineSubject('cyclic'), PAIRS));
}
const lowest = medianRuns(lowestRuns);
const cyclic = medianRuns(cyclicRuns);
const na = runWorkload(numberAllocatorSubject, NA_PAIRS);

const KIB = 1024;
const per2e20 = (bytes: number): number => (bytes / KIB) * (2 ** 20 / UNIVERSE);
const memFillKiB = per2e20(lowest.bytesAfterFill);
const memChurnKiB = per2e20(lowest.bytesAfterChurn50);
const memCyclicChurnKiB = per2e20(cyclic.bytesAfterChurn50);

const speedup95 = na.churn95Ns / lowest.churn95Ns;
const speedup50 = na.churn50Ns / lowest.churn50Ns;
const ratioCyclicFill = cyclic.fillNs / lowest.fillNs;
const ratioCyclic95 = cyclic.churn95Ns / lowest.churn95Ns;
const ratioCyclic50 = cyclic.churn50Ns / lowest.churn50Ns;

const pass = {
  lowestFill: lowest.fillNs <= TARGETS.fillNsPerAlloc,
  lowestChurn95: lowest.churn95Ns <= TARGETS.churnNsPerPair,
  lowestChurn50: lowest.churn50Ns <= TARGETS.churnNsPerPair,
  // "No slower" than lowest-free, with 10 % allowance for timer noise.
  cyclicNoSlower: ratioCyclicFill <= 1.1 && ratioCyclic95 <= 1.1 && ratioCyclic50 <= 1.1,
  speedupVsNumberAllocator:
    speedup95 >= TARGETS.speedupVsNumberAllocator && speedup50 >= TARGETS.speedupVsNumberAllocator,
  memory: Math.max(memFillKiB, memChurnKiB, memCyclicChurnKiB) <= TARGETS.kibPer2e20,
};

const rows: Array<[string, number, number, number]> = [
  ['engine lowest-free', lowest.fillNs, lowest.churn95Ns, lowest.churn50Ns],
  ['engine cyclic', cyclic.fillNs, cyclic.churn95Ns, cyclic.churn50Ns],
  [`number-allocator (${NA_PAIRS.toLocaleString('en')} pairs, 1 run)`, na.fillNs, na.churn95Ns, na.churn50Ns],
];
const w0 = Math.max(...rows.map((r) => r[0].length), 14);
const line = (a: string, b: string, c: string, d: string): string =>
  `${a.padEnd(w0)} | ${b.padStart(14)} | ${c.padStart(20)} | ${d.padStart(20)}`;
console.log(`ID engine benchmark: universe [${MIN}, 0x${MAX.toString(16)}], fill ${FILL}, churn ${PAIRS} pairs, node ${process.version}`);
console.log(line('implementation', 'fill ns/alloc', 'churn 95% ns/pair', 'churn 50% ns/pair'));
console.log(line('-'.repeat(w0), '-'.repeat(14), '-'.repeat(20), '-'.repeat(20)));
for (const [name, f, c95, c50] of rows) console.log(line(name, f.toFixed(1), c95.toFixed(1), c50.toFixed(1)));
console.log('');
console.log(`engine vs number-allocator on churn: ${speedup95.toFixed(1)}x at 95 %, ${speedup50.toFixed(1)}x at 50 % (target >= ${TARGETS.speedupVsNumberAllocator}x)`);
console.log(`cyclic / lowest: fill ${ratioCyclicFill.toFixed(2)}, churn 95 % ${ratioCyclic95.toFixed(2)}, churn 50 % ${ratioCyclic50.toFixed(2)}`);
console.log(`engine memory per 2^20 IDs: ${memFillKiB.toFixed(1)} KiB after fill, ${memChurnKiB.toFixed(1)} KiB after churn at 50 % (cyclic ${memCyclicChurnKiB.toFixed(1)} KiB; target <= ${TARGETS.kibPer2e20} KiB)`);
console.log(`targets: ${Object.entries(pass).map(([k, v]) => `${k} ${v ? 'PASS' : 'FAIL'}`).join(', ')}`);

const result = {
  benchmark: 'id-engine',
  node: process.version,
  date: new Date().toISOString(),
  workload: { min: MIN, max: MAX, universe: UNIVERSE, fill: FILL, pairs: PAIRS, numberAllocatorPairs: NA_PAIRS, repetitions: REPS, seed: SEED },
  metrics: {
    lowest: { fillNsPerAlloc: round(lowest.fillNs), churn95NsPerPair: round(lowest.churn95Ns), churn50NsPerPair: round(lowest.churn50Ns) },
    cyclic: { fillNsPerAlloc: round(cyclic.fillNs), churn95NsPerPair: round(cyclic.churn95Ns), churn50NsPerPair: round(cyclic.churn50Ns) },
    numberAllocator: { fillNsPerAlloc: round(na.fillNs), churn95NsPerPair: round(na.churn95Ns), churn50NsPerPair: round(na.churn50Ns) },
    speedupVsNumberAllocator: { churn95: round(speedup95, 2), churn50: round(speedup50, 2) },
    cyclicOverLowest: { fill: round(ratioCyclicFill, 3), churn95: round(ratioCyclic95, 3), churn50: round(ratioCyclic50, 3) },
    memoryKiBPer2e20: { afterFill: round(memFillKiB, 2), afterChurn50: round(memChurnKiB, 2), cyclicAfterChurn50: round(memCyclicChurnKiB, 2) },
    memoryBytes: { afterFill: lowest.bytesAfterFill, afterChurn50: lowest.bytesAfterChurn50 },
  },
  runs: { lowest: lowestRuns, cyclic: cyclicRuns },
  targets: { ...TARGETS, cyclic: 'no slower than lowest-free (ratio <= 1.1)' },
  pass,
  allPass: Object.values(pass).every((v) => v),
};

const outDir = join(dirname(fileURLToPath(import.meta.url)), 'results');
mkdirSync(outDir, { recursive: true });
writeFileSync(join(outDir, 'engine.json'), `${JSON.stringify(result, null, 2)}\n`);
console.log(`wrote ${join(outDir, 'engine.json')}`);
