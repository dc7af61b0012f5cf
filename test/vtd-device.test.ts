/**
 * The VCMD device (host side of one vIOMMU): behaviours 55-65 of docs/behaviours.md, in both layouts
 * where the layout matters. The host behind the device is a strict core `IoasidSpace` with one set
 * per VM, as the host model has it (docs/core.md).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { CommitError, IoasidError, IoasidSpace, isCommitError, isIoasidError, type IoasidSet } from '../src/core/index.ts';
import {
  LAYOUTS,
  VCMD_CMD,
  VcmdDevice,
  decodeVcrsp,
  encodeVcmd,
  registerMap,
  registerOffset,
  type Layout,
  type VcmdBackend,
  type VcmdCommandContext,
  type VcmdDeviceOptions,
  type VcmdGuestState,
} from '../src/vtd/index.ts';

// ------------------------------------------------------------------------------------ helpers

function hostWithVm(quota = 1000): { host: IoasidSpace; vm: IoasidSet; backend: VcmdBackend } {
  const host = new IoasidSpace({ profile: 'strict' });
  const vm = host.createSet({ name: 'vm1', quota });
  return { host, vm, backend: vmBackend(host, vm) };
}

function vmBackend(host: IoasidSpace, vm: IoasidSet): VcmdBackend {
  return {
    allocate: (range) => host.allocSync(vm, range?.min ?? 1, range?.max ?? 0xfffff),
    free: (p) => host.freeSync(p, vm),
  };
}

/** A backend whose answers wait until the test releases them. */
function deferredBackend(inner: VcmdBackend): VcmdBackend & { release(): void; pending: number } {
  const waiting: (() => void)[] = [];
  return {
    allocate: (range) => new Promise<number>((resolve, reject) => {
      waiting.push(() => { try { resolve(inner.allocate(range) as number); } catch (e) { reject(e); } });
    }),
    free: (p) => new Promise<void>((resolve, reject) => {
      waiting.push(() => { try { inner.free(p); resolve(); } catch (e) { reject(e); } });
    }),
    release() { for (const w of waiting.splice(0)) w(); },
    get pending() { return waiting.length; },
  };
}

function device(layout: Layout, backend: VcmdBackend, extra: Partial<VcmdDeviceOptions> = {}): VcmdDevice {
  return new VcmdDevice({ layout, backend, ...extra });
}

const off = (layout: Layout, reg: 'VCMD_REG' | 'VCMD_EO_REG' | 'VCRSP_REG' | 'VCCAP_REG'): number => registerOffset(layout, reg);

/** Issue a 64-bit command and return the decoded response (synchronous backends). */
function command(dev: VcmdDevice, layout: Layout, cmd: number, pasid = 0): { ip: boolean; sc: number; pasid: number; result: bigint } {
  dev.write(off(layout, 'VCMD_REG'), encodeVcmd(layout, cmd, pasid), 8);
  return decodeVcrsp(layout, dev.read(off(layout, 'VCRSP_REG'), 8));
}

const NO_PASID: Record<Layout, number> = { A: 2, B: 16 };

// ------------------------------------------------------------------------------------ tests

