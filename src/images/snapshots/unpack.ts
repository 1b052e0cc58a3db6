/**
 * The layer unpacker: streams one OCI layer blob (gzip, zstd or plain tar) into the
 * empty directory of a committed overlayfs snapshot, and computes the layer's diff ID
 * (the sha256 of the uncompressed tar stream) on the way.
 *
 * Overlay form. An OCI layer deletes a file of a lower layer with a whiteout entry
 * `.wh.<name>`, and hides a whole lower directory with the marker `.wh..wh..opq` inside
 * it. overlayfs expresses the same things differently: a whiteout is a character device
 * 0:0 named `<name>`, an opaque directory carries the xattr `trusted.overlay.opaque=y`.
 * Each layer is unpacked into its own directory and the lower layers stay untouched
 * (they are separate lowerdirs), so conversion only ever creates things, never deletes
 * lower content. Other `.wh..wh.*` entries are AUFS bookkeeping and are skipped.
 *
 * Safety. A layer comes from the network, so nothing it contains may create or change
 * anything outside the snapshot:
 * - names are normalised; absolute names and any `..` component are refused;
 * - every parent directory is checked with lstat to be a real directory (the set of
 *   checked directories is cached and invalidated whenever an entry replaces a path),
 *   so an entry below a symlink that an earlier entry planted is refused;
 * - entries are created with calls that fail rather than follow what is already at the
 *   path (open with O_EXCL|O_NOFOLLOW, mkdir, symlink, link); what an earlier entry left
 *   there is then removed (unless both are directories) and the call retried; owners,
 *   times and xattrs are set through the new fd or with the l-variants (setfattr -h), so
 *   no write ever goes through a symlink;
 * - hardlinks must point, without `..` or a leading `/`, at a non-directory that this
 *   layer already created; their parents are checked the same way;
 * - xattrs in the `trusted.overlay.*` namespace (and `user.overlay.*`, its twin for
 *   unprivileged mounts) are dropped: a layer must not forge overlay metadata.
 * Symlink targets are left as they are: they are resolved inside the container at run
 * time, never here. Unsafe content is refused with FailedPrecondition; the caller
 * removes the snapshot.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { resolve } from 'node:path';
import { pipeline, Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import type { Extract, Header } from 'tar-stream';
import { BerthError, errnoOf, messageOf } from '../../common/errors.js';
import { BoundedOutput, execProcess, spawnProcess, type ChildProcess } from '../../common/process.js';
import { PaxXattrScanner, XATTR_PAX_PREFIX, type RawXattrs } from './pax-xattrs.js';

/** How a layer blob is compressed (from its media type). */
export type LayerCompression = 'gzip' | 'zstd' | 'none';

/** Limits and context of one {@link unpackLayer} call. */
export interface UnpackOptions {
  /** Digest of the layer blob, used in every error message ("layer sha256:…: …"). */
  layer: string;
  /**
   * Upper bound on the bytes of uncompressed tar stream read; beyond it → ResourceExhausted
   * ("layer …: expands beyond the configured limit of N bytes (images.max_layer_bytes)").
   */
  maxBytes: number;
  /** Upper bound on the number of tar entries (default 1,000,000) → ResourceExhausted likewise. */
  maxEntries?: number;
  signal?: AbortSignal;
}

/** What {@link unpackLayer} read and wrote. */
export interface UnpackResult {
  /** "sha256:<hex>" of the whole uncompressed tar stream (the OCI diff ID), computed while unpacking. */
  diffId: string;
  /** Uncompressed tar bytes read. */
  tarBytes: number;
  /** Bytes of regular-file content written. */
  fileBytes: number;
  entries: number;
}

const DEFAULT_MAX_ENTRIES = 1_000_000;
const WHITEOUT_PREFIX = '.wh.';
const WHITEOUT_META_PREFIX = '.wh..wh.';
const OPAQUE_MARKER = '.wh..wh..opq';
/** File data queued in memory before the tar stream is paused. */
const MAX_QUEUED_BYTES = 1024 * 1024;
/** Paths with pending xattrs before they are applied in one setfattr run. */
const XATTR_BATCH = 1024;
/** Files up to this size are written synchronously (see writeEntryDataSync). */
const SYNC_WRITE_MAX = 512 * 1024;
const OPEN_NEW_FILE = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;

