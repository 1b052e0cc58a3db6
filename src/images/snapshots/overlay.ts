/**
 * The overlayfs snapshotter (see snapshotter.ts for the life of a snapshot).
 * Directory layout: `<root>/snapshots/<id>/fs`, `<id>` being the row's id.
 */
import { chmodSync, mkdirSync, readdirSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { BerthError, errnoOf } from '../../common/errors.js';
import { MAX_MOUNT_DATA } from '../../common/mount.js';
import { removeTree } from '../../common/remove-tree.js';
import { settleAll } from '../../common/settle-all.js';
import type { Logger } from '../../common/logger.js';
import type { SnapshotRepository, SnapshotRow } from './snapshot-repository.js';
import type { ExtractRequest, PreparedSnapshot, SnapshotInfo, Snapshotter, StreamExtractRequest } from './snapshotter.js';
import { UnpackPool, type StreamSink, type UnpackJob } from './unpack-pool.js';
import type { UnpackResult } from './unpack.js';

/** Where the snapshots of berthd's root live: `<root>/snapshots/<id>`. */
export function snapshotsDir(root: string): string {
  return join(root, 'snapshots');
}

/**
 * The entries of the snapshots dir that no row names (recovery removes them; `berthd
 * doctor` reports them). A missing dir has none.
 */
export function straySnapshotDirs(dir: string, rows: readonly Pick<SnapshotRow, 'id'>[]): string[] {
  const known = new Set(rows.map((r) => String(r.id)));
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return [];
    throw err;
  }
  return names.filter((n) => !known.has(n)).map((n) => join(dir, n));
}

/** The unpack options of an extract request (its grants go separately: they run on this thread). */
function unpackOpts(req: Pick<ExtractRequest, 'layer' | 'maxBytes' | 'limitText' | 'maxLayerBytes'>): UnpackJob['opts'] {
  return {
    layer: req.layer,
    maxBytes: req.maxBytes,
    ...(req.limitText ? { limitText: req.limitText } : {}),
    ...(req.maxLayerBytes !== undefined ? { maxLayerBytes: req.maxLayerBytes } : {}),
  };
}

export class OverlaySnapshotter implements Snapshotter {
  private readonly dir: string;
  private readonly pool = new UnpackPool();
  constructor(
    root: string,
    private readonly repo: SnapshotRepository,
    private readonly log: Logger,
  ) {
    this.dir = snapshotsDir(root);
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    // At every start: an operator or an older berth may have left it open to all.
    chmodSync(this.dir, 0o700);
  }

  private info(row: SnapshotRow): SnapshotInfo {
    return {
      id: row.id,
      key: row.key ?? '',
      parentId: row.parent_id,
      kind: row.kind,
      sizeBytes: row.size_bytes,
      inodes: row.inodes,
      dir: join(this.dir, String(row.id)),
    };
  }

  committed(chainId: string): SnapshotInfo | undefined {
    const row = this.repo.get(chainId);
    return row && row.kind === 'committed' ? this.info(row) : undefined;
  }

  /** The `fs` directories of a chain, top first: overlay's lowerdir order. */
  lowerDirs(chainId: string): string[] {
    const out: string[] = [];
    let row = this.repo.get(chainId);
    while (row) {
      out.push(join(this.dir, String(row.id), 'fs'));
      row = row.parent_id === null ? undefined : this.repo.getById(row.parent_id);
    }
    return out;
  }

  async extract(req: ExtractRequest): Promise<PreparedSnapshot> {
    const { id, dir } = await this.preparing();
    return this.finish(
      req,
      id,
      dir,
      this.pool.run({ blobPath: req.blobPath, compression: req.compression, target: join(dir, 'fs'), opts: unpackOpts(req) }, req.signal, req.grant),
    );
  }

