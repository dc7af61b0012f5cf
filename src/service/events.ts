/**
 * The one place where the model's events become the contract's (`src/api` EVENT): a sequence
 * number and a time are stamped on, and allocations and frees carry their PASIDs as a list (one
 * event per committed batch in the contract; the host model still reports one PASID per event,
 * each of which becomes a batch of one here).
 */
import type { ApiEvent } from '../api/index.ts';
import type { HostEvent } from '../host/index.ts';

export function stampEvent(e: HostEvent, seq: number, at: number): ApiEvent {
  switch (e.type) {
    case 'alloc':
    case 'free':
      return { type: e.type, vm: e.vm, pasids: [e.pasid], seq, at };
    default:
      return { ...e, seq, at };
  }
}

/** Whether an event concerns one PASID (its allocation, free, binding or unbinding). */
export function eventHasPasid(e: ApiEvent, pasid: number): boolean {
  switch (e.type) {
    case 'alloc':
    case 'free':
      return e.pasids.includes(pasid);
    case 'bind':
    case 'unbind':
      return e.pasid === pasid;
    default:
      return false;
  }
}
