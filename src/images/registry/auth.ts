/**
 * Registry authentication (Docker token spec / OCI distribution): a 401 carries a
 * `WWW-Authenticate` challenge, Basic or Bearer. For Bearer, a token for the scope
 * `repository:<name>:pull` is fetched from the realm, with Basic credentials, an
 * identity (refresh) token, or anonymously, and cached until shortly before it expires.
 * Credentials and tokens are never logged and never sent to another origin.
 */
import { BerthError } from '../../common/errors.js';
import { LruMap } from '../../common/lru.js';

/** What a caller may present to a registry. All optional: anonymous when empty. */
export interface Credentials {
  username?: string;
  password?: string;
  /** OAuth2 refresh token (Docker's "identitytoken"). */
  identityToken?: string;
  /** A bearer token to use as is. */
  registryToken?: string;
}

export interface Challenge {
  scheme: 'basic' | 'bearer';
  params: Record<string, string>;
}

/** Parses a WWW-Authenticate header: `Bearer realm="…",service="…",scope="…"`. */
export function parseChallenge(header: string | undefined): Challenge | undefined {
  if (!header) return undefined;
  const m = /^\s*(\w+)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const scheme = m[1]!.toLowerCase();
  if (scheme !== 'basic' && scheme !== 'bearer') return undefined;
  const params: Record<string, string> = {};
  const re = /([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?/g;
  for (const p of m[2]!.matchAll(re)) params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3]!;
  return { scheme, params };
}

export function hasCredentials(c: Credentials | undefined): boolean {
  return !!c && (!!c.username || !!c.password || !!c.identityToken || !!c.registryToken);
}

export function basicHeader(c: Credentials): string {
  return 'Basic ' + Buffer.from(`${c.username ?? ''}:${c.password ?? ''}`).toString('base64');
}

/** Decodes Docker's `auth` field (base64 "user:password"). */
export function decodeAuthField(auth: string): { username: string; password: string } {
  const text = Buffer.from(auth, 'base64').toString('utf8');
  const colon = text.indexOf(':');
  if (colon < 0) throw new BerthError('InvalidArgument', 'auth.auth is not base64 of "username:password"');
  return { username: text.slice(0, colon), password: text.slice(colon + 1) };
}

interface CachedToken {
  header: string;
  expiresAt: number;
}

/** The longest bearer token accepted from a token server (MAX_CACHED_TOKENS are cached). */
export const MAX_TOKEN_BYTES = 64 * 1024;
/** The longest a bearer token is kept, whatever expires_in says. */
export const MAX_TOKEN_TTL_SECONDS = 24 * 60 * 60;
/** How many tokens are kept; the least recently used goes first. */
export const MAX_CACHED_TOKENS = 1000;

/** Tokens per (origin, scope); shared by all pulls of the daemon. */
export class TokenCache {
  private readonly tokens = new LruMap<string, CachedToken>(MAX_CACHED_TOKENS);

  get(key: string): string | undefined {
    const t = this.tokens.get(key);
    if (!t) return undefined;
    if (Date.now() >= t.expiresAt) {
      this.tokens.delete(key);
      return undefined;
    }
    return t.header;
  }

  set(key: string, header: string, ttlSeconds: number): void {
    // expires_in comes from the token server: a missing, non-finite or huge one is not
    // trusted (a NaN would never expire), at most MAX_TOKEN_TTL_SECONDS.
    const secs = Number.isFinite(ttlSeconds) ? Math.min(ttlSeconds, MAX_TOKEN_TTL_SECONDS) : 60;
    // Renew a little early so a token never expires in the middle of a request.
    const ttl = Math.max(10, secs - 10) * 1000;
    this.tokens.set(key, { header, expiresAt: Date.now() + ttl });
  }

  delete(key: string): void {
    this.tokens.delete(key);
  }

  /** When the token under `key` expires (ms since the epoch), if one is held. */
  expiresAt(key: string): number | undefined {
    return this.tokens.get(key)?.expiresAt;
  }
}
