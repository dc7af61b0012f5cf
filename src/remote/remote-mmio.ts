/**
 * A synchronous MMIO transport to the PASID authority service (the remote guest's vCPU exit).
 *
 * A real vCPU blocks in the MMIO exit while the VMM handles the trapped access, and the guest VT-d
 * driver's register accessor (`MmioAccessor`) is synchronous. So each register read or write here
 * is one `POST /v1/vms/:vm/viommus/:segment/mmio` made by a worker thread, while the calling thread
 * blocks in `Atomics.wait` on a SharedArrayBuffer until the worker has the answer (the synckit
 * technique, written out):
 *
 *   guest thread                              worker thread
 *   gen = Atomics.load(state)
 *   port.postMessage({ seq, request })  --->  http.request(...) (one keep-alive connection)
 *   Atomics.wait(state, 0, gen, left)         port.postMessage({ seq, status, text })
 *                                       <---  Atomics.add(state, 0, 1); Atomics.notify(state, 0)
 *   receiveMessageOnPort(port)  (synchronous; answers of older, timed-out requests are dropped)
 *
 * Rules:
 *  1. One request at a time per channel (the calling thread is blocked); the channel is shared by
 *     every vIOMMU of a guest, so they share the worker and its keep-alive connections.
 *  2. A service error (an RFC 9457 problem body) is rethrown in the calling thread as the same
 *     IoasidError (code, message, details + HTTP status); an unreachable service is ENODEV; no
 *     answer within `timeoutMs` is ETIMEDOUT (the late answer is dropped when it comes).
 *  3. Never call it from the thread that runs the service: that thread's event loop is blocked, so
 *     the request cannot be served and the call ends in ETIMEDOUT (not a hang).
 *  4. The worker is unref'd: an idle channel does not keep the process alive. `close()` ends it.
 *  5. A VMM outlives a restart of the service: an access that cannot reach the service, or that it
 *     answers 503 (not committed, or shutting down), is sent again after a short pause until
 *     `timeoutMs` has passed. Reads have no side effect; writes are numbered (this channel's writer
 *     id and a sequence number), and the device applies a numbered write once, so a write whose
 *     answer was lost to a crash is not applied twice when it is sent again.
 */
import { randomUUID } from 'node:crypto';
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { IoasidError } from '../core/index.ts';
import { errorFromProblem } from '../client/index.ts';
import type { AccessSize, MmioAccessor } from '../vtd/index.ts';

export interface SyncChannelOptions {
  /** Base URL of the service, e.g. `http://127.0.0.1:7070`. */
  readonly url: string;
  /** Bearer token (the VM's own token for MMIO). */
  readonly token: string;
  /** Longest wait for one request, ms (default 30 000). */
  readonly timeoutMs?: number;
  /** Durations kept for the percentiles of `stats()` (default 4096). */
  readonly sampleSize?: number;
}

/** Round-trip figures of a channel, in microseconds. */
export interface ChannelStats {
  readonly requests: number;
  readonly errors: number;
  readonly timeouts: number;
  readonly meanUs: number;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly maxUs: number;
}

interface Answer {
  readonly seq: number;
  /** HTTP status; 0 when the request failed without an answer. */
  readonly status: number;
  readonly text: string;
}

export const DEFAULT_CHANNEL_TIMEOUT_MS = 30_000;

/**
 * The worker, as plain JavaScript evaluated in the worker (no loader needed there, whatever runs
 * the TypeScript of the calling thread). It only moves bytes: errors are decoded by the caller.
 */
const WORKER_SOURCE = `
'use strict';
const { workerData } = require('node:worker_threads');
const { port, shared, url, token, timeoutMs } = workerData;
const base = new URL(url);
const transport = require(base.protocol === 'https:' ? 'node:https' : 'node:http');
// One keep-alive connection, reused for every access (a request at a time: the caller is blocked).
const agent = new transport.Agent({ keepAlive: true, maxSockets: 1 });
const state = new Int32Array(shared);
const answer = (a) => {
  port.postMessage(a);
  Atomics.add(state, 0, 1);
  Atomics.notify(state, 0);
};
const send = (m, retried) => {
  let done = false;
  const finish = (status, text) => {
    if (done) return;
    done = true;
    answer({ seq: m.seq, status, text });
  };
  const headers = { authorization: 'Bearer ' + token };
  if (m.body !== undefined) {
    headers['content-type'] = 'application/json';
    headers['content-length'] = Buffer.byteLength(m.body);
  }
  const req = transport.request(
    { protocol: base.protocol, hostname: base.hostname, port: base.port, path: base.pathname.replace(/\\/+$/, '') + m.path, method: m.method, headers, agent },
    (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => finish(res.statusCode || 0, Buffer.concat(chunks).toString('utf8')));
      res.on('error', (e) => finish(0, String(e && e.message ? e.message : e)));
    },
  );
  req.setTimeout(timeoutMs, () => req.destroy(new Error('no answer within ' + timeoutMs + ' ms')));
  req.on('error', (e) => {
    // The server closed the idle keep-alive connection as we reused it: a side-effect-free
    // request is sent again once on a new connection (never a write: it could fire twice).
    if (!done && !retried && m.idempotent && req.reusedSocket && e && e.code === 'ECONNRESET') {
      done = true;
      send(m, true);
      return;
    }
    finish(0, String(e && e.message ? e.message : e) + (e && e.code ? ' (' + e.code + ')' : ''));
  });
  req.end(m.body);
};
port.on('message', (m) => send(m, false));
`;

