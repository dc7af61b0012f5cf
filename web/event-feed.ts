/**
 * The live event feed: what the service streams over `/v1/events` (alloc, free, bind, unbind, VM
 * created and destroyed, vIOMMU and device changes, quota exhausted), newest first, the last
 * 200 kept. Entries are added once per animation frame, so a burst of thousands of events costs
 * one DOM update. The list is a `log` without live announcements (bursts would drown a screen
 * reader); Pause freezes it for reading.
 */
import type { AuthorityEvent } from '../src/client/index.ts';
import { fmtTime, h, hex } from './dom.ts';

const KEEP = 200;

/** `PASID 0x5`, or `3 PASIDs from 0x5` for a batch. */
function pasids(ids: readonly number[]): string {
  const [first] = ids;
  if (first === undefined) return 'no PASID';
  return ids.length === 1 ? `PASID ${hex(first)}` : `${ids.length} PASIDs from ${hex(Math.min(...ids))}`;
}

/** The one PASID an event is about, if it is about exactly one. */
function pasidOf(e: AuthorityEvent): number | null {
  if ('pasid' in e) return e.pasid;
  if ('pasids' in e && e.pasids.length === 1) return e.pasids[0] ?? null;
  return null;
}

export function describeEvent(e: AuthorityEvent): string {
  switch (e.type) {
    case 'alloc': return `${pasids(e.pasids)} allocated to ${e.vm ?? 'the host'}`;
    case 'free': return `${pasids(e.pasids)} freed by ${e.vm ?? 'the host'}`;
    case 'bind': return `${e.vm}: device ${e.bdf} bound to PASID ${hex(e.pasid)}`;
    case 'unbind': return `${e.vm}: device ${e.bdf} unbound from PASID ${hex(e.pasid)}`;
    case 'vm-created': return `VM ${e.vm} created, quota ${e.quota === 0 ? 'none' : e.quota}`;
    case 'vm-destroyed': return `VM ${e.vm} destroyed, ${e.freed.length} PASID${e.freed.length === 1 ? '' : 's'} freed`;
    case 'quota-exhausted': return `VM ${e.vm} reached its quota of ${e.quota} PASIDs`;
    case 'viommu-added': return `${e.vm}: vIOMMU added on segment ${e.segment}`;
    case 'viommu-removed': return `${e.vm}: vIOMMU removed from segment ${e.segment}`;
    case 'device-assigned': return `${e.vm}: device ${e.bdf} assigned`;
    case 'device-removed': return `${e.vm}: device ${e.bdf} removed`;
    default: return JSON.stringify(e);
  }
}

export class EventFeed {
  readonly #list: HTMLOListElement;
  readonly #count: HTMLElement;
  readonly #onPasid: (pasid: number) => void;
  #pending: AuthorityEvent[] = [];
  /** Seqs shown or pending: the recent-events backfill and the stream can overlap. */
  #seen = new Set<number>();
  #frame = 0;
  #total = 0;
  paused = false;

  constructor(list: HTMLOListElement, count: HTMLElement, onPasid: (pasid: number) => void) {
    this.#list = list;
    this.#count = count;
    this.#onPasid = onPasid;
    list.addEventListener('click', (ev) => {
      const t = ev.target;
      if (t instanceof HTMLButtonElement && t.dataset.pasid !== undefined) this.#onPasid(Number(t.dataset.pasid));
    });
  }

  push(e: AuthorityEvent): void {
    if (this.#seen.has(e.seq)) return;
    this.#seen.add(e.seq);
    this.#total++;
    this.#pending.push(e);
    if (this.#pending.length > KEEP) this.#pending.splice(0, this.#pending.length - KEEP);
    if (this.#frame === 0 && !this.paused) this.#frame = requestAnimationFrame(() => this.#flush());
  }

  setPaused(p: boolean): void {
    this.paused = p;
    if (!p && this.#pending.length > 0 && this.#frame === 0) this.#frame = requestAnimationFrame(() => this.#flush());
  }

  /** Older events (the recent history at sign-in): added below what is shown. */
  backfill(events: readonly AuthorityEvent[]): void {
    const frag = document.createDocumentFragment();
    for (const e of [...events].sort((a, b) => b.seq - a.seq)) {
      if (this.#seen.has(e.seq)) continue;
      this.#seen.add(e.seq);
      frag.appendChild(this.#item(e));
    }
    this.#list.append(frag);
    this.#trim();
  }

  /** A new stream after a reconnection: a restarted service numbers its events from 1 again. */
  newStream(): void {
    this.#seen.clear();
  }

  clear(): void {
    this.#seen.clear();
    this.#pending = [];
    this.#list.replaceChildren();
    this.#total = 0;
    this.#count.textContent = '';
  }

  #flush(): void {
    this.#frame = 0;
    if (this.paused) return;
    const frag = document.createDocumentFragment();
    for (let i = this.#pending.length - 1; i >= 0; i--) frag.appendChild(this.#item(this.#pending[i] as AuthorityEvent));
    this.#pending = [];
    this.#list.prepend(frag);
    this.#trim();
    this.#count.textContent = `${this.#total.toLocaleString('en')} event${this.#total === 1 ? '' : 's'} received`;
  }

  #trim(): void {
    while (this.#list.childElementCount > KEEP) this.#list.lastElementChild?.remove();
    if (this.#seen.size > 4 * KEEP) {
      this.#seen = new Set([...this.#pending.map((e) => e.seq), ...[...this.#list.children].map((li) => Number((li as HTMLElement).dataset.seq))]);
    }
  }

  #item(e: AuthorityEvent): HTMLLIElement {
    const pasid = pasidOf(e);
    return h('li', { class: `ev ev-${e.type}`, 'data-seq': e.seq },
      h('time', { datetime: new Date(e.at).toISOString() }, fmtTime(e.at)),
      h('span', { class: 'tag' }, e.type),
      h('span', { class: 'what' }, describeEvent(e)),
      pasid !== null ? h('button', { type: 'button', class: 'link', 'data-pasid': pasid, 'aria-label': `Details of PASID ${pasid}` }, 'details') : null);
  }
}
