/**
 * The system's invariants (docs/scenarios.md), checked over a host and every host nested below it:
 *  1. single-owner: a PASID has one owner per host level (no two VMs' sets, no two guests),
 *     and across levels the owners form one chain (host -> VM -> nested VM ...).
 *  2. guest-subset: every PASID a guest kernel holds is owned by its VM on the host.
 *  3. quota: no VM holds more PASIDs than its quota.
 *  4. binding-ownership: every device binding is of a device assigned to the VM, to a PASID the
 *     VM owns, within the device's PASID width.
 *  5. destroyed-vm: nothing is left of a destroyed VM (no set, no PASID, no binding, no device).
 * A linux-6.x guest is outside 1, 2 and 4's ownership part: what replaced the design has no
 * system-wide namespace (its PASIDs are its own, attached per device; `deviceLocal`).
 * The checker reports violations; it never repairs anything.
 */
import type { Guest, HostView as Host } from '../host/index.ts';
import type { VmView as Vm } from '../host/index.ts';

/** A guest whose PASIDs are its own, attached per device (linux-6.x: iommufd, no VCMD). */
export function deviceLocal(guest: Guest | null): boolean {
  return guest !== null && guest.space.profile === 'linux-6.x';
}

export const INVARIANTS = ['single-owner', 'guest-subset', 'quota', 'binding-ownership', 'destroyed-vm'] as const;
export type InvariantName = (typeof INVARIANTS)[number];

export interface Violation {
  readonly invariant: InvariantName;
  readonly message: string;
  readonly details: Readonly<Record<string, unknown>>;
}

export interface CheckOptions {
  /** VMs destroyed so far, with the host they were on (the scenario runner tracks them). */
  readonly destroyed?: Iterable<{ readonly host: Host; readonly vm: Vm }>;
  /** Stop after this many violations (default 20). */
  readonly limit?: number;
}

export function checkInvariants(root: Host, opts: CheckOptions = {}): Violation[] {
  const out: Violation[] = [];
  const limit = opts.limit ?? 20;
  const report = (invariant: InvariantName, message: string, details: Record<string, unknown>): void => {
    if (out.length < limit) out.push({ invariant, message, details });
  };

  for (const host of root.allHosts()) {
    const ownerOf = new Map<number, string>();
    const guestHolder = new Map<number, string>();
    for (const vm of host.vms()) {
      const held = vm.pasids();
      const heldSet = new Set(held);
      // 1. one owner per PASID at this level, in the host's space ...
      for (const p of held) {
        const prev = ownerOf.get(p);
        if (prev !== undefined) report('single-owner', `PASID ${p} is owned by VMs ${prev} and ${vm.id} on ${host.name}`, { host: host.name, pasid: p, owners: [prev, vm.id] });
        else ownerOf.set(p, vm.id);
      }
      // 3. quota
      if (vm.quota > 0 && held.length > vm.quota) {
        report('quota', `VM ${vm.id} holds ${held.length} PASIDs, over its quota of ${vm.quota}`, { host: host.name, vm: vm.id, held: held.length, quota: vm.quota });
      }
      const guest = host.guest(vm.id);
      if (guest !== null && !guest.dead && !deviceLocal(guest)) {
        for (const p of guest.pasids()) {
          // ... and among the guests: no PASID in two guest kernels of one host.
          const prev = guestHolder.get(p);
          if (prev !== undefined) report('single-owner', `PASID ${p} is held by the guests of ${prev} and ${vm.id} on ${host.name}`, { host: host.name, pasid: p, guests: [prev, vm.id] });
          else guestHolder.set(p, vm.id);
          // 2. guest-held within the VM's set on the host
          if (!heldSet.has(p)) {
            const owner = ownerOf.get(p) ?? ownerOfAnywhere(host, p);
            report('guest-subset', `the guest of VM ${vm.id} holds PASID ${p}, which the host records as ${owner === null ? 'free' : `owned by ${owner}`}`, { host: host.name, vm: vm.id, pasid: p, hostOwner: owner });
          }
        }
      }
      // 4. bindings
      const devices = new Map(vm.devices().map((d) => [d.bdf, d]));
      const local = new Set(vm.localBindings().map(([bdf, p]) => `${bdf}/${p}`));
      for (const [bdf, p] of vm.bindings()) {
        const d = devices.get(bdf);
        if (d === undefined) report('binding-ownership', `VM ${vm.id} has a binding of ${bdf}, which is not assigned to it`, { host: host.name, vm: vm.id, bdf, pasid: p });
        else if (p > d.maxPasid) report('binding-ownership', `device ${bdf} is bound to PASID ${p}, beyond its ${d.pasidBits}-bit width`, { host: host.name, vm: vm.id, bdf, pasid: p });
        if (!heldSet.has(p) && !local.has(`${bdf}/${p}`)) {
          report('binding-ownership', `device ${bdf} of VM ${vm.id} is bound to PASID ${p}, which the VM does not own`, { host: host.name, vm: vm.id, bdf, pasid: p, hostOwner: ownerOfAnywhere(host, p) });
        }
      }
    }
    // 1. across levels: a nested host's VMs own only PASIDs of the VM whose guest runs them.
    if (host.parent !== null && !deviceLocal(host.parent)) {
      const parentVm = host.parent.vm;
      const parentHeld = new Set(parentVm.pasids());
      for (const [p, owner] of ownerOf) {
        if (!parentHeld.has(p)) report('single-owner', `nested VM ${owner} on ${host.name} owns PASID ${p}, which ${parentVm.id} does not own one level down`, { host: host.name, vm: owner, pasid: p, parentVm: parentVm.id });
      }
    }
  }

  // 5. destroyed VMs
  for (const { host, vm } of opts.destroyed ?? []) {
    if (host.down) continue;
    const left: string[] = [];
    if (host.space.setByToken(vm.id) !== undefined && !host.vms().some((v) => v.id === vm.id)) left.push('its set');
    if (!vm.destroyed) left.push('the VM itself');
    if (vm.bindings().length > 0) left.push(`${vm.bindings().length} bindings`);
    if (vm.devices().length > 0) left.push(`${vm.devices().length} devices`);
    if (!vm.set.destroyed) {
      left.push('its set');
      try {
        const n = host.space.idsOf(vm.set).length;
        if (n > 0) left.push(`${n} PASIDs`);
      } catch {
        // set no longer valid in the space: nothing to count
      }
    }
    if (left.length > 0 && !host.vms().includes(vm)) {
      report('destroyed-vm', `destroyed VM ${vm.id} left ${[...new Set(left)].join(', ')} on ${host.name}`, { host: host.name, vm: vm.id, left: [...new Set(left)] });
    }
  }
  return out;
}

function ownerOfAnywhere(host: Host, pasid: number): string | null {
  try {
    const set = host.space.ownerOf(pasid);
    return set === null ? 'no set' : set.name;
  } catch {
    return null;
  }
}
