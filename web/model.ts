/**
 * The page's copy of the namespace: one owner index per PASID (a Uint16Array of 2^20 cells), the
 * owners with their colours and patterns, and the bound PASIDs. It is loaded from the compact map
 * (`GET /v1/namespace/map`) and kept current by applying streamed events in seq order; a gap in
 * the sequence (events the server dropped for a slow consumer) asks for a resync. No rules of the
 * domain live here: the page only mirrors what the service reports.
 */
import type { NamespaceMap } from '../src/client/index.ts';
import { assignPatterns, FREE_COLOUR, HOST_COLOUR, vmColour, type Colour, type Rgb } from './colors.ts';
import type { PageEvent } from './events.ts';
import { CAPACITY } from './layout.ts';

export { CAPACITY };
export const FREE = 0;
export const HOST = 1;

export interface Owner {
  /** Local index (cell value): 0 free, 1 the host, 2.. VMs in order of first sight. */
  readonly index: number;
  /** VM id; null for the host itself (and for "free"). */
  readonly id: string | null;
  readonly label: string;
  /** The owner's colour (a VM's is a function of its id): CSS, RGB and its 0xAABBGGRR pixel. */
  readonly css: string;
  readonly rgb: Rgb;
  readonly pixel: number;
  /** Pattern that tells it from live VMs of the same colour (0: plain); see colors.ts. */
  pattern: number;
  /** When the VM was created (ms since the epoch; Infinity until known). */
  createdAt: number;
  count: number;
  /** False once the VM is destroyed (kept so old cells never point nowhere). */
  alive: boolean;
}

export type ModelChange =
  | { readonly kind: 'reset' }
  | { readonly kind: 'cells'; readonly pasids: readonly number[] }
  | { readonly kind: 'owners' }
  | { readonly kind: 'bindings' };

export interface Summary {
  /** Lowest and highest allocated PASID (-1 when none is). */
  readonly lo: number;
  readonly hi: number;
  /** Runs (maximal stretches of consecutive PASIDs) per owner index. */
  readonly runs: Uint32Array;
}

export class NamespaceModel {
  readonly cells = new Uint16Array(CAPACITY);
  readonly owners: Owner[] = [];
  readonly #byId = new Map<string, Owner>();
  /** PASID -> bound device BDFs. */
  readonly bound = new Map<number, Set<string>>();
  /** Last event seq folded in; -1 before the first map. */
  seq = -1;
  /** Bumped by every change of a cell (the cached summaries and runs follow it). */
  version = 0;
  #summary: { version: number; value: Summary } | null = null;
  #bounds: { version: number; value: { lo: number; hi: number } } | null = null;
  #runs: { version: number; index: number; value: Uint32Array } | null = null;
  #listeners = new Set<(c: ModelChange) => void>();
  /** Called when the event sequence has a gap: the page should fetch the map again. */
  onGap: () => void = () => {};

  constructor() {
    this.#add(null, 'free', FREE_COLOUR);
    this.#add(null, 'host', HOST_COLOUR);
  }

  get loaded(): boolean {
    return this.seq >= 0;
  }

  on(fn: (c: ModelChange) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  #emit(c: ModelChange): void {
    if (c.kind === 'reset' || c.kind === 'cells') this.version++;
    for (const l of this.#listeners) l(c);
  }

  #add(id: string | null, label: string, colour: Colour): Owner {
    const o: Owner = { index: this.owners.length, id, label, css: colour.css, rgb: colour.rgb, pixel: colour.pixel, pattern: 0, createdAt: Infinity, count: 0, alive: true };
    this.owners.push(o);
    if (id !== null) this.#byId.set(id, o);
    return o;
  }

  /** The owner of a VM (created on first sight); the host for null. Does not emit. */
  owner(id: string | null): Owner {
    if (id === null) return this.owners[HOST] as Owner;
    const o = this.#byId.get(id);
    if (o !== undefined) {
      if (!o.alive) {
        o.alive = true;
        this.#repattern();
      }
      return o;
    }
    const created = this.#add(id, id, vmColour(id));
    this.#repattern();
    return created;
  }

