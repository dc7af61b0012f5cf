/**
 * The namespace map: all 2^20 PASIDs as 1024 x 1024 cells on a canvas (PASID p at row p >> 10,
 * column p & 1023), coloured by owner. The cells are painted once into an offscreen 1024 x 1024
 * image (one pixel per PASID, ~3 ms for the whole namespace) and events repaint only the rows
 * they touch; the visible canvas shows a square window of it, scaled: zoom 1 is the whole
 * namespace, each step halves the window, down to 8 x 8 PASIDs with their numbers written in.
 *
 * Keyboard: arrows move the cursor one PASID (Shift: an eighth of the window), Page Up/Down a
 * window, Home/End the row's ends; + and - zoom around the cursor, 0 shows everything; Enter or
 * Space opens the cursor's details. Mouse: click opens a PASID, the wheel zooms, drag pans.
 */
import { CAPACITY, FREE, type NamespaceModel } from './model.ts';
import { dim, luminance, ownerColor, pixelOf } from './colors.ts';

export const GRID = 1024;
export const MAX_ZOOM = 7;
/** Cells at least this many device pixels wide get grid lines and binding marks. */
const DETAIL_PX = 6;
/** Cells at least this wide get their PASID written in. */
const LABEL_PX = 44;

export interface MapViewOptions {
  /** Open a PASID's details (click, Enter, Space). */
  readonly onOpen: (pasid: number) => void;
  /** The cursor moved or its cell changed. */
  readonly onCursor: (pasid: number) => void;
  /** The pointer is over a PASID (null: left the map). */
  readonly onHover: (pasid: number | null) => void;
  /** Zoom or window changed. */
  readonly onView: () => void;
}

export class MapView {
  readonly canvas: HTMLCanvasElement;
  readonly #model: NamespaceModel;
  readonly #opts: MapViewOptions;
  readonly #grid: HTMLCanvasElement;
  readonly #gctx: CanvasRenderingContext2D;
  readonly #img: ImageData;
  readonly #px: Uint32Array;
  #palette = new Uint32Array(0);
  #highlight: number | null = null;
  /** log2 of the magnification: the window is GRID >> zoom cells wide. */
  zoom = 0;
  /** Top-left cell of the window. */
  vx = 0;
  vy = 0;
  cursor = 1;
  #dirtyAll = true;
  #dirtyLo = GRID;
  #dirtyHi = -1;
  #frame = 0;
  #drag: { x: number; y: number; vx: number; vy: number; moved: boolean } | null = null;
  /** Resolves each time a frame has been drawn (the bench and tests wait on it). */
  #drawn: (() => void)[] = [];

