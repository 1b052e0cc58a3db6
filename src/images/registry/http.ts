/**
 * The HTTP layer under the registry client: one request with an idle ("stall")
 * timeout, optional redirects, keep-alive agents per origin (at most MAX_AGENTS, the
 * least recently used closed once idle), the address policy on every connection
 * (address-policy.ts), and cancellation. Bodies
 * are never buffered here beyond a stated cap.
 */
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { BerthError, messageOf } from '../../common/errors.js';
import { LruMap } from '../../common/lru.js';
import type { AddressPolicy } from './address-policy.js';
import type { TlsSettings } from './tls.js';

export interface HttpOptions {
  method: 'GET' | 'HEAD' | 'POST';
  url: URL;
  headers: OutgoingHttpHeaders;
  body?: string;
  /** Abandon the request when no byte moves for this long. */
  stallMs: number;
  /**
   * Abandon the response when fewer than this many bytes per second arrive, measured over
   * each `stallMs` window (0: no floor): a trickle counts as a stall.
   */
  minBytesPerSecond?: number;
  /** TLS settings of the URL's host. */
  tls: TlsSettings;
  /** TLS settings of another host, for a redirect there: the first host's never carry over. */
  tlsFor: (url: URL) => TlsSettings;
  signal?: AbortSignal;
  /** Follow up to this many redirects (0: return 3xx responses as they are). */
  maxRedirects: number;
  /** Which addresses the request and its redirects may connect to (address-policy.ts). */
  policy: AddressPolicy;
}

export interface HttpResponse {
  status: number;
  headers: IncomingMessage['headers'];
  body: IncomingMessage;
  /** The URL that answered, after redirects. */
  url: URL;
}

/** A network-level failure (no HTTP status): worth retrying. */
export class NetworkError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'NetworkError';
  }
}

/** Keep-alive agents kept at most (one per origin, TLS settings and address policy). */
export const MAX_AGENTS = 64;
/** How often an agent pushed out of the pool is looked at until it is idle and can be closed. */
const RETIRE_POLL_MS = 1000;

const agents = new LruMap<string, HttpAgent | HttpsAgent>(MAX_AGENTS, (_key, agent) => retireWhenIdle(agent));

function pending(sets: NodeJS.ReadOnlyDict<unknown[]>): number {
  return Object.values(sets).reduce((n, list) => n + (list?.length ?? 0), 0);
}

/**
 * Closes an agent pushed out of the pool once no request uses it: at once when idle,
 * else when its last socket is back (requests in flight finish on it undisturbed).
 */
function retireWhenIdle(agent: HttpAgent | HttpsAgent): void {
  const busy = (): boolean => pending(agent.sockets) + pending(agent.requests) > 0;
  if (!busy()) return agent.destroy();
  const t = setInterval(() => {
    if (busy()) return;
    clearInterval(t);
    agent.destroy();
  }, RETIRE_POLL_MS);
  t.unref();
}

/**
 * The keep-alive agent for `url` under `tls` and `policy`. The policy is part of the key
 * and its `lookup` checks every connection the agent makes, so a pooled connection opened
 * for one registry is never handed to a pull that the rule would keep from that address.
 */
function agentFor(url: URL, tls: TlsSettings, policy: AddressPolicy): HttpAgent | HttpsAgent {
  const plain = url.protocol === 'http:';
  const key = `${url.origin}|${plain ? '' : tls.id}|${policy.registryHost}`;
  let a = agents.get(key);
  if (!a) {
    const common = { keepAlive: true, maxSockets: 32, lookup: policy.lookup() };
    a = plain ? new HttpAgent(common) : new HttpsAgent({ ...common, rejectUnauthorized: !tls.insecureSkipVerify, secureContext: tls.secureContext });
    agents.set(key, a);
  }
  return a;
}

/** How many keep-alive agents are kept (for tests and metrics). */
export function agentCount(): number {
  return agents.size;
}

/** Closes idle keep-alive connections (on shutdown). */
export function closeAgents(): void {
  for (const a of agents.values()) a.destroy();
  agents.clear();
}

