import { BerthError } from '../../common/errors.js';
import type { ContainerService } from '../../containers/container-service.js';
import type { UpdateContainerResourcesRequest__Output } from '../gen/runtime/v1/UpdateContainerResourcesRequest.js';
import type { UpdateContainerResourcesResponse } from '../gen/runtime/v1/UpdateContainerResourcesResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { required } from '../validate.js';
import { mergeResources, recordedResources, requireId, toSpecResources } from './convert.js';

/** UpdateContainerResources: CPU and memory of a running container, applied and recorded. */
export const updateContainerResources =
  (svc: ContainerService): UnaryHandler<UpdateContainerResourcesRequest__Output, UpdateContainerResourcesResponse> =>
  async (req) => {
    const linux = required(req.linux, 'linux');
    const r = toSpecResources(linux);
    if (r.memory_limit_in_bytes < 0 || r.cpu_shares < 0 || r.cpu_period < 0)
      throw new BerthError('InvalidArgument', 'linux: negative memory limit, CPU shares or CPU period');
    const cid = requireId(req.container_id, 'container_id');
    // Recorded as merged: crictl sends only the fields given on its command line (zero for
    // the rest), and only set fields are applied, so the others stay as they were.
    const cur = svc.find(cid);
    await svc.updateResources(cid, r, mergeResources(cur ? recordedResources(cur) : undefined, linux));
    return {};
  };
