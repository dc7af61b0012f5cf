/**
 * Bearer tokens: 256 random bits, shown once, stored only as a SHA-256 hash, compared in constant
 * time (the hashes have a fixed length, 64 hex digits, and `sameHash` compares every one of them).
 *
 * Where a token may travel (docs/security.md): the `Authorization` header (`Bearer`, the scheme
 * matched case-insensitively as RFC 7235 says) or, for the event stream's WebSocket, the
 * subprotocol `ioasid.bearer.<base64url of the token>` offered beside `ioasid.v1` (browsers can set
 * subprotocols but not headers). Never the URL: a URL ends up in logs, proxies and histories.
 */
import { hash, randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { EVENT_STREAM } from '../api/index.ts';
import { IoasidError } from '../core/index.ts';

export function newToken(): string {
  return randomBytes(32).toString('base64url');
}

/** The hex SHA-256 of a token (one-shot `crypto.hash`: a third of a Hash object's cost per request). */
export function hashToken(token: string): string {
  return hash('sha256', token, 'hex');
}

/** What a stored token hash must be: the hex SHA-256 of a token. */
export const TOKEN_HASH_RE = /^[0-9a-f]{64}$/;

export function tokenMatches(token: string, tokenHash: string): boolean {
  return sameHash(hashToken(token), tokenHash);
}

/**
 * Two hex hashes equal, in time that depends only on their length (which is public: 64): every
 * character is compared, none ends the loop early.
 */
export function sameHash(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

/** `Bearer <token>` (scheme in any case, one or more spaces); null when the header is not that. */
export function bearerOfHeader(header: unknown): string | null {
  if (typeof header !== 'string') return null;
  const m = /^bearer +(\S(?:.*\S)?) *$/is.exec(header.trim());
  return m?.[1] ?? null;
}

/**
 * The token offered as a WebSocket subprotocol (`ioasid.bearer.<base64url>`), null when none is;
 * undefined when the offer is malformed or names two different tokens.
 */
export function bearerOfProtocols(header: unknown): string | null | undefined {
  if (typeof header !== 'string') return null;
  let token: string | null = null;
  for (const p of header.split(',')) {
    const name = p.trim();
    if (!name.startsWith(EVENT_STREAM.bearerProtocolPrefix)) continue;
    const b64 = name.slice(EVENT_STREAM.bearerProtocolPrefix.length);
    if (!/^[A-Za-z0-9_-]{1,1400}$/.test(b64)) return undefined;
    const t = Buffer.from(b64, 'base64url').toString('utf8');
    if (token !== null && token !== t) return undefined;
    token = t;
  }
  return token;
}

/**
 * Read a token from a file given at start (e.g. `--metrics-token-file`): one line of at least 16
 * characters, the file readable by its owner only (a token readable by every user is no secret).
 * Errors name the file, never its content.
 */
export function readTokenFile(path: string, what: string): string {
  let st;
  try {
    st = statSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new IoasidError(code === 'ENOENT' ? 'ENOENT' : 'EINVAL', `${what} ${path} ${code === 'ENOENT' ? 'does not exist' : `cannot be read (${code ?? String(e)})`}`, { file: path });
  }
  if (!st.isFile()) throw new IoasidError('EINVAL', `${what} ${path} is not a regular file`, { file: path });
  if (st.size > 4096) throw new IoasidError('EINVAL', `${what} ${path} is ${st.size} bytes, more than 4096 (is it the right file?)`, { file: path, size: st.size });
  if (process.platform !== 'win32' && (st.mode & 0o077) !== 0) {
    const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
    throw new IoasidError('EINVAL', `${what} ${path} is readable or writable by group or others (mode ${mode}): chmod 600 it`, { file: path, mode });
  }
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new IoasidError(code === 'EACCES' ? 'EACCES' : 'EINVAL', `${what} ${path} cannot be read by this process (${code ?? String(e)})`, { file: path });
  }
  const token = text.replace(/\r?\n$/, '');
  if (/[\r\n]/.test(token)) throw new IoasidError('EINVAL', `${what} ${path} must hold one line`, { file: path });
  if (token.trim() !== token || token.length < 16) throw new IoasidError('EINVAL', `${what} ${path} must hold a token of at least 16 characters, without surrounding spaces`, { file: path });
  return token;
}
