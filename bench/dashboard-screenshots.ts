/**
 * The dashboard's pictures, reproducibly: starts the service (memory store, 127.0.0.1, a free
 * port), populates it through its HTTP API with the typed client, and photographs the page in
 * headless Chromium (Debian's /usr/bin/chromium). Not a test: run it when the page changes.
 *
 *   node --import tsx bench/dashboard-screenshots.ts            # both pictures into docs/
 *   node --import tsx bench/dashboard-screenshots.ts --out DIR  # elsewhere
 *   node --import tsx bench/dashboard-screenshots.ts --only small|million
 *   node --import tsx bench/dashboard-screenshots.ts --full     # and full-page pictures beside
 *
 * - `dashboard.png` (the README's): a realistic small host. Seven VMs with vIOMMUs and devices
 *   allocate in batches of the sizes their workloads use, over several rounds, so their PASIDs
 *   interleave as lowest-free allocation makes them; a CI runner frees most of its PASIDs and a
 *   batch VM is destroyed (holes that later batches refill); devices are bound; a guest allocates
 *   through VCMD. About 3,000 PASIDs.
 * - `dashboard-1m.png` (docs/dashboard.md): 1,000,000 PASIDs of 100 VMs taking turns allocating
 *   batches of 1024, the whole namespace on the map.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium, type BrowserContext } from 'playwright-core';
import { startServer, type RunningServer } from '../src/service/server.ts';
import { IoasidClient } from '../src/client/index.ts';
import { encodeVcmd, registerOffset, VCMD_CMD } from '../src/vtd/index.ts';
import { XorShift32 } from './util.ts';

const CHROMIUM = '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const ADMIN = 'admin-token-for-the-dashboard-pictures-0123456789';

const argv = process.argv.slice(2);
const arg = (name: string): string | undefined => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const outDir = resolve(arg('--out') ?? 'docs');
const only = arg('--only');
/** Also a full-page picture beside each (for review). */
const full = argv.includes('--full');

if (!existsSync(CHROMIUM)) {
  console.error(`${CHROMIUM} is absent: install Debian's chromium to take the dashboard's pictures`);
  process.exit(1);
}

const dir = mkdtempSync(join(tmpdir(), 'ioasid-dash-shots-'));
writeFileSync(join(dir, 'admin.token'), `${ADMIN}\n`);

