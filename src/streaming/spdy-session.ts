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
 *
 * The frame layout and the header compression live in spdy-frames.ts.
 */
import { EventEmitter } from 'node:events';
import { Duplex } from 'node:stream';
import {
  dataFrames,
  decodeHeaderBlock,
  encodeHeaderBlock,
  FLAG_FIN,
  FrameSplitter,
  goAwayFrame,
  parseFrame,
  pingFrame,
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
  private readonly frames = new FrameSplitter();
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
    this.streams.delete(id);
    if (this.peerGoingAway && this.streams.size === 0) this.close();
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
    this.outChain = this.outChain.then(
      () =>
        new Promise<void>((resolve) => {
          if (this.closed || !this.socket.writable) {
            cb(new Error('session closed'));
            return resolve();
          }
          const ok = this.socket.write(frames);
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
        this.sendReset(id, RST.INVALID_STREAM);
        return;
      }
      s.onData(Buffer.from(payload), (flags & FLAG_FIN) !== 0);
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
