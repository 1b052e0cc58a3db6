/**
 * A server-side SPDY/3.1 session (the framing of draft-ietf-httpbis-http2-00, "SPDY
 * Protocol draft 3"), as far as Kubernetes' streaming clients use it: they upgrade an
 * HTTP/1.1 connection to `SPDY/3.1` and open streams with SYN_STREAM; the server answers
 * each with SYN_REPLY and both sides send DATA frames, ending with FLAG_FIN.
 *
 * - Header blocks are compressed with zlib and the protocol's dictionary, one context
 *   per direction for the whole session, so they are decoded and encoded strictly in
 *   frame order: incoming frames go through one queue, outgoing ones through another.
 * - Flow control: the clients (moby/spdystream, used by kubelet, kubectl and crictl)
 *   neither send nor heed WINDOW_UPDATE, so berth sends none and does not wait on
 *   windows; backpressure comes from the TCP socket.
 * - PING is echoed; GOAWAY from the client stops new streams; a malformed frame, an
 *   oversized one (over 8 MiB; clients write 32 KiB at a time) or a header block over 256 KiB ends the session.
 */
import { EventEmitter } from 'node:events';
import { Duplex } from 'node:stream';
import { constants as zc, createDeflate, createInflate, type Deflate, type Inflate } from 'node:zlib';

export interface SpdyHeaders {
  [name: string]: string[];
}

const CONTROL = 0x80;
const VERSION = 3;
const TYPE = { SYN_STREAM: 1, SYN_REPLY: 2, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7, HEADERS: 8, WINDOW_UPDATE: 9 } as const;
const FLAG_FIN = 0x01;
/** RST_STREAM status codes. */
export const RST = { PROTOCOL_ERROR: 1, INVALID_STREAM: 2, REFUSED_STREAM: 3, CANCEL: 5, STREAM_IN_USE: 8, STREAM_ALREADY_CLOSED: 9 } as const;
const MAX_FRAME = 8 * 1024 * 1024;
const MAX_HEADER_BLOCK = 256 * 1024;
const DATA_CHUNK = 16 * 1024;

/**
 * The SPDY/3 header compression dictionary (section 2.6.10.1 of the draft): these names,
 * each preceded by its length as a 32-bit big-endian number, then the tail as it is.
 * (Its SHA-256 is checked in test/unit/streaming/spdy.test.ts.)
 */
const DICTIONARY_WORDS = [
  'options',
  'head',
  'post',
  'put',
  'delete',
  'trace',
  'accept',
  'accept-charset',
  'accept-encoding',
  'accept-language',
  'accept-ranges',
  'age',
  'allow',
  'authorization',
  'cache-control',
  'connection',
  'content-base',
  'content-encoding',
  'content-language',
  'content-length',
  'content-location',
  'content-md5',
  'content-range',
  'content-type',
  'date',
  'etag',
  'expect',
  'expires',
  'from',
  'host',
  'if-match',
  'if-modified-since',
  'if-none-match',
  'if-range',
  'if-unmodified-since',
  'last-modified',
  'location',
  'max-forwards',
  'pragma',
  'proxy-authenticate',
  'proxy-authorization',
  'range',
  'referer',
  'retry-after',
  'server',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'user-agent',
  'vary',
  'via',
  'warning',
  'www-authenticate',
  'method',
  'get',
  'status',
  '200 OK',
  'version',
  'HTTP/1.1',
  'url',
  'public',
  'set-cookie',
  'keep-alive',
  'origin',
];
const DICTIONARY_TAIL =
  '100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505' +
  '203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found' +
  '500 Internal Server Error501 Not Implemented503 Service Unavailable' +
  'Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT' +
  'chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,public' +
  'privatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.';

export const SPDY_DICTIONARY: Buffer = Buffer.concat([
  ...DICTIONARY_WORDS.flatMap((w) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(w.length);
    return [len, Buffer.from(w, 'latin1')];
  }),
  Buffer.from(DICTIONARY_TAIL, 'latin1'),
]);

/** Encodes a header block (uncompressed): count, then length-prefixed names and NUL-joined values. */
export function encodeHeaderBlock(headers: Record<string, string | string[]>): Buffer {
  const entries = Object.entries(headers);
  const parts: Buffer[] = [u32(entries.length)];
  for (const [name, value] of entries) {
    const n = Buffer.from(name.toLowerCase(), 'utf8');
    const v = Buffer.from(Array.isArray(value) ? value.join('\0') : value, 'utf8');
    parts.push(u32(n.length), n, u32(v.length), v);
  }
  return Buffer.concat(parts);
}

