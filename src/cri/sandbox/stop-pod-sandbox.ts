import type { SandboxService } from '../../sandbox/sandbox-service.js';
import type { StopPodSandboxRequest__Output } from '../gen/runtime/v1/StopPodSandboxRequest.js';
import type { StopPodSandboxResponse } from '../gen/runtime/v1/StopPodSandboxResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { requireId } from './convert.js';

/** StopPodSandbox: per CRI, stopping an unknown or stopped pod succeeds. */
export const stopPodSandbox =
  (svc: SandboxService): UnaryHandler<StopPodSandboxRequest__Output, StopPodSandboxResponse> =>
  async (req, ctx) => {
    await svc.stop(requireId(req.pod_sandbox_id, 'pod_sandbox_id'), ctx.signal);
    return {};
  };
