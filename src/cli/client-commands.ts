/**
 * The client commands (DESIGN 8): `ioasid vm`, `ioasid pasid`, `ioasid status` and `ioasid watch`
 * against a running `ioasid serve`. Thin: they parse arguments, call the typed `IoasidClient` and
 * print what it returns; every rule is the service's. Each command takes `--url`, `--token`,
 * `--token-file` and `--json`; text is for people, `--json` prints the service's answer as JSON
 * (`watch --json`: one object per line).
 *
 * Exit status: 0 on success; 1 when the service refuses or cannot be reached, after
 * `error: CODE: message` on stderr; 2 for a usage error (bad flag or argument).
 */
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import type WebSocket from 'ws';
import { IoasidClient, IoasidError, isIoasidError, type ApiEvent, type ClientOptions, type FetchLike, type PasidInfo } from '../client/index.ts';
import { httpTransport, withDeadline } from './http-transport.ts';
import {
  fmtPasid, fmtTime, formatEvent, plural, runs, style, table, vmDetails, vmTable, wantColour, type Style,
} from './format.ts';
import { DESCRIPTIONS } from './descriptions.ts';

export const DEFAULT_URL = 'http://127.0.0.1:7070';
/** Where `ioasid serve` writes the admin token it creates (relative to its working folder). */
export const DEFAULT_ADMIN_TOKEN_FILE = './var/admin.token';
/** A request with no answer after this long is reported as unreachable. */
const REQUEST_TIMEOUT_MS = 30_000;

type WebSocketCtor = NonNullable<ClientOptions['WebSocket']>;

/** Everything the commands touch outside themselves, so tests can run them in process. */
export interface CliIo {
  readonly stdout: (s: string) => void;
  readonly stderr: (s: string) => void;
  readonly stdoutIsTTY: boolean;
  readonly stderrIsTTY: boolean;
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly cwd: string;
  /** End now (usage errors and help, from commander). Must not return. */
  readonly exit: (code: number) => never;
  /** The status to end with once the command returns. */
  readonly setExitCode: (code: number) => void;
  /** Call `fn` when the user asks to stop (`watch`); returns an unsubscribe function. */
  readonly onStop: (fn: () => void) => () => void;
  /** Transport for the requests (default node:http; tests pass one that reaches an in-process app). */
  readonly fetch?: FetchLike;
  readonly WebSocket?: WebSocketCtor;
}

export function processIo(): CliIo {
  return {
    stdout: (s) => void process.stdout.write(s),
    stderr: (s) => void process.stderr.write(s),
    stdoutIsTTY: process.stdout.isTTY === true,
    stderrIsTTY: process.stderr.isTTY === true,
    env: process.env,
    cwd: process.cwd(),
    exit: (code) => process.exit(code),
    setExitCode: (code) => {
      process.exitCode = code;
    },
    onStop: (fn) => {
      const epipe = (e: NodeJS.ErrnoException) => {
        if (e.code === 'EPIPE') fn(); // `ioasid watch | head`: the reader left
      };
      process.once('SIGINT', fn);
      process.once('SIGTERM', fn);
      process.stdout.on('error', epipe);
      return () => {
        process.off('SIGINT', fn);
        process.off('SIGTERM', fn);
        process.stdout.off('error', epipe);
      };
    },
  };
}

// ------------------------------------------------------------------ argument parsers

/** A usage error found after parsing (e.g. a bad IOASID_URL): exit 2, like commander's own. */
class UsageError extends Error {}

function integer(what: string) {
  return (v: string): number => {
    const s = v.trim();
    const n = /^[0-9]+$/.test(s) ? Number(s) : /^0x[0-9a-f]+$/i.test(s) ? Number.parseInt(s.slice(2), 16) : Number.NaN;
    if (!Number.isSafeInteger(n)) throw new InvalidArgumentError(`${what} must be a non-negative integer (decimal or 0x hex), got ${JSON.stringify(v)}`);
    return n;
  };
}

