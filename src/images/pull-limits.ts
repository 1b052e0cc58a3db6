/**
 * What one pull may take from the node, beyond the per-layer cap: a decompression bomb
 * (a few MB of gzip or zstd that expand to many GB) must not fill the disk.
 * - `images.max_image_bytes`: the uncompressed bytes of all the layers a pull unpacks;
 * - `images.max_compression_ratio` past `images.compression_ratio_threshold_bytes`: a
 *   layer may expand to the threshold whatever its ratio, and beyond it only to
 *   ratio × its compressed size;
 * - a free-space reserve on the image filesystem (the smaller of `images.min_free_bytes`
 *   and `images.min_free_percent` of the filesystem): checked before the downloads, and
 *   bounding each unpack to what the filesystem can spare when it starts.
 * Each unpack gets the tightest of these as its byte limit, and the message names it.
 * Layers of one pull unpack in parallel, so the image cap is also checked as each layer
 * finishes (before it is committed).
 */
import { statfs } from 'node:fs/promises';
import { BerthError } from '../common/errors.js';
import type { ImagesConfig } from '../config/schema.js';

/** Free and reserved bytes of the filesystem holding `path`. */
async function space(path: string, cfg: ImagesConfig): Promise<{ free: number; reserve: number }> {
  const s = await statfs(path);
  const total = s.blocks * s.bsize;
  return { free: s.bavail * s.bsize, reserve: Math.min(cfg.min_free_bytes, Math.floor((total * cfg.min_free_percent) / 100)) };
}

function reserveText(cfg: ImagesConfig, reserve: number): string {
  return `the free-space reserve of ${reserve} bytes (the smaller of images.min_free_bytes = ${cfg.min_free_bytes} and images.min_free_percent = ${cfg.min_free_percent}%)`;
}

export class PullLimits {
  /** Uncompressed bytes this pull's layers have used so far. */
  private used = 0;

  constructor(
    private readonly cfg: ImagesConfig,
    /** A directory on the image filesystem. */
    private readonly root: string,
    private readonly what: string,
  ) {}

  /** Refuses the pull when its downloads (`bytes`) would eat into the free-space reserve. */
  async checkDownloads(bytes: number): Promise<void> {
    const { free, reserve } = await space(this.root, this.cfg);
    if (free - bytes < reserve) {
      throw new BerthError(
        'ResourceExhausted',
        `${this.what}: downloading ${bytes} bytes would leave ${Math.max(0, free - bytes)} bytes free on the image filesystem, less than ${reserveText(this.cfg, reserve)}`,
      );
    }
  }

  /** The byte limit of one layer's unpack, and what set it (undefined: the per-layer cap). */
  async forLayer(compressedSize: number): Promise<{ maxBytes: number; limitText?: string }> {
    const cfg = this.cfg;
    const candidates: Array<{ maxBytes: number; limitText?: string }> = [{ maxBytes: cfg.max_layer_bytes }];
    const imageLeft = cfg.max_image_bytes - this.used;
    candidates.push({
      maxBytes: Math.max(0, imageLeft),
      limitText: `images.max_image_bytes (${cfg.max_image_bytes} bytes uncompressed per image; ${Math.max(0, imageLeft)} were left for this layer)`,
    });
    const byRatio = Math.max(cfg.compression_ratio_threshold_bytes, cfg.max_compression_ratio * compressedSize);
    candidates.push({
      maxBytes: byRatio,
      limitText:
        `${byRatio} bytes, a compression ratio of ${cfg.max_compression_ratio}:1 over its ${compressedSize} compressed bytes ` +
        `(images.max_compression_ratio, beyond images.compression_ratio_threshold_bytes = ${cfg.compression_ratio_threshold_bytes})`,
    });
    const { free, reserve } = await space(this.root, cfg);
    const spare = Math.max(0, free - reserve);
    candidates.push({ maxBytes: spare, limitText: `the ${spare} bytes the image filesystem can spare above ${reserveText(cfg, reserve)}` });
    return candidates.reduce((a, b) => (b.maxBytes < a.maxBytes ? b : a));
  }

  /** Counts a finished unpack; refuses it when the image as a whole is now over its cap. */
  charge(layer: string, tarBytes: number): void {
    this.used += tarBytes;
    if (this.used > this.cfg.max_image_bytes) {
      throw new BerthError(
        'ResourceExhausted',
        `layer ${layer}: the image expands beyond images.max_image_bytes (${this.cfg.max_image_bytes} bytes uncompressed per image)`,
      );
    }
  }
}