describe('VCMD device: registers', () => {
  for (const layout of LAYOUTS) {
    it(`advertises CAP.CM, ECAP PSS/PASID/SMTS/VCS and VCCAP at the layout's offsets (layout ${layout})`, () => {
      const dev = device(layout, hostWithVm().backend);
      assert.equal(dev.read(0x08, 8), 0x80n);
      assert.equal(dev.read(0x10, 8), (19n << 35n) | (1n << 40n) | (1n << 43n) | (1n << 44n));
      assert.equal(dev.read(off(layout, 'VCCAP_REG'), 8), 1n);
      // 32-bit reads return the dwords.
      assert.equal(dev.read(0x14, 4), ((19n << 35n) | (1n << 40n) | (1n << 43n) | (1n << 44n)) >> 32n);
      assert.equal(dev.read(0x10, 4), (19n << 35n) & 0xffffffffn);
    });

    it(`VCMD_REG reads back what was written; VCRSP and VCCAP ignore writes (layout ${layout})`, () => {
      const dev = device(layout, hostWithVm().backend);
      dev.write(off(layout, 'VCCAP_REG'), 0n, 8);
      dev.write(off(layout, 'VCRSP_REG'), 0xffn, 8);
      assert.equal(dev.read(off(layout, 'VCCAP_REG'), 8), 1n);
      assert.equal(dev.read(off(layout, 'VCRSP_REG'), 8), 0n);
      dev.write(off(layout, 'VCMD_REG'), encodeVcmd(layout, 7, 3), 8);
      assert.equal(dev.read(off(layout, 'VCMD_REG'), 8), encodeVcmd(layout, 7, 3));
    });

    it(`bad accesses never throw: misaligned, bad sizes, odd values, unknown offsets (layout ${layout})`, () => {
      const dev = device(layout, hostWithVm().backend);
      const before = dev.snapshot();
      const offsets = [-8, 0.5, 0xe01, 0xe02, 0xe06, Number.MAX_SAFE_INTEGER, NaN, 2 ** 60, 0x1000];
      for (const o of offsets) {
        for (const size of [1, 2, 3, 4, 8, 16] as (4 | 8)[]) {
          assert.doesNotThrow(() => dev.read(o, size));
          assert.doesNotThrow(() => dev.write(o, 1n, size));
        }
      }
      assert.doesNotThrow(() => dev.write(off(layout, 'VCMD_REG'), 1 as unknown as bigint, 8));
      assert.doesNotThrow(() => dev.write(off(layout, 'VCMD_REG'), undefined as unknown as bigint, 8));
      assert.equal(dev.read(off(layout, 'VCMD_REG') + 2, 4), 0n);
      assert.equal(dev.read(off(layout, 'VCMD_REG') + 4, 8), 0n);
      assert.equal(dev.read(0x1000, 8), 0n);
      assert.deepEqual(dev.snapshot(), before);
    });

    it(`a value wider than the access is truncated to it (layout ${layout})`, () => {
      const { backend, host, vm } = hostWithVm();
      const dev = device(layout, backend);
      // 64-bit write of a 65-bit value: only the low 64 bits count (CMD 1, Allocate).
      dev.write(off(layout, 'VCMD_REG'), (1n << 64n) | 1n, 8);
      assert.deepEqual(host.idsOf(vm), [1]);
    });

    it(`with ECAP.VCS clear, VCCAP/VCMD/VCRSP read as 0 and writes do nothing (layout ${layout})`, () => {
      const { backend, host, vm } = hostWithVm();
      const dev = device(layout, backend, { virtualCommands: false });
      assert.equal(dev.read(0x10, 8) >> 44n & 1n, 0n);
      assert.equal(dev.read(off(layout, 'VCCAP_REG'), 8), 0n);
      dev.write(off(layout, 'VCMD_REG'), 1n, 8);
      assert.equal(dev.read(off(layout, 'VCMD_REG'), 8), 0n);
      assert.equal(dev.read(off(layout, 'VCRSP_REG'), 8), 0n);
      assert.equal(host.setCount(vm), 0);
    });
  }

  it('VCCAP reads PAS/FPS clear when ECAP.PASID is clear (spec Rev 5.10)', () => {
    const dev = device('B', hostWithVm().backend, { pasBit: 1, pasidSupport: false });
    assert.equal(dev.read(off('B', 'VCCAP_REG'), 8), 1n); // only NS
  });

  it('configuration is validated with EINVAL naming the option', () => {
    const { backend } = hostWithVm();
    const bad: Partial<VcmdDeviceOptions>[] = [
      { layout: 'C' as Layout },
      { rangeExtension: true },
      { pasBit: 0, nullCommand: true },
      { pasBit: 0, freeCommand: false },
      { pss: 20 },
      { pss: -1 },
      { logSize: 1e6 },
      { cachingMode: 'yes' as unknown as boolean },
    ];
    for (const b of bad) {
      assert.throws(() => new VcmdDevice({ layout: 'A', backend, ...b }), (e) => isIoasidError(e, 'EINVAL'), JSON.stringify(b));
    }
    assert.throws(() => new VcmdDevice({ layout: 'A', backend: {} as VcmdBackend }), (e) => isIoasidError(e, 'EINVAL'));
    assert.doesNotThrow(() => new VcmdDevice({ layout: 'B', backend, rangeExtension: true }));
  });
});

