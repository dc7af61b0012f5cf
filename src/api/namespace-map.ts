/**
 * The namespace map's wire format (`GET /v1/namespace/map`, the dashboard's map): all 2^20 PASIDs
 * in one compact binary, never a million JSON objects. Browser-safe (the typed client decodes it
 * with `DecompressionStream`); the server passes its own deflate in.
 *
 *   offset  size  field
 *   0       4     magic "IOAM"
 *   4       1     version, 1
 *   5       1     width: bytes per cell, 1 (up to 255 owners) or 2 (little-endian)
 *   6       2     reserved, 0
 *   8       4     capacity: number of cells, u32 LE (2^20; cell i is PASID i, cell 0 is never used)
 *   12      4     legend length L, u32 LE
 *   16      L     legend, UTF-8 JSON: { seq, owners: [{ index, owner, count }] }
 *   16+L    ...   the cells, zlib-deflated (RFC 1950)
 *
 * A cell holds 0 for a free PASID, else the index of its owner in the legend (owner null: the
 * host itself, no VM). `seq` is the authority's last event sequence number when the map was
 * taken: a client applies streamed events with a larger seq on top of it.
 *
 * Why this shape: one byte per PASID is 1 MiB before compression; deflate turns runs (a VM's
 * batch) into a few bytes and stays near the entropy bound when VMs interleave PASID by PASID
 * (about 6.7 bits per PASID for 100 VMs in random order: 0.84 MiB for 2^20 PASIDs).
 */

export const NAMESPACE_MAP_MAGIC = 'IOAM';
export const NAMESPACE_MAP_VERSION = 1;
const HEADER = 16;

export interface NamespaceMapOwner {
  /** Cell value of this owner (1..). */
  readonly index: number;
  /** VM id, or null for the host itself. */
  readonly owner: string | null;
  /** PASIDs it holds. */
  readonly count: number;
}

export interface NamespaceMap {
  /** Last event seq folded into the map. */
  readonly seq: number;
  /** Number of cells (PASID_MAX + 1). */
  readonly capacity: number;
  readonly owners: readonly NamespaceMapOwner[];
  /** Owner index per PASID (0: free). */
  readonly cells: Uint8Array | Uint16Array;
}

/** Encode a map; `deflate` must produce zlib format (RFC 1950), e.g. node:zlib `deflateSync`. */
export function encodeNamespaceMap(map: NamespaceMap, deflate: (raw: Uint8Array) => Uint8Array): Uint8Array {
  const width = map.cells instanceof Uint16Array ? 2 : 1;
  if (map.cells.length !== map.capacity) throw new RangeError(`cells has ${map.cells.length} entries, capacity is ${map.capacity}`);
  if (width === 1 && map.owners.length > 255) throw new RangeError(`${map.owners.length} owners need 2-byte cells`);
  let raw: Uint8Array;
  if (width === 1) raw = map.cells as Uint8Array;
  else {
    raw = new Uint8Array(map.capacity * 2);
    const c = map.cells;
    for (let i = 0; i < c.length; i++) {
      const v = c[i] as number;
      raw[2 * i] = v & 0xff;
      raw[2 * i + 1] = v >>> 8;
    }
  }
  const legend = new TextEncoder().encode(JSON.stringify({ seq: map.seq, owners: map.owners }));
  const body = deflate(raw);
  const out = new Uint8Array(HEADER + legend.length + body.length);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < 4; i++) out[i] = NAMESPACE_MAP_MAGIC.charCodeAt(i);
  out[4] = NAMESPACE_MAP_VERSION;
  out[5] = width;
  dv.setUint32(8, map.capacity, true);
  dv.setUint32(12, legend.length, true);
  out.set(legend, HEADER);
  out.set(body, HEADER + legend.length);
  return out;
}

function bad(why: string): Error {
  return new Error(`not a namespace map: ${why}`);
}

/** Decode a map (async: inflating uses the platform's `DecompressionStream`). */
export async function decodeNamespaceMap(bytes: Uint8Array): Promise<NamespaceMap> {
  if (bytes.length < HEADER) throw bad(`${bytes.length} bytes is shorter than the header`);
  for (let i = 0; i < 4; i++) if (bytes[i] !== NAMESPACE_MAP_MAGIC.charCodeAt(i)) throw bad('wrong magic');
  if (bytes[4] !== NAMESPACE_MAP_VERSION) throw bad(`version ${bytes[4]} is not ${NAMESPACE_MAP_VERSION}`);
  const width = bytes[5];
  if (width !== 1 && width !== 2) throw bad(`cell width ${width}`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const capacity = dv.getUint32(8, true);
  const legendLen = dv.getUint32(12, true);
  if (capacity > 1 << 24 || HEADER + legendLen > bytes.length) throw bad('header lengths out of range');
  const legend = JSON.parse(new TextDecoder().decode(bytes.subarray(HEADER, HEADER + legendLen))) as { seq: number; owners: NamespaceMapOwner[] };
  const raw = await inflate(bytes.subarray(HEADER + legendLen), capacity * width);
  let cells: Uint8Array | Uint16Array;
  if (width === 1) cells = raw;
  else {
    cells = new Uint16Array(capacity);
    for (let i = 0; i < capacity; i++) cells[i] = (raw[2 * i] as number) | ((raw[2 * i + 1] as number) << 8);
  }
  return { seq: legend.seq, capacity, owners: legend.owners, cells };
}

async function inflate(data: Uint8Array, expected: number): Promise<Uint8Array> {
  const ds = new DecompressionStream('deflate');
  const writer = ds.writable.getWriter();
  // The writer's promises settle with the reader below; errors surface through the reader.
  writer.write(data as Uint8Array<ArrayBuffer>).catch(() => {});
  writer.close().catch(() => {});
  const out = new Uint8Array(expected);
  let at = 0;
  const reader = ds.readable.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (at + value.length > expected) throw bad(`cells inflate to more than ${expected} bytes`);
    out.set(value, at);
    at += value.length;
  }
  if (at !== expected) throw bad(`cells inflate to ${at} bytes, expected ${expected}`);
  return out;
}
