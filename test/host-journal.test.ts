/**
 * The host's one order: validate -> events -> journal.commit -> apply -> publish. A change the
 * journal does not commit changes nothing and announces nothing; events come in the order the
 * changes happened, numbered by the journal; on an asynchronous journal a VM's operations run in
 * call order while different VMs commit together; one range rule for every allocation path; owner
 * credentials; a host rebuilt from durable state by its own rules; changes committed elsewhere.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { CommitError, IoasidError } from '../src/core/index.ts';
import {
  Host, MemoryJournal,
  type Committed, type HostEventRecord, type HostState, type Journal, type JournalEntry, type SyncJournal,
} from '../src/host/index.ts';
import { VCMD_CMD, decodeVcrsp, encodeRangedAllocate, encodeVcmd, registerOffset } from '../src/vtd/index.ts';

const code = (c: string) => (e: unknown) => e instanceof IoasidError && e.code === c;

/** A synchronous journal that records entries and can be told to fail the next commit. */
class TestJournal implements SyncJournal {
  readonly durable = false;
  readonly sync = true;
  readonly entries: JournalEntry[] = [];
  readonly #inner = new MemoryJournal({ now: () => 1000 });
  fail = false;

  commit(entry: JournalEntry): Committed {
    if (this.fail) throw new CommitError('EIO', 'store away');
    this.entries.push(entry);
    return this.#inner.commit(entry);
  }
}

/** An asynchronous, durable journal whose commits wait until released (or fail). */
class SlowJournal implements Journal {
  readonly durable = true;
  readonly sync = false;
  readonly entries: JournalEntry[] = [];
  readonly #inner = new MemoryJournal({ now: () => 2000 });
  readonly #waiting: { entry: JournalEntry; done: (c: Committed) => void; fail: (e: unknown) => void }[] = [];
  auto = false;

