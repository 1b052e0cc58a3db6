import { BerthError } from '../../common/errors.js';
import type { ContainerService } from '../../containers/container-service.js';
import type { UpdateContainerResourcesRequest__Output } from '../gen/runtime/v1/UpdateContainerResourcesRequest.js';
import type { UpdateContainerResourcesResponse } from '../gen/runtime/v1/UpdateContainerResourcesResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { required } from '../validate.js';
import { requireId, toSpecResources } from './convert.js';

/** UpdateContainerResources: CPU and memory of a running container, applied and recorded. */
export const updateContainerResources =
  (svc: ContainerService): UnaryHandler<UpdateContainerResourcesRequest__Output, UpdateContainerResourcesResponse> =>
  async (req) => {
    const linux = required(req.linux, 'linux');
    const r = toSpecResources(linux);
    if (r.memory_limit_in_bytes < 0 || r.cpu_shares < 0 || r.cpu_period < 0)
      throw new BerthError('InvalidArgument', 'linux: negative memory limit, CPU shares or CPU period');
    // Only set fields are applied and recorded (crictl sends zero for every flag not given).
    await svc.updateResources(requireId(req.container_id, 'container_id'), r);
    return {};
  };