  /** The owner of a VM id, if the page has seen it. */
  find(id: string): Owner | undefined {
    return this.#byId.get(id);
  }

  ownerAt(pasid: number): Owner {
    return this.owners[this.cells[pasid] ?? 0] as Owner;
  }

  /** Owners to list: free, the host if it holds any, and live VMs by id. */
  legend(): Owner[] {
    const vms = this.owners.filter((o) => o.index > HOST && o.alive).sort((a, b) => (a.label < b.label ? -1 : 1));
    const host = this.owners[HOST] as Owner;
    return [this.owners[FREE] as Owner, ...(host.count > 0 ? [host] : []), ...vms];
  }

  /** Learn the VMs' creation times (they order the patterns of same-coloured VMs). */
  setVms(vms: readonly { id: string; createdAt: number }[]): void {
    const before = this.#signature();
    for (const vm of vms) {
      const o = this.owner(vm.id);
      o.createdAt = vm.createdAt;
    }
    this.#repattern();
    if (this.#signature() !== before) this.#emit({ kind: 'owners' });
  }

  /** Owners, liveness, creation times and patterns in one string: did anything the views show change? */
  #signature(): string {
    return this.owners.map((o) => `${o.alive ? 1 : 0}${o.pattern}${o.createdAt}`).join(',');
  }

