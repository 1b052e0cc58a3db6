import type { ImageService } from '../../images/image-service.js';
import type { ImageFsInfoRequest__Output } from '../gen/runtime/v1/ImageFsInfoRequest.js';
import type { ImageFsInfoResponse } from '../gen/runtime/v1/ImageFsInfoResponse.js';
import type { UnaryHandler } from '../rpc.js';

/** ImageFsInfo: bytes and inodes of image storage (snapshots and blobs), with its mountpoint. */
export const imageFsInfo =
  (images: ImageService): UnaryHandler<ImageFsInfoRequest__Output, ImageFsInfoResponse> =>
  async () => {
    const u = images.usage();
    const usage = {
      timestamp: String(BigInt(Date.now()) * 1_000_000n),
      fs_id: { mountpoint: u.mountpoint },
      used_bytes: { value: String(u.bytes) },
      inodes_used: { value: String(u.inodes) },
    };
    return { image_filesystems: [usage], container_filesystems: [] };
  };
