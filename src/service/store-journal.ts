/**
 * The service's journal: a host change committed as store rows, in one batch with its events. The
 * one mapping between the host's changes and the store's rows, both ways:
 *  - `toMutations(entry, at)`: an entry's events (and the credentials and registers that go with
 *    them) as the rows they create, replace or delete, then the events themselves;
 *  - `toHostState(state)`: the stored rows as the host model is rebuilt from them (the host checks
 *    every rule again while it does);
 *  - `eventRecord(row)`: a stored event as it was published.
 */
import { IoasidBugError, IoasidError, parseBdf } from '../core/index.ts';
import type { Committed, HostEvent, HostEventRecord, HostState, Journal, JournalEntry } from '../host/index.ts';
import { parseGuestState, type Layout, type PasBit } from '../vtd/index.ts';
import type { EventRow, Mutation, Store, StoredState } from '../store/index.ts';
import { failpoint, failpointsArmed } from './failpoints.ts';

export class StoreJournal implements Journal {
  readonly durable = true;
  readonly sync = false;
  readonly store: Store;
  readonly #now: () => number;

  constructor(store: Store, now: () => number = Date.now) {
    this.store = store;
    this.#now = now;
  }

  async commit(entry: JournalEntry): Promise<Committed> {
    const at = this.#now();
    // The failpoint names are built only when a failpoint is set (the crash tests).
    const what = failpointsArmed ? `${entry.registers !== undefined ? 'vcmd-' : ''}${entry.events[0]?.type ?? 'registers'}` : null;
    if (what !== null) failpoint(`before-commit:${what}`);
    const { seq } = await this.store.apply(toMutations(entry, at));
    if (what !== null) failpoint(`after-commit:${what}`);
    return { seq, at };
  }
}

/** The rows an entry writes, in order (children before parents go, parents before children come). */
export function toMutations(entry: JournalEntry, at: number): Mutation[] {
  const out: Mutation[] = [];
  for (const e of entry.events) {
    switch (e.type) {
      case 'vm-created': {
        const tokenHash = credentialOf(entry, e.vm);
        if (tokenHash === undefined) throw new IoasidBugError(`VM ${e.vm} was created without a token hash`, { vm: e.vm });
        out.push({ op: 'putVm', row: { id: e.vm, quota: e.quota, tokenHash, createdAt: at } });
        break;
      }
      case 'viommu-added':
        out.push({ op: 'putViommu', row: { vm: e.vm, segment: e.segment, layout: e.layout, rangeExtension: e.rangeExtension, pasBit: e.pasBit, pss: e.pss, registers: null } });
        break;
      case 'device-assigned':
        out.push({ op: 'putDevice', row: { vm: e.vm, bdf: e.bdf, segment: parseBdf(e.bdf).segment, pasidBits: e.pasidBits } });
        break;
      case 'alloc':
        for (const pasid of e.pasids) out.push({ op: 'insertPasid', row: { pasid, vm: e.vm, allocatedAt: at } });
        break;
      case 'free':
        for (const pasid of e.pasids) out.push({ op: 'deletePasid', pasid, vm: e.vm });
        break;
      case 'bind':
        out.push({ op: 'putBinding', row: { pasid: e.pasid, vm: e.vm, bdf: e.bdf, boundAt: at } });
        break;
      case 'unbind':
        out.push({ op: 'deleteBinding', pasid: e.pasid, bdf: e.bdf });
        break;
      case 'device-removed':
        out.push({ op: 'deleteDevice', vm: e.vm, bdf: e.bdf });
        break;
      case 'viommu-removed':
        out.push({ op: 'deleteViommu', vm: e.vm, segment: e.segment });
        break;
      case 'vm-destroyed':
        out.push({ op: 'deleteVm', id: e.vm });
        break;
      case 'credential-replaced': {
        const tokenHash = credentialOf(entry, e.vm);
        if (tokenHash === undefined) throw new IoasidBugError(`VM ${e.vm}'s token was replaced without a hash`, { vm: e.vm });
        out.push({ op: 'setTokenHash', vm: e.vm, tokenHash });
        break;
      }
      case 'quota-exhausted':
      case 'vm-migrated':
        break;
    }
  }
  const r = entry.registers;
  if (r !== undefined) out.push({ op: 'setRegisters', vm: r.vm, segment: r.segment, registers: JSON.stringify(r.state) });
  if (entry.events.length > 0) {
    out.push({ op: 'appendEvents', events: entry.events.map((e) => ({ at, type: e.type, vm: e.vm, body: JSON.stringify(e) })) });
  }
  return out;
}

function credentialOf(entry: JournalEntry, vm: string): string | undefined {
  return entry.credentials?.find((c) => c.vm === vm)?.credential;
}

/** The host model's view of the stored rows (`Host.restore` checks it by the host's rules). */
export function toHostState(s: StoredState): HostState {
  const group = <R extends { readonly vm: string | null }>(rows: readonly R[]): Map<string | null, R[]> => {
    const m = new Map<string | null, R[]>();
    for (const r of rows) {
      let list = m.get(r.vm);
      if (list === undefined) m.set(r.vm, (list = []));
      list.push(r);
    }
    return m;
  };
  const viommus = group(s.viommus);
  const devices = group(s.devices);
  const pasids = group(s.pasids);
  const bindings = group(s.bindings);
  return {
    hostPasids: (pasids.get(null) ?? []).map((p) => p.pasid),
    vms: s.vms.map((v) => ({
      id: v.id,
      quota: v.quota,
      credential: v.tokenHash,
      createdAt: v.createdAt,
      viommus: (viommus.get(v.id) ?? []).map((r) => ({
        segment: r.segment,
        layout: r.layout as Layout,
        rangeExtension: r.rangeExtension,
        pasBit: r.pasBit as PasBit,
        pss: r.pss,
        ...(r.registers !== null ? { registers: registersOf(r.registers, r.vm, r.segment) } : {}),
      })),
      devices: (devices.get(v.id) ?? []).map((d) => ({ bdf: d.bdf, pasidBits: d.pasidBits })),
      pasids: (pasids.get(v.id) ?? []).map((p) => p.pasid),
      bindings: (bindings.get(v.id) ?? []).map((b) => ({ bdf: b.bdf, pasid: b.pasid })),
    })),
  };
}

function registersOf(text: string, vm: string, segment: number) {
  try {
    return parseGuestState(JSON.parse(text));
  } catch (e) {
    throw new IoasidError('EINVAL', `stored registers of VM ${vm}'s vIOMMU on segment ${segment} are not valid: ${e instanceof Error ? e.message : String(e)}`, { vm, segment });
  }
}

/** A stored event as it was published. */
export function eventRecord(row: EventRow): HostEventRecord {
  const body = JSON.parse(row.body) as HostEvent;
  return { ...body, seq: row.seq, at: row.at };
}
