/**
 * `ioasid demo`: the story of the VT-d custom allocator's review, narrated. A host; a guest with two vIOMMUs on two PCI segments;
 * boot and registration of the VT-d custom allocator; allocation through VCMD with every register
 * access shown decoded; min/max; the quota running out; a foreign free refused; free while bound
 * refused; hot-removal of the active vIOMMU; teardown; where to see the kernel's own bugs
 * (examples/kernel-bugs.yaml). Each step states what must happen and is checked; the command exits
 * 0 only if every step behaved as narrated.
 */
import { Command } from 'commander';
import { IoasidError } from '../client/index.ts';
import {
  VCMD_CMD, commandName, decodeVcmd, decodeVcrsp, describeRegister, registerAt, statusName,
  type MmioAccessor, type RegisterMap, type RegisterName,
} from '../vtd/index.ts';
import { Host, type Guest, type HostOptions, type Viommu, type Vm } from '../host/index.ts';
import { checkInvariants } from '../sim/index.ts';
import { DESCRIPTIONS } from './descriptions.ts';

interface Style {
  title(s: string): string;
  ok(s: string): string;
  bad(s: string): string;
  dim(s: string): string;
  reg(s: string): string;
}

function style(colour: boolean): Style {
  const c = (code: string) => (s: string) => (colour ? `\x1b[${code}m${s}\x1b[0m` : s);
  return { title: c('1;36'), ok: c('32'), bad: c('1;31'), dim: c('2'), reg: c('33') };
}

/** Narrates each register access of the guest's driver, decoded with the spec's field names. */
function tracer(out: (line: string) => void, st: Style, enabled: () => boolean) {
  return (v: Viommu, mmio: MmioAccessor): MmioAccessor => {
    const map: RegisterMap = v.device.map;
    let lastVcrsp = -1n;
    const name = (offset: number): RegisterName | null => (registerAt(map, offset)?.name as RegisterName | undefined) ?? null;
    return {
      read(offset, size) {
        const value = mmio.read(offset, size);
        const reg = name(offset);
        if (enabled() && reg !== null && size === 8) {
          // The poll loop may read VCRSP many times; show each distinct value once.
          if (reg !== 'VCRSP_REG' || value !== lastVcrsp) {
            let extra = '';
            if (reg === 'VCRSP_REG') {
              const r = decodeVcrsp(map, value);
              extra = r.ip ? '  (in progress)' : `  (${statusName(map, lastCmd, r.sc)}${r.sc === 0 && lastCmd === VCMD_CMD.ALLOCATE ? `, PASID ${r.pasid}` : ''})`;
              lastVcrsp = value;
            }
            out(`      ${st.dim(`${v.name} read `)} ${st.reg(describeRegister(map, reg, value))}${extra}`);
          }
        }
        return value;
      },
      write(offset, value, size) {
        const reg = name(offset);
        if (reg === 'VCMD_REG') {
          lastCmd = decodeVcmd(map, value).cmd;
          lastVcrsp = -1n;
        }
        if (enabled() && reg !== null) {
          const extra = reg === 'VCMD_REG' ? `  (${commandName(decodeVcmd(map, value).cmd)}${lastCmd === VCMD_CMD.FREE ? ` ${decodeVcmd(map, value).pasid}` : ''})` : '';
          out(`      ${st.dim(`${v.name} write`)} ${st.reg(describeRegister(map, reg, value))}${extra}`);
        }
        mmio.write(offset, value, size);
      },
    };
  };
}
let lastCmd: number = VCMD_CMD.NULL;

export interface DemoResult {
  readonly steps: number;
  readonly failures: readonly string[];
}