describe('VCMD device: command state machine (behaviours 55-63)', () => {
  for (const layout of LAYOUTS) {
    it(`behaviour 55: a write to VCMD while IP=1 is dropped and changes nothing (layout ${layout})`, async () => {
      const { backend, host, vm } = hostWithVm();
      const slow = deferredBackend(backend);
      const dev = device(layout, slow);
      dev.write(off(layout, 'VCMD_REG'), encodeVcmd(layout, VCMD_CMD.ALLOCATE), 8);
      assert.equal(dev.busy, true);
      const vcmd = dev.read(off(layout, 'VCMD_REG'), 8);
      // 64-bit and 32-bit writes of a Free, and (layout B) VCMD_EO, all dropped.
      dev.write(off(layout, 'VCMD_REG'), encodeVcmd(layout, VCMD_CMD.FREE, 9), 8);
      dev.write(off(layout, 'VCMD_REG'), 2n, 4);
      dev.write(off(layout, 'VCMD_REG') + 4, 0n, 4);
      if (layout === 'B') dev.write(off(layout, 'VCMD_EO_REG'), 0x1234n, 8);
      assert.equal(dev.read(off(layout, 'VCMD_REG'), 8), vcmd);
      assert.equal(dev.read(off(layout, 'VCRSP_REG'), 8), 1n);
      if (layout === 'B') assert.equal(dev.read(off(layout, 'VCMD_EO_REG'), 8), 0n);
      assert.equal(slow.pending, 1);
      assert.equal(dev.stats.droppedWrites, layout === 'B' ? 4 : 3);
      slow.release();
      await dev.settled();
      assert.equal(dev.busy, false);
      assert.deepEqual(decodeVcrsp(layout, dev.read(off(layout, 'VCRSP_REG'), 8)), { ip: false, sc: 0, pasid: 1, result: 1n });
      assert.deepEqual(host.idsOf(vm), [1]);
      assert.equal(dev.recentCommands().length, 1);
    });

    it(`behaviour 56: writing the command field clears VCRSP and sets IP before the command completes (layout ${layout})`, async () => {
      const { backend } = hostWithVm();
      const slow = deferredBackend(backend);
      const dev = device(layout, slow);
      dev.write(off(layout, 'VCMD_REG'), 1n, 8);
      slow.release();
      await dev.settled();
      assert.notEqual(dev.read(off(layout, 'VCRSP_REG'), 8), 0n); // RSLT holds PASID 1
      dev.write(off(layout, 'VCMD_REG'), 1n, 8);
      assert.equal(dev.read(off(layout, 'VCRSP_REG'), 8), 1n); // exactly IP: SC and RSLT cleared
      slow.release();
      await dev.settled();
      assert.deepEqual(decodeVcrsp(layout, dev.read(off(layout, 'VCRSP_REG'), 8)).pasid, 2);
    });

    it(`behaviour 57: commands 3-255 complete with SC=1 "undefined command" (layout ${layout})`, () => {
      const { backend, host, vm } = hostWithVm();
      const dev = device(layout, backend);
      for (let cmd = 3; cmd <= 255; cmd++) {
        assert.deepEqual(command(dev, layout, cmd, 7), { ip: false, sc: 1, pasid: 0, result: 0n }, `cmd ${cmd}`);
      }
      assert.equal(host.setCount(vm), 0);
      assert.equal(dev.stats.undefinedCommands, 253);
      assert.equal(dev.recentCommands().at(-1)?.statusName, 'undefined command');
    });

    it(`behaviour 57: commands not advertised in VCCAP complete with "undefined command" (layout ${layout})`, () => {
      const { backend, host, vm } = hostWithVm();
      // Linux PAS bit 0: no NS bit, so Null is never advertised.
      assert.equal(command(device(layout, backend), layout, VCMD_CMD.NULL).sc, 1);
      // PAS clear: Allocate is undefined; Free too (implied by PAS at bit 0).
      const noPas = device(layout, backend, { pasidAllocation: false });
      assert.equal(noPas.read(off(layout, 'VCCAP_REG'), 8), 0n);
      assert.equal(command(noPas, layout, VCMD_CMD.ALLOCATE).sc, 1);
      assert.equal(command(noPas, layout, VCMD_CMD.FREE, 1).sc, 1);
      // VT-d Rev 5.10 bits: FPS clear makes Free undefined while Allocate works.
      const noFps = device(layout, backend, { pasBit: 1, freeCommand: false });
      assert.equal(noFps.read(off(layout, 'VCCAP_REG'), 8), 0b011n);
      const a = command(noFps, layout, VCMD_CMD.ALLOCATE);
      assert.equal(a.sc, 0);
      assert.equal(command(noFps, layout, VCMD_CMD.FREE, a.pasid).sc, 1);
      assert.deepEqual(host.idsOf(vm), [a.pasid]);
    });

    it(`behaviour 58: the Null command completes with SC=0 and a zero result when NS is supported (layout ${layout})`, () => {
      const { backend, host, vm } = hostWithVm();
      const dev = device(layout, backend, { pasBit: 1, nullCommand: true });
      assert.equal(dev.read(off(layout, 'VCCAP_REG'), 8) & 1n, 1n);
      command(dev, layout, VCMD_CMD.ALLOCATE); // leave a non-zero RSLT behind
      assert.deepEqual(command(dev, layout, VCMD_CMD.NULL, 0x55), { ip: false, sc: 0, pasid: 0, result: 0n });
      assert.equal(dev.read(off(layout, 'VCRSP_REG'), 8), 0n);
      assert.equal(host.setCount(vm), 1);
    });

    it(`behaviour 59: RSLT is zero whenever SC != 0 (layout ${layout})`, () => {
      const { backend } = hostWithVm(1);
      const dev = device(layout, backend);
      assert.equal(command(dev, layout, VCMD_CMD.ALLOCATE).sc, 0);
      const full = command(dev, layout, VCMD_CMD.ALLOCATE);
      assert.equal(full.sc, NO_PASID[layout]);
      assert.equal(full.result, 0n);
      const undef = command(dev, layout, 77);
      assert.equal(undef.result, 0n);
      const bad = command(dev, layout, VCMD_CMD.FREE, 0x777);
      assert.deepEqual([bad.sc, bad.result], [NO_PASID[layout], 0n]);
    });

    it(`behaviour 60: Free of a PASID the VM does not own, of PASID 0, or of a never-allocated PASID is "invalid PASID" (layout ${layout})`, () => {
      const host = new IoasidSpace({ profile: 'strict' });
      const vm1 = host.createSet({ name: 'vm1', quota: 10 });
      const vm2 = host.createSet({ name: 'vm2', quota: 10 });
      const dev1 = device(layout, vmBackend(host, vm1));
      const dev2 = device(layout, vmBackend(host, vm2));
      const p = command(dev1, layout, VCMD_CMD.ALLOCATE).pasid;
      assert.equal(command(dev2, layout, VCMD_CMD.FREE, p).sc, NO_PASID[layout], 'foreign');
      assert.equal(command(dev2, layout, VCMD_CMD.FREE, 0).sc, NO_PASID[layout], 'PASID 0');
      assert.equal(command(dev2, layout, VCMD_CMD.FREE, 4242).sc, NO_PASID[layout], 'never allocated');
      assert.deepEqual(host.idsOf(vm1), [p]);
      assert.equal(dev2.recentCommands()[0]?.error?.startsWith('EACCES'), true);
      assert.equal(command(dev1, layout, VCMD_CMD.FREE, p).sc, 0);
      assert.deepEqual(host.idsOf(vm1), []);
    });

    it(`behaviour 61: Allocate beyond the VM's quota (default 1000) is "no PASID available" (layout ${layout})`, () => {
      const { backend, host, vm } = hostWithVm(1000);
      const dev = device(layout, backend);
      for (let i = 0; i < 1000; i++) assert.equal(command(dev, layout, VCMD_CMD.ALLOCATE).sc, 0);
      const r = command(dev, layout, VCMD_CMD.ALLOCATE);
      assert.deepEqual([r.sc, r.result], [NO_PASID[layout], 0n]);
      assert.equal(host.setCount(vm), 1000);
      assert.match(dev.recentCommands().at(-1)?.error ?? '', /EDQUOT/);
    });

    it(`behaviour 62: the quota is per VM, shared by all its vIOMMUs, not per device (layout ${layout})`, () => {
      const host = new IoasidSpace({ profile: 'strict' });
      const vm1 = host.createSet({ name: 'vm1', quota: 2 });
      const vm2 = host.createSet({ name: 'vm2', quota: 2 });
      const a = device(layout, vmBackend(host, vm1));
      const b = device(layout, vmBackend(host, vm1));
      const c = device(layout, vmBackend(host, vm2));
      assert.equal(command(a, layout, VCMD_CMD.ALLOCATE).sc, 0);
      assert.equal(command(b, layout, VCMD_CMD.ALLOCATE).sc, 0);
      assert.equal(command(a, layout, VCMD_CMD.ALLOCATE).sc, NO_PASID[layout]);
      assert.equal(command(b, layout, VCMD_CMD.ALLOCATE).sc, NO_PASID[layout]);
      assert.equal(command(c, layout, VCMD_CMD.ALLOCATE).sc, 0, 'another VM is not affected');
    });
  }

  it('behaviour 63: a 32-bit guest writing the low dword first does not fire until the high dword arrives (layout B, PASID bits 35:32)', () => {
    const { backend, host, vm } = hostWithVm(0);
    const dev = device('B', backend);
    const vcmd = off('B', 'VCMD_REG');
    for (let i = 0; i < 0x10005; i++) host.allocSync(vm, 1, 0xfffff);
    const target = 0x10004; // needs OA bit 32, in the high dword
    const value = encodeVcmd('B', VCMD_CMD.FREE, target);
    dev.write(vcmd, value & 0xffffffffn, 4); // low first: CMD = Free, PASID bits 31:16 only
    assert.equal(dev.busy, false);
    assert.equal(dev.stats.commands, 0, 'no command yet');
    dev.write(vcmd + 4, value >> 32n, 4); // completes the pair: fires with the whole operand
    assert.equal(dev.stats.commands, 1);
    assert.equal(decodeVcrsp('B', dev.read(off('B', 'VCRSP_REG'), 8)).sc, 0);
    assert.equal(host.has(target), false);
    assert.equal(host.has(target & 0xffff), true, 'the truncated PASID was not freed');
  });

  it('behaviour 63: the high dword first also forms one command, firing on the low write', () => {
    const { backend, host, vm } = hostWithVm(0);
    for (let i = 0; i < 0x10005; i++) host.allocSync(vm, 1, 0xfffff);
    const dev = device('B', backend);
    const vcmd = off('B', 'VCMD_REG');
    const value = encodeVcmd('B', VCMD_CMD.FREE, 0x10003);
    dev.write(vcmd + 4, value >> 32n, 4);
    assert.equal(dev.stats.commands, 0);
    dev.write(vcmd, value & 0xffffffffn, 4);
    assert.equal(dev.stats.commands, 1);
    assert.equal(host.has(0x10003), false);
  });

  it('behaviour 63: a 64-bit write fires at once and discards a half-written pair; layout A works the same', () => {
    for (const layout of LAYOUTS) {
      const { backend, host, vm } = hostWithVm();
      const dev = device(layout, backend);
      const vcmd = off(layout, 'VCMD_REG');
      dev.write(vcmd, 2n, 4); // half of something
      dev.write(vcmd, 1n, 8); // Allocate now
      assert.deepEqual(host.idsOf(vm), [1]);
      dev.write(vcmd + 4, 0n, 4); // a lone high half: nothing
      assert.equal(dev.stats.commands, 1);
      dev.write(vcmd, encodeVcmd(layout, VCMD_CMD.FREE, 1) & 0xffffffffn, 4); // completes the pair
      assert.deepEqual(host.idsOf(vm), []);
    }
  });

  it('range extension (layout B): Allocate carries [min, max] and the host allocates inside it', () => {
    const { backend, host, vm } = hostWithVm();
    const dev = device('B', backend, { rangeExtension: true });
    assert.equal(dev.read(off('B', 'VCCAP_REG'), 8) >> 63n, 1n);
    dev.write(off('B', 'VCMD_EO_REG'), 0x2ffn, 8);
    dev.write(off('B', 'VCMD_REG'), encodeVcmd('B', VCMD_CMD.ALLOCATE, 0x200), 8);
    assert.equal(decodeVcrsp('B', dev.read(off('B', 'VCRSP_REG'), 8)).pasid, 0x200);
    assert.deepEqual(dev.recentCommands().at(-1)?.range, { min: 0x200, max: 0x2ff });
    // min = max = 0: any PASID.
    dev.write(off('B', 'VCMD_EO_REG'), 0n, 8);
    assert.equal(command(dev, 'B', VCMD_CMD.ALLOCATE).pasid, 1);
    // min > max: no PASID, the backend is not asked.
    dev.write(off('B', 'VCMD_EO_REG'), 0x10n, 8);
    assert.equal(command(dev, 'B', VCMD_CMD.ALLOCATE, 0x20).sc, 16);
    assert.deepEqual(host.idsOf(vm), [1, 0x200]);
    // Without RX advertised the operands are ignored.
    const plain = device('B', backend);
    plain.write(off('B', 'VCMD_EO_REG'), 0x2ffn, 8);
    assert.equal(command(plain, 'B', VCMD_CMD.ALLOCATE, 0x200).pasid, 2);
  });
});

