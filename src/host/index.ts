/**
 * `ioasid/host`: the host and its VMs, vIOMMUs, assigned devices, guests (with SVA binding and
 * nesting), and the invariant checker (DESIGN 5).
 */
export { Host, DEFAULT_VM_QUOTA } from './host.ts';
export type { HostEvent, HostListener, HostOptions, HostSnapshot, VmSpec } from './host.ts';
export { Vm, HOST_PASID_RANGE } from './vm.ts';
export type { Viommu, ViommuSpec } from './vm.ts';
export { Guest } from './guest.ts';
export type { GuestOptions } from './guest.ts';
export { parseDevice } from './device.ts';
export type { DeviceSpec, PciDevice } from './device.ts';
export { checkInvariants, INVARIANTS } from './invariants.ts';
export type { InvariantName, Violation } from './invariants.ts';
