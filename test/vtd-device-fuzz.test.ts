/**
 * Property test of the VCMD device through its public API (the cloud-hypervisor habit of a fuzz
 * target that drives the device, snapshot and restore included): random sequences of 32- and
 * 64-bit reads and writes at any offset, in any order, against a fake host that enforces a quota
 * and records ownership. The device never throws, never breaks the IP rules, never allocates
 * outside the VM's set or quota, and a snapshot/restore round trip in the middle changes nothing.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { IoasidError } from '../src/core/index.ts';
import {
  VcmdDevice,
  decodeVcrsp,
  encodeVcmd,
  registerOffset,
  type Layout,
  type RegisterName,
  type VcmdBackend,
  type VcmdDeviceConfigInput,
} from '../src/vtd/index.ts';

type Vm = 'vm1' | 'vm2';

/** The host as the fuzz sees it: who owns which PASID, a quota per VM, optional late answers. */
class FakeHost {
  readonly owner = new Map<number, Vm>();
  readonly waiting: (() => void)[] = [];
  constructor(readonly quota: number, readonly async: boolean, vm2: readonly number[]) {
    for (const p of vm2) this.owner.set(p, 'vm2');
  }

  count(vm: Vm): number {
    let n = 0;
    for (const v of this.owner.values()) if (v === vm) n++;
    return n;
  }

  owned(vm: Vm): number[] {
    return [...this.owner].filter(([, v]) => v === vm).map(([p]) => p).sort((a, b) => a - b);
  }

  #allocate(vm: Vm, range?: { min: number; max: number }): number {
    if (this.count(vm) >= this.quota) throw new IoasidError('EDQUOT', `${vm} is at its quota`);
    const lo = range?.min ?? 1;
    const hi = range?.max ?? 0xfffff;
    for (let p = Math.max(lo, 1); p <= hi; p++) {
      if (!this.owner.has(p)) {
        this.owner.set(p, vm);
        return p;
      }
    }
    throw new IoasidError('ENOSPC', 'no free PASID');
  }

  #free(vm: Vm, p: number): void {
    if (p === 13) throw new TypeError('chaos: the host crashed freeing 13');
    const o = this.owner.get(p);
    if (o === undefined) throw new IoasidError('ENOENT', `PASID ${p} unknown`);
    if (o !== vm) throw new IoasidError('EACCES', `PASID ${p} is not ${vm}'s`);
    this.owner.delete(p);
  }

  backend(vm: Vm): VcmdBackend {
    if (!this.async) {
      return { allocate: (r) => this.#allocate(vm, r), free: (p) => this.#free(vm, p) };
    }
    return {
      allocate: (r) => new Promise<number>((res, rej) => this.waiting.push(() => { try { res(this.#allocate(vm, r)); } catch (e) { rej(e); } })),
      free: (p) => new Promise<void>((res, rej) => this.waiting.push(() => { try { this.#free(vm, p); res(); } catch (e) { rej(e); } })),
    };
  }

  release(): void {
    for (const w of this.waiting.splice(0)) w();
  }
}

type Where = { reg: RegisterName | 'none'; delta: number } | { abs: number };
type Value = { raw: bigint } | { cmd: number; pasid: number; half: 'all' | 'low' | 'high' };
type Op =
  | { k: 'read'; where: Where; size: number }
  | { k: 'write'; where: Where; value: Value; size: number }
  | { k: 'release' };

const REGS: RegisterName[] = ['CAP_REG', 'ECAP_REG', 'VCCAP_REG', 'VCMD_REG', 'VCMD_EO_REG', 'VCRSP_REG'];

const whereArb: fc.Arbitrary<Where> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ reg: fc.constantFrom<RegisterName | 'none'>(...REGS, 'VCMD_REG', 'VCMD_REG', 'none'), delta: fc.constantFrom(0, 0, 0, 4, 4, 1, 2, 6, -4) }) },
  { weight: 1, arbitrary: fc.record({ abs: fc.oneof(fc.integer({ min: 0, max: 0xf00 }), fc.integer({ min: -16, max: Number.MAX_SAFE_INTEGER }), fc.constant(Number.NaN), fc.double()) }) },
);

const valueArb: fc.Arbitrary<Value> = fc.oneof(
  { weight: 5, arbitrary: fc.record({
    cmd: fc.oneof(fc.constantFrom(0, 1, 1, 1, 2, 2, 2), fc.integer({ min: 0, max: 255 })),
    pasid: fc.oneof(fc.integer({ min: 0, max: 20 }), fc.constantFrom(13, 0x10000, 0x10001, 0xfffff), fc.integer({ min: 0, max: 0xfffff })),
    half: fc.constantFrom<'all' | 'low' | 'high'>('all', 'all', 'low', 'high'),
  }) },
  { weight: 2, arbitrary: fc.record({ raw: fc.oneof(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), fc.bigInt({ min: -(1n << 70n), max: 1n << 70n }), fc.bigInt({ min: 0n, max: 0x3ffn })) }) },
);

const sizeArb = fc.constantFrom(4, 8, 8, 4, 1, 2, 16);

const cmdValueArb = fc.record({
  cmd: fc.oneof({ weight: 6, arbitrary: fc.constantFrom(0, 1, 1, 1, 2, 2, 2) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) }),
  pasid: fc.oneof(
    { weight: 4, arbitrary: fc.integer({ min: 0, max: 8 }) },
    { weight: 1, arbitrary: fc.constantFrom(13, 0x10000, 0x10001, 0xfffff) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xfffff }) },
  ),
  half: fc.constant<'all'>('all'),
});

const opArb: fc.Arbitrary<Op> = fc.oneof(
  // Well-formed traffic, so that commands really run...
  { weight: 5, arbitrary: fc.record({ k: fc.constant('write' as const), where: fc.constant<Where>({ reg: 'VCMD_REG', delta: 0 }), value: cmdValueArb, size: fc.constant(8) }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('write' as const), where: fc.constantFrom<Where>({ reg: 'VCMD_REG', delta: 0 }, { reg: 'VCMD_REG', delta: 4 }), value: cmdValueArb.map((v) => ({ ...v, half: 'low' as const })), size: fc.constant(4) }).map((o) => ((o.where as { delta: number }).delta === 4 ? { ...o, value: { ...o.value, half: 'high' as const } } : o)) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('write' as const), where: fc.constant<Where>({ reg: 'VCMD_EO_REG', delta: 0 }), value: fc.record({ raw: fc.bigInt({ min: 0n, max: 0xfffffn }) }), size: fc.constant(8) }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('read' as const), where: fc.constant<Where>({ reg: 'VCRSP_REG', delta: 0 }), size: fc.constant(8) }) },
  // ...and anything at all.
  { weight: 2, arbitrary: fc.record({ k: fc.constant('read' as const), where: whereArb, size: sizeArb }) },
  { weight: 4, arbitrary: fc.record({ k: fc.constant('write' as const), where: whereArb, value: valueArb, size: sizeArb }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('release' as const) }) },
);

