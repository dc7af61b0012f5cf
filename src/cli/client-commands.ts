/**
 * The client commands: `ioasid vm`, `ioasid pasid`, `ioasid status`, `ioasid watch` and
 * `ioasid cluster` against a running `ioasid serve`. Thin: they parse arguments, call the typed
 * `IoasidClient` and print what it returns; every rule is the service's. Arguments the contract
 * constrains (VM ids, PASIDs, BDFs, counts, quotas, segments) are checked here first, against the
 * contract's own limits, so a typo is a usage error that names the argument. Each command takes
 * `--url` (http://, https:// or unix:PATH), `--token`, `--token-file`, `--timeout` and `--json`;
 * text is for people, `--json` prints the service's answer as JSON (`watch --json`: one object
 * per line).
 *
 * Exit status: 0 on success; 1 when the service refuses or cannot be reached, after
 * `error: CODE: message` on stderr; 2 for a usage error (bad flag or argument).
 */
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import type WebSocket from 'ws';
import {
  IoasidClient, IoasidError, OPERATIONS, PASID_MAX, PASID_MIN, isIoasidError, type ApiEvent, type ClientOptions, type FetchLike, type PasidInfo,
} from '../client/index.ts';
import { httpTransport, withDeadline } from './http-transport.ts';
import {
  fmtPasid, formatEvent, plural, runs, style, table, vmDetails, vmTable, wantColour, type Style,
} from './format.ts';
import { DESCRIPTIONS } from './descriptions.ts';
import { usageRules } from './usage.ts';

export const DEFAULT_URL = 'http://127.0.0.1:7070';
/** Where `ioasid serve` writes the admin token it creates (relative to its working folder). */
export const DEFAULT_ADMIN_TOKEN_FILE = './var/admin.token';
/** A request with no answer after this long fails (`--timeout`, `IOASID_TIMEOUT`). */
export const DEFAULT_TIMEOUT_S = 10;

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

// ------------------------------------------------------------------ the contract's limits

const CREATE = OPERATIONS.createVm.body.properties;
const ALLOC = OPERATIONS.allocPasids.body.properties;
const DEVICE = OPERATIONS.addDevice.body.properties;
const LIMITS = {
  vmId: new RegExp(CREATE.id.pattern),
  hostId: new RegExp(OPERATIONS.migrateVm.body.properties.to.pattern),
  bdf: new RegExp(DEVICE.bdf.pattern),
  quota: { min: CREATE.quota.minimum, max: CREATE.quota.maximum },
  count: { min: ALLOC.count.minimum, max: ALLOC.count.maximum },
  pasid: { min: PASID_MIN, max: PASID_MAX },
  segment: { min: OPERATIONS.addViommu.body.properties.segment.minimum, max: OPERATIONS.addViommu.body.properties.segment.maximum },
  pasidBits: { min: DEVICE.pasidBits.minimum, max: DEVICE.pasidBits.maximum },
} as const;

/** How the contract's fields read to a person at the command line (server refusals are rephrased with them). */
const SAYS = {
  vmId: 'a VM id is 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit',
  hostId: 'a host id is 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit',
  bdf: 'a device is a PCI address segment:bus:device.function in hex, e.g. 0000:00:02.0 (device 00-1f, function 0-7)',
} as const;

// ------------------------------------------------------------------ argument parsers

/** A usage error found after parsing (e.g. a bad IOASID_URL): exit 2, like commander's own. */
class UsageError extends Error {}

const hex = (n: number) => `0x${n.toString(16)}`;

/** A non-negative integer, decimal or 0x hex, within [min, max]. */
function integer(what: string, range?: { readonly min: number; readonly max: number }, asHex = false) {
  return (v: string): number => {
    const s = v.trim();
    const n = /^[0-9]+$/.test(s) ? Number(s) : /^0x[0-9a-f]+$/i.test(s) ? Number.parseInt(s.slice(2), 16) : Number.NaN;
    if (!Number.isSafeInteger(n)) throw new InvalidArgumentError(`${what} must be a non-negative integer (decimal or 0x hex), got ${JSON.stringify(v)}`);
    if (range !== undefined && (n < range.min || n > range.max)) {
      const fmt = (x: number) => (asHex ? `${x} (${hex(x)})` : String(x));
      throw new InvalidArgumentError(`${what} must be in [${fmt(range.min)}, ${fmt(range.max)}], got ${JSON.stringify(v)}${asHex ? ` (${hex(n)})` : ''}`);
    }
    return n;
  };
}

