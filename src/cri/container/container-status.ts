import type { ContainerRecord } from '../../containers/container-repository.js';
import type { ContainerService } from '../../containers/container-service.js';
import type { ContainerStatus } from '../gen/runtime/v1/ContainerStatus.js';
import type { ContainerStatusRequest__Output } from '../gen/runtime/v1/ContainerStatusRequest.js';
import type { ContainerStatusResponse } from '../gen/runtime/v1/ContainerStatusResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { requireId, toCriContainer, verboseInfo } from './convert.js';

/**
 * A container's CRI status from its record (the facts decided at creation and updated
 * since). ContainerStatus answers with it; GetContainerEvents attaches it.
 */
export function criContainerStatus(svc: ContainerService, c: ContainerRecord): ContainerStatus {
  const base = toCriContainer(c, svc.imageNamesOf(c));
  const { resources, user, stopSignal } = c.facts;
  return {
    id: c.id,
    metadata: base.metadata,
    state: base.state,
    created_at: c.createdAt,
    started_at: c.startedAt,
    finished_at: c.finishedAt,
    exit_code: c.exitCode ?? 0,
    image: base.image,
    image_ref: base.image_ref,
    image_id: c.imageId,
    reason: c.reason,
    message: c.message,
    labels: base.labels,
    annotations: base.annotations,
    mounts: c.facts.mounts as never,
    log_path: c.logPath,
    ...(resources ? { resources: { linux: resources } } : {}),
    ...(user ? { user: { linux: { uid: user.uid, gid: user.gid, supplemental_groups: user.supplementalGroups } } } : {}),
    stop_signal: (stopSignal ?? 'SIGNAL_RUNTIME_DEFAULT') as never,
  };
}

/**
 * ContainerStatus. `resources` are the ones in force (as created, then as updated);
 * `user` is the identity the process runs as. With `verbose`, info["info"] holds what
 * containerd and CRI-O put there too (so `crictl inspect` templates work alike):
 * `sandboxID`, `pid`, `privileged`, the ContainerConfig as `config` and the OCI spec as
 * `runtimeSpec`; plus berth's own `shimPid` and `state`. info["timeline"] holds the steps of
 * CreateContainer and StartContainer as a JSON array of `{step, rpc, start, duration_ms, depth}`
 * (common/timeline.ts).
 */
export const containerStatus =
  (svc: ContainerService): UnaryHandler<ContainerStatusRequest__Output, ContainerStatusResponse> =>
  async (req) => {
    const cid = requireId(req.container_id, 'container_id');
    const c = svc.requireContainer(cid);
    return {
      status: criContainerStatus(svc, c),
      info: req.verbose
        ? { info: JSON.stringify(verboseInfo(c, await svc.runtimeSpec(c.id))), timeline: JSON.stringify(c.facts.timeline ?? []) }
        : ({} as Record<string, string>),
    };
  };
