import { BerthError } from '../../common/errors.js';
import type { ContainerService } from '../../containers/container-service.js';
import type { StopContainerRequest__Output } from '../gen/runtime/v1/StopContainerRequest.js';
import type { StopContainerResponse } from '../gen/runtime/v1/StopContainerResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { requireId } from './convert.js';

/** StopContainer: per CRI, stopping an exited container succeeds. */
export const stopContainer =
  (svc: ContainerService): UnaryHandler<StopContainerRequest__Output, StopContainerResponse> =>
  async (req, ctx) => {
    const timeout = Number(req.timeout);
    if (!Number.isFinite(timeout) || timeout < 0 || timeout > 86_400)
      throw new BerthError('InvalidArgument', `timeout ${req.timeout} is not a number of seconds from 0 to 86400`);
    await svc.stop(requireId(req.container_id, 'container_id'), timeout, ctx.signal);
    return {};
  };
