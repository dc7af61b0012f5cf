/**
 * Prometheus metrics (prom-client, a registry of our own): operations by kind and result code,
 * PASIDs used and quota per VM, and a request latency histogram.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { PasidAuthority } from './authority.ts';

export class ServiceMetrics {
  readonly registry = new Registry();
  readonly #ops: Counter<'op' | 'result'>;
  readonly #errors: Counter<'code'>;
  readonly #latency: Histogram<'method' | 'route' | 'status'>;

  constructor(authority: PasidAuthority) {
    const registers = [this.registry];
    this.#ops = new Counter({ name: 'ioasid_operations_total', help: 'API operations by kind and result (ok or errno code)', labelNames: ['op', 'result'], registers });
    this.#errors = new Counter({ name: 'ioasid_errors_total', help: 'Error responses by errno code', labelNames: ['code'], registers });
    this.#latency = new Histogram({
      name: 'ioasid_http_request_duration_seconds', help: 'HTTP request latency', labelNames: ['method', 'route', 'status'], registers,
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1],
    });
    new Gauge({
      name: 'ioasid_vm_pasids', help: 'PASIDs held per VM', labelNames: ['vm'], registers,
      collect() {
        this.reset();
        for (const vm of authority.host.vms()) this.set({ vm: vm.id }, authority.host.space.setCount(vm.set));
      },
    });
    new Gauge({
      name: 'ioasid_vm_quota', help: 'PASID quota per VM (0 = unlimited)', labelNames: ['vm'], registers,
      collect() {
        this.reset();
        for (const vm of authority.host.vms()) this.set({ vm: vm.id }, vm.quota);
      },
    });
    new Gauge({
      name: 'ioasid_pasids_allocated', help: 'PASIDs allocated in the whole namespace', registers,
      collect() {
        this.set(authority.host.space.size);
      },
    });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  op(op: string, result: string): void {
    this.#ops.inc({ op, result });
  }

  error(code: string): void {
    this.#errors.inc({ code });
  }

  request(method: string, route: string, status: number, seconds: number): void {
    this.#latency.observe({ method, route, status: String(status) }, seconds);
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }
}