  async extractStream(req: StreamExtractRequest): Promise<{ sink: StreamSink; prepared: Promise<PreparedSnapshot> }> {
    const { id, dir } = await this.preparing();
    let started: { sink: StreamSink; result: Promise<UnpackResult> };
    try {
      started = await this.pool.stream(
        { tmpPath: req.blobTmp, alg: req.alg, compression: req.compression, target: join(dir, 'fs'), opts: unpackOpts(req) },
        req.signal,
        req.grant,
      );
    } catch (err) {
      await this.discard({ id, dir, sizeBytes: 0, inodes: 0, tarBytes: 0 });
      throw err;
    }
    const prepared = this.finish(req, id, dir, started.result);
    // Awaited by the caller after the download; marked handled so a failure before then is not an unhandled rejection.
    prepared.catch(() => undefined);
    return { sink: started.sink, prepared };
  }

  /** A new `preparing` row and its empty `fs` directory. */
  private async preparing(): Promise<{ id: number; dir: string }> {
    const id = this.repo.prepare();
    const dir = join(this.dir, String(id));
    try {
      await mkdir(join(dir, 'fs'), { recursive: true, mode: 0o755 });
    } catch (err) {
      await this.discard({ id, dir, sizeBytes: 0, inodes: 0, tarBytes: 0 });
      throw err;
    }
    return { id, dir };
  }

  /** Checks an unpack's diff ID; a failed unpack's snapshot is thrown away. */
  private async finish(req: Pick<ExtractRequest, 'diffId' | 'layer'>, id: number, dir: string, unpacked: Promise<UnpackResult>): Promise<PreparedSnapshot> {
    try {
      const result = await unpacked;
      if (result.diffId !== req.diffId) {
        throw new BerthError('DataLoss', `layer ${req.layer}: unpacked content has diff ID ${result.diffId}, but the image config says ${req.diffId}`);
      }
      // Usage is counted once, here: content bytes plus a block per inode for metadata.
      const inodes = result.entries + result.implicitDirectories;
      return { id, dir, sizeBytes: result.fileBytes + inodes * 4096, inodes, tarBytes: result.chargedBytes };
    } catch (err) {
      await this.discard({ id, dir, sizeBytes: 0, inodes: 0, tarBytes: 0 });
      throw err;
    }
  }

  commit(prepared: PreparedSnapshot, chainId: string, parentChainId: string | undefined): SnapshotInfo {
    let parentId: number | null = null;
    if (parentChainId !== undefined) {
      const parent = this.committed(parentChainId);
      if (!parent) throw new BerthError('Internal', `snapshot ${chainId}: parent ${parentChainId} is not committed`);
      parentId = parent.id;
    }
    this.repo.commit(prepared.id, chainId, parentId, prepared.sizeBytes, prepared.inodes);
    return this.info(this.repo.getById(prepared.id)!);
  }

  async discard(prepared: PreparedSnapshot): Promise<void> {
    this.repo.delete(prepared.id);
    await rm(prepared.dir, { recursive: true, force: true });
  }

  collectRows(held: (chainId: string) => boolean): string[] {
    return this.repo.transaction(() => {
      const rows = this.repo.all();
      const byId = new Map(rows.map((r) => [r.id, r]));
      const live = new Set<number>();
      const keep = (row: SnapshotRow | undefined): void => {
        while (row && !live.has(row.id)) {
          live.add(row.id);
          row = row.parent_id === null ? undefined : byId.get(row.parent_id);
        }
      };
      const referenced = this.repo.referencedByImages();
      for (const r of rows) {
        if (r.kind !== 'committed' || (r.key !== null && (referenced.has(r.key) || held(r.key)))) keep(r);
      }
      // Deepest first, so a parent row is never deleted while a child points at it
      // (ids say nothing about depth: layers are extracted in parallel).
      const depth = (row: SnapshotRow): number => {
        let n = 0;
        for (let r: SnapshotRow | undefined = row; r && r.parent_id !== null; r = byId.get(r.parent_id)) n++;
        return n;
      };
      const doomed = rows.filter((r) => !live.has(r.id)).sort((a, b) => depth(b) - depth(a));
      for (const r of doomed) this.repo.delete(r.id);
      return doomed.map((r) => join(this.dir, String(r.id)));
    });
  }

