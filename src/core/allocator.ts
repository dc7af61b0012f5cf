/**
 * The allocator plug-in interface (the kernel's `struct ioasid_allocator_ops`). The core knows
 * nothing of its plug-ins: a custom allocator is two functions and a private pointer.
 */

/**
 * `alloc(min, max, pdata)` returns an ID, or INVALID_IOASID (or throws an IoasidError) on failure;
 * `free(id, pdata)` releases it and may refuse by throwing. Either may return a Promise: a guest's
 * allocator crosses to the host. Ops whose `alloc` and `free` are the same functions form one
 * shared group with one ID table (kernel: "shared helper functions").
 */
export interface AllocatorOps<P = unknown> {
  readonly alloc: (min: number, max: number, pdata: P) => number | Promise<number>;
  readonly free: (id: number, pdata: P) => void | Promise<void>;
  readonly pdata: P;
}
