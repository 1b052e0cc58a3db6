/**
 * Worker thread side of a blob downloaded by its unpack worker (UnpackPool.stream's
 * `fetch`): the worker sends the GET that RegistryClient.blobRequest describes and feeds
 * the body straight into the blob's intake (hash, temp file, unpacker), so the layer's
 * bytes never touch berthd's main thread: no transfer of socket buffers between threads,
 * and the garbage they make is collected in the worker's small heap instead of the main
 * one's (measured: one major GC of the main heap per ~25 MB pulled, before).
 *
 * Only the plain case is done here: one request, no redirect followed, answered 200.
 * Anything else before the first body byte (a redirect, 401, 404, 429, 5xx, a network
 * error) is a `fallback`: the main thread then fetches the blob its usual way (retries,
 * the auth dance, redirects with their checks), feeding the same intake. Once the body
 * flows, its checks are openBlob's: the announced length must be the descriptor's, no
 * byte beyond the declared size, a stall or a trickle (the same stall timeout and rate
 * floor, through registry/http.ts) fails the transfer, and so does a truncation. The
 * request's headers carry credentials: nothing here logs them or puts them in a message.
 *
 * Over plain HTTP the GET is raw-get.ts's (fetchPlain): the body is read off the socket
 * into 1 MiB blocks that go to the intake as they are, with none of the HTTP client's
 * per-chunk copies; over HTTPS it is http.ts's.
 */
import type { SecureContext } from 'node:tls';
import { BerthError, errnoOf, messageOf, type ErrorKind } from '../../common/errors.js';
import { LruMap } from '../../common/lru.js';
import { AddressPolicy } from '../registry/address-policy.js';
import type { BlobRequest } from '../registry/client.js';
import { NetworkError, send, type HttpResponse } from '../registry/http.js';
import { BodyError, rawGet, type RawResponse } from '../registry/raw-get.js';
import { MAX_TLS_HOSTS, secureContextOf, type TlsSettings } from '../registry/tls.js';

/** How a worker's download of a blob ended. */
export type FetchOutcome =
  /** The whole body went to the intake (exactly `size` bytes). */
  | { ok: true; bytes: number }
  /** Nothing was fed to the intake: the main thread should fetch the blob itself. */
  | { ok: false; fallback: true; why: string; status?: number }
  /** The transfer failed after its first byte (the intake has been aborted). */
  | { ok: false; fallback: false; kind: ErrorKind | undefined; message: string };

/** Where the body goes (a BlobIntake), and the flow control between them. */
export interface FetchTarget {
  /** One chunk of the blob, in order. */
  chunk(c: Buffer): void;
  /** Every byte was fed. */
  end(): void;
  /** The transfer failed after its first byte. */
  abort(): void;
  /** Bytes fed and not yet taken (written and wanted by the unpacker). */
  readonly pending: number;
  /** Called whenever `pending` drops. */
  onDrain: (() => void) | undefined;
}

/**
 * Bytes fed and not yet taken before the socket is paused. With the unpacker's own
 * buffers (blob-intake.ts, gunzip.ts) each layer in flight holds about twice this; three
 * layers download at once, in two workers. 8 MiB here (and 4 MiB in the other two) had a
 * pull of 5 x 40 MiB peak at 220 MB of berthd's anonymous memory; with 4 (and 2) it peaks
 * at 140 MB, for the same MB/s and CPU per MB in the pull benchmark.
 */
const WINDOW = 4 << 20;

/**
 * TLS contexts built in this worker, by settings id: building one parses every root, and
 * the request carries only the host's configured ones (the bundled and system roots are
 * added here, as on the main thread).
 */
const contexts = new LruMap<string, SecureContext>(MAX_TLS_HOSTS);

function tlsOf(t: BlobRequest['tls'], host: string): TlsSettings {
  let secureContext = contexts.get(t.id);
  if (!secureContext) {
    secureContext = secureContextOf(t.ca, t.cert, t.key, `registries."${host}"`);
    contexts.set(t.id, secureContext);
  }
  return { ...t, secureContext };
}

/**
 * Downloads a blob of `size` bytes into `target`; `what` names it in messages ("<image>
 * layer <digest>"). Never rejects: the outcome says what happened.
 */
export async function fetchBlob(req: BlobRequest, size: number, what: string, target: FetchTarget, signal: AbortSignal): Promise<FetchOutcome> {
  const url = new URL(req.url);
  if (url.protocol === 'http:') return fetchPlain(url, req, size, what, target, signal);
  const opened = await openAnswer(
    () =>
      send({
        method: 'GET',
        url,
        headers: req.headers,
        stallMs: req.stallMs,
        minBytesPerSecond: req.minBytesPerSecond,
        tls: url.protocol === 'https:' ? tlsOf(req.tls, req.host) : (undefined as unknown as TlsSettings),
        tlsFor: () => {
          throw new BerthError('Internal', 'a worker download follows no redirect');
        },
        maxRedirects: 0,
        policy: new AddressPolicy(req.policyHost),
        signal,
      }),
    (r: HttpResponse) => r.body.destroy(),
    (r) => Number(r.headers['content-length'] ?? NaN),
    { req, size, what, target, signal },
  );
  if ('outcome' in opened) return opened.outcome;
  const res = opened.res;
  return new Promise<FetchOutcome>((resolve) => {
    const body = res.body;
    let seen = 0;
    let done = false;
    const finish = (o: FetchOutcome): void => {
      if (done) return;
      done = true;
      target.onDrain = undefined;
      if (!o.ok) {
        target.abort();
        body.destroy();
      }
      resolve(o);
    };
    const fail = (cause: BodyFailure): void => finish({ ok: false, fallback: false, ...bodyFailure(what, req.host, seen, size, cause) });
    target.onDrain = () => {
      if (target.pending < WINDOW && body.isPaused()) body.resume();
    };
    body.on('data', (c: Buffer) => {
      if (done) return;
      seen += c.length;
      if (seen > size) return fail('too-long');
      target.chunk(c);
      if (target.pending >= WINDOW) body.pause();
    });
    body.on('end', () => {
      if (seen !== size) return fail('short');
      target.end();
      finish({ ok: true, bytes: seen });
    });
    // As openBlob: an error (a stall, a reset) says why; a close without the end is a plain truncation.
    body.on('error', (err) => {
      if (signal.aborted) finish(stopped(signal, what));
      else fail(messageOf(err) === 'aborted' || errnoOf(err) === 'ECONNRESET' ? 'truncated' : { error: err });
    });
    body.on('close', () => {
      if (!body.complete) fail('truncated');
    });
  });
}

