/**
 * Kernel hazards and profiles at the scenario level: what a guest/host register layout mismatch
 * does to a Linux guest (guest-local PASIDs, which the invariant checker catches once another VM
 * holds the same host PASID) and to a strict one (refused, named); and the same scenario run on
 * linux-6.x, what replaced the design.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatReport, parseScenario, runScenario } from '../src/sim/index.ts';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

const mismatch = (profile: string) => parseScenario(`
host:
  vms:
    - id: guest
      viommus: [{ segment: 0, layout: B }]
      guest: { profile: ${profile}, layout: A }
    - id: other
      viommus: [{ segment: 0 }]
steps:
  - alloc: guest
    expect: any
  - alloc: other
    expect: { pasid: 1 }
`, 'mismatch.yaml');

describe('a guest/host register layout mismatch', () => {
  it('Linux (register_pasid_allocator, v5.8-v6.3): no allocator, a kernel hazard at boot, a guest-local PASID 1; the checker reports guest-subset and single-owner once another VM holds host PASID 1', async () => {
    const r = await runScenario(mismatch('linux-5.18'), { stopOnFailure: false });
    assert.deepEqual(r.hazards.setup.map((h) => h.kind), ['guest-local-pasids']);
    assert.match(r.hazards.setup[0]?.message ?? '', /VCCAP_REG \(0xe00, layout A\) read 0x0: PAS clear/);
    const first = r.records[0]?.outcome;
    assert.deepEqual(first, { ok: true, pasid: 1 }, 'from the guest\'s own default allocator');
    assert.deepEqual(r.records[0]?.violations.map((v) => v.invariant), ['guest-subset', 'guest-subset'], 'the host never gave PASID 1 to the VM (both checkers)');
    const second = r.records[1];
    assert.ok(second?.violations.some((v) => v.invariant === 'guest-subset'));
    assert.ok(second?.violations.some((v) => v.invariant === 'single-owner' && /held by the guests of guest and other/.test(v.message)), JSON.stringify(second?.violations));
    assert.equal(r.ok, false);
  });

  it('strict: detected at probe; allocation is ENODEV naming the unit, its VCCAP read and the mismatch; nothing to report', async () => {
    const r = await runScenario(mismatch('strict'), { stopOnFailure: false });
    const first = r.records[0]?.outcome;
    assert.ok(first !== undefined && !first.ok && first.code === 'ENODEV');
    assert.match(first.message, /guest\/dmar0 runs under caching mode with scalable mode, but VCCAP_REG \(0xe00, layout A\) read 0x0: PAS clear; its registers answer as layout B \(VCCAP_REG at 0xe30 = 0x1\): a guest\/host register layout mismatch/);
    assert.equal(r.checks.violations, 0);
    assert.equal(r.hazards.total, 0);
    assert.equal(r.ok, true, formatReport(r));
  });
});

describe('the same scenario on what replaced the design (--guest-profile linux-6.x)', () => {
  it('custom-allocator-story on linux-6.x: each guest\'s own PASIDs (vm2 gets 1, not 2), no host PASIDs, no invariant violated, no crash', async () => {
    const path = join('examples', 'custom-allocator-story.yaml');
    const scenario = parseScenario(readFileSync(join(root, path), 'utf8'), path);
    const r = await runScenario(scenario, { guestProfile: 'linux-6.x', stopOnFailure: false });
    assert.equal(r.checks.violations, 0, formatReport(r));
    assert.ok(r.records.every((x) => x.outcome.ok || x.outcome.code !== 'CRASH'));
    const vm2 = r.records.find((x) => x.action.startsWith('bind vm2'));
    assert.deepEqual(vm2?.outcome, { ok: true, pasid: 1 }, 'no system-wide namespace: vm2\'s IDA starts at 1');
    assert.match(vm2?.unexpected ?? '', /expected PASID 2, got 1/);
    assert.ok(r.vms.every((v) => v.guest === 'linux-6.x' || v.guest === 'destroyed'));
    // On the design with one system-wide namespace the same file passes.
    assert.equal((await runScenario(scenario)).ok, true);
  });
});
