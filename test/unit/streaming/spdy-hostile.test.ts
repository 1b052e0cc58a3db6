/**
 * The SPDY/3.1 session facing clients that misbehave, with crafted bytes: every one of
 * them costs berthd bounded memory, and a broken one loses its session (GOAWAY with
 * PROTOCOL_ERROR, the socket closed) without throwing.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Server } from 'node:net';
import { constants as zc, deflateSync } from 'node:zlib';
import { encodeHeaderBlock, FrameSplitter, MAX_HEADER_BLOCK, SPDY_DICTIONARY, ZContext } from '../../../src/streaming/spdy-frames.js';
import { SpdySession, type SpdySessionOptions, type SpdyStream } from '../../../src/streaming/spdy-session.js';
import { StreamBudget } from '../../../src/streaming/stream-budget.js';
import { until } from '../../helpers/berthd.js';
import { type Client, connectClient } from '../../helpers/spdy-client.js';

const GOAWAY = 7;
const RST_STREAM = 3;

describe('streaming: SPDY/3.1 session against hostile clients', () => {
  let server: Server;
  let sessions: SpdySession[];
  let errors: Error[];
  let options: SpdySessionOptions;
  const clients: Client[] = [];

  beforeEach(async () => {
    sessions = [];
    errors = [];
    options = {};
    server = createServer((sock) => {
      const s = new SpdySession(sock, undefined, options);
      s.on('error', (e: Error) => errors.push(e));
      sessions.push(s);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.sock.destroy();
    await new Promise((r) => server.close(r));
  });

  async function open(o: SpdySessionOptions = {}): Promise<{ c: Client; s: SpdySession; streams: SpdyStream[] }> {
    options = o;
    const c = await connectClient((server.address() as { port: number }).port);
    clients.push(c);
    const s = await until(async () => sessions[sessions.length - 1]);
    const streams: SpdyStream[] = [];
    s.on('stream', (st: SpdyStream) => streams.push(st));
    return { c, s, streams };
  }

  /** The session ended for a protocol error: GOAWAY(PROTOCOL_ERROR) came, then the socket closed. */
  async function endsWithGoAway(c: Client, s: SpdySession): Promise<void> {
    const goaway = await c.until(() => c.frames.find((f) => f.control && f.type === GOAWAY), 1000);
    assert.equal(goaway.payload.readUInt32BE(4), 1, 'GOAWAY status PROTOCOL_ERROR');
    assert.equal(s.closed, true);
    if (!c.sock.closed) await once(c.sock, 'close');
  }

  it('keeps header names as data: `constructor` and `__proto__` are headers like any other', async () => {
    const { c, s, streams } = await open();
    await c.synStream(1, { constructor: 'x', ['__proto__']: ['y', 'z'], streamtype: 'error' });
    const st = await c.until(() => streams[0]);
    assert.deepEqual(
      [...st.headers],
      [
        ['constructor', ['x']],
        ['__proto__', ['y', 'z']],
        ['streamtype', ['error']],
      ],
    );
    assert.equal(s.closed, false);
    assert.deepEqual(errors, []);
  });

  it('a corrupt header block closes the session with GOAWAY within a second', async () => {
    const { c, s } = await open();
    const head = Buffer.alloc(10);
    head.writeUInt32BE(1, 0);
    c.control(1, 0, Buffer.concat([head, Buffer.from('this is not a zlib stream at all')]));
    await endsWithGoAway(c, s);
    assert.equal(errors.length, 1);
  });

  it('stops inflating a header block at the cap, and ends the session', async () => {
    // 64 MiB of header value compress to ~64 KiB.
    const block = encodeHeaderBlock({ a: 'a'.repeat(64 * 1024 * 1024) });
    const z = new ZContext('inflate');
    const compressed = deflateSync(block, { dictionary: SPDY_DICTIONARY, finishFlush: zc.Z_SYNC_FLUSH });
    await assert.rejects(z.run(compressed), /over 262144 bytes/);
    assert.ok(z.produced < MAX_HEADER_BLOCK + 256 * 1024, `inflated ${z.produced} bytes before stopping`);
    z.close();

    const { c, s } = await open();
    const head = Buffer.alloc(10);
    head.writeUInt32BE(1, 0);
    c.control(1, 0, Buffer.concat([head, compressed]));
    await endsWithGoAway(c, s);
    assert.match(errors[0]!.message, /header block over/);
  });

  it('refuses a PING that is not 4 bytes from its frame header, before its payload is read', async () => {
    const { c, s } = await open();
    const h = Buffer.alloc(8);
    h.writeUInt16BE(0x8003, 0);
    h.writeUInt16BE(6, 2);
    h.writeUInt32BE(8 * 1024 * 1024, 4);
    c.sock.write(Buffer.concat([h, Buffer.alloc(1024)])); // the rest of the 8 MiB never comes
    await endsWithGoAway(c, s);
    assert.match(errors[0]!.message, /PING of 8388608 bytes, not 4/);
  });

  it('answers DATA for an unknown stream with one RST_STREAM per stream id', async () => {
    const { c, s } = await open();
    for (let i = 0; i < 200; i++) c.data(9, Buffer.from('x'));
    c.data(11, Buffer.from('y'));
    const ping = Buffer.alloc(4);
    ping.writeUInt32BE(1);
    c.control(6, 0, ping); // handled after every DATA frame before it
    await c.until(() => c.frames.find((f) => f.control && f.type === 6));
    const rsts = c.frames.filter((f) => f.control && f.type === RST_STREAM);
    assert.deepEqual(
      rsts.map((f) => f.streamId),
      [9, 11],
    );
    assert.equal(s.closed, false);
  });

  it('refuses streams beyond the per-session cap and beyond the shared budget with REFUSED_STREAM', async () => {
    const budget = new StreamBudget(3);
    const a = await open({ maxStreams: 2, budget });
    await a.c.synStream(1, { streamtype: 'error' });
    await a.c.synStream(3, { streamtype: 'error' });
    await a.c.synStream(5, { streamtype: 'error' });
    const refused = await a.c.until(() => a.c.frames.find((f) => f.control && f.type === RST_STREAM));
    assert.deepEqual([refused.streamId, refused.payload.readUInt32BE(4)], [5, 3]);
    assert.equal(a.streams.length, 2);
    const b = await open({ maxStreams: 2, budget });
    await b.c.synStream(1, { streamtype: 'error' });
    await b.c.synStream(3, { streamtype: 'error' });
    const refused2 = await b.c.until(() => b.c.frames.find((f) => f.control && f.type === RST_STREAM));
    assert.deepEqual([refused2.streamId, refused2.payload.readUInt32BE(4)], [3, 3]);
    assert.equal(budget.inUse, 3);
    // A stream that ends gives its place back.
    a.streams[0]!.reset();
    await until(async () => (budget.inUse === 2 ? true : undefined));
    await b.c.synStream(5, { streamtype: 'error' });
    await b.c.until(() => b.streams[1]);
    assert.equal(budget.inUse, 3);
  });

  it('stops reading the socket while a stream holds the buffered-bytes cap, and loses nothing', async () => {
    const cap = 256 * 1024;
    const { c, s, streams } = await open({ maxBufferedBytes: cap });
    await c.synStream(1, { streamtype: 'stdin' });
    const st = await c.until(() => streams[0]);
    st.reply();
    st.pause(); // a consumer that reads nothing
    const total = 64 * 1024 * 1024;
    const chunk = Buffer.alloc(32 * 1024, 1);
    for (let off = 0; off < total; off += chunk.length) c.data(1, chunk, off + chunk.length >= total);
    await until(async () => (s.readingPaused ? true : undefined));
    let peak = 0;
    const sample = (): void => void (peak = Math.max(peak, s.bufferedBytes));
    sample();
    assert.ok(s.bufferedBytes < cap + 2 * chunk.length, `${s.bufferedBytes} bytes buffered`);
    // The client is held by TCP: most of what it wrote is still on its side.
    assert.ok(c.sock.writableLength > total / 2, `${c.sock.writableLength} bytes still with the client`);
    let got = 0;
    st.on('data', (d: Buffer) => {
      got += d.length;
      sample();
    });
    st.resume();
    await once(st, 'end');
    assert.equal(got, total);
    assert.ok(peak < cap + 2 * chunk.length, `peak of ${peak} bytes buffered`);
  });

  it('ends the session of a client that lets control frames pile up unread', async () => {
    const { c, s } = await open({ maxPendingControl: 64 });
    c.sock.pause();
    const ping = Buffer.alloc(12);
    ping.writeUInt16BE(0x8003, 0);
    ping.writeUInt16BE(6, 2);
    ping.writeUInt32BE(4, 4);
    ping.writeUInt32BE(1, 8);
    c.sock.write(Buffer.alloc(12 * 1024 * 1024).fill(ping));
    await until(async () => (s.closed ? true : undefined));
    assert.match(errors[0]!.message, /over 64 control frames/);
  });

  it('cuts frames from the bytes received in time linear in them (one byte at a time)', () => {
    const f = new FrameSplitter();
    const frame = Buffer.alloc(8 + 256 * 1024, 5);
    frame.writeUInt32BE(3, 0);
    frame.writeUInt32BE(256 * 1024, 4);
    const two = Buffer.concat([frame, frame]);
    const out: Buffer[] = [];
    for (let i = 0; i < two.length; i++) for (const x of f.push(two.subarray(i, i + 1))) out.push(x);
    assert.equal(out.length, 2);
    assert.ok(out.every((x) => x.equals(frame)));
  });
});
