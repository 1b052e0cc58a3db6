/**
 * A client for the OCI distribution API: fetch manifests by tag or digest and stream
 * blobs, from a registry or its mirrors.
 *
 * - Endpoints: the mirrors configured for the image's registry, in order, then the
 *   registry itself. A mirror that fails in any way is skipped (logged) and the next is
 *   tried; the registry's own error is the one reported.
 * - Plain HTTP only when configured, or for loopback registries (as Docker does).
 * - Retries with exponential backoff on network errors, 429 and 5xx; 4xx are final.
 * - Auth: on 401 the challenge is answered once (Basic, or a Bearer token from the
 *   realm) and the request repeated. The caller's credentials go only to the image's
 *   own registry and its token server; a mirror gets the credentials configured for the
 *   mirror's host. Credentials go to a token server over HTTPS only, unless the registry
 *   itself is a plain-HTTP loopback registry and the token server is on the same host; a
 *   token server on another host gets that host's TLS settings, and is logged.
 * - TLS: see tls.ts (system roots, per-registry CA and client certificates, certs.d).
 * - Addresses: redirects and token realms reach loopback, link-local and unspecified
 *   addresses only for a registry (or mirror) on that same class of address; checked on
 *   the resolved addresses at connect (address-policy.ts).
 * - Caps: manifests are read up to a size cap; a blob stream ends with an error if the
 *   registry sends more or fewer bytes than the descriptor declares.
 */
import { createHash } from 'node:crypto';
import { Transform, type Readable } from 'node:stream';
import { BerthError, clip, errnoOf, messageOf } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import { LruMap } from '../../common/lru.js';
import { defaultRegistryConfig, type ImagesConfig, type RegistryConfig } from '../../config/schema.js';
import { registryHost, type ImageReference } from '../reference.js';
import { AddressPolicy } from './address-policy.js';
import { basicHeader, hasCredentials, MAX_TOKEN_BYTES, parseChallenge, TokenCache, type Credentials } from './auth.js';
import { NetworkError, readBody, send, type HttpResponse } from './http.js';
import { RegistryTls, type TlsSettings } from './tls.js';

export interface Endpoint {
  /** e.g. http://127.0.0.1:5000 (requests go to <base>/v2/…); may carry a path prefix. */
  base: URL;
  /** The host the settings and credentials belong to (the mirror's own host for a mirror). */
  host: string;
  /** TLS settings of `host`. */
  tls: TlsSettings;
  credentials: Credentials | undefined;
  mirror: boolean;
  /** Where its requests, redirects and token realm may connect: by the class of `base`'s host (address-policy.ts). */
  policy: AddressPolicy;
}

export interface ClientOptions {
  /** Pull limits and the certs.d dir: read at each use (a config reload may change them). */
  images: ImagesConfig;
  /** The per-registry settings in force, asked at each use (a config reload may replace them). */
  registries: () => Record<string, RegistryConfig>;
  /** Base delay of the retry backoff (tests shorten it). */
  backoffMs?: number;
  log?: Logger;
}

/** See {@link RegistryClient.blobRequest}. Holds credentials: never logged. */
export interface BlobRequest {
  url: string;
  /** The registry's host as configured (for messages). */
  host: string;
  /** The host whose address class the connection must keep (see address-policy.ts; the endpoint's policy). */
  policyHost: string;
  headers: Record<string, string>;
  stallMs: number;
  minBytesPerSecond: number;
  /** TLS settings of the registry's host, without the built context (a worker builds its own). */
  tls: Omit<TlsSettings, 'secureContext'>;
}

export interface FetchedManifest {
  data: Buffer;
  contentType: string;
  /** Docker-Content-Digest when the registry sent one. */
  digestHeader: string | undefined;
}

/** A non-reversible key for a set of credentials, for caches ('-' when anonymous). */
function credentialKey(c: Credentials | undefined): string {
  if (!hasCredentials(c)) return '-';
  return createHash('sha256')
    .update(JSON.stringify([c!.username ?? '', c!.password ?? '', c!.identityToken ?? '', c!.registryToken ?? '']))
    .digest('hex');
}

const LOOPBACK = /^(localhost|127(?:\.\d{1,3}){3}|\[::1\])(:\d+)?$/;

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** The registry's own error text from an error body ({"errors":[{"code","message"}]}). */
async function registryMessage(res: HttpResponse): Promise<string> {
  try {
    const body = await readBody(res, 64 * 1024, 'error body');
    const doc = JSON.parse(body.toString('utf8')) as { errors?: Array<{ code?: string; message?: string }> };
    const e = doc.errors?.[0];
    // Registry text in our messages: each string clipped (a registry may send 64 KiB).
    if (e)
      return [e.code, e.message]
        .filter((x): x is string => typeof x === 'string' && x !== '')
        .map((x) => clip(x))
        .join(': ');
    return clip(body.toString('utf8').trim());
  } catch {
    return '';
  }
}