const pasidArg = integer('PASID');

function collect<T>(parse: (v: string) => T) {
  return (v: string, previous: T[]): T[] => [...previous, parse(v)];
}

interface ViommuArg { segment: number; layout?: 'A' | 'B'; rangeExtension?: boolean }
interface DeviceArg { bdf: string; pasidBits?: number }

/** `SEG[:A|B][:rx]`, e.g. `0`, `1:A`, `2:B:rx`. */
function viommuArg(v: string): ViommuArg {
  const m = /^([0-9]+|0x[0-9a-f]+)(?::([ab]))?(?::(rx))?$/i.exec(v.trim());
  if (m === null) throw new InvalidArgumentError(`a vIOMMU is SEG[:A|B][:rx] (e.g. 0, 1:A, 2:B:rx), got ${JSON.stringify(v)}`);
  return {
    segment: integer('segment')(m[1] as string),
    ...(m[2] !== undefined ? { layout: m[2].toUpperCase() as 'A' | 'B' } : {}),
    ...(m[3] !== undefined ? { rangeExtension: true } : {}),
  };
}

/** `BDF[:BITS]`, e.g. `0000:00:02.0` or `0000:00:02.0:10`. */
function deviceArg(v: string): DeviceArg {
  const parts = v.trim().split(':');
  if (parts.length !== 3 && parts.length !== 4) throw new InvalidArgumentError(`a device is BDF[:BITS] (e.g. 0000:00:02.0 or 0000:00:02.0:10), got ${JSON.stringify(v)}`);
  const bdf = parts.slice(0, 3).join(':');
  return parts.length === 4 ? { bdf, pasidBits: integer('PASID bits')(parts[3] as string) } : { bdf };
}

// ------------------------------------------------------------------ connection and errors

interface CommonOpts {
  url?: string;
  token?: string;
  tokenFile?: string;
  json?: boolean;
  /** false with --no-color. */
  color?: boolean;
}

interface Ctx {
  readonly io: CliIo;
  readonly client: IoasidClient;
  readonly url: string;
  /** Where the token came from, for error hints; null when there is none. */
  readonly tokenFrom: string | null;
  readonly token: string | undefined;
  readonly json: boolean;
  /** Style for stdout. */
  readonly st: Style;
  /** False with --no-color (the terminal and NO_COLOR still decide otherwise). */
  readonly colour: boolean;
}

function withCommon(cmd: Command): Command {
  return cmd
    .option('--url <url>', `service URL (default: $IOASID_URL, else ${DEFAULT_URL})`)
    .option('--token <token>', 'bearer token, admin or a VM\'s (default: $IOASID_TOKEN)')
    .option('--token-file <path>', `read the bearer token from a file (default: ${DEFAULT_ADMIN_TOKEN_FILE} if it exists)`)
    .option('--json', 'print JSON instead of text')
    .option('--no-color', 'plain text even on a terminal (as NO_COLOR=1)');
}

