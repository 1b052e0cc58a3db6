import type { ImageService } from '../../images/image-service.js';
import type { ListImagesRequest__Output } from '../gen/runtime/v1/ListImagesRequest.js';
import type { ListImagesResponse } from '../gen/runtime/v1/ListImagesResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { filteredImages } from './convert.js';

/** ListImages: every image, or those the filter names. */
export const listImages =
  (images: ImageService): UnaryHandler<ListImagesRequest__Output, ListImagesResponse> =>
  async (req) => ({
    images: filteredImages(images, req.filter),
  });