export class RegistryClient {
  private readonly tokens = new TokenCache();
  /** Origins known to want Basic auth (bounded: a forgotten one costs one more 401). */
  private readonly basicOrigins = new LruMap<string, true>(256);
  /** Registries that redirect blob GETs (see blobRedirected; bounded as basicOrigins is). */
  private readonly redirecting = new LruMap<string, true>(256);
  private readonly backoffMs: number;
  /** TLS settings of the registry config in force, made again when a reload replaces it. */
  private tlsCache: { registries: Record<string, RegistryConfig>; certsDir: string; tls: RegistryTls } | undefined;
  /** Registry → token server pairs on different hosts already logged. */
  private readonly loggedRealms = new LruMap<string, true>(256);

  constructor(private readonly opts: ClientOptions) {
    this.backoffMs = opts.backoffMs ?? 250;
  }

  private get tls(): RegistryTls {
    const registries = this.opts.registries();
    const certsDir = this.opts.images.registry_certs_dir;
    const c = this.tlsCache;
    if (c && c.registries === registries && c.certsDir === certsDir) return c.tls;
    return (this.tlsCache = { registries, certsDir, tls: new RegistryTls(registries, certsDir) }).tls;
  }

  private readonly tlsFor = (url: URL): TlsSettings => this.tls.for(url.host);

  private settings(host: string): RegistryConfig {
    return this.opts.registries()[host] ?? defaultRegistryConfig();
  }

  private configuredCredentials(host: string): Credentials | undefined {
    const s = this.settings(host);
    return s.username || s.password ? { username: s.username, password: s.password } : undefined;
  }

  /** Mirrors first, then the registry itself. */
  endpoints(ref: ImageReference, credentials: Credentials | undefined): Endpoint[] {
    const own = this.settings(ref.domain);
    const out: Endpoint[] = [];
    for (const m of own.mirrors) {
      const base = new URL(m.replace(/\/+$/, '').replace(/\/v2$/, ''));
      out.push({
        base,
        host: base.host,
        tls: this.tls.for(base.host),
        credentials: this.configuredCredentials(base.host),
        mirror: true,
        policy: new AddressPolicy(base.host),
      });
    }
    const host = registryHost(ref.domain);
    const plain = own.plain_http ?? LOOPBACK.test(ref.domain);
    out.push({
      base: new URL(`${plain ? 'http' : 'https'}://${host}`),
      host: ref.domain,
      tls: this.tls.for(ref.domain),
      credentials: hasCredentials(credentials) ? credentials : this.configuredCredentials(ref.domain),
      mirror: false,
      policy: new AddressPolicy(host),
    });
    return out;
  }

  private url(ep: Endpoint, path: string): URL {
    const prefix = ep.base.pathname.replace(/\/+$/, '');
    return new URL(`${ep.base.origin}${prefix}/v2/${path}`);
  }

  /** Tokens belong to the credentials that earned them: a pull without (or with other) credentials must never ride on someone else's token. */
  private tokenKey(ep: Endpoint, scope: string): string {
    return `${ep.base.origin}|${scope}|${credentialKey(ep.credentials)}`;
  }

  /** The Authorization header a request to `ep` carries now, if any. */
  private authorization(ep: Endpoint, tokenKey: string): string | undefined {
    return ep.credentials?.registryToken
      ? `Bearer ${ep.credentials.registryToken}`
      : this.basicOrigins.has(ep.base.origin) && ep.credentials?.username
        ? basicHeader(ep.credentials)
        : this.tokens.get(tokenKey);
  }

