/**
 * An IOASID set: an identity token for ownership (the kernel's `struct ioasid_set`, compared by
 * address). Two sets with the same name are different sets. A set belongs to the space that made
 * it; passing it to another space is an error.
 */
export interface IoasidSetOptions {
  /** For messages and snapshots. */
  readonly name: string;
  /** Most IDs the set may hold at once; 0 or absent = no limit (extension series semantics). */
  readonly quota?: number;
  /** Optional unique token (the extension series' MM token); a second set with it is EEXIST. */
  readonly token?: string;
}

export class IoasidSet {
  readonly name: string;
  readonly quota: number;
  readonly token: string | undefined;
  /** Slot in the owning space's set table; -1 once destroyed. @internal */
  #slot: number;
  readonly #owner: object;

  /** @internal Made only by `IoasidSpace.createSet`. */
  constructor(owner: object, slot: number, opts: Required<Pick<IoasidSetOptions, 'name' | 'quota'>> & { token: string | undefined }) {
    this.#owner = owner;
    this.#slot = slot;
    this.name = opts.name;
    this.quota = opts.quota;
    this.token = opts.token;
    Object.freeze(this);
  }

  /** @internal */
  /** The set's slot in `owner`; -2 when it belongs to another space, -3 when it is no set. */
  static slotOf(set: unknown, owner: object): number {
    if (typeof set !== 'object' || set === null || !(#owner in set)) return -3;
    return (set as IoasidSet).#owner === owner ? (set as IoasidSet).#slot : -2;
  }

  /** @internal */
  static retire(set: IoasidSet): void {
    set.#slot = -1;
  }

  get destroyed(): boolean {
    return this.#slot === -1;
  }

  toString(): string {
    return `IoasidSet(${this.name})`;
  }
}
