/**
 * The namespace map: a contiguous range of PASIDs, row by row, in a square of cells on a canvas
 * (geometry in layout.ts). By default it frames the allocated PASIDs (lowest-free allocation keeps
 * them dense at the bottom of the namespace) and follows them as they grow or shrink; "whole
 * namespace" (key 0) shows all 2^20; zooming or panning leaves both for a window of the user's.
 *
 * A cell of one PASID takes its owner's colour. A cell of several PASIDs (only when the canvas has
 * fewer pixels than the window has PASIDs) takes the colour of the owner holding most of them, and
 * is free only if all of them are: an allocation never disappears from the map. While an owner is
 * selected every other owner is dimmed, and a cell shows the selected owner if it holds any of it.
 *
 * Cells are painted into an offscreen image of one pixel per cell, then scaled up without
 * smoothing; events repaint only the rows they touch. Large cells get grid lines, the owner's
 * pattern, a white ring when the PASID is bound, and from 44 device pixels the PASID's number.
 *
 * Keyboard: arrows move the cursor one cell (Shift: eight), Page Up/Down a window, Home/End the
 * row's ends (Ctrl: PASID 1 / 0xfffff); + and - zoom around the cursor, 0 the whole namespace,
 * F frames the allocated PASIDs; Enter or Space opens the cursor's PASID. Mouse: click opens a
 * PASID, the wheel zooms at the pointer, dragging pans.
 */
import { dim, PATTERN_INK, pixelOf, luminance, traceDot, tracePattern } from './colors.ts';
import {
  CAPACITY, capacityAt, cellOf, frame, lastShown, levelAt, pasidAt, resize, rowSpan, viewAt, zoomAround, type View,
} from './layout.ts';
import { FREE, type NamespaceModel } from './model.ts';

/** Cells at least this many device pixels wide get grid lines, patterns and binding marks. */
const DETAIL_PX = 6;
/** Cells at least this wide get their PASID written in (and their owner from 80). */
const LABEL_PX = 44;

export type MapMode = 'fit' | 'whole' | 'manual';

export interface MapViewOptions {
  /** Open a PASID's details (click, Enter, Space). */
  readonly onOpen: (pasid: number) => void;
  /** The cursor moved or its cell changed. */
  readonly onCursor: (pasid: number) => void;
  /** The pointer is over a cell: its first PASID and PASIDs per cell (null: left the map). */
  readonly onHover: (cell: { first: number; count: number } | null) => void;
  /** The window or mode changed. */
  readonly onView: () => void;
  /** A key the map does not use itself; return true if it was handled. */
  readonly onKey?: (ev: KeyboardEvent) => boolean;
}

export class MapView {
  readonly canvas: HTMLCanvasElement;
  readonly #model: NamespaceModel;
  readonly #opts: MapViewOptions;
  /** The colour of each cell of the window (cols x cols). */
  #cellPx = new Uint32Array(0);
  /** The owner index each cell is drawn with. */
  #shown = new Uint16Array(0);
  /** The canvas's pixels: device pixel x shows cell column floor((x + 0.5) * cols / width). */
  #screen: ImageData | null = null;
  #screenPx = new Uint32Array(0);
  /** Cell column (or row) of each device pixel. */
  #cellOfPx = new Int32Array(0);
  #counts = new Uint32Array(0);
  /** The model's cells two at a time (little-endian, as every browser is). */
  readonly #words: Uint32Array;
  #palette = new Uint32Array(0);
  #highlight: number | null = null;
  #view: View;
  #mode: MapMode = 'fit';
  /** Canvas width in device pixels the view was laid out for. */
  #devicePx = 0;
  /** Model version the fit was computed at. */
  #fittedAt = -1;
  cursor = 1;
  #dirtyAll = true;
  #dirtyLo = Infinity;
  #dirtyHi = -1;
  #frame = 0;
  #drag: { y: number; start: number; moved: boolean } | null = null;
  /** Resolves each time a frame has been drawn (the bench and tests wait on it). */
  #drawn: (() => void)[] = [];

