/**
 * What the guest's VT-d driver did in each kernel a profile models (drivers/iommu/intel/iommu.c,
 * pasid.c, pasid.h), and the driver's kernel hazards. The core's profile rules are in
 * src/core/profiles.ts; these are the VT-d ones, looked up by the guest space's profile.
 */
import type { HazardSpec, Profile } from '../core/index.ts';

export interface VtdRules {
  /**
   * The driver has the virtual command interface: `register_pasid_allocator()`,
   * `intel_vcmd_ioasid_alloc/free` (v5.8-v6.3). v6.4 removed it ("iommu/vt-d: Remove virtual
   * command interface", 760f41d182ec): a 6.x guest never registers a VCMD allocator.
   */
  readonly vcmd: boolean;
  /**
   * Layout A status codes of v5.8-v5.11: `VCMD_VRSP_SC_NO_PASID_AVAIL` (and `_INVALID_PASID`)
   * were 1; "iommu/vt-d: Fix status code for Allocate/Free PASID command" (Zenghui Yu, v5.12)
   * made them 2, as VT-d 3.0 section 10.4.45 says.
   */
  readonly legacyStatusCodes: boolean;
  /**
   * Layout B's Free operand is computed as the kernel did, in 32 bits: `VCMD_CMD_OPERAND(e)`
   * became `((e) << 16)` in v5.15 (4d99efb229e6) and is applied to a `u32 pasid`, so a PASID of
   * 0x10000 or more loses its top bits. Strict writes the full 64-bit operand.
   */
  readonly truncatedFreeOperand: boolean;
  /**
   * Hot-add (`intel_iommu_add()` / `dmar_iommu_hotplug()`) registers the unit's allocator and
   * lowers `intel_pasid_max_id`. The kernel does neither (only `init_dmars()` does, at boot):
   * that is strict's rule, ours.
   */
  readonly hotplugRegisters: boolean;
  /** A guest under caching mode with scalable mode never hands out guest-local PASIDs (strict). */
  readonly noGuestLocalPasids: boolean;
}

const LINUX_VCMD: VtdRules = { vcmd: true, legacyStatusCodes: false, truncatedFreeOperand: true, hotplugRegisters: false, noGuestLocalPasids: false };

export const VTD_RULES: Readonly<Record<Profile, VtdRules>> = {
  strict: { vcmd: true, legacyStatusCodes: false, truncatedFreeOperand: false, hotplugRegisters: true, noGuestLocalPasids: true },
  'linux-5.8': { ...LINUX_VCMD, legacyStatusCodes: true },
  'linux-5.11': { ...LINUX_VCMD, legacyStatusCodes: true },
  'linux-5.18': LINUX_VCMD,
  'linux-6.x': { vcmd: false, legacyStatusCodes: false, truncatedFreeOperand: false, hotplugRegisters: false, noGuestLocalPasids: false },
};

/** The VT-d driver's hazards: where a guest kernel of these versions goes wrong. */
export const VTD_HAZARDS = {
  'vcmd-free-truncated': {
    kind: 'vcmd-free-truncated',
    where: 'vcmd_free_pasid',
    kernels: 'v5.15-v6.3 (4d99efb229e6, also in stable 5.10.y)',
    effect:
      'VCMD_CMD_OPERAND(pasid) = pasid << 16 is computed in 32 bits: the Free of a PASID of 0x10000 or more names PASID & 0xFFFF; ' +
      'the host answers "invalid PASID" or frees that other PASID of the VM (a live one, under its device), and this one leaks',
  },
  'pasid-leak': {
    kind: 'pasid-leak',
    where: 'intel_vcmd_ioasid_free',
    kernels: 'v5.8-v6.3',
    effect:
      'a PASID whose ioasid_find() is not NULL (a device still bound, the mm of v5.18+, or ERR_PTR(-ENOENT) for an ID the core does not ' +
      'track) gets "Cannot free active IOASID" and no VCMD Free; ioasid_free() erases it anyway: the guest forgets it, the host keeps it',
  },
  'range-ignored': {
    kind: 'range-ignored',
    where: 'intel_vcmd_ioasid_alloc',
    kernels: 'v5.8-v6.3',
    effect: "the host's PASID is returned without checking [min, max]: a device narrower than 20 bits gets a PASID it cannot emit",
  },
  'guest-local-pasids': {
    kind: 'guest-local-pasids',
    where: 'register_pasid_allocator, intel_iommu_add, free_dmar_iommu',
    kernels: 'v5.8-v6.3',
    effect:
      'a guest under caching mode with scalable mode and no VCMD allocator (VCCAP.PAS clear, a register layout mismatch, only hot-added ' +
      'units, the last unit unplugged) allocates from its own default allocator: PASIDs the host never gave it, possibly another VM\'s',
  },
  'freed-iommu-ops': {
    kind: 'freed-iommu-ops',
    where: 'free_dmar_iommu, ioasid_unregister_allocator',
    kernels: 'v5.8-v6.3',
    effect:
      "hot-removing the unit whose ops are the primary of the shared group leaves active_allocator->ops pointing into the freed " +
      'struct intel_iommu: the next allocation or free calls through freed memory',
  },
} as const satisfies Record<string, HazardSpec>;

export type VtdHazardKind = keyof typeof VTD_HAZARDS;
