/**
 * A seeded random workload for the scenario runner (`ioasid simulate --random`): N VMs with 1-4
 * vIOMMUs each (some with the range extension, a few in layout A), devices of assorted PASID
 * widths, mostly strict guests and some Linux-profile ones, and a stream of steps of every kind
 * with realistic weights: alloc/free and bind/unbind dominate, kept around a per-VM working-set
 * target (so quotas are reached now and then); deliberate misuse now and then (free of a bound,
 * foreign or unknown PASID, unbind of what is not bound, raw VCMD commands from a VMM); rare
 * hot-plug and hot-unplug of vIOMMUs and devices; occasional VM destruction and re-creation.
 *
 * The generator keeps a model of what each VM holds, fed by every step's outcome, so that frees
 * and unbinds name PASIDs and address spaces that exist; every step expects `any` (any outcome but
 * a crash), and the invariants are what is checked. Same seed, same options: same run.
 *
 * Not generated: nesting (a nested VM's VCMD answer is asynchronous and its guest polls with
 * real-time sleeps, about 1 ms per command per level; see docs/scenarios.md) and Linux guests
 * losing their last vIOMMU (the kernel then falls back to a guest-local namespace, which the
 * checker rightly reports: see the hot-unplug rules of src/vtd/guest-driver.ts).
 */
import { PASID_MAX, type Profile } from '../core/index.ts';
import type { Layout } from '../vtd/index.ts';
import { ScenarioRunner, type RunOptions, type RunReport } from './scenario-runner.ts';
import {
  EXPECT_ANY, describeAction,
  type Outcome, type ScenarioDevice, type ScenarioHost, type ScenarioStep, type ScenarioViommu, type ScenarioVm, type StepAction,
} from './scenario.ts';

export interface RandomOptions {
  /** VMs on the host (default 10). */
  readonly vms?: number;
  /** Steps to run (default 10 000). */
  readonly steps?: number;
  /** PRNG seed (default 1). */
  readonly seed?: number;
  /** End of the host's PASID range (default 0xFFFFF); small values make VMs compete. */
  readonly pasidMax?: number;
  /** Full invariant check every K steps (default 10 000); the incremental one runs every step. */
  readonly fullEvery?: number;
  readonly incremental?: boolean;
  readonly stopOnFailure?: boolean;
  readonly onProgress?: RunOptions['onProgress'];
  readonly progressEvery?: number;
  /** Fault injection (tests). */
  readonly hostOptions?: RunOptions['hostOptions'];
  readonly onVm?: RunOptions['onVm'];
}

/** Small, fast, seeded PRNG (mulberry32). */
export class Prng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) | 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [0, n). */
  below(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.next() * xs.length)] as T;
  }
}

/** A list with O(1) add, remove and random pick. */
class Bag<T = number> {
  readonly items: T[] = [];
  readonly #at = new Map<T, number>();
  get size(): number {
    return this.items.length;
  }
  has(x: T): boolean {
    return this.#at.has(x);
  }
  add(x: T): void {
    if (this.#at.has(x)) return;
    this.#at.set(x, this.items.length);
    this.items.push(x);
  }
  delete(x: T): void {
    const i = this.#at.get(x);
    if (i === undefined) return;
    const last = this.items.pop() as T;
    if (i < this.items.length) {
      this.items[i] = last;
      this.#at.set(last, i);
    }
    this.#at.delete(x);
  }
  clear(): void {
    this.items.length = 0;
    this.#at.clear();
  }
}

interface MmState {
  pasid: number;
  devices: Set<string>;
}

interface Slot {
  readonly id: string;
  alive: boolean;
  layout: Layout;
  profile: Profile;
  segments: number[];
  /**
   * Segments whose vIOMMU serves the guest's VCMD allocator: all of them in strict; in the Linux
   * profiles only those probed at boot (the kernel's hot-add registers nothing), and a Linux guest
   * never loses its last one (it would go on with guest-local PASIDs: a kernel hazard the checker
   * rightly reports).
   */
  served: number[];
  devices: ScenarioDevice[];
  quota: number;
  /** Working-set size the generator steers the VM towards. */
  target: number;
  /** PASIDs allocated with alloc (no device). */
  readonly loose: Bag;
  readonly mms: Map<string, MmState>;
  readonly mmNames: Bag<string>;
  /** Address spaces a Linux guest still lists but can no longer unbind (left alone). */
  readonly zombies: Set<string>;
  nextMm: number;
}

const WIDTHS = [20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 20, 16, 16, 12, 10, 10, 8, 5] as const;
const QUOTAS = [16, 32, 64, 128, 256, 1000, 1000, 0] as const;
const SEGMENTS = 8;

export class RandomWorkload {
  readonly host: ScenarioHost;
  readonly #rng: Prng;
  readonly #slots: Slot[] = [];
  readonly #byId = new Map<string, Slot>();
  #runner: ScenarioRunner | null = null;
  /** The last steps, for the report of a failure. */
  readonly #recent: StepAction[] = [];
  #recentAt = 0;

