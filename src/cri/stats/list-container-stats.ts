import type { ListContainerStatsRequest__Output } from '../gen/runtime/v1/ListContainerStatsRequest.js';
import type { ListContainerStatsResponse } from '../gen/runtime/v1/ListContainerStatsResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { filterContainers, toContainerStats, unfiltered, type Deps } from './convert.js';

export const listContainerStats =
  (d: Deps): UnaryHandler<ListContainerStatsRequest__Output, ListContainerStatsResponse> =>
  async (req) => ({
    stats: (await d.stats.containersUsage(filterContainers(d, req.filter), unfiltered(req.filter))).map(toContainerStats),
  });
