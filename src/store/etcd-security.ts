/**
 * TLS and authentication between a host and etcd: the `etcds://` scheme, a CA, a client
 * certificate and its key, and an etcd user whose password is read from a file. Design and the
 * operator's commands in docs/cluster.md ("TLS and authentication").
 *
 * Rules:
 *  1. `etcds://` means TLS to every member; `etcd://` means plaintext and takes no TLS option (a
 *     CA, certificate or key given with `etcd://` is EINVAL, never silently unused).
 *  2. Without a CA file, etcd's certificate is checked against Node's CA list (and
 *     NODE_EXTRA_CA_CERTS): a publicly trusted or locally installed CA works as it does for curl.
 *  3. A client certificate and its key come together, and the key must be the certificate's.
 *  4. An etcd user comes with a password file, and a password file with a user. The password is
 *     never an option value: a user name with ":" (etcdctl's `user:password`) is refused without
 *     being echoed. The file holds one line (a final newline is dropped), at most 4 KiB.
 *  5. The password file and the key file are regular files readable by their owner only (no
 *     group or other bit, as ssh asks of a private key): anything looser is EINVAL with `chmod 600`.
 *  6. No error, log line or JSON form carries a secret: errors name files, users and endpoints.
 *     The secrets live in private fields of `EtcdCredentials` and go only to the etcd client.
 *  7. At open, every member that answers must accept these settings: a refusal fails the start at
 *     once (no retry can fix a certificate or a password) with an IoasidError naming the member
 *     and what is wrong (`details.reason`, one of `ETCD_REFUSALS`): EACCES when TLS fails either
 *     way or the user may not use the domain's keys, EPERM when etcd refuses the user and
 *     password (or gets none while it wants them), EINVAL when a user is given to an etcd without
 *     authentication. A member that does not answer is tolerated, as without TLS; when none
 *     answers within the retry budget, the start fails with ETIMEDOUT as before.
 *  8. A user and password over plaintext `etcd://` to a non-loopback member works but is warned
 *     about: the password crosses the network in clear.
 */
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { inspect } from 'node:util';
import type { Etcd3, IOptions } from 'etcd3';
import { IoasidError, type IoasidErrorCode } from '../core/index.ts';
import { isTransportError, makeClient, nextAttempt, sleep, type RetryPolicy } from './etcd-client.ts';

/** What a host needs to talk to an etcd that uses TLS and/or authentication (file paths only). */
export interface EtcdSecurityOptions {
  /** PEM file of the CA(s) that signed the members' server certificates (`etcds://` only). */
  readonly caFile?: string;
  /** PEM file of this host's client certificate (`etcds://` only; with `keyFile`). */
  readonly certFile?: string;
  /** PEM file of the client certificate's private key (mode 0600 or stricter). */
  readonly keyFile?: string;
  /** etcd user name (with `passwordFile`). */
  readonly user?: string;
  /** File holding the etcd user's password on one line (mode 0600 or stricter). */
  readonly passwordFile?: string;
}

/** Why a member refused, as `details.reason` of the IoasidError. */
export const ETCD_REFUSALS = [
  'server-certificate', 'client-certificate', 'tls-handshake', 'password', 'no-credentials', 'permission', 'auth-disabled',
] as const;
export type EtcdRefusal = (typeof ETCD_REFUSALS)[number];

const REFUSAL_CODE: Record<EtcdRefusal, IoasidErrorCode> = {
  'server-certificate': 'EACCES',
  'client-certificate': 'EACCES',
  'tls-handshake': 'EACCES',
  password: 'EPERM',
  'no-credentials': 'EPERM',
  permission: 'EACCES',
  'auth-disabled': 'EINVAL',
};

const MAX_PASSWORD_BYTES = 4096;
const MAX_PEM_BYTES = 1 << 20;

function given(v: string | undefined): v is string {
  return v !== undefined;
}

