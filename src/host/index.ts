/**
 * `ioasid/host`: the model of a host: its VMs (IOASID sets with quotas), vIOMMUs, assigned
 * devices, host-side bindings, and guest kernels (with SVA binding and nesting). The simulation
 * tooling that drives it (scenarios, invariant checkers, random workloads) is in `src/sim`.
 */
export { Host, DEFAULT_VM_QUOTA } from './host.ts';
export type { HostEvent, HostListener, HostOptions, HostSnapshot, VmSpec } from './host.ts';
export { Vm } from './vm.ts';
export type { Viommu, ViommuSpec } from './vm.ts';
export { Guest } from './guest.ts';
export type { GuestOptions } from './guest.ts';
export { parseDevice } from './device.ts';
export { GuestSva } from './sva.ts';
export {
  VfioContainer, VFIO_IOMMU_FLAG_ALLOC_PASID, VFIO_IOMMU_FLAG_FREE_PASID, VFIO_IOMMU_PASID_BITS, VFIO_PASID_REQUEST_MASK, VFIO_PASID_REQUEST_MINSZ,
} from './vfio.ts';
export type { VfioContainerOptions, VfioPasidReply, VfioPasidRequest } from './vfio.ts';
export type { SvaPort } from './sva.ts';
export type { DeviceSpec, PciDevice } from './device.ts';
