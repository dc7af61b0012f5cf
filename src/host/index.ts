/**
 * `ioasid/host`: the model of a host: its VMs (IOASID sets with quotas), vIOMMUs, assigned
 * devices, host-side bindings, and guest kernels (with SVA binding and nesting). The host is the
 * only holder of domain rules (docs/rules.md); every change is committed through its journal.
 * The simulation tooling that drives it (scenarios, invariant checkers, random workloads) is in
 * `src/sim`.
 */
export { Host, DEFAULT_VM_QUOTA, CREDENTIAL_MAX_LENGTH } from './host.ts';
export type { HostListener, HostOptions, HostSnapshot, HostState, HostView, VmSpec } from './host.ts';
export { MemoryJournal, HOST_EVENT_TYPES } from './journal.ts';
export type { AllocationPolicy, Committed, HostEvent, HostEventRecord, HostEventType, Journal, JournalEntry, Outcome, SyncJournal } from './journal.ts';
export { Vm, parseViommuSpec } from './vm.ts';
export type { Viommu, ViommuConfig, ViommuSpec, VmView } from './vm.ts';
export { Guest } from './guest.ts';
export type { GuestOptions } from './guest.ts';
export { GuestFront, GuestKernel, driverOptionsOf } from './guest-kernel.ts';
export type { GuestDriverOptions, GuestKernelOptions, GuestPort, GuestUnitSpec } from './guest-kernel.ts';
export { parseDevice } from './device.ts';
export { GuestSva } from './sva.ts';
export {
  VfioContainer, VFIO_IOMMU_FLAG_ALLOC_PASID, VFIO_IOMMU_FLAG_FREE_PASID, VFIO_IOMMU_PASID_BITS, VFIO_PASID_REQUEST_MASK, VFIO_PASID_REQUEST_MINSZ,
} from './vfio.ts';
export type { VfioContainerOptions, VfioPasidReply, VfioPasidRequest } from './vfio.ts';
export type { SvaPort } from './sva.ts';
export type { DeviceSpec, PciDevice } from './device.ts';
