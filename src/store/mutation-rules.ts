/**
 * The rules of every mutation, written once and run by every backend against its own tables
 * (`StateTx`), so the backends agree by construction and the memory backend is the reference.
 * A rule that fails throws an `IoasidError`; the backend then undoes the whole batch.
 *
 *  putVm         create or replace; lowering the quota below the PASIDs held: EDQUOT
 *  deleteVm      VM must exist (ENOENT) and hold no PASID (EBUSY); its devices and vIOMMUs go
 *                with it (they cannot be bound: a binding needs a PASID of the VM)
 *  putViommu     VM must exist (ENOENT); create or replace
 *  deleteViommu  must exist (ENOENT); no device of the VM on that segment (EBUSY)
 *  putDevice     VM and the vIOMMU of the device's segment must exist (ENOENT); create or replace
 *  deleteDevice  must exist (ENOENT); not bound to any PASID (EBUSY)
 *  insertPasid   create-if-absent: EEXIST if the PASID exists; owner VM must exist (ENOENT);
 *                the owner's quota (0 = unlimited) must allow one more (EDQUOT)
 *  deletePasid   must exist (ENOENT) and belong to `vm` (null = host) (EACCES); not bound (EBUSY)
 *  putBinding    PASID must exist (ENOENT) and be owned by the binding's VM (EACCES); the device
 *                must exist in that VM (ENOENT); create or replace
 *  deleteBinding must exist (ENOENT)
 *  putMeta       create or replace (reserved `store.*` keys: EPERM, checked in row-check.ts)
 *  deleteMeta    must exist (ENOENT)
 */
import { IoasidError, fmtId } from '../core/index.ts';
import type { ErrorDetails, IoasidErrorCode } from '../core/index.ts';
import type { BindingRow, DeviceRow, MetaRow, Mutation, PasidRow, ViommuRow, VmRow } from './rows.ts';

/** What the rules need of a backend's tables, inside its open transaction. Synchronous. */
export interface StateTx {
  getVm(id: string): VmRow | undefined;
  getViommu(vm: string, segment: number): ViommuRow | undefined;
  getDevice(vm: string, bdf: string): DeviceRow | undefined;
  getPasid(pasid: number): PasidRow | undefined;
  getBinding(pasid: number, bdf: string): BindingRow | undefined;
  getMeta(key: string): MetaRow | undefined;
  countPasidsOf(vm: string): number;
  viommusOf(vm: string): ViommuRow[];
  devicesOf(vm: string): DeviceRow[];
  hasDevicesOn(vm: string, segment: number): boolean;
  isDeviceBound(vm: string, bdf: string): boolean;
  isPasidBound(pasid: number): boolean;

  putVm(row: VmRow): void;
  deleteVm(id: string): void;
  putViommu(row: ViommuRow): void;
  deleteViommu(vm: string, segment: number): void;
  putDevice(row: DeviceRow): void;
  deleteDevice(vm: string, bdf: string): void;
  insertPasid(row: PasidRow): void;
  deletePasid(pasid: number): void;
  putBinding(row: BindingRow): void;
  deleteBinding(pasid: number, bdf: string): void;
  putMeta(row: MetaRow): void;
  deleteMeta(key: string): void;
}

function refuse(code: IoasidErrorCode, m: Mutation, index: number, reason: string, details: ErrorDetails): IoasidError {
  return new IoasidError(code, `batch[${index}] ${m.op}: ${reason}`, { index, op: m.op, ...details });
}

const q = (s: string) => JSON.stringify(s);

/** Check one (already shape-checked) mutation against the current tables and apply it. */
export function applyMutation(tx: StateTx, m: Mutation, index: number): void {
  switch (m.op) {
    case 'putVm': {
      const { id, quota } = m.row;
      const held = tx.countPasidsOf(id);
      if (quota !== 0 && held > quota) {
        throw refuse('EDQUOT', m, index, `VM ${q(id)} holds ${held} PASIDs, more than the new quota ${quota}`, { vm: id, held, quota });
      }
      tx.putVm(m.row);
      return;
    }
    case 'deleteVm': {
      const { id } = m;
      if (tx.getVm(id) === undefined) throw refuse('ENOENT', m, index, `VM ${q(id)} does not exist`, { vm: id });
      const held = tx.countPasidsOf(id);
      if (held > 0) throw refuse('EBUSY', m, index, `VM ${q(id)} still holds ${held} PASIDs`, { vm: id, held });
      for (const d of tx.devicesOf(id)) {
        if (tx.isDeviceBound(d.vm, d.bdf)) {
          throw refuse('EBUSY', m, index, `device ${d.bdf} of VM ${q(id)} is still bound`, { vm: id, bdf: d.bdf });
        }
        tx.deleteDevice(d.vm, d.bdf);
      }
      for (const v of tx.viommusOf(id)) tx.deleteViommu(v.vm, v.segment);
      tx.deleteVm(id);
      return;
    }
    case 'putViommu': {
      const { vm, segment } = m.row;
      if (tx.getVm(vm) === undefined) throw refuse('ENOENT', m, index, `VM ${q(vm)} does not exist`, { vm, segment });
      tx.putViommu(m.row);
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
      if (vm !== null) {
        const v = tx.getVm(vm);
        if (v === undefined) throw refuse('ENOENT', m, index, `VM ${q(vm)} does not exist`, { pasid, vm });
        if (v.quota !== 0) {
          const held = tx.countPasidsOf(vm);
          if (held >= v.quota) {
            throw refuse('EDQUOT', m, index, `VM ${q(vm)} already holds its quota of ${v.quota} PASIDs`, { pasid, vm, held, quota: v.quota });
          }
        }
      }
      tx.insertPasid(m.row);
      return;
    }
    case 'deletePasid': {
      const { pasid, vm } = m;
      const have = tx.getPasid(pasid);
      if (have === undefined) throw refuse('ENOENT', m, index, `PASID ${fmtId(pasid)} does not exist`, { pasid, vm });
      if (have.vm !== vm) {
        const who = (o: string | null) => (o === null ? 'the host' : `VM ${q(o)}`);
        throw refuse('EACCES', m, index, `PASID ${fmtId(pasid)} belongs to ${who(have.vm)}, not to ${who(vm)}`, { pasid, vm, owner: have.vm });
      }
      if (tx.isPasidBound(pasid)) throw refuse('EBUSY', m, index, `PASID ${fmtId(pasid)} is still bound`, { pasid, vm });
      tx.deletePasid(pasid);
      return;
    }
    case 'putBinding': {
      const { pasid, vm, bdf } = m.row;
      const have = tx.getPasid(pasid);
      if (have === undefined) throw refuse('ENOENT', m, index, `PASID ${fmtId(pasid)} does not exist`, { pasid, vm, bdf });
      if (have.vm !== vm) {
        throw refuse('EACCES', m, index, `PASID ${fmtId(pasid)} is not owned by VM ${q(vm)}`, { pasid, vm, bdf, owner: have.vm });
      }
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
  }
}
