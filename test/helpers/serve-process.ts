/**
 * `ioasid serve` (or any command) as a child process, from the sources under tsx, in a folder the
 * test chose: never the checkout. The service's log is read from stderr (JSON lines by default):
 * `listening()` resolves with the URL of its "listening on" record.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';

export const MAIN = resolve(import.meta.dirname, '../../src/cli/main.ts');
/** tsx's loader, as an absolute URL: `--import tsx` alone would be looked up from the working folder. */
export const TSX = import.meta.resolve('tsx');

export interface CliProcess {
  readonly child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** The stderr lines so far. */
  lines(): string[];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The URL of the "listening on" record; rejects if the process ends first. */
  listening(timeoutMs?: number): Promise<string>;
  /** SIGTERM, and wait for the end. */
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Environment of a child: no inherited IOASID_* or colour settings. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('IOASID_')) delete env[k];
  for (const k of ['NO_COLOR', 'FORCE_COLOR', 'NODE_TEST_CONTEXT']) delete env[k];
  return { ...env, ...extra };
}

/** Children still running: a test that fails half way must not leave a service behind. */
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/** Run `ioasid ARGS...` in `cwd`; `as` runs it as another user (a test running as root drops its privileges). */
export function runCli(args: readonly string[], opts: { cwd: string; env?: Record<string, string>; as?: { uid: number; gid: number } }): CliProcess {
  const child = spawn(process.execPath, ['--import', TSX, MAIN, ...args], {
    cwd: opts.cwd, env: cleanEnv(opts.env), stdio: ['ignore', 'pipe', 'pipe'],
    ...(opts.as !== undefined ? { uid: opts.as.uid, gid: opts.as.gid } : {}),
  });
  live.add(child);
  child.on('exit', () => live.delete(child));
  let out = '';
  let err = '';
  const waiters = new Set<() => void>();
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
    for (const w of waiters) w();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) => child.on('close', (code, signal) => {
    done({ code, signal });
    for (const w of waiters) w();
  }));
  const lines = () => err.split('\n').filter((l) => l !== '');
  const findUrl = (): string | null => {
    for (const l of lines()) {
      try {
        const r = JSON.parse(l) as { msg?: unknown; url?: unknown };
        if (typeof r.msg === 'string' && r.msg.startsWith('listening on ') && typeof r.url === 'string') return r.url;
      } catch {
        const m = /\blistening on (\S+)/.exec(l);
        if (m?.[1] !== undefined) return m[1];
      }
    }
    return null;
  };
  let ended = false;
  void exited.then(() => (ended = true));
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    lines,
    exited,
    listening: (timeoutMs = 20_000) => new Promise<string>((done, fail) => {
      const deadline = setTimeout(() => finish(new Error(`no "listening on" record within ${timeoutMs} ms: ${err}`)), timeoutMs);
      const check = () => {
        const url = findUrl();
        if (url !== null) finish(null, url);
        else if (ended) finish(new Error(`the service ended before listening: ${err}`));
      };
      const finish = (e: Error | null, url?: string) => {
        clearTimeout(deadline);
        waiters.delete(check);
        if (e !== null) fail(e);
        else done(url as string);
      };
      waiters.add(check);
      check();
    }),
    stop: async () => {
      if (!ended) child.kill('SIGTERM');
      return exited;
    },
  };
}

/** The user a test runs a child as to be refused by file permissions: itself, or nobody when it is root. */
export function unprivileged(): { uid: number; gid: number } | undefined {
  return process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : undefined;
}
