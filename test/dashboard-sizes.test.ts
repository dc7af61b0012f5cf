/**
 * The namespace map at every size, in headless Chromium at 1280 x 800, against services started in
 * process on 127.0.0.1 and populated through the HTTP API (the million through the authority, as
 * the bench does): 0, 5, 2,000 and 1,000,000 PASIDs. For each, the canvas is sampled: every owner
 * present shows its colour, the cells of its PASIDs are its colour, and the readout states the
 * window actually drawn. At 2,000 also: colours of existing VMs stay as they were when another VM
 * is created, pressing an owner frames its PASIDs and steps through its runs, a VM's row frames it
 * too, and a batch of 160 allocations is one expandable line in the feed.
 * Skipped, saying why, only when /usr/bin/chromium is absent (CI installs it).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { startServer, type RunningServer } from '../src/service/server.ts';
import { IoasidClient } from '../src/client/index.ts';

const CHROMIUM = '/usr/bin/chromium';
const ADMIN = 'admin-token-for-dashboard-size-tests-0123456789';
const FREE_RGB = 'rgb(28, 34, 42)';
const skip = existsSync(CHROMIUM) ? false : `${CHROMIUM} is absent: install Debian's chromium to run the dashboard's browser tests (CI does)`;
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const rgbOf = (css: string) => {
  const n = parseInt(css.slice(1), 16);
  return `rgb(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255})`;
};
const hex = (p: number) => `0x${p.toString(16)}`;

/** Every colour drawn on the map canvas. */
function canvasColours(page: Page): Promise<Set<string>> {
  return page.evaluate(() => {
    const c = document.getElementById('map') as HTMLCanvasElement;
    const d = c.getContext('2d')?.getImageData(0, 0, c.width, c.height).data ?? new Uint8ClampedArray();
    const seen = new Set<number>();
    for (let i = 0; i < d.length; i += 4) seen.add(((d[i] as number) << 16) | ((d[i + 1] as number) << 8) | (d[i + 2] as number));
    return [...seen].map((n) => `rgb(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255})`);
  }).then((a) => new Set(a));
}

/**
 * The colour a PASID's cell is drawn in, or null if it is not shown: the commonest colour of the
 * device pixels the map gives that cell (pixel x shows column floor((x + 0.5) * cols / width)),
 * so a pattern's stroke, a grid line or a binding's ring drawn over part of it does not count.
 */
function cellRgb(page: Page, pasid: number): Promise<string | null> {
  return page.evaluate((p) => {
    const c = document.getElementById('map') as HTMLCanvasElement;
    const start = Number(c.dataset.start);
    if (p < start || p > Number(c.dataset.last)) return null;
    const cols = Number(c.dataset.cols);
    const i = Math.floor((p - start) / Number(c.dataset.perCell));
    const [col, row] = [i % cols, Math.floor(i / cols)];
    const W = c.width;
    const x0 = Math.max(0, Math.floor((col * W) / cols) - 1);
    const y0 = Math.max(0, Math.floor((row * W) / cols) - 1);
    const n = Math.ceil(W / cols) + 2;
    const d = c.getContext('2d')?.getImageData(x0, y0, n, n).data;
    if (d === undefined) return null;
    const votes = new Map<string, number>();
    for (let y = y0; y < Math.min(W, y0 + n); y++) {
      for (let x = x0; x < Math.min(W, x0 + n); x++) {
        // (inline: tsx would wrap an inner function in a helper the page lacks)
        if (Math.min(cols - 1, Math.floor(((x + 0.5) * cols) / W)) !== col || Math.min(cols - 1, Math.floor(((y + 0.5) * cols) / W)) !== row) continue;
        const k = ((y - y0) * n + (x - x0)) * 4;
        const rgb = `rgb(${d[k]}, ${d[k + 1]}, ${d[k + 2]})`;
        votes.set(rgb, (votes.get(rgb) ?? 0) + 1);
      }
    }
    return [...votes].sort((a, b) => b[1] - a[1])[0]?.[0] ?? null;
  }, pasid);
}

