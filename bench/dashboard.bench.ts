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
 *   node --import tsx bench/dashboard.bench.ts --screenshot docs/dashboard.png
 *
 * `--screenshot PATH` also renders a smaller, varied namespace (a dozen VMs, bindings, holes, a
 * VCMD command, a PASID opened) and saves a full-page screenshot there.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium, type BrowserContext, type CDPSession, type Page } from 'playwright-core';
import { startServer, type RunningServer } from '../src/service/server.ts';
import { IoasidClient } from '../src/client/index.ts';
import { encodeVcmd, registerOffset, VCMD_CMD } from '../src/vtd/index.ts';
import { median, saveResult, XorShift32 } from './util.ts';

const CHROMIUM = '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const ADMIN = 'admin-token-for-the-dashboard-bench-0123456789';
const PASIDS = 1_000_000;
const VMS = 100;
const LOADS = 5;
const MiB = 1 << 20;
const TARGET_MS = 1000;

const argv = process.argv.slice(2);
const shotAt = argv.indexOf('--screenshot');
const screenshot = shotAt >= 0 ? resolve(argv[shotAt + 1] ?? 'docs/dashboard.png') : null;

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

/** A smaller, varied namespace for the README's picture. */
async function showcase(ctx: BrowserContext, path: string): Promise<void> {
  const server = await serve();
  try {
    const a = server.authority;
    const names = ['web-frontend', 'db-primary', 'db-replica', 'ml-train-0', 'ml-train-1', 'ci-runner', 'cache', 'analytics', 'batch-etl', 'gateway', 'search', 'storage'];
    const tokens = new Map<string, string>();
    for (const [i, id] of names.entries()) {
      const { token } = await a.createVm({
        id, quota: 50_000 + i * 9_000,
        viommus: [{ segment: 0, layout: i % 3 === 0 ? 'A' : 'B', ...(i % 3 === 2 ? { rangeExtension: true } : {}) }],
        devices: [{ bdf: `0000:00:${String(2 + i).padStart(2, '0')}.0`, pasidBits: 20 }, ...(i % 4 === 0 ? [{ bdf: `0000:01:${String(i).padStart(2, '0')}.0`, pasidBits: 16 }] : [])],
      });
      tokens.set(id, token);
    }
    const rnd = new XorShift32(7);
    const target = 780_000;
    for (let round = 0; round < 90 && a.host.space.size < target; round++) {
      for (const [i, id] of names.entries()) {
        if (rnd.below(3) === 0 || a.host.space.size >= target) continue;
        const vm = a.vm(id);
        const left = vm.quota - a.host.space.setCount(vm.set);
        const count = Math.min(left, 256 + rnd.below(1536 + i * 192));
        if (count > 0) await a.allocPasids(id, { count });
      }
    }
    // Holes: some VMs give back part of what they hold.
    for (const id of ['ci-runner', 'batch-etl', 'ml-train-1']) {
      const ps = a.vm(id).pasids();
      for (let k = 0; k < ps.length; k++) if (rnd.below(10) < 4) await a.freePasid(id, ps[k] as number);
    }
    for (const [i, id] of names.entries()) {
      const ps = a.vm(id).pasids();
      for (let k = 0; k < 3 && k < ps.length; k++) await a.bind(id, ps[k * 97] ?? (ps[0] as number), `0000:00:${String(2 + i).padStart(2, '0')}.0`);
    }
    const page = await ctx.newPage();
    await page.setViewportSize({ width: 1440, height: 1000 });
    await page.goto(server.url);
    await page.waitForSelector('html[data-rendered="true"]', { timeout: 30_000 });
    // Live activity the page sees: a guest allocates through VCMD, a device is bound.
    const vm = new IoasidClient({ url: server.url, token: tokens.get('db-primary') as string });
    await vm.mmioWrite('db-primary', 0, registerOffset('B', 'VCMD_REG'), encodeVcmd('B', VCMD_CMD.ALLOCATE), 8);
    await new Promise((r) => setTimeout(r, 100));
    const [p] = await vm.allocPasids('db-primary');
    await vm.bind('db-primary', p as number, '0000:00:03.0');
    await page.click('tr[data-vm="db-primary"] button[data-segment="0"]');
    await page.locator('#regs-status', { hasText: 'Registers of db-primary' }).waitFor();
    await page.fill('#goto', String(p));
    await page.press('#goto', 'Enter');
    await page.locator('#detail-body dd[data-owner="db-primary"]').waitFor();
    await page.locator('#map').focus();
    await page.keyboard.press('0'); // the whole namespace, cursor on the PASID opened
    await new Promise((r) => setTimeout(r, 300));
    await page.screenshot({ path, fullPage: true });
    await page.close();
    console.log(`screenshot: ${path}`);
  } finally {
    await server.close();
  }
}

const ctx = await chromium.launchPersistentContext(join(dir, 'profile'), { executablePath: CHROMIUM, headless: true, args: ARGS, viewport: { width: 1440, height: 1000 } });
await ctx.addInitScript((token) => sessionStorage.setItem('ioasid.adminToken', token), ADMIN);
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
  if (screenshot !== null) {
    await ctx.clearCookies();
    await showcase(ctx, screenshot);
  }
} finally {
  await ctx.close();
  rmSync(dir, { recursive: true, force: true });
}
