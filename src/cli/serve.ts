/** `ioasid serve`: the PASID authority service. */
import { Command, InvalidArgumentError } from 'commander';
// The one module of the CLI that reaches the service: `ioasid serve` runs it (docs/decisions.md).
import { DEFAULT_PORT, DEFAULT_STORE, serveUntilSignalled } from '../service/index.ts';
import { DESCRIPTIONS } from './descriptions.ts';

function port(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError(`port must be an integer in [0, 65535], got ${v}`);
  return n;
}

export function serveCommand(): Command {
  return new Command('serve')
    .description(DESCRIPTIONS.serve)
    .option('--store <spec>', 'memory, sqlite:PATH, or etcd://HOST:PORT[,HOST:PORT...] (cluster mode: every etcd member)', DEFAULT_STORE)
    .option('--host-id <name>', "cluster mode: this host's name in the migration domain (default: the hostname)")
    .option('--domain <name>', 'cluster mode: the migration domain (one PASID namespace) to join (default: default)')
    .option('--host <address>', 'address to listen on', '127.0.0.1')
    .option('--port <port>', 'TCP port', port, DEFAULT_PORT)
    .option('--socket <path>', 'listen on a Unix socket instead of TCP')
    .option('--admin-token-file <path>', 'read the admin token from this file (else one is created at first start)')
    .option('--sync <mode>', "SQLite durability: normal (survives a crash of the service) or full (an fsync per commit: survives a power loss)", 'normal')
    .option('--log-level <level>', 'pino log level', 'info')
    .action(async (o: { store: string; host: string; port: number; socket?: string; adminTokenFile?: string; logLevel: string; sync: string; hostId?: string; domain?: string }) => {
      if (o.sync !== 'normal' && o.sync !== 'full') throw new InvalidArgumentError(`--sync must be normal or full, got ${o.sync}`);
      await serveUntilSignalled({
        store: o.store,
        host: o.host,
        port: o.port,
        logLevel: o.logLevel,
        sync: o.sync,
        ...(o.socket !== undefined ? { socket: o.socket } : {}),
        ...(o.adminTokenFile !== undefined ? { adminTokenFile: o.adminTokenFile } : {}),
        ...(o.hostId !== undefined ? { hostId: o.hostId } : {}),
        ...(o.domain !== undefined ? { domain: o.domain } : {}),
      });
    });
}