  constructor(opts: { vms: number; seed: number; pasidMax?: number }) {
    this.#rng = new Prng(opts.seed);
    const vms: ScenarioVm[] = [];
    const width = String(opts.vms).length;
    for (let i = 0; i < opts.vms; i++) {
      const id = `vm${String(i + 1).padStart(Math.max(2, width), '0')}`;
      const slot: Slot = { id, alive: true, layout: 'B', profile: 'strict', segments: [], served: [], devices: [], quota: 0, target: 0, loose: new Bag(), mms: new Map(), mmNames: new Bag<string>(), zombies: new Set(), nextMm: 0 };
      this.#slots.push(slot);
      this.#byId.set(id, slot);
      vms.push(this.#config(slot));
    }
    this.host = { name: 'L0', ...(opts.pasidMax !== undefined ? { pasidMax: opts.pasidMax } : {}), vms };
  }

  /** The runner whose state the generator may consult after steps that change a VM wholesale. */
  attach(runner: ScenarioRunner): void {
    this.#runner = runner;
  }

  /** A fresh random configuration for a VM slot (at boot and at re-creation). */
  #config(slot: Slot): ScenarioVm {
    const r = this.#rng;
    slot.layout = r.chance(0.1) ? 'A' : 'B';
    const p = r.next();
    slot.profile = p < 0.9 ? 'strict' : p < 0.95 ? 'linux-5.18' : 'linux-5.11';
    slot.quota = r.pick(QUOTAS);
    const cap = slot.quota === 0 ? 300 : slot.quota;
    // Mostly below the quota; a few VMs aim just above it and meet EDQUOT now and then.
    slot.target = 2 + r.below(Math.max(1, Math.min(Math.ceil(cap * 1.05), 300)));
    const nv = 1 + r.below(4);
    const segs: number[] = [];
    while (segs.length < nv) {
      const s = r.below(SEGMENTS);
      if (!segs.includes(s)) segs.push(s);
    }
    segs.sort((a, b) => a - b);
    slot.segments = segs;
    slot.served = [...segs];
    const viommus: ScenarioViommu[] = segs.map((segment) => this.#viommu(slot, segment));
    slot.devices = [];
    const nd = 1 + r.below(4);
    for (let i = 0; i < nd; i++) {
      const d = this.#newDevice(slot);
      if (d !== null) slot.devices.push(d);
    }
    slot.loose.clear();
    slot.mms.clear();
    slot.mmNames.clear();
    slot.zombies.clear();
    return { id: slot.id, quota: slot.quota, viommus, devices: [...slot.devices], guest: { profile: slot.profile }, host: null };
  }

  #viommu(slot: Slot, segment: number): ScenarioViommu {
    return slot.layout === 'A' ? { segment, layout: 'A' } : { segment, ...(this.#rng.chance(0.3) ? { rangeExtension: true } : {}) };
  }

  #newDevice(slot: Slot): ScenarioDevice | null {
    const r = this.#rng;
    if (slot.segments.length === 0) return null;
    for (let tries = 0; tries < 8; tries++) {
      const seg = r.pick(slot.segments);
      const bdf = `${hex(seg, 4)}:00:${hex(1 + r.below(31), 2)}.0`;
      if (slot.devices.some((d) => d.bdf === bdf)) continue;
      const bits = r.pick(WIDTHS);
      return bits === 20 ? { bdf } : { bdf, pasidBits: bits };
    }
    return null;
  }

  // ------------------------------------------------------------------ steps

  next(): ScenarioStep {
    const r = this.#rng;
    let slot = r.pick(this.#slots);
    if (!slot.alive) {
      if (r.chance(0.3) || !this.#slots.some((s) => s.alive)) return this.#step({ kind: 'createVm', on: null, spec: this.#config(slot) });
      do slot = r.pick(this.#slots);
      while (!slot.alive);
    }
    return this.#step(this.#action(slot));
  }

  #step(action: StepAction): ScenarioStep {
    if (this.#recent.length < 16) this.#recent.push(action);
    else this.#recent[this.#recentAt] = action;
    this.#recentAt = (this.#recentAt + 1) % 16;
    return { action, expect: EXPECT_ANY };
  }

  /** The last steps generated, oldest first. */
  recentSteps(): string[] {
    return [...this.#recent.slice(this.#recentAt), ...this.#recent.slice(0, this.#recentAt)].map(describeAction);
  }

  #action(s: Slot): StepAction {
    const r = this.#rng;
    const held = s.loose.size + s.mms.size;
    const full = held >= s.target;
    const x = r.next() * 1000;
    // Rare steps first (per mille): 1 destroy, 4 vIOMMU plug/unplug, 6 device plug/unplug, 4 raw VCMD.
    if (x < 1) return { kind: 'destroyVm', vm: s.id };
    // A VM that lost all its vIOMMUs gets one back soon (until then its guest cannot allocate).
    if (s.segments.length === 0 && r.chance(0.2)) return { kind: 'addViommu', vm: s.id, viommu: this.#viommu(s, r.below(SEGMENTS)) };
    if (x < 3 && s.segments.length < 4) {
      const free = [...Array(SEGMENTS).keys()].filter((g) => !s.segments.includes(g));
      const segment = free.length > 0 && r.chance(0.95) ? r.pick(free) : r.below(SEGMENTS);
      return { kind: 'addViommu', vm: s.id, viommu: this.#viommu(s, segment) };
    }
    if (x < 5) {
      if (s.segments.length <= 1 && r.chance(0.5)) return this.#alloc(s);
      const lastServing = s.profile !== 'strict' && s.served.length === 1 ? s.served[0] : undefined;
      const removable = s.segments.filter((g) => g !== lastServing);
      if (removable.length === 0 || (s.profile !== 'strict' && s.served.length === 0)) return this.#alloc(s);
      const idle = removable.filter((g) => !s.devices.some((d) => segOf(d.bdf) === g));
      return { kind: 'removeViommu', vm: s.id, segment: idle.length > 0 && r.chance(0.8) ? r.pick(idle) : r.pick(removable) };
    }
    if (x < 8 && s.devices.length < 6) {
      const d = this.#newDevice(s);
      return d === null ? this.#alloc(s) : { kind: 'assignDevice', vm: s.id, device: d };
    }
    if (x < 11) {
      if (s.devices.length <= 1 && r.chance(0.5)) return this.#alloc(s);
      if (s.devices.length === 0) return this.#alloc(s);
      return { kind: 'removeDevice', vm: s.id, device: r.pick(s.devices).bdf };
    }
    if (x < 15) {
      if (s.segments.length === 0) return this.#alloc(s);
      const other = this.#otherPasid(s);
      return other === null || r.chance(0.2)
        ? { kind: 'vcmd', vm: s.id, segment: r.pick(s.segments), command: 'null' }
        : { kind: 'vcmd', vm: s.id, segment: r.pick(s.segments), command: 'free', pasid: other };
    }
    // The common steps: allocate and bind below the target, free and unbind above it.
    const y = r.next();
    if (y < 0.5) {
      if (!full) return r.chance(0.5) || s.devices.length === 0 ? this.#alloc(s) : this.#bind(s);
      return (r.chance(0.5) && s.loose.size > 0) || s.mms.size === 0 ? this.#free(s) : this.#unbind(s);
    }
    if (y < 0.75) return s.devices.length === 0 ? this.#alloc(s) : this.#bind(s);
    if (y < 0.88) return s.loose.size > 0 || s.mms.size === 0 || r.chance(0.1) ? this.#free(s) : this.#unbind(s);
    return this.#unbind(s);
  }

  #alloc(s: Slot): StepAction {
    const r = this.#rng;
    if (r.chance(0.85)) return { kind: 'alloc', vm: s.id };
    if (r.chance(0.8)) return { kind: 'alloc', vm: s.id, min: 1, max: 2 ** r.pick([8, 10, 12, 16]) - 1 };
    return { kind: 'alloc', vm: s.id, min: 0x80000, max: PASID_MAX };
  }

  #free(s: Slot): StepAction {
    const r = this.#rng;
    const x = r.next();
    if (x < 0.9 && s.loose.size > 0) return { kind: 'free', vm: s.id, pasid: r.pick(s.loose.items) };
    if (x < 0.94 && s.mms.size > 0) return { kind: 'free', vm: s.id, pasid: (s.mms.get(r.pick(s.mmNames.items)) as MmState).pasid };
    if (x < 0.97) {
      const other = this.#otherPasid(s);
      if (other !== null) return { kind: 'free', vm: s.id, pasid: other };
    }
    return { kind: 'free', vm: s.id, pasid: r.chance(0.05) ? 0 : 1 + r.below(PASID_MAX + 4) };
  }

  #bind(s: Slot): StepAction {
    const r = this.#rng;
    const device = r.pick(s.devices).bdf;
    if (s.mms.size > 0 && r.chance(0.3)) {
      // Share an address space with another device (SVA: one PASID per mm); now and then one
      // that is already bound to this device (EEXIST).
      const mm = r.pick(s.mmNames.items);
      if (!(s.mms.get(mm) as MmState).devices.has(device) || r.chance(0.05)) return { kind: 'bind', vm: s.id, device, mm };
    }
    return { kind: 'bind', vm: s.id, device, mm: `m${s.nextMm++}` };
  }

  #unbind(s: Slot): StepAction {
    const r = this.#rng;
    if (s.mms.size === 0 && !r.chance(0.05)) return s.loose.size > 0 ? this.#free(s) : this.#alloc(s);
    if (s.mms.size === 0 || r.chance(0.01)) {
      const device = s.devices.length > 0 ? r.pick(s.devices).bdf : '0000:00:01.0';
      return { kind: 'unbind', vm: s.id, device, mm: `m${r.below(s.nextMm + 1)}` };
    }
    const mm = r.pick(s.mmNames.items);
    const st = s.mms.get(mm) as MmState;
    let k = r.below(st.devices.size);
    let device = '';
    for (const d of st.devices) if (k-- === 0) device = d;
    return { kind: 'unbind', vm: s.id, device, mm };
  }

  /** A PASID some other live VM holds, if the random pick finds one. */
  #otherPasid(s: Slot): number | null {
    for (let tries = 0; tries < 4; tries++) {
      const o = this.#rng.pick(this.#slots);
      if (o === s || !o.alive) continue;
      if (o.loose.size > 0) return this.#rng.pick(o.loose.items);
      if (o.mms.size > 0) return (o.mms.get(this.#rng.pick(o.mmNames.items)) as MmState).pasid;
    }
    return null;
  }

  // ------------------------------------------------------------------ feedback

  /** Update the model with a step's outcome. */
  observe(step: ScenarioStep, o: Outcome): void {
    const a = step.action;
    if (a.kind === 'check') return;
    const s = this.#byId.get(a.kind === 'createVm' ? a.spec.id : a.vm);
    if (s === undefined) return;
    if (!o.ok) {
      // A Linux guest forgets a PASID freed while bound (the kernel's leak); unbinding it later
      // fails half-way. Re-read that VM (rare: only after a free while bound).
      if (a.kind === 'unbind' && s.profile !== 'strict' && s.mms.has(a.mm)) {
        this.#resync(s);
        // Still listed by the guest but unbindable: stop trying.
        if (s.mms.has(a.mm)) {
          s.zombies.add(a.mm);
          this.#dropMm(s, a.mm);
        }
      }
      return;
    }
    switch (a.kind) {
      case 'alloc':
        if (o.pasid !== undefined) s.loose.add(o.pasid);
        return;
      case 'free':
        if (typeof a.pasid === 'number') s.loose.delete(a.pasid);
        return;
      case 'bind': {
        const st = s.mms.get(a.mm);
        if (st === undefined) {
          s.mms.set(a.mm, { pasid: o.pasid as number, devices: new Set([a.device]) });
          s.mmNames.add(a.mm);
        } else st.devices.add(a.device);
        return;
      }
      case 'unbind': {
        const st = s.mms.get(a.mm);
        if (st === undefined) return;
        st.devices.delete(a.device);
        if (st.devices.size === 0) this.#dropMm(s, a.mm);
        return;
      }
      case 'addViommu':
        s.segments.push(a.viommu.segment);
        if (s.profile === 'strict') s.served.push(a.viommu.segment);
        return;
      case 'removeViommu':
        s.segments = s.segments.filter((g) => g !== a.segment);
        s.served = s.served.filter((g) => g !== a.segment);
        if (s.segments.length === 0) this.#resync(s);
        return;
      case 'assignDevice':
        s.devices.push(a.device);
        return;
      case 'removeDevice':
        // The guest unbound the device from every address space it was in.
        s.devices = s.devices.filter((d) => d.bdf !== a.device);
        for (const [mm, st] of [...s.mms]) {
          if (st.devices.delete(a.device) && st.devices.size === 0) this.#dropMm(s, mm);
        }
        return;
      case 'createVm':
        s.alive = true;
        return;
      case 'destroyVm':
        s.alive = false;
        s.loose.clear();
        s.mms.clear();
        s.mmNames.clear();
        return;
      default:
        return;
    }
  }

  #dropMm(s: Slot, mm: string): void {
    s.mms.delete(mm);
    s.mmNames.delete(mm);
  }

  /** Re-read a VM's guest state after a step that changed it wholesale (O(its PASIDs)). */
  #resync(s: Slot): void {
    const at = this.#runner?.locate(s.id);
    if (at === undefined || at === null || at.guest === null) return;
    s.mms.clear();
    s.mmNames.clear();
    const bound = new Set<number>();
    for (const b of at.guest.bindings()) {
      if (s.zombies.has(b.mm)) continue;
      s.mms.set(b.mm, { pasid: b.pasid, devices: new Set(b.devices) });
      s.mmNames.add(b.mm);
      bound.add(b.pasid);
    }
    s.loose.clear();
    for (const p of at.guest.pasids()) if (!bound.has(p)) s.loose.add(p);
  }
}

/** Generate and run a random workload through the scenario runner. */
export async function runRandom(opts: RandomOptions = {}): Promise<RunReport> {
  const vms = opts.vms ?? 10;
  const steps = opts.steps ?? 10_000;
  const seed = opts.seed ?? 1;
  const fullEvery = opts.fullEvery ?? 10_000;
  const w = new RandomWorkload({ vms, seed, ...(opts.pasidMax !== undefined ? { pasidMax: opts.pasidMax } : {}) });
  const runner = await ScenarioRunner.create(w.host, {
    incremental: opts.incremental ?? true,
    fullEvery,
    record: 'failures',
    stopOnFailure: opts.stopOnFailure ?? true,
    ...(opts.onProgress !== undefined ? { onProgress: opts.onProgress } : {}),
    ...(opts.progressEvery !== undefined ? { progressEvery: opts.progressEvery } : {}),
    ...(opts.hostOptions !== undefined ? { hostOptions: opts.hostOptions } : {}),
    ...(opts.onVm !== undefined ? { onVm: opts.onVm } : {}),
  });
  runner.total = steps;
  w.attach(runner);
  for (let i = 0; i < steps && !runner.stopped; i++) {
    const step = w.next();
    w.observe(step, await runner.step(step));
  }
  const failed = runner.failure !== null;
  return runner.finish({
    scenario: `random workload (seed ${seed})`,
    random: { seed, vms, steps, fullEvery, ...(opts.pasidMax !== undefined ? { pasidMax: opts.pasidMax } : {}), ...(failed ? { lastSteps: w.recentSteps() } : {}) },
  });
}

function hex(n: number, width: number): string {
  return n.toString(16).padStart(width, '0');
}

function segOf(bdf: string): number {
  return Number.parseInt(bdf.slice(0, 4), 16);
}
