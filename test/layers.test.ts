/**
 * The layer rules (.dependency-cruiser.cjs), checked by dependency-cruiser: the sources obey them,
 * and every rule catches what it forbids (a small tree that breaks each rule once, in a temporary
 * folder, gets exactly the expected violations and no others).
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { REPO, run } from './helpers/installed-package.ts';

const DEPCRUISE = join(REPO, 'node_modules', 'dependency-cruiser', 'bin', 'dependency-cruise.mjs');

interface Violation { readonly rule: string; readonly from: string; readonly to: string }

async function cruise(cwd: string): Promise<{ violations: Violation[]; modules: number }> {
  const r = await run(process.execPath, [DEPCRUISE, '--config', '.dependency-cruiser.cjs', '--output-type', 'json', 'src', 'web'], { cwd });
  const out = JSON.parse(r.stdout) as { summary: { totalCruised: number; violations: { rule: { name: string }; from: string; to: string }[] } };
  return { violations: out.summary.violations.map((v) => ({ rule: v.rule.name, from: v.from, to: v.to })), modules: out.summary.totalCruised };
}

describe('layer rules (dependency-cruiser)', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'ioasid-layers-'));
  after(() => rmSync(tmp, { recursive: true, force: true }));

  it('the sources obey every rule', async () => {
    // A copy of the sources, cruised where nothing of the checkout is the working folder.
    const copy = join(tmp, 'sources');
    mkdirSync(copy);
    for (const d of ['src', 'web']) cpSync(join(REPO, d), join(copy, d), { recursive: true });
    for (const f of ['.dependency-cruiser.cjs', 'tsconfig.json', 'package.json']) copyFileSync(join(REPO, f), join(copy, f));
    symlinkSync(join(REPO, 'node_modules'), join(copy, 'node_modules'), 'dir');
    const { violations, modules } = await cruise(copy);
    assert.ok(modules > 80, `${modules} modules cruised`);
    assert.deepEqual(violations, []);
  });

  it('each rule catches what it forbids, type-only imports included', async () => {
    const files: Record<string, string> = {
      'src/core/index.ts': "import { readFileSync } from 'node:fs';\nexport { inner } from './inner.ts';\nexport const read = readFileSync;\n",
      'src/core/inner.ts': 'export const inner = 1;\n',
      'src/vtd/index.ts': "import { inner } from '../core/index.ts';\nimport YAML from 'yaml';\nexport const v = inner + YAML.parse('1');\n",
      'src/vtd/bad.ts': "import { h } from '../host/index.ts';\nexport const b = h;\n",
      'src/host/index.ts': "import { inner } from '../core/inner.ts';\nexport const h = inner;\n",
      'src/api/index.ts': "import type { FromSchema } from 'json-schema-to-ts';\nimport { inner } from '../core/index.ts';\nexport type T = FromSchema<{ type: 'string' }>;\nexport const a = inner;\n",
      'src/client/index.ts': "import { createHash } from 'node:crypto';\nimport { a } from '../api/index.ts';\nimport type { s } from '../service/index.ts';\nexport const c = [a, createHash];\nexport type S = typeof s;\n",
      'src/service/index.ts': "import { a } from '../api/index.ts';\nexport const s = a;\n",
      'src/cli/main.ts': "import type { inner } from '../core/index.ts';\nimport { c } from '../client/index.ts';\nexport const m: typeof inner = 1;\nexport const cc = c;\n",
      'src/cli/serve.ts': "import { s } from '../service/index.ts';\nexport const sv = s;\n",
      'src/cli/other.ts': "import { s } from '../service/index.ts';\nexport const o = s;\n",
      'web/app.ts': "import type { S } from '../src/client/index.ts';\nimport { v } from '../src/vtd/index.ts';\nimport { h } from '../src/host/index.ts';\nexport const w: S | number = v + h;\n",
      'web/view.ts': "import { c } from '../src/client/client.ts';\nexport const x = c;\n",
      'src/client/client.ts': 'export const c = 1;\n',
    };
    for (const [f, text] of Object.entries(files)) {
      mkdirSync(dirname(join(tmp, f)), { recursive: true });
      writeFileSync(join(tmp, f), text);
    }
    copyFileSync(join(REPO, '.dependency-cruiser.cjs'), join(tmp, '.dependency-cruiser.cjs'));
    copyFileSync(join(REPO, 'tsconfig.json'), join(tmp, 'tsconfig.json'));
    symlinkSync(join(REPO, 'node_modules'), join(tmp, 'node_modules'), 'dir');
    const { violations } = await cruise(tmp);
    const got = violations.map((v) => `${v.rule}: ${v.from} -> ${v.to.replace(/^.*node_modules\/([^/]+)\/.*$/, 'node_modules/$1')}`).sort();
    assert.deepEqual(got, [
      'contract-and-client-portable: src/client/index.ts -> crypto',
      'layer-cli: src/cli/main.ts -> src/core/index.ts',
      'layer-cli: src/cli/other.ts -> src/service/index.ts',
      'layer-client: src/client/index.ts -> src/service/index.ts',
      'layer-vtd: src/vtd/bad.ts -> src/host/index.ts',
      'layer-web: web/app.ts -> src/host/index.ts',
      'pure-no-node: src/core/index.ts -> fs',
      'pure-no-package: src/vtd/index.ts -> node_modules/yaml',
      'through-index: src/host/index.ts -> src/core/inner.ts',
      'through-index: web/view.ts -> src/client/client.ts',
    ]);
  });
});
