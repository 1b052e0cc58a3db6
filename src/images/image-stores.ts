/**
 * The two stores under the images, the content store (blobs) and the snapshotter
 * (unpacked layers), looked after together: garbage collection, recovery after a
 * restart, and the disk use of the image filesystem (ImageFsInfo).
 */
import { messageOf } from '../common/errors.js';
import type { ContentStore } from './content/content-store.js';
import type { Snapshotter } from './snapshots/snapshotter.js';

/** Blobs and snapshots, collected, recovered and measured as one. */
export class ImageStores {
  constructor(
    private readonly content: ContentStore,
    private readonly snapshots: Snapshotter,
  ) {}

  /**
   * Deletes blobs and snapshots that no image, container or pull in flight uses. What
   * goes is decided and its rows deleted synchronously, with the leases as they are at
   * that moment (`held`), so a pull cannot take a lease on something already condemned;
   * files and directories are removed afterwards.
   */
  async collect(held: (key: string) => boolean): Promise<{ blobs: number; snapshots: number }> {
    const dirs = this.snapshots.collectRows(held);
    const trash = this.content.collectRows(held);
    await this.snapshots.removeDirs(dirs);
    await this.content.emptyTrash(trash);
    return { blobs: trash.length, snapshots: dirs.length };
  }

  /** Each store recovers on its own: one failing does not keep the other from running. */
  async recover(): Promise<void> {
    const errors: unknown[] = [];
    await this.content.recover().catch((e: unknown) => errors.push(e));
    await this.snapshots.recover().catch((e: unknown) => errors.push(e));
    if (errors.length > 0) throw new AggregateError(errors, errors.map(messageOf).join('; '));
  }

  /** Bytes and inodes of the image filesystem: snapshots and blobs. */
  usage(): { bytes: number; inodes: number; mountpoint: string } {
    const s = this.snapshots.usage();
    const c = this.content.usage();
    return { bytes: s.bytes + c.bytes, inodes: s.inodes + c.count, mountpoint: s.mountpoint };
  }
}
