/**
 * The dashboard with a full namespace: 1,000,000 PASIDs across 100 VMs, in two layouts:
 *  - `batched`: the VMs take turns allocating batches of 1024 (the authority's batch
 *    `allocPasids`, committed to a memory store), so each VM owns runs of 1024;
 *  - `random`: every PASID goes to a VM picked at random (the host model's `allocSync`, not
 *    persisted: only the render matters), the worst case for the map's compression.
 * For each, headless Chromium loads the page with the admin token already in sessionStorage, and
 * we measure the time from navigation start to the map fully drawn (the page's
 * `performance.mark('ioasid:rendered')`) and the bytes transferred (CDP `encodedDataLength` of
 * every response, the browser cache disabled), over several loads. Targets: < 1 s, < 1 MiB.
 *
 *   npm run bench:dashboard                       # or: node --import tsx bench/dashboard.bench.ts
 *
 * The pictures in docs/ come from bench/dashboard-screenshots.ts.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type CDPSession, type Page } from 'playwright-core';
import { startServer, type RunningServer } from '../src/service/server.ts';
import { IoasidClient } from '../src/client/index.ts';
import { median, saveResult, XorShift32 } from './util.ts';

const CHROMIUM = '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const ADMIN = 'admin-token-for-the-dashboard-bench-0123456789';
const PASIDS = 1_000_000;
const VMS = 100;
const LOADS = 5;
const MiB = 1 << 20;
const TARGET_MS = 1000;

if (!existsSync(CHROMIUM)) {
  console.log(`dashboard bench skipped: ${CHROMIUM} is absent (install Debian's chromium)`);
  process.exit(0);
}

const dir = mkdtempSync(join(tmpdir(), 'ioasid-dash-bench-'));
writeFileSync(join(dir, 'admin.token'), `${ADMIN}\n`);

async function serve(): Promise<RunningServer> {
  return startServer({ store: 'memory', host: '127.0.0.1', port: 0, adminTokenFile: join(dir, 'admin.token'), logLevel: 'silent', say: () => {} });
}

const vmId = (i: number) => `vm-${String(i).padStart(3, '0')}`;

async function populate(server: RunningServer, layout: 'batched' | 'random'): Promise<number> {
  const a = server.authority;
  for (let i = 0; i < VMS; i++) await a.createVm({ id: vmId(i), quota: 12_000, viommus: [{ segment: 0, layout: 'B' }], devices: [{ bdf: '0000:00:02.0' }] });
  const t = performance.now();
  if (layout === 'batched') {
    let left = PASIDS;
    for (let turn = 0; left > 0; turn++) {
      const count = Math.min(1024, left);
      await a.allocPasids(vmId(turn % VMS), { count });
      left -= count;
    }
  } else {
    const sets = Array.from({ length: VMS }, (_, i) => a.vm(vmId(i)).set);
    const rnd = new XorShift32(2020);
    for (let i = 0; i < PASIDS; i++) a.host.space.allocSync(sets[rnd.below(VMS)] ?? null, 1, 0xfffff);
  }
  return performance.now() - t;
}

interface Load {
  phases: Record<string, number>;
  renderMs: number;
  bytes: number;
  mapBytes: number;
  mapFetchMs: number;
  wsBytes: number;
}

/** Count response bytes of one page through CDP. */
async function meter(page: Page): Promise<{ cdp: CDPSession; total: () => { bytes: number; mapBytes: number; wsBytes: number } }> {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  await cdp.send('Network.setCacheDisabled', { cacheDisabled: true });
  const urls = new Map<string, string>();
  let bytes = 0;
  let mapBytes = 0;
  let wsBytes = 0;
  cdp.on('Network.responseReceived', (e) => urls.set(e.requestId, e.response.url));
  cdp.on('Network.loadingFinished', (e) => {
    bytes += e.encodedDataLength;
    if (urls.get(e.requestId)?.includes('/v1/namespace/map')) mapBytes += e.encodedDataLength;
  });
  cdp.on('Network.webSocketFrameReceived', (e) => {
    wsBytes += e.response.payloadData.length;
  });
  return { cdp, total: () => ({ bytes, mapBytes, wsBytes }) };
}

async function load(ctx: BrowserContext, url: string): Promise<Load> {
  const page = await ctx.newPage();
  const m = await meter(page);
  await page.goto(url);
  await page.waitForSelector('html[data-rendered="true"]', { timeout: 30_000 });
  // A string, not a function: tsx would wrap inner functions in a helper the page lacks.
  const timing = (await page.evaluate(`(() => {
    const at = (name) => Math.round(performance.getEntriesByName(name)[0]?.startTime ?? NaN);
    const map = performance.getEntriesByType('resource').find((r) => r.name.includes('/v1/namespace/map'));
    return {
      renderMs: performance.getEntriesByName('ioasid:rendered')[0]?.startTime ?? NaN,
      mapFetchMs: map ? map.responseEnd - map.startTime : NaN,
      phases: {
        script: at('ioasid:script'), signedIn: at('ioasid:signed-in'), eventsOpen: at('ioasid:events-open'),
        mapRequested: Math.round(map?.startTime ?? NaN), mapFirstByte: Math.round(map?.responseStart ?? NaN), mapReceived: Math.round(map?.responseEnd ?? NaN),
        mapDecoded: at('ioasid:map-decoded'), mapLoaded: at('ioasid:map-loaded'), rendered: at('ioasid:rendered'),
      },
    };
  })()`)) as { renderMs: number; mapFetchMs: number; phases: Record<string, number> };
  await new Promise((r) => setTimeout(r, 50)); // let loadingFinished of the last response arrive
  const t = m.total();
  await m.cdp.detach();
  await page.close();
  return { ...timing, ...t };
}

