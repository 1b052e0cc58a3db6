/**
 * What one pull may take from the node, beyond the per-layer cap: a decompression bomb
 * (a few MB of gzip or zstd that expand to many GB) must not fill the disk, and a layer
 * of millions of tiny entries must not use up its inodes.
 * - `images.max_image_bytes`: the uncompressed bytes of all the layers a pull unpacks;
 * - `images.max_compression_ratio` past `images.compression_ratio_threshold_bytes`: a
 *   layer may expand to the threshold whatever its ratio, and beyond it only to
 *   ratio × its compressed size;
 * - a free-space reserve on the image filesystem (the smaller of `images.min_free_bytes`
 *   and `images.min_free_percent` of the filesystem), and a free-inode reserve (the
 *   smaller of `images.min_free_inodes` and `images.min_free_inodes_percent` of its
 *   inodes; none where the filesystem has no inode limit and reports 0 inodes, as btrfs
 *   does): checked before the downloads, and bounding every unpack as it goes.
 * The layer cap and the ratio are the layer's own: the unpack gets them as its fixed
 * `maxBytes`. The others are shared, with the other layers of the pull (which unpack in
 * parallel) and with the unpacks of other pulls, so they are granted as the unpack goes.
 *
 * Grants. An unpack asks for bytes and inodes ({@link LayerAllowance.grant}) before it
 * uses them, a chunk at a time: at most 64 MiB and 16384 inodes, and at most an eighth
 * of what is left, so that layers running side by side each get a share and none
 * waits for another (nothing serializes: a grant is one statfs). What a layer was
 * granted but has not used yet is reserved:
 * - node-wide, per image filesystem, in a ledger of the unpacks in flight: a layer may
 *   use what statfs reports free, minus the reserve, minus what the ledger holds for the
 *   others (statfs already counts what they wrote);
 * - per pull: what the finished layers used plus what the layers in flight were granted
 *   never exceeds `images.max_image_bytes`.
 * A request that cannot be met refuses the unpack with ResourceExhausted naming the
 * limit; the caller discards the snapshot. When an unpack ends its reservation goes
 * ({@link LayerAllowance.settle}): on success what it used is counted against the pull's
 * cap (and is on the disk for statfs to see).
 */
import { stat, statfs } from 'node:fs/promises';
import { BerthError } from '../common/errors.js';
import type { ImagesConfig } from '../config/schema.js';
import type { Budget } from './snapshots/unpack.js';

/** The largest grant of bytes and of inodes at a time (see the file comment). */
export const GRANT_CHUNK_BYTES = 64 * 1024 * 1024;
export const GRANT_CHUNK_INODES = 16_384;
/** A grant is at most this fraction of what is left. */
const GRANT_SHARE = 8;

/** What statfs says of the filesystem holding `path`, and its reserves. */
async function space(path: string, cfg: ImagesConfig) {
  const s = await statfs(path);
  const total = s.blocks * s.bsize;
  return {
    free: s.bavail * s.bsize,
    reserve: Math.min(cfg.min_free_bytes, Math.floor((total * cfg.min_free_percent) / 100)),
    /** Infinity when the filesystem has no inode limit (it reports 0 inodes). */
    freeInodes: s.files === 0 ? Infinity : s.ffree,
    inodeReserve: s.files === 0 ? 0 : Math.min(cfg.min_free_inodes, Math.floor((s.files * cfg.min_free_inodes_percent) / 100)),
  };
}

function reserveText(cfg: ImagesConfig, reserve: number): string {
  return `the free-space reserve of ${reserve} bytes (the smaller of images.min_free_bytes = ${cfg.min_free_bytes} and images.min_free_percent = ${cfg.min_free_percent}%)`;
}

function inodeReserveText(cfg: ImagesConfig, reserve: number): string {
  return `the free-inode reserve of ${reserve} (the smaller of images.min_free_inodes = ${cfg.min_free_inodes} and images.min_free_inodes_percent = ${cfg.min_free_inodes_percent}%)`;
}

/** The unpacks in flight on one image filesystem, and what each holds granted but unused. */
class Ledger {
  readonly held = new Map<LayerAllowance, Budget>();

