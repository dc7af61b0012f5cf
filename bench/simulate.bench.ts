/**
 * Scenario runner benchmark: `ioasid simulate --random` (the same `runRandom` the command calls).
 *
 *  1. Headline: 100 VMs, 1,000,000 steps, seed 1, incremental check after every step and the full
 *     check every 10,000 steps (the command's defaults): steps per second, peak RSS and heap.
 *  2. Growth: 10, 100 and 1,000 VMs, 200,000 steps each (fewer steps than the headline, so the
 *     series stays quick): how steps/s and memory change with the number of VMs.
 *  3. What the checks cost: 100 VMs, 200,000 steps with no per-step check, with the incremental
 *     check only, and with the incremental check plus the full one every 10,000 steps; and the
 *     time of one full check on the final state (what "full check after every step" would add).
 *
 * Memory is sampled every 5,000 steps (process.memoryUsage: rss and heapUsed), after a GC at the
 * start (bench/run.ts passes --expose-gc). Writes bench/results/simulate.json.
 *
 *   node --import tsx --expose-gc bench/simulate.bench.ts            (or: npm run bench -- simulate)
 *   BENCH_QUICK=1 ... : a tenth of the steps, for a smoke run
 */
import os from 'node:os';
import { runRandom, type RunReport } from '../src/sim/index.ts';
import { saveResult } from './util.ts';

const QUICK = process.env.BENCH_QUICK === '1';
const HEADLINE = { vms: 100, steps: QUICK ? 100_000 : 1_000_000, seed: 1 };
const GROWTH_STEPS = QUICK ? 20_000 : 200_000;
const GROWTH_VMS = [10, 100, 1000];
const MB = 1024 * 1024;

interface Sampled {
  report: RunReport;
  peakRssMB: number;
  peakHeapMB: number;
  peakArrayBuffersMB: number;
  /** Largest heapUsed right after a forced GC (10 times per run): what the run keeps alive. */
  liveHeapMB: number;
  startRssMB: number;
  startHeapMB: number;
  wallMs: number;
}

function gc(): void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g !== undefined) g();
}

async function sampled(opts: Parameters<typeof runRandom>[0]): Promise<Sampled> {
  gc();
  const m0 = process.memoryUsage();
  let peakRss = m0.rss;
  let peakHeap = m0.heapUsed;
  let peakAb = m0.arrayBuffers;
  let live = 0;
  const gcEvery = Math.max(5000, Math.floor((opts?.steps ?? 0) / 10 / 5000) * 5000);
  const t0 = performance.now();
  const report = await runRandom({
    ...opts,
    progressEvery: 5000,
    onProgress: (done) => {
      const m = process.memoryUsage();
      if (m.rss > peakRss) peakRss = m.rss;
      if (m.heapUsed > peakHeap) peakHeap = m.heapUsed;
      if (m.arrayBuffers > peakAb) peakAb = m.arrayBuffers;
      if (done % gcEvery === 0) {
        gc();
        live = Math.max(live, process.memoryUsage().heapUsed);
      }
    },
  });
  const wallMs = performance.now() - t0;
  const m1 = process.memoryUsage();
  peakRss = Math.max(peakRss, m1.rss);
  peakHeap = Math.max(peakHeap, m1.heapUsed);
  if (!report.ok) throw new Error(`the benchmark run failed its checks: ${JSON.stringify(report.failure)}`);
  return { report, peakRssMB: peakRss / MB, peakHeapMB: peakHeap / MB, peakArrayBuffersMB: peakAb / MB, liveHeapMB: live / MB, startRssMB: m0.rss / MB, startHeapMB: m0.heapUsed / MB, wallMs };
}

const r1 = (x: number) => Math.round(x * 10) / 10;

function summary(s: Sampled): Record<string, unknown> {
  const r = s.report;
  const inUse = r.vms.filter((v) => v.alive).reduce((a, v) => a + v.used, 0);
  return {
    steps: r.steps.run,
    seconds: r1(r.durationMs / 1000),
    stepsPerSecond: Math.round(r.stepsPerSecond),
    usPerStep: Math.round((r.durationMs * 1000) / Math.max(1, r.steps.run) * 100) / 100,
    peakRssMB: r1(s.peakRssMB),
    peakHeapUsedMB: r1(s.peakHeapMB),
    liveHeapUsedMB: r1(s.liveHeapMB),
    peakArrayBuffersMB: r1(s.peakArrayBuffersMB),
    startRssMB: r1(s.startRssMB),
    startHeapUsedMB: r1(s.startHeapMB),
    fullChecks: r.checks.fullRuns,
    fullCheckMsTotal: r1(r.checks.fullMs),
    fullCheckMsEach: r1(r.checks.fullMs / Math.max(1, r.checks.fullRuns)),
    pasidsInUseAtEnd: inUse,
    vmsAliveAtEnd: r.vms.filter((v) => v.alive).length,
    outcomes: Object.fromEntries(Object.entries(r.byKind).map(([k, v]) => [k, { count: v.count, ok: v.ok, errors: v.errors }])),
  };
}

