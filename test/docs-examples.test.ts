/**
 * Every shell example of README.md and docs/*.md runs as written, in reading order, one shell
 * session per document, in a temporary folder: a ```sh block is a list of commands that must
 * succeed; a ```console block is `$ command` lines, each followed by what it prints, where a
 * printed `error: CODE: ...` means the command must fail with that code (and `$ echo $?` checks
 * the exit status before it). A command whose output ends with `^C`, or whose comment says
 * "Ctrl-C", is interrupted after a few seconds, as a person would.
 *
 * A block that cannot run on one machine is marked, with its reason, by the line before it:
 *   <!-- example: not run (three hosts and an etcd cluster) -->
 *
 * What the session changes: `ioasid` and `npx ioasid` run the CLI from the sources, `npm start`
 * runs package.json's start command with it, and the examples' port 7070 is a free port (the
 * session's IOASID_URL points there). The folder holds links to the checkout's examples/, test/
 * and node_modules/ for the commands that read them.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseExamples, runSession, type Outcome } from './helpers/doc-examples.ts';

const ROOT = resolve(import.meta.dirname, '..');
const DOCS = ['README.md', ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).sort().map((f) => `docs/${f}`)];

describe('shell examples in README.md and docs/', () => {
  const all = DOCS.flatMap((f) => parseExamples(f, readFileSync(join(ROOT, f), 'utf8')));

  it('every shell block either runs or says why it cannot run on one machine', () => {
    assert.ok(all.length >= 20, `${all.length} blocks found`);
    for (const b of all) assert.ok(b.commands.length > 0, `${b.file}:${b.line}: a block with no command`);
  });

  for (const file of DOCS) {
    const blocks = all.filter((b) => b.file === file && b.skip === null);
    if (blocks.length === 0) continue;
    it(`${file}: ${blocks.reduce((n, b) => n + b.commands.length, 0)} commands in ${blocks.length} blocks run as written`, { timeout: 600_000 }, async () => {
      const commands = blocks.flatMap((b) => b.commands);
      const outcomes = await runSession(commands);
      commands.forEach((c, i) => {
        const o = outcomes[i] as Outcome;
        const where = `${file}:${c.line}: ${c.text}\n--- stdout\n${o.stdout}\n--- stderr\n${o.stderr}`;
        if (c.background || c.interrupt) return;
        if (c.errors.length > 0 || (c.status !== undefined && c.status !== 0)) {
          assert.notEqual(o.status, 0, `it should fail: ${where}`);
          for (const code of c.errors) assert.match(o.stderr, new RegExp(`^error: ${code}: `, 'm'), where);
        } else assert.equal(o.status, 0, where);
        if (c.status !== undefined) assert.equal(o.status, c.status, where);
      });
    });
  }
});