async function scenario(ctx: BrowserContext, layout: 'batched' | 'random'): Promise<Record<string, unknown>> {
  const server = await serve();
  try {
    const allocMs = await populate(server, layout);
    const client = new IoasidClient({ url: server.url, token: ADMIN });
    let t = performance.now();
    const map = await client.namespaceMap();
    const mapMs = performance.now() - t;
    const raw = await fetch(`${server.url}/v1/namespace/map`, { headers: { authorization: `Bearer ${ADMIN}` } });
    const mapPayload = (await raw.arrayBuffer()).byteLength;
    const json = await fetch(`${server.url}/v1/namespace`, { headers: { authorization: `Bearer ${ADMIN}` } });
    const jsonBytes = (await json.arrayBuffer()).byteLength;
    t = performance.now();
    server.authority.namespaceMap();
    const cellsMs = performance.now() - t;
    const first = await load(ctx, server.url); // includes bundling the page (first request after start)
    const runs: Load[] = [];
    for (let i = 0; i < LOADS; i++) runs.push(await load(ctx, server.url));
    const result = {
      layout,
      pasids: map.owners.reduce((n, o) => n + o.count, 0),
      vms: map.owners.filter((o) => o.owner !== null).length,
      allocMs: Math.round(allocMs),
      server: { cellsMs: +cellsMs.toFixed(1), mapRequestMs: +mapMs.toFixed(1) },
      mapPayloadBytes: mapPayload,
      namespaceJsonBytes: jsonBytes,
      firstLoadAfterStart: { renderMs: Math.round(first.renderMs), bytes: first.bytes },
      loads: runs.map((r) => ({ renderMs: Math.round(r.renderMs), bytes: r.bytes, mapBytes: r.mapBytes, mapFetchMs: Math.round(r.mapFetchMs), wsBytes: r.wsBytes, phasesMs: r.phases })),
      renderMsMedian: Math.round(median(runs.map((r) => r.renderMs))),
      renderMsMax: Math.round(Math.max(...runs.map((r) => r.renderMs))),
      bytesMedian: median(runs.map((r) => r.bytes)),
    };
    console.log(`${layout.padEnd(8)} ${result.pasids.toLocaleString('en')} PASIDs / ${result.vms} VMs: first render ${result.renderMsMedian} ms median (max ${result.renderMsMax}; ${result.firstLoadAfterStart.renderMs} ms on the load that bundles the page), ` +
      `${(result.bytesMedian / 1024).toFixed(0)} KiB transferred (map ${(mapPayload / 1024).toFixed(0)} KiB; the JSON /v1/namespace would be ${(jsonBytes / 1024).toFixed(0)} KiB)`);
    return result;
  } finally {
    await server.close();
  }
}

const ctx = await chromium.launchPersistentContext(join(dir, 'profile'), { executablePath: CHROMIUM, headless: true, args: ARGS, viewport: { width: 1440, height: 1000 } });
await ctx.addInitScript((token) => {
  if (location.protocol === 'http:') sessionStorage.setItem('ioasid.adminToken', token);
}, ADMIN);
try {
  const probe = await ctx.newPage();
  const browser = (await probe.evaluate(() => navigator.userAgent)).match(/(?:Headless)?Chrome\/[\d.]+/)?.[0] ?? 'unknown';
  await probe.close();
  const batched = await scenario(ctx, 'batched');
  const random = await scenario(ctx, 'random');
  const all = [batched, random] as { renderMsMedian: number; renderMsMax: number; loads: { bytes: number }[] }[];
  const medianMs = Math.max(...all.map((r) => r.renderMsMedian));
  const worstMs = Math.max(...all.map((r) => r.renderMsMax));
  const worstBytes = Math.max(...all.flatMap((r) => r.loads.map((l) => l.bytes)));
  const path = saveResult('dashboard', {
    workload: { pasids: PASIDS, vms: VMS, loadsPerLayout: LOADS, viewport: '1440x1000', browser },
    batched,
    random,
    targets: { renderMs: TARGET_MS, bytes: MiB },
    /** Render: the slower layout's median (the max of single loads is recorded too: it moves with machine load). */
    result: { renderMsMedian: medianMs, renderMsMaxOfAllLoads: worstMs, bytesMax: worstBytes },
    pass: { renderMs: medianMs < TARGET_MS, bytes: worstBytes < MiB },
  });
  console.log(`first full render ${medianMs} ms (slower layout's median; slowest single load ${worstMs} ms; target < ${TARGET_MS}), at most ${(worstBytes / 1024).toFixed(0)} KiB transferred (target < 1024 KiB) -> ${path}`);
} finally {
  await ctx.close();
  rmSync(dir, { recursive: true, force: true });
}
