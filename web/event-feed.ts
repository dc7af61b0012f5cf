/**
 * The live event feed: what the service streams over `/v1/events` (alloc, free, bind, unbind, VM
 * created and destroyed, vIOMMU and device changes, quota exhausted), newest first, the last
 * 200 lines kept. A batch of allocations or frees is one line ("160 PASIDs allocated to vm1:
 * 0x30d40–0x30ddf"), whether the service sent it as one event or as one event per PASID
 * (events.ts joins those); its button expands the line to its ranges, each of which frames it on
 * the map. Lines are added once per animation frame, so a burst of thousands of events costs one
 * DOM update. The list is a `log` without live announcements (bursts would drown a screen
 * reader); Pause freezes it for reading.
 */
import { fmtRange, describeLine, groupEvents, join, newLine, rangesOf, type FeedLine, type PageEvent } from './events.ts';
import { fmtTime, h, hex } from './dom.ts';

const KEEP = 200;
/** Seqs remembered to drop the overlap of the recent-events backfill and the stream. */
const SEEN_MAX = 20_000;

export interface EventFeedOptions {
  /** Open one PASID's details. */
  readonly onPasid: (pasid: number) => void;
  /** Frame a range of PASIDs on the map. */
  readonly onRange: (first: number, last: number) => void;
}

interface Shown {
  readonly line: FeedLine;
  readonly li: HTMLLIElement;
}

export class EventFeed {
  readonly #list: HTMLOListElement;
  readonly #count: HTMLElement;
  readonly #opts: EventFeedOptions;
  /** Lines not on screen yet, oldest first. */
  #pending: FeedLine[] = [];
  /** The newest line on screen (a batch still arriving joins it). */
  #top: Shown | null = null;
  #seen = new Set<number>();
  #maxSeq = 0;
  #frame = 0;
  #total = 0;
  #ids = 0;
  paused = false;

  constructor(list: HTMLOListElement, count: HTMLElement, opts: EventFeedOptions) {
    this.#list = list;
    this.#count = count;
    this.#opts = opts;
    list.addEventListener('click', (ev) => {
      const t = (ev.target as Element).closest('button');
      if (!(t instanceof HTMLButtonElement)) return;
      const d = t.dataset;
      if (d.pasid !== undefined) this.#opts.onPasid(Number(d.pasid));
      else if (d.first !== undefined && d.last !== undefined) this.#opts.onRange(Number(d.first), Number(d.last));
      else if (d.expand !== undefined) this.#toggle(t);
    });
  }

