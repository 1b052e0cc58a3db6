/**
 * Moving an entry's data out of tar-stream: writing it to the new file (synchronously
 * for small files, with batched writev for big ones so decompression and disk writes
 * overlap), discarding it, and waiting for the parser to take more input.
 */
import * as fs from 'node:fs';
import type { Extract, Header } from 'tar-stream';
import { messageOf } from '../../common/errors.js';
import { TarError, type EntryStream } from './tar-entry.js';

/** File data queued in memory before the tar stream is paused. */
const MAX_QUEUED_BYTES = 1024 * 1024;
/** Files up to this size are written synchronously (see writeEntryDataSync). */
export const SYNC_WRITE_MAX = 512 * 1024;

/** Resolves once a paused writable can take more, or has been destroyed. */
export function drained(stream: Extract): Promise<void> {
  // Destroyed (an entry's reader gave up on its data): 'close' may have been emitted already.
  if (stream.destroying) return Promise.resolve();
  return new Promise((done) => {
    const settle = (): void => {
      stream.off('drain', settle);
      stream.off('close', settle);
      done();
    };
    stream.on('drain', settle);
    stream.on('close', settle);
  });
}

/** Reads and discards an entry's data (tar-stream stalls until it is consumed). */
export async function drain(data: EntryStream, header: Header): Promise<void> {
  // tar-stream gives directories no data (and their stream would never end).
  if (header.size === 0 || header.type === 'directory') return;
  try {
    for await (const _ of data) {
      // discarded
    }
  } catch (err) {
    throw new TarError(messageOf(err));
  }
}

/**
 * Writes an entry's data to `fd`, batching chunks that arrive while a write is in
 * flight into one writev and pausing the entry when too much is queued. Never settles
 * while a write is in flight, so the caller may close `fd` afterwards.
 */
export function writeEntryData(fd: number, data: EntryStream): Promise<number> {
  return new Promise((resolvePromise, rejectPromise) => {
    let queue: Buffer[] = [];
    let queued = 0;
    let written = 0;
    let writing = false;
    let paused = false;
    let ended = false;
    let settled = false;
    let failure: unknown;

    const settle = (): void => {
      if (settled || writing) return;
      settled = true;
      if (failure !== undefined) rejectPromise(failure);
      else resolvePromise(written);
    };
    const fail = (err: unknown): void => {
      failure ??= err;
      settle();
    };
    const pump = (): void => {
      if (writing || settled) return;
      if (failure !== undefined || (ended && queue.length === 0)) return settle();
      if (queue.length === 0) return;
      const batch = queue;
      queue = [];
      queued = 0;
      writing = true;
      writeAll(fd, batch, (err, n) => {
        writing = false;
        if (err) failure ??= err;
        written += n;
        if (paused) {
          paused = false;
          data.resume();
        }
        pump();
      });
    };
    data.on('data', (chunk) => {
      const buf = chunk as Buffer;
      queue.push(buf);
      queued += buf.length;
      if (queued >= MAX_QUEUED_BYTES && !paused) {
        paused = true;
        data.pause();
      }
      pump();
    });
    data.on('end', () => {
      ended = true;
      pump();
    });
    data.on('error', (err) => fail(new TarError(messageOf(err))));
    data.on('close', () => {
      if (!ended) fail(new TarError('entry data ended early'));
    });
  });
}

/**
 * Writes an entry's data with plain write(2) calls: for small files a thread-pool round
 * trip per write costs more than the write itself.
 */
export async function writeEntryDataSync(fd: number, data: EntryStream): Promise<number> {
  let written = 0;
  let writeError: unknown;
  try {
    for await (const chunk of data) {
      try {
        for (let off = 0; off < chunk.length;) off += fs.writeSync(fd, chunk, off);
      } catch (err) {
        writeError = err;
        throw err;
      }
      written += chunk.length;
    }
  } catch (err) {
    throw err === writeError ? err : new TarError(messageOf(err));
  }
  return written;
}

/** writev until every byte is written (regular files rarely write short, but may). */
export function writeAll(fd: number, bufs: Buffer[], cb: (err: Error | null, n: number) => void, done = 0): void {
  fs.writev(fd, bufs, (err, n) => {
    if (err) return cb(err, done);
    let rest = n;
    let i = 0;
    while (i < bufs.length && rest >= (bufs[i] as Buffer).length) rest -= (bufs[i++] as Buffer).length;
    if (i === bufs.length) return cb(null, done + n);
    const remaining = [(bufs[i] as Buffer).subarray(rest), ...bufs.slice(i + 1)];
    writeAll(fd, remaining, cb, done + n);
  });
}