/** Run the story; `out` receives the narration line by line. */
export async function runDemo(out: (line: string) => void, colour = false): Promise<DemoResult> {
  const st = style(colour);
  const failures: string[] = [];
  let steps = 0;
  let traceOn = true;
  const kernelLog: string[] = [];
  const log: NonNullable<HostOptions['log']> = (level, message) => {
    if (level !== 'debug') kernelLog.push(`${level}: ${message}`);
  };

  const say = (s: string) => out(`   ${s}`);
  const flushKernelLog = () => {
    for (const l of kernelLog.splice(0)) say(st.dim(`guest kernel: ${l}`));
  };
  const section = (s: string) => {
    flushKernelLog();
    out(`\n${st.title(`── ${s}`)}`);
  };
  const check = (what: string, okay: boolean, detail = '') => {
    steps++;
    if (okay) out(`   ${st.ok('✓')} ${what}${detail ? st.dim(`  ${detail}`) : ''}`);
    else {
      out(`   ${st.bad('✗')} ${what}${detail ? `  ${detail}` : ''}`);
      failures.push(what);
    }
  };
  const expectError = async (what: string, code: string, fn: () => Promise<unknown>) => {
    try {
      const v = await fn();
      check(what, false, `expected ${code}, got ${JSON.stringify(v)}`);
    } catch (e) {
      const got = e instanceof IoasidError ? e.code : String(e);
      check(what, got === code, e instanceof Error ? `${got}: ${e.message}` : got);
    }
  };
  const invariants = (host: Host, destroyed: { host: Host; vm: Vm }[] = []) => {
    const v = checkInvariants(host, { destroyed });
    check('invariants hold (one owner per PASID, guest ⊆ host, quotas, bindings, teardown)', v.length === 0, v.map((x) => x.message).join('; '));
  };

  section('1. A host and two VMs');
  const host = new Host({ name: 'host', log });
  say('The host kernel owns the PASID namespace [1, 0xfffff]; each VM is one IOASID set with a quota.');
  const vm1 = host.createVm({
    id: 'vm1',
    quota: 5,
    viommus: [{ segment: 0, rangeExtension: true }, { segment: 1 }],
    devices: [{ bdf: '0000:00:02.0' }, { bdf: '0001:00:03.0', pasidBits: 10 }],
  });
  const vm2 = host.createVm({ id: 'vm2', quota: 0, viommus: [{ segment: 0 }] });
  say(`vm1: quota ${vm1.quota}; vIOMMU dmar0 on segment 0 (VT-d 3.3 layout, range extension), dmar1 on segment 1 (VT-d 3.3 layout);`);
  say('     devices 0000:00:02.0 (20-bit PASIDs, behind dmar0) and 0001:00:03.0 (10-bit PASIDs, behind dmar1).');
  say('vm2: no quota, one vIOMMU. It already uses PASIDs 1-1100 but has just released PASID 1000,');
  say('     so the lowest free host PASID is 1000 and the next one is 1101.');
  for (let i = 0; i < 1100; i++) host.space.allocSync(vm2.set, 1, 0xfffff);
  host.space.freeSync(1000, vm2.set);
  check('vm2 holds 1099 PASIDs in [1, 1100] on the host', vm2.pasids().length === 1099 && !vm2.pasids().includes(1000));

  section('2. vm1 boots: the guest VT-d driver probes both vIOMMUs and registers its allocator');
  say('register_pasid_allocator(): CAP.CM (caching mode) = 1, scalable mode, ECAP.VCS = 1, then VCCAP.PAS = 1.');
  const guest: Guest = host.boot('vm1', { log, wrapMmio: tracer(out, st, () => traceOn) });
  flushKernelLog();
  const u0 = guest.unit(0);
  const u1 = guest.unit(1);
  check('both vIOMMUs registered their own ops with the same functions: one shared group', guest.space.allocatorGroups === 1 && u0.registered && u1.registered);
  check('the first (dmar0) is active: all VCMD traffic goes through its registers', guest.space.activeAllocator()?.pdata === u0);

  section('3. Allocation through VCMD: svaBind(0000:00:02.0, mm "init")');
  say('ioasid_alloc() -> custom allocator -> write VCMD_REG (Allocate) -> poll VCRSP_REG until IP = 0.');
  say('The device takes 20-bit PASIDs, so the range is the whole [1, 0xfffff]: the host answers its lowest free.');
  const p1 = await guest.svaBind('0000:00:02.0', 'init');
  check(`the guest got PASID ${p1}, a host PASID owned by vm1`, host.space.ownerOf(p1) === vm1.set && p1 === 1000);
  check('the host bound the device to it', vm1.bindings().some(([b, p]) => b === '0000:00:02.0' && p === p1));
  invariants(host);

  section('4. min/max: a device with a 10-bit PASID capability');
  say('The guest kernel asks for [1, 1023], but the VT-d Allocate command has no operand: the host answers its');
  say('lowest free PASID in the whole range. Every PASID below 1024 is in use now, so that would be 1101: useless.');
  say('Our range extension (VCCAP bit 63, advertised by dmar0) sends min in VCMD_REG.OA and max in VCMD_EO_REG:');
  await expectError('svaBind(0001:00:03.0, mm "dma-10bit"): the host has nothing in [1, 1023]: ENOSPC, not a useless 1101', 'ENOSPC', () => guest.svaBind('0001:00:03.0', 'dma-10bit'));
  host.space.freeSync(512, vm2.set);
  say('vm2 releases PASID 512; the guest tries again:');
  const p10 = await guest.svaBind('0001:00:03.0', 'dma-10bit');
  check(`the 10-bit device got PASID ${p10}, below 1024`, p10 === 512);
  invariants(host);

  section('5. The quota runs out');
  say(`vm1 may hold ${vm1.quota} PASIDs; it holds ${vm1.pasids().length}.`);
  traceOn = false;
  const extra: number[] = [];
  while (vm1.pasids().length < vm1.quota) extra.push(await guest.alloc());
  traceOn = true;
  say(`(allocated ${extra.length} more quietly: ${extra.join(', ')})`);
  await expectError('one more allocation: the host answers "no PASID available", the guest sees ENOSPC', 'ENOSPC', () => guest.alloc());
  check('nothing leaked: vm1 still holds exactly its quota', vm1.pasids().length === vm1.quota);

  section('6. A foreign free is refused');
  say(`vm2's VMM writes Free(PASID ${p1}) into vm2's own vIOMMU: that PASID is vm1's.`);
  const d2 = vm2.viommu(0).device;
  const map2 = d2.map;
  const cmd = (BigInt(p1) << BigInt(map2.operandPasid.lo)) | BigInt(VCMD_CMD.FREE);
  d2.write(0xe00, cmd, 8);
  const rsp = d2.read(0xe10, 8);
  say(`  ${st.reg(describeRegister(map2, 'VCRSP_REG', rsp))}`);
  check('the device answers "invalid PASID"; vm1 keeps it', statusName(map2, VCMD_CMD.FREE, decodeVcrsp(map2, rsp).sc) === 'invalid PASID' && host.space.ownerOf(p1) === vm1.set);

  section('7. Free while bound is refused');
  await expectError(`the guest frees PASID ${p1} while 0000:00:02.0 is still bound: EBUSY`, 'EBUSY', () => guest.free(p1));
  flushKernelLog();
  check('no VCMD Free was sent, the host still records it for vm1', host.space.ownerOf(p1) === vm1.set);

  section('8. Hot-removal of the active vIOMMU with PASIDs outstanding');
  traceOn = false;
  await guest.free(extra[0] as number);
  traceOn = true;
  say('The device behind dmar0 is unplugged (its address space is unbound and freed), then dmar0 itself.');
  await vm1.removeDevice('0000:00:02.0');
  await vm1.removeViommu(0);
  flushKernelLog();
  check('dmar1 took over as the active allocator of the shared group', guest.space.activeAllocator()?.pdata === u1);
  check(`PASID ${p10} (bound to the 10-bit device) is still known to the guest and owned by vm1`, guest.space.has(p10) && host.space.ownerOf(p10) === vm1.set);
  const px = await guest.alloc();
  check(`allocation keeps working through dmar1: PASID ${px}`, host.space.ownerOf(px) === vm1.set);
  say('dmar1 does not advertise the range extension: a second 10-bit address space cannot be honoured.');
  await expectError('svaBind(0001:00:03.0, mm "late") fails with ERANGE: the host\'s answer is handed back', 'ERANGE', () => guest.svaBind('0001:00:03.0', 'late'));
  check('nothing leaked on the host', vm1.pasids().length === guest.pasids().length);
  invariants(host);

  section('9. Teardown');
  const { pasids, bindings } = await host.destroyVm('vm1');
  say(`destroyVm(vm1): ${bindings.length} binding(s) torn down, ${pasids.length} PASID(s) freed: ${pasids.join(', ')}.`);
  check('the host holds only vm2\'s PASIDs again', host.space.ids().length === vm2.pasids().length && host.vms().length === 1);
  invariants(host, [{ host, vm: vm1 }]);

  section('10. Where real kernels went wrong');
  say('This guest ran the strict profile: the kernel\'s mistakes fixed. The Linux profiles (linux-5.8, linux-5.11,');
  say('linux-5.18) do what v5.5-v6.3 kernels did, mistakes included, and log a kernel hazard where a real kernel');
  say('would have freed memory still in use or lost a PASID. The same steps on a Linux guest and on a strict one:');
  say(`  ${st.reg('ioasid simulate examples/kernel-bugs.yaml')}`);
  say('free while bound, the mm\'s PASID at exit, an unchecked host answer, an allocation that lands on 0xFFFFFFFF,');
  say('EEXIST that corrupts the allocator list, the layout-B Free of a PASID above 0xFFFF; then linux-6.x, what');
  say('replaced the design (docs/history.md).');

  flushKernelLog();
  out('');
  if (failures.length === 0) out(st.ok(`All ${steps} checks behaved as narrated.`));
  else out(st.bad(`${failures.length} of ${steps} checks did not behave as narrated: ${failures.join('; ')}`));
  return { steps, failures };
}

export function demoCommand(): Command {
  return new Command('demo')
    .description(DESCRIPTIONS.demo)
    .option('--no-color', 'plain output')
    .action(async (opts: { color: boolean }) => {
      const colour = opts.color && process.stdout.isTTY === true && process.env.NO_COLOR === undefined;
      const r = await runDemo((l) => process.stdout.write(`${l}\n`), colour);
      process.exitCode = r.failures.length === 0 ? 0 : 1;
    });
}
