/**
 * Small DOM helpers for the dashboard: element creation that never parses HTML (every string is
 * a text node, so nothing the service returns can inject markup), lookups that fail loudly, and
 * the formatting shared by the views.
 */
import { PASID_MAX, PASID_MIN } from '../src/client/index.ts';
import { swatchBackground } from './colors.ts';

type Attrs = Record<string, string | number | boolean | null | undefined>;
type Child = Node | string | number | null | undefined | false;

/** Create an element; attributes with null/undefined/false are skipped, `true` sets "". */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: (Child | Child[])[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = String(v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el: Node, children: (Child | Child[])[]): void {
  for (const c of children) {
    if (Array.isArray(c)) append(el, c);
    else if (c === null || c === undefined || c === false) continue;
    else el.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
  }
}

/** Replace an element's children. */
export function fill(el: Element, ...children: (Child | Child[])[]): void {
  el.replaceChildren();
  append(el, children);
}

/** The element with this id, of this type; throws if the page lacks it (a bug in index.html). */
export function byId<T extends HTMLElement>(id: string, type: new () => T): T {
  const el = document.getElementById(id);
  if (!(el instanceof type)) throw new Error(`index.html lacks #${id} (${type.name})`);
  return el;
}

/** `0x0002a (42)`: PASIDs are shown in hex, as the kernel prints them, with the decimal. */
export function fmtPasid(p: number): string {
  return `0x${p.toString(16).padStart(5, '0')} (${p})`;
}

export function hex(p: number): string {
  return `0x${p.toString(16)}`;
}

/** Parse `42`, `0x2a` or `2ah`-free input as a PASID; null if it is not one. */
export function parsePasid(s: string): number | null {
  const t = s.trim().toLowerCase();
  const n = /^0x[0-9a-f]{1,5}$/.test(t) ? parseInt(t.slice(2), 16) : /^[0-9]{1,7}$/.test(t) ? Number(t) : NaN;
  return Number.isInteger(n) && n >= PASID_MIN && n <= PASID_MAX ? n : null;
}

/** `14:03:22.517` in the viewer's time zone. */
export function fmtTime(ms: number): string {
  const d = new Date(ms);
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

/** Run `fn` at most once per `ms`, trailing (the last call always runs). */
export function throttle(fn: () => void, ms: number): () => void {
  let timer: ReturnType<typeof setTimeout> | null = null;
  let last = 0;
  return () => {
    if (timer !== null) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      fn();
    }, wait);
  };
}

/** Run `fn` once the next frame is drawn (work that must not hold up the map's first picture). */
export function afterFrame(fn: () => void): void {
  requestAnimationFrame(() => setTimeout(fn, 0));
}

/** A colour swatch with the owner's pattern (decorative: the owner's name is always written beside it). */
export function swatch(css: string, pattern = 0): HTMLSpanElement {
  const s = h('span', { class: 'swatch', 'aria-hidden': 'true', 'data-colour': css, 'data-pattern': pattern });
  s.style.background = swatchBackground(css, pattern);
  return s;
}

/** The errno code of an error the typed client threw (`EPERM`, `ENODEV`, ...), or null. */
export function errorCode(e: unknown): string | null {
  const c = (e as { code?: unknown } | null)?.code;
  return typeof c === 'string' ? c : null;
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
