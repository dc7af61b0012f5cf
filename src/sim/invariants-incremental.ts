/**
 * The system's invariants (see `invariants.ts` and docs/scenarios.md), checked for exactly what one step touched, in
 * time independent of how many PASIDs the system holds. `checkInvariants` walks every PASID of
 * every VM at every level; a million-step workload cannot afford that after each step, so the
 * scenario runner calls this checker after every step and the full one every K steps.
 *
 * Scopes, cheapest first:
 *  - `pasid(host, vm, guest, p)` after an alloc, free, bind or unbind of PASID p (O(depth)):
 *    the host's owner of p vs what the VM's guest holds (guest-subset); no other guest of that
 *    host holds p (single-owner, through a PASID -> guest index); every host above owns p for the
 *    VM that runs the level below (single-owner across levels); if a device of the VM is bound to
 *    p the VM owns it (binding-ownership); the VM's count against its quota (quota, O(1)); and,
 *    when the guest runs a nested host, the same for the nested guest last seen holding p.
 *  - `binding(host, vm, bdf, p)` after a bind: the device is assigned and p is within its width.
 *  - `vm(host, vm, guest)` after the rare steps that change a VM wholesale (vIOMMU unplug, which
 *    may drain the guest; create; boot): the full checker restricted to one VM and the VMs its
 *    guest hosts, O(their PASIDs); it also re-syncs the indexes below from their real state.
 *  - `destroyed(host, vm, guest)` after a VM's destruction: nothing is left of it.
 *
 * The indexes (which guest holds which PASID, how many devices are bound to each PASID) are kept
 * from what the checker observes, and are only ever trusted after a confirming O(1) lookup in the
 * real state, so a stale entry can hide nothing: it is replaced the next time the PASID is seen.
 */
import type { HostView as Host } from '../host/index.ts';
import type { VmView as Vm } from '../host/index.ts';
import type { Guest } from '../host/index.ts';
import { deviceLocal, type InvariantName, type Violation } from './invariants.ts';

export class IncrementalChecker {
  /** Per host: PASID -> the guest last seen holding it. */
  readonly #holders = new WeakMap<Host, Map<number, Guest>>();
  /** Per guest: the PASIDs it was last seen holding. */
  readonly #held = new WeakMap<Guest, Set<number>>();
  /** Per VM: PASID -> number of device bindings the host has for it. */
  readonly #bound = new WeakMap<Vm, Map<number, number>>();
  readonly #out: Violation[];
  readonly #limit: number;

  /** Violations are appended to `out` (at most `limit`, default 20, per call site's array). */
  constructor(out: Violation[], limit = 20) {
    this.#out = out;
    this.#limit = limit;
  }

  #report(invariant: InvariantName, message: string, details: Record<string, unknown>): void {
    if (this.#out.length < this.#limit) this.#out.push({ invariant, message, details });
  }

