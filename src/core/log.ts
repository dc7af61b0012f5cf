/**
 * Where a modelled kernel would printk, and the kernel hazards: places where the real kernel's own
 * code corrupts memory, frees the wrong thing or loses a PASID. The Linux profiles reproduce what
 * is deterministic there and report the rest as a `hazard`; strict fixes the cause.
 *
 * Levels, as the kernel's: `debug` = pr_debug (and our own notes), `info` = pr_info, `warn` =
 * pr_warn and WARN_ON, `error` = pr_err and pr_alert, `hazard` = ours (no printk: "here a real
 * kernel of these versions would have gone wrong"), with `details.hazard` naming the kind.
 */

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'hazard';
export type LogFn = (level: LogLevel, message: string, details?: Record<string, unknown>) => void;

/** One kernel bug this project reproduces (the catalogue is in docs/core.md and docs/vtd.md). */
export interface HazardSpec {
  /** Stable name, used by `details.hazard` and by scenario expectations. */
  readonly kind: string;
  /** The kernel functions where it happens. */
  readonly where: string;
  /** The kernel versions that have it. */
  readonly kernels: string;
  /** What a real kernel does there. */
  readonly effect: string;
}

/** The core's hazards (drivers/iommu/ioasid.c). */
export const CORE_HAZARDS = {
  'invalid-ioasid-entry': {
    kind: 'invalid-ioasid-entry',
    where: 'ioasid_alloc, default_alloc (then ioasid_find, ioasid_set_data, ioasid_get/put, ioasid_free)',
    kernels: 'v5.5-v6.3',
    effect:
      'xa_alloc stores the new entry at 0xFFFFFFFF; ioasid_alloc() sees INVALID_IOASID, frees the data and fails, and the XArray keeps ' +
      'pointing at the freed entry: the default allocator is never empty again (every later custom allocator registration is EAGAIN), a later ' +
      'lookup of that ID reads freed memory and a later free frees it twice',
  },
  'allocator-list-corruption': {
    kind: 'allocator-list-corruption',
    where: 'ioasid_register_allocator (then ioasid_unregister_allocator)',
    kernels: 'v5.5-v6.3',
    effect:
      "ops->list is linked into a new allocator's slist before the checks; on EEXIST that allocator is freed with the group's list " +
      'still reaching into it (a secondary member registered again is added to its list a second time): a later unregister walks freed ' +
      'memory (the kernel oopses on the poisoned pointer, or loops)',
  },
} as const satisfies Record<string, HazardSpec>;

export type CoreHazardKind = keyof typeof CORE_HAZARDS;

/** Log a hazard: level `hazard`, `details.hazard` = its kind, with where and which kernels. */
export function logHazard(log: LogFn, spec: HazardSpec, message: string, details: Record<string, unknown> = {}): void {
  log('hazard', `kernel hazard (${spec.kind}, ${spec.where.split(' ')[0]?.replace(/,$/, '')}, ${spec.kernels}): ${message}`, {
    ...details,
    hazard: spec.kind,
    where: spec.where,
    kernels: spec.kernels,
  });
}