  constructor(canvas: HTMLCanvasElement, model: NamespaceModel, opts: MapViewOptions) {
    this.canvas = canvas;
    this.#model = model;
    this.#opts = opts;
    this.#view = viewAt(levelAt(0, 1024), 0);
    this.#words = new Uint32Array(model.cells.buffer, model.cells.byteOffset, model.cells.length >> 1);
    this.#rebuildPalette();
    model.on((c) => {
      if (c.kind === 'reset' || c.kind === 'owners') {
        this.#rebuildPalette();
        this.#dirtyAll = true;
      } else if (c.kind === 'cells') {
        const v = this.#view;
        for (const p of c.pasids) {
          const at = cellOf(v, p);
          if (at === null) continue;
          if (at.row < this.#dirtyLo) this.#dirtyLo = at.row;
          if (at.row > this.#dirtyHi) this.#dirtyHi = at.row;
        }
        if (c.pasids.includes(this.cursor)) this.#opts.onCursor(this.cursor);
      }
      this.schedule();
    });
    new ResizeObserver(() => this.schedule()).observe(canvas);
    this.#listen();
  }

  get view(): View {
    return this.#view;
  }

  get mode(): MapMode {
    return this.#mode;
  }

  get highlight(): number | null {
    return this.#highlight;
  }

  /** Dim every owner but one (null: show all). */
  setHighlight(index: number | null): void {
    this.#highlight = index;
    this.#rebuildPalette();
    this.#dirtyAll = true;
    this.schedule();
  }

  #rebuildPalette(): void {
    const owners = this.#model.owners;
    const pal = new Uint32Array(Math.max(owners.length, 2));
    for (const o of owners) pal[o.index] = this.#highlight === null || this.#highlight === o.index || o.index === FREE ? o.pixel : pixelOf(dim(o.rgb));
    this.#palette = pal;
    if (this.#counts.length < owners.length) this.#counts = new Uint32Array(owners.length + 64);
  }

  // ---------------------------------------------------------------- modes and windows

  /** Frame the allocated PASIDs, and keep framing them as they change. */
  fitAllocated(): void {
    this.#mode = 'fit';
    this.#fittedAt = -1;
    this.#relayout(true);
  }

  /** The whole namespace (and keep it so). */
  showWhole(): void {
    this.#mode = 'whole';
    this.#relayout(true);
  }

  /** Frame [lo, hi] (a window of the user's from then on); the cursor goes to `cursor` (default lo). */
  frameRange(lo: number, hi: number, cursor = lo): void {
    this.#mode = 'manual';
    this.#setView(frame(lo, hi, this.#px0()));
    this.cursor = Math.max(1, Math.min(CAPACITY - 1, cursor));
    this.#opts.onCursor(this.cursor);
    this.#opts.onView();
    this.schedule();
  }

  #px0(): number {
    return this.#devicePx > 0 ? this.#devicePx : Math.max(1, Math.round(this.canvas.clientWidth * (window.devicePixelRatio || 1))) || 1024;
  }

  /** Recompute the window for the mode (and the canvas size); `announce` reports even if unchanged. */
  #relayout(announce: boolean): void {
    const px = this.#px0();
    let v: View;
    if (this.#mode === 'whole') v = viewAt(levelAt(0, px), 0);
    else if (this.#mode === 'fit') {
      const { lo, hi } = this.#model.loaded ? this.#model.bounds() : { lo: -1, hi: -1 };
      this.#fittedAt = this.#model.version;
      v = lo < 0 ? viewAt(levelAt(0, px), 0) : frame(lo, hi, px);
    } else v = resize(this.#view, px);
    const changed = this.#setView(v);
    if (changed || announce) {
      this.#opts.onView();
      this.schedule();
    }
  }

  #setView(v: View): boolean {
    const o = this.#view;
    if (o.zoom === v.zoom && o.cols === v.cols && o.perCell === v.perCell && o.start === v.start) return false;
    this.#view = v;
    this.#dirtyAll = true;
    return true;
  }

  /** Pan or zoom by the user: the window is theirs from now on. */
  #userView(v: View): void {
    this.#mode = 'manual';
    this.#setView(v);
    this.#opts.onView();
    this.schedule();
  }