/**
 * Unpacks one layer blob (stream of the compressed blob) into the empty directory
 * `target`, converting it to overlayfs form. Errors are BerthErrors whose message starts
 * with `layer <opts.layer>: ` (FailedPrecondition for unsafe content, DataLoss for
 * corrupt data, ResourceExhausted for limits); an abort rethrows `signal.reason`. On
 * failure `target` is left as it is for the caller to remove, but no child process and
 * no open file remain.
 */
export async function unpackLayer(
  blob: NodeJS.ReadableStream | Readable,
  compression: LayerCompression,
  target: string,
  opts: UnpackOptions,
): Promise<UnpackResult> {
  opts.signal?.throwIfAborted();
  const source = blob instanceof Readable ? blob : new Readable().wrap(blob);
  return new LayerUnpacker(resolve(target), opts).run(source, compression);
}

type Times = readonly [atime: number, mtime: number];
type Xattrs = Array<readonly [name: string, value: Buffer]>;
/** The entry stream tar-stream hands out (a streamx Readable). */
type EntryStream = AsyncIterable<Buffer> & {
  on(event: string, fn: (arg?: unknown) => void): unknown;
  pause(): unknown;
  resume(): unknown;
};

/** Raised by the tar parser; turned into DataLoss. */
class TarError extends Error {}

/**
 * One unpack. Filesystem metadata calls are synchronous on purpose: each is one short
 * syscall on a local disk, and a thread-pool round trip costs more than the call (it
 * doubles the rate for layers of many small files). Only the data of big files is
 * written asynchronously, so decompression and disk writes overlap.
 */
class LayerUnpacker {
  private readonly layer: string;
  private readonly maxEntries: number;
  private readonly hash = createHash('sha256');
  private tarBytes = 0;
  private fileBytes = 0;
  private entries = 0;
  /** Relative paths ('' is the root) known to be real directories, not symlinks. */
  private readonly dirs = new Set<string>(['']);
  /** Whiteout devices this layer created; a directory replacing one becomes opaque. */
  private readonly whiteouts = new Set<string>();
  private readonly opaque = new Set<string>();
  /** Directory times, applied at the end because creating children changes them. */
  private readonly dirTimes = new Map<string, Times>();
  /** Xattrs applied in batches (one setfattr per batch, after chown, which clears capabilities). */
  private readonly xattrs = new Map<string, Xattrs>();
  /** The raw xattr values of the tar stream, read alongside tar-stream. */
  private readonly pax = new PaxXattrScanner();
  /** Those of the entry being unpacked. */
  private entryXattrs: RawXattrs | undefined;
  /** Character devices 0:0 that whiteouts are hardlinks of. */
  private readonly whiteoutDevices: string[] = [];

  constructor(
    private readonly root: string,
    private readonly opts: UnpackOptions,
  ) {
    this.layer = opts.layer;
    this.maxEntries = opts.maxEntries ?? DEFAULT_MAX_ENTRIES;
  }

  async run(source: Readable, compression: LayerCompression): Promise<UnpackResult> {
    const signal = this.opts.signal;
    const decompressor = openDecompressor(source, compression, this.layer);
    const extract = tar.extract();

    let failure: { err: unknown } | undefined;
    const fail = (err: unknown): void => {
      if (failure) return;
      failure = { err };
      decompressor.destroy();
      extract.destroy(err instanceof Error ? err : new Error(messageOf(err)));
    };
    const onAbort = (): void => fail(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await Promise.all([this.feed(decompressor, extract).catch(fail), this.consume(extract).catch(fail)]);
      if (!failure) await this.finish().catch(fail);
    } finally {
      signal?.removeEventListener('abort', onAbort);
      if (failure) decompressor.destroy();
      await decompressor.closed;
    }
    if (failure) throw this.toBerthError(failure.err);
    return {
      diffId: `sha256:${this.hash.digest('hex')}`,
      tarBytes: this.tarBytes,
      fileBytes: this.fileBytes,
      entries: this.entries,
    };
  }

  /** Pumps the uncompressed stream into the tar parser, hashing and counting it. */
  private async feed(decompressor: Decompressor, extract: Extract): Promise<void> {
    try {
      for await (const chunk of decompressor.output as AsyncIterable<Buffer>) {
        this.tarBytes += chunk.length;
        if (this.tarBytes > this.opts.maxBytes) {
          throw new BerthError(
            'ResourceExhausted',
            `layer ${this.layer}: expands beyond the configured limit of ${this.opts.maxBytes} bytes ` + '(images.max_layer_bytes)',
          );
        }
        this.hash.update(chunk);
        try {
          this.pax.push(chunk);
        } catch (err) {
          throw new BerthError('DataLoss', `layer ${this.layer}: corrupt tar stream: ${messageOf(err)}`);
        }
        if (!extract.write(chunk)) await drained(extract);
        if (extract.destroying) return;
      }
    } catch (err) {
      throw decompressor.explain(err);
    }
    await decompressor.finish();
    extract.end(undefined);
  }

