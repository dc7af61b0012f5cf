/**
 * The per-request metric families (src/service/metric-families.ts) render what prom-client's own
 * Counter and Histogram render for the same observations, line for line; they differ only in that
 * a child is exported from the moment it is made.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Counter, Histogram, Registry } from 'prom-client';
import { CounterFamily, HistogramFamily } from '../src/service/metric-families.ts';

const BUCKETS = [0.0001, 0.001, 0.01, 0.1, 1];

describe('metric families', () => {
  it('a histogram family renders as prom-client Histogram does, buckets cumulative, +Inf, sum and count', async () => {
    const ours = new Registry();
    const theirs = new Registry();
    const a = new HistogramFamily({ name: 'x_seconds', help: 'X', labelNames: ['method', 'status'], buckets: BUCKETS, registers: [ours] });
    const b = new Histogram({ name: 'x_seconds', help: 'X', labelNames: ['method', 'status'], buckets: BUCKETS, registers: [theirs] });
    const seen: [string, string, number][] = [['GET', '200', 0.00005], ['GET', '200', 0.0001], ['GET', '200', 0.0007], ['POST', '201', 0.5], ['POST', '201', 3], ['GET', '200', 0.02]];
    for (const [method, status, v] of seen) {
      a.child({ method, status }).observe(v);
      b.labels({ method, status }).observe(v);
    }
    const text = await ours.metrics();
    assert.equal(text, await theirs.metrics());
    assert.match(text, /x_seconds_bucket\{le="0.0001",method="GET",status="200"\} 2\n/, 'a value on a bound falls in that bound');
    assert.match(text, /x_seconds_bucket\{le="\+Inf",method="POST",status="201"\} 2\n/);
    assert.match(text, /x_seconds_count\{method="GET",status="200"\} 4\n/);
    const json = async (r: Registry) => JSON.parse(JSON.stringify(await r.getMetricsAsJSON())) as unknown;
    assert.deepEqual(await json(ours), await json(theirs), 'the JSON form too');
  });

  it('a counter family renders as prom-client Counter does; a child made is exported at 0; reset empties it', async () => {
    const ours = new Registry();
    const theirs = new Registry();
    const a = new CounterFamily({ name: 'ops_total', help: 'Ops', labelNames: ['op', 'result'], registers: [ours] });
    const b = new Counter({ name: 'ops_total', help: 'Ops', labelNames: ['op', 'result'], registers: [theirs] });
    const ok = a.child({ op: 'alloc', result: 'ok' });
    ok.inc();
    ok.inc();
    b.labels({ op: 'alloc', result: 'ok' }).inc(2);
    assert.equal(await ours.metrics(), await theirs.metrics());
    a.child({ op: 'free', result: 'EBUSY' });
    assert.match(await ours.metrics(), /ops_total\{op="free",result="EBUSY"\} 0\n/);
    ours.resetMetrics();
    assert.doesNotMatch(await ours.metrics(), /ops_total\{/);
  });

  it('labels(...values) finds the child of those values in label order, the same one each time; after a reset it counts afresh', async () => {
    const r = new Registry();
    const c = new CounterFamily({ name: 'ops_total', help: 'Ops', labelNames: ['op', 'result'], registers: [r] });
    assert.equal(c.labels('alloc', 'ok'), c.labels('alloc', 'ok'));
    assert.equal(c.labels('alloc', 'ok'), c.child({ result: 'ok', op: 'alloc' }), 'by name or by position, one child');
    c.labels('alloc', 'ok').inc();
    c.labels('alloc', 'ok').inc();
    assert.match(await r.metrics(), /ops_total\{op="alloc",result="ok"\} 2\n/);
    r.resetMetrics();
    c.labels('alloc', 'ok').inc();
    assert.match(await r.metrics(), /ops_total\{op="alloc",result="ok"\} 1\n/, 'a reset loses no later count');
  });

  it('a value that is not a finite number is not observed', async () => {
    const r = new Registry();
    const h = new HistogramFamily({ name: 'y_seconds', help: 'Y', labelNames: ['k'], buckets: BUCKETS, registers: [r] });
    const c = h.child({ k: 'a' });
    c.observe(Number.NaN);
    c.observe(Number.POSITIVE_INFINITY);
    c.observe(0.5);
    assert.match(await r.metrics(), /y_seconds_count\{k="a"\} 1\n/);
    assert.match(await r.metrics(), /y_seconds_sum\{k="a"\} 0.5\n/);
  });
});
