/**
 * The integrity rules of every mutation, written once and run by every backend against its own
 * tables (`StateTx`), so the backends agree by construction and the memory backend is the
 * reference. They keep the rows consistent (keys unique, references to existing rows, no row
 * deleted while another refers to it, token hashes unique); the domain rules (quotas, ownership,
 * what may be freed or bound) are the host model's, checked before a change reaches the store.
 * A rule that fails throws an `IoasidError`; the backend then undoes the whole batch.
 *
 *  putVm         create or replace; its token hash is no other VM's (EEXIST)
 *  setTokenHash  the VM exists (ENOENT); the hash is no other VM's (EEXIST)
 *  deleteVm      must exist (ENOENT); no vIOMMU, device or PASID refers to it (EBUSY)
 *  putViommu     its VM exists (ENOENT); create or replace (the saved registers with it)
 *  setRegisters  the vIOMMU exists (ENOENT)
 *  deleteViommu  must exist (ENOENT); no device sits on it (EBUSY)
 *  putDevice     its VM and the vIOMMU of its segment exist (ENOENT); create or replace
 *  deleteDevice  must exist (ENOENT); no binding refers to it (EBUSY)
 *  insertPasid   create-if-absent (EEXIST); its owner VM, if any, exists (ENOENT)
 *  deletePasid   the PASID with that owner must exist (ENOENT); no binding refers to it (EBUSY)
 *  putBinding    the PASID with the binding's VM as owner exists, and the device in that VM
 *                (ENOENT); create or replace
 *  deleteBinding must exist (ENOENT)
 *  putMeta       create or replace (reserved `store.*` keys: EPERM, checked in row-check.ts)
 *  deleteMeta    must exist (ENOENT)
 *  appendEvents  the events get the next sequence numbers (the backend numbers them)
 */
import { IoasidError, fmtId } from '../core/index.ts';
import type { ErrorDetails, IoasidErrorCode } from '../core/index.ts';
import type { BindingRow, DeviceRow, MetaRow, Mutation, NewEventRow, PasidRow, ViommuRow, VmRow } from './rows.ts';

/** What the rules need of a backend's tables, inside its open transaction. Synchronous. */
export interface StateTx {
  getVm(id: string): VmRow | undefined;
  getViommu(vm: string, segment: number): ViommuRow | undefined;
  getDevice(vm: string, bdf: string): DeviceRow | undefined;
  getPasid(pasid: number): PasidRow | undefined;
  getBinding(pasid: number, bdf: string): BindingRow | undefined;
  getMeta(key: string): MetaRow | undefined;
  /** The VM, other than `except`, whose token hash this is. */
  vmWithTokenHash(hash: string, except: string): string | undefined;
  countPasidsOf(vm: string): number;
  hasViommusOf(vm: string): boolean;
  hasDevicesOf(vm: string): boolean;
  hasDevicesOn(vm: string, segment: number): boolean;
  isDeviceBound(vm: string, bdf: string): boolean;
  isPasidBound(pasid: number): boolean;

  putVm(row: VmRow): void;
  deleteVm(id: string): void;
  putViommu(row: ViommuRow): void;
  setRegisters(vm: string, segment: number, registers: string): void;
  deleteViommu(vm: string, segment: number): void;
  putDevice(row: DeviceRow): void;
  deleteDevice(vm: string, bdf: string): void;
  insertPasid(row: PasidRow): void;
  deletePasid(pasid: number): void;
  putBinding(row: BindingRow): void;
  deleteBinding(pasid: number, bdf: string): void;
  putMeta(row: MetaRow): void;
  deleteMeta(key: string): void;
  appendEvents(events: readonly NewEventRow[]): void;
}

function refuse(code: IoasidErrorCode, m: Mutation, index: number, reason: string, details: ErrorDetails): IoasidError {
  return new IoasidError(code, `batch[${index}] ${m.op}: ${reason}`, { index, op: m.op, ...details });
}

const q = (s: string) => JSON.stringify(s);