  /** What the others than `except` hold. */
  heldBy(except?: LayerAllowance): Budget {
    const sum = { bytes: 0, entries: 0 };
    for (const [a, b] of this.held) {
      if (a === except) continue;
      sum.bytes += b.bytes;
      sum.entries += b.entries;
    }
    return sum;
  }
}

/** Node-wide: one ledger per image filesystem (by device number), while unpacks are in flight. */
const ledgers = new Map<number, Ledger>();

export class PullLimits {
  /** Bytes the finished layers of this pull counted for. */
  private used = 0;
  /** Layers of this pull unpacking now. */
  private readonly inFlight = new Set<LayerAllowance>();
  /** The image filesystem's device number, once known. */
  private dev: number | undefined;

  constructor(
    private readonly cfg: ImagesConfig,
    /** A directory on the image filesystem. */
    private readonly root: string,
    private readonly what: string,
  ) {}

  /** The ledger of the image filesystem (made when first needed; dropped when empty). */
  private ledger(): Ledger {
    const dev = this.dev!;
    let l = ledgers.get(dev);
    if (!l) ledgers.set(dev, (l = new Ledger()));
    return l;
  }

  private dropIfIdle(): void {
    if (this.dev !== undefined && ledgers.get(this.dev)?.held.size === 0) ledgers.delete(this.dev);
  }

  /** statfs of the image filesystem, and its device number the first time. */
  private async space(): Promise<Awaited<ReturnType<typeof space>>> {
    this.dev ??= (await stat(this.root)).dev;
    return space(this.root, this.cfg);
  }

  /**
   * Refuses the pull when its downloads (`bytes`, `blobs` files) would eat into the
   * free-space or free-inode reserve, counting what unpacks in flight hold.
   */
  async checkDownloads(bytes: number, blobs = 0): Promise<void> {
    const s = await this.space();
    // Read, not made: a ledger exists only while unpacks hold grants.
    const held: Budget = ledgers.get(this.dev!)?.heldBy() ?? { bytes: 0, entries: 0 };
    const left = s.free - held.bytes - bytes;
    if (left < s.reserve) {
      const others = held.bytes > 0 ? ` (counting ${held.bytes} bytes granted to unpacks in flight)` : '';
      throw new BerthError(
        'ResourceExhausted',
        `${this.what}: downloading ${bytes} bytes would leave ${Math.max(0, left)} bytes free on the image filesystem${others}, less than ${reserveText(this.cfg, s.reserve)}`,
      );
    }
    const inodesLeft = s.freeInodes - held.entries - blobs;
    if (inodesLeft < s.inodeReserve) {
      throw new BerthError(
        'ResourceExhausted',
        `${this.what}: the image filesystem has ${Math.max(0, inodesLeft)} free inodes left for unpacking, less than ${inodeReserveText(this.cfg, s.inodeReserve)}`,
      );
    }
  }

  /**
   * The limits of one layer's unpack: its fixed byte limit and what set it (undefined:
   * the per-layer cap), and the grants of the shared ones. The caller must
   * {@link LayerAllowance.settle} it when the unpack ends, however it ends.
   */
  forLayer(layer: string, compressedSize: number): LayerAllowance {
    const cfg = this.cfg;
    const byRatio = Math.max(cfg.compression_ratio_threshold_bytes, cfg.max_compression_ratio * compressedSize);
    const fixed =
      byRatio < cfg.max_layer_bytes
        ? {
            maxBytes: byRatio,
            limitText:
              `${byRatio} bytes, a compression ratio of ${cfg.max_compression_ratio}:1 over its ${compressedSize} compressed bytes ` +
              `(images.max_compression_ratio, beyond images.compression_ratio_threshold_bytes = ${cfg.compression_ratio_threshold_bytes})`,
          }
        : { maxBytes: cfg.max_layer_bytes };
    const a = new LayerAllowance(this, layer, fixed.maxBytes, fixed.limitText);
    this.inFlight.add(a);
    return a;
  }

