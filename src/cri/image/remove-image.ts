import type { ImageService } from '../../images/image-service.js';
import type { RemoveImageRequest__Output } from '../gen/runtime/v1/RemoveImageRequest.js';
import type { RemoveImageResponse } from '../gen/runtime/v1/RemoveImageResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { requireImageName } from './convert.js';

/**
 * RemoveImage by ID, tag or digest: removes the image with all its names. CRI requires
 * it to succeed when the image is already gone.
 */
export const removeImage =
  (images: ImageService): UnaryHandler<RemoveImageRequest__Output, RemoveImageResponse> =>
  async (req) => {
    await images.remove(requireImageName(req.image, 'image.image'));
    return {};
  };
