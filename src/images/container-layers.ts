/**
 * The containers' writable layers: the active snapshots on top of an image's layers,
 * one per container, and their disk use for ImageFsInfo's container filesystem.
 */
import { measure } from '../common/disk-usage.js';
import { BerthError } from '../common/errors.js';
import type { ImageRecord } from './image-repository.js';
import type { Snapshotter } from './snapshots/snapshotter.js';

/** How old the measured use of the containers' writable layers may be before it is walked again. */
export const CONTAINER_LAYERS_TTL_MS = 10_000;

type LayersUsage = { bytes: bigint; inodes: bigint; mountpoint: string };

/** Creates, finds, removes and measures the containers' writable layers. */
export class ContainerLayers {
  private readonly cache: { at: number; value?: LayersUsage; pending?: Promise<LayersUsage> } = { at: 0 };

  constructor(private readonly snapshots: Snapshotter) {}

  /** A container's writable layer on an image (see OverlaySnapshotter.prepareActive). */
  prepare(containerId: string, image: ImageRecord): Promise<{ options: string }> {
    const top = image.layers[image.layers.length - 1];
    if (!top) throw new BerthError('FailedPrecondition', `image ${image.id} has no layers`);
    return this.snapshots.prepareActive(containerId, top.chainId);
  }

  /** The directory holding what a container wrote (its writable layer), if it has one. */
  dir(containerId: string): string | undefined {
    return this.snapshots.activeDir(containerId);
  }

  remove(containerId: string): Promise<void> {
    return this.snapshots.removeActive(containerId);
  }

  /**
   * Disk use of the containers' writable layers (the upper dirs of the active snapshots,
   * on the filesystem of the snapshots dir), as du counts it. Walked at most every
   * {@link CONTAINER_LAYERS_TTL_MS}; a stale figure is answered while a walk runs.
   */
  async usage(): Promise<LayersUsage> {
    const c = this.cache;
    if (Date.now() - c.at >= CONTAINER_LAYERS_TTL_MS && !c.pending) {
      c.pending = (async () => {
        let bytes = 0n;
        let inodes = 0n;
        for (const dir of this.snapshots.activeDirs()) {
          // A container removed meanwhile takes its layer with it: it counts nothing.
          const u = await measure(dir).catch(() => ({ bytes: 0n, inodes: 0n }));
          bytes += u.bytes;
          inodes += u.inodes;
        }
        c.value = { bytes, inodes, mountpoint: this.snapshots.usage().mountpoint };
        c.at = Date.now();
        return c.value;
      })().finally(() => (c.pending = undefined));
    }
    return c.value ?? (await c.pending)!;
  }
}