describe('VCMD device: host and backend (behaviours 64, 65)', () => {
  for (const layout of LAYOUTS) {
    it(`behaviour 64: VM teardown frees every PASID the VM owns and notifies; later guest Frees get "invalid PASID" (layout ${layout})`, () => {
      const host = new IoasidSpace({ profile: 'strict' });
      const vm1 = host.createSet({ name: 'vm1', quota: 10 });
      const vm2 = host.createSet({ name: 'vm2', quota: 10 });
      const dev1 = device(layout, vmBackend(host, vm1));
      const dev2 = device(layout, vmBackend(host, vm2));
      const mine = [1, 2, 3].map(() => command(dev1, layout, VCMD_CMD.ALLOCATE).pasid);
      const theirs = command(dev2, layout, VCMD_CMD.ALLOCATE).pasid;
      const freed: number[] = [];
      host.subscribe((e) => freed.push(e.id), { types: ['free'], priority: 'iommu' });
      assert.deepEqual(host.freeAllSync(vm1), mine);
      assert.deepEqual(freed.sort((a, b) => a - b), mine);
      assert.deepEqual(host.idsOf(vm1), []);
      assert.deepEqual(host.idsOf(vm2), [theirs]);
      assert.equal(command(dev1, layout, VCMD_CMD.FREE, mine[0]).sc, NO_PASID[layout]);
    });

    it(`behaviour 65: host allocation uses [1, 0xFFFFF] and never returns PASID 0 (layout ${layout})`, () => {
      const { backend } = hostWithVm();
      assert.equal(command(device(layout, backend), layout, VCMD_CMD.ALLOCATE).pasid, 1);
      // A backend that answers 0 (or anything outside [1, 0xFFFFF]) is a host bug: the guest sees
      // "no PASID available" and the bug is reported, never a PASID 0.
      const errors: unknown[] = [];
      for (const answer of [0, 0x100000, -1, 1.5, Number.NaN]) {
        const bad = device(layout, { allocate: () => answer, free: () => {} }, { onInternalError: (e) => errors.push(e) });
        const r = command(bad, layout, VCMD_CMD.ALLOCATE);
        assert.deepEqual([r.sc, r.result], [NO_PASID[layout], 0n], String(answer));
      }
      assert.equal(errors.length, 5);
      assert.ok(errors.every((e) => isIoasidError(e, 'ERANGE')));
    });
  }

  it('a backend answer outside the requested range is handed back and reported (range extension)', () => {
    const { host, vm } = hostWithVm();
    const errors: unknown[] = [];
    const dev = device('B', { allocate: () => host.allocSync(vm, 1, 0xfffff), free: (p) => host.freeSync(p, vm) }, { rangeExtension: true, onInternalError: (e) => errors.push(e) });
    dev.write(off('B', 'VCMD_EO_REG'), 0x20n, 8);
    dev.write(off('B', 'VCMD_REG'), encodeVcmd('B', VCMD_CMD.ALLOCATE, 0x10), 8);
    assert.equal(decodeVcrsp('B', dev.read(off('B', 'VCRSP_REG'), 8)).sc, 16);
    assert.equal(host.setCount(vm), 0, 'PASID 1 was freed back');
    assert.equal(errors.length, 1);
  });

  it('the guest-visible status is written before an internal error is reported, never thrown into the write', async () => {
    for (const layout of LAYOUTS) {
      const seen: bigint[] = [];
      let dev: VcmdDevice | undefined;
      const onInternalError = (): void => {
        seen.push((dev as VcmdDevice).read(off(layout, 'VCRSP_REG'), 8));
        throw new Error('the reporter itself fails');
      };
      dev = device(layout, { allocate: () => { throw new TypeError('host bug'); }, free: () => Promise.reject(new RangeError('async host bug')) }, { onInternalError });
      assert.doesNotThrow(() => dev.write(off(layout, 'VCMD_REG'), 1n, 8));
      dev.write(off(layout, 'VCMD_REG'), encodeVcmd(layout, VCMD_CMD.FREE, 5), 8);
      await dev.settled();
      assert.deepEqual(seen.map((v) => decodeVcrsp(layout, v)), [
        { ip: false, sc: NO_PASID[layout], pasid: 0, result: 0n },
        { ip: false, sc: NO_PASID[layout], pasid: 0, result: 0n },
      ]);
      assert.equal(dev.stats.internalErrors, 2);
      assert.match(dev.recentCommands()[0]?.error ?? '', /TypeError: host bug/);
    }
  });

  it('an IoasidError from the backend is a status, not an internal error', () => {
    const errors: unknown[] = [];
    const dev = device('B', { allocate: () => { throw new IoasidError('ENOSPC', 'full'); }, free: () => { throw new IoasidError('EBUSY', 'bound'); } }, { onInternalError: (e) => errors.push(e) });
    assert.equal(command(dev, 'B', VCMD_CMD.ALLOCATE).sc, 16);
    assert.equal(command(dev, 'B', VCMD_CMD.FREE, 3).sc, 16);
    assert.equal(errors.length, 0);
    assert.equal(dev.stats.internalErrors, 0);
  });
});

