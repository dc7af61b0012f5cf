/**
 * The etcd side of the cluster backend, below the domain logic: the `etcd://` and `etcds://`
 * spec, the client (every endpoint given, a deadline on every call, TLS and a user when
 * etcd-security.ts loaded them), bounded retries with backoff, paginated range reads at one
 * revision, and the plain shapes (`Kv`, `Cmp`, `Op`) the rest of the backend uses instead of the
 * client's protobuf objects.
 *
 * Retry rules:
 *  1. Only transport failures are retried (unavailable member, deadline, leader change, no
 *     leader): a refused compare is an answer, never retried blindly.
 *  2. Attempts are bounded (`attempts`, default 8) with exponential backoff and jitter (base 50 ms,
 *     at most 1 s per wait), and so is their total time (`totalMs`, default 6 s, each call with
 *     its own deadline, 2 s by default): enough for an etcd election (about 1-2 s), and then the
 *     call fails with ETIMEDOUT (HTTP 504): etcd did not answer, so the outcome of a write is
 *     unknown.
 *  3. The client itself does not retry (its global policy is a pass-through): every retry is one
 *     of ours, counted and bounded as above. Its per-member circuit breakers stay: a dead member
 *     is skipped for 5 s after 3 failures, so attempts go to the live ones.
 */
import { Etcd3, isRecoverableError, type IKeyValue, type IOptions, type IRequestOp, type ITxnRequest, type ITxnResponse } from 'etcd3';
import { IoasidError, isIoasidError } from '../core/index.ts';
import type { EtcdCredentials } from './etcd-security.ts';

/** Is `spec` the TLS form, `etcds://`? */
export function etcdSpecIsTls(spec: string): boolean {
  return spec.startsWith('etcds://');
}

/**
 * Parse `etcd://HOST:PORT[,HOST:PORT...]` (plaintext) or `etcds://...` (TLS to every member) into
 * `HOST:PORT` endpoints (all of them are used).
 */
export function parseEtcdSpec(spec: string): string[] {
  const scheme = etcdSpecIsTls(spec) ? 'etcds://' : 'etcd://';
  if (!spec.startsWith(scheme)) throw new IoasidError('EINVAL', `not an etcd store spec: ${JSON.stringify(spec)} (expected etcd:// or etcds://)`, { spec });
  const list = spec.slice(scheme.length).replace(/\/+$/, '');
  const endpoints = list.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
  if (endpoints.length === 0) throw new IoasidError('EINVAL', `store ${spec}: no endpoint (expected ${scheme}HOST:PORT[,HOST:PORT...])`, { spec });
  for (const ep of endpoints) {
    const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$/.exec(ep);
    if (m === null || Number(m[2]) < 1 || Number(m[2]) > 65535) {
      throw new IoasidError('EINVAL', `store ${spec}: endpoint ${JSON.stringify(ep)} is not HOST:PORT`, { spec, endpoint: ep });
    }
  }
  return [...new Set(endpoints)];
}