  private async consume(extract: Extract): Promise<void> {
    try {
      for await (const entry of extract) {
        await this.onEntry(entry.header, entry as unknown as EntryStream);
        if (this.xattrs.size >= XATTR_BATCH) await this.flushXattrs();
      }
    } catch (err) {
      throw err instanceof BerthError ? err : new TarError(messageOf(err));
    }
  }

  private async onEntry(header: Header, data: EntryStream): Promise<void> {
    if (++this.entries > this.maxEntries) {
      throw new BerthError('ResourceExhausted', `layer ${this.layer}: has more than ${this.maxEntries} entries, the limit for one layer`);
    }
    const name = header.name;
    this.entryXattrs = this.pax.takeEntry(this.entries);
    try {
      const parts = this.normalize(name, `entry ${JSON.stringify(name)}`);
      const pax = (header.pax ?? undefined) as Record<string, string> | undefined;
      if (pax && Object.keys(pax).some((k) => k.startsWith('GNU.sparse.'))) {
        throw this.unsafe(`entry ${JSON.stringify(name)} is a sparse file, which berth cannot unpack`);
      }
      const base = parts[parts.length - 1] ?? '';
      const dirParts = parts.slice(0, -1);
      const type = header.type as string | null;
      const role = roleOf(parts);
      if (role !== 'entry' || (type !== 'file' && type !== 'contiguous-file')) await drain(data, header);
      if (role === 'opaque') return this.markOpaque(dirParts, name);
      if (role === 'whiteout') return await this.whiteout(dirParts, base.slice(WHITEOUT_PREFIX.length), name);
      if (role === 'ignored') return;

      const meta = metadataOf(header, pax);
      if (parts.length === 0) {
        if (type !== 'directory') throw this.unsafe(`entry ${JSON.stringify(name)} would replace the snapshot root`);
        return this.rootDirectory(meta, this.xattrsOf(header));
      }
      switch (type) {
        case 'file':
        case 'contiguous-file':
          return await this.file(parts, name, meta, data, this.xattrsOf(header));
        case 'directory':
          return await this.directory(parts, name, meta, this.xattrsOf(header));
        case 'symlink':
          return await this.symlink(parts, name, header.linkname, meta, this.xattrsOf(header));
        case 'link':
          return await this.hardlink(parts, name, header.linkname);
        case 'character-device':
        case 'block-device':
        case 'fifo':
          return await this.specialFile(parts, name, type, header, meta, this.xattrsOf(header));
        default:
          throw this.unsafe(`entry ${JSON.stringify(name)} has a tar entry type berth cannot unpack ` + '(such as a GNU sparse file or a volume label)');
      }
    } catch (err) {
      if (err instanceof BerthError || err instanceof TarError) throw err;
      throw this.fsError(err, `unpacking entry ${JSON.stringify(name)}`);
    }
  }

  /** Splits a tar name into clean components; refuses absolute names and `..`. */
  private normalize(name: string, what: string): string[] {
    if (name.startsWith('/')) throw this.unsafe(`${what} has an absolute name and would escape the snapshot`);
    const parts: string[] = [];
    for (const part of name.split('/')) {
      if (part === '' || part === '.') continue;
      if (part === '..') throw this.unsafe(`${what} would escape the snapshot`);
      parts.push(part);
    }
    return parts;
  }

  private abs(rel: string): string {
    return rel === '' ? this.root : `${this.root}/${rel}`;
  }

