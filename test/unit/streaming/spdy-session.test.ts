/**
 * The SPDY/3.1 session over a real TCP connection on 127.0.0.1, driven by the test client
 * of test/helpers/spdy-client.ts (its own framing and its own zlib contexts). The interoperability with
 * kubelet's client (moby/spdystream) is shown end to end by crictl in
 * test/e2e/crictl.test.ts.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createServer, connect, type Server } from 'node:net';
import { decodeHeaderBlock, encodeHeaderBlock, SPDY_DICTIONARY } from '../../../src/streaming/spdy-frames.js';
import { Client } from '../../helpers/spdy-client.js';
import { SpdySession, type SpdyStream } from '../../../src/streaming/spdy-session.js';
import { until } from '../../helpers/berthd.js';

describe('streaming: SPDY/3.1 session', () => {
  let server: Server;
  let sessions: SpdySession[];
  let client: Client;

  beforeEach(async () => {
    sessions = [];
    server = createServer((sock) => sessions.push(new SpdySession(sock)));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;
    const sock = connect(port, '127.0.0.1');
    await once(sock, 'connect');
    client = new Client(sock);
    await client.until(() => (sessions.length > 0 ? true : undefined));
  });

  afterEach(async () => {
    client.sock.destroy();
    await new Promise((r) => server.close(r));
  });

  it('uses the SPDY/3 dictionary of the specification', () => {
    assert.equal(SPDY_DICTIONARY.length, 1423);
    assert.equal(createHash('sha256').update(SPDY_DICTIONARY).digest('hex'), '51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02');
  });

  it('encodes and decodes header blocks: lowercase names, NUL-separated values', () => {
    const b = encodeHeaderBlock({ StreamType: 'stdout', multi: ['a', 'b'] });
    assert.deepEqual(
      decodeHeaderBlock(b),
      new Map([
        ['streamtype', ['stdout']],
        ['multi', ['a', 'b']],
      ]),
    );
    assert.throws(() => decodeHeaderBlock(Buffer.from([0, 0, 0, 1, 0, 0, 0, 9])), /truncated/);
  });

  it('opens streams from SYN_STREAM, answers with SYN_REPLY, carries data both ways with FIN', async () => {
    const s = sessions[0]!;
    const streams: SpdyStream[] = [];
    s.on('stream', (st: SpdyStream) => streams.push(st));
    await client.synStream(1, { streamtype: 'stdin', port: ['80', '81'] });
    await client.synStream(3, { streamtype: 'stdout' });
    await client.until(() => (streams.length === 2 ? true : undefined));
    assert.deepEqual(
      streams[0]!.headers,
      new Map([
        ['streamtype', ['stdin']],
        ['port', ['80', '81']],
      ]),
    );
    assert.equal(streams[1]!.id, 3);
    // Data written before the reply waits for it.
    streams[1]!.write('early ');
    streams[1]!.reply({ ok: 'yes' });
    streams[0]!.reply();
    const reply = await client.until(() => client.frames.find((f) => f.control && f.type === 2 && f.streamId === 3));
    assert.deepEqual(await client.headersOf(reply.payload.subarray(4)), new Map([['ok', ['yes']]]));
    const reply1 = await client.until(() => client.frames.find((f) => f.control && f.type === 2 && f.streamId === 1));
    assert.deepEqual(await client.headersOf(reply1.payload.subarray(4)), new Map());

    const big = Buffer.alloc(1 << 20, 7);
    streams[1]!.end(big);
    const got = await client.until(() => (client.received(3).fin ? client.received(3) : undefined));
    assert.equal(got.data.length, 6 + big.length);
    assert.equal(got.data.subarray(0, 6).toString(), 'early ');

    const chunks: Buffer[] = [];
    streams[0]!.on('data', (d: Buffer) => chunks.push(d));
    const ended = once(streams[0]!, 'end');
    client.data(1, Buffer.from('hello '));
    client.data(1, Buffer.from('world'), true);
    await ended;
    assert.equal(Buffer.concat(chunks).toString(), 'hello world');
  });

  it('echoes PING, resets on RST_STREAM, refuses data for unknown streams', async () => {
    const s = sessions[0]!;
    let stream: SpdyStream | undefined;
    s.on('stream', (st: SpdyStream) => (stream = st));
    const ping = Buffer.alloc(4);
    ping.writeUInt32BE(7);
    client.control(6, 0, ping);
    const pong = await client.until(() => client.frames.find((f) => f.control && f.type === 6));
    assert.equal(pong.payload.readUInt32BE(0), 7);

    await client.synStream(1, { streamtype: 'error' });
    await client.until(() => stream);
    stream!.reply();
    const closed = once(stream!, 'close');
    const rst = Buffer.alloc(8);
    rst.writeUInt32BE(1, 0);
    rst.writeUInt32BE(5, 4);
    client.control(3, 0, rst);
    await closed;
    client.data(9, Buffer.from('x'));
    const refused = await client.until(() => client.frames.find((f) => f.control && f.type === 3 && f.streamId === 9));
    assert.equal(refused.payload.readUInt32BE(4), 2); // INVALID_STREAM
  });

  it('ends the session on garbage or an oversized frame, without throwing', async () => {
    const s = sessions[0]!;
    const errors: Error[] = [];
    s.on('error', (e: Error) => errors.push(e));
    // (events.once would reject on the 'error' that comes first.)
    const closed = new Promise((r) => s.once('close', r));
    // A control frame of another version.
    client.sock.write(Buffer.from([0x80, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00]));
    await closed;
    assert.match(errors[0]!.message, /version 2/);

    const sock2 = connect((server.address() as { port: number }).port, '127.0.0.1');
    await once(sock2, 'connect');
    const s2 = await until(async () => sessions[1]);
    const errors2: Error[] = [];
    s2.on('error', (e: Error) => errors2.push(e));
    const closed2 = new Promise((r) => s2.once('close', r));
    sock2.write(Buffer.from([0x00, 0x00, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff]));
    await closed2;
    assert.match(errors2[0]!.message, /over the/);
    sock2.destroy();
  });

  it('GOAWAY from the client: no new streams; close() sends GOAWAY and ends the connection', async () => {
    const s = sessions[0]!;
    client.control(7, 0, Buffer.alloc(8));
    await once(s, 'close').catch(() => undefined);
    const goaway = await client.until(() => client.frames.find((f) => f.control && f.type === 7));
    assert.equal(goaway.payload.length, 8);
  });
});
