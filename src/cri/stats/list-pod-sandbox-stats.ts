import type { ListPodSandboxStatsRequest__Output } from '../gen/runtime/v1/ListPodSandboxStatsRequest.js';
import type { ListPodSandboxStatsResponse } from '../gen/runtime/v1/ListPodSandboxStatsResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { filterPods, toPodStats, type Deps } from './convert.js';

export const listPodSandboxStats =
  (d: Deps): UnaryHandler<ListPodSandboxStatsRequest__Output, ListPodSandboxStatsResponse> =>
  async (req) => ({
    stats: (await d.stats.podsUsage(filterPods(d, req.filter))).map(toPodStats),
  });
