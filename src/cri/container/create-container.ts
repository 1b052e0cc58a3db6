import type { ContainerService } from '../../containers/container-service.js';
import type { CreateContainerRequest__Output } from '../gen/runtime/v1/CreateContainerRequest.js';
import type { CreateContainerResponse } from '../gen/runtime/v1/CreateContainerResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { boundedString, required, requiredString } from '../validate.js';
import { requireId, toSpecConfig } from './convert.js';

export const createContainer =
  (svc: ContainerService): UnaryHandler<CreateContainerRequest__Output, CreateContainerResponse> =>
  async (req, ctx) => {
    const cfg = required(req.config, 'config');
    const md = required(cfg.metadata, 'config.metadata');
    const image = requiredString(cfg.image?.image, 'config.image.image', 1024);
    const containerId = await svc.create(
      {
        sandboxId: requireId(req.pod_sandbox_id, 'pod_sandbox_id'),
        name: requiredString(md.name, 'config.metadata.name', 253),
        attempt: md.attempt,
        image,
        logPath: boundedString(cfg.log_path, 'config.log_path', 4096),
        config: toSpecConfig(cfg),
        imageSpec: {
          annotations: cfg.image?.annotations ?? {},
          userSpecifiedImage: cfg.image?.user_specified_image ?? '',
          runtimeHandler: cfg.image?.runtime_handler ?? '',
        },
        raw: cfg as unknown as Record<string, unknown>,
      },
      ctx.signal,
    );
    return { container_id: containerId };
  };