  async removeDirs(dirs: string[]): Promise<void> {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  }

  /**
   * Makes a container's writable layer on top of an image's top snapshot: an `active`
   * snapshot with an empty `fs` (overlay upperdir) and `work`. Returns the overlay mount
   * options for the container's rootfs. The row is recorded before the directories.
   */
  async prepareActive(key: string, parentChainId: string): Promise<{ info: SnapshotInfo; options: string }> {
    const parent = this.committed(parentChainId);
    if (!parent) throw new BerthError('NotFound', `image layer ${parentChainId} is not unpacked; pull the image again`);
    // An image is any number of layers; the mount's options must fit in the page mount(2)
    // reads (the kernel would cut the rest: the last layers and the upperdir). Checked
    // with the longest id the active snapshot can get, before anything is made.
    const lowers = this.lowerDirs(parentChainId);
    const longest = join(this.dir, String(Number.MAX_SAFE_INTEGER));
    const bytes = Buffer.byteLength(`lowerdir=${lowers.join(':')},upperdir=${longest}/fs,workdir=${longest}/work`);
    if (bytes > MAX_MOUNT_DATA) {
      throw new BerthError(
        'FailedPrecondition',
        `the image has ${lowers.length} layers: the overlay mount of a container's rootfs would need ${bytes} bytes of options, over the ${MAX_MOUNT_DATA} mount(2) takes`,
      );
    }
    const id = this.repo.prepareActive(key, parent.id);
    const dir = join(this.dir, String(id));
    try {
      // The dir, then its two children side by side: two rounds on the pool, not four.
      await mkdir(dir, { recursive: true, mode: 0o755 });
      await settleAll([mkdir(join(dir, 'fs'), { recursive: true, mode: 0o755 }), mkdir(join(dir, 'work'), { recursive: true, mode: 0o700 })]);
    } catch (err) {
      this.repo.delete(id);
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
    const options = `lowerdir=${this.lowerDirs(parentChainId).join(':')},upperdir=${join(dir, 'fs')},workdir=${join(dir, 'work')}`;
    return { info: this.info(this.repo.getById(id)!), options };
  }

  /** The upper directory (the container's own files) of an active snapshot, if it exists. */
  activeDir(key: string): string | undefined {
    const row = this.repo.get(key);
    return row?.kind === 'active' ? join(this.dir, String(row.id), 'fs') : undefined;
  }

  activeDirs(): string[] {
    return this.repo
      .all()
      .filter((r) => r.kind === 'active')
      .map((r) => join(this.dir, String(r.id), 'fs'));
  }

  /** Removes a container's active snapshot (its rootfs must be unmounted); idempotent. */
  async removeActive(key: string): Promise<void> {
    const row = this.repo.get(key);
    if (!row || row.kind !== 'active') return;
    this.repo.delete(row.id);
    await removeTree(join(this.dir, String(row.id)));
  }

  /** Stops the unpack workers (on shutdown). */
  async close(): Promise<void> {
    await this.pool.close();
  }

  usage(): { bytes: number; inodes: number; mountpoint: string } {
    return { ...this.repo.usage(), mountpoint: this.dir };
  }

  /**
   * Recovery assumptions: a `preparing` row is an unpack that a crash interrupted (its
   * directory is incomplete); a directory without a row was being removed or created.
   * Both go. Committed snapshots stay, even unreferenced: a retried pull reuses them.
   */
  async recover(): Promise<void> {
    let removed = 0;
    const rows = this.repo.all();
    for (const r of rows.filter((x) => x.kind === 'preparing')) {
      this.repo.delete(r.id);
      await rm(join(this.dir, String(r.id)), { recursive: true, force: true });
      removed++;
    }
    for (const path of straySnapshotDirs(
      this.dir,
      rows.filter((x) => x.kind !== 'preparing'),
    )) {
      await rm(path, { recursive: true, force: true });
      removed++;
    }
    if (removed > 0) this.log.info('snapshots recovered', { removed });
  }
}
