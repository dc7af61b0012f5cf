/**
 * `openStore(spec)`: the one way the service picks a backend from its configuration.
 *
 *   memory          in-process, not durable (tests, demos)
 *   sqlite:PATH     SQLite file at PATH (parent folders are created); `sqlite::memory:` is not durable
 *   etcd://H:P[,H:P...]  the cluster backend: every etcd member; `hostId` and `domain` name this
 *                   host and its migration domain (docs/cluster.md)
 *   etcds://H:P[,H:P...] the same over TLS; `etcdSecurity` gives the CA, client certificate and
 *                   key, and an etcd user with its password file (either scheme takes the user)
 */
import { IoasidError } from '../core/index.ts';
import { MemoryStore } from './memory-store.ts';
import type { Store } from './rows.ts';
import { SqliteStore, type SqliteStoreOptions } from './sqlite-store.ts';
import { EtcdStore, type EtcdStoreOptions } from './etcd-store.ts';
import { etcdSpecIsTls, parseEtcdSpec } from './etcd-client.ts';
import { refuseEtcdSecurity } from './etcd-security.ts';

export type OpenStoreOptions = SqliteStoreOptions & Omit<Partial<EtcdStoreOptions>, 'endpoints' | 'spec' | 'tls'>;

/** Make the store a spec names; nothing is read until `open()`. */
export function openStore(spec: string, opts: OpenStoreOptions = {}): Store {
  if (typeof spec !== 'string') {
    throw new IoasidError('EINVAL', `store spec must be a string, got ${typeof spec}`, { spec });
  }
  if (!spec.startsWith('etcd://') && !spec.startsWith('etcds://')) refuseEtcdSecurity(spec, opts.etcdSecurity);
  if (spec === 'memory') return new MemoryStore(opts.eventRetention !== undefined ? { eventRetention: opts.eventRetention } : {});
  if (spec.startsWith('sqlite:')) {
    const path = spec.slice('sqlite:'.length);
    if (path.length === 0) throw new IoasidError('EINVAL', 'store spec "sqlite:" needs a path, as in sqlite:/var/lib/ioasid/state.db', { spec });
    return new SqliteStore(path, sqliteOptions(opts));
  }
  if (spec.startsWith('etcd://') || spec.startsWith('etcds://')) {
    const { synchronous: _sync, lockTimeoutMs: _lock, eventRetention: _events, ...etcd } = opts;
    return new EtcdStore({ ...etcd, endpoints: parseEtcdSpec(spec), spec, tls: etcdSpecIsTls(spec) });
  }
  throw new IoasidError('EINVAL', `unknown store spec ${JSON.stringify(spec)} (expected memory, sqlite:PATH, etcd://... or etcds://...)`, { spec });
}

function sqliteOptions(o: OpenStoreOptions): SqliteStoreOptions {
  return {
    ...(o.synchronous !== undefined ? { synchronous: o.synchronous } : {}),
    ...(o.lockTimeoutMs !== undefined ? { lockTimeoutMs: o.lockTimeoutMs } : {}),
    ...(o.eventRetention !== undefined ? { eventRetention: o.eventRetention } : {}),
  };
}