function optionError(message: string, details: Record<string, unknown>): IoasidError {
  return new IoasidError('EINVAL', message, { ...details, reason: 'option' });
}

/** Does `o` ask for anything? */
export function hasEtcdSecurity(o: EtcdSecurityOptions | undefined): boolean {
  return o !== undefined && [o.caFile, o.certFile, o.keyFile, o.user, o.passwordFile].some(given);
}

/** A store that is not etcd takes no etcd option (EINVAL, never silently unused). */
export function refuseEtcdSecurity(spec: string, o: EtcdSecurityOptions | undefined): void {
  if (hasEtcdSecurity(o)) throw optionError(`etcd TLS and authentication options need an etcd store (etcds://HOST:PORT,... or etcd://...), not ${spec}`, { spec });
}

/** Rules 1, 3 and 4 on the options alone (no file is read): EINVAL for a bad combination. */
export function checkEtcdSecurityOptions(tls: boolean, o: EtcdSecurityOptions | undefined, spec: string): void {
  if (o === undefined) return;
  for (const [name, v] of [['CA file', o.caFile], ['certificate file', o.certFile], ['key file', o.keyFile], ['password file', o.passwordFile]] as const) {
    if (v !== undefined && (typeof v !== 'string' || v.length === 0)) throw optionError(`etcd ${name} must be a path, got ${JSON.stringify(v)}`, { spec });
  }
  if (!tls) {
    const tlsOpts = [['a CA file', o.caFile], ['a client certificate', o.certFile], ['a client key', o.keyFile]].filter(([, v]) => v !== undefined).map(([n]) => n);
    if (tlsOpts.length > 0) {
      throw optionError(`store ${spec} is plaintext etcd://, yet ${tlsOpts.join(' and ')} was given: use etcds://HOST:PORT,... for TLS`, { spec });
    }
  }
  if (given(o.keyFile) && !given(o.certFile)) throw optionError(`an etcd client key (${o.keyFile}) needs its certificate: give the certificate file too`, { spec, keyFile: o.keyFile });
  if (given(o.certFile) && !given(o.keyFile)) throw optionError(`an etcd client certificate (${o.certFile}) needs its private key: give the key file too`, { spec, certFile: o.certFile });
  if (given(o.user)) {
    // Never echo the value: with ":" it may be etcdctl's user:password.
    if (typeof o.user !== 'string' || o.user.length === 0) throw optionError('etcd user must be a non-empty name', { spec });
    if (o.user.includes(':')) throw optionError('etcd user must be a name without ":" (a password never goes in an option: put it in a password file)', { spec });
    if (/[\u0000-\u001f\u007f\s]/.test(o.user) || o.user.length > 256) throw optionError('etcd user must be at most 256 characters without spaces or control characters', { spec });
    if (!given(o.passwordFile)) throw optionError(`etcd user "${o.user}" needs a password file (the password is never given in an option)`, { spec, user: o.user });
  } else if (given(o.passwordFile)) {
    throw optionError(`an etcd password file (${o.passwordFile}) needs the etcd user it belongs to`, { spec, passwordFile: o.passwordFile });
  }
}

/** Read a file we were pointed at, with errors that name it (never its content). */
function readFile(path: string, what: string, max: number, secret: boolean): Buffer {
  let st;
  try {
    st = statSync(path);
  } catch (e) {
    throw fileError(e, path, what);
  }
  if (!st.isFile()) throw new IoasidError('EINVAL', `etcd ${what} ${path} is not a regular file`, { file: path, reason: 'file' });
  if (st.size > max) throw new IoasidError('EINVAL', `etcd ${what} ${path} is ${st.size} bytes, more than ${max} (is it the right file?)`, { file: path, size: st.size, reason: 'file' });
  if (secret && process.platform !== 'win32' && (st.mode & 0o077) !== 0) {
    const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
    throw new IoasidError('EINVAL', `etcd ${what} ${path} is readable or writable by group or others (mode ${mode}): chmod 600 it (only its owner may read it)`, { file: path, mode, reason: 'file' });
  }
  try {
    return readFileSync(path);
  } catch (e) {
    throw fileError(e, path, what);
  }
}

