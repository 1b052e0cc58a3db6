/**
 * The SPDY/3.1 frame codec (draft-ietf-httpbis-http2-00, "SPDY Protocol draft 3"): the
 * byte layout of control and DATA frames, splitting the incoming byte stream into whole
 * frames, the header block format, and its zlib compression with the protocol's
 * dictionary. The session state machine (spdy-session.ts) decides what to send and when.
 *
 * Every frame starts with 8 bytes: a control frame has the high bit set, the version
 * and the type, a DATA frame the stream id; then 8 bits of flags and a 24-bit length.
 */
import { constants as zc, createDeflate, createInflate, type Deflate, type Inflate } from 'node:zlib';

/** Decoded headers: lower-case names, each with its values (a Map: any name is data, `__proto__` too). */
export type SpdyHeaders = Map<string, string[]>;

const CONTROL = 0x80;
/** The only SPDY version spoken. */
export const VERSION = 3;
/** Control frame types. */
export const TYPE = { SYN_STREAM: 1, SYN_REPLY: 2, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7, HEADERS: 8, WINDOW_UPDATE: 9 } as const;
/** The last frame a side sends on a stream. */
export const FLAG_FIN = 0x01;
/** RST_STREAM status codes. */
export const RST = { PROTOCOL_ERROR: 1, INVALID_STREAM: 2, REFUSED_STREAM: 3, CANCEL: 5, STREAM_IN_USE: 8, STREAM_ALREADY_CLOSED: 9 } as const;
/** RST_STREAM and GOAWAY status: the peer broke the protocol. */
export const PROTOCOL_ERROR = 1;
/** Larger incoming DATA frames end the session (clients write 32 KiB at a time). */
const MAX_FRAME = 8 * 1024 * 1024;
/** Larger control frames carrying a header block end the session. */
const MAX_HEADER_FRAME = 512 * 1024;
/** Larger other control frames (SETTINGS, GOAWAY, unknown ones) end the session. */
const MAX_SMALL_CONTROL = 64 * 1024;
/** Larger decompressed header blocks end the session; inflating stops there. */
export const MAX_HEADER_BLOCK = 256 * 1024;
/** Outgoing DATA is cut into frames of at most this size (what kubelet's own server sends: it copies 32 KiB at a time). */
const DATA_CHUNK = 32 * 1024;

/**
 * The SPDY/3 header compression dictionary (section 2.6.10.1 of the draft): these names,
 * each preceded by its length as a 32-bit big-endian number, then the tail as it is.
 * (Its SHA-256 is checked in test/unit/streaming/spdy-session.test.ts.)
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

/** The dictionary both zlib contexts of a session start from. */
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
  const out: SpdyHeaders = new Map();
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
    const values = out.get(name) ?? [];
    values.push(...value.split('\0'));
    out.set(name, values);
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

/** GOAWAY naming the last stream the server accepted, status OK (0) or {@link PROTOCOL_ERROR}. */
export function goAwayFrame(lastStreamId: number, status = 0): Buffer {
  return controlFrame(TYPE.GOAWAY, 0, Buffer.concat([u32(lastStreamId), u32(status)]));
}

/** SYN_REPLY for stream `id` with its compressed header block. */
export function synReplyFrame(id: number, fin: boolean, block: Buffer): Buffer {
  return controlFrame(TYPE.SYN_REPLY, fin ? FLAG_FIN : 0, Buffer.concat([u32(id), block]));
}

/** RST_STREAM of stream `id` with one of the {@link RST} statuses. */
export function rstStreamFrame(id: number, status: number): Buffer {
  return controlFrame(TYPE.RST_STREAM, 0, Buffer.concat([u32(id), u32(status)]));
}

/** PING with this payload (the echo of a client's ping). */
export function pingFrame(payload: Buffer): Buffer {
  return controlFrame(TYPE.PING, 0, Buffer.from(payload));
}

/**
 * `data` of stream `id` as DATA frames of at most DATA_CHUNK bytes, FIN on the last if
 * `fin`: each frame's 8-byte header followed by a view of its part of `data` (nothing is
 * copied; the socket writes them together with writev).
 */
export function dataFrames(id: number, data: Buffer, fin: boolean): Buffer[] {
  const n = Math.max(1, Math.ceil(data.length / DATA_CHUNK));
  const heads = Buffer.allocUnsafe(8 * n);
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const part = data.subarray(i * DATA_CHUNK, (i + 1) * DATA_CHUNK);
    const flags = fin && i === n - 1 ? FLAG_FIN : 0;
    heads.writeUInt32BE(id & 0x7fffffff, 8 * i);
    heads.writeUInt32BE(((flags & 0xff) << 24) | part.length, 8 * i + 4);
    out.push(heads.subarray(8 * i, 8 * i + 8));
    if (part.length > 0) out.push(part);
  }
  return out;
}

/** A frame as read: DATA of a stream, or a control frame of some version and type. */
export type Frame =
  { control: false; streamId: number; flags: number; payload: Buffer } | { control: true; version: number; type: number; flags: number; payload: Buffer };

/** Reads the header of one whole frame (from {@link FrameSplitter}). */
export function parseFrame(f: Buffer): Frame {
  const flags = f[4]!;
  const payload = f.subarray(8);
  if ((f[0]! & CONTROL) === 0) return { control: false, streamId: f.readUInt32BE(0) & 0x7fffffff, flags, payload };
  return { control: true, version: f.readUInt16BE(0) & 0x7fff, type: f.readUInt16BE(2), flags, payload };
}

