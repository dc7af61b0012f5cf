/**
 * `src/cluster`: one PASID namespace across many hosts on etcd (a migration domain), with live
 * migration of VMs. The service's PasidAuthority uses the coordinator when its store is etcd;
 * the etcd backend itself is in src/store (etcd-*.ts). See docs/cluster.md.
 */
export { ClusterCoordinator } from './coordinator.ts';
export type { ClusterLogFn, ClusterModelPort, ClusterOptions, ClusterStatus, MigrateResult } from './coordinator.ts';
export type { ReclaimReport } from '../store/index.ts';
