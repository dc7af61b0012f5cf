#!/usr/bin/env node
// The `ioasid` command: the compiled CLI (`npm run build` makes dist/; `npm ci` runs it).
// In a checkout, `npm run dev -- ARGS` runs the TypeScript sources instead.
import { existsSync } from 'node:fs';
import module from 'node:module';

// Node 22.1 and later keep compiled code between runs (a short-lived command spends most of its
// time compiling); Node 20 has no such cache and starts without it.
module.enableCompileCache?.();

const main = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(main)) {
  process.stderr.write('error: ENOENT: dist/ is missing: run `npm run build` (or `npm ci`) first, or `npm run dev -- ARGS` to run the sources\n');
  process.exit(1);
}
await import(main.href);
