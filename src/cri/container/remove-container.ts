import type { ContainerService } from '../../containers/container-service.js';
import type { RemoveContainerRequest__Output } from '../gen/runtime/v1/RemoveContainerRequest.js';
import type { RemoveContainerResponse } from '../gen/runtime/v1/RemoveContainerResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { requireId } from './convert.js';

/** RemoveContainer: per CRI, removing an unknown container succeeds; a running one is killed. */
export const removeContainer =
  (svc: ContainerService): UnaryHandler<RemoveContainerRequest__Output, RemoveContainerResponse> =>
  async (req) => {
    await svc.remove(requireId(req.container_id, 'container_id'));
    return {};
  };
