/**
 * The register inspector of one vIOMMU: VCCAP, VCMD (and VCMD_EO in layout B) and VCRSP decoded
 * field by field with the spec's names, bit ranges and meanings, and the device's recent
 * commands. The raw values come from `GET .../registers` and the device configuration (layout,
 * PAS bit position) from `GET .../viommus/:segment`; decoding is `src/vtd`'s own tables, bundled
 * into the page, so the page and the device model can never disagree about a bit.
 */
import type { IoasidClient, RegistersView, ViommuView } from '../src/client/index.ts';
import {
  commandName, decodeRangedAllocate, decodeVccap, decodeVcmd, decodeVcrsp, getField, registerMap, registerSpec, statusName,
  type RegisterMap, type RegisterName, type VcmdLogEntry,
} from '../src/vtd/index.ts';
import { fill, fmtTime, h, hex } from './dom.ts';

const hex64 = (v: bigint) => `0x${v.toString(16).padStart(16, '0')}`;
const yes = (b: boolean) => (b ? 'yes' : 'no');

export class RegisterInspector {
  readonly #vmSelect: HTMLSelectElement;
  readonly #segSelect: HTMLSelectElement;
  readonly #out: HTMLElement;
  readonly #status: HTMLElement;
  #client: IoasidClient | null = null;
  #vms: readonly { id: string; viommus: readonly { segment: number }[] }[] = [];
  #loading = 0;

