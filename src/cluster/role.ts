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

export interface ClusterRole {
  /** This host's name in its migration domain. */
  readonly hostId: string;
  /** The journal the authority's host commits through. */
  readonly journal: Journal;
  /** Start following the domain: keep `host` current with the changes other hosts commit. */
  attach(host: Host<Journal>): void | Promise<void>;
  /** ENODEV (naming the host that serves it) unless this host serves the VM. */
  ensureServes(vm: string): Promise<void>;
  /** The host a VM runs on, or null. */
  hostOf(vm: string): string | null;
  status(): ClusterStatus;
  /** Live migration: the VM moves to host `to` in one commit. */
  migrate(vm: Vm<Journal>, to: string): Promise<MigrateResult>;
  /** An operator's reclaim of a dead host. */
  reclaim(host: string, opts: { force?: boolean }): Promise<ReclaimReport>;
  close(): Promise<void>;
}