/** Decodes an uncompressed header block; throws on a malformed one. */
export function decodeHeaderBlock(b: Buffer): SpdyHeaders {
  const out: SpdyHeaders = {};
  let off = 0;
  const take = (): Buffer => {
    if (off + 4 > b.length) throw new Error('truncated header block');
    const len = b.readUInt32BE(off);
    off += 4;
    if (off + len > b.length) throw new Error('truncated header block');
    const s = b.subarray(off, off + len);
    off += len;
    return s;
  };
  if (b.length < 4) throw new Error('truncated header block');
  const count = b.readUInt32BE(0);
  off = 4;
  for (let i = 0; i < count; i++) {
    const name = take().toString('utf8').toLowerCase();
    const value = take().toString('utf8');
    if (name === '') throw new Error('empty header name');
    (out[name] ??= []).push(...value.split('\0'));
  }
  return out;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

function controlFrame(type: number, flags: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt16BE(0x8000 | VERSION, 0);
  h.writeUInt16BE(type, 2);
  h.writeUInt32BE(((flags & 0xff) << 24) | payload.length, 4);
  return Buffer.concat([h, payload]);
}

function dataFrame(streamId: number, flags: number, data: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt32BE(streamId & 0x7fffffff, 0);
  h.writeUInt32BE(((flags & 0xff) << 24) | data.length, 4);
  return Buffer.concat([h, data]);
}

/** One zlib context used block by block with sync flushes (compressed header blocks). */
class ZContext {
  private chain: Promise<unknown> = Promise.resolve();
  private readonly z: Deflate | Inflate;
  private chunks: Buffer[] = [];
  private size = 0;
  private failed: Error | undefined;

  constructor(kind: 'deflate' | 'inflate') {
    this.z = kind === 'deflate' ? createDeflate({ dictionary: SPDY_DICTIONARY }) : createInflate({ dictionary: SPDY_DICTIONARY });
    this.z.on('data', (d: Buffer) => {
      this.size += d.length;
      if (this.size <= MAX_HEADER_BLOCK) this.chunks.push(d);
    });
    this.z.on('error', (err: Error) => (this.failed = err));
  }

  /** Feeds one block and returns what the context produced for it, in call order. */
  run(input: Buffer): Promise<Buffer> {
    const p = this.chain.then(
      () =>
        new Promise<Buffer>((resolve, reject) => {
          if (this.failed) return reject(this.failed);
          this.chunks = [];
          this.size = 0;
          this.z.write(input);
          this.z.flush(zc.Z_SYNC_FLUSH, () => {
            if (this.failed) return reject(this.failed);
            if (this.size > MAX_HEADER_BLOCK) return reject(new Error(`header block over ${MAX_HEADER_BLOCK} bytes`));
            resolve(Buffer.concat(this.chunks));
          });
        }),
    );
    this.chain = p.catch(() => undefined);
    return p;
  }

  close(): void {
    this.z.close();
  }
}

/** A stream the client opened; write to send DATA, end() to send FIN. */
export class SpdyStream extends Duplex {
  private replied = false;
  private readonly waiting: Array<() => void> = [];
  /** The client sent FIN (or the stream was reset). */
  remoteClosed = false;
  localClosed = false;

  constructor(
    private readonly session: SpdySession,
    readonly id: number,
    readonly headers: SpdyHeaders,
  ) {
    super({ allowHalfOpen: true });
    // Failures surface through the session ('error', 'close'); a stream never throws.
    this.on('error', () => undefined);
  }

  /** SYN_REPLY with these headers. */
  reply(headers: Record<string, string | string[]> = {}, fin = false): void {
    if (this.replied) return;
    this.replied = true;
    this.session.sendReply(this.id, headers, fin);
    if (fin) this.localClosed = true;
    for (const w of this.waiting.splice(0)) w();
  }

  /** RST_STREAM (default CANCEL); the stream is over both ways. */
  reset(status: number = RST.CANCEL): void {
    if (!this.remoteClosed || !this.localClosed) this.session.sendReset(this.id, status);
    this.onReset();
  }

  /** @internal the peer reset the stream, or the session ended. */
  onReset(): void {
    this.remoteClosed = true;
    this.localClosed = true;
    this.session.forget(this.id);
    if (!this.readableEnded) this.push(null);
    this.destroy();
  }

  /** @internal incoming data. */
  onData(data: Buffer, fin: boolean): void {
    if (this.remoteClosed) return;
    if (data.length > 0) this.push(data);
    if (fin) {
      this.remoteClosed = true;
      this.push(null);
      if (this.localClosed) this.session.forget(this.id);
    }
  }

  override _read(): void {
    // Data is pushed as frames arrive; the socket's own backpressure limits the rest.
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const go = (): void => {
      if (this.localClosed) return cb(new Error('stream closed'));
      this.session.sendData(this.id, chunk, false, cb);
    };
    if (this.replied) go();
    else this.waiting.push(go);
  }

  override _final(cb: (err?: Error | null) => void): void {
    const go = (): void => {
      if (this.localClosed) return cb();
      this.localClosed = true;
      this.session.sendData(this.id, Buffer.alloc(0), true, cb);
      if (this.remoteClosed) this.session.forget(this.id);
    };
    if (this.replied) go();
    else this.waiting.push(go);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (!this.localClosed || !this.remoteClosed) {
      if (!this.session.closed) this.session.sendReset(this.id, RST.CANCEL);
      this.localClosed = true;
      this.remoteClosed = true;
      this.session.forget(this.id);
    }
    cb(err);
  }
}

export class SpdySession extends EventEmitter {
  private buf: Buffer = Buffer.alloc(0);
  private readonly streams = new Map<number, SpdyStream>();
  private readonly inflate = new ZContext('inflate');
  private readonly deflate = new ZContext('deflate');
  /** Incoming frames are handled one after the other (header blocks share one context). */
  private inChain: Promise<void> = Promise.resolve();
  /** Outgoing frames leave in order (a SYN_REPLY waits for its compression). */
  private outChain: Promise<void> = Promise.resolve();
  private lastStreamId = 0;
  /** The client sent GOAWAY: no new streams; the session ends when the last one does. */
  private peerGoingAway = false;
  /** close() was called. */
  private closing = false;
  closed = false;

  constructor(
    private readonly socket: Duplex,
    head?: Buffer,
  ) {
    super();
    socket.on('data', (d: Buffer) => this.onBytes(d));
    socket.on('error', (err: Error) => this.fail(err));
    socket.on('close', () => this.teardown());
    // The client closed its side: nothing more will come; finish what is queued, then close.
    socket.on('end', () => this.close());
    if (head && head.length > 0) queueMicrotask(() => this.onBytes(head));
  }

  /** Sends GOAWAY and ends the socket once every frame before it has been written. */
  close(): void {
    if (this.closed || this.closing) return;
    this.closing = true;
    const payload = Buffer.concat([u32(this.lastStreamId), u32(0)]);
    this.queue(async () => controlFrame(TYPE.GOAWAY, 0, payload));
    this.outChain = this.outChain.then(() => {
      if (this.socket.writable) this.socket.end();
      else this.socket.destroy();
    });
  }

  destroy(err?: Error): void {
    this.socket.destroy(err);
    this.teardown();
  }

  /** @internal */
  forget(id: number): void {
    this.streams.delete(id);
    if (this.peerGoingAway && this.streams.size === 0) this.close();
  }

  /** @internal */
  sendReply(id: number, headers: Record<string, string | string[]>, fin: boolean): void {
    const block = this.deflate.run(encodeHeaderBlock(headers));
    this.queue(async () => controlFrame(TYPE.SYN_REPLY, fin ? FLAG_FIN : 0, Buffer.concat([u32(id), await block])));
  }

  /** @internal */
  sendReset(id: number, status: number): void {
    this.queue(async () => controlFrame(TYPE.RST_STREAM, 0, Buffer.concat([u32(id), u32(status)])));
  }

  /** @internal DATA in frames of at most DATA_CHUNK; `cb` once the socket took them (backpressure). */
  sendData(id: number, data: Buffer, fin: boolean, cb: (err?: Error | null) => void): void {
    const frames: Buffer[] = [];
    for (let off = 0; off < data.length; off += DATA_CHUNK) {
      const last = off + DATA_CHUNK >= data.length;
      frames.push(dataFrame(id, fin && last ? FLAG_FIN : 0, data.subarray(off, off + DATA_CHUNK)));
    }
    if (frames.length === 0) frames.push(dataFrame(id, fin ? FLAG_FIN : 0, data));
    this.outChain = this.outChain.then(
      () =>
        new Promise<void>((resolve) => {
          if (this.closed || !this.socket.writable) {
            cb(new Error('session closed'));
            return resolve();
          }
          const ok = this.socket.write(Buffer.concat(frames));
          if (ok) {
            cb();
            return resolve();
          }
          // Later frames may queue meanwhile, but this writer waits for the drain.
          resolve();
          const onDrain = (): void => {
            this.socket.off('close', onDrain);
            cb();
          };
          this.socket.once('drain', onDrain);
          this.socket.once('close', onDrain);
        }),
    );
  }

  private queue(make: () => Promise<Buffer>): void {
    const frame = make();
    frame.catch(() => undefined);
    this.outChain = this.outChain.then(async () => {
      let f: Buffer;
      try {
        f = await frame;
      } catch (err) {
        this.fail(err as Error);
        return;
      }
      if (!this.closed && this.socket.writable) this.socket.write(f);
    });
  }

  private onBytes(d: Buffer): void {
    if (this.closed) return;
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    while (this.buf.length >= 8) {
      const len = this.buf.readUInt32BE(4) & 0xffffff;
      if (len > MAX_FRAME) return this.fail(new Error(`SPDY frame of ${len} bytes is over the ${MAX_FRAME} limit`));
      if (this.buf.length < 8 + len) return;
      const frame = this.buf.subarray(0, 8 + len);
      this.buf = this.buf.subarray(8 + len);
      this.inChain = this.inChain.then(() => this.onFrame(frame)).catch((err: unknown) => this.fail(err as Error));
    }
  }

  private async onFrame(f: Buffer): Promise<void> {
    if (this.closed) return;
    const flags = f[4]!;
    const payload = f.subarray(8);
    if ((f[0]! & CONTROL) === 0) {
      const id = f.readUInt32BE(0) & 0x7fffffff;
      const s = this.streams.get(id);
      if (!s) {
        this.sendReset(id, RST.INVALID_STREAM);
        return;
      }
      s.onData(Buffer.from(payload), (flags & FLAG_FIN) !== 0);
      return;
    }
    const version = f.readUInt16BE(0) & 0x7fff;
    if (version !== VERSION) throw new Error(`SPDY version ${version}, not 3`);
    const type = f.readUInt16BE(2);
    switch (type) {
      case TYPE.SYN_STREAM: {
        if (payload.length < 10) throw new Error('short SYN_STREAM');
        const id = payload.readUInt32BE(0) & 0x7fffffff;
        const headers = decodeHeaderBlock(await this.inflate.run(payload.subarray(10)));
        if (id === 0 || id % 2 === 0 || id <= this.lastStreamId) {
          this.sendReset(id, RST.PROTOCOL_ERROR);
          return;
        }
        this.lastStreamId = id;
        if (this.peerGoingAway || this.closing) {
          this.sendReset(id, RST.REFUSED_STREAM);
          return;
        }
        const s = new SpdyStream(this, id, headers);
        this.streams.set(id, s);
        if (flags & FLAG_FIN) s.onData(Buffer.alloc(0), true);
        this.emit('stream', s);
        return;
      }
      case TYPE.HEADERS: {
        if (payload.length < 4) throw new Error('short HEADERS');
        await this.inflate.run(payload.subarray(4)); // kept in step; nothing uses them
        const s = this.streams.get(payload.readUInt32BE(0) & 0x7fffffff);
        if (s && flags & FLAG_FIN) s.onData(Buffer.alloc(0), true);
        return;
      }
      case TYPE.SYN_REPLY: {
        // The client answers no stream of ours (berth opens none); keep the context in step.
        if (payload.length >= 4) await this.inflate.run(payload.subarray(4));
        return;
      }
      case TYPE.RST_STREAM: {
        if (payload.length < 8) throw new Error('short RST_STREAM');
        this.streams.get(payload.readUInt32BE(0) & 0x7fffffff)?.onReset();
        return;
      }
      case TYPE.PING: {
        if (payload.length < 4) throw new Error('short PING');
        // Client pings have odd ids; an even one would be the answer to ours (never sent).
        if (payload.readUInt32BE(0) % 2 === 1) this.queue(async () => controlFrame(TYPE.PING, 0, Buffer.from(payload)));
        return;
      }
      case TYPE.GOAWAY: {
        this.peerGoingAway = true;
        if (this.streams.size === 0) this.close();
        return;
      }
      case TYPE.SETTINGS:
      case TYPE.WINDOW_UPDATE:
      default:
        return; // no flow control (see above); unknown control frames are ignored, as the draft says
    }
  }

  private fail(err: Error): void {
    if (this.closed) return;
    this.emit('error', err);
    this.socket.destroy();
    this.teardown();
  }

  private teardown(): void {
    if (this.closed) return;
    this.closed = true;
    for (const s of [...this.streams.values()]) s.onReset();
    this.streams.clear();
    this.inflate.close();
    this.deflate.close();
    this.emit('close');
  }
}
