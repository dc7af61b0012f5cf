/**
 * Events on the wire: the journal's events are the contract's (`src/api` EVENT) as they are; this
 * tells which ones concern one PASID (a PASID's history).
 */
import type { HostEventRecord } from '../host/index.ts';

/** Whether an event concerns one PASID (its allocation, free, binding or unbinding, its VM's end). */
export function eventHasPasid(e: HostEventRecord, pasid: number): boolean {
  switch (e.type) {
    case 'alloc':
    case 'free':
      return e.pasids.includes(pasid);
    case 'bind':
    case 'unbind':
      return e.pasid === pasid;
    case 'vm-destroyed':
      return e.freed.includes(pasid);
    default:
      return false;
  }
}