  constructor(canvas: HTMLCanvasElement, model: NamespaceModel, opts: MapViewOptions) {
    this.canvas = canvas;
    this.#model = model;
    this.#opts = opts;
    this.#grid = document.createElement('canvas');
    this.#grid.width = GRID;
    this.#grid.height = GRID;
    const g = this.#grid.getContext('2d', { alpha: false });
    if (g === null) throw new Error('no 2D canvas');
    this.#gctx = g;
    this.#img = g.createImageData(GRID, GRID);
    this.#px = new Uint32Array(this.#img.data.buffer);
    this.#rebuildPalette();
    model.on((c) => {
      if (c.kind === 'reset' || c.kind === 'owners') {
        this.#rebuildPalette();
        this.#dirtyAll = true;
      } else if (c.kind === 'cells') {
        for (const p of c.pasids) {
          this.#px[p] = this.#palette[this.#model.cells[p] as number] as number;
          const row = p >> 10;
          if (row < this.#dirtyLo) this.#dirtyLo = row;
          if (row > this.#dirtyHi) this.#dirtyHi = row;
        }
        if (c.pasids.includes(this.cursor)) this.#opts.onCursor(this.cursor);
      }
      this.schedule();
    });
    new ResizeObserver(() => this.schedule()).observe(canvas);
    this.#listen();
  }

  get viewCells(): number {
    return GRID >> this.zoom;
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
    for (const o of owners) {
      const { rgb } = ownerColor(o.index);
      pal[o.index] = this.#highlight === null || this.#highlight === o.index || o.index === FREE ? o.pixel : pixelOf(dim(rgb));
    }
    this.#palette = pal;
  }

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
      this.#flush();
      this.#draw();
      const waiting = this.#drawn;
      this.#drawn = [];
      for (const r of waiting) r();
    });
  }

  #flush(): void {
    if (this.#dirtyAll) {
      const cells = this.#model.cells;
      const px = this.#px;
      const pal = this.#palette;
      for (let i = 0; i < CAPACITY; i++) px[i] = pal[cells[i] as number] as number;
      this.#gctx.putImageData(this.#img, 0, 0);
    } else if (this.#dirtyHi >= this.#dirtyLo) {
      this.#gctx.putImageData(this.#img, 0, 0, 0, this.#dirtyLo, GRID, this.#dirtyHi - this.#dirtyLo + 1);
    }
    this.#dirtyAll = false;
    this.#dirtyLo = GRID;
    this.#dirtyHi = -1;
  }

  #draw(): void {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const size = Math.max(1, Math.round(c.clientWidth * dpr));
    if (c.width !== size || c.height !== size) {
      c.width = size;
      c.height = size;
    }
    const ctx = c.getContext('2d', { alpha: false });
    if (ctx === null) return;
    const vc = this.viewCells;
    const W = c.width;
    const cell = W / vc;
    ctx.imageSmoothingEnabled = cell < 1;
    ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(this.#grid, this.vx, this.vy, vc, vc, 0, 0, W, W);

    if (cell >= DETAIL_PX) {
      ctx.strokeStyle = 'rgba(255,255,255,0.10)';
      ctx.lineWidth = 1;
      ctx.beginPath();
      for (let i = 1; i < vc; i++) {
        const x = Math.round(i * cell) + 0.5;
        ctx.moveTo(x, 0);
        ctx.lineTo(x, W);
        ctx.moveTo(0, x);
        ctx.lineTo(W, x);
      }
      ctx.stroke();
      // Bound PASIDs: a ring in the cell.
      ctx.strokeStyle = '#ffffff';
      ctx.lineWidth = Math.max(1, cell / 10);
      for (const p of this.#model.bound.keys()) {
        const col = (p & (GRID - 1)) - this.vx;
        const row = (p >> 10) - this.vy;
        if (col < 0 || row < 0 || col >= vc || row >= vc) continue;
        ctx.beginPath();
        ctx.arc((col + 0.5) * cell, (row + 0.5) * cell, cell * 0.22, 0, 2 * Math.PI);
        ctx.stroke();
      }
    }
    if (cell >= LABEL_PX) {
      const fs = Math.max(9, Math.min(14 * dpr, cell / 5.5));
      ctx.font = `${fs}px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace`;
      ctx.textAlign = 'center';
      ctx.textBaseline = 'middle';
      for (let row = 0; row < vc; row++) {
        for (let col = 0; col < vc; col++) {
          const p = (this.vy + row) * GRID + this.vx + col;
          const o = this.#model.ownerAt(p);
          const { rgb } = ownerColor(o.index);
          const light = o.index !== FREE && luminance(rgb) > 0.18;
          ctx.fillStyle = light ? '#000000' : '#e6e9ee';
          const cx = (col + 0.5) * cell;
          const cy = (row + 0.5) * cell;
          ctx.fillText(`0x${p.toString(16)}`, cx, cell >= 80 && o.index !== FREE ? cy - fs * 0.6 : cy);
          if (cell >= 80 && o.index !== FREE) ctx.fillText(o.label.length > 10 ? `${o.label.slice(0, 9)}…` : o.label, cx, cy + fs * 0.7);
        }
      }
    }
    // The cursor: a yellow box (at least 10 px, so it shows at zoom 1) with a dark outline.
    const cc = (this.cursor & (GRID - 1)) - this.vx;
    const cr = (this.cursor >> 10) - this.vy;
    if (cc >= 0 && cr >= 0 && cc < vc && cr < vc) {
      const box = Math.max(cell, 10 * dpr);
      const x = (cc + 0.5) * cell - box / 2;
      const y = (cr + 0.5) * cell - box / 2;
      ctx.lineWidth = 4 * dpr;
      ctx.strokeStyle = '#000000';
      ctx.strokeRect(x, y, box, box);
      ctx.lineWidth = 2 * dpr;
      ctx.strokeStyle = '#ffd34d';
      ctx.strokeRect(x, y, box, box);
    }
    c.dataset.seq = String(this.#model.seq);
    c.dataset.view = `${this.vx},${this.vy},${vc}`;
    c.dataset.cursor = String(this.cursor);
  }

  // ---------------------------------------------------------------- navigation

  #clampView(): void {
    const vc = this.viewCells;
    this.vx = Math.max(0, Math.min(GRID - vc, this.vx));
    this.vy = Math.max(0, Math.min(GRID - vc, this.vy));
  }

  /** Pan so the cursor is inside the window. */
  #follow(): void {
    const vc = this.viewCells;
    const col = this.cursor & (GRID - 1);
    const row = this.cursor >> 10;
    if (col < this.vx) this.vx = col;
    if (col >= this.vx + vc) this.vx = col - vc + 1;
    if (row < this.vy) this.vy = row;
    if (row >= this.vy + vc) this.vy = row - vc + 1;
    this.#clampView();
  }

  /** Put the cursor on a PASID (cell 0 is no PASID: the cursor stays in 1..2^20-1). */
  moveTo(pasid: number, center = false): void {
    this.cursor = Math.max(1, Math.min(CAPACITY - 1, Math.trunc(pasid)));
    if (center) this.#centerOn(this.cursor);
    else this.#follow();
    this.#opts.onCursor(this.cursor);
    this.#opts.onView();
    this.schedule();
  }

  #centerOn(pasid: number): void {
    const vc = this.viewCells;
    this.vx = (pasid & (GRID - 1)) - (vc >> 1);
    this.vy = (pasid >> 10) - (vc >> 1);
    this.#clampView();
  }

  /** Zoom by `steps` keeping cell (col,row) at the same place on screen (default the cursor, centred). */
  zoomBy(steps: number, anchor?: { col: number; row: number; fx: number; fy: number }): void {
    const z = Math.max(0, Math.min(MAX_ZOOM, this.zoom + steps));
    if (z === this.zoom) return;
    this.zoom = z;
    const vc = this.viewCells;
    if (anchor === undefined) this.#centerOn(this.cursor);
    else {
      this.vx = Math.round(anchor.col - anchor.fx * vc);
      this.vy = Math.round(anchor.row - anchor.fy * vc);
      this.#clampView();
    }
    this.#opts.onView();
    this.schedule();
  }

  resetZoom(): void {
    this.zoom = 0;
    this.vx = 0;
    this.vy = 0;
    this.#opts.onView();
    this.schedule();
  }

  #cellAt(ev: { clientX: number; clientY: number }): { col: number; row: number; fx: number; fy: number } {
    const r = this.canvas.getBoundingClientRect();
    const fx = Math.min(0.999999, Math.max(0, (ev.clientX - r.left) / r.width));
    const fy = Math.min(0.999999, Math.max(0, (ev.clientY - r.top) / r.height));
    const vc = this.viewCells;
    return { col: this.vx + Math.floor(fx * vc), row: this.vy + Math.floor(fy * vc), fx, fy };
  }

  #listen(): void {
    const c = this.canvas;
    c.addEventListener('keydown', (ev) => this.#key(ev));
    c.addEventListener('wheel', (ev) => {
      ev.preventDefault();
      this.zoomBy(ev.deltaY < 0 ? 1 : -1, this.#cellAt(ev));
    }, { passive: false });
    c.addEventListener('pointerdown', (ev) => {
      if (ev.button !== 0) return;
      c.setPointerCapture(ev.pointerId);
      this.#drag = { x: ev.clientX, y: ev.clientY, vx: this.vx, vy: this.vy, moved: false };
    });
    c.addEventListener('pointermove', (ev) => {
      const at = this.#cellAt(ev);
      this.#opts.onHover(at.row * GRID + at.col);
      const d = this.#drag;
      if (d === null) return;
      const r = c.getBoundingClientRect();
      const dx = ev.clientX - d.x;
      const dy = ev.clientY - d.y;
      if (!d.moved && Math.hypot(dx, dy) < 4) return;
      d.moved = true;
      const per = r.width / this.viewCells;
      this.vx = Math.round(d.vx - dx / per);
      this.vy = Math.round(d.vy - dy / per);
      this.#clampView();
      this.#opts.onView();
      this.schedule();
    });
    c.addEventListener('pointerup', (ev) => {
      const d = this.#drag;
      this.#drag = null;
      if (d === null || d.moved) return;
      const at = this.#cellAt(ev);
      const p = at.row * GRID + at.col;
      if (p === 0) return;
      c.focus();
      this.moveTo(p);
      this.#opts.onOpen(p);
    });
    c.addEventListener('pointercancel', () => {
      this.#drag = null;
    });
    c.addEventListener('pointerleave', () => this.#opts.onHover(null));
  }

  #key(ev: KeyboardEvent): void {
    const vc = this.viewCells;
    const step = ev.shiftKey ? Math.max(1, vc >> 3) : 1;
    const col = this.cursor & (GRID - 1);
    const row = this.cursor >> 10;
    const to = (r: number, c2: number) => this.moveTo(Math.max(0, Math.min(GRID - 1, r)) * GRID + Math.max(0, Math.min(GRID - 1, c2)));
    switch (ev.key) {
      case 'ArrowLeft': to(row, col - step); break;
      case 'ArrowRight': to(row, col + step); break;
      case 'ArrowUp': to(row - step, col); break;
      case 'ArrowDown': to(row + step, col); break;
      case 'PageUp': to(row - vc, col); break;
      case 'PageDown': to(row + vc, col); break;
      case 'Home': if (ev.ctrlKey) this.moveTo(1); else to(row, 0); break;
      case 'End': if (ev.ctrlKey) this.moveTo(CAPACITY - 1); else to(row, GRID - 1); break;
      case '+': case '=': this.zoomBy(1); break;
      case '-': case '_': this.zoomBy(-1); break;
      case '0': this.resetZoom(); break;
      case 'Enter': case ' ': this.#opts.onOpen(this.cursor); break;
      default: return;
    }
    ev.preventDefault();
  }
}
