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
 *
 * Sparse members (GNU 'S', PAX 0.0/0.1/1.0) are written with their holes kept, never
 * as zeroes. PAX records are parsed strictly: a malformed one refuses the layer.
 *
 * The pieces: decompress.ts opens the blob, pax-xattrs.ts walks the raw tar blocks just
 * before tar-stream (raw xattr values, strict PAX records, sparse maps from sparse.ts),
 * tar-entry.ts reads each entry's role, metadata and xattrs, layer-writer.ts writes the
 * entries (with overlay-marks.ts for whiteouts and opaque directories, xattr-batch.ts for
 * xattrs, entry-data.ts and sparse-writer.ts for file data, host-tools.ts for mknod and
 * setfattr); this file drives them.
 */
import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import type { Extract, Header } from 'tar-stream';
import { BerthError, messageOf } from '../../common/errors.js';
import { openDecompressor, type Decompressor, type LayerCompression } from './decompress.js';
import { drain, drained } from './entry-data.js';
import { LayerWriter } from './layer-writer.js';
import { PaxXattrScanner, type RawXattrs } from './pax-xattrs.js';
import type { SparseMember } from './sparse.js';
import { fsError, metadataOf, normalize, roleOf, TarError, unsafe, WHITEOUT_PREFIX, xattrsOf, type EntryStream } from './tar-entry.js';

export type { LayerCompression } from './decompress.js';

/** Limits and context of one {@link unpackLayer} call. */
export interface UnpackOptions {
  /** Digest of the layer blob, used in every error message ("layer sha256:…: …"). */
  layer: string;
  /**
   * Upper bound on the bytes of uncompressed tar stream read; beyond it → ResourceExhausted
   * ("layer …: expands beyond the configured limit of N bytes (images.max_layer_bytes)").
   */
  maxBytes: number;
  /**
   * What `maxBytes` is, for the message, when another limit than the layer cap set it
   * (default "the configured limit of <maxBytes> bytes (images.max_layer_bytes)").
   */
  limitText?: string;
  /**
   * The per-layer cap (images.max_layer_bytes; default `maxBytes`): a sparse file's real
   * size (its holes included) may not exceed it → ResourceExhausted.
   */
  maxLayerBytes?: number;
  /**
   * Upper bound on the inodes the layer makes: its tar entries plus the parent directories
   * their paths need but the layer does not list (default 1,000,000) → ResourceExhausted
   * likewise. Each such directory also counts {@link IMPLICIT_DIRECTORY_BYTES} against
   * `maxBytes`.
   */
  maxEntries?: number;
  /**
   * Limits shared with other unpacks (the image cap, free space and inodes on the image
   * filesystem: see pull-limits.ts), granted as the unpack goes. Called with the totals
   * the unpack has used and needs; answers totals at least `need`, or rejects with a
   * ResourceExhausted that names the limit. Without it only `maxBytes` and `maxEntries` bound
   * the unpack.
   */
  grant?: GrantFn;
  signal?: AbortSignal;
}

/** Bytes (of tar stream, plus a block per implicit directory) and inodes of one unpack. */
export interface Budget {
  bytes: number;
  entries: number;
}

/** See {@link UnpackOptions.grant}. */
export type GrantFn = (used: Budget, need: Budget) => Promise<Budget>;

/** What a directory the layer does not list, but its entries' paths need, counts for in bytes: one block. */
export const IMPLICIT_DIRECTORY_BYTES = 4096;

/** What {@link unpackLayer} read and wrote. */
export interface UnpackResult {
  /** "sha256:<hex>" of the whole uncompressed tar stream (the OCI diff ID), computed while unpacking. */
  diffId: string;
  /** Uncompressed tar bytes read. */
  tarBytes: number;
  /** Bytes of regular-file content written. */
  fileBytes: number;
  /** Tar entries read. */
  entries: number;
  /** Parent directories made that the layer does not list (inodes beyond `entries`). */
  implicitDirectories: number;
  /** What the unpack counted against its byte limits: `tarBytes` plus a block per implicit directory. */
  chargedBytes: number;
}

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

const DEFAULT_MAX_ENTRIES = 1_000_000;

/**
 * One unpack: the uncompressed stream is hashed, counted and parsed, and each entry is
 * handed to the {@link LayerWriter} according to its overlay role and tar type.
 */
