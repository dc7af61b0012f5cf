/**
 * The dashboard's rules that need no browser (web/ modules are plain TypeScript): owner colours
 * (contrast, distinctness, a function of the VM id, patterns for same-coloured VMs), the map's
 * windows (framing, zoom levels, readouts), the page's model under both event shapes (one event
 * per PASID, one per batch), and the feed's grouping of a batch into one line.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  assignPatterns, colourSlot, contrast, FREE_CSS, HOST_CSS, oklabDistance, PAGE_BG, PALETTE, parseHex, PATTERNS, vmColour,
} from '../web/colors.ts';
import {
  CAPACITY, capacityAt, cellOf, describeView, frame, lastShown, levelAt, MAX_ZOOM, pasidAt, rowSpan, viewAt, zoomAround,
} from '../web/layout.ts';
import { describeEvent, describeLine, groupEvents, JOIN_MS, rangesOf, toPageEvent, type PageEvent } from '../web/events.ts';
import { FREE, HOST, NamespaceModel } from '../web/model.ts';
import type { AuthorityEvent } from '../src/client/index.ts';

describe('owner colours', () => {
  it('24 colours, each at least 3:1 against free cells and the page, any two at least 0.1 apart in OKLab, none near the host grey', () => {
    assert.equal(new Set(PALETTE).size, 24);
    const free = parseHex(FREE_CSS);
    const bg = parseHex(PAGE_BG);
    const host = parseHex(HOST_CSS);
    for (const css of PALETTE) {
      const c = parseHex(css);
      assert.ok(contrast(c, free) >= 3, `${css} on free: ${contrast(c, free).toFixed(2)}`);
      assert.ok(contrast(c, bg) >= 3, `${css} on the page: ${contrast(c, bg).toFixed(2)}`);
      assert.ok(oklabDistance(c, host) >= 0.1, `${css} is too close to the host's grey`);
    }
    for (let i = 0; i < PALETTE.length; i++) {
      for (let j = i + 1; j < PALETTE.length; j++) {
        const d = oklabDistance(parseHex(PALETTE[i] as string), parseHex(PALETTE[j] as string));
        assert.ok(d >= 0.1, `${PALETTE[i]} and ${PALETTE[j]} are ${d.toFixed(3)} apart`);
      }
    }
  });

  it('a VM\'s colour is a function of its id alone, and ids spread over the palette', () => {
    assert.deepEqual(vmColour('db-primary'), vmColour('db-primary'));
    assert.equal(vmColour('db-primary').css, PALETTE[colourSlot('db-primary')]);
    const slots = new Set(Array.from({ length: 200 }, (_, i) => colourSlot(`vm-${i}`)));
    assert.equal(slots.size, 24, 'every colour is used by some of 200 ids');
    // Neighbouring names do not crowd into one colour.
    const first = Array.from({ length: 12 }, (_, i) => colourSlot(`vm${i + 1}`));
    assert.ok(new Set(first).size >= 8, `vm1..vm12 take ${new Set(first).size} colours`);
  });

  it('patterns tell apart same-coloured VMs, oldest plain; 30 VMs all look different; a new VM changes no other', () => {
    const vms = Array.from({ length: 30 }, (_, i) => ({ id: `tenant-${i}`, createdAt: 1000 + i }));
    const patterns = assignPatterns(vms);
    const looks = vms.map((vm) => `${vmColour(vm.id).css}/${patterns.get(vm.id)}`);
    assert.equal(new Set(looks).size, 30, looks.join(' '));
    // Within one colour the oldest is plain and the others take patterns 1, 2 ... by age.
    const bySlot = new Map<number, { id: string; createdAt: number }[]>();
    for (const vm of vms) bySlot.set(colourSlot(vm.id), [...(bySlot.get(colourSlot(vm.id)) ?? []), vm]);
    const shared = [...bySlot.values()].find((g) => g.length > 1);
    assert.ok(shared !== undefined, '30 ids in 24 colours share one');
    assert.deepEqual(shared.map((vm) => patterns.get(vm.id)), shared.map((_, i) => i));
    // A VM created later leaves every existing VM's colour and pattern as they were.
    const later = assignPatterns([...vms, { id: 'tenant-new', createdAt: 5000 }]);
    for (const vm of vms) assert.equal(later.get(vm.id), patterns.get(vm.id), vm.id);
    assert.equal(PATTERNS.length, 8);
  });
});

describe('map windows', () => {
  it('zoom z shows 4^(10-z) PASIDs; the canvas size decides cells per row and PASIDs per cell', () => {
    for (const px of [320, 592, 1024, 2048]) {
      for (let z = 0; z <= MAX_ZOOM; z++) {
        const l = levelAt(z, px);
        assert.equal(l.cols * l.cols * l.perCell, capacityAt(z), `z ${z} at ${px} px`);
        assert.ok(l.cols <= px && l.cols <= 1024, 'a cell is at least one device pixel');
      }
    }
    assert.deepEqual(levelAt(0, 592), { zoom: 0, cols: 512, perCell: 4 });
    assert.deepEqual(levelAt(0, 1024), { zoom: 0, cols: 1024, perCell: 1 });
    assert.deepEqual(levelAt(MAX_ZOOM, 592), { zoom: 7, cols: 8, perCell: 1 });
  });

  it('frames the occupied part: the deepest window holding all of it', () => {
    const px = 592;
    assert.deepEqual(frame(1, 5, px), { zoom: 7, cols: 8, perCell: 1, start: 0 });
    assert.deepEqual(frame(1, 2000, px), { zoom: 4, cols: 64, perCell: 1, start: 0 });
    assert.deepEqual(frame(1, 1_000_000, px), { zoom: 0, cols: 512, perCell: 4, start: 0 });
    // A batch in the middle: centred, rows aligned, all of it inside.
    const v = frame(0x30d40, 0x30ddf, px);
    assert.equal(v.zoom, 6);
    assert.ok(v.start <= 0x30d40 && lastShown(v) >= 0x30ddf && v.start % rowSpan(v) === 0, describeView(v));
    // The top of the namespace: the window ends at 0xfffff.
    const top = frame(0xfffff, 0xfffff, px);
    assert.equal(lastShown(top), 0xfffff);
  });

  it('cells and PASIDs map both ways, and the readout says exactly what is shown', () => {
    const v = viewAt(levelAt(3, 592), 0x12345);
    assert.equal(v.start % rowSpan(v), 0);
    for (const p of [v.start, v.start + 1, lastShown(v), v.start + 777]) {
      const c = cellOf(v, p);
      assert.ok(c !== null);
      const first = pasidAt(v, c.row, c.col);
      assert.ok(first <= p && p < first + v.perCell);
    }
    assert.equal(cellOf(v, v.start - 1), null);
    assert.equal(cellOf(v, lastShown(v) + 1), null);
    assert.equal(describeView(viewAt(levelAt(0, 592), 0)), 'PASIDs 0x0–0xfffff (1,048,576) · 4 PASIDs per cell · 512 cells per row');
    assert.equal(describeView(viewAt(levelAt(5, 592), 0x400)), 'PASIDs 0x400–0x7ff (1,024) · 1 PASID per cell · 32 cells per row');
  });

  it('zooming keeps the anchor in view, and the window never leaves the namespace', () => {
    let v = viewAt(levelAt(0, 592), 0);
    for (let i = 0; i < MAX_ZOOM; i++) {
      v = zoomAround(v, 1, 592, 0xabcde);
      assert.ok(v.start <= 0xabcde && lastShown(v) >= 0xabcde, describeView(v));
    }
    assert.equal(zoomAround(v, 1, 592, 0xabcde).zoom, MAX_ZOOM);
    const end = viewAt(levelAt(2, 592), CAPACITY);
    assert.equal(lastShown(end), CAPACITY - 1);
  });
});

const stamp = (seq: number, at = 1_000) => ({ seq, at });
/** Events as a service that announces one per PASID sends them (the type of the day may differ). */
const oldShape = (e: Record<string, unknown>) => e as unknown as AuthorityEvent;

