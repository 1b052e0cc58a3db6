import type { CadvisorCollector } from '../../stats/cadvisor-samples.js';
import type { ListPodSandboxMetricsRequest__Output } from '../gen/runtime/v1/ListPodSandboxMetricsRequest.js';
import type { ListPodSandboxMetricsResponse } from '../gen/runtime/v1/ListPodSandboxMetricsResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { toPodSandboxMetrics } from './convert.js';

/** ListPodSandboxMetrics: every ready pod's and running container's cAdvisor metrics (KEP-2371). */
export const listPodSandboxMetrics =
  (collector: CadvisorCollector): UnaryHandler<ListPodSandboxMetricsRequest__Output, ListPodSandboxMetricsResponse> =>
  async () => ({ pod_metrics: (await collector.collect()).map(toPodSandboxMetrics) });