  /**
   * The GET of a blob as {@link openBlob} would send it first (its URL, headers with the
   * Authorization in force, TLS settings and timeouts), for a layer's unpack worker to
   * send itself (see snapshots/blob-fetch.ts): the body then never crosses berthd's main
   * thread. Only the first request: any answer but 200, or a failure before the answer,
   * sends the caller back to {@link openBlob} (the auth dance, redirects, retries).
   */
  blobRequest(ep: Endpoint, repo: string, digest: string): BlobRequest | undefined {
    if (this.redirecting.has(ep.base.origin)) return undefined;
    const headers: Record<string, string> = { 'user-agent': 'berth' };
    const auth = this.authorization(ep, this.tokenKey(ep, `repository:${repo}:pull`));
    if (auth) headers.authorization = auth;
    const { secureContext: _built, ...tls } = ep.tls;
    return {
      url: this.url(ep, `${repo}/blobs/${digest}`).href,
      host: ep.host,
      policyHost: ep.policy.registryHost,
      headers,
      stallMs: this.opts.images.stall_timeout_seconds * 1000,
      minBytesPerSecond: this.opts.images.min_transfer_rate_bytes_per_second,
      tls,
    };
  }

  /**
   * `ep` answered a blob's GET with a redirect (to blob storage, as many registries do for
   * every blob): its blobs are fetched through {@link openBlob} from now on, without a
   * first request from the worker that would only be answered with the redirect again.
   */
  blobRedirected(ep: Endpoint): void {
    this.redirecting.set(ep.base.origin, true);
  }

  /**
   * Sends a GET with retries and the auth dance. Returns any final response (2xx, 3xx
   * when not following, 4xx); throws for exhausted retries and auth failures.
   */
  private async get(
    ep: Endpoint,
    repo: string,
    path: string,
    accept: string | undefined,
    signal: AbortSignal | undefined,
    what: string,
  ): Promise<HttpResponse> {
    const scope = `repository:${repo}:pull`;
    const tokenKey = this.tokenKey(ep, scope);
    const attempts = this.opts.images.pull_attempts;
    let answeredChallenge = false;
    let lastError: unknown;
    for (let attempt = 1; attempt <= attempts;) {
      const headers: Record<string, string> = { 'user-agent': 'berth' };
      if (accept) headers.accept = accept;
      const auth = this.authorization(ep, tokenKey);
      if (auth) headers.authorization = auth;
      let res: HttpResponse;
      try {
        res = await send({
          method: 'GET',
          url: this.url(ep, path),
          headers,
          stallMs: this.opts.images.stall_timeout_seconds * 1000,
          minBytesPerSecond: this.opts.images.min_transfer_rate_bytes_per_second,
          tls: ep.tls,
          tlsFor: this.tlsFor,
          maxRedirects: 5,
          policy: ep.policy,
          ...(signal ? { signal } : {}),
        });
      } catch (err) {
        if (!(err instanceof NetworkError)) throw err;
        lastError = err;
        if (attempt++ < attempts) await sleep(this.backoffMs * 2 ** (attempt - 2), signal);
        continue;
      }
      if (res.status === 401) {
        const msg = await registryMessage(res);
        if (answeredChallenge || ep.credentials?.registryToken) {
          this.tokens.delete(tokenKey);
          throw new BerthError('Unauthenticated', `${what}: registry ${ep.host} refused the credentials (401${msg ? `: ${msg}` : ''})`);
        }
        answeredChallenge = true;
        await this.answerChallenge(ep, res.headers['www-authenticate'], scope, tokenKey, signal, what);
        continue;
      }
      if (res.status === 429 || res.status >= 500) {
        lastError = new NetworkError(`${what}: registry ${ep.host} answered ${res.status} ${await registryMessage(res)}`.trim());
        if (attempt++ < attempts) await sleep(this.backoffMs * 2 ** (attempt - 2), signal);
        continue;
      }
      return res;
    }
    throw new BerthError('Unavailable', `${what}: registry ${ep.host} unreachable after ${attempts} attempts: ${messageOf(lastError)}`);
  }

