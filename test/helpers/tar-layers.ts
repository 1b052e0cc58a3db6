/**
 * Layer tars built in memory for the unpack tests (unit and integration): entries default
 * to root-owned, mode 0644 (0755 for directories) and a fixed mtime.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import type { Header } from 'tar-stream';
import { isKind } from '../../src/common/errors.js';
import { unpackLayer, type LayerCompression, type UnpackOptions, type UnpackResult } from '../../src/images/snapshots/unpack.js';

/** The layer digest the tests name (unpack only reports it). */
export const LAYER = `sha256:${'ab'.repeat(32)}`;
export const MTIME = new Date('2021-06-01T12:00:00Z');

export interface Entry {
  header: Partial<Header> & { name: string };
  content?: string | Buffer;
}

/** Builds a tar stream in memory. */
export async function makeTar(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = new Promise<void>((resolve, reject) => {
    pack.on('data', (c) => chunks.push(c as Buffer));
    pack.on('end', () => resolve());
    pack.on('error', reject);
  });
  for (const { header, content } of entries) {
    const type = header.type ?? 'file';
    const full = { mode: type === 'directory' ? 0o755 : 0o644, uid: 0, gid: 0, mtime: MTIME, type, ...header };
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null): void => (err ? reject(err) : resolve());
      if (content !== undefined) pack.entry(full, content, cb);
      else pack.entry(full, cb);
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

/** `raw` compressed as a layer of that kind would be. */
export function compress(raw: Buffer, compression: LayerCompression): Buffer {
  if (compression === 'gzip') return gzipSync(raw);
  if (compression === 'zstd') return execFileSync('zstd', ['-c', '-q'], { input: raw, maxBuffer: 1 << 30 });
  return raw;
}

/** Open file descriptors of this process (a refused unpack must leave none). */
export function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

/** Unpacks `raw` (compressed as `compression` first) into `target` as layer {@link LAYER}. */
export function unpackInto(target: string, raw: Buffer, compression: LayerCompression = 'none', opts: Partial<UnpackOptions> = {}): Promise<UnpackResult> {
  return unpackLayer(Readable.from([compress(raw, compression)]), compression, target, { layer: LAYER, maxBytes: 1 << 30, ...opts });
}

/** Asserts that unpacking `entries` into `target` is refused (FailedPrecondition naming the layer) and leaves no descriptor open. */
export async function expectRefused(target: string, entries: Entry[], pattern: RegExp): Promise<void> {
  const fds = openFds();
  await assert.rejects(unpackInto(target, await makeTar(entries)), (err: unknown) => {
    assert.ok(isKind(err, 'FailedPrecondition'), String(err));
    assert.ok(err.message.startsWith(`layer ${LAYER}: `), err.message);
    assert.match(err.message, pattern);
    return true;
  });
  assert.equal(openFds(), fds, 'no file descriptor left open');
}
