/**
 * `npm run bench:cli`: how fast the installed `ioasid` command answers, and how big the package
 * is. The package is built, packed and installed into a fresh project exactly as the consumer
 * test does (test/helpers/installed-package.ts), a service is started from its bin, and then:
 *  - `ioasid --version`, 10 cold starts (a new process each; the file cache is warm, as it is
 *    for anyone who runs a command twice);
 *  - `ioasid status --url <that service>`, 10 cold starts (health, readiness, VM list, namespace);
 *  - `node -e 0` the same way, as the floor (on a shared machine it moves with the load);
 *  - the tarball's size.
 * Prints the medians and saves bench/results/cli-start.json. Targets: at most 250 ms each, a
 * tarball of at most 500 KB.
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { installPackage } from '../test/helpers/installed-package.ts';
import { median, saveResult } from './util.ts';

const RUNS = 10;
const ADMIN = 'bench-admin-token-0123456789';

function timed(cmd: string, args: readonly string[], cwd: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (c: Buffer) => {
      err += c.toString();
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (code !== 0) reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err}`));
      else resolve(ms);
    });
  });
}

const p = await installPackage();
writeFileSync(join(p.dir, 'admin.token'), `${ADMIN}\n`);
const server = spawn(p.bin, ['serve', '--store', 'memory', '--port', '0', '--admin-token-file', join(p.dir, 'admin.token'), '--log-format', 'text', '--host', '127.0.0.1'], { cwd: p.dir, stdio: ['ignore', 'ignore', 'pipe'] });
try {
  const url = await new Promise<string>((resolve, reject) => {
    let err = '';
    server.stderr.on('data', (c: Buffer) => {
      err += c.toString();
      const m = /listening on (http:\/\/\S+)/.exec(err);
      if (m) resolve(m[1] as string);
    });
    server.on('exit', (code) => reject(new Error(`ioasid serve exited ${code}: ${err}`)));
  });
  const version: number[] = [];
  const status: number[] = [];
  const bare: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    // Node itself, started the same way: what no command can go below on this machine right now.
    bare.push(await timed(process.execPath, ['-e', '0'], p.dir));
    version.push(await timed(p.bin, ['--version'], p.dir));
    status.push(await timed(p.bin, ['status', '--url', url, '--token', ADMIN], p.dir));
  }
  const round = (xs: number[]) => xs.map((x) => Math.round(x * 10) / 10);
  const result = {
    workload: { runs: RUNS, how: 'the installed bin (node_modules/.bin/ioasid) spawned anew each run, wall time from spawn to exit; service on 127.0.0.1, store memory' },
    versionMedianMs: Math.round(median(version) * 10) / 10,
    statusMedianMs: Math.round(median(status) * 10) / 10,
    nodeBaselineMedianMs: Math.round(median(bare) * 10) / 10,
    targetMs: 250,
    tarballBytes: p.tarballBytes,
    tarballTargetBytes: 500 * 1024,
    runs: { version: round(version), status: round(status), nodeBaseline: round(bare) },
  };
  const path = saveResult('cli-start', result);
  process.stdout.write(`ioasid --version: median ${result.versionMedianMs} ms of ${RUNS} cold starts (target 250)\n`);
  process.stdout.write(`ioasid status:    median ${result.statusMedianMs} ms of ${RUNS} cold starts (target 250)\n`);
  process.stdout.write(`node -e 0:        median ${result.nodeBaselineMedianMs} ms (the floor: Node's own start on this machine now)\n`);
  process.stdout.write(`tarball:          ${p.tarballBytes} bytes (target ${500 * 1024})\n`);
  process.stdout.write(`saved ${path}\n`);
} finally {
  server.kill('SIGTERM');
  await new Promise((r) => server.once('exit', r));
  p.remove();
}
