/**
 * PCI devices that can be assigned to a VM: a BDF with its PCI segment (domain), and the width of
 * its PASID capability (a device with a 10-bit PASID can use only PASIDs below 1024).
 */
import { IoasidError, PASID_BITS, fmtId, parseBdf } from '../core/index.ts';

export interface DeviceSpec {
  /** `SSSS:BB:DD.F`; the segment (domain) selects the vIOMMU the device sits behind. */
  readonly bdf: string;
  /** Width of the device's PASID capability, 1..20 (default 20). */
  readonly pasidBits?: number;
}

export interface PciDevice {
  readonly bdf: string;
  readonly segment: number;
  readonly pasidBits: number;
  /** Largest PASID the device can emit: 2^pasidBits - 1. */
  readonly maxPasid: number;
}

/** Validate a device spec; EINVAL naming the field. */
export function parseDevice(spec: DeviceSpec): PciDevice {
  if (typeof spec !== 'object' || spec === null) throw new IoasidError('EINVAL', `device must be an object, got ${fmtId(spec)}`);
  const { bdf, segment } = parseBdf(spec.bdf);
  const pasidBits = spec.pasidBits ?? PASID_BITS;
  if (typeof pasidBits !== 'number' || !Number.isInteger(pasidBits) || pasidBits < 1 || pasidBits > PASID_BITS) {
    throw new IoasidError('EINVAL', `device ${bdf} pasidBits must be an integer in [1, ${PASID_BITS}], got ${fmtId(pasidBits)}`, { bdf, pasidBits });
  }
  return Object.freeze({ bdf, segment, pasidBits, maxPasid: 2 ** pasidBits - 1 });
}
