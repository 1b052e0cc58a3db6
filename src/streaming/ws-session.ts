/**
 * One upgraded WebSocket carrying Kubernetes' numbered channels (the `channel.k8s.io`
 * family of subprotocols), with bounded memory in both directions:
 * - binary protocols prefix each binary message with the channel number as one byte;
 *   base64 protocols send text messages, the channel as an ASCII digit followed by the
 *   data in base64;
 * - `v5.channel.k8s.io` adds the close signal: a message on channel 255 whose one data
 *   byte names a channel the client will send no more on;
 * - input is handed to its consumer with `deliver`, which stops reading the client while
 *   that consumer is above its high-water mark; output goes through `output(channel)`,
 *   a Writable that takes its next chunk only once the previous one reached the socket;
 * - a session whose buffered bytes pass `maxBufferedBytes` anyway is cut off.
 */
import { EventEmitter } from 'node:events';
import { Writable } from 'node:stream';
import type { WebSocket } from 'ws';

/** The channel of the close signal (v5.channel.k8s.io). */
export const CLOSE_CHANNEL = 255;

/** Largest message berth accepts from a client. */
export const MAX_WS_MESSAGE_BYTES = 1024 * 1024;

/** Most bytes a session may hold in its buffers (output queued to the client, input queued to the container). */
export const MAX_WS_BUFFERED_BYTES = 8 * 1024 * 1024;

/** Close code for a client that broke the protocol or its buffer limit (RFC 6455: policy violation). */
const POLICY_VIOLATION = 1008;

export interface WsChannelOptions {
  /** Text messages with base64 data rather than binary messages. */
  base64: boolean;
  /** How many channels the session has (0 to channels-1). */
  channels: number;
  /** Whether the client may send the close signal (v5). */
  closeSignal: boolean;
  maxBufferedBytes?: number;
}

/**
 * Events: `data` (channel, Buffer) for input, `end` (channel) when the client sent the
 * close signal for it, `close` once the WebSocket is gone.
 */
export class WsChannels extends EventEmitter {
  private readonly blocked = new Set<Writable>();
  private readonly sinks = new Set<Writable>();
  private readonly maxBuffered: number;
  private closed = false;
  private held = false;

  constructor(
    readonly ws: WebSocket,
    private readonly o: WsChannelOptions,
  ) {
    super();
    this.maxBuffered = o.maxBufferedBytes ?? MAX_WS_BUFFERED_BYTES;
    ws.on('message', (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => this.onMessage(toBuffer(data), isBinary));
    // Pongs wait behind everything queued: a client that pings and never reads is cut off, not buffered for.
    ws.on('ping', (payload: Buffer) => {
      if (ws.bufferedAmount > this.maxBuffered) this.abort('the client does not read what it is sent');
      else if (ws.readyState === ws.OPEN) ws.pong(payload);
    });
    ws.on('error', () => undefined);
    ws.once('close', () => {
      this.closed = true;
      this.emit('close');
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    if (data.length === 0) return;
    let channel: number;
    let payload: Buffer;
    if (this.o.base64) {
      if (isBinary) return this.abort('binary message under a base64 protocol');
      channel = data[0]! - 0x30;
      const text = data.subarray(1).toString('latin1');
      if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text)) return this.abort(`channel ${channel}: data is not base64`);
      payload = Buffer.from(text, 'base64');
    } else {
      channel = data[0]!;
      payload = data.subarray(1);
    }
    if (this.o.closeSignal && channel === CLOSE_CHANNEL) {
      if (payload.length !== 1) return this.abort('a close signal names exactly one channel');
      this.emit('end', payload[0]!);
      return;
    }
    // As kubelet: a message for a channel the session does not have is dropped.
    if (channel < 0 || channel >= this.o.channels) return;
    this.emit('data', channel, payload);
  }

  /**
   * Writes input for `sink`, and stops reading the client until it drains when it is
   * above its high-water mark.
   */
  deliver(sink: Writable, data: Buffer): void {
    if (sink.destroyed || sink.writableEnded) return;
    if (!this.sinks.has(sink)) {
      this.sinks.add(sink);
      sink.once('close', () => {
        this.sinks.delete(sink);
        this.unblock(sink);
      });
    }
    if (sink.write(data)) return;
    if (sink.writableLength > this.maxBuffered) return this.abort('the client overran its input buffer');
    if (this.blocked.has(sink)) return;
    this.blocked.add(sink);
    this.ws.pause();
    sink.once('drain', () => this.unblock(sink));
  }

  private unblock(sink: Writable): void {
    if (!this.blocked.delete(sink)) return;
    if (this.blocked.size === 0 && !this.held && !this.closed) this.ws.resume();
  }

  /** Stops reading the client until `release` (input has nowhere to go yet). */
  hold(): void {
    this.held = true;
    this.ws.pause();
  }

  release(): void {
    this.held = false;
    if (this.blocked.size === 0 && !this.closed) this.ws.resume();
  }

  /** A Writable for an output channel; it ends with the session, never closes it. */
  output(channel: number): Writable {
    return new Writable({
      highWaterMark: 64 * 1024,
      write: (chunk: Buffer, _enc, cb) => this.send(channel, chunk, cb),
    });
  }

  /** Sends one message on `channel`; `cb` runs once it reached the socket (or the session is gone). */
  send(channel: number, data: Buffer | string, cb: () => void = () => undefined): void {
    if (this.closed || this.ws.readyState !== this.ws.OPEN) return cb();
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    if (this.ws.bufferedAmount + bytes.length > this.maxBuffered) {
      this.abort('the client does not read what it is sent');
      return cb();
    }
    const frame = this.o.base64 ? String.fromCharCode(0x30 + channel) + bytes.toString('base64') : Buffer.concat([Buffer.of(channel), bytes]);
    this.ws.send(frame, { binary: !this.o.base64 }, () => cb());
  }

  /** A normal close once everything queued has been sent. */
  close(reason = ''): void {
    if (this.closed) return;
    this.ws.close(1000, reason);
  }

  /** Cuts the session off: a protocol error or a client past its limits. */
  abort(reason: string): void {
    if (this.closed) return;
    this.emit('abort', reason);
    if (this.ws.readyState === this.ws.OPEN) this.ws.close(POLICY_VIOLATION, reason.slice(0, 120));
    // A client that does not read would never see the close frame.
    const t = setTimeout(() => this.ws.terminate(), 1000);
    t.unref();
    this.ws.once('close', () => clearTimeout(t));
  }
}

function toBuffer(data: Buffer | ArrayBuffer | Buffer[]): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}
