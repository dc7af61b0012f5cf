/**
 * Each invariant of the system (docs/scenarios.md) broken on purpose by a fault injected into a test double (a VCMD
 * backend wrapped through `new Host({ wrapBackend })`, a host space without quotas, a teardown
 * that forgets the bindings), run through the scenario runner: the incremental checker and the
 * full one both catch it, at the step that broke it. The random workload catches a fault too,
 * and a clean random run reports nothing.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { IoasidSpace } from '../src/core/index.ts';
import {
  formatReport, parseScenario, runRandom, runScenario,
  type InvariantName, type RunOptions, type RunReport,
} from '../src/sim/index.ts';
import type { Vm } from '../src/host/index.ts';
import type { VcmdBackend } from '../src/vtd/index.ts';

/** Run a scenario twice: incremental check only, then full check only (after every step). */
async function bothCheckers(yaml: string, faults: () => RunOptions): Promise<{ incremental: RunReport; full: RunReport }> {
  const scenario = parseScenario(yaml, 'fault.yaml');
  const incremental = await runScenario(scenario, { ...faults(), incremental: true, fullEvery: 0 });
  const full = await runScenario(scenario, { ...faults(), incremental: false, fullEvery: 1 });
  return { incremental, full };
}

function assertCaught(r: RunReport, check: 'full' | 'incremental', step: number, invariant: InvariantName): void {
  assert.equal(r.ok, false, `the ${check} check missed it`);
  const f = r.failure;
  assert.ok(f !== null);
  assert.equal(f.index, step, `caught at step ${f.index}, not ${step}:\n${formatReport(r)}`);
  assert.equal(f.unexpected, null, 'the outcome itself was as expected (any)');
  assert.ok(f.violations.length > 0);
  assert.ok(f.violations.every((v) => v.check === check));
  assert.ok(f.violations.some((v) => v.invariant === invariant), `no ${invariant} among ${f.violations.map((v) => v.invariant).join(', ')}`);
}

const wrap = (fn: (vm: Vm, b: VcmdBackend) => VcmdBackend): RunOptions => ({ hostOptions: { wrapBackend: fn } });

describe('faults injected on purpose: both checkers catch each invariant broken', () => {
  it('single-owner: a backend that hands the thief the victim\'s PASID', async () => {
    const yaml = `
host:
  vms:
    - { id: victim, viommus: [{ segment: 0 }] }
    - { id: thief, viommus: [{ segment: 0 }] }
steps:
  - alloc: victim
  - alloc: thief
    expect: any
`;
    const faults = () => wrap((vm, b) => ({
      allocate: (r) => (vm.id === 'thief' ? (vm.host.vm('victim').pasids()[0] as number) : b.allocate(r)),
      free: (p) => b.free(p),
    }));
    const { incremental, full } = await bothCheckers(yaml, faults);
    assertCaught(incremental, 'incremental', 2, 'single-owner');
    assertCaught(full, 'full', 2, 'single-owner');
    assertCaught(incremental, 'incremental', 2, 'guest-subset');
  });

  it('guest-subset: a backend that answers a PASID it never allocated', async () => {
    const yaml = `
host:
  vms: [{ id: vm, viommus: [{ segment: 0 }] }]
steps:
  - alloc: vm
  - alloc: vm
    expect: { pasid: 4242 }
`;
    let n = 0;
    const faults = () => {
      n = 0;
      return wrap((_vm, b) => ({ allocate: (r) => (++n === 2 ? 4242 : b.allocate(r)), free: (p) => b.free(p) }));
    };
    const { incremental, full } = await bothCheckers(yaml, faults);
    assertCaught(incremental, 'incremental', 2, 'guest-subset');
    assertCaught(full, 'full', 2, 'guest-subset');
  });

  it('quota: a host space that does not enforce quotas (linux-5.8 core)', async () => {
    const yaml = `
host:
  vms: [{ id: vm, quota: 2, viommus: [{ segment: 0 }] }]
steps:
  - alloc: { vm: vm, count: 2 }
  - alloc: vm
    expect: any
`;
    const faults = (): RunOptions => ({ hostOptions: { space: new IoasidSpace({ profile: 'linux-5.8' }) } });
    const { incremental, full } = await bothCheckers(yaml, faults);
    assertCaught(incremental, 'incremental', 2, 'quota');
    assertCaught(full, 'full', 2, 'quota');
  });

  it('binding-ownership: a backend that frees a PASID still bound on the host', async () => {
    const yaml = `
host:
  vms:
    - id: vm
      viommus: [{ segment: 0 }]
      devices: [{ bdf: "0000:00:02.0" }]
steps:
  - bind: { vm: vm, device: "0000:00:02.0", mm: app }
    as: p
  - name: the VMM frees it behind the guest's back; the faulty host does not check the binding
    vcmd: { vm: vm, command: free, pasid: $p }
    expect: any
`;
    const faults = () => wrap((vm, b) => ({ allocate: (r) => b.allocate(r), free: (p) => vm.host.space.freeSync(p, vm.set) }));
    const { incremental, full } = await bothCheckers(yaml, faults);
    assertCaught(incremental, 'incremental', 2, 'binding-ownership');
    assertCaught(full, 'full', 2, 'binding-ownership');
  });

  it('destroyed-vm: a teardown that forgets to tear the bindings down', async () => {
    const yaml = `
host:
  vms:
    - id: vm
      viommus: [{ segment: 0 }]
      devices: [{ bdf: "0000:00:02.0" }]
steps:
  - bind: { vm: vm, device: "0000:00:02.0", mm: app }
  - destroyVm: vm
`;
    const faults = (): RunOptions => ({
      onVm: (vm) => {
        vm.dropAllBindings = () => []; // the fault
      },
    });
    const { incremental, full } = await bothCheckers(yaml, faults);
    assertCaught(incremental, 'incremental', 2, 'destroyed-vm');
    assertCaught(full, 'full', 2, 'destroyed-vm');
    assert.match(incremental.failure?.violations[0]?.message ?? '', /1 bindings/);
  });

  it('single-owner across levels: L0 forgets a PASID the nested host below still gives out', async () => {
    const yaml = `
host:
  vms:
    - id: l1
      viommus: [{ segment: 0 }]
      host:
        vms:
          - id: l2
            viommus: [{ segment: 0 }]
steps:
  - alloc: l2
    expect: any
`;
    // L0's backend for l1 allocates, then drops the PASID at L0 while still answering it.
    const faults = () => wrap((vm, b) => vm.id !== 'l1' ? b : {
      allocate: (r) => {
        const p = b.allocate(r) as number;
        vm.host.space.freeSync(p, vm.set);
        return p;
      },
      free: (p) => b.free(p),
    });
    const { incremental, full } = await bothCheckers(yaml, faults);
    assertCaught(incremental, 'incremental', 1, 'single-owner');
    assertCaught(full, 'full', 1, 'single-owner');
    assert.match(incremental.failure?.violations.find((v) => v.invariant === 'single-owner')?.message ?? '', /nested VM l2 .* which l1 does not own/);
  });
});