describe('VCMD device: recent-commands log', () => {
  it('keeps the last logSize commands with decoded command, status, result and injected timestamps', async () => {
    let t = 1000;
    const { backend } = hostWithVm();
    const slow = deferredBackend(backend);
    const dev = device('B', slow, { logSize: 3, now: () => t });
    for (let i = 0; i < 4; i++) {
      dev.write(off('B', 'VCMD_REG'), 1n, 8);
      t += 5;
      slow.release();
      await dev.settled();
    }
    dev.write(off('B', 'VCMD_REG'), encodeVcmd('B', VCMD_CMD.FREE, 2), 8);
    const log = dev.recentCommands();
    assert.equal(log.length, 3);
    assert.deepEqual(log.map((e) => e.seq), [2, 3, 4]);
    assert.deepEqual(log[0], {
      seq: 2, cmd: 1, command: 'Allocate PASID', operand: null, range: null, status: 0, statusName: 'success',
      result: 3, issuedAt: 1010, completedAt: 1015, error: null,
    });
    assert.deepEqual([log[2]?.status, log[2]?.operand, log[2]?.completedAt], [null, 2, null], 'in progress');
    assert.ok(Object.isFrozen(log[0]));
    slow.release();
    await dev.settled();
    assert.equal(dev.recentCommands()[2]?.statusName, 'success');
  });

  it('logSize 0 keeps nothing, also after a restore', () => {
    const { backend } = hostWithVm();
    const dev = device('A', backend, { logSize: 0 });
    command(dev, 'A', 1);
    assert.deepEqual(dev.recentCommands(), []);
    const full = device('A', backend);
    command(full, 'A', 1);
    const snap = { ...full.snapshot(), config: { ...full.snapshot().config, logSize: 0 } };
    assert.deepEqual(VcmdDevice.restore(snap, backend).recentCommands(), []);
  });

  it('the ring keeps order across wrap-around and through a snapshot', () => {
    const { backend } = hostWithVm();
    const dev = device('B', backend, { logSize: 4 });
    for (let i = 0; i < 10; i++) command(dev, 'B', i % 2 === 0 ? 1 : 9);
    assert.deepEqual(dev.recentCommands().map((e) => e.seq), [6, 7, 8, 9]);
    const back = VcmdDevice.restore(JSON.parse(JSON.stringify(dev.snapshot())), backend);
    assert.deepEqual(back.recentCommands(), dev.recentCommands());
    command(back, 'B', 1);
    assert.deepEqual(back.recentCommands().map((e) => e.seq), [7, 8, 9, 10]);
  });
});