async function serve(): Promise<RunningServer> {
  return startServer({ store: 'memory', host: '127.0.0.1', port: 0, adminTokenFile: join(dir, 'admin.token'), logLevel: 'silent', say: () => {} });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A small host as an operator would see it. */
async function smallHost(ctx: BrowserContext, path: string): Promise<void> {
  const server = await serve();
  try {
    const admin = new IoasidClient({ url: server.url, token: ADMIN });
    // id, quota, batch size its workload allocates, layout, devices
    const fleet = [
      { id: 'web-frontend', quota: 512, batch: 32, layout: 'A' as const, devs: 1 },
      { id: 'db-primary', quota: 2048, batch: 64, layout: 'B' as const, devs: 2 },
      { id: 'db-replica', quota: 2048, batch: 64, layout: 'B' as const, devs: 1 },
      { id: 'ml-train-0', quota: 4096, batch: 160, layout: 'B' as const, devs: 2 },
      { id: 'ci-runner', quota: 1024, batch: 48, layout: 'A' as const, devs: 1 },
      { id: 'cache', quota: 512, batch: 16, layout: 'B' as const, devs: 1 },
      { id: 'batch-etl', quota: 1024, batch: 96, layout: 'A' as const, devs: 1 },
    ];
    const tokens = new Map<string, IoasidClient>();
    for (const [i, vm] of fleet.entries()) {
      const { token } = await admin.createVm({
        id: vm.id, quota: vm.quota,
        viommus: [{ segment: 0, layout: vm.layout, ...(vm.layout === 'B' ? { rangeExtension: true } : {}) }],
        devices: Array.from({ length: vm.devs }, (_, d) => ({ bdf: `0000:${String(1 + d).padStart(2, '0')}:${String(2 + i).padStart(2, '0')}.0`, pasidBits: 20 })),
      });
      tokens.set(vm.id, new IoasidClient({ url: server.url, token }));
    }
    const rnd = new XorShift32(11);
    for (let round = 0; round < 8; round++) {
      for (const vm of fleet) {
        if (rnd.below(4) === 0) continue;
        const n = vm.batch * (1 + rnd.below(2));
        await (tokens.get(vm.id) as IoasidClient).allocPasids(vm.id, { count: n });
      }
    }
    // The CI runner's jobs finish: most of its PASIDs go back; the batch VM is torn down.
    const ci = tokens.get('ci-runner') as IoasidClient;
    const held = await ci.listPasids('ci-runner');
    for (const p of held) if (rnd.below(5) < 4) await ci.freePasid('ci-runner', p);
    await admin.destroyVm('batch-etl');
    // A new tenant arrives and fills the lowest holes first.
    const { token: lateToken } = await admin.createVm({ id: 'vdi-pool', quota: 1024, viommus: [{ segment: 0, layout: 'B' }], devices: [{ bdf: '0000:03:10.0', pasidBits: 20 }] });
    const late = new IoasidClient({ url: server.url, token: lateToken });
    await late.allocPasids('vdi-pool', { count: 384 });
    // Devices bound to some PASIDs.
    for (const [i, vm] of fleet.entries()) {
      if (vm.id === 'batch-etl') continue;
      const c = tokens.get(vm.id) as IoasidClient;
      const ps = await c.listPasids(vm.id);
      const bdf = `0000:01:${String(2 + i).padStart(2, '0')}.0`;
      for (let k = 0; k < 3 && k < ps.length; k++) await c.bind(vm.id, ps[Math.floor((k * ps.length) / 3)] as number, bdf);
    }

    const page = await ctx.newPage();
    await page.setViewportSize({ width: 1440, height: 1100 });
    await page.goto(server.url);
    await page.waitForSelector('html[data-rendered="true"]', { timeout: 30_000 });
    await page.locator('#conn', { hasText: 'Live' }).waitFor();
    // Live activity the page sees: a guest allocates through VCMD, then a batch arrives.
    const db = tokens.get('db-primary') as IoasidClient;
    await db.mmioWrite('db-primary', 0, registerOffset('B', 'VCMD_REG'), encodeVcmd('B', VCMD_CMD.ALLOCATE), 8);
    await sleep(150);
    await (tokens.get('ml-train-0') as IoasidClient).allocPasids('ml-train-0', { count: 160 });
    await page.click('tr[data-vm="db-primary"] button[data-segment="0"]');
    await page.locator('#regs-status', { hasText: 'Registers of db-primary' }).waitFor();
    await page.locator('#feed li', { hasText: '160 PASIDs allocated to ml-train-0' }).waitFor({ timeout: 3000 }).catch(async (e: unknown) => {
      console.error(await page.locator('#feed').innerText());
      throw e;
    });
    await page.locator('#feed li', { hasText: '160 PASIDs allocated to ml-train-0' }).locator('button[data-expand]').click();
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.locator('#map').focus();
    await page.keyboard.press('f'); // frame the allocated PASIDs (the default view)
    await sleep(200);
    // Open a bound PASID of db-primary by clicking its cell (the window stays as it is).
    const bound = (await db.getVm('db-primary')).bindings[1]?.pasid ?? 1;
    const at = await page.evaluate((p) => {
      const c = document.getElementById('map') as HTMLCanvasElement;
      const cols = Number(c.dataset.cols);
      const i = Math.floor((p - Number(c.dataset.start)) / Number(c.dataset.perCell));
      const r = c.getBoundingClientRect();
      return { x: r.left + (((i % cols) + 0.5) * r.width) / cols, y: r.top + ((Math.floor(i / cols) + 0.5) * r.height) / cols };
    }, bound);
    await page.mouse.click(at.x, at.y);
    await page.locator('#detail-body dd[data-owner="db-primary"]').waitFor();
    await page.mouse.move(at.x + 40, at.y + 25); // the pointer readout, on a neighbour
    await sleep(400);
    const n = await page.evaluate(() => document.getElementById('ns-summary')?.textContent ?? '');
    await page.locator('#map').blur();
    await page.screenshot({ path, clip: { x: 0, y: 0, width: 1440, height: 1100 } });
    if (full) await page.screenshot({ path: path.replace(/\.png$/, '-full.png'), fullPage: true });
    await page.close();
    console.log(`${path}: ${n}`);
  } finally {
    await server.close();
  }
}

/** 1,000,000 PASIDs of 100 VMs: the whole namespace. */
async function million(ctx: BrowserContext, path: string): Promise<void> {
  const server = await serve();
  try {
    const admin = new IoasidClient({ url: server.url, token: ADMIN });
    const vms = 100;
    const id = (i: number) => `vm-${String(i).padStart(3, '0')}`;
    for (let i = 0; i < vms; i++) await admin.createVm({ id: id(i), quota: 12_000, viommus: [{ segment: 0, layout: 'B' }], devices: [{ bdf: '0000:00:02.0' }] });
    let left = 1_000_000;
    for (let turn = 0; left > 0; turn++) {
      const count = Math.min(1024, left);
      await admin.allocPasids(id(turn % vms), { count });
      left -= count;
    }
    const page = await ctx.newPage();
    await page.setViewportSize({ width: 1440, height: 1100 });
    await page.goto(server.url);
    await page.waitForSelector('html[data-rendered="true"]', { timeout: 60_000 });
    await sleep(400);
    const n = await page.evaluate(() => document.getElementById('ns-summary')?.textContent ?? '');
    await page.screenshot({ path, clip: { x: 0, y: 0, width: 1440, height: 1100 } });
    await page.close();
    console.log(`${path}: ${n}`);
  } finally {
    await server.close();
  }
}

mkdirSync(outDir, { recursive: true });
const ctx = await chromium.launchPersistentContext(join(dir, 'profile'), { executablePath: CHROMIUM, headless: true, args: ARGS, viewport: { width: 1440, height: 1100 } });
await ctx.addInitScript((token) => {
  if (location.protocol === 'http:') sessionStorage.setItem('ioasid.adminToken', token);
}, ADMIN);
// A picture of a broken page is worse than none: any error in the page stops the script.
ctx.on('page', (p) => p.on('pageerror', (e) => {
  console.error(`the page threw: ${e.stack ?? e.message}`);
  process.exitCode = 1;
}));
try {
  if (only === undefined || only === 'small') await smallHost(ctx, join(outDir, 'dashboard.png'));
  if (only === undefined || only === 'million') await million(ctx, join(outDir, 'dashboard-1m.png'));
} finally {
  await ctx.close();
  rmSync(dir, { recursive: true, force: true });
}