/** A PASID: 1..0xfffff (20 bits; 0 is DMA without a PASID). */
const pasidArg = (v: string): number => {
  try {
    return integer('a PASID', LIMITS.pasid, true)(v);
  } catch (e) {
    if (e instanceof InvalidArgumentError && /must be in/.test(e.message)) throw new InvalidArgumentError(`${e.message}: a PASID is 20 bits, and 0 means no PASID`);
    throw e;
  }
};

function vmIdArg(v: string): string {
  if (!LIMITS.vmId.test(v)) throw new InvalidArgumentError(`${SAYS.vmId}, got ${JSON.stringify(v)}`);
  return v;
}

function hostIdArg(v: string): string {
  if (!LIMITS.hostId.test(v)) throw new InvalidArgumentError(`${SAYS.hostId}, got ${JSON.stringify(v)}`);
  return v;
}

function bdfArg(v: string): string {
  const s = v.trim();
  if (!LIMITS.bdf.test(s)) throw new InvalidArgumentError(`${SAYS.bdf}, got ${JSON.stringify(v)}${/^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/i.test(s) ? ` (give the segment too: 0000:${s})` : ''}`);
  return s.toLowerCase();
}

/** `--timeout`: seconds, or a number with ms, s or m. */
export function durationArg(v: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$/.exec(v);
  const ms = m === null ? Number.NaN : Number(m[1]) * (m[2] === 'ms' ? 1 : m[2] === 'm' ? 60_000 : 1000);
  if (!Number.isFinite(ms) || ms <= 0 || ms > 3_600_000) throw new InvalidArgumentError(`a timeout is a duration above 0 and at most 1 h, in seconds or with a unit (500ms, 10s, 2m), got ${JSON.stringify(v)}`);
  return ms;
}

function collect<T>(parse: (v: string) => T) {
  return (v: string, previous: T[]): T[] => [...previous, parse(v)];
}

interface ViommuArg { segment: number; layout?: 'A' | 'B'; rangeExtension?: boolean }
interface DeviceArg { bdf: string; pasidBits?: number }

const segmentArg = integer('a segment', LIMITS.segment);

/** `SEG[:A|B][:rx]`, e.g. `0`, `1:A`, `2:B:rx`. */
function viommuArg(v: string): ViommuArg {
  const m = /^([0-9]+|0x[0-9a-f]+)(?::([ab]))?(?::(rx))?$/i.exec(v.trim());
  if (m === null) throw new InvalidArgumentError(`a vIOMMU is SEG[:A|B][:rx] (e.g. 0, 1:A, 2:B:rx), got ${JSON.stringify(v)}`);
  return {
    segment: segmentArg(m[1] as string),
    ...(m[2] !== undefined ? { layout: m[2].toUpperCase() as 'A' | 'B' } : {}),
    ...(m[3] !== undefined ? { rangeExtension: true } : {}),
  };
}

/** `BDF[:BITS]`, e.g. `0000:00:02.0` or `0000:00:02.0:10`. */
function deviceArg(v: string): DeviceArg {
  const parts = v.trim().split(':');
  if (parts.length !== 3 && parts.length !== 4) throw new InvalidArgumentError(`a device is BDF[:BITS] (e.g. 0000:00:02.0 or 0000:00:02.0:10), got ${JSON.stringify(v)}`);
  const bdf = bdfArg(parts.slice(0, 3).join(':'));
  return parts.length === 4 ? { bdf, pasidBits: integer('the PASID width (BITS)', LIMITS.pasidBits)(parts[3] as string) } : { bdf };
}

