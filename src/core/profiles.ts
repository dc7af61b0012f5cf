/**
 * Behaviour profiles (DESIGN 3.4). Linux changed the framework across versions and had bugs the
 * reviews pointed out; each profile reproduces one observable behaviour, `strict` has the fixes.
 */
export const PROFILES = ['strict', 'linux-5.8', 'linux-5.11', 'linux-5.18'] as const;
export type Profile = (typeof PROFILES)[number];

export interface ProfileRules {
  /** Kernel version modelled, for docs and traces. */
  readonly kernel: string;
  /** get/put refcounts exist (v5.11-v5.17; strict keeps them). */
  readonly refcounts: boolean;
  /** `free`/`put` of an unknown ID, `get` of an unknown ID: throw instead of log. */
  readonly reportMisuse: boolean;
  /** A custom allocator's result outside [min, max] is handed back and the call fails (ERANGE). */
  readonly checkCustomRange: boolean;
  /** Registering an ops object that is a secondary member of a shared group is EEXIST. */
  readonly detectSecondaryDuplicate: boolean;
  /** Unregistering the primary member of a shared group re-points to a remaining member. */
  readonly repointSharedPrimary: boolean;
  /** Set quotas are enforced (EDQUOT). */
  readonly quotas: boolean;
  /** A custom free that throws keeps the record (the kernel erased it regardless). */
  readonly keepRecordOnFailedFree: boolean;
  /** max = 0xFFFFFFFF is accepted (clamped), as the kernel's u32 API allowed. */
  readonly acceptInvalidAsMax: boolean;
  /** A custom result that is already tracked is handed back through free (releasing an ID the
   * core still tracks); strict only fails the call. */
  readonly handBackDuplicate: boolean;
}

export const PROFILE_RULES: Readonly<Record<Profile, ProfileRules>> = {
  strict: {
    kernel: 'fixes over v5.11', refcounts: true, reportMisuse: true, checkCustomRange: true,
    detectSecondaryDuplicate: true, repointSharedPrimary: true, quotas: true,
    keepRecordOnFailedFree: true, acceptInvalidAsMax: false, handBackDuplicate: false,
  },
  'linux-5.8': {
    kernel: 'v5.8', refcounts: false, reportMisuse: false, checkCustomRange: false,
    detectSecondaryDuplicate: false, repointSharedPrimary: false, quotas: false,
    keepRecordOnFailedFree: false, acceptInvalidAsMax: true, handBackDuplicate: true,
  },
  'linux-5.11': {
    kernel: 'v5.11', refcounts: true, reportMisuse: false, checkCustomRange: false,
    detectSecondaryDuplicate: false, repointSharedPrimary: false, quotas: false,
    keepRecordOnFailedFree: false, acceptInvalidAsMax: true, handBackDuplicate: true,
  },
  'linux-5.18': {
    kernel: 'v5.18', refcounts: false, reportMisuse: false, checkCustomRange: false,
    detectSecondaryDuplicate: false, repointSharedPrimary: false, quotas: false,
    keepRecordOnFailedFree: false, acceptInvalidAsMax: true, handBackDuplicate: true,
  },
};

export function isProfile(x: unknown): x is Profile {
  return typeof x === 'string' && (PROFILES as readonly string[]).includes(x);
}
