/**
 * VCMD path benchmark (docs/vtd.md). One process, one host:
 *  - VCMD path: a guest alloc+free pair through the whole stack: the guest's IoasidSpace (strict),
 *    the VT-d driver's custom allocator, MMIO writes and reads of a VcmdDevice (layout B), its
 *    synchronous backend, and the host's IoasidSpace (allocSync / freeSync in the VM's set);
 *  - direct: the host's own allocSync+freeSync pair in the same set, in the same run.
 * The host holds 10,000 PASIDs of another VM in the background. Reports ns per pair for both and
 * the ratio (target: the VCMD path at most 15x direct). For the breakdown it also measures the
 * guest space's own cost with a trivial synchronous custom allocator (no VCMD at all), and the
 * VCMD part without the guest space (driver unit -> device -> host). Median of 5 repetitions.
 * Writes bench/results/vcmd.json.
 *
 *   node --import tsx bench/vcmd.bench.ts
 */
import { IoasidSpace, PASID_MAX, PASID_MIN, type IoasidSet } from '../src/core/index.ts';
import { VcmdDevice, VtdGuestDriver, type GuestViommu } from '../src/vtd/index.ts';
import { median, nowNs, saveResult } from './util.ts';

const VCMD_PAIRS = 200_000;
const DIRECT_PAIRS = 2_000_000;
const REPS = 5;
const BACKGROUND = 10_000;
const TARGET_RATIO = 15;

interface World {
  host: IoasidSpace;
  vm: IoasidSet;
  guest: IoasidSpace;
  devices: VcmdDevice[];
  units: GuestViommu[];
}

function world(): World {
  const host = new IoasidSpace({ profile: 'strict' });
  const other = host.createSet({ name: 'background-vm' });
  for (let i = 0; i < BACKGROUND; i++) host.allocSync(other, PASID_MIN, PASID_MAX);
  const vm = host.createSet({ name: 'vm', quota: 1000 });
  const backend = {
    allocate: (range?: { min: number; max: number }) => host.allocSync(vm, range?.min ?? PASID_MIN, range?.max ?? PASID_MAX),
    free: (p: number) => host.freeSync(p, vm),
  };
  const devices = [new VcmdDevice({ layout: 'B', backend }), new VcmdDevice({ layout: 'B', backend })];
  const guest = new IoasidSpace({ profile: 'strict' });
  const driver = new VtdGuestDriver(guest, { layout: 'B' });
  const units = driver.init(devices);
  return { host, vm, guest, devices, units };
}

async function vcmdPairs(w: World, n: number): Promise<number> {
  const t0 = nowNs();
  for (let i = 0; i < n; i++) {
    const id = await w.guest.alloc(null, PASID_MIN, PASID_MAX - 1);
    await w.guest.free(id);
  }
  return Number(nowNs() - t0) / n;
}

function directPairs(w: World, n: number): number {
  const { host, vm } = w;
  const t0 = nowNs();
  for (let i = 0; i < n; i++) {
    const id = host.allocSync(vm, PASID_MIN, PASID_MAX);
    host.freeSync(id, vm);
  }
  return Number(nowNs() - t0) / n;
}

/** The guest space alone: a synchronous custom allocator that does nothing. */
async function coreOnlyPairs(n: number): Promise<number> {
  const space = new IoasidSpace({ profile: 'strict' });
  space.registerAllocator({ alloc: (min: number) => min, free: () => {}, pdata: null });
  for (let i = 0; i < 10_000; i++) await space.free(await space.alloc(null, PASID_MIN, PASID_MAX));
  const t0 = nowNs();
  for (let i = 0; i < n; i++) {
    const id = await space.alloc(null, PASID_MIN, PASID_MAX);
    await space.free(id);
  }
  return Number(nowNs() - t0) / n;
}

/** The VCMD part alone: the active unit's Allocate and Free, device, backend, host; no guest space. */
function unitPairs(w: World, n: number): number {
  const unit = w.units[0] as GuestViommu;
  const t0 = nowNs();
  for (let i = 0; i < n; i++) {
    const id = unit.allocate() as number;
    unit.free(id);
  }
  return Number(nowNs() - t0) / n;
}

const w = world();
// Warm up both paths.
await vcmdPairs(w, 20_000);
directPairs(w, 200_000);

unitPairs(w, 20_000);

const vcmd: number[] = [];
const direct: number[] = [];
const coreOnly: number[] = [];
const unitOnly: number[] = [];
for (let r = 0; r < REPS; r++) {
  vcmd.push(await vcmdPairs(w, VCMD_PAIRS));
  direct.push(directPairs(w, DIRECT_PAIRS));
  coreOnly.push(await coreOnlyPairs(VCMD_PAIRS));
  unitOnly.push(unitPairs(w, VCMD_PAIRS));
}
if (w.host.setCount(w.vm) !== 0 || w.guest.size !== 0) throw new Error('benchmark left PASIDs behind');
const commands = w.devices.map((d) => d.stats.commands);
if (commands[1] !== 0) throw new Error('traffic went through the second vIOMMU');

const vcmdNs = median(vcmd);
const directNs = median(direct);
// Each repetition measures both paths back to back; the median of the per-repetition ratios is
// steadier than the ratio of medians on a shared machine.
const ratio = median(vcmd.map((v, i) => v / (direct[i] as number)));
const coreNs = median(coreOnly);
const unitNs = median(unitOnly);
const result = {
  workload: { layout: 'B', guestProfile: 'strict', hostProfile: 'strict', viommus: 2, background: BACKGROUND, vcmdPairs: VCMD_PAIRS, directPairs: DIRECT_PAIRS, reps: REPS },
  vcmdNsPerPair: Number(vcmdNs.toFixed(1)),
  directNsPerPair: Number(directNs.toFixed(1)),
  ratio: Number(ratio.toFixed(2)),
  breakdown: {
    guestSpaceOnlyNsPerPair: Number(coreNs.toFixed(1)),
    vcmdWithoutGuestSpaceNsPerPair: Number(unitNs.toFixed(1)),
    guestSpaceShareOfPath: Number((coreNs / vcmdNs).toFixed(2)),
    note: 'guestSpaceOnly: the guest IoasidSpace alloc+free with a trivial synchronous custom allocator (its promise queue); vcmdWithoutGuestSpace: GuestViommu.allocate/free -> VcmdDevice -> backend -> host allocSync/freeSync',
  },
  runs: { vcmd: vcmd.map((x) => Number(x.toFixed(1))), direct: direct.map((x) => Number(x.toFixed(1))) },
  targets: { maxRatio: TARGET_RATIO },
  pass: { ratio: ratio <= TARGET_RATIO },
};
console.log('VCMD path vs direct host allocation (median of 5)');
console.log(`  guest alloc+free through VCMD : ${result.vcmdNsPerPair} ns/pair`);
console.log(`  host allocSync+freeSync       : ${result.directNsPerPair} ns/pair`);
console.log(`  ratio                         : ${result.ratio}x   (target <= ${TARGET_RATIO}x) ${result.pass.ratio ? 'PASS' : 'FAIL'}`);
console.log(`  breakdown: guest space alone ${result.breakdown.guestSpaceOnlyNsPerPair} ns/pair, VCMD without guest space ${result.breakdown.vcmdWithoutGuestSpaceNsPerPair} ns/pair`);
console.log(`  saved ${saveResult('vcmd', result)}`);
