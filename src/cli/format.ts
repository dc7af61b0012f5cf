/**
 * Output helpers of the client commands: colour (only on a terminal, never with NO_COLOR),
 * aligned tables, PASIDs as the kernel prints them, compact PASID runs, and one human line per
 * service event. Pure functions of their inputs: nothing here reads the process or the network.
 */
import type { ApiEvent, VmInfo } from '../client/index.ts';

export interface Style {
  bold(s: string): string;
  dim(s: string): string;
  ok(s: string): string;
  warn(s: string): string;
  bad(s: string): string;
  accent(s: string): string;
}

/** Colour only for a terminal, and never when NO_COLOR is set to something (no-color.org). */
export function wantColour(isTTY: boolean, env: Readonly<Record<string, string | undefined>>): boolean {
  const noColor = env.NO_COLOR;
  return isTTY && (noColor === undefined || noColor === '');
}

export function style(colour: boolean): Style {
  const c = (code: string) => (s: string) => (colour ? `\x1b[${code}m${s}\x1b[0m` : s);
  return { bold: c('1'), dim: c('2'), ok: c('32'), warn: c('33'), bad: c('1;31'), accent: c('36') };
}

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;]*m/g;

/** Printed width of a string (ANSI colour codes take no room). */
export function visibleLength(s: string): number {
  return s.replace(ANSI, '').length;
}

/** Columns padded to their widest cell; the last column is not padded. */
export function table(head: readonly string[], rows: readonly (readonly string[])[], st?: Style): string {
  const widths = head.map((h, i) => Math.max(visibleLength(h), ...rows.map((r) => visibleLength(r[i] ?? ''))));
  const line = (cells: readonly string[]) =>
    cells
      .map((cell, i) => (i === cells.length - 1 ? cell : cell + ' '.repeat((widths[i] ?? 0) - visibleLength(cell))))
      .join('  ')
      .trimEnd();
  const headLine = line(head);
  return [st ? st.bold(headLine) : headLine, ...rows.map(line)].join('\n');
}

/** `5 (0x5)`: decimal and hex, as the kernel's messages print IDs. */
export function fmtPasid(n: number): string {
  return `${n} (0x${n.toString(16)})`;
}

/** Ascending PASIDs as runs: `1-3, 7, 9-10`. */
export function runs(ids: readonly number[]): string {
  const sorted = [...ids].sort((a, b) => a - b);
  const out: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    const start = sorted[i] as number;
    let end = start;
    while (i + 1 < sorted.length && sorted[i + 1] === end + 1) end = sorted[++i] as number;
    i++;
    out.push(end === start ? `${start}` : `${start}-${end}`);
  }
  return out.join(', ');
}

export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

export function fmtTime(ms: number): string {
  return Number.isFinite(ms) && ms > 0 ? new Date(ms).toISOString() : '-';
}

/** A vIOMMU in the syntax of `--viommu`: `0:B`, `1:A:rx`. */
export function fmtViommu(v: VmInfo['viommus'][number]): string {
  return `${v.segment}:${v.layout}${v.rangeExtension ? ':rx' : ''}`;
}

/** A device in the syntax of `--device`: `0000:00:02.0:20`. */
export function fmtDevice(d: VmInfo['devices'][number]): string {
  return `${d.bdf}:${d.pasidBits}`;
}

function pct(used: number, quota: number): string {
  if (quota <= 0) return used > 0 ? '-' : '0%';
  const p = (100 * used) / quota;
  return `${p >= 10 || p === 0 ? Math.round(p) : p.toFixed(1)}%`;
}

/** `vm list`: one row per VM. */
export function vmTable(vms: readonly VmInfo[], st: Style): string {
  const rows = vms.map((v) => [
    st.accent(v.id),
    `${v.used}/${v.quota}`,
    pct(v.used, v.quota),
    v.viommus.length ? v.viommus.map(fmtViommu).join(' ') : '-',
    v.devices.length ? v.devices.map((d) => d.bdf).join(' ') : '-',
    `${v.bindings.length}`,
  ]);
  return table(['ID', 'USED/QUOTA', 'USE', 'VIOMMUS', 'DEVICES', 'BINDINGS'], rows, st);
}

