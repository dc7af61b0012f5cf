/**
 * Errors over HTTP: an IoasidError becomes `{ code, errno, message, details }` with the status of
 * docs/error-codes.md. Kept in one table so the docs and the code cannot drift (a test compares).
 */
import { IoasidError, type IoasidErrorCode } from '../core/index.ts';

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
  ETIMEDOUT: 504,
};

export function httpStatusOf(e: IoasidError): number {
  return HTTP_STATUS[e.code];
}

/** The JSON body of an error response. */
export interface ErrorBody {
  readonly code: IoasidErrorCode;
  readonly errno: number;
  readonly message: string;
  readonly details: Readonly<Record<string, unknown>>;
}

export const ERROR_SCHEMA = {
  type: 'object',
  required: ['code', 'errno', 'message'],
  properties: {
    code: { type: 'string' },
    errno: { type: 'integer' },
    message: { type: 'string' },
    details: { type: 'object', additionalProperties: true },
  },
} as const;