/** Check one (already shape-checked) mutation against the current tables and apply it. */
export function applyMutation(tx: StateTx, m: Mutation, index: number): void {
  switch (m.op) {
    case 'putVm': {
      const { id, tokenHash } = m.row;
      const other = tx.vmWithTokenHash(tokenHash, id);
      if (other !== undefined) throw refuse('EEXIST', m, index, `VM ${q(other)} already has this token hash`, { vm: id, other });
      tx.putVm(m.row);
      return;
    }
    case 'setTokenHash': {
      const { vm, tokenHash } = m;
      const row = tx.getVm(vm);
      if (row === undefined) throw refuse('ENOENT', m, index, `VM ${q(vm)} does not exist`, { vm });
      const other = tx.vmWithTokenHash(tokenHash, vm);
      if (other !== undefined) throw refuse('EEXIST', m, index, `VM ${q(other)} already has this token hash`, { vm, other });
      tx.putVm({ ...row, tokenHash });
      return;
    }
    case 'deleteVm': {
      const { id } = m;
      if (tx.getVm(id) === undefined) throw refuse('ENOENT', m, index, `VM ${q(id)} does not exist`, { vm: id });
      const held = tx.countPasidsOf(id);
      if (held > 0) throw refuse('EBUSY', m, index, `VM ${q(id)} still owns ${held} PASID rows`, { vm: id, held });
      if (tx.hasDevicesOf(id)) throw refuse('EBUSY', m, index, `VM ${q(id)} still has device rows`, { vm: id });
      if (tx.hasViommusOf(id)) throw refuse('EBUSY', m, index, `VM ${q(id)} still has vIOMMU rows`, { vm: id });
      tx.deleteVm(id);
      return;
    }
    case 'putViommu': {
      const { vm, segment } = m.row;
      if (tx.getVm(vm) === undefined) throw refuse('ENOENT', m, index, `VM ${q(vm)} does not exist`, { vm, segment });
      tx.putViommu(m.row);
      return;
    }
    case 'setRegisters': {
      const { vm, segment } = m;
      if (tx.getViommu(vm, segment) === undefined) throw refuse('ENOENT', m, index, `VM ${q(vm)} has no vIOMMU on segment ${segment}`, { vm, segment });
      tx.setRegisters(vm, segment, m.registers);
      return;
    }
    case 'deleteViommu': {
      const { vm, segment } = m;
      if (tx.getViommu(vm, segment) === undefined) {
        throw refuse('ENOENT', m, index, `VM ${q(vm)} has no vIOMMU on segment ${segment}`, { vm, segment });
      }
      if (tx.hasDevicesOn(vm, segment)) {
        throw refuse('EBUSY', m, index, `VM ${q(vm)} still has devices on segment ${segment}`, { vm, segment });
      }
      tx.deleteViommu(vm, segment);
      return;
    }
    case 'putDevice': {
      const { vm, bdf, segment } = m.row;
      if (tx.getVm(vm) === undefined) throw refuse('ENOENT', m, index, `VM ${q(vm)} does not exist`, { vm, bdf });
      if (tx.getViommu(vm, segment) === undefined) {
        throw refuse('ENOENT', m, index, `VM ${q(vm)} has no vIOMMU on segment ${segment}`, { vm, bdf, segment });
      }
      tx.putDevice(m.row);
      return;
    }
    case 'deleteDevice': {
      const { vm, bdf } = m;
      if (tx.getDevice(vm, bdf) === undefined) throw refuse('ENOENT', m, index, `VM ${q(vm)} has no device ${bdf}`, { vm, bdf });
      if (tx.isDeviceBound(vm, bdf)) throw refuse('EBUSY', m, index, `device ${bdf} of VM ${q(vm)} is still bound`, { vm, bdf });
      tx.deleteDevice(vm, bdf);
      return;
    }
    case 'insertPasid': {
      const { pasid, vm } = m.row;
      const have = tx.getPasid(pasid);
      if (have !== undefined) {
        throw refuse('EEXIST', m, index, `PASID ${fmtId(pasid)} already exists`, { pasid, owner: have.vm });
      }
      if (vm !== null && tx.getVm(vm) === undefined) throw refuse('ENOENT', m, index, `VM ${q(vm)} does not exist`, { pasid, vm });
      tx.insertPasid(m.row);
      return;
    }
    case 'deletePasid': {
      const { pasid, vm } = m;
      const have = tx.getPasid(pasid);
      if (have === undefined || have.vm !== vm) {
        const who = vm === null ? 'the host' : `VM ${q(vm)}`;
        throw refuse('ENOENT', m, index, `no PASID ${fmtId(pasid)} of ${who}`, { pasid, vm, owner: have?.vm ?? null });
      }
      if (tx.isPasidBound(pasid)) throw refuse('EBUSY', m, index, `PASID ${fmtId(pasid)} is still bound`, { pasid, vm });
      tx.deletePasid(pasid);
      return;
    }
    case 'putBinding': {
      const { pasid, vm, bdf } = m.row;
      const have = tx.getPasid(pasid);
      if (have === undefined || have.vm !== vm) throw refuse('ENOENT', m, index, `no PASID ${fmtId(pasid)} of VM ${q(vm)}`, { pasid, vm, bdf, owner: have?.vm ?? null });
      if (tx.getDevice(vm, bdf) === undefined) throw refuse('ENOENT', m, index, `VM ${q(vm)} has no device ${bdf}`, { pasid, vm, bdf });
      tx.putBinding(m.row);
      return;
    }
    case 'deleteBinding': {
      const { pasid, bdf } = m;
      if (tx.getBinding(pasid, bdf) === undefined) {
        throw refuse('ENOENT', m, index, `device ${bdf} is not bound to PASID ${fmtId(pasid)}`, { pasid, bdf });
      }
      tx.deleteBinding(pasid, bdf);
      return;
    }
    case 'putMeta':
      tx.putMeta(m.row);
      return;
    case 'deleteMeta': {
      if (tx.getMeta(m.key) === undefined) throw refuse('ENOENT', m, index, `meta key ${q(m.key)} does not exist`, { key: m.key });
      tx.deleteMeta(m.key);
      return;
    }
    case 'appendEvents':
      tx.appendEvents(m.events);
      return;
  }
}
