/**
 * The content store: blobs (manifests, configs, layers) by digest, under
 * `<root>/content/blobs/<alg>/<hex>`.
 *
 * A blob is written to `content/ingest/` while its digest and size are checked as the
 * bytes stream in; only when both match is it fsynced, renamed into place, and
 * recorded in `blobs`. So a file under blobs/ with a row is always verified content, and
 * a crash leaves at most a temp file in ingest/ (removed by recovery). Two pulls that
 * want the same blob at once share one download.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, mkdirSync, readdirSync, renameSync } from 'node:fs';
import { open, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Transform, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { BerthError, errnoOf, messageOf } from '../../common/errors.js';
import type { Logger } from '../../common/logger.js';
import type { BlobRepository } from './blob-repository.js';

export interface BlobDescriptor {
  digest: string;
  size: number;
  mediaType: string;
}

async function fsyncPath(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** The content store's dirs under berthd's root: verified blobs, downloads in progress, blobs being collected. */
export function contentDirs(root: string): { blobsDir: string; ingestDir: string; trashDir: string } {
  return { blobsDir: join(root, 'content', 'blobs'), ingestDir: join(root, 'content', 'ingest'), trashDir: join(root, 'content', 'trash') };
}

/**
 * Blob files no row names (`<blobsDir>/<alg>/<hex>` whose digest is not in `known`):
 * recovery removes them; `berthd doctor` reports them. Missing dirs have none.
 */
export function strayBlobFiles(blobsDir: string, known: ReadonlySet<string>): Array<{ digest: string; path: string }> {
  const out: Array<{ digest: string; path: string }> = [];
  for (const alg of readdirIfPresent(blobsDir)) {
    for (const hex of readdirIfPresent(join(blobsDir, alg))) {
      if (!known.has(`${alg}:${hex}`)) out.push({ digest: `${alg}:${hex}`, path: join(blobsDir, alg, hex) });
    }
  }
  return out;
}

function readdirIfPresent(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return [];
    throw err;
  }
}

/**
 * Takes over writing and hashing a blob being downloaded (a layer's unpack worker, which
 * reads the same bytes): the store still counts the bytes, checks the digest it is given,
 * and renames and records the file.
 */
export interface BlobSink {
  /** Takes the blob's bytes in order; finishes once they are all in the file, synced. */
  readonly writable: Writable;
  /** The hex digest of the bytes written, with the blob's algorithm (after `writable` finished). */
  seal(): Promise<string>;
  /** Settles once the temp file is closed, whatever happened. */
  readonly closed: Promise<void>;
  /**
   * Downloads the blob itself when it can (a layer's unpack worker: see
   * snapshots/blob-fetch.ts): resolves with the bytes it took (the declared size, checked
   * as it went), or undefined when the store must feed `writable` from its own download;
   * rejects when the transfer failed after its first byte. `onBytes` hears of the bytes as
   * they come.
   */
  fetch?(onBytes?: (n: number) => void): Promise<number | undefined>;
}

/** Makes the sink of one download, given its temp file and digest algorithm. */
export type BlobSinkFactory = (tmp: string, alg: 'sha256' | 'sha512') => Promise<BlobSink>;

/**
 * A pass-through that counts a blob's bytes and fails as soon as they exceed its declared
 * size (DataLoss); `onChunk` sees each chunk let through. `bytes` is the count so far.
 */
function sizeCheck(desc: BlobDescriptor, onChunk: (chunk: Buffer) => void): Transform & { bytes: number } {
  const check = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      check.bytes += chunk.length;
      if (check.bytes > desc.size) {
        cb(new BerthError('DataLoss', `blob ${desc.digest}: more than its declared ${desc.size} bytes`));
        return;
      }
      onChunk(chunk);
      cb(null, chunk);
    },
  }) as Transform & { bytes: number };
  check.bytes = 0;
  return check;
}

/** A sink that may be shown each chunk the size check lets through (the store's own, to hash them). */
type SeeingSink = BlobSink & { see?(chunk: Buffer): void };

/**
 * The store's own sink: a write stream to the temp file, fed the chunks the size check
 * lets through (`see`) to hash them; `seal` syncs the file, then gives the digest.
 */
async function fileSink(tmp: string, alg: 'sha256' | 'sha512'): Promise<SeeingSink> {
  const hash = createHash(alg);
  // Opened at once, so a failure can wait for its close: an abort may land before the
  // file is even opened, and the open would then recreate it after the rm.
  const out = createWriteStream(tmp, { mode: 0o600, highWaterMark: 4 << 20 });
  const closed = new Promise<void>((resolve) => out.once('close', () => resolve()));
  return {
    writable: out,
    closed,
    see: (chunk: Buffer) => hash.update(chunk),
    seal: async () => {
      await fsyncPath(tmp);
      return hash.digest('hex');
    },
  };
}

export class ContentStore {
  private readonly blobsDir: string;
  private readonly ingestDir: string;
  private readonly trashDir: string;
  private readonly inflight = new Map<string, Promise<void>>();

  constructor(
    /** berthd's root directory, on the image filesystem. */
    readonly root: string,
    private readonly repo: BlobRepository,
    private readonly log: Logger,
  ) {
    ({ blobsDir: this.blobsDir, ingestDir: this.ingestDir, trashDir: this.trashDir } = contentDirs(root));
    for (const d of [join(this.blobsDir, 'sha256'), join(this.blobsDir, 'sha512'), this.ingestDir, this.trashDir])
      mkdirSync(d, { recursive: true, mode: 0o700 });
  }

  path(digest: string): string {
    const [alg, hex] = digest.split(':');
    return join(this.blobsDir, alg!, hex!);
  }

  has(digest: string): boolean {
    return this.repo.get(digest) !== undefined;
  }