describe('events of either shape', () => {
  it('one event per PASID and one per batch load the same cells, counts and runs', () => {
    const map = { seq: 0, capacity: CAPACITY, owners: [], cells: new Uint8Array(CAPACITY) };
    const a = new NamespaceModel();
    const b = new NamespaceModel();
    a.load(map);
    b.load(map);
    let seq = 0;
    for (let p = 1; p <= 160; p++) a.apply(toPageEvent(oldShape({ type: 'alloc', vm: 'vm1', pasid: p, ...stamp(++seq) })));
    a.apply(toPageEvent(oldShape({ type: 'free', vm: 'vm1', pasid: 50, ...stamp(++seq) })));
    b.apply(toPageEvent(oldShape({ type: 'alloc', vm: 'vm1', pasids: Array.from({ length: 160 }, (_, i) => i + 1), ...stamp(1) })));
    b.apply(toPageEvent(oldShape({ type: 'free', vm: 'vm1', pasids: [50], ...stamp(2) })));
    let gaps = 0;
    b.onGap = () => gaps++;
    assert.deepEqual(a.cells, b.cells);
    for (const m of [a, b]) {
      const o = m.find('vm1');
      assert.ok(o !== undefined);
      assert.equal(o.count, 159);
      assert.deepEqual({ lo: m.summary().lo, hi: m.summary().hi, runs: m.summary().runs[o.index] }, { lo: 1, hi: 160, runs: 2 });
      assert.deepEqual([...m.runsOf(o.index)], [1, 49, 51, 110]);
      assert.equal(m.owners[FREE]?.count, CAPACITY - 1 - 159);
    }
    // A skipped seq is a gap: the page reloads the map.
    b.apply(toPageEvent(oldShape({ type: 'alloc', vm: null, pasids: [900], ...stamp(5) })));
    assert.equal(gaps, 1);
    assert.equal(b.ownerAt(900).index, HOST);
  });

  it('VM patterns follow creation times from the events', () => {
    const m = new NamespaceModel();
    m.load({ seq: 0, capacity: CAPACITY, owners: [], cells: new Uint8Array(CAPACITY) });
    // Two ids of one colour: the older is plain whatever their names.
    const ids = Array.from({ length: 100 }, (_, i) => `x${i}`);
    const [p, q] = ids.filter((id) => colourSlot(id) === colourSlot('x0')).slice(0, 2) as [string, string];
    m.apply(toPageEvent(oldShape({ type: 'vm-created', vm: q, quota: 0, seq: 1, at: 10 })));
    m.apply(toPageEvent(oldShape({ type: 'vm-created', vm: p, quota: 0, seq: 2, at: 20 })));
    assert.equal(m.find(q)?.pattern, 0);
    assert.equal(m.find(p)?.pattern, 1);
    assert.equal(m.find(p)?.css, m.find(q)?.css);
  });
});

