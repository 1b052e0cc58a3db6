import type { SandboxService } from '../../sandbox/sandbox-service.js';
import type { ListPodSandboxRequest__Output } from '../gen/runtime/v1/ListPodSandboxRequest.js';
import type { ListPodSandboxResponse } from '../gen/runtime/v1/ListPodSandboxResponse.js';
import type { PodSandbox } from '../gen/runtime/v1/PodSandbox.js';
import type { UnaryHandler } from '../rpc.js';
import { keptAnswer, sameItems } from '../wrap.js';
import { filteredSandboxes } from './convert.js';

/**
 * ListPodSandbox. The messages of unchanged pods are the same objects from call to call
 * (convert.ts), so when all of them are, the last answer (and its encoding) is given
 * again: kubelet's PLEG lists every second, mostly the same pods.
 */
export const listPodSandbox = (svc: SandboxService): UnaryHandler<ListPodSandboxRequest__Output, ListPodSandboxResponse> => {
  let last: { items: PodSandbox[]; answer: ListPodSandboxResponse } | undefined;
  return async (req) => {
    const items = filteredSandboxes(svc, req.filter);
    if (last === undefined || !sameItems(last.items, items)) last = { items, answer: keptAnswer<ListPodSandboxResponse>({ items }) };
    return last.answer;
  };
};
