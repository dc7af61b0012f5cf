/**
 * The serialisable state of a VCMD device and its validating parser. A snapshot is untrusted
 * input when restored: every field is checked and anything malformed is a clear EINVAL, never a
 * crash (as Firecracker learned from a deserialiser that panicked on a bad snapshot).
 */
import { IoasidError } from '../core/index.ts';
import { parseDeviceConfig, MAX_LOG_SIZE, type VcmdDeviceConfig } from './vcmd-device-config.ts';

/** One entry of the recent-commands log (for the dashboard). */
export interface VcmdLogEntry {
  readonly seq: number;
  /** VCMD_REG.CMD as written. */
  readonly cmd: number;
  readonly command: string;
  /** Free's PASID operand, else null. */
  readonly operand: number | null;
  /** The range a ranged Allocate carried (range extension), else null. */
  readonly range: { readonly min: number; readonly max: number } | null;
  /** VCRSP_REG.SC, null while in progress. */
  readonly status: number | null;
  readonly statusName: string | null;
  /** The PASID a successful Allocate returned, else null. */
  readonly result: number | null;
  /** Timestamps from the injected clock. */
  readonly issuedAt: number;
  readonly completedAt: number | null;
  /** Why the backend refused, or the internal error reported. */
  readonly error: string | null;
}

export interface VcmdStats {
  readonly commands: number;
  /** Writes to VCMD/VCMD_EO dropped because IP was set. */
  readonly droppedWrites: number;
  readonly undefinedCommands: number;
  readonly internalErrors: number;
}

/** The last write applied from a writer that numbers its writes (a remote guest's channel). */
export interface VcmdWriter {
  /** Who writes (one id per channel; a new channel starts afresh). */
  readonly id: string;
  /** The writer's sequence number of the write, increasing. */
  readonly seq: number;
}

/**
 * Everything of a device a guest can observe, and nothing else: what a durable host commits with
 * each change a command makes, so that a guest polling after a crash reads what was committed.
 * The command log and the counters are not part of it (they are for people, not guests).
 */
export interface VcmdGuestState {
  /** 64-bit register values as `0x`-prefixed lowercase hex strings. */
  readonly registers: { readonly VCMD_REG: string; readonly VCMD_EO_REG: string; readonly VCRSP_REG: string };
  /** Which dwords of a 32-bit VCMD_REG write pair have arrived. */
  readonly pendingHalves: { readonly low: boolean; readonly high: boolean };
  /** The last numbered write applied (a retried write with this writer and seq is not applied again). */
  readonly writer: VcmdWriter | null;
}

export interface VcmdDeviceSnapshot {
  readonly kind: 'ioasid/vcmd-device';
  /** 2 adds `writer`; version 1 snapshots are read with no writer. */
  readonly version: 2;
  readonly config: VcmdDeviceConfig;
  /** 64-bit register values as `0x`-prefixed lowercase hex strings. */
  readonly registers: { readonly VCMD_REG: string; readonly VCMD_EO_REG: string; readonly VCRSP_REG: string };
  /** Which dwords of a 32-bit VCMD_REG write pair have arrived. */
  readonly pendingHalves: { readonly low: boolean; readonly high: boolean };
  readonly writer: VcmdWriter | null;
  readonly nextSeq: number;
  readonly log: readonly VcmdLogEntry[];
  readonly stats: VcmdStats;
}

function fail(path: string, why: string, value?: unknown): never {
  let shown: string;
  try {
    shown = JSON.stringify(value) ?? String(value);
  } catch {
    shown = '(unprintable)';
  }
  if (shown.length > 80) shown = `${shown.slice(0, 77)}...`;
  throw new IoasidError('EINVAL', `invalid VCMD device snapshot: ${path} ${why}${value === undefined ? '' : `, got ${shown}`}`, { path });
}