/** An HTTP answer that is not 2xx, as the IoasidError the service sent (as the typed client does). */
export function errorFromAnswer(status: number, text: string, url: string): IoasidError {
  if (status === 0) return new IoasidError('ENODEV', `the service at ${url} is unreachable: ${text}`, { url });
  let body: unknown;
  try {
    body = text.length > 0 ? JSON.parse(text) : undefined;
  } catch {
    body = undefined;
  }
  return errorFromProblem(status, body);
}

/** One worker and its keep-alive connections; synchronous requests to the service. */
export class SyncServiceChannel {
  readonly url: string;
  readonly timeoutMs: number;
  readonly #worker: Worker;
  readonly #port: MessagePort;
  readonly #state: Int32Array;
  readonly #samples: Float64Array;
  #sampleCount = 0;
  #seq = 0;
  #requests = 0;
  #errors = 0;
  #timeouts = 0;
  #totalMs = 0;
  #maxMs = 0;
  #closed = false;
  #failure: string | null = null;
  /** This channel's writer id, and the number of its last write (rule 5). */
  readonly writerId = randomUUID();
  #writeSeq = 0;
  readonly #pause = new Int32Array(new SharedArrayBuffer(4));

  constructor(opts: SyncChannelOptions) {
    if (typeof opts?.url !== 'string' || !/^https?:\/\//.test(opts.url)) {
      throw new IoasidError('EINVAL', `the service URL must be http(s)://..., got ${JSON.stringify(opts?.url)}`, { url: opts?.url ?? null });
    }
    if (typeof opts.token !== 'string' || opts.token.length === 0) throw new IoasidError('EINVAL', 'a bearer token is required', {});
    const timeoutMs = opts.timeoutMs ?? DEFAULT_CHANNEL_TIMEOUT_MS;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new IoasidError('EINVAL', `timeoutMs must be a positive number, got ${timeoutMs}`, { timeoutMs });
    this.url = opts.url.replace(/\/+$/, '');
    this.timeoutMs = timeoutMs;
    this.#samples = new Float64Array(Math.max(1, opts.sampleSize ?? 4096));
    const shared = new SharedArrayBuffer(4);
    this.#state = new Int32Array(shared);
    const { port1, port2 } = new MessageChannel();
    this.#port = port1;
    this.#worker = new Worker(WORKER_SOURCE, {
      eval: true,
      // The worker needs no loader of ours: do not hand it the parent's --import/--loader flags.
      execArgv: [],
      workerData: { port: port2, shared, url: this.url, token: opts.token, timeoutMs },
      transferList: [port2],
    });
    this.#worker.unref();
    this.#worker.on('error', (e) => {
      this.#failure = `worker failed: ${e instanceof Error ? e.message : String(e)}`;
    });
    this.#worker.on('exit', (code) => {
      this.#failure ??= `worker exited with code ${code}`;
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * A request, synchronously: the parsed JSON body (undefined for an empty one). `idempotent`
   * (default: GET only) lets the worker resend it once if a reused keep-alive connection was reset.
   */
  request<T = unknown>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown, idempotent = method === 'GET'): T {
    if (this.#closed) throw new IoasidError('ENODEV', `the MMIO channel to ${this.url} is closed`, { url: this.url });
    if (this.#failure !== null) throw new IoasidError('ENODEV', `the MMIO channel to ${this.url} is broken: ${this.#failure}`, { url: this.url });
    const t0 = performance.now();
    const deadline = t0 + this.timeoutMs;
    const text = body === undefined ? undefined : JSON.stringify(body);
    let a: Answer;
    for (let pause = 20; ; pause = Math.min(500, pause * 2)) {
      a = this.#once(method, path, text, idempotent, deadline);
      // Rule 5: the service is away (restarting) or could not commit: send the same access again.
      if (!idempotent || (a.status !== 0 && a.status !== 503)) break;
      const left = deadline - performance.now();
      if (left <= pause) break;
      Atomics.wait(this.#pause, 0, 0, pause);
    }
    this.#record(performance.now() - t0);
    if (a.status < 200 || a.status >= 300) {
      this.#errors++;
      throw errorFromAnswer(a.status, a.text, this.url);
    }
    if (a.text.length === 0) return undefined as T;
    try {
      return JSON.parse(a.text) as T;
    } catch {
      this.#errors++;
      throw new IoasidError('EFAULT', `the service at ${this.url} answered ${method} ${path} with a body that is not JSON`, { url: this.url, path });
    }
  }

  /** One round trip; ETIMEDOUT past the deadline. */
  #once(method: string, path: string, body: string | undefined, idempotent: boolean, deadline: number): Answer {
    const seq = ++this.#seq;
    let gen = Atomics.load(this.#state, 0);
    this.#port.postMessage({ seq, method, path, idempotent, body });
    for (;;) {
      for (let m = receiveMessageOnPort(this.#port); m !== undefined; m = receiveMessageOnPort(this.#port)) {
        const got = m.message as Answer;
        if (got.seq === seq) return got;
        // else: the late answer of a request that timed out; dropped.
      }
      const left = deadline - performance.now();
      if (left <= 0) {
        this.#timeouts++;
        this.#errors++;
        throw new IoasidError('ETIMEDOUT', `no answer from ${this.url} to ${method} ${path} within ${this.timeoutMs} ms${this.#failure !== null ? ` (${this.#failure})` : ''}`, { url: this.url, path, timeoutMs: this.timeoutMs });
      }
      Atomics.wait(this.#state, 0, gen, left);
      gen = Atomics.load(this.#state, 0);
    }
  }

  /** The writer and number of the next numbered write (rule 5). */
  nextWrite(): { id: string; seq: number } {
    return { id: this.writerId, seq: ++this.#writeSeq };
  }

  #record(ms: number): void {
    this.#requests++;
    this.#totalMs += ms;
    if (ms > this.#maxMs) this.#maxMs = ms;
    this.#samples[this.#sampleCount % this.#samples.length] = ms;
    this.#sampleCount++;
  }

  /** Round-trip figures so far (successful and refused requests; not timeouts). */
  stats(): ChannelStats {
    const n = Math.min(this.#sampleCount, this.#samples.length);
    const sorted = Array.from(this.#samples.subarray(0, n)).sort((x, y) => x - y);
    const pct = (p: number): number => (n === 0 ? 0 : (sorted[Math.min(n - 1, Math.floor(p * n))] as number) * 1000);
    return {
      requests: this.#requests,
      errors: this.#errors,
      timeouts: this.#timeouts,
      meanUs: this.#requests === 0 ? 0 : (this.#totalMs / this.#requests) * 1000,
      p50Us: pct(0.5),
      p99Us: pct(0.99),
      maxUs: this.#maxMs * 1000,
    };
  }

  /** Forget the figures (e.g. after warm-up). */
  resetStats(): void {
    this.#sampleCount = 0;
    this.#requests = 0;
    this.#errors = 0;
    this.#timeouts = 0;
    this.#totalMs = 0;
    this.#maxMs = 0;
  }

  /** Terminate the worker (its connections close with it). Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#port.close();
    await this.#worker.terminate();
  }
}

/** 64-bit register value as the API's hex string. */
function hex64(v: bigint): string {
  return `0x${BigInt.asUintN(64, v).toString(16)}`;
}

const HEX = /^0x[0-9a-f]{1,16}$/i;

/**
 * The register page of one vIOMMU of a VM hosted by the service: an `MmioAccessor` whose every
 * read and write is one synchronous round trip to `/v1/vms/:vm/viommus/:segment/mmio`.
 */
export class RemoteMmio implements MmioAccessor {
  readonly vm: string;
  readonly segment: number;
  readonly channel: SyncServiceChannel;
  readonly #path: string;

  constructor(channel: SyncServiceChannel, vm: string, segment: number) {
    if (!Number.isInteger(segment) || segment < 0 || segment > 0xffff) {
      throw new IoasidError('EINVAL', `vIOMMU segment must be an integer in [0, 65535], got ${String(segment)}`, { segment });
    }
    this.channel = channel;
    this.vm = vm;
    this.segment = segment;
    this.#path = `/v1/vms/${encodeURIComponent(vm)}/viommus/${segment}/mmio`;
  }

  read(offset: number, size: AccessSize): bigint {
    const r = this.channel.request<{ value?: unknown }>('POST', this.#path, { op: 'read', offset, size }, true);
    const v = r?.value;
    if (typeof v !== 'string' || !HEX.test(v)) {
      throw new IoasidError('EFAULT', `the service answered a read of ${this.vm}/dmar${this.segment} at 0x${offset.toString(16)} without a hex value`, { vm: this.vm, segment: this.segment, offset });
    }
    return BigInt(v);
  }

  write(offset: number, value: bigint, size: AccessSize): void {
    // Numbered: safe to send again (rule 5).
    this.channel.request('POST', this.#path, { op: 'write', offset, size, value: hex64(value), writer: this.channel.nextWrite() }, true);
  }
}
