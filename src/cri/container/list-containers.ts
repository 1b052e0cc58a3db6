import type { ContainerService } from '../../containers/container-service.js';
import type { Container } from '../gen/runtime/v1/Container.js';
import type { ListContainersRequest__Output } from '../gen/runtime/v1/ListContainersRequest.js';
import type { ListContainersResponse } from '../gen/runtime/v1/ListContainersResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { keptAnswer, sameItems } from '../wrap.js';
import { filteredContainers } from './convert.js';

/**
 * ListContainers. The messages of unchanged containers are the same objects from call to
 * call (convert.ts), so when all of them are, the last answer (and its encoding) is given
 * again: kubelet's PLEG lists every second, mostly the same containers.
 */
export const listContainers = (svc: ContainerService): UnaryHandler<ListContainersRequest__Output, ListContainersResponse> => {
  let last: { items: Container[]; answer: ListContainersResponse } | undefined;
  return async (req) => {
    const items = filteredContainers(svc, req.filter);
    if (last === undefined || !sameItems(last.items, items)) last = { items, answer: keptAnswer<ListContainersResponse>({ containers: items }) };
    return last.answer;
  };
};
