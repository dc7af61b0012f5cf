/**
 * The dashboard: one page at `/` that shows the system-wide PASID namespace live. The page
 * (`web/`) is plain TypeScript, DOM and canvas, and talks to the service only through the typed
 * client (`ioasid/client`), so it holds no domain logic. The installed package serves the bundle
 * that `npm run build` made (`dist/web/`); run from the sources (development, tests), the service
 * bundles `web/app.ts` with esbuild (a development dependency) on the first request, in memory,
 * once. Either way the files are served from memory with their stylesheet, gzip-compressed when
 * the browser accepts it. `startServer` registers it by default through the app's `extend` hook.
 * See docs/dashboard.md.
 *
 * Security: the page holds the admin token only in the tab's sessionStorage; every answer here
 * carries a strict Content-Security-Policy (scripts and styles from this origin only, no inline
 * code, no framing), so an injected string can neither run nor exfiltrate the token.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

/** The page's sources: the repository's `web/`, beside `src/`. */
export const WEB_DIR = fileURLToPath(new URL('../../web/', import.meta.url));
/** The prebuilt page of the compiled package: `dist/web/`, beside `dist/service/`. */
export const PREBUILT_DIR = fileURLToPath(new URL('../web/', import.meta.url));
/** The files `npm run build` writes into PREBUILT_DIR. */
export const PREBUILT_FILES = { page: 'index.html', script: 'app.js', style: 'app.css' } as const;

export const DASHBOARD_PATHS = {
  page: '/',
  script: '/dashboard/app.js',
  style: '/dashboard/app.css',
  icon: '/favicon.svg',
} as const;

export interface DashboardOptions {
  /** Minify the bundle (default true; false keeps it readable, with an inline source map). */
  readonly minify?: boolean;
  /** Build at registration instead of on the first request (default false). */
  readonly eager?: boolean;
  /** Bundle from `web/` even where a prebuilt page exists (default: only without one). */
  readonly fromSource?: boolean;
}

interface Asset {
  readonly body: Buffer;
  readonly gzip: Buffer;
  readonly type: string;
  readonly etag: string;
}

type Assets = Readonly<Record<'page' | 'script' | 'style' | 'icon', Asset>>;

const CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

const ICON = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#0f1216"/><rect x="2" y="2" width="5" height="5" fill="#5ec8f2"/><rect x="9" y="2" width="5" height="5" fill="#f2a65e"/><rect x="2" y="9" width="5" height="5" fill="#9be37a"/><rect x="9" y="9" width="5" height="5" fill="#2a313b"/></svg>`;

function asset(body: string | Uint8Array, type: string): Asset {
  const buf = typeof body === 'string' ? Buffer.from(body, 'utf8') : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  return { body: buf, gzip: gzipSync(buf, { level: 9 }), type, etag: `"${createHash('sha256').update(buf).digest('base64url').slice(0, 22)}"` };
}

/** The page bundled from `web/`: script and stylesheet, in memory. */
export async function bundleDashboard(opts: { readonly minify?: boolean } = {}): Promise<{ js: Uint8Array; css: Uint8Array; html: string }> {
  let esbuild: typeof import('esbuild');
  try {
    esbuild = await import('esbuild');
  } catch (e) {
    throw new Error(`bundling the dashboard from ${WEB_DIR} needs esbuild, a development dependency (the installed package serves its prebuilt page): ${e instanceof Error ? e.message : String(e)}`);
  }
  const minify = opts.minify ?? true;
  const result = await esbuild.build({
    entryPoints: [join(WEB_DIR, 'app.ts'), join(WEB_DIR, 'app.css')],
    outdir: join(WEB_DIR, 'out'),
    bundle: true,
    write: false,
    format: 'esm',
    platform: 'browser',
    target: ['es2022', 'chrome110', 'firefox115', 'safari16'],
    minify,
    sourcemap: minify ? false : 'inline',
    legalComments: 'none',
    charset: 'utf8',
    logLevel: 'silent',
  });
  const js = result.outputFiles.find((f) => f.path.endsWith('.js'));
  const css = result.outputFiles.find((f) => f.path.endsWith('.css'));
  if (js === undefined || css === undefined) throw new Error('esbuild produced no script or stylesheet');
  return { js: js.contents, css: css.contents, html: await readFile(join(WEB_DIR, 'index.html'), 'utf8') };
}

