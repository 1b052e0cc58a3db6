import type { ContainerService } from '../../containers/container-service.js';
import type { StreamContainersRequest__Output } from '../gen/runtime/v1/StreamContainersRequest.js';
import type { StreamContainersResponse } from '../gen/runtime/v1/StreamContainersResponse.js';
import { sendPaged, type StreamHandler } from '../rpc.js';
import { filteredContainers } from './convert.js';

export const streamContainers =
  (svc: ContainerService): StreamHandler<StreamContainersRequest__Output, StreamContainersResponse> =>
  (req, _ctx, send) =>
    sendPaged(filteredContainers(svc, req.filter), send, (page) => ({ containers: page }));
