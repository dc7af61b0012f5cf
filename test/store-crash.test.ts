/**
 * An acknowledged allocation survives a crash (docs/store.md). A child process
 * (test/fixtures/store-writer.ts) allocates and frees PASIDs on an SQLite store as fast as it can,
 * printing each one only after `apply` resolved; we SIGKILL it at random moments, 15 times, some
 * of them during start-up, then reopen the file: it must validate, hold every PASID acknowledged
 * and not acknowledged-freed, none acknowledged-freed, and every batch whole (each PASID of the
 * writer's VM is bound, each binding has its PASID).
 */
import { after, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openStore } from '../src/store/index.ts';

const TSX = import.meta.resolve('tsx');
const writer = fileURLToPath(new URL('./fixtures/store-writer.ts', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'ioasid-store-crash-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const KILLS_AFTER_READY = 12;
const KILLS_DURING_START = 3;

interface Run {
  lines: string[];
  sawReady: boolean;
  exit: { code: number | null; signal: NodeJS.Signals | null };
  stderr: string;
}

/** Start the writer; kill it `delayMs` after "ready" (or after spawn if `fromSpawn`). */
function runOnce(path: string, delayMs: number, fromSpawn: boolean): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', TSX, writer, path], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: string[] = [];
    let rest = '';
    let stderr = '';
    let sawReady = false;
    const kill = () => child.kill('SIGKILL');
    const guard = setTimeout(kill, 20_000); // never hang the suite
    if (fromSpawn) setTimeout(kill, delayMs);
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      const parts = (rest + chunk).split('\n');
      rest = parts.pop() ?? ''; // an unterminated line is not an acknowledgement
      for (const line of parts) {
        if (line === 'ready' && !sawReady) {
          sawReady = true;
          if (!fromSpawn) setTimeout(kill, delayMs);
        } else {
          lines.push(line);
        }
      }
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (c: string) => { stderr += c; });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(guard);
      resolve({ lines, sawReady, exit: { code, signal }, stderr });
    });
  });
}

it('every acknowledged allocation and free survives SIGKILL at random moments', { timeout: 90_000 }, async () => {
  const path = join(dir, 'state.db');
  const present = new Set<number>(); // acknowledged allocated, not since freed or being freed
  const absent = new Set<number>(); // acknowledged freed
  let acks = 0;
  let frees = 0;
  const plan = [
    ...Array.from({ length: KILLS_AFTER_READY }, () => ({ fromSpawn: false, delay: 5 + Math.floor(Math.random() * 250) })),
    ...Array.from({ length: KILLS_DURING_START }, () => ({ fromSpawn: true, delay: Math.floor(Math.random() * 600) })),
  ].sort(() => Math.random() - 0.5);
  plan.unshift({ fromSpawn: false, delay: 150 }); // the first run always gets going

  for (const [i, step] of plan.entries()) {
    const run = await runOnce(path, step.delay, step.fromSpawn);
    const where = `run ${i} (kill ${step.delay} ms after ${step.fromSpawn ? 'spawn' : 'ready'})`;
    assert.equal(run.exit.signal, 'SIGKILL', `${where}: the writer must die by our SIGKILL, not exit ${run.exit.code}: ${run.stderr}`);
    if (!step.fromSpawn) assert.ok(run.sawReady, `${where}: never became ready: ${run.stderr}`);
    for (const line of run.lines) {
      const [what, n] = line.split(' ');
      const p = Number(n);
      if (what === 'ack') {
        acks++;
        present.add(p);
        absent.delete(p);
      } else if (what === 'freeing') {
        present.delete(p); // in flight: may or may not have been committed
      } else if (what === 'free') {
        frees++;
        absent.add(p);
      } else {
        assert.fail(`${where}: unexpected output ${JSON.stringify(line)}`);
      }
    }
  }
  assert.ok(acks > 100 && frees > 10, `the writers made too little progress to test anything (${acks} acks, ${frees} frees)`);

  const store = openStore(`sqlite:${path}`);
  const state = await store.open(); // validates everything
  await store.close();
  const stored = new Set(state.pasids.map((p) => p.pasid));
  const lost = [...present].filter((p) => !stored.has(p));
  assert.deepEqual(lost, [], `acknowledged PASIDs lost after ${plan.length} kills`);
  const resurrected = [...absent].filter((p) => stored.has(p));
  assert.deepEqual(resurrected, [], 'acknowledged frees undone');
  const bound = new Set(state.bindings.map((b) => b.pasid));
  assert.deepEqual(state.pasids.filter((p) => !bound.has(p.pasid)).map((p) => p.pasid), [], 'a PASID without its binding: a batch was torn');
  assert.deepEqual(state.bindings.filter((b) => !stored.has(b.pasid)), [], 'a binding without its PASID');
});
