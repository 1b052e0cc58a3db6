import type { ContainerStatsRequest__Output } from '../gen/runtime/v1/ContainerStatsRequest.js';
import type { ContainerStatsResponse } from '../gen/runtime/v1/ContainerStatsResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { requiredString } from '../validate.js';
import { toContainerStats, type Deps } from './convert.js';

export const containerStats =
  (d: Deps): UnaryHandler<ContainerStatsRequest__Output, ContainerStatsResponse> =>
  async (req) => {
    const id = requiredString(req.container_id, 'container_id', 128);
    const c = d.containers.requireContainer(id, { hidden: ['removing'] });
    return { stats: toContainerStats(await d.stats.containerUsage(c)) };
  };
