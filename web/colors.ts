/**
 * Owner colours. Free PASIDs are the map's dark ground and the host a light grey. A VM's colour
 * is a function of its id alone (a hash into a palette of 24), so it is the same for the VM's
 * whole life, on every page, whatever VMs come and go: never its rank in a list.
 *
 * The 24 colours were picked by farthest-point sampling in OKLab among sRGB colours with at least
 * 3.2:1 contrast against free cells (WCAG 1.4.11, non-text contrast) and far from the host's
 * grey: any two differ by at least 0.11 in OKLab (test/dashboard-view.test.ts checks both).
 *
 * A hash can give two live VMs the same colour. They are then told apart by a pattern drawn on
 * their cells and swatches: among the live VMs of one colour the oldest (by creation time, then
 * id) is plain, the next striped, and so on through 8 patterns, so 24 x 8 owners look different
 * before the label (legend, pointer readout, large cells) is the only difference.
 */

export const FREE_CSS = '#1c222a';
export const HOST_CSS = '#d9dee5';
export const PAGE_BG = '#0f1216';

/** Sorted by hue; the order carries no meaning (a VM's slot is a hash of its id). */
export const PALETTE = [
  '#b58e85', '#c74723', '#fb9a09', '#fdd081', '#9c7703', '#b49f17', '#b2e15a', '#a9c098',
  '#51ae42', '#148922', '#537b6e', '#09d895', '#12fcdf', '#0ec7de', '#639bb4', '#1d85e5',
  '#95a3fc', '#dcb4fe', '#915aa8', '#de79d7', '#c4447c', '#f1677f', '#fea3b2', '#98696c',
] as const;

/**
 * Patterns that tell same-coloured owners apart, drawn in translucent black over the colour:
 * 0 plain, 1 "/" stripes, 2 "\" stripes, 3 horizontal bar, 4 vertical bar, 5 dot, 6 cross, 7 plus.
 */
export const PATTERNS = ['plain', 'rising stripes', 'falling stripes', 'horizontal bar', 'vertical bar', 'dot', 'cross', 'plus'] as const;
export const PATTERN_INK = 'rgba(0,0,0,0.6)';

export type Rgb = readonly [number, number, number];

/** WCAG relative luminance of an sRGB colour. */
export function luminance([r, g, b]: Rgb): number {
  const lin = (c: number) => {
    const x = c / 255;
    return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
}

export function contrast(a: Rgb, b: Rgb): number {
  const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p) as [number, number];
  return (x + 0.05) / (y + 0.05);
}

/** Distance of two sRGB colours in OKLab (about 0.02 is the least an eye notices side by side). */
export function oklabDistance(a: Rgb, b: Rgb): number {
  const p = oklab(a);
  const q = oklab(b);
  return Math.hypot(p[0] - q[0], p[1] - q[1], p[2] - q[2]);
}

function oklab([r8, g8, b8]: Rgb): [number, number, number] {
  const lin = (c: number) => {
    const x = c / 255;
    return x <= 0.04045 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4;
  };
  const [r, g, b] = [lin(r8), lin(g8), lin(b8)];
  const l = Math.cbrt(0.4122214708 * r + 0.5363325363 * g + 0.0514459929 * b);
  const m = Math.cbrt(0.2119034982 * r + 0.6806995451 * g + 0.1073969566 * b);
  const s = Math.cbrt(0.0883024619 * r + 0.2817188376 * g + 0.6299787005 * b);
  return [0.2104542553 * l + 0.793617785 * m - 0.0040720468 * s, 1.9779984951 * l - 2.428592205 * m + 0.4505937099 * s, 0.0259040371 * l + 0.7827717662 * m - 0.808675766 * s];
}

