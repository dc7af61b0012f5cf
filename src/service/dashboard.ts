/**
 * The dashboard (DESIGN 7): one page at `/` that shows the system-wide PASID namespace live. The
 * page (`web/`) is plain TypeScript, DOM and canvas, and talks to the service only through the
 * typed client (`client.ts`), so it holds no domain logic. It is bundled here with esbuild (already
 * installed as tsx's engine) on the first request, in memory, once, and served from memory with
 * its stylesheet, gzip-compressed when the browser accepts it. `startServer` registers it by
 * default through the app's `extend` hook. See docs/dashboard.md.
 *
 * Security: the page holds the admin token only in the tab's sessionStorage; every answer here
 * carries a strict Content-Security-Policy (scripts and styles from this origin only, no inline
 * code, no framing), so an injected string can neither run nor exfiltrate the token.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

/** Where the page's sources live (the repository's or the package's `web/`). */
export const WEB_DIR = fileURLToPath(new URL('../../web/', import.meta.url));

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

type Esbuild = typeof import('esbuild');

/** esbuild as installed with tsx (hoisted, or nested under tsx). */
async function loadEsbuild(): Promise<Esbuild> {
  try {
    return (await import('esbuild')) as Esbuild;
  } catch (first) {
    try {
      const tsx = createRequire(import.meta.url).resolve('tsx');
      return createRequire(tsx)('esbuild') as Esbuild;
    } catch {
      throw first;
    }
  }
}

/** Bundle `web/app.ts` (with the client and the VT-d decoders) and the stylesheet, in memory. */
export async function buildDashboardAssets(opts: DashboardOptions = {}): Promise<Assets> {
  const esbuild = await loadEsbuild();
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
  const html = await readFile(join(WEB_DIR, 'index.html'), 'utf8');
  return {
    page: asset(html, 'text/html; charset=utf-8'),
    script: asset(js.contents, 'text/javascript; charset=utf-8'),
    style: asset(css.contents, 'text/css; charset=utf-8'),
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
      app.log.error({ err: e }, 'dashboard: bundling web/app.ts failed');
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
