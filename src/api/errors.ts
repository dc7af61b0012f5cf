/**
 * Errors on the wire: an `IoasidError` becomes an RFC 9457 problem (`application/problem+json`)
 * with the HTTP status of docs/error-codes.md, and back. The statuses are in one table so that the
 * docs, the service and the OpenAPI document cannot drift (a test compares them).
 */
import { ERRNO, IoasidError, isIoasidErrorCode, type IoasidErrorCode } from '../core/index.ts';
import type { Problem } from './schemas.ts';

export const PROBLEM_MEDIA_TYPE = 'application/problem+json';

export const HTTP_STATUS: Readonly<Record<IoasidErrorCode, number>> = {
  EINVAL: 400,
  EOPNOTSUPP: 400,
  ENOTTY: 400,
  EOVERFLOW: 400,
  EPERM: 401,
  EACCES: 403,
  ENOENT: 404,
  EFBIG: 413,
  ENOSPC: 409,
  EDQUOT: 409,
  EEXIST: 409,
  EAGAIN: 409,
  EBUSY: 409,
  ERANGE: 409,
  ENOMEM: 503,
  EIO: 503,
  EFAULT: 500,
  EDEADLK: 500,
  ENOTSUPP: 500,
  ENODEV: 503,
  EROFS: 503,
  EREMOTE: 421,
  ETIMEDOUT: 504,
};

/** RFC 9457 `title`: one short summary per code, the same for every occurrence. */
export const PROBLEM_TITLES: Readonly<Record<IoasidErrorCode, string>> = {
  EINVAL: 'Invalid argument',
  EOPNOTSUPP: 'Operation not supported here',
  ENOTTY: 'Inappropriate operation',
  EOVERFLOW: 'Value too large',
  EPERM: 'Not authenticated',
  EACCES: 'Not yours',
  ENOENT: 'No such object',
  EFBIG: 'Request body too large',
  ENOSPC: 'No PASID available',
  EDQUOT: 'Quota exhausted',
  EEXIST: 'Already exists',
  EAGAIN: 'Try again',
  EBUSY: 'Busy',
  ERANGE: 'Out of range',
  ENOMEM: 'Out of memory',
  EIO: 'Not committed',
  EFAULT: 'Internal error',
  EDEADLK: 'Would deadlock',
  ENOTSUPP: 'Not supported',
  ENODEV: 'Unavailable',
  ETIMEDOUT: 'Timed out',
  EROFS: 'Store is read-only',
  EREMOTE: 'Served by another host',
};

export function httpStatusOf(e: { readonly code: IoasidErrorCode }): number {
  return HTTP_STATUS[e.code];
}

/** RFC 9457 `type` of a code: a URN, so that no reader is sent to a host to learn what it means. */
export function problemType(code: IoasidErrorCode): string {
  return `urn:ioasid:error:${code}`;
}

/**
 * Answers the connection itself gives, before any route is involved, with a status of their own
 * (docs/error-codes.md): the request did not arrive in time, or its headers are too large.
 */
export const TRANSPORT_STATUS = { requestTimeout: 408, headersTooLarge: 431 } as const;

/**
 * The problem body of an error. `instance` is the request path (never its query: tokens).
 * `status` is the code's (HTTP_STATUS) except for the connection's own answers (TRANSPORT_STATUS).
 */
export function toProblem(e: { readonly code: IoasidErrorCode; readonly message: string; readonly details?: Readonly<Record<string, unknown>> }, instance?: string, status?: number): Problem {
  return {
    type: problemType(e.code),
    title: PROBLEM_TITLES[e.code],
    status: status ?? HTTP_STATUS[e.code],
    detail: e.message,
    ...(instance !== undefined ? { instance } : {}),
    code: e.code,
    errno: -ERRNO[e.code],
    message: e.message,
    details: e.details ?? {},
  };
}

/**
 * The IoasidError a non-2xx answer carries (same code, message and details, plus the status).
 * A body that is not a problem (a proxy's page, nothing) becomes EFAULT for 5xx, else EINVAL.
 */
export function errorFromProblem(status: number, body: unknown): IoasidError {
  const b = typeof body === 'object' && body !== null ? (body as Record<string, unknown>) : {};
  const code = isIoasidErrorCode(b.code) ? b.code : status >= 500 ? 'EFAULT' : 'EINVAL';
  const text = typeof b.detail === 'string' ? b.detail : typeof b.message === 'string' ? b.message : `HTTP ${status}`;
  const details = typeof b.details === 'object' && b.details !== null ? (b.details as Record<string, unknown>) : {};
  return new IoasidError(code, text, { status, ...details });
}
