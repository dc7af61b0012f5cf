/**
 * The syntax of every name and number that crosses a boundary (an API request, a stored row, a
 * scenario file, an etcd key, the dashboard), defined once. The JSON-schema patterns, the SQL
 * CHECK expressions, the scenario parser, the host model and the web app all derive from these
 * definitions, so they cannot drift apart.
 *
 * Nothing here is VT-d specific: VM ids, host ids and PCI addresses are the names a host gives
 * things; PASID bounds are in ids.ts.
 */
import { IoasidError, fmtId } from './errors.ts';

/**
 * A name made of ASCII characters: a first character from `first`, then up to `maxLength - 1`
 * from `rest` (both written as regex / GLOB character-class bodies of ranges and single
 * characters, with `-` last).
 */
export interface NameSyntax {
  readonly first: string;
  readonly rest: string;
  readonly maxLength: number;
  /** How a message describes it. */
  readonly description: string;
}

/** VM ids: a letter or digit, then letters, digits, '.', '_' or '-'; at most 63 characters. */
export const VM_ID_SYNTAX: NameSyntax = Object.freeze({
  first: 'A-Za-z0-9',
  rest: 'A-Za-z0-9._-',
  maxLength: 63,
  description: "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
});

/** Host ids and migration-domain names (cluster mode): the same syntax as VM ids. */
export const HOST_ID_SYNTAX: NameSyntax = VM_ID_SYNTAX;

/** The regular-expression source of a name syntax (anchored). */
export function namePattern(s: NameSyntax): string {
  return `^[${s.first}][${s.rest}]{0,${s.maxLength - 1}}$`;
}

/** JSON-schema pattern / RegExp source for VM ids. */
export const VM_ID_PATTERN = namePattern(VM_ID_SYNTAX);
export const HOST_ID_PATTERN = namePattern(HOST_ID_SYNTAX);
const VM_ID_RE = new RegExp(VM_ID_PATTERN);

/**
 * An SQLite CHECK expression that holds exactly when `column` matches `s` (GLOB classes use the
 * same range syntax as regular expressions; `[^...]` negates).
 */
export function nameSqlCheck(column: string, s: NameSyntax): string {
  return `length(${column}) BETWEEN 1 AND ${s.maxLength} AND substr(${column}, 1, 1) GLOB '[${s.first}]' AND ${column} NOT GLOB '*[^${s.rest}]*'`;
}

export function isVmId(x: unknown): x is string {
  return typeof x === 'string' && VM_ID_RE.test(x);
}

/** Validate a VM id; EINVAL naming the value. */
export function checkVmId(x: unknown, what = 'VM id'): string {
  if (!isVmId(x)) throw new IoasidError('EINVAL', `${what} must be ${VM_ID_SYNTAX.description}, got ${fmtId(x)}`, { vm: typeof x === 'string' ? x : fmtId(x) });
  return x;
}

/** PCI segments (domains): 16 bits. */
export const SEGMENT_MIN = 0;
export const SEGMENT_MAX = 0xffff;

/** Validate a PCI segment number; EINVAL naming the value. */
export function checkSegment(x: unknown, what = 'segment'): number {
  if (typeof x !== 'number' || !Number.isInteger(x) || x < SEGMENT_MIN || x > SEGMENT_MAX) {
    throw new IoasidError('EINVAL', `${what} must be an integer in [0, 65535], got ${fmtId(x)}`, { [what]: x });
  }
  return x;
}

/**
 * A PCI address `SSSS:BB:DD.F` as lspci prints it (hexadecimal; device 0-0x1f, function 0-7);
 * either case is accepted, the canonical form is lowercase. The segment selects the vIOMMU.
 */
export const BDF_PATTERN = '^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[01][0-9a-fA-F]\\.[0-7]$';
/** The canonical (lowercase) form, as an SQLite GLOB. */
export const BDF_SQL_GLOB = '[0-9a-f][0-9a-f][0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[01][0-9a-f].[0-7]';
export const BDF_LENGTH = 12;
const BDF_RE = new RegExp(BDF_PATTERN);

/** The canonical form of a PCI address and its segment; EINVAL naming the value. */
export function parseBdf(x: unknown): { readonly bdf: string; readonly segment: number } {
  if (typeof x !== 'string' || !BDF_RE.test(x)) throw new IoasidError('EINVAL', `device bdf must look like 0000:00:02.0, got ${fmtId(x)}`, { bdf: typeof x === 'string' ? x : fmtId(x) });
  const bdf = x.toLowerCase();
  return { bdf, segment: Number.parseInt(bdf.slice(0, 4), 16) };
}

/** True for a canonical (lowercase) PCI address. */
export function isCanonicalBdf(x: unknown): x is string {
  return typeof x === 'string' && BDF_RE.test(x) && x === x.toLowerCase();
}
