/**
 * Every scenario in examples/ runs with every step as expected and no invariant violated (full
 * check after every step plus the incremental one), and `ioasid simulate` exits 0 on a good
 * scenario, 1 on a wrong expectation and 2 on a bad file.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatReport, parseScenario, runScenario } from '../src/sim/index.ts';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const examples = readdirSync(join(root, 'examples')).filter((f) => /\.(ya?ml|json)$/.test(f)).sort();

describe('example scenarios', () => {
  it('there are examples for the stories the issue names', () => {
    for (const f of ['custom-allocator-story.yaml', 'two-guests-compete.yaml', 'hot-unplug-active-viommu.yaml', 'nested-three-levels.yaml', 'narrow-device-range-extension.yaml', 'kernel-bugs.yaml']) {
      assert.ok(examples.includes(f), `examples/${f} is missing`);
    }
  });

  for (const f of examples) {
    it(`${f}: every step as expected, no violation`, async () => {
      const path = join('examples', f);
      const scenario = parseScenario(readFileSync(join(root, path), 'utf8'), path);
      const report = await runScenario(scenario);
      assert.equal(report.ok, true, formatReport(report));
      assert.equal(report.steps.run, scenario.steps.length);
      assert.equal(report.checks.violations, 0);
      assert.equal(report.checks.fullRuns, scenario.steps.length + 1, 'a full check after the setup and after every step');
      assert.ok(report.records.every((r) => r.pass));
    });
  }
});

describe('examples/kernel-bugs.yaml', () => {
  it('shows each kernel bug as a hazard on the Linux guest, and strict\'s step beside it with none', async () => {
    const path = join('examples', 'kernel-bugs.yaml');
    const report = await runScenario(parseScenario(readFileSync(join(root, path), 'utf8'), path));
    assert.equal(report.ok, true, formatReport(report));
    for (const kind of ['pasid-leak', 'range-ignored', 'invalid-ioasid-entry', 'allocator-list-corruption', 'vcmd-free-truncated']) {
      const linux = report.records.filter((r) => r.hazards.some((h) => h.kind === kind));
      assert.ok(linux.length > 0, `a step shows ${kind}`);
      assert.ok(linux.every((r) => r.expected.includes(`hazard ${kind}`)), `each ${kind} is expected by its step`);
    }
    const strict = report.records.filter((r) => /^(free|bind|alloc|allocator|exit) (str|bare-str) /.test(r.action) && r.expected.includes('no hazard'));
    assert.ok(strict.length >= 6, 'the strict outcome stands beside each');
    assert.ok(strict.every((r) => r.hazards.length === 0));
  });

  it('a step that expects a hazard fails without it; one that expects none fails with one', async () => {
    const scenario = parseScenario([
      'host:', '  vms:', '    - id: l', '      viommus: [{ segment: 0 }]', '      guest: { profile: linux-5.18 }',
      'steps:', '  - alloc: l', '    as: p', '    expect: { hazard: pasid-leak }', '  - free: { vm: l, pasid: $p }', '    expect: { hazard: none }',
    ].join('\n'));
    const r = await runScenario(scenario, { stopOnFailure: false });
    assert.match(r.records[0]?.unexpected ?? '', /expected kernel hazard pasid-leak, got none/);
    assert.equal(r.records[1]?.unexpected, null, 'a free of a PASID without data sends VCMD Free: no hazard');
    const bound = parseScenario([
      'host:', '  vms:', '    - id: l', '      viommus: [{ segment: 0 }]', '      devices: [{ bdf: "0000:00:02.0" }]', '      guest: { profile: linux-5.18 }',
      'steps:', '  - bind: { vm: l, device: "0000:00:02.0", mm: a }', '    as: p', '  - free: { vm: l, pasid: $p }', '    expect: { hazard: none }',
    ].join('\n'));
    const b = await runScenario(bound);
    assert.equal(b.ok, false);
    assert.match(b.failure?.unexpected ?? '', /expected no kernel hazard, got pasid-leak/);
    assert.deepEqual(b.hazards.byKind, { 'pasid-leak': 1 });
  });
});

describe('ioasid simulate (CLI)', () => {
  // The CLI runs in a folder of its own, where `examples` leads to the checkout's (read only).
  const cwd = mkdtempSync(join(tmpdir(), 'ioasid-sim-cwd-'));
  symlinkSync(join(root, 'examples'), join(cwd, 'examples'));
  after(() => rmSync(cwd, { recursive: true, force: true }));
  const cli = (...args: string[]) => spawnSync(process.execPath, ['--import', import.meta.resolve('tsx'), join(root, 'src/cli/main.ts'), 'simulate', ...args], {
    cwd, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' }, timeout: 60_000,
  });

  it('exits 0 on a passing scenario and prints the step and VM tables', () => {
    const r = cli('examples/two-guests-compete.yaml');
    assert.equal(r.status, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /two guests compete/);
    assert.match(r.stdout, /PASIDs\/quota/);
    assert.match(r.stdout, /vm-a\s+strict\s+4\/1,000/);
    assert.match(r.stdout, /PASS/);
    assert.doesNotMatch(r.stdout, /\x1b\[/, 'no colour when stdout is not a terminal');
  });

  it('--guest-profile runs a file\'s steps on another kernel; a profile that does not exist, or with --random, is exit 2', () => {
    const r = cli('--json', '--keep-going', '--guest-profile', 'linux-6.x', 'examples/custom-allocator-story.yaml');
    assert.equal(r.status, 1, 'the file\'s expectations were written for the design with one system-wide namespace');
    const report = JSON.parse(r.stdout) as { checks: { violations: number }; records: { action: string; outcome: { pasid?: number } }[] };
    assert.equal(report.checks.violations, 0);
    assert.ok(report.records.some((x) => x.action.startsWith('bind vm2') && x.outcome.pasid === 1), 'vm2\'s own IDA starts at 1');
    assert.equal(cli('--guest-profile', 'linux-9', 'examples/custom-allocator-story.yaml').status, 2);
    assert.equal(cli('--random', '--guest-profile', 'linux-6.x').status, 2);
  });

  it('exits 1 on a wrong expectation, naming the step, its line and its name; --json is machine-readable', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ioasid-sim-'));
    const file = join(dir, 'wrong.yaml');
    writeFileSync(file, [
      'name: wrong expectation',
      'host:',
      '  vms:',
      '    - id: vm1',
      '      viommus: [{ segment: 0 }]',
      'steps:',
      '  - alloc: vm1',
      '    expect: { pasid: 1 }',
      '  - name: the second PASID is not 7',
      '    alloc: vm1',
      '    expect: { pasid: 7 }',
      '',
    ].join('\n'));
    const r = cli('--json', file);
    assert.equal(r.status, 1, r.stderr);
    const report = JSON.parse(r.stdout) as { ok: boolean; failure: { index: number; line: number; name: string; unexpected: string } };
    assert.equal(report.ok, false);
    assert.equal(report.failure.index, 2);
    assert.equal(report.failure.line, 9);
    assert.equal(report.failure.name, 'the second PASID is not 7');
    assert.match(report.failure.unexpected, /expected PASID 7, got 2/);

    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'host:\n  vms:\n    - id: vm1\n      quot: 3\n');
    const b = cli(bad);
    assert.equal(b.status, 2);
    assert.match(b.stderr, /bad\.yaml:4:7: host\.vms\[0\]\.quot: unknown field "quot" in a VM \(did you mean "quota"\?\)/);
  });
});

describe('runner semantics', () => {
  it('boot, guest: false, createVm under a parent, unset names, check mismatches, keep-going', async () => {
    const scenario = parseScenario(`
host:
  vms:
    - id: cold
      guest: false
      viommus: [{ segment: 0 }]
    - id: l1
      viommus: [{ segment: 0 }]
steps:
  - alloc: cold
    expect: ENODEV
    as: never
  - boot: { vm: cold, profile: strict }
  - boot: cold
    expect: EEXIST
  - alloc: cold
    expect: { pasid: 1 }
  - free: { vm: cold, pasid: $never }
    expect: any
  - createVm: { parent: l1, id: l2, viommus: [{ segment: 0 }] }
  - alloc: l2
    expect: { pasid: 2 }
  - check: { vm: l1, pasids: [2] }
  - name: a wrong check, and the run goes on
    check: { vm: l2, pasids: 5, bindings: 1 }
  - destroyVm: l1
  - check: { vm: l2, alive: false }
  - alloc: l2
    expect: ENOENT
`, 'semantics.yaml');
    const r = await runScenario(scenario, { stopOnFailure: false });
    const by = (i: number) => r.records.find((x) => x.index === i);
    const unset = by(5)?.outcome;
    assert.equal(unset !== undefined && !unset.ok ? unset.code : null, 'UNSET');
    assert.equal(by(5)?.pass, true, 'any accepts UNSET');
    assert.equal(by(9)?.pass, false);
    assert.match(by(9)?.unexpected ?? '', /l2 pasids on .*: 1 \(2\), expected 5; l2 bindings: 0 \(none\), expected 1/);
    assert.equal(r.failure?.index, 9);
    assert.equal(r.steps.run, 12, 'keep-going ran every step');
    assert.deepEqual(r.records.filter((x) => !x.pass).map((x) => x.index), [9]);
    assert.deepEqual(r.vms.map((v) => [v.id, v.alive, v.level]), [['cold', true, 0], ['l1', false, 0], ['l2', false, 1]]);
  });

  it('a host tree that cannot be built fails at the setup, step 0', async () => {
    // 4-bit PASIDs (ECAP.PSS 3): the guest's nested host cannot start at PASID 100.
    const r = await runScenario(parseScenario('host:\n  vms:\n    - id: vm\n      viommus: [{ segment: 0, pss: 3 }]\n      host: { pasidMin: 100 }\n'));
    assert.equal(r.ok, false);
    assert.equal(r.failure?.kind, 'setup');
    assert.equal(r.failure?.index, 0);
    assert.match(r.failure?.unexpected ?? '', /could not be built: EINVAL: host PASID range/);
  });
});
