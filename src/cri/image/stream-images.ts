import type { ImageService } from '../../images/image-service.js';
import type { StreamImagesRequest__Output } from '../gen/runtime/v1/StreamImagesRequest.js';
import type { StreamImagesResponse } from '../gen/runtime/v1/StreamImagesResponse.js';
import { sendPaged, type StreamHandler } from '../rpc.js';
import { filteredImages } from './convert.js';

/** StreamImages: the same list as ListImages, in pages. */
export const streamImages =
  (images: ImageService): StreamHandler<StreamImagesRequest__Output, StreamImagesResponse> =>
  (req, _ctx, send) =>
    sendPaged(filteredImages(images, req.filter), send, (page) => ({ images: page }));
