/**
 * Store benchmark (docs/store.md): applies per second for single-mutation batches with N
 * concurrent callers. Each caller loops "insertPasid p; deletePasid p" on its own PASIDs (a VM
 * with a non-zero quota, so the quota count runs), awaiting each apply before the next, as the
 * service does per request. Backends: memory; SQLite with synchronous=FULL (the default) and
 * NORMAL; SQLite FULL with one caller, which shows what group commit buys. The SQLite file is in
 * os.tmpdir(). Median of 3 runs of 2 s each. Writes bench/results/store.json.
 *
 *   node --import tsx bench/store.bench.ts
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MemoryStore, SqliteStore, type SqliteSyncMode, type Store, type StoreStats } from '../src/store/index.ts';

const RUN_MS = 2000;
const WARMUP_MS = 300;
const REPS = 3;
const VM = 'bench';

interface Config {
  readonly name: string;
  readonly callers: number;
  readonly make: (dir: string) => Store;
}

const sqlite = (sync: SqliteSyncMode) => (dir: string) => new SqliteStore(join(dir, 'state.db'), { synchronous: sync });
const CONFIGS: Config[] = [
  { name: 'memory, 16 callers', callers: 16, make: () => new MemoryStore() },
  { name: 'sqlite FULL, 16 callers', callers: 16, make: sqlite('full') },
  { name: 'sqlite NORMAL, 16 callers', callers: 16, make: sqlite('normal') },
  { name: 'sqlite FULL, 1 caller', callers: 1, make: sqlite('full') },
];

interface Sample {
  appliesPerSec: number;
  commitsPerSec: number;
  batchesPerCommit: number;
  p50us: number;
  p99us: number;
}

async function once(cfg: Config): Promise<Sample> {
  const dir = mkdtempSync(join(tmpdir(), 'ioasid-store-bench-'));
  const store = cfg.make(dir);
  try {
    await store.open();
    await store.apply([{ op: 'putVm', row: { id: VM, quota: 0xfffff, tokenHash: 'a'.repeat(64), createdAt: 0 } }]);
    // Phases are read from the clock inside the loop, not from timers: the memory backend resolves
    // in a microtask, so its callers never yield to the timer queue.
    const tWarm = performance.now() + WARMUP_MS;
    const tEnd = tWarm + RUN_MS;
    let s0: StoreStats | undefined;
    let applies = 0;
    const lat: number[] = [];
    const caller = async (c: number) => {
      const base = 1 + c * 1000;
      for (let i = 0; ; i++) {
        const pasid = base + (i % 1000);
        const t0 = performance.now();
        if (t0 >= tEnd) return;
        if (t0 >= tWarm) s0 ??= store.stats();
        await store.apply([{ op: 'insertPasid', row: { pasid, vm: VM, allocatedAt: i } }]);
        const t1 = performance.now();
        await store.apply([{ op: 'deletePasid', pasid, vm: VM }]);
        const t2 = performance.now();
        if (t0 >= tWarm && t2 < tEnd) {
          applies += 2;
          lat.push(t1 - t0, t2 - t1);
        }
      }
    };
    await Promise.all(Array.from({ length: cfg.callers }, (_, c) => caller(c)));
    const s1 = store.stats();
    const secs = RUN_MS / 1000;
    if (s0 === undefined) throw new Error('no sample');
    lat.sort((a, b) => a - b);
    const commits = s1.commits - s0.commits;
    const batches = s1.batches - s0.batches;
    return {
      appliesPerSec: Math.round(applies / secs),
      commitsPerSec: Math.round(commits / secs),
      batchesPerCommit: Math.round((batches / Math.max(commits, 1)) * 10) / 10,
      p50us: Math.round((lat[Math.floor(lat.length * 0.5)] ?? 0) * 1000),
      p99us: Math.round((lat[Math.floor(lat.length * 0.99)] ?? 0) * 1000),
    };
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

function median(xs: Sample[]): Sample {
  const sorted = [...xs].sort((a, b) => a.appliesPerSec - b.appliesPerSec);
  return sorted[Math.floor(sorted.length / 2)]!;
}

const metrics: Record<string, Sample & { runs: number[] }> = {};
for (const cfg of CONFIGS) {
  const samples: Sample[] = [];
  for (let r = 0; r < REPS; r++) samples.push(await once(cfg));
  metrics[cfg.name] = { ...median(samples), runs: samples.map((s) => s.appliesPerSec) };
  const m = metrics[cfg.name]!;
  console.log(`${cfg.name.padEnd(28)} ${String(m.appliesPerSec).padStart(8)} applies/s  ${String(m.commitsPerSec).padStart(6)} commits/s  ${String(m.batchesPerCommit).padStart(5)} batches/commit  p50 ${m.p50us} us  p99 ${m.p99us} us`);
}

const result = {
  benchmark: 'store',
  node: process.version,
  date: new Date().toISOString(),
  workload: {
    mutation: 'single-mutation batches, alternating insertPasid / deletePasid per caller, each awaited',
    runMs: RUN_MS,
    warmupMs: WARMUP_MS,
    repetitions: REPS,
    sqliteDir: tmpdir(),
  },
  metrics,
};
const outDir = join(dirname(fileURLToPath(import.meta.url)), 'results');
mkdirSync(outDir, { recursive: true });
writeFileSync(join(outDir, 'store.json'), `${JSON.stringify(result, null, 2)}\n`);
console.log(`wrote ${join(outDir, 'store.json')}`);