// ------------------------------------------------------------------ connection and errors

interface CommonOpts {
  url?: string;
  token?: string;
  tokenFile?: string;
  timeout?: number;
  json?: boolean;
  /** false with --no-color. */
  color?: boolean;
}

interface Ctx {
  readonly io: CliIo;
  readonly client: IoasidClient;
  /** As given: http://..., https://... or unix:/abs/path. */
  readonly url: string;
  /** The Unix socket of a unix: URL, else null. */
  readonly socketPath: string | null;
  readonly timeoutMs: number;
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
    .option('--url <url>', `service URL: http://HOST:PORT, https://..., or unix:PATH for a Unix socket (default: $IOASID_URL, else ${DEFAULT_URL})`)
    .option('--token <token>', 'bearer token, admin or a VM\'s (default: $IOASID_TOKEN)')
    .option('--token-file <path>', `read the bearer token from a file (default: $IOASID_TOKEN_FILE, else ${DEFAULT_ADMIN_TOKEN_FILE} if it exists)`)
    .addOption(new Option('--timeout <duration>', `give up on a request after this long: seconds, or 500ms, 2m (default: $IOASID_TIMEOUT, else ${DEFAULT_TIMEOUT_S}s)`).argParser(durationArg))
    .option('--json', 'print JSON instead of text')
    .option('--no-color', 'plain text even on a terminal (as NO_COLOR=1)');
}

