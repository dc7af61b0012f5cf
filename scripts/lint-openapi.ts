/**
 * `npm run lint:api`: lint the service's OpenAPI document (as `GET /openapi.json` serves it) with
 * Redocly CLI's recommended rules (redocly.yaml), offline, in a temporary folder. Prints Redocly's
 * report; exits 1 on any error or warning not ruled out in .redocly.lint-ignore.yaml.
 */
import { execFile } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { buildOpenApi } from '../src/api/index.ts';

const REPO = resolve(import.meta.dirname, '..');

export interface LintResult {
  readonly errors: number;
  readonly warnings: number;
  readonly ignored: number;
  readonly problems: readonly { readonly rule: string; readonly severity: string; readonly pointer: string; readonly message: string }[];
  readonly report: string;
}

/** Lint a document (default: the one the service serves). */
export async function lintOpenApi(doc: unknown = buildOpenApi()): Promise<LintResult> {
  const dir = mkdtempSync(join(tmpdir(), 'ioasid-openapi-'));
  try {
    writeFileSync(join(dir, 'openapi.json'), JSON.stringify(doc, null, 2));
    copyFileSync(join(REPO, 'redocly.yaml'), join(dir, 'redocly.yaml'));
    copyFileSync(join(REPO, '.redocly.lint-ignore.yaml'), join(dir, '.redocly.lint-ignore.yaml'));
    const cli = join(REPO, 'node_modules', '@redocly', 'cli', 'bin', 'cli.js');
    const lint = (format: string) => new Promise<string>((done, fail) => {
      execFile(process.execPath, [cli, 'lint', '--config', 'redocly.yaml', `--format=${format}`, 'openapi.json'], {
        cwd: dir,
        // No telemetry and no update check: the lint runs offline.
        env: { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true', NO_COLOR: '1' },
        timeout: 120_000,
        maxBuffer: 16 * 1024 * 1024,
      }, (err, stdout, stderr) => {
        if (err !== null && typeof (err as { code?: unknown }).code !== 'number') return fail(err);
        done(format === 'json' ? stdout : `${stdout}${stderr}`);
      });
    });
    const json = JSON.parse(await lint('json')) as {
      totals: { errors: number; warnings: number; ignored: number };
      problems: { ruleId: string; severity: string; message: string; location: { pointer: string }[] }[];
    };
    return {
      ...json.totals,
      problems: json.problems.filter((p) => p.severity !== 'ignore').map((p) => ({ rule: p.ruleId, severity: p.severity, pointer: p.location[0]?.pointer ?? '', message: p.message })),
      report: await lint('stylish'),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === resolve(import.meta.filename)) {
  const r = await lintOpenApi();
  process.stdout.write(r.report);
  process.stdout.write(`\nopenapi lint: ${r.errors} errors, ${r.warnings} warnings, ${r.ignored} ruled out in .redocly.lint-ignore.yaml\n`);
  process.exitCode = r.errors + r.warnings === 0 ? 0 : 1;
}
