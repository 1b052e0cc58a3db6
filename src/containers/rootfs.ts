/**
 * A container's rootfs: the overlay of its image layers and writable layer, mounted on
 * the bundle's rootfs directory. The one privileged step of the lifecycle itself, behind
 * a seam so that ContainerService runs unprivileged in unit tests.
 */
import { BerthError, errnoOf, messageOf } from '../common/errors.js';
import { mount, umount } from '../common/mount.js';

/** Mounts and unmounts a container's rootfs. */
export interface RootfsMounter {
  /** Mounts the overlay made of the snapshot `options` on `rootfs`. */
  mount(rootfs: string, options: string): Promise<void>;
  /** Unmounts `rootfs`; nothing when it is not a mount point (any more) or gone. */
  unmount(rootfs: string): Promise<void>;
}

/** mount(2) and umount2(2) of an overlay, through the addon. */
export const overlayRootfs: RootfsMounter = {
  mount: (rootfs, options) => mount('overlay', rootfs, 'overlay', 0, options),
  unmount,
};

async function unmount(path: string): Promise<void> {
  try {
    await umount(path);
  } catch (err) {
    // EINVAL: not a mount point (any more); ENOENT: gone.
    if (errnoOf(err) === 'EINVAL' || errnoOf(err) === 'ENOENT') return;
    throw new BerthError('Internal', `unmounting ${path}: ${messageOf(err)}`, { cause: err });
  }
}