  #repattern(): void {
    const live = this.owners.filter((o) => o.index > HOST && o.alive && o.id !== null);
    const patterns = assignPatterns(live.map((o) => ({ id: o.id as string, createdAt: o.createdAt })));
    for (const o of this.owners) o.pattern = o.id === null ? 0 : (patterns.get(o.id) ?? o.pattern);
  }

  /** Replace everything with a fresh map from the service. */
  load(map: NamespaceMap): void {
    const translate = new Uint16Array(Math.max(1, ...map.owners.map((o) => o.index + 1)));
    const seen = new Set<string>();
    for (const o of map.owners) {
      translate[o.index] = this.owner(o.owner).index;
      if (o.owner !== null) seen.add(o.owner);
    }
    for (const o of this.owners) {
      o.count = 0;
      if (o.id !== null && !seen.has(o.id)) o.alive = false;
    }
    this.#repattern();
    const src = map.cells;
    const dst = this.cells;
    const counts = new Uint32Array(this.owners.length);
    const n = Math.min(src.length, CAPACITY);
    for (let i = 0; i < n; i++) {
      const v = translate[src[i] as number] as number;
      dst[i] = v;
      counts[v] = (counts[v] as number) + 1;
    }
    dst.fill(FREE, n);
    dst[0] = FREE; // PASID 0 is no PASID
    for (const o of this.owners) o.count = counts[o.index] as number;
    // PASID 0 is never allocated (it is no PASID): "free" counts 1..CAPACITY-1 only.
    (this.owners[FREE] as Owner).count = (counts[FREE] as number) + (CAPACITY - n) - 1;
    this.seq = map.seq;
    this.#emit({ kind: 'reset' });
  }

  /** Replace the bound set from the VM list (the VMs' bindings). */
  setBindings(vms: readonly { bindings: readonly { bdf: string; pasid: number }[] }[]): void {
    this.bound.clear();
    for (const vm of vms) for (const b of vm.bindings) this.#bind(b.pasid, b.bdf);
    this.#emit({ kind: 'bindings' });
  }

  #bind(pasid: number, bdf: string): void {
    let s = this.bound.get(pasid);
    if (s === undefined) this.bound.set(pasid, (s = new Set()));
    s.add(bdf);
  }

  #set(pasid: number, index: number, changed: number[]): void {
    if (pasid < 1 || pasid >= CAPACITY) return;
    const old = this.cells[pasid] as number;
    if (old === index) return;
    (this.owners[old] as Owner).count--;
    (this.owners[index] as Owner).count++;
    this.cells[pasid] = index;
    changed.push(pasid);
  }

  /** Fold one event in (events at or below the map's seq are already in it). */
  apply(e: PageEvent): void {
    if (!this.loaded || e.seq <= this.seq) return;
    const gap = e.seq !== this.seq + 1;
    this.seq = e.seq;
    const changed: number[] = [];
    switch (e.type) {
      case 'alloc': {
        const index = this.owner(e.vm).index;
        for (const p of e.pasids) this.#set(p, index, changed);
        break;
      }
      case 'free':
        for (const p of e.pasids) {
          this.#set(p, FREE, changed);
          this.bound.delete(p);
        }
        break;
      case 'bind':
        this.#bind(e.pasid, e.bdf);
        this.#emit({ kind: 'bindings' });
        break;
      case 'unbind': {
        const s = this.bound.get(e.pasid);
        s?.delete(e.bdf);
        if (s?.size === 0) this.bound.delete(e.pasid);
        this.#emit({ kind: 'bindings' });
        break;
      }
      case 'vm-created': {
        const o = this.owner(e.vm);
        if (o.createdAt === Infinity) {
          o.createdAt = e.at;
          this.#repattern();
        }
        this.#emit({ kind: 'owners' });
        break;
      }
      case 'vm-destroyed': {
        const o = this.#byId.get(e.vm);
        if (o !== undefined) {
          // Its PASIDs were freed (and announced) before this event; clear any the page missed.
          if (o.count > 0) for (let p = 1; p < CAPACITY; p++) if (this.cells[p] === o.index) this.#set(p, FREE, changed);
          o.alive = false;
          this.#repattern();
        }
        this.#emit({ kind: 'owners' });
        break;
      }
      default:
        break;
    }
    if (changed.length > 0) this.#emit({ kind: 'cells', pasids: changed });
    if (gap) this.onGap();
  }

  /**
   * Lowest and highest allocated PASID (-1, -1 when none is): scans in from both ends, so it costs
   * the free space at the ends, not the namespace (the map's framing needs it on every change).
   */
  bounds(): { lo: number; hi: number } {
    if (this.#bounds?.version === this.version) return this.#bounds.value;
    const cells = this.cells;
    let lo = 1;
    while (lo < CAPACITY && cells[lo] === FREE) lo++;
    let hi = CAPACITY - 1;
    while (hi >= lo && cells[hi] === FREE) hi--;
    const value = lo < CAPACITY ? { lo, hi } : { lo: -1, hi: -1 };
    this.#bounds = { version: this.version, value };
    return value;
  }

  /** The summary if it is current, else null (it costs a pass over the namespace). */
  summaryIfCurrent(): Summary | null {
    return this.#summary?.version === this.version ? this.#summary.value : null;
  }

  /** Lowest and highest allocated PASID, and each owner's number of runs (one pass, cached). */
  summary(): Summary {
    if (this.#summary?.version === this.version) return this.#summary.value;
    const cells = this.cells;
    const runs = new Uint32Array(this.owners.length);
    let lo = -1;
    let hi = -1;
    let prev = FREE;
    for (let p = 1; p < CAPACITY; p++) {
      const v = cells[p] as number;
      if (v !== prev) {
        if (v !== FREE) {
          runs[v] = (runs[v] as number) + 1;
          if (lo < 0) lo = p;
        }
        prev = v;
      }
      if (v !== FREE) hi = p;
    }
    const value = { lo, hi, runs };
    this.#summary = { version: this.version, value };
    return value;
  }

  /** The runs of one owner, ascending: [start0, length0, start1, length1, ...] (cached). */
  runsOf(index: number): Uint32Array {
    if (this.#runs?.version === this.version && this.#runs.index === index) return this.#runs.value;
    const out: number[] = [];
    const cells = this.cells;
    let start = -1;
    for (let p = 1; p <= CAPACITY; p++) {
      const mine = p < CAPACITY && cells[p] === index;
      if (mine && start < 0) start = p;
      else if (!mine && start >= 0) {
        out.push(start, p - start);
        start = -1;
      }
    }
    const value = Uint32Array.from(out);
    this.#runs = { version: this.version, index, value };
    return value;
  }
}