function fileError(e: unknown, path: string, what: string): IoasidError {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  if (code === 'ENOENT') return new IoasidError('ENOENT', `etcd ${what} ${path} does not exist`, { file: path, reason: 'file' });
  if (code === 'EACCES' || code === 'EPERM') return new IoasidError('EACCES', `etcd ${what} ${path} cannot be read by this process (${code})`, { file: path, reason: 'file' });
  return new IoasidError('EINVAL', `etcd ${what} ${path} cannot be read (${code ?? String(e)})`, { file: path, reason: 'file' });
}

function pemCertificates(pem: Buffer, path: string, what: string): X509Certificate[] {
  const blocks = pem.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new IoasidError('EINVAL', `etcd ${what} ${path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`, { file: path, reason: 'file' });
  return blocks.map((b, i) => {
    try {
      return new X509Certificate(b);
    } catch (e) {
      throw new IoasidError('EINVAL', `etcd ${what} ${path}: certificate ${i + 1} cannot be parsed (${(e as Error).message})`, { file: path, reason: 'file' });
    }
  });
}

/**
 * The credentials read from the files (rule 6: the secrets stay in private fields; what prints is
 * `describe()`). Load with `EtcdCredentials.load`.
 */
export class EtcdCredentials {
  readonly tls: boolean;
  readonly caFile: string | null;
  readonly certFile: string | null;
  readonly user: string | null;
  readonly passwordFile: string | null;
  readonly #ca: Buffer | null;
  readonly #cert: Buffer | null;
  readonly #key: Buffer | null;
  readonly #password: string | null;

  private constructor(tls: boolean, files: { ca: string | null; cert: string | null; user: string | null; passwordFile: string | null }, secrets: { ca: Buffer | null; cert: Buffer | null; key: Buffer | null; password: string | null }) {
    this.tls = tls;
    this.caFile = files.ca;
    this.certFile = files.cert;
    this.user = files.user;
    this.passwordFile = files.passwordFile;
    this.#ca = secrets.ca;
    this.#cert = secrets.cert;
    this.#key = secrets.key;
    this.#password = secrets.password;
  }

  /** Check the options (rules 1, 3, 4) and read the files (rules 4, 5). */
  static load(tls: boolean, o: EtcdSecurityOptions = {}, spec = tls ? 'etcds://' : 'etcd://'): EtcdCredentials {
    checkEtcdSecurityOptions(tls, o, spec);
    const ca = given(o.caFile) ? readFile(o.caFile, 'CA file', MAX_PEM_BYTES, false) : null;
    if (ca !== null && given(o.caFile)) pemCertificates(ca, o.caFile, 'CA file');
    let cert: Buffer | null = null;
    let key: Buffer | null = null;
    if (given(o.certFile) && given(o.keyFile)) {
      cert = readFile(o.certFile, 'client certificate file', MAX_PEM_BYTES, false);
      const [leaf] = pemCertificates(cert, o.certFile, 'client certificate file');
      key = readFile(o.keyFile, 'client key file', MAX_PEM_BYTES, true);
      let k: KeyObject;
      try {
        k = createPrivateKey(key);
      } catch {
        // The parser's message may quote the file; say only what it is not.
        throw new IoasidError('EINVAL', `etcd client key file ${o.keyFile} holds no PEM private key this host can read (an encrypted key is not supported)`, { file: o.keyFile, reason: 'file' });
      }
      if (leaf !== undefined && !leaf.checkPrivateKey(k)) {
        throw new IoasidError('EINVAL', `etcd client key file ${o.keyFile} is not the key of the certificate in ${o.certFile}`, { file: o.keyFile, certFile: o.certFile, reason: 'file' });
      }
    }
    let password: string | null = null;
    if (given(o.user) && given(o.passwordFile)) {
      const raw = readFile(o.passwordFile, 'password file', MAX_PASSWORD_BYTES, true).toString('utf8');
      password = raw.replace(/\r?\n$/, '');
      if (password.length === 0) throw new IoasidError('EINVAL', `etcd password file ${o.passwordFile} is empty`, { file: o.passwordFile, reason: 'file' });
      if (/[\r\n\u0000]/.test(password)) throw new IoasidError('EINVAL', `etcd password file ${o.passwordFile} holds more than one line (it must hold the password alone)`, { file: o.passwordFile, reason: 'file' });
    }
    return new EtcdCredentials(tls, { ca: o.caFile ?? null, cert: o.certFile ?? null, user: o.user ?? null, passwordFile: o.passwordFile ?? null }, { ca, cert, key, password });
  }

