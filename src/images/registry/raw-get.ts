/**
 * A plain-HTTP/1.1 GET whose body is read straight off the socket into blocks of
 * {@link BLOCK} bytes, for the unpack worker's blob downloads (snapshots/blob-fetch.ts).
 *
 * Why: with Node's HTTP client every body byte is copied once by its parser (each body
 * chunk becomes a new Buffer) and once more when the gzip decoder gathers the socket's
 * 64 KiB pieces into 1 MiB blocks for zlib; both copies ran on the worker's thread (perf:
 * ~8 % of a pull's CPU, with the parser's per-chunk JS on top). Here the socket reads
 * (net.Socket's `onread`) land in the block itself, and a full block goes on as it is: one
 * hash update, one write and one zlib write per MiB, and no copy in user space. Only
 * chunked bodies move bytes (their framing is squeezed out in place).
 *
 * What it keeps of registry/http.ts: the address policy (an IP literal is checked before
 * the connect, a name at connect through the policy's `lookup`, so a refused address is
 * never connected to), the stall timeout (no byte for `stallMs`) and the rate floor
 * (fewer than `minBytesPerSecond` over a `stallMs` window), the abort signal, and the
 * caller's headers (credentials included, never put in a message). What it does not do:
 * TLS (https goes through http.ts), redirects (the caller falls back on any status but
 * 200, and the main thread follows them with their checks), keep-alive: each request
 * has a connection of its own (`Connection: close`), closed at the body's end, since a
 * blob's transfer dwarfs a loopback or LAN connect and no pool then has to be bounded,
 * retired or kept apart per address policy.
 *
 * The response head is parsed strictly: a status line `HTTP/1.x NNN`, header lines of a
 * token, a colon and a value (no folding), at most {@link MAX_HEAD} bytes. The body is
 * framed by Content-Length (one value), by `Transfer-Encoding: chunked`, or by the close
 * of the connection; any other transfer coding is refused before a body byte is read.
 */
import { connect, isIP, type Socket } from 'node:net';
import type { OutgoingHttpHeaders } from 'node:http';
import { BerthError, messageOf } from '../../common/errors.js';
import type { AddressPolicy } from './address-policy.js';
import { NetworkError, stallError, watchRateFloor } from './http.js';

/** Body bytes read into one block before it is handed on. */
export const BLOCK = 1 << 20;
/** Longest response head accepted. */
export const MAX_HEAD = 64 << 10;
/** Longest chunk-size line (with its extensions) or trailer line of a chunked body. */
const MAX_LINE = 4096;
/** A partly filled block is handed on after this long (a slow transfer still unpacks as it comes). */
const FLUSH_MS = 10;

export interface RawGetOptions {
  url: URL;
  headers: OutgoingHttpHeaders;
  stallMs: number;
  minBytesPerSecond?: number;
  policy: AddressPolicy;
  signal: AbortSignal;
}

/** Where the body goes. */
export interface RawBodySink {
  /** The next body bytes; the memory is never written again by the reader. False: stop reading until {@link RawResponse.resume}. */
  block(b: Buffer): boolean;
}

/** The body ended other than at its framing's end, or its framing is broken. */
export class BodyError extends Error {
  constructor(
    message: string,
    readonly why: 'truncated' | 'framing' | 'too-long',
  ) {
    super(message);
    this.name = 'BodyError';
  }
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

/** The request's head; throws when a header could smuggle another line in. */
function requestHead(url: URL, headers: OutgoingHttpHeaders): string {
  let head = `GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\n`;
  for (const [name, value] of Object.entries(headers)) {
    const lower = name.toLowerCase();
    if (value === undefined || lower === 'host' || lower === 'connection') continue;
    if (!TOKEN.test(name)) throw new Error(`invalid header name ${JSON.stringify(name)}`);
    for (const v of Array.isArray(value) ? value : [String(value)]) {
      if (!FIELD_VALUE.test(v)) throw new Error(`invalid characters in the value of header ${name}`);
      head += `${name}: ${v}\r\n`;
    }
  }
  return `${head}Connection: close\r\n\r\n`;
}

/** An answer whose head has been read; its body flows once {@link pipe} is called. */
export interface RawResponse {
  status: number;
  /** Lower-case names; repeated headers joined with ", " (Content-Length and Transfer-Encoding excepted: see `framing`). */
  headers: Record<string, string>;
  /** How the body is delimited. */
  framing: { type: 'length'; length: number } | { type: 'chunked' } | { type: 'close' };
  /**
   * Delivers the body into `sink`, at most `max` bytes; resolves with its length at its
   * framing's end. Rejects with a BodyError (truncated, broken framing, over `max`), a
   * NetworkError (stall, trickle, reset) or the signal's reason.
   */
  pipe(sink: RawBodySink, max: number): Promise<number>;
  /** Reads again after the sink said stop. */
  resume(): void;
  /** Closes the connection (the body is not wanted, or no longer). */
  destroy(): void;
}

/**
 * Sends a GET for `opts.url` (http: only) and resolves once the response head is read.
 * Rejects with a BerthError (the address policy), the signal's reason, or a NetworkError
 * for anything else (refused, reset, stalled, a malformed head).
 */
export async function rawGet(opts: RawGetOptions): Promise<RawResponse> {
  const { url } = opts;
  if (url.protocol !== 'http:') throw new Error(`rawGet takes http: URLs only, not ${url.protocol}`);
  opts.signal.throwIfAborted();
  await opts.policy.checkLiteral(url);
  const head = requestHead(url, opts.headers);
  const hostname = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = Number(url.port || 80);
  return new Reader(opts, head, hostname, port).headRead;
}

type ChunkState = 'size' | 'data' | 'data-end' | 'trailer' | 'done';

class Reader implements RawResponse {
  status = 0;
  headers: Record<string, string> = {};
  framing: RawResponse['framing'] = { type: 'close' };
  readonly headRead: Promise<RawResponse>;