  // ---------------------------------------------------------------- drawing

  /** Resolves after the next frame is on screen. */
  drawn(): Promise<void> {
    return new Promise((r) => {
      this.#drawn.push(r);
      this.schedule();
    });
  }

  schedule(): void {
    if (this.#frame !== 0) return;
    this.#frame = requestAnimationFrame(() => {
      this.#frame = 0;
      // Not displayed (before sign-in): nothing to draw; the resize observer calls again when it is.
      if (this.canvas.clientWidth === 0) return;
      this.#sizeCanvas();
      // Before the first map this paints an empty namespace: cheap, while the map is on its way,
      // and it readies the painting code for the real one.
      if (this.#mode === 'fit' && this.#fittedAt !== this.#model.version) this.#relayout(false);
      this.#paint();
      this.#draw();
      const waiting = this.#drawn;
      this.#drawn = [];
      for (const r of waiting) r();
    });
  }

  #sizeCanvas(): void {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const size = Math.max(1, Math.round(c.clientWidth * dpr));
    if (c.width !== size || c.height !== size) {
      c.width = size;
      c.height = size;
    }
    if (size !== this.#devicePx && c.clientWidth > 0) {
      this.#devicePx = size;
      this.#relayout(false);
    }
  }

  /**
   * Paint the cells' colours (all, or the dirty rows), then the canvas pixels they cover. The
   * scaling is ours, not the browser's: every device pixel shows exactly one cell, the one its
   * centre falls in, so a cell's colour is where the readout and the pointer say it is.
   */
  #paint(): void {
    const v = this.#view;
    const cols = v.cols;
    const W = this.canvas.width;
    if (this.#cellPx.length !== cols * cols) {
      this.#cellPx = new Uint32Array(cols * cols);
      this.#shown = new Uint16Array(cols * cols);
      this.#dirtyAll = true;
    }
    if (this.#screen === null || this.#screen.width !== W || this.#cellOfPx.length !== W || this.#cellOfPx[W - 1] !== cols - 1) {
      const ctx = this.canvas.getContext('2d', { alpha: false });
      if (ctx === null) return;
      this.#screen = ctx.createImageData(W, W);
      this.#screenPx = new Uint32Array(this.#screen.data.buffer);
      this.#cellOfPx = new Int32Array(W);
      for (let x = 0; x < W; x++) this.#cellOfPx[x] = Math.min(cols - 1, Math.floor(((x + 0.5) * cols) / W));
      this.#dirtyAll = true;
    }
    let lo: number;
    let hi: number;
    if (this.#dirtyAll) {
      lo = 0;
      hi = cols - 1;
    } else if (this.#dirtyHi >= this.#dirtyLo) {
      lo = this.#dirtyLo;
      hi = this.#dirtyHi;
    } else return;
    this.#dirtyAll = false;
    this.#dirtyLo = Infinity;
    this.#dirtyHi = -1;

    const cells = this.#model.cells;
    const pal = this.#palette;
    const px = this.#cellPx;
    const shown = this.#shown;
    const k = v.perCell;
    const first = lo * cols;
    const end = (hi + 1) * cols;
    if (k === 1) {
      for (let i = first, p = v.start + first; i < end; i++, p++) {
        const o = cells[p] as number;
        shown[i] = o;
        px[i] = pal[o] as number;
      }
    } else {
      const counts = this.#counts;
      const hl = this.#highlight ?? -1;
      const words = this.#words;
      for (let i = first, p = v.start + first * k; i < end; i++, p += k) {
        // Most cells of a busy namespace are one owner's run: no counting for those. Two cells
        // at a time (k is even and p a multiple of k): both halves of every word alike.
        const w0 = words[p >> 1] as number;
        if ((w0 & 0xffff) === w0 >>> 16) {
          let j = (p >> 1) + 1;
          const end = (p + k) >> 1;
          while (j < end && words[j] === w0) j++;
          if (j === end) {
            shown[i] = w0 & 0xffff;
            px[i] = pal[w0 & 0xffff] as number;
            continue;
          }
        }
        // The owner that first holds the most of the cell's PASIDs (ties: the first to get there).
        let best = FREE;
        let bestN = 0;
        let hasHl = false;
        if (k <= 16) {
          // Few PASIDs: count each one's owner among those before it (no table to clear).
          for (let j = p; j < p + k; j++) {
            const o = cells[j] as number;
            if (o === FREE) continue;
            let n = 1;
            for (let q = p; q < j; q++) if (cells[q] === o) n++;
            if (n > bestN) {
              bestN = n;
              best = o;
            }
            if (o === hl) hasHl = true;
          }
        } else {
          for (let j = p; j < p + k; j++) {
            const o = cells[j] as number;
            if (o === FREE) continue;
            const n = ((counts[o] as number) + 1) | 0;
            counts[o] = n;
            if (n > bestN) {
              bestN = n;
              best = o;
            }
            if (o === hl) hasHl = true;
          }
          if (bestN > 0) for (let j = p; j < p + k; j++) counts[cells[j] as number] = 0;
        }
        const o = hasHl ? hl : best;
        shown[i] = o;
        px[i] = pal[o] as number;
      }
    }
    // The device pixel rows of cell rows lo..hi; rows of one cell row are copies of its first.
    const of = this.#cellOfPx;
    const out = this.#screenPx;
    let y = 0;
    while (y < W && (of[y] as number) < lo) y++;
    for (; y < W && (of[y] as number) <= hi; y++) {
      const base = (of[y] as number) * cols;
      const row = y * W;
      if (y > 0 && of[y - 1] === of[y]) {
        out.copyWithin(row, row - W, row);
        continue;
      }
      for (let x = 0; x < W; x++) out[row + x] = px[base + (of[x] as number)] as number;
    }
  }

  #draw(): void {
    const c = this.canvas;
    const ctx = c.getContext('2d', { alpha: false });
    if (ctx === null) return;
    const v = this.#view;
    const W = c.width;
    const cols = v.cols;
    const cell = W / cols;
    const dpr = window.devicePixelRatio || 1;
    if (this.#screen !== null) ctx.putImageData(this.#screen, 0, 0);
    const owners = this.#model.owners;

    if (cell >= DETAIL_PX) {
      ctx.strokeStyle = 'rgba(255,255,255,0.10)';
      ctx.lineWidth = 1;
      ctx.beginPath();
      for (let i = 1; i < cols; i++) {
        const x = Math.round(i * cell) + 0.5;
        ctx.moveTo(x, 0);
        ctx.lineTo(x, W);
        ctx.moveTo(0, x);
        ctx.lineTo(W, x);
      }
      ctx.stroke();
      // Patterns: same-coloured owners told apart. One path for the strokes, one for the dots.
      ctx.strokeStyle = PATTERN_INK;
      ctx.fillStyle = PATTERN_INK;
      ctx.lineWidth = Math.max(1, cell / 8);
      ctx.lineCap = 'round';
      const strokes = new Path2D();
      const dots = new Path2D();
      const shown = this.#shown;
      for (let i = 0; i < cols * cols; i++) {
        const pat = owners[shown[i] as number]?.pattern ?? 0;
        if (pat === 0) continue;
        const x = (i % cols) * cell;
        const y = Math.floor(i / cols) * cell;
        if (pat === 5) traceDot(dots, x, y, cell);
        else tracePattern(strokes, pat, x, y, cell);
      }
      ctx.stroke(strokes);
      ctx.fill(dots);
      ctx.lineCap = 'butt';
      // Bound PASIDs: a white ring in the cell.
      ctx.strokeStyle = '#ffffff';
      ctx.lineWidth = Math.max(1, cell / 10);
      for (const p of this.#model.bound.keys()) {
        const at = cellOf(v, p);
        if (at === null) continue;
        ctx.beginPath();
        ctx.arc((at.col + 0.5) * cell, (at.row + 0.5) * cell, cell * 0.3, 0, 2 * Math.PI);
        ctx.stroke();
      }
    }
    if (cell >= LABEL_PX) {
      const fs = Math.max(9, Math.min(14 * dpr, cell / 5.5));
      ctx.font = `${fs}px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace`;
      ctx.textAlign = 'center';
      ctx.textBaseline = 'middle';
      for (let row = 0; row < cols; row++) {
        for (let col = 0; col < cols; col++) {
          const p = pasidAt(v, row, col);
          const o = owners[this.#shown[row * cols + col] as number] ?? owners[FREE];
          if (o === undefined) continue;
          const light = o.index !== FREE && luminance(o.rgb) > 0.18 && (this.#highlight === null || this.#highlight === o.index);
          ctx.fillStyle = light ? '#000000' : '#e6e9ee';
          const cx = (col + 0.5) * cell;
          const cy = (row + 0.5) * cell;
          const named = cell >= 80 && o.index !== FREE;
          ctx.fillText(`0x${p.toString(16)}`, cx, named ? cy - fs * 0.6 : cy);
          if (named) ctx.fillText(o.label.length > 10 ? `${o.label.slice(0, 9)}…` : o.label, cx, cy + fs * 0.7);
        }
      }
    }
    // The cursor: a yellow box (at least 10 px, so it shows when cells are tiny) with a dark outline.
    const at = cellOf(v, this.cursor);
    if (at !== null) {
      const box = Math.max(cell, 10 * dpr);
      const x = (at.col + 0.5) * cell - box / 2;
      const y = (at.row + 0.5) * cell - box / 2;
      ctx.lineWidth = 4 * dpr;
      ctx.strokeStyle = '#000000';
      ctx.strokeRect(x, y, box, box);
      ctx.lineWidth = 2 * dpr;
      ctx.strokeStyle = '#ffd34d';
      ctx.strokeRect(x, y, box, box);
    }
    const d = c.dataset;
    d.seq = String(this.#model.seq);
    d.start = String(v.start);
    d.last = String(lastShown(v));
    d.cols = String(v.cols);
    d.perCell = String(v.perCell);
    d.zoom = String(v.zoom);
    d.mode = this.#mode;
    d.cursor = String(this.cursor);
  }

  // ---------------------------------------------------------------- navigation

  /** Scroll so the cursor is inside the window. */
  #follow(): void {
    const v = this.#view;
    const span = rowSpan(v);
    if (this.cursor < v.start) this.#userView(viewAt(v, this.cursor));
    else if (this.cursor > lastShown(v)) this.#userView(viewAt(v, this.cursor - (v.cols - 1) * span));
  }

  /** Put the cursor on a PASID (0 is no PASID: the cursor stays in 1..2^20-1). */
  moveTo(pasid: number, center = false): void {
    this.cursor = Math.max(1, Math.min(CAPACITY - 1, Math.trunc(pasid)));
    if (center) this.#userView(viewAt(this.#view, this.cursor - capacityAt(this.#view.zoom) / 2));
    else this.#follow();
    this.#opts.onCursor(this.cursor);
    this.#opts.onView();
    this.schedule();
  }

  /** Zoom by `steps` keeping `anchor`'s row at height `fy` (default the cursor's, centred). */
  zoomBy(steps: number, anchor = this.cursor, fy = 0.5): void {
    const v = zoomAround(this.#view, steps, this.#px0(), anchor, fy);
    if (v.zoom === this.#view.zoom) return;
    if (v.zoom === 0) {
      this.showWhole();
      return;
    }
    this.#userView(v);
  }

  /** The cell under a pointer event. */
  #cellAt(ev: { clientX: number; clientY: number }): { first: number; fy: number } {
    const r = this.canvas.getBoundingClientRect();
    const fx = Math.min(0.999999, Math.max(0, (ev.clientX - r.left) / r.width));
    const fy = Math.min(0.999999, Math.max(0, (ev.clientY - r.top) / r.height));
    const v = this.#view;
    return { first: pasidAt(v, Math.floor(fy * v.cols), Math.floor(fx * v.cols)), fy };
  }

  #listen(): void {
    const c = this.canvas;
    c.addEventListener('keydown', (ev) => this.#key(ev));
    c.addEventListener('wheel', (ev) => {
      ev.preventDefault();
      const at = this.#cellAt(ev);
      this.zoomBy(ev.deltaY < 0 ? 1 : -1, at.first, at.fy);
    }, { passive: false });
    c.addEventListener('pointerdown', (ev) => {
      if (ev.button !== 0) return;
      c.setPointerCapture(ev.pointerId);
      this.#drag = { y: ev.clientY, start: this.#view.start, moved: false };
    });
    c.addEventListener('pointermove', (ev) => {
      const at = this.#cellAt(ev);
      this.#opts.onHover({ first: at.first, count: this.#view.perCell });
      const d = this.#drag;
      if (d === null) return;
      const dy = ev.clientY - d.y;
      if (!d.moved && Math.abs(dy) < 4) return;
      d.moved = true;
      const v = this.#view;
      const rows = Math.round(dy / (c.getBoundingClientRect().height / v.cols));
      const next = viewAt(v, d.start - rows * rowSpan(v));
      if (next.start !== v.start) this.#userView(next);
    });
    c.addEventListener('pointerup', (ev) => {
      const d = this.#drag;
      this.#drag = null;
      if (d === null || d.moved) return;
      const p = this.#cellAt(ev).first;
      c.focus();
      if (p === 0 && this.#view.perCell === 1) return; // PASID 0 is no PASID
      this.moveTo(Math.max(1, p));
      this.#opts.onOpen(Math.max(1, p));
    });
    c.addEventListener('pointercancel', () => {
      this.#drag = null;
    });
    c.addEventListener('pointerleave', () => this.#opts.onHover(null));
  }

  #key(ev: KeyboardEvent): void {
    const v = this.#view;
    const span = rowSpan(v);
    const k = v.perCell;
    const n = ev.shiftKey ? 8 : 1;
    const rowStart = Math.floor(this.cursor / span) * span;
    switch (ev.key) {
      case 'ArrowLeft': this.moveTo(this.cursor - n * k); break;
      case 'ArrowRight': this.moveTo(this.cursor + n * k); break;
      case 'ArrowUp': this.moveTo(this.cursor - n * span); break;
      case 'ArrowDown': this.moveTo(this.cursor + n * span); break;
      case 'PageUp':
        this.cursor = Math.max(1, this.cursor - capacityAt(v.zoom));
        this.#userView(viewAt(v, v.start - capacityAt(v.zoom)));
        this.moveTo(this.cursor);
        break;
      case 'PageDown':
        this.cursor = Math.min(CAPACITY - 1, this.cursor + capacityAt(v.zoom));
        this.#userView(viewAt(v, v.start + capacityAt(v.zoom)));
        this.moveTo(this.cursor);
        break;
      case 'Home': this.moveTo(ev.ctrlKey ? 1 : rowStart); break;
      case 'End': this.moveTo(ev.ctrlKey ? CAPACITY - 1 : rowStart + span - 1); break;
      case '+': case '=': this.zoomBy(1); break;
      case '-': case '_': this.zoomBy(-1); break;
      case '0': this.showWhole(); break;
      case 'f': case 'F': this.fitAllocated(); break;
      case 'Enter': case ' ': this.#opts.onOpen(this.cursor); break;
      default:
        if (this.#opts.onKey?.(ev) === true) break;
        return;
    }
    ev.preventDefault();
  }
}