  /** Anything beyond plaintext without a user? */
  get active(): boolean {
    return this.tls || this.user !== null;
  }

  get hasClientCertificate(): boolean {
    return this.#cert !== null;
  }

  /** The etcd3 client's options for these credentials. */
  clientOptions(): Pick<IOptions, 'credentials' | 'auth'> {
    return {
      ...(this.tls
        ? {
            credentials: {
              // null: Node's default CA list (rule 2); grpc-js takes it, etcd3's type does not say so.
              rootCertificate: this.#ca as Buffer,
              ...(this.#cert !== null && this.#key !== null ? { certChain: this.#cert, privateKey: this.#key } : {}),
            },
          }
        : {}),
      ...(this.user !== null && this.#password !== null ? { auth: { username: this.user, password: this.#password } } : {}),
    };
  }

  /** For logs: the files and the user, no secret. */
  describe(): string {
    const parts: string[] = [];
    if (this.tls) parts.push(`TLS (CA ${this.caFile ?? "Node's default list"}${this.certFile !== null ? `, client certificate ${this.certFile}` : ''})`);
    else parts.push('plaintext');
    if (this.user !== null) parts.push(`etcd user ${this.user} (password from ${this.passwordFile ?? '?'})`);
    return parts.join(', ');
  }

  toJSON(): string {
    return this.describe();
  }

  [inspect.custom](): string {
    return `EtcdCredentials(${this.describe()})`;
  }
}

// ------------------------------------------------------------------ refusals

function errorText(e: unknown): string {
  if (e instanceof Error) return `${e.constructor.name} ${e.message}`;
  return String(e);
}

/** The part of a gRPC/TLS message worth showing: the TLS alert, or the connection's last error. */
export function failureDetail(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  const alert = /alert ([a-z ]+?)(?::|\s*$|\n)/i.exec(msg);
  if (alert?.[1] !== undefined) return `TLS alert: ${alert[1].trim()}`;
  const last = /Last error: (?:Error: )?([\s\S]*?)(?:\.? Resolution note|\s\(\d{4}-\d\d-\d\dT|$)/.exec(msg);
  const text = (last?.[1] ?? msg).split('\n')[0]?.trim() ?? '';
  return text.length > 200 ? `${text.slice(0, 200)}...` : text;
}

const SERVER_CERT_RE = /unable to (get|verify)|self[- ]signed certificate|certificate (has expired|is not yet valid|signature failure|revoked|chain too long)|unsuitable certificate purpose|does not match certificate's altnames|invalid CA certificate|path length constraint/i;
const CLIENT_CERT_ALERT_RE = /alert (bad certificate|unsupported certificate|certificate revoked|certificate expired|certificate unknown|unknown ca|access denied|certificate required)/i;
const HANDSHAKE_RE = /\balert [a-z ]+|disconnected before secure TLS connection|wrong version number|packet length too long/i;

/** Which refusal `e` is, or null (a transport failure or some other error). */
export function refusalOf(e: unknown): EtcdRefusal | null {
  const t = errorText(e);
  if (/EtcdAuthenticationFailedError|authentication failed, invalid user ID or password/.test(t)) return 'password';
  if (/etcdserver: user name is empty/.test(t)) return 'no-credentials';
  if (/EtcdPermissionDeniedError|etcdserver: permission denied/.test(t)) return 'permission';
  if (/etcdserver: authentication is not enabled/.test(t)) return 'auth-disabled';
  if (SERVER_CERT_RE.test(t)) return 'server-certificate';
  if (CLIENT_CERT_ALERT_RE.test(t)) return 'client-certificate';
  if (HANDSHAKE_RE.test(t)) return 'tls-handshake';
  return null;
}

/** Where the probe looks: what a host of the domain must be allowed to read and write. */
export interface EtcdProbe {
  /** Every key of the domain (read and watched). */
  readonly prefix: string;
  readonly prefixEnd: string;
  /** A key no model reads, to check write permission without writing (the put is never run). */
  readonly writeKey: string;
}

/** The IoasidError for a member's refusal (rule 7), or null when `e` is not one. */
export function refusalError(e: unknown, creds: EtcdCredentials, endpoint: string, probe?: EtcdProbe): IoasidError | null {
  const reason = refusalOf(e);
  if (reason === null) return null;
  const member = `etcd member ${endpoint}`;
  const details: Record<string, unknown> = { endpoint, reason };
  let message: string;
  switch (reason) {
    case 'server-certificate':
      details.caFile = creds.caFile;
      message = `${member} presented a certificate this host does not trust (${failureDetail(e)}); it was checked against ${creds.caFile !== null ? `the CA in ${creds.caFile}` : "Node's default CA list (no CA file was given)"}`;
      break;
    case 'client-certificate':
      details.certFile = creds.certFile;
      message = creds.hasClientCertificate
        ? `${member} refused the client certificate in ${creds.certFile ?? '?'} (${failureDetail(e)}): it accepts only certificates signed by its trusted CA (--trusted-ca-file)`
        : `${member} requires a client certificate and none was given (${failureDetail(e)})`;
      break;
    case 'tls-handshake':
      message = `${member} broke off the TLS handshake (${failureDetail(e)}): does it serve TLS on this port? (a plaintext member is etcd://)`;
      break;
    case 'password':
      details.user = creds.user;
      details.passwordFile = creds.passwordFile;
      message = `${member} refused etcd user "${creds.user ?? ''}": wrong password or no such user (password read from ${creds.passwordFile ?? '?'})`;
      break;
    case 'no-credentials':
      message = `${member} has authentication enabled and this host gave no etcd user${creds.hasClientCertificate ? ' (and its client certificate does not name one)' : ''}`;
      break;
    case 'permission': {
      const who = creds.user !== null ? `etcd user "${creds.user}"` : creds.hasClientCertificate ? `the etcd user named by the client certificate ${creds.certFile ?? ''}` : 'this host';
      details.user = creds.user;
      if (probe !== undefined) details.prefix = probe.prefix;
      message = `${member} denied ${who} access to ${probe !== undefined ? `the domain's keys (${probe.prefix}, read and write)` : 'a key of the domain'}`;
      break;
    }
    case 'auth-disabled':
      details.user = creds.user;
      message = `${member} has authentication disabled, yet etcd user "${creds.user ?? ''}" was given (is this the right etcd cluster?)`;
      break;
  }
  return new IoasidError(REFUSAL_CODE[reason], message, details);
}

function isLoopback(endpoint: string): boolean {
  return /^(127\.\d+\.\d+\.\d+|\[::1\]|\[::ffff:127\.\d+\.\d+\.\d+\]|localhost):\d+$/i.test(endpoint);
}

/** Rule 8: the warning for a password sent in clear to a member off this machine, or null. */
export function plaintextPasswordWarning(creds: EtcdCredentials, endpoints: readonly string[]): string | null {
  if (creds.tls || creds.user === null) return null;
  const remote = endpoints.filter((ep) => !isLoopback(ep));
  if (remote.length === 0) return null;
  return `etcd user ${creds.user} over plaintext etcd://: the password crosses the network in clear to ${remote.join(', ')}; use etcds://`;
}

export interface ConnectOptions {
  /** `etcds://` (TLS) or `etcd://`. */
  readonly tls: boolean;
  readonly security?: EtcdSecurityOptions | undefined;
  /** The store spec, for messages. */
  readonly spec: string;
  readonly probe: EtcdProbe;
  readonly policy: RetryPolicy;
  readonly callTimeoutMs?: number | undefined;
  readonly warn?: (message: string, details?: Record<string, unknown>) => void;
}

interface Probing {
  readonly creds: EtcdCredentials;
  readonly probe: EtcdProbe;
  readonly make: (endpoints: readonly string[]) => Etcd3;
}

/**
 * The client a store uses: the credentials read (rules 1-5), every member checked with them
 * (rule 7; also without TLS or a user, so that an etcd that wants credentials says so clearly),
 * then one client given every endpoint.
 */
export async function connectEtcd(endpoints: readonly string[], o: ConnectOptions): Promise<Etcd3> {
  const creds = EtcdCredentials.load(o.tls, o.security, o.spec);
  const make = (eps: readonly string[]) => makeClient(eps, { credentials: creds, ...(o.callTimeoutMs !== undefined ? { callTimeoutMs: o.callTimeoutMs } : {}) });
  await verifyMembers(endpoints, { creds, probe: o.probe, make }, o.policy, o.warn);
  return make(endpoints);
}

type ProbeResult = { readonly ok: true } | { readonly ok: false; readonly transport: unknown };

/** One member, alone: can this host read and write the domain's keys there? */
async function probeMember(endpoint: string, o: Probing): Promise<ProbeResult> {
  const client = o.make([endpoint]);
  try {
    // Permission is checked for both branches of a transaction: the put (success branch) is
    // never run, its compare is never true (a create revision is never below 0); the range runs.
    await client.kv.txn({
      compare: [{ key: Buffer.from(o.probe.writeKey), target: 'Create', result: 'Less', create_revision: 0 }],
      success: [{ request_put: { key: Buffer.from(o.probe.writeKey), value: Buffer.from('probe') } }],
      failure: [{ request_range: { key: Buffer.from(o.probe.prefix), range_end: Buffer.from(o.probe.prefixEnd), limit: 1, keys_only: true } }],
    });
    return { ok: true };
  } catch (e) {
    const refused = refusalError(e, o.creds, endpoint, o.probe);
    if (refused !== null) throw refused;
    if (isTransportError(e)) return { ok: false, transport: e };
    throw e;
  } finally {
    client.close();
  }
}

/**
 * Rule 7: check every member with these credentials before the store uses them. Returns once at
 * least one member answered and none refused; throws the first refusal (in endpoint order).
 */
async function verifyMembers(endpoints: readonly string[], o: Probing, policy: RetryPolicy, warn?: (message: string, details?: Record<string, unknown>) => void): Promise<void> {
  const clear = plaintextPasswordWarning(o.creds, endpoints);
  if (clear !== null) warn?.(clear, {});
  const started = Date.now();
  for (let n = 1; ; n++) {
    const settled = await Promise.allSettled(endpoints.map((ep) => probeMember(ep, o)));
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed !== undefined) throw failed.reason;
    const results = settled.map((s) => (s as PromiseFulfilledResult<ProbeResult>).value);
    if (results.some((r) => r.ok)) return;
    const wait = nextAttempt(policy, n, started);
    const last = results.find((r): r is { ok: false; transport: unknown } => !r.ok);
    if (wait < 0) {
      const cause = failureDetail(last?.transport);
      throw new IoasidError('ETIMEDOUT', `no etcd member answered (${endpoints.join(', ')}) after ${n} attempts (${cause}); nothing was written`, { endpoints: [...endpoints], attempts: n, cause: cause.slice(0, 200) });
    }
    await sleep(wait);
  }
}
