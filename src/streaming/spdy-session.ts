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
 *   windows; backpressure comes from the TCP socket both ways. Incoming DATA waiting for
 *   a consumer counts against a per-session cap: at the cap the socket is no longer
 *   read (the client's writes block in TCP) until the consumers catch up. Outgoing
 *   frames wait for the socket to drain; a client that lets control frames pile up
 *   (PING answers, resets) past a cap loses the session.
 * - Streams are capped per session and across sessions ({@link StreamBudget}); beyond
 *   either, SYN_STREAM is answered with REFUSED_STREAM.
 * - PING (exactly 4 bytes) is echoed; GOAWAY from the client stops new streams. A
 *   malformed frame, an oversized one (DATA over 8 MiB; clients write 32 KiB at a time),
 *   a header block over 256 KiB (inflating stops there) or a corrupt one ends the
 *   session with GOAWAY(PROTOCOL_ERROR), the socket cut a second later at the latest.
 *
 * The frame layout and the header compression live in spdy-frames.ts.
 */
import { EventEmitter } from 'node:events';
import { Duplex } from 'node:stream';
import type { StreamBudget } from './stream-budget.js';
import {
  dataFrames,
  decodeHeaderBlock,
  encodeHeaderBlock,
  FLAG_FIN,
  FrameSplitter,
  goAwayFrame,
  parseFrame,
  pingFrame,
  PROTOCOL_ERROR,
  RST,
  rstStreamFrame,
  synReplyFrame,
  TYPE,
  VERSION,
  ZContext,
  type SpdyHeaders,
} from './spdy-frames.js';

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
    // Data is pushed as frames arrive; a consumer asking for more may let the socket go on.
    this.session.resumeIfBelowCap();
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
    queueMicrotask(() => this.session.resumeIfBelowCap());
    if (!this.localClosed || !this.remoteClosed) {
      if (!this.session.closed) this.session.sendReset(this.id, RST.CANCEL);
      this.localClosed = true;
      this.remoteClosed = true;
      this.session.forget(this.id);
    }
    cb(err);
  }
}

/** Limits of one session; the defaults suit kubelet's and crictl's streams. */
export interface SpdySessionOptions {
  /** Incoming DATA bytes held for consumers before the socket is paused. */
  maxBufferedBytes?: number;
  /** Streams open at once in this session. */
  maxStreams?: number;
  /** Control frames (replies, resets, PING answers) queued and not yet taken by the socket. */
  maxPendingControl?: number;
  /** Streams open at once across the sessions sharing it. */
  budget?: StreamBudget;
}

/** The defaults of {@link SpdySessionOptions}. */
export const SESSION_DEFAULTS = { maxBufferedBytes: 1024 * 1024, maxStreams: 256, maxPendingControl: 1024 } as const;

/** Unknown streams a session answers with RST_STREAM (once each); DATA for others is dropped. */
const MAX_RESETS = 1024;
/** How long a session ended for a protocol error waits for its GOAWAY to leave. */
const GOAWAY_GRACE_MS = 1000;