  commit(entry: JournalEntry): Promise<Committed> {
    if (this.auto) {
      this.entries.push(entry);
      return Promise.resolve(this.#inner.commit(entry));
    }
    return new Promise((done, fail) => this.#waiting.push({ entry, done, fail }));
  }

  get pending(): readonly JournalEntry[] {
    return this.#waiting.map((w) => w.entry);
  }

  /** Commit (or fail) the oldest waiting entry. */
  release(ok = true): void {
    const w = this.#waiting.shift();
    if (w === undefined) throw new Error('nothing waiting');
    if (ok) {
      this.entries.push(w.entry);
      w.done(this.#inner.commit(w.entry));
    } else {
      w.fail(new CommitError('EIO', 'store away'));
    }
  }
}

const turn = () => new Promise<void>((r) => setImmediate(r));

function recorded<J extends Journal>(host: Host<J>): HostEventRecord[] {
  const out: HostEventRecord[] = [];
  host.on((e) => out.push(e));
  return out;
}

describe('host journal: a change the journal refuses changes nothing and announces nothing', () => {
  const ops: [string, (h: Host<TestJournal>) => unknown][] = [
    ['createVm', (h) => h.createVm({ id: 'vm2', viommus: [{ segment: 0 }] })],
    ['addViommu', (h) => h.vm('vm1').addViommu({ segment: 3 })],
    ['assignDevice', (h) => h.vm('vm1').assignDevice({ bdf: '0000:00:09.0' })],
    ['allocPasids', (h) => h.vm('vm1').allocPasids({ count: 3 })],
    ['freePasid', (h) => h.vm('vm1').freePasid(2)],
    ['bind', (h) => h.vm('vm1').bind('0000:00:02.0', 2)],
    ['unbind', (h) => h.vm('vm1').unbind('0000:00:02.0', 1)],
    ['removeDevice', (h) => h.vm('vm1').removeDevice('0000:00:02.0')],
    ['removeViommu', (h) => h.vm('vm1').removeViommu(1)],
    ['replaceCredential', (h) => h.vm('vm1').replaceCredential('c2')],
    ['destroyVm', (h) => h.destroyVm('vm1')],
  ];
  for (const [name, op] of ops) {
    it(`${name}: CommitError, the host snapshot as before, no event, reservations given back`, async () => {
      const journal = new TestJournal();
      const host = new Host({ journal });
      host.createVm({ id: 'vm1', quota: 8, credential: 'c1', viommus: [{ segment: 0 }, { segment: 1 }], devices: [{ bdf: '0000:00:02.0' }] });
      await host.vm('vm1').allocPasids({ count: 2 });
      host.vm('vm1').bind('0000:00:02.0', 1);
      const before = host.snapshot();
      const events = recorded(host);
      journal.fail = true;
      await assert.rejects(async () => op(host), (e) => e instanceof CommitError && e.code === 'EIO');
      assert.deepEqual(host.snapshot(), before);
      assert.deepEqual(events, []);
      assert.equal(host.vmByCredential('c1')?.id, 'vm1');
      journal.fail = false;
      await op(host); // and it goes through once the journal commits
      assert.ok(events.length > 0);
    });
  }

  it('a refused change (a rule says no) never reaches the journal', async () => {
    const journal = new TestJournal();
    const host = new Host({ journal });
    const vm = host.createVm({ id: 'vm1', quota: 2, viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0', pasidBits: 4 }] });
    const n = journal.entries.length;
    await assert.rejects(vm.allocPasids({ count: 3 }), code('EDQUOT'));
    await assert.rejects(vm.freePasid(5), code('ENOENT'));
    assert.throws(() => vm.bind('0000:00:02.0', 1), code('ENOENT'));
    assert.throws(() => host.createVm({ id: 'vm1' }), code('EEXIST'));
    assert.throws(() => vm.assignDevice({ bdf: '0001:00:02.0' }), code('EINVAL'));
    const [p] = await vm.allocPasids({ min: 100, max: 200 });
    assert.throws(() => vm.bind('0000:00:02.0', p as number), code('ERANGE'), 'beyond the device\'s 4-bit width');
    assert.equal(journal.entries.length, n + 1, 'only the allocation was committed');
  });
});

describe('host journal: events in the order things happened, numbered by the journal', () => {
  it('a VM is created before its vIOMMUs and devices; a batch allocation is one event; filling the quota says so', async () => {
    const host = new Host({ journal: new TestJournal() });
    const events = recorded(host);
    host.createVm({ id: 'vm1', quota: 3, viommus: [{ segment: 0 }, { segment: 1, layout: 'A' }], devices: [{ bdf: '0000:00:02.0' }] });
    await host.vm('vm1').allocPasids({ count: 3 });
    assert.deepEqual(events.map((e) => e.type), ['vm-created', 'viommu-added', 'viommu-added', 'device-assigned', 'alloc', 'quota-exhausted']);
    assert.deepEqual(events.map((e) => e.seq), [1, 2, 3, 4, 5, 6]);
    assert.deepEqual(events[4], { type: 'alloc', vm: 'vm1', pasids: [1, 2, 3], seq: 5, at: 1000 });
    assert.deepEqual(events[2], { type: 'viommu-added', vm: 'vm1', segment: 1, layout: 'A', rangeExtension: false, pasBit: 0, pss: 19, seq: 3, at: 1000 });
  });

  it('a destroy is one entry: unbinds, the free, device and vIOMMU removals, the end', async () => {
    const journal = new TestJournal();
    const host = new Host({ journal });
    host.createVm({ id: 'vm1', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }, { bdf: '0000:00:03.0' }] });
    await host.vm('vm1').allocPasids({ count: 2 });
    host.vm('vm1').bind('0000:00:03.0', 2);
    const events = recorded(host);
    await host.destroyVm('vm1');
    assert.equal(journal.entries.at(-1)?.events.length, events.length, 'one commit');
    assert.deepEqual(events.map((e) => [e.type, 'pasid' in e ? e.pasid : 'pasids' in e ? e.pasids : 'bdf' in e ? e.bdf : 'segment' in e ? e.segment : null]), [
      ['unbind', 2], ['free', [1, 2]], ['device-removed', '0000:00:02.0'], ['device-removed', '0000:00:03.0'], ['viommu-removed', 0], ['vm-destroyed', null],
    ]);
  });

  it('a VCMD command on a durable journal commits the registers its guest then reads', async () => {
    const journal = new SlowJournal();
    journal.auto = true;
    const host = new Host<SlowJournal>({ journal });
    const vm = await host.createVm({ id: 'vm1', credential: 'c', viommus: [{ segment: 0 }] });
    const dev = vm.viommu(0).device;
    await dev.writeDurable(registerOffset('B', 'VCMD_REG'), encodeVcmd('B', VCMD_CMD.ALLOCATE), 8);
    const e = journal.entries.at(-1);
    assert.deepEqual(e?.events.map((x) => x.type), ['alloc']);
    assert.deepEqual(e?.registers, { vm: 'vm1', segment: 0, state: dev.guestState() });
    assert.equal(decodeVcrsp('B', dev.read(registerOffset('B', 'VCRSP_REG'), 8)).pasid, 1);
    // A refused command (a free of nobody's PASID) commits its status alone.
    await dev.writeDurable(registerOffset('B', 'VCMD_REG'), encodeVcmd('B', VCMD_CMD.FREE, 9), 8);
    assert.deepEqual(journal.entries.at(-1), { events: [], registers: { vm: 'vm1', segment: 0, state: dev.guestState() } });
  });

  it('a device-local binding (a linux-6.x guest\'s own PASID) is refused by a durable host (EOPNOTSUPP), nothing committed; a memory host keeps it', async () => {
    const journal = new SlowJournal();
    journal.auto = true;
    const host = new Host<SlowJournal>({ journal });
    const vm = await host.createVm({ id: 'vm1', credential: 'c', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }] });
    const before = journal.entries.length;
    await assert.rejects(Promise.resolve(vm.bind('0000:00:02.0', 5, { deviceLocal: true })), (e: unknown) => code('EOPNOTSUPP')(e) && /not kept by a durable host/.test((e as Error).message));
    assert.equal(journal.entries.length, before, 'nothing committed');
    assert.deepEqual(vm.localBindings(), []);
    const mem = new Host({ journal: new TestJournal() });
    const m = mem.createVm({ id: 'vm1', credential: 'c', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }] });
    m.bind('0000:00:02.0', 5, { deviceLocal: true });
    assert.deepEqual(m.localBindings(), [['0000:00:02.0', 5]]);
  });
});