/** `vm create` / `vm show`: one VM, field by field. */
export function vmDetails(v: VmInfo, st: Style): string {
  const lines = [
    `${st.bold('VM')} ${st.accent(v.id)}`,
    `  PASIDs    ${v.used} of quota ${v.quota}`,
    `  created   ${fmtTime(v.createdAt)}`,
    `  vIOMMUs   ${v.viommus.length ? v.viommus.map((x) => `segment ${x.segment} (layout ${x.layout}${x.rangeExtension ? ', range extension' : ''})`).join(', ') : '-'}`,
    `  devices   ${v.devices.length ? v.devices.map((d) => `${d.bdf} (segment ${d.segment}, ${d.pasidBits} PASID bits)`).join(', ') : '-'}`,
    `  bindings  ${v.bindings.length ? v.bindings.map((b) => `${b.bdf} -> PASID ${fmtPasid(b.pasid)}`).join(', ') : '-'}`,
  ];
  return lines.join('\n');
}

const EVENT_WIDTH = 'quota-exhausted'.length;

/** `PASID 5 (0x5)` for one, `3 PASIDs (5-7)` for a batch. */
function pasids(ids: readonly number[]): string {
  const [first] = ids;
  return ids.length === 1 && first !== undefined ? `PASID ${fmtPasid(first)}` : `${plural(ids.length, 'PASID')} (${runs(ids)})`;
}

/** What an event says, without its time and sequence number. */
export function describeEvent(e: ApiEvent): string {
  const vm = (v: string | null) => (v === null ? 'the host' : `VM ${v}`);
  switch (e.type) {
    case 'vm-created':
      return `VM ${e.vm} created (quota ${e.quota})`;
    case 'vm-destroyed':
      return `VM ${e.vm} destroyed${e.freed.length ? `, freed ${plural(e.freed.length, 'PASID')} (${runs(e.freed)})` : ''}`;
    case 'quota-exhausted':
      return `VM ${e.vm} reached its quota of ${e.quota}`;
    case 'viommu-added':
      return `VM ${e.vm} gained a vIOMMU on segment ${e.segment}`;
    case 'viommu-removed':
      return `VM ${e.vm} lost its vIOMMU on segment ${e.segment}`;
    case 'device-assigned':
      return `device ${e.bdf} assigned to VM ${e.vm}`;
    case 'device-removed':
      return `device ${e.bdf} removed from VM ${e.vm}`;
    case 'alloc':
      return `${pasids(e.pasids)} allocated to ${vm(e.vm)}`;
    case 'free':
      return `${pasids(e.pasids)} freed by ${vm(e.vm)}`;
    case 'bind':
      return `device ${e.bdf} of VM ${e.vm} bound to PASID ${fmtPasid(e.pasid)}`;
    case 'unbind':
      return `device ${e.bdf} of VM ${e.vm} unbound from PASID ${fmtPasid(e.pasid)}`;
    default: {
      // A newer service may send event types this CLI does not know: show them raw.
      const { type, seq: _seq, at: _at, ...rest } = e as { type: unknown; seq: unknown; at: unknown };
      return `${String(type)} ${JSON.stringify(rest)}`;
    }
  }
}

function eventColour(type: string, st: Style): (s: string) => string {
  if (type === 'alloc' || type === 'bind' || type === 'vm-created' || type.endsWith('-added') || type === 'device-assigned') return st.ok;
  if (type === 'quota-exhausted') return st.bad;
  if (type === 'free' || type === 'unbind' || type === 'vm-destroyed' || type.endsWith('-removed')) return st.warn;
  return (s) => s;
}

/** `watch` and `pasid show`: `2025-01-01T00:00:00.000Z  #12     alloc            PASID 5 (0x5) allocated to VM vm1`. */
export function formatEvent(e: ApiEvent, st: Style): string {
  const type = String(e.type);
  return `${st.dim(fmtTime(e.at))}  ${st.dim(`#${e.seq}`.padEnd(6))}  ${eventColour(type, st)(type.padEnd(EVENT_WIDTH))}  ${describeEvent(e)}`;
}
