/**
 * Images used as volumes (CRI Mount.image): the record that a container mounts an
 * image, which keeps RemoveImage from removing it while the container exists.
 */
import { BerthError } from '../common/errors.js';
import type { ImageRecord, ImageRepository } from './image-repository.js';
import type { Snapshotter } from './snapshots/snapshotter.js';

/**
 * Records that container `containerId` mounts `image` (found for `spec`, the CRI
 * mount's image) as its mount `index`, and returns the image's layer directories, top
 * first. NotFound when the image is absent, as kubelet expects (it pulls and retries).
 */
export function useImageAsVolume(
  repo: ImageRepository,
  snapshots: Snapshotter,
  image: ImageRecord | undefined,
  containerId: string,
  index: number,
  spec: string,
): { image: ImageRecord; lowerDirs: string[] } {
  if (!image) throw new BerthError('NotFound', `mounts[${index}].image: image "${spec}" not found; pull it first`);
  const top = image.layers[image.layers.length - 1];
  if (!top) throw new BerthError('FailedPrecondition', `mounts[${index}].image: image ${image.id} has no layers`);
  const lowerDirs = snapshots.lowerDirs(top.chainId);
  if (lowerDirs.length !== image.layers.length) {
    throw new BerthError('NotFound', `mounts[${index}].image: layer ${top.chainId} of image ${image.id} is not unpacked; pull the image again`);
  }
  repo.recordVolumeUse({ containerId, index, imageId: image.id, chainId: top.chainId });
  return { image, lowerDirs };
}

/** FailedPrecondition while a container mounts `img` as a volume. */
export function refuseRemovalWhileMounted(repo: ImageRepository, img: ImageRecord): void {
  const uses = repo.volumeUses(img.id);
  if (uses.length > 0) {
    const by = uses.map((u) => `${u.containerId} (mounts[${u.index}])`).join(', ');
    throw new BerthError('FailedPrecondition', `image ${img.id} is in use as a volume by container ${by}; remove the container first`);
  }
}
