/**
 * Scenario files are validated strictly, and every problem names its line and field: unknown
 * fields, wrong types, references to undeclared VMs and names, steps with no or two actions, YAML
 * syntax, expectations that do not fit the step. JSON (valid YAML) gets the same treatment.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ScenarioFormatError, parseScenario, validateScenario, type ScenarioIssue } from '../src/sim/index.ts';

/** The issues of a scenario that must not parse. */
function issues(text: string): readonly ScenarioIssue[] {
  try {
    parseScenario(text, 'bad.yaml');
  } catch (e) {
    assert.ok(e instanceof ScenarioFormatError, String(e));
    assert.equal(e.code, 'EINVAL');
    return e.issues;
  }
  assert.fail('the scenario parsed');
}

const lines = (...xs: string[]) => `${xs.join('\n')}\n`;

const HOST = ['host:', '  vms:', '    - id: vm1', '      viommus: [{ segment: 0 }]', '      devices: [{ bdf: "0000:00:02.0" }]'];

describe('scenario files: errors name the line and the field', () => {
  it('an unknown field, with a suggestion', () => {
    const [i] = issues(lines('host:', '  vms:', '    - id: vm1', '      quot: 8'));
    assert.deepEqual({ line: i?.line, column: i?.column, field: i?.field, path: i?.path }, { line: 4, column: 7, field: 'quot', path: 'host.vms[0].quot' });
    assert.match(i?.message ?? '', /unknown field "quot" in a VM \(did you mean "quota"\?\)/);
  });

  it('a value of the wrong type or out of range', () => {
    const found = issues(lines('host:', '  pasidMax: 0x200000', '  vms:', '    - id: vm1', '      quota: many', '      viommus: [{ segment: 0, layout: C }]'));
    assert.deepEqual(found.map((i) => [i.line, i.field]), [[2, 'pasidMax'], [5, 'quota'], [6, 'layout']]);
    assert.match(found[0]?.message ?? '', /pasidMax must be in \[1, 1048575\], got 2097152/);
    assert.match(found[1]?.message ?? '', /quota must be an integer, got "many"/);
    assert.match(found[2]?.message ?? '', /layout must be one of "A", "B", got "C"/);
  });

  it('a step that refers to a VM nobody declared', () => {
    const [i] = issues(lines(...HOST, 'steps:', '  - alloc: vm1', '  - bind: { vm: vm2, device: "0000:00:02.0", mm: a }'));
    assert.equal(i?.line, 8);
    assert.equal(i?.field, 'vm');
    assert.equal(i?.path, 'steps[1].bind.vm');
    assert.match(i?.message ?? '', /unknown VM "vm2" \(did you mean "vm1"\?\) \(declared so far: vm1\)/);
  });

  it('a VM created by a later step is unknown before it', () => {
    const found = issues(lines(...HOST, 'steps:', '  - destroyVm: vm9', '  - createVm: { id: vm9 }', '  - destroyVm: vm9'));
    assert.deepEqual(found.map((i) => [i.line, i.path]), [[7, 'steps[0].destroyVm.vm']]);
  });

  it('a $name no earlier step defines; "as" on a step that produces no PASID', () => {
    const found = issues(lines(...HOST, 'steps:', '  - free: { vm: vm1, pasid: $p1 }', '  - alloc: vm1', '    as: p1', '  - destroyVm: vm1', '    as: gone'));
    assert.deepEqual(found.map((i) => [i.line, i.field]), [[7, 'pasid'], [11, 'as']]);
    assert.match(found[0]?.message ?? '', /\$p1 is not defined by an earlier step's "as"/);
    assert.match(found[1]?.message ?? '', /destroyVm produces none/);
  });

  it('a step with no action, or two', () => {
    const found = issues(lines(...HOST, 'steps:', '  - name: nothing to do', '  - alloc: vm1', '    free: { vm: vm1, pasid: 1 }', '  - alocc: vm1'));
    assert.deepEqual(found.map((i) => [i.line, i.path]), [[7, 'steps[0]'], [9, 'steps[1].free'], [10, 'steps[2].alocc'], [10, 'steps[2]']]);
    assert.match(found[0]?.message ?? '', /a step needs one action/);
    assert.match(found[1]?.message ?? '', /exactly one action, found alloc and free/);
    assert.match(found[2]?.message ?? '', /did you mean "alloc"\?/);
  });

  it('an expectation that is no errno, or that does not fit the step', () => {
    const found = issues(lines(...HOST, 'steps:', '  - alloc: vm1', '    expect: ENOSPACE', '  - free: { vm: vm1, pasid: 1 }', '    expect: { pasid: 1 }', '  - check: { vm: vm1, pasids: 0 }', '    expect: ENOENT'));
    assert.deepEqual(found.map((i) => [i.line, i.field]), [[8, 'expect'], [10, 'pasid'], [12, 'expect']]);
    assert.match(found[0]?.message ?? '', /did you mean "ENOSPC"\?/);
    assert.match(found[1]?.message ?? '', /free produces no PASID to compare/);
    assert.match(found[2]?.message ?? '', /a check step has no expect/);
  });

  it('a hazard expectation names a known kind (with a suggestion), none, or a list of kinds', () => {
    const found = issues(lines(...HOST, 'steps:', '  - alloc: vm1', '    expect: { hazard: pasid-leek }', '  - alloc: vm1', '    expect: { hazard: [] }', '  - alloc: vm1', '    expect: { hazard: [range-ignored, 7] }'));
    assert.deepEqual(found.map((i) => [i.line, i.path]), [[8, 'steps[0].expect.hazard'], [10, 'steps[1].expect.hazard'], [12, 'steps[2].expect.hazard[1]']]);
    assert.match(found[0]?.message ?? '', /hazard must be none or a kernel hazard kind \(invalid-ioasid-entry, allocator-list-corruption, vcmd-free-truncated, pasid-leak, range-ignored, guest-local-pasids, freed-iommu-ops\), got "pasid-leek" \(did you mean "pasid-leak"\?\)/);
    assert.match(found[1]?.message ?? '', /empty list of hazards matches nothing/);
    const ok = parseScenario(lines(...HOST, 'steps:', '  - alloc: vm1', '    expect: { hazard: none }', '  - free: { vm: vm1, pasid: 1 }', '    expect: { error: EBUSY, hazard: [pasid-leak, range-ignored] }'));
    assert.deepEqual(ok.steps.map((x) => x.expect), [{ type: 'ok', hazard: 'none' }, { type: 'error', codes: ['EBUSY'], hazard: ['pasid-leak', 'range-ignored'] }]);
  });

  it('exit and allocator steps: their fields are checked', () => {
    const found = issues(lines(...HOST, 'steps:', '  - exit: { vm: vm1 }', '  - allocator: { vm: vm1, register: a, unregister: b }', '  - allocator: { vm: vm1, register: 9x }'));
    assert.deepEqual(found.map((i) => i.line), [7, 8, 9]);
    assert.match(found[0]?.message ?? '', /exit needs "mm"/);
    assert.match(found[1]?.message ?? '', /exactly one of register and unregister/);
    assert.match(found[2]?.message ?? '', /register \(an ops name\) must be a name/);
    const ok = parseScenario(lines(...HOST, 'steps:', '  - exit: { vm: vm1, mm: app }', '  - allocator: { vm: vm1, register: b, functions: a }'));
    assert.deepEqual(ok.steps.map((x) => x.action), [{ kind: 'exit', vm: 'vm1', mm: 'app' }, { kind: 'allocator', vm: 'vm1', call: 'register', ops: 'b', functions: 'a' }]);
  });

  it('a device on a segment with no vIOMMU; the same VM id at two levels; pasidMax on a nested host', () => {
    const found = issues(lines(
      'host:',
      '  vms:',
      '    - id: vm1',
      '      viommus: [{ segment: 0 }]',
      '      devices: [{ bdf: "0001:00:02.0" }]',
      '      host:',
      '        pasidMax: 100',
      '        vms:',
      '          - id: vm1',
    ));
    assert.deepEqual(found.map((i) => [i.line, i.field]), [[5, 'bdf'], [7, 'pasidMax'], [9, 'id']]);
    assert.match(found[0]?.message ?? '', /segment 1, which has no vIOMMU in this VM \(segments: 0\)/);
    assert.match(found[1]?.message ?? '', /not allowed here/);
    assert.match(found[2]?.message ?? '', /VM id "vm1" is used twice/);
  });

  it('YAML syntax errors and duplicate keys name their line', () => {
    const [i] = issues(lines('host:', '  vms: [', '    { id: vm1 ', 'steps: []'));
    assert.ok(i?.line !== undefined && i.line >= 2 && i.line <= 4, JSON.stringify(i));
    assert.match(i?.message ?? '', /^YAML: /);
    const [d] = issues(lines('host:', '  vms: []', 'host:', '  vms: []'));
    assert.equal(d?.line, 3);
    assert.match(d?.message ?? '', /unique/);
  });

  it('JSON is YAML: errors in a JSON file name their line too', () => {
    const json = JSON.stringify({ host: { vms: [{ id: 'vm1', viommus: [{ segment: 0 }] }] }, steps: [{ alloc: { vm: 'vm1', count: -1 } }] }, null, 2);
    const [i] = issues(json);
    assert.equal(i?.path, 'steps[0].alloc.count');
    assert.equal(i?.line, json.split('\n').findIndex((l) => l.includes('"count"')) + 1);
  });

  it('every problem is reported, and the message lists them as file:line:column: path: message', () => {
    try {
      parseScenario(lines('host:', '  vms:', '    - id: bad id', '      quota: -1'), 'x.yaml');
      assert.fail('parsed');
    } catch (e) {
      assert.ok(e instanceof ScenarioFormatError);
      assert.equal(e.issues.length, 2);
      assert.match(e.message, /^x\.yaml:3:11: host\.vms\[0\]\.id: VM id must be/m);
      assert.match(e.message, /^x\.yaml:4:14: host\.vms\[0\]\.quota: quota must be in \[0, 1048575\], got -1$/m);
    }
  });

  it('a scenario given as an object gets the same checks, with paths', () => {
    assert.throws(() => validateScenario({ host: { vms: [] }, steps: [{ free: { vm: 'x', pasid: 1 } }] }), (e: unknown) => {
      assert.ok(e instanceof ScenarioFormatError);
      assert.deepEqual(e.issues.map((i) => [i.path, i.line]), [['steps[0].free.vm', undefined]]);
      return true;
    });
  });

  it('a good scenario parses into the model: defaults, shorthands, names', () => {
    const s = parseScenario(lines(...HOST, 'steps:', '  - alloc: vm1', '    as: p', '  - free: { vm: vm1, pasid: $p }', '    expect: [EBUSY, ENOENT]', '  - destroyVm: vm1'), 'good.yaml');
    assert.equal(s.name, 'good');
    assert.deepEqual(s.steps.map((x) => [x.action.kind, x.line, x.expect.type]), [['alloc', 7, 'ok'], ['free', 9, 'error'], ['destroyVm', 11, 'ok']]);
    assert.deepEqual(s.host.vms[0]?.guest, {});
  });
});