/** `--url` or IOASID_URL: an http(s) URL, or `unix:PATH` (relative to the current folder). */
function serviceUrl(raw: string, from: string, cwd: string): { url: string; socketPath: string | null } {
  if (raw.startsWith('unix:')) {
    const path = raw.slice('unix:'.length).replace(/^\/\/(?=\/)/, '');
    if (path === '') throw new UsageError(`${from} unix: needs the socket's path, as in unix:/run/ioasid.sock`);
    const abs = resolve(cwd, path);
    return { url: `unix:${abs}`, socketPath: abs };
  }
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new UsageError(`${from} is not a URL: ${JSON.stringify(raw)} (expected e.g. ${DEFAULT_URL} or unix:/run/ioasid.sock)`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new UsageError(`${from} must be an http://, https:// or unix: URL, got ${JSON.stringify(raw)}`);
  return { url: raw.replace(/\/+$/, ''), socketPath: null };
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

/** Token precedence: --token, --token-file, $IOASID_TOKEN, $IOASID_TOKEN_FILE, then ./var/admin.token if present. */
function resolveToken(io: CliIo, o: CommonOpts): { token: string | undefined; from: string | null } {
  if (o.token !== undefined) return { token: o.token, from: '--token' };
  if (o.tokenFile !== undefined) return { token: readToken(resolve(io.cwd, o.tokenFile), 'token file'), from: `--token-file ${o.tokenFile}` };
  const env = io.env.IOASID_TOKEN;
  if (env !== undefined && env !== '') return { token: env, from: 'IOASID_TOKEN' };
  const envFile = io.env.IOASID_TOKEN_FILE;
  if (envFile !== undefined && envFile !== '') return { token: readToken(resolve(io.cwd, envFile), 'token file (IOASID_TOKEN_FILE)'), from: `IOASID_TOKEN_FILE ${envFile}` };
  const def = resolve(io.cwd, DEFAULT_ADMIN_TOKEN_FILE);
  if (existsSync(def)) return { token: readToken(def, 'admin token file'), from: DEFAULT_ADMIN_TOKEN_FILE };
  return { token: undefined, from: null };
}

function timeoutOf(io: CliIo, o: CommonOpts): number {
  if (o.timeout !== undefined) return o.timeout;
  const env = io.env.IOASID_TIMEOUT;
  if (env === undefined || env === '') return DEFAULT_TIMEOUT_S * 1000;
  try {
    return durationArg(env);
  } catch (e) {
    throw new UsageError(`IOASID_TIMEOUT: ${(e as Error).message}`);
  }
}

function context(io: CliIo, o: CommonOpts): Ctx {
  const { url, socketPath } = o.url !== undefined
    ? serviceUrl(o.url, '--url', io.cwd)
    : io.env.IOASID_URL ? serviceUrl(io.env.IOASID_URL, 'IOASID_URL', io.cwd) : { url: DEFAULT_URL, socketPath: null };
  const timeoutMs = timeoutOf(io, o);
  const { token, from } = resolveToken(io, o);
  const client = new IoasidClient({
    url,
    ...(token !== undefined ? { token } : {}),
    fetch: io.fetch !== undefined ? withDeadline(io.fetch, timeoutMs) : httpTransport(timeoutMs, socketPath === null ? undefined : { base: url, socketPath }),
  });
  return {
    io, client, url, socketPath, timeoutMs, token, tokenFrom: from, json: o.json === true,
    colour: o.color !== false, st: style(o.color !== false && wantColour(io.stdoutIsTTY, io.env)),
  };
}

/** What to add to a refusal so the user knows what to try next. */
function hint(e: IoasidError, tokenFrom: string | null): string {
  if (e.code === 'ENODEV' && typeof e.details.url === 'string' && /unreachable|no answer/.test(e.message)) return ' (is `ioasid serve` running there? choose another with --url or IOASID_URL)';
  if (e.code === 'EREMOTE') return typeof e.details.url === 'string' ? ` (send it to ${e.details.url}: --url ${e.details.url})` : ' (send it to the host that runs the VM)';
  if (e.code === 'EPERM' && tokenFrom === null) return ` (no token given: pass --token or --token-file, set IOASID_TOKEN or IOASID_TOKEN_FILE, or run where ${DEFAULT_ADMIN_TOKEN_FILE} is)`;
  // EACCES is also "another VM's PASID"; name the token only when the token is the problem.
  if (e.code === 'EPERM' || (e.code === 'EACCES' && /token/.test(e.message))) return tokenFrom !== null ? ` (token from ${tokenFrom})` : '';
  return '';
}

/** The contract's field names, as the command line says them. */
const FIELD_NAMES: Readonly<Record<string, string>> = {
  count: '--count', min: '--min', max: '--max', quota: '--quota', id: 'the VM id', vm: 'the VM id', pasid: 'the PASID',
  bdf: 'the device (BDF)', segment: 'the segment', pasidBits: 'the PASID width', to: 'the host', host: 'the host', limit: 'the limit',
};

/**
 * A refusal as a person should read it. The service's schema errors name the contract's fields
 * (`request body body/bdf must match pattern "..."`): they are said with the command line's names
 * and in words; a quota refusal speaks of the VM's PASIDs, with the numbers.
 */
export function humanMessage(e: IoasidError): string {
  const d = e.details;
  if (e.code === 'EDQUOT' && typeof d.set === 'string' && typeof d.quota === 'number' && typeof d.count === 'number') {
    const left = Math.max(0, d.quota - d.count);
    if (typeof d.requested === 'number') {
      return `VM ${d.set} holds ${plural(d.count, 'PASID')} of its quota of ${d.quota}: ${d.requested} more would exceed it (${left} left)`;
    }
    return `VM ${d.set} holds all ${d.quota} PASIDs of its quota`;
  }
  const m = /^request (?:body|params|querystring|query) (?:(?:body|params|querystring|query)\/?)?([A-Za-z]*)\s*(.*)$/.exec(e.message);
  if (e.code === 'EINVAL' && m !== null) {
    const field = m[1] ?? '';
    const rest = m[2] ?? '';
    const name = FIELD_NAMES[field] ?? (field === '' ? 'the request' : field);
    if (/must match pattern/.test(rest)) {
      if (field === 'bdf') return SAYS.bdf;
      if (field === 'id' || field === 'vm') return SAYS.vmId;
      if (field === 'to' || field === 'host') return SAYS.hostId;
      return `${name} is not in the expected form`;
    }
    const bound = /^must be (<=|>=|<|>) (\d+)$/.exec(rest);
    if (bound !== null) {
      const n = Number(bound[2]);
      const said = { '<=': 'at most', '>=': 'at least', '<': 'below', '>': 'above' }[bound[1] as '<=' | '>=' | '<' | '>'];
      return `${name} must be ${said} ${n}${n > 255 ? ` (${hex(n)})` : ''}`;
    }
    if (/must NOT have additional properties/.test(rest)) return `${name} has a field the service does not know`;
    if (/must have required property '([^']+)'/.test(rest)) return `${name} lacks ${FIELD_NAMES[/'([^']+)'/.exec(rest)?.[1] ?? ''] ?? /'([^']+)'/.exec(rest)?.[1] ?? 'a field'}`;
    if (/must be (integer|number)/.test(rest)) return `${name} must be a whole number`;
    return `${name} ${rest}`.trim();
  }
  return e.message;
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
    message = humanMessage(e) + hint(e, tokenFrom);
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
  return usageRules(cmd, io);
}