/** The largest length a frame of this 8-byte header may have; throws when the header itself is wrong. */
function frameLimit(h: Buffer): number {
  if ((h[0]! & CONTROL) === 0) return MAX_FRAME;
  switch (h.readUInt16BE(2)) {
    case TYPE.SYN_STREAM:
    case TYPE.SYN_REPLY:
    case TYPE.HEADERS:
      return MAX_HEADER_FRAME;
    case TYPE.PING:
      if ((h.readUInt32BE(4) & 0xffffff) !== 4) throw new Error(`SPDY PING of ${h.readUInt32BE(4) & 0xffffff} bytes, not 4`);
      return 4;
    case TYPE.RST_STREAM:
    case TYPE.WINDOW_UPDATE:
      return 8;
    default:
      return MAX_SMALL_CONTROL;
  }
}

/**
 * Cuts the incoming byte stream into whole frames. Chunks are kept as they came and each
 * byte is copied at most once (into the frame it belongs to), so the work is linear in
 * the bytes received; a frame's length is checked against its type's limit as soon as
 * its 8-byte header is in, before its payload is buffered.
 */
export class FrameSplitter {
  private chunks: Buffer[] = [];
  /** Index of the first chunk not wholly taken. */
  private first = 0;
  /** Bytes of that chunk already taken. */
  private offset = 0;
  private size = 0;

  /** Adds bytes and yields each frame they complete; throws on a frame over its limit. */
  *push(d: Buffer): Generator<Buffer> {
    if (d.length > 0) {
      this.chunks.push(d);
      this.size += d.length;
    }
    while (this.size >= 8) {
      const head = this.read(8, false);
      const len = head.readUInt32BE(4) & 0xffffff;
      const limit = frameLimit(head);
      if (len > limit) throw new Error(`SPDY frame of ${len} bytes is over the ${limit} limit`);
      if (this.size < 8 + len) return;
      yield this.read(8 + len, true);
    }
  }

  /** The next `n` bytes (a view when they lie in one chunk), taken or only looked at. */
  private read(n: number, take: boolean): Buffer {
    const head = this.chunks[this.first]!;
    let out: Buffer;
    let i = this.first;
    let off = this.offset;
    if (head.length - off >= n) {
      out = head.subarray(off, off + n);
      off += n;
    } else {
      out = Buffer.allocUnsafe(n);
      let got = 0;
      while (got < n) {
        const c = this.chunks[i]!;
        const k = c.copy(out, got, off, Math.min(c.length, off + n - got));
        got += k;
        off += k;
        if (off === c.length) {
          i++;
          off = 0;
        }
      }
    }
    if (!take) return out;
    if (off === this.chunks[i]?.length) {
      i++;
      off = 0;
    }
    this.first = i;
    this.offset = off;
    this.size -= n;
    // Drop the chunks taken once they are the larger part of the list.
    if (this.first > 64 && this.first * 2 > this.chunks.length) {
      this.chunks = this.chunks.slice(this.first);
      this.first = 0;
    }
    return out;
  }
}

/**
 * One zlib context used block by block with sync flushes (compressed header blocks). An
 * inflating context stops as soon as a block's output passes {@link MAX_HEADER_BLOCK}, and
 * any failure (a corrupt block, the cap) rejects the block and every later one: the
 * context's state is lost, so the session cannot go on.
 */
export class ZContext {
  private chain: Promise<unknown> = Promise.resolve();
  private readonly z: Deflate | Inflate;
  private chunks: Buffer[] = [];
  private size = 0;
  private failed: Error | undefined;
  /** Rejects the block being processed. */
  private abort: ((err: Error) => void) | undefined;

  constructor(private readonly kind: 'deflate' | 'inflate') {
    this.z = kind === 'deflate' ? createDeflate({ dictionary: SPDY_DICTIONARY }) : createInflate({ dictionary: SPDY_DICTIONARY });
    this.z.on('data', (d: Buffer) => {
      this.size += d.length;
      if (this.size <= MAX_HEADER_BLOCK || this.kind === 'deflate') this.chunks.push(d);
      else this.stop(new Error(`header block over ${MAX_HEADER_BLOCK} bytes`));
    });
    this.z.on('error', (err: Error) => this.stop(err));
  }

  private stop(err: Error): void {
    if (this.failed) return;
    this.failed = err;
    this.chunks = [];
    this.abort?.(err);
    this.z.destroy();
  }

  /** Bytes the last block produced (counted up to where inflating stopped). */
  get produced(): number {
    return this.size;
  }

  /** Feeds one block and returns what the context produced for it, in call order. */
  run(input: Buffer): Promise<Buffer> {
    const p = this.chain.then(
      () =>
        new Promise<Buffer>((resolve, reject) => {
          if (this.failed) return reject(this.failed);
          this.chunks = [];
          this.size = 0;
          this.abort = reject;
          this.z.write(input);
          this.z.flush(zc.Z_SYNC_FLUSH, () => {
            this.abort = undefined;
            if (this.failed) return reject(this.failed);
            resolve(Buffer.concat(this.chunks));
          });
        }),
    );
    this.chain = p.catch(() => undefined);
    return p;
  }

  close(): void {
    if (!this.failed) this.failed = new Error('the zlib context is closed');
    this.abort?.(this.failed);
    this.z.close();
  }
}
