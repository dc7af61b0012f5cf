/**
 * The guest's view of one remapping unit's register page: 32- and 64-bit MMIO accesses. A
 * `VcmdDevice` is one directly (in process); a remote transport can be another.
 */
export type AccessSize = 4 | 8;

export interface MmioAccessor {
  /** Read `size` bytes at `offset`; a value of that width. */
  read(offset: number, size: AccessSize): bigint;
  /** Write `size` bytes at `offset`. */
  write(offset: number, value: bigint, size: AccessSize): void;
}