/** The prebuilt page, or null where there is none (running from the sources). */
async function prebuilt(): Promise<{ js: Uint8Array; css: Uint8Array; html: string } | null> {
  if (!existsSync(join(PREBUILT_DIR, PREBUILT_FILES.script))) return null;
  const [js, css, html] = await Promise.all([
    readFile(join(PREBUILT_DIR, PREBUILT_FILES.script)),
    readFile(join(PREBUILT_DIR, PREBUILT_FILES.style)),
    readFile(join(PREBUILT_DIR, PREBUILT_FILES.page), 'utf8'),
  ]);
  return { js, css, html };
}

/** The page's assets: the prebuilt ones when present, else `web/app.ts` bundled now. */
export async function buildDashboardAssets(opts: DashboardOptions = {}): Promise<Assets> {
  const files = (opts.fromSource === true ? null : await prebuilt()) ?? (await bundleDashboard(opts.minify !== undefined ? { minify: opts.minify } : {}));
  return {
    page: asset(files.html, 'text/html; charset=utf-8'),
    script: asset(files.js, 'text/javascript; charset=utf-8'),
    style: asset(files.css, 'text/css; charset=utf-8'),
    icon: asset(ICON, 'image/svg+xml'),
  };
}

function failurePage(e: unknown): string {
  const why = String(e instanceof Error ? e.message : e).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
  return `<!doctype html><html lang="en"><meta charset="utf-8"><title>ioasid dashboard unavailable</title><body><h1>The dashboard could not be built</h1><p>The API is unaffected. The bundler said:</p><pre>${why}</pre></body></html>`;
}

/**
 * Register the dashboard's routes (`/`, its script, stylesheet and icon) on an app.
 * @example await buildApp({ authority, extend: (app) => registerDashboard(app) })
 */
export async function registerDashboard(app: FastifyInstance, opts: DashboardOptions = {}): Promise<void> {
  let built: Promise<Assets> | null = null;
  const assets = (): Promise<Assets> => {
    built ??= buildDashboardAssets(opts).catch((e: unknown) => {
      app.log.error({ err: e }, 'dashboard: loading or bundling the page failed');
      built = null; // the next request tries again
      throw e;
    });
    return built;
  };
  if (opts.eager === true) await assets();

  const serve = (key: keyof Assets) => async (req: FastifyRequest, reply: FastifyReply) => {
    void reply
      .header('content-security-policy', CSP)
      .header('x-content-type-options', 'nosniff')
      .header('referrer-policy', 'no-referrer')
      .header('cache-control', 'no-cache');
    let all: Assets;
    try {
      all = await assets();
    } catch (e) {
      return reply.status(503).type('text/html; charset=utf-8').send(failurePage(e));
    }
    const a = all[key];
    void reply.header('etag', a.etag).header('vary', 'accept-encoding').type(a.type);
    if (req.headers['if-none-match'] === a.etag) return reply.status(304).send();
    const accept = req.headers['accept-encoding'];
    if (typeof accept === 'string' && /\bgzip\b/.test(accept)) {
      return reply.header('content-encoding', 'gzip').send(a.gzip);
    }
    return reply.send(a.body);
  };
  app.get(DASHBOARD_PATHS.page, serve('page'));
  app.get('/index.html', serve('page'));
  app.get(DASHBOARD_PATHS.script, serve('script'));
  app.get(DASHBOARD_PATHS.style, serve('style'));
  app.get(DASHBOARD_PATHS.icon, serve('icon'));
}
