/**
 * The overview strip: the whole namespace (2^20 PASIDs) left to right, one bar per device pixel
 * whose height is the share of its PASIDs that are allocated (any allocation shows at least four
 * pixels, so a few PASIDs never vanish), with the map's window outlined and everything outside it
 * shaded. A click moves the map's window there. Recounted at most every 200 ms under a stream of
 * events; the window outline follows the map at once.
 */
import { CAPACITY, lastShown } from './layout.ts';
import type { MapView } from './map-view.ts';
import { FREE_CSS } from './colors.ts';
import { afterFrame } from './dom.ts';
import type { NamespaceModel } from './model.ts';

const BAR_CSS = '#7fb2d6';
const RECOUNT_MS = 200;
/** CSS pixels: the bars, then the axis labels under them. */
const BARS_H = 30;
const AXIS_H = 16;

export class Overview {
  readonly canvas: HTMLCanvasElement;
  readonly #model: NamespaceModel;
  readonly #map: MapView;
  #counts = new Uint32Array(0);
  #countedAt = -1;
  #lastCount = 0;
  #frame = 0;
  #timer: ReturnType<typeof setTimeout> | null = null;

  constructor(canvas: HTMLCanvasElement, model: NamespaceModel, map: MapView, onJump: (pasid: number) => void) {
    this.canvas = canvas;
    this.#model = model;
    this.#map = map;
    model.on((c) => {
      if (c.kind === 'reset' || c.kind === 'cells') this.schedule();
    });
    new ResizeObserver(() => this.schedule()).observe(canvas);
    canvas.addEventListener('click', (ev) => {
      const r = canvas.getBoundingClientRect();
      const fx = Math.min(0.999999, Math.max(0, (ev.clientX - r.left) / r.width));
      onJump(Math.max(1, Math.floor(fx * CAPACITY)));
    });
  }

  /**
   * Draw soon: the window in the next frame, the counts (a pass over the namespace) outside the
   * frame, at most every RECOUNT_MS, so they never hold up the map.
   */
  schedule(): void {
    if (this.#frame === 0) {
      this.#frame = requestAnimationFrame(() => {
        this.#frame = 0;
        this.#draw(false);
      });
    }
    if (this.#model.loaded && (this.#countedAt !== this.#model.version || this.#counts.length !== this.#width()) && this.#timer === null) {
      const wait = Math.max(0, this.#lastCount + RECOUNT_MS - performance.now());
      this.#timer = setTimeout(() => {
        afterFrame(() => {
          this.#timer = null;
          this.#draw(true);
          if (this.#countedAt !== this.#model.version || this.#counts.length !== this.#width()) this.schedule();
        });
      }, wait);
    }
  }

  /** The strip's width in device pixels (one bucket each). */
  #width(): number {
    return Math.max(1, Math.round(this.canvas.clientWidth * (window.devicePixelRatio || 1)));
  }

  #recount(buckets: number): void {
    const counts = new Uint32Array(buckets);
    const cells = this.#model.cells;
    const scale = buckets / CAPACITY;
    for (let p = 1; p < CAPACITY; p++) {
      if (cells[p] === 0) continue;
      const b = Math.floor(p * scale);
      counts[b] = (counts[b] as number) + 1;
    }
    this.#counts = counts;
    this.#countedAt = this.#model.version;
    this.#lastCount = performance.now();
  }

  #draw(recount: boolean): void {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const W = this.#width();
    const H = Math.round((BARS_H + AXIS_H) * dpr);
    if (c.width !== W || c.height !== H) {
      c.width = W;
      c.height = H;
    }
    if (recount) this.#recount(W);
    const ctx = c.getContext('2d');
    if (ctx === null) return;
    const bars = BARS_H * dpr;
    ctx.clearRect(0, 0, W, H);
    ctx.fillStyle = FREE_CSS;
    ctx.fillRect(0, 0, W, bars);
    ctx.fillStyle = BAR_CSS;
    // Counts of another width (before the recount after a resize) are stretched to this one.
    const counts = this.#counts;
    const per = CAPACITY / Math.max(1, counts.length);
    const stretch = counts.length / W;
    for (let x = 0; x < W; x++) {
      const n = counts[Math.floor(x * stretch)] ?? 0;
      if (n === 0) continue;
      const h = Math.max(4 * dpr, Math.round((n / per) * bars));
      ctx.fillRect(x, bars - h, 1, h);
    }
    // The map's window: shade outside it, outline it (at least 3 px wide, so a small one shows).
    const v = this.#map.view;
    let x0 = (v.start / CAPACITY) * W;
    let x1 = ((lastShown(v) + 1) / CAPACITY) * W;
    if (x1 - x0 < 3 * dpr) {
      const mid = (x0 + x1) / 2;
      x0 = Math.max(0, mid - 1.5 * dpr);
      x1 = Math.min(W, x0 + 3 * dpr);
    }
    ctx.fillStyle = 'rgba(0,0,0,0.45)';
    ctx.fillRect(0, 0, x0, bars);
    ctx.fillRect(x1, 0, W - x1, bars);
    ctx.strokeStyle = '#ffffff';
    ctx.lineWidth = 2 * dpr;
    ctx.strokeRect(x0 + dpr, dpr, Math.max(dpr, x1 - x0 - 2 * dpr), bars - 2 * dpr);
    // Axis: the namespace's quarters.
    ctx.fillStyle = '#a3adb9';
    ctx.font = `${11 * dpr}px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace`;
    ctx.textBaseline = 'top';
    const ticks: [number, string, CanvasTextAlign][] = [[0, '0x0', 'left'], [0.25, '0x40000', 'center'], [0.5, '0x80000', 'center'], [0.75, '0xc0000', 'center'], [1, '0xfffff', 'right']];
    for (const [f, label, align] of ticks) {
      ctx.textAlign = align;
      ctx.fillText(label, f * W, bars + 3 * dpr);
    }
    c.dataset.windowStart = String(v.start);
    c.dataset.windowLast = String(lastShown(v));
  }
}