  /**
   * Makes every parent of `parts` a real directory: missing ones are created (0755,
   * root), whiteouts this layer made are turned into opaque directories, symlinks and
   * other files are refused.
   */
  private ensureParents(parts: readonly string[], name: string): void {
    const n = parts.length - 1;
    if (n <= 0 || this.dirs.has(parts.slice(0, n).join('/'))) return;
    let rel = '';
    for (let i = 0; i < n; i++) {
      rel = i === 0 ? (parts[0] as string) : `${rel}/${parts[i] as string}`;
      if (this.dirs.has(rel)) continue;
      const path = this.abs(rel);
      const st = fs.lstatSync(path, { throwIfNoEntry: false });
      if (st === undefined) {
        this.implicitDirectory(path);
      } else if (st.isSymbolicLink()) {
        throw this.unsafe(`entry ${JSON.stringify(name)} would be written through the symlink ${JSON.stringify(rel)}`);
      } else if (!st.isDirectory()) {
        if (!this.whiteouts.has(rel)) {
          const needs = `needs ${JSON.stringify(rel)} to be a directory, but it is not`;
          throw this.unsafe(`entry ${JSON.stringify(name)} ${needs}`);
        }
        // Deleted in a lower layer and recreated here: only this layer's content shows.
        fs.unlinkSync(path);
        this.whiteouts.delete(rel);
        this.implicitDirectory(path);
        this.opaque.add(rel);
      }
      this.dirs.add(rel);
    }
  }

  private implicitDirectory(path: string): void {
    fs.mkdirSync(path, 0o755);
    // Explicitly, so neither the umask nor a setgid parent decides.
    fs.lchownSync(path, 0, 0);
    fs.chmodSync(path, 0o755);
  }

  /**
   * Creates the node of a new entry with `make`, which must fail with EEXIST rather
   * than follow anything already at the path (O_EXCL, mkdir, symlink, link do). What an
   * earlier entry left there is removed and `make` retried, except that an existing
   * directory is kept for a directory entry. Trying first saves an lstat per entry.
   */
  private async create(parts: readonly string[], name: string, isDir: boolean, make: () => void): Promise<void> {
    this.ensureParents(parts, name);
    try {
      return make();
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST') throw err;
    }
    if (await this.clear(parts, isDir)) make();
  }

  /** Removes whatever is at the path of a new entry; false if a directory is kept for a directory. */
  private async clear(parts: readonly string[], isDir: boolean): Promise<boolean> {
    const rel = parts.join('/');
    const st = fs.lstatSync(this.abs(rel), { throwIfNoEntry: false });
    if (st === undefined) return true;
    if (isDir && st.isDirectory()) return false;
    // Deleted in a lower layer and recreated here: only this layer's content shows.
    const becomesOpaque = isDir && this.whiteouts.has(rel);
    await this.remove(rel, st.isDirectory());
    if (becomesOpaque) this.opaque.add(rel);
    return true;
  }

  /** Removes a path this layer created earlier, and forgets what was pending for it. */
  private async remove(rel: string, isDir: boolean): Promise<void> {
    const prefix = `${rel}/`;
    const under = (key: string): boolean => key === rel || (isDir && key.startsWith(prefix));
    // The inode may live on through a hardlink, so its xattrs are applied now.
    if ([...this.xattrs.keys()].some(under)) await this.flushXattrs();
    const path = this.abs(rel);
    if (isDir) fs.rmSync(path, { recursive: true, force: true });
    else fs.unlinkSync(path);
    for (const set of [this.dirs, this.whiteouts, this.opaque]) {
      if (isDir) for (const key of set) if (under(key)) set.delete(key);
      set.delete(rel);
    }
    if (isDir) for (const key of this.dirTimes.keys()) if (under(key)) this.dirTimes.delete(key);
    this.dirTimes.delete(rel);
  }

  private rootDirectory(meta: Metadata, xattrs: Xattrs): void {
    fs.lchownSync(this.root, meta.uid, meta.gid);
    fs.chmodSync(this.root, meta.mode);
    this.dirTimes.set('', meta.times);
    this.queueXattrs('', xattrs);
  }

  private async directory(parts: readonly string[], name: string, meta: Metadata, xattrs: Xattrs): Promise<void> {
    const rel = parts.join('/');
    const path = this.abs(rel);
    await this.create(parts, name, true, () => fs.mkdirSync(path, 0o700));
    this.dirs.add(rel);
    fs.lchownSync(path, meta.uid, meta.gid);
    fs.chmodSync(path, meta.mode); // after chown, which clears setgid
    this.dirTimes.set(rel, meta.times);
    this.queueXattrs(rel, xattrs);
  }

  private async file(parts: readonly string[], name: string, meta: Metadata, data: EntryStream, xattrs: Xattrs): Promise<void> {
    const rel = parts.join('/');
    const path = this.abs(rel);
    let fd = -1;
    await this.create(parts, name, false, () => (fd = fs.openSync(path, OPEN_NEW_FILE, 0o600)));
    try {
      this.fileBytes += meta.size <= SYNC_WRITE_MAX ? await writeEntryDataSync(fd, data) : await writeEntryData(fd, data);
      fs.fchownSync(fd, meta.uid, meta.gid);
      fs.fchmodSync(fd, meta.mode); // after chown, which clears setuid and setgid
      fs.futimesSync(fd, meta.times[0], meta.times[1]);
    } finally {
      fs.closeSync(fd);
    }
    this.queueXattrs(rel, xattrs);
  }

