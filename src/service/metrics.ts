/**
 * Prometheus metrics (prom-client, a registry of our own). What an operator graphs and alerts on:
 *  - traffic: `ioasid_operations_total{op,result}` (result `ok` or the errno code of a refusal,
 *    whether authentication, validation or the operation refused it) and the request latency;
 *  - capacity: PASIDs allocated, the namespace's capacity, PASIDs and quota per VM (an unlimited
 *    quota is `+Inf`, so `used / quota` is 0, never a division by zero);
 *  - durability: the store's commit latency, and whether the last commit failed;
 *  - the event stream: subscribers connected, consumers dropped for not keeping up, peers cut for
 *    answering no heartbeat, refusals;
 *  - connections: open now, turned away at the connection cap, closed for a request that did not
 *    arrive in time (slow or hostile clients show here before they show anywhere else);
 *  - cluster mode: ready, fenced, the lease and the PASID blocks this host holds;
 *  - `ioasid_build_info`: version, Node version and store kind, as labels of a constant 1.
 */
import { readFileSync } from 'node:fs';
import { Counter, Gauge, Registry } from 'prom-client';
import { OPERATIONS, type OperationDef } from '../api/index.ts';
import type { PasidAuthority } from './authority.ts';
import { CounterFamily, HistogramFamily } from './metric-families.ts';

/** What the metrics read of the event stream (EventHub.stats). */
export interface EventStats {
  stats(): { subscribers: number; dropped: number; refused: number; dead?: number };
}

/** What the metrics read of the HTTP server's connections (ServiceApp.connectionStats). */
export interface ConnectionCounts {
  readonly open: number;
  readonly refused: number;
  readonly timedOut: number;
}

/** The package's version, from its package.json (beside src/ and dist/ alike). */
function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

/** `METHOD /fastify/:path` -> operation id, for refusals counted before a handler runs. */
const OP_BY_ROUTE = new Map(
  (Object.entries(OPERATIONS) as [string, OperationDef][]).map(([id, op]) => [`${op.method} ${op.path.replace(/\{([A-Za-z]+)\}/g, ':$1')}`, id]),
);

export class ServiceMetrics {
  readonly registry = new Registry();
  readonly #ops: CounterFamily<'op' | 'result'>;
  readonly #latency: HistogramFamily<'method' | 'route' | 'status'>;
  #events: EventStats | null = null;
  #connections: (() => ConnectionCounts) | null = null;

