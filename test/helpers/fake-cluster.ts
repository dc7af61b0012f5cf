/**
 * A cluster role for tests of the service's side of cluster mode: it commits through the local
 * store, says that some VMs run on another host (hostB, whose URL it knows), and reports the
 * health the test sets. The real role is src/cluster's.
 */
import { IoasidError } from '../../src/core/index.ts';
import type { Host, Journal, Vm } from '../../src/host/index.ts';
import type { ClusterHealth, ClusterRole, ClusterStatus } from '../../src/cluster/index.ts';
import type { MemoryStore } from '../../src/store/index.ts';
import { StoreJournal } from '../../src/service/store-journal.ts';

/** A cluster role that serves some VMs here and says the others run on hostB; its health is set by the test. */
export function fakeCluster(store: MemoryStore) {
  const journal = new StoreJournal(store);
  let health: ClusterHealth = { ready: true, fenced: false, lease: { held: true, ttlSeconds: 9 }, blocksHeld: 3 };
  const elsewhere = new Set<string>();
  const role: ClusterRole = {
    hostId: 'hostA',
    journal: journal as Journal,
    attach: (_host: Host<Journal>) => {},
    ensureServes: async (vm: string) => {
      if (elsewhere.has(vm)) throw new IoasidError('EREMOTE', `VM ${vm} runs on host hostB`, { vm, host: 'hostB', url: 'http://10.0.0.2:7070' });
    },
    hostOf: (vm: string) => (elsewhere.has(vm) ? 'hostB' : 'hostA'),
    status: (): ClusterStatus => ({
      domain: 'rack7', host: 'hostA', fenced: null, blockSize: 1024, revision: 42,
      hosts: [{ id: 'hostA', alive: true, url: 'http://10.0.0.1:7070', startedAt: 1, vms: 1, blocks: 3 }, { id: 'hostB', alive: false, url: 'http://10.0.0.2:7070', startedAt: 1, vms: 1, blocks: 1 }],
      vms: [], blocks: { own: 3, total: 4 }, pasids: 0, inconsistencies: 0,
    }),
    migrate: async (vm: Vm<Journal>, to: string) => ({ vm: vm.id, from: 'hostA', to, revision: 44, pasids: vm.pasids(), bindings: vm.bindings().length }),
    reclaim: async (host: string) => ({ host, fencedAt: 43, vms: ['vm9'], pasids: 2, bindings: 1, blocks: 1 }),
    close: async () => {},
    health: () => health,
  };
  return { role, setHealth: (h: ClusterHealth) => (health = h), moveAway: (vm: string) => elsewhere.add(vm) };
}

