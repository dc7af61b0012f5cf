/**
 * The VMs table: each VM's PASIDs against its quota (a bar and the numbers), its vIOMMUs (segment,
 * register layout, range extension; each opens the register inspector), its devices and its
 * bindings. The structure comes from `GET /v1/vms`; the used counts follow the live map.
 */
import type { VmInfo } from '../src/client/index.ts';
import { fill, h, hex, swatch } from './dom.ts';
import type { NamespaceModel } from './model.ts';

export interface VmTableOptions {
  readonly onInspect: (vm: string, segment: number) => void;
  readonly onPasid: (pasid: number) => void;
  /** Frame a VM's PASIDs on the map (as pressing it in the legend does). */
  readonly onShow: (vm: string) => void;
}

const MAX_BINDINGS_SHOWN = 8;

export class VmTable {
  readonly #body: HTMLTableSectionElement;
  readonly #summary: HTMLElement;
  readonly #model: NamespaceModel;
  readonly #opts: VmTableOptions;
  #vms: readonly VmInfo[] = [];
  readonly #usedCells = new Map<string, { text: HTMLElement; bar: HTMLElement; quota: number }>();

  constructor(body: HTMLTableSectionElement, summary: HTMLElement, model: NamespaceModel, opts: VmTableOptions) {
    this.#body = body;
    this.#summary = summary;
    this.#model = model;
    this.#opts = opts;
  }

  get vms(): readonly VmInfo[] {
    return this.#vms;
  }

  render(vms: readonly VmInfo[]): void {
    this.#vms = vms;
    this.#usedCells.clear();
    if (vms.length === 0) {
      fill(this.#body, h('tr', {}, h('td', { colspan: 5, class: 'empty' }, 'No VMs yet. Create one with POST /v1/vms (or `ioasid` client commands).')));
    } else {
      fill(this.#body, vms.map((vm) => this.#row(vm)));
    }
    this.updateUsed();
  }

  #row(vm: VmInfo): HTMLTableRowElement {
    const owner = this.#model.owner(vm.id);
    const text = h('span', { class: 'num' });
    const bar = h('span', { class: 'bar-fill' });
    this.#usedCells.set(vm.id, { text, bar, quota: vm.quota });
    const viommus = vm.viommus.length === 0
      ? h('span', { class: 'muted' }, 'none')
      : h('ul', { class: 'plain' }, vm.viommus.map((v) => h('li', {},
        h('button', { type: 'button', class: 'link', 'data-vm': vm.id, 'data-segment': v.segment, title: `Inspect the VCMD registers of ${vm.id}'s vIOMMU on segment ${v.segment}` },
          `segment ${v.segment}`),
        ` · layout ${v.layout} (${v.layout === 'A' ? 'VT-d 3.0/3.1' : 'VT-d 3.3+'})${v.rangeExtension ? ' · range extension' : ''}`)));
    const devices = vm.devices.length === 0
      ? h('span', { class: 'muted' }, 'none')
      : h('ul', { class: 'plain' }, vm.devices.map((d) => h('li', {}, h('code', {}, d.bdf), ` · seg ${d.segment} · ${d.pasidBits}-bit PASIDs`)));
    const shown = vm.bindings.slice(0, MAX_BINDINGS_SHOWN);
    const bindings = vm.bindings.length === 0
      ? h('span', { class: 'muted' }, 'none')
      : h('ul', { class: 'plain' },
        shown.map((b) => h('li', {}, h('code', {}, b.bdf), ' → ', h('button', { type: 'button', class: 'link', 'data-pasid': b.pasid, title: `Details of PASID ${b.pasid}` }, hex(b.pasid)))),
        vm.bindings.length > shown.length ? h('li', { class: 'muted' }, `and ${vm.bindings.length - shown.length} more`) : null);
    const row = h('tr', { 'data-vm': vm.id },
      h('th', { scope: 'row' }, swatch(owner.css, owner.pattern), ' ',
        h('button', { type: 'button', class: 'link vm-link', 'data-show': vm.id, 'aria-label': `Show ${vm.id}'s PASIDs on the map` }, vm.id)),
      h('td', {}, h('span', { class: 'bar', 'aria-hidden': 'true' }, bar), text),
      h('td', {}, viommus),
      h('td', {}, devices),
      h('td', { class: 'bindings' }, bindings));
    row.addEventListener('click', (ev) => {
      const t = ev.target;
      if (!(t instanceof HTMLButtonElement)) return;
      if (t.dataset.show !== undefined) this.#opts.onShow(t.dataset.show);
      else if (t.dataset.pasid !== undefined) this.#opts.onPasid(Number(t.dataset.pasid));
      else if (t.dataset.segment !== undefined && t.dataset.vm !== undefined) this.#opts.onInspect(t.dataset.vm, Number(t.dataset.segment));
    });
    return row;
  }

  /** Refresh the used counts and bars from the live map. */
  updateUsed(): void {
    let total = 0;
    for (const [id, c] of this.#usedCells) {
      const used = this.#model.owner(id).count;
      total += used;
      c.text.textContent = c.quota > 0 ? `${used.toLocaleString('en')} / ${c.quota.toLocaleString('en')}` : `${used.toLocaleString('en')} (no quota)`;
      const frac = c.quota > 0 ? Math.min(1, used / c.quota) : 0;
      c.bar.style.width = `${(frac * 100).toFixed(1)}%`;
      c.bar.classList.toggle('full', c.quota > 0 && used >= c.quota);
    }
    this.#summary.textContent = `${this.#vms.length} VM${this.#vms.length === 1 ? '' : 's'} holding ${total.toLocaleString('en')} PASIDs`;
  }
}
