/**
 * The unpack worker pool: layers unpack on worker threads, and workers that stay idle
 * are terminated (each is a V8 isolate whose heap and malloc arena would otherwise stay
 * in berthd's RSS after a pull), then come back on the next job.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BerthError, isKind } from '../../../../src/common/errors.js';
import type { BlobRequest } from '../../../../src/images/registry/client.js';
import { JOBS_PER_WORKER, leastBusy, UnpackPool } from '../../../../src/images/snapshots/unpack-pool.js';
import type { Budget } from '../../../../src/images/snapshots/unpack.js';
import { compress, LAYER, makeTar, openFds } from '../../../helpers/tar-layers.js';
import { until } from '../../../helpers/berthd.js';

describe('UnpackPool', function () {
  this.timeout(60_000);
  let dir: string;
  let pool: UnpackPool | undefined;

  beforeEach(() => {
    dir = fs.mkdtempSync(join(tmpdir(), 'berth-unpack-pool-'));
  });
  afterEach(async () => {
    await pool?.close();
    pool = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  /** A gzip layer blob in the temp dir, and the diff ID it must unpack to. */
  async function blob(name: string, content: string): Promise<{ path: string; diffId: string }> {
    const raw = await makeTar([{ header: { name: 'etc', type: 'directory' } }, { header: { name: 'etc/greeting' }, content }]);
    const path = join(dir, `${name}.tar.gz`);
    fs.writeFileSync(path, compress(raw, 'gzip'));
    return { path, diffId: `sha256:${createHash('sha256').update(raw).digest('hex')}` };
  }

  async function unpack(p: UnpackPool, name: string): Promise<void> {
    const b = await blob(name, `hello from ${name}\n`);
    const target = join(dir, `${name}-fs`);
    fs.mkdirSync(target);
    const result = await p.run({ blobPath: b.path, compression: 'gzip', target, opts: { layer: LAYER, maxBytes: 1 << 30 } });
    assert.equal(result.diffId, b.diffId);
    assert.equal(fs.readFileSync(join(target, 'etc', 'greeting'), 'utf8'), `hello from ${name}\n`);
  }

  it('terminates workers that stay idle, and starts them again for the next layer', async () => {
    const p = (pool = new UnpackPool(2, 200));
    assert.equal(p.workers, 0, 'no worker before the first job');
    await Promise.all([unpack(p, 'a'), unpack(p, 'b')]);
    assert.ok(p.workers >= 1 && p.workers <= 2, `1 or 2 workers after two jobs, not ${p.workers}`);
    await until(async () => (p.workers === 0 ? true : undefined), 10_000);
    await unpack(p, 'c');
    assert.equal(p.workers, 1);
    await until(async () => (p.workers === 0 ? true : undefined), 10_000);
  });

  it('gives a new job to the worker with the fewest downloads under way, then the fewest jobs', () => {
    const w = (name: string, jobs: number[], receiving: number[]) => ({ name, jobs: new Set(jobs), receiving: new Set(receiving) });
    assert.equal(JOBS_PER_WORKER, 2, 'the cases below assume two jobs per worker');
    // Both hold one job; the first's has all its bytes (it only unpacks its tail and syncs its file).
    assert.equal(leastBusy([w('a', [1], [1]), w('b', [2], [])])?.name, 'b');
    // Equal downloads: fewer jobs wins, then the first.
    assert.equal(leastBusy([w('a', [1], []), w('b', [], [])])?.name, 'b');
    assert.equal(leastBusy([w('a', [1], [1]), w('b', [2], [2])])?.name, 'a');
    // A full worker is never chosen, however idle its jobs; none with room: undefined.
    assert.equal(leastBusy([w('a', [1, 2], []), w('b', [3], [3])])?.name, 'b');
    assert.equal(leastBusy([w('a', [1, 2], []), w('b', [3, 4], [3])]), undefined);
  });

  it('keeps a worker that gets a job within its idle time', async () => {
    const p = (pool = new UnpackPool(1, 5_000));
    await unpack(p, 'a');
    await unpack(p, 'b');
    assert.equal(p.workers, 1, 'the same worker ran both jobs');
  });

  /** `data` in chunks of `size` bytes, each a Buffer of its own (as the HTTP parser gives them). */
  function chunked(data: Buffer, size: number): Readable {
    return Readable.from(
      (function* () {
        for (let off = 0; off < data.length; off += size) yield Buffer.from(data.subarray(off, off + size));
      })(),
    );
  }
  const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

  /**
   * Starts a streamed unpack of a gzip layer on pool `p` into a new dir `<name>-fs`, the
   * blob written to `<name>.tmp`: the caller writes the blob into `sink`.
   */
  async function startStream(p: UnpackPool, name: string, grant?: (used: Budget, need: Budget) => Promise<Budget>) {
    const target = join(dir, `${name}-fs`);
    fs.mkdirSync(target);
    const tmpPath = join(dir, `${name}.tmp`);
    const { sink, result } = await p.stream(
      { tmpPath, alg: 'sha256', compression: 'gzip', target, opts: { layer: LAYER, maxBytes: 1 << 30 } },
      undefined,
      grant,
    );
    return { sink, result, target, tmpPath };
  }

  it('unpacks a layer while its blob streams in, and writes and hashes the blob on the way', async () => {
    const p = (pool = new UnpackPool(2, 1_000));
    // Bigger than the flow-control window, so acknowledgements must keep it going.
    const big = Buffer.alloc(24 << 20);
    for (let i = 0; i < big.length; i += 4096) big.writeUInt32BE(i, i);
    const raw = await makeTar([{ header: { name: 'etc', type: 'directory' } }, { header: { name: 'etc/big.bin' }, content: big }]);
    const blobBytes = compress(raw, 'gzip');
    const { sink, result, target, tmpPath } = await startStream(p, 'streamed');
    // Some chunks are views into a larger buffer (copied before they move), most are whole.
    await pipeline(chunked(blobBytes, 65_536), sink.writable);
    assert.equal(await sink.seal(), sha256(blobBytes), 'the digest of the streamed blob');
    await sink.closed;
    assert.ok(fs.readFileSync(tmpPath).equals(blobBytes), 'the blob file holds exactly the bytes streamed');
    const r = await result;
    assert.equal(r.diffId, `sha256:${sha256(raw)}`);
    assert.ok(fs.readFileSync(join(target, 'etc', 'big.bin')).equals(big));
  });

  it('still writes and hashes the whole blob when its unpack fails early', async () => {
    const p = (pool = new UnpackPool(1, 1_000));
    const raw = await makeTar([{ header: { name: '../escape' }, content: 'x'.repeat(100_000) }]);
    const blobBytes = compress(raw, 'gzip');
    const { sink, result } = await startStream(p, 'escape');
    await pipeline(chunked(blobBytes, 1000), sink.writable);
    assert.equal(await sink.seal(), sha256(blobBytes));
    await assert.rejects(result, (e) => isKind(e, 'FailedPrecondition'));
  });

  describe('a blob the worker downloads itself', () => {
    let server: Server | undefined;
    afterEach(async () => {
      server?.closeAllConnections();
      await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
      server = undefined;
    });

    /** A server on 127.0.0.1 answering every GET with `handler`; the request a worker would send to it. */
    async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<BlobRequest & { seen: IncomingMessage[] }> {
      const seen: IncomingMessage[] = [];
      server = createServer((req, res) => {
        seen.push(req);
        handler(req, res);
      });
      await new Promise<void>((r) => server!.listen(0, '127.0.0.1', () => r()));
      const { port } = server.address() as AddressInfo;
      return {
        url: `http://127.0.0.1:${port}/v2/x/blobs/sha256:00`,
        host: `127.0.0.1:${port}`,
        policyHost: `127.0.0.1:${port}`,
        headers: { 'user-agent': 'berth', authorization: 'Bearer secret-token' },
        stallMs: 5_000,
        minBytesPerSecond: 0,
        tls: { insecureSkipVerify: false, ca: [], id: 'none' },
        seen,
      };
    }

    async function layer(): Promise<{ raw: Buffer; blobBytes: Buffer; big: Buffer }> {
      // Incompressible: the blob itself is larger than the worker's flow-control window.
      const big = randomBytes(12 << 20);
      const raw = await makeTar([{ header: { name: 'big.bin' }, content: big }]);
      return { raw, blobBytes: compress(raw, 'gzip'), big };
    }

    it('downloads, hashes, writes and unpacks a blob larger than the flow-control window, with the headers it was given, reporting progress', async () => {
      const p = (pool = new UnpackPool(1, 1_000));
      const { raw, blobBytes, big } = await layer();
      const req = await serve((_req, res) => {
        res.writeHead(200, { 'content-length': blobBytes.length });
        res.end(blobBytes);
      });
      const target = join(dir, 'fs');
      fs.mkdirSync(target);
      const tmpPath = join(dir, 'blob.tmp');
      const { sink, result } = await p.stream({ tmpPath, alg: 'sha256', compression: 'gzip', target, opts: { layer: LAYER, maxBytes: 1 << 30 } });
      const progress: number[] = [];
      assert.deepEqual(await sink.fetch(req, blobBytes.length, 'the layer', (n) => progress.push(n)), { ok: true, bytes: blobBytes.length });
      assert.ok(progress.length >= 2, `progress reported as the bytes came (${progress.length} reports)`);
      assert.equal(
        progress.reduce((a, b) => a + b, 0),
        blobBytes.length,
        'progress adds up to the blob',
      );
      assert.equal(await sink.seal(), sha256(blobBytes));
      await sink.closed;
      assert.ok(fs.readFileSync(tmpPath).equals(blobBytes));
      assert.equal((await result).diffId, `sha256:${sha256(raw)}`);
      assert.ok(fs.readFileSync(join(target, 'big.bin')).equals(big));
      assert.equal(req.seen[0]!.headers.authorization, 'Bearer secret-token');
    });

    it('falls back, having fed nothing, on any answer but 200; the blob then streams in from this thread', async () => {
      const p = (pool = new UnpackPool(1, 1_000));
      const { raw, blobBytes } = await layer();
      const req = await serve((_req, res) => {
        res.writeHead(307, { location: 'http://127.0.0.1:1/elsewhere' });
        res.end();
      });
      const target = join(dir, 'fs');
      fs.mkdirSync(target);
      const { sink, result } = await p.stream({
        tmpPath: join(dir, 'blob.tmp'),
        alg: 'sha256',
        compression: 'gzip',
        target,
        opts: { layer: LAYER, maxBytes: 1 << 30 },
      });
      const o = await sink.fetch(req, blobBytes.length, 'the layer');
      assert.equal(o.ok, false);
      assert.equal(!o.ok && o.fallback, true, JSON.stringify(o));
      assert.equal(req.seen.length, 1, 'the redirect is not followed by the worker');
      await pipeline(chunked(blobBytes, 65_536), sink.writable);
      assert.equal(await sink.seal(), sha256(blobBytes));
      assert.equal((await result).diffId, `sha256:${sha256(raw)}`);
    });

    it('a chunked body unpacks as a Content-Length one; a stall is Unavailable; a refused address falls back having fed nothing', async () => {
      const p = (pool = new UnpackPool(1, 1_000));
      const { raw, blobBytes, big } = await layer();
      const start = async (name: string) => {
        const target = join(dir, `fs-${name}`);
        fs.mkdirSync(target);
        return {
          target,
          ...(await p.stream({ tmpPath: join(dir, `${name}.tmp`), alg: 'sha256', compression: 'gzip', target, opts: { layer: LAYER, maxBytes: 1 << 30 } })),
        };
      };
      // Chunked, in pieces of odd sizes.
      let req = await serve((_req, res) => {
        res.writeHead(200, { 'transfer-encoding': 'chunked' });
        for (let i = 0; i < blobBytes.length; i += 100_003) res.write(blobBytes.subarray(i, i + 100_003));
        res.end();
      });
      const a = await start('chunked');
      assert.deepEqual(await a.sink.fetch(req, blobBytes.length, 'the layer'), { ok: true, bytes: blobBytes.length });
      assert.equal(await a.sink.seal(), sha256(blobBytes));
      assert.equal((await a.result).diffId, `sha256:${sha256(raw)}`);
      assert.ok(fs.readFileSync(join(a.target, 'big.bin')).equals(big));
      server!.closeAllConnections();
      await new Promise<void>((r) => server!.close(() => r()));

      // Half the body, then silence.
      req = await serve((_req, res) => {
        res.writeHead(200, { 'content-length': blobBytes.length });
        res.write(blobBytes.subarray(0, blobBytes.length >> 1));
      });
      const b = await start('stalled');
      const o = await b.sink.fetch({ ...req, stallMs: 500 }, blobBytes.length, 'the layer');
      assert.ok(!o.ok && !o.fallback && o.kind === 'Unavailable' && /no data for 0\.5 s, .*after \d+ of \d+ bytes/.test(o.message), JSON.stringify(o));
      await b.sink.closed;
      await assert.rejects(b.result);
      server!.closeAllConnections();
      await new Promise<void>((r) => server!.close(() => r()));

      // A registry not on loopback whose blob URL points at loopback: refused, nothing sent.
      req = await serve((_req, res) => res.end(blobBytes));
      const c = await start('refused');
      const refused = await c.sink.fetch({ ...req, policyHost: 'registry.invalid' }, blobBytes.length, 'the layer');
      assert.ok(!refused.ok && refused.fallback && /refusing to connect to 127\.0\.0\.1/.test(refused.why), JSON.stringify(refused));
      assert.equal(req.seen.length, 0, 'no request reached the server');
      await pipeline(chunked(blobBytes, 65_536), c.sink.writable);
      assert.equal(await c.sink.seal(), sha256(blobBytes), 'nothing of the refused download reached the intake');
      await c.result;
    });

    it('refuses more bytes than declared, and a truncated body, with DataLoss; the temp file is closed', async () => {
      const p = (pool = new UnpackPool(1, 1_000));
      const { blobBytes } = await layer();
      for (const [send, pattern] of [
        [blobBytes.length + 1, /sent more than the \d+ bytes the descriptor declares/],
        [blobBytes.length - 1000, /truncated: .*of \d+ bytes/],
      ] as const) {
        const req = await serve((_req, res) => {
          // No content-length: the body itself is over or under.
          res.writeHead(200, { 'transfer-encoding': 'chunked' });
          res.end(Buffer.concat([blobBytes, Buffer.alloc(1)]).subarray(0, send));
        });
        const target = join(dir, `fs-${send}`);
        fs.mkdirSync(target);
        const { sink, result } = await p.stream({
          tmpPath: join(dir, `blob-${send}.tmp`),
          alg: 'sha256',
          compression: 'gzip',
          target,
          opts: { layer: LAYER, maxBytes: 1 << 30 },
        });
        const o = await sink.fetch(req, blobBytes.length, 'the layer');
        assert.ok(!o.ok && !o.fallback && o.kind === 'DataLoss' && pattern.test(o.message), JSON.stringify(o));
        assert.ok(!JSON.stringify(o).includes('secret-token'), 'no credential in the outcome');
        await sink.closed;
        await assert.rejects(result);
        await assert.rejects(sink.seal());
        server?.closeAllConnections();
        await new Promise<void>((r) => server!.close(() => r()));
        server = undefined;
      }
    });
  });

  it('a download that fails part-way stops the unpack and closes the temp file', async () => {
    const p = (pool = new UnpackPool(1, 1_000));
    const raw = await makeTar([{ header: { name: 'a.bin' }, content: Buffer.alloc(4 << 20, 1) }]);
    const blobBytes = compress(raw, 'gzip');
    const fds = openFds();
    const { sink, result } = await startStream(p, 'broken');
    const broken = Readable.from(
      (async function* () {
        yield Buffer.from(blobBytes.subarray(0, 10_000));
        throw new Error('connection reset');
      })(),
    );
    await assert.rejects(pipeline(broken, sink.writable), /connection reset/);
    await sink.closed;
    await assert.rejects(result);
    await assert.rejects(sink.seal());
    // The worker's own descriptors go with it; a file it left open would stay.
    await p.close();
    pool = undefined;
    assert.equal(openFds(), fds, 'no file left open');
  });
  it("asks this thread for a streamed layer's grants, and a refused grant refuses the unpack", async () => {
    const p = (pool = new UnpackPool(1, 1_000));
    const raw = await makeTar([
      { header: { name: 'etc', type: 'directory' } },
      { header: { name: 'etc/a.bin' }, content: Buffer.alloc(3 << 20, 7) },
      { header: { name: 'etc/b.bin' }, content: Buffer.alloc(1 << 20, 9) },
    ]);
    const blobBytes = compress(raw, 'gzip');
    const stream = async (name: string, grant: (used: Budget, need: Budget) => Promise<Budget>) => {
      const { sink, result, target } = await startStream(p, name, grant);
      await pipeline(chunked(blobBytes, 65_536), sink.writable);
      return { result, target };
    };

    // Granted exactly what is asked each time: the unpack asks again as it goes.
    const asked: Array<{ used: Budget; need: Budget }> = [];
    const ok = await stream('granted', (used, need) => {
      asked.push({ used, need });
      return Promise.resolve(need);
    });
    const r = await ok.result;
    assert.equal(r.diffId, `sha256:${sha256(raw)}`);
    assert.ok(asked.length >= 2, `the worker asked for grants as it wrote (${asked.length} requests)`);
    const last = asked[asked.length - 1]!.need;
    assert.ok(last.bytes >= 4 << 20, `the grants cover the layer's file bytes (${last.bytes})`);
    assert.ok(last.entries >= 3, `the grants cover the layer's entries (${last.entries})`);

    // A grant refused on this thread refuses the unpack with its kind and message.
    const refused = await stream('refused', (_used, need) =>
      need.bytes > 1 << 20 ? Promise.reject(new BerthError('ResourceExhausted', 'test: no more bytes')) : Promise.resolve(need),
    );
    await assert.rejects(refused.result, (e) => isKind(e, 'ResourceExhausted') && /test: no more bytes/.test((e as Error).message));
    assert.ok(!fs.existsSync(join(refused.target, 'etc', 'b.bin')), 'nothing past the refusal was written');
  });
});
