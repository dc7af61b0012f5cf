/**
 * Behaviour profiles (docs/core.md). Linux changed the framework across versions and had bugs the
 * reviews pointed out; each profile reproduces one observable behaviour, `strict` has the fixes.
 *
 * `linux-5.8`, `linux-5.11` and `linux-5.18` are the three forms of drivers/iommu/ioasid.c
 * (v5.5-v5.10, v5.11-v5.17, v5.18-v6.3). `linux-6.x` is what replaced it from v6.4: no
 * ioasid.c, no custom allocators, one global IDA of PASIDs (`iommu_global_pasid_ida`, v6.6:
 * `iommu_alloc_global_pasid`). The space then models that IDA.
 */
import { IoasidError, fmtId } from './errors.ts';

export const PROFILES = ['strict', 'linux-5.8', 'linux-5.11', 'linux-5.18', 'linux-6.x'] as const;
export type Profile = (typeof PROFILES)[number];

/** The profiles that model drivers/iommu/ioasid.c itself (custom allocators exist). */
export const IOASID_PROFILES = ['strict', 'linux-5.8', 'linux-5.11', 'linux-5.18'] as const satisfies readonly Profile[];

export interface ProfileRules {
  /** Kernel version modelled, for docs and traces. */
  readonly kernel: string;
  /**
   * Width of the default allocator's universe when the caller does not choose: the kernel's is a
   * u32 XArray (32: every ID below INVALID_IOASID), v6.x's an IDA (31: `ida_alloc_range` stops at
   * INT_MAX); strict keeps a PCIe PASID universe (20).
   */
  readonly defaultBits: number;
  /** get/put refcounts exist (v5.11-v5.17; strict keeps them). */
  readonly refcounts: boolean;
  /** `free`/`put` of an unknown ID, `get` of an unknown ID: throw instead of log. */
  readonly reportMisuse: boolean;
  /** A custom allocator's result outside [min, max] is handed back and the call fails (ERANGE). */
  readonly checkCustomRange: boolean;
  /**
   * `alloc` checks min <= max before calling a custom allocator. The kernel's `ioasid_alloc()`
   * called `ops->alloc(min, max, pdata)` unchecked; only the default allocator's `xa_alloc`
   * refused min > max.
   */
  readonly checkRangeBeforeCustom: boolean;
  /** Registering an ops object that is a secondary member of a shared group is EEXIST. */
  readonly detectSecondaryDuplicate: boolean;
  /** Unregistering the primary member of a shared group re-points to a remaining member. */
  readonly repointSharedPrimary: boolean;
  /** Set quotas are enforced (EDQUOT). */
  readonly quotas: boolean;
  /** A custom free that throws keeps the record (the kernel erased it regardless). */
  readonly keepRecordOnFailedFree: boolean;
  /** max = 0xFFFFFFFF is accepted, as the kernel's u32 API allowed. */
  readonly acceptInvalidAsMax: boolean;
  /**
   * INVALID_IOASID (0xFFFFFFFF) given as an ID is an unknown ID (ioasid.c: `xa_load` finds
   * nothing), not EINVAL. And the default allocator can land on it: `xa_alloc` stores the entry at
   * 0xFFFFFFFF, `ioasid_alloc()` frees the data and fails, the XArray keeps the dangling entry.
   */
  readonly invalidIsAnId: boolean;
  /** A custom result that is already tracked is handed back through free (releasing an ID the
   * core still tracks); strict only fails the call. */
  readonly handBackDuplicate: boolean;
  /** Custom allocators exist (`ioasid_register_allocator`); v6.x has none. */
  readonly customAllocators: boolean;
  /**
   * Where the kernel's own code would corrupt memory or lose a PASID, log a `hazard` (the Linux
   * profiles; strict fixes the cause and so has none).
   */
  readonly hazards: boolean;
}

const LINUX_IOASID = {
  refcounts: false, reportMisuse: false, checkCustomRange: false, checkRangeBeforeCustom: false,
  detectSecondaryDuplicate: false, repointSharedPrimary: false, quotas: false,
  keepRecordOnFailedFree: false, acceptInvalidAsMax: true, invalidIsAnId: true, handBackDuplicate: true,
  customAllocators: true, hazards: true, defaultBits: 32,
} as const;

export const PROFILE_RULES: Readonly<Record<Profile, ProfileRules>> = {
  strict: {
    kernel: 'fixes over v5.11', defaultBits: 20, refcounts: true, reportMisuse: true, checkCustomRange: true,
    checkRangeBeforeCustom: true, detectSecondaryDuplicate: true, repointSharedPrimary: true, quotas: true,
    keepRecordOnFailedFree: true, acceptInvalidAsMax: false, invalidIsAnId: false, handBackDuplicate: false,
    customAllocators: true, hazards: false,
  },
  'linux-5.8': { ...LINUX_IOASID, kernel: 'v5.8' },
  'linux-5.11': { ...LINUX_IOASID, kernel: 'v5.11', refcounts: true },
  'linux-5.18': { ...LINUX_IOASID, kernel: 'v5.18' },
  'linux-6.x': {
    kernel: 'v6.6', defaultBits: 31, refcounts: false, reportMisuse: false, checkCustomRange: false,
    checkRangeBeforeCustom: true, detectSecondaryDuplicate: false, repointSharedPrimary: false, quotas: false,
    keepRecordOnFailedFree: false, acceptInvalidAsMax: false, invalidIsAnId: false, handBackDuplicate: false,
    customAllocators: false, hazards: false,
  },
};

export function isProfile(x: unknown): x is Profile {
  return typeof x === 'string' && (PROFILES as readonly string[]).includes(x);
}

/** A profile name, or EINVAL naming the known ones (the one check, for the space and its callers). */
export function checkProfile(x: unknown): Profile {
  if (!isProfile(x)) throw new IoasidError('EINVAL', `unknown profile ${fmtId(x)} (one of ${PROFILES.join(', ')})`, { profile: x });
  return x;
}
