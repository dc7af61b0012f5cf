/** Shared helpers for the benchmark scripts: a seeded PRNG, timing, and JSON results. */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import os from 'node:os';

export const RESULTS_DIR = join(dirname(fileURLToPath(import.meta.url)), 'results');

/** xorshift32: fast, seeded, good enough to pick random live IDs. */
export class XorShift32 {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0 || 1;
  }
  next(): number {
    let x = this.#s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#s = x >>> 0;
    return this.#s;
  }
  /** Uniform integer in [0, n): multiply-shift (a `%` of an unsigned 32-bit value is a slow float modulo). */
  below(n: number): number {
    return Math.floor((this.next() / 4294967296) * n);
  }
}

export function nowNs(): bigint {
  return process.hrtime.bigint();
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

export function percentile(xs: readonly number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
}

export function machine(): Record<string, unknown> {
  return { node: process.version, cpus: os.cpus().length, cpu: os.cpus()[0]?.model ?? 'unknown', platform: process.platform, date: new Date().toISOString() };
}

/** Write bench/results/NAME.json and return its path. */
export function saveResult(name: string, result: Record<string, unknown>): string {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const path = join(RESULTS_DIR, `${name}.json`);
  writeFileSync(path, `${JSON.stringify({ benchmark: name, machine: machine(), ...result }, null, 2)}\n`);
  return path;
}
