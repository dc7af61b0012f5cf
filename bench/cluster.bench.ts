/**
 * Cluster benchmark (docs/cluster.md): PASID allocations per second with 1, 2 and 3 instances of
 * the authority in cluster mode on one 3-member etcd cluster, beside a naive design measured in
 * the same run on the same cluster: the whole 2^20-bit bitmap in one etcd value, each allocation
 * a compare-and-swap of it (read the key, set the lowest clear bit, txn "mod revision unchanged"
 * then put, retry on conflict), as Kubernetes' service IP allocator did (its single-value bitmap once ran etcd out of space).
 *
 * Ours: N instances in this process, each a PasidAuthority over its own EtcdStore (own etcd
 * client) and EtcdClusterRole; each drives BENCH_CALLERS (32) concurrent callers, one per VM
 * (BENCH_VMS to change: a VM's changes are applied one at a time, in order, by the host's rule, so
 * the concurrency of a host is across its VMs), each looping `allocPasids(vm)` (one PASID per call,
 * awaited: what one HTTP request does, without the HTTP). Naive: N clients (own etcd client each)
 * with 1 and with 4 concurrent callers each; the better of the two is the baseline. Each
 * configuration: BENCH_WARMUP_MS (500) then BENCH_SECONDS (3) measured, BENCH_REPS (1) rounds,
 * median. Every allocation of both designs is durable in etcd (a raft quorum) before it counts.
 *
 * etcd's data dirs are on /dev/shm when present (IOASID_ETCD_ROOT to change): the figures compare
 * designs on the CPU they need, not the disk's fsync latency (which the naive design pays once per
 * allocation and ours once per group of allocations).
 *
 *   npm run bench:cluster       (node --import tsx bench/cluster.bench.ts)
 *
 * Writes bench/results/cluster.json. Target: ours >= 10x the naive design at every N.
 */
import { Etcd3 } from 'etcd3';
import { hashToken, PasidAuthority } from '../src/service/index.ts';
import { toMutations } from '../src/service/store-journal.ts';
import { EtcdClusterRole } from '../src/cluster/index.ts';
import { EtcdStore } from '../src/store/index.ts';
import { EtcdCluster, ETCD_SKIP } from '../test/helpers/etcd-cluster.ts';
import { median, percentile, saveResult } from './util.ts';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 3);
const WARMUP_MS = Number(process.env.BENCH_WARMUP_MS ?? 500);
const REPS = Number(process.env.BENCH_REPS ?? 1);
const CALLERS = Number(process.env.BENCH_CALLERS ?? 32);
/** One VM per caller: a VM's changes are applied one at a time, in order (the host's rule 4). */
const VMS_PER_INSTANCE = Number(process.env.BENCH_VMS ?? CALLERS);
const BITMAP_BITS = 1 << 20;

interface Sample {
  readonly allocsPerSec: number;
  readonly p50ms: number;
  readonly p99ms: number;
  readonly extra: Record<string, number>;
}

/**
 * Run the callers until warm-up + measurement is over. Each caller pushes the latency of every
 * allocation it completes into `lat` (emptied when the warm-up ends) and returns how many it made.
 */
async function timed(run: (until: () => boolean, lat: number[]) => Promise<number>[]): Promise<{ count: number; total: number; lat: number[] }> {
  const tWarm = performance.now() + WARMUP_MS;
  const tEnd = tWarm + SECONDS * 1000;
  const lat: number[] = [];
  const ticker = setTimeout(() => {
    lat.length = 0;
  }, WARMUP_MS);
  const counts = await Promise.all(run(() => performance.now() < tEnd, lat));
  clearTimeout(ticker);
  return { count: lat.length, total: counts.reduce((a, b) => a + b, 0), lat };
}

// ------------------------------------------------------------------ ours

