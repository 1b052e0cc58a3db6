import type { CadvisorCollector } from '../../stats/cadvisor-samples.js';
import type { StreamPodSandboxMetricsRequest__Output } from '../gen/runtime/v1/StreamPodSandboxMetricsRequest.js';
import type { StreamPodSandboxMetricsResponse } from '../gen/runtime/v1/StreamPodSandboxMetricsResponse.js';
import { sendPaged, type StreamHandler } from '../rpc.js';
import { toPodSandboxMetrics } from './convert.js';

/** StreamPodSandboxMetrics: ListPodSandboxMetrics's answer in pages. */
export const streamPodSandboxMetrics =
  (collector: CadvisorCollector): StreamHandler<StreamPodSandboxMetricsRequest__Output, StreamPodSandboxMetricsResponse> =>
  async (_req, _ctx, send) =>
    sendPaged((await collector.collect()).map(toPodSandboxMetrics), send, (page) => ({ pod_sandbox_metrics: page }));