  constructor(form: HTMLFormElement, vmSelect: HTMLSelectElement, segSelect: HTMLSelectElement, out: HTMLElement, status: HTMLElement) {
    this.#vmSelect = vmSelect;
    this.#segSelect = segSelect;
    this.#out = out;
    this.#status = status;
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      void this.refresh();
    });
    vmSelect.addEventListener('change', () => {
      this.#fillSegments();
      void this.refresh();
    });
    segSelect.addEventListener('change', () => void this.refresh());
  }

  setClient(c: IoasidClient | null): void {
    this.#client = c;
  }

  /** The VM currently inspected (null: none). */
  get vm(): string | null {
    return this.#vmSelect.value === '' ? null : this.#vmSelect.value;
  }

  /** Update the VM and segment choices (keeps the selection when it still exists). */
  setVms(vms: readonly { id: string; viommus: readonly { segment: number }[] }[]): void {
    this.#vms = vms.filter((v) => v.viommus.length > 0);
    const keep = this.#vmSelect.value;
    fill(this.#vmSelect, h('option', { value: '' }, '(choose a VM)'), this.#vms.map((v) => h('option', { value: v.id }, v.id)));
    if (this.#vms.some((v) => v.id === keep)) this.#vmSelect.value = keep;
    this.#fillSegments();
  }

  #fillSegments(): void {
    const vm = this.#vms.find((v) => v.id === this.#vmSelect.value);
    const keep = this.#segSelect.value;
    fill(this.#segSelect, (vm?.viommus ?? []).map((v) => h('option', { value: v.segment }, `segment ${v.segment}`)));
    if (vm?.viommus.some((v) => String(v.segment) === keep)) this.#segSelect.value = keep;
    this.#segSelect.disabled = vm === undefined;
  }

  /** Show one vIOMMU (selects it and loads its registers). */
  async show(vm: string, segment: number): Promise<void> {
    this.#vmSelect.value = vm;
    this.#fillSegments();
    this.#segSelect.value = String(segment);
    await this.refresh();
  }

  async refresh(): Promise<void> {
    const vm = this.vm;
    const client = this.#client;
    if (vm === null || client === null || this.#segSelect.value === '') {
      fill(this.#out, h('p', { class: 'muted' }, 'Choose a VM and one of its vIOMMUs to read its VCMD registers.'));
      return;
    }
    const segment = Number(this.#segSelect.value);
    const ticket = ++this.#loading;
    this.#status.textContent = `Reading the registers of ${vm}, segment ${segment}…`;
    try {
      const [cfg, regs] = await Promise.all([client.getViommu(vm, segment), client.registers(vm, segment)]);
      if (ticket !== this.#loading) return;
      this.#render(vm, cfg, regs);
      this.#status.textContent = `Registers of ${vm}, segment ${segment}, read at ${fmtTime(Date.now())}.`;
    } catch (e) {
      if (ticket !== this.#loading) return;
      this.#status.textContent = `Could not read the registers of ${vm}, segment ${segment}: ${e instanceof Error ? e.message : String(e)}`;
    }
  }

  #render(vm: string, v: ViommuView, regs: RegistersView): void {
    const map = registerMap(v.config.layout, v.config.pasBit);
    const raw = (name: RegisterName): bigint => BigInt(regs.values[name] ?? '0x0');
    const recent = regs.recent as unknown as readonly VcmdLogEntry[];
    const lastCmd = recent.at(-1)?.cmd ?? 0;
    const vccap = raw('VCCAP_REG');
    const caps = decodeVccap(map, vccap);
    const vcmd = decodeVcmd(map, raw('VCMD_REG'));
    const rsp = decodeVcrsp(map, raw('VCRSP_REG'));
    const names: RegisterName[] = ['VCCAP_REG', 'VCMD_REG', ...(map.layout === 'B' ? (['VCMD_EO_REG'] as const) : []), 'VCRSP_REG'];
    const meaning: Partial<Record<RegisterName, string>> = {
      VCCAP_REG: `Allocate PASID: ${yes(caps.allocate)} · Free PASID: ${yes(caps.free)} · Null command: ${yes(caps.nullCommand)} · range extension: ${yes(caps.rangeExtension)}`,
      VCMD_REG: `last command ${vcmd.cmd} (${commandName(vcmd.cmd)}), PASID operand ${hex(vcmd.pasid)}${caps.rangeExtension && vcmd.cmd === 1 ? rangeText(map, raw('VCMD_REG'), raw('VCMD_EO_REG')) : ''}`,
      VCRSP_REG: `${rsp.ip ? 'in progress' : 'idle'} · status ${rsp.sc} (${statusName(map, lastCmd, rsp.sc)})${!rsp.ip && rsp.sc === 0 && lastCmd === 1 ? ` · allocated PASID ${hex(rsp.pasid)}` : ''}`,
    };
    fill(this.#out,
      h('p', { class: 'reg-summary' },
        `${vm}, segment ${v.segment}: layout ${map.layout} (${map.layout === 'A' ? 'VT-d 3.0/3.1' : 'VT-d 3.3 and later'}), VCCAP.PAS at bit ${map.pasBit} (${map.pasBit === 0 ? 'as Linux' : 'as spec Rev 5.10'}), PASIDs of ${v.config.pss + 1} bits.`),
      names.map((name) => regTable(map, name, raw(name), meaning[name])),
      h('h3', {}, 'Recent commands'),
      recent.length === 0 ? h('p', { class: 'muted' }, 'No commands yet.') : commandsTable(map, recent));
  }
}

function rangeText(map: RegisterMap, vcmd: bigint, vcmdEo: bigint): string {
  const r = decodeRangedAllocate(map, vcmd, vcmdEo);
  return `, range [${hex(r.min)}, ${hex(r.max)}]`;
}

function regTable(map: RegisterMap, name: RegisterName, value: bigint, meaning: string | undefined): HTMLElement {
  const spec = registerSpec(map, name);
  return h('table', { class: 'regs', 'data-register': name },
    h('caption', {},
      h('strong', {}, name), ` at offset ${hex(spec.offset)} = `, h('code', { class: 'raw' }, hex64(value)),
      h('span', { class: 'muted' }, ` — ${spec.description}`),
      meaning !== undefined ? h('span', { class: 'meaning' }, meaning) : null),
    h('thead', {}, h('tr', {}, ['Field', 'Bits', 'Access', 'Value', 'Meaning'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, [...spec.fields].sort((a, b) => b.hi - a.hi).map((f) => {
      const v = getField(f, value);
      return h('tr', { 'data-field': f.name },
        h('th', { scope: 'row' }, f.name),
        h('td', { class: 'num' }, f.hi === f.lo ? String(f.lo) : `${f.hi}:${f.lo}`),
        h('td', {}, f.access),
        h('td', { class: 'num' }, h('code', {}, v > 9n ? `0x${v.toString(16)}` : v.toString())),
        h('td', {}, f.description));
    })));
}

function commandsTable(map: RegisterMap, recent: readonly VcmdLogEntry[]): HTMLElement {
  return h('table', { class: 'commands' },
    h('thead', {}, h('tr', {}, ['#', 'Command', 'Operand', 'Range', 'Status', 'Result', 'Issued', 'Completed', 'Error'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, [...recent].reverse().map((c) => h('tr', {},
      h('td', { class: 'num' }, String(c.seq)),
      h('td', {}, c.command),
      h('td', { class: 'num' }, c.operand === null ? '—' : hex(c.operand)),
      h('td', { class: 'num' }, c.range === null ? '—' : `${hex(c.range.min)}–${hex(c.range.max)}`),
      h('td', {}, c.status === null ? 'in progress' : `${c.status} (${c.statusName ?? statusName(map, c.cmd, c.status)})`),
      h('td', { class: 'num' }, c.result === null ? '—' : hex(c.result)),
      h('td', {}, fmtStamp(c.issuedAt)),
      h('td', {}, c.completedAt === null ? '—' : fmtStamp(c.completedAt)),
      h('td', {}, c.error ?? '')))));
}

/** Device log stamps come from the service's clock (ms since the epoch). */
function fmtStamp(t: number): string {
  return t > 1e11 ? fmtTime(t) : String(t);
}
