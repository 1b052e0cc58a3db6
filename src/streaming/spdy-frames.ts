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

/** Decoded headers: lower-case names, each with its values. */
export interface SpdyHeaders {
  [name: string]: string[];
}

const CONTROL = 0x80;
/** The only SPDY version spoken. */
export const VERSION = 3;
/** Control frame types. */
export const TYPE = { SYN_STREAM: 1, SYN_REPLY: 2, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7, HEADERS: 8, WINDOW_UPDATE: 9 } as const;
/** The last frame a side sends on a stream. */
export const FLAG_FIN = 0x01;
/** RST_STREAM status codes. */
export const RST = { PROTOCOL_ERROR: 1, INVALID_STREAM: 2, REFUSED_STREAM: 3, CANCEL: 5, STREAM_IN_USE: 8, STREAM_ALREADY_CLOSED: 9 } as const;
/** Larger incoming frames end the session (clients write 32 KiB at a time). */
const MAX_FRAME = 8 * 1024 * 1024;
/** Larger decompressed header blocks end the session. */
const MAX_HEADER_BLOCK = 256 * 1024;
/** Outgoing DATA is cut into frames of at most this size. */
const DATA_CHUNK = 16 * 1024;

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

/** GOAWAY naming the last stream the server accepted, status OK. */
export function goAwayFrame(lastStreamId: number): Buffer {
  return controlFrame(TYPE.GOAWAY, 0, Buffer.concat([u32(lastStreamId), u32(0)]));
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

/** `data` of stream `id` as DATA frames of at most DATA_CHUNK bytes, FIN on the last if `fin`. */
export function dataFrames(id: number, data: Buffer, fin: boolean): Buffer {
  const frames: Buffer[] = [];
  for (let off = 0; off < data.length; off += DATA_CHUNK) {
    const last = off + DATA_CHUNK >= data.length;
    frames.push(dataFrame(id, fin && last ? FLAG_FIN : 0, data.subarray(off, off + DATA_CHUNK)));
  }
  if (frames.length === 0) frames.push(dataFrame(id, fin ? FLAG_FIN : 0, data));
  return Buffer.concat(frames);
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

/** Cuts the incoming byte stream into whole frames. */
export class FrameSplitter {
  private buf: Buffer = Buffer.alloc(0);

  /** Adds bytes and yields each frame they complete; throws on a frame over MAX_FRAME. */
  *push(d: Buffer): Generator<Buffer> {
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    while (this.buf.length >= 8) {
      const len = this.buf.readUInt32BE(4) & 0xffffff;
      if (len > MAX_FRAME) throw new Error(`SPDY frame of ${len} bytes is over the ${MAX_FRAME} limit`);
      if (this.buf.length < 8 + len) return;
      const frame = this.buf.subarray(0, 8 + len);
      this.buf = this.buf.subarray(8 + len);
      yield frame;
    }
  }
}

/** One zlib context used block by block with sync flushes (compressed header blocks). */
export class ZContext {
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