  private readonly socket: Socket;
  private block = Buffer.allocUnsafeSlow(BLOCK);
  /** Bytes of `block` in use: [0, start) handed on, [start, fill) body bytes not yet handed on. */
  private start = 0;
  private fill = 0;
  /** Where in `block` the socket's next read lands (given to it by readInto). */
  private readAt = 0;
  private headDone = false;
  private sink: RawBodySink | undefined;
  private max = Infinity;
  private body = 0;
  private settled = false;
  private failure: Error | undefined;
  private onHead!: { resolve(r: RawResponse): void; reject(e: unknown): void };
  private onBody: { resolve(n: number): void; reject(e: unknown): void } | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private rateTimer: NodeJS.Timeout | undefined;
  private bytesIn = 0;
  /** A chunked body's state, and the chunk's bytes left (state 'data') or the line so far. */
  private chunk: ChunkState = 'size';
  private chunkLeft = 0;
  private line = '';
  private bodyDone = false;
  private paused = false;
  private readonly onAbort: () => void;

  constructor(
    private readonly opts: RawGetOptions,
    requestText: string,
    hostname: string,
    port: number,
  ) {
    this.headRead = new Promise<RawResponse>((resolve, reject) => (this.onHead = { resolve, reject }));
    this.socket = connect({
      host: hostname,
      port,
      // Node looks no IP literal up: those were checked by checkLiteral.
      ...(isIP(hostname) ? {} : { lookup: opts.policy.lookup() }),
      onread: { buffer: () => this.readInto(), callback: (n: number) => this.onRead(n) },
    });
    this.socket.setNoDelay(true);
    this.socket.setTimeout(opts.stallMs, () => this.fail(stallError(opts.url.origin, opts.stallMs)));
    this.socket.on('connect', () => this.socket.write(requestText));
    this.socket.on('end', () => this.onEnd());
    this.socket.on('error', (err) => {
      if (err instanceof BerthError) this.fail(err);
      else this.fail(new NetworkError(`${opts.url.origin}: ${messageOf(err)}`, { cause: err }));
    });
    this.socket.on('close', () => {
      if (!this.settled) this.onEnd();
    });
    this.onAbort = () => this.fail(opts.signal.reason as Error);
    opts.signal.addEventListener('abort', this.onAbort, { once: true });
    this.rateTimer = watchRateFloor(
      opts.url.origin,
      opts.minBytesPerSecond ?? 0,
      opts.stallMs,
      () => this.bytesIn,
      () => this.paused,
      (err) => this.fail(err),
    );
  }

  /**
   * The memory the next socket read goes to: the rest of the block, or a new block. Until
   * the head is complete a read goes no further than MAX_HEAD + 1 bytes into the block
   * (a longer head fails anyway), so the read that completes the head never fills the
   * block: the body bytes it brought wait there for pipe(), and a full block here always
   * means that everything in it was handed on.
   */
  private readInto(): Buffer {
    if (this.fill === this.block.length && this.start === this.fill) {
      this.block = Buffer.allocUnsafeSlow(BLOCK);
      this.start = 0;
      this.fill = 0;
    }
    this.readAt = this.fill;
    return this.headDone ? this.block.subarray(this.fill) : this.block.subarray(this.fill, Math.max(this.fill + 1, MAX_HEAD + 1));
  }

