/**
 * The shell examples of a Markdown document, and one bash session that runs them: see
 * test/docs-examples.test.ts for the rules.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { MAIN, TSX } from './serve-process.ts';

const ROOT = resolve(import.meta.dirname, '../..');

export interface Command {
  readonly text: string;
  readonly line: number;
  /** Error codes the command's shown output says it fails with. */
  readonly errors: readonly string[];
  /** `$ echo $?` after it: the exit status it must have. */
  status?: number;
  readonly background: boolean;
  readonly interrupt: boolean;
}

export interface Block {
  readonly file: string;
  readonly line: number;
  readonly lang: string;
  /** Why it is not run, or null. */
  readonly skip: string | null;
  readonly commands: Command[];
}

/**
 * Where a shell line's comment starts (a `#` after whitespace, outside quotes), or -1; and whether
 * the line leaves a quote open.
 */
function scan(line: string): { comment: number; open: boolean } {
  let quote: string | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote !== null) {
      if (c === quote) quote = null;
      else if (c === '\\' && quote === '"') i++;
    } else if (c === '\\') i++;
    else if (c === "'" || c === '"') quote = c;
    else if (c === '#' && (i === 0 || /\s/.test(line[i - 1] ?? ''))) return { comment: i, open: false };
  }
  return { comment: -1, open: quote !== null };
}

/** A command without its trailing comment, and the comment. */
function splitComment(text: string): { command: string; comment: string } {
  const { comment } = scan(text);
  return comment < 0 ? { command: text.trimEnd(), comment: '' } : { command: text.slice(0, comment).trimEnd(), comment: text.slice(comment) };
}

/** Join continuation lines (a trailing backslash, or a quote left open) into one command. */
function joinLines(lines: readonly { text: string; line: number }[]): { text: string; line: number }[] {
  const out: { text: string; line: number }[] = [];
  let cur: { text: string; line: number } | null = null;
  for (const l of lines) {
    cur = cur === null ? { ...l } : { text: `${cur.text}\n${l.text}`, line: cur.line };
    const { command } = splitComment(cur.text);
    if (command.endsWith('\\') || scan(command).open) continue;
    out.push(cur);
    cur = null;
  }
  if (cur !== null) out.push(cur);
  return out;
}

export function parseExamples(file: string, md: string): Block[] {
  const lines = md.split('\n');
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    const m = /^```(sh|console|bash)\s*$/.exec(lines[i] ?? '');
    if (m === null) continue;
    const marker = /^<!-- example: not run \((.+)\) -->$/.exec(lines[i - 1] ?? '');
    const body: { text: string; line: number }[] = [];
    let j = i + 1;
    for (; j < lines.length && !/^```/.test(lines[j] ?? ''); j++) body.push({ text: lines[j] ?? '', line: j + 1 });
    const commands: Command[] = [];
    if (m[1] === 'console') {
      let cmd: { text: string; line: number } | null = null;
      let output: string[] = [];
      const flush = () => {
        if (cmd === null) return;
        const errors = output.flatMap((o) => /^error: (E[A-Z]+): /.exec(o)?.[1] ?? []);
        const last = commands[commands.length - 1];
        if (/^echo \$\?$/.test(cmd.text.trim()) && last !== undefined) last.status = Number(output[0]);
        else {
          const { command } = splitComment(cmd.text);
          commands.push({ ...cmd, text: command, errors, background: /&$/.test(command), interrupt: output.some((o) => o.trim() === '^C') });
        }
        cmd = null;
        output = [];
      };
      const joined: { text: string; line: number }[] = [];
      for (const l of body) {
        const prev = joined[joined.length - 1];
        if (prev !== undefined && prev.text.startsWith('$ ') && prev.text.endsWith('\\')) prev.text = `${prev.text}\n${l.text}`;
        else joined.push({ ...l });
      }
      for (const l of joined) {
        if (l.text.startsWith('$ ')) {
          flush();
          cmd = { text: l.text.slice(2), line: l.line };
        } else output.push(l.text);
      }
      flush();
    } else {
      for (const c of joinLines(body.filter((l) => !/^\s*#/.test(l.text) && l.text.trim() !== ''))) {
        const { command, comment } = splitComment(c.text);
        commands.push({ text: command, line: c.line, errors: [], background: /&$/.test(command), interrupt: /Ctrl-C/.test(comment) });
      }
    }
    blocks.push({ file, line: i + 1, lang: m[1] as string, skip: marker?.[1] ?? null, commands });
    i = j;
  }
  return blocks;
}