describe('VCMD device: snapshot and restore', () => {
  for (const layout of LAYOUTS) {
    it(`a snapshot is plain JSON and restores to an identical device (layout ${layout})`, () => {
      const { backend } = hostWithVm();
      const dev = device(layout, backend, { pasBit: 1, nullCommand: true });
      command(dev, layout, VCMD_CMD.ALLOCATE);
      command(dev, layout, 99);
      dev.write(off(layout, 'VCMD_REG'), 0x12345678n, 4); // a pending low half
      const snap = dev.snapshot();
      const json = JSON.parse(JSON.stringify(snap)) as unknown;
      assert.deepEqual(json, snap);
      const back = VcmdDevice.restore(json, backend);
      assert.deepEqual(back.snapshot(), snap);
      for (const o of [0x08, 0x10, off(layout, 'VCCAP_REG'), off(layout, 'VCMD_REG'), off(layout, 'VCRSP_REG')]) {
        assert.equal(back.read(o, 8), dev.read(o, 8));
      }
      // The pending half survives: the high half completes it on both devices alike.
      dev.write(off(layout, 'VCMD_REG') + 4, 0n, 4);
      back.write(off(layout, 'VCMD_REG') + 4, 0n, 4);
      assert.equal(back.stats.commands, dev.stats.commands);
    });
  }

  it('snapshot while a backend call is outstanding fails with EBUSY', async () => {
    const slow = deferredBackend(hostWithVm().backend);
    const dev = device('B', slow);
    dev.write(off('B', 'VCMD_REG'), 1n, 8);
    assert.throws(() => dev.snapshot(), (e) => isIoasidError(e, 'EBUSY'));
    slow.release();
    await dev.settled();
    assert.doesNotThrow(() => dev.snapshot());
  });

  it('restore rejects malformed input with EINVAL, never a crash', () => {
    const { backend } = hostWithVm();
    const good = device('B', backend);
    command(good, 'B', 1);
    const snap = good.snapshot() as unknown as Record<string, unknown>;
    const mutate = (f: (s: Record<string, any>) => void): unknown => {
      const s = structuredClone(snap) as Record<string, any>;
      f(s);
      return s;
    };
    const bad: unknown[] = [
      null, 42, 'x', [], {},
      mutate((s) => { s.kind = 'other'; }),
      mutate((s) => { s.version = 3; }),
      mutate((s) => { s.version = 1; }), // version 1 has no writer key
      mutate((s) => { s.writer = { id: '', seq: 1 }; }),
      mutate((s) => { s.writer = { id: 'w', seq: -1 }; }),
      mutate((s) => { s.writer = 'w'; }),
      mutate((s) => { s.extra = 1; }),
      mutate((s) => { delete s.stats; }),
      mutate((s) => { s.config.layout = 'Z'; }),
      mutate((s) => { s.config.rangeExtension = true; s.config.layout = 'A'; }),
      mutate((s) => { s.config.bogus = true; }),
      mutate((s) => { delete s.config.pss; }),
      mutate((s) => { s.registers.VCRSP_REG = '0x1'; }),
      mutate((s) => { s.registers.VCRSP_REG = '0x100'; }), // reserved bits 15:8
      mutate((s) => { s.registers.VCMD_REG = '0xff00'; }), // RsvdZ 15:8 in layout B
      mutate((s) => { s.registers.VCMD_REG = 'ff'; }),
      mutate((s) => { s.registers.VCMD_REG = '0x1ffffffffffffffff'; }),
      mutate((s) => { s.registers.VCMD_REG = 5; }),
      mutate((s) => { s.pendingHalves = { low: true, high: true }; }),
      mutate((s) => { s.pendingHalves.low = 'yes'; }),
      mutate((s) => { s.nextSeq = -1; }),
      mutate((s) => { s.nextSeq = 0; }), // log entry seq 0 must be below nextSeq
      mutate((s) => { s.log = {}; }),
      mutate((s) => { s.log[0].status = null; s.log[0].completedAt = null; }),
      mutate((s) => { s.log[0].result = 0x100000; }),
      mutate((s) => { s.log[0].issuedAt = 'now'; }),
      mutate((s) => { s.log[0].range = { min: 1 }; }),
      mutate((s) => { s.log = new Array(2000).fill(s.log[0]); }),
      mutate((s) => { s.stats.commands = 1.5; }),
      mutate((s) => { s.stats = null; }),
    ];
    for (const b of bad) {
      assert.throws(() => VcmdDevice.restore(b, backend), (e) => isIoasidError(e, 'EINVAL'), JSON.stringify(b)?.slice(0, 120));
    }
    const layoutA = device('A', backend).snapshot() as unknown as Record<string, any>;
    layoutA.registers.VCMD_EO_REG = '0x5';
    assert.throws(() => VcmdDevice.restore(layoutA, backend), (e) => isIoasidError(e, 'EINVAL'));
  });

  it('a restored device serves commands with its new backend', () => {
    const a = hostWithVm();
    const dev = device('A', a.backend);
    command(dev, 'A', 1);
    const b = hostWithVm();
    const back = VcmdDevice.restore(JSON.parse(JSON.stringify(dev.snapshot())), b.backend);
    assert.equal(command(back, 'A', 1).pasid, 1);
    assert.deepEqual(b.host.idsOf(b.vm), [1]);
    assert.deepEqual(registerMap('A'), back.map);
  });
});