  #holdersOf(host: Host): Map<number, Guest> {
    let m = this.#holders.get(host);
    if (m === undefined) this.#holders.set(host, (m = new Map()));
    return m;
  }

  #heldOf(guest: Guest): Set<number> {
    let s = this.#held.get(guest);
    if (s === undefined) this.#held.set(guest, (s = new Set()));
    return s;
  }

  #boundOf(vm: Vm): Map<number, number> {
    let m = this.#bound.get(vm);
    if (m === undefined) this.#bound.set(vm, (m = new Map()));
    return m;
  }

  /** The host bound (`delta` 1) or unbound (-1) a device of `vm` to PASID p. */
  noteBinding(vm: Vm, pasid: number, delta: 1 | -1): void {
    const m = this.#boundOf(vm);
    const n = (m.get(pasid) ?? 0) + delta;
    if (n > 0) m.set(pasid, n);
    else m.delete(pasid);
  }

  /**
   * Guest `guest` of `vm` holds PASID p: it must be the VM's on the host (guest-subset) and no
   * other live guest of this host may hold it (single-owner). Records the guest as its holder.
   */
  #guestHolds(host: Host, vm: Vm, guest: Guest, p: number, ownedByVm: boolean, holders: Map<number, Guest>): void {
    if (!ownedByVm) {
      const owner = ownerName(host, p);
      this.#report('guest-subset', `the guest of VM ${vm.id} holds PASID ${p}, which ${host.name} records as ${owner === null ? 'free' : `owned by ${owner}`}`, { host: host.name, vm: vm.id, pasid: p, hostOwner: owner });
    }
    const other = holders.get(p);
    if (other !== undefined && other !== guest && !other.dead && !other.vm.destroyed && other.space.has(p)) {
      this.#report('single-owner', `PASID ${p} is held by the guests of ${other.vm.id} and ${vm.id} on ${host.name}`, { host: host.name, pasid: p, guests: [other.vm.id, vm.id] });
    }
    holders.set(p, guest);
  }

  /** After a step that allocated, freed, bound or unbound PASID p of `vm` (guest: its guest). */
  pasid(host: Host, vm: Vm, guest: Guest | null, p: number): void {
    if (!Number.isInteger(p) || p < 0 || p > 0xffffffff) return;
    const space = host.space;
    const owned = space.has(p) && space.ownerOf(p) === vm.set;
    const holders = this.#holdersOf(host);
    if (guest !== null && !guest.dead && guest.space.has(p) && !deviceLocal(guest)) {
      this.#guestHolds(host, vm, guest, p, owned, holders);
      this.#heldOf(guest).add(p);
    } else {
      if (guest !== null) {
        this.#held.get(guest)?.delete(p);
        if (holders.get(p) === guest) holders.delete(p);
      }
    }
    if (owned) this.#chain(host, vm, p);
    const bound = this.#bound.get(vm)?.get(p);
    if (bound !== undefined && !owned) {
      this.#report('binding-ownership', `a device of VM ${vm.id} is bound to PASID ${p}, which the VM does not own`, { host: host.name, vm: vm.id, pasid: p, hostOwner: ownerName(host, p) });
    }
    this.quota(host, vm);
    // The guest may run a nested host in which p is (or was) a nested VM's: look one level down.
    const nested = guest?.nestedHost ?? null;
    if (nested !== null && !nested.down) {
      const below = this.#holders.get(nested)?.get(p);
      if (below !== undefined) this.pasid(nested, below.vm, below, p);
    }
  }

  /** After a bind of device `bdf` to p: the device is the VM's and p is within its PASID width. */
  binding(host: Host, vm: Vm, bdf: string, p: number): void {
    let max = -1;
    let bits = 0;
    try {
      const d = vm.device(bdf);
      max = d.maxPasid;
      bits = d.pasidBits;
    } catch {
      this.#report('binding-ownership', `VM ${vm.id} has a binding of ${bdf}, which is not assigned to it`, { host: host.name, vm: vm.id, bdf, pasid: p });
      return;
    }
    if (p > max) this.#report('binding-ownership', `device ${bdf} is bound to PASID ${p}, beyond its ${bits}-bit width`, { host: host.name, vm: vm.id, bdf, pasid: p });
  }

  /** The VM's PASID count against its quota (O(1)). */
  quota(host: Host, vm: Vm): void {
    if (vm.destroyed || vm.quota === 0) return;
    const n = host.space.setCount(vm.set);
    if (n > vm.quota) this.#report('quota', `VM ${vm.id} holds ${n} PASIDs, over its quota of ${vm.quota}`, { host: host.name, vm: vm.id, held: n, quota: vm.quota });
  }

  /** Every host above `host` owns p for the VM whose guest runs the level below. */
  #chain(host: Host, vm: Vm, p: number): void {
    let h = host;
    while (h.parent !== null && !deviceLocal(h.parent)) {
      const pvm = h.parent.vm;
      const ph = pvm.host;
      if (!(ph.space.has(p) && ph.space.ownerOf(p) === pvm.set)) {
        this.#report('single-owner', `nested VM ${vm.id} on ${host.name} owns PASID ${p}, which ${pvm.id} does not own on ${ph.name}`, { host: host.name, vm: vm.id, pasid: p, parentVm: pvm.id });
        return;
      }
      h = ph;
    }
  }

  /**
   * The whole of one VM (O(its PASIDs)): the full checker's rules restricted to it. Re-syncs the
   * indexes from the VM's real state.
   */
  vm(host: Host, vm: Vm, guest: Guest | null): void {
    if (vm.destroyed) return;
    const held = vm.pasids();
    const heldSet = new Set(held);
    if (vm.quota > 0 && held.length > vm.quota) {
      this.#report('quota', `VM ${vm.id} holds ${held.length} PASIDs, over its quota of ${vm.quota}`, { host: host.name, vm: vm.id, held: held.length, quota: vm.quota });
    }
    const holders = this.#holdersOf(host);
    if (guest !== null) {
      const seen = this.#heldOf(guest);
      const now = guest.dead || deviceLocal(guest) ? [] : guest.pasids();
      const nowSet = new Set(now);
      for (const p of seen) if (!nowSet.has(p) && holders.get(p) === guest) holders.delete(p);
      seen.clear();
      for (const p of now) {
        this.#guestHolds(host, vm, guest, p, heldSet.has(p), holders);
        seen.add(p);
      }
    }
    const devices = new Map(vm.devices().map((d) => [d.bdf, d]));
    const bound = new Map<number, number>();
    const local = new Set(vm.localBindings().map(([bdf, p]) => `${bdf}/${p}`));
    for (const [bdf, p] of vm.bindings()) {
      if (local.has(`${bdf}/${p}`)) {
        const d = devices.get(bdf);
        if (d === undefined || p > d.maxPasid) this.#report('binding-ownership', `device ${bdf} of VM ${vm.id} has a device-local binding to PASID ${p} it cannot hold`, { host: host.name, vm: vm.id, bdf, pasid: p });
        continue;
      }
      bound.set(p, (bound.get(p) ?? 0) + 1);
      const d = devices.get(bdf);
      if (d === undefined) this.#report('binding-ownership', `VM ${vm.id} has a binding of ${bdf}, which is not assigned to it`, { host: host.name, vm: vm.id, bdf, pasid: p });
      else if (p > d.maxPasid) this.#report('binding-ownership', `device ${bdf} is bound to PASID ${p}, beyond its ${d.pasidBits}-bit width`, { host: host.name, vm: vm.id, bdf, pasid: p });
      if (!heldSet.has(p)) this.#report('binding-ownership', `device ${bdf} of VM ${vm.id} is bound to PASID ${p}, which the VM does not own`, { host: host.name, vm: vm.id, bdf, pasid: p, hostOwner: ownerName(host, p) });
    }
    this.#bound.set(vm, bound);
    if (host.parent !== null) for (const p of held) this.#chain(host, vm, p);
    // What changes a VM wholesale (e.g. losing its last vIOMMU) reaches the VMs its guest runs.
    const nested = guest?.nestedHost ?? null;
    if (nested !== null && !nested.down) for (const n of nested.vms()) this.vm(nested, n, nested.guest(n.id));
  }

  /** After `vm` was destroyed on `host` (guest: the guest it ran, if any): nothing is left. */
  destroyed(host: Host, vm: Vm, guest: Guest | null): void {
    if (guest !== null) {
      const holders = this.#holdersOf(host);
      const seen = this.#held.get(guest);
      if (seen !== undefined) for (const p of seen) if (holders.get(p) === guest) holders.delete(p);
      this.#held.delete(guest);
    }
    this.#bound.delete(vm);
    if (host.down) return;
    const left: string[] = [];
    if (!vm.destroyed) left.push('the VM itself');
    let current: Vm | null = null;
    try {
      current = host.vm(vm.id);
    } catch {
      current = null;
    }
    if (current === vm) left.push('its place among the host\'s VMs');
    if (current === null && host.space.setByToken(vm.id) !== undefined) left.push('its set');
    const bindings = vm.bindings().length;
    if (bindings > 0) left.push(`${bindings} bindings`);
    const devices = vm.devices().length;
    if (devices > 0) left.push(`${devices} devices`);
    if (!vm.set.destroyed) {
      left.push('its set');
      try {
        const n = host.space.setCount(vm.set);
        if (n > 0) left.push(`${n} PASIDs`);
      } catch {
        // the set is no longer valid in the space: nothing to count
      }
    }
    if (guest !== null) {
      if (!guest.dead) left.push('a running guest');
      const nested = guest.nestedHost;
      if (nested !== null && !nested.down) left.push(`its nested host ${nested.name}`);
    }
    if (left.length > 0) {
      const what = [...new Set(left)];
      this.#report('destroyed-vm', `destroyed VM ${vm.id} left ${what.join(', ')} on ${host.name}`, { host: host.name, vm: vm.id, left: what });
    }
  }
}

function ownerName(host: Host, p: number): string | null {
  if (!host.space.has(p)) return null;
  const set = host.space.ownerOf(p);
  return set === null ? 'no set' : set.name;
}
