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
  let res: HttpResponse;
  try {
    const tls = url.protocol === 'https:' ? tlsOf(req.tls, req.host) : (undefined as unknown as TlsSettings);
    res = await send({
      method: 'GET',
      url,
      headers: req.headers,
      stallMs: req.stallMs,
      minBytesPerSecond: req.minBytesPerSecond,
      tls,
      tlsFor: () => {
        throw new BerthError('Internal', 'a worker download follows no redirect');
      },
      maxRedirects: 0,
      policy: new AddressPolicy(req.policyHost),
      signal,
    });
  } catch (err) {
    if (signal.aborted) return stopped(signal, what);
    return { ok: false, fallback: true, why: messageOf(err) };
  }
  if (res.status !== 200) {
    res.body.destroy();
    return { ok: false, fallback: true, why: `answered ${res.status}`, status: res.status };
  }
  const declared = Number(res.headers['content-length'] ?? NaN);
  if (Number.isFinite(declared) && declared !== size) {
    res.body.destroy();
    return failed(target, 'DataLoss', `${what}: registry ${req.host} announced ${declared} bytes, the descriptor says ${size}`);
  }
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
    const fail = (kind: ErrorKind, message: string): void => finish({ ok: false, fallback: false, kind, message });
    target.onDrain = () => {
      if (target.pending < WINDOW && body.isPaused()) body.resume();
    };
    body.on('data', (c: Buffer) => {
      if (done) return;
      seen += c.length;
      if (seen > size) return fail('DataLoss', `${what}: registry ${req.host} sent more than the ${size} bytes the descriptor declares`);
      target.chunk(c);
      if (target.pending >= WINDOW) body.pause();
    });
    body.on('end', () => {
      if (seen !== size) return fail('DataLoss', `${what}: truncated: got ${seen} of ${size} bytes from registry ${req.host}`);
      target.end();
      finish({ ok: true, bytes: seen });
    });
    // As openBlob: an error (a stall, a reset) says why; a close without the end is a plain truncation.
    body.on('error', (err) => {
      if (signal.aborted) finish(stopped(signal, what));
      else if (err instanceof NetworkError) fail('Unavailable', `${what}: ${err.message} (after ${seen} of ${size} bytes)`);
      else if (messageOf(err) === 'aborted' || errnoOf(err) === 'ECONNRESET')
        fail('DataLoss', `${what}: truncated: connection closed after ${seen} of ${size} bytes from registry ${req.host}`);
      else fail('DataLoss', `${what}: transfer from registry ${req.host} failed after ${seen} of ${size} bytes: ${messageOf(err)}`);
    });
    body.on('close', () => {
      if (!body.complete) fail('DataLoss', `${what}: truncated: connection closed after ${seen} of ${size} bytes from registry ${req.host}`);
    });
  });
}

/**
 * fetchBlob over plain HTTP, through raw-get.ts: the body goes to the intake in blocks of
 * 1 MiB read straight off the socket, with the same outcomes and messages as above.
 */
async function fetchPlain(url: URL, req: BlobRequest, size: number, what: string, target: FetchTarget, signal: AbortSignal): Promise<FetchOutcome> {
  let res: RawResponse;
  try {
    res = await rawGet({
      url,
      headers: req.headers,
      stallMs: req.stallMs,
      minBytesPerSecond: req.minBytesPerSecond,
      policy: new AddressPolicy(req.policyHost),
      signal,
    });
  } catch (err) {
    if (signal.aborted) return stopped(signal, what);
    return { ok: false, fallback: true, why: messageOf(err) };
  }
  if (res.status !== 200) {
    res.destroy();
    return { ok: false, fallback: true, why: `answered ${res.status}`, status: res.status };
  }
  if (res.framing.type === 'length' && res.framing.length !== size) {
    res.destroy();
    return failed(target, 'DataLoss', `${what}: registry ${req.host} announced ${res.framing.length} bytes, the descriptor says ${size}`);
  }
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
    if (err instanceof BodyError && err.why === 'too-long') {
      return {
        ok: false,
        fallback: false,
        kind: 'DataLoss',
        message: `${what}: registry ${req.host} sent more than the ${size} bytes the descriptor declares`,
      };
    }
    if (err instanceof BodyError && err.why === 'truncated') {
      return {
        ok: false,
        fallback: false,
        kind: 'DataLoss',
        message: `${what}: truncated: connection closed after ${seen} of ${size} bytes from registry ${req.host}`,
      };
    }
    if (err instanceof NetworkError)
      return { ok: false, fallback: false, kind: 'Unavailable', message: `${what}: ${err.message} (after ${seen} of ${size} bytes)` };
    return {
      ok: false,
      fallback: false,
      kind: 'DataLoss',
      message: `${what}: transfer from registry ${req.host} failed after ${seen} of ${size} bytes: ${messageOf(err)}`,
    };
  }
  target.onDrain = undefined;
  if (seen !== size) return failed(target, 'DataLoss', `${what}: truncated: got ${seen} of ${size} bytes from registry ${req.host}`);
  target.end();
  return { ok: true, bytes: seen };
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
