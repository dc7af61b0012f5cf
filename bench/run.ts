/**
 * `npm run bench`: run the in-process benchmarks (`bench/*.bench.ts`) each in its own process (so
 * one benchmark's heap and JIT state do not colour the next), in order, printing each one's output.
 * Results are saved by each script under bench/results/. Pass names to run a subset or the
 * system benchmarks (`npm run bench -- engine space`); the service, isolation, dashboard and
 * cluster benchmarks, which start servers and browsers, have their own scripts (`npm run
 * bench:service`, `bench:isolation`, `bench:dashboard`, `bench:cluster`) and run here only when
 * named.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const dir = dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2);
const SYSTEM = ['service', 'isolation', 'dashboard', 'cluster'];
const scripts = readdirSync(dir)
  .filter((f) => f.endsWith('.bench.ts'))
  .filter((f) => (only.length === 0 ? !SYSTEM.includes(f.replace(/\.bench\.ts$/, '')) : only.includes(f.replace(/\.bench\.ts$/, ''))))
  .sort();

let failed = 0;
for (const f of scripts) {
  console.log(`\n=== ${f} ===`);
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--expose-gc', join(dir, f)], { stdio: 'inherit' });
  if (r.status !== 0) {
    failed++;
    console.error(`${f} exited with ${r.status ?? r.signal}`);
  }
}
process.exit(failed === 0 ? 0 : 1);