  #isNew(e: PageEvent): boolean {
    if (this.#seen.has(e.seq)) return false;
    this.#seen.add(e.seq);
    if (e.seq > this.#maxSeq) this.#maxSeq = e.seq;
    if (this.#seen.size > SEEN_MAX) {
      const floor = this.#maxSeq - SEEN_MAX / 2;
      for (const s of this.#seen) if (s < floor) this.#seen.delete(s);
    }
    return true;
  }

  push(e: PageEvent): void {
    if (!this.#isNew(e)) return;
    this.#total++;
    const last = this.#pending[this.#pending.length - 1];
    if (last === undefined || !join(last, e)) {
      this.#pending.push(newLine(e));
      if (this.#pending.length > KEEP) this.#pending.splice(0, this.#pending.length - KEEP);
    }
    if (this.#frame === 0 && !this.paused) this.#frame = requestAnimationFrame(() => this.#flush());
  }

  setPaused(p: boolean): void {
    this.paused = p;
    if (!p && this.#pending.length > 0 && this.#frame === 0) this.#frame = requestAnimationFrame(() => this.#flush());
  }

  /** Older events (the recent history at sign-in): added below what is shown. */
  backfill(events: readonly PageEvent[]): void {
    const lines = groupEvents(events.filter((e) => this.#isNew(e)));
    const frag = document.createDocumentFragment();
    for (let i = lines.length - 1; i >= 0; i--) frag.appendChild(this.#item(lines[i] as FeedLine));
    this.#list.append(frag);
    if (this.#top === null && lines.length > 0) {
      const li = this.#list.firstElementChild;
      const line = lines[lines.length - 1];
      if (li instanceof HTMLLIElement && line !== undefined && li.dataset.seq === String(line.firstSeq)) this.#top = { line, li };
    }
    this.#trim();
  }

  /** A new stream after a reconnection: a restarted service numbers its events from 1 again. */
  newStream(): void {
    this.#seen.clear();
    this.#maxSeq = 0;
    this.#top = null;
  }

  clear(): void {
    this.#seen.clear();
    this.#maxSeq = 0;
    this.#pending = [];
    this.#top = null;
    this.#list.replaceChildren();
    this.#total = 0;
    this.#count.textContent = '';
  }

  #flush(): void {
    this.#frame = 0;
    if (this.paused) return;
    let pending = this.#pending;
    this.#pending = [];
    // A batch whose events span frames continues the line already on screen.
    const top = this.#top;
    const first = pending[0];
    if (top !== null && first !== undefined && top.li.isConnected && joinLines(top.line, first)) {
      this.#fill(top.li, top.line);
      pending = pending.slice(1);
    }
    const frag = document.createDocumentFragment();
    let newest: Shown | null = null;
    for (let i = pending.length - 1; i >= 0; i--) {
      const line = pending[i] as FeedLine;
      const li = this.#item(line);
      newest ??= { line, li };
      frag.appendChild(li);
    }
    if (newest !== null) this.#top = newest;
    this.#list.prepend(frag);
    this.#trim();
    this.#count.textContent = `${this.#total.toLocaleString('en')} event${this.#total === 1 ? '' : 's'} received`;
  }

  #trim(): void {
    while (this.#list.childElementCount > KEEP) this.#list.lastElementChild?.remove();
  }

  #item(line: FeedLine): HTMLLIElement {
    const li = h('li', { class: `ev ev-${line.type}`, 'data-seq': line.firstSeq });
    this.#fill(li, line);
    return li;
  }

  /** (Re)write a line: time, type, words, and its buttons. */
  #fill(li: HTMLLIElement, line: FeedLine): void {
    const n = line.pasids.length;
    const single = n === 1 ? (line.pasids[0] as number) : line.type === 'bind' || line.type === 'unbind' ? (line.event as { pasid: number }).pasid : null;
    const open = li.querySelector('.more:not([hidden])') !== null;
    li.dataset.count = String(n);
    li.dataset.lastSeq = String(line.lastSeq);
    const head = h('div', { class: 'ev-head' },
      h('time', { datetime: new Date(line.at).toISOString() }, fmtTime(line.at)),
      h('span', { class: 'tag' }, line.type),
      h('span', { class: 'what' }, describeLine(line)),
      single !== null ? h('button', { type: 'button', class: 'link', 'data-pasid': single, 'aria-label': `Details of PASID ${hex(single)}` }, 'details') : null);
    if (n <= 1) {
      li.replaceChildren(head);
      return;
    }
    const id = li.dataset.moreId ?? `feed-more-${++this.#ids}`;
    li.dataset.moreId = id;
    const ranges = rangesOf(line.pasids);
    const label = `show ${ranges.length === 1 ? 'range' : `${ranges.length.toLocaleString('en')} ranges`}`;
    const toggle = h('button', { type: 'button', class: 'link', 'data-expand': label, 'aria-expanded': String(open), 'aria-controls': id }, open ? 'hide' : label);
    head.appendChild(toggle);
    const shownRanges = ranges.slice(0, 64);
    const more = h('div', { class: 'more', id },
      h('p', { class: 'muted small' }, `${line.events === 1 ? `event ${line.firstSeq}` : `events ${line.firstSeq}–${line.lastSeq}`} · ${n.toLocaleString('en')} PASIDs in ${ranges.length.toLocaleString('en')} range${ranges.length === 1 ? '' : 's'}. A range frames it on the map.`),
      h('ul', { class: 'ranges' }, shownRanges.map(([a, b]) => h('li', {},
        h('button', { type: 'button', class: 'link', 'data-first': a, 'data-last': b, 'aria-label': `Show PASIDs ${fmtRange([a, b])} on the map` }, fmtRange([a, b])),
        a === b ? null : h('span', { class: 'muted' }, ` (${(b - a + 1).toLocaleString('en')})`)))),
      ranges.length > shownRanges.length ? h('p', { class: 'muted small' }, `and ${(ranges.length - shownRanges.length).toLocaleString('en')} more ranges`) : null);
    more.hidden = !open;
    li.replaceChildren(head, more);
  }

  #toggle(b: HTMLButtonElement): void {
    const id = b.getAttribute('aria-controls');
    const more = id === null ? null : document.getElementById(id);
    if (more === null) return;
    more.hidden = !more.hidden;
    b.setAttribute('aria-expanded', String(!more.hidden));
    b.textContent = more.hidden ? (b.dataset.expand ?? 'show') : 'hide';
  }
}

/** Fold line `b` (newer) into `a` if it continues it. */
function joinLines(a: FeedLine, b: FeedLine): boolean {
  if (!a.joinable || !b.joinable) return false;
  if (a.type !== b.type || a.vm !== b.vm || b.firstSeq !== a.lastSeq + 1) return false;
  const probe = { ...a, pasids: [...a.pasids] };
  if (!join(probe, b.event)) return false;
  // `b` may itself hold several joined events: take them all.
  a.pasids.push(...b.pasids);
  a.lastSeq = b.lastSeq;
  a.lastAt = b.lastAt;
  a.events += b.events;
  return true;
}