export function parseHex(css: string): [number, number, number] {
  const n = parseInt(css.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

export function toCss([r, g, b]: Rgb): string {
  return `#${((1 << 24) | (r << 16) | (g << 8) | b).toString(16).slice(1)}`;
}

/** Pixel value for a Uint32Array view of RGBA ImageData (little-endian: 0xAABBGGRR). */
export function pixelOf([r, g, b]: Rgb, alpha = 255): number {
  return ((alpha << 24) | (b << 16) | (g << 8) | r) >>> 0;
}

/** The palette slot of a VM id: FNV-1a over its UTF-16 units, then murmur3's finaliser to mix. */
export function colourSlot(id: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) {
    h ^= id.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) % PALETTE.length;
}

export interface Colour {
  readonly css: string;
  readonly rgb: Rgb;
  readonly pixel: number;
}

function colour(css: string): Colour {
  const rgb = parseHex(css);
  return { css, rgb, pixel: pixelOf(rgb) };
}

export const FREE_COLOUR = colour(FREE_CSS);
export const HOST_COLOUR = colour(HOST_CSS);

/** The colour of a VM: a function of its id only. */
export function vmColour(id: string): Colour {
  return colour(PALETTE[colourSlot(id)] as string);
}

/**
 * Patterns for the live VMs: within each colour, by creation time then id, 0 (plain), 1, 2 ...
 * (cycling after the last pattern). Depends only on the set of live VMs and their creation
 * times, so every page shows the same.
 */
export function assignPatterns(vms: readonly { id: string; createdAt: number }[]): Map<string, number> {
  const bySlot = new Map<number, { id: string; createdAt: number }[]>();
  for (const vm of vms) {
    const s = colourSlot(vm.id);
    let g = bySlot.get(s);
    if (g === undefined) bySlot.set(s, (g = []));
    g.push(vm);
  }
  const out = new Map<string, number>();
  for (const g of bySlot.values()) {
    g.sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    g.forEach((vm, i) => out.set(vm.id, i % PATTERNS.length));
  }
  return out;
}

/** A colour mixed towards the free ground (the map dims other owners while one is selected). */
export function dim(rgb: Rgb, keep = 0.25): [number, number, number] {
  const f = FREE_COLOUR.rgb;
  return [0, 1, 2].map((i) => Math.round((rgb[i] as number) * keep + (f[i] as number) * (1 - keep))) as [number, number, number];
}

/** CSS background of a legend swatch: the colour with the owner's pattern on it. */
export function swatchBackground(css: string, pattern: number): string {
  const ink = PATTERN_INK;
  const layer = (() => {
    switch (pattern) {
      case 1: return `repeating-linear-gradient(135deg, transparent 0 2px, ${ink} 2px 4px)`;
      case 2: return `repeating-linear-gradient(45deg, transparent 0 2px, ${ink} 2px 4px)`;
      case 3: return `linear-gradient(transparent 35%, ${ink} 35% 65%, transparent 65%)`;
      case 4: return `linear-gradient(90deg, transparent 35%, ${ink} 35% 65%, transparent 65%)`;
      case 5: return `radial-gradient(circle, ${ink} 0 28%, transparent 32%)`;
      case 6: return `linear-gradient(45deg, transparent 42%, ${ink} 42% 58%, transparent 58%), linear-gradient(135deg, transparent 42%, ${ink} 42% 58%, transparent 58%)`;
      case 7: return `linear-gradient(transparent 40%, ${ink} 40% 60%, transparent 60%), linear-gradient(90deg, transparent 40%, ${ink} 40% 60%, transparent 60%)`;
      default: return null;
    }
  })();
  return layer === null ? css : `${layer}, ${css}`;
}

/** Where patterns are traced: a canvas context or a Path2D. */
export type PathSink = Pick<Path2D, 'moveTo' | 'lineTo' | 'arc'>;

/** The dot of pattern 5 (filled by the caller, batched like the strokes). */
export function traceDot(ctx: PathSink, x: number, y: number, s: number): void {
  ctx.moveTo(x + s / 2 + s * 0.16, y + s / 2);
  ctx.arc(x + s / 2, y + s / 2, s * 0.16, 0, 2 * Math.PI);
}

/**
 * Stroke a pattern over a cell at (x, y) of size `s` (canvas units); the caller sets the stroke
 * style and batches many cells into one path.
 */
export function tracePattern(ctx: PathSink, pattern: number, x: number, y: number, s: number): void {
  const m = s * 0.2;
  switch (pattern) {
    case 1:
      ctx.moveTo(x + m, y + s - m);
      ctx.lineTo(x + s - m, y + m);
      break;
    case 2:
      ctx.moveTo(x + m, y + m);
      ctx.lineTo(x + s - m, y + s - m);
      break;
    case 3:
      ctx.moveTo(x + m, y + s / 2);
      ctx.lineTo(x + s - m, y + s / 2);
      break;
    case 4:
      ctx.moveTo(x + s / 2, y + m);
      ctx.lineTo(x + s / 2, y + s - m);
      break;
    case 5:
      // A dot is filled, not stroked: the caller draws it with traceDot.
      break;
    case 6:
      ctx.moveTo(x + m, y + s - m);
      ctx.lineTo(x + s - m, y + m);
      ctx.moveTo(x + m, y + m);
      ctx.lineTo(x + s - m, y + s - m);
      break;
    case 7:
      ctx.moveTo(x + m, y + s / 2);
      ctx.lineTo(x + s - m, y + s / 2);
      ctx.moveTo(x + s / 2, y + m);
      ctx.lineTo(x + s / 2, y + s - m);
      break;
    default:
      break;
  }
}
