/**
 * `openStore(spec)`: the one way the service picks a backend from its configuration.
 *
 *   memory          in-process, not durable (tests, demos)
 *   sqlite:PATH     SQLite file at PATH (parent folders are created); `sqlite::memory:` is not durable
 *   etcd://...      the cluster backend: not available yet (EINVAL)
 */
import { IoasidError } from '../core/index.ts';
import { MemoryStore } from './memory-store.ts';
import type { Store } from './rows.ts';
import { SqliteStore, type SqliteStoreOptions } from './sqlite-store.ts';

export type OpenStoreOptions = SqliteStoreOptions;

/** Make the store a spec names; nothing is read until `open()`. */
export function openStore(spec: string, opts: OpenStoreOptions = {}): Store {
  if (typeof spec !== 'string') {
    throw new IoasidError('EINVAL', `store spec must be a string, got ${typeof spec}`, { spec });
  }
  if (spec === 'memory') return new MemoryStore();
  if (spec.startsWith('sqlite:')) {
    const path = spec.slice('sqlite:'.length);
    if (path.length === 0) throw new IoasidError('EINVAL', 'store spec "sqlite:" needs a path, as in sqlite:/var/lib/ioasid/state.db', { spec });
    return new SqliteStore(path, opts);
  }
  if (spec.startsWith('etcd://') || spec.startsWith('etcds://')) {
    throw new IoasidError('EINVAL', `store ${spec}: the etcd backend is not available in this build`, { spec, kind: 'etcd' });
  }
  throw new IoasidError('EINVAL', `unknown store spec ${JSON.stringify(spec)} (expected memory, sqlite:PATH or etcd://...)`, { spec });
}
