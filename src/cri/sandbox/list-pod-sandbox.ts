import type { SandboxService } from '../../sandbox/sandbox-service.js';
import type { ListPodSandboxRequest__Output } from '../gen/runtime/v1/ListPodSandboxRequest.js';
import type { ListPodSandboxResponse } from '../gen/runtime/v1/ListPodSandboxResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { filteredSandboxes } from './convert.js';

export const listPodSandbox =
  (svc: SandboxService): UnaryHandler<ListPodSandboxRequest__Output, ListPodSandboxResponse> =>
  async (req) => ({
    items: filteredSandboxes(svc, req.filter),
  });
