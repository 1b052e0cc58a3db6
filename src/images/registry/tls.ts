/**
 * TLS settings per registry host. Certificates are checked against Node's bundled roots
 * plus the system CA store (/etc/ssl/certs/ca-certificates.crt, where distributions put
 * the roots their administrators add), plus what is configured for the host:
 * - `registries."<host>".ca_file`, and `cert_file`/`key_file` for mutual TLS;
 * - a docker-style directory `<images.registry_certs_dir>/<host>/`: every `*.crt` is a
 *   CA, and `client.cert`/`client.key` (or any `<name>.cert` with its `<name>.key`) a
 *   client certificate.
 * `insecure_skip_verify` and all of the above belong to the host they are configured for
 * and never carry over to another host (a token server, blob storage).
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createSecureContext, rootCertificates, type SecureContext } from 'node:tls';
import { BerthError, errnoOf, messageOf } from '../../common/errors.js';
import { LruMap } from '../../common/lru.js';
import { defaultRegistryConfig, type RegistryConfig } from '../../config/schema.js';

/** The system CA bundle of Debian, Ubuntu, Alpine, Arch (and others, through symlinks). */
export const SYSTEM_CA_BUNDLE = '/etc/ssl/certs/ca-certificates.crt';

/** What one HTTPS connection to a host is set up with. */
export interface TlsSettings {
  insecureSkipVerify: boolean;
  /**
   * Roots configured for the host (ca_file, certs.d), in PEM: trusted on top of the
   * bundled and system ones (see trustedRoots), which are not repeated here (an unpack
   * worker is sent these settings with each blob it downloads, and builds its own context).
   */
  ca: string[];
  cert?: Buffer;
  key?: Buffer;
  /** Built once from the above: parsing a few hundred roots per connection would cost each one milliseconds. */
  secureContext: SecureContext;
  /** Identifies these settings (for keep-alive agent reuse); says nothing about the keys. */
  id: string;
}

let systemRoots: string[] | undefined;

function readSystemRoots(): string[] {
  if (!systemRoots) {
    try {
      systemRoots = [readFileSync(SYSTEM_CA_BUNDLE, 'utf8')];
    } catch {
      systemRoots = [];
    }
  }
  return systemRoots;
}

/** The roots a connection trusts: Node's bundled ones, the system store's, then `configured`. */
export function trustedRoots(configured: string[]): string[] {
  return [...rootCertificates, ...readSystemRoots(), ...configured];
}

/**
 * The context of a connection that trusts `configured` (see trustedRoots) and presents
 * `cert` and `key` if given; `where` names the configuration in the error.
 */
export function secureContextOf(configured: string[], cert: Buffer | undefined, key: Buffer | undefined, where: string): SecureContext {
  try {
    return createSecureContext({ ca: trustedRoots(configured), ...(cert && key ? { cert, key } : {}) });
  } catch (err) {
    throw new BerthError('FailedPrecondition', `${where}: the configured certificates cannot be used: ${messageOf(err)}`);
  }
}

/** Settings are re-read after this long, so files added to certs.d apply without a restart. */
const CACHE_MS = 10_000;
/** Hosts whose settings are kept at most (the least recently used are built again when asked). */
export const MAX_TLS_HOSTS = 64;

export class RegistryTls {
  private readonly cache: LruMap<string, { at: number; settings: TlsSettings }>;

  constructor(
    private readonly registries: Record<string, RegistryConfig>,
    /** The docker-style certs.d directory ('' for none). */
    private readonly certsDir: string,
    /** Hosts whose settings are kept at most. */
    maxHosts = MAX_TLS_HOSTS,
  ) {
    this.cache = new LruMap(maxHosts);
  }

  /** How many hosts' settings are kept. */
  get size(): number {
    return this.cache.size;
  }

  /** The settings for `host` (host[:port], as configured and as in image references). */
  for(host: string): TlsSettings {
    const hit = this.cache.get(host);
    if (hit && Date.now() - hit.at < CACHE_MS) return hit.settings;
    const settings = this.build(host);
    this.cache.set(host, { at: Date.now(), settings });
    return settings;
  }

  private build(host: string): TlsSettings {
    const s = this.registries[host] ?? defaultRegistryConfig();
    const ca: string[] = [];
    let cert: Buffer | undefined;
    let key: Buffer | undefined;
    const where = `registries."${host}"`;
    if (s.ca_file) ca.push(readPem(s.ca_file, `${where}.ca_file`));
    if (!!s.cert_file !== !!s.key_file) throw new BerthError('FailedPrecondition', `${where}: cert_file and key_file go together; set both or neither`);
    if (s.cert_file && s.key_file) {
      cert = Buffer.from(readPem(s.cert_file, `${where}.cert_file`));
      key = Buffer.from(readPem(s.key_file, `${where}.key_file`));
    }
    const dir = this.certsDir && !host.includes('/') && !host.startsWith('.') ? join(this.certsDir, host) : '';
    if (dir && existsSync(dir)) {
      const names = readdirSync(dir).sort();
      for (const n of names.filter((x) => x.endsWith('.crt'))) ca.push(readPem(join(dir, n), `${dir}/${n}`));
      if (!cert) {
        const pair = names.find((n) => n.endsWith('.cert') && names.includes(n.slice(0, -'.cert'.length) + '.key'));
        const lone = names.find((n) => n.endsWith('.cert') || n.endsWith('.key'));
        if (!pair && lone) throw new BerthError('FailedPrecondition', `${dir}: ${lone} has no matching ${lone.endsWith('.cert') ? '.key' : '.cert'} file`);
        if (pair) {
          cert = Buffer.from(readPem(join(dir, pair), `${dir}/${pair}`));
          key = Buffer.from(readPem(join(dir, pair.slice(0, -'.cert'.length) + '.key'), `${dir}/${pair.slice(0, -'.cert'.length)}.key`));
        }
      }
    }
    const id = createHash('sha256')
      .update(JSON.stringify([s.insecure_skip_verify, ca, cert?.toString('base64') ?? '', key?.toString('base64') ?? '']))
      .digest('hex')
      .slice(0, 16);
    const secureContext = secureContextOf(ca, cert, key, where);
    return { insecureSkipVerify: s.insecure_skip_verify, ca, ...(cert && key ? { cert, key } : {}), secureContext, id };
  }
}

function readPem(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new BerthError('FailedPrecondition', `${what}: cannot read ${path} (${errnoOf(err) ?? messageOf(err)})`);
  }
}