async function ours(etcd: EtcdCluster, n: number, rep: number): Promise<Sample> {
  const domain = `bench-${n}-${rep}-${Date.now().toString(36)}`;
  const instances: { store: EtcdStore; authority: PasidAuthority; vms: string[] }[] = [];
  for (let i = 0; i < n; i++) {
    const store = new EtcdStore({ endpoints: etcd.endpoints, hostId: `h${i}`, domain });
    const cluster = new EtcdClusterRole({ store, rows: toMutations });
    const authority = await PasidAuthority.open({ store, cluster });
    if (!authority.hasAdmin) await authority.setAdminTokenHash(hashToken('bench-admin-token-0123456789'));
    const vms: string[] = [];
    for (let v = 0; v < VMS_PER_INSTANCE; v++) {
      const id = `h${i}-vm${v}`;
      await authority.createVm({ id, quota: 0 });
      vms.push(id);
    }
    instances.push({ store, authority, vms });
  }
  const s0 = instances.map((x) => x.store.stats());
  const { count, total, lat } = await timed((until, out) => instances.flatMap((x) => Array.from({ length: CALLERS }, async (_, c) => {
    const vm = x.vms[c % x.vms.length] as string;
    let k = 0;
    while (until()) {
      const t = performance.now();
      await x.authority.allocPasids(vm);
      out.push(performance.now() - t);
      k++;
    }
    return k;
  })));
  const s1 = instances.map((x) => x.store.stats());
  const txns = s1.reduce((a, s, i) => a + s.txns - (s0[i]?.txns ?? 0), 0);
  const retries = s1.reduce((a, s, i) => a + s.retries - (s0[i]?.retries ?? 0), 0);
  const refused = s1.reduce((a, s, i) => a + s.refusedTxns - (s0[i]?.refusedTxns ?? 0), 0);
  const blocks = instances[0]?.store.blocks().size ?? 0;
  for (const x of instances) await x.authority.close();
  return {
    allocsPerSec: count / SECONDS,
    p50ms: percentile(lat, 50),
    p99ms: percentile(lat, 99),
    // Over warm-up and measurement: etcd transactions, and how many allocations shared each.
    extra: { txns, refusedTxns: refused, retries, blocks, allocsPerTxn: txns > 0 ? +(total / txns).toFixed(1) : 0 },
  };
}

// ------------------------------------------------------------------ the naive design

/** Lowest clear bit of the bitmap, or -1. */
function lowestClear(bm: Buffer): number {
  for (let i = 0; i < bm.length; i++) {
    const b = bm[i] as number;
    if (b !== 0xff) for (let j = 0; j < 8; j++) if ((b & (1 << j)) === 0) return i * 8 + j;
  }
  return -1;
}

async function naive(etcd: EtcdCluster, n: number, callers: number, rep: number): Promise<Sample> {
  const key = `/naive/bitmap-${n}-${callers}-${rep}-${Date.now().toString(36)}`;
  const clients = Array.from({ length: n }, () => new Etcd3({ hosts: etcd.endpoints.map((e) => `http://${e}`), defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + 5000 }) }));
  const init = Buffer.alloc(BITMAP_BITS / 8);
  init[0] = 1; // PASID 0 is reserved
  await (clients[0] as Etcd3).put(key).value(init);
  let conflicts = 0;
  const { count, lat } = await timed((until, out) => clients.flatMap((client) => Array.from({ length: callers }, async () => {
    let k = 0;
    while (until()) {
      const t = performance.now();
      for (;;) {
        const res = await client.kv.range({ key: Buffer.from(key) });
        const kv = res.kvs[0];
        if (kv === undefined) throw new Error('bitmap key vanished');
        const bm = Buffer.from(kv.value);
        const bit = lowestClear(bm);
        if (bit < 0) throw new Error('bitmap full');
        bm[bit >> 3] = (bm[bit >> 3] as number) | (1 << (bit & 7));
        const tx = await client.kv.txn({
          compare: [{ key: Buffer.from(key), target: 'Mod', result: 'Equal', mod_revision: kv.mod_revision }],
          success: [{ request_put: { key: Buffer.from(key), value: bm } }],
          failure: [],
        });
        if (tx.succeeded) break;
        conflicts++;
      }
      out.push(performance.now() - t);
      k++;
    }
    return k;
  })));
  await (clients[0] as Etcd3).delete().key(key);
  for (const c of clients) c.close();
  return { allocsPerSec: count / SECONDS, p50ms: percentile(lat, 50), p99ms: percentile(lat, 99), extra: { conflicts, bitmapBytes: BITMAP_BITS / 8 } };
}

