/**
 * The content store in a temp dir with its real BlobRepository: blobs verified by digest
 * and size as they stream in, one download shared by concurrent callers, nothing left in
 * ingest/ after a failure or an abort, garbage collection in two halves, and recovery of
 * what a crash left behind.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync, readdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable, Transform } from 'node:stream';
import { createLogger } from '../../../../src/common/logger.js';
import { BlobRepository } from '../../../../src/images/content/blob-repository.js';
import { ContentStore, type BlobDescriptor, type BlobSink } from '../../../../src/images/content/content-store.js';
import { openDatabase, type Db } from '../../../../src/store/database.js';

const log = createLogger('error', () => undefined);

function blob(text: string): { desc: BlobDescriptor; data: Buffer } {
  const data = Buffer.from(text);
  return { desc: { digest: `sha256:${createHash('sha256').update(data).digest('hex')}`, size: data.length, mediaType: 'application/octet-stream' }, data };
}

describe('images: content store', () => {
  let dir: string;
  let db: Db;
  let repo: BlobRepository;
  let store: ContentStore;
  const ingest = (): string[] => readdirSync(join(dir, 'content', 'ingest'));

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'berth-content-'));
    db = openDatabase(join(dir, 'berth.db'));
    repo = new BlobRepository(db);
    store = new ContentStore(dir, repo, log);
  });
  afterEach(async () => {
    db.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('stores a verified blob under blobs/<alg>/<hex> with its row, and reads it back', async () => {
    const { desc, data } = blob('hello');
    await store.ensure(desc, async () => Readable.from([data.subarray(0, 2), data.subarray(2)]));
    assert.ok(store.has(desc.digest));
    assert.equal(store.path(desc.digest), join(dir, 'content', 'blobs', 'sha256', desc.digest.slice(7)));
    assert.deepEqual(await store.readBuffer(desc.digest), data);
    assert.deepEqual(store.usage(), { bytes: 5, count: 1 });
    let opened = 0;
    await store.ensure(desc, async () => (opened++, Readable.from([data])));
    assert.equal(opened, 0, 'a stored blob is not fetched again');
  });

  it('refuses wrong content, too few and too many bytes with DataLoss, leaving nothing', async () => {
    const { desc } = blob('hello');
    await assert.rejects(
      store.ensure(desc, async () => Readable.from([Buffer.from('jello')])),
      { kind: 'DataLoss', message: new RegExp(`blob ${desc.digest}: content has digest sha256:`) },
    );
    await assert.rejects(
      store.ensure(desc, async () => Readable.from([Buffer.from('hell')])),
      {
        kind: 'DataLoss',
        message: `blob ${desc.digest}: got 4 bytes, expected 5`,
      },
    );
    await assert.rejects(
      store.ensure(desc, async () => Readable.from([Buffer.from('hello!')])),
      {
        kind: 'DataLoss',
        message: `blob ${desc.digest}: more than its declared 5 bytes`,
      },
    );
    assert.equal(store.has(desc.digest), false);
    assert.equal(existsSync(store.path(desc.digest)), false);
    assert.deepEqual(ingest(), []);
  });

  it('shares one download between concurrent callers of the same digest', async () => {
    const { desc, data } = blob('shared');
    const src = new PassThrough();
    let opened = 0;
    const open = async (): Promise<Readable> => (opened++, src);
    const both = Promise.all([store.ensure(desc, open), store.ensure(desc, open)]);
    src.end(data);
    await both;
    assert.equal(opened, 1);
    assert.ok(store.has(desc.digest));
  });

  it('rethrows the abort reason and removes the partial file', async () => {
    const { desc, data } = blob('partial content');
    const src = new PassThrough();
    const ac = new AbortController();
    const p = store.ensure(desc, async () => src, ac.signal);
    src.write(data.subarray(0, 4));
    const reason = new Error('pull cancelled');
    ac.abort(reason);
    await assert.rejects(p, (err: unknown) => err === reason);
    await store.idle();
    assert.deepEqual(ingest(), []);
    assert.equal(store.has(desc.digest), false);
  });

  /** A sink as a layer's unpack worker makes one: it writes and hashes the file itself, and may download the blob itself. */
  function testSink(tmp: string, alg: 'sha256' | 'sha512', own?: Buffer): BlobSink & { sealed: () => boolean } {
    const hash = createHash(alg);
    const file = createWriteStream(tmp, { mode: 0o600 });
    const tap = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        hash.update(chunk);
        cb(null, chunk);
      },
    });
    tap.pipe(file);
    tap.once('close', () => {
      if (!tap.readableEnded) file.destroy();
    });
    const closed = new Promise<void>((resolve) => file.once('close', () => resolve()));
    let sealed = false;
    return {
      writable: tap,
      closed,
      sealed: () => sealed,
      seal: async () => {
        await closed;
        sealed = true;
        return hash.digest('hex');
      },
      ...(own
        ? {
            fetch: async (onBytes?: (n: number) => void): Promise<number> => {
              tap.end(own);
              onBytes?.(own.length);
              return own.length;
            },
          }
        : {}),
    };
  }

  it('lets a sink write and hash the bytes, checked as its own are, whether the store or the sink downloads', async () => {
    const fed = blob('fed by the store');
    const sinks: Array<ReturnType<typeof testSink>> = [];
    let heard = 0;
    await store.ensure(
      fed.desc,
      async () => Readable.from([fed.data]),
      undefined,
      (n) => (heard += n),
      async (tmp, alg) => (sinks.push(testSink(tmp, alg)), sinks.at(-1)!),
    );
    assert.deepEqual(await store.readBuffer(fed.desc.digest), fed.data);
    assert.equal(heard, fed.data.length);
    const own = blob('fetched by the sink');
    let opened = 0;
    await store.ensure(
      own.desc,
      async () => (opened++, Readable.from([own.data])),
      undefined,
      undefined,
      async (tmp, alg) => (sinks.push(testSink(tmp, alg, own.data)), sinks.at(-1)!),
    );
    assert.equal(opened, 0, 'the store does not download what the sink fetched');
    assert.deepEqual(await store.readBuffer(own.desc.digest), own.data);
    const bad = blob('hello');
    await assert.rejects(
      store.ensure(
        bad.desc,
        async () => Readable.from([]),
        undefined,
        undefined,
        async (tmp, alg) => testSink(tmp, alg, Buffer.from('jello')),
      ),
      { kind: 'DataLoss', message: new RegExp(`blob ${bad.desc.digest}: content has digest sha256:`) },
    );
    await assert.rejects(
      store.ensure(
        bad.desc,
        async () => Readable.from([Buffer.from('hell')]),
        undefined,
        undefined,
        async (tmp, alg) => testSink(tmp, alg),
      ),
      { kind: 'DataLoss', message: `blob ${bad.desc.digest}: got 4 bytes, expected 5` },
    );
    assert.equal(store.has(bad.desc.digest), false);
    assert.deepEqual(ingest(), []);
    assert.deepEqual(
      sinks.map((s) => s.sealed()),
      [true, true],
    );
  });

  it('collects unreferenced blobs not held: rows at once, files through the trash', async () => {
    const a = blob('a');
    const b = blob('b');
    await store.putVerified(a.desc, a.data);
    await store.putVerified(b.desc, b.data);
    const trash = store.collectRows((d) => d === b.desc.digest);
    assert.equal(trash.length, 1);
    assert.equal(store.has(a.desc.digest), false);
    assert.equal(existsSync(store.path(a.desc.digest)), false);
    assert.ok(store.has(b.desc.digest), 'a held blob stays');
    await store.emptyTrash(trash);
    assert.deepEqual(readdirSync(join(dir, 'content', 'trash')), []);
  });

  it('recovers: temp files go, files without a row go, rows without a file go', async () => {
    const kept = blob('kept');
    const noFile = blob('row only');
    await store.putVerified(kept.desc, kept.data);
    await store.putVerified(noFile.desc, noFile.data);
    await rm(store.path(noFile.desc.digest));
    const noRow = blob('file only');
    writeFileSync(store.path(noRow.desc.digest), noRow.data);
    writeFileSync(join(dir, 'content', 'ingest', 'abc.123'), 'half');
    assert.deepEqual(await store.recover(), { removedTemp: 1, removedFiles: 1, removedRows: 1 });
    assert.deepEqual([store.has(kept.desc.digest), store.has(noFile.desc.digest)], [true, false]);
    assert.equal(existsSync(store.path(noRow.desc.digest)), false);
    assert.deepEqual(await store.recover(), { removedTemp: 0, removedFiles: 0, removedRows: 0 });
  });
});
