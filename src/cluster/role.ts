/**
 * What a PASID authority needs of cluster mode: the journal its host commits through (etcd, with
 * the placement of allocations in this host's blocks), the following of the domain (other hosts'
 * changes applied to the host model through `Host.applyCommitted`), and the domain's operations.
 */
import type { Host, Journal, Vm } from '../host/index.ts';
import type { ReclaimReport } from '../store/index.ts';

export interface MigrateResult {
  readonly vm: string;
  readonly from: string;
  readonly to: string;
  /** etcd revision of the move. */
  readonly revision: number;
  readonly pasids: readonly number[];
  readonly bindings: number;
}

export interface ClusterStatus {
  readonly domain: string;
  readonly host: string;
  readonly fenced: { readonly by: string; readonly reason: string; readonly revision: number } | null;
  readonly blockSize: number;
  readonly revision: number;
  readonly hosts: readonly { id: string; alive: boolean; url: string | null; startedAt: number | null; vms: number; blocks: number }[];
  readonly vms: readonly { id: string; host: string; state: string; pasids: number }[];
  readonly blocks: { readonly own: number; readonly total: number };
  readonly pasids: number;
  readonly inconsistencies: number;
}

/**
 * What the service reads of cluster mode for `/readyz` and `/metrics` (docs/cluster.md,
 * "Health"). Synchronous and cheap: it is read at every probe and every scrape, so it reports
 * what the role already knows (its lease keep-alives, its watch, the fence it saw), never a
 * round trip to etcd.
 */
export interface ClusterHealth {
  /** True when this host takes changes: not fenced, its lease held, etcd reachable. */
  readonly ready: boolean;
  /** Why not, in a few words, when `ready` is false (e.g. "fenced by hostB", "lease lost"). */
  readonly reason?: string;
  /** This incarnation was fenced: every change is refused until it restarts. */
  readonly fenced: boolean;
  /** This host's etcd lease: kept alive or not, and the seconds left on it at its last keep-alive (null: no lease). */
  readonly lease: { readonly held: boolean; readonly ttlSeconds: number | null };
  /** PASID blocks of the namespace this host holds. */
  readonly blocksHeld: number;
}

export interface ClusterRole {
  /** This host's name in its migration domain. */
  readonly hostId: string;
  /** The journal the authority's host commits through. */
  readonly journal: Journal;
  /** Start following the domain: keep `host` current with the changes other hosts commit. */
  attach(host: Host<Journal>): void | Promise<void>;
  /**
   * Resolves when this host serves the VM. A VM another host of the domain serves is refused
   * with `EREMOTE` (HTTP 421 Misdirected Request) whose details name the owner: `{ vm, host,
   * url }` (`url`: the owner's advertised URL, null when it has none); the client sends the
   * request there. A VM nobody serves is `ENOENT`; a fenced or cut-off host answers `ENODEV`.
   * The service calls it before every change of a VM (src/service/authority.ts).
   */
  ensureServes(vm: string): Promise<void>;
  /** Readiness and health, for `/readyz` and `/metrics`. */
  health(): ClusterHealth;
  /** The host a VM runs on, or null. */
  hostOf(vm: string): string | null;
  status(): ClusterStatus;
  /** Live migration: the VM moves to host `to` in one commit. */
  migrate(vm: Vm<Journal>, to: string): Promise<MigrateResult>;
  /** An operator's reclaim of a dead host. */
  reclaim(host: string, opts: { force?: boolean }): Promise<ReclaimReport>;
  close(): Promise<void>;
}