/**
 * The overview strip's columns that show a density bar (sampled just above the strip's bottom
 * edge, inside the window outline; bars are light, the ground and its shade dark).
 */
function overviewBars(page: Page): Promise<{ width: number; bars: number[] }> {
  return page.evaluate(() => {
    const c = document.getElementById('overview') as HTMLCanvasElement;
    const dpr = window.devicePixelRatio || 1;
    const y = Math.round(30 * dpr) - Math.round(3 * dpr) - 1;
    const d = c.getContext('2d')?.getImageData(0, y, c.width, 1).data ?? new Uint8ClampedArray();
    const bars: number[] = [];
    for (let x = 0; x < c.width; x++) if ((d[4 * x] as number) > 50) bars.push(x);
    return { width: c.width, bars };
  });
}

/** What the legend shows per owner: colour, pattern, count and runs. */
async function legend(page: Page): Promise<Map<string, { colour: string; pattern: string; count: string; runs: string }>> {
  const rows = await page.locator('#legend > li').evaluateAll((lis) => lis.map((li) => ({
    label: li.querySelector('.label')?.textContent ?? '',
    colour: li.querySelector<HTMLElement>('.swatch')?.dataset.colour ?? '',
    pattern: li.querySelector<HTMLElement>('.swatch')?.dataset.pattern ?? '',
    count: li.querySelector('.num')?.textContent ?? '',
    runs: li.querySelector('.runs-n')?.textContent ?? '',
  })));
  return new Map(rows.map((r) => [r.label, r]));
}

function view(page: Page): Promise<{ start: number; last: number; cols: number; perCell: number; zoom: number; mode: string; cursor: number }> {
  return page.evaluate(() => {
    const d = (document.getElementById('map') as HTMLCanvasElement).dataset;
    return { start: Number(d.start), last: Number(d.last), cols: Number(d.cols), perCell: Number(d.perCell), zoom: Number(d.zoom), mode: d.mode ?? '', cursor: Number(d.cursor) };
  });
}

/** Sorted PASIDs -> runs [first, last]. */
function runsOf(pasids: readonly number[]): [number, number][] {
  const out: [number, number][] = [];
  for (const p of [...pasids].sort((a, b) => a - b)) {
    const last = out[out.length - 1];
    if (last !== undefined && p === last[1] + 1) last[1] = p;
    else out.push([p, p]);
  }
  return out;
}

/** The canvas has been drawn at (or after) the model's seq `seq`. */
async function drawnAt(page: Page, seq: number): Promise<void> {
  await page.waitForFunction((s) => Number((document.getElementById('map') as HTMLCanvasElement).dataset.seq) >= s, seq, { timeout: 5000 });
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
}

/** The legend's runs are counted for the model at (or after) seq `seq` (they follow a frame later). */
async function legendCounted(page: Page, seq: number): Promise<void> {
  await page.waitForFunction((s) => {
    const d = document.getElementById('legend')?.dataset.seq;
    return d !== undefined && d !== '' && Number(d) >= s;
  }, seq, { timeout: 5000 });
}

async function lastSeq(admin: IoasidClient): Promise<number> {
  return (await admin.recentEvents(1))[0]?.seq ?? 0;
}

