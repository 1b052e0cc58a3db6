import type { ContainerService } from '../../containers/container-service.js';
import type { StartContainerRequest__Output } from '../gen/runtime/v1/StartContainerRequest.js';
import type { StartContainerResponse } from '../gen/runtime/v1/StartContainerResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { requireId } from './convert.js';

export const startContainer =
  (svc: ContainerService): UnaryHandler<StartContainerRequest__Output, StartContainerResponse> =>
  async (req) => {
    await svc.start(requireId(req.container_id, 'container_id'));
    return {};
  };
