/**
 * Property (fast-check, with shrinking): random short scenarios, generated as scenario objects
 * (the file format) and run through the same validator and runner as scenario files, keep every
 * invariant after every step (full and incremental checks), and no step throws anything but an
 * IoasidError. 2-4 VMs of strict guests with 1-3 vIOMMUs (some with the range extension) and
 * devices of assorted PASID widths, sometimes a tiny host PASID range, sometimes a nested VM;
 * 10-40 steps of every kind, with `$name` references to earlier PASIDs and deliberate misuse.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { formatReport, runScenario, validateScenario } from '../src/sim/index.ts';

const NUM_RUNS = Number(process.env.SCENARIO_PROPERTY_RUNS ?? 1000);

type Json = Record<string, unknown>;

interface VmGen {
  quota: number;
  segs: number[];
  rx: boolean[];
  devs: { seg: number; dev: number; bits: number }[];
}

const arbVm: fc.Arbitrary<VmGen> = fc.record({
  quota: fc.constantFrom(0, 2, 4, 8, 1000),
  segs: fc.uniqueArray(fc.integer({ min: 0, max: 3 }), { minLength: 1, maxLength: 3 }),
  rx: fc.array(fc.boolean(), { minLength: 3, maxLength: 3 }),
  devs: fc.array(fc.record({ seg: fc.nat(2), dev: fc.integer({ min: 1, max: 6 }), bits: fc.constantFrom(20, 20, 10, 8, 4) }), { maxLength: 3 }),
});

const bdf = (seg: number, dev: number) => `${seg.toString(16).padStart(4, '0')}:00:${dev.toString(16).padStart(2, '0')}.0`;

/** A VM declaration (file format) from generated numbers; also returns its devices' BDFs. */
function vmDecl(id: string, g: VmGen): { decl: Json; devices: string[] } {
  const viommus = g.segs.map((segment, i) => (g.rx[i] === true ? { segment, rangeExtension: true } : { segment }));
  const devices: Json[] = [];
  const seen = new Set<string>();
  for (const d of g.devs) {
    const b = bdf(g.segs[d.seg % g.segs.length] as number, d.dev);
    if (seen.has(b)) continue;
    seen.add(b);
    devices.push(d.bits === 20 ? { bdf: b } : { bdf: b, pasidBits: d.bits });
  }
  return { decl: { id, quota: g.quota, viommus, devices }, devices: [...seen] };
}

const mm = fc.constantFrom('a', 'b', 'c', 'd');
const vmIx = fc.nat(5);
const arbStep = fc.oneof(
  { weight: 6, arbitrary: fc.record({ k: fc.constant('alloc' as const), vm: vmIx, range: fc.option(fc.constantFrom([1, 15], [1, 1023], [100, 200], [0x80000, 0xfffff]), { nil: undefined }) }) },
  { weight: 5, arbitrary: fc.record({ k: fc.constant('free' as const), vm: vmIx, ref: fc.nat(), lit: fc.option(fc.integer({ min: 0, max: 40 }), { nil: undefined, freq: 4 }) }) },
  { weight: 6, arbitrary: fc.record({ k: fc.constant('bind' as const), vm: vmIx, dev: fc.nat(), mm }) },
  { weight: 4, arbitrary: fc.record({ k: fc.constant('unbind' as const), vm: vmIx, dev: fc.nat(), mm }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('addViommu' as const), vm: vmIx, seg: fc.integer({ min: 0, max: 5 }), rx: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('removeViommu' as const), vm: vmIx, seg: fc.integer({ min: 0, max: 5 }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('assignDevice' as const), vm: vmIx, seg: fc.integer({ min: 0, max: 5 }), dev: fc.integer({ min: 1, max: 6 }), bits: fc.constantFrom(20, 10, 4) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('removeDevice' as const), vm: vmIx, dev: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('destroyVm' as const), vm: vmIx }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('createVm' as const), vm: vmIx, cfg: arbVm }) },
  // Raw VCMD commands from the VMM. Not Free: a VMM that frees its own guest's PASIDs behind the
  // guest's back breaks guest-subset, and the checker rightly says so (see the fault tests).
  { weight: 1, arbitrary: fc.record({ k: fc.constant('vcmd' as const), vm: vmIx, cmd: fc.constantFrom('null', 'allocate') }) },
);

const arbScenario = fc.record({
  vms: fc.array(arbVm, { minLength: 2, maxLength: 4 }),
  nested: fc.option(arbVm, { nil: undefined, freq: 8 }),
  pasidMax: fc.option(fc.constantFrom(6, 12, 40), { nil: undefined, freq: 3 }),
  steps: fc.array(arbStep, { minLength: 10, maxLength: 40 }),
});