export interface RetryPolicy {
  /** Attempts in all (>= 1). */
  readonly attempts: number;
  readonly baseMs: number;
  readonly maxMs: number;
  /** No new attempt starts after this long (ms since the first). */
  readonly totalMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = Object.freeze({ attempts: 8, baseMs: 50, maxMs: 1000, totalMs: 6000 });

/** May attempt `n + 1` (n made so far) start, `started` ms after the first? Returns the wait, or -1. */
export function nextAttempt(policy: RetryPolicy, n: number, started: number): number {
  if (n >= policy.attempts) return -1;
  const wait = backoffMs(policy, n);
  return Date.now() - started + wait > policy.totalMs ? -1 : wait;
}

/** Wait before attempt `n` (1 = the first retry): exponential, capped, with jitter. */
export function backoffMs(policy: RetryPolicy, n: number): number {
  const exp = Math.min(policy.maxMs, policy.baseMs * 2 ** Math.max(0, n - 1));
  return Math.round(exp / 2 + Math.random() * (exp / 2));
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A failure of the transport or of etcd's availability (retryable), not an answer. */
export function isTransportError(e: unknown): boolean {
  if (isIoasidError(e)) return false;
  if (typeof e === 'object' && e !== null && isRecoverableError(e as Error)) return true;
  const msg = e instanceof Error ? `${e.constructor.name} ${e.name} ${e.message}` : String(e);
  return /etcdserver: (request timed out|leader changed|no leader|too many requests|not capable|unhealthy cluster|request cancelled|server stopped)|UNAVAILABLE|DEADLINE_EXCEEDED|Deadline exceeded|ECONNREFUSED|ECONNRESET|No connection established|BrokenCircuit|circuit/i.test(msg);
}

/** The ETIMEDOUT an exhausted retry ends with. */
export function unavailable(what: string, attempts: number, last: unknown): IoasidError {
  const msg = last instanceof Error ? last.message : String(last);
  return new IoasidError('ETIMEDOUT', `etcd did not answer ${what} after ${attempts} attempts (${msg.split('\n')[0]}); the outcome of a write is unknown`, { what, attempts, cause: msg.slice(0, 200) });
}

/** Run `fn`, retrying transport failures under `policy`. */
export async function withRetry<T>(what: string, policy: RetryPolicy, fn: () => Promise<T>, onRetry?: (e: unknown, n: number) => void): Promise<T> {
  const started = Date.now();
  for (let n = 1; ; n++) {
    try {
      return await fn();
    } catch (e) {
      if (!isTransportError(e)) throw e;
      const wait = nextAttempt(policy, n, started);
      if (wait < 0) throw unavailable(what, n, e);
      onRetry?.(e, n);
      await sleep(wait);
    }
  }
}

type GlobalPolicy = NonNullable<NonNullable<IOptions['faultHandling']>['global']>;
const noEvent = () => ({ dispose() {} });
/** The client's global fault policy: run once, no retry (rule 3). */
const PASS_THROUGH = {
  execute: <T>(fn: (ctx: { signal: AbortSignal }) => PromiseLike<T> | T) => Promise.resolve().then(() => fn({ signal: new AbortController().signal })),
  onSuccess: noEvent,
  onFailure: noEvent,
} as unknown as GlobalPolicy;

export interface EtcdClientOptions {
  /** Deadline of each unary call, ms (default 2000). */
  readonly callTimeoutMs?: number;
  readonly dialTimeoutMs?: number;
  /** TLS and/or an etcd user (etcd-security.ts); none: plaintext, no user. */
  readonly credentials?: EtcdCredentials;
}

/** A client given every endpoint: a dead member is skipped (its circuit opens), not fatal. */
export function makeClient(endpoints: readonly string[], opts: EtcdClientOptions = {}): Etcd3 {
  const callTimeout = opts.callTimeoutMs ?? 2000;
  const tls = opts.credentials?.tls === true;
  return new Etcd3({
    hosts: endpoints.map((e) => `${tls ? 'https' : 'http'}://${e}`),
    ...(opts.credentials?.clientOptions() ?? {}),
    dialTimeout: opts.dialTimeoutMs ?? 1000,
    faultHandling: { global: PASS_THROUGH },
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + callTimeout }),
    grpcOptions: { 'grpc.max_receive_message_length': 64 * 1024 * 1024 },
  });
}

// ------------------------------------------------------------------ plain shapes

export interface Kv {
  readonly key: string;
  readonly value: string;
  readonly create: number;
  readonly mod: number;
  readonly version: number;
  readonly lease: string;
}

export function kvOf(k: IKeyValue): Kv {
  return {
    key: k.key.toString(),
    value: k.value.toString(),
    create: Number(k.create_revision),
    mod: Number(k.mod_revision),
    version: Number(k.version),
    lease: String(k.lease ?? '0'),
  };
}

export type CmpTarget = 'Create' | 'Mod' | 'Value' | 'Version';
export type CmpResult = 'Equal' | 'Greater' | 'Less' | 'NotEqual';

/** One compare of a transaction; with `rangeEnd` it must hold for every key of [key, rangeEnd). */
export interface Cmp {
  readonly key: string;
  readonly rangeEnd?: string;
  readonly target: CmpTarget;
  readonly result: CmpResult;
  readonly value: number | string;
}

export type Op =
  | { readonly put: string; readonly value: string; readonly lease?: string }
  | { readonly del: string; readonly rangeEnd?: string };

export function opKey(op: Op): string {
  return 'put' in op ? op.put : op.del;
}

export function cmpId(c: Cmp): string {
  return c.rangeEnd === undefined ? c.key : `${c.key}\u0000${c.rangeEnd}`;
}