class LayerUnpacker {
  private readonly layer: string;
  private readonly maxEntries: number;
  private readonly hash = createHash('sha256');
  private tarBytes = 0;
  private entries = 0;
  private readonly writer: LayerWriter;
  /** What {@link UnpackOptions.grant} has granted so far (unbounded without it). */
  private granted: Budget;
  /** The grant being asked for, if any (feed and consume may both need one). */
  private granting: Promise<void> | undefined;
  /** The raw xattr values of the tar stream, read alongside tar-stream. */
  private readonly pax = new PaxXattrScanner();
  /** Those of the entry being unpacked. */
  private entryXattrs: RawXattrs | undefined;

  constructor(
    root: string,
    private readonly opts: UnpackOptions,
  ) {
    this.layer = opts.layer;
    this.maxEntries = opts.maxEntries ?? DEFAULT_MAX_ENTRIES;
    this.writer = new LayerWriter(root, opts.layer, () => this.beforeImplicitDirectory());
    this.granted = opts.grant ? { bytes: 0, entries: 0 } : { bytes: Infinity, entries: Infinity };
  }

  /** Bytes counted against the limits: the tar stream and a block per implicit directory. */
  private get chargedBytes(): number {
    return this.tarBytes + this.writer.implicitDirectories * IMPLICIT_DIRECTORY_BYTES;
  }

  /** Inodes counted against the limits: entries and implicit directories. */
  private get inodes(): number {
    return this.entries + this.writer.implicitDirectories;
  }

  private overBytes(): BerthError {
    const limit = this.opts.limitText ?? `the configured limit of ${this.opts.maxBytes} bytes (images.max_layer_bytes)`;
    return new BerthError('ResourceExhausted', `layer ${this.layer}: expands beyond ${limit}`);
  }

  private overEntries(): BerthError {
    const implicit = this.writer.implicitDirectories;
    const counting = implicit > 0 ? ` (counting the ${implicit} parent directories its entries' paths need but it does not list)` : '';
    return new BerthError('ResourceExhausted', `layer ${this.layer}: has more than ${this.maxEntries} entries${counting}, the limit for one layer`);
  }

  /** Refuses an implicit directory over the layer's limits (the shared ones were granted ahead, in onEntry). */
  private beforeImplicitDirectory(): void {
    if (this.inodes + 1 > this.maxEntries) throw this.overEntries();
    if (this.chargedBytes + IMPLICIT_DIRECTORY_BYTES > this.opts.maxBytes) throw this.overBytes();
  }

  /** Whether the grant covers these totals (without asking). */
  private covers(bytes: number, entries: number): boolean {
    return bytes <= this.granted.bytes && entries <= this.granted.entries;
  }

