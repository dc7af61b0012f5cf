/**
 * Errors of the ioasid project, named after Linux errno values (Node's own convention:
 * `err.code === 'ENOENT'`). Every failure a caller can cause is an `IoasidError`; a broken
 * internal invariant is an `IoasidBugError`, never silently repaired.
 */

/** The errno names we use, with their Linux numbers (spec "Conventions"). */
export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  ENOTTY: 25,
  EFBIG: 27,
  ENOSPC: 28,
  EROFS: 30,
  ERANGE: 34,
  EREMOTE: 66,
  EDEADLK: 35,
  EOVERFLOW: 75,
  EOPNOTSUPP: 95,
  ETIMEDOUT: 110,
  EDQUOT: 122,
  ENOTSUPP: 524,
} as const;

export type IoasidErrorCode = keyof typeof ERRNO;
export const IOASID_ERROR_CODES = Object.keys(ERRNO) as readonly IoasidErrorCode[];

export function isIoasidErrorCode(x: unknown): x is IoasidErrorCode {
  return typeof x === 'string' && Object.prototype.hasOwnProperty.call(ERRNO, x);
}

/** Structured, serialisable details about a failure: the offending values by name. */
export type ErrorDetails = Readonly<Record<string, unknown>>;

export class IoasidError extends Error {
  override readonly name = 'IoasidError';
  readonly code: IoasidErrorCode;
  /** Negative errno, as the kernel returns it. */
  readonly errno: number;
  readonly details: ErrorDetails;

  constructor(code: IoasidErrorCode, message: string, details: ErrorDetails = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.errno = -ERRNO[code];
    this.details = details;
  }

  toJSON(): { code: IoasidErrorCode; errno: number; message: string; details: ErrorDetails } {
    return { code: this.code, errno: this.errno, message: this.message, details: this.details };
  }
}

/**
 * A change that could not be made durable (the store or the cluster failed, not a rule): nothing
 * of it took effect, so the caller may retry it. Its code is the cause's (EIO, ENOSPC for a full
 * disk, ENODEV for an unreachable or fenced store, ...). A refusal by a rule is a plain
 * IoasidError: the refusal itself is the outcome.
 */
export class CommitError extends IoasidError {
  constructor(code: IoasidErrorCode, message: string, details: ErrorDetails = {}, options?: { cause?: unknown }) {
    super(code, message, { ...details, committed: false }, options);
  }
}

export function isCommitError(e: unknown): e is CommitError {
  return e instanceof CommitError;
}

/** A broken internal invariant: a bug in this library, not a caller error. */
export class IoasidBugError extends Error {
  override readonly name = 'IoasidBugError';
  readonly details: ErrorDetails;
  constructor(message: string, details: ErrorDetails = {}) {
    super(`internal invariant broken: ${message}`);
    this.details = details;
  }
}

export function isIoasidError(e: unknown, code?: IoasidErrorCode): e is IoasidError {
  return e instanceof IoasidError && (code === undefined || e.code === code);
}

/** Format a number as the kernel prints IDs in messages: decimal plus hex. */
export function fmtId(n: unknown): string {
  if (typeof n === 'number' && Number.isInteger(n) && n >= 0) return `${n} (0x${n.toString(16)})`;
  if (typeof n === 'bigint') return `0x${n.toString(16)}`;
  return JSON.stringify(n) ?? String(n);
}