function obj(x: unknown, path: string, keys: readonly string[]): Record<string, unknown> {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) fail(path, 'must be an object', x);
  const rec = x as Record<string, unknown>;
  for (const k of Object.keys(rec)) if (!keys.includes(k)) fail(`${path}.${k}`, 'is not a known key');
  for (const k of keys) if (!(k in rec)) fail(`${path}.${k}`, 'is missing');
  return rec;
}

function uint(x: unknown, path: string, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0 || x > max) fail(path, `must be an integer in [0, ${max}]`, x);
  return x;
}

function finite(x: unknown, path: string): number {
  if (typeof x !== 'number' || !Number.isFinite(x)) fail(path, 'must be a finite number', x);
  return x;
}

function bool(x: unknown, path: string): boolean {
  if (typeof x !== 'boolean') fail(path, 'must be a boolean', x);
  return x;
}

function strOrNull(x: unknown, path: string): string | null {
  if (x !== null && (typeof x !== 'string' || x.length > 1000)) fail(path, 'must be a string (at most 1000 characters) or null', x);
  return x;
}

const HEX64 = /^0x(0|[1-9a-f][0-9a-f]{0,15})$/;

function hex64(x: unknown, path: string): string {
  if (typeof x !== 'string' || !HEX64.test(x)) fail(path, 'must be a 64-bit value as 0x-prefixed lowercase hex', x);
  return x;
}

const ENTRY_KEYS = ['seq', 'cmd', 'command', 'operand', 'range', 'status', 'statusName', 'result', 'issuedAt', 'completedAt', 'error'] as const;

function entry(x: unknown, path: string): VcmdLogEntry {
  const r = obj(x, path, ENTRY_KEYS);
  let range: { min: number; max: number } | null = null;
  if (r.range !== null) {
    const rr = obj(r.range, `${path}.range`, ['min', 'max']);
    range = { min: uint(rr.min, `${path}.range.min`, 0xfffff), max: uint(rr.max, `${path}.range.max`, 0xfffff) };
  }
  const command = r.command;
  if (typeof command !== 'string' || command.length > 100) fail(`${path}.command`, 'must be a short string', command);
  return {
    seq: uint(r.seq, `${path}.seq`),
    cmd: uint(r.cmd, `${path}.cmd`, 255),
    command,
    operand: r.operand === null ? null : uint(r.operand, `${path}.operand`, 0xfffff),
    range,
    status: r.status === null ? null : uint(r.status, `${path}.status`, 127),
    statusName: strOrNull(r.statusName, `${path}.statusName`),
    result: r.result === null ? null : uint(r.result, `${path}.result`, 0xfffff),
    issuedAt: finite(r.issuedAt, `${path}.issuedAt`),
    completedAt: r.completedAt === null ? null : finite(r.completedAt, `${path}.completedAt`),
    error: strOrNull(r.error, `${path}.error`),
  };
}

const WRITER_ID = /^[\x21-\x7e]{1,64}$/;

/** Validate a writer (untrusted: it comes with a guest's write); EINVAL naming the bad path. */
export function parseWriter(x: unknown, path = 'writer'): VcmdWriter {
  const w = obj(x, path, ['id', 'seq']);
  if (typeof w.id !== 'string' || !WRITER_ID.test(w.id)) fail(`${path}.id`, 'must be 1-64 printable ASCII characters', w.id);
  return { id: w.id, seq: uint(w.seq, `${path}.seq`) };
}

/**
 * Validate untrusted guest-visible state (from a store); EINVAL naming the first bad path. The
 * register values are checked against the device's layout by `VcmdDevice.restoreGuestState`.
 */
