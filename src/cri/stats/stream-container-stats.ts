import type { StreamContainerStatsRequest__Output } from '../gen/runtime/v1/StreamContainerStatsRequest.js';
import type { StreamContainerStatsResponse } from '../gen/runtime/v1/StreamContainerStatsResponse.js';
import { sendPaged, type StreamHandler } from '../rpc.js';
import { filterContainers, toContainerStats, unfiltered, type Deps } from './convert.js';

export const streamContainerStats =
  (d: Deps): StreamHandler<StreamContainerStatsRequest__Output, StreamContainerStatsResponse> =>
  async (req, _ctx, send) =>
    sendPaged((await d.stats.containersUsage(filterContainers(d, req.filter), unfiltered(req.filter))).map(toContainerStats), send, (page) => ({
      container_stats: page,
    }));
