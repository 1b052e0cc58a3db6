import type { ImageService } from '../../images/image-service.js';
import type { PullImageRequest__Output } from '../gen/runtime/v1/PullImageRequest.js';
import type { PullImageResponse } from '../gen/runtime/v1/PullImageResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { boundedString } from '../validate.js';
import { credentialsFrom, requireImageName } from './convert.js';

/** PullImage: returns the image ID (config digest) as image_ref, as kubelet expects. */
export const pullImage =
  (images: ImageService): UnaryHandler<PullImageRequest__Output, PullImageResponse> =>
  async (req, ctx) => {
    const name = boundedString(requireImageName(req.image, 'image.image'), 'image.image', 1024);
    const img = await images.pull(name, credentialsFrom(req.auth), ctx.signal);
    return { image_ref: img.id };
  };
