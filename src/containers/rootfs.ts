/**
 * A container's rootfs: the overlay of its image layers and writable layer, mounted on
 * the bundle's rootfs directory. The one privileged step of the lifecycle itself, behind
 * a seam so that ContainerService runs unprivileged in unit tests.
 */
import { BerthError, errnoOf, messageOf } from '../common/errors.js';
import { MAX_MOUNT_DATA, mount, umount } from '../common/mount.js';

/** Mounts and unmounts a container's rootfs. */
export interface RootfsMounter {
  /** Mounts the overlay made of the snapshot `options` on `rootfs`. */
  mount(rootfs: string, options: string): Promise<void>;
  /** Unmounts `rootfs`; nothing when it is not a mount point (any more) or gone. */
  unmount(rootfs: string): Promise<void>;
}

/** mount(2) and umount2(2) of an overlay, through the addon. */
export const overlayRootfs: RootfsMounter = {
  mount: mountOverlay,
  unmount,
};

const VOLATILE = ',volatile';
/** Cleared when the kernel refuses `volatile` (before Linux 5.10). */
let volatileKnown = true;

/**
 * The overlay is mounted `volatile` when the kernel has it (Linux 5.10+): overlayfs then
 * skips syncing the upper filesystem, above all at unmount, which otherwise syncs the whole
 * filesystem that holds the writable layers, dirty pages of every other container
 * included (measured on a busy node: 27 to 477 ms per unmount, against under 1 ms). What
 * volatile gives up is an upper dir that can be mounted again after a crash of the host;
 * a container's writable layer is never mounted again (CRI starts no container twice:
 * after a reboot its containers are exited, and only removed). Mounted without it when
 * the kernel refuses it (EINVAL) or the options would not fit in the page mount(2) reads.
 */
async function mountOverlay(rootfs: string, options: string): Promise<void> {
  if (volatileKnown && Buffer.byteLength(options + VOLATILE) <= MAX_MOUNT_DATA) {
    try {
      return await mount('overlay', rootfs, 'overlay', 0, options + VOLATILE);
    } catch (err) {
      if (errnoOf(err) !== 'EINVAL') throw err;
      // An old kernel (unknown option), or a fault of the mount itself, which the mount without it reports.
      await mount('overlay', rootfs, 'overlay', 0, options);
      volatileKnown = false;
      return;
    }
  }
  return mount('overlay', rootfs, 'overlay', 0, options);
}

async function unmount(path: string): Promise<void> {
  try {
    await umount(path);
  } catch (err) {
    // EINVAL: not a mount point (any more); ENOENT: gone.
    if (errnoOf(err) === 'EINVAL' || errnoOf(err) === 'ENOENT') return;
    throw new BerthError('Internal', `unmounting ${path}: ${messageOf(err)}`, { cause: err });
  }
}
