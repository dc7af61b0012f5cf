/**
 * The typed client of the service's API: what the CLI, the dashboard and the remote guest
 * transport use instead of hand-written fetches. Browser-safe: only `fetch` and `WebSocket`.
 * A non-2xx answer throws the server's IoasidError (same code, errno, message and details).
 */
import { IoasidError, isIoasidErrorCode } from '../core/index.ts';
import type { AuthorityEvent, PasidInfo, VmInfo } from './authority.ts';
import type { VcmdDeviceConfig } from '../vtd/index.ts';
import { decodeNamespaceMap, type NamespaceMap } from './namespace-map.ts';

export type { AuthorityEvent, PasidInfo, VmInfo };
export type { NamespaceMap, NamespaceMapOwner } from './namespace-map.ts';

/** One vIOMMU's VCMD device configuration (`GET /v1/vms/:vm/viommus/:segment`). */
export interface ViommuView {
  readonly segment: number;
  readonly config: VcmdDeviceConfig;
}

export interface ClientOptions {
  /** Base URL, e.g. `http://127.0.0.1:7070`. */
  readonly url: string;
  /** Admin or VM bearer token. */
  readonly token?: string;
  /** fetch to use (default the global one). */
  readonly fetch?: typeof fetch;
  /** WebSocket constructor for `events()` (default the global one; pass `ws` on Node 20). */
  readonly WebSocket?: new (url: string, protocols?: string | string[]) => WebSocketLike;
}

export interface WebSocketLike {
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onopen: ((ev: unknown) => void) | null;
  close(): void;
}

export interface ViommuSpecBody {
  readonly segment: number;
  readonly layout?: 'A' | 'B';
  readonly rangeExtension?: boolean;
}

export interface DeviceSpecBody {
  readonly bdf: string;
  readonly pasidBits?: number;
}

export interface NamespaceView {
  readonly capacity: number;
  readonly owners: readonly { owner: string | null; count: number; runs: readonly number[] }[];
}

export interface RegistersView {
  readonly layout: 'A' | 'B';
  readonly values: Readonly<Record<string, string>>;
  readonly decoded: Readonly<Record<string, Readonly<Record<string, string>>>>;
  readonly recent: readonly Record<string, unknown>[];
}

const enc = encodeURIComponent;

export class IoasidClient {
  readonly url: string;
  readonly #token: string | undefined;
  readonly #fetch: typeof fetch;
  readonly #WebSocket: ClientOptions['WebSocket'];

  constructor(opts: ClientOptions) {
    this.url = opts.url.replace(/\/+$/, '');
    this.#token = opts.token;
    this.#fetch = opts.fetch ?? ((...a) => fetch(...a));
    this.#WebSocket = opts.WebSocket;
  }