async function freePort(): Promise<number> {
  return new Promise((done) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => done(typeof a === 'object' && a !== null ? a.port : 0));
    });
  });
}

/** The session's shell: the CLI from the sources, npm start, a free port. */
function prelude(port: number): string {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  const start = pkg.scripts.start?.replace(/^node bin\/ioasid\.js /, '') ?? 'serve';
  return `set +e
export PORT=${port} IOASID_URL=http://127.0.0.1:${port} NO_COLOR=1
ioasid() {
  local a=("$@")
  if [ "$1" = serve ] && ! printf '%s\\n' "$@" | grep -q -- '^--port'; then a+=(--port "$PORT"); fi
  node --import '${TSX}' '${MAIN}' "\${a[@]}"
}
npx() { if [ "$1" = ioasid ]; then shift; ioasid "$@"; else echo "npx $1: not in this session" >&2; return 127; fi; }
npm() { if [ "$1" = start ]; then ioasid ${start}; else echo "npm $*: not in this session" >&2; return 127; fi; }
__ready() { for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && return 0; sleep 0.1; done; echo "the service did not start" >&2; return 1; }
export -f ioasid npx npm
`;
}

/** The command as the session runs it: port 7070 is the session's. */
function localise(text: string): string {
  return text.replace(/127\.0\.0\.1:7070/g, '127.0.0.1:$PORT').replace(/--port 7070\b/g, '--port $PORT');
}

export interface Outcome {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Run a document's runnable commands in one bash session; per command, its status and output. */
export async function runSession(commands: readonly Command[]): Promise<Outcome[]> {
  const dir = mkdtempSync(join(tmpdir(), 'ioasid-doc-'));
  for (const d of ['examples', 'test', 'node_modules']) symlinkSync(join(ROOT, d), join(dir, d));
  const port = await freePort();
  const script = [prelude(port)];
  commands.forEach((c, i) => {
    const text = localise(c.text);
    script.push(`printf '\\n@@cmd ${i}\\n'; printf '\\n@@cmd ${i}\\n' >&2`);
    if (c.background) script.push(`${text.replace(/&\s*$/, '')} &\n__ready`);
    else if (c.interrupt) script.push(`setsid bash -c ${JSON.stringify(text).replace(/\$/g, '\\$')} & __p=$!; sleep 5; kill -INT -- -$__p 2>/dev/null; wait $__p`);
    else script.push(text);
    script.push(`printf '\\n@@status ${i} %s\\n' $?`);
  });
  writeFileSync(join(dir, 'session.sh'), script.join('\n'));
  const child = spawn('bash', ['session.sh'], { cwd: dir, detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, IOASID_TOKEN: '', IOASID_TOKEN_FILE: '', IOASID_TIMEOUT: '' } });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const closed = new Promise((r) => child.on('close', r));
  const group = (signal: NodeJS.Signals) => {
    try {
      process.kill(-(child.pid as number), signal);
    } catch {
      // the group is gone
    }
  };
  // If this process ends first (a test timeout), the session's processes end with it.
  const orphans = () => group('SIGKILL');
  process.once('exit', orphans);
  await new Promise((r) => child.on('exit', r));
  // The session is over; what it left running (a service in the background) holds its pipes.
  group('SIGTERM');
  const late = setTimeout(() => group('SIGKILL'), 5000);
  await closed;
  clearTimeout(late);
  process.off('exit', orphans);
  rmSync(dir, { recursive: true, force: true });
  const part = (s: string, i: number) => (s.split(`\n@@cmd ${i}\n`)[1] ?? '').split(/\n@@(cmd|status) /)[0] ?? '';
  return commands.map((_, i) => {
    const st = new RegExp(`\\n@@status ${i} (\\d+)\\n`).exec(out);
    return { status: st === null ? null : Number(st[1]), stdout: part(out, i), stderr: part(err, i) };
  });
}

