/**
 * The guest VT-d driver's custom PASID allocator (behaviours 37-54 of docs/behaviours.md), over in-process VCMD
 * devices backed by a strict host space with a set per VM. Each test pins the guest profile it
 * applies to; layout-dependent rules run in both layouts.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  IoasidSpace,
  isIoasidError,
  type IoasidSet,
  type LogLevel,
  type Profile,
} from '../src/core/index.ts';
import {
  INTEL_PASID_MAX,
  LAYOUTS,
  VcmdDevice,
  VtdGuestDriver,
  encodeRegister,
  encodeVcmd,
  registerOffset,
  type Layout,
  type MmioAccessor,
  type VcmdBackend,
  type VcmdDeviceOptions,
  type VtdGuestDriverOptions,
} from '../src/vtd/index.ts';

const LINUX: readonly Profile[] = ['linux-5.8', 'linux-5.11', 'linux-5.18'];

interface Access { op: 'read' | 'write'; offset: number; value: bigint; size: number }

/** An MMIO accessor that records every access before passing it on. */
function spy(target: MmioAccessor): MmioAccessor & { log: Access[]; writesAt(offset: number): bigint[] } {
  const log: Access[] = [];
  return {
    log,
    read(offset, size) {
      const value = target.read(offset, size);
      log.push({ op: 'read', offset, value, size });
      return value;
    },
    write(offset, value, size) {
      log.push({ op: 'write', offset, value, size });
      target.write(offset, value, size);
    },
    writesAt(offset) {
      return log.filter((a) => a.op === 'write' && a.offset === offset).map((a) => a.value);
    },
  };
}

function vmBackend(host: IoasidSpace, vm: IoasidSet): VcmdBackend {
  return {
    allocate: (range) => host.allocSync(vm, range?.min ?? 1, range?.max ?? 0xfffff),
    free: (p) => host.freeSync(p, vm),
  };
}

interface Rig {
  host: IoasidSpace;
  vm: IoasidSet;
  guest: IoasidSpace;
  driver: VtdGuestDriver;
  devices: VcmdDevice[];
  mmio: ReturnType<typeof spy>[];
  logs: { level: LogLevel; message: string }[];
  messages(level?: LogLevel): string[];
}

function rig(o: {
  profile: Profile;
  layout: Layout;
  units?: number;
  quota?: number;
  device?: Partial<VcmdDeviceOptions> | ((i: number) => Partial<VcmdDeviceOptions>);
  driver?: Partial<VtdGuestDriverOptions>;
  before?: (guest: IoasidSpace) => void;
  backend?: (b: VcmdBackend) => VcmdBackend;
}): Rig {
  const host = new IoasidSpace({ profile: 'strict' });
  const vm = host.createSet({ name: 'vm1', quota: o.quota ?? 1000 });
  const guest = new IoasidSpace({ profile: o.profile });
  o.before?.(guest);
  const logs: { level: LogLevel; message: string }[] = [];
  const driver = new VtdGuestDriver(guest, { layout: o.layout, log: (level, message) => logs.push({ level, message }), ...o.driver });
  const devices: VcmdDevice[] = [];
  for (let i = 0; i < (o.units ?? 1); i++) {
    const extra = typeof o.device === 'function' ? o.device(i) : o.device;
    const base = vmBackend(host, vm);
    devices.push(new VcmdDevice({ layout: o.layout, backend: o.backend ? o.backend(base) : base, ...extra }));
  }
  const mmio = devices.map((d) => spy(d));
  driver.init(mmio);
  return {
    host, vm, guest, driver, devices, mmio, logs,
    messages: (level) => logs.filter((l) => level === undefined || l.level === level).map((l) => l.message),
  };
}

/** A hand-driven register page: fixed capabilities and a scripted VCRSP. */
function fakeUnit(layout: Layout, vcrsp: () => bigint, caps: { vccap?: bigint; pss?: bigint } = {}): MmioAccessor & { writes: Access[] } {
  const writes: Access[] = [];
  const ecap = encodeRegister(layout, 'ECAP_REG', { PSS: caps.pss ?? 19n, PASID: 1n, SMTS: 1n, VCS: 1n });
  return {
    writes,
    read(offset) {
      if (offset === 0x08) return 0x80n;
      if (offset === 0x10) return ecap;
      if (offset === registerOffset(layout, 'VCCAP_REG')) return caps.vccap ?? 1n;
      if (offset === registerOffset(layout, 'VCRSP_REG')) return vcrsp();
      return 0n;
    },
    write(offset, value, size) {
      writes.push({ op: 'write', offset, value, size });
    },
  };
}

function guestWith(profile: Profile, layout: Layout, unit: MmioAccessor, driver: Partial<VtdGuestDriverOptions> = {}): { guest: IoasidSpace; logs: string[]; driver: VtdGuestDriver } {
  const guest = new IoasidSpace({ profile });
  const logs: string[] = [];
  const d = new VtdGuestDriver(guest, { layout, log: (level, m) => logs.push(`${level}: ${m}`), ...driver });
  d.init([unit]);
  return { guest, logs, driver: d };
}

const vcmdWrites = (r: Rig, i: number, layout: Layout): bigint[] => r.mmio[i]?.writesAt(registerOffset(layout, 'VCMD_REG')) ?? [];

/** A fake clock for the poll deadline: sleeping advances it. */
function fakeClock(onSleep?: (polls: number) => void): { now: () => number; sleep: (ms: number) => Promise<void>; polls: () => number } {
  let t = 0;
  let polls = 0;
  return {
    now: () => t,
    sleep: async (ms) => {
      t += ms;
      polls++;
      onSleep?.(polls);
      await new Promise<void>((r) => setImmediate(r));
    },
    polls: () => polls,
  };
}

// ---------------------------------------------------------------------------------- registration