describe('host journal: an asynchronous journal', () => {
  it('one VM\'s operations commit in call order; another VM\'s commit alongside', async () => {
    const journal = new SlowJournal();
    const host = new Host<SlowJournal>({ journal });
    journal.auto = true;
    await host.createVm({ id: 'a', credential: 'ca' });
    await host.createVm({ id: 'b', credential: 'cb' });
    journal.auto = false;
    const a1 = host.vm('a').allocPasids();
    const a2 = host.vm('a').allocPasids();
    const b1 = host.vm('b').allocPasids();
    await turn();
    assert.deepEqual(journal.pending.map((e) => e.events[0]?.vm), ['a', 'b'], 'a\'s second waits for its first; b does not wait for a');
    journal.release();
    await turn();
    assert.deepEqual(journal.pending.map((e) => e.events[0]?.vm), ['b', 'a']);
    journal.release();
    journal.release();
    assert.deepEqual([await a1, await a2, await b1], [[1], [3], [2]]);
  });

  it('a destroy waits for the VM\'s operations before it; those after it find no VM', async () => {
    const journal = new SlowJournal();
    const host = new Host<SlowJournal>({ journal });
    journal.auto = true;
    const vm = await host.createVm({ id: 'a', credential: 'ca' });
    const [p] = await vm.allocPasids();
    journal.auto = false;
    const free = vm.freePasid(p as number);
    const destroy = host.destroyVm('a');
    const late = vm.allocPasids();
    await turn();
    assert.equal(journal.pending.length, 1, 'only the free is committing');
    journal.release();
    await free;
    await turn();
    assert.deepEqual(journal.pending[0]?.events.map((e) => e.type), ['vm-destroyed'], 'the destroy came after the free: nothing left to free');
    journal.release();
    assert.deepEqual((await destroy).pasids, []);
    await assert.rejects(late, code('ENODEV'));
  });

  it('a failed commit gives its reservation back, and a refusal is a rejected promise, never a throw', async () => {
    const journal = new SlowJournal();
    const host = new Host<SlowJournal>({ journal });
    journal.auto = true;
    const vm = await host.createVm({ id: 'a', quota: 1, credential: 'ca' });
    journal.auto = false;
    const lost = vm.allocPasids();
    await turn();
    assert.deepEqual(vm.pasids(), [1], 'reserved while it commits: nobody else can take it');
    journal.release(false);
    await assert.rejects(lost, (e) => e instanceof CommitError);
    assert.deepEqual(vm.pasids(), []);
    const refused = host.createVm({ id: 'bad id' });
    assert.ok(refused instanceof Promise);
    await assert.rejects(refused, code('EINVAL'));
  });
});