function serviceUrl(raw: string, from: string): string {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new UsageError(`${from} is not a URL: ${JSON.stringify(raw)} (expected e.g. ${DEFAULT_URL})`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new UsageError(`${from} must be an http:// or https:// URL, got ${JSON.stringify(raw)}`);
  return raw.replace(/\/+$/, '');
}

function readToken(path: string, what: string): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new IoasidError('ENOENT', `cannot read the token file ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, { file: path });
  }
  const token = text.trim();
  if (token.length === 0) throw new IoasidError('EINVAL', `${what} ${path} is empty`, { file: path });
  return token;
}

/** Token precedence: --token, --token-file, $IOASID_TOKEN, then ./var/admin.token if present. */
function resolveToken(io: CliIo, o: CommonOpts): { token: string | undefined; from: string | null } {
  if (o.token !== undefined) return { token: o.token, from: '--token' };
  if (o.tokenFile !== undefined) return { token: readToken(resolve(io.cwd, o.tokenFile), 'token file'), from: `--token-file ${o.tokenFile}` };
  const env = io.env.IOASID_TOKEN;
  if (env !== undefined && env !== '') return { token: env, from: 'IOASID_TOKEN' };
  const def = resolve(io.cwd, DEFAULT_ADMIN_TOKEN_FILE);
  if (existsSync(def)) return { token: readToken(def, 'admin token file'), from: DEFAULT_ADMIN_TOKEN_FILE };
  return { token: undefined, from: null };
}

function context(io: CliIo, o: CommonOpts): Ctx {
  const url = o.url !== undefined ? serviceUrl(o.url, '--url') : io.env.IOASID_URL ? serviceUrl(io.env.IOASID_URL, 'IOASID_URL') : DEFAULT_URL;
  const { token, from } = resolveToken(io, o);
  const client = new IoasidClient({
    url,
    ...(token !== undefined ? { token } : {}),
    fetch: io.fetch !== undefined ? withDeadline(io.fetch, REQUEST_TIMEOUT_MS) : httpTransport(REQUEST_TIMEOUT_MS),
  });
  return { io, client, url, token, tokenFrom: from, json: o.json === true, colour: o.color !== false, st: style(o.color !== false && wantColour(io.stdoutIsTTY, io.env)) };
}

/** What to add to a refusal so the user knows what to try next. */
function hint(e: IoasidError, tokenFrom: string | null): string {
  if (e.code === 'ENODEV' && typeof e.details.url === 'string') return ' (is `ioasid serve` running there? choose another with --url or IOASID_URL)';
  if (e.code === 'EPERM' && tokenFrom === null) return ` (no token given: pass --token or --token-file, set IOASID_TOKEN, or run where ${DEFAULT_ADMIN_TOKEN_FILE} is)`;
  // EACCES is also "another VM's PASID"; name the token only when the token is the problem.
  if (e.code === 'EPERM' || (e.code === 'EACCES' && /token/.test(e.message))) return tokenFrom !== null ? ` (token from ${tokenFrom})` : '';
  return '';
}

function reportError(io: CliIo, e: unknown, tokenFrom: string | null, colour: boolean): void {
  const st = style(colour && wantColour(io.stderrIsTTY, io.env));
  let code: string;
  let message: string;
  let exit = 1;
  if (e instanceof UsageError) {
    code = 'EINVAL';
    message = e.message;
    exit = 2;
  } else if (isIoasidError(e)) {
    code = e.code;
    message = e.message + hint(e, tokenFrom);
  } else {
    code = 'EFAULT';
    message = e instanceof Error ? e.message : String(e);
  }
  io.stderr(`${st.bad('error:')} ${code}: ${message}\n`);
  io.setExitCode(exit);
}

/** Run one command's body with its context; any error is reported as `error: CODE: message`. */
function action<A extends unknown[]>(io: CliIo, body: (ctx: Ctx, ...args: A) => Promise<void>) {
  return async (...all: unknown[]): Promise<void> => {
    // commander passes the arguments, then the options object, then the command.
    const cmd = all[all.length - 1] as Command;
    const o = cmd.opts<CommonOpts>();
    let tokenFrom: string | null = null;
    try {
      const ctx = context(io, o);
      tokenFrom = ctx.tokenFrom;
      await body(ctx, ...(all.slice(0, -1) as A));
    } catch (e) {
      reportError(io, e, tokenFrom, o.color !== false);
    }
  };
}

function printJson(ctx: Ctx, value: unknown): void {
  ctx.io.stdout(`${JSON.stringify(value, null, 2)}\n`);
}

function print(ctx: Ctx, text: string): void {
  ctx.io.stdout(`${text}\n`);
}

/** Usage errors exit 2 with `error: EINVAL: ...`; help exits 0; output goes through `io`. */
function prepare(cmd: Command, io: CliIo): Command {
  const errStyle = style(wantColour(io.stderrIsTTY, io.env));
  cmd
    .exitOverride((err) => io.exit(err.exitCode === 0 ? 0 : 2))
    .configureOutput({
      writeOut: io.stdout,
      writeErr: io.stderr,
      outputError: (s, write) => write(s.replace(/^error: /, `${errStyle.bad('error:')} EINVAL: `)),
    })
    .showSuggestionAfterError(true);
  for (const sub of cmd.commands) prepare(sub, io);
  return cmd;
}

// ------------------------------------------------------------------ ioasid vm

export function vmCommand(io: CliIo = processIo()): Command {
  const vm = new Command('vm').description(DESCRIPTIONS.vm);

  vm.addCommand(
    withCommon(new Command('create'))
      .description("create a VM with its vIOMMUs and devices; prints the VM's token, once")
      .argument('<id>', 'VM id: 1-63 letters, digits, ".", "_" or "-"')
      .option('--quota <n>', 'how many PASIDs the VM may hold (default: the service\'s)', integer('quota'))
      .option('--viommu <spec>', 'add a vIOMMU: SEG[:A|B][:rx] (segment, register layout, range extension); repeatable', collect(viommuArg), [] as ViommuArg[])
      .option('--device <spec>', 'assign a device: BDF[:BITS] (PCI address, PASID width); repeatable', collect(deviceArg), [] as DeviceArg[])
      .addHelpText('after', '\nExample:\n  ioasid vm create vm1 --quota 64 --viommu 0 --viommu 1:A --device 0000:00:02.0 --device 0001:00:03.0:10')
      .action(action(io, async (ctx, id: string, o: { quota?: number; viommu: ViommuArg[]; device: DeviceArg[] }) => {
        const r = await ctx.client.createVm({
          id,
          ...(o.quota !== undefined ? { quota: o.quota } : {}),
          ...(o.viommu.length ? { viommus: o.viommu } : {}),
          ...(o.device.length ? { devices: o.device } : {}),
        });
        if (ctx.json) return printJson(ctx, r);
        print(ctx, `created ${vmDetails(r.vm, ctx.st)}`);
        print(ctx, `\ntoken  ${ctx.st.bold(r.token)}`);
        print(ctx, ctx.st.dim('This token is shown once: the service keeps only its hash. Give it to the VM\'s VMM (--token or IOASID_TOKEN).'));
      })),
  );

  vm.addCommand(
    withCommon(new Command('list'))
      .description('list VMs: PASIDs used of quota, vIOMMUs, devices, bindings')
      .action(action(io, async (ctx) => {
        const vms = await ctx.client.listVms();
        if (ctx.json) return printJson(ctx, { vms });
        print(ctx, vms.length ? vmTable(vms, ctx.st) : ctx.st.dim('no VMs'));
      })),
  );

  vm.addCommand(
    withCommon(new Command('show'))
      .description('inspect one VM (admin or that VM\'s token)')
      .argument('<id>', 'VM id')
      .action(action(io, async (ctx, id: string) => {
        const v = await ctx.client.getVm(id);
        if (ctx.json) return printJson(ctx, v);
        print(ctx, vmDetails(v, ctx.st));
      })),
  );

  vm.addCommand(
    withCommon(new Command('destroy'))
      .description('destroy a VM: unbind its devices, free every PASID it holds, forget it')
      .argument('<id>', 'VM id')
      .action(action(io, async (ctx, id: string) => {
        const r = await ctx.client.destroyVm(id);
        if (ctx.json) return printJson(ctx, { vm: id, ...r });
        print(ctx, `destroyed VM ${ctx.st.accent(id)}: freed ${plural(r.freed.length, 'PASID')}${r.freed.length ? ` (${runs(r.freed)})` : ''}, dropped ${plural(r.bindings, 'binding')}`);
      })),
  );
  return prepare(vm, io);
}

// ------------------------------------------------------------------ ioasid pasid

function pasidDetails(p: PasidInfo, st: Style): string {
  const lines = [
    `${st.bold('PASID')} ${st.accent(fmtPasid(p.pasid))}`,
    `  owner     ${p.owner ?? 'none (not allocated to a VM)'}`,
    `  bindings  ${p.bindings.length ? p.bindings.join(', ') : '-'}`,
    `  history   ${p.history.length ? `${plural(p.history.length, 'event')}, oldest first` : '-'}`,
    ...p.history.map((e) => `    ${formatEvent(e, st)}`),
  ];
  return lines.join('\n');
}

export function pasidCommand(io: CliIo = processIo()): Command {
  const pasid = new Command('pasid').description(DESCRIPTIONS.pasid);

  pasid.addCommand(
    withCommon(new Command('alloc'))
      .description('allocate PASIDs for a VM: the lowest free in [min, max]; a count above 1 is all or nothing')
      .argument('<vm>', 'VM id')
      .option('--count <n>', 'how many (default 1)', integer('count'))
      .option('--min <pasid>', 'lowest acceptable PASID (default 1)', pasidArg)
      .option('--max <pasid>', 'highest acceptable PASID (default 0xfffff)', pasidArg)
      .action(action(io, async (ctx, vm: string, o: { count?: number; min?: number; max?: number }) => {
        const pasids = await ctx.client.allocPasids(vm, {
          ...(o.count !== undefined ? { count: o.count } : {}),
          ...(o.min !== undefined ? { min: o.min } : {}),
          ...(o.max !== undefined ? { max: o.max } : {}),
        });
        if (ctx.json) return printJson(ctx, { vm, pasids });
        const [first] = pasids;
        if (pasids.length === 1 && first !== undefined) print(ctx, `allocated PASID ${ctx.st.ok(fmtPasid(first))} to VM ${vm}`);
        else print(ctx, `allocated ${plural(pasids.length, 'PASID')} to VM ${vm}: ${ctx.st.ok(runs(pasids))}`);
      })),
  );

  pasid.addCommand(
    withCommon(new Command('free'))
      .description('free one of a VM\'s PASIDs (refused while a device is bound to it)')
      .argument('<vm>', 'VM id')
      .argument('<pasid>', 'PASID (decimal or 0x hex)', pasidArg)
      .action(action(io, async (ctx, vm: string, p: number) => {
        await ctx.client.freePasid(vm, p);
        if (ctx.json) return printJson(ctx, { vm, pasid: p, freed: true });
        print(ctx, `freed PASID ${fmtPasid(p)} of VM ${vm}`);
      })),
  );

  pasid.addCommand(
    withCommon(new Command('list'))
      .description("a VM's PASIDs, ascending")
      .argument('<vm>', 'VM id')
      .action(action(io, async (ctx, vm: string) => {
        const pasids = await ctx.client.listPasids(vm);
        if (ctx.json) return printJson(ctx, { vm, pasids });
        print(ctx, pasids.length ? `VM ${vm} holds ${plural(pasids.length, 'PASID')}: ${runs(pasids)}` : `VM ${vm} holds no PASIDs`);
      })),
  );

  pasid.addCommand(
    withCommon(new Command('show'))
      .description('inspect a PASID: owner, bindings, history (admin; or the VM\'s token with --vm)')
      .argument('<pasid>', 'PASID (decimal or 0x hex)', pasidArg)
      .option('--vm <vm>', "ask as this VM (for a VM's token; refused if the PASID is another VM's)")
      .action(action(io, async (ctx, p: number, o: { vm?: string }) => {
        const info = o.vm !== undefined ? await ctx.client.getVmPasid(o.vm, p) : await ctx.client.getPasid(p);
        if (ctx.json) return printJson(ctx, info);
        print(ctx, pasidDetails(info, ctx.st));
      })),
  );

  pasid.addCommand(
    withCommon(new Command('bind'))
      .description("bind one of a VM's devices to one of its PASIDs")
      .argument('<vm>', 'VM id')
      .argument('<pasid>', 'PASID (decimal or 0x hex)', pasidArg)
      .argument('<bdf>', 'device, e.g. 0000:00:02.0')
      .action(action(io, async (ctx, vm: string, p: number, bdf: string) => {
        const r = await ctx.client.bind(vm, p, bdf);
        if (ctx.json) return printJson(ctx, { vm, ...r });
        print(ctx, `bound device ${r.bdf} of VM ${vm} to PASID ${fmtPasid(r.pasid)}`);
      })),
  );

  pasid.addCommand(
    withCommon(new Command('unbind'))
      .description('unbind a device from a PASID')
      .argument('<vm>', 'VM id')
      .argument('<pasid>', 'PASID (decimal or 0x hex)', pasidArg)
      .argument('<bdf>', 'device, e.g. 0000:00:02.0')
      .action(action(io, async (ctx, vm: string, p: number, bdf: string) => {
        await ctx.client.unbind(vm, p, bdf);
        if (ctx.json) return printJson(ctx, { vm, pasid: p, bdf, unbound: true });
        print(ctx, `unbound device ${bdf} of VM ${vm} from PASID ${fmtPasid(p)}`);
      })),
  );
  return prepare(pasid, io);
}

// ------------------------------------------------------------------ ioasid status

export interface StatusReport {
  readonly url: string;
  readonly healthy: boolean;
  readonly ready: boolean;
  readonly store: string | null;
  readonly vms: number;
  readonly pasids: { readonly allocated: number; readonly byVms: number; readonly capacity: number };
  readonly top: readonly { readonly id: string; readonly used: number; readonly quota: number }[];
}

export function statusCommand(io: CliIo = processIo()): Command {
  return prepare(
    withCommon(new Command('status'))
      .description(DESCRIPTIONS.status)
      .option('--top <n>', 'how many VMs to show (default 5)', integer('top'), 5)
      .action(action(io, async (ctx, o: { top: number }) => {
        const health = await ctx.client.health();
        let ready = false;
        let store: string | null = null;
        try {
          const r = await ctx.client.ready();
          ready = r.ready;
          store = r.store;
        } catch (e) {
          if (!isIoasidError(e) || e.details.status === undefined) throw e; // 503 while shutting down
        }
        const [vms, ns] = await Promise.all([ctx.client.listVms(), ctx.client.namespace()]);
        const report: StatusReport = {
          url: ctx.url,
          healthy: health.ok === true,
          ready,
          store,
          vms: vms.length,
          pasids: {
            allocated: ns.owners.reduce((n, x) => n + x.count, 0),
            byVms: vms.reduce((n, v) => n + v.used, 0),
            capacity: ns.capacity,
          },
          top: [...vms]
            .sort((a, b) => b.used - a.used || (a.id < b.id ? -1 : 1))
            .slice(0, o.top)
            .map((v) => ({ id: v.id, used: v.used, quota: v.quota })),
        };
        if (ctx.json) return printJson(ctx, report);
        const st = ctx.st;
        const state = report.healthy && report.ready ? st.ok('healthy') : report.healthy ? st.warn('healthy, not ready (shutting down)') : st.bad('unhealthy');
        print(ctx, `service  ${report.url}: ${state}`);
        print(ctx, `store    ${report.store ?? '-'}`);
        print(ctx, `VMs      ${report.vms}`);
        print(ctx, `PASIDs   ${report.pasids.allocated} allocated (${report.pasids.byVms} by VMs) of ${report.pasids.capacity}`);
        if (report.top.length) {
          print(ctx, `\n${st.bold('top VMs by PASID use')}`);
          print(ctx, table(['ID', 'USED/QUOTA'], report.top.map((v) => [st.accent(v.id), `${v.used}/${v.quota}`])).replace(/^/gm, '  '));
        }
      })),
    io,
  );
}

// ------------------------------------------------------------------ ioasid watch

/** ws's WebSocket, remembering its socket and last error (the client's callbacks carry neither). */
async function tracedWebSocket(track: { socket: WebSocket | null; error: Error | null }): Promise<WebSocketCtor> {
  // Loaded here: only `watch` needs a WebSocket, and every other command starts faster without it.
  const { default: WS } = await import('ws');
  class Traced extends WS {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols);
      track.socket = this;
      this.on('error', (e: Error) => {
        track.error = e;
      });
    }
  }
  return Traced as unknown as WebSocketCtor;
}

export function watchCommand(io: CliIo = processIo()): Command {
  return prepare(
    withCommon(new Command('watch'))
      .description(DESCRIPTIONS.watch)
      .option('--vm <vm>', 'only the events of this VM')
      .action(action(io, async (ctx, o: { vm?: string }) => {
        const track: { socket: WebSocket | null; error: Error | null } = { socket: null, error: null };
        const client = new IoasidClient({
          url: ctx.url,
          ...(ctx.token !== undefined ? { token: ctx.token } : {}),
          WebSocket: io.WebSocket ?? (await tracedWebSocket(track)),
        });
        // Check the token, the VM and the address over HTTP first: the stream itself can only
        // say "closed", while a request names the reason (ENOENT, EPERM, unreachable...).
        if (o.vm !== undefined) await ctx.client.getVm(o.vm);
        else {
          await ctx.client.recentEvents(1).catch((e: unknown) => {
            if (isIoasidError(e, 'EACCES')) throw new IoasidError('EACCES', `${e.message}: watching all events needs the admin token; a VM's token can watch its own VM with --vm VM`, e.details);
            throw e;
          });
        }
        const scope = o.vm !== undefined ? `VM ${o.vm}'s events` : 'all events';
        const errSt = style(ctx.colour && wantColour(io.stderrIsTTY, io.env));
        const failure = await new Promise<IoasidError | null>((done) => {
          let opened = false;
          let stopping = false;
          let offStop = () => {};
          const onEvent = (e: ApiEvent) => io.stdout(`${ctx.json ? JSON.stringify(e) : formatEvent(e, ctx.st)}\n`);
          const stop = client.events(onEvent, {
            ...(o.vm !== undefined ? { vm: o.vm } : {}),
            onOpen: () => {
              opened = true;
              io.stderr(errSt.dim(`watching ${scope} at ${ctx.url} (Ctrl-C to stop)`) + '\n');
            },
            onClose: (code, reason) => {
              offStop();
              if (stopping) return done(null);
              if (code === 4401) return done(new IoasidError('EPERM', `the service refused the event stream: ${reason || 'a valid token is required'}${o.vm === undefined ? ' (a VM token needs --vm VM)' : ''}`, { code }));
              if (!opened) {
                const why = track.error?.message ?? `closed with code ${code}`;
                return done(new IoasidError('ENODEV', `the service at ${ctx.url} is unreachable: ${why}`, { url: ctx.url }));
              }
              done(new IoasidError('ENODEV', `the connection to ${ctx.url} dropped (WebSocket code ${code}${reason ? `: ${reason}` : ''})`, { code }));
            },
          });
          offStop = io.onStop(() => {
            stopping = true;
            stop();
            // A peer that never answers the close handshake must not keep us waiting.
            setTimeout(() => {
              track.socket?.terminate();
              done(null);
            }, 2000).unref();
          });
        });
        if (failure !== null) throw failure;
      })),
    io,
  );
}

/** All the client commands, for `program.addCommand`. */
export function clientCommands(io: CliIo = processIo()): Command[] {
  return [vmCommand(io), pasidCommand(io), statusCommand(io), watchCommand(io)];
}