const FIELD: Record<CmpTarget, 'create_revision' | 'mod_revision' | 'value' | 'version'> = {
  Create: 'create_revision', Mod: 'mod_revision', Value: 'value', Version: 'version',
};

function cmpProto(c: Cmp): NonNullable<ITxnRequest['compare']>[number] {
  return {
    key: Buffer.from(c.key),
    target: c.target,
    result: c.result,
    [FIELD[c.target]]: c.target === 'Value' ? Buffer.from(String(c.value)) : c.value,
    ...(c.rangeEnd !== undefined ? { range_end: Buffer.from(c.rangeEnd) } : {}),
  };
}

function opProto(op: Op): IRequestOp {
  if ('put' in op) return { request_put: { key: Buffer.from(op.put), value: Buffer.from(op.value), ...(op.lease !== undefined ? { lease: op.lease } : {}) } };
  return { request_delete_range: { key: Buffer.from(op.del), ...(op.rangeEnd !== undefined ? { range_end: Buffer.from(op.rangeEnd) } : {}) } };
}

export interface TxnResult {
  readonly succeeded: boolean;
  readonly revision: number;
  /** On failure: the current kvs of each compared key or range, by `cmpId`. */
  readonly reads: ReadonlyMap<string, readonly Kv[]>;
}

/** One transaction: on failure, the compared keys are read in the same revision. */
export async function txn(client: Etcd3, compares: readonly Cmp[], ops: readonly Op[]): Promise<TxnResult> {
  const reads: Cmp[] = [];
  const seen = new Set<string>();
  for (const c of compares) {
    const id = cmpId(c);
    if (seen.has(id)) continue;
    seen.add(id);
    reads.push(c);
  }
  const res: ITxnResponse = await client.kv.txn({
    compare: compares.map(cmpProto),
    success: ops.map(opProto),
    failure: reads.map((c): IRequestOp => ({ request_range: { key: Buffer.from(c.key), ...(c.rangeEnd !== undefined ? { range_end: Buffer.from(c.rangeEnd), limit: 1 } : {}) } })),
  });
  const revision = Number(res.header.revision);
  const out = new Map<string, Kv[]>();
  if (!res.succeeded) {
    reads.forEach((c, i) => {
      const r = res.responses[i]?.response_range;
      out.set(cmpId(c), (r?.kvs ?? []).map(kvOf));
    });
  }
  return { succeeded: res.succeeded, revision, reads: out };
}

/** Does compare `c` hold for these kvs (etcd's own rule: an absent key has zero revisions)? */
export function cmpHolds(c: Cmp, kvs: readonly Kv[]): boolean {
  if (kvs.length === 0) {
    if (c.target === 'Value') return false;
    return compare(0, c.value as number, c.result);
  }
  return kvs.every((kv) => {
    switch (c.target) {
      case 'Create': return compare(kv.create, c.value as number, c.result);
      case 'Mod': return compare(kv.mod, c.value as number, c.result);
      case 'Version': return compare(kv.version, c.value as number, c.result);
      case 'Value': {
        const a = kv.value;
        const b = String(c.value);
        return compare(a < b ? -1 : a > b ? 1 : 0, 0, c.result);
      }
    }
  });
}

function compare(a: number, b: number, r: CmpResult): boolean {
  switch (r) {
    case 'Equal': return a === b;
    case 'NotEqual': return a !== b;
    case 'Greater': return a > b;
    case 'Less': return a < b;
  }
}

/** Every kv under a prefix (or in [key, end)), read in pages at one revision. */
export async function readRange(client: Etcd3, key: string, end: string, opts: { revision?: number; pageSize?: number } = {}): Promise<{ kvs: Kv[]; revision: number }> {
  const page = opts.pageSize ?? 5000;
  const kvs: Kv[] = [];
  let from = key;
  let revision = opts.revision ?? 0;
  for (;;) {
    const res = await client.kv.range({
      key: Buffer.from(from),
      range_end: Buffer.from(end),
      limit: page,
      ...(revision > 0 ? { revision } : {}),
      sort_order: 'Ascend',
      sort_target: 'Key',
    });
    if (revision === 0) revision = Number(res.header.revision);
    for (const k of res.kvs) kvs.push(kvOf(k));
    if (!res.more || res.kvs.length === 0) break;
    const last = (res.kvs[res.kvs.length - 1] as IKeyValue).key.toString();
    from = `${last}\u0000`;
  }
  return { kvs, revision };
}