describe('registration (behaviours 37-42, 46)', () => {
  for (const profile of [...LINUX, 'strict'] as Profile[]) {
    it(`behaviour 37: no custom allocator when CAP.CM = 0 (bare metal) [${profile}]`, async () => {
      const r = rig({ profile, layout: 'B', device: { cachingMode: false } });
      assert.equal(r.driver.units[0]?.registered, false);
      assert.equal(r.guest.activeAllocator(), null);
      assert.equal(await r.guest.alloc(null, 1, 100), 1); // the guest's own default allocator
      assert.deepEqual(vcmdWrites(r, 0, 'B'), []);
      assert.equal(r.host.setCount(r.vm), 0);
    });
  }

  for (const layout of LAYOUTS) {
    it(`behaviour 38: no custom allocator (warning) when scalable mode is not in use, by option or by ECAP.SMTS [linux-5.8, layout ${layout}]`, () => {
      const off = rig({ profile: 'linux-5.8', layout, driver: { scalableMode: false } });
      assert.equal(off.guest.activeAllocator(), null);
      assert.deepEqual(off.messages('warn'), ['VT-d Scalable Mode not enabled, no PASID allocation']);
      const noSmts = rig({ profile: 'linux-5.8', layout, device: { scalableMode: false } });
      assert.equal(noSmts.guest.activeAllocator(), null);
      assert.deepEqual(noSmts.messages('warn'), ['VT-d Scalable Mode not enabled, no PASID allocation']);
    });

    it(`behaviour 39: no custom allocator when VCCAP.PAS is clear; the guest stays on its default allocator [linux-5.18, layout ${layout}]`, async () => {
      const r = rig({ profile: 'linux-5.18', layout, device: { pasidAllocation: false } });
      assert.equal(r.driver.units[0]?.vccap, 0n);
      assert.equal(r.guest.activeAllocator(), null);
      // The kernel prints nothing; its guest-local PASIDs are a kernel hazard (reported).
      assert.deepEqual(r.logs.filter((l) => l.level !== 'hazard'), []);
      assert.match(r.messages('hazard')[0] ?? '', /guest-local-pasids.*VCCAP_REG .* read 0x0: PAS clear/);
      assert.equal(await r.guest.alloc(null, 1, 100), 1);
      assert.equal(r.host.setCount(r.vm), 0);
    });

    it(`behaviour 40: VCCAP is treated as 0 and never read when ECAP.VCS is clear [linux-5.8, layout ${layout}]`, () => {
      const r = rig({ profile: 'linux-5.8', layout, device: { virtualCommands: false } });
      const vccap = registerOffset(layout, 'VCCAP_REG');
      assert.equal(r.mmio[0]?.log.some((a) => a.offset === vccap), false);
      assert.equal(r.driver.units[0]?.vccap, 0n);
      assert.equal(r.guest.activeAllocator(), null);
    });
  }

  it('VCCAP is read once per vIOMMU, at probe, and cached', async () => {
    const r = rig({ profile: 'strict', layout: 'B', units: 2 });
    const vccap = registerOffset('B', 'VCCAP_REG');
    for (let i = 0; i < 3; i++) await r.guest.free(await r.guest.alloc(null, 1, 0xfffff));
    for (const m of r.mmio) assert.equal(m.log.filter((a) => a.offset === vccap).length, 1);
  });

  for (const profile of [...LINUX, 'strict'] as Profile[]) {
    it(`behaviour 41: a registration failure disables scalable mode globally and later vIOMMUs skip registration [${profile}]`, async () => {
      let held = 0;
      const r = rig({ profile, layout: 'B', units: 3, before: (g) => { held = g.allocSync(null, 1, 10); } });
      assert.equal(r.driver.scalableMode, false);
      assert.deepEqual(r.driver.units.map((u) => u.registered), [false, false, false]);
      assert.deepEqual(r.messages('warn'), [
        'Custom PASID allocator failed, scalable mode disabled',
        'VT-d Scalable Mode not enabled, no PASID allocation',
        'VT-d Scalable Mode not enabled, no PASID allocation',
      ]);
      assert.equal(r.guest.activeAllocator(), null);
      assert.equal(await r.guest.alloc(null, 1, 10), held + 1);
      assert.equal(r.host.setCount(r.vm), 0);
    });

    it(`behaviour 42: with two vIOMMUs both register into one group, one is active, and all VCMD traffic goes through the first [${profile}]`, async () => {
      const r = rig({ profile, layout: 'B', units: 2 });
      const [u0, u1] = r.driver.units;
      assert.ok(u0 !== undefined && u1 !== undefined);
      assert.deepEqual([u0.registered, u1.registered], [true, true]);
      assert.deepEqual(r.messages('info'), ['Register custom PASID allocator', 'Register custom PASID allocator']);
      assert.equal(r.guest.allocatorGroups, 1);
      assert.equal(r.guest.activeAllocator(), r.driver.opsOf(u0));
      assert.notEqual(r.driver.opsOf(u1), r.driver.opsOf(u0));
      const ids = [await r.guest.alloc(null, 1, 0xfffff), await r.guest.alloc(null, 1, 0xfffff)];
      await r.guest.free(ids[0] as number);
      assert.equal(r.devices[0]?.stats.commands, 3);
      assert.equal(r.devices[1]?.stats.commands, 0);
      assert.deepEqual(vcmdWrites(r, 1, 'B'), []);
    });
  }

  it('behaviour 46: intel_pasid_max_id is the minimum of 2 << ECAP.PSS over PASID-capable units, default 0x100000', () => {
    const none = new VtdGuestDriver(new IoasidSpace(), { layout: 'B' });
    assert.equal(none.pasidMaxId, INTEL_PASID_MAX);
    const r = rig({
      profile: 'linux-5.8', layout: 'B', units: 4,
      device: (i) => [{ pss: 19 }, { pss: 9 }, { pss: 3, pasidSupport: false }, { pss: 2, scalableMode: false }][i] ?? {},
    });
    assert.equal(r.driver.pasidMaxId, 2 << 9);
    assert.equal(r.driver.units[1]?.pasidMax, 1024);
  });
});

// ---------------------------------------------------------------------------------- allocation

