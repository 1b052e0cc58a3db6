/**
 * Snapshots: the filesystems images and containers are made of.
 *
 * The life of a snapshot, for a newcomer:
 *
 * 1. **Unpack a layer.** A pull unpacks each layer of an image into its own directory.
 *    The snapshot is first recorded as `preparing` (so a crash leaves a row that
 *    recovery can clean up, never an unknown directory), the layer is unpacked into
 *    `<root>/snapshots/<id>/fs` in overlayfs form (whiteouts as 0:0 character devices,
 *    opaque directories marked by xattr) from the verified blob, on a worker thread, and
 *    its diff ID is checked.
 *    Layers unpack in parallel; they are then `committed` bottom-up, each under its key,
 *    the layer's **chain ID**: a digest of the layer and everything beneath it. Two
 *    images that share their bottom layers share those snapshots.
 * 2. **Stack them.** A committed snapshot's parent is the snapshot of the layer below it;
 *    the chain from the top snapshot down to the bottom is the image's root filesystem,
 *    mounted as overlayfs lowerdirs (top first).
 * 3. **Make a container's root.** (containers issue) An `active` snapshot on top of an
 *    image's top snapshot gets an empty `fs` (the overlay upperdir) and `work`; its
 *    mount is overlay(lowerdirs = the chain, upperdir = fs, workdir = work).
 * 4. **Remove.** A snapshot goes when nothing uses it: no image lists its chain ID, no
 *    other snapshot has it as parent, and no pull in flight holds a lease on it. The row
 *    goes first, then the directory; recovery removes directories that have no row.
 */
import type { LayerCompression } from '../manifest.js';
import type { StreamSink } from './unpack-pool.js';
import type { GrantFn } from './unpack.js';

export interface SnapshotInfo {
  id: number;
  key: string;
  parentId: number | null;
  kind: 'preparing' | 'committed' | 'active';
  sizeBytes: number;
  inodes: number;
  /** The directory holding the snapshot's files. */
  dir: string;
}

export interface ExtractRequest {
  /** The layer's diff ID from the image config: the unpacked tar must hash to it. */
  diffId: string;
  /** Digest of the layer blob, for messages. */
  layer: string;
  compression: LayerCompression;
  /** The verified layer blob in the content store. */
  blobPath: string;
  maxBytes: number;
  /** What set `maxBytes`, for the message (see UnpackOptions.limitText). */
  limitText?: string;
  /** images.max_layer_bytes (see UnpackOptions.maxLayerBytes). */
  maxLayerBytes?: number;
  /** The limits shared with other unpacks, granted as the unpack goes (see UnpackOptions.grant). */
  grant?: GrantFn;
  signal?: AbortSignal;
}

/** A layer to unpack while its blob downloads (see Snapshotter.extractStream). */
export interface StreamExtractRequest extends Omit<ExtractRequest, 'blobPath'> {
  /** The content store's temp file the blob's bytes go to. */
  blobTmp: string;
  /** The blob digest's algorithm: the worker hashes the bytes with it. */
  alg: 'sha256' | 'sha512';
}

/** A layer unpacked into a `preparing` snapshot, not yet committed. */
export interface PreparedSnapshot {
  id: number;
  dir: string;
  sizeBytes: number;
  inodes: number;
  /**
   * Bytes the layer counts for against the image's cap: its uncompressed tar stream,
   * plus a block for each parent directory it needed but did not list.
   */
  tarBytes: number;
}

export interface Snapshotter {
  /** The committed snapshot for a chain ID, if there is one. */
  committed(chainId: string): SnapshotInfo | undefined;
  /**
   * Unpacks a layer into a new `preparing` snapshot and checks its diff ID. Layers of
   * one image may be extracted in parallel: each has its own directory, and whiteouts
   * are only markers, so no layer needs the one below it on disk.
   */
  extract(req: ExtractRequest): Promise<PreparedSnapshot>;
  /**
   * Like extract, but from the blob as it downloads: the caller writes the blob's bytes to
   * `sink` (which also hashes them and writes them to `req.blobTmp`, for the content store
   * to check and keep) and `prepared` settles once the unpack is over and its diff ID
   * checked. The snapshot must not be committed before the content store has verified the
   * blob's digest.
   */
  extractStream(req: StreamExtractRequest): Promise<{ sink: StreamSink; prepared: Promise<PreparedSnapshot> }>;
  /** Commits a prepared snapshot under its chain ID; the parent must be committed. */
  commit(prepared: PreparedSnapshot, chainId: string, parentChainId: string | undefined): SnapshotInfo;
  /** The `fs` directories of a committed chain, top first: overlayfs's lowerdir order. */
  lowerDirs(chainId: string): string[];
  /** Throws a prepared snapshot away. */
  discard(prepared: PreparedSnapshot): Promise<void>;
  /**
   * Garbage collection, first half, synchronous: deletes the rows of committed snapshots
   * that no image layer, no live child snapshot and no lease (`held`) needs, and returns
   * their directories. Nothing can take a lease between the decision and the deletion.
   */
  collectRows(held: (chainId: string) => boolean): string[];
  /** Garbage collection, second half: removes the directories of deleted rows. */
  removeDirs(dirs: string[]): Promise<void>;
  /** Stops background work (unpack workers). */
  close(): Promise<void>;
  /** A container's writable snapshot on a committed one; returns overlay mount options. */
  prepareActive(key: string, parentChainId: string): Promise<{ info: SnapshotInfo; options: string }>;
  /** The upper directory (what the container wrote) of an active snapshot, if it exists. */
  activeDir(key: string): string | undefined;
  /** The upper directories of all active snapshots (the containers' writable layers). */
  activeDirs(): string[];
  /** Removes a container's writable snapshot; idempotent. */
  removeActive(key: string): Promise<void>;
  /**
   * Bytes and inodes counted at unpack for all snapshots (what active ones hold is not
   * counted: see activeDirs), and where they live.
   */
  usage(): { bytes: number; inodes: number; mountpoint: string };
  /** Start-up reconciliation of rows and directories. */
  recover(): Promise<void>;
}