  private async symlink(parts: readonly string[], name: string, target: string | null, meta: Metadata, xattrs: Xattrs): Promise<void> {
    const rel = parts.join('/');
    if (!target) throw this.unsafe(`symlink ${JSON.stringify(name)} has an empty target`);
    const path = this.abs(rel);
    await this.create(parts, name, false, () => fs.symlinkSync(target, path));
    fs.lchownSync(path, meta.uid, meta.gid);
    fs.lutimesSync(path, meta.times[0], meta.times[1]);
    this.queueXattrs(rel, xattrs);
  }

  /** A hardlink shares its target's inode, owner, mode, times and xattrs: nothing more to set. */
  private async hardlink(parts: readonly string[], name: string, linkname: string | null): Promise<void> {
    const what = `hardlink ${JSON.stringify(name)}`;
    if (!linkname) throw this.unsafe(`${what} has an empty target`);
    if (linkname.startsWith('/')) {
      throw this.unsafe(`${what} points to the absolute path ${JSON.stringify(linkname)}, outside the snapshot`);
    }
    const targetParts = this.normalize(linkname, what);
    const rel = parts.join('/');
    const targetRel = targetParts.join('/');
    const missing = this.unsafe(`${what} points to ${JSON.stringify(linkname)}, which this layer does not contain`);
    if (targetRel === rel) throw this.unsafe(`${what} points to itself`);
    if (!this.existingParents(targetParts, what)) throw missing;
    const st = fs.lstatSync(this.abs(targetRel), { throwIfNoEntry: false });
    if (st === undefined || targetRel === '') throw missing;
    if (st.isDirectory()) throw this.unsafe(`${what} points to the directory ${JSON.stringify(linkname)}`);
    // link(2) does not follow a symlink in its last component, and the parents are real directories.
    try {
      await this.create(parts, name, false, () => fs.linkSync(this.abs(targetRel), this.abs(rel)));
    } catch (err) {
      // Replacing the entry's path removed the target (it lived below it).
      if (errnoOf(err) === 'ENOENT') throw missing;
      throw err;
    }
  }

  /** Whether every parent of `parts` is a real directory (never creating one). */
  private existingParents(parts: readonly string[], what: string): boolean {
    let rel = '';
    for (let i = 0; i < parts.length - 1; i++) {
      rel = i === 0 ? (parts[0] as string) : `${rel}/${parts[i] as string}`;
      if (this.dirs.has(rel)) continue;
      const st = fs.lstatSync(this.abs(rel), { throwIfNoEntry: false });
      if (st?.isSymbolicLink()) throw this.unsafe(`${what} points through the symlink ${JSON.stringify(rel)}`);
      if (!st?.isDirectory()) return false;
      this.dirs.add(rel);
    }
    return true;
  }

  private async specialFile(
    parts: readonly string[],
    name: string,
    type: 'character-device' | 'block-device' | 'fifo',
    header: Header,
    meta: Metadata,
    xattrs: Xattrs,
  ): Promise<void> {
    const rel = parts.join('/');
    this.ensureParents(parts, name);
    await this.clear(parts, false); // cleared first: mknod is a separate tool
    const path = this.abs(rel);
    const args = type === 'fifo' ? [path, 'p'] : [path, type === 'character-device' ? 'c' : 'b', String(header.devmajor), String(header.devminor)];
    await this.mknod(args);
    fs.lchownSync(path, meta.uid, meta.gid);
    fs.chmodSync(path, meta.mode); // path is the node just made, not a symlink
    fs.lutimesSync(path, meta.times[0], meta.times[1]);
    this.queueXattrs(rel, xattrs);
  }