  /** @internal The grant of {@link LayerAllowance.grant}. */
  async grantFor(a: LayerAllowance, used: Budget, need: Budget): Promise<Budget> {
    const cfg = this.cfg;
    const refuse = (why: string): BerthError => new BerthError('ResourceExhausted', `layer ${a.layer}: ${why}`);
    const s = await this.space();
    // From here on synchronous, so no other grant changes the figures in between.
    if (!this.inFlight.has(a)) throw new BerthError('Internal', `layer ${a.layer}: asked for a grant after its unpack was settled`);
    let otherLayers = 0;
    for (const o of this.inFlight) if (o !== a) otherLayers += o.granted.bytes;
    const imageLeft = Math.max(0, cfg.max_image_bytes - this.used - otherLayers);
    if (need.bytes > imageLeft) {
      throw refuse(`expands beyond images.max_image_bytes (${cfg.max_image_bytes} bytes uncompressed per image; ${imageLeft} were left for this layer)`);
    }

    const ledger = this.ledger();
    const others = ledger.heldBy(a);
    const spare = Math.max(0, s.free - s.reserve - others.bytes);
    if (need.bytes - used.bytes > spare) {
      const held = others.bytes > 0 ? `, less the ${others.bytes} bytes granted to other unpacks in flight,` : '';
      throw refuse(`expands beyond the ${used.bytes + spare} bytes the image filesystem can spare${held} above ${reserveText(cfg, s.reserve)}`);
    }
    const spareInodes = Math.max(0, s.freeInodes - s.inodeReserve - others.entries);
    if (need.entries - used.entries > spareInodes) {
      const held = others.entries > 0 ? ` (less the ${others.entries} granted to other unpacks in flight)` : '';
      throw refuse(
        `its entries need more inodes than the ${used.entries + spareInodes} the image filesystem can spare${held} above ${inodeReserveText(cfg, s.inodeReserve)}`,
      );
    }

    const grant = (needed: number, ceiling: number, chunk: number): number =>
      Math.max(needed, Math.min(ceiling, needed + Math.min(chunk, Math.floor((ceiling - needed) / GRANT_SHARE))));
    const granted = {
      bytes: grant(need.bytes, Math.min(imageLeft, used.bytes + spare, a.maxBytes), GRANT_CHUNK_BYTES),
      entries: grant(need.entries, used.entries + spareInodes, GRANT_CHUNK_INODES),
    };
    a.granted = granted;
    ledger.held.set(a, { bytes: granted.bytes - used.bytes, entries: granted.entries - used.entries });
    return granted;
  }

  /** @internal {@link LayerAllowance.settle}. */
  settle(a: LayerAllowance, charged: number | undefined): void {
    if (!this.inFlight.delete(a)) return;
    if (this.dev !== undefined) {
      this.ledger().held.delete(a);
      this.dropIfIdle();
    }
    if (charged === undefined) return;
    this.used += charged;
    // Grants keep it from happening; checked all the same before the layer is committed.
    if (this.used > this.cfg.max_image_bytes) {
      throw new BerthError(
        'ResourceExhausted',
        `layer ${a.layer}: the image expands beyond images.max_image_bytes (${this.cfg.max_image_bytes} bytes uncompressed per image)`,
      );
    }
  }
}

/** The limits of one layer's unpack (see {@link PullLimits.forLayer}). */
export class LayerAllowance {
  /** What the shared limits have granted so far (totals). */
  granted: Budget = { bytes: 0, entries: 0 };

  constructor(
    private readonly limits: PullLimits,
    readonly layer: string,
    /** The layer's own byte limit: the layer cap or the compression ratio. */
    readonly maxBytes: number,
    /** What set `maxBytes` when it is not the layer cap, for the message. */
    readonly limitText: string | undefined,
  ) {}

  /** UnpackOptions.grant: totals of at least `need`, or ResourceExhausted naming the limit. */
  readonly grant = (used: Budget, need: Budget): Promise<Budget> => this.limits.grantFor(this, used, need);

  /**
   * Ends the unpack's reservations; `charged` (the bytes it counted for) goes to the
   * pull's total when it succeeded (and refuses the layer if the image is then over its
   * cap), undefined when it failed and its snapshot goes. Idempotent.
   */
  settle(charged?: number): void {
    this.limits.settle(this, charged);
  }
}