describe('feed lines', () => {
  const alloc = (vm: string | null, pasid: number, seq: number, at = 1_000): PageEvent => toPageEvent(oldShape({ type: 'alloc', vm, pasid, seq, at }));

  it('a batch sent one event per PASID is one line; so is a batch event', () => {
    const singles = Array.from({ length: 160 }, (_, i) => alloc('vm1', 0x30d40 + i, 100 + i, 5_000 + (i % 3)));
    const lines = groupEvents(singles);
    assert.equal(lines.length, 1);
    assert.equal(describeLine(lines[0]!), '160 PASIDs allocated to vm1: 0x30d40–0x30ddf');
    assert.equal(lines[0]!.events, 160);
    const batch = groupEvents([toPageEvent(oldShape({ type: 'alloc', vm: 'vm1', pasids: Array.from({ length: 160 }, (_, i) => 0x30d40 + i), seq: 7, at: 1 }))]);
    assert.equal(describeLine(batch[0]!), '160 PASIDs allocated to vm1: 0x30d40–0x30ddf');
  });

  it('another VM, another type, a seq gap or time apart starts a new line; a batch event is never joined', () => {
    const lines = groupEvents([
      alloc('vm1', 1, 1), alloc('vm1', 2, 2),
      alloc('vm2', 3, 3),
      toPageEvent(oldShape({ type: 'free', vm: 'vm2', pasid: 3, seq: 4, at: 1_000 })),
      alloc('vm2', 4, 6), // seq 5 is missing
      alloc('vm2', 5, 7, 1_000 + JOIN_MS + 1),
      toPageEvent(oldShape({ type: 'alloc', vm: 'vm2', pasids: [6, 7], seq: 8, at: 1_000 + JOIN_MS + 1 })),
      alloc('vm2', 8, 9, 1_000 + JOIN_MS + 1),
    ]);
    assert.deepEqual(lines.map(describeLine), [
      '2 PASIDs allocated to vm1: 0x1–0x2',
      'PASID 0x3 allocated to vm2',
      'PASID 0x3 freed by vm2',
      'PASID 0x4 allocated to vm2',
      'PASID 0x5 allocated to vm2',
      '2 PASIDs allocated to vm2: 0x6–0x7',
      'PASID 0x8 allocated to vm2',
    ]);
  });

  it('scattered PASIDs are listed as ranges, the first few and how many', () => {
    assert.deepEqual(rangesOf([9, 3, 4, 5, 20, 21, 4]), [[3, 5], [9, 9], [20, 21]]);
    const e = toPageEvent(oldShape({ type: 'free', vm: null, pasids: [1, 2, 10, 20, 30, 31], seq: 1, at: 1 }));
    assert.equal(describeEvent(e), '6 PASIDs freed by the host: 0x1–0x2, 0xa, 0x14, … (4 ranges)');
  });
});