  /** One request; resolves to the JSON body (undefined for 204). */
  async request<T>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = {};
    if (this.#token !== undefined) headers.authorization = `Bearer ${this.#token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res: Response;
    try {
      res = await this.#fetch(`${this.url}${path}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    } catch (e) {
      throw new IoasidError('ENODEV', `the service at ${this.url} is unreachable: ${e instanceof Error ? e.message : String(e)}`, { url: this.url });
    }
    if (res.status === 204) return undefined as T;
    const text = await res.text();
    let json: unknown;
    try {
      json = text.length ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    if (!res.ok) {
      const b = json as { code?: unknown; message?: unknown; details?: unknown } | undefined;
      const code = isIoasidErrorCode(b?.code) ? b.code : res.status >= 500 ? 'EFAULT' : 'EINVAL';
      throw new IoasidError(code, typeof b?.message === 'string' ? b.message : `HTTP ${res.status}`, { status: res.status, ...(typeof b?.details === 'object' && b.details !== null ? (b.details as Record<string, unknown>) : {}) });
    }
    return json as T;
  }

  health(): Promise<{ ok: boolean }> {
    return this.request('GET', '/healthz');
  }

  // VMs (admin)
  createVm(body: { id: string; quota?: number; viommus?: ViommuSpecBody[]; devices?: DeviceSpecBody[] }): Promise<{ vm: VmInfo; token: string }> {
    return this.request('POST', '/v1/vms', body);
  }
  async listVms(): Promise<VmInfo[]> {
    return (await this.request<{ vms: VmInfo[] }>('GET', '/v1/vms')).vms;
  }
  getVm(vm: string): Promise<VmInfo> {
    return this.request('GET', `/v1/vms/${enc(vm)}`);
  }
  destroyVm(vm: string): Promise<{ freed: number[]; bindings: number }> {
    return this.request('DELETE', `/v1/vms/${enc(vm)}`);
  }
  /** A new token for a VM (shown once); the old one stops working at once. */
  replaceToken(vm: string): Promise<{ vm: string; token: string }> {
    return this.request('POST', `/v1/vms/${enc(vm)}/token`);
  }
  addViommu(vm: string, spec: ViommuSpecBody): Promise<VmInfo> {
    return this.request('POST', `/v1/vms/${enc(vm)}/viommus`, spec);
  }
  removeViommu(vm: string, segment: number): Promise<VmInfo> {
    return this.request('DELETE', `/v1/vms/${enc(vm)}/viommus/${segment}`);
  }
  addDevice(vm: string, spec: DeviceSpecBody): Promise<VmInfo> {
    return this.request('POST', `/v1/vms/${enc(vm)}/devices`, spec);
  }
  removeDevice(vm: string, bdf: string): Promise<VmInfo> {
    return this.request('DELETE', `/v1/vms/${enc(vm)}/devices/${enc(bdf)}`);
  }

  // PASIDs (the VM's token or admin)
  async allocPasids(vm: string, opts: { min?: number; max?: number; count?: number } = {}): Promise<number[]> {
    return (await this.request<{ pasids: number[] }>('POST', `/v1/vms/${enc(vm)}/pasids`, opts)).pasids;
  }
  async listPasids(vm: string): Promise<number[]> {
    return (await this.request<{ pasids: number[] }>('GET', `/v1/vms/${enc(vm)}/pasids`)).pasids;
  }
  getVmPasid(vm: string, pasid: number): Promise<PasidInfo> {
    return this.request('GET', `/v1/vms/${enc(vm)}/pasids/${pasid}`);
  }
  freePasid(vm: string, pasid: number): Promise<void> {
    return this.request('DELETE', `/v1/vms/${enc(vm)}/pasids/${pasid}`);
  }
  bind(vm: string, pasid: number, bdf: string): Promise<{ pasid: number; bdf: string }> {
    return this.request('POST', `/v1/vms/${enc(vm)}/pasids/${pasid}/bindings`, { bdf });
  }
  unbind(vm: string, pasid: number, bdf: string): Promise<void> {
    return this.request('DELETE', `/v1/vms/${enc(vm)}/pasids/${pasid}/bindings/${enc(bdf)}`);
  }

  // VCMD registers
  async mmioRead(vm: string, segment: number, offset: number, size: 4 | 8): Promise<bigint> {
    const r = await this.request<{ value: string }>('POST', `/v1/vms/${enc(vm)}/viommus/${segment}/mmio`, { op: 'read', offset, size });
    return BigInt(r.value);
  }
  async mmioWrite(vm: string, segment: number, offset: number, value: bigint, size: 4 | 8): Promise<void> {
    await this.request('POST', `/v1/vms/${enc(vm)}/viommus/${segment}/mmio`, { op: 'write', offset, size, value: `0x${value.toString(16)}` });
  }
  getViommu(vm: string, segment: number): Promise<ViommuView> {
    return this.request('GET', `/v1/vms/${enc(vm)}/viommus/${segment}`);
  }
  registers(vm: string, segment: number): Promise<RegistersView> {
    return this.request('GET', `/v1/vms/${enc(vm)}/viommus/${segment}/registers`);
  }

  // Namespace (admin)
  getPasid(pasid: number): Promise<PasidInfo> {
    return this.request('GET', `/v1/pasids/${pasid}`);
  }
  namespace(): Promise<NamespaceView> {
    return this.request('GET', '/v1/namespace');
  }
  /** The whole namespace as one owner index per PASID (compact binary on the wire; admin). */
  async namespaceMap(): Promise<NamespaceMap> {
    return decodeNamespaceMap(await this.#bytes('/v1/namespace/map'));
  }

  /** A GET whose success answer is bytes; errors are the server's IoasidError as in `request`. */
  async #bytes(path: string): Promise<Uint8Array> {
    const headers: Record<string, string> = {};
    if (this.#token !== undefined) headers.authorization = `Bearer ${this.#token}`;
    let res: Response;
    try {
      res = await this.#fetch(`${this.url}${path}`, { method: 'GET', headers });
    } catch (e) {
      throw new IoasidError('ENODEV', `the service at ${this.url} is unreachable: ${e instanceof Error ? e.message : String(e)}`, { url: this.url });
    }
    if (!res.ok) {
      let b: { code?: unknown; message?: unknown; details?: unknown } | undefined;
      try {
        b = (await res.json()) as typeof b;
      } catch {
        b = undefined;
      }
      const code = isIoasidErrorCode(b?.code) ? b.code : res.status >= 500 ? 'EFAULT' : 'EINVAL';
      throw new IoasidError(code, typeof b?.message === 'string' ? b.message : `HTTP ${res.status}`, { status: res.status, ...(typeof b?.details === 'object' && b.details !== null ? (b.details as Record<string, unknown>) : {}) });
    }
    return new Uint8Array(await res.arrayBuffer());
  }
  async recentEvents(limit = 100): Promise<AuthorityEvent[]> {
    return (await this.request<{ events: AuthorityEvent[] }>('GET', `/v1/events/recent?limit=${limit}`)).events;
  }

  // Cluster mode (store etcd; docs/cluster.md). With a local store the service answers EOPNOTSUPP.
  clusterStatus(): Promise<Record<string, unknown>> {
    return this.request('GET', '/v1/cluster');
  }
  migrateVm(vm: string, to: string): Promise<{ vm: string; from: string; to: string; revision: number; pasids: number[]; bindings: number }> {
    return this.request('POST', `/v1/vms/${enc(vm)}/migrate`, { to });
  }
  reclaimHost(host: string, opts: { force?: boolean } = {}): Promise<Record<string, unknown>> {
    return this.request('POST', `/v1/cluster/hosts/${enc(host)}/reclaim`, opts);
  }

  /** Stream events; returns a function that stops the stream. */
  /**
   * Follow the event stream. `since`: first the events after that seq that the service still
   * keeps (`onGap(from, to)` tells of those it no longer keeps), then the live ones.
   */
  events(onEvent: (e: AuthorityEvent) => void, opts: { vm?: string; since?: number; onGap?: (from: number, to: number) => void; onClose?: (code: number, reason: string) => void; onOpen?: () => void } = {}): () => void {
    const WS = this.#WebSocket ?? (globalThis as { WebSocket?: ClientOptions['WebSocket'] }).WebSocket;
    if (WS === undefined) throw new IoasidError('EOPNOTSUPP', 'no WebSocket implementation: pass one in the client options', {});
    const q = new URLSearchParams();
    if (this.#token !== undefined) q.set('token', this.#token);
    if (opts.vm !== undefined) q.set('vm', opts.vm);
    if (opts.since !== undefined) q.set('since', String(opts.since));
    const ws = new WS(`${this.url.replace(/^http/, 'ws')}/v1/events?${q.toString()}`);
    ws.onmessage = (ev) => {
      let m: (AuthorityEvent | { type: 'gap'; from: number; to: number }) | undefined;
      try {
        m = JSON.parse(String(ev.data)) as typeof m;
      } catch {
        return; // ignore a malformed frame
      }
      if (m === undefined) return;
      if (m.type === 'gap') opts.onGap?.(m.from, m.to);
      else onEvent(m);
    };
    ws.onclose = (ev) => opts.onClose?.(ev.code, ev.reason);
    ws.onerror = () => {};
    ws.onopen = () => opts.onOpen?.();
    return () => ws.close();
  }
}
