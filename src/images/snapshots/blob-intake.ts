/**
 * Worker thread side of a streamed layer (UnpackPool.stream): the blob's bytes arrive from
 * berthd's main thread as they come off the socket, in batches of transferred buffers.
 * Each byte is hashed (the blob's digest, which the content store checks), written to the
 * content store's temp file, and handed to the unpacker, so downloading, hashing, writing
 * and unpacking of a layer run at once, off the main thread, with no copy between them and
 * no second read of the blob.
 *
 * Flow control: the main thread keeps at most a window of bytes unacknowledged; a batch is
 * acknowledged once it is in the file and the unpacker has room for more. The blob is
 * written and hashed to its end even when the unpack fails early (the content store then
 * still tells a corrupt download from bad content, as when it stored blobs first).
 */
import { createHash, type Hash } from 'node:crypto';
import * as fs from 'node:fs';
import { Readable } from 'node:stream';
import { messageOf } from '../../common/errors.js';
import { native } from '../../common/native.js';
import { writeAll } from './entry-data.js';

/** Messages from the worker about the blob of a streamed job. */
export type IntakeMessage =
  | { type: 'ack'; id: number; bytes: number }
  /** The temp file is closed: after all bytes were written and synced (digest), or not (error). */
  | { type: 'blob'; id: number; digest?: string; error?: string; code?: string };

/**
 * Bytes the unpacker may have waiting before acknowledgements are held back. The pieces
 * go to it as they came: its gzip decoder gathers them for zlib (gunzip.ts).
 */
const SOURCE_HIGH_WATER = 2 << 20;

/**
 * Bytes written to the blob's file between two starts of their writeback. Through the page
 * cache alone the whole blob would reach the disk only at the fsync that ends the layer
 * (dirty pages are flushed after gigabytes here), and the fsyncs of layers that end
 * together queued behind one another; started as they come, the writes overlap the
 * download and the fsync finds little left.
 */
const WRITEBACK_BYTES = 4 << 20;

export class BlobIntake {
  /** The compressed stream the unpacker reads. */
  readonly source: Readable;
  private readonly hash: Hash;
  private fd: number | undefined;
  private queue: Buffer[] = [];
  private writing = false;
  private unacked = 0;
  /** Bytes in the file, and how many of them were sent on to the disk (startWriteback). */
  private written = 0;
  private flushed = 0;
  /** Cleared when the writeback is refused: the file is then synced at its end only. */
  private writeback = true;
  private ended = false;
  private stopped = false;
  private closed = false;

  constructor(
    private readonly id: number,
    tmpPath: string,
    alg: 'sha256' | 'sha512',
    private readonly post: (m: IntakeMessage) => void,
  ) {
    this.hash = createHash(alg);
    // The unpacker asks for more (called once until the next push): what is in the file is acknowledged.
    this.source = new Readable({ highWaterMark: SOURCE_HIGH_WATER, read: () => this.ack(true) });
    try {
      this.fd = fs.openSync(tmpPath, 'w', 0o600);
    } catch (err) {
      this.fail(err);
    }
  }

  /** The temp file is closed (its outcome posted). */
  get done(): boolean {
    return this.closed;
  }

  /** A batch of the blob's bytes, in order. */
  chunks(list: Uint8Array[]): void {
    if (this.stopped) return;
    for (const c of list) {
      const buf = Buffer.from(c.buffer, c.byteOffset, c.byteLength);
      this.hash.update(buf);
      this.queue.push(buf);
      if (!this.source.destroyed) this.source.push(buf);
    }
    this.pump();
  }

  /** All bytes were sent. */
  end(): void {
    if (this.stopped) return;
    this.ended = true;
    if (!this.source.destroyed) this.source.push(null);
    this.pump();
  }

  /** The download failed or was cancelled: stop, close the file, keep nothing. */
  abort(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.queue = [];
    this.source.destroy();
    if (!this.writing) this.close({});
  }

  private ack(wanted = false): void {
    if (this.unacked > 0 && (wanted || this.source.destroyed || this.source.readableLength < SOURCE_HIGH_WATER)) {
      this.post({ type: 'ack', id: this.id, bytes: this.unacked });
      this.unacked = 0;
    }
  }

  private pump(): void {
    if (this.writing || this.fd === undefined) return;
    if (this.stopped) return this.close({});
    if (this.queue.length === 0) {
      if (this.ended) this.seal();
      return;
    }
    const batch = this.queue;
    this.queue = [];
    this.writing = true;
    writeAll(this.fd, batch, (err, n) => {
      this.writing = false;
      if (err) return this.fail(err);
      this.unacked += n;
      this.written += n;
      if (this.writeback && this.written - this.flushed >= WRITEBACK_BYTES && this.fd !== undefined) this.startWriteback(this.fd);
      this.ack();
      this.pump();
    });
  }

  /**
   * Sends what was written since the last call on to the disk. Advisory: where it is
   * refused (a filesystem without it, an addon without it), the file is synced at its end
   * as before, and this intake stops asking.
   */
  private startWriteback(fd: number): void {
    let errno: number;
    try {
      errno = native().startWriteback(fd, this.flushed, this.written - this.flushed);
    } catch {
      errno = -1;
    }
    if (errno === 0) this.flushed = this.written;
    else this.writeback = false;
  }

  private seal(): void {
    const fd = this.fd!;
    this.writing = true;
    fs.fsync(fd, (err) => {
      this.writing = false;
      if (err) return this.fail(err);
      this.stopped = true;
      this.close({ digest: this.hash.digest('hex') });
    });
  }

  private fail(err: unknown): void {
    if (this.closed) return;
    this.stopped = true;
    this.queue = [];
    this.source.destroy();
    this.close({ error: messageOf(err), ...((err as NodeJS.ErrnoException).code ? { code: (err as NodeJS.ErrnoException).code } : {}) });
  }

  private close(outcome: { digest?: string; error?: string; code?: string }): void {
    if (this.closed) return;
    this.closed = true;
    const fd = this.fd;
    this.fd = undefined;
    const done = (): void =>
      this.post({ type: 'blob', id: this.id, ...(outcome.error === undefined && outcome.digest === undefined ? { error: 'aborted' } : outcome) });
    if (fd === undefined) done();
    else fs.close(fd, () => done());
  }
}
