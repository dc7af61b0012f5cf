/** The docs stay true: error codes and HTTP statuses, the README's library example. */
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ERRNO } from '../src/core/index.ts';
import { HTTP_STATUS } from '../src/service/index.ts';

it('docs/error-codes.md lists every code it documents with the errno and HTTP status the code uses', () => {
  const md = readFileSync(new URL('../docs/error-codes.md', import.meta.url), 'utf8');
  const rows = [...md.matchAll(/^\| `([A-Z]+)` \| (-\d+) \| (\d+) \|/gm)];
  assert.ok(rows.length >= 14);
  for (const [, code, errno, status] of rows) {
    assert.ok(code! in ERRNO, `${code} is an errno we use`);
    assert.equal(Number(errno), -ERRNO[code as keyof typeof ERRNO], `${code} errno`);
    assert.equal(Number(status), HTTP_STATUS[code as keyof typeof HTTP_STATUS], `${code} HTTP status`);
  }
});

it('the README library example runs as written', async () => {
  const md = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  const code = /```ts\n([\s\S]*?)```/.exec(md)?.[1];
  assert.ok(code);
  const { IoasidSpace, PASID_MIN, PASID_MAX, IoasidError } = await import('../src/core/index.ts');
  const logs: unknown[] = [];
  const body = code.replace(/^import .*$/m, '').replace(/console\.log/g, 'log');
  const fn = new Function('IoasidSpace', 'PASID_MIN', 'PASID_MAX', 'IoasidError', 'log', `return (async () => { ${body}; return gp; })()`);
  const gp = await fn(IoasidSpace, PASID_MIN, PASID_MAX, IoasidError, (...a: unknown[]) => logs.push(a));
  assert.equal(gp, 2);
  assert.equal((logs[0] as unknown[])[0], 'EACCES');
});