  private onRead(n: number): boolean {
    if (this.settled) return false;
    this.bytesIn += n;
    const from = this.fill;
    // The read went where readInto said; a chunked body squeezed since (pipe's first
    // take) ends lower: the bytes move down to follow it.
    if (this.readAt !== from) this.block.copyWithin(from, this.readAt, this.readAt + n);
    this.fill += n;
    if (!this.headDone) {
      this.readHead();
      // Paused at the head: the body's first bytes wait in the block for pipe().
      return !this.headDone && !this.settled;
    }
    // Not piped yet: kept in the block (the socket is paused).
    if (!this.sink) return false;
    this.take(from);
    return !this.paused && !this.settled;
  }

  /** Looks for the end of the head in the block; parses it once complete. */
  private readHead(): void {
    const end = this.block.subarray(0, this.fill).indexOf('\r\n\r\n', 0, 'latin1');
    if (end < 0) {
      if (this.fill > MAX_HEAD) this.fail(new NetworkError(`${this.opts.url.origin}: response head longer than ${MAX_HEAD} bytes`));
      else if (this.fill === this.block.length) this.fail(new NetworkError(`${this.opts.url.origin}: response head too long`));
      return;
    }
    const text = this.block.toString('latin1', 0, end);
    try {
      this.parseHead(text);
    } catch (err) {
      this.fail(new NetworkError(`${this.opts.url.origin}: malformed response: ${messageOf(err)}`));
      return;
    }
    this.headDone = true;
    // The head's bytes are not body: the body starts after it, in the same block.
    this.start = end + 4;
    this.socket.pause();
    this.paused = true;
    this.onHead.resolve(this);
  }

  private parseHead(text: string): void {
    const lines = text.split('\r\n');
    const m = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(lines[0]!);
    if (!m) throw new Error(`bad status line ${JSON.stringify(lines[0]!.slice(0, 80))}`);
    this.status = Number(m[1]);
    const lengths: string[] = [];
    const codings: string[] = [];
    for (const l of lines.slice(1)) {
      const colon = l.indexOf(':');
      const name = colon > 0 ? l.slice(0, colon) : '';
      if (!TOKEN.test(name)) throw new Error('bad header line');
      const value = l.slice(colon + 1).trim();
      const lower = name.toLowerCase();
      if (lower === 'content-length') lengths.push(value);
      else if (lower === 'transfer-encoding') codings.push(...value.split(',').map((s) => s.trim().toLowerCase()));
      this.headers[lower] = this.headers[lower] === undefined ? value : `${this.headers[lower]}, ${value}`;
    }
    if (codings.length > 0) {
      if (codings.length !== 1 || codings[0] !== 'chunked') throw new Error(`unsupported transfer coding ${JSON.stringify(codings.join(', '))}`);
      if (lengths.length > 0) throw new Error('both Content-Length and Transfer-Encoding');
      this.framing = { type: 'chunked' };
    } else if (lengths.length > 0) {
      if (new Set(lengths).size !== 1 || !/^\d{1,15}$/.test(lengths[0]!)) throw new Error('bad Content-Length');
      this.framing = { type: 'length', length: Number(lengths[0]) };
      this.headers['content-length'] = lengths[0]!;
    }
  }

  pipe(sink: RawBodySink, max: number): Promise<number> {
    if (this.sink) throw new Error('the body is already piped');
    this.sink = sink;
    this.max = max;
    const p = new Promise<number>((resolve, reject) => (this.onBody = { resolve, reject }));
    if (this.failure) {
      this.settle();
      return p;
    }
    if (this.framing.type === 'length' && this.framing.length === 0) this.bodyDone = true;
    // The bytes read with the head (and any read before the head's pause took hold).
    this.take(this.start);
    if (!this.settled) this.resume();
    return p;
  }

  resume(): void {
    if (this.settled) return;
    this.paused = false;
    this.socket.resume();
  }

  destroy(): void {
    this.fail(new Error('the response was destroyed'));
  }