type Gen = typeof arbScenario extends fc.Arbitrary<infer T> ? T : never;

/** The scenario object, in the file format, that the generated numbers describe. */
function toScenario(g: Gen): Json {
  const ids = g.vms.map((_, i) => `v${i}`);
  const devices = new Map<string, string[]>();
  const vms = g.vms.map((v, i) => {
    const { decl, devices: d } = vmDecl(ids[i] as string, v);
    devices.set(ids[i] as string, d);
    return decl;
  });
  const parent = new Map<string, string>();
  if (g.nested !== undefined) {
    const { decl, devices: d } = vmDecl('n0', g.nested);
    (vms[0] as Json).host = { vms: [decl] };
    ids.push('n0');
    devices.set('n0', d);
    parent.set('n0', 'v0');
  }
  const names: string[] = [];
  const steps: Json[] = [];
  g.steps.forEach((s, i) => {
    const vm = ids[s.vm % ids.length] as string;
    const devs = devices.get(vm) ?? [];
    const dev = (n: number) => devs[n % Math.max(1, devs.length)] ?? '0000:00:1f.0';
    const ref = (n: number) => (names.length > 0 ? `$${names[n % names.length]}` : 1 + (n % 8));
    const name = `s${i}`;
    switch (s.k) {
      case 'alloc':
        steps.push({ alloc: s.range === undefined ? { vm } : { vm, min: s.range[0], max: s.range[1] }, as: name });
        names.push(name);
        break;
      case 'free':
        steps.push({ free: { vm, pasid: s.lit ?? ref(s.ref) } });
        break;
      case 'bind':
        steps.push({ bind: { vm, device: dev(s.dev), mm: s.mm }, as: name });
        names.push(name);
        break;
      case 'unbind':
        steps.push({ unbind: { vm, device: dev(s.dev), mm: s.mm } });
        break;
      case 'addViommu':
        steps.push({ addViommu: s.rx ? { vm, segment: s.seg, rangeExtension: true } : { vm, segment: s.seg } });
        break;
      case 'removeViommu':
        steps.push({ removeViommu: { vm, segment: s.seg } });
        break;
      case 'assignDevice': {
        const b = bdf(s.seg, s.dev);
        steps.push({ assignDevice: s.bits === 20 ? { vm, bdf: b } : { vm, bdf: b, pasidBits: s.bits } });
        if (!devs.includes(b)) devices.set(vm, [...devs, b]);
        break;
      }
      case 'removeDevice':
        steps.push({ removeDevice: { vm, device: dev(s.dev) } });
        break;
      case 'destroyVm':
        steps.push({ destroyVm: vm });
        break;
      case 'createVm': {
        const { decl, devices: d } = vmDecl(vm, s.cfg);
        const p = parent.get(vm);
        steps.push({ createVm: p === undefined ? decl : { parent: p, ...decl } });
        devices.set(vm, [...new Set([...devs, ...d])]);
        break;
      }
      case 'vcmd':
        if (s.cmd === 'allocate') {
          steps.push({ vcmd: { vm, command: 'allocate' }, as: name });
          names.push(name);
        } else steps.push({ vcmd: { vm, command: 'null' } });
        break;
    }
    (steps[steps.length - 1] as Json).expect = 'any';
  });
  return { name: 'generated', host: { ...(g.pasidMax !== undefined ? { pasidMax: g.pasidMax } : {}), vms }, steps };
}

describe('property: random scenarios keep every invariant', () => {
  it(`${NUM_RUNS} generated scenarios: no violation, no crash, full and incremental checks after every step`, async () => {
    let steps = 0;
    let nested = 0;
    await fc.assert(
      fc.asyncProperty(arbScenario, async (g) => {
        const obj = toScenario(g);
        const scenario = validateScenario(obj);
        const report = await runScenario(scenario, { incremental: true, fullEvery: 1 });
        steps += report.steps.run;
        if (g.nested !== undefined) nested++;
        if (!report.ok) {
          throw new Error(`${formatReport(report)}\nscenario: ${JSON.stringify(obj)}`);
        }
        assert.ok(report.records.every((r) => r.outcome.ok || r.outcome.code !== 'CRASH'));
      }),
      { numRuns: NUM_RUNS, includeErrorInReport: true },
    );
    assert.ok(steps >= NUM_RUNS * 10);
    assert.ok(nested > 0);
  });
});
