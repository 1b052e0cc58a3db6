/**
 * PortForward: validates the pod (it must be ready) and hands back a single-use URL of
 * the streaming server, where the client asks for ports stream by stream. Like
 * containerd, berth does not restrict the ports to the request's list: kubelet names
 * each port in the streams it opens.
 */
import { BerthError } from '../../common/errors.js';
import type { SandboxService } from '../../sandbox/sandbox-service.js';
import type { StreamingServer } from '../../streaming/server.js';
import type { PortForwardRequest__Output } from '../gen/runtime/v1/PortForwardRequest.js';
import type { PortForwardResponse } from '../gen/runtime/v1/PortForwardResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { requiredString } from '../validate.js';

export const portForward =
  (d: { sandboxes: SandboxService; streaming: StreamingServer }): UnaryHandler<PortForwardRequest__Output, PortForwardResponse> =>
  async (req) => {
    const id = requiredString(req.pod_sandbox_id, 'pod_sandbox_id', 128);
    for (const p of req.port) if (!(p >= 1 && p <= 65535)) throw new BerthError('InvalidArgument', `port ${p} is not from 1 to 65535`);
    const sb = d.sandboxes.requireSandbox(id, { states: ['ready'] });
    return { url: d.streaming.portForwardUrl(sb.id) };
  };
