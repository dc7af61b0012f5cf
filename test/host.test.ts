/**
 * The host layer (docs/core.md): VMs with sets and quotas, vIOMMUs per segment, assigned devices, SVA
 * binding through the guest, ownership, teardown, nesting, and the invariant checker catching
 * faults injected on purpose.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { IoasidError, IoasidSpace } from '../src/core/index.ts';
import { Host, type Vm } from '../src/host/index.ts';
import { checkInvariants } from '../src/sim/index.ts';
import type { VcmdBackend } from '../src/vtd/index.ts';

const code = (c: string) => (e: unknown) => e instanceof IoasidError && e.code === c;

function seedHost() {
  const host = new Host({ name: 'L0' });
  const vm = host.createVm({
    id: 'vm1',
    quota: 8,
    viommus: [{ segment: 0 }, { segment: 1 }],
    devices: [{ bdf: '0000:00:02.0' }, { bdf: '0001:00:03.0', pasidBits: 10 }],
  });
  return { host, vm };
}

describe('host: VMs, devices and SVA binding', () => {
  it('a guest binds a device to an address space: the PASID comes from the VM set on the host', async () => {
    const { host, vm } = seedHost();
    const guest = host.boot('vm1');
    const pasid = await guest.svaBind('0000:00:02.0', 'mm-1');
    assert.deepEqual(vm.pasids(), [pasid]);
    assert.deepEqual(vm.bindings(), [['0000:00:02.0', pasid]]);
    assert.equal(host.space.ownerOf(pasid), vm.set);
    assert.deepEqual(guest.space.find(null, pasid), { mm: 'mm-1', pasid, devices: new Set(['0000:00:02.0']) });
    assert.deepEqual(checkInvariants(host), []);
  });

  it('the same address space bound to a second device reuses its PASID; unbind frees on the last device', async () => {
    const { host, vm } = seedHost();
    const guest = host.boot('vm1');
    const a = await guest.svaBind('0000:00:02.0', 'mm');
    const b = await guest.svaBind('0001:00:03.0', 'mm');
    assert.equal(a, b);
    await guest.svaUnbind('0000:00:02.0', 'mm');
    assert.deepEqual(vm.pasids(), [a]);
    await guest.svaUnbind('0001:00:03.0', 'mm');
    assert.deepEqual(vm.pasids(), []);
    assert.deepEqual(guest.pasids(), []);
  });

  it('a 10-bit device gets a PASID below 1024 with the range extension', async () => {
    const host = new Host();
    host.createVm({ id: 'vm', viommus: [{ segment: 0, rangeExtension: true }], devices: [{ bdf: '0000:00:04.0', pasidBits: 10 }] });
    // Fill the low PASIDs with another VM so that lowest-free would be above 1023.
    const other = host.createVm({ id: 'other', quota: 0 });
    for (let i = 0; i < 1100; i++) host.space.allocSync(other.set, 1, 0xfffff);
    const guest = host.boot('vm');
    await assert.rejects(guest.svaBind('0000:00:04.0', 'mm'), code('ENOSPC'));
    host.space.freeSync(500, other.set);
    assert.equal(await guest.svaBind('0000:00:04.0', 'mm'), 500);
  });

  it('without the range extension a 10-bit device is refused with ERANGE and nothing leaks (strict)', async () => {
    const host = new Host();
    const vm = host.createVm({ id: 'vm', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:04.0', pasidBits: 10 }] });
    const other = host.createVm({ id: 'other', quota: 0 });
    for (let i = 0; i < 1100; i++) host.space.allocSync(other.set, 1, 0xfffff);
    const guest = host.boot('vm');
    await assert.rejects(guest.svaBind('0000:00:04.0', 'mm'), code('ERANGE'));
    assert.deepEqual(vm.pasids(), []);
    assert.deepEqual(guest.pasids(), []);
  });

  it('quota exhaustion reaches the guest as ENOSPC ("no PASID available" at the register level)', async () => {
    const host = new Host();
    host.createVm({ id: 'vm', quota: 2, viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }] });
    const events: string[] = [];
    host.on((e) => events.push(e.type));
    const guest = host.boot('vm');
    await guest.svaBind('0000:00:02.0', 'a');
    await guest.svaBind('0000:00:02.0', 'b');
    await assert.rejects(guest.svaBind('0000:00:02.0', 'c'), code('ENOSPC'));
    assert.ok(events.includes('quota-exhausted'));
    const last = host.vm('vm').viommu(0).device.recentCommands().at(-1);
    assert.equal(last?.statusName, 'no PASID available');
  });

  it('ownership: a VM cannot free or bind another VM\'s PASID', async () => {
    const host = new Host();
    const a = host.createVm({ id: 'a', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }] });
    const b = host.createVm({ id: 'b', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }] });
    const ga = host.boot('a');
    host.boot('b');
    const pa = await ga.svaBind('0000:00:02.0', 'mm');
    assert.throws(() => b.bind('0000:00:02.0', pa), code('EACCES'));
    // b's VMM writes a Free of a's PASID straight into its vIOMMU: "invalid PASID".
    const dev = b.viommu(0).device;
    dev.write(0xe00, (BigInt(pa) << 16n) | 2n, 8);
    assert.equal(dev.recentCommands().at(-1)?.statusName, 'invalid PASID');
    assert.deepEqual(a.pasids(), [pa]);
  });

  it('free while bound is refused by the guest (EBUSY) and the host keeps the PASID', async () => {
    const { host, vm } = seedHost();
    const guest = host.boot('vm1');
    const p = await guest.svaBind('0000:00:02.0', 'mm');
    await assert.rejects(guest.free(p), code('EBUSY'));
    assert.deepEqual(vm.pasids(), [p]);
    // And a VMM that bypasses the guest driver cannot free it either: the host refuses.
    vm.viommu(0).device.write(0xe00, (BigInt(p) << 16n) | 2n, 8);
    assert.equal(vm.viommu(0).device.recentCommands().at(-1)?.statusName, 'invalid PASID');
    assert.deepEqual(vm.pasids(), [p]);
  });

  it('destroying a VM leaves the host exactly as if it had never existed', async () => {
    const host = new Host();
    host.createVm({ id: 'keep', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }] });
    const gk = host.boot('keep');
    await gk.svaBind('0000:00:02.0', 'mm');
    const before = host.snapshot();
    const { vm } = { vm: host.createVm({ id: 'vm1', viommus: [{ segment: 0 }, { segment: 1 }], devices: [{ bdf: '0000:00:02.0' }, { bdf: '0001:00:03.0' }] }) };
    const guest = host.boot('vm1');
    await guest.svaBind('0000:00:02.0', 'x');
    await guest.svaBind('0001:00:03.0', 'y');
    await guest.alloc();
    const { pasids, bindings } = await host.destroyVm('vm1');
    assert.equal(pasids.length, 3);
    assert.equal(bindings.length, 2);
    assert.deepEqual(host.snapshot(), before);
    assert.deepEqual(checkInvariants(host, { destroyed: [{ host, vm }] }), []);
  });

  it('hot-removal of the active vIOMMU keeps the other serving; outstanding PASIDs stay usable', async () => {
    const { host, vm } = seedHost();
    const guest = host.boot('vm1');
    const p1 = await guest.alloc();
    assert.equal(guest.space.activeAllocator()?.pdata, guest.unit(0));
    await vm.removeDevice('0000:00:02.0');
    await vm.removeViommu(0);
    assert.equal(guest.space.activeAllocator()?.pdata, guest.unit(1));
    const p2 = await guest.alloc();
    assert.notEqual(p1, p2);
    await guest.free(p1);
    assert.deepEqual(vm.pasids(), [p2]);
    assert.deepEqual(checkInvariants(host), []);
  });

  it('removing a vIOMMU with devices behind it is EBUSY', async () => {
    const { vm } = seedHost();
    await assert.rejects(vm.removeViommu(0), code('EBUSY'));
  });

  it('removing a device unbinds it in the guest first', async () => {
    const { host, vm } = seedHost();
    const guest = host.boot('vm1');
    await guest.svaBind('0000:00:02.0', 'mm');
    await vm.removeDevice('0000:00:02.0');
    assert.deepEqual(vm.bindings(), []);
    assert.deepEqual(vm.pasids(), []);
    assert.deepEqual(checkInvariants(host), []);
  });

  it('bad specs are EINVAL and create nothing', () => {
    const host = new Host();
    assert.throws(() => host.createVm({ id: 'bad id!' }), code('EINVAL'));
    assert.throws(() => host.createVm({ id: 'x', viommus: [{ segment: -1 }] }), code('EINVAL'));
    assert.throws(() => host.createVm({ id: 'y', devices: [{ bdf: 'nope' }] }), code('EINVAL'));
    assert.throws(() => host.createVm({ id: 'z', devices: [{ bdf: '0000:00:02.0' }] }), code('EINVAL'));
    assert.throws(() => host.createVm({ id: 'q', quota: -5 }), code('EINVAL'));
    assert.deepEqual(host.vms(), []);
    assert.deepEqual(host.space.sets(), []);
  });
});

describe('host: nesting', () => {
  it('three levels deep, every PASID is unique and owned along one chain', async () => {
    const l0 = new Host({ name: 'L0' });
    l0.createVm({ id: 'l1', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }] });
    const g1 = l0.boot('l1');
    const h1 = g1.startHost();
    h1.createVm({ id: 'l2', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:05.0' }] });
    const g2 = h1.boot('l2');
    const h2 = g2.startHost();
    h2.createVm({ id: 'l3', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:06.0' }] });
    const g3 = h2.boot('l3');
    const p3 = await g3.svaBind('0000:00:06.0', 'deep');
    const p1 = await g1.svaBind('0000:00:02.0', 'top');
    const p2 = await g2.svaBind('0000:00:05.0', 'mid');
    assert.equal(new Set([p1, p2, p3]).size, 3);
    assert.deepEqual(l0.vm('l1').pasids(), [p1, p2, p3].sort((a, b) => a - b));
    assert.equal(h2.level, 2);
    assert.deepEqual(checkInvariants(l0), []);
    await l0.destroyVm('l1');
    assert.deepEqual(l0.space.ids(), []);
    assert.equal(h1.down, true);
  });
});

describe('invariant checker catches faults injected on purpose', () => {
  const faultyHost = (wrap: (vm: Vm, b: VcmdBackend) => VcmdBackend, space?: IoasidSpace) => new Host({ wrapBackend: wrap, ...(space ? { space } : {}) });

  it('single-owner and guest-subset: a backend that hands out another VM\'s PASID', async () => {
    let stolen = -1;
    const host = faultyHost((vm, b) => ({
      allocate: (r) => (vm.id === 'thief' && stolen > 0 ? stolen : b.allocate(r)),
      free: (p) => b.free(p),
    }));
    host.createVm({ id: 'victim', viommus: [{ segment: 0 }] });
    host.createVm({ id: 'thief', viommus: [{ segment: 0 }] });
    stolen = await host.boot('victim').alloc();
    await host.boot('thief').alloc();
    const v = checkInvariants(host).map((x) => x.invariant);
    assert.ok(v.includes('single-owner'));
    assert.ok(v.includes('guest-subset'));
  });

  it('guest-subset: a backend that answers a PASID it never allocated', async () => {
    const host = faultyHost((_vm, b) => ({ allocate: () => 4242, free: (p) => b.free(p) }));
    host.createVm({ id: 'vm', viommus: [{ segment: 0 }] });
    await host.boot('vm').alloc();
    assert.deepEqual(checkInvariants(host).map((x) => x.invariant), ['guest-subset']);
  });

  it('quota: a host space that does not enforce quotas (linux-5.8 core)', async () => {
    const host = new Host({ space: new IoasidSpace({ profile: 'linux-5.8' }) });
    host.createVm({ id: 'vm', quota: 1, viommus: [{ segment: 0 }] });
    const g = host.boot('vm');
    await g.alloc();
    await g.alloc();
    assert.deepEqual(checkInvariants(host).map((x) => x.invariant), ['quota']);
  });

  it('binding-ownership: a backend that frees a PASID still bound on the host', async () => {
    const host = faultyHost((vm, b) => ({
      allocate: (r) => b.allocate(r),
      free: (p) => host.space.freeSync(p, vm.set), // skips the host's binding check
    }));
    const vm = host.createVm({ id: 'vm', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }] });
    const g = host.boot('vm', { profile: 'linux-5.8' });
    const p = await g.svaBind('0000:00:02.0', 'mm');
    vm.viommu(0).device.write(0xe00, (BigInt(p) << 16n) | 2n, 8);
    assert.ok(checkInvariants(host).some((x) => x.invariant === 'binding-ownership'));
  });

  it('destroyed-vm: a teardown that forgets to tear the bindings down', async () => {
    const host = new Host();
    const vm = host.createVm({ id: 'vm', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }] });
    await host.boot('vm').svaBind('0000:00:02.0', 'mm');
    vm.dropAllBindings = () => []; // the fault
    await host.destroyVm('vm');
    const found = checkInvariants(host, { destroyed: [{ host, vm }] });
    assert.deepEqual(found.map((x) => x.invariant), ['destroyed-vm']);
    assert.match(found[0]?.message ?? '', /1 bindings/);
  });
});

describe('host: SVA concurrency', () => {
  it('two concurrent first binds of one address space get one PASID', async () => {
    const host = new Host();
    const vm = host.createVm({ id: 'vm', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }, { bdf: '0000:00:03.0' }] });
    const g = host.boot('vm');
    const [a, b] = await Promise.all([g.svaBind('0000:00:02.0', 'mm'), g.svaBind('0000:00:03.0', 'mm')]);
    assert.equal(a, b);
    assert.deepEqual(vm.pasids(), [a]);
    assert.deepEqual(g.bindings(), [{ mm: 'mm', pasid: a, devices: ['0000:00:02.0', '0000:00:03.0'] }]);
    await g.svaUnbind('0000:00:02.0', 'mm');
    await g.svaUnbind('0000:00:03.0', 'mm');
    assert.deepEqual(vm.pasids(), []);
  });
});

describe('host: behaviour 78 (an address space keeps one PASID)', () => {
  it('behaviour 78: a bound address space reuses its PASID; a device whose width cannot hold it is ERANGE and nothing changes', async () => {
    const host = new Host();
    const vm = host.createVm({ id: 'vm', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }, { bdf: '0000:00:03.0', pasidBits: 4 }] });
    const other = host.createVm({ id: 'other', quota: 0 });
    for (let i = 0; i < 20; i++) host.space.allocSync(other.set, 1, 0xfffff);
    const g = host.boot('vm');
    const p = await g.svaBind('0000:00:02.0', 'mm');
    assert.ok(p > 15, 'the address space got a PASID above what 4 bits can carry');
    const before = host.snapshot();
    await assert.rejects(g.svaBind('0000:00:03.0', 'mm'), code('ERANGE'));
    assert.deepEqual(host.snapshot(), before);
    assert.deepEqual(g.bindings(), [{ mm: 'mm', pasid: p, devices: ['0000:00:02.0'] }]);
    assert.deepEqual(vm.pasids(), [p]);
  });
});