describe('random workload: the checks catch a fault and stay quiet without one', () => {
  /**
   * From the `after`-th allocation on, for 50 allocations, backends answer a PASID another VM owns
   * (some of those answers are refused by the guest, e.g. out of its [min, max]: harmless).
   */
  function stealingBackend(after: number): RunOptions['hostOptions'] {
    let n = 0;
    return {
      wrapBackend: (vm, b) => ({
        allocate: (r) => {
          if (++n >= after && n < after + 50) {
            for (const other of vm.host.vms()) {
              const p = other === vm ? undefined : other.pasids()[0];
              if (p !== undefined) return p;
            }
          }
          return b.allocate(r);
        },
        free: (p) => b.free(p),
      }),
    };
  }

  it('the incremental check catches it at the very step; a full check catches it only if it runs before it heals', async () => {
    const inc = await runRandom({ vms: 8, steps: 4000, seed: 11, fullEvery: 0, hostOptions: stealingBackend(300) });
    assert.equal(inc.ok, false);
    const at = inc.failure?.index ?? -1;
    assert.ok(at > 0 && at <= 4000 && inc.failure?.kind !== 'final-check', formatReport(inc));
    assert.ok(inc.failure?.violations.every((v) => v.check === 'incremental'));
    assert.ok(inc.failure?.violations.some((v) => v.invariant === 'guest-subset'));
    assert.ok(Array.isArray(inc.random?.lastSteps));

    // A full check that happens to run right after the faulty step sees the same thing.
    const full = await runRandom({ vms: 8, steps: 4000, seed: 11, incremental: false, fullEvery: at, hostOptions: stealingBackend(300) });
    assert.equal(full.ok, false);
    assert.equal(full.failure?.index, at);
    assert.ok(full.failure?.violations.every((v) => v.check === 'full'));
    assert.ok(full.failure?.violations.some((v) => v.invariant === 'guest-subset'));
  });

  it('a clean run of every step kind: no violation, no crash, every kind exercised', async () => {
    const r = await runRandom({ vms: 12, steps: 20_000, seed: 5, fullEvery: 2000 });
    assert.equal(r.ok, true, formatReport(r));
    assert.equal(r.steps.run, 20_000);
    assert.equal(r.checks.fullRuns, 11);
    for (const kind of ['alloc', 'free', 'bind', 'unbind', 'addViommu', 'removeViommu', 'assignDevice', 'removeDevice', 'destroyVm', 'createVm', 'vcmd']) {
      assert.ok((r.byKind[kind]?.count ?? 0) > 0, `no ${kind} step`);
    }
    assert.ok((r.byKind.alloc?.ok ?? 0) > 0 && (r.byKind.bind?.errors.ERANGE ?? 0) > 0);
  });

  it('same seed, same run', async () => {
    const a = await runRandom({ vms: 5, steps: 3000, seed: 99 });
    const b = await runRandom({ vms: 5, steps: 3000, seed: 99 });
    assert.deepEqual(a.byKind, b.byKind);
    assert.deepEqual(a.vms, b.vms);
  });
});

describe('host-layer problems found by the scenarios (fixed)', () => {
  it('a guest that runs a nested host cannot free a PASID of its nested VM', async () => {
    const scenario = parseScenario(`
host:
  vms:
    - id: l1
      viommus: [{ segment: 0 }]
      host:
        vms:
          - id: l2
            viommus: [{ segment: 0 }]
            devices: [{ bdf: "0000:00:05.0" }]
steps:
  - bind: { vm: l2, device: "0000:00:05.0", mm: app }
    as: app
  - name: l1's guest kernel frees l2's bound PASID
    free: { vm: l1, pasid: $app }
    expect: [EACCES, EBUSY, ENOENT]
`);
    const r = await runScenario(scenario);
    assert.equal(r.ok, true, formatReport(r));
  });

  it('removing the last vIOMMU of a guest that runs a nested host keeps the nested VMs\' PASIDs consistent', async () => {
    const scenario = parseScenario(`
host:
  vms:
    - id: l1
      viommus: [{ segment: 0 }]
      host:
        vms:
          - id: l2
            viommus: [{ segment: 0 }]
steps:
  - alloc: l2
  - removeViommu: { vm: l1, segment: 0 }
    expect: any
`);
    const r = await runScenario(scenario);
    assert.equal(r.ok, true, formatReport(r));
  });
});