// ------------------------------------------------------------------------------------ durable hosts

/**
 * A durable backend over a strict space: what it committed (the guest-visible state with each
 * allocation or free, and each `persist`), and a switch that makes the next commit fail.
 */
function durableBackend(async = false) {
  const { host, vm } = hostWithVm();
  const committed: { what: string; pasid?: number; state: VcmdGuestState }[] = [];
  let failNext = false;
  const commit = <T>(what: string, state: VcmdGuestState, apply: () => T, pasid?: number): T | Promise<T> => {
    const run = () => {
      if (failNext) {
        failNext = false;
        throw new CommitError('EIO', 'disk away');
      }
      const r = apply();
      committed.push({ what, state, ...(pasid !== undefined ? { pasid } : {}) });
      return r;
    };
    return async ? Promise.resolve().then(run) : run();
  };
  const backend: VcmdBackend = {
    allocate: (range, cmd) => {
      const p = host.allocSync(vm, range?.min ?? 1, range?.max ?? 0xfffff);
      const undo = (e: unknown): never => {
        host.freeSync(p, vm);
        throw e;
      };
      try {
        const r = commit('alloc', (cmd as VcmdCommandContext).guestStateAfter(p), () => p, p);
        return typeof r === 'number' ? r : r.catch(undo);
      } catch (e) {
        return undo(e);
      }
    },
    free: (p, cmd) => {
      host.find(vm, p);
      return commit('free', (cmd as VcmdCommandContext).guestStateAfter(0), () => host.freeSync(p, vm), p);
    },
    persist: (state) => commit('persist', state, () => undefined),
  };
  return { host, vm, backend, committed, failNextCommit: () => { failNext = true; } };
}

