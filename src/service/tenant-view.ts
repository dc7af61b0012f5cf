/**
 * What a VM token is told about PASIDs it does not hold (docs/security.md, docs/decisions.md).
 *
 * The host model keeps the kernel's ownership rule (`ioasid_find` through a set: ENOENT when nobody
 * holds the ID, EACCES when another set does), and the admin sees it as such (404 / 403). Seen
 * through a VM's own path, that difference is an oracle: without allocating anything, quota-free
 * and side-effect-free, a tenant could map which PASIDs the other tenants hold. So in a VM token's
 * view, a PASID that is not the VM's own is not found (404 ENOENT, one message), whether it is
 * free, another VM's or the host's; the same goes for the error text of a guest's Free command in
 * the vIOMMU's command log, whose status register already says "invalid PASID" for both.
 */
import { IoasidError, fmtId } from '../core/index.ts';
import type { OperationId } from '../api/index.ts';

/** The operations that name a PASID on a VM's path. */
const PASID_OPS: ReadonlySet<OperationId> = new Set<OperationId>(['getVmPasid', 'freePasid', 'bind', 'unbind']);

function notHeld(vm: string, pasid: number): string {
  return `VM ${vm} holds no PASID ${fmtId(pasid)}`;
}

/** The error a VM's own token gets for `e`: ownership refusals of a PASID become one ENOENT. */
export function tenantError(op: OperationId, vm: string, e: IoasidError): IoasidError {
  if (!PASID_OPS.has(op) || (e.code !== 'EACCES' && e.code !== 'ENOENT')) return e;
  const pasid = e.details.pasid;
  // A refusal about a device (`bdf`) is about the VM's own devices: it tells nothing of others.
  if (typeof pasid !== 'number' || e.details.bdf !== undefined) return e;
  return new IoasidError('ENOENT', notHeld(vm, pasid), { vm, pasid });
}

interface LogEntry {
  readonly command: string;
  readonly operand: number | null;
  readonly error: string | null;
}

/** The register view a VM's own token gets: a refused Free reads the same whoever held the PASID. */
export function tenantRegisters<R extends { readonly recent: readonly LogEntry[] }>(vm: string, view: R): R {
  if (!view.recent.some((e) => isOwnershipRefusal(e))) return view;
  return {
    ...view,
    recent: view.recent.map((e) => (isOwnershipRefusal(e) ? { ...e, error: `ENOENT: ${notHeld(vm, e.operand as number)}` } : e)),
  };
}

function isOwnershipRefusal(e: LogEntry): boolean {
  return e.command === 'Free PASID' && e.operand !== null && e.error !== null && /^(EACCES|ENOENT): /.test(e.error);
}
