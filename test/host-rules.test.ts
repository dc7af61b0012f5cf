/**
 * The host's domain rules, one test each, numbered as in docs/rules.md (which names the one place
 * in code that enforces each). Every refusal is an IoasidError with the rule's errno and changes
 * nothing: the host snapshot is compared before and after.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { IoasidError } from '../src/core/index.ts';
import { Host } from '../src/host/index.ts';

/** `fn` is refused with `code` and the host is as it was. */
async function refused(host: Host, code: string, fn: () => unknown): Promise<void> {
  const before = host.snapshot();
  await assert.rejects(async () => fn(), (e: unknown) => e instanceof IoasidError && e.code === code && e.message.length > 0);
  assert.deepEqual(host.snapshot(), before, 'a refusal changes nothing');
}

function world() {
  const host = new Host();
  const vm = host.createVm({ id: 'vm1', quota: 3, credential: 'c1', viommus: [{ segment: 0 }, { segment: 1 }], devices: [{ bdf: '0000:00:02.0' }, { bdf: '0001:00:03.0', pasidBits: 4 }] });
  host.createVm({ id: 'vm2', credential: 'c2', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }] });
  return { host, vm };
}

describe('host rules (docs/rules.md)', () => {
  it('H1 a VM id is 1-63 letters, digits, ".", "_" or "-", starting with a letter or digit (EINVAL)', async () => {
    const { host } = world();
    for (const id of ['', '-x', 'a b', 'x'.repeat(64), 'é', 7]) await refused(host, 'EINVAL', () => host.createVm({ id: id as string }));
    host.createVm({ id: 'A.b_c-9' });
  });

  it('H2 a VM id is used once (EEXIST)', async () => {
    const { host } = world();
    await refused(host, 'EEXIST', () => host.createVm({ id: 'vm1' }));
  });

  it('H3 a quota is a non-negative integer within the space (EINVAL, ENOSPC); 0 is unlimited', async () => {
    const { host } = world();
    await refused(host, 'EINVAL', () => host.createVm({ id: 'q', quota: -1 }));
    await refused(host, 'EINVAL', () => host.createVm({ id: 'q', quota: 1.5 }));
    await refused(host, 'ENOSPC', () => host.createVm({ id: 'q', quota: 0x100001 }));
    const unlimited = host.createVm({ id: 'q', quota: 0 });
    assert.equal((await unlimited.allocPasids({ count: 1024 })).length, 1024);
  });

  it('H4 a VM holds at most its quota, a batch all or nothing, the numbers in the message (EDQUOT)', async () => {
    const { host, vm } = world();
    await vm.allocPasids({ count: 2 });
    await assert.rejects(vm.allocPasids({ count: 2 }), (e: unknown) => e instanceof IoasidError && e.code === 'EDQUOT' && /holds 2 of its quota of 3: 2 more IDs would exceed it/.test(e.message));
    await refused(host, 'EDQUOT', () => vm.allocPasids({ count: 2 }));
  });

  it('H5 a valid vIOMMU spec (EINVAL), one per segment (EEXIST)', async () => {
    const { host, vm } = world();
    await refused(host, 'EINVAL', () => vm.addViommu({ segment: 65536 }));
    await refused(host, 'EINVAL', () => vm.addViommu({ segment: 2, layout: 'C' as 'A' }));
    await refused(host, 'EINVAL', () => vm.addViommu({ segment: 2, layout: 'A', rangeExtension: true }));
    await refused(host, 'EEXIST', () => vm.addViommu({ segment: 1 }));
    await refused(host, 'EEXIST', () => host.createVm({ id: 'v', viommus: [{ segment: 3 }, { segment: 3 }] }));
  });

  it('H6 a valid device (EINVAL), assigned once (EEXIST), behind a vIOMMU of its segment (EINVAL)', async () => {
    const { host, vm } = world();
    await refused(host, 'EINVAL', () => vm.assignDevice({ bdf: '0000:00:2.0' }));
    await refused(host, 'EINVAL', () => vm.assignDevice({ bdf: '0000:00:04.0', pasidBits: 21 }));
    await refused(host, 'EEXIST', () => vm.assignDevice({ bdf: '0000:00:02.0' }));
    await refused(host, 'EINVAL', () => vm.assignDevice({ bdf: '0009:00:02.0' }));
  });

  it('H7 a vIOMMU with devices behind it stays (EBUSY)', async () => {
    const { host, vm } = world();
    await refused(host, 'EBUSY', () => vm.removeViommu(1));
    await vm.removeDevice('0001:00:03.0');
    await vm.removeViommu(1);
  });

  it('H8 an allocation range is a u32 [min, max] with min <= max (EINVAL); the host allocates in its own range (ENOSPC)', async () => {
    const host = new Host({ pasidMin: 10, pasidMax: 20 });
    const vm = host.createVm({ id: 'vm' });
    await refused(host, 'EINVAL', () => vm.allocPasids({ min: 5, max: 4 }));
    await refused(host, 'ENOSPC', () => vm.allocPasids({ min: 21 }));
    assert.deepEqual(await vm.allocPasids({ min: 1, max: 10 }), [10]);
  });

  it('H9 a count is a positive integer (EINVAL)', async () => {
    const { host, vm } = world();
    await refused(host, 'EINVAL', () => vm.allocPasids({ count: 0 }));
    await refused(host, 'EINVAL', () => vm.allocPasids({ count: 1.5 }));
  });

  it('H10 a PASID argument is an integer in [1, 0xfffff] (EINVAL)', async () => {
    const { host, vm } = world();
    for (const p of [0, 0x100000, -1, 2.5]) await refused(host, 'EINVAL', () => vm.freePasid(p));
  });

  it('H11 a VM frees, binds and looks up only its own PASIDs (ENOENT nobody\'s, EACCES another VM\'s)', async () => {
    const { host, vm } = world();
    const [theirs] = await host.vm('vm2').allocPasids();
    await refused(host, 'ENOENT', () => vm.freePasid(77));
    await refused(host, 'EACCES', () => vm.freePasid(theirs as number));
    await refused(host, 'EACCES', () => vm.bind('0000:00:02.0', theirs as number));
    assert.throws(() => vm.lookup(theirs as number), (e: unknown) => e instanceof IoasidError && e.code === 'EACCES');
  });

  it('H12 a PASID still bound to a device is not freed (EBUSY)', async () => {
    const { host, vm } = world();
    const [p] = await vm.allocPasids();
    vm.bind('0000:00:02.0', p as number);
    await refused(host, 'EBUSY', () => vm.freePasid(p as number));
  });

  it('H13 a binding: the device is the VM\'s (ENOENT), the PASID fits its width (ERANGE), once (EEXIST)', async () => {
    const { host, vm } = world();
    const ps = await vm.allocPasids({ min: 16, count: 1 });
    const [low] = await vm.allocPasids({ min: 1, max: 15 });
    await refused(host, 'ENOENT', () => vm.bind('0000:00:09.0', low as number));
    await refused(host, 'ERANGE', () => vm.bind('0001:00:03.0', ps[0] as number));
    vm.bind('0001:00:03.0', low as number);
    await refused(host, 'EEXIST', () => vm.bind('0001:00:03.0', low as number));
  });

  it('H14 an unbind needs the binding (ENOENT)', async () => {
    const { host, vm } = world();
    const [p] = await vm.allocPasids();
    await refused(host, 'ENOENT', () => vm.unbind('0000:00:02.0', p as number));
  });

  it('H15 a VM credential is a non-empty string (EINVAL), no other VM\'s (EEXIST)', async () => {
    const { host, vm } = world();
    await refused(host, 'EINVAL', () => host.createVm({ id: 'x', credential: '' }));
    await refused(host, 'EEXIST', () => host.createVm({ id: 'x', credential: 'c2' }));
    await refused(host, 'EEXIST', () => vm.replaceCredential('c2'));
  });

  it('H16 a destroyed VM does nothing (ENODEV); its destruction leaves no trace', async () => {
    const { host, vm } = world();
    const empty = new Host().snapshot().space;
    const [p] = await vm.allocPasids();
    vm.bind('0000:00:02.0', p as number);
    await host.destroyVm('vm1');
    await host.destroyVm('vm2');
    assert.deepEqual(host.snapshot().space.tables, empty.tables);
    await assert.rejects(vm.allocPasids(), (e: unknown) => e instanceof IoasidError && e.code === 'ENODEV');
    assert.equal(host.vmByCredential('c1'), null);
  });

  it('H17 a guest kernel frees only its own PASIDs: a nested VM\'s are freed through that VM (EACCES)', async () => {
    const host = new Host();
    host.createVm({ id: 'l1', viommus: [{ segment: 0 }] });
    const g = host.boot('l1');
    const l2 = g.startHost().createVm({ id: 'l2', viommus: [{ segment: 0 }] });
    const [p] = await l2.allocPasids();
    await assert.rejects(g.free(p as number), (e: unknown) => e instanceof IoasidError && e.code === 'EACCES');
    assert.deepEqual(l2.pasids(), [p]);
  });
});
