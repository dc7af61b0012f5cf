/**
 * Human-readable reports of scenario runs (the text `ioasid simulate` prints): a table of the
 * steps (or, for long runs, of the step kinds and their outcomes), a table of the VMs with their
 * PASIDs used against their quota, the failing step with its violations, and a one-line verdict.
 * Colour is the caller's choice (the CLI turns it on for a TTY without NO_COLOR).
 */
import type { Outcome } from './scenario.ts';
import { describeOutcome } from './scenario.ts';
import type { RunReport, StepRecord, VmSummary } from './scenario-runner.ts';

export interface FormatOptions {
  readonly color?: boolean;
  /** Terminal width, for truncating long cells (default 120). */
  readonly width?: number;
  /** Most VM rows shown (default 20; the JSON output has all). */
  readonly maxVms?: number;
  /** Show every step (default: when the report has every step and at most 500 of them). */
  readonly steps?: boolean;
}

interface Paint {
  ok(s: string): string;
  bad(s: string): string;
  warn(s: string): string;
  dim(s: string): string;
  bold(s: string): string;
}

function paint(on: boolean): Paint {
  const w = (code: string) => (s: string) => (on ? `\x1b[${code}m${s}\x1b[0m` : s);
  return { ok: w('32'), bad: w('31'), warn: w('33'), dim: w('2'), bold: w('1') };
}

