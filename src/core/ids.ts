/**
 * IDs and ranges. An IOASID is an unsigned 32-bit integer; `INVALID_IOASID` is never valid.
 * PCIe PASIDs are 20 bits; 0 is reserved for DMA without a PASID (`IOMMU_NO_PASID`).
 */
import { IoasidError, fmtId } from './errors.ts';

declare const ioasidBrand: unique symbol;
/** An allocated I/O address space ID. Made only by the space (or `asIoasid`, which validates). */
export type Ioasid = number & { readonly [ioasidBrand]: true };

export const INVALID_IOASID = 0xffffffff;
/** Largest value an ID can take (`INVALID_IOASID - 1`). */
export const IOASID_MAX = 0xfffffffe;
/** PASID 0 is reserved for requests without PASID (`PASID_RID2PASID`, later `IOMMU_NO_PASID`). */
export const PASID_MIN = 1;
/** Largest 20-bit PASID (the kernel's `PASID_MAX` = 0x100000 is an exclusive bound). */
export const PASID_MAX = 0xfffff;
export const PASID_BITS = 20;

/** True for an integer in [0, 0xFFFFFFFE]. */
export function isIdValue(x: unknown): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= 0 && x <= IOASID_MAX;
}

/** Validate an ID argument; the error names the argument and its value. */
export function checkId(x: unknown, what = 'id'): number {
  if (!isIdValue(x)) {
    throw new IoasidError('EINVAL', `${what} must be an integer in [0, 0xfffffffe], got ${fmtId(x)}`, { [what]: x });
  }
  return x;
}

export function asIoasid(x: unknown, what = 'id'): Ioasid {
  return checkId(x, what) as Ioasid;
}

/** Validate an inclusive [min, max] range argument pair. */
export function checkRange(min: unknown, max: unknown): { min: number; max: number } {
  const lo = checkId(min, 'min');
  const hi = checkId(max, 'max');
  if (lo > hi) throw new IoasidError('EINVAL', `min ${fmtId(lo)} is above max ${fmtId(hi)}`, { min: lo, max: hi });
  return { min: lo, max: hi };
}

/** True for a PCIe PASID that can be allocated: an integer in [PASID_MIN, PASID_MAX]. */
export function isPasid(x: unknown): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= PASID_MIN && x <= PASID_MAX;
}

/** Validate a PASID argument (EINVAL naming it): 0 is reserved, 20 bits at most. */
export function checkPasid(x: unknown, what = 'PASID'): number {
  if (!isPasid(x)) throw new IoasidError('EINVAL', `${what} must be an integer in [1, 0xfffff], got ${fmtId(x)}`, { [what === 'PASID' ? 'pasid' : what]: x });
  return x;
}

/** Kernel 5.18 `pasid_valid()`: anything but INVALID_IOASID. */
export function pasidValid(id: number): boolean {
  return id !== INVALID_IOASID;
}
