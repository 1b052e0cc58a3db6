import { tracedSync } from '../common/trace-points.js';
import type { Db } from '../store/database.js';
import { RecordCache } from '../store/record-cache.js';
import type { ImageConfig } from './manifest.js';

export interface ImageLayerRecord {
  blobDigest: string;
  diffId: string;
  chainId: string;
}

export interface ImageRecord {
  /** The config digest: the image ID kubelet sees. */
  id: string;
  /** Digest of the platform manifest that was unpacked. */
  manifestDigest: string;
  config: ImageConfig;
  /** Bytes of the image's blobs: manifest(s), config and compressed layers. */
  size: number;
  pinned: boolean;
  createdAt: number;
  /** "docker.io/library/busybox:latest" … */
  tags: string[];
  /** "docker.io/library/busybox@sha256:…" … */
  digests: string[];
  layers: ImageLayerRecord[];
}

export interface NewImage {
  id: string;
  manifestDigest: string;
  config: ImageConfig;
  size: number;
  layers: ImageLayerRecord[];
  blobs: string[];
  tag: string | undefined;
  digestName: string;
}

interface ImageRow {
  id: string;
  manifest_digest: string;
  config: string;
  size: number;
  pinned: number;
  created_at: number;
}

/** An image mounted as a volume of a container (Mount.image). */
export interface ImageVolumeUse {
  containerId: string;
  /** The CRI mount's index. */
  index: number;
  imageId: string;
  /** The image's top layer: GC keeps it and the layers beneath. */
  chainId: string;
}

/** Images, their names, and what they reference. Owns images, image_names, image_blobs, image_layers, image_volumes. */
export class ImageRepository {
  private readonly getStmt;
  private readonly allStmt;
  private readonly namesStmt;
  private readonly allNamesStmt;
  private readonly layersStmt;
  private readonly byNameStmt;
  private readonly upsertImage;
  private readonly upsertName;
  private readonly insertBlob;
  private readonly insertLayer;
  private readonly deleteImage;
  private readonly idsStmt;
  private readonly stopSignalStmt;
  private readonly clearRefs;
  private readonly clearLayers;
  private readonly insertVolumeUse;
  private readonly volumeUsesStmt;
  /** Each image's names as {@link names} gives them (every container's status asks), kept until a save or delete. */
  private readonly namesCache: RecordCache<Pick<ImageRecord, 'tags' | 'digests'>>;

  constructor(private readonly db: Db) {
    this.namesCache = new RecordCache(db);
    this.getStmt = db.prepare<[string], ImageRow>('SELECT * FROM images WHERE id = ?');
    this.allStmt = db.prepare<[], ImageRow>('SELECT * FROM images ORDER BY created_at, id');
    this.namesStmt = db.prepare<[string], { name: string; kind: string }>('SELECT name, kind FROM image_names WHERE image_id = ? ORDER BY name');
    this.allNamesStmt = db.prepare<[], { name: string; kind: string; image_id: string }>('SELECT name, kind, image_id FROM image_names ORDER BY name');
    this.layersStmt = db.prepare<[string], { blob_digest: string; diff_id: string; chain_id: string }>(
      'SELECT blob_digest, diff_id, chain_id FROM image_layers WHERE image_id = ? ORDER BY idx',
    );
    this.byNameStmt = db.prepare<[string], { image_id: string }>('SELECT image_id FROM image_names WHERE name = ?');
    this.idsStmt = db.prepare<[string], { id: string }>('SELECT id FROM images WHERE id LIKE ?');
    this.stopSignalStmt = db.prepare<[string], { s: string | null }>("SELECT json_extract(config, '$.run.stopSignal') AS s FROM images WHERE id = ?");
    this.upsertImage = db.prepare<[string, string, string, number, number]>(
      'INSERT INTO images (id, manifest_digest, config, size, created_at) VALUES (?, ?, ?, ?, ?) ' +
        'ON CONFLICT(id) DO UPDATE SET manifest_digest = excluded.manifest_digest, size = excluded.size',
    );
    this.clearRefs = db.prepare<[string]>('DELETE FROM image_blobs WHERE image_id = ?');
    this.clearLayers = db.prepare<[string]>('DELETE FROM image_layers WHERE image_id = ?');
    this.upsertName = db.prepare<[string, string, string]>(
      'INSERT INTO image_names (name, kind, image_id) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id, kind = excluded.kind',
    );
    this.insertBlob = db.prepare<[string, string]>('INSERT OR IGNORE INTO image_blobs (image_id, digest) VALUES (?, ?)');
    this.insertLayer = db.prepare<[string, number, string, string, string]>(
      'INSERT OR IGNORE INTO image_layers (image_id, idx, blob_digest, diff_id, chain_id) VALUES (?, ?, ?, ?, ?)',
    );
    this.deleteImage = db.prepare<[string]>('DELETE FROM images WHERE id = ?');
    this.insertVolumeUse = db.prepare<[string, number, string, string]>(
      'INSERT INTO image_volumes (container_id, idx, image_id, chain_id) VALUES (?, ?, ?, ?)',
    );
    this.volumeUsesStmt = db.prepare<[string], { container_id: string; idx: number; image_id: string; chain_id: string }>(
      'SELECT container_id, idx, image_id, chain_id FROM image_volumes WHERE image_id = ? ORDER BY container_id, idx',
    );
  }