/** Visible length (without ANSI sequences). */
function vlen(s: string): number {
  // eslint-disable-next-line no-control-regex
  return s.replace(/\x1b\[[0-9;]*m/g, '').length;
}

function pad(s: string, n: number, right = false): string {
  const k = n - vlen(s);
  if (k <= 0) return s;
  return right ? ' '.repeat(k) + s : s + ' '.repeat(k);
}

function cut(s: string, n: number): string {
  return s.length <= n ? s : `${s.slice(0, Math.max(0, n - 1))}…`;
}

/** A table: header row, then rows; `right` marks right-aligned columns. */
function table(head: readonly string[], rows: readonly (readonly string[])[], right: readonly boolean[], p: Paint): string[] {
  const widths = head.map((h, i) => Math.max(vlen(h), ...rows.map((r) => vlen(r[i] ?? ''))));
  const line = (cells: readonly string[]) => `  ${cells.map((c, i) => pad(c, widths[i] ?? 0, right[i] ?? false)).join('  ')}`.trimEnd();
  return [p.dim(line(head)), ...rows.map(line)];
}

export function fmtInt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

function fmtOutcome(o: Outcome): string {
  return describeOutcome(o);
}

export function formatReport(r: RunReport, opts: FormatOptions = {}): string {
  const p = paint(opts.color ?? false);
  const width = opts.width ?? 120;
  const out: string[] = [];
  const title = r.random !== undefined ? r.scenario : `${r.scenario}${r.file !== undefined ? p.dim(`  (${r.file})`) : ''}`;
  out.push(p.bold(`Scenario: ${title}`));

  const allSteps = r.records.filter((x) => x.kind !== 'setup' && x.kind !== 'final-check').length === r.steps.run;
  const showSteps = opts.steps ?? (r.random === undefined && allSteps && r.steps.run <= 500);
  if (showSteps) {
    out.push('');
    const rows = r.records.map((rec) => [
      String(rec.index),
      rec.line !== undefined ? String(rec.line) : '',
      cut(rec.action, Math.max(40, width - 60)),
      rec.expected,
      rec.pass ? fmtOutcome(rec.outcome) : p.bad(fmtOutcome(rec.outcome)),
      rec.pass ? p.ok('✓') : p.bad('✗'),
    ]);
    const lines = table(['#', 'line', 'step', 'expected', 'outcome', ''], rows, [true, true, false, false, false, false], p);
    out.push(lines[0] as string);
    // A step's name goes under it, aligned with the step column.
    const indent = 2 + Math.max(1, ...rows.map((x) => vlen(x[0] ?? ''))) + 2 + Math.max(4, ...rows.map((x) => vlen(x[1] ?? ''))) + 2;
    r.records.forEach((rec, i) => {
      out.push(lines[i + 1] as string);
      if (rec.name !== undefined) out.push(p.dim(`${' '.repeat(indent)}${cut(rec.name, Math.max(20, width - indent))}`));
      for (const h of rec.hazards) out.push(p.warn(`${' '.repeat(indent)}⚠ ${cut(h.message, Math.max(20, width - indent - 2))}`));
    });
    for (const h of r.hazards.setup) out.push(p.warn(`  ⚠ setup: ${cut(h.message, Math.max(20, width - 11))}`));
  } else {
    out.push('');
    const rows = Object.entries(r.byKind)
      .sort((a, b) => b[1].count - a[1].count)
      .map(([kind, s]) => {
        const errors = Object.entries(s.errors).sort((a, b) => b[1] - a[1]).map(([c, n]) => `${c} ${fmtInt(n)}`).join(', ');
        return [kind, fmtInt(s.count), fmtInt(s.ok), cut(errors, Math.max(30, width - 45))];
      });
    out.push(...table(['step', 'count', 'ok', 'errors (outcomes)'], rows, [false, true, true, false], p));
  }

  out.push('');
  out.push(...vmTable(r.vms, opts.maxVms ?? 20, p));

  if (r.failure !== null) {
    out.push('');
    out.push(...failureLines(r.failure, p, r.random));
  }

  out.push('');
  out.push(verdict(r, p));
  return `${out.join('\n')}\n`;
}

function vmTable(vms: readonly VmSummary[], max: number, p: Paint): string[] {
  if (vms.length === 0) return [p.dim('  (no VMs)')];
  const shown = vms.length > max ? [...vms].sort((a, b) => Number(b.alive) - Number(a.alive) || b.used - a.used).slice(0, max) : vms;
  const rows = shown.map((v) => [
    v.host,
    `${'  '.repeat(v.level)}${v.id}`,
    v.alive ? v.guest : p.dim(v.guest),
    v.alive ? `${fmtInt(v.used)}/${v.quota === 0 ? '∞' : fmtInt(v.quota)}` : p.dim('-'),
    fmtInt(v.peak),
    v.alive ? fmtInt(v.bindings) : '',
    v.alive ? fmtInt(v.devices) : '',
    v.alive ? v.viommus.join(',') || p.dim('none') : '',
  ]);
  const lines = table(['host', 'VM', 'guest', 'PASIDs/quota', 'peak', 'bindings', 'devices', 'vIOMMU segs'], rows, [false, false, false, true, true, true, true, false], p);
  if (vms.length > max) {
    const alive = vms.filter((v) => v.alive);
    const used = alive.reduce((a, v) => a + v.used, 0);
    lines.push(p.dim(`  ... ${vms.length - max} more VMs not shown (busiest first; --json lists all). ${alive.length} alive, ${fmtInt(used)} PASIDs in use in all.`));
  }
  return lines;
}

function failureLines(f: StepRecord, p: Paint, random: RunReport['random']): string[] {
  const where = f.kind === 'setup' ? 'the setup (building the host tree)'
    : f.kind === 'final-check' ? 'the final full check'
    : `step ${f.index}${f.line !== undefined ? ` (line ${f.line})` : ''}${f.name !== undefined ? ` "${f.name}"` : ''}`;
  const out = [p.bad(p.bold(`FAILED at ${where}`))];
  if (f.kind !== 'setup' && f.kind !== 'final-check') out.push(`  step: ${f.action}   expected: ${f.expected}   outcome: ${fmtOutcome(f.outcome)}`);
  if (f.unexpected !== null) out.push(`  ${p.bad('unexpected outcome:')} ${f.unexpected}`);
  for (const h of f.hazards) out.push(`  ${p.warn('kernel hazard')}: ${h.message}`);
  for (const v of f.violations) out.push(`  ${p.bad(`violation of ${v.invariant}`)} ${p.dim(`(${v.check} check)`)}: ${v.message}`);
  const last = random?.lastSteps;
  if (Array.isArray(last) && last.length > 0) {
    out.push(p.dim('  last steps generated (oldest first):'));
    for (const s of last) out.push(p.dim(`    ${String(s)}`));
  }
  return out;
}

function verdict(r: RunReport, p: Paint): string {
  const c = r.checks;
  const checks = [
    c.incremental ? 'incremental check after every step' : null,
    c.fullEvery === 1 ? 'full check after every step' : c.fullEvery > 0 ? `full check every ${fmtInt(c.fullEvery)} steps and at the end` : 'full check at the end',
  ].filter((x) => x !== null).join(', ');
  const rate = r.steps.run >= 1000 ? `, ${fmtInt(r.stepsPerSecond)} steps/s` : '';
  const time = r.durationMs >= 1000 ? `${(r.durationMs / 1000).toFixed(1)} s` : `${Math.round(r.durationMs)} ms`;
  const kinds = Object.entries(r.hazards.byKind).map(([k, n]) => `${k} ${fmtInt(n)}`).join(', ');
  const hazards = r.hazards.total > 0 ? ` ${p.warn(`${fmtInt(r.hazards.total)} kernel hazards (${kinds})`)}: where a real kernel would have gone wrong.` : '';
  const head = `${fmtInt(r.steps.run)}${r.steps.total !== null && r.steps.total !== r.steps.run ? ` of ${fmtInt(r.steps.total)}` : ''} steps in ${time}${rate}: ` +
    `${fmtInt(r.steps.asExpected)} as expected, ${fmtInt(r.steps.unexpected)} unexpected; ${checks} (${fmtInt(c.fullRuns)} full runs): ${fmtInt(c.violations)} violations.${hazards}`;
  return `${head} ${r.ok ? p.ok(p.bold('PASS')) : p.bad(p.bold('FAIL'))}`;
}

/** One line of progress: `[#######.....]  58%  580,000/1,000,000 steps  212,000 steps/s  ETA 2 s` */
export function progressLine(done: number, total: number | null, elapsedMs: number, width = 30): string {
  const rate = elapsedMs > 0 ? (done * 1000) / elapsedMs : 0;
  if (total === null || total <= 0) return `${fmtInt(done)} steps  ${fmtInt(rate)} steps/s`;
  const frac = Math.min(1, done / total);
  const filled = Math.round(frac * width);
  const eta = rate > 0 ? (total - done) / rate : 0;
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${String(Math.floor(frac * 100)).padStart(3)}%  ${fmtInt(done)}/${fmtInt(total)} steps  ${fmtInt(rate)} steps/s  ETA ${eta < 60 ? `${Math.ceil(eta)} s` : `${Math.ceil(eta / 60)} min`}`;
}
