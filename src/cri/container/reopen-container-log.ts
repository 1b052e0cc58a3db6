import type { ContainerService } from '../../containers/container-service.js';
import type { ReopenContainerLogRequest__Output } from '../gen/runtime/v1/ReopenContainerLogRequest.js';
import type { ReopenContainerLogResponse } from '../gen/runtime/v1/ReopenContainerLogResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { requireId } from './convert.js';

/** ReopenContainerLog: kubelet rotated the log file; the shim opens a new one. */
export const reopenContainerLog =
  (svc: ContainerService): UnaryHandler<ReopenContainerLogRequest__Output, ReopenContainerLogResponse> =>
  async (req) => {
    await svc.reopenLog(requireId(req.container_id, 'container_id'));
    return {};
  };
