/**
 * `VFIO_IOMMU_PASID_REQUEST` as it was proposed (Liu Yi L, "vfio: expose virtual Shared Virtual
 * Addressing to VMs", versions 5-7, 2020; never merged), as a thin layer over the host model: a
 * VMM asks its container for one PASID in [min, max], or frees the PASIDs of [min, max].
 *
 * Rules, in the order of `vfio_iommu_type1_pasid_request()` (v7):
 *  1. `argsz` below `offsetofend(struct vfio_iommu_type1_pasid_request, range)` (16), a flag
 *     outside ALLOC | FREE, both flags or neither, min > max, or min or max above 2^31
 *     (`VFIO_IOMMU_PASID_BITS`): EINVAL.
 *  2. A container without a `vfio_mm` (no nesting IOMMU with system-wide PASIDs, or no group
 *     attached: here, a VM with no assigned device) answers EOPNOTSUPP.
 *  3. ALLOC: one PASID in the VM's set, within [min, max] and the host's range. Any failure is
 *     ENOSPC, as `vfio_pasid_alloc()` returned; the VM's quota (VFIO's `pasid_quota`) is one of
 *     them (details.cause names EDQUOT).
 *  4. FREE of one PASID ([p, p]): it must be the VM's: EACCES another VM's, ENOENT nobody's,
 *     EBUSY while a device is bound to it (ours: v7 answered 0 whatever happened).
 *  5. FREE of a range: the VM's own PASIDs in it, and only those (another VM's are not the
 *     caller's to free); the work is proportional to the VM's PASIDs, never to the range (a
 *     review of v5 asked exactly that: a user could spin the kernel over [0, UINT_MAX]). A bound
 *     one makes the whole request EBUSY and frees nothing.
 */
import { IoasidError, fmtId, isIoasidError } from '../core/index.ts';
import type { Host } from './host.ts';
import type { Vm } from './vm.ts';

export const VFIO_IOMMU_FLAG_ALLOC_PASID = 1 << 0;
export const VFIO_IOMMU_FLAG_FREE_PASID = 1 << 1;
export const VFIO_PASID_REQUEST_MASK = VFIO_IOMMU_FLAG_ALLOC_PASID | VFIO_IOMMU_FLAG_FREE_PASID;
/** "Current VFIO_IOMMU_PASID_REQUEST only supports at most 31 bits PASID." */
export const VFIO_IOMMU_PASID_BITS = 31;
/** offsetofend(struct vfio_iommu_type1_pasid_request, range): argsz, flags, range.min, range.max. */
export const VFIO_PASID_REQUEST_MINSZ = 16;

/** `struct vfio_iommu_type1_pasid_request`. */
export interface VfioPasidRequest {
  readonly argsz: number;
  readonly flags: number;
  readonly range: { readonly min: number; readonly max: number };
}

/** ALLOC answers the PASID; FREE the PASIDs it freed (the ioctl returned 0). */
export type VfioPasidReply = { readonly pasid: number } | { readonly freed: readonly number[] };

export interface VfioContainerOptions {
  /** A nesting container whose IOMMU needs system-wide PASIDs (has a `vfio_mm`). Default true. */
  readonly nesting?: boolean;
}

const U32 = 0xffffffff;

function u32(x: unknown, what: string): number {
  if (typeof x !== 'number' || !Number.isInteger(x) || x < 0 || x > U32) {
    throw new IoasidError('EINVAL', `${what} must be a __u32, got ${fmtId(x)}`, { [what]: x });
  }
  return x;
}

/** The VFIO container of one VM's VMM (the `struct vfio_iommu` its devices' groups attach to). */
export class VfioContainer {
  readonly host: Host;
  readonly vmId: string;
  readonly nesting: boolean;

  constructor(host: Host, vmId: string, opts: VfioContainerOptions = {}) {
    host.vm(vmId); // the VM must exist: ENOENT otherwise
    this.host = host;
    this.vmId = vmId;
    this.nesting = opts.nesting ?? true;
    if (typeof this.nesting !== 'boolean') throw new IoasidError('EINVAL', `nesting must be a boolean, got ${fmtId(this.nesting)}`, { nesting: this.nesting });
  }