  private async answerChallenge(
    ep: Endpoint,
    header: string | undefined,
    scope: string,
    tokenKey: string,
    signal: AbortSignal | undefined,
    what: string,
  ): Promise<void> {
    const challenge = parseChallenge(header);
    const creds = ep.credentials;
    if (!challenge) throw new BerthError('Unauthenticated', `${what}: registry ${ep.host} requires authentication but sent no usable challenge`);
    if (challenge.scheme === 'basic') {
      if (!hasCredentials(creds) || !creds?.username) {
        throw new BerthError(
          'Unauthenticated',
          `${what}: registry ${ep.host} requires a username and password (pass them with the pull, or set registries."${ep.host}".username/password)`,
        );
      }
      // Remember only that the registry wants Basic; the header is built from each
      // request's own credentials.
      this.basicOrigins.set(ep.base.origin, true);
      return;
    }
    const realm = challenge.params.realm;
    if (!realm) throw new BerthError('Unauthenticated', `${what}: registry ${ep.host} sent a Bearer challenge without a realm`);
    let realmUrl: URL;
    try {
      realmUrl = new URL(realm);
    } catch {
      throw new BerthError('Unauthenticated', `${what}: registry ${ep.host} sent an invalid token realm`);
    }
    if (realmUrl.protocol !== 'https:' && realmUrl.protocol !== 'http:') {
      throw new BerthError('Unauthenticated', `${what}: registry ${ep.host} sent a token realm that is not an http(s) URL`);
    }
    const sameHost = realmUrl.host === ep.base.host;
    if (!sameHost && !this.loggedRealms.has(`${ep.base.host}|${realmUrl.host}`)) {
      this.loggedRealms.set(`${ep.base.host}|${realmUrl.host}`, true);
      this.opts.log?.info('registry uses a token server on another host', { registry: ep.host, realmHost: realmUrl.host });
    }
    const sendsCredentials = !!creds?.identityToken || !!creds?.username || !!creds?.password;
    if (sendsCredentials && realmUrl.protocol !== 'https:' && !(sameHost && ep.base.protocol === 'http:' && LOOPBACK.test(ep.base.host))) {
      throw new BerthError(
        'Unauthenticated',
        `${what}: registry ${ep.host} names the token server ${realmUrl.host} over plain HTTP; ` +
          'berth sends credentials to token servers over HTTPS only (plain HTTP only on the host of a loopback registry)',
      );
    }
    const service = challenge.params.service;
    const wantScope = challenge.params.scope ?? scope;
    let res: HttpResponse;
    const common = {
      stallMs: this.opts.images.stall_timeout_seconds * 1000,
      minBytesPerSecond: this.opts.images.min_transfer_rate_bytes_per_second,
      // The token server has TLS checks of its own: the registry's apply only on its own host.
      tls: realmUrl.host === ep.base.host ? ep.tls : this.tls.for(realmUrl.host),
      tlsFor: this.tlsFor,
      maxRedirects: 3,
      policy: ep.policy,
      ...(signal ? { signal } : {}),
    };
    try {
      if (creds?.identityToken) {
        const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: creds.identityToken, client_id: 'berth', scope: wantScope });
        if (service) form.set('service', service);
        res = await send({ ...common, method: 'POST', url: realmUrl, headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form.toString() });
      } else {
        if (service) realmUrl.searchParams.set('service', service);
        realmUrl.searchParams.set('scope', wantScope);
        const headers: Record<string, string> = { 'user-agent': 'berth' };
        if (creds?.username) headers.authorization = basicHeader(creds);
        res = await send({ ...common, method: 'GET', url: realmUrl, headers });
      }
    } catch (err) {
      if (err instanceof NetworkError) throw new BerthError('Unavailable', `${what}: token service of ${ep.host} unreachable: ${err.message}`);
      throw err;
    }
    if (res.status === 401 || res.status === 403) {
      // Not read: a refusal's body may never end (resume() would drain it for ever).
      res.body.destroy();
      throw new BerthError('Unauthenticated', `${what}: the token service of registry ${ep.host} refused the credentials (${res.status})`);
    }
    if (res.status !== 200) {
      const msg = await registryMessage(res);
      throw new BerthError('Unavailable', `${what}: the token service of registry ${ep.host} answered ${res.status}${msg ? `: ${msg}` : ''}`);
    }
    let doc: { token?: string; access_token?: string; expires_in?: number };
    try {
      // Room for a token and an access_token of MAX_TOKEN_BYTES each, and a refresh token.
      doc = JSON.parse((await readBody(res, 4 * MAX_TOKEN_BYTES, 'token response')).toString('utf8')) as typeof doc;
    } catch (err) {
      throw new BerthError('Unauthenticated', `${what}: the token service of registry ${ep.host} sent an unreadable answer (${messageOf(err)})`);
    }
    const token = doc.token ?? doc.access_token;
    if (!token) throw new BerthError('Unauthenticated', `${what}: the token service of registry ${ep.host} sent no token`);
    if (typeof token === 'string' && token.length > MAX_TOKEN_BYTES) {
      throw new BerthError(
        'Unauthenticated',
        `${what}: the token service of registry ${ep.host} sent a token of ${token.length} bytes, over the ${MAX_TOKEN_BYTES} bytes berth accepts`,
      );
    }
    // It goes into a header: anything but visible ASCII would make the request itself throw.
    if (typeof token !== 'string' || !/^[\x21-\x7e]+$/.test(token)) {
      throw new BerthError('Unauthenticated', `${what}: the token service of registry ${ep.host} sent a token that is not a usable bearer token`);
    }
    this.tokens.set(tokenKey, `Bearer ${token}`, typeof doc.expires_in === 'number' ? doc.expires_in : 60);
  }

  /** GET /v2/<repo>/manifests/<reference> at one endpoint. */
  async fetchManifest(
    ep: Endpoint,
    repo: string,
    reference: string,
    accept: string[],
    maxBytes: number,
    signal: AbortSignal | undefined,
    what: string,
  ): Promise<FetchedManifest> {
    const res = await this.get(ep, repo, `${repo}/manifests/${reference}`, accept.join(', '), signal, what);
    if (res.status === 404) {
      const msg = await registryMessage(res);
      throw new BerthError('NotFound', `${what}: not found in registry ${ep.host}${msg ? ` (${msg})` : ''}`);
    }
    if (res.status === 403) {
      const msg = await registryMessage(res);
      throw new BerthError('PermissionDenied', `${what}: registry ${ep.host} denied access${msg ? ` (${msg})` : ''}`);
    }
    if (res.status !== 200) {
      const msg = await registryMessage(res);
      throw new BerthError('Unavailable', `${what}: registry ${ep.host} answered ${res.status}${msg ? ` (${msg})` : ''}`);
    }
    const data = await readBody(res, maxBytes, what).catch((err: unknown) => {
      if (err instanceof NetworkError) throw new BerthError('Unavailable', err.message);
      throw err;
    });
    const digestHeader = res.headers['docker-content-digest'];
    return { data, contentType: String(res.headers['content-type'] ?? ''), digestHeader: typeof digestHeader === 'string' ? digestHeader : undefined };
  }

  /**
   * Opens a blob as a stream of exactly `size` bytes: the stream errors with DataLoss
   * if the registry sends more (cut off at once) or fewer. The digest is checked by
   * the content store as the bytes go to disk.
   */
  async openBlob(ep: Endpoint, repo: string, digest: string, size: number, signal: AbortSignal | undefined, what: string): Promise<Readable> {
    const res = await this.get(ep, repo, `${repo}/blobs/${digest}`, undefined, signal, what);
    if (res.status === 404) {
      const msg = await registryMessage(res);
      throw new BerthError('NotFound', `${what}: blob not found in registry ${ep.host}${msg ? ` (${msg})` : ''}`);
    }
    if (res.status !== 200) {
      const msg = await registryMessage(res);
      throw new BerthError(
        res.status === 403 ? 'PermissionDenied' : 'Unavailable',
        `${what}: registry ${ep.host} answered ${res.status}${msg ? ` (${msg})` : ''}`,
      );
    }
    const declared = Number(res.headers['content-length'] ?? NaN);
    if (Number.isFinite(declared) && declared !== size) {
      res.body.destroy();
      throw new BerthError('DataLoss', `${what}: registry ${ep.host} announced ${declared} bytes, the descriptor says ${size}`);
    }
    let seen = 0;
    const exact = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        seen += chunk.length;
        if (seen > size) {
          res.body.destroy();
          cb(new BerthError('DataLoss', `${what}: registry ${ep.host} sent more than the ${size} bytes the descriptor declares`));
          return;
        }
        cb(null, chunk);
      },
      flush(cb) {
        cb(seen === size ? null : new BerthError('DataLoss', `${what}: truncated: got ${seen} of ${size} bytes from registry ${ep.host}`));
      },
    });
    // An error (a stall, a reset) says why; a close without the end is a plain truncation.
    res.body.on('error', (err) => {
      if (signal?.aborted) exact.destroy(signal.reason as Error);
      else if (err instanceof NetworkError) exact.destroy(new BerthError('Unavailable', `${what}: ${err.message} (after ${seen} of ${size} bytes)`));
      else if (messageOf(err) === 'aborted' || errnoOf(err) === 'ECONNRESET')
        exact.destroy(new BerthError('DataLoss', `${what}: truncated: connection closed after ${seen} of ${size} bytes from registry ${ep.host}`));
      else exact.destroy(new BerthError('DataLoss', `${what}: transfer from registry ${ep.host} failed after ${seen} of ${size} bytes: ${messageOf(err)}`));
    });
    res.body.on('close', () => {
      if (!res.body.complete)
        exact.destroy(new BerthError('DataLoss', `${what}: truncated: connection closed after ${seen} of ${size} bytes from registry ${ep.host}`));
    });
    exact.on('close', () => {
      if (!res.body.readableEnded) res.body.destroy();
    });
    return res.body.pipe(exact);
  }
}