  /**
   * `.wh.<name>` → a 0:0 character device `<name>` beside it. Whiteouts are hardlinks of
   * one device made per layer, as overlayfs itself shares whiteout inodes: one mknod
   * process per layer instead of one per deleted file (their owner and times mean
   * nothing to overlayfs).
   */
  private async whiteout(dirParts: readonly string[], hidden: string, name: string): Promise<void> {
    if (hidden === '' || hidden === '.' || hidden === '..') {
      throw this.unsafe(`whiteout ${JSON.stringify(name)} names no valid entry`);
    }
    const parts = [...dirParts, hidden];
    const rel = parts.join('/');
    const link = (): void => fs.linkSync(this.whiteoutDevices[this.whiteoutDevices.length - 1] ?? '', this.abs(rel));
    if (this.whiteoutDevices.length === 0) await this.newWhiteoutDevice();
    try {
      await this.create(parts, name, false, link);
    } catch (err) {
      if (errnoOf(err) !== 'EMLINK') throw err;
      await this.newWhiteoutDevice();
      await this.create(parts, name, false, link);
    }
    this.whiteouts.add(rel);
  }

  /**
   * Makes a whiteout device, first or after the last reached the link limit. It has a
   * `.wh..wh.` name, which no layer entry can create or replace (they are skipped), and
   * is removed at the end.
   */
  private async newWhiteoutDevice(): Promise<void> {
    const path = `${this.root}/${WHITEOUT_META_PREFIX}berth-whiteout-${this.whiteoutDevices.length}`;
    await this.mknod([path, 'c', '0', '0']);
    this.whiteoutDevices.push(path);
  }

  /** `.wh..wh..opq` in D → D is opaque (D is created if the layer has not yet). */
  private markOpaque(dirParts: readonly string[], name: string): void {
    this.ensureParents([...dirParts, OPAQUE_MARKER], name);
    this.opaque.add(dirParts.join('/'));
  }

  private xattrsOf(header: Header): Xattrs {
    const pax = header.pax as Record<string, string> | null | undefined;
    if (!pax) return [];
    const out: Xattrs = [];
    for (const key of Object.keys(pax)) {
      if (!key.startsWith(XATTR_PAX_PREFIX)) continue;
      const raw = this.entryXattrs?.get(key);
      if (raw === undefined || raw.toString('utf8') !== pax[key]) {
        throw new BerthError(
          'DataLoss',
          `layer ${this.layer}: corrupt tar stream: the PAX record ${key} of ${JSON.stringify(header.name)} reads inconsistently`,
        );
      }
      const name = key.slice(XATTR_PAX_PREFIX.length);
      // The overlay's own metadata must come from berth, never from a layer.
      if (name === '' || name.startsWith('trusted.overlay.') || name.startsWith('user.overlay.')) continue;
      out.push([name, raw]);
    }
    return out;
  }

  private queueXattrs(rel: string, xattrs: Xattrs): void {
    if (xattrs.length > 0) this.xattrs.set(rel, xattrs);
  }

  private async flushXattrs(): Promise<void> {
    if (this.xattrs.size === 0) return;
    const batch = [...this.xattrs].map(([rel, list]) => [this.abs(rel), list] as const);
    this.xattrs.clear();
    // Layers may carry xattrs this filesystem cannot hold (user.* on a symlink, say);
    // like other runtimes we skip those rather than refuse the image.
    await this.setfattr(batch, true);
  }

  /** Applies the pending xattrs and opaque markers, then the directory times, deepest first. */
  private async finish(): Promise<void> {
    for (const path of this.whiteoutDevices) fs.unlinkSync(path);
    await this.flushXattrs();
    if (this.opaque.size > 0) {
      const opaque = Buffer.from('y');
      await this.setfattr(
        [...this.opaque].map((rel) => [this.abs(rel), [['trusted.overlay.opaque', opaque]]] as const),
        false,
      );
    }
    const byDepth = [...this.dirTimes].sort(([a], [b]) => depth(b) - depth(a));
    try {
      for (const [rel, [atime, mtime]] of byDepth) fs.lutimesSync(this.abs(rel), atime, mtime);
    } catch (err) {
      throw this.fsError(err, 'setting directory times');
    }
  }

  private async mknod(args: string[]): Promise<void> {
    const { code, stderr, error } = await run('mknod', args, undefined);
    if (error !== undefined) {
      const msg = `layer ${this.layer}: device nodes need mknod on the host: ${messageOf(error)}`;
      throw new BerthError('FailedPrecondition', msg);
    }
    if (code !== 0) throw this.fsError(new Error(stderr.trim()), `mknod ${args.join(' ')}`);
  }