const load0 = os.loadavg();
console.log(`simulate --random: headline ${HEADLINE.vms} VMs x ${HEADLINE.steps.toLocaleString('en-US')} steps (load average ${load0.map((x) => x.toFixed(1)).join(' ')})`);

const headline = await sampled({ ...HEADLINE });
const h = summary(headline);
console.log(`  ${h.stepsPerSecond} steps/s, ${h.usPerStep} us/step, peak RSS ${h.peakRssMB} MB, peak heap ${h.peakHeapUsedMB} MB (live ${h.liveHeapUsedMB} MB), array buffers ${h.peakArrayBuffersMB} MB, ${h.fullChecks} full checks (${h.fullCheckMsEach} ms each)`);

const growth: Record<string, unknown>[] = [];
for (const vms of GROWTH_VMS) {
  const s = await sampled({ vms, steps: GROWTH_STEPS, seed: 1 });
  const x = summary(s);
  growth.push({ vms, ...x });
  console.log(`  growth ${String(vms).padStart(4)} VMs: ${x.stepsPerSecond} steps/s, peak RSS ${x.peakRssMB} MB, peak heap ${x.peakHeapUsedMB} MB (live ${x.liveHeapUsedMB} MB), array buffers ${x.peakArrayBuffersMB} MB, full check ${x.fullCheckMsEach} ms, ${x.pasidsInUseAtEnd} PASIDs in use at the end`);
}

const modes: Record<string, unknown>[] = [];
for (const [name, o] of [
  ['no per-step check (one full check at the end)', { incremental: false, fullEvery: 0 }],
  ['incremental check after every step', { incremental: true, fullEvery: 0 }],
  ['incremental after every step + full every 10,000 (default)', { incremental: true, fullEvery: 10_000 }],
] as const) {
  const s = await sampled({ vms: 100, steps: GROWTH_STEPS, seed: 1, ...o });
  const x = summary(s);
  modes.push({ mode: name, incremental: o.incremental, fullEvery: o.fullEvery, stepsPerSecond: x.stepsPerSecond, usPerStep: x.usPerStep, fullCheckMsEach: x.fullCheckMsEach });
  console.log(`  checks: ${name}: ${x.stepsPerSecond} steps/s (${x.usPerStep} us/step), full check ${x.fullCheckMsEach} ms`);
}

const path = saveResult('simulate', {
  command: `ioasid simulate --random --vms ${HEADLINE.vms} --steps ${HEADLINE.steps} --seed ${HEADLINE.seed}`,
  runner: 'node --import tsx --expose-gc bench/simulate.bench.ts',
  quick: QUICK,
  loadAverageAtStart: load0.map(r1),
  loadAverageAtEnd: os.loadavg().map(r1),
  notes: [
    'Each run is runRandom (what `ioasid simulate --random` calls): a seeded workload of every step kind, each step checked by the incremental checker, plus the full checkInvariants every fullEvery steps and at the end.',
    `The growth series and the check modes use ${GROWTH_STEPS.toLocaleString('en-US')} steps per run (the headline uses ${HEADLINE.steps.toLocaleString('en-US')}).`,
    'Memory: process.memoryUsage() sampled every 5,000 steps; rss is the whole process (tsx and the module graph included), heapUsed the JS heap (garbage included), arrayBuffers the typed-array pages of the ID tables. liveHeapUsedMB is the largest heapUsed right after a forced GC, taken 10 times per run (what the run keeps alive). A GC runs before each run.',
    'Where the memory goes as VMs grow: every guest kernel has its own IoasidSpace, whose (sparse) record table allocates a 256-byte page per 64-ID range it touches; a guest holds few PASIDs spread over the host-wide namespace, so nearly every PASID a guest holds costs a page (src/core/record-table.ts). That is the arrayBuffers column.',
    'fullCheckMsEach is the cost of one checkInvariants over the whole system at that size: a full check after every step would add it to every step.',
  ],
  headline: { ...HEADLINE, checks: { incremental: true, fullEvery: 10_000 }, ...h },
  growth: { steps: GROWTH_STEPS, seed: 1, runs: growth },
  checkModes: { vms: 100, steps: GROWTH_STEPS, seed: 1, runs: modes },
});
console.log(`saved ${path}`);
