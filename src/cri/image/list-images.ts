import type { ImageService } from '../../images/image-service.js';
import type { ListImagesRequest__Output } from '../gen/runtime/v1/ListImagesRequest.js';
import type { ListImagesResponse } from '../gen/runtime/v1/ListImagesResponse.js';
import type { StreamImagesRequest__Output } from '../gen/runtime/v1/StreamImagesRequest.js';
import type { StreamImagesResponse } from '../gen/runtime/v1/StreamImagesResponse.js';
import type { StreamHandler, UnaryHandler } from '../rpc.js';
import { filteredImages } from './convert.js';

export const listImages = (images: ImageService): UnaryHandler<ListImagesRequest__Output, ListImagesResponse> => async (req) => ({
  images: filteredImages(images, req.filter),
});

/** Images per StreamImages message: bounded so no message nears the 16 MiB cap. */
const PAGE = 500;

/** StreamImages: the same list as ListImages, in pages. */
export const streamImages = (images: ImageService): StreamHandler<StreamImagesRequest__Output, StreamImagesResponse> => async (req, _ctx, send) => {
  const all = filteredImages(images, req.filter);
  for (let i = 0; i < all.length; i += PAGE) await send({ images: all.slice(i, i + PAGE) });
};
