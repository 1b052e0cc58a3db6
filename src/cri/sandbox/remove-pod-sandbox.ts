import type { SandboxService } from '../../sandbox/sandbox-service.js';
import type { RemovePodSandboxRequest__Output } from '../gen/runtime/v1/RemovePodSandboxRequest.js';
import type { RemovePodSandboxResponse } from '../gen/runtime/v1/RemovePodSandboxResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { requireId } from './convert.js';

/** RemovePodSandbox: per CRI, removing an unknown pod succeeds; a running pod is stopped first. */
export const removePodSandbox =
  (svc: SandboxService): UnaryHandler<RemovePodSandboxRequest__Output, RemovePodSandboxResponse> =>
  async (req, ctx) => {
    await svc.remove(requireId(req.pod_sandbox_id, 'pod_sandbox_id'), ctx.signal);
    return {};
  };
