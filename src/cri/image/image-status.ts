import type { ImageService } from '../../images/image-service.js';
import type { ImageStatusRequest__Output } from '../gen/runtime/v1/ImageStatusRequest.js';
import type { ImageStatusResponse } from '../gen/runtime/v1/ImageStatusResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { requireImageName, toCriImage } from './convert.js';

/**
 * ImageStatus: per CRI, an image that is not present is an empty response, not an
 * error (kubelet uses it to decide whether to pull). `verbose` adds the manifest,
 * layers and run config under info["info"] as JSON.
 */
export const imageStatus =
  (images: ImageService): UnaryHandler<ImageStatusRequest__Output, ImageStatusResponse> =>
  async (req) => {
    const img = images.find(requireImageName(req.image, 'image.image'));
    if (!img) return { info: {} };
    const info: Record<string, string> = {};
    if (req.verbose) {
      info.info = JSON.stringify({
        id: img.id,
        manifestDigest: img.manifestDigest,
        pulledAt: new Date(img.createdAt).toISOString(),
        layers: img.layers,
        config: img.config,
      });
    }
    return { image: toCriImage(img), info };
  };
