import type { ImageService } from '../../images/image-service.js';
import type { ListImagesRequest__Output } from '../gen/runtime/v1/ListImagesRequest.js';
import type { ListImagesResponse } from '../gen/runtime/v1/ListImagesResponse.js';
import type { StreamImagesRequest__Output } from '../gen/runtime/v1/StreamImagesRequest.js';
import type { StreamImagesResponse } from '../gen/runtime/v1/StreamImagesResponse.js';
import { sendPaged, type StreamHandler, type UnaryHandler } from '../rpc.js';
import { filteredImages } from './convert.js';

export const listImages =
  (images: ImageService): UnaryHandler<ListImagesRequest__Output, ListImagesResponse> =>
  async (req) => ({
    images: filteredImages(images, req.filter),
  });

/** StreamImages: the same list as ListImages, in pages. */
export const streamImages =
  (images: ImageService): StreamHandler<StreamImagesRequest__Output, StreamImagesResponse> =>
  (req, _ctx, send) =>
    sendPaged(filteredImages(images, req.filter), send, (page) => ({ images: page }));
