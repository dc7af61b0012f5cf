/**
 * The typed client of the service's API: what the CLI, the dashboard and the remote guest use
 * instead of hand-written fetches. Every request is built from the contract's operation table
 * (`src/api`), and every answer is typed by the schema the service serialises it with.
 * Browser-safe: only `fetch`, `WebSocket` and `DecompressionStream`. A non-2xx answer throws the
 * server's IoasidError (same code, errno, message and details, plus `details.status`).
 */
import {
  EVENT_STREAM, IoasidError, OPERATIONS, decodeNamespaceMap, errorFromProblem, eventStreamProtocols,
  type AllocBody, type ApiEvent, type ClusterStatusView, type CreateVmBody, type CreatedVm, type DestroyedVm, type DeviceSpecBody,
  type GapMessage, type Health, type MigrateResultView, type NamespaceMap, type NamespaceView, type OperationDef, type OperationId,
  type OpBody, type OpParams, type OpQuery, type OpReply, type PasidInfo, type Ready, type ReclaimBody, type ReclaimReportView,
  type RegistersView, type StreamMessage, type ViommuSpecBody, type ViommuView, type VmInfo,
} from '../api/index.ts';

export interface ClientOptions {
  /** Base URL, e.g. `http://127.0.0.1:7070`. */
  readonly url: string;
  /** Admin or VM bearer token. */
  readonly token?: string;
  /** fetch to use (default the global one); anything with fetch's shape for what the client uses. */
  readonly fetch?: FetchLike;
  /** WebSocket constructor for `events()` (default the global one; pass `ws` on Node 20). */
  readonly WebSocket?: new (url: string, protocols?: string | string[]) => WebSocketLike;
}

/** What the client needs of `fetch`: the global one fits, and so does a small node:http transport. */
export type FetchLike = (
  url: string,
  init: { readonly method: string; readonly headers: Record<string, string>; readonly body?: string },
) => Promise<{ readonly status: number; readonly ok: boolean; text(): Promise<string>; arrayBuffer(): Promise<ArrayBuffer> }>;

export interface WebSocketLike {
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onopen: ((ev: unknown) => void) | null;
  close(): void;
}

/** What `call` needs for an operation: its path parameters, query and body, as the contract types them. */
export type CallInput<K extends OperationId> =
  & (OpParams<K> extends undefined ? { readonly params?: undefined } : { readonly params: OpParams<K> })
  & (OpQuery<K> extends undefined ? { readonly query?: undefined } : { readonly query?: OpQuery<K> })
  & (OpBody<K> extends undefined ? { readonly body?: undefined } : { readonly body: OpBody<K> });

export interface EventStreamOptions {
  /** Only this VM's events (required with a VM token). */
  readonly vm?: string;
  /** Resume after this event seq: the kept events after it first, then the live ones. */
  readonly since?: number;
  readonly onOpen?: () => void;
  readonly onClose?: (code: number, reason: string) => void;
  /** Events were lost between two seqs (a slow or resuming reader): reload, then go on. */
  readonly onGap?: (gap: GapMessage) => void;
}

const OPS = OPERATIONS as Readonly<Record<OperationId, OperationDef>>;

export class IoasidClient {
  readonly url: string;
  readonly #token: string | undefined;
  readonly #fetch: FetchLike;
  readonly #WebSocket: ClientOptions['WebSocket'];

  constructor(opts: ClientOptions) {
    this.url = opts.url.replace(/\/+$/, '');
    this.#token = opts.token;
    this.#fetch = opts.fetch ?? ((url, init) => fetch(url, init));
    this.#WebSocket = opts.WebSocket;
  }

