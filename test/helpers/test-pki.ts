/**
 * Certificates for the TLS tests, made at test time with openssl in a folder the test owns (and
 * removes): a CA, a server certificate for 127.0.0.1 and localhost, client certificates (their CN
 * is the etcd user they act as when etcd authentication is on), and a second, unrelated CA with a
 * client certificate of its own (the "wrong CA"). EC P-256 keys: fast to make. Key files are 0600.
 *
 *   const pki = makeTestPki(dir, { clients: ['ioasid', 'root'] });
 *   pki.ca, pki.server.cert, pki.server.key, pki.client('ioasid').cert, pki.otherCa, pki.otherClient.cert
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const OPENSSL_BIN = process.env.IOASID_OPENSSL_BIN ?? '/usr/bin/openssl';

/** Why the TLS tests cannot run here, or null when they can. */
export const PKI_SKIP: string | null = existsSync(OPENSSL_BIN) ? null : `openssl is not installed (${OPENSSL_BIN}): install the openssl package to run the TLS tests`;

export interface CertFiles {
  readonly cert: string;
  readonly key: string;
}

export interface TestPki {
  readonly dir: string;
  /** The CA that signed `server` and every `client(...)`. */
  readonly ca: string;
  readonly server: CertFiles;
  client(cn: string): CertFiles;
  /** A second CA, unrelated to `ca`. */
  readonly otherCa: string;
  /** A client certificate (CN ioasid) signed by `otherCa`. */
  readonly otherClient: CertFiles;
}

function openssl(args: readonly string[], cwd: string): void {
  execFileSync(OPENSSL_BIN, [...args], { cwd, stdio: ['ignore', 'ignore', 'pipe'], timeout: 20_000 });
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];

function makeCa(dir: string, name: string): CertFiles {
  const f = { cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`) };
  openssl(['req', '-x509', ...EC, '-keyout', f.key, '-out', f.cert, '-days', '2', '-subj', `/CN=${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
  chmodSync(f.key, 0o600);
  return f;
}

function makeLeaf(dir: string, name: string, cn: string, ca: CertFiles, ext: string): CertFiles {
  const f = { cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`) };
  const csr = join(dir, `${name}.csr`);
  const extFile = join(dir, `${name}.ext`);
  writeFileSync(extFile, ext);
  openssl(['req', ...EC, '-keyout', f.key, '-out', csr, '-subj', `/CN=${cn}`], dir);
  openssl(['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-out', f.cert, '-days', '2', '-extfile', extFile], dir);
  chmodSync(f.key, 0o600);
  return f;
}

/** Make the certificates in `dir` (created if missing; the caller removes it). */
export function makeTestPki(dir: string, opts: { clients?: readonly string[] } = {}): TestPki {
  if (PKI_SKIP !== null) throw new Error(PKI_SKIP);
  mkdirSync(dir, { recursive: true });
  const ca = makeCa(dir, 'ca');
  const server = makeLeaf(dir, 'server', 'etcd', ca, 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n');
  const clients = new Map<string, CertFiles>();
  for (const cn of opts.clients ?? ['ioasid']) clients.set(cn, makeLeaf(dir, `client-${cn}`, cn, ca, 'extendedKeyUsage=clientAuth\n'));
  const other = makeCa(dir, 'other-ca');
  const otherClient = makeLeaf(dir, 'other-client', 'ioasid', other, 'extendedKeyUsage=clientAuth\n');
  return {
    dir,
    ca: ca.cert,
    server,
    client(cn: string): CertFiles {
      const c = clients.get(cn);
      if (c === undefined) throw new Error(`no client certificate for CN ${cn} (made: ${[...clients.keys()].join(', ')})`);
      return c;
    },
    otherCa: other.cert,
    otherClient,
  };
}
