import type { SandboxService } from '../../sandbox/sandbox-service.js';
import type { StreamPodSandboxesRequest__Output } from '../gen/runtime/v1/StreamPodSandboxesRequest.js';
import type { StreamPodSandboxesResponse } from '../gen/runtime/v1/StreamPodSandboxesResponse.js';
import { sendPaged, type StreamHandler } from '../rpc.js';
import { filteredSandboxes } from './convert.js';

/** StreamPodSandboxes: the same list as ListPodSandbox, in pages. */
export const streamPodSandboxes =
  (svc: SandboxService): StreamHandler<StreamPodSandboxesRequest__Output, StreamPodSandboxesResponse> =>
  (req, _ctx, send) =>
    sendPaged(filteredSandboxes(svc, req.filter), send, (page) => ({ pod_sandboxes: page }));
