/**
 * The configuration of one emulated VCMD device (what the vIOMMU advertises), validated once at
 * construction and again when a snapshot is restored. Plain JSON-safe data.
 */
import { IoasidError, PASID_BITS, fmtId } from '../core/index.ts';
import type { Layout, PasBit } from './registers.ts';

export interface VcmdDeviceConfig {
  /** Register layout: 'A' = VT-d 3.0/3.1, 'B' = VT-d 3.3+. */
  readonly layout: Layout;
  /** VCCAP.PAS position: 0 as Linux (no NS/FPS bits), 1 as spec Rev 5.10. */
  readonly pasBit: PasBit;
  /** VCCAP.PAS: the Allocate command is supported. */
  readonly pasidAllocation: boolean;
  /** Free is supported (VCCAP.FPS with PAS at bit 1; implied by PAS at bit 0). */
  readonly freeCommand: boolean;
  /** VCCAP.NS: the Null command is supported (needs PAS at bit 1). */
  readonly nullCommand: boolean;
  /** VCCAP.RX (ours, layout B only): Allocate carries [min, max]. */
  readonly rangeExtension: boolean;
  /** ECAP.PSS: PASIDs have pss + 1 bits (0..19). */
  readonly pss: number;
  /** CAP.CM: caching mode, the "running under a vIOMMU" hint. */
  readonly cachingMode: boolean;
  /** ECAP.SMTS: scalable mode translation support. */
  readonly scalableMode: boolean;
  /** ECAP.PASID: PASID support (VCCAP.PAS/FPS read as clear without it). */
  readonly pasidSupport: boolean;
  /** ECAP.VCS: virtual command support (VCCAP/VCMD/VCRSP are RsvdZ without it). */
  readonly virtualCommands: boolean;
  /** Entries kept in the recent-commands log (0..1024). */
  readonly logSize: number;
}

export type VcmdDeviceConfigInput = { readonly layout: Layout } & Partial<Omit<VcmdDeviceConfig, 'layout'>>;

export const DEFAULT_LOG_SIZE = 32;
export const MAX_LOG_SIZE = 1024;

const BOOL_KEYS = [
  'pasidAllocation', 'freeCommand', 'nullCommand', 'rangeExtension', 'cachingMode', 'scalableMode', 'pasidSupport', 'virtualCommands',
] as const;

function bad(message: string, details: Record<string, unknown>): IoasidError {
  return new IoasidError('EINVAL', message, details);
}

/** Fill defaults and check consistency; EINVAL naming the offending option. */
export function normalizeDeviceConfig(input: VcmdDeviceConfigInput): VcmdDeviceConfig {
  if (typeof input !== 'object' || input === null) throw bad('device config must be an object', { config: input });
  const layout = input.layout;
  if (layout !== 'A' && layout !== 'B') throw bad(`layout must be 'A' or 'B', got ${fmtId(layout)}`, { layout });
  const pasBit = input.pasBit ?? 0;
  if (pasBit !== 0 && pasBit !== 1) throw bad(`pasBit must be 0 or 1, got ${fmtId(pasBit)}`, { pasBit });
  for (const k of BOOL_KEYS) {
    const v = input[k];
    if (v !== undefined && typeof v !== 'boolean') throw bad(`${k} must be a boolean, got ${fmtId(v)}`, { [k]: v });
  }
  const cfg: VcmdDeviceConfig = {
    layout,
    pasBit,
    pasidAllocation: input.pasidAllocation ?? true,
    freeCommand: input.freeCommand ?? true,
    nullCommand: input.nullCommand ?? pasBit === 1,
    rangeExtension: input.rangeExtension ?? false,
    pss: input.pss ?? PASID_BITS - 1,
    cachingMode: input.cachingMode ?? true,
    scalableMode: input.scalableMode ?? true,
    pasidSupport: input.pasidSupport ?? true,
    virtualCommands: input.virtualCommands ?? true,
    logSize: input.logSize ?? DEFAULT_LOG_SIZE,
  };
  if (!Number.isInteger(cfg.pss) || cfg.pss < 0 || cfg.pss > PASID_BITS - 1) {
    throw bad(`pss must be an integer in [0, ${PASID_BITS - 1}], got ${fmtId(cfg.pss)}`, { pss: cfg.pss });
  }
  if (!Number.isInteger(cfg.logSize) || cfg.logSize < 0 || cfg.logSize > MAX_LOG_SIZE) {
    throw bad(`logSize must be an integer in [0, ${MAX_LOG_SIZE}], got ${fmtId(cfg.logSize)}`, { logSize: cfg.logSize });
  }
  if (cfg.rangeExtension && layout !== 'B') {
    throw bad('the range extension needs layout B (VCMD_EO_REG carries max)', { layout, rangeExtension: true });
  }
  if (pasBit === 0 && cfg.nullCommand) {
    throw bad('with PAS at bit 0 (Linux layout) VCCAP has no NS bit: nullCommand needs pasBit 1', { pasBit, nullCommand: true });
  }
  if (pasBit === 0 && !cfg.freeCommand) {
    throw bad('with PAS at bit 0 (Linux layout) Free is implied by PAS: freeCommand false needs pasBit 1', { pasBit, freeCommand: false });
  }
  return Object.freeze(cfg);
}

/** Validate a config read from untrusted input (a snapshot): every key present and no others. */
export function parseDeviceConfig(x: unknown): VcmdDeviceConfig {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) throw bad('snapshot config must be an object', { config: x });
  const keys: readonly string[] = ['layout', 'pasBit', 'pss', 'logSize', ...BOOL_KEYS];
  const rec = x as Record<string, unknown>;
  for (const k of Object.keys(rec)) {
    if (!keys.includes(k)) throw bad(`snapshot config has an unknown key ${JSON.stringify(k)}`, { key: k });
  }
  for (const k of keys) {
    if (rec[k] === undefined) throw bad(`snapshot config lacks ${k}`, { key: k });
  }
  return normalizeDeviceConfig(rec as unknown as VcmdDeviceConfigInput);
}