const configArb: fc.Arbitrary<VcmdDeviceConfigInput & { quota: number; async: boolean }> = fc
  .record({
    layout: fc.constantFrom<Layout>('A', 'B'),
    pasBit: fc.constantFrom<0 | 1>(0, 1),
    rangeExtension: fc.boolean(),
    nullCommand: fc.boolean(),
    freeCommand: fc.boolean(),
    pasidAllocation: fc.constantFrom(true, true, true, true, false),
    virtualCommands: fc.constantFrom(true, true, true, true, true, true, false),
    logSize: fc.constantFrom(0, 4, 32),
    quota: fc.oneof({ weight: 1, arbitrary: fc.constant(0) }, { weight: 6, arbitrary: fc.integer({ min: 1, max: 8 }) }),
    async: fc.boolean(),
  })
  .map((c) => ({
    ...c,
    rangeExtension: c.rangeExtension && c.layout === 'B',
    nullCommand: c.nullCommand && c.pasBit === 1,
    freeCommand: c.freeCommand || c.pasBit === 0,
  }));

function offsetOf(layout: Layout, w: Where): number {
  if ('abs' in w) return w.abs;
  if (w.reg === 'none') return 0x100 + w.delta;
  if (w.reg === 'VCMD_EO_REG' && layout === 'A') return 0xe08 + w.delta;
  return registerOffset(layout, w.reg) + w.delta;
}

function valueOf(layout: Layout, v: Value): bigint {
  if ('raw' in v) return v.raw;
  const full = encodeVcmd(layout, v.cmd, v.pasid);
  if (v.half === 'low') return full & 0xffffffffn;
  if (v.half === 'high') return full >> 32n;
  return full;
}

const VM2_IDS = [2, 5, 0x10000];

interface Outcome { trace: string[]; snapshot: unknown; owned: number[]; internalErrors: number }