function once(opts: HttpOptions, url: URL, headers: OutgoingHttpHeaders): Promise<HttpResponse> {
  return new Promise((resolve, reject) => {
    if (opts.signal?.aborted) {
      reject(opts.signal.reason);
      return;
    }
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    const req = send(url, { method: opts.method, headers, agent: agentFor(url, opts.tls, opts.policy) });
    const onAbort = (): void => {
      req.destroy(opts.signal!.reason as Error);
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    let response: IncomingMessage | undefined;
    req.setTimeout(opts.stallMs, () => {
      const err = stallError(url.origin, opts.stallMs);
      // Once the body flows, its reader must learn why it stopped (not just "aborted").
      response?.destroy(err);
      req.destroy(err);
    });
    req.on('error', (err) => {
      opts.signal?.removeEventListener('abort', onAbort);
      if (opts.signal?.aborted) reject(opts.signal.reason);
      // The address policy's refusal (from the agent's lookup): final, not a network fault to retry.
      else if (err instanceof NetworkError || err instanceof BerthError) reject(err);
      else reject(new NetworkError(`${url.origin}: ${messageOf(err)}`, { cause: err }));
    });
    req.on('response', (res) => {
      response = res;
      // Counted on the socket, so the check never takes the body out of paused mode.
      const socket = res.socket;
      const rateTimer = watchRateFloor(
        url.origin,
        opts.minBytesPerSecond ?? 0,
        opts.stallMs,
        () => socket.bytesRead,
        () => res.complete,
        (err) => {
          res.destroy(err);
          req.destroy(err);
        },
      );
      // The body stays under the same stall timeout and abort signal until it ends.
      res.once('close', () => {
        clearInterval(rateTimer);
        opts.signal?.removeEventListener('abort', onAbort);
      });
      resolve({ status: res.statusCode ?? 0, headers: res.headers, body: res, url });
    });
    req.end(opts.body);
  });
}

/** The error of a transfer that sent nothing for `stallMs`. */
export function stallError(origin: string, stallMs: number): NetworkError {
  return new NetworkError(`${origin}: no data for ${stallMs / 1000} s, giving up on the transfer`);
}

/**
 * Fails a transfer (`fail`) that moves fewer than `floor` bytes a second over a window of
 * `stallMs`, counting `bytes()`; none when `floor` is 0. Sampled four times a window; a
 * window with no byte at its end is silence, which the stall timeout reports, and a window
 * where `exempt()` (the body is complete, or held back by its reader) is no trickle. The
 * caller clears the returned timer when the transfer ends.
 */
export function watchRateFloor(
  origin: string,
  floor: number,
  stallMs: number,
  bytes: () => number,
  exempt: () => boolean,
  fail: (err: NetworkError) => void,
): NodeJS.Timeout | undefined {
  if (floor <= 0) return undefined;
  const samples = [bytes()];
  const need = Math.ceil((floor * stallMs) / 1000);
  const timer = setInterval(() => {
    const now = bytes();
    samples.push(now);
    if (samples.length <= 4) return;
    const windowBytes = now - (samples.shift() as number);
    const recent = now - (samples[samples.length - 2] as number);
    if (windowBytes >= need || recent === 0 || exempt()) return;
    fail(new NetworkError(`${origin}: transfer slower than ${floor} bytes/s over ${stallMs / 1000} s (${windowBytes} bytes), giving up on it`));
  }, stallMs / 4);
  timer.unref();
  return timer;
}

/**
 * Sends a request, following redirects when asked. On a redirect to another origin the
 * Authorization header is dropped: blob storage behind a registry must never see the
 * registry's credentials.
 */
export async function send(opts: HttpOptions): Promise<HttpResponse> {
  let url = opts.url;
  let headers = { ...opts.headers };
  let tls = opts.tls;
  for (let hop = 0; ; hop++) {
    await opts.policy.checkLiteral(url);
    const res = await once({ ...opts, tls }, url, headers);
    const location = res.headers.location;
    if (![301, 302, 303, 307, 308].includes(res.status) || !location || opts.maxRedirects === 0) return res;
    // A redirect's body is never read: a hostile server could stream it forever.
    res.body.destroy();
    if (hop >= opts.maxRedirects) throw new BerthError('Unavailable', `${opts.url.origin}: more than ${opts.maxRedirects} redirects`);
    const next = new URL(location, url);
    if (next.protocol !== 'http:' && next.protocol !== 'https:') {
      throw new BerthError('Unavailable', `${opts.url.origin}: redirect to unsupported URL scheme ${next.protocol}`);
    }
    // Never down from HTTPS to plain HTTP: whoever sits on the path could answer in the
    // registry's name (a registry configured as plain HTTP starts, and stays, on http:).
    if (url.protocol === 'https:' && next.protocol === 'http:') {
      throw new BerthError('Unavailable', `${opts.url.origin}: refusing a redirect from HTTPS to plain HTTP (${next.origin})`);
    }
    if (next.origin !== url.origin) {
      // A request with a body (a token request carrying a refresh token) never follows
      // a redirect to another origin.
      if (opts.body !== undefined) throw new BerthError('Unavailable', `${opts.url.origin}: refusing to send the request body on to ${next.origin}`);
      const { authorization: _dropped, ...rest } = headers as Record<string, unknown>;
      headers = rest as OutgoingHttpHeaders;
      // TLS settings (an exception, a CA, a client certificate) configured for the
      // registry do not extend to other hosts.
      if (next.host !== url.host) tls = opts.tlsFor(next);
    }
    url = next;
  }
}

/** Reads a whole body, refusing more than `max` bytes. */
export async function readBody(res: HttpResponse, max: number, what: string): Promise<Buffer> {
  const declared = Number(res.headers['content-length'] ?? NaN);
  if (Number.isFinite(declared) && declared > max) {
    res.body.destroy();
    throw new BerthError('ResourceExhausted', `${what}: ${declared} bytes is more than the limit of ${max}`);
  }
  const chunks: Buffer[] = [];
  let n = 0;
  try {
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      n += chunk.length;
      if (n > max) {
        res.body.destroy();
        throw new BerthError('ResourceExhausted', `${what}: more than the limit of ${max} bytes`);
      }
      chunks.push(chunk);
    }
  } catch (err) {
    if (err instanceof BerthError) throw err;
    throw new NetworkError(`${what}: ${messageOf(err)}`, { cause: err });
  }
  return Buffer.concat(chunks, n);
}