describe('host journal: one range rule for every allocation path', () => {
  it('[min, max] must be u32 IDs with min <= max (EINVAL); the host allocates only in its own range (ENOSPC outside it)', async () => {
    const host = new Host({ pasidMin: 100, pasidMax: 199 });
    const vm = host.createVm({ id: 'vm1', viommus: [{ segment: 0, rangeExtension: true }] });
    await assert.rejects(vm.allocPasids({ min: -1 }), code('EINVAL'));
    await assert.rejects(vm.allocPasids({ min: 5, max: 4 }), code('EINVAL'));
    await assert.rejects(vm.allocPasids({ max: 2 ** 32 }), code('EINVAL'));
    await assert.rejects(vm.allocPasids({ min: 1.5 }), code('EINVAL'));
    await assert.rejects(vm.allocPasids({ min: 200, max: 300 }), code('ENOSPC'));
    await assert.rejects(vm.allocPasids({ min: 0x100000, max: 0x7fffffff }), code('ENOSPC'));
    assert.deepEqual(await vm.allocPasids({ min: 1, max: 150 }), [100]);
    assert.deepEqual(await vm.allocPasids(), [101]);
    // The same rule through a ranged VCMD Allocate: outside the host's range is "no PASID".
    const dev = vm.viommu(0).device;
    dev.write(registerOffset('B', 'VCMD_EO_REG'), encodeRangedAllocate('B', 200, 300).vcmdEo, 8);
    dev.write(registerOffset('B', 'VCMD_REG'), encodeRangedAllocate('B', 200, 300).vcmd, 8);
    assert.equal(decodeVcrsp('B', dev.read(registerOffset('B', 'VCRSP_REG'), 8)).sc, 16);
    assert.match(dev.recentCommands().at(-1)?.error ?? '', /ENOSPC: no host PASID in \[200/);
  });

  it('a PASID argument out of [1, 0xfffff] is EINVAL, not ENOENT, and says PASID', async () => {
    const host = new Host();
    const vm = host.createVm({ id: 'vm1', viommus: [{ segment: 0 }], devices: [{ bdf: '0000:00:02.0' }] });
    await assert.rejects(vm.freePasid(0x100000), (e) => code('EINVAL')(e) && /PASID must be an integer in \[1, 0xfffff\]/.test((e as Error).message));
    assert.throws(() => vm.bind('0000:00:02.0', 0), code('EINVAL'));
    assert.throws(() => vm.lookup(-1), code('EINVAL'));
    await assert.rejects(vm.freePasid(7), (e) => code('ENOENT')(e) && /PASID 7 \(0x7\) is not allocated/.test((e as Error).message));
  });
});

describe('host journal: owner credentials', () => {
  it('unique among VMs; found by value; replaced at once; gone with the VM', async () => {
    const host = new Host();
    host.createVm({ id: 'a', credential: 'ca' });
    assert.throws(() => host.createVm({ id: 'b', credential: 'ca' }), code('EEXIST'));
    assert.throws(() => host.createVm({ id: 'b', credential: '' }), code('EINVAL'));
    host.createVm({ id: 'b', credential: 'cb' });
    assert.equal(host.vmByCredential('cb')?.id, 'b');
    assert.throws(() => host.vm('a').replaceCredential('cb'), code('EEXIST'));
    host.vm('a').replaceCredential('ca2');
    assert.equal(host.vmByCredential('ca'), null, 'the old credential is nobody\'s at once');
    assert.equal(host.vmByCredential('ca2')?.id, 'a');
    await host.destroyVm('a');
    assert.equal(host.vmByCredential('ca2'), null);
    host.createVm({ id: 'a', credential: 'ca3' });
    assert.equal(host.vmByCredential('ca2'), null, 'a new VM of the same name does not inherit the old credential');
  });
});

describe('host journal: rebuilt from durable state by the host\'s own rules', () => {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  type Loose = { vms: any[]; hostPasids: number[] };
  const state = (edit: (s: Loose) => void = () => {}): HostState => {
    const s = {
      hostPasids: [9],
      vms: [{
        id: 'vm1', quota: 3, credential: 'c1', createdAt: 42,
        viommus: [{ segment: 0, layout: 'B' as const, rangeExtension: false, pasBit: 0 as const, pss: 19 }],
        devices: [{ bdf: '0000:00:02.0', pasidBits: 20 }],
        pasids: [1, 2], bindings: [{ bdf: '0000:00:02.0', pasid: 1 }],
      }],
    };
    edit(s);
    return s as HostState;
  };

  it('restores VMs, vIOMMUs (with their registers), devices, PASIDs and bindings; publishes nothing', () => {
    const source = new Host();
    const vm = source.createVm({ id: 'vm1', viommus: [{ segment: 0 }] });
    vm.viommu(0).device.write(registerOffset('B', 'VCMD_REG'), encodeVcmd('B', VCMD_CMD.ALLOCATE), 8);
    const registers = vm.viommu(0).device.guestState();
    const host = new Host();
    const events = recorded(host);
    host.restore(state((s) => { s.vms[0].viommus = [{ ...s.vms[0].viommus[0], registers }]; }));
    assert.deepEqual(host.vm('vm1').pasids(), [1, 2]);
    assert.deepEqual(host.vm('vm1').bindings(), [['0000:00:02.0', 1]]);
    assert.equal(host.vm('vm1').createdAt, 42);
    assert.equal(host.vmByCredential('c1')?.id, 'vm1');
    assert.equal(host.space.ownerOf(9), null);
    assert.deepEqual(host.vm('vm1').viommu(0).device.guestState(), registers);
    assert.deepEqual(events, []);
  });

  const refusals: [string, (s: Loose) => void, string][] = [
    ['more PASIDs than the quota', (s) => { s.vms[0].quota = 1; }, 'EDQUOT'],
    ['a PASID held twice', (s) => { s.hostPasids.push(2); }, 'ENOSPC'],
    ['a binding to a PASID of nobody', (s) => { s.vms[0].bindings = [{ bdf: '0000:00:02.0', pasid: 7 }]; }, 'ENOENT'],
    ['a binding beyond the device\'s width', (s) => { s.vms[0].devices = [{ bdf: '0000:00:02.0', pasidBits: 1 }]; s.vms[0].bindings = [{ bdf: '0000:00:02.0', pasid: 2 }]; }, 'ERANGE'],
    ['a device with no vIOMMU for its segment', (s) => { s.vms[0].devices = [{ bdf: '0003:00:02.0', pasidBits: 20 }]; s.vms[0].bindings = []; }, 'EINVAL'],
    ['PASID 0', (s) => { s.vms[0].pasids = [0]; s.vms[0].bindings = []; }, 'EINVAL'],
    ['a VM id the host refuses', (s) => { s.vms[0].id = '-vm'; }, 'EINVAL'],
    ['registers with IP set', (s) => { s.vms[0].viommus = [{ ...s.vms[0].viommus[0], registers: { registers: { VCMD_REG: '0x1', VCMD_EO_REG: '0x0', VCRSP_REG: '0x1' }, pendingHalves: { low: false, high: false }, writer: null } }]; }, 'EINVAL'],
  ];
  for (const [what, edit, c] of refusals) {
    it(`refuses ${what} (${c}) and leaves the host empty`, () => {
      const host = new Host();
      assert.throws(() => host.restore(state(edit)), code(c));
      assert.deepEqual([host.vms().length, host.space.size, host.space.sets().length], [0, 0, 0]);
      host.restore(state()); // and the host can still be restored
    });
  }
});

describe('host journal: changes committed by another host', () => {
  it('apply through the same code and publish with the committer\'s numbers; a lost reservation is taken over', async () => {
    const journal = new SlowJournal();
    journal.auto = true;
    const host = new Host<SlowJournal>({ journal });
    const mine = await host.createVm({ id: 'mine', credential: 'cm' });
    const events = recorded(host);
    host.applyCommitted({
      events: [
        { type: 'vm-created', vm: 'theirs', quota: 0 },
        { type: 'viommu-added', vm: 'theirs', segment: 0, layout: 'B', rangeExtension: false, pasBit: 0, pss: 19 },
        { type: 'device-assigned', vm: 'theirs', bdf: '0000:00:02.0', pasidBits: 20 },
        { type: 'alloc', vm: 'theirs', pasids: [5, 6] },
        { type: 'bind', vm: 'theirs', pasid: 5, bdf: '0000:00:02.0' },
      ],
      credentials: [{ vm: 'theirs', credential: 'ct' }],
    }, { seq: 100, at: 7 });
    assert.deepEqual(events.map((e) => [e.type, e.seq, e.at]), [['vm-created', 100, 7], ['viommu-added', 101, 7], ['device-assigned', 102, 7], ['alloc', 103, 7], ['bind', 104, 7]]);
    assert.deepEqual(host.vm('theirs').bindings(), [['0000:00:02.0', 5]]);
    assert.equal(host.vmByCredential('ct')?.id, 'theirs');
    assert.equal(journal.entries.length, 1, 'nothing of it was committed again here');
    // This host reserves PASID 1 for `mine`; the other host's commit of PASID 1 wins.
    journal.auto = false;
    const lost = mine.allocPasids({ min: 1, max: 1 });
    await turn();
    host.applyCommitted({ events: [{ type: 'alloc', vm: 'theirs', pasids: [1] }] }, { seq: 105, at: 8 });
    assert.equal(host.space.ownerOf(1), host.vm('theirs').set);
    journal.release(false);
    await assert.rejects(lost, (e) => e instanceof CommitError);
    assert.equal(host.space.ownerOf(1), host.vm('theirs').set, 'the failed commit did not free their PASID');
    assert.doesNotThrow(() => host.applyCommitted({ events: [{ type: 'alloc', vm: 'theirs', pasids: [5] }] }, { seq: 106, at: 9 }), 'an already-held PASID of the same VM is no error');
  });

  it('an entry that cannot apply (a PASID committed elsewhere that this host holds for good) is an inconsistency, thrown', () => {
    const host = new Host();
    const a = host.createVm({ id: 'a' });
    host.createVm({ id: 'b' });
    void a.allocPasids({ min: 3, max: 3 });
    assert.throws(() => host.applyCommitted({ events: [{ type: 'alloc', vm: 'b', pasids: [3] }] }, { seq: 9, at: 0 }), code('EEXIST'));
  });
});
