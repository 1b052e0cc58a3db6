import type { SandboxService } from '../../sandbox/sandbox-service.js';
import { toSpecResources } from '../container/convert.js';
import type { UpdatePodSandboxResourcesRequest__Output } from '../gen/runtime/v1/UpdatePodSandboxResourcesRequest.js';
import type { UpdatePodSandboxResourcesResponse } from '../gen/runtime/v1/UpdatePodSandboxResourcesResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { requireId } from './convert.js';

/**
 * UpdatePodSandboxResources: kubelet calls it after it resized the pod's cgroup (its
 * cgroup_parent); berth records the new overhead and resources (shown by verbose
 * PodSandboxStatus) and writes no cgroup. NOT_FOUND for an unknown pod.
 */
export const updatePodSandboxResources =
  (svc: SandboxService): UnaryHandler<UpdatePodSandboxResourcesRequest__Output, UpdatePodSandboxResourcesResponse> =>
  async (req) => {
    await svc.updateResources(requireId(req.pod_sandbox_id, 'pod_sandbox_id'), {
      ...(req.overhead ? { overhead: toSpecResources(req.overhead) } : {}),
      ...(req.resources ? { resources: toSpecResources(req.resources) } : {}),
    });
    return {};
  };
