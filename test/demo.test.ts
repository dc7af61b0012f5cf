/** `ioasid demo` tells the custom allocator's story, and every step behaves as narrated. */
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { runDemo } from '../src/cli/demo.ts';

it('the demo runs every step as narrated, showing register accesses decoded', async () => {
  const lines: string[] = [];
  const r = await runDemo((l) => lines.push(l));
  assert.deepEqual(r.failures, []);
  assert.ok(r.steps >= 20);
  const text = lines.join('\n');
  assert.match(text, /VCCAP_REG=0x8000000000000001 PAS=1 RX=1/);
  assert.match(text, /write VCMD_REG=0x10001 CMD=1 OA=1 {2}\(Allocate PASID\)/);
  assert.match(text, /VCRSP_REG=0x20 IP=0 SC=0x10 RSLT=0 {2}\(no PASID available\)/);
  assert.match(text, /Cannot free active IOASID/);
  assert.match(text, /ioasid simulate examples\/kernel-bugs\.yaml/, 'the demo points at the kernel bugs example');
  assert.doesNotMatch(text, /\x1b\[/, 'no colour codes when not asked');
});
