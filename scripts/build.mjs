#!/usr/bin/env node
/**
 * `npm run build` (also run by `npm ci` through `prepare`): compile src/ to dist/ (ES modules,
 * .d.ts, source maps) with tsc, then prebuild the dashboard into dist/web/ with esbuild, so the
 * installed package runs compiled JavaScript and serves a page it does not have to bundle.
 * Plain JavaScript: it needs neither tsx nor a previous build.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
const t0 = performance.now();

rmSync(dist, { recursive: true, force: true });
const tsc = join(dirname(createRequire(import.meta.url).resolve('typescript/package.json')), 'bin', 'tsc');
const r = spawnSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit' });
if (r.status !== 0) {
  process.stderr.write(`build: tsc failed (status ${r.status ?? r.signal})\n`);
  process.exit(1);
}

// The compiled dashboard module bundles web/ exactly as the service does from the sources.
const { bundleDashboard, PREBUILT_DIR, PREBUILT_FILES } = await import(join(dist, 'service', 'dashboard.js'));
const page = await bundleDashboard({ minify: true });
mkdirSync(PREBUILT_DIR, { recursive: true });
writeFileSync(join(PREBUILT_DIR, PREBUILT_FILES.script), page.js);
writeFileSync(join(PREBUILT_DIR, PREBUILT_FILES.style), page.css);
writeFileSync(join(PREBUILT_DIR, PREBUILT_FILES.page), page.html);
process.stderr.write(`build: dist/ in ${Math.round(performance.now() - t0)} ms (dashboard ${page.js.length} bytes of script)\n`);