  /** The URL path (and query) of an operation, its parameters filled in. */
  static pathOf(op: OperationId, params: Readonly<Record<string, unknown>> = {}, query: Readonly<Record<string, unknown>> = {}): string {
    const path = OPS[op].path.replace(/\{([A-Za-z]+)\}/g, (_, k: string) => {
      const v = params[k];
      if (v === undefined) throw new IoasidError('EINVAL', `${op} needs the path parameter ${k}`, { op, parameter: k });
      return encodeURIComponent(String(v));
    });
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined) q.set(k, String(v));
    const qs = q.toString();
    return qs ? `${path}?${qs}` : path;
  }

  /** One operation of the contract; resolves to its answer as the contract types it. */
  async call<K extends OperationId>(op: K, input: CallInput<K>): Promise<OpReply<K>> {
    const def = OPS[op];
    // The generic input seen from inside: the contract's types are checked at the call site.
    const i = input as unknown as { params?: Record<string, unknown>; query?: Record<string, unknown>; body?: unknown };
    const res = await this.#send(def.method, IoasidClient.pathOf(op, i.params, i.query), i.body);
    if (res.status === 204) return undefined as OpReply<K>;
    if (def.produces !== undefined) return new Uint8Array(await res.arrayBuffer()) as OpReply<K>;
    const text = await res.text();
    try {
      return JSON.parse(text) as OpReply<K>;
    } catch {
      throw new IoasidError('EFAULT', `the service at ${this.url} answered ${op} with a body that is not JSON`, { url: this.url, status: res.status });
    }
  }

  async #send(method: string, path: string, body: unknown): Promise<Awaited<ReturnType<FetchLike>>> {
    const headers: Record<string, string> = {};
    if (this.#token !== undefined) headers.authorization = `Bearer ${this.#token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res: Awaited<ReturnType<FetchLike>>;
    try {
      res = await this.#fetch(`${this.url}${path}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    } catch (e) {
      throw new IoasidError('ENODEV', `the service at ${this.url} is unreachable: ${e instanceof Error ? e.message : String(e)}`, { url: this.url });
    }
    if (!res.ok) {
      const text = await res.text();
      let problem: unknown;
      try {
        problem = text.length ? JSON.parse(text) : undefined;
      } catch {
        problem = undefined;
      }
      throw errorFromProblem(res.status, problem);
    }
    return res;
  }

  // Service
  health(): Promise<Health> {
    return this.call('healthz', {});
  }
  /** Readiness; a service shutting down answers 503 ENODEV (thrown). */
  ready(): Promise<Ready> {
    return this.call('readyz', {});
  }

  // VMs (admin)
  createVm(body: CreateVmBody): Promise<CreatedVm> {
    return this.call('createVm', { body });
  }
  async listVms(): Promise<VmInfo[]> {
    return [...(await this.call('listVms', {})).vms];
  }
  getVm(vm: string): Promise<VmInfo> {
    return this.call('getVm', { params: { vm } });
  }
  destroyVm(vm: string): Promise<DestroyedVm> {
    return this.call('destroyVm', { params: { vm } });
  }
  /** A new token for a VM (shown once); the old one stops working at once. */
  replaceToken(vm: string): Promise<{ readonly vm: string; readonly token: string }> {
    return this.call('replaceToken', { params: { vm } });
  }
  addViommu(vm: string, spec: ViommuSpecBody): Promise<VmInfo> {
    return this.call('addViommu', { params: { vm }, body: spec });
  }
  removeViommu(vm: string, segment: number): Promise<VmInfo> {
    return this.call('removeViommu', { params: { vm, segment } });
  }
  addDevice(vm: string, spec: DeviceSpecBody): Promise<VmInfo> {
    return this.call('addDevice', { params: { vm }, body: spec });
  }
  removeDevice(vm: string, bdf: string): Promise<VmInfo> {
    return this.call('removeDevice', { params: { vm, bdf } });
  }

  // PASIDs (the VM's token or admin)
  async allocPasids(vm: string, opts: AllocBody = {}): Promise<number[]> {
    return [...(await this.call('allocPasids', { params: { vm }, body: opts })).pasids];
  }
  async listPasids(vm: string): Promise<number[]> {
    return [...(await this.call('listVmPasids', { params: { vm } })).pasids];
  }
  getVmPasid(vm: string, pasid: number): Promise<PasidInfo> {
    return this.call('getVmPasid', { params: { vm, pasid } });
  }
  freePasid(vm: string, pasid: number): Promise<void> {
    return this.call('freePasid', { params: { vm, pasid } });
  }
  bind(vm: string, pasid: number, bdf: string): Promise<{ readonly pasid: number; readonly bdf: string }> {
    return this.call('bind', { params: { vm, pasid }, body: { bdf } });
  }
  unbind(vm: string, pasid: number, bdf: string): Promise<void> {
    return this.call('unbind', { params: { vm, pasid, bdf } });
  }

  // VCMD registers
  async mmioRead(vm: string, segment: number, offset: number, size: 4 | 8): Promise<bigint> {
    const r = await this.call('mmio', { params: { vm, segment }, body: { op: 'read', offset, size } });
    if (r.value === undefined) throw new IoasidError('EFAULT', `the service answered a read of 0x${offset.toString(16)} without a value`, { vm, segment, offset });
    return BigInt(r.value);
  }
  async mmioWrite(vm: string, segment: number, offset: number, value: bigint, size: 4 | 8): Promise<void> {
    await this.call('mmio', { params: { vm, segment }, body: { op: 'write', offset, size, value: `0x${value.toString(16)}` } });
  }
  getViommu(vm: string, segment: number): Promise<ViommuView> {
    return this.call('getViommu', { params: { vm, segment } });
  }
  registers(vm: string, segment: number): Promise<RegistersView> {
    return this.call('registers', { params: { vm, segment } });
  }

  // Namespace (admin)
  getPasid(pasid: number): Promise<PasidInfo> {
    return this.call('getPasid', { params: { pasid } });
  }
  namespace(): Promise<NamespaceView> {
    return this.call('namespace', {});
  }
  /** The whole namespace as one owner index per PASID (compact binary on the wire; admin). */
  async namespaceMap(): Promise<NamespaceMap> {
    return decodeNamespaceMap(await this.call('namespaceMap', {}));
  }
  async recentEvents(limit = 100): Promise<ApiEvent[]> {
    return [...(await this.call('recentEvents', { query: { limit } })).events];
  }

  // Cluster mode (store etcd; docs/cluster.md). With a local store the service answers EOPNOTSUPP.
  clusterStatus(): Promise<ClusterStatusView> {
    return this.call('clusterStatus', {});
  }
  migrateVm(vm: string, to: string): Promise<MigrateResultView> {
    return this.call('migrateVm', { params: { vm }, body: { to } });
  }
  reclaimHost(host: string, opts: ReclaimBody = {}): Promise<ReclaimReportView> {
    return this.call('reclaimHost', { params: { host }, body: opts });
  }

  /**
   * Stream events; returns a function that stops the stream. The token travels as a WebSocket
   * subprotocol (`ioasid.bearer.<base64url>`), never in the URL, so it works from a browser too.
   */
  events(onEvent: (e: ApiEvent) => void, opts: EventStreamOptions = {}): () => void {
    const WS = this.#WebSocket ?? (globalThis as { WebSocket?: ClientOptions['WebSocket'] }).WebSocket;
    if (WS === undefined) throw new IoasidError('EOPNOTSUPP', 'no WebSocket implementation: pass one in the client options', {});
    const q = new URLSearchParams();
    if (opts.vm !== undefined) q.set('vm', opts.vm);
    if (opts.since !== undefined) q.set('since', String(opts.since));
    const qs = q.toString();
    const ws = new WS(`${this.url.replace(/^http/, 'ws')}${EVENT_STREAM.path}${qs ? `?${qs}` : ''}`, eventStreamProtocols(this.#token));
    ws.onmessage = (ev) => {
      let m: StreamMessage;
      try {
        m = JSON.parse(String(ev.data)) as StreamMessage;
      } catch {
        return; // a malformed frame
      }
      if (m.type === 'gap') opts.onGap?.(m);
      else onEvent(m);
    };
    ws.onclose = (ev) => opts.onClose?.(ev.code, ev.reason);
    ws.onerror = () => {};
    ws.onopen = () => opts.onOpen?.();
    return () => ws.close();
  }
}
