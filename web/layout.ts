/**
 * What the map shows, as numbers (pure: no DOM). The map is always a contiguous range of PASIDs
 * laid out row by row in a square of `cols` x `cols` cells, each cell `perCell` PASIDs: cell
 * (row, col) holds PASIDs `start + (row * cols + col) * perCell` and the `perCell - 1` after it.
 * So the first and last PASIDs shown are exact, and every row starts at a multiple of its span
 * (a power of two, so rows start at round hex numbers).
 *
 * Zoom z (0..MAX_ZOOM) shows 4^(10 - z) PASIDs: z = 0 is the whole namespace (2^20), each step in
 * quarters it, z = 7 is 8 x 8 = 64 PASIDs. The canvas's size in device pixels decides how a zoom
 * is drawn: as many columns as the canvas has pixels for (a power of two, at most 1024), and
 * several PASIDs per cell only when there are fewer pixels than that.
 */

export const CAPACITY = 1 << 20;
export const MAX_ZOOM = 7;
/** Fewest columns: 8 x 8 cells at the deepest zoom. */
export const MIN_COLS = 8;
export const MAX_COLS = 1024;

export interface Level {
  readonly zoom: number;
  readonly cols: number;
  readonly perCell: number;
}

export interface View extends Level {
  /** First PASID shown (a multiple of the row span). */
  readonly start: number;
}

/** PASIDs in the window at zoom z. */
export function capacityAt(zoom: number): number {
  return 2 ** (20 - 2 * zoom);
}

/** Columns a canvas `px` device pixels wide can show one pixel or more each. */
export function maxCols(px: number): number {
  let c = MIN_COLS;
  while (c * 2 <= Math.min(MAX_COLS, px)) c *= 2;
  return c;
}

export function levelAt(zoom: number, px: number): Level {
  const z = Math.max(0, Math.min(MAX_ZOOM, Math.trunc(zoom)));
  const side = 2 ** (10 - z);
  const cols = Math.min(side, maxCols(px));
  return { zoom: z, cols, perCell: (side * side) / (cols * cols) };
}

export function rowSpan(l: Level): number {
  return l.cols * l.perCell;
}

/** The window at level `l` starting at (about) `start`: aligned down to a row, kept inside the namespace. */
export function viewAt(l: Level, start: number): View {
  const span = rowSpan(l);
  const cap = capacityAt(l.zoom);
  const s = Math.max(0, Math.min(CAPACITY - cap, Math.floor(start / span) * span));
  return { ...l, start: s };
}

export function lastShown(v: View): number {
  return v.start + capacityAt(v.zoom) - 1;
}

/** The cell of a PASID, or null when it is not shown. */
export function cellOf(v: View, pasid: number): { row: number; col: number } | null {
  if (pasid < v.start || pasid > lastShown(v)) return null;
  const i = Math.floor((pasid - v.start) / v.perCell);
  return { row: Math.floor(i / v.cols), col: i % v.cols };
}

/** First PASID of a cell. */
export function pasidAt(v: View, row: number, col: number): number {
  return v.start + (row * v.cols + col) * v.perCell;
}

/**
 * The deepest view that shows all of [lo, hi], centred on it where the namespace's ends and row
 * alignment allow. Never deeper than `maxZoom`.
 */
export function frame(lo: number, hi: number, px: number, maxZoom = MAX_ZOOM): View {
  const a = Math.max(0, Math.min(lo, hi));
  const b = Math.min(CAPACITY - 1, Math.max(lo, hi));
  for (let z = Math.min(MAX_ZOOM, maxZoom); z > 0; z--) {
    const l = levelAt(z, px);
    const cap = capacityAt(z);
    if (b - a + 1 > cap) continue;
    const centred = viewAt(l, a - Math.floor((cap - (b - a + 1)) / 2));
    if (centred.start <= a && lastShown(centred) >= b) return centred;
    const top = viewAt(l, a);
    if (top.start <= a && lastShown(top) >= b) return top;
  }
  return viewAt(levelAt(0, px), 0);
}

/** The same window on a canvas of another size (the zoom and first PASID are kept). */
export function resize(v: View, px: number): View {
  return viewAt(levelAt(v.zoom, px), v.start);
}

/**
 * Zoom by `steps` keeping `anchor`'s row at the same height (fraction `fy` of the window). Rows
 * wrap, so its column follows from the new row span.
 */
export function zoomAround(v: View, steps: number, px: number, anchor: number, fy = 0.5): View {
  const l = levelAt(v.zoom + steps, px);
  if (l.zoom === v.zoom) return resize(v, px);
  const span = rowSpan(l);
  const rowsAbove = Math.floor(fy * l.cols);
  const start = Math.floor(anchor / span) * span - rowsAbove * span;
  return viewAt(l, start);
}

/** Hex of a PASID (`0x2a`). */
export function hexOf(p: number): string {
  return `0x${p.toString(16)}`;
}

/** The readout: exactly what is on screen. */
export function describeView(v: View): string {
  const last = lastShown(v);
  const n = last - v.start + 1;
  const per = v.perCell === 1 ? '1 PASID per cell' : `${v.perCell.toLocaleString('en')} PASIDs per cell`;
  return `PASIDs ${hexOf(v.start)}–${hexOf(last)} (${n.toLocaleString('en')}) · ${per} · ${v.cols} cells per row`;
}