// ------------------------------------------------------------------ run

async function main(): Promise<void> {
  if (ETCD_SKIP !== null) {
    console.log(`cluster benchmark skipped: ${ETCD_SKIP}`);
    return;
  }
  const etcd = await EtcdCluster.start({ quotaBytes: 8 * 1024 * 1024 * 1024, ...(process.env.IOASID_ETCD_ROOT ? { root: process.env.IOASID_ETCD_ROOT } : {}) });
  console.log(`etcd: 3 members on ${etcd.root}; ${SECONDS} s per configuration after ${WARMUP_MS} ms warm-up, ${REPS} round(s)`);
  const rows: Record<string, unknown>[] = [];
  try {
    const samples = new Map<string, Sample[]>();
    const add = (name: string, s: Sample) => {
      const l = samples.get(name) ?? [];
      l.push(s);
      samples.set(name, l);
      console.log(`${name.padEnd(34)} ${s.allocsPerSec.toFixed(0).padStart(8)} allocs/s  p50 ${s.p50ms.toFixed(2)} ms  p99 ${s.p99ms.toFixed(2)} ms  ${JSON.stringify(s.extra)}`);
    };
    for (let rep = 0; rep < REPS; rep++) {
      for (const n of [1, 2, 3]) {
        add(`ours, ${n} instance(s)`, await ours(etcd, n, rep));
        for (const c of [1, 4]) add(`naive CAS bitmap, ${n} client(s) x ${c}`, await naive(etcd, n, c, rep));
      }
    }
    const med = (name: string) => median((samples.get(name) ?? []).map((s) => s.allocsPerSec));
    /** The round with the median throughput (its latencies are the ones reported). */
    const medSample = (name: string) => {
      const l = [...(samples.get(name) ?? [])].sort((a, b) => a.allocsPerSec - b.allocsPerSec);
      return l[(l.length - 1) >> 1] as Sample;
    };
    for (const n of [1, 2, 3]) {
      const o = med(`ours, ${n} instance(s)`);
      const nv = Math.max(med(`naive CAS bitmap, ${n} client(s) x 1`), med(`naive CAS bitmap, ${n} client(s) x 4`));
      const last = medSample;
      rows.push({
        instances: n,
        oursAllocsPerSec: Math.round(o),
        oursP50ms: +last(`ours, ${n} instance(s)`).p50ms.toFixed(2),
        oursP99ms: +last(`ours, ${n} instance(s)`).p99ms.toFixed(2),
        oursDetail: last(`ours, ${n} instance(s)`).extra,
        naiveAllocsPerSec: Math.round(nv),
        naiveDetail: { callers1: Math.round(med(`naive CAS bitmap, ${n} client(s) x 1`)), callers4: Math.round(med(`naive CAS bitmap, ${n} client(s) x 4`)), conflicts4: last(`naive CAS bitmap, ${n} client(s) x 4`).extra.conflicts },
        speedup: +(o / nv).toFixed(1),
        targetMet: o >= 10 * nv,
      });
    }
    console.log('\ninstances  ours allocs/s  naive allocs/s  speedup');
    for (const r of rows) console.log(`${String(r.instances).padStart(9)}  ${String(r.oursAllocsPerSec).padStart(13)}  ${String(r.naiveAllocsPerSec).padStart(14)}  ${String(r.speedup).padStart(6)}x${r.targetMet ? '' : '  (target 10x missed)'}`);
    const path = saveResult('cluster', {
      command: `${REPS !== 1 ? `BENCH_REPS=${REPS} ` : ''}npm run bench:cluster`,
      settings: { seconds: SECONDS, warmupMs: WARMUP_MS, reps: REPS, callersPerInstance: CALLERS, vmsPerInstance: VMS_PER_INSTANCE, etcd: { members: 3, version: '3.4', dataOn: etcd.root.startsWith('/dev/shm') ? '/dev/shm (tmpfs)' : etcd.root }, blockSize: 64, target: 'ours >= 10x naive at every N' },
      results: rows,
    });
    console.log(`saved ${path}`);
  } finally {
    await etcd.stop();
  }
}

await main();
