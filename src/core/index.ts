/**
 * `ioasid/core`: the IOASID framework (drivers/iommu/ioasid.c), its ID engine, sets, errors and
 * events. Pure: no I/O, no clock. Knows nothing of VT-d: drivers plug in through AllocatorOps.
 */
export { ERRNO, IOASID_ERROR_CODES, IoasidError, IoasidBugError, CommitError, isCommitError, isIoasidError, isIoasidErrorCode, fmtId } from './errors.ts';
export type { IoasidErrorCode, ErrorDetails } from './errors.ts';
export { INVALID_IOASID, IOASID_MAX, PASID_MIN, PASID_MAX, PASID_BITS, asIoasid, checkId, checkPasid, checkRange, isIdValue, isPasid, pasidValid } from './ids.ts';
export type { Ioasid } from './ids.ts';
export {
  VM_ID_SYNTAX, HOST_ID_SYNTAX, VM_ID_PATTERN, HOST_ID_PATTERN, BDF_PATTERN, BDF_SQL_GLOB, BDF_LENGTH, SEGMENT_MIN, SEGMENT_MAX,
  namePattern, nameSqlCheck, isVmId, checkVmId, checkSegment, parseBdf, isCanonicalBdf,
} from './names.ts';
export type { NameSyntax } from './names.ts';
export { IdEngine, ALLOC_POLICIES } from './id-engine.ts';
export type { AllocPolicy, IdEngineOptions } from './id-engine.ts';
export { IoasidSet } from './set.ts';
export type { IoasidSetOptions } from './set.ts';
export { IoasidSpace } from './space.ts';
export type { IoasidSpaceOptions } from './space.ts';
export { CORE_HAZARDS, logHazard } from './log.ts';
export type { CoreHazardKind, HazardSpec, LogFn, LogLevel } from './log.ts';
export { EVENT_TYPES, PRIORITIES } from './events.ts';
export type { IoasidEvent, IoasidEventType, IoasidListener, NotifierPriority, SubscribeOptions } from './events.ts';
export { PROFILES, IOASID_PROFILES, PROFILE_RULES, checkProfile, isProfile } from './profiles.ts';
export type { Profile, ProfileRules } from './profiles.ts';
export type { AllocatorOps } from './allocator.ts';
export { parseSnapshot } from './snapshot.ts';
export type { SpaceSnapshot, TableSnapshot, SetSnapshot } from './snapshot.ts';
