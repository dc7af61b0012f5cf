/**
 * `ioasid/vtd`: the Intel VT-d model of the project (docs/vtd.md): register tables and codecs for
 * both VCMD layouts, the VCMD device (host side of a vIOMMU) and the guest driver's custom PASID
 * allocator. Pure: no I/O, no clock; time comes in through options.
 */
export {
  LAYOUTS,
  PAS_BITS,
  REGISTER_NAMES,
  VCMD_CMD,
  commandName,
  decodeRangedAllocate,
  decodeRegister,
  decodeVccap,
  decodeVcmd,
  decodeVcrsp,
  describeRegister,
  encodeRangedAllocate,
  encodeRegister,
  encodeVccap,
  encodeVcmd,
  encodeVcrsp,
  getField,
  pasidMaxFromEcap,
  registerAt,
  registerMap,
  registerOffset,
  registerSpec,
  setField,
  statusName,
} from './registers.ts';
export type {
  Bit,
  FieldAccess,
  FieldSpec,
  Layout,
  MapLike,
  PasBit,
  RegisterFields,
  RegisterMap,
  RegisterName,
  RegisterSpec,
  StatusCodes,
  VccapCapabilities,
  VcmdCommand,
  VcmdValue,
  VcrspValue,
} from './registers.ts';
export type { AccessSize, MmioAccessor } from './mmio.ts';
export type { VcmdBackend, VcmdCommandContext } from './vcmd-backend.ts';
export { VcmdDevice } from './vcmd-device.ts';
export type { InternalErrorHandler, VcmdDeviceHooks, VcmdDeviceOptions } from './vcmd-device.ts';
export { normalizeDeviceConfig, DEFAULT_LOG_SIZE, MAX_LOG_SIZE } from './vcmd-device-config.ts';
export type { VcmdDeviceConfig, VcmdDeviceConfigInput } from './vcmd-device-config.ts';
export { parseDeviceSnapshot, parseGuestState, parseWriter } from './vcmd-device-snapshot.ts';
export type { VcmdDeviceSnapshot, VcmdGuestState, VcmdLogEntry, VcmdStats, VcmdWriter } from './vcmd-device-snapshot.ts';
export { GuestViommu } from './guest-viommu.ts';
export type { LayoutMismatch, PollClock } from './guest-viommu.ts';
export { VTD_HAZARDS, VTD_RULES } from './kernel-rules.ts';
export type { VtdHazardKind, VtdRules } from './kernel-rules.ts';
export { VtdGuestDriver, INTEL_PASID_MAX, DEFAULT_VCMD_TIMEOUT_MS } from './guest-driver.ts';
export type { UnplugReport, VtdGuestDriverOptions } from './guest-driver.ts';
