/**
 * Owner colours: free PASIDs are the map's dark ground, the host a light grey, and VMs take hues
 * a golden angle apart (so neighbours in the legend differ most), at two relative-luminance levels
 * chosen so every VM colour has at least 3:1 contrast with free cells and with the page's dark
 * background (WCAG 1.4.11, non-text contrast).
 */

export const FREE_CSS = '#1c222a';
export const HOST_CSS = '#d9dee5';
export const PAGE_BG = '#0f1216';

function hslToRgb(h: number, s: number, l: number): [number, number, number] {
  const k = (n: number) => (n + h / 30) % 12;
  const a = s * Math.min(l, 1 - l);
  const f = (n: number) => l - a * Math.max(-1, Math.min(k(n) - 3, Math.min(9 - k(n), 1)));
  return [Math.round(f(0) * 255), Math.round(f(8) * 255), Math.round(f(4) * 255)];
}

/** WCAG relative luminance of an sRGB colour. */
export function luminance([r, g, b]: readonly [number, number, number]): number {
  const lin = (c: number) => {
    const x = c / 255;
    return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
}

export function contrast(a: readonly [number, number, number], b: readonly [number, number, number]): number {
  const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p) as [number, number];
  return (x + 0.05) / (y + 0.05);
}

export function parseHex(css: string): [number, number, number] {
  const n = parseInt(css.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function toCss([r, g, b]: readonly [number, number, number]): string {
  return `#${((1 << 24) | (r << 16) | (g << 8) | b).toString(16).slice(1)}`;
}

/** Pixel value for a Uint32Array view of RGBA ImageData (little-endian: 0xAABBGGRR). */
export function pixelOf([r, g, b]: readonly [number, number, number], alpha = 255): number {
  return ((alpha << 24) | (b << 16) | (g << 8) | r) >>> 0;
}

/** The colour of a VM hue at a target luminance (bisection on HSL lightness). */
function atLuminance(hue: number, target: number): [number, number, number] {
  let lo = 0;
  let hi = 1;
  let rgb = hslToRgb(hue, 0.78, 0.5);
  for (let i = 0; i < 20; i++) {
    const mid = (lo + hi) / 2;
    rgb = hslToRgb(hue, 0.78, mid);
    if (luminance(rgb) < target) lo = mid;
    else hi = mid;
  }
  return rgb;
}

/** The colour of owner `index` (0 free, 1 host, 2.. VMs). */
export function ownerColor(index: number): { css: string; pixel: number; rgb: [number, number, number] } {
  let rgb: [number, number, number];
  if (index === 0) rgb = parseHex(FREE_CSS);
  else if (index === 1) rgb = parseHex(HOST_CSS);
  else {
    const i = index - 2;
    const hue = (i * 137.508) % 360;
    rgb = atLuminance(hue, i % 2 === 0 ? 0.4 : 0.2);
  }
  return { css: toCss(rgb), pixel: pixelOf(rgb), rgb };
}

/** A colour mixed towards the free ground (the map dims other owners while one is highlighted). */
export function dim(rgb: readonly [number, number, number], keep = 0.25): [number, number, number] {
  const f = parseHex(FREE_CSS);
  return [0, 1, 2].map((i) => Math.round((rgb[i] as number) * keep + (f[i] as number) * (1 - keep))) as [number, number, number];
}