  get vm(): Vm {
    return this.host.vm(this.vmId);
  }

  /** `ioctl(container, VFIO_IOMMU_PASID_REQUEST, &req)`. */
  async pasidRequest(req: VfioPasidRequest): Promise<VfioPasidReply> {
    const r = req as unknown as Record<string, unknown> | null;
    if (typeof r !== 'object' || r === null) throw new IoasidError('EINVAL', `the request must be a struct vfio_iommu_type1_pasid_request, got ${fmtId(r)}`);
    const argsz = u32(r.argsz, 'argsz');
    const flags = u32(r.flags, 'flags');
    if (argsz < VFIO_PASID_REQUEST_MINSZ) throw new IoasidError('EINVAL', `argsz ${argsz} is below ${VFIO_PASID_REQUEST_MINSZ}`, { argsz });
    if ((flags & ~VFIO_PASID_REQUEST_MASK) !== 0) throw new IoasidError('EINVAL', `unknown flags 0x${(flags & ~VFIO_PASID_REQUEST_MASK).toString(16)}`, { flags });
    const range = r.range as Record<string, unknown> | null | undefined;
    if (typeof range !== 'object' || range === null) throw new IoasidError('EINVAL', `range must be { min, max }, got ${fmtId(range)}`);
    const min = u32(range.min, 'min');
    const max = u32(range.max, 'max');
    if (min > max) throw new IoasidError('EINVAL', `range.min ${fmtId(min)} is above range.max ${fmtId(max)}`, { min, max });
    const limit = 2 ** VFIO_IOMMU_PASID_BITS;
    if (min > limit || max > limit) throw new IoasidError('EINVAL', `range [${fmtId(min)}, ${fmtId(max)}] goes beyond 2^${VFIO_IOMMU_PASID_BITS}`, { min, max });
    const vm = this.vm;
    if (!this.nesting || vm.devices().length === 0) {
      throw new IoasidError('EOPNOTSUPP', `the container of VM ${vm.id} has no vfio_mm (${this.nesting ? 'no device is assigned' : 'not a nesting container'}): no PASID requests`, { vm: vm.id });
    }
    switch (flags) {
      case VFIO_IOMMU_FLAG_ALLOC_PASID:
        return { pasid: await this.#alloc(vm, min, max) };
      case VFIO_IOMMU_FLAG_FREE_PASID:
        return { freed: min === max ? await this.#freeOne(vm, min) : await this.#freeRange(vm, min, max) };
      default:
        throw new IoasidError('EINVAL', `flags must be exactly one of ALLOC_PASID and FREE_PASID, got 0x${flags.toString(16)}`, { flags });
    }
  }

  async #alloc(vm: Vm, min: number, max: number): Promise<number> {
    try {
      return (await vm.allocPasids({ min, max }))[0] as number;
    } catch (e) {
      if (!isIoasidError(e) || (e.code !== 'EDQUOT' && e.code !== 'ENOSPC')) throw e;
      const why = e.code === 'EDQUOT' ? `VM ${vm.id} is at its quota of ${vm.quota}` : e.message;
      throw new IoasidError('ENOSPC', `no PASID for VM ${vm.id} in [${fmtId(min)}, ${fmtId(max)}]: ${why}`, { vm: vm.id, min, max, cause: e.code }, { cause: e });
    }
  }

  async #freeOne(vm: Vm, pasid: number): Promise<number[]> {
    await vm.freePasid(pasid); // EACCES another VM's, ENOENT nobody's, EBUSY bound
    return [pasid];
  }

  async #freeRange(vm: Vm, min: number, max: number): Promise<number[]> {
    // O(the VM's PASIDs): its own set, ascending, cut to [min, max].
    const mine = vm.pasids().filter((p) => p >= min && p <= max);
    const bound = new Set(vm.bindings().map(([, p]) => p));
    const busy = mine.filter((p) => bound.has(p));
    if (busy.length > 0) {
      throw new IoasidError('EBUSY', `PASIDs ${busy.join(', ')} of VM ${vm.id} are still bound; nothing was freed`, { vm: vm.id, pasids: busy });
    }
    for (const p of mine) await vm.freePasid(p);
    return mine;
  }
}
