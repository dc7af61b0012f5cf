/**
 * The page's copy of the namespace: one owner index per PASID (a Uint16Array of 2^20 cells), the
 * owners with their colours, and the bound PASIDs. It is loaded from the compact map
 * (`GET /v1/namespace/map`) and kept current by applying streamed events in seq order; a gap in
 * the sequence (events the server dropped for a slow consumer) asks for a resync. No rules of the
 * domain live here: the page only mirrors what the service reports.
 */
import type { AuthorityEvent, NamespaceMap } from '../src/client/index.ts';
import { ownerColor } from './colors.ts';

export const CAPACITY = 1 << 20;
export const FREE = 0;
export const HOST = 1;

export interface Owner {
  /** Local index (cell value): 0 free, 1 the host, 2.. VMs in order of first sight. */
  readonly index: number;
  /** VM id; null for the host itself (and for "free"). */
  readonly id: string | null;
  readonly label: string;
  /** CSS colour and its 0xAABBGGRR pixel (little-endian RGBA in a Uint32Array). */
  readonly css: string;
  readonly pixel: number;
  count: number;
  /** False once the VM is destroyed (kept so old cells never point nowhere). */
  alive: boolean;
}

export type ModelChange =
  | { readonly kind: 'reset' }
  | { readonly kind: 'cells'; readonly pasids: readonly number[] }
  | { readonly kind: 'owners' }
  | { readonly kind: 'bindings' };

export class NamespaceModel {
  readonly cells = new Uint16Array(CAPACITY);
  readonly owners: Owner[] = [];
  readonly #byId = new Map<string, Owner>();
  /** PASID -> bound device BDFs. */
  readonly bound = new Map<number, Set<string>>();
  /** Last event seq folded in; -1 before the first map. */
  seq = -1;
  #listeners = new Set<(c: ModelChange) => void>();
  /** Called when the event sequence has a gap: the page should fetch the map again. */
  onGap: () => void = () => {};

  constructor() {
    this.#add(null, 'free');
    this.#add(null, 'host');
  }

  get loaded(): boolean {
    return this.seq >= 0;
  }

  on(fn: (c: ModelChange) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  #emit(c: ModelChange): void {
    for (const l of this.#listeners) l(c);
  }

  #add(id: string | null, label: string): Owner {
    const index = this.owners.length;
    const { css, pixel } = ownerColor(index);
    const o: Owner = { index, id, label, css, pixel, count: 0, alive: true };
    this.owners.push(o);
    if (id !== null) this.#byId.set(id, o);
    return o;
  }

  /** The owner of a VM (created on first sight); the host for null. */
  owner(id: string | null): Owner {
    if (id === null) return this.owners[HOST] as Owner;
    const o = this.#byId.get(id);
    if (o !== undefined) {
      o.alive = true;
      return o;
    }
    return this.#add(id, id);
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
    const old = this.cells[pasid] as number;
    if (old === index) return;
    (this.owners[old] as Owner).count--;
    (this.owners[index] as Owner).count++;
    this.cells[pasid] = index;
    changed.push(pasid);
  }

  /** Fold one event in (events at or below the map's seq are already in it). */
  apply(e: AuthorityEvent): void {
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
      case 'vm-created':
        this.owner(e.vm);
        this.#emit({ kind: 'owners' });
        break;
      case 'vm-destroyed': {
        const o = this.#byId.get(e.vm);
        if (o !== undefined) {
          // Its PASIDs were freed one by one before this event; clear any the page missed.
          if (o.count > 0) for (let p = 0; p < CAPACITY; p++) if (this.cells[p] === o.index) this.#set(p, FREE, changed);
          o.alive = false;
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
}
