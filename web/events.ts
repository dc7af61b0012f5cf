/**
 * Events as the page uses them. The service streams allocations and frees either one event per
 * PASID (`{ type, vm, pasid }`) or one per committed batch (`{ type, vm, pasids: [...] }`); both
 * arrive here and become one shape, `pasids`, at the edge (`toPageEvent`), so the views never
 * care. Also the feed's grouping (a batch is one line) and the words for each event. Pure: no DOM.
 */
import type { AuthorityEvent } from '../src/client/index.ts';
import { hex } from './dom.ts';

interface Stamp {
  readonly seq: number;
  readonly at: number;
}

export type PageEvent = Stamp & (
  | { readonly type: 'alloc' | 'free'; readonly vm: string | null; readonly pasids: readonly number[] }
  | { readonly type: 'bind' | 'unbind'; readonly vm: string; readonly pasid: number; readonly bdf: string }
  | { readonly type: 'vm-created'; readonly vm: string; readonly quota: number }
  | { readonly type: 'vm-destroyed'; readonly vm: string; readonly freed: readonly number[] }
  | { readonly type: 'quota-exhausted'; readonly vm: string; readonly quota: number }
  | { readonly type: 'viommu-added' | 'viommu-removed'; readonly vm: string; readonly segment: number }
  | { readonly type: 'device-assigned' | 'device-removed'; readonly vm: string; readonly bdf: string }
);

export type PasidEvent = Extract<PageEvent, { type: 'alloc' | 'free' }>;

/** What may come over the wire for an allocation or a free: either shape. */
interface WireAllocFree extends Stamp {
  readonly type: 'alloc' | 'free';
  readonly vm?: string | null;
  readonly pasid?: unknown;
  readonly pasids?: unknown;
}

const isPasid = (p: unknown): p is number => typeof p === 'number' && Number.isInteger(p) && p >= 0 && p < 1 << 20;

/** One event as the page uses it (allocations and frees always with `pasids`). */
export function toPageEvent(e: AuthorityEvent | PageEvent): PageEvent {
  const w = e as unknown as WireAllocFree | PageEvent;
  if (w.type === 'alloc' || w.type === 'free') {
    const raw = (w as WireAllocFree).pasids;
    const one = (w as WireAllocFree).pasid;
    const pasids = Array.isArray(raw) ? raw.filter(isPasid) : isPasid(one) ? [one] : [];
    return { type: w.type, vm: w.vm ?? null, pasids, seq: w.seq, at: w.at };
  }
  return w as PageEvent;
}

/** The PASIDs an event is about (allocated, freed, bound or unbound). */
export function pasidsOf(e: PageEvent): readonly number[] {
  if (e.type === 'alloc' || e.type === 'free') return e.pasids;
  if (e.type === 'bind' || e.type === 'unbind') return [e.pasid];
  return [];
}

/** Sorted, merged inclusive ranges [first, last] of a list of PASIDs (any order, duplicates allowed). */
export function rangesOf(pasids: readonly number[]): [number, number][] {
  const s = Int32Array.from(pasids).sort();
  const out: [number, number][] = [];
  for (const p of s) {
    const last = out[out.length - 1];
    if (last !== undefined && p <= last[1] + 1) last[1] = Math.max(last[1], p);
    else out.push([p, p]);
  }
  return out;
}

export function fmtRange([a, b]: readonly [number, number]): string {
  return a === b ? hex(a) : `${hex(a)}–${hex(b)}`;
}

/** `0x10–0x1f, 0x40` or, past `max` ranges, the first ones and how many in all. */
export function fmtRanges(ranges: readonly (readonly [number, number])[], max = 3): string {
  if (ranges.length <= max) return ranges.map(fmtRange).join(', ');
  return `${ranges.slice(0, max).map(fmtRange).join(', ')}, … (${ranges.length.toLocaleString('en')} ranges)`;
}

const whose = (vm: string | null) => vm ?? 'the host';
const plural = (n: number, one: string, many = `${one}s`) => `${n.toLocaleString('en')} ${n === 1 ? one : many}`;