  constructor(authority: PasidAuthority) {
    const registers = [this.registry];
    const metrics = this;
    this.#ops = new CounterFamily({
      name: 'ioasid_operations_total', help: 'API operations by kind and result: ok, or the errno code of the refusal (authentication and validation included)',
      labelNames: ['op', 'result'], registers,
    });
    this.#latency = new HistogramFamily({
      name: 'ioasid_http_request_duration_seconds', help: 'HTTP request latency', labelNames: ['method', 'route', 'status'], registers,
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1],
    });
    new Gauge({
      name: 'ioasid_build_info', help: 'Build of this service (constant 1): version, Node.js version, store kind', labelNames: ['version', 'node', 'store'], registers,
      collect() {
        this.set({ version: packageVersion(), node: process.versions.node, store: authority.store.kind }, 1);
      },
    });
    new Gauge({
      name: 'ioasid_vm_pasids', help: 'PASIDs held per VM', labelNames: ['vm'], registers,
      collect() {
        this.reset();
        for (const vm of authority.host.vms()) this.set({ vm: vm.id }, authority.host.space.setCount(vm.set));
      },
    });
    new Gauge({
      name: 'ioasid_vm_quota', help: 'PASID quota per VM (+Inf: unlimited)', labelNames: ['vm'], registers,
      collect() {
        this.reset();
        for (const vm of authority.host.vms()) this.set({ vm: vm.id }, vm.quota === 0 ? Number.POSITIVE_INFINITY : vm.quota);
      },
    });
    new Gauge({
      name: 'ioasid_pasids_allocated', help: 'PASIDs allocated in the whole namespace', registers,
      collect() {
        this.set(authority.host.space.size);
      },
    });
    new Gauge({
      name: 'ioasid_pasid_capacity', help: "PASIDs the namespace can hand out (the host's range); utilisation = ioasid_pasids_allocated / this", registers,
      collect() {
        this.set(authority.host.pasidMax - authority.host.pasidMin + 1);
      },
    });
    const commits = new HistogramFamily({
      name: 'ioasid_store_commit_duration_seconds', help: 'Time to make one change durable (the store commit, fsync included), by result', labelNames: ['result'], registers,
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    });
    // Both series exist from the start (the failures at 0).
    commits.labels('ok');
    commits.labels('failed');
    authority.onCommit((seconds, ok) => commits.labels(ok ? 'ok' : 'failed').observe(seconds));
    new Gauge({
      name: 'ioasid_store_commit_failing', help: '1 while the last commit failed (the service is not ready until one succeeds)', registers,
      collect() {
        this.set(authority.commitFailure === null ? 0 : 1);
      },
    });
    // Counts kept by the event hub and the server, read at each scrape.
    const readGauge = (name: string, help: string, read: () => number) =>
      new Gauge({ name, help, registers, collect() { this.set(read()); } });
    const readCounter = (name: string, help: string, read: () => number) =>
      new Counter({ name, help, registers, collect() { this.reset(); this.inc(read()); } });
    const events = () => metrics.#events?.stats();
    const connections = () => metrics.#connections?.();
    readGauge('ioasid_event_subscribers', 'Event stream subscribers connected', () => events()?.subscribers ?? 0);
    readCounter('ioasid_event_consumers_dropped_total', 'Event stream subscribers closed (4008) because they did not keep up', () => events()?.dropped ?? 0);
    readCounter('ioasid_event_subscribers_dead_total', 'Event stream subscribers cut because they answered no heartbeat ping (a peer gone without closing)', () => events()?.dead ?? 0);
    readCounter('ioasid_event_subscriptions_refused_total', 'Event stream subscriptions refused (4429) for being over the bounds', () => events()?.refused ?? 0);
    readGauge('ioasid_http_connections_open', 'HTTP connections open now (WebSockets included)', () => connections()?.open ?? 0);
    readCounter('ioasid_http_connections_refused_total', 'Connections closed at once because the connection cap was reached', () => connections()?.refused ?? 0);
    readCounter('ioasid_http_requests_timed_out_total', 'Connections answered 408 and closed because a request did not arrive in time (headers or whole request)', () => connections()?.timedOut ?? 0);
    const cluster = authority.cluster;
    if (cluster !== null) {
      const health = () => cluster.health();
      const gauge = (name: string, help: string, read: (h: ReturnType<typeof health>) => number) =>
        new Gauge({ name, help, registers, collect() { this.set(read(health())); } });
      gauge('ioasid_cluster_ready', '1 when this host takes changes (not fenced, lease held, etcd reachable)', (h) => (h.ready ? 1 : 0));
      gauge('ioasid_cluster_fenced', '1 when this incarnation was fenced (another host reclaimed it): every change is refused', (h) => (h.fenced ? 1 : 0));
      gauge('ioasid_cluster_lease_held', "1 while this host's etcd lease is kept alive", (h) => (h.lease.held ? 1 : 0));
      gauge('ioasid_cluster_lease_ttl_seconds', "Seconds left on this host's etcd lease at its last keep-alive (-1: no lease)", (h) => h.lease.ttlSeconds ?? -1);
      gauge('ioasid_cluster_blocks_held', 'PASID blocks of the namespace this host holds', (h) => h.blocksHeld);
    }
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** Read the event stream's counters (the hub is made after the metrics). */
  watchEvents(events: EventStats): void {
    this.#events = events;
  }

  /** Read the server's connection counts (the server is made after the metrics). */
  watchConnections(read: () => ConnectionCounts): void {
    this.#connections = read;
  }

  op(op: string, result: string): void {
    this.#ops.labels(op, result).inc();
  }

  /** A request refused with `code`, at any stage; `route` is fastify's route path (none: no route matched). */
  refused(method: string, route: string | undefined, code: string): void {
    const op = route === undefined ? 'none' : (OP_BY_ROUTE.get(`${method} ${route}`) ?? (route === '/v1/events' ? 'events' : 'other'));
    this.op(op, code);
  }

  request(method: string, route: string, status: number, seconds: number): void {
    this.#latency.labels(method, route, String(status)).observe(seconds);
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }
}
