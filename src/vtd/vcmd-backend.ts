/**
 * What a VCMD device asks of the host (spec 4.1: QEMU's pasid request towards VFIO / /dev/ioasid):
 * allocate and free PASIDs in the VM's own set. The host decides ownership and quota; the device
 * only turns the outcome into a status code.
 */
export interface VcmdBackend {
  /**
   * Allocate one PASID for this vIOMMU's VM (`range` only with the range extension, inclusive).
   * Throws IoasidError: ENOSPC or EDQUOT -> status "no PASID available"; anything else too.
   */
  allocate(range?: { min: number; max: number }): number | Promise<number>;
  /**
   * Free a PASID the VM owns. Throws IoasidError (EACCES foreign, ENOENT unknown, EINVAL reserved
   * e.g. 0, EBUSY ...) -> status "invalid PASID".
   */
  free(pasid: number): void | Promise<void>;
}
