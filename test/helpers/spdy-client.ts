/**
 * A SPDY/3.1 client written for the tests: its own framing and its own zlib contexts,
 * with ways to misbehave (raw frames of any size, no reading).
 */
import { connect, type Socket } from 'node:net';
import { request } from 'node:http';
import { constants as zc, createDeflate, createInflate } from 'node:zlib';
import { decodeHeaderBlock, encodeHeaderBlock, SPDY_DICTIONARY } from '../../src/streaming/spdy-frames.js';

/** A test client: frames in and out, with header compression of its own. */
export class Client {
  private readonly deflate = createDeflate({ dictionary: SPDY_DICTIONARY });
  private readonly inflate = createInflate({ dictionary: SPDY_DICTIONARY });
  private buf = Buffer.alloc(0);
  readonly frames: Array<{ control: boolean; type?: number; streamId: number; flags: number; payload: Buffer }> = [];
  private waiters: Array<() => void> = [];

  constructor(readonly sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      while (this.buf.length >= 8) {
        const len = this.buf.readUInt32BE(4) & 0xffffff;
        if (this.buf.length < 8 + len) break;
        const f = this.buf.subarray(0, 8 + len);
        this.buf = this.buf.subarray(8 + len);
        const control = (f[0]! & 0x80) !== 0;
        this.frames.push({
          control,
          ...(control ? { type: f.readUInt16BE(2) } : {}),
          streamId: control ? (len >= 4 ? f.readUInt32BE(8) & 0x7fffffff : 0) : f.readUInt32BE(0) & 0x7fffffff,
          flags: f[4]!,
          payload: Buffer.from(f.subarray(8)),
        });
      }
      for (const w of this.waiters.splice(0)) w();
    });
  }

  async compress(block: Buffer): Promise<Buffer> {
    const out: Buffer[] = [];
    const onData = (d: Buffer): number => out.push(d);
    this.deflate.on('data', onData);
    this.deflate.write(block);
    await new Promise<void>((r) => this.deflate.flush(zc.Z_SYNC_FLUSH, () => r()));
    this.deflate.off('data', onData);
    return Buffer.concat(out);
  }

  async headersOf(payload: Buffer): Promise<Map<string, string[]>> {
    const out: Buffer[] = [];
    const onData = (d: Buffer): number => out.push(d);
    this.inflate.on('data', onData);
    this.inflate.write(payload);
    await new Promise<void>((r) => this.inflate.flush(zc.Z_SYNC_FLUSH, () => r()));
    this.inflate.off('data', onData);
    return decodeHeaderBlock(Buffer.concat(out));
  }

  control(type: number, flags: number, payload: Buffer): void {
    const h = Buffer.alloc(8);
    h.writeUInt16BE(0x8003, 0);
    h.writeUInt16BE(type, 2);
    h.writeUInt32BE((flags << 24) | payload.length, 4);
    this.sock.write(Buffer.concat([h, payload]));
  }

  async synStream(id: number, headers: Record<string, string | string[]>, fin = false): Promise<void> {
    const head = Buffer.alloc(10);
    head.writeUInt32BE(id, 0);
    this.control(1, fin ? 1 : 0, Buffer.concat([head, await this.compress(encodeHeaderBlock(headers))]));
  }

  data(id: number, data: Buffer, fin = false): void {
    const h = Buffer.alloc(8);
    h.writeUInt32BE(id, 0);
    h.writeUInt32BE(((fin ? 1 : 0) << 24) | data.length, 4);
    this.sock.write(Buffer.concat([h, data]));
  }

  async until<T>(pred: () => T | undefined, ms = 3000): Promise<T> {
    const end = Date.now() + ms;
    for (;;) {
      const v = pred();
      if (v !== undefined) return v;
      if (Date.now() > end) throw new Error('timed out waiting for frames');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
  }

  /** All DATA bytes received on a stream, and whether FIN came. */
  received(id: number): { data: Buffer; fin: boolean } {
    const fs = this.frames.filter((f) => !f.control && f.streamId === id);
    return { data: Buffer.concat(fs.map((f) => f.payload)), fin: fs.some((f) => (f.flags & 1) !== 0) };
  }
}

/** Opens `url` with an HTTP upgrade to SPDY/3.1 offering `protocol`; the client on the upgraded socket. */
export function upgrade(url: string, protocol: string): Promise<Client> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', headers: { Connection: 'Upgrade', Upgrade: 'SPDY/3.1', 'X-Stream-Protocol-Version': protocol } });
    req.on('upgrade', (_res, socket: Socket, head: Buffer) => {
      const c = new Client(socket);
      if (head.length > 0) socket.unshift(head);
      resolve(c);
    });
    req.on('response', (res) => reject(new Error(`no upgrade: HTTP ${res.statusCode}`)));
    req.on('error', reject);
    req.end();
  });
}

/** A plain TCP client to a SPDY server on 127.0.0.1. */
export async function connectClient(port: number): Promise<Client> {
  const sock = connect(port, '127.0.0.1');
  await new Promise((r, j) => sock.once('connect', r).once('error', j));
  return new Client(sock);
}