  /** One `setfattr --restore` run for many paths; -h so symlinks are never followed. */
  private async setfattr(batch: ReadonlyArray<readonly [string, Xattrs]>, lenient: boolean): Promise<void> {
    let script = '';
    for (const [path, list] of batch) {
      script += `# file: ${quote(path)}\n`;
      for (const [name, value] of list) script += `${quote(name)}=0x${value.toString('hex')}\n`;
      script += '\n';
    }
    const { code, stderr, error } = await run('setfattr', ['-h', '--restore=-'], script);
    if (error !== undefined) {
      const needs = 'extended attributes and opaque directories need setfattr on the host (Debian package attr)';
      throw new BerthError('FailedPrecondition', `layer ${this.layer}: ${needs}: ${messageOf(error)}`);
    }
    if (code === 0) return;
    const lines = stderr
      .trim()
      .split('\n')
      .filter((l) => l !== '');
    const serious = lenient ? lines.filter((l) => !/: Operation not (supported|permitted)$/.test(l)) : lines;
    if (serious.length > 0 || lines.length === 0) {
      const why = (serious[0] ?? `setfattr exited with ${code}`).slice(0, 500);
      throw new BerthError('FailedPrecondition', `layer ${this.layer}: setting extended attributes failed: ${why}`);
    }
  }

  private unsafe(msg: string): BerthError {
    return new BerthError('FailedPrecondition', `layer ${this.layer}: ${msg}`);
  }

  private fsError(err: unknown, doing: string): BerthError {
    const code = errnoOf(err);
    const kind = code === 'ENOSPC' || code === 'EDQUOT' ? 'ResourceExhausted' : 'Internal';
    return new BerthError(kind, `layer ${this.layer}: ${doing}: ${messageOf(err)}`, { cause: err });
  }

  private toBerthError(err: unknown): unknown {
    if (this.opts.signal?.aborted && err === this.opts.signal.reason) return err;
    if (err instanceof BerthError) return err;
    if (err instanceof TarError) {
      return new BerthError('DataLoss', `layer ${this.layer}: corrupt tar stream: ${err.message}`);
    }
    return new BerthError('Internal', `layer ${this.layer}: ${messageOf(err)}`, { cause: err });
  }
}

/** What a layer entry stands for in overlay terms. */
function roleOf(parts: readonly string[]): 'entry' | 'whiteout' | 'opaque' | 'ignored' {
  const base = parts[parts.length - 1] ?? '';
  if (!base.startsWith(WHITEOUT_PREFIX)) {
    return parts.some((p) => p.startsWith(WHITEOUT_META_PREFIX)) ? 'ignored' : 'entry';
  }
  if (parts.some((p, i) => i < parts.length - 1 && p.startsWith(WHITEOUT_META_PREFIX))) return 'ignored';
  if (base === OPAQUE_MARKER) return 'opaque';
  return base.startsWith(WHITEOUT_META_PREFIX) ? 'ignored' : 'whiteout';
}

interface Metadata {
  size: number;
  uid: number;
  gid: number;
  mode: number;
  times: Times;
}

/** Owner, mode and times, preferring PAX records (large ids, sub-second times). */
function metadataOf(header: Header, pax: Record<string, string> | undefined): Metadata {
  const paxInt = (key: string): number | undefined => {
    const v = pax?.[key];
    return v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined;
  };
  const paxTime = (key: string): number | undefined => {
    const v = pax?.[key];
    const t = v === undefined ? NaN : Number(v);
    return Number.isFinite(t) ? t : undefined;
  };
  const mtime = paxTime('mtime') ?? header.mtime.getTime() / 1000;
  return {
    size: header.size,
    uid: paxInt('uid') ?? header.uid,
    gid: paxInt('gid') ?? header.gid,
    mode: header.mode & 0o7777,
    times: [paxTime('atime') ?? mtime, mtime],
  };
}

function depth(rel: string): number {
  return rel === '' ? 0 : rel.split('/').length;
}

/** Quotes a path or xattr name for `setfattr --restore`, which reads `\ooo` escapes. */
function quote(s: string): string {
  let out = '';
  for (const byte of Buffer.from(s, 'utf8')) {
    const safe =
      (byte >= 0x30 && byte <= 0x39) ||
      (byte >= 0x41 && byte <= 0x5a) ||
      (byte >= 0x61 && byte <= 0x7a) ||
      byte === 0x2e ||
      byte === 0x2f ||
      byte === 0x5f ||
      byte === 0x2d;
    out += safe ? String.fromCharCode(byte) : `\\${byte.toString(8).padStart(3, '0')}`;
  }
  return out;
}

