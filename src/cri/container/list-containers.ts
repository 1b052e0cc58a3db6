import type { ContainerService } from '../../containers/container-service.js';
import type { ListContainersRequest__Output } from '../gen/runtime/v1/ListContainersRequest.js';
import type { ListContainersResponse } from '../gen/runtime/v1/ListContainersResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { filteredContainers } from './convert.js';

export const listContainers =
  (svc: ContainerService): UnaryHandler<ListContainersRequest__Output, ListContainersResponse> =>
  async (req) => ({
    containers: filteredContainers(svc, req.filter),
  });
