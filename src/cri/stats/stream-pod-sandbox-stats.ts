import type { StreamPodSandboxStatsRequest__Output } from '../gen/runtime/v1/StreamPodSandboxStatsRequest.js';
import type { StreamPodSandboxStatsResponse } from '../gen/runtime/v1/StreamPodSandboxStatsResponse.js';
import { sendPaged, type StreamHandler } from '../rpc.js';
import { filterPods, toPodStats, type Deps } from './convert.js';

export const streamPodSandboxStats =
  (d: Deps): StreamHandler<StreamPodSandboxStatsRequest__Output, StreamPodSandboxStatsResponse> =>
  async (req, _ctx, send) =>
    sendPaged((await d.stats.podsUsage(filterPods(d, req.filter))).map(toPodStats), send, (page) => ({ pod_sandbox_stats: page }));
