/**
 * The package as a user installs it (test/helpers/installed-package.ts: built from the current
 * sources, `npm pack`ed, installed into a fresh project, all in a temporary folder). There, with
 * plain `node` (no TypeScript loader anywhere in that project):
 *  - every subpath of `exports` imports, and nothing outside them does;
 *  - the README's library snippets run as written (the client one against `ioasid serve` started
 *    from the installed bin, on SQLite);
 *  - a TypeScript consumer type-checks with `tsc --noEmit` against the shipped declarations, and
 *    the contract's types refuse what the service would refuse;
 *  - `ioasid --version`, `ioasid demo` and `ioasid status` run from the installed bin;
 *  - the tarball holds no tests, benchmarks or fixtures, and is at most 500 KB;
 *  - no dependency warns about its engine while installing.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO, installPackage, run, type InstalledPackage } from './helpers/installed-package.ts';

const SUBPATHS = ['api', 'client', 'core', 'vtd', 'host', 'sim', 'store', 'cluster', 'service', 'remote'] as const;
const pkgJson = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string; exports: Record<string, unknown> };

describe('the installed package, used from plain node', { timeout: 600_000 }, () => {
  let p: InstalledPackage;
  before(async () => {
    p = await installPackage();
    process.stdout.write(`# package: tarball ${p.tarballBytes} bytes; build ${Math.round(p.timings.buildMs)} ms, pack ${Math.round(p.timings.packMs)} ms, install ${Math.round(p.timings.installMs)} ms\n`);
  });
  after(() => p?.remove());

  const node = (args: string[], env: Record<string, string> = {}) => run(process.execPath, args, { cwd: p.consumer, env: { NODE_OPTIONS: '', ...env } });

  it('exports every subpath, each with types and default, and every one imports in plain node', async () => {
    assert.deepEqual(Object.keys(pkgJson.exports).filter((k) => k !== './package.json').sort(), SUBPATHS.map((s) => `./${s}`).sort());
    for (const s of SUBPATHS) assert.deepEqual(Object.keys(pkgJson.exports[`./${s}`] as object), ['types', 'default'], s);
    assert.ok(!existsSync(join(p.consumer, 'node_modules', 'tsx')), 'no TypeScript loader is installed with the package');
    const probe = `
      const want = { api: 'buildOpenApi', client: 'IoasidClient', core: 'IoasidSpace', vtd: 'VtdGuestDriver', host: 'Host', sim: 'checkInvariants',
        store: 'openStore', cluster: 'EtcdClusterRole', service: 'startServer', remote: 'RemoteGuest' };
      const out = {};
      for (const [s, name] of Object.entries(want)) out[s] = typeof (await import('ioasid/' + s))[name];
      let inner = 'imported';
      try { await import('ioasid/dist/core/index.js'); } catch (e) { inner = e.code; }
      console.log(JSON.stringify({ out, inner }));`;
    const r = await node(['--input-type=module', '-e', probe]);
    assert.equal(r.code, 0, r.stderr);
    const { out, inner } = JSON.parse(r.stdout) as { out: Record<string, string>; inner: string };
    for (const s of SUBPATHS) assert.equal(out[s], 'function', `ioasid/${s}`);
    assert.equal(inner, 'ERR_PACKAGE_PATH_NOT_EXPORTED', 'only the exported subpaths are reachable');
  });

  it("runs the README's library snippets as written, the client one against the installed `ioasid serve` on SQLite", async () => {
    const md = readFileSync(join(REPO, 'README.md'), 'utf8');
    const snippets = [...md.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1] as string).filter((b) => /from 'ioasid\//.test(b));
    assert.ok(snippets.length >= 3, `${snippets.length} library snippets in the README`);
    const tokenFile = join(p.dir, 'admin.token');
    writeFileSync(tokenFile, 'consumer-admin-token-0123456789\n');
    const server = spawn(p.bin, ['serve', '--store', `sqlite:${join(p.dir, 'state.db')}`, '--port', '0', '--admin-token-file', tokenFile, '--log-format', 'text'], { cwd: p.dir, stdio: ['ignore', 'ignore', 'pipe'] });
    const exited = new Promise<number | null>((r) => server.on('exit', (code) => r(code)));
    try {
      const url = await new Promise<string>((resolve, reject) => {
        let err = '';
        server.stderr.on('data', (c: Buffer) => {
          err += c.toString();
          const m = /listening on (http:\/\/\S+)/.exec(err);
          if (m) resolve(m[1] as string);
        });
        void exited.then((code) => reject(new Error(`ioasid serve exited ${code}: ${err}`)));
      });
      for (const [i, code] of snippets.entries()) {
        const file = join(p.consumer, `readme-snippet-${i}.mjs`);
        writeFileSync(file, code);
        const r = await node([file], { IOASID_URL: url, IOASID_TOKEN: 'consumer-admin-token-0123456789' });
        assert.equal(r.code, 0, `README snippet ${i}:\n${code}\n${r.stderr}`);
        if (code.includes("'ioasid/core'")) assert.match(r.stdout, /^EACCES /);
        if (code.includes("'ioasid/client'")) assert.equal(r.stdout, 'EDQUOT 409\n');
      }
      const status = await run(p.bin, ['status', '--url', url, '--token', 'consumer-admin-token-0123456789', '--json'], { cwd: p.dir });
      assert.equal(status.code, 0, status.stderr);
      assert.equal(JSON.parse(status.stdout).store, 'sqlite');
    } finally {
      server.kill('SIGTERM');
      assert.equal(await exited, 0, 'the service stops cleanly on SIGTERM');
    }
  });

  it('type-checks a TypeScript consumer against the shipped declarations (tsc --noEmit)', async () => {
    writeFileSync(join(p.consumer, 'tsconfig.json'), JSON.stringify({
      compilerOptions: {
        target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true,
        exactOptionalPropertyTypes: true, noUncheckedIndexedAccess: true, types: ['node'], lib: ['ES2022', 'DOM'], skipLibCheck: false,
      },
      files: ['consumer.ts'],
    }));
    writeFileSync(join(p.consumer, 'consumer.ts'), `
import { IoasidClient, OPERATIONS, type ApiEvent, type CreateVmBody, type OpReply, type Problem, type VmInfo } from 'ioasid/client';
import { IoasidSpace, PASID_MIN, PASID_MAX, type IoasidErrorCode } from 'ioasid/core';
import { Host } from 'ioasid/host';
import { checkInvariants } from 'ioasid/sim';
import { buildOpenApi } from 'ioasid/api';
import { startServer, type RunningServer } from 'ioasid/service';
import { openStore } from 'ioasid/store';
import { decodeVcrsp, registerMap } from 'ioasid/vtd';
import type { RemoteGuestOptions } from 'ioasid/remote';
import type { ClusterStatus } from 'ioasid/cluster';

const space = new IoasidSpace({ profile: 'strict' });
const id: number = space.allocSync(space.createSet({ name: 'vm' }), PASID_MIN, PASID_MAX);
const host = new Host();
const problems: readonly unknown[] = checkInvariants(host);
const describe = (e: ApiEvent): string => (e.type === 'alloc' || e.type === 'free' ? e.pasids.join(',') : e.type === 'bind' ? e.bdf : e.type);
const vm: CreateVmBody = { id: 'vm1', quota: 8, viommus: [{ segment: 0, layout: 'B' }] };
const used = (v: VmInfo): number => v.used;
const code: IoasidErrorCode = 'EDQUOT';
const statusOf = (p: Problem): number => p.status;
const listed: OpReply<'listVms'>['vms'] | null = null;
const method: 'POST' = OPERATIONS.createVm.method;
const client = new IoasidClient({ url: 'http://127.0.0.1:7070' });
const pasids: Promise<number[]> = client.allocPasids('vm1', { count: 2 });
const rsp = decodeVcrsp(registerMap('B'), 0n);
const doc: Record<string, unknown> = buildOpenApi();
let server: RunningServer | undefined;
const serve = () => startServer({ store: 'memory', port: 0 });
const store = () => openStore('memory');
const guest: Partial<RemoteGuestOptions> = { vm: 'vm1' };
const cluster: ClusterStatus['domain'] | null = null;
// @ts-expect-error a quota is a number
const badVm: CreateVmBody = { id: 'vm1', quota: '8' };
// @ts-expect-error an unknown body field is refused, as the service refuses it
const extra: CreateVmBody = { id: 'vm1', colour: 'red' };
// @ts-expect-error no such event type
const wrong: ApiEvent['type'] = 'teleport';
// @ts-expect-error allocation events carry a list of PASIDs
const one = (e: Extract<ApiEvent, { type: 'alloc' }>) => e.pasid;
export { id, problems, describe, vm, used, code, statusOf, listed, method, pasids, rsp, doc, server, serve, store, guest, cluster, badVm, extra, wrong, one };
`);
    const tsc = join(REPO, 'node_modules', 'typescript', 'bin', 'tsc');
    const r = await run(process.execPath, [tsc, '-p', join(p.consumer, 'tsconfig.json')], { cwd: p.consumer });
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
  });

  it('runs `ioasid --version` and `ioasid demo` from the installed bin', async () => {
    const v = await run(p.bin, ['--version'], { cwd: p.dir });
    assert.equal(v.code, 0, v.stderr);
    assert.equal(v.stdout.trim(), pkgJson.version);
    const demo = await run(p.bin, ['demo', '--no-color'], { cwd: p.dir });
    assert.equal(demo.code, 0, demo.stderr);
    assert.match(demo.stdout, /All \d+ checks behaved as narrated/);
  });

  it('loads only what the command needs: --version no command, status the client but no service, store or host model', async () => {
    // A resolve hook (in Node's loader thread) writes down every module the command loads.
    const trace = join(p.dir, 'modules.trace');
    const hook = `import { appendFileSync } from 'node:fs';
export async function resolve(specifier, context, next) {
  const r = await next(specifier, context);
  appendFileSync(${JSON.stringify(trace)}, r.url + '\\n');
  return r;
}`;
    const tracer = join(p.dir, 'trace-modules.mjs');
    writeFileSync(tracer, `import { register } from 'node:module';\nregister('data:text/javascript,' + encodeURIComponent(${JSON.stringify(hook)}));\n`);
    const loaded = async (args: string[]): Promise<string[]> => {
      writeFileSync(trace, '');
      await run(p.bin, args, { cwd: p.dir, env: { NODE_OPTIONS: `--import=${tracer}` } });
      return readFileSync(trace, 'utf8').split('\n').filter(Boolean).map((u) => u.replace(/^.*\/node_modules\/ioasid\//, 'ioasid/').replace(/^.*\/node_modules\//, ''));
    };
    const version = await loaded(['--version']);
    assert.ok(version.some((m) => m === 'ioasid/dist/cli/main.js'), version.join('\n'));
    assert.deepEqual(version.filter((m) => /^ioasid\/dist\/(?!cli\/(main|descriptions|usage)\.js)/.test(m)), [], '--version loads no command (usage.js: the usage-error rules, no command)');
    const status = await loaded(['status', '--url', 'http://127.0.0.1:9', '--token', 'x']);
    assert.ok(status.includes('ioasid/dist/client/index.js'), status.join('\n'));
    const heavy = status.filter((m) => /^ioasid\/dist\/(service|store|cluster|host|sim|vtd|remote)\/|^(fastify|better-sqlite3|etcd3|@grpc|prom-client|ws|yaml|undici)\b/.test(m));
    assert.deepEqual(heavy, [], 'status loads none of these');
  });

  it('ships compiled code, declarations and the prebuilt dashboard, no tests, benchmarks or fixtures, in at most 500 KB', async () => {
    const list = await run('tar', ['-tzf', p.tarball], { cwd: p.dir });
    const files = list.stdout.trim().split('\n').map((f) => f.replace(/^package\//, ''));
    assert.ok(p.tarballBytes <= 500 * 1024, `tarball ${p.tarballBytes} bytes`);
    for (const f of ['bin/ioasid.js', 'dist/cli/main.js', 'dist/core/index.js', 'dist/core/index.d.ts', 'dist/web/app.js', 'dist/web/app.css', 'dist/web/index.html', 'README.md', 'package.json']) {
      assert.ok(files.includes(f), `${f} is in the tarball`);
    }
    const unwanted = files.filter((f) => /^(test|bench|src|web|examples|docs|scripts)\//.test(f) || /fixtures|\.test\.|\.bench\./.test(f));
    assert.deepEqual(unwanted, []);
    assert.ok(files.every((f) => !f.endsWith('.ts') || f.endsWith('.d.ts')), 'no TypeScript sources');
    assert.deepEqual(files.filter((f) => f.endsWith('.map')), [], 'no source maps (they would point at sources the package does not hold)');
  });

  it('installs without any engine warning', () => {
    assert.doesNotMatch(p.installLog, /EBADENGINE|Unsupported engine/);
  });
});