/** Resolves once a paused writable can take more, or has been destroyed. */
function drained(stream: Extract): Promise<void> {
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
async function drain(data: EntryStream, header: Header): Promise<void> {
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
function writeEntryData(fd: number, data: EntryStream): Promise<number> {
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
async function writeEntryDataSync(fd: number, data: EntryStream): Promise<number> {
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
function writeAll(fd: number, bufs: Buffer[], cb: (err: Error | null, n: number) => void, done = 0): void {
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

/** A stream of uncompressed tar bytes over the blob. */
interface Decompressor {
  readonly output: Readable;
  /** Called at the end of `output`: throws if the decompressor reported an error. */
  finish(): Promise<void>;
  /** The BerthError for an error thrown while reading `output`. */
  explain(err: unknown): unknown;
  /** Stops reading the blob and kills any child process. */
  destroy(): void;
  /** Settles once no child process is left. */
  readonly closed: Promise<void>;
}

function openDecompressor(source: Readable, compression: LayerCompression, layer: string): Decompressor {
  let sourceError: unknown;
  source.on('error', (err) => (sourceError ??= err));
  const fromSource = (): unknown =>
    sourceError instanceof BerthError
      ? sourceError
      : new BerthError('Unavailable', `layer ${layer}: reading the blob failed: ${messageOf(sourceError)}`, {
          cause: sourceError,
        });

  if (compression === 'none') {
    return {
      output: source,
      finish: async () => {
        if (sourceError !== undefined) throw fromSource();
      },
      explain: (err) => (err instanceof BerthError ? err : sourceError !== undefined ? fromSource() : err),
      destroy: () => source.destroy(),
      closed: Promise.resolve(),
    };
  }

  if (compression === 'gzip') {
    const gunzip = createGunzip({ chunkSize: 1024 * 1024 });
    pipeline(source, gunzip, () => {
      // errors surface through the gunzip stream being read
    });
    return {
      output: gunzip,
      finish: async () => {
        if (sourceError !== undefined) throw fromSource();
      },
      explain: (err) => {
        if (err instanceof BerthError) return err;
        if (sourceError !== undefined) return fromSource();
        return new BerthError('DataLoss', `layer ${layer}: corrupt gzip data: ${messageOf(err)}`);
      },
      destroy: () => {
        source.destroy();
        gunzip.destroy();
      },
      closed: Promise.resolve(),
    };
  }

  // Node 20 has no zstd: the host's zstd decompresses, fed from the blob.
  let child: ChildProcess | undefined;
  let spawnError: unknown;
  try {
    child = spawnProcess('zstd', ['-d', '-c', '-q'], { stdio: ['in', 'out', 'out'], env: { ...process.env, LC_ALL: 'C' } });
  } catch (err) {
    spawnError = err;
  }
  const stderr = new BoundedOutput(child?.stderr, 4096);
  const closed = child ? Promise.all([child.exited, stderr.closed]).then(([status]) => status.code) : Promise.resolve(null);
  if (child?.stdin) {
    pipeline(source, child.stdin, () => {
      // EPIPE when zstd stops early on bad data: its exit status says why
    });
  }
  const failed = (): BerthError => {
    if (spawnError !== undefined) {
      return new BerthError('FailedPrecondition', `layer ${layer}: zstd layers need the zstd tool on the host (Debian package zstd): ${messageOf(spawnError)}`);
    }
    return new BerthError('DataLoss', `layer ${layer}: corrupt zstd data: ${stderr.text().trim() || 'zstd failed'}`);
  };
  return {
    output: child?.stdout ?? Readable.from([]),
    finish: async () => {
      const code = await closed;
      if (sourceError !== undefined) throw fromSource();
      if (code !== 0 || spawnError !== undefined) throw failed();
    },
    explain: (err) => (err instanceof BerthError ? err : sourceError !== undefined ? fromSource() : failed()),
    destroy: () => {
      source.destroy();
      child?.closeStdio();
      child?.kill('SIGKILL');
    },
    closed: closed.then(() => undefined),
  };
}

/** Runs a short host tool to completion (never rejects). */
async function run(cmd: string, args: string[], input: string | undefined): Promise<{ code: number | null; stderr: string; error?: unknown }> {
  try {
    const res = await execProcess(cmd, args, { env: { ...process.env, LC_ALL: 'C' }, maxBuffer: 8192, ...(input !== undefined ? { input } : {}) });
    return { code: res.code, stderr: res.stderr };
  } catch (error) {
    return { code: null, stderr: '', error };
  }
}