/**
 * fetchBlob over plain HTTP, through raw-get.ts: the body goes to the intake in blocks of
 * 1 MiB read straight off the socket, with the same outcomes and messages as above.
 */
async function fetchPlain(url: URL, req: BlobRequest, size: number, what: string, target: FetchTarget, signal: AbortSignal): Promise<FetchOutcome> {
  const opened = await openAnswer(
    () =>
      rawGet({
        url,
        headers: req.headers,
        stallMs: req.stallMs,
        minBytesPerSecond: req.minBytesPerSecond,
        policy: new AddressPolicy(req.policyHost),
        signal,
      }),
    (r: RawResponse) => r.destroy(),
    (r) => (r.framing.type === 'length' ? r.framing.length : NaN),
    { req, size, what, target, signal },
  );
  if ('outcome' in opened) return opened.outcome;
  const res = opened.res;
  let seen = 0;
  target.onDrain = () => {
    if (target.pending < WINDOW) res.resume();
  };
  try {
    await res.pipe(
      {
        block(b) {
          seen += b.length;
          target.chunk(b);
          return target.pending < WINDOW;
        },
      },
      size,
    );
  } catch (err) {
    target.onDrain = undefined;
    target.abort();
    if (signal.aborted) return stopped(signal, what);
    const cause = err instanceof BodyError && (err.why === 'too-long' || err.why === 'truncated') ? err.why : { error: err };
    return { ok: false, fallback: false, ...bodyFailure(what, req.host, seen, size, cause) };
  }
  target.onDrain = undefined;
  if (seen !== size) {
    const f = bodyFailure(what, req.host, seen, size, 'short');
    return failed(target, f.kind, f.message);
  }
  target.end();
  return { ok: true, bytes: seen };
}

/** Why a body failed once it flowed: too long, cut off, ended short, or an error. */
type BodyFailure = 'too-long' | 'truncated' | 'short' | { error: unknown };

/** The kind and message of a body that failed after `seen` of its `size` bytes. */
function bodyFailure(what: string, host: string, seen: number, size: number, cause: BodyFailure): { kind: ErrorKind; message: string } {
  if (cause === 'too-long') return { kind: 'DataLoss', message: `${what}: registry ${host} sent more than the ${size} bytes the descriptor declares` };
  if (cause === 'truncated') return { kind: 'DataLoss', message: `${what}: truncated: connection closed after ${seen} of ${size} bytes from registry ${host}` };
  if (cause === 'short') return { kind: 'DataLoss', message: `${what}: truncated: got ${seen} of ${size} bytes from registry ${host}` };
  if (cause.error instanceof NetworkError) return { kind: 'Unavailable', message: `${what}: ${cause.error.message} (after ${seen} of ${size} bytes)` };
  return { kind: 'DataLoss', message: `${what}: transfer from registry ${host} failed after ${seen} of ${size} bytes: ${messageOf(cause.error)}` };
}

/**
 * Sends a download's request. What ends it before the body (a failure to send, any answer
 * but 200) is a fallback with nothing fed; an announced length other than the
 * descriptor's fails it. Otherwise the answer, whose body is for the caller to read.
 */
async function openAnswer<R extends { status: number }>(
  open: () => Promise<R>,
  drop: (r: R) => void,
  announced: (r: R) => number,
  d: { req: BlobRequest; size: number; what: string; target: FetchTarget; signal: AbortSignal },
): Promise<{ res: R } | { outcome: FetchOutcome }> {
  let res: R;
  try {
    res = await open();
  } catch (err) {
    return { outcome: d.signal.aborted ? stopped(d.signal, d.what) : { ok: false, fallback: true, why: messageOf(err) } };
  }
  if (res.status !== 200) {
    drop(res);
    return { outcome: { ok: false, fallback: true, why: `answered ${res.status}`, status: res.status } };
  }
  const length = announced(res);
  if (Number.isFinite(length) && length !== d.size) {
    drop(res);
    return {
      outcome: failed(d.target, 'DataLoss', `${d.what}: registry ${d.req.host} announced ${length} bytes, the descriptor says ${d.size}`),
    };
  }
  return { res };
}

/** The outcome of a download stopped by `signal` (cancelled, or its intake failed). */
function stopped(signal: AbortSignal, what: string): FetchOutcome {
  const r: unknown = signal.reason;
  return r instanceof BerthError
    ? { ok: false, fallback: false, kind: r.kind, message: r.message }
    : { ok: false, fallback: false, kind: 'Cancelled', message: `${what}: cancelled` };
}

function failed(target: FetchTarget, kind: ErrorKind, message: string): FetchOutcome {
  target.abort();
  return { ok: false, fallback: false, kind, message };
}