for (const layout of LAYOUTS) {
  describe(`VCMD device on a durable host: what a guest observes is committed (layout ${layout})`, () => {
    it('a command\'s completion state is committed with its allocation or free, and equals what the guest then reads', async () => {
      for (const async of [false, true]) {
        const d = durableBackend(async);
        const dev = device(layout, d.backend);
        await dev.writeDurable(off(layout, 'VCMD_REG'), encodeVcmd(layout, VCMD_CMD.ALLOCATE), 8);
        const a = d.committed.at(-1);
        assert.equal(a?.what, 'alloc');
        assert.deepEqual(a?.state, dev.guestState(), 'the committed registers are the ones the guest reads');
        assert.equal(decodeVcrsp(layout, dev.read(off(layout, 'VCRSP_REG'), 8)).pasid, a?.pasid);
        await dev.writeDurable(off(layout, 'VCMD_REG'), encodeVcmd(layout, VCMD_CMD.FREE, a?.pasid as number), 8);
        assert.equal(d.committed.at(-1)?.what, 'free');
        assert.deepEqual(d.committed.at(-1)?.state, dev.guestState());
        assert.equal(d.committed.length, 2, 'a successful command is one commit, not two');
      }
    });

    it('a refused command (quota, foreign PASID, undefined command, Null) commits its failure status through persist', async () => {
      const d = durableBackend();
      const dev = device(layout, d.backend);
      await dev.writeDurable(off(layout, 'VCMD_REG'), encodeVcmd(layout, VCMD_CMD.FREE, 77), 8); // nobody's PASID
      assert.equal(d.committed.at(-1)?.what, 'persist');
      assert.deepEqual(d.committed.at(-1)?.state, dev.guestState());
      assert.equal(decodeVcrsp(layout, dev.read(off(layout, 'VCRSP_REG'), 8)).sc, NO_PASID[layout]);
      await dev.writeDurable(off(layout, 'VCMD_REG'), 0x7fn, 8); // undefined command 127
      assert.equal(d.committed.at(-1)?.what, 'persist');
      assert.deepEqual(d.committed.at(-1)?.state, dev.guestState());
      assert.equal(d.committed.length, 2);
    });

    it('a 32-bit half and a VCMD_EO write are committed before they count (the pending half survives)', async () => {
      const d = durableBackend();
      const dev = device(layout, d.backend);
      await dev.writeDurable(off(layout, 'VCMD_REG') + 4, 0n, 4);
      assert.deepEqual(d.committed.at(-1)?.state.pendingHalves, { low: false, high: true });
      await dev.writeDurable(off(layout, 'VCMD_REG'), BigInt(VCMD_CMD.ALLOCATE), 4);
      assert.equal(d.committed.at(-1)?.what, 'alloc', 'the low half completes the pair and fires');
      if (layout === 'B') {
        await dev.writeDurable(off(layout, 'VCMD_EO_REG'), 0x1234n, 8);
        assert.equal(d.committed.at(-1)?.state.registers.VCMD_EO_REG, '0x1234');
      }
    });

    it('a commit that fails takes the write back: registers, half and writer as before, and writeDurable rejects', async () => {
      for (const async of [false, true]) {
        const d = durableBackend(async);
        const dev = device(layout, d.backend);
        await dev.writeDurable(off(layout, 'VCMD_REG'), encodeVcmd(layout, VCMD_CMD.ALLOCATE), 8, { id: 'w', seq: 1 });
        const before = dev.guestState();
        const held = d.host.idsOf(d.vm);
        d.failNextCommit();
        await assert.rejects(dev.writeDurable(off(layout, 'VCMD_REG'), encodeVcmd(layout, VCMD_CMD.ALLOCATE), 8, { id: 'w', seq: 2 }), (e) => isCommitError(e) && e.code === 'EIO');
        assert.deepEqual(dev.guestState(), before, 'as if the write never came');
        assert.equal(dev.busy, false);
        assert.deepEqual(d.host.idsOf(d.vm), held, 'the reserved PASID went back');
        assert.match(dev.recentCommands().at(-1)?.error ?? '', /not committed, taken back/);
        // Sent again with the same number: now applied (it was not before).
        await dev.writeDurable(off(layout, 'VCMD_REG'), encodeVcmd(layout, VCMD_CMD.ALLOCATE), 8, { id: 'w', seq: 2 });
        assert.equal(d.host.idsOf(d.vm).length, held.length + 1);
        d.failNextCommit();
        await assert.rejects(dev.writeDurable(off(layout, 'VCMD_REG') + 4, 0n, 4), (e) => isCommitError(e));
        assert.deepEqual(dev.guestState().pendingHalves, { low: false, high: false }, 'a half taken back is not pending');
      }
    });

    it('numbered writes are applied once: a resent write is not a second command; another writer starts afresh', async () => {
      const d = durableBackend();
      const dev = device(layout, d.backend);
      const alloc = encodeVcmd(layout, VCMD_CMD.ALLOCATE);
      await dev.writeDurable(off(layout, 'VCMD_REG'), alloc, 8, { id: 'guest-1', seq: 5 });
      await dev.writeDurable(off(layout, 'VCMD_REG'), alloc, 8, { id: 'guest-1', seq: 5 });
      await dev.writeDurable(off(layout, 'VCMD_REG'), alloc, 8, { id: 'guest-1', seq: 4 });
      assert.equal(d.host.idsOf(d.vm).length, 1, 'seq 5 twice and an older 4: one Allocate');
      assert.deepEqual(dev.guestState().writer, { id: 'guest-1', seq: 5 });
      await dev.writeDurable(off(layout, 'VCMD_REG'), alloc, 8, { id: 'guest-2', seq: 1 });
      assert.equal(d.host.idsOf(d.vm).length, 2);
      assert.throws(() => dev.write(off(layout, 'VCMD_REG'), alloc, 8, { id: '', seq: 1 }), (e) => isIoasidError(e, 'EINVAL'));
      assert.throws(() => dev.write(off(layout, 'VCMD_REG'), alloc, 8, { id: 'x', seq: -1 }), (e) => isIoasidError(e, 'EINVAL'));
    });

    it('while a commit is outstanding, other writes are dropped as while IP is set', async () => {
      const d = durableBackend(true);
      const dev = device(layout, d.backend);
      dev.write(off(layout, 'VCMD_REG') + 4, 0n, 4);
      dev.write(off(layout, 'VCMD_REG'), encodeVcmd(layout, VCMD_CMD.ALLOCATE), 8);
      assert.equal(dev.stats.droppedWrites, 1);
      await dev.settled();
      assert.deepEqual(dev.guestState().pendingHalves, { low: false, high: true });
    });

    it('restoreGuestState puts back what was committed, and refuses what no device could show', () => {
      const d = durableBackend();
      const dev = device(layout, d.backend);
      dev.write(off(layout, 'VCMD_REG'), encodeVcmd(layout, VCMD_CMD.ALLOCATE), 8, { id: 'w', seq: 9 });
      const saved = dev.guestState();
      const fresh = device(layout, durableBackend().backend);
      fresh.restoreGuestState(JSON.parse(JSON.stringify(saved)));
      assert.deepEqual(fresh.guestState(), saved);
      assert.equal(fresh.read(off(layout, 'VCRSP_REG'), 8), dev.read(off(layout, 'VCRSP_REG'), 8));
      const bad = (f: (s: Record<string, any>) => void) => {
        const s = structuredClone(saved) as Record<string, any>;
        f(s);
        return s;
      };
      for (const s of [
        bad((s) => { s.registers.VCRSP_REG = '0x1'; }),
        bad((s) => { s.registers.VCRSP_REG = layout === 'B' ? '0x100' : '0x8'; }), // reserved bits
        bad((s) => { s.pendingHalves = { low: true, high: true }; }),
        bad((s) => { s.writer = { id: 'w' }; }),
        bad((s) => { s.extra = 1; }),
        null,
      ]) assert.throws(() => fresh.restoreGuestState(s), (e) => isIoasidError(e, 'EINVAL'), JSON.stringify(s));
      assert.deepEqual(fresh.guestState(), saved, 'a refused restore changed nothing');
    });
  });
}
