/**
 * The CLI's HTTP transport for the typed client: node:http and node:https, with a deadline. The
 * client needs only status, ok, text() and arrayBuffer() of an answer; Node's global fetch loads
 * its whole HTTP stack (undici) at the first call, which costs a short-lived command like
 * `ioasid status` more than its requests do. node:https (TLS, crypto) is loaded only for an
 * https:// URL, for the same reason.
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import type { FetchLike } from '../client/index.ts';

type Answer = Awaited<ReturnType<FetchLike>>;

/** Why a request failed, as a person would say it. */
export function netReason(e: unknown, timeoutMs: number): string {
  if (e instanceof Error && (e.name === 'TimeoutError' || e.name === 'AbortError')) return `no answer within ${timeoutMs / 1000} s`;
  const err = e as { code?: unknown; message?: unknown; cause?: { code?: unknown; message?: unknown } } | null;
  const code = typeof err?.code === 'string' ? err.code : typeof err?.cause?.code === 'string' ? err.cause.code : undefined;
  if (code === 'ECONNREFUSED') return 'connection refused';
  if (code === 'ENOENT') return 'no such socket';
  if (code === 'EACCES') return 'no permission to connect to the socket';
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return 'host not found';
  if (code === 'ECONNRESET') return 'connection reset';
  if (code === 'ETIMEDOUT' || code === 'UND_ERR_CONNECT_TIMEOUT') return 'connection timed out';
  if (typeof err?.cause?.message === 'string') return err.cause.message;
  return e instanceof Error ? e.message : String(e);
}

/**
 * `unix`: a service on a Unix socket. The client's URLs are then `unix:PATH/v1/...` (`base` is
 * `unix:PATH`): the request goes to the socket, with the rest as its path.
 */
export function httpTransport(timeoutMs: number, unix?: { readonly base: string; readonly socketPath: string }): FetchLike {
  return async (url, init) => {
    let target: URL | { socketPath: string; path: string; host: string };
    let send = httpRequest;
    if (unix !== undefined && url.startsWith(unix.base)) target = { socketPath: unix.socketPath, path: url.slice(unix.base.length) || '/', host: 'localhost' };
    else {
      target = new URL(url);
      if (target.protocol === 'https:') send = (await import('node:https')).request;
    }
    return new Promise<Answer>((resolve, reject) => {
      const body = init.body === undefined ? undefined : Buffer.from(init.body, 'utf8');
      const options = { method: init.method, headers: { ...init.headers, ...(body !== undefined ? { 'content-length': String(body.length) } : {}) } };
      const onAnswer = (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', (e) => reject(new Error(netReason(e, timeoutMs))));
        res.on('end', () => {
          const bytes = Buffer.concat(chunks);
          const status = res.statusCode ?? 0;
          resolve({
            status,
            ok: status >= 200 && status < 300,
            text: async () => bytes.toString('utf8'),
            arrayBuffer: async () => bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer,
          });
        });
      };
      const req = target instanceof URL ? send(target, options, onAnswer) : send({ ...target, ...options }, onAnswer);
      req.setTimeout(timeoutMs, () => req.destroy(Object.assign(new Error('timeout'), { name: 'TimeoutError' })));
      req.on('error', (e) => reject(new Error(netReason(e, timeoutMs))));
      req.end(body);
    });
  };
}

/** A given fetch (tests run the commands in process) with the same deadline and reasons. */
export function withDeadline(base: FetchLike, timeoutMs: number): FetchLike {
  return async (url, init) => {
    try {
      return await base(url, { ...init, signal: AbortSignal.timeout(timeoutMs) } as Parameters<FetchLike>[1]);
    } catch (e) {
      throw new Error(netReason(e, timeoutMs));
    }
  };
}
