/**
 * The raw blob GET (raw-get.ts) against TCP servers of the test's own on 127.0.0.1 that
 * write their answers byte for byte: Content-Length and chunked bodies cut at awkward
 * places, a short body, a stall, a trickle, the address policy (no connection made to a
 * refused address), malformed answers, header injection, flow control and cancellation.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import net, { type AddressInfo, type Socket } from 'node:net';
import { isKind } from '../../../src/common/errors.js';
import { AddressPolicy } from '../../../src/images/registry/address-policy.js';
import { NetworkError } from '../../../src/images/registry/http.js';
import { BLOCK, BodyError, rawGet, type RawGetOptions, type RawResponse } from '../../../src/images/registry/raw-get.js';

interface RawServer {
  port: number;
  host: string;
  /** Every request head received, as text. */
  requests: string[];
  connections: Socket[];
}

describe('images: raw blob GET', function () {
  this.timeout(20_000);
  const servers: net.Server[] = [];
  const sockets: Socket[] = [];

  afterEach(async () => {
    for (const s of sockets.splice(0)) s.destroy();
    for (const s of servers.splice(0)) await new Promise<void>((r) => s.close(() => r()));
  });

  /** A server that reads a request head, then runs `answer` on the socket. */
  async function serve(answer: (s: Socket) => unknown): Promise<RawServer> {
    const requests: string[] = [];
    const connections: Socket[] = [];
    const server = net.createServer((s) => {
      connections.push(s);
      sockets.push(s);
      let head = '';
      s.on('error', () => undefined);
      s.on('data', (d) => {
        if (head.includes('\r\n\r\n')) return;
        head += d.toString('latin1');
        if (head.includes('\r\n\r\n')) {
          requests.push(head);
          void answer(s);
        }
      });
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    return { port, host: `127.0.0.1:${port}`, requests, connections };
  }

  function opts(s: RawServer, extra: Partial<RawGetOptions> = {}): RawGetOptions {
    return {
      url: new URL(`http://${s.host}/v2/x/blobs/sha256:00?q=1`),
      headers: { 'user-agent': 'berth', authorization: 'Bearer secret-token' },
      stallMs: 5_000,
      policy: new AddressPolicy(s.host),
      signal: new AbortController().signal,
      ...extra,
    };
  }

  /** Reads a whole body; the pieces as they were handed on. */
  async function body(res: RawResponse, max = 1 << 30): Promise<{ data: Buffer; pieces: number[] }> {
    const parts: Buffer[] = [];
    await res.pipe({ block: (b) => (parts.push(b), true) }, max);
    return { data: Buffer.concat(parts), pieces: parts.map((p) => p.length) };
  }

  /** Writes `parts` one by one, a little apart, so the reader sees them in separate reads. */
  async function dribble(s: Socket, parts: Array<string | Buffer>): Promise<void> {
    for (const p of parts) {
      s.write(p);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  it('reads a Content-Length body in whole blocks, sends the headers and asks for no keep-alive', async () => {
    const data = randomBytes(3 * BLOCK + 12_345);
    const s = await serve((sock) => sock.end(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${data.length}\r\n\r\n`), data])));
    const res = await rawGet(opts(s));
    assert.equal(res.status, 200);
    assert.deepEqual(res.framing, { type: 'length', length: data.length });
    const got = await body(res);
    assert.ok(got.data.equals(data));
    // The first block holds the head too; every later one but the last is whole.
    assert.ok(
      got.pieces.slice(1, -1).every((n) => n === BLOCK),
      `whole blocks between the first and the last: ${got.pieces.join(', ')}`,
    );
    const req = s.requests[0]!;
    assert.match(req, /^GET \/v2\/x\/blobs\/sha256:00\?q=1 HTTP\/1\.1\r\n/);
    assert.match(req, /\r\nHost: 127\.0\.0\.1:\d+\r\n/);
    assert.match(req, /\r\nauthorization: Bearer secret-token\r\n/);
    assert.match(req, /\r\nConnection: close\r\n\r\n$/);
  });

  it('decodes a chunked body cut at every awkward place (sizes, extensions, CRLFs, trailers)', async () => {
    const a = randomBytes(70_000);
    const b = randomBytes(5);
    const c = randomBytes(BLOCK + 3);
    const s = await serve((sock) =>
      dribble(sock, [
        'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n',
        a.length.toString(16).slice(0, 2),
        `${a.length.toString(16).slice(2)};name=value\r`,
        '\n',
        a.subarray(0, 1000),
        Buffer.concat([a.subarray(1000), Buffer.from('\r')]),
        `\n${b.length.toString(16)}\r\n`,
        Buffer.concat([b, Buffer.from(`\r\n${c.length.toString(16)}\r\n`), c.subarray(0, 10)]),
        Buffer.concat([c.subarray(10), Buffer.from('\r\n0\r\nx-trailer: 1\r\n')]),
        '\r\n',
      ]),
    );
    const res = await rawGet(opts(s));
    assert.deepEqual(res.framing, { type: 'chunked' });
    const got = await body(res);
    assert.ok(got.data.equals(Buffer.concat([a, b, c])), `${got.data.length} bytes decoded of ${a.length + b.length + c.length}`);
  });

  it('decodes a chunked body sent with its head in one write (the framing squeezed out of the first reads)', async () => {
    const data = randomBytes(3 * BLOCK + 777);
    const framed: Buffer[] = [Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n')];
    for (let i = 0; i < data.length; i += 100_003) {
      const piece = data.subarray(i, i + 100_003);
      framed.push(Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n'));
    }
    framed.push(Buffer.from('0\r\n\r\n'));
    const s = await serve((sock) => sock.end(Buffer.concat(framed)));
    const got = await body(await rawGet(opts(s)));
    assert.ok(got.data.equals(data), `${got.data.length} bytes decoded of ${data.length}`);
  });

  it('refuses broken chunked framing, and a body over the maximum', async () => {
    const bad = await serve((sock) => sock.end('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n'));
    await assert.rejects(
      rawGet(opts(bad)).then((r) => body(r)),
      (e) => e instanceof BodyError && e.why === 'framing' && /no CRLF after chunk data/.test(e.message),
    );
    const long = await serve((sock) => sock.end('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n'));
    await assert.rejects(
      rawGet(opts(long)).then((r) => body(r, 7)),
      (e) => e instanceof BodyError && e.why === 'too-long',
    );
  });

  it('a short body is a truncation, and bytes past Content-Length are not body', async () => {
    const short = await serve((sock) => sock.end('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this'));
    await assert.rejects(
      rawGet(opts(short)).then((r) => body(r)),
      (e) => e instanceof BodyError && e.why === 'truncated',
    );
    const extra = await serve((sock) => sock.end('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n\r\n'));
    assert.equal((await body(await rawGet(opts(extra)))).data.toString(), 'hello');
    const close = await serve((sock) => sock.end('HTTP/1.1 200 OK\r\n\r\nup to the close'));
    const r = await rawGet(opts(close));
    assert.deepEqual(r.framing, { type: 'close' });
    assert.equal((await body(r)).data.toString(), 'up to the close');
  });

  it('a stall, before or inside the body, fails with a NetworkError that says so', async () => {
    const silent = await serve(() => undefined);
    await assert.rejects(rawGet(opts(silent, { stallMs: 300 })), (e) => e instanceof NetworkError && /no data for 0\.3 s/.test(e.message));
    const stops = await serve((sock) => sock.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome'));
    const res = await rawGet(opts(stops, { stallMs: 300 }));
    await assert.rejects(body(res), (e) => e instanceof NetworkError && /no data for 0\.3 s/.test(e.message));
  });

  it('a trickle under the rate floor fails', async () => {
    const s = await serve(async (sock) => {
      sock.write('HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n');
      for (let i = 0; i < 60 && !sock.destroyed; i++) {
        sock.write('x');
        await new Promise((r) => setTimeout(r, 40));
      }
    });
    const res = await rawGet(opts(s, { stallMs: 400, minBytesPerSecond: 1000 }));
    await assert.rejects(body(res), (e) => e instanceof NetworkError && /slower than 1000 bytes\/s/.test(e.message));
  });

  it('the address policy: a loopback name or literal for a registry not on loopback is refused, with no connection made', async () => {
    const s = await serve((sock) => sock.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'));
    const publicRegistry = new AddressPolicy('registry.example', async () => ['203.0.113.9']);
    for (const url of [`http://localhost:${s.port}/v2/`, `http://127.0.0.1:${s.port}/v2/`]) {
      await assert.rejects(rawGet(opts(s, { url: new URL(url), policy: publicRegistry })), (e) => {
        assert.ok(isKind(e, 'PermissionDenied'), String(e));
        assert.match((e as Error).message, /^refusing to connect to .*a loopback address, for registry registry\.example/);
        return true;
      });
    }
    assert.equal(s.connections.length, 0, 'no connection was attempted');
    // For a registry on loopback, the name passes the lookup.
    assert.equal((await body(await rawGet(opts(s, { url: new URL(`http://localhost:${s.port}/v2/`) })))).data.toString(), 'ok');
  });

  it('refuses a header that would smuggle a line in, before connecting; malformed or ambiguous answers fail before any body byte', async () => {
    const s = await serve((sock) => sock.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'));
    await assert.rejects(rawGet(opts(s, { headers: { authorization: 'x\r\nX-Evil: 1' } })), /invalid characters in the value of header authorization/);
    assert.equal(s.connections.length, 0);
    for (const answer of [
      'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok',
      'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok',
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n',
      'HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\n\r\n',
      'SPDY/3 200 OK\r\n\r\n',
    ]) {
      const bad = await serve((sock) => sock.end(answer));
      await assert.rejects(rawGet(opts(bad)), (e) => e instanceof NetworkError && /malformed response/.test(e.message), JSON.stringify(answer));
    }
    const endless = await serve((sock) => sock.write(`HTTP/1.1 200 OK\r\nX-Long: ${'a'.repeat(100_000)}`));
    await assert.rejects(rawGet(opts(endless)), (e) => e instanceof NetworkError && /response head/.test(e.message));
  });

  it('stops reading while the sink is full and goes on at resume; an abort stops the body with its reason', async () => {
    const data = randomBytes(6 * BLOCK);
    const s = await serve((sock) => sock.end(Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${data.length}\r\n\r\n`), data])));
    const res = await rawGet(opts(s));
    const parts: Buffer[] = [];
    const done = res.pipe({ block: (b) => (parts.push(b), false) }, 1 << 30);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(parts.length, 1, 'one block, then nothing until resumed');
    const resumer = setInterval(() => res.resume(), 10);
    await done;
    clearInterval(resumer);
    assert.ok(Buffer.concat(parts).equals(data));

    const ac = new AbortController();
    const slow = await serve((sock) => sock.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome'));
    const r2 = await rawGet(opts(slow, { signal: ac.signal }));
    const reading = body(r2);
    setTimeout(() => ac.abort(new Error('test: cancelled')), 50);
    await assert.rejects(reading, /test: cancelled/);
  });

  it('a refused connection fails before the head with a NetworkError', async () => {
    const s = await serve(() => undefined);
    await new Promise<void>((r) => servers.pop()!.close(() => r()));
    await assert.rejects(rawGet(opts(s)), (e) => e instanceof NetworkError && /ECONNREFUSED/.test(e.message));
  });
});
