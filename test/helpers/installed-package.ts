/**
 * The package as a user gets it, for the consumer test and the CLI start-up benchmark: built
 * from the current sources, packed with `npm pack`, and installed into a fresh project, all in
 * one temporary folder (nothing is written into the checkout, not even dist/).
 *
 *  1. The files `npm run build` needs (package.json, src/, web/, scripts/, bin/, tsconfig*) are
 *     copied to TMP/pkg, which borrows the checkout's node_modules through a symlink; the build
 *     runs there and `npm pack --ignore-scripts` packs what it made.
 *  2. TMP/consumer depends on the tarball, and installs it with
 *     `npm install --prefer-offline --ignore-scripts` (packages come from npm's cache where it has
 *     them). Install scripts are skipped, so better-sqlite3's native addon is not compiled again
 *     (about 75 s): the checkout's own build of it is copied in instead. That is sound because
 *     the consumer pins better-sqlite3 to the exact version the checkout built, the test checks
 *     the installed version is that one, and the addon runs on the same Node (same ABI). The
 *     other install scripts of the tree do nothing the package needs (esbuild and tsx are
 *     development dependencies and are not installed; protobufjs's postinstall is disabled in
 *     the checkout too).
 *  3. @types/node (the version the checkout uses) is installed beside it, as any TypeScript
 *     consumer has it; TypeScript itself is the checkout's.
 */
import { execFile } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export const REPO = resolve(import.meta.dirname, '../..');

export interface InstalledPackage {
  /** The temporary folder holding everything. */
  readonly dir: string;
  /** The consumer project: node_modules/ioasid is the installed package. */
  readonly consumer: string;
  /** The tarball `npm pack` made. */
  readonly tarball: string;
  readonly tarballBytes: number;
  /** The installed `ioasid` command (node_modules/.bin/ioasid). */
  readonly bin: string;
  /** npm's output of the install (warnings included). */
  readonly installLog: string;
  readonly timings: { readonly buildMs: number; readonly packMs: number; readonly installMs: number };
  remove(): void;
}

export interface RunResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Run a command; resolves with its status and output (never rejects on a non-zero status). */
export function run(cmd: string, args: readonly string[], opts: { cwd: string; env?: Record<string, string | undefined>; timeoutMs?: number }): Promise<RunResult> {
  return new Promise((done, fail) => {
    execFile(cmd, args, { cwd: opts.cwd, env: { ...process.env, ...opts.env }, timeout: opts.timeoutMs ?? 240_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err !== null && typeof (err as { code?: unknown }).code !== 'number') return fail(Object.assign(err, { stdout, stderr }));
      done({ code: err === null ? 0 : ((err as { code?: number }).code ?? null), stdout, stderr });
    });
  });
}

function must(r: RunResult, what: string): RunResult {
  if (r.code !== 0) throw new Error(`${what} failed (status ${r.code}):\n${r.stdout}\n${r.stderr}`);
  return r;
}

function versionOf(nodeModules: string, pkg: string): string {
  return (JSON.parse(readFileSync(join(nodeModules, pkg, 'package.json'), 'utf8')) as { version: string }).version;
}

/** Environment for npm: quiet, no audit, no funding messages, no update check. */
const NPM_ENV = { npm_config_audit: 'false', npm_config_fund: 'false', npm_config_update_notifier: 'false', npm_config_loglevel: 'warn' };

export async function installPackage(): Promise<InstalledPackage> {
  const dir = mkdtempSync(join(tmpdir(), 'ioasid-pkg-'));
  const remove = () => rmSync(dir, { recursive: true, force: true });
  try {
    // 1. Build and pack from a copy of the sources.
    const pkg = join(dir, 'pkg');
    mkdirSync(pkg);
    for (const f of ['package.json', 'package-lock.json', 'README.md', 'tsconfig.json', 'tsconfig.build.json']) copyFileSync(join(REPO, f), join(pkg, f));
    for (const d of ['src', 'web', 'scripts', 'bin']) cpSync(join(REPO, d), join(pkg, d), { recursive: true });
    symlinkSync(join(REPO, 'node_modules'), join(pkg, 'node_modules'), 'dir');
    let t = performance.now();
    must(await run(process.execPath, ['scripts/build.mjs'], { cwd: pkg }), 'npm run build');
    const buildMs = performance.now() - t;
    t = performance.now();
    const packed = must(await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], { cwd: pkg, env: NPM_ENV }), 'npm pack');
    const packMs = performance.now() - t;
    const info = (JSON.parse(packed.stdout) as { filename: string; size: number }[])[0];
    if (info === undefined) throw new Error(`npm pack said nothing: ${packed.stdout}`);
    const tarball = join(dir, info.filename);

    // 2. A fresh project that installs it.
    const consumer = join(dir, 'consumer');
    mkdirSync(consumer);
    const sqliteVersion = versionOf(join(REPO, 'node_modules'), 'better-sqlite3');
    writeFileSync(join(consumer, 'package.json'), JSON.stringify({
      name: 'ioasid-consumer',
      private: true,
      type: 'module',
      dependencies: { ioasid: `file:${tarball}`, 'better-sqlite3': sqliteVersion },
      devDependencies: { '@types/node': versionOf(join(REPO, 'node_modules'), '@types/node') },
    }, null, 2));
    t = performance.now();
    const installed = must(await run('npm', ['install', '--prefer-offline', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: consumer, env: NPM_ENV }), 'npm install');
    const installMs = performance.now() - t;
    const nm = join(consumer, 'node_modules');
    if (versionOf(nm, 'better-sqlite3') !== sqliteVersion) throw new Error(`better-sqlite3 ${versionOf(nm, 'better-sqlite3')} installed, the checkout built ${sqliteVersion}: its addon cannot be reused`);
    const addon = join('better-sqlite3', 'build', 'Release', 'better_sqlite3.node');
    mkdirSync(join(nm, 'better-sqlite3', 'build', 'Release'), { recursive: true });
    copyFileSync(join(REPO, 'node_modules', addon), join(nm, addon));
    const bin = join(nm, '.bin', 'ioasid');
    if (!existsSync(bin)) throw new Error(`the install made no ${bin}`);
    return {
      dir, consumer, tarball, tarballBytes: info.size, bin,
      installLog: `${installed.stdout}\n${installed.stderr}`,
      timings: { buildMs, packMs, installMs },
      remove,
    };
  } catch (e) {
    remove();
    throw e;
  }
}