export function parseGuestState(x: unknown): VcmdGuestState {
  const r = obj(x, 'state', ['registers', 'pendingHalves', 'writer']);
  const regs = obj(r.registers, 'state.registers', ['VCMD_REG', 'VCMD_EO_REG', 'VCRSP_REG']);
  const halves = obj(r.pendingHalves, 'state.pendingHalves', ['low', 'high']);
  const low = bool(halves.low, 'state.pendingHalves.low');
  const high = bool(halves.high, 'state.pendingHalves.high');
  if (low && high) fail('state.pendingHalves', 'cannot have both halves pending (the pair would have fired)', halves);
  return {
    registers: {
      VCMD_REG: hex64(regs.VCMD_REG, 'state.registers.VCMD_REG'),
      VCMD_EO_REG: hex64(regs.VCMD_EO_REG, 'state.registers.VCMD_EO_REG'),
      VCRSP_REG: hex64(regs.VCRSP_REG, 'state.registers.VCRSP_REG'),
    },
    pendingHalves: { low, high },
    writer: r.writer === null ? null : parseWriter(r.writer, 'state.writer'),
  };
}

/** Validate untrusted snapshot data; EINVAL naming the first bad path. */
export function parseDeviceSnapshot(x: unknown): VcmdDeviceSnapshot {
  const version = typeof x === 'object' && x !== null ? (x as { version?: unknown }).version : undefined;
  if (version !== 1 && version !== 2) fail('snapshot.version', 'must be 1 or 2', version);
  const keys = ['kind', 'version', 'config', 'registers', 'pendingHalves', 'nextSeq', 'log', 'stats'];
  const r = obj(x, 'snapshot', version === 2 ? [...keys, 'writer'] : keys);
  if (r.kind !== 'ioasid/vcmd-device') fail('snapshot.kind', "must be 'ioasid/vcmd-device'", r.kind);
  const config = parseDeviceConfig(r.config);
  const regs = obj(r.registers, 'snapshot.registers', ['VCMD_REG', 'VCMD_EO_REG', 'VCRSP_REG']);
  const halves = obj(r.pendingHalves, 'snapshot.pendingHalves', ['low', 'high']);
  const low = bool(halves.low, 'snapshot.pendingHalves.low');
  const high = bool(halves.high, 'snapshot.pendingHalves.high');
  if (low && high) fail('snapshot.pendingHalves', 'cannot have both halves pending (the pair would have fired)', halves);
  if (!Array.isArray(r.log)) fail('snapshot.log', 'must be an array', r.log);
  if (r.log.length > MAX_LOG_SIZE) fail('snapshot.log', `must hold at most ${MAX_LOG_SIZE} entries`, r.log.length);
  const log = r.log.map((e, i) => entry(e, `snapshot.log[${i}]`));
  const nextSeq = uint(r.nextSeq, 'snapshot.nextSeq');
  for (const [i, e] of log.entries()) {
    if (e.seq >= nextSeq) fail(`snapshot.log[${i}].seq`, 'must be below nextSeq', e.seq);
    // A command taken back (not committed) has no status but is complete.
    if (e.status === null && e.completedAt === null) fail(`snapshot.log[${i}].status`, 'must be set: no command is in progress in a snapshot');
  }
  const st = obj(r.stats, 'snapshot.stats', ['commands', 'droppedWrites', 'undefinedCommands', 'internalErrors']);
  return {
    kind: 'ioasid/vcmd-device',
    version: 2,
    config,
    registers: {
      VCMD_REG: hex64(regs.VCMD_REG, 'snapshot.registers.VCMD_REG'),
      VCMD_EO_REG: hex64(regs.VCMD_EO_REG, 'snapshot.registers.VCMD_EO_REG'),
      VCRSP_REG: hex64(regs.VCRSP_REG, 'snapshot.registers.VCRSP_REG'),
    },
    pendingHalves: { low, high },
    writer: r.writer === undefined || r.writer === null ? null : parseWriter(r.writer, 'snapshot.writer'),
    nextSeq,
    log,
    stats: {
      commands: uint(st.commands, 'snapshot.stats.commands'),
      droppedWrites: uint(st.droppedWrites, 'snapshot.stats.droppedWrites'),
      undefinedCommands: uint(st.undefinedCommands, 'snapshot.stats.undefinedCommands'),
      internalErrors: uint(st.internalErrors, 'snapshot.stats.internalErrors'),
    },
  };
}