  private record(row: ImageRow, names = this.namesStmt.all(row.id), withLayers = true): ImageRecord {
    return {
      id: row.id,
      manifestDigest: row.manifest_digest,
      config: JSON.parse(row.config) as ImageConfig,
      size: row.size,
      pinned: row.pinned !== 0,
      createdAt: row.created_at,
      tags: names.filter((n) => n.kind === 'tag').map((n) => n.name),
      digests: names.filter((n) => n.kind === 'digest').map((n) => n.name),
      layers: withLayers ? this.layersStmt.all(row.id).map((l) => ({ blobDigest: l.blob_digest, diffId: l.diff_id, chainId: l.chain_id })) : [],
    };
  }

  get(id: string): ImageRecord | undefined {
    const row = this.getStmt.get(id);
    return row ? this.record(row) : undefined;
  }

  /**
   * An image's tags and digest names (none when the image is gone): all a container's
   * status needs of its image, without its config and layers.
   */
  names(id: string): Pick<ImageRecord, 'tags' | 'digests'> {
    return this.namesCache.get(id, (key) => {
      const names = this.namesStmt.all(key);
      return Object.freeze({
        tags: Object.freeze(names.filter((n) => n.kind === 'tag').map((n) => n.name)) as string[],
        digests: Object.freeze(names.filter((n) => n.kind === 'digest').map((n) => n.name)) as string[],
      });
    })!;
  }

  /**
   * The STOPSIGNAL of image `id` as its config says ('' for none); undefined when the
   * image is gone: all a container's stop needs of its image, without parsing its config.
   */
  stopSignal(id: string): string | undefined {
    const row = this.stopSignalStmt.get(id);
    return row === undefined ? undefined : (row.s ?? '');
  }

  /** The image a tag or digest name points at. */
  byName(name: string): ImageRecord | undefined {
    const hit = this.byNameStmt.get(name);
    return hit ? this.get(hit.image_id) : undefined;
  }

  /** Image IDs starting with `prefix` (for short IDs as users type them). */
  idsWithPrefix(prefix: string): string[] {
    return this.idsStmt.all(prefix.replace(/[%_]/g, '') + '%').map((r) => r.id);
  }

  list(): ImageRecord[] {
    const names = new Map<string, Array<{ name: string; kind: string }>>();
    for (const n of this.allNamesStmt.all()) {
      let l = names.get(n.image_id);
      if (!l) names.set(n.image_id, (l = []));
      l.push(n);
    }
    // Two queries for the whole list, not one per image; layers are not needed here.
    return this.allStmt.all().map((row) => this.record(row, names.get(row.id) ?? [], false));
  }

  /**
   * Records a pulled image and points its names at it, in one transaction: an image
   * is either fully listed or not at all. A tag that pointed at another image moves.
   */
  save(img: NewImage): void {
    tracedSync(
      'berth:db.write',
      { table: 'images' },
      this.db.transaction(() => {
        // A tag that moves changes the names of the image it leaves too.
        this.namesCache.clear();
        this.upsertImage.run(img.id, img.manifestDigest, JSON.stringify(img.config), img.size, Date.now());
        // The same image (config) may come through another manifest, e.g. recompressed
        // layers: its references are those of the latest pull, not a union.
        this.clearRefs.run(img.id);
        this.clearLayers.run(img.id);
        for (const d of img.blobs) this.insertBlob.run(img.id, d);
        img.layers.forEach((l, i) => this.insertLayer.run(img.id, i, l.blobDigest, l.diffId, l.chainId));
        if (img.tag) this.upsertName.run(img.tag, 'tag', img.id);
        this.upsertName.run(img.digestName, 'digest', img.id);
      }),
    );
  }

  /** Deletes an image with all its names and references. */
  delete(id: string): boolean {
    this.namesCache.clear();
    return this.deleteImage.run(id).changes > 0;
  }

  /**
   * Records that a container mounts an image as a volume; the container's row must exist
   * (the use goes with it, ON DELETE CASCADE).
   */
  recordVolumeUse(use: ImageVolumeUse): void {
    this.insertVolumeUse.run(use.containerId, use.index, use.imageId, use.chainId);
  }

  /** The containers that mount an image as a volume. */
  volumeUses(imageId: string): ImageVolumeUse[] {
    return this.volumeUsesStmt.all(imageId).map((r) => ({ containerId: r.container_id, index: r.idx, imageId: r.image_id, chainId: r.chain_id }));
  }
}
