/**
 * `src/cluster`: one PASID namespace across many hosts on etcd (a migration domain), with live
 * migration of VMs. The service's PasidAuthority commits through the role's etcd journal when its
 * store is etcd; the etcd backend itself is in src/store (etcd-*.ts). See docs/cluster.md.
 */
export type { ClusterHealth, ClusterRole, ClusterStatus, MigrateResult } from './role.ts';
export { EtcdClusterRole } from './etcd-role.ts';
export type { EntryRows, EtcdClusterRoleOptions } from './etcd-role.ts';
export { BlockPlacement } from './placement.ts';
export type { ClusterLogFn, PlacementOptions } from './placement.ts';
export type { ReclaimReport } from '../store/index.ts';
