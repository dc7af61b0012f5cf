/**
 * A raw TCP client for the tests of the service's bounds (test/security-limits.test.ts): it writes
 * exactly what it is told, when it is told (a slow client trickles bytes), and records what the
 * server answers and when the server closes the connection.
 */
import { connect, type Socket } from 'node:net';

export interface RawClient {
  readonly socket: Socket;
  /** Milliseconds since the connection was opened. */
  elapsed(): number;
  /** Everything the server sent so far (one character per byte: latin1). */
  received(): string;
  /** Resolves when the server has closed the connection (end or reset), with `elapsed()` then. */
  readonly closed: Promise<number>;
  write(text: string): boolean;
  /** Write `chunks` one by one, `everyMs` apart, while the socket is open. Returns a stopper. */
  trickle(chunks: Iterable<string>, everyMs: number): () => void;
}

export async function rawClient(port: number, host = '127.0.0.1'): Promise<RawClient> {
  const socket = connect({ port, host });
  const started = Date.now();
  let data = '';
  socket.setEncoding('latin1');
  socket.on('data', (c: string) => {
    data += c;
  });
  socket.on('error', () => {});
  const closed = new Promise<number>((resolve) => {
    socket.once('close', () => resolve(Date.now() - started));
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('error', reject);
    void closed.then(() => reject(new Error('closed before it was connected')));
  });
  return {
    socket,
    elapsed: () => Date.now() - started,
    received: () => data,
    closed,
    write: (text) => !socket.destroyed && socket.write(text),
    trickle(chunks, everyMs) {
      const it = chunks[Symbol.iterator]();
      const timer = setInterval(() => {
        const next = it.next();
        if (next.done === true || socket.destroyed) clearInterval(timer);
        else socket.write(next.value);
      }, everyMs);
      return () => clearInterval(timer);
    },
  };
}

/** An endless supply of `chunk`. */
export function* forever(chunk: string): Generator<string> {
  for (;;) yield chunk;
}

/** The status and parsed JSON body of the (first) HTTP response in `raw`. */
export function parseResponse(raw: string): { status: number; headers: Record<string, string>; body: Record<string, unknown> | null } {
  const [head = '', ...rest] = raw.split('\r\n\r\n');
  const [statusLine = '', ...lines] = head.split('\r\n');
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(statusLine)?.[1] ?? NaN);
  const headers: Record<string, string> = {};
  for (const l of lines) {
    const i = l.indexOf(':');
    if (i > 0) headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
  }
  const text = rest.join('\r\n\r\n');
  const length = Number(headers['content-length'] ?? text.length);
  let body: Record<string, unknown> | null = null;
  try {
    body = JSON.parse(text.slice(0, length)) as Record<string, unknown>;
  } catch {
    body = null;
  }
  return { status, headers, body };
}
