/**
 * The PASID detail view: owner, bound devices and history (`GET /v1/pasids/:pasid`), refreshed
 * when an event about that PASID arrives, and a button that brings it into view on the map. A
 * free PASID with no history is reported as such.
 */
import type { IoasidClient, PasidInfo } from '../src/client/index.ts';
import { describeEvent, toPageEvent } from './events.ts';
import { errorCode, fill, fmtPasid, fmtTime, h, swatch, throttle } from './dom.ts';
import type { NamespaceModel } from './model.ts';

export class PasidDetail {
  readonly #panel: HTMLElement;
  readonly #title: HTMLElement;
  readonly #body: HTMLElement;
  readonly #model: NamespaceModel;
  #client: IoasidClient | null = null;
  #pasid: number | null = null;
  #ticket = 0;
  readonly #later = throttle(() => void this.refresh(), 250);

  constructor(panel: HTMLElement, title: HTMLElement, body: HTMLElement, close: HTMLButtonElement, model: NamespaceModel, onShow: (pasid: number) => void) {
    this.#panel = panel;
    this.#title = title;
    this.#body = body;
    this.#model = model;
    close.addEventListener('click', () => this.close());
    body.addEventListener('click', (ev) => {
      const b = (ev.target as Element).closest('button');
      if (b?.dataset.showPasid !== undefined) onShow(Number(b.dataset.showPasid));
    });
  }

  setClient(c: IoasidClient | null): void {
    this.#client = c;
  }

  get pasid(): number | null {
    return this.#pasid;
  }

  async open(pasid: number): Promise<void> {
    this.#pasid = pasid;
    this.#panel.hidden = false;
    this.#title.textContent = `PASID ${fmtPasid(pasid)}`;
    // What an earlier answer said must not pass for this one's.
    fill(this.#body, h('p', { class: 'muted' }, 'Loading…'));
    await this.refresh();
  }

  close(): void {
    this.#pasid = null;
    this.#panel.hidden = true;
  }

  /** An event touched these PASIDs: reload soon if one is shown. */
  touched(pasids: readonly number[]): void {
    if (this.#pasid !== null && pasids.includes(this.#pasid)) this.#later();
  }

  async refresh(): Promise<void> {
    const pasid = this.#pasid;
    const client = this.#client;
    if (pasid === null || client === null) return;
    const ticket = ++this.#ticket;
    let info: PasidInfo | null = null;
    let error: string | null = null;
    try {
      info = await client.getPasid(pasid);
    } catch (e) {
      if (errorCode(e) === 'ENOENT') info = null;
      else error = e instanceof Error ? e.message : String(e);
    }
    if (ticket !== this.#ticket || pasid !== this.#pasid) return;
    if (error !== null) {
      fill(this.#body, h('p', { class: 'error' }, `Could not load PASID ${pasid}: ${error}`));
      return;
    }
    const where = h('p', {}, h('button', { type: 'button', class: 'link', 'data-show-pasid': pasid }, 'Show it on the map'));
    if (info === null) {
      fill(this.#body, h('dl', {}, h('dt', {}, 'Owner'), h('dd', { 'data-owner': '' }, 'free')), h('p', {}, 'Not allocated, and no history since the service started.'), where);
      return;
    }
    const owner = info.owner === null ? null : this.#model.owner(info.owner);
    fill(this.#body,
      h('dl', {},
        h('dt', {}, 'Owner'),
        h('dd', { 'data-owner': info.owner ?? '' }, owner !== null ? [swatch(owner.css, owner.pattern), ' ', info.owner] : this.#model.cells[pasid] === 1 ? 'the host' : 'free'),
        h('dt', {}, 'Bindings'),
        h('dd', { 'data-bindings': info.bindings.join(' ') }, info.bindings.length === 0 ? 'none' : h('ul', { class: 'plain' }, info.bindings.map((b) => h('li', {}, h('code', {}, b)))))),
      where,
      h('h3', {}, 'History'),
      info.history.length === 0
        ? h('p', { class: 'muted' }, 'No events recorded.')
        : h('table', { class: 'history' },
          h('thead', {}, h('tr', {}, ['Seq', 'Time', 'Event', 'What'].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', {}, [...info.history].reverse().map(toPageEvent).map((e) => h('tr', {},
            h('td', { class: 'num' }, String(e.seq)),
            h('td', {}, fmtTime(e.at)),
            h('td', {}, e.type),
            h('td', {}, describeEvent(e)))))));
  }
}