/** Run ops on a fresh device; with `roundTripAt`, snapshot+restore the device before that op. */
async function run(cfg: VcmdDeviceConfigInput & { quota: number; async: boolean }, ops: readonly Op[], roundTripAt: number | null): Promise<Outcome> {
  const { quota, async, ...devCfg } = cfg;
  const host = new FakeHost(quota, async, VM2_IDS);
  const backend = host.backend('vm1');
  let internalErrors = 0;
  const hooks = { onInternalError: () => { internalErrors++; } };
  let dev = new VcmdDevice({ ...devCfg, backend, ...hooks });
  const layout = devCfg.layout;
  const trace: string[] = [];
  const vcrspOff = registerOffset(layout, 'VCRSP_REG');
  const vcmdOff = registerOffset(layout, 'VCMD_REG');
  const eoOff = layout === 'B' ? registerOffset(layout, 'VCMD_EO_REG') : -1;
  const regState = (): string => `${dev.read(vcmdOff, 8)}/${eoOff < 0 ? '' : dev.read(eoOff, 8)}/${dev.read(vcrspOff, 8)}`;

  for (const [i, op] of ops.entries()) {
    if (i === roundTripAt) {
      if (dev.busy) {
        assert.throws(() => dev.snapshot(), (e) => e instanceof IoasidError && e.code === 'EBUSY');
      } else {
        dev = VcmdDevice.restore(JSON.parse(JSON.stringify(dev.snapshot())), backend, hooks);
      }
    }
    if (op.k === 'release') {
      host.release();
      await dev.settled();
      trace.push(`release ${regState()}`);
    } else if (op.k === 'read') {
      const off = offsetOf(layout, op.where);
      trace.push(`read ${off} ${op.size} = ${dev.read(off, op.size as 4 | 8)}`);
    } else {
      const off = offsetOf(layout, op.where);
      const busyBefore = dev.busy;
      const before = regState();
      const commandsBefore = dev.stats.commands;
      dev.write(off, valueOf(layout, op.value), op.size as 4 | 8);
      const after = regState();
      // IP rule: while IP is set, writes change nothing (behaviour 55).
      if (busyBefore) {
        assert.equal(after, before, 'a write while IP=1 changed the registers');
        assert.equal(dev.stats.commands, commandsBefore);
      }
      // A synchronous host always completes at once; an asynchronous one leaves IP set.
      if (!async) assert.equal(dev.busy, false);
      trace.push(`write ${off} ${op.size} -> ${after}`);
    }
    // VCRSP: RSLT is zero whenever SC != 0 (behaviour 59); reserved bits are zero.
    const rsp = decodeVcrsp(layout, dev.read(vcrspOff, 8));
    if (rsp.sc !== 0) assert.equal(rsp.result, 0n);
    if (rsp.ip) assert.equal(dev.read(vcrspOff, 8), 1n, 'IP set means VCRSP was cleared');
    assert.ok(rsp.sc <= 1 || rsp.sc === (layout === 'A' ? 2 : 16), `status ${rsp.sc}`);
    // Ownership: vm2's PASIDs are never touched; vm1 stays within its quota.
    assert.deepEqual(host.owned('vm2'), VM2_IDS);
    assert.ok(host.count('vm1') <= quota);
    // A completed Allocate hands out a PASID the VM owns, inside the requested range.
    const last = dev.recentCommands().at(-1);
    if (last !== undefined && last.cmd === 1 && last.status === 0 && !dev.busy && rsp.sc === 0 && last.result !== null) {
      assert.equal(rsp.pasid, last.result);
      if (host.owner.get(last.result) !== undefined) assert.equal(host.owner.get(last.result), 'vm1');
      if (last.range !== null) assert.ok(last.result >= last.range.min && last.result <= last.range.max);
    }
  }
  host.release();
  await dev.settled();
  return { trace, snapshot: dev.snapshot(), owned: host.owned('vm1'), internalErrors };
}

describe('VCMD device property test', () => {
  it('random 32/64-bit accesses never throw, keep the IP rules, stay within the VM set and quota; a snapshot/restore round trip changes nothing', async () => {
    await fc.assert(
      fc.asyncProperty(configArb, fc.array(opArb, { minLength: 1, maxLength: 60 }), fc.nat(), async (cfg, ops, k) => {
        const at = k % ops.length;
        const plain = await run(cfg, ops, null);
        const roundTrip = await run(cfg, ops, at);
        assert.deepEqual(roundTrip.trace, plain.trace);
        assert.deepEqual(roundTrip.snapshot, plain.snapshot);
        assert.deepEqual(roundTrip.owned, plain.owned);
        assert.equal(roundTrip.internalErrors, plain.internalErrors);
      }),
      { numRuns: 500 },
    );
  });

  it('the device is reachable: the generators do produce allocations, frees and dropped writes', async () => {
    // Guard against a vacuous property: run a fixed seed and count what happened.
    let allocs = 0;
    let frees = 0;
    let drops = 0;
    await fc.assert(
      fc.asyncProperty(configArb, fc.array(opArb, { minLength: 20, maxLength: 60 }), async (cfg, ops) => {
        const { quota, async, ...devCfg } = cfg;
        const host = new FakeHost(quota, async, VM2_IDS);
        const inner = host.backend('vm1');
        const backend: VcmdBackend = {
          allocate: (r) => { const v = inner.allocate(r); if (typeof v === 'number') allocs++; else void v.then(() => { allocs++; }, () => {}); return v; },
          free: (p) => { const v = inner.free(p); if (v === undefined) frees++; else void v.then(() => { frees++; }, () => {}); return v; },
        };
        const dev = new VcmdDevice({ ...devCfg, backend });
        for (const op of ops) {
          if (op.k === 'write') dev.write(offsetOf(devCfg.layout, op.where), valueOf(devCfg.layout, op.value), op.size as 4 | 8);
          else if (op.k === 'release') { host.release(); await dev.settled(); }
        }
        host.release();
        await dev.settled();
        drops += dev.stats.droppedWrites;
      }),
      { numRuns: 200, seed: 42 },
    );
    assert.ok(allocs > 100, `allocations: ${allocs}`);
    assert.ok(frees > 5, `frees: ${frees}`);
    assert.ok(drops > 50, `dropped writes: ${drops}`);
  });
});
