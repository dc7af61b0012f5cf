/**
 * The per-request metric families (operations counted, request and commit latency), kept outside
 * prom-client's own Counter and Histogram because those hash the label object on every call, even
 * through a child from `labels()`: at tens of thousands of requests a second that was a few per
 * cent of the service's CPU. A child here is a plain object found once per label set; an
 * observation is a bucket search and two additions. The families register in a prom-client
 * `Registry` like any metric and render as prom-client's would (same lines, same order), with one
 * difference: a child is exported from the moment it is made, at 0 before its first observation,
 * so a series such as the failed commits exists (and `rate()` works on it) before the first failure.
 * A value that is not a finite number is not observed.
 */
import type { Registry } from 'prom-client';

type Labels<L extends string> = Readonly<Record<L, string>>;

interface Family<L extends string, C> {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly L[];
  readonly registers: readonly Registry[];
  /** Builds a child's state. */
  fresh(): C;
}

interface Child<L extends string, C, H> {
  readonly labels: Labels<L>;
  readonly state: C;
  /** What callers use (inc, observe), made once with the child. */
  readonly handle: H;
}

/** What prom-client's registry reads of a metric (`get`, `getForPromString`, `reset`). */
interface Sample {
  readonly value: number;
  readonly labels: Record<string, string | number>;
  readonly sharedLabels?: Record<string, string>;
  readonly metricName?: string;
  /** Histogram buckets carry a null exemplar, as prom-client's do. */
  readonly exemplar?: null;
}

abstract class LabelledFamily<L extends string, C, H> {
  readonly name: string;
  readonly help: string;
  abstract readonly type: 'counter' | 'histogram';
  readonly aggregator = 'sum';
  readonly #labelNames: readonly L[];
  readonly #fresh: () => C;
  /** Children by the label values joined with NUL (label values never hold one in this service). */
  #children = new Map<string, Child<L, C, H>>();

  constructor(f: Family<L, C>) {
    this.name = f.name;
    this.help = f.help;
    this.#labelNames = f.labelNames;
    this.#fresh = () => f.fresh();
    for (const r of f.registers) r.registerMetric(this as never);
  }

  /**
   * The child of these label values, in `labelNames` order: found by one map lookup, made the
   * first time. The place to call per request (no label object to build).
   */
  labels(...values: string[]): H {
    const key = values.join('\u0000');
    let c = this.#children.get(key);
    if (c === undefined) {
      const state = this.#fresh();
      c = { labels: Object.fromEntries(this.#labelNames.map((n, i) => [n, values[i] ?? ''])) as Labels<L>, state, handle: this.handle(state) };
      this.#children.set(key, c);
    }
    return c.handle;
  }

  /** The child of these labels (as `labels`, by name). */
  child(labels: Labels<L>): H {
    return this.labels(...this.#labelNames.map((n) => labels[n]));
  }

  protected abstract handle(state: C): H;

  protected abstract samples(labels: Labels<L>, state: C, out: Sample[]): void;

  getForPromString(): { name: string; help: string; type: string; values: Sample[]; aggregator: string } {
    const values: Sample[] = [];
    for (const c of this.#children.values()) this.samples(c.labels, c.state, values);
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }

  /** As prom-client's `get`: each sample's labels with the shared ones merged in. */
  get(): { name: string; help: string; type: string; values: Sample[]; aggregator: string } {
    const m = this.getForPromString();
    return { ...m, values: m.values.map(({ sharedLabels, ...v }) => ({ ...v, labels: { ...v.labels, ...sharedLabels } })) };
  }

  reset(): void {
    this.#children = new Map();
  }
}

/** A counter with labels; `labels(...values).inc()` counts. */
export class CounterFamily<L extends string> extends LabelledFamily<L, { n: number }, { inc(): void }> {
  readonly type = 'counter';

  constructor(opts: { name: string; help: string; labelNames: readonly L[]; registers: readonly Registry[] }) {
    super({ ...opts, fresh: () => ({ n: 0 }) });
  }

  protected handle(s: { n: number }): { inc(): void } {
    return { inc: () => void (s.n += 1) };
  }

  protected samples(labels: Labels<L>, s: { n: number }, out: Sample[]): void {
    out.push({ value: s.n, labels });
  }
}

interface HistogramState {
  /** Observations per bucket (not cumulative); the last slot is above every bound. */
  readonly counts: number[];
  sum: number;
  count: number;
}

/** A histogram with labels and fixed upper bounds; `labels(...values).observe(seconds)`. */
export class HistogramFamily<L extends string> extends LabelledFamily<L, HistogramState, { observe(v: number): void }> {
  readonly type = 'histogram';
  readonly #bounds: readonly number[];

  constructor(opts: { name: string; help: string; labelNames: readonly L[]; buckets: readonly number[]; registers: readonly Registry[] }) {
    const bounds = [...opts.buckets].sort((a, b) => a - b);
    super({ ...opts, fresh: () => ({ counts: new Array<number>(bounds.length + 1).fill(0), sum: 0, count: 0 }) });
    this.#bounds = bounds;
  }

  protected handle(s: HistogramState): { observe(v: number): void } {
    const bounds = this.#bounds;
    return {
      observe: (v: number) => {
        if (!Number.isFinite(v)) return;
        let i = 0;
        while (i < bounds.length && v > bounds[i]!) i++;
        s.counts[i]! += 1;
        s.sum += v;
        s.count += 1;
      },
    };
  }

  protected samples(labels: Labels<L>, s: HistogramState, out: Sample[]): void {
    const bucket = `${this.name}_bucket`;
    let acc = 0;
    this.#bounds.forEach((le, i) => {
      acc += s.counts[i]!;
      out.push({ value: acc, labels: { le }, sharedLabels: labels, metricName: bucket, exemplar: null });
    });
    out.push({ value: s.count, labels: { le: '+Inf' }, sharedLabels: labels, metricName: bucket, exemplar: null });
    out.push({ value: s.sum, labels: {}, sharedLabels: labels, metricName: `${this.name}_sum` });
    out.push({ value: s.count, labels: {}, sharedLabels: labels, metricName: `${this.name}_count` });
  }
}