describe('alloc (behaviours 43-49)', () => {
  for (const profile of LINUX) {
    it(`behaviour 43: alloc with min = 0 fails without any VCMD write [${profile}]`, async () => {
      const r = rig({ profile, layout: 'B' });
      await assert.rejects(r.guest.alloc(null, 0, 100), (e) => isIoasidError(e, 'ENOSPC')); // INVALID_IOASID
      assert.deepEqual(vcmdWrites(r, 0, 'B'), []);
    });

    it(`behaviour 44: alloc with max > intel_pasid_max_id fails without VCMD traffic, max == intel_pasid_max_id is accepted [${profile}]`, async () => {
      const r = rig({ profile, layout: 'A', device: { pss: 7 } });
      assert.equal(r.driver.pasidMaxId, 256);
      await assert.rejects(r.guest.alloc(null, 1, 257), (e) => isIoasidError(e, 'ENOSPC'));
      assert.deepEqual(vcmdWrites(r, 0, 'A'), []);
      assert.equal(await r.guest.alloc(null, 1, 256), 1); // the kernel's off-by-one: accepted
      assert.deepEqual(vcmdWrites(r, 0, 'A'), [1n]);
    });

    it(`behaviour 45: a narrower range still issues VCMD Allocate and returns the host's PASID even outside it [${profile}]`, async () => {
      const r = rig({ profile, layout: 'B', device: { rangeExtension: true } });
      const other = r.host.createSet({ name: 'vm2' });
      for (let i = 0; i < 4; i++) r.host.allocSync(other, 1, 0xfffff);
      // The unit even advertises the range extension: the Linux profiles never use it.
      assert.equal(await r.guest.alloc(null, 100, 200), 5);
      assert.deepEqual(vcmdWrites(r, 0, 'B'), [1n]);
      assert.deepEqual(r.mmio[0]?.writesAt(registerOffset('B', 'VCMD_EO_REG')), []);
      assert.deepEqual(r.host.idsOf(r.vm), [5]);
    });
  }

  it('behaviour 43/44 in strict: out-of-bounds ranges are EINVAL naming the bound, and the exclusive bound is enforced', async () => {
    const r = rig({ profile: 'strict', layout: 'B', device: { pss: 7 } });
    await assert.rejects(r.guest.alloc(null, 0, 100), (e) => isIoasidError(e, 'EINVAL'));
    await assert.rejects(r.guest.alloc(null, 1, 256), (e) => isIoasidError(e, 'EINVAL') && /255/.test(e.message));
    assert.deepEqual(vcmdWrites(r, 0, 'B'), []);
    assert.equal(await r.guest.alloc(null, 1, 255), 1);
  });

  it('behaviour 45 in strict: a host answer outside [min, max] is freed back to the host and the call fails with ERANGE', async () => {
    const r = rig({ profile: 'strict', layout: 'B' });
    const other = r.host.createSet({ name: 'vm2' });
    for (let i = 0; i < 4; i++) r.host.allocSync(other, 1, 0xfffff);
    await assert.rejects(r.guest.alloc(null, 100, 200), (e) => isIoasidError(e, 'ERANGE'));
    assert.deepEqual(vcmdWrites(r, 0, 'B'), [1n, encodeVcmd('B', 2, 5)]);
    assert.deepEqual(r.host.idsOf(r.vm), [], 'nothing leaked on the host');
    assert.equal(r.guest.size, 0);
  });

  it('range extension in strict: Allocate carries [min, max] (OA and VCMD_EO) and the host allocates inside it', async () => {
    const r = rig({ profile: 'strict', layout: 'B', device: { rangeExtension: true } });
    assert.equal(r.driver.units[0]?.caps.rangeExtension, true);
    assert.equal(await r.guest.alloc(null, 100, 200), 100);
    assert.equal(await r.guest.alloc(null, 100, 200), 101);
    assert.deepEqual(r.mmio[0]?.writesAt(registerOffset('B', 'VCMD_EO_REG')), [200n, 200n]);
    assert.deepEqual(vcmdWrites(r, 0, 'B'), [(100n << 16n) | 1n, (100n << 16n) | 1n]);
    assert.deepEqual(r.host.idsOf(r.vm), [100, 101]);
    // A device that supports fewer PASID bits gets PASIDs it can use.
    assert.equal(await r.guest.alloc(null, 1, 0xff), 1);
    // The driver option turns it off.
    const off = rig({ profile: 'strict', layout: 'B', device: { rangeExtension: true }, driver: { rangeExtension: false } });
    assert.equal(await off.guest.alloc(null, 1, 0xfffff), 1);
    assert.deepEqual(off.mmio[0]?.writesAt(registerOffset('B', 'VCMD_EO_REG')), []);
  });

  for (const layout of LAYOUTS) {
    for (const profile of ['linux-5.8', 'strict'] as Profile[]) {
      it(`behaviour 47: a successful Allocate yields the 20-bit RESULT field as the PASID [${profile}, layout ${layout}]`, async () => {
        const r = rig({ profile, layout });
        assert.equal(await r.guest.alloc(null, 1, 0xfffff), 1);
        // A response with bits set above the PASID sub-field: Linux masks them, strict refuses.
        const shift = layout === 'A' ? 8n : 16n;
        const { guest } = guestWith(profile, layout, fakeUnit(layout, () => (0x1234n << shift) | (1n << (shift + 20n))));
        if (profile === 'strict') await assert.rejects(guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENODEV'));
        else assert.equal(await guest.alloc(null, 1, 0xfffff), 0x1234);
      });

      it(`behaviour 48: status "no PASID available" maps to ENOSPC [${profile}, layout ${layout}]`, async () => {
        const r = rig({ profile, layout, quota: 1 });
        await r.guest.alloc(null, 1, 0xfffff);
        if (profile === 'linux-5.8' && layout === 'A') {
          // v5.8 (VCMD_VRSP_SC_NO_PASID_AVAIL = 1) reads the spec's SC 2 as an unexpected code.
          await assert.rejects(r.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENODEV'));
          assert.deepEqual(r.messages('warn').slice(-1), ['IOMMU: dmar0: Unexpected error code 2']);
          const { guest, logs } = guestWith(profile, layout, fakeUnit(layout, () => 1n << 1n));
          await assert.rejects(guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENOSPC'));
          assert.deepEqual(logs.slice(-1), ['info: IOMMU: dmar0: No PASID available']);
          return;
        }
        await assert.rejects(r.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENOSPC'));
        assert.deepEqual(r.messages('info').slice(-1), ['IOMMU: dmar0: No PASID available']);
      });

      it(`behaviour 49: "undefined command" or an unknown status maps to ENODEV [${profile}, layout ${layout}]`, async () => {
        // The PAS bit discrepancy end to end: a spec-5.10 device (PAS at bit 1) advertising only NS
        // at bit 0 looks like PAS to a Linux guest, whose Allocate is then an undefined command.
        const r = rig({ profile, layout, device: { pasBit: 1, pasidAllocation: false, nullCommand: true } });
        assert.equal(r.driver.units[0]?.registered, true);
        if (profile === 'linux-5.8' && layout === 'A') {
          // v5.8 reads SC 1 ("undefined command") as its own "no PASID available".
          await assert.rejects(r.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENOSPC'));
          assert.deepEqual(r.messages('info').slice(-1), ['IOMMU: dmar0: No PASID available']);
        } else {
          await assert.rejects(r.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENODEV'));
          assert.deepEqual(r.messages('warn'), ['IOMMU: dmar0: Unexpected error code 1']);
        }
        const { guest, logs } = guestWith(profile, layout, fakeUnit(layout, () => 3n << 1n));
        await assert.rejects(guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENODEV'));
        assert.deepEqual(logs.slice(-1), ['warn: IOMMU: dmar0: Unexpected error code 3']);
      });
    }
  }

  it('behaviour 59: the guest ignores RSLT when SC != 0', async () => {
    const { guest } = guestWith('linux-5.18', 'B', fakeUnit('B', () => (0x777n << 16n) | (16n << 1n)));
    await assert.rejects(guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENOSPC'));
    assert.equal(guest.size, 0);
  });
});

// ---------------------------------------------------------------------------------- free

describe('free (behaviours 50-52)', () => {
  for (const profile of LINUX) {
    it(`behaviour 50: freeing a PASID with private data issues no VCMD Free, logs "Cannot free active IOASID", and the framework forgets it [${profile}]`, async () => {
      const r = rig({ profile, layout: 'B' });
      const id = await r.guest.alloc(null, 1, 0xfffff, { device: '0000:00:02.0' });
      await r.guest.free(id);
      assert.deepEqual(r.messages('error'), [`Cannot free active IOASID ${id}`]);
      assert.deepEqual(vcmdWrites(r, 0, 'B'), [1n], 'Allocate only, no Free');
      assert.equal(r.guest.has(id), false, 'the guest forgot it');
      assert.deepEqual(r.host.idsOf(r.vm), [id], 'the host still holds it: the kernel leak');
    });
  }

  it('behaviour 50 in strict: free of a PASID that still has a device bound is EBUSY and the guest keeps it', async () => {
    const r = rig({ profile: 'strict', layout: 'B' });
    const id = await r.guest.alloc(null, 1, 0xfffff, { device: '0000:00:02.0' });
    await assert.rejects(r.guest.free(id), (e) => isIoasidError(e, 'EBUSY'));
    assert.deepEqual(r.messages('error'), [`Cannot free active IOASID ${id}`]);
    assert.equal(r.guest.has(id), true);
    assert.deepEqual(r.host.idsOf(r.vm), [id]);
    r.guest.setData(id, null);
    await r.guest.free(id);
    assert.deepEqual(r.host.idsOf(r.vm), []);
  });

  for (const layout of LAYOUTS) {
    for (const profile of ['linux-5.8', 'linux-5.18', 'strict'] as Profile[]) {
      it(`behaviour 51: free after clearing private data issues VCMD Free with the PASID at the layout's shift [${profile}, layout ${layout}]`, async () => {
        const r = rig({ profile, layout });
        const other = r.host.createSet({ name: 'other' });
        for (let i = 0; i < 0x1233; i++) r.host.allocSync(other, 1, 0xfffff);
        const id = await r.guest.alloc(null, 1, 0xfffff, { bound: true });
        assert.equal(id, 0x1234);
        r.guest.setData(id, null); // "Clear private data so that free pass check"
        await r.guest.free(id);
        const shift = layout === 'A' ? 8n : 16n;
        assert.deepEqual(vcmdWrites(r, 0, layout), [1n, (0x1234n << shift) | 2n]);
        assert.deepEqual(r.host.idsOf(r.vm), []);
      });

      it(`behaviour 52: a Free answered "invalid PASID" is only logged and raises no error [${profile}, layout ${layout}]`, async () => {
        const r = rig({ profile, layout });
        const id = await r.guest.alloc(null, 1, 0xfffff);
        r.host.freeSync(id, r.vm); // the host dropped it behind the guest's back
        await r.guest.free(id);
        if (profile === 'linux-5.8' && layout === 'A') assert.deepEqual(r.messages('warn').slice(-1), ['IOMMU: dmar0: Unexpected error code 2'], 'v5.8: INVALID_PASID was 1');
        else assert.deepEqual(r.messages('info').slice(-1), ['IOMMU: dmar0: Invalid PASID']);
        assert.equal(r.guest.has(id), false);
      });
    }
  }

  it('Free answered with an unexpected status: logged in Linux profiles, ENODEV in strict (the guest keeps the PASID)', async () => {
    for (const profile of ['linux-5.11', 'strict'] as Profile[]) {
      let rsp = 5n << 16n; // Allocate: success, PASID 5
      const { guest, logs } = guestWith(profile, 'B', fakeUnit('B', () => rsp));
      const id = await guest.alloc(null, 1, 0xfffff);
      rsp = 1n << 1n; // Free: undefined command
      if (profile === 'strict') {
        await assert.rejects(guest.free(id), (e) => isIoasidError(e, 'ENODEV'));
        assert.equal(guest.has(id), true);
      } else {
        await guest.free(id);
        assert.equal(guest.has(id), false);
      }
      assert.deepEqual(logs.slice(-1), ['warn: IOMMU: dmar0: Unexpected error code 1']);
    }
  });
});

// ---------------------------------------------------------------------------------- polling

describe('polling (behaviours 53, 54)', () => {
  for (const profile of ['linux-5.18', 'strict'] as Profile[]) {
    it(`behaviour 53: the driver polls VCRSP.IP until clear, yielding so an asynchronous host can answer [${profile}]`, async () => {
      const waiting: (() => void)[] = [];
      const clock = fakeClock((polls) => { if (polls === 3) for (const w of waiting.splice(0)) w(); });
      const r = rig({
        profile, layout: 'B', driver: { now: clock.now, sleep: clock.sleep },
        backend: (b) => ({ allocate: () => new Promise<number>((res) => waiting.push(() => res(b.allocate() as number))), free: b.free }),
      });
      assert.equal(await r.guest.alloc(null, 1, 0xfffff), 1);
      assert.equal(clock.polls(), 3);
      const reads = r.mmio[0]?.log.filter((a) => a.op === 'read' && a.offset === registerOffset('B', 'VCRSP_REG')) ?? [];
      assert.equal(reads.length, 5, 'one read after the write, then one per pause: 1 + 3 + final');
      assert.equal(reads.at(-1)?.value, 1n << 16n);
    });

    it(`behaviour 53: a host that never answers gives ETIMEDOUT after the deadline, never a hang [${profile}]`, async () => {
      const clock = fakeClock();
      const r = rig({
        profile, layout: 'B', driver: { now: clock.now, sleep: clock.sleep, timeoutMs: 10_000, pollIntervalMs: 250 },
        backend: (b) => ({ allocate: () => new Promise<number>(() => {}), free: b.free }),
      });
      await assert.rejects(r.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ETIMEDOUT'));
      assert.equal(clock.now(), 10_000);
      assert.equal(r.guest.size, 0);
      assert.match(r.messages('error')[0] ?? '', /timed out/);
    });
  }

  it('the deadline defaults to ~10 s of virtual time when no clock is injected', async () => {
    let sleeps = 0;
    const r = rig({
      profile: 'strict', layout: 'A', driver: { pollIntervalMs: 1000, sleep: async () => { sleeps++; } },
      backend: (b) => ({ allocate: () => new Promise<number>(() => {}), free: b.free }),
    });
    await assert.rejects(r.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ETIMEDOUT') && /10000 ms/.test(e.message));
    assert.equal(sleeps, 10);
  });

  it('after a timeout, the next command waits for the late answer, and strict frees a late-allocated PASID back to the host', async () => {
    const clock = fakeClock();
    let answer: (() => void) | undefined;
    const r = rig({
      profile: 'strict', layout: 'B', driver: { now: clock.now, sleep: clock.sleep, timeoutMs: 100, pollIntervalMs: 10 },
      backend: (b) => ({
        allocate: () => answer === undefined ? new Promise<number>((res) => { answer = () => res(b.allocate() as number); }) : b.allocate(),
        free: b.free,
      }),
    });
    await assert.rejects(r.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ETIMEDOUT'));
    answer?.(); // the host answers late: PASID 1 is now the VM's on the host, unknown to the guest
    await r.devices[0]?.settled();
    assert.deepEqual(r.host.idsOf(r.vm), [1]);
    assert.equal(await r.guest.alloc(null, 1, 0xfffff), 1, 'PASID 1 was freed back, then allocated again');
    assert.deepEqual(r.host.idsOf(r.vm), [1]);
    assert.equal(r.guest.has(1), true);
  });

  for (const profile of ['linux-5.18', 'strict'] as Profile[]) {
    it(`behaviour 54: SC is decoded per layout, and a guest/host layout mismatch surfaces as "unexpected status" [${profile}]`, async () => {
      // A layout-A answer "no PASID" (SC 2 in bits 2:1) read by a layout-B guest: SC = (0x4 & 0xff) >> 1 = 2.
      const b = guestWith(profile, 'B', fakeUnit('B', () => 0x4n));
      await assert.rejects(b.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENODEV'));
      assert.deepEqual(b.logs.slice(-1), ['warn: IOMMU: dmar0: Unexpected error code 2']);
      // The same value read by a layout-A guest is "no PASID available".
      const a = guestWith(profile, 'A', fakeUnit('A', () => 0x4n));
      await assert.rejects(a.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENOSPC'));
      // A layout-B "no PASID" (0x20) read by a layout-A guest decodes as success with PASID 0:
      // the kernel takes it; strict refuses a zero PASID.
      const a2 = guestWith(profile, 'A', fakeUnit('A', () => 0x20n));
      if (profile === 'strict') await assert.rejects(a2.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENODEV'));
      else assert.equal(await a2.guest.alloc(null, 1, 0xfffff), 0);
    });
  }

  it('legacyStatusCodes: Linux v5.8-v5.11 read layout-A status 1 as "no PASID" and 2 as unexpected', async () => {
    const one = guestWith('linux-5.8', 'A', fakeUnit('A', () => 1n << 1n), { legacyStatusCodes: true });
    await assert.rejects(one.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENOSPC'));
    const two = guestWith('linux-5.8', 'A', fakeUnit('A', () => 2n << 1n), { legacyStatusCodes: true });
    await assert.rejects(two.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENODEV'));
    assert.deepEqual(two.logs.slice(-1), ['warn: IOMMU: dmar0: Unexpected error code 2']);
  });

  it('commands on one vIOMMU are serialised: concurrent callers never share the command register', async () => {
    const clock = fakeClock();
    const r = rig({
      profile: 'strict', layout: 'B', units: 1, driver: { now: clock.now, sleep: clock.sleep },
      backend: (b) => ({
        allocate: () => new Promise<number>((res) => setImmediate(() => res(b.allocate() as number))),
        free: (p) => new Promise<void>((res) => setImmediate(() => { b.free(p); res(); })),
      }),
    });
    const ids = await Promise.all(Array.from({ length: 20 }, () => r.guest.alloc(null, 1, 0xfffff)));
    assert.deepEqual([...ids].sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => i + 1));
    await Promise.all(ids.slice(0, 10).map((id) => r.guest.free(id)));
    assert.deepEqual(r.host.idsOf(r.vm), ids.slice(10).sort((a, b) => a - b));
    assert.equal(r.devices[0]?.stats.droppedWrites, 0);
  });
});

// ---------------------------------------------------------------------------------- hot-unplug

describe('several vIOMMUs and hot-unplug', () => {
  it('strict: hot-removing the active vIOMMU with PASIDs outstanding: the others keep serving, and the PASIDs stay findable and freeable', async () => {
    const r = rig({ profile: 'strict', layout: 'B', units: 3 });
    const [u0, u1] = r.driver.units;
    assert.ok(u0 !== undefined && u1 !== undefined);
    const a = await r.guest.alloc(null, 1, 0xfffff, 'bound');
    const b = await r.guest.alloc(null, 1, 0xfffff);
    const report = await r.driver.unplug(u0);
    assert.deepEqual(report, { unit: 'dmar0', unregistered: true, drained: [], failed: [] });
    assert.equal(r.guest.activeAllocator(), r.driver.opsOf(u1), 'the group re-pointed to dmar1');
    assert.equal(r.guest.find(null, a), 'bound');
    assert.equal(r.guest.find(null, b), null);
    await r.guest.free(b);
    const c = await r.guest.alloc(null, 1, 0xfffff);
    assert.equal(c, b);
    assert.equal(r.devices[0]?.stats.commands, 2);
    assert.equal(r.devices[1]?.stats.commands, 2, 'Free and Allocate went through dmar1');
    assert.deepEqual(r.host.idsOf(r.vm), [a, c]);
    await assert.rejects(r.driver.unplug(u0), (e) => isIoasidError(e, 'ENOENT'));
  });

  it('strict: unplugging a non-active vIOMMU changes nothing for allocation', async () => {
    const r = rig({ profile: 'strict', layout: 'A', units: 2 });
    const [u0, u1] = r.driver.units;
    assert.ok(u0 !== undefined && u1 !== undefined);
    const a = await r.guest.alloc(null, 1, 0xfffff);
    await r.driver.unplug(u1);
    assert.equal(r.guest.activeAllocator(), r.driver.opsOf(u0));
    assert.equal(await r.guest.alloc(null, 1, 0xfffff), a + 1);
    assert.equal(r.devices[1]?.stats.commands, 0);
  });

  it('strict: unplugging the last vIOMMU frees the outstanding PASIDs to the host through it, then allocation is ENODEV (no guest-local fallback)', async () => {
    const r = rig({ profile: 'strict', layout: 'B', units: 2 });
    const [u0, u1] = r.driver.units;
    assert.ok(u0 !== undefined && u1 !== undefined);
    const ids = [await r.guest.alloc(null, 1, 0xfffff, 'bound'), await r.guest.alloc(null, 1, 0xfffff), await r.guest.alloc(null, 1, 0xfffff)];
    r.guest.get(ids[2] as number); // an extra reference
    await r.driver.unplug(u0);
    const report = await r.driver.unplug(u1);
    assert.deepEqual(report.drained, ids);
    assert.deepEqual(report.failed, []);
    assert.deepEqual(r.host.idsOf(r.vm), [], 'every PASID went back to the host');
    assert.equal(r.guest.size, 0);
    assert.equal(r.devices[1]?.stats.commands, 3);
    await assert.rejects(r.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENODEV'));
    assert.equal(r.host.setCount(r.vm), 0);
    // A vIOMMU hot-plugged later takes over.
    const d = new VcmdDevice({ layout: 'B', backend: vmBackend(r.host, r.vm) });
    const u2 = r.driver.hotplug(d, 'dmar9');
    assert.equal(u2.registered, true);
    assert.equal(r.guest.activeAllocator(), r.driver.opsOf(u2));
    assert.equal(await r.guest.alloc(null, 1, 0xfffff), 1);
    assert.deepEqual(r.host.idsOf(r.vm), [1]);
  });

  for (const profile of LINUX) {
    it(`behaviours 30/34: unplugging the last vIOMMU reverts to the default allocator, orphaning host PASIDs that the guest may reuse [${profile}]`, async () => {
      const r = rig({ profile, layout: 'B' });
      const [u0] = r.driver.units;
      assert.ok(u0 !== undefined);
      const id = await r.guest.alloc(null, 1, 0xfffff);
      const report = await r.driver.unplug(u0);
      assert.deepEqual(report.drained, []);
      assert.equal(r.guest.activeAllocator(), null);
      assert.equal(r.guest.has(id), false, 'orphaned');
      assert.equal(await r.guest.alloc(null, 1, 0xfffff), id, 'a guest-local number colliding with the host-held PASID');
      assert.deepEqual(r.host.idsOf(r.vm), [id]);
    });

    it(`Linux quirk: hot-removing the primary vIOMMU leaves the group on its stale pdata, so allocation fails with ENODEV [${profile}]`, async () => {
      const r = rig({ profile, layout: 'B', units: 2 });
      const [u0] = r.driver.units;
      assert.ok(u0 !== undefined);
      const a = await r.guest.alloc(null, 1, 0xfffff);
      await r.driver.unplug(u0);
      assert.equal(r.guest.has(a), true, 'outstanding IDs are preserved in the shared group');
      await assert.rejects(r.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENODEV'));
    });
  }

  it('hotplug lowers intel_pasid_max_id and joins the shared group', async () => {
    const r = rig({ profile: 'strict', layout: 'B' });
    const u = r.driver.hotplug(new VcmdDevice({ layout: 'B', pss: 9, backend: vmBackend(r.host, r.vm) }));
    assert.equal(u.name, 'dmar1');
    assert.equal(r.driver.pasidMaxId, 1024);
    assert.equal(r.guest.allocatorGroups, 1);
  });
});

// ---------------------------------------------------------------------------------- kernel fidelity

/** A host space with two sets: vm (the guest's) and other; the guest's device backed by vm. */
const hazardsOf = (r: Rig): { kind: unknown; message: string }[] =>
  r.logs.filter((l) => l.level === 'hazard').map((l) => ({ kind: /\((\S+),/.exec(l.message)?.[1], message: l.message }));

describe('kernel fidelity of the guest driver', () => {
  it('VCMD_VRSP_SC_NO_PASID_AVAIL (v5.8-v5.11 = 1, v5.12+ = 2): linux-5.8 and linux-5.11 read status 2 as "Unexpected error code 2" (-ENODEV) with no option', async () => {
    for (const profile of ['linux-5.8', 'linux-5.11'] as Profile[]) {
      const two = guestWith(profile, 'A', fakeUnit('A', () => 2n << 1n));
      assert.equal(two.driver.legacyStatusCodes, true);
      await assert.rejects(two.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENODEV'));
      assert.deepEqual(two.logs.slice(-1), ['warn: IOMMU: dmar0: Unexpected error code 2']);
      const one = guestWith(profile, 'A', fakeUnit('A', () => 1n << 1n));
      await assert.rejects(one.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENOSPC'));
      assert.deepEqual(one.logs.slice(-1), ['info: IOMMU: dmar0: No PASID available']);
    }
    // v5.12+ (Zenghui Yu's fix): 2 is "no PASID".
    const fixed = guestWith('linux-5.18', 'A', fakeUnit('A', () => 2n << 1n));
    assert.equal(fixed.driver.legacyStatusCodes, false);
    await assert.rejects(fixed.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENOSPC'));
    // An explicit option still wins (a v5.8 guest with the fix backported).
    const patched = guestWith('linux-5.8', 'A', fakeUnit('A', () => 2n << 1n), { legacyStatusCodes: false });
    await assert.rejects(patched.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENOSPC'));
  });

  for (const profile of LINUX) {
    it(`intel_iommu_add (v5.8-v6.3): a hot-added unit registers no allocator and leaves intel_pasid_max_id alone [${profile}]`, async () => {
      const r = rig({ profile, layout: 'B' });
      const d = new VcmdDevice({ layout: 'B', pss: 9, backend: vmBackend(r.host, r.vm) });
      const u = r.driver.hotplug(d, 'dmar1');
      assert.equal(u.registered, false);
      assert.equal(r.driver.opsOf(u), null);
      assert.equal(r.driver.pasidMaxId, INTEL_PASID_MAX, 'only init_dmars() lowers it');
      assert.equal(r.guest.allocatorGroups, 1);
      assert.equal(await r.guest.alloc(null, 1, 0xfffff), 1);
      assert.equal(d.stats.commands, 0, 'the boot unit serves; the hot-added one is never used');
      assert.deepEqual(hazardsOf(r), [], 'a working group: nothing goes wrong');
    });

    it(`intel_iommu_add + free_dmar_iommu (v5.8-v6.3): the only allocator unit unplugged and a new one added: the guest stays on guest-local PASIDs [${profile}]`, async () => {
      const r = rig({ profile, layout: 'B' });
      const [u0] = r.driver.units;
      assert.ok(u0 !== undefined);
      const held = await r.guest.alloc(null, 1, 0xfffff);
      await r.driver.unplug(u0);
      assert.equal(r.guest.activeAllocator(), null, 'reverted to the default allocator');
      assert.deepEqual(hazardsOf(r).map((h) => h.kind), ['guest-local-pasids']);
      assert.match(hazardsOf(r)[0]?.message ?? '', /orphaning 1 host PASID/);
      const d = new VcmdDevice({ layout: 'B', backend: vmBackend(r.host, r.vm) });
      const u1 = r.driver.hotplug(d, 'dmar9');
      assert.equal(u1.registered, false, 'intel_iommu_add() calls no register_pasid_allocator()');
      assert.deepEqual(hazardsOf(r).map((h) => h.kind), ['guest-local-pasids', 'guest-local-pasids']);
      assert.equal(await r.guest.alloc(null, 1, 0xfffff), held, 'a guest-local PASID: the number the host still holds for the VM');
      assert.equal(d.stats.commands, 0);
      assert.deepEqual(r.host.idsOf(r.vm), [held], 'the orphaned host PASID');
    });
  }

  it('strict: hot-add registers the unit and lowers intel_pasid_max_id (ours); after the last unit went, it takes over from the refusal', async () => {
    const r = rig({ profile: 'strict', layout: 'B' });
    const [u0] = r.driver.units;
    assert.ok(u0 !== undefined);
    await r.driver.unplug(u0);
    await assert.rejects(r.guest.alloc(null, 1, 100), (e) => isIoasidError(e, 'ENODEV'));
    const u1 = r.driver.hotplug(new VcmdDevice({ layout: 'B', pss: 9, backend: vmBackend(r.host, r.vm) }), 'dmar9');
    assert.equal(u1.registered, true);
    assert.equal(r.driver.pasidMaxId, 1024);
    assert.equal(await r.guest.alloc(null, 1, 100), 1);
  });

  it('register_pasid_allocator (v5.8-v6.3), strict: caching mode with scalable mode but VCCAP.PAS clear: allocation is ENODEV naming the unit and its VCCAP read, never guest-local', async () => {
    const r = rig({ profile: 'strict', layout: 'B', device: { pasidAllocation: false } });
    await assert.rejects(r.guest.alloc(null, 1, 100), (e) => isIoasidError(e, 'ENODEV') && /dmar0 runs under caching mode with scalable mode, but VCCAP_REG \(0xe30, layout B\) read 0x0: PAS clear/.test(e.message));
    assert.equal(r.guest.size, 0);
    const noVcs = rig({ profile: 'strict', layout: 'A', device: { virtualCommands: false } });
    await assert.rejects(noVcs.guest.alloc(null, 1, 100), (e) => isIoasidError(e, 'ENODEV') && /ECAP\.VCS is clear/.test(e.message));
    assert.deepEqual(hazardsOf(r), []);
    // Bare metal (CAP.CM clear) is not a guest: its own PASIDs are the system's.
    const bare = rig({ profile: 'strict', layout: 'B', device: { cachingMode: false } });
    assert.equal(await bare.guest.alloc(null, 1, 100), 1);
  });

  for (const [guestLayout, deviceLayout] of [['A', 'B'], ['B', 'A']] as const) {
    it(`register layout mismatch (driver ${guestLayout}, device ${deviceLayout}): strict detects it at probe and refuses with ENODEV naming it; the Linux profiles go guest-local with a hazard`, async () => {
      const mk = (profile: Profile) => {
        const host = new IoasidSpace({ profile: 'strict' });
        const vm = host.createSet({ name: 'vm' });
        const dev = spy(new VcmdDevice({ layout: deviceLayout, backend: vmBackend(host, vm) }));
        const logs: { level: LogLevel; message: string }[] = [];
        const guest = new IoasidSpace({ profile });
        const driver = new VtdGuestDriver(guest, { layout: guestLayout, log: (level, message) => logs.push({ level, message }) });
        driver.init([dev]);
        return { host, vm, dev, logs, guest, driver };
      };
      const s = mk('strict');
      const other = registerOffset(deviceLayout, 'VCCAP_REG');
      assert.deepEqual(s.driver.units[0]?.layoutMismatch, { layout: deviceLayout, offset: other, vccap: 1n });
      await assert.rejects(s.guest.alloc(null, 1, 100), (e) => isIoasidError(e, 'ENODEV') && e.message.includes(`its registers answer as layout ${deviceLayout}`) && e.message.includes('register layout mismatch'));
      assert.ok(s.logs.some((l) => l.level === 'error' && /layout mismatch/.test(l.message)));
      const l = mk('linux-5.18');
      assert.equal(l.driver.units[0]?.layoutMismatch, null);
      assert.ok(!l.dev.log.some((a) => a.op === 'read' && a.offset === other), 'the kernel reads VCCAP at its own offset only');
      assert.ok(l.logs.some((x) => x.level === 'hazard' && /guest-local-pasids/.test(x.message)));
      assert.equal(await l.guest.alloc(null, 1, 100), 1, 'PASID 1 from its own allocator: unknown to the host');
      assert.equal(l.host.setCount(l.vm), 0);
    });
  }

  for (const profile of LINUX) {
    it(`intel_vcmd_ioasid_free (v5.8-v6.3): an ID the core does not track gets "Cannot free active IOASID" and no VCMD Free (ioasid_find returns ERR_PTR(-ENOENT)) [${profile}]`, async () => {
      const r = rig({ profile, layout: 'B' });
      await r.guest.alloc(null, 1, 0xfffff);
      const [u0] = r.driver.units;
      assert.ok(u0 !== undefined);
      const stray = r.host.allocSync(r.vm, 1, 0xfffff); // the host holds it; the guest core does not
      const ops = r.driver.opsOf(u0);
      assert.ok(ops !== null);
      await ops.free(stray, ops.pdata);
      assert.deepEqual(r.messages('error'), [`Cannot free active IOASID ${stray}`]);
      assert.deepEqual(vcmdWrites(r, 0, 'B'), [1n], 'no Free was sent');
      assert.ok(r.host.has(stray), 'the host PASID leaks');
      assert.deepEqual(hazardsOf(r).map((h) => h.kind), ['pasid-leak']);
    });
  }

  it('strict: the driver frees an untracked ID (an out-of-range answer handed back) through VCMD', async () => {
    const r = rig({ profile: 'strict', layout: 'B' });
    const [u0] = r.driver.units;
    assert.ok(u0 !== undefined);
    const stray = r.host.allocSync(r.vm, 1, 0xfffff);
    const ops = r.driver.opsOf(u0);
    assert.ok(ops !== null);
    await ops.free(stray, ops.pdata);
    assert.equal(r.host.has(stray), false);
  });

  for (const profile of LINUX) {
    it(`intel_vcmd_ioasid_free / intel_vcmd_ioasid_alloc / free_dmar_iommu (v5.8-v6.3): free while bound, an unchecked answer and a freed primary are kernel hazards [${profile}]`, async () => {
      const r = rig({ profile, layout: 'B', units: 2 });
      const bound = await r.guest.alloc(null, 1, 0xfffff, 'bound');
      await r.guest.free(bound);
      assert.deepEqual(hazardsOf(r).map((h) => h.kind), ['pasid-leak']);
      const other = r.host.createSet({ name: 'other' });
      for (let i = 0; i < 1100; i++) r.host.allocSync(other, 1, 0xfffff);
      const wide = await r.guest.alloc(null, 1, 1023);
      assert.ok(wide > 1023);
      assert.deepEqual(hazardsOf(r).map((h) => h.kind), ['pasid-leak', 'range-ignored']);
      const [u0] = r.driver.units;
      assert.ok(u0 !== undefined);
      await r.driver.unplug(u0);
      await assert.rejects(r.guest.alloc(null, 1, 0xfffff), (e) => isIoasidError(e, 'ENODEV'));
      assert.deepEqual(hazardsOf(r).map((h) => h.kind), ['pasid-leak', 'range-ignored', 'freed-iommu-ops']);
    });
  }

  it('strict: the same steps raise no hazard (EBUSY, ERANGE handed back, the group re-pointed)', async () => {
    const r = rig({ profile: 'strict', layout: 'B', units: 2 });
    const bound = await r.guest.alloc(null, 1, 0xfffff, 'bound');
    await assert.rejects(r.guest.free(bound), (e) => isIoasidError(e, 'EBUSY'));
    const other = r.host.createSet({ name: 'other' });
    for (let i = 0; i < 1100; i++) r.host.allocSync(other, 1, 0xfffff);
    await assert.rejects(r.guest.alloc(null, 1, 1023), (e) => isIoasidError(e, 'ERANGE'));
    const [u0] = r.driver.units;
    assert.ok(u0 !== undefined);
    await r.driver.unplug(u0);
    await r.guest.alloc(null, 1, 0xfffff);
    assert.deepEqual(hazardsOf(r), []);
  });

  it('the VT-d driver of v6.4+ (760f41d182ec removed the virtual command interface): linux-6.x never registers a VCMD allocator', async () => {
    const r = rig({ profile: 'linux-6.x', layout: 'B' });
    assert.equal(r.driver.units[0]?.registered, false);
    assert.equal(r.guest.activeAllocator(), null);
    assert.equal(await r.guest.alloc(null, 1, 100), 1);
    assert.equal(r.devices[0]?.stats.commands, 0);
    assert.deepEqual(r.logs, [], 'by design, not a hazard: 6.x guest PASIDs are its own');
  });
});

describe('vcmd_free_pasid (v5.15-v6.3, 4d99efb229e6): the layout-B Free operand computed in 32 bits', () => {
  /** Host PASIDs 1..0x12344 held by another VM, so the guest's next PASID is 0x12345. */
  function at0x12345(profile: Profile, layout: Layout, freeForGuest: number[] = []) {
    const r = rig({ profile, layout });
    const other = r.host.createSet({ name: 'other' });
    for (let i = 0; i < 0x12344; i++) r.host.allocSync(other, 1, 0xfffff);
    for (const p of freeForGuest) r.host.freeSync(p, other);
    return r;
  }

  for (const profile of LINUX) {
    it(`vcmd_free_pasid (v5.15-v6.3, 4d99efb229e6): freeing 0x12345 writes 0x23450002 (a Free of 0x2345) and the host keeps 0x12345 [${profile}]`, async () => {
      const r = at0x12345(profile, 'B');
      const id = await r.guest.alloc(null, 1, 0xfffff);
      assert.equal(id, 0x12345);
      await r.guest.free(id);
      assert.deepEqual(vcmdWrites(r, 0, 'B'), [1n, 0x23450002n]);
      assert.deepEqual(r.host.idsOf(r.vm), [0x12345], 'PASID 0x12345 leaks on the host');
      assert.equal(r.guest.has(id), false, 'the guest forgot it');
      const last = r.devices[0]?.recentCommands().at(-1);
      assert.equal(last?.operand, 0x2345);
      assert.equal(last?.statusName, 'invalid PASID', 'another VM owns 0x2345: refused');
      const h = hazardsOf(r);
      assert.deepEqual(h.map((x) => x.kind), ['vcmd-free-truncated']);
      assert.match(h[0]?.message ?? '', /vcmd_free_pasid, v5\.15-v6\.3 \(4d99efb229e6/);
      assert.match(h[0]?.message ?? '', /Free of PASID 0x12345 writes VCMD_REG 0x23450002, a Free of PASID 0x2345/);
    });

    it(`vcmd_free_pasid (v5.15-v6.3, 4d99efb229e6): when the VM also owns 0x2345, that live PASID is the one the host frees [${profile}]`, async () => {
      const r = at0x12345(profile, 'B', [0x2345]);
      const live = await r.guest.alloc(null, 1, 0xfffff, 'in use by a device');
      assert.equal(live, 0x2345);
      const id = await r.guest.alloc(null, 1, 0xfffff);
      assert.equal(id, 0x12345);
      await r.guest.free(id);
      assert.deepEqual(r.host.idsOf(r.vm), [0x12345], 'the host freed 0x2345 and kept 0x12345');
      assert.equal(r.guest.find(null, live), 'in use by a device', 'the guest still uses 0x2345, which the host no longer holds for it');
    });
  }

  it('strict writes the full 64-bit operand: freeing 0x12345 writes 0x123450002 and the host frees 0x12345', async () => {
    const r = at0x12345('strict', 'B');
    const id = await r.guest.alloc(null, 1, 0xfffff);
    await r.guest.free(id);
    assert.deepEqual(vcmdWrites(r, 0, 'B'), [1n, 0x123450002n]);
    assert.deepEqual(r.host.idsOf(r.vm), []);
    assert.deepEqual(hazardsOf(r), []);
  });

  it('layout A (<< 8 of a 20-bit PASID) cannot overflow: a Linux guest frees 0x12345 with 0x1234502', async () => {
    const r = at0x12345('linux-5.8', 'A');
    const id = await r.guest.alloc(null, 1, 0xfffff);
    await r.guest.free(id);
    assert.deepEqual(vcmdWrites(r, 0, 'A'), [1n, 0x1234502n]);
    assert.deepEqual(r.host.idsOf(r.vm), []);
  });
});