  /** Asks for grants until they cover these totals; one request at a time. */
  private async cover(bytes: number, entries: number): Promise<void> {
    const grant = this.opts.grant;
    while (grant && !this.covers(bytes, entries)) {
      if (!this.granting) {
        const need = { bytes: Math.max(bytes, this.granted.bytes), entries: Math.max(entries, this.granted.entries) };
        this.granting = grant({ bytes: this.chargedBytes, entries: this.inodes }, need)
          .then((g) => {
            if (g.bytes < need.bytes || g.entries < need.entries)
              throw new Error(`granted less than asked for (${JSON.stringify(g)} < ${JSON.stringify(need)})`);
            this.granted = g;
          })
          .finally(() => (this.granting = undefined));
      }
      await this.granting;
    }
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
      if (!failure) await this.writer.finish().catch(fail);
    } finally {
      signal?.removeEventListener('abort', onAbort);
      if (failure) decompressor.destroy();
      await decompressor.closed;
    }
    if (failure) throw this.toBerthError(failure.err);
    return {
      diffId: `sha256:${this.hash.digest('hex')}`,
      tarBytes: this.tarBytes,
      fileBytes: this.writer.fileBytes,
      entries: this.entries,
      implicitDirectories: this.writer.implicitDirectories,
      chargedBytes: this.chargedBytes,
    };
  }

  /** Pumps the uncompressed stream into the tar parser, hashing and counting it. */
  private async feed(decompressor: Decompressor, extract: Extract): Promise<void> {
    try {
      for await (const chunk of decompressor.output) {
        // Granted before it counts as used (a grant is asked with what is used so far).
        const next = this.chargedBytes + chunk.length;
        if (next > this.opts.maxBytes) throw this.overBytes();
        if (!this.covers(next, 0)) await this.cover(next, 0);
        this.tarBytes += chunk.length;
        this.hash.update(chunk);
        let parsed: Buffer[];
        try {
          parsed = this.pax.push(chunk);
        } catch (err) {
          throw new BerthError('DataLoss', `layer ${this.layer}: corrupt tar stream: ${messageOf(err)}`);
        }
        for (const part of parsed) {
          if (!extract.write(part)) await drained(extract);
          if (extract.destroying) return;
        }
      }
    } catch (err) {
      throw decompressor.explain(err);
    }
    await decompressor.finish();
    for (const part of this.pax.flush()) extract.write(part);
    extract.end(undefined);
  }

  private async consume(extract: Extract): Promise<void> {
    try {
      for await (const entry of extract) {
        await this.onEntry(entry.header, entry as unknown as EntryStream);
        if (this.writer.xattrs.full) await this.writer.xattrs.flush();
      }
    } catch (err) {
      throw err instanceof BerthError ? err : new TarError(messageOf(err));
    }
  }

  private async onEntry(header: Header, data: EntryStream): Promise<void> {
    if (++this.entries + this.writer.implicitDirectories > this.maxEntries) throw this.overEntries();
    const scanned = this.pax.takeEntry(this.entries, header);
    this.entryXattrs = scanned.xattrs;
    const sparse = scanned.sparse;
    if (sparse) this.checkRealSize(sparse, header.name);
    // The PAX sparse formats 0.1 and 1.0 give the header a made-up name and the real one in GNU.sparse.name.
    const name = sparse?.name ?? header.name;
    try {
      const parts = normalize(name, `entry ${JSON.stringify(name)}`, this.layer);
      // Ahead of the writer, which may make a directory for each parent (synchronously).
      const bytes = this.chargedBytes + parts.length * IMPLICIT_DIRECTORY_BYTES;
      if (!this.covers(bytes, this.inodes + parts.length)) await this.cover(bytes, this.inodes + parts.length);
      const pax = (header.pax ?? undefined) as Record<string, string> | undefined;
      if (sparse && header.type !== 'file') {
        throw new TarError(`entry ${JSON.stringify(name)} has a sparse map but is not a regular file`);
      }
      const base = parts[parts.length - 1] ?? '';
      const dirParts = parts.slice(0, -1);
      const type = header.type as string | null;
      const role = roleOf(parts);
      if (role !== 'entry' || (type !== 'file' && type !== 'contiguous-file')) await drain(data, header);
      if (role === 'opaque') return this.writer.markOpaque(dirParts, name);
      if (role === 'whiteout') return await this.writer.whiteout(dirParts, base.slice(WHITEOUT_PREFIX.length), name);
      if (role === 'ignored') return;

      const meta = metadataOf(header, pax);
      if (parts.length === 0) {
        if (type !== 'directory') throw unsafe(this.layer, `entry ${JSON.stringify(name)} would replace the snapshot root`);
        return this.writer.rootDirectory(meta, xattrsOf(header, this.entryXattrs, this.layer));
      }
      switch (type) {
        case 'file':
        case 'contiguous-file':
          return await this.writer.file(parts, name, meta, data, xattrsOf(header, this.entryXattrs, this.layer), sparse);
        case 'directory':
          return await this.writer.directory(parts, name, meta, xattrsOf(header, this.entryXattrs, this.layer));
        case 'symlink':
          return await this.writer.symlink(parts, name, header.linkname, meta, xattrsOf(header, this.entryXattrs, this.layer));
        case 'link':
          return await this.writer.hardlink(parts, name, header.linkname);
        case 'character-device':
        case 'block-device':
        case 'fifo':
          return await this.writer.specialFile(parts, name, type, header, meta, xattrsOf(header, this.entryXattrs, this.layer));
        default:
          throw unsafe(
            this.layer,
            `entry ${JSON.stringify(name)} has a tar entry type berth cannot unpack ` + '(such as a volume label or a multi-volume continuation)',
          );
      }
    } catch (err) {
      if (err instanceof BerthError || err instanceof TarError) throw err;
      throw fsError(this.layer, err, `unpacking entry ${JSON.stringify(name)}`);
    }
  }

  /**
   * A sparse file's holes take no disk (berth writes them as holes, where containerd
   * writes them dense), so only its data bytes count towards the layer's usage
   * (`fileBytes`, the snapshot's size); but its real size is what every reader and tool
   * sees, so it may not exceed the per-layer cap: a 1 KB layer must not declare a
   * 2^60-byte file.
   */
  private checkRealSize(sparse: SparseMember, name: string): void {
    const cap = this.opts.maxLayerBytes ?? this.opts.maxBytes;
    if (sparse.realSize <= cap) return;
    const what = `sparse file ${JSON.stringify(sparse.name ?? name)} is ${sparse.realSize} bytes with its holes`;
    throw new BerthError('ResourceExhausted', `layer ${this.layer}: ${what}, beyond the configured limit of ${cap} bytes (images.max_layer_bytes)`);
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
