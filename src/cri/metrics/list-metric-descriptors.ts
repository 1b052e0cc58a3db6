import type { ListMetricDescriptorsRequest__Output } from '../gen/runtime/v1/ListMetricDescriptorsRequest.js';
import type { ListMetricDescriptorsResponse } from '../gen/runtime/v1/ListMetricDescriptorsResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { metricDescriptors } from './convert.js';

/** ListMetricDescriptors: the names, help and label keys of what ListPodSandboxMetrics returns. */
export const listMetricDescriptors = (): UnaryHandler<ListMetricDescriptorsRequest__Output, ListMetricDescriptorsResponse> => {
  const descriptors = metricDescriptors();
  return async () => ({ descriptors });
};