/** One line about one event (PASID histories). */
export function describeEvent(e: PageEvent): string {
  switch (e.type) {
    case 'alloc':
    case 'free': return describePasids(e.type, e.vm, e.pasids);
    case 'bind': return `${e.vm}: device ${e.bdf} bound to PASID ${hex(e.pasid)}`;
    case 'unbind': return `${e.vm}: device ${e.bdf} unbound from PASID ${hex(e.pasid)}`;
    case 'vm-created': return `VM ${e.vm} created, quota ${e.quota === 0 ? 'none' : e.quota}`;
    case 'vm-destroyed': return `VM ${e.vm} destroyed, ${plural(e.freed.length, 'PASID')} freed`;
    case 'quota-exhausted': return `VM ${e.vm} reached its quota of ${e.quota} PASIDs`;
    case 'viommu-added': return `${e.vm}: vIOMMU added on segment ${e.segment}`;
    case 'viommu-removed': return `${e.vm}: vIOMMU removed from segment ${e.segment}`;
    case 'device-assigned': return `${e.vm}: device ${e.bdf} assigned`;
    case 'device-removed': return `${e.vm}: device ${e.bdf} removed`;
    default: return JSON.stringify(e);
  }
}

/** `PASID 0x6 allocated to vm-a`, or `160 PASIDs allocated to vm1: 0x30d40–0x30ddf`. */
export function describePasids(type: 'alloc' | 'free', vm: string | null, pasids: readonly number[]): string {
  const verb = type === 'alloc' ? 'allocated to' : 'freed by';
  if (pasids.length === 1) return `PASID ${hex(pasids[0] as number)} ${verb} ${whose(vm)}`;
  if (pasids.length === 0) return `no PASIDs ${verb} ${whose(vm)}`;
  return `${plural(pasids.length, 'PASID')} ${verb} ${whose(vm)}: ${fmtRanges(rangesOf(pasids))}`;
}

/**
 * A line of the feed: one event, or allocations (or frees) of one owner committed together.
 * The service's batch event is one line by itself; single-PASID events of the same type and VM
 * that follow each other in seq and are stamped within `JOIN_MS` of the line's first (the way a
 * batch arrives from a service that announces one event per PASID) are joined into one line too;
 * a steady trickle of single allocations still gets a line per `JOIN_MS`.
 */
export interface FeedLine {
  readonly type: PageEvent['type'];
  readonly vm: string | null;
  /** Every PASID of the line (alloc/free), in arrival order. */
  readonly pasids: number[];
  readonly firstSeq: number;
  lastSeq: number;
  readonly at: number;
  lastAt: number;
  /** Events folded into this line. */
  events: number;
  /** The one event of a line that is not about PASIDs (bind, vm-created ...); for PASID lines the first. */
  readonly event: PageEvent;
  /** Only lines of single-PASID events take more events. */
  readonly joinable: boolean;
}

/** A batch announced one event per PASID is stamped over as long as publishing it takes (milliseconds, more on a loaded host). */
export const JOIN_MS = 250;

export function newLine(e: PageEvent): FeedLine {
  const pasids = e.type === 'alloc' || e.type === 'free' ? [...e.pasids] : [];
  return {
    type: e.type, vm: e.vm, pasids, firstSeq: e.seq, lastSeq: e.seq, at: e.at, lastAt: e.at, events: 1, event: e,
    joinable: (e.type === 'alloc' || e.type === 'free') && e.pasids.length === 1,
  };
}

/** Fold `e` into `line` if it continues it (returns whether it did). */
export function join(line: FeedLine, e: PageEvent): boolean {
  if (!line.joinable || (e.type !== 'alloc' && e.type !== 'free') || e.pasids.length !== 1) return false;
  if (e.type !== line.type || e.vm !== line.vm || e.seq !== line.lastSeq + 1 || Math.abs(e.at - line.at) > JOIN_MS) return false;
  line.pasids.push(e.pasids[0] as number);
  line.lastSeq = e.seq;
  line.lastAt = e.at;
  line.events++;
  return true;
}

/** Group events (any order; sorted by seq here) into feed lines, oldest first. */
export function groupEvents(events: readonly PageEvent[]): FeedLine[] {
  const lines: FeedLine[] = [];
  for (const e of [...events].sort((a, b) => a.seq - b.seq)) {
    const last = lines[lines.length - 1];
    if (last === undefined || !join(last, e)) lines.push(newLine(e));
  }
  return lines;
}

export function describeLine(l: FeedLine): string {
  if (l.type === 'alloc' || l.type === 'free') return describePasids(l.type, l.vm, l.pasids);
  return describeEvent(l.event);
}