// ------------------------------------------------------------------ ioasid vm

export function vmCommand(io: CliIo = processIo()): Command {
  const vm = new Command('vm').description(DESCRIPTIONS.vm);

  vm.addCommand(
    withCommon(new Command('create'))
      .description("create a VM with its vIOMMUs and devices; prints the VM's token, once")
      .argument('<id>', 'VM id: 1-63 letters, digits, ".", "_" or "-"', vmIdArg)
      .option('--quota <n>', 'how many PASIDs the VM may hold, 0 for no limit (default: the service\'s)', integer('--quota', LIMITS.quota))
      .option('--viommu <spec>', 'add a vIOMMU: SEG[:A|B][:rx] (segment, register layout, range extension); repeatable', collect(viommuArg), [] as ViommuArg[])
      .option('--device <spec>', "assign a device: BDF[:BITS] (its PCI address as the guest sees it, behind the vIOMMU of its segment; its PASID width); repeatable", collect(deviceArg), [] as DeviceArg[])
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
      .argument('<id>', 'VM id', vmIdArg)
      .action(action(io, async (ctx, id: string) => {
        const v = await ctx.client.getVm(id);
        if (ctx.json) return printJson(ctx, v);
        print(ctx, vmDetails(v, ctx.st));
      })),
  );

  vm.addCommand(
    withCommon(new Command('destroy'))
      .description('destroy a VM: unbind its devices, free every PASID it holds, forget it')
      .argument('<id>', 'VM id', vmIdArg)
      .action(action(io, async (ctx, id: string) => {
        const r = await ctx.client.destroyVm(id);
        if (ctx.json) return printJson(ctx, { vm: id, ...r });
        print(ctx, `destroyed VM ${ctx.st.accent(id)}: freed ${plural(r.freed.length, 'PASID')}${r.freed.length ? ` (${runs(r.freed)})` : ''}, dropped ${plural(r.bindings, 'binding')}`);
      })),
  );
  vm.addCommand(
    withCommon(new Command('add-viommu'))
      .description('hot-plug a vIOMMU into a VM: SEG[:A|B][:rx] (admin token)')
      .argument('<vm>', 'VM id', vmIdArg)
      .argument('<spec>', 'SEG[:A|B][:rx]: PCI segment, register layout (default B), range extension', viommuArg)
      .action(action(io, async (ctx, id: string, spec: ViommuArg) => {
        const v = await ctx.client.addViommu(id, spec);
        if (ctx.json) return printJson(ctx, v);
        print(ctx, `added a vIOMMU on segment ${spec.segment} to VM ${ctx.st.accent(id)}\n${vmDetails(v, ctx.st)}`);
      })),
  );

  vm.addCommand(
    withCommon(new Command('remove-viommu'))
      .description('hot-unplug the vIOMMU of a segment (no device may sit behind it; admin token)')
      .argument('<vm>', 'VM id', vmIdArg)
      .argument('<segment>', 'PCI segment (decimal or 0x hex)', segmentArg)
      .action(action(io, async (ctx, id: string, segment: number) => {
        const v = await ctx.client.removeViommu(id, segment);
        if (ctx.json) return printJson(ctx, v);
        print(ctx, `removed the vIOMMU on segment ${segment} from VM ${ctx.st.accent(id)}\n${vmDetails(v, ctx.st)}`);
      })),
  );

  vm.addCommand(
    withCommon(new Command('add-device'))
      .description("assign a device to a VM: BDF[:BITS], behind the vIOMMU of its segment (admin token)")
      .argument('<vm>', 'VM id', vmIdArg)
      .argument('<spec>', "BDF[:BITS]: the device's PCI address as the guest sees it, and its PASID width (default 20)", deviceArg)
      .action(action(io, async (ctx, id: string, spec: DeviceArg) => {
        const v = await ctx.client.addDevice(id, spec);
        if (ctx.json) return printJson(ctx, v);
        print(ctx, `assigned device ${spec.bdf} to VM ${ctx.st.accent(id)}\n${vmDetails(v, ctx.st)}`);
      })),
  );

  vm.addCommand(
    withCommon(new Command('remove-device'))
      .description('remove a device from a VM; its bindings are dropped (admin token)')
      .argument('<vm>', 'VM id', vmIdArg)
      .argument('<bdf>', 'the device, e.g. 0000:00:02.0', bdfArg)
      .action(action(io, async (ctx, id: string, bdf: string) => {
        const v = await ctx.client.removeDevice(id, bdf);
        if (ctx.json) return printJson(ctx, v);
        print(ctx, `removed device ${bdf} from VM ${ctx.st.accent(id)}\n${vmDetails(v, ctx.st)}`);
      })),
  );

  vm.addCommand(
    withCommon(new Command('rotate-token'))
      .description("give a VM a new token, printed once; the old one stops working at once and its event streams end (admin token)")
      .argument('<vm>', 'VM id', vmIdArg)
      .action(action(io, async (ctx, id: string) => {
        const r = await ctx.client.replaceToken(id);
        if (ctx.json) return printJson(ctx, r);
        print(ctx, `token of VM ${ctx.st.accent(id)} replaced: the old one no longer works`);
        print(ctx, `\ntoken  ${ctx.st.bold(r.token)}`);
        print(ctx, ctx.st.dim("This token is shown once: the service keeps only its hash. Give it to the VM's VMM (--token or IOASID_TOKEN)."));
      })),
  );

  vm.addCommand(
    withCommon(new Command('migrate'))
      .description('cluster mode: move a VM with every PASID and binding it holds to another host of its domain, in one commit (admin token; sent to the host it runs on)')
      .argument('<vm>', 'VM id', vmIdArg)
      .requiredOption('--to <host>', 'the host id to move it to', hostIdArg)
      .action(action(io, async (ctx, id: string, o: { to: string }) => {
        const r = await ctx.client.migrateVm(id, o.to);
        if (ctx.json) return printJson(ctx, r);
        print(ctx, `migrated VM ${ctx.st.accent(id)} from ${r.from} to ${r.to} with ${plural(r.pasids.length, 'PASID')}${r.pasids.length ? ` (${runs(r.pasids)})` : ''} and ${plural(r.bindings, 'binding')} (etcd revision ${r.revision})`);
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
      .argument('<vm>', 'VM id', vmIdArg)
      .option('--count <n>', `how many, ${LIMITS.count.min}-${LIMITS.count.max} (default 1)`, integer('--count', LIMITS.count))
      .option('--min <pasid>', 'lowest acceptable PASID (default 1)', pasidArg)
      .option('--max <pasid>', 'highest acceptable PASID (default 0xfffff)', pasidArg)
      .action(action(io, async (ctx, vm: string, o: { count?: number; min?: number; max?: number }) => {
        if (o.min !== undefined && o.max !== undefined && o.min > o.max) throw new UsageError(`--min ${fmtPasid(o.min)} is above --max ${fmtPasid(o.max)}`);
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
      .argument('<vm>', 'VM id', vmIdArg)
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
      .argument('<vm>', 'VM id', vmIdArg)
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
      .option('--vm <vm>', "ask as this VM (for a VM's token; refused if the PASID is another VM's)", vmIdArg)
      .action(action(io, async (ctx, p: number, o: { vm?: string }) => {
        const info = o.vm !== undefined ? await ctx.client.getVmPasid(o.vm, p) : await ctx.client.getPasid(p);
        if (ctx.json) return printJson(ctx, info);
        print(ctx, pasidDetails(info, ctx.st));
      })),
  );

  pasid.addCommand(
    withCommon(new Command('bind'))
      .description("bind one of a VM's devices to one of its PASIDs")
      .argument('<vm>', 'VM id', vmIdArg)
      .argument('<pasid>', 'PASID (decimal or 0x hex)', pasidArg)
      .argument('<bdf>', 'device, e.g. 0000:00:02.0', bdfArg)
      .action(action(io, async (ctx, vm: string, p: number, bdf: string) => {
        const r = await ctx.client.bind(vm, p, bdf);
        if (ctx.json) return printJson(ctx, { vm, ...r });
        print(ctx, `bound device ${r.bdf} of VM ${vm} to PASID ${fmtPasid(r.pasid)}`);
      })),
  );

  pasid.addCommand(
    withCommon(new Command('unbind'))
      .description('unbind a device from a PASID')
      .argument('<vm>', 'VM id', vmIdArg)
      .argument('<pasid>', 'PASID (decimal or 0x hex)', pasidArg)
      .argument('<bdf>', 'device, e.g. 0000:00:02.0', bdfArg)
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
  /** Why the service is not ready (shutting down, its store cannot commit, fenced...), or null. */
  readonly notReady: string | null;
  readonly store: string | null;
  readonly vms: number;
  readonly pasids: { readonly allocated: number; readonly byVms: number; readonly capacity: number };
  readonly top: readonly { readonly id: string; readonly used: number; readonly quota: number }[];
}

export function statusCommand(io: CliIo = processIo()): Command {
  return prepare(
    withCommon(new Command('status'))
      .description(DESCRIPTIONS.status)
      .option('--top <n>', 'how many VMs to show (default 5)', integer('--top'), 5)
      .action(action(io, async (ctx, o: { top: number }) => {
        const health = await ctx.client.health();
        let ready = false;
        let store: string | null = null;
        let notReady: string | null = null;
        try {
          const r = await ctx.client.ready();
          ready = r.ready;
          store = r.store;
        } catch (e) {
          if (!isIoasidError(e) || e.details.status === undefined) throw e; // 503: not ready, and why
          notReady = typeof e.details.reason === 'string' ? e.details.reason : e.message;
        }
        const [vms, ns] = await Promise.all([ctx.client.listVms(), ctx.client.namespace()]);
        const report: StatusReport = {
          url: ctx.url,
          healthy: health.ok === true,
          ready,
          notReady,
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
        const state = report.healthy && report.ready ? st.ok('healthy') : report.healthy ? st.warn(`healthy, not ready (${report.notReady ?? 'unknown'})`) : st.bad('unhealthy');
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

/**
 * ws's WebSocket, remembering its socket and last error (the client's callbacks carry neither);
 * for a `unix:PATH` service, the client's `unix:PATH/v1/events?...` becomes ws's
 * `ws+unix://PATH:/v1/events?...`.
 */
async function tracedWebSocket(track: { socket: WebSocket | null; error: Error | null }, socketPath: string | null): Promise<WebSocketCtor> {
  // Loaded here: only `watch` needs a WebSocket, and every other command starts faster without it.
  const { default: WS } = await import('ws');
  const base = socketPath === null ? null : `unix:${socketPath}`;
  class Traced extends WS {
    constructor(url: string, protocols?: string | string[]) {
      super(base !== null && url.startsWith(base) ? `ws+unix://${socketPath}:${url.slice(base.length)}` : url, protocols);
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
      .option('--vm <vm>', 'only the events of this VM', vmIdArg)
      .action(action(io, async (ctx, o: { vm?: string }) => {
        const track: { socket: WebSocket | null; error: Error | null } = { socket: null, error: null };
        const client = new IoasidClient({
          url: ctx.url,
          ...(ctx.token !== undefined ? { token: ctx.token } : {}),
          WebSocket: io.WebSocket ?? (await tracedWebSocket(track, ctx.socketPath)),
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
          // The stream must open within the timeout too (a listener that never upgrades it).
          const opening = setTimeout(() => {
            if (opened || stopping) return;
            done(new IoasidError('ENODEV', `the service at ${ctx.url} is unreachable: the event stream did not open within ${ctx.timeoutMs / 1000} s`, { url: ctx.url }));
            offStop();
            stopping = true;
            stop();
            track.socket?.terminate();
          }, ctx.timeoutMs);
          opening.unref();
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

// ------------------------------------------------------------------ ioasid cluster

export function clusterCommand(io: CliIo = processIo()): Command {
  const cluster = new Command('cluster').description(DESCRIPTIONS.cluster);

  cluster.addCommand(
    withCommon(new Command('status'))
      .description('the migration domain as this host sees it: hosts (alive or not), VMs and where they run, PASID blocks (admin token)')
      .action(action(io, async (ctx) => {
        const c = await ctx.client.clusterStatus();
        if (ctx.json) return printJson(ctx, c);
        const st = ctx.st;
        print(ctx, `domain   ${st.accent(c.domain)} (this host: ${c.host}, etcd revision ${c.revision})`);
        if (c.fenced !== null) print(ctx, st.bad(`FENCED by ${c.fenced.by} at revision ${c.fenced.revision}: ${c.fenced.reason}; every change is refused until this service restarts`));
        print(ctx, `PASIDs   ${c.pasids} in the domain, blocks of ${c.blockSize}: ${c.blocks.own} held here of ${c.blocks.total}`);
        if (c.inconsistencies > 0) print(ctx, st.warn(`${plural(c.inconsistencies, 'inconsistency', 'inconsistencies')} found in the domain's keys (see the service's log)`));
        print(ctx, `\n${st.bold('hosts')}`);
        print(ctx, table(['HOST', 'ALIVE', 'VMS', 'BLOCKS', 'URL'], c.hosts.map((h) => [st.accent(h.id), h.alive ? st.ok('yes') : st.bad('no'), String(h.vms), String(h.blocks), h.url ?? '-'])).replace(/^/gm, '  '));
        if (c.vms.length) {
          print(ctx, `\n${st.bold('VMs')}`);
          print(ctx, table(['VM', 'HOST', 'STATE', 'PASIDS'], c.vms.map((v) => [st.accent(v.id), v.host, v.state, String(v.pasids)])).replace(/^/gm, '  '));
        }
      })),
  );

  cluster.addCommand(
    withCommon(new Command('reclaim'))
      .description("an operator's reclaim of a dead host: fence it, then free its VMs' PASIDs, bindings and blocks (admin token)")
      .argument('<host>', 'the host id to reclaim', hostIdArg)
      .option('--force', 'reclaim even while its lease is alive (only when you know it is gone: its guests lose their PASIDs)')
      .action(action(io, async (ctx, host: string, o: { force?: boolean }) => {
        const r = await ctx.client.reclaimHost(host, o.force === true ? { force: true } : {});
        if (ctx.json) return printJson(ctx, r);
        print(ctx, `reclaimed host ${ctx.st.accent(r.host)} (fenced at etcd revision ${r.fencedAt}): ${plural(r.vms.length, 'VM')}${r.vms.length ? ` (${r.vms.join(', ')})` : ''}, ${plural(r.pasids, 'PASID')}, ${plural(r.bindings, 'binding')} and ${plural(r.blocks, 'block')} freed`);
      })),
  );
  return prepare(cluster, io);
}

/** All the client commands, for `program.addCommand`. */
export function clientCommands(io: CliIo = processIo()): Command[] {
  return [vmCommand(io), pasidCommand(io), statusCommand(io), watchCommand(io), clusterCommand(io)];
}