export class SpdySession extends EventEmitter {
  private readonly frames = new FrameSplitter();
  private readonly limits: Required<Omit<SpdySessionOptions, 'budget'>>;
  private readonly budget: StreamBudget | undefined;
  /** Unknown stream ids already answered with RST_STREAM. */
  private readonly resetIds = new Set<number>();
  private pendingControl = 0;
  /** DATA writers waiting for the socket's 'drain' (or its close): one listener for them all. */
  private readonly drainWaiters: Array<() => void> = [];
  /** The socket is paused because consumers hold maxBufferedBytes. */
  private throttled = false;
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
    o: SpdySessionOptions = {},
  ) {
    super();
    this.limits = {
      maxBufferedBytes: o.maxBufferedBytes ?? SESSION_DEFAULTS.maxBufferedBytes,
      maxStreams: o.maxStreams ?? SESSION_DEFAULTS.maxStreams,
      maxPendingControl: o.maxPendingControl ?? SESSION_DEFAULTS.maxPendingControl,
    };
    this.budget = o.budget;
    socket.on('data', (d: Buffer) => this.onBytes(d));
    socket.on('error', (err: Error) => this.fail(err));
    socket.on('close', () => this.teardown());
    socket.on('drain', () => this.onDrain());
    // The client closed its side: nothing more will come; finish what is queued, then close.
    socket.on('end', () => this.close());
    if (head && head.length > 0) queueMicrotask(() => this.onBytes(head));
  }

  /** Sends GOAWAY and ends the socket once every frame before it has been written. */
  close(): void {
    if (this.closed || this.closing) return;
    this.closing = true;
    const frame = goAwayFrame(this.lastStreamId);
    this.queue(async () => frame);
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
    if (this.streams.delete(id)) this.budget?.release();
    if (this.peerGoingAway && this.streams.size === 0) this.close();
  }

  /** The socket is not being read: consumers hold the buffered-bytes cap. */
  get readingPaused(): boolean {
    return this.throttled;
  }

  /** Incoming DATA bytes held in the streams' buffers for their consumers. */
  get bufferedBytes(): number {
    let n = 0;
    for (const s of this.streams.values()) n += s.readableLength;
    return n;
  }

  /** @internal stops reading the socket while consumers hold the cap. */
  pauseIfOverCap(): void {
    if (this.throttled || this.bufferedBytes < this.limits.maxBufferedBytes) return;
    this.throttled = true;
    this.socket.pause();
  }

  /** @internal reads the socket again once consumers are below the cap. */
  resumeIfBelowCap(): void {
    if (!this.throttled || this.closed || this.bufferedBytes >= this.limits.maxBufferedBytes) return;
    this.throttled = false;
    this.socket.resume();
  }

  /** @internal */
  sendReply(id: number, headers: Record<string, string | string[]>, fin: boolean): void {
    const block = this.deflate.run(encodeHeaderBlock(headers));
    this.queue(async () => synReplyFrame(id, fin, await block));
  }

  /** @internal */
  sendReset(id: number, status: number): void {
    this.queue(async () => rstStreamFrame(id, status));
  }

  /** @internal DATA in frames of at most DATA_CHUNK; `cb` once the socket took them (backpressure). */
  sendData(id: number, data: Buffer, fin: boolean, cb: (err?: Error | null) => void): void {
    const frames = dataFrames(id, data, fin);
    this.outChain = this.outChain.then(() => {
      if (this.closed || !this.socket.writable) return cb(new Error('session closed'));
      // Headers and views of `data` leave in one writev, nothing copied.
      this.socket.cork();
      let ok = true;
      for (const f of frames) ok = this.socket.write(f);
      this.socket.uncork();
      if (ok) return cb();
      // Later frames may queue meanwhile, but this writer waits for the drain.
      this.drainWaiters.push(cb);
    });
  }

  private onDrain(): void {
    for (const w of this.drainWaiters.splice(0)) w();
  }

  /** Queues a control frame; later frames wait until the socket has taken it (drain). */
  private queue(make: () => Promise<Buffer>): void {
    if (++this.pendingControl > this.limits.maxPendingControl) {
      this.fail(new Error(`over ${this.limits.maxPendingControl} control frames wait for a client that does not read`));
      return;
    }
    const frame = make();
    frame.catch(() => undefined);
    this.outChain = this.outChain.then(async () => {
      let f: Buffer;
      try {
        f = await frame;
      } catch (err) {
        this.pendingControl--;
        this.fail(err as Error);
        return;
      }
      if (!this.closed && this.socket.writable && !this.socket.write(f)) await this.drained();
      this.pendingControl--;
    });
  }

  /** Resolves on the socket's next 'drain', or when it closes. */
  private drained(): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.once('drain', done);
      this.socket.once('close', done);
    });
  }

  private onBytes(d: Buffer): void {
    if (this.closed) return;
    try {
      for (const frame of this.frames.push(d)) {
        this.inChain = this.inChain.then(() => this.onFrame(frame)).catch((err: unknown) => this.fail(err as Error));
      }
    } catch (err) {
      this.fail(err as Error);
    }
  }

  private async onFrame(bytes: Buffer): Promise<void> {
    if (this.closed) return;
    const f = parseFrame(bytes);
    const { flags, payload } = f;
    if (!f.control) {
      const id = f.streamId;
      const s = this.streams.get(id);
      if (!s) {
        // One answer per stream id: a client streaming DATA to a closed stream gets no echo of each frame.
        if (this.resetIds.size < MAX_RESETS && !this.resetIds.has(id)) {
          this.resetIds.add(id);
          this.sendReset(id, RST.INVALID_STREAM);
        }
        return;
      }
      s.onData(Buffer.from(payload), (flags & FLAG_FIN) !== 0);
      this.pauseIfOverCap();
      return;
    }
    if (f.version !== VERSION) throw new Error(`SPDY version ${f.version}, not 3`);
    switch (f.type) {
      case TYPE.SYN_STREAM: {
        if (payload.length < 10) throw new Error('short SYN_STREAM');
        const id = payload.readUInt32BE(0) & 0x7fffffff;
        const headers = decodeHeaderBlock(await this.inflate.run(payload.subarray(10)));
        if (id === 0 || id % 2 === 0 || id <= this.lastStreamId) {
          this.sendReset(id, RST.PROTOCOL_ERROR);
          return;
        }
        this.lastStreamId = id;
        if (this.peerGoingAway || this.closing || this.streams.size >= this.limits.maxStreams || !(this.budget?.take() ?? true)) {
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
        if (payload.length !== 4) throw new Error(`PING of ${payload.length} bytes, not 4`);
        // Client pings have odd ids; an even one would be the answer to ours (never sent).
        if (payload.readUInt32BE(0) % 2 === 1) this.queue(async () => pingFrame(payload));
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

  /**
   * Ends the session for a protocol error: GOAWAY(PROTOCOL_ERROR) ahead of anything still
   * queued (each write is a whole frame), then the socket is ended, and cut if the client
   * has not taken the GOAWAY within a second.
   */
  private fail(err: Error): void {
    if (this.closed) return;
    this.emit('error', err);
    if (this.socket.writable) {
      this.socket.end(goAwayFrame(this.lastStreamId, PROTOCOL_ERROR));
      setTimeout(() => this.socket.destroy(), GOAWAY_GRACE_MS).unref();
    } else {
      this.socket.destroy();
    }
    this.teardown();
  }

  private teardown(): void {
    if (this.closed) return;
    this.closed = true;
    for (const s of [...this.streams.values()]) s.onReset();
    this.streams.clear();
    this.resetIds.clear();
    this.inflate.close();
    this.deflate.close();
    this.emit('close');
    this.onDrain();
  }
}