  /**
   * Makes sure the blob is in the store, downloading it with `open` if it is not. A
   * concurrent call for the same digest waits for the first instead of downloading again.
   * `onBytes` hears of each chunk this call downloads (pull progress). `sink`, when given,
   * writes and hashes the bytes instead of this store (it is called only when this call
   * downloads).
   */
  async ensure(
    desc: BlobDescriptor,
    openStream: () => Promise<Readable>,
    signal?: AbortSignal,
    onBytes?: (n: number) => void,
    sink?: BlobSinkFactory,
  ): Promise<void> {
    if (this.has(desc.digest)) return;
    const running = this.inflight.get(desc.digest);
    if (running) {
      await running;
      return;
    }
    const p = this.ingest(desc, openStream, sink ?? fileSink, signal, onBytes).finally(() => this.inflight.delete(desc.digest));
    this.inflight.set(desc.digest, p);
    await p;
  }

  /**
   * Downloads one blob into a temp file through `makeSink` (the store's own file sink
   * unless a caller brings one), checks its size and digest, and renames and records it.
   * On any failure the sink is closed and the temp file removed before this rejects.
   */
  private async ingest(
    desc: BlobDescriptor,
    openStream: () => Promise<Readable>,
    makeSink: BlobSinkFactory,
    signal?: AbortSignal,
    onBytes?: (n: number) => void,
  ): Promise<void> {
    const [alg, hex] = desc.digest.split(':') as [string, string];
    const tmp = join(this.ingestDir, `${hex}.${randomBytes(6).toString('hex')}`);
    let sink: SeeingSink | undefined;
    try {
      sink = await makeSink(tmp, alg === 'sha512' ? 'sha512' : 'sha256');
      const see = sink.see;
      let bytes = sink.fetch ? await sink.fetch(onBytes) : undefined;
      if (bytes === undefined) {
        const check = sizeCheck(desc, (chunk) => {
          see?.(chunk);
          onBytes?.(chunk.length);
        });
        const src = await openStream();
        await pipeline(src, check, sink.writable, ...(signal ? [{ signal }] : []));
        bytes = check.bytes;
      }
      if (bytes !== desc.size) throw new BerthError('DataLoss', `blob ${desc.digest}: got ${bytes} bytes, expected ${desc.size}`);
      const actual = `${alg}:${await sink.seal()}`;
      if (actual !== desc.digest) throw new BerthError('DataLoss', `blob ${desc.digest}: content has digest ${actual}`);
      await rename(tmp, this.path(desc.digest));
      await fsyncPath(join(this.blobsDir, alg));
      this.repo.insert(desc.digest, desc.size, desc.mediaType);
    } catch (err) {
      if (sink) {
        sink.writable.destroy();
        await sink.closed;
      }
      await rm(tmp, { force: true });
      if (signal?.aborted) throw signal.reason;
      throw err;
    }
  }

  /** Stores a blob already in memory and verified by the caller. */
  async putVerified(desc: BlobDescriptor, data: Buffer): Promise<void> {
    if (this.has(desc.digest)) return;
    await this.ensure(desc, async () => Readable.from([data]));
  }

  async readBuffer(digest: string): Promise<Buffer> {
    return readFile(this.path(digest));
  }

  /**
   * Garbage collection, first half, synchronous: deletes the rows of blobs no image
   * references and no lease (`held`) protects, and moves their files into trash/ at once,
   * so a download of the same digest starting right after never has its new file removed.
   */
  collectRows(held: (digest: string) => boolean): string[] {
    const trash: string[] = [];
    for (const digest of this.repo.unreferenced()) {
      if (held(digest)) continue;
      this.repo.delete(digest);
      const to = join(this.trashDir, `${digest.replace(':', '-')}.${randomBytes(4).toString('hex')}`);
      try {
        renameSync(this.path(digest), to);
        trash.push(to);
      } catch (err) {
        if (errnoOf(err) !== 'ENOENT') throw err;
      }
    }
    return trash;
  }

  /** Resolves when no download is in progress (each has cleaned up after itself). */
  async idle(): Promise<void> {
    await Promise.allSettled([...this.inflight.values()]);
  }

  /** Garbage collection, second half. */
  async emptyTrash(paths: string[]): Promise<void> {
    for (const p of paths) await rm(p, { force: true });
  }

  usage(): { bytes: number; count: number } {
    return this.repo.usage();
  }

  /**
   * Recovery: temp files of interrupted downloads go; files without a row (a crash
   * between rename and insert) go; rows whose file vanished go.
   */
  async recover(): Promise<{ removedTemp: number; removedFiles: number; removedRows: number }> {
    let removedTemp = 0;
    let removedFiles = 0;
    let removedRows = 0;
    for (const dir of [this.ingestDir, this.trashDir]) {
      for (const name of readdirSync(dir)) {
        await rm(join(dir, name), { force: true, recursive: true });
        removedTemp++;
      }
    }
    const known = new Set(this.repo.digests());
    for (const stray of strayBlobFiles(this.blobsDir, known)) {
      await rm(stray.path, { force: true });
      removedFiles++;
    }
    for (const digest of known) {
      try {
        await stat(this.path(digest));
      } catch (err) {
        if (errnoOf(err) !== 'ENOENT') throw err;
        try {
          this.repo.delete(digest);
          removedRows++;
        } catch (e) {
          // Still referenced by an image: that image is damaged; say so and go on.
          this.log.error('blob file missing for an image; remove the image and pull it again', { digest, error: messageOf(e) });
        }
      }
    }
    if (removedTemp + removedFiles + removedRows > 0) this.log.info('content store recovered', { removedTemp, removedFiles, removedRows });
    return { removedTemp, removedFiles, removedRows };
  }
}