  /**
   * Body bytes came into the block at [from, fill): squeezes a chunked body's framing out
   * and hands on what is complete (a full block, the body's end).
   */
  private take(from: number): void {
    if (this.framing.type === 'chunked') this.fill = this.unchunk(from, this.fill);
    // A framing error has failed the response: nothing more goes to the sink.
    if (this.settled) return;
    const f = this.framing;
    let bodyBytes = this.fill - this.start;
    if (f.type === 'length' && this.body + bodyBytes >= f.length) {
      // Bytes past the declared length are not this response's: left unread.
      bodyBytes = f.length - this.body;
      this.fill = this.start + bodyBytes;
      this.bodyDone = true;
    }
    if (this.body + bodyBytes > this.max) {
      return this.fail(new BodyError(`more than ${this.max} bytes`, 'too-long'));
    }
    if (this.bodyDone || this.fill === this.block.length) this.hand();
    else if (this.fill > this.start && !this.flushTimer) {
      this.flushTimer = setTimeout(() => {
        this.flushTimer = undefined;
        if (!this.settled && this.fill > this.start) this.hand();
      }, FLUSH_MS);
    }
    if (this.bodyDone) this.finish();
  }

  /** Hands [start, fill) of the block on. */
  private hand(): void {
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    if (this.fill === this.start) return;
    const piece = this.block.subarray(this.start, this.fill);
    this.body += piece.length;
    this.start = this.fill;
    if (!this.sink!.block(piece) && !this.bodyDone) {
      this.paused = true;
      this.socket.pause();
    }
  }

  /**
   * Decodes the chunked framing of [from, to) in place: the data bytes are moved down to
   * `from` onwards; returns where they end.
   */
  private unchunk(from: number, to: number): number {
    const b = this.block;
    let out = from;
    let i = from;
    while (i < to && this.chunk !== 'done') {
      if (this.chunk === 'data') {
        const k = Math.min(this.chunkLeft, to - i);
        if (out !== i) b.copyWithin(out, i, i + k);
        out += k;
        i += k;
        this.chunkLeft -= k;
        if (this.chunkLeft === 0) this.chunk = 'data-end';
        continue;
      }
      // A line: the chunk size (with extensions), the CRLF after a chunk's data, or a trailer.
      const nl = b.indexOf(10, i);
      const stop = nl < 0 || nl >= to ? to : nl + 1;
      this.line += b.toString('latin1', i, stop);
      i = stop;
      if (this.line.length > MAX_LINE) return (this.framingError('line too long'), out);
      if (!this.line.endsWith('\n')) continue;
      if (!this.line.endsWith('\r\n')) return (this.framingError('bare LF'), out);
      const line = this.line.slice(0, -2);
      this.line = '';
      if (this.chunk === 'data-end') {
        if (line !== '') return (this.framingError('no CRLF after chunk data'), out);
        this.chunk = 'size';
      } else if (this.chunk === 'size') {
        const m = /^([0-9a-fA-F]{1,12})[ \t]*(?:;.*)?$/.exec(line);
        if (!m) return (this.framingError(`bad chunk size ${JSON.stringify(line.slice(0, 40))}`), out);
        this.chunkLeft = parseInt(m[1]!, 16);
        this.chunk = this.chunkLeft === 0 ? 'trailer' : 'data';
      } else if (line === '') {
        this.chunk = 'done';
        this.bodyDone = true;
      }
    }
    return out;
  }

  private framingError(what: string): void {
    this.fail(new BodyError(`broken chunked framing: ${what}`, 'framing'));
  }

  private onEnd(): void {
    if (this.settled) return;
    if (!this.headDone) return this.fail(new NetworkError(`${this.opts.url.origin}: connection closed before a response`));
    if (this.framing.type === 'close' && this.sink) {
      this.hand();
      this.bodyDone = true;
      return this.finish();
    }
    this.fail(new BodyError('connection closed before the end of the body', 'truncated'));
  }

  private finish(): void {
    if (this.settled || !this.sink) return;
    this.settled = true;
    this.cleanup();
    this.onBody?.resolve(this.body);
  }

  private fail(err: Error): void {
    if (this.settled) return;
    this.failure ??= err;
    if (!this.headDone) {
      this.settled = true;
      this.cleanup();
      this.onHead.reject(this.opts.signal.aborted ? this.opts.signal.reason : err);
      return;
    }
    // Before pipe: reported when the body is asked for.
    if (this.onBody) this.settle();
    else this.cleanup();
  }

  private settle(): void {
    this.settled = true;
    this.cleanup();
    this.onBody!.reject(this.opts.signal.aborted ? this.opts.signal.reason : this.failure);
  }

  private cleanup(): void {
    clearTimeout(this.flushTimer);
    clearInterval(this.rateTimer);
    this.opts.signal.removeEventListener('abort', this.onAbort);
    this.socket.destroy();
  }
}
