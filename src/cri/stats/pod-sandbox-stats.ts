import type { PodSandboxStatsRequest__Output } from '../gen/runtime/v1/PodSandboxStatsRequest.js';
import type { PodSandboxStatsResponse } from '../gen/runtime/v1/PodSandboxStatsResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { requiredString } from '../validate.js';
import { toPodStats, type Deps } from './convert.js';

export const podSandboxStats =
  (d: Deps): UnaryHandler<PodSandboxStatsRequest__Output, PodSandboxStatsResponse> =>
  async (req) => {
    const id = requiredString(req.pod_sandbox_id, 'pod_sandbox_id', 128);
    const sb = d.sandboxes.requireSandbox(id);
    return { stats: toPodStats(await d.stats.podUsage(sb)) };
  };
