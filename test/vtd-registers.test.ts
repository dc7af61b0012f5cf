/**
 * VT-d register tables and codecs (docs/vtd-registers.md): offsets and fields pinned to the VT-d
 * specification's tables, values pinned to hand-computed encodings, and encode/decode round trips (fast-check).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { isIoasidError } from '../src/core/index.ts';
import {
  LAYOUTS,
  VCMD_CMD,
  decodeRangedAllocate,
  decodeRegister,
  decodeVccap,
  decodeVcmd,
  decodeVcrsp,
  describeRegister,
  encodeRangedAllocate,
  encodeRegister,
  encodeVccap,
  encodeVcmd,
  encodeVcrsp,
  pasidMaxFromEcap,
  registerAt,
  registerMap,
  registerOffset,
  registerSpec,
  statusName,
  type Layout,
  type RegisterName,
} from '../src/vtd/index.ts';

const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const pasid = fc.integer({ min: 0, max: 0xfffff });

function bits(layout: Layout, reg: RegisterName, pasBit: 0 | 1 = 0): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of registerSpec(registerMap(layout, pasBit), reg).fields) out[f.name] = `${f.hi}:${f.lo}`;
  return out;
}

describe('register tables pinned to the spec', () => {
  it('layout A (VT-d 3.0/3.1): VCCAP 0xE00, VCMD 0xE10, VCRSP 0xE20, no VCMD_EO', () => {
    assert.equal(registerOffset('A', 'CAP_REG'), 0x08);
    assert.equal(registerOffset('A', 'ECAP_REG'), 0x10);
    assert.equal(registerOffset('A', 'VCCAP_REG'), 0xe00);
    assert.equal(registerOffset('A', 'VCMD_REG'), 0xe10);
    assert.equal(registerOffset('A', 'VCRSP_REG'), 0xe20);
    assert.throws(() => registerOffset('A', 'VCMD_EO_REG'), (e) => isIoasidError(e, 'EINVAL'));
  });

  it('layout B (VT-d 3.3+): VCMD 0xE00, VCMD_EO 0xE08, VCRSP 0xE10, VCCAP 0xE30', () => {
    assert.equal(registerOffset('B', 'CAP_REG'), 0x08);
    assert.equal(registerOffset('B', 'ECAP_REG'), 0x10);
    assert.equal(registerOffset('B', 'VCMD_REG'), 0xe00);
    assert.equal(registerOffset('B', 'VCMD_EO_REG'), 0xe08);
    assert.equal(registerOffset('B', 'VCRSP_REG'), 0xe10);
    assert.equal(registerOffset('B', 'VCCAP_REG'), 0xe30);
  });

  it('CAP_REG.CM is bit 7; ECAP_REG PSS 39:35, PASID 40, SMTS 43, VCS 44 (both layouts)', () => {
    for (const l of LAYOUTS) {
      assert.deepEqual(bits(l, 'CAP_REG'), { CM: '7:7' });
      assert.deepEqual(bits(l, 'ECAP_REG'), { PSS: '39:35', PASID: '40:40', SMTS: '43:43', VCS: '44:44' });
    }
  });

  it('VCMD_REG / VCRSP_REG fields per layout', () => {
    assert.deepEqual(bits('A', 'VCMD_REG'), { CMD: '7:0', OA: '63:8' });
    assert.deepEqual(bits('A', 'VCRSP_REG'), { IP: '0:0', SC: '2:1', RSLT: '63:8' });
    assert.deepEqual(bits('B', 'VCMD_REG'), { CMD: '7:0', OA: '63:16' });
    assert.deepEqual(bits('B', 'VCMD_EO_REG'), { OB: '63:0' });
    assert.deepEqual(bits('B', 'VCRSP_REG'), { IP: '0:0', SC: '7:1', RSLT: '63:16' });
  });

  it('PASID operand/result sub-fields: 27:8 in layout A, 35:16 in layout B', () => {
    const a = registerMap('A');
    const b = registerMap('B');
    assert.deepEqual([a.operandPasid.hi, a.operandPasid.lo, a.resultPasid.hi, a.resultPasid.lo], [27, 8, 27, 8]);
    assert.deepEqual([b.operandPasid.hi, b.operandPasid.lo, b.resultPasid.hi, b.resultPasid.lo], [35, 16, 35, 16]);
    assert.equal(a.rangeMax, null);
    assert.deepEqual([b.rangeMax?.hi, b.rangeMax?.lo], [19, 0]);
  });

  it('VCCAP: PAS at bit 0 (Linux) or NS 0 / PAS 1 / FPS 2 (VT-d Rev 5.10); RX bit 63 only in layout B', () => {
    assert.deepEqual(bits('A', 'VCCAP_REG', 0), { PAS: '0:0' });
    assert.deepEqual(bits('A', 'VCCAP_REG', 1), { NS: '0:0', PAS: '1:1', FPS: '2:2' });
    assert.deepEqual(bits('B', 'VCCAP_REG', 0), { PAS: '0:0', RX: '63:63' });
    assert.deepEqual(bits('B', 'VCCAP_REG', 1), { NS: '0:0', PAS: '1:1', FPS: '2:2', RX: '63:63' });
  });

  it('status codes: layout A no PASID / invalid PASID = 2, layout B = 16; undefined command = 1', () => {
    assert.deepEqual(registerMap('A').status, { SUCCESS: 0, UNDEFINED_COMMAND: 1, NO_PASID: 2, INVALID_PASID: 2 });
    assert.deepEqual(registerMap('B').status, { SUCCESS: 0, UNDEFINED_COMMAND: 1, NO_PASID: 16, INVALID_PASID: 16 });
    assert.deepEqual(VCMD_CMD, { NULL: 0, ALLOCATE: 1, FREE: 2 });
  });

  it('registerAt finds the register covering an offset, null elsewhere', () => {
    assert.equal(registerAt('B', 0xe14)?.name, 'VCRSP_REG');
    assert.equal(registerAt('A', 0xe14)?.name, 'VCMD_REG');
    assert.equal(registerAt('A', 0xe08), null);
    assert.equal(registerAt('B', 0x100), null);
  });

  it('rejects unknown layouts and PAS bits with EINVAL', () => {
    assert.throws(() => registerMap('C' as Layout), (e) => isIoasidError(e, 'EINVAL'));
    assert.throws(() => registerMap('A', 2 as 0), (e) => isIoasidError(e, 'EINVAL'));
  });
});

describe('values pinned to the spec tables', () => {
  it('VCRSP layout B, IP=0 SC=16 PASID=5 is 0x50020', () => {
    assert.equal(encodeVcrsp('B', { sc: 16, pasid: 5 }), 0x50020n);
    assert.equal(encodeRegister('B', 'VCRSP_REG', { SC: 16n, RSLT: 5n }), 0x50020n);
    assert.deepEqual(decodeRegister('B', 'VCRSP_REG', 0x50020n), { IP: 0n, SC: 16n, RSLT: 5n });
  });

  it('VCRSP layout A, SC=2 PASID=5 is 0x504', () => {
    assert.equal(encodeVcrsp('A', { sc: 2, pasid: 5 }), 0x504n);
    assert.deepEqual(decodeRegister('A', 'VCRSP_REG', 0x504n), { IP: 0n, SC: 2n, RSLT: 5n });
  });

  it('VCRSP with only IP set is 0x1 in both layouts', () => {
    for (const l of LAYOUTS) assert.equal(encodeVcrsp(l, { ip: true }), 1n);
  });

  it('successful Allocate of PASID 0xFFFFF: 0xFFFFF0000 (B), 0xFFFFF00 (A)', () => {
    assert.equal(encodeVcrsp('B', { pasid: 0xfffff }), 0xfffff0000n);
    assert.equal(encodeVcrsp('A', { pasid: 0xfffff }), 0xfffff00n);
  });

  it('VCMD Free of PASID 5: 0x50002 (B, VCMD_CMD_OPERAND(e) = e << 16), 0x502 (A, e << 8)', () => {
    assert.equal(encodeVcmd('B', VCMD_CMD.FREE, 5), 0x50002n);
    assert.equal(encodeVcmd('A', VCMD_CMD.FREE, 5), 0x502n);
    assert.equal(encodeVcmd('B', VCMD_CMD.ALLOCATE), 1n);
    assert.deepEqual(decodeVcmd('B', 0x50002n), { cmd: 2, pasid: 5 });
  });

  it('Linux SC decode: ((e) & 0xff) >> 1 in layout B, ((e) >> 1) & 0x3 in layout A', () => {
    fc.assert(fc.property(u64, (v) => {
      assert.equal(decodeVcrsp('B', v).sc, Number((v & 0xffn) >> 1n));
      assert.equal(decodeVcrsp('A', v).sc, Number((v >> 1n) & 3n));
      assert.equal(decodeVcrsp('B', v).pasid, Number((v >> 16n) & 0xfffffn));
      assert.equal(decodeVcrsp('A', v).pasid, Number((v >> 8n) & 0xfffffn));
    }));
  });

  it('ECAP: PSS 19 gives a pasid max of 0x100000 (2 << PSS); PSS 7 gives 256', () => {
    assert.equal(pasidMaxFromEcap(encodeRegister('B', 'ECAP_REG', { PSS: 19n })), 0x100000);
    assert.equal(pasidMaxFromEcap(encodeRegister('B', 'ECAP_REG', { PSS: 7n })), 256);
    assert.equal(encodeRegister('A', 'ECAP_REG', { PSS: 19n, PASID: 1n, SMTS: 1n, VCS: 1n }), (19n << 35n) | (1n << 40n) | (1n << 43n) | (1n << 44n));
  });

  it('CAP.CM = 1 is 0x80', () => {
    assert.equal(encodeRegister('A', 'CAP_REG', { CM: 1n }), 0x80n);
  });

  it('VCCAP values: Linux PAS = 0x1; VT-d Rev 5.10 NS|PAS|FPS = 0x7; RX = bit 63', () => {
    assert.equal(encodeVccap(registerMap('B', 0), { allocate: true, free: true }), 1n);
    assert.equal(encodeVccap(registerMap('B', 1), { allocate: true, free: true, nullCommand: true }), 7n);
    assert.equal(encodeVccap(registerMap('B', 1), { allocate: true }), 2n);
    assert.equal(encodeVccap(registerMap('B', 0), { allocate: true, rangeExtension: true }), (1n << 63n) | 1n);
    assert.deepEqual(decodeVccap(registerMap('B', 1), 0x5n), { nullCommand: true, allocate: false, free: true, rangeExtension: false });
    // With PAS at bit 0, Free is implied by PAS and there is no NS bit.
    assert.deepEqual(decodeVccap(registerMap('A', 0), 0x1n), { nullCommand: false, allocate: true, free: true, rangeExtension: false });
    assert.throws(() => encodeVccap(registerMap('A', 0), { nullCommand: true }), (e) => isIoasidError(e, 'EINVAL'));
    assert.throws(() => encodeVccap(registerMap('A', 1), { rangeExtension: true }), (e) => isIoasidError(e, 'EINVAL'));
  });

  it('range extension: Allocate [0x100, 0x1ff] is VCMD 0x1000001, VCMD_EO 0x1ff', () => {
    assert.deepEqual(encodeRangedAllocate('B', 0x100, 0x1ff), { vcmd: 0x1000001n, vcmdEo: 0x1ffn });
    assert.deepEqual(decodeRangedAllocate('B', 0x1000001n, 0x1ffn), { min: 0x100, max: 0x1ff });
    assert.throws(() => encodeRangedAllocate('A', 1, 2), (e) => isIoasidError(e, 'EINVAL'));
  });

  it('status names per command and layout', () => {
    assert.equal(statusName('B', 1, 16), 'no PASID available');
    assert.equal(statusName('B', 2, 16), 'invalid PASID');
    assert.equal(statusName('A', 1, 2), 'no PASID available');
    assert.equal(statusName('A', 9, 1), 'undefined command');
    assert.equal(statusName('B', 1, 2), 'unexpected status 2');
  });

  it('describeRegister prints every field', () => {
    assert.equal(describeRegister('B', 'VCRSP_REG', 0x50020n), 'VCRSP_REG=0x50020 IP=0 SC=0x10 RSLT=5');
  });
});

describe('codec round trips', () => {
  for (const layout of LAYOUTS) {
    for (const pasBit of [0, 1] as const) {
      const map = registerMap(layout, pasBit);
      it(`decode(encode(fields)) == fields and encode(decode(v)) == v & defined bits, layout ${layout}, PAS bit ${pasBit}`, () => {
        for (const spec of map.registers) {
          fc.assert(fc.property(u64, (v) => {
            const fields = decodeRegister(map, spec.name, v);
            const back = encodeRegister(map, spec.name, fields as never);
            assert.equal(back, v & spec.definedMask);
            assert.deepEqual(decodeRegister(map, spec.name, back), fields);
          }), { numRuns: 200 });
        }
      });

      it(`VCRSP/VCMD helpers round-trip, layout ${layout}, PAS bit ${pasBit}`, () => {
        fc.assert(fc.property(fc.boolean(), fc.integer({ min: 0, max: layout === 'A' ? 3 : 127 }), pasid, fc.integer({ min: 0, max: 255 }), (ip, sc, p, cmd) => {
          const rsp = decodeVcrsp(map, encodeVcrsp(map, { ip, sc, pasid: p }));
          assert.deepEqual([rsp.ip, rsp.sc, rsp.pasid, rsp.result], [ip, sc, p, BigInt(p)]);
          assert.deepEqual(decodeVcmd(map, encodeVcmd(map, cmd, p)), { cmd, pasid: p });
        }));
      });

      it(`VCCAP capabilities round-trip, layout ${layout}, PAS bit ${pasBit}`, () => {
        fc.assert(fc.property(fc.boolean(), fc.boolean(), fc.boolean(), fc.boolean(), (allocate, free, nullCommand, rx) => {
          const caps = { allocate, free: pasBit === 0 ? allocate : free, nullCommand: pasBit === 0 ? false : nullCommand, rangeExtension: layout === 'B' ? rx : false };
          assert.deepEqual(decodeVccap(map, encodeVccap(map, caps)), caps);
        }));
      });
    }
  }

  it('range extension operands round-trip (layout B)', () => {
    fc.assert(fc.property(pasid, pasid, (min, max) => {
      const { vcmd, vcmdEo } = encodeRangedAllocate('B', min, max);
      assert.deepEqual(decodeRangedAllocate('B', vcmd, vcmdEo), { min, max });
      assert.equal(decodeVcmd('B', vcmd).cmd, VCMD_CMD.ALLOCATE);
    }));
  });

  it('encode rejects values that do not fit and fields the layout lacks (EINVAL, naming the field)', () => {
    assert.throws(() => encodeVcrsp('A', { sc: 4 }), (e) => isIoasidError(e, 'EINVAL') && /SC/.test(e.message));
    assert.throws(() => encodeVcmd('B', 256), (e) => isIoasidError(e, 'EINVAL') && /CMD/.test(e.message));
    assert.throws(() => encodeVcmd('B', 2, 0x100000), (e) => isIoasidError(e, 'EINVAL') && /PASID/.test(e.message));
    assert.throws(() => encodeVcmd('B', 2, -1), (e) => isIoasidError(e, 'EINVAL'));
    assert.throws(() => encodeRegister(registerMap('A', 0), 'VCCAP_REG', { NS: 1n }), (e) => isIoasidError(e, 'EINVAL') && /NS/.test(e.message));
    assert.throws(() => encodeRegister('B', 'CAP_REG', { CM: 2n as 1n }), (e) => isIoasidError(e, 'EINVAL'));
  });
});
