import type { ContainerRecord } from '../../containers/container-repository.js';
import type { ContainerService } from '../../containers/container-service.js';
import type { ContainerStatus } from '../gen/runtime/v1/ContainerStatus.js';
import type { ContainerStatusRequest__Output } from '../gen/runtime/v1/ContainerStatusRequest.js';
import type { ContainerStatusResponse } from '../gen/runtime/v1/ContainerStatusResponse.js';
import type { UnaryHandler } from '../rpc.js';
import { keptAnswer } from '../wrap.js';
import { requireId, toCriContainer, verboseInfo, type ContainerImageNames } from './convert.js';

/**
 * The status made of a record, with the image names it was made with. A record is not
 * changed once read (a change is a new record: container-repository.ts), and the
 * repository hands out the same record until the row changes, as the image repository
 * does the names: kubelet's PLEG asks for every container's status every second, mostly
 * unchanged, and each answer is then made (and encoded, see wrap.ts) once.
 */
const made = new WeakMap<ContainerRecord, { image: ContainerImageNames; status: ContainerStatus; answer: ContainerStatusResponse }>();

function madeFor(svc: ContainerService, c: ContainerRecord): { status: ContainerStatus; answer: ContainerStatusResponse } {
  const image = svc.imageNamesOf(c);
  const hit = made.get(c);
  if (hit !== undefined && hit.image === image) return hit;
  const status = statusOf(c, image);
  const entry = { image, status, answer: keptAnswer<ContainerStatusResponse>({ status, info: {} }) };
  made.set(c, entry);
  return entry;
}

/**
 * A container's CRI status from its record (the facts decided at creation and updated
 * since). ContainerStatus answers with it; GetContainerEvents attaches it.
 */
export function criContainerStatus(svc: ContainerService, c: ContainerRecord): ContainerStatus {
  return madeFor(svc, c).status;
}

function statusOf(c: ContainerRecord, image: ContainerImageNames): ContainerStatus {
  const base = toCriContainer(c, image);
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
    const { status, answer } = madeFor(svc, c);
    if (!req.verbose) return answer;
    return {
      status,
      info: { info: JSON.stringify(verboseInfo(c, await svc.runtimeSpec(c.id))), timeline: JSON.stringify(c.facts.timeline ?? []) },
    };
  };
