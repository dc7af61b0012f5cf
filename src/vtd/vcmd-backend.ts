/**
 * What a VCMD device asks of the host (QEMU's pasid request towards VFIO or /dev/ioasid):
 * allocate and free PASIDs in the VM's own set. The host decides ownership and quota; the device
 * only turns the outcome into a status code.
 *
 * Durable hosts: what a guest can observe of the device (its `VcmdGuestState`) is committed with
 * the change it reports. A command's backend call gets the command's context, whose
 * `guestStateAfter(result)` is exactly what the device will show once the command completes with
 * that outcome; a durable host commits it together with the PASID it allocates or frees. Every
 * other change a guest can observe (a refused command's status, Null, an undefined command, an
 * operand or a 32-bit half written) is handed to `persist`. A backend that cannot commit throws a
 * `CommitError`: the device then takes the write back, as if it had never arrived. (The device
 * always passes the command; a wrapper around a durable backend must pass it on.)
 */
import type { VcmdGuestState } from './vcmd-device-snapshot.ts';

/** The command a backend call serves. */
export interface VcmdCommandContext {
  /**
   * The device's guest-visible state once this command completes: with the PASID `result` for a
   * successful Allocate, any number for a successful Free, or `null` for the command's failure
   * status ("no PASID available" / "invalid PASID").
   */
  guestStateAfter(result: number | null): VcmdGuestState;
}

export interface VcmdBackend {
  /**
   * Allocate one PASID for this vIOMMU's VM (`range` only with the range extension, inclusive).
   * Throws IoasidError: ENOSPC or EDQUOT -> status "no PASID available"; anything else too.
   */
  allocate(range?: { min: number; max: number }, command?: VcmdCommandContext): number | Promise<number>;
  /**
   * Free a PASID the VM owns. Throws IoasidError (EACCES foreign, ENOENT unknown, EINVAL reserved
   * e.g. 0, EBUSY ...) -> status "invalid PASID".
   */
  free(pasid: number, command?: VcmdCommandContext): void | Promise<void>;
  /** Durable hosts: commit a guest-visible change that no allocation or free reports. */
  persist?(state: VcmdGuestState): void | Promise<void>;
}
