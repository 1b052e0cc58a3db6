import { nowNs } from '../../common/clock.js';
import type { ImageService } from '../../images/image-service.js';
import type { ImageFsInfoRequest__Output } from '../gen/runtime/v1/ImageFsInfoRequest.js';
import type { ImageFsInfoResponse } from '../gen/runtime/v1/ImageFsInfoResponse.js';
import type { UnaryHandler } from '../rpc.js';

/**
 * ImageFsInfo. `image_filesystems`: bytes and inodes of image storage (committed layer
 * snapshots and blobs). `container_filesystems`: the filesystem of the containers'
 * writable layers, with what those layers hold. berth keeps both under its root (the
 * snapshots dir), so both name that mountpoint, and kubelet sees one filesystem, not a
 * split image filesystem.
 */
export const imageFsInfo =
  (images: ImageService): UnaryHandler<ImageFsInfoRequest__Output, ImageFsInfoResponse> =>
  async () => {
    const timestamp = nowNs();
    const u = images.usage();
    const c = await images.containerLayersUsage();
    return {
      image_filesystems: [{ timestamp, fs_id: { mountpoint: u.mountpoint }, used_bytes: { value: String(u.bytes) }, inodes_used: { value: String(u.inodes) } }],
      container_filesystems: [
        { timestamp, fs_id: { mountpoint: c.mountpoint }, used_bytes: { value: String(c.bytes) }, inodes_used: { value: String(c.inodes) } },
      ],
    };
  };