describe('the namespace map at 0, 5, 2,000 and 1,000,000 PASIDs, in headless Chromium', { skip, timeout: 600_000 }, () => {
  let dir = '';
  let ctx: BrowserContext;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ioasid-dashboard-sizes-'));
    writeFileSync(join(dir, 'admin.token'), `${ADMIN}\n`);
    ctx = await chromium.launchPersistentContext(join(dir, 'profile'), { executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, viewport: { width: 1280, height: 800 } });
    await ctx.addInitScript((token) => {
      if (location.protocol === 'http:') sessionStorage.setItem('ioasid.adminToken', token);
    }, ADMIN);
  });

  after(async () => {
    await ctx?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A fresh service, populated by `fill`, and a page signed in to it. */
  async function host(fill: (admin: IoasidClient, server: RunningServer) => Promise<void>): Promise<{ server: RunningServer; admin: IoasidClient; page: Page; close: () => Promise<void> }> {
    const server = await startServer({ store: 'memory', host: '127.0.0.1', port: 0, adminTokenFile: join(dir, 'admin.token'), logLevel: 'silent', say: () => {} });
    const admin = new IoasidClient({ url: server.url, token: ADMIN });
    await fill(admin, server);
    const page = await ctx.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(server.url);
    await page.waitForSelector('html[data-rendered="true"]', { timeout: 30_000 });
    await page.locator('#conn', { hasText: 'Live' }).waitFor({ timeout: 10_000 });
    await legendCounted(page, await lastSeq(admin));
    return {
      server, admin, page,
      close: async () => {
        await page.close();
        await server.close();
        assert.deepEqual(errors, [], 'the page threw');
      },
    };
  }

  it('0 PASIDs: the whole namespace, all free; the first allocation is framed as it happens', async () => {
    const h = await host(async (admin) => {
      await admin.createVm({ id: 'vm-a', quota: 10 });
    });
    try {
      const { page, admin } = h;
      assert.match((await page.textContent('#ns-summary')) ?? '', /^0 of 1,048,575 PASIDs allocated$/);
      assert.equal(await page.textContent('#zoom-readout'), 'PASIDs 0x0–0xfffff (1,048,576) · 4 PASIDs per cell · 512 cells per row');
      const v = await view(page);
      assert.deepEqual([v.start, v.last, v.cols, v.perCell, v.mode], [0, 0xfffff, 512, 4, 'fit']);
      const lg = await legend(page);
      assert.deepEqual([lg.get('free')?.count, lg.get('vm-a')?.count, lg.get('vm-a')?.runs], ['1,048,575', '0', '0 runs']);
      const colours = await canvasColours(page);
      assert.ok(colours.has(FREE_RGB));
      assert.ok(!colours.has(rgbOf(lg.get('vm-a')?.colour ?? '')), 'no owner colour on an empty map');
      // Pressing an owner without PASIDs says so and leaves the window.
      await page.click('#legend button[data-index]');
      await page.locator('#runs-status', { hasText: 'vm-a holds no PASIDs.' }).waitFor({ timeout: 5000 });
      await page.click('#owner-clear');
      // Live: the first allocation is framed (the smallest window, 64 PASIDs) in its owner's colour.
      const [p] = await admin.allocPasids('vm-a');
      assert.equal(p, 1);
      await drawnAt(page, await lastSeq(admin));
      await page.locator('#zoom-readout', { hasText: 'PASIDs 0x0–0x3f (64) · 1 PASID per cell · 8 cells per row' }).waitFor({ timeout: 5000 });
      assert.equal(await cellRgb(page, 1), rgbOf(lg.get('vm-a')?.colour ?? ''));
      assert.equal(await cellRgb(page, 2), FREE_RGB);
    } finally {
      await h.close();
    }
  });

  it('5 PASIDs: framed in 8 x 8 cells, each PASID in its owner\'s colour and numbered', async () => {
    const h = await host(async (admin) => {
      for (const [id, n] of [['vm-a', 2], ['vm-b', 2], ['vm-c', 1]] as const) {
        await admin.createVm({ id, quota: 10 });
        await admin.allocPasids(id, { count: n });
      }
    });
    try {
      const { page } = h;
      assert.match((await page.textContent('#ns-summary')) ?? '', /^5 of 1,048,575 PASIDs allocated, the highest 0x5$/);
      assert.equal(await page.textContent('#zoom-readout'), 'PASIDs 0x0–0x3f (64) · 1 PASID per cell · 8 cells per row');
      const lg = await legend(page);
      const colours = await canvasColours(page);
      const owners = { 1: 'vm-a', 2: 'vm-a', 3: 'vm-b', 4: 'vm-b', 5: 'vm-c' } as const;
      for (const [p, id] of Object.entries(owners)) {
        const want = rgbOf(lg.get(id)?.colour ?? '');
        assert.ok(colours.has(want), `${id}'s colour ${want} is on the map`);
        assert.equal(await cellRgb(page, Number(p)), want, `PASID ${p} is ${id}'s`);
      }
      assert.equal(await cellRgb(page, 6), FREE_RGB);
      assert.equal(await cellRgb(page, 0x3f), FREE_RGB);
      assert.equal(await cellRgb(page, 0x40), null, 'the window ends at 0x3f');
      assert.deepEqual([...lg.values()].map((o) => `${o.count} ${o.runs}`), ['1,048,570 ', '2 1 run', '2 1 run', '1 1 run']);
    } finally {
      await h.close();
    }
  });

  it('2,000 PASIDs of 9 VMs: framed; colours stay when a VM is created; an owner is framed run by run; a batch is one feed line', async () => {
    const ids = ['web-1', 'web-2', 'db-primary', 'db-replica', 'ml-train', 'ci', 'cache', 'etl', 'gateway'];
    const batch = [64, 32, 48, 16, 80, 40, 24, 56, 40];
    const h = await host(async (admin) => {
      for (const id of ids) await admin.createVm({ id, quota: 4096, viommus: [{ segment: 0, layout: 'B' }] });
      let left = 2000;
      for (let round = 0; left > 0; round++) {
        for (const [i, id] of ids.entries()) {
          const n = Math.min(left, (batch[i] as number) * (1 + ((round + i) % 2)));
          if (n === 0) break;
          await admin.allocPasids(id, { count: n });
          left -= n;
        }
      }
    });
    try {
      const { page, admin } = h;
      const held = new Map<string, number[]>();
      for (const id of ids) held.set(id, await admin.listPasids(id));
      assert.equal([...held.values()].reduce((n, ps) => n + ps.length, 0), 2000);
      assert.match((await page.textContent('#ns-summary')) ?? '', /^2,000 of 1,048,575 PASIDs allocated, the highest 0x7d0$/);
      assert.equal(await page.textContent('#zoom-readout'), 'PASIDs 0x0–0xfff (4,096) · 1 PASID per cell · 64 cells per row');
      assert.equal(await page.getAttribute('#overview', 'data-window-last'), String(0xfff));

      // Every owner: its colour on the map, the cells of its first and last PASID in it, its count and runs in the legend.
      const lg = await legend(page);
      const colours = await canvasColours(page);
      const before = new Map<string, { colour: string; pattern: string; cell: string | null }>();
      for (const id of ids) {
        const ps = held.get(id) as number[];
        const o = lg.get(id);
        assert.ok(o !== undefined, id);
        const want = rgbOf(o.colour);
        assert.ok(colours.has(want), `${id}'s colour is on the map`);
        assert.equal(await cellRgb(page, Math.min(...ps)), want, `${id}'s first PASID`);
        assert.equal(await cellRgb(page, Math.max(...ps)), want, `${id}'s last PASID`);
        const runs = runsOf(ps).length;
        assert.equal(`${o.count} ${o.runs}`, `${ps.length.toLocaleString('en')} ${runs} run${runs === 1 ? '' : 's'}`);
        before.set(id, { colour: o.colour, pattern: o.pattern, cell: await cellRgb(page, Math.min(...ps)) });
      }
      // Nine VMs look different: colour, then pattern.
      assert.equal(new Set([...before.values()].map((b) => `${b.colour}/${b.pattern}`)).size, ids.length);

      // Another VM is created and allocates: nobody else changes colour or pattern, on the map or in the legend.
      await admin.createVm({ id: 'aaa-newcomer', quota: 500 });
      const fresh = await admin.allocPasids('aaa-newcomer', { count: 100 });
      await drawnAt(page, await lastSeq(admin));
      await page.locator('#legend li[data-owner="aaa-newcomer"] .num', { hasText: '100' }).waitFor({ timeout: 5000 });
      await legendCounted(page, await lastSeq(admin));
      const lg2 = await legend(page);
      for (const id of ids) {
        const b = before.get(id);
        assert.deepEqual({ colour: lg2.get(id)?.colour, pattern: lg2.get(id)?.pattern }, { colour: b?.colour, pattern: b?.pattern }, id);
        assert.equal(await cellRgb(page, Math.min(...(held.get(id) as number[]))), b?.cell, `${id} on the map`);
      }
      assert.equal(await cellRgb(page, fresh[0] as number), rgbOf(lg2.get('aaa-newcomer')?.colour ?? ''));
      // And after a reload, where the newcomer sorts first among the owners the map lists.
      await page.reload();
      await page.waitForSelector('html[data-rendered="true"]', { timeout: 30_000 });
      await page.locator('#conn', { hasText: 'Live' }).waitFor({ timeout: 10_000 });
      await drawnAt(page, await lastSeq(admin));
      await legendCounted(page, await lastSeq(admin));
      const lg3 = await legend(page);
      for (const id of [...ids, 'aaa-newcomer']) assert.deepEqual(lg3.get(id), lg2.get(id), `${id} after a reload`);
      for (const id of ids) assert.equal(await cellRgb(page, Math.min(...(held.get(id) as number[]))), before.get(id)?.cell, `${id} on the map after a reload`);

      // Pressing an owner frames all its PASIDs and dims the others; Next run frames its runs one by one.
      const [owner, ps] = [...held].sort((a, b) => runsOf(b[1]).length - runsOf(a[1]).length)[0] as [string, number[]];
      const runs = runsOf(ps);
      assert.ok(runs.length >= 3, `${owner} has ${runs.length} runs`);
      const mine = rgbOf(lg2.get(owner)?.colour ?? '');
      await page.click(`#legend li[data-owner="${owner}"] button`);
      assert.equal(await page.getAttribute(`#legend li[data-owner="${owner}"] button`, 'aria-pressed'), 'true');
      const lo = Math.min(...ps);
      const hi = Math.max(...ps);
      await page.locator('#runs-status', { hasText: `${owner}: ${ps.length.toLocaleString('en')} PASIDs in ${runs.length} runs. Framing all of them: ${hex(lo)}–${hex(hi)}.` }).waitFor({ timeout: 5000 });
      await drawnAt(page, 0);
      let v = await view(page);
      assert.ok(v.start <= lo && v.last >= hi && v.mode === 'manual', JSON.stringify(v));
      assert.equal(await cellRgb(page, lo), mine);
      const other = ids.find((id) => id !== owner && (held.get(id) as number[]).some((p) => p >= v.start && p <= v.last)) as string;
      const otherP = (held.get(other) as number[]).find((p) => p >= v.start && p <= v.last) as number;
      const otherCell = await cellRgb(page, otherP);
      assert.notEqual(otherCell, rgbOf(lg2.get(other)?.colour ?? ''), `${other} is dimmed`);
      assert.notEqual(otherCell, FREE_RGB, `${other} is dimmed, not hidden`);
      for (let r = 0; r < 3; r++) {
        if (r < 2) await page.click('#run-next');
        else {
          await page.focus('#map');
          await page.keyboard.press(']');
        }
        const [a, b] = runs[r] as [number, number];
        await page.locator('#runs-status', { hasText: `Framing run ${r + 1} of ${runs.length}: ${a === b ? hex(a) : `${hex(a)}–${hex(b)}`}` }).waitFor({ timeout: 5000 });
        await drawnAt(page, 0);
        v = await view(page);
        assert.ok(v.start <= a && v.last >= b && v.cursor === a, `run ${r + 1} ${hex(a)}–${hex(b)} in ${JSON.stringify(v)}`);
        assert.equal(await cellRgb(page, a), mine);
        assert.equal(await page.textContent('#zoom-readout'), `PASIDs ${hex(v.start)}–${hex(v.last)} (${(v.last - v.start + 1).toLocaleString('en')}) · 1 PASID per cell · ${v.cols} cells per row`);
      }
      await page.keyboard.press('Escape');
      await page.locator('#runs').waitFor({ state: 'hidden', timeout: 5000 });
      await drawnAt(page, 0);
      assert.equal(await cellRgb(page, otherP) ?? rgbOf(lg2.get(other)?.colour ?? ''), rgbOf(lg2.get(other)?.colour ?? ''), 'every owner in full colour again');

      // A VM's row in the table frames its PASIDs as the legend does; its vIOMMU opens the register inspector.
      const row = ids.find((id) => id !== owner) as string;
      await page.click(`tr[data-vm="${row}"] button[data-show]`);
      assert.equal(await page.getAttribute(`#legend li[data-owner="${row}"] button`, 'aria-pressed'), 'true');
      assert.equal(await page.evaluate(() => document.activeElement?.id), 'map');
      await page.click(`tr[data-vm="${row}"] button[data-segment="0"]`);
      await page.locator('#regs-status', { hasText: `Registers of ${row}, segment 0` }).waitFor({ timeout: 5000 });
      await page.click('#owner-clear');

      // A batch of 160 is one line in the feed, expandable to its ranges; a range frames it on the map.
      const cacheLines = await page.locator('#feed > li', { hasText: 'allocated to cache' }).count();
      const got = await admin.allocPasids('cache', { count: 160 });
      const [first, last] = [Math.min(...got), Math.max(...got)];
      assert.equal(last - first + 1, 160, 'lowest-free gives one run');
      const text = `160 PASIDs allocated to cache: ${hex(first)}–${hex(last)}`;
      const line = page.locator('#feed > li', { hasText: text });
      await line.waitFor({ timeout: 5000 }).catch(async (e: unknown) => {
        console.log(await page.locator('#feed').innerText());
        throw e;
      });
      await page.waitForTimeout(200);
      assert.equal(await page.locator('#feed > li', { hasText: 'allocated to cache' }).count(), cacheLines + 1, 'one line, not 160');
      const expand = line.locator('button[data-expand]');
      assert.equal(await expand.getAttribute('aria-expanded'), 'false');
      await expand.click();
      assert.equal(await expand.getAttribute('aria-expanded'), 'true');
      await line.locator(`button[data-first="${first}"][data-last="${last}"]`).click();
      await drawnAt(page, 0);
      v = await view(page);
      assert.ok(v.start <= first && v.last >= last && v.zoom >= 5, JSON.stringify(v));
      assert.equal(await cellRgb(page, last), rgbOf(lg2.get('cache')?.colour ?? ''));

      // The overview: the allocations are a sliver at the bottom of the namespace; one far PASID
      // shows as a bar of its own at its place, and F frames the allocated PASIDs again, it included.
      let strip = await overviewBars(page);
      assert.ok(strip.bars.length > 0 && strip.bars.every((x) => x < 4), `bars at ${strip.bars.join(',')}`);
      await admin.allocPasids('cache', { min: 0x80000, max: 0x80000 });
      await page.focus('#map');
      await page.keyboard.press('f');
      await drawnAt(page, await lastSeq(admin));
      await page.locator('#zoom-readout', { hasText: 'PASIDs 0x0–0xfffff (1,048,576)' }).waitFor({ timeout: 5000 });
      for (let t = Date.now(); !(strip = await overviewBars(page)).bars.some((x) => x > 4); await page.waitForTimeout(50)) {
        assert.ok(Date.now() - t < 5000, 'the far PASID reaches the overview within 5 s');
      }
      const mid = strip.width / 2;
      assert.ok(strip.bars.some((x) => Math.abs(x - mid) <= 1), `a bar at ${mid}: ${strip.bars.join(',')}`);
      assert.ok(strip.bars.every((x) => x < 4 || Math.abs(x - mid) <= 1 || x >= strip.width - 3), `nothing else: ${strip.bars.join(',')}`);
      assert.equal(await cellRgb(page, 0x80000), rgbOf(lg2.get('cache')?.colour ?? ''));
    } finally {
      await h.close();
    }
  });

  it('1,000,000 PASIDs of 100 VMs: the whole namespace, every VM\'s colour on it; an owner\'s run framed', async () => {
    const id = (i: number) => `vm-${String(i).padStart(3, '0')}`;
    const h = await host(async (_admin, server) => {
      const a = server.authority;
      for (let i = 0; i < 100; i++) await a.createVm({ id: id(i), quota: 12_000 });
      let left = 1_000_000;
      for (let turn = 0; left > 0; turn++) {
        const count = Math.min(1024, left);
        await a.allocPasids(id(turn % 100), { count });
        left -= count;
      }
    });
    try {
      const { page } = h;
      assert.match((await page.textContent('#ns-summary')) ?? '', /^1,000,000 of 1,048,575 PASIDs allocated, the highest 0xf4240$/);
      assert.equal(await page.textContent('#zoom-readout'), 'PASIDs 0x0–0xfffff (1,048,576) · 4 PASIDs per cell · 512 cells per row');
      assert.equal((await view(page)).mode, 'fit');
      const lg = await legend(page);
      const colours = await canvasColours(page);
      for (let i = 0; i < 100; i++) {
        const o = lg.get(id(i));
        assert.ok(o !== undefined, id(i));
        assert.ok(colours.has(rgbOf(o.colour)), `${id(i)}'s colour is on the map`);
        assert.equal(`${o.count} ${o.runs}`, i < 76 ? '10,240 10 runs' : i === 76 ? '9,792 10 runs' : '9,216 9 runs');
      }
      // Turn t went to vm-(t mod 100) and took PASIDs 1 + 1024 t .. 1024 (t + 1): check a few cells.
      for (const t of [0, 1, 99, 500, 976]) assert.equal(await cellRgb(page, 1 + 1024 * t + 512), rgbOf(lg.get(id(t % 100))?.colour ?? ''), `turn ${t}`);
      assert.equal(await cellRgb(page, 0xfffff), FREE_RGB);
      // The overview: full up to PASID 1,000,000 (95.4% of the namespace), empty after it.
      for (let t = Date.now(); (await overviewBars(page)).bars.length < 100; await page.waitForTimeout(50)) assert.ok(Date.now() - t < 5000, 'overview counted');
      const strip = await overviewBars(page);
      const edge = Math.floor((1_000_000 / 2 ** 20) * strip.width);
      const inner = strip.bars.filter((x) => x < strip.width - 3);
      assert.equal(inner.length, edge + 1, `bars on columns 0..${edge}: ${inner.length}`);
      assert.equal(inner[inner.length - 1], edge);
      // vm-042's PASIDs span the namespace; its second run (turn 142) is framed by Next run twice.
      await page.click('#legend li[data-owner="vm-042"] button');
      await page.click('#run-next');
      await page.click('#run-next');
      const a = 1 + 1024 * 142;
      await page.locator('#runs-status', { hasText: `Framing run 2 of 10: ${hex(a)}–${hex(a + 1023)}` }).waitFor({ timeout: 5000 });
      await drawnAt(page, 0);
      const v = await view(page);
      assert.ok(v.start <= a && v.last >= a + 1023 && v.perCell === 1, JSON.stringify(v));
      assert.equal(await cellRgb(page, a + 1023), rgbOf(lg.get('vm-042')?.colour ?? ''));
    } finally {
      await h.close();
    }
  });
});
